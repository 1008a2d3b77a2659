"""
Would bfloat16 matrix products pay here? Per-shape GFLOP/s of numpy's float32 sgemm (what train_gpt2.py calls)
against the bf16 GEMMs (bf16 inputs, float32 accumulation and output) of the libraries a `[bf16]` extra could bring:
oneDNN's dnnl_gemm_bf16bf16f32 (PyPI onednn or onednn-cpu-gomp: libdnnl.so.3) and oneMKL's cblas_gemm_bf16bf16f32
(PyPI mkl: libmkl_rt.so), called through ctypes, and PyTorch's bf16 matmul if torch is installed (for comparison
only). The shapes are every product of a GPT-2 training step, forward and backward, at N = B*T rows: for each
linear layer out = inp @ W.T (fwd), dinp = dout @ W (dinp) and dW = dout.T @ inp (dW). The last line weighs them as
a d12 step does (12 layers, one lm_head) and gives each library's time for all of a step's products.

    pip install onednn mkl     # into a virtual environment: about 800 MB with their runtimes
    python -m dev.gemm_bf16 --threads 2 --lib $VIRTUAL_ENV/lib/libdnnl.so.3 --lib $VIRTUAL_ENV/lib/libmkl_rt.so.3

Each library's results are checked against float64 products of the same bf16-rounded inputs (relative error of
the largest entry; float32 accumulation gives about 1e-6, an unrounded input about 4e-3).
"""

import argparse
import ctypes
import os
import statistics
import sys
import time

if __name__ == "__main__" and not __package__:
    sys.exit("error: run it from the repository's root, as a module: python -m dev.gemm_bf16")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m dev.gemm_bf16", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lib", action="append", default=[], metavar="PATH",
                        help="a libdnnl.so.3 or libmkl_rt.so.N to time (repeatable)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="threads of every library")
    parser.add_argument("--rows", type=int, default=256, help="N = B*T (default %(default)s: d12's bench, B=4 T=64)")
    parser.add_argument("--channels", type=int, default=768, help="C (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=7, help="timings per shape; the median counts")
    args = parser.parse_args(argv)
    if min(args.threads, args.rows, args.channels, args.repeats) < 1:
        parser.error("--threads, --rows, --channels and --repeats must be at least 1")
    return args


def bf16_gemm(path):
    """C (M,N) float32 = op(A) @ op(B), A and B bf16 (uint16) row-major, op transposing for b"T"."""
    i64, i32, f32, ptr, char = ctypes.c_int64, ctypes.c_int, ctypes.c_float, ctypes.c_void_p, ctypes.c_char
    try:
        lib = ctypes.CDLL(path)
    except OSError as e:
        sys.exit(f"error: {path}: {e}")
    if hasattr(lib, "dnnl_gemm_bf16bf16f32"):
        lib.dnnl_gemm_bf16bf16f32.argtypes = [char, char, i64, i64, i64, f32, ptr, i64, ptr, i64, f32, ptr, i64]
        return lambda ta, tb, M, N, K, A, B, C: lib.dnnl_gemm_bf16bf16f32(
            ta, tb, M, N, K, 1.0, A.ctypes.data, A.shape[1], B.ctypes.data, B.shape[1], 0.0, C.ctypes.data, N)
    if hasattr(lib, "cblas_gemm_bf16bf16f32"):
        lib.cblas_gemm_bf16bf16f32.argtypes = [i32, i32, i32, i32, i32, i32, f32, ptr, i32, ptr, i32, f32, ptr, i32]
        row_major, transpose = 101, {b"N": 111, b"T": 112}
        return lambda ta, tb, M, N, K, A, B, C: lib.cblas_gemm_bf16bf16f32(
            row_major, transpose[ta], transpose[tb], M, N, K, 1.0, A.ctypes.data, A.shape[1], B.ctypes.data,
            B.shape[1], 0.0, C.ctypes.data, N)
    sys.exit(f"error: {path}: has neither dnnl_gemm_bf16bf16f32 nor cblas_gemm_bf16bf16f32")


def to_bf16(np, x):
    """float32 -> bfloat16 bits (uint16), rounded to nearest even, as llm.c and the libraries round."""
    bits = x.view(np.uint32).astype(np.uint64)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def median_seconds(function, repeats):
    function()
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None):
    args = parse_args(argv)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    import numpy as np
    try:
        import torch
        torch.set_num_threads(args.threads)
    except ImportError:
        torch = None
    names = [os.path.basename(path) for path in args.lib]
    libraries = {(name if names.count(name) == 1 else path): bf16_gemm(path) for name, path in zip(names, args.lib)}
    N, C, Vp, L = args.rows, args.channels, 50304, 12
    rng = np.random.default_rng(0)
    totals = dict.fromkeys(["numpy sgemm", *libraries, *(["torch bf16"] if torch else [])], 0.0)
    print(f"GFLOP/s, {args.threads} threads, median of {args.repeats}; N={N} rows, C={C}")
    for layer, OC, IC, count in (("qkv", 3 * C, C, L), ("attproj", C, C, L), ("fc", 4 * C, C, L),
                                 ("fcproj", C, 4 * C, L), ("lm_head", Vp, C, 1)):
        for kind, M, Ncols, K, ta, tb in (("fwd", N, OC, IC, b"N", b"T"), ("dinp", N, IC, OC, b"N", b"N"),
                                          ("dW", OC, IC, N, b"T", b"N")):
            A = rng.standard_normal((K, M) if ta == b"T" else (M, K), dtype=np.float32)
            B = rng.standard_normal((Ncols, K) if tb == b"T" else (K, Ncols), dtype=np.float32)
            A_bf16, B_bf16 = to_bf16(np, A), to_bf16(np, B)
            op_a, op_b = (A.T if ta == b"T" else A), (B.T if tb == b"T" else B)
            reference = None
            if M * Ncols <= 4_000_000:  # float64 products of the bf16-rounded inputs
                wide = [(x.astype(np.uint32) << 16).view(np.float32).astype(np.float64) for x in (A_bf16, B_bf16)]
                reference = (wide[0].T if ta == b"T" else wide[0]) @ (wide[1].T if tb == b"T" else wide[1])
            out = np.empty((M, Ncols), np.float32)
            flops = 2 * M * Ncols * K
            row = f"{layer} {kind} ({M}x{Ncols}x{K}):"
            seconds = median_seconds(lambda: np.matmul(op_a, op_b, out=out), args.repeats)
            totals["numpy sgemm"] += count * seconds
            row += f" numpy sgemm {flops / seconds / 1e9:.0f}"
            for name, gemm in libraries.items():
                seconds = median_seconds(lambda: gemm(ta, tb, M, Ncols, K, A_bf16, B_bf16, out), args.repeats)
                totals[name] += count * seconds
                row += f", {name} {flops / seconds / 1e9:.0f}"
                if reference is not None:
                    row += f" (error {np.abs(out - reference).max() / np.abs(reference).max():.0e})"
            if torch:
                ta_t = torch.from_numpy(op_a).bfloat16()
                tb_t = torch.from_numpy(op_b).bfloat16()
                seconds = median_seconds(lambda: ta_t @ tb_t, args.repeats)
                totals["torch bf16"] += count * seconds
                row += f", torch bf16 {flops / seconds / 1e9:.0f}"
            print(row, flush=True)
    print(f"all the products of a d{L} step: " + ", ".join(f"{name} {seconds * 1e3:.0f} ms"
                                                        for name, seconds in totals.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
