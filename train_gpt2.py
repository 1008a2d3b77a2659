"""
Train GPT-2 on a CPU, in one file of Python: a port of karpathy/llm.c's train_gpt2.c.

There is no autograd and no framework here. Every layer's forward pass and backward pass is written by hand
as a numba kernel; matrix products go to BLAS through numpy. As in llm.c, all the memory a training step needs
is allocated once, up front, in a few flat buffers:

    parameters | gradients | AdamW first moments | AdamW second moments     (same layout, one float each)
    activations and activation gradients for a batch of (B, T) tokens

and every tensor is a view into one of them. A model that only runs forward (to generate text, or to evaluate)
has its parameters, one layer's activations and a KV cache. The file reads top to bottom:

    1. file headers and errors      llm.c's 256-int header, one error type for bad input
    2. kernels                      each layer's forward beside its backward; attention in blocks (flash)
    3. random numbers               llm.c's Mersenne Twister and xorshift generators, to the bit
    4. the model                    GPT-2 itself: parameters, forward, backward, checkpoints, init
    5. the optimizer                AdamW, the gradient norm, learning rate schedules
    6. data                         llm.c's token shards and its data loader, in its exact order; its eval files
    7. tokenizer                    GPT-2's BPE (tiktoken) and llm.c's tokenizer file
    8. generating text              a KV cache, and llm.c's draw with temperature, top-k and top-p
    9. many processes               data-parallel training over MPI, and ZeRO-1
   10. training                     one step, the command line, checkpoints, evaluation, and the training loop

Run `python train_gpt2.py --help` for the flags; they are named as in llm.c's train_gpt2.cu.
"""

import argparse
import codecs
import contextlib
import dataclasses
import fcntl
import functools
import glob
import hashlib
import json
import math
import os
import re
import signal
import sys
import time
import unicodedata
import zlib
from types import SimpleNamespace

# numba's parallel loops run on OpenMP threads and the matrix products on OpenBLAS's threads. By default both
# kinds spin for a while when they run out of work, waiting for more, and on a machine with few cores the
# spinning threads of one take the cores the other needs next: a GPT-2 124M step ran twice as slow. Idle
# threads should sleep at once. (Both settings are read when the libraries load: before numpy's import.)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # the minimum: 2**4 cycles
# Under mpirun (section 9), the processes on one machine share its cores: each takes its share of the cores it may
# run on, unless OMP_NUM_THREADS says otherwise (mpirun binds each of 2 processes to a core of its own by default).
if os.environ.get("OMPI_COMM_WORLD_LOCAL_SIZE") and hasattr(os, "sched_getaffinity"):
    cores = len(os.sched_getaffinity(0))
    if cores == os.cpu_count():  # not bound: every process on this machine may run on every core
        cores = max(1, cores // int(os.environ["OMPI_COMM_WORLD_LOCAL_SIZE"]))
    threads = os.environ.setdefault("OMP_NUM_THREADS", str(cores))
    os.environ.setdefault("NUMBA_NUM_THREADS", threads)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", threads)

if __name__ == "__main__":  # Ctrl-C while the libraries load and the file's functions are made: stop, quietly
    signal.signal(signal.SIGINT, lambda signum, frame: (print("interrupted", file=sys.stderr), os._exit(130)))

import numba  # noqa: E402
import numpy as np  # noqa: E402
from numba import njit, prange  # noqa: E402

# ----------------------------------------------------------------------------------------------------------------
# 1. File headers and errors
#
# Every llm.c binary file starts with a header of 256 little-endian int32: header[0] is a magic number saying what
# kind of file it is, header[1] a version, and the rest depends on the kind. Anything wrong with what the user
# gives us (a missing or truncated file, a wrong magic number, a token id out of range) raises GPT2Error, which
# main() prints as one line before exiting with status 1.

HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
MODEL_MAGIC, TOKENIZER_MAGIC, SHARD_MAGIC = 20240326, 20240328, 20240520
STATE_MAGIC = 20240527  # the training state of llm.c's full trainer
EVAL_MAGIC = 20240522  # a multiple-choice evaluation set, such as HellaSwag's


class GPT2Error(Exception):
    """Bad input: main() prints the message as one line and exits with status 1. With many processes (section 9),
    every_process says that each of them raised it alike, so that they all stop without aborting the job."""

    def __init__(self, message, every_process=False):
        super().__init__(message)
        self.every_process = every_process


def check_regular_file(path):
    """Refuses a directory, a FIFO or a device where a file is expected (opening a FIFO would wait forever)."""
    if os.path.exists(path) and not os.path.isfile(path):
        raise GPT2Error(f"{path}: not a regular file")


def read_file(path, size=-1):
    """The first `size` bytes of a file (default: all of them), or one line saying why not."""
    check_regular_file(path)
    try:
        with open(path, "rb") as f:
            return f.read(size)
    except OSError as e:
        raise GPT2Error(f"{path}: cannot open: {e.strerror}") from None


def read_header(path, magic, versions):
    """Reads and checks the 256-int header of an llm.c file; returns it as an int32 array."""
    raw = read_file(path, HEADER_BYTES)
    if len(raw) < HEADER_BYTES:
        raise GPT2Error(f"{path}: truncated: {len(raw)} bytes, less than the {HEADER_BYTES}-byte header")
    header = np.frombuffer(raw, dtype="<i4")
    if header[0] != magic:
        raise GPT2Error(f"{path}: bad magic number: expected {magic}, found {header[0]}")
    if header[1] not in versions:
        expected = " or ".join(str(v) for v in versions)
        raise GPT2Error(f"{path}: unsupported version: expected {expected}, found {header[1]}")
    return header


def check_file_size(path, expected_bytes):
    found = os.path.getsize(path)
    if found != expected_bytes:
        problem = "truncated" if found < expected_bytes else "too long"
        raise GPT2Error(f"{path}: {problem}: expected {expected_bytes} bytes, found {found}")


def new_header(magic, version, *fields):
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:2 + len(fields)] = (magic, version) + fields
    return header


def write_atomically(path, chunks):
    """Writes the arrays in `chunks` (or bytes) to `path` through a temporary file, which reaches the disk (fsync)
    before it is renamed, and the rename too: neither a kill nor a power cut leaves half a file under `path`."""
    directory, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(directory, temporary_name(name))
    try:
        os.makedirs(directory, exist_ok=True)
        with open(tmp, "wb") as f:
            for chunk in chunks:
                f.write(np.ascontiguousarray(chunk).data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        sync_directory(directory)
    except OSError as e:  # a full disk, most likely: nothing is left behind, and the message names the file
        if os.path.exists(tmp):
            os.remove(tmp)
        raise GPT2Error(f"{path}: cannot write: {e.strerror or e}") from None


def temporary_name(name):
    return f".{name}.tmp{os.getpid()}"  # hidden, so that no shard pattern matches it


def is_temporary_name(name):
    return re.fullmatch(r"\..+\.tmp[0-9]+", name) is not None


def sync_directory(directory):
    """Makes a rename in `directory` reach the disk."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------------------------------------------
# 2. Kernels
#
# Each layer of GPT-2 as a pair of functions: the forward pass, and right below it the backward pass, which takes
# the gradient of the loss with respect to the layer's output (dout) and produces the gradients with respect to
# its inputs and parameters. Shapes are in the comments: B batch, T time, C channels, NH heads, V vocabulary,
# Vp padded vocabulary, OC output channels, N = B*T rows.
#
# The kernels are dtype-generic: the same code runs in float32 for training and in float64 for the gradient
# checks of test_kernels.py. Numba compiles each once per dtype and caches the machine code on disk.
# `prange` loops run in parallel over the cores. Sums and constants take the input's dtype (`x.dtype.type(0)`),
# so that float32 code stays float32; only layernorm's statistics are summed in float64. The fastmath flags
# allow fused multiply-adds but neither reordered sums (LLVM vectorised a reordered sum differently in a kernel
# compiled in the process and in the same kernel loaded from numba's cache, and the last bits of a loss then
# changed between a run and its resumption) nor the assumption that values are finite (a diverging run must
# still show its NaN or inf).

kernel = njit(parallel=True, cache=True, fastmath={"nsz", "arcp", "contract"})
COLUMN_BLOCK = 16  # reductions over rows work on 16 columns at a time: one 64-byte cache line of float32
LANES = 16  # reductions along a row keep 16 partial results: one 64-byte SIMD register of float32


@njit(cache=True, inline="always", fastmath={"nsz", "arcp", "contract"})
def fast_exp(x):
    # e^x, in float64 whatever x is, and returned in x's type. C's exp and expf are calls that a loop cannot
    # vectorise (numba has no vector math library without Intel's SVML); this is arithmetic that it can, 4x faster
    # over an array. x = n ln2 + r with |r| <= ln2 / 2, and e^x = 2^n e^r: 2^n is n put in a float's exponent bits,
    # e^r the Taylor series to r^12 (3e-16 relative error in float64; in float32 the rounding of the exact e^x).
    # ln2 is split in two so that n times its first part is exact. Below -708 the result is 0 (not a subnormal), NaN
    # stays NaN. (2^n is made as 2 * 2^(n-1), which has an exponent for every n from -1021 to 1024.)
    y = np.float64(x)
    clamped = min(max(y, -708.0), 710.0)
    n = math.floor(clamped * 1.4426950408889634 + 0.5)  # round(y / ln2)
    r = (clamped - n * 0.6931471803691238) - n * 1.9082149292705877e-10
    e_r = 1.0 + r * (1.0 + r * (1 / 2 + r * (1 / 6 + r * (1 / 24 + r * (1 / 120 + r * (1 / 720 + r * (
        1 / 5040 + r * (1 / 40320 + r * (1 / 362880 + r * (1 / 3628800 + r * (1 / 39916800 + r / 479001600)))))))))))
    e = e_r * 2.0 * np.int64((np.int64(n) + 1022) << 52).view(np.float64)  # inf from 709.79 (e^x > the largest float64)
    e = 0.0 if y < -708.0 else e
    e = math.inf if y > 710.0 else e
    e = y if y != y else e
    return type(x)(e)


@kernel
def encoder_forward(out, tokens, wte, wpe):
    # out (B,T,C) = wte[tokens] (token embedding) + wpe[t] (position embedding); tokens (B,T) int32
    B, T, C = out.shape
    for b in prange(B):
        for t in range(T):
            token = tokens[b, t]
            for c in range(C):
                out[b, t, c] = wte[token, c] + wpe[t, c]


@kernel
def encoder_backward(dwte, dwpe, dout, tokens):
    # accumulates into dwte (Vp,C) and dwpe (maxT,C); dout (B,T,C). A token can repeat in a batch, so rows of dwte
    # are shared: the work is split over blocks of channels instead, which never collide.
    B, T, C = dout.shape
    for block in prange((C + COLUMN_BLOCK - 1) // COLUMN_BLOCK):
        c0, c1 = block * COLUMN_BLOCK, min(C, (block + 1) * COLUMN_BLOCK)
        for b in range(B):
            for t in range(T):
                token = tokens[b, t]
                for c in range(c0, c1):
                    dwte[token, c] += dout[b, t, c]
                    dwpe[t, c] += dout[b, t, c]


@kernel
def layernorm_forward(out, mean, rstd, inp, weight, bias):
    # out, inp (N,C); mean, rstd (N,) saved for the backward pass; weight, bias (C,)
    N, C = inp.shape
    for n in prange(N):
        m = 0.0
        for c in range(C):
            m += inp[n, c]
        m /= C
        var = 0.0
        for c in range(C):
            d = inp[n, c] - m
            var += d * d
        var /= C
        s = 1.0 / math.sqrt(var + 1e-5)
        for c in range(C):
            out[n, c] = (inp[n, c] - m) * s * weight[c] + bias[c]
        mean[n] = m
        rstd[n] = s


@kernel
def layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd):
    # accumulates into dinp (N,C), dweight (C,), dbias (C,); dout, inp (N,C); mean, rstd (N,)
    N, C = inp.shape
    for n in prange(N):
        # with norm = (inp - mean) * rstd and dnorm = weight * dout:
        # dinp = rstd * (dnorm - mean(dnorm) - norm * mean(dnorm * norm))
        dnorm_mean = 0.0
        dnorm_norm_mean = 0.0
        for c in range(C):
            norm = (inp[n, c] - mean[n]) * rstd[n]
            dnorm = weight[c] * dout[n, c]
            dnorm_mean += dnorm
            dnorm_norm_mean += dnorm * norm
        dnorm_mean /= C
        dnorm_norm_mean /= C
        for c in range(C):
            norm = (inp[n, c] - mean[n]) * rstd[n]
            dnorm = weight[c] * dout[n, c]
            dinp[n, c] += (dnorm - dnorm_mean - norm * dnorm_norm_mean) * rstd[n]
    # dweight = sum over rows of dout * norm, dbias = sum over rows of dout
    for block in prange((C + COLUMN_BLOCK - 1) // COLUMN_BLOCK):
        c0, c1 = block * COLUMN_BLOCK, min(C, (block + 1) * COLUMN_BLOCK)
        for n in range(N):
            for c in range(c0, c1):
                dweight[c] += dout[n, c] * (inp[n, c] - mean[n]) * rstd[n]
                dbias[c] += dout[n, c]


@kernel
def bias_forward(out, bias):
    # out (N,OC) += bias (OC,)
    N, OC = out.shape
    for n in prange(N):
        for o in range(OC):
            out[n, o] += bias[o]


@kernel
def bias_backward(dbias, dout):
    # accumulates into dbias (OC,) the sum over rows of dout (N,OC)
    N, OC = dout.shape
    for block in prange((OC + COLUMN_BLOCK - 1) // COLUMN_BLOCK):
        o0, o1 = block * COLUMN_BLOCK, min(OC, (block + 1) * COLUMN_BLOCK)
        for n in range(N):
            for o in range(o0, o1):
                dbias[o] += dout[n, o]


@kernel
def accumulate_into(total, part):
    # total += part, elementwise, for two arrays of the same shape (R,K)
    R, K = total.shape
    for r in prange(R):
        for k in range(K):
            total[r, k] += part[r, k]


def matmul_forward(out, inp, weight, bias):
    # out (N,OC) = inp (N,C) @ weight (OC,C).T + bias (OC,); the product itself is BLAS's
    np.matmul(inp, weight.T, out=out)
    if bias is not None:
        bias_forward(out, bias)


def matmul_backward(dinp, dweight, dbias, dout, inp, weight, scratch, accumulate=True):
    # writes dinp (N,C) = dout (N,OC) @ weight (OC,C); dweight (OC,C) gets dout.T @ inp and dbias (OC,) the sum
    # of dout's rows. BLAS cannot add into its output: when dweight holds nothing yet (accumulate=False, right
    # after zero_grad) the product is written there directly, otherwise it goes through `scratch` a block of rows
    # at a time and is added.
    np.matmul(dout, weight, out=dinp)
    if not accumulate:
        np.matmul(dout.T, inp, out=dweight)
    else:
        OC, C = dweight.shape
        rows = scratch.size // C
        for start in range(0, OC, rows):
            stop = min(OC, start + rows)
            block = scratch[:(stop - start) * C].reshape(stop - start, C)
            np.matmul(dout[:, start:stop].T, inp, out=block)
            accumulate_into(dweight[start:stop], block)
    if dbias is not None:
        bias_backward(dbias, dout)


# Attention. Each head h looks at its own hs = C/NH channels of the queries, keys and values that the qkv matmul
# made. Written as plain loops, as llm.c's attention_forward is, for each b, h and query position t:
#     w[t, t2] = softmax over t2 <= t of s[t, t2],  s[t, t2] = (q[t] . k[t2]) / sqrt(hs)   the weights (T,T)
#     out[t] = sum over t2 <= t of w[t, t2] v[t2]
# llm.c stores w for the backward pass (and s too), B*NH*T*T floats a layer each: for GPT-2 124M at T=1024 and B=4
# the weights alone are 2.4 GB, and their masked half is zeros. Here, as in FlashAttention (Dao et al., 2022),
# no T x T matrix is ever stored. The forward pass goes through the scores a block at a time and keeps one float per
# query, the log-sum-exp lse[t] = log(sum over t2 <= t of exp(s[t, t2])); the backward pass makes each block's
# weights again from it: w[t, t2] = exp(s[t, t2] - lse[t]).
#
# The forward pass takes the queries SMALL_BLOCK at a time, and their keys LARGE_BLOCK at a time up to the diagonal.
# A softmax needs the max and the sum of all of a query's scores, but its keys come block after block: the online
# softmax keeps, for each query, the running max m, the running sum l and the output so far, unnormalised, and for
# each new block of scores s (R queries x Kb keys) and values v (Kb,hs):
#     m' = max(m, max over the block of s);   c = exp(m - m')      (the terms so far, rescaled to the new max)
#     l = c * l + sum of exp(s - m');    out = c * out + exp(s - m') @ v;    m = m'
# and in the end out / l is the output and m + log(l) the log-sum-exp. A query with at most LARGE_BLOCK keys
# needs one block, and no rescaling. (The kernel keeps m unscaled, as BLAS makes q.k, and multiplies by 1/sqrt(hs)
# inside each exp.)
# The products of each block go to BLAS, over all the heads as a batch, and the softmax is a kernel; heads() views
# a (B,T,C) buffer as (B,NH,T,hs) with no copy. A block of scores is stored keys x queries, (Kb, R) per head, so
# that the max and the sums over keys run along rows of queries: SIMD does them with no sum reordered.
#
# Generating text one token at a time, the queries of the new positions attend to the keys and values of all the
# positions before them too. A KV cache keeps those: then the T new positions start at `pos`, the keys and values
# are the cache's first pos+T positions, and query t sees keys 0..pos+t.

# Forward: 256 queries x 1024 keys; backward: 256 keys x 1024 queries. Few, large blocks: each matrix of a batched
# product wakes BLAS's threads (which sleep when idle, see the top of the file), and at T=1024 blocks of 128 x 512
# made the attention 1.35x slower (dev/bench.py --attention). The scratch stays small: a block of scores is
# B*NH*256*1024 floats at most, 48 MB at B=4, NH=12 (training has two, the scores and their gradients).
SMALL_BLOCK, LARGE_BLOCK = 256, 1024


def heads(x, NH):
    # splitting the last axis, whose stride is one element, always gives a view: matmul's out= writes through it
    B, T, C = x.shape
    return x.reshape(B, T, NH, C // NH).transpose(0, 2, 1, 3)


def split_qkv(qkv, NH):
    # (B,T,3C) -> the (B,NH,T,hs) views of the queries, keys and values
    C = qkv.shape[2] // 3
    return [heads(qkv[:, :, i * C:(i + 1) * C], NH) for i in range(3)]


def block_of(buffer, *shape):
    # a block's (B,NH,rows,columns) view at the start of a flat scratch buffer
    return buffer.reshape(-1)[:math.prod(shape)].reshape(shape)


def batched_matmul(out, a, b, add, scratch):
    # out = a @ b, or with add, out += a @ b: BLAS (through numpy's matmul) cannot add into its output, so the
    # product goes to scratch first
    if not add:
        np.matmul(a, b, out=out)
    else:
        part = block_of(scratch, *out.shape)
        np.matmul(a, b, out=part)
        out += part


@kernel
def attention_softmax(scores, rowmax, rowsum, out, lse, t0, scale, diagonal, first, last):
    # One step of the online softmax. scores (B,NH,Kb,R): q.k of Kb keys (rows) with the R queries from t0
    # (columns), in place -> exp(scale * (score - m')), 0 where masked: key j is seen by query i if j <= i + diagonal.
    # rowmax, rowsum (B,NH,>=R): each query's running max m (of the unscaled scores) and sum l; out (B,NH,R,hs) its
    # output so far, rescaled by c here. The first block of keys starts them. After the last, the weights and the
    # output so far are divided by l (so that the next product completes the output) and lse (B,NH,T) is written.
    B, NH, Kb, R = scores.shape
    hs = out.shape[3]
    zero = scores.dtype.type(0)  # an integer 0 in `x if c else 0` would make the result float64
    for bh in prange(B * NH):
        b, h = bh // NH, bh % NH
        m, l = rowmax[b, h], rowsum[b, h]
        newmax, rescale = np.empty(R, scores.dtype), np.zeros(R, scores.dtype)
        for i in range(R):
            newmax[i] = -np.inf if first else m[i]
        for j in range(Kb):
            row = scores[b, h, j]
            for i in range(R):
                if j <= i + diagonal:
                    newmax[i] = max(newmax[i], row[i])
        for i in range(R):
            if first:
                l[i] = 0
            else:
                rescale[i] = fast_exp((m[i] - newmax[i]) * scale)  # c
                l[i] *= rescale[i]
            m[i] = newmax[i]
        for j in range(Kb):
            row = scores[b, h, j]
            for i in range(R):
                e = fast_exp((row[i] - m[i]) * scale)
                row[i] = e if j <= i + diagonal else zero
                l[i] += row[i]
        if last:
            for i in range(R):
                lse[b, h, t0 + i] = m[i] * scale + math.log(l[i])
                l[i] = scores.dtype.type(1) / l[i]
                rescale[i] *= l[i]
            for j in range(Kb):
                row = scores[b, h, j]
                for i in range(R):
                    row[i] *= l[i]
        if not first:
            for i in range(R):
                for d in range(hs):
                    out[b, h, i, d] *= rescale[i]


def attention_forward(out, lse, qkv, NH, scores, rowmax, rowsum, partial, kv_cache=None, pos=0):
    # out (B,T,C); lse (B,NH,T) each query's log-sum-exp, saved for the backward pass; qkv (B,T,3C). Scratch:
    # scores (>= B*NH*SMALL_BLOCK*LARGE_BLOCK, or T and pos+T where smaller), rowmax and rowsum (B,NH,>=SMALL_BLOCK),
    # partial (as many floats as out). kv_cache (B,maxT,2C) when generating: this call's keys and values are
    # written at positions pos..pos+T-1
    B, T, C3 = qkv.shape
    q, k, v = split_qkv(qkv, NH)
    if kv_cache is not None:
        C = C3 // 3
        kv_cache[:, pos:pos + T] = qkv[:, :, C:]
        k, v = heads(kv_cache[:, :pos + T, :C], NH), heads(kv_cache[:, :pos + T, C:], NH)
    scale = qkv.dtype.type(1.0 / math.sqrt(q.shape[-1]))
    out_heads = heads(out, NH)
    for q0 in range(0, T, SMALL_BLOCK):
        q1 = min(T, q0 + SMALL_BLOCK)
        out_block = out_heads[:, :, q0:q1]
        for k0 in range(0, pos + q1, LARGE_BLOCK):  # query q0+i sees keys up to pos+q0+i
            k1 = min(pos + q1, k0 + LARGE_BLOCK)
            block = block_of(scores, B, NH, k1 - k0, q1 - q0)
            np.matmul(k[:, :, k0:k1], q[:, :, q0:q1].transpose(0, 1, 3, 2), out=block)
            attention_softmax(block, rowmax, rowsum, out_block, lse, q0, scale, pos + q0 - k0, k0 == 0, k1 == pos + q1)
            batched_matmul(out_block, block.transpose(0, 1, 3, 2), v[:, :, k0:k1], k0 > 0, partial)


@kernel
def attention_row_dots(rowdot, dout, out):
    # rowdot (B,NH,T) = dout . out over each head's channels; dout, out (B,T,C)
    B, NH, T = rowdot.shape
    hs = out.shape[2] // NH
    for bt in prange(B * T):
        b, t = bt // T, bt % T
        for h in range(NH):
            total = out.dtype.type(0)
            for c in range(h * hs, (h + 1) * hs):
                total += dout[b, t, c] * out[b, t, c]
            rowdot[b, h, t] = total


@kernel
def attention_softmax_backward(scores, dscores, lse, rowdot, t0, scale, diagonal):
    # scores (B,NH,Kb,R): q.k of Kb keys (rows) with the R queries from t0 (columns), in place -> the weights
    # w = exp(scale * score - lse), 0 where masked (key j is seen by query i if j <= i + diagonal). dscores, in
    # place: from d(loss)/d(w) to d(loss)/d(score), through the softmax: dscore = scale * w * (dw - rowdot), where
    # rowdot = sum over keys of w * dw = dout . out (the same sum, by out = w @ v and dw = dout @ v.T)
    B, NH, Kb, R = scores.shape
    zero = scores.dtype.type(0)
    for bhj in prange(B * NH * Kb):
        b, h, j = bhj // (NH * Kb), (bhj // Kb) % NH, bhj % Kb
        row, drow = scores[b, h, j], dscores[b, h, j]
        row_lse, row_dot = lse[b, h, t0:t0 + R], rowdot[b, h, t0:t0 + R]
        for i in range(R):
            w = fast_exp(row[i] * scale - row_lse[i])
            w = w if j <= i + diagonal else zero
            row[i] = w
            drow[i] = w * (drow[i] - row_dot[i]) * scale


def attention_backward(dqkv, dout, qkv, out, lse, NH, scores, dscores, rowdot, partial):
    # writes dqkv (B,T,3C); dout, out (B,T,C); qkv (B,T,3C); lse (B,NH,T) from the forward pass. Scratch: scores
    # and dscores as the forward's scores, rowdot (B,NH,T), partial (as many floats as out). The keys go
    # SMALL_BLOCK at a time, each with the queries that see it LARGE_BLOCK at a time: the forward's blocks, turned.
    B, T, C3 = qkv.shape
    q, k, v = split_qkv(qkv, NH)
    dq, dk, dv = split_qkv(dqkv, NH)
    dout_heads = heads(dout, NH)
    scale = qkv.dtype.type(1.0 / math.sqrt(q.shape[-1]))
    attention_row_dots(rowdot, dout, out)
    for k0 in range(0, T, SMALL_BLOCK):
        k1 = min(T, k0 + SMALL_BLOCK)
        for q0 in range(k0, T, LARGE_BLOCK):  # the queries from k0 on see keys of this block
            q1 = min(T, q0 + LARGE_BLOCK)
            w, dw = block_of(scores, B, NH, k1 - k0, q1 - q0), block_of(dscores, B, NH, k1 - k0, q1 - q0)
            np.matmul(k[:, :, k0:k1], q[:, :, q0:q1].transpose(0, 1, 3, 2), out=w)             # the scores again
            np.matmul(v[:, :, k0:k1], dout_heads[:, :, q0:q1].transpose(0, 1, 3, 2), out=dw)  # dw = dout @ v.T
            attention_softmax_backward(w, dw, lse, rowdot, q0, scale, q0 - k0)
            # with the weights w (queries, keys), which the blocks hold turned: dv = w.T @ dout, dk = dscore.T @ q
            # and dq = dscore @ k; a key block's dv and dk, and a query block's dq, add up over the blocks
            batched_matmul(dv[:, :, k0:k1], w, dout_heads[:, :, q0:q1], q0 > k0, partial)
            batched_matmul(dk[:, :, k0:k1], dw, q[:, :, q0:q1], q0 > k0, partial)
            batched_matmul(dq[:, :, q0:q1], dw.transpose(0, 1, 3, 2), k[:, :, k0:k1], k0 > 0, partial)


GELU_SCALE = math.sqrt(2.0 / math.pi)


@njit(cache=True, inline="always")
def fast_tanh(y):
    # tanh(y) = 1 - 2 / (exp(2y) + 1): an exponential vectorises (fast_exp) where C's tanhf does not, and this is as
    # accurate to the float32 rounding of GELU's output (exp(2y) = inf for large y gives 1, as it should). The
    # float32 constants keep a float32 y in float32 (an integer constant would make it float64); float64 stays.
    one, two = np.float32(1), np.float32(2)
    return one - two / (fast_exp(two * y) + one)


@kernel
def gelu_forward(out, inp):
    # out, inp (N,4C): GELU with the tanh approximation, as GPT-2 uses. The constants take the input's dtype,
    # so that float32 is computed in float32
    N, K = inp.shape
    one, half = inp.dtype.type(1), inp.dtype.type(0.5)
    scale, cube = inp.dtype.type(GELU_SCALE), inp.dtype.type(0.044715)
    for n in prange(N):
        for k in range(K):
            x = inp[n, k]
            out[n, k] = half * x * (one + fast_tanh(scale * (x + cube * x * x * x)))


@kernel
def gelu_backward(dinp, inp, dout):
    # writes dinp (N,4C) = dout * gelu'(inp); dinp may be dout itself
    N, K = inp.shape
    one, half, three = inp.dtype.type(1), inp.dtype.type(0.5), inp.dtype.type(3)
    scale, cube = inp.dtype.type(GELU_SCALE), inp.dtype.type(0.044715)
    for n in prange(N):
        for k in range(K):
            x = inp[n, k]
            tanh_out = fast_tanh(scale * (x + cube * x * x * x))
            sech2 = one - tanh_out * tanh_out
            local_grad = half * (one + tanh_out) + half * x * sech2 * scale * (one + three * cube * x * x)
            dinp[n, k] = dout[n, k] * local_grad


@kernel
def residual_forward(out, residual):
    # out (N,C) += residual (N,C): a block's output is added back onto its input. The backward pass of a sum
    # hands the same gradient to both inputs, so the model keeps one gradient buffer for the residual stream and
    # needs no residual_backward kernel.
    N, C = out.shape
    for n in prange(N):
        for c in range(C):
            out[n, c] += residual[n, c]


@kernel
def crossentropy_forward(losses, logsumexp, logits, targets, V):
    # losses, logsumexp (N,); logits (N,Vp); targets (N,). Only the first V of the Vp columns are real tokens:
    # loss = -log softmax(logits[:V])[target] = logsumexp(logits[:V]) - logits[target]. The max and the sum run in
    # LANES partial results, combined at the end: one running sum would wait for each addition before the next
    # (reordering them is not allowed, see above), while LANES independent ones fill a SIMD register.
    N = logits.shape[0]
    full = V - V % LANES
    for n in prange(N):
        row = logits[n]
        maxes = np.full(LANES, -np.inf, logits.dtype)
        for i0 in range(0, full, LANES):
            for lane in range(LANES):
                maxes[lane] = max(maxes[lane], row[i0 + lane])
        maxval = maxes.max()
        for i in range(full, V):
            maxval = max(maxval, row[i])
        sums = np.zeros(LANES, logits.dtype)
        for i0 in range(0, full, LANES):
            for lane in range(LANES):
                sums[lane] += fast_exp(row[i0 + lane] - maxval)
        expsum = logits.dtype.type(0)
        for lane in range(LANES):
            expsum += sums[lane]
        for i in range(full, V):
            expsum += fast_exp(row[i] - maxval)
        logsumexp[n] = maxval + math.log(expsum)
        losses[n] = logsumexp[n] - row[targets[n]]


@kernel
def crossentropy_backward(dlogits, logits, logsumexp, targets, dloss, V):
    # writes dlogits (N,Vp) = (softmax(logits) - onehot(target)) * dloss, zero in the padded columns; dlogits may
    # be logits itself. dloss is the gradient of the loss we minimise with respect to each row's loss: 1/N for a
    # mean over N rows.
    N, Vp = logits.shape
    dloss = logits.dtype.type(dloss)
    for n in prange(N):
        for i in range(V):
            dlogits[n, i] = fast_exp(logits[n, i] - logsumexp[n]) * dloss
        dlogits[n, targets[n]] -= dloss
        for i in range(V, Vp):
            dlogits[n, i] = 0


# ----------------------------------------------------------------------------------------------------------------
# 3. Random numbers, as llm.c draws them
#
# Three things in training are random: the initial weights, the order of the training data, and the samples.
# llm.c draws the first two from its Mersenne Twister (llmc/rand.h, which is PyTorch's CPU generator, so its
# initial weights are those of PyTorch's GPT-2 for the same seed), and the samples from a xorshift generator.
# Both are here exactly, so the same seed gives llm.c's numbers to the bit; a checkpoint saves their states.

@njit(parallel=True, cache=True)  # no fastmath: the float32 operations must happen exactly as written
def uniform_from_draws(out, draws):
    # draws (n,) uint32 -> out (n,) float32 in [0, 1): llm.c's randfloat32, the low 24 bits over 2**24
    for i in prange(draws.shape[0]):
        out[i] = np.float32(draws[i] & 0xFFFFFF) * np.float32(1.0 / (1 << 24))


@njit(parallel=True, cache=True)
def box_muller(u, std):
    # u (R,16) uniforms in [0,1), turned in place into normals: llm.c's normal_fill_16, pairing column t with
    # column t+8. In float32 with C's logf, sqrtf, cosf and sinf (numba calls the same C library), so the values
    # are llm.c's to the bit; the 1e-12 and the angle are double precision in llm.c too.
    for r in prange(u.shape[0]):
        for t in range(8):
            u1 = np.float32(np.float64(np.float32(1.0) - u[r, t]) + 1e-12)
            radius = np.float32(math.sqrt(np.float32(-2.0) * np.float32(math.log(u1))))
            theta = np.float32(2.0 * math.pi * np.float64(u[r, t + 8]))
            u[r, t] = radius * np.float32(math.cos(theta)) * std
            u[r, t + 8] = radius * np.float32(math.sin(theta)) * std


class MersenneTwister:
    """llm.c's mt19937 (llmc/rand.h), which is PyTorch's CPU generator: numpy's MT19937 with torch's seeding."""

    def __init__(self, seed):
        self.seed = seed
        key = np.zeros(624, dtype=np.uint32)
        key[0] = seed
        for j in range(1, 624):
            prev = int(key[j - 1])
            key[j] = (1812433253 * (prev ^ (prev >> 30)) + j) & 0xFFFFFFFF
        self.bit_generator = np.random.MT19937()
        self.bit_generator.state = {"bit_generator": "MT19937", "state": {"key": key, "pos": 624}}
        self.generator = np.random.Generator(self.bit_generator)

    def randint32(self, n):
        """The next n 32-bit outputs: over the whole uint32 range, numpy returns them as they come."""
        return self.generator.integers(0, 2 ** 32, n, dtype=np.uint32)

    def uniform(self, n):
        """llm.c's randfloat32 n times."""
        out = np.empty(n, dtype=np.float32)
        uniform_from_draws(out, self.randint32(n))
        return out

    def fill_normal(self, out, std):
        """llm.c's normal_ into the flat float32 array out, for n >= 16: Box-Muller on blocks of 16 uniforms, the
        first 8 paired with the last 8; when n is not a multiple of 16, the last 16 values are drawn again from 16
        fresh uniforms."""
        n = out.size
        assert n >= 16, "llm.c draws tensors of fewer than 16 values differently; no GPT-2 tensor is that small"
        uniform_from_draws(out, self.randint32(n))
        box_muller(out[:n // 16 * 16].reshape(-1, 16), np.float32(std))
        if n % 16:
            tail = self.uniform(16)
            box_muller(tail.reshape(1, 16), np.float32(std))
            out[n - 16:] = tail
        return out

    def permutation(self, n):
        """llm.c's random_permutation of 0..n-1: a Fisher-Yates shuffle from the top down."""
        order = list(range(n))
        draws = self.randint32(max(n - 1, 0)).tolist()
        for i, draw in zip(range(n - 1, 0, -1), draws):
            j = draw % (i + 1)
            order[i], order[j] = order[j], order[i]
        return np.array(order, dtype=np.int64)


def mersenne_twister_words(rng):
    """llm.c's mt19937_state struct as 630 u32 words: u64 seed, i32 left, u32 next, u32 state[624],
    u32 MATRIX_A[2]. numpy keeps the index `pos` of the next draw where llm.c counts the `left` draws down."""
    state = rng.bit_generator.state["state"]
    position = int(state["pos"])
    return np.concatenate([np.array([rng.seed, 0, 625 - position, position % 624], "<u4"),
                           state["key"].astype("<u4"), np.array([0, 0x9908B0DF], "<u4")])


def mersenne_twister_state(words):
    """The inverse of mersenne_twister_words, as numpy's MT19937 state."""
    return {"bit_generator": "MT19937", "state": {"key": words[4:628].astype(np.uint32), "pos": 625 - int(words[2])}}


class XorShift:
    """llm.c's random_u32 and random_f32, for sampling."""

    def __init__(self, seed=1337):
        self.state = seed

    def random_u32(self):
        s = self.state
        s ^= s >> 12
        s ^= (s << 25) & 0xFFFFFFFFFFFFFFFF
        s ^= s >> 27
        self.state = s
        return ((s * 0x2545F4914F6CDD1D) & 0xFFFFFFFFFFFFFFFF) >> 32

    def random_f32(self):
        """A float32 in [0, 1)."""
        return np.float32(self.random_u32() >> 8) / np.float32(16777216.0)


# ----------------------------------------------------------------------------------------------------------------
# 4. The model
#
# GPT-2: token and position embeddings, then L blocks of (layernorm, causal self-attention, residual, layernorm,
# MLP with GELU, residual), a final layernorm, and logits over the vocabulary from the token embedding matrix
# itself (weight tying). The vocabulary is padded from V to Vp rows (50257 to 50304 for GPT-2), which llm.c
# does for faster kernels; the padded rows stay zero and the loss never looks at them.

@dataclasses.dataclass(frozen=True)
class GPT2Config:
    max_seq_len: int        # maxT
    vocab_size: int         # V
    padded_vocab_size: int  # Vp
    num_layers: int         # L
    num_heads: int          # NH
    channels: int           # C


def parameter_shapes(config):
    """The 16 parameter tensors, in llm.c's order, which is also their order in a checkpoint."""
    Vp, C, L, maxT = config.padded_vocab_size, config.channels, config.num_layers, config.max_seq_len
    return {
        "wte": (Vp, C), "wpe": (maxT, C),
        "ln1w": (L, C), "ln1b": (L, C), "qkvw": (L, 3 * C, C), "qkvb": (L, 3 * C),
        "attprojw": (L, C, C), "attprojb": (L, C), "ln2w": (L, C), "ln2b": (L, C),
        "fcw": (L, 4 * C, C), "fcb": (L, 4 * C), "fcprojw": (L, C, 4 * C), "fcprojb": (L, C),
        "lnfw": (C,), "lnfb": (C,),
    }


def activation_shapes(config, B, T, training, pos=0):
    """Everything the forward pass keeps for a batch of B sequences of T positions starting at `pos`, and when
    training, the scratch the backward pass needs. The backward pass needs every layer's activations; a model that
    only runs forward (generating, evaluating) needs one layer's at a time, so there every layer reuses the same
    buffers (Ls = 1)."""
    C, L, NH, Vp = config.channels, config.num_layers, config.num_heads, config.padded_vocab_size
    Ls = L if training else 1
    shapes = {
        "encoded": (B, T, C),                                              # wte[token] + wpe[pos + t]
        "ln1": (Ls, B, T, C), "ln1_mean": (Ls, B, T), "ln1_rstd": (Ls, B, T),
        "qkv": (Ls, B, T, 3 * C), "atty": (Ls, B, T, C),                 # atty: attention's output
        "att_lse": (Ls, B, NH, T),                                        # each query's log-sum-exp of scores
        "residual2": (Ls, B, T, C),                                        # after the attention's residual
        "ln2": (Ls, B, T, C), "ln2_mean": (Ls, B, T), "ln2_rstd": (Ls, B, T),
        "fch": (Ls, B, T, 4 * C),
        "fch_gelu": (B, T, 4 * C),  # one layer's: the backward pass computes it again, to save memory
        "residual3": (Ls, B, T, C),                                        # after the MLP's residual: the output
        "lnf": (B, T, C), "lnf_mean": (B, T), "lnf_rstd": (B, T),
        "logits": (B, T, Vp),                                              # the backward pass turns them into dlogits
        "logsumexp": (B, T), "losses": (B, T),
        # attention's scratch (see attention_forward): a block of scores, and each query's running max and sum
        "att_scores": (B, NH, min(pos + T, LARGE_BLOCK), min(T, SMALL_BLOCK)),
        "att_max": (B, NH, min(T, SMALL_BLOCK)), "att_sum": (B, NH, min(T, SMALL_BLOCK)), "att_partial": (B, T, C),
    }
    if training:  # the gradients of the residual stream and of the tensors each layer's backward pass goes through
        shapes.update({"dresidual": (B, T, C), "dln": (B, T, C), "datty": (B, T, C), "dqkv": (B, T, 3 * C),
                       "datt_scores": (B, NH, min(T, SMALL_BLOCK), min(T, LARGE_BLOCK)), "att_rowdot": (B, NH, T),
                       "dfch": (B, T, 4 * C),
                       "dweight_block": (4 * C * C,)})                     # see matmul_backward
    return shapes


def num_parameters(config):
    return sum(math.prod(shape) for shape in parameter_shapes(config).values())


def check_config(config, source):
    """Refuses a model shape the kernels cannot run, naming where it came from."""
    c = config
    sizes = (c.max_seq_len, c.vocab_size, c.num_layers, c.num_heads, c.channels)
    if min(sizes) < 1 or c.padded_vocab_size < c.vocab_size:
        raise GPT2Error(f"{source}: not a valid model: {vars(c)}")
    if c.channels % c.num_heads:
        raise GPT2Error(f"{source}: {c.channels} channels do not split into {c.num_heads} heads")


def zeros(size, dtype):
    """A flat buffer of zeros, written now, by all the cores. (np.zeros maps pages that the first write to each then
    faults in: inside the first training step's kernels, GPT-2 124M's 2 GB of them made it 3.5 s slower.)"""
    memory = np.empty(size, dtype=dtype)
    fill_zeros(memory)
    return memory


@kernel
def fill_zeros(x):
    # x (n,) = 0
    for i in prange(x.shape[0]):
        x[i] = 0


def point_tensors(memory, shapes):
    """Views a flat buffer as named tensors of the given shapes, one after another (llm.c's malloc_and_point)."""
    tensors, offset = {}, 0
    for name, shape in shapes.items():
        size = math.prod(shape)
        tensors[name] = memory[offset:offset + size].reshape(shape)
        offset += size
    return SimpleNamespace(**tensors)


def rows(x):
    """(..., K) as (N, K): the kernels see a batch of B*T positions as N rows."""
    return x.reshape(-1, x.shape[-1])


class GPT2:
    """The parameters, in one flat buffer; allocate() adds the activations, and the gradients when training."""

    def __init__(self, config, params_memory):
        self.config = config
        self.shapes = parameter_shapes(config)
        self.num_parameters = num_parameters(config)
        assert params_memory.shape == (self.num_parameters,)
        self.dtype = params_memory.dtype
        self.params_memory = params_memory
        self.params = point_tensors(self.params_memory, self.shapes)
        self.grads_memory = self.acts_memory = None

    def allocate(self, B, T, training=False, context=None):
        """Allocates the activations for forward passes of up to B sequences of up to T positions; with training,
        also the gradients (same layout as the parameters) and the backward pass's scratch. Without, the model only
        runs forward, as generating text or evaluating does, and keeps a KV cache instead: each layer's keys and
        values of the first `context` positions (T unless given) of every sequence, (L, B, context, 2C), which
        lets a forward pass continue a sequence from `pos`."""
        if training and context:
            raise ValueError("a model allocated for training keeps no KV cache, and so has no context to size")
        context = context or T
        if context < T:
            raise ValueError(f"a context of {context} positions is shorter than T={T}")
        for what, length in ((f"sequence length T={T}", T), (f"context of {context} positions", context)):
            if length > self.config.max_seq_len:
                raise GPT2Error(f"{what} is longer than the model's maximum {self.config.max_seq_len}")
        shapes = activation_shapes(self.config, B, T, training, pos=0 if training else context - T)
        sizes = {name: (math.prod(shape),) for name, shape in shapes.items()}
        self.acts_memory = zeros(sum(size for size, in sizes.values()), self.dtype)
        self.act_regions = point_tensors(self.acts_memory, sizes)  # one flat region per activation
        self.capacity, self.training = (B, T, T if training else context), training
        C, L = self.config.channels, self.config.num_layers
        self.kv_cache = None if training else zeros(L * B * context * 2 * C, self.dtype).reshape(L, B, context, 2 * C)
        if training and self.grads_memory is None:
            self.grads_memory = zeros(self.num_parameters, self.dtype)
            self.grads = point_tensors(self.grads_memory, self.shapes)
            self.grads_are_zero = True

    def activations(self, B, T, pos=0):
        """Views of the activation buffer for a batch of (B, T) positions from `pos`, which must fit in what
        allocate() made room for: each activation is the start of its region."""
        return SimpleNamespace(**{name: getattr(self.act_regions, name)[:math.prod(shape)].reshape(shape)
                                  for name, shape in activation_shapes(self.config, B, T, self.training, pos).items()})

    def check_tokens(self, tokens, what):
        if tokens.size and (tokens.min() < 0 or tokens.max() >= self.config.vocab_size):
            bad = tokens[(tokens < 0) | (tokens >= self.config.vocab_size)][0]
            raise GPT2Error(f"{what} token id {bad} is out of range for vocab size {self.config.vocab_size}")

    def forward(self, inputs, targets=None, pos=0):
        """inputs, targets (B,T) int32. Computes the logits, and with targets the mean loss, which it returns.
        With pos > 0 (a model allocated without training, which keeps a KV cache), the inputs are positions pos to
        pos+T-1 of sequences whose first pos positions an earlier call has run."""
        if self.acts_memory is None:
            raise RuntimeError("call allocate(B, T) before forward")
        B, T = inputs.shape
        if B > self.capacity[0] or T > self.capacity[1] or pos + T > self.capacity[2]:
            raise ValueError(f"batch ({B}, {pos} + {T}) does not fit the (B, T, context) {self.capacity} allocated")
        if pos and self.training:
            raise RuntimeError("forward from pos > 0 needs the KV cache of a model allocated without training")
        self.check_tokens(inputs, "input")
        cfg, p, a = self.config, self.params, self.activations(B, T, pos)
        encoder_forward(a.encoded, inputs, p.wte, p.wpe[pos:])
        residual = a.encoded
        for l in range(cfg.num_layers):
            i = l if self.training else 0  # the layer's activations; without training, one set serves every layer
            kv_cache = None if self.training else self.kv_cache[l, :B]
            # attention: residual2 = residual + attproj(attention(qkv(layernorm(residual))))
            layernorm_forward(rows(a.ln1[i]), a.ln1_mean[i].ravel(), a.ln1_rstd[i].ravel(), rows(residual),
                              p.ln1w[l], p.ln1b[l])
            matmul_forward(rows(a.qkv[i]), rows(a.ln1[i]), p.qkvw[l], p.qkvb[l])
            attention_forward(a.atty[i], a.att_lse[i], a.qkv[i], cfg.num_heads, a.att_scores, a.att_max, a.att_sum,
                              a.att_partial, kv_cache, pos)
            matmul_forward(rows(a.residual2[i]), rows(a.atty[i]), p.attprojw[l], p.attprojb[l])
            residual_forward(rows(a.residual2[i]), rows(residual))
            # MLP: residual3 = residual2 + fcproj(gelu(fc(layernorm(residual2))))
            layernorm_forward(rows(a.ln2[i]), a.ln2_mean[i].ravel(), a.ln2_rstd[i].ravel(), rows(a.residual2[i]),
                              p.ln2w[l], p.ln2b[l])
            matmul_forward(rows(a.fch[i]), rows(a.ln2[i]), p.fcw[l], p.fcb[l])
            gelu_forward(rows(a.fch_gelu), rows(a.fch[i]))
            matmul_forward(rows(a.residual3[i]), rows(a.fch_gelu), p.fcprojw[l], p.fcprojb[l])
            residual_forward(rows(a.residual3[i]), rows(a.residual2[i]))
            residual = a.residual3[i]  # the next layer reads it before its MLP overwrites residual3[i]
        layernorm_forward(rows(a.lnf), a.lnf_mean.ravel(), a.lnf_rstd.ravel(), rows(residual), p.lnfw, p.lnfb)
        matmul_forward(rows(a.logits), rows(a.lnf), p.wte, None)  # weight tying: the classifier is wte
        self.inputs, self.targets = inputs, targets
        if targets is None:
            return None
        self.check_tokens(targets, "target")
        crossentropy_forward(a.losses.ravel(), a.logsumexp.ravel(), rows(a.logits), targets.ravel(), cfg.vocab_size)
        return float(a.losses.mean())

    def zero_grad(self):
        self.grads_memory.fill(0)
        self.grads_are_zero = True  # the next backward pass may write weight gradients instead of adding them

    def backward(self, loss_scale=1.0):
        """Accumulates into the gradients d(loss_scale * mean loss)/d(parameters) for the last forward pass.
        Gradient accumulation over k micro-batches passes loss_scale = 1/k."""
        if not self.training or self.targets is None:
            raise RuntimeError("backward needs a model allocated for training and a forward pass with targets")
        cfg, p, g = self.config, self.params, self.grads
        B, T = self.inputs.shape
        a = self.activations(B, T)
        accumulate = not self.grads_are_zero  # see matmul_backward
        dlogits = rows(a.logits)  # dlogits overwrite the logits in place
        crossentropy_backward(dlogits, rows(a.logits), a.logsumexp.ravel(), self.targets.ravel(),
                              loss_scale / (B * T), cfg.vocab_size)
        dresidual = rows(a.dresidual)  # the gradient of the residual stream, walked back through the layers
        dresidual.fill(0)
        dln, datty, dfch = rows(a.dln), rows(a.datty), rows(a.dfch)
        matmul_backward(dln, g.wte, None, dlogits, rows(a.lnf), p.wte, a.dweight_block, accumulate)
        layernorm_backward(dresidual, g.lnfw, g.lnfb, dln, rows(a.residual3[-1]), p.lnfw,
                           a.lnf_mean.ravel(), a.lnf_rstd.ravel())
        for l in reversed(range(cfg.num_layers)):
            residual = a.encoded if l == 0 else a.residual3[l - 1]
            # MLP, backwards; dresidual holds d(loss)/d(residual3[l]), which is also d(loss)/d(fcproj output)
            gelu_forward(rows(a.fch_gelu), rows(a.fch[l]))  # recomputed rather than kept for every layer
            matmul_backward(dfch, g.fcprojw[l], g.fcprojb[l], dresidual, rows(a.fch_gelu), p.fcprojw[l],
                            a.dweight_block, accumulate)
            gelu_backward(dfch, rows(a.fch[l]), dfch)
            matmul_backward(dln, g.fcw[l], g.fcb[l], dfch, rows(a.ln2[l]), p.fcw[l], a.dweight_block, accumulate)
            layernorm_backward(dresidual, g.ln2w[l], g.ln2b[l], dln, rows(a.residual2[l]), p.ln2w[l],
                               a.ln2_mean[l].ravel(), a.ln2_rstd[l].ravel())
            # attention, backwards; dresidual now holds d(loss)/d(residual2[l])
            matmul_backward(datty, g.attprojw[l], g.attprojb[l], dresidual, rows(a.atty[l]), p.attprojw[l],
                            a.dweight_block, accumulate)
            attention_backward(a.dqkv, a.datty, a.qkv[l], a.atty[l], a.att_lse[l], cfg.num_heads, a.att_scores,
                               a.datt_scores, a.att_rowdot, a.att_partial)
            matmul_backward(dln, g.qkvw[l], g.qkvb[l], rows(a.dqkv), rows(a.ln1[l]), p.qkvw[l], a.dweight_block,
                            accumulate)
            layernorm_backward(dresidual, g.ln1w[l], g.ln1b[l], dln, rows(residual), p.ln1w[l],
                               a.ln1_mean[l].ravel(), a.ln1_rstd[l].ravel())
        encoder_backward(g.wte, g.wpe, a.dresidual, self.inputs)
        self.grads_are_zero = False


# Checkpoints: llm.c's model file, header [2] maxT [3] V [4] L [5] NH [6] C [7] Vp, then the 16 tensors.
# Version 3 stores float32, version 5 bfloat16 (the top 16 bits of a float32), which we widen on load.

def config_from_header(header):
    return GPT2Config(max_seq_len=int(header[2]), vocab_size=int(header[3]), num_layers=int(header[4]),
                      num_heads=int(header[5]), channels=int(header[6]), padded_vocab_size=int(header[7]))


def load_model(path, dtype=np.float32):
    header = read_header(path, MODEL_MAGIC, (3, 5))
    config = config_from_header(header)
    check_config(config, path)
    stored = np.dtype("<f4") if header[1] == 3 else np.dtype("<u2")
    check_file_size(path, HEADER_BYTES + num_parameters(config) * stored.itemsize)
    data = np.fromfile(path, dtype=stored, offset=HEADER_BYTES)
    if header[1] == 5:
        data = (data.astype(np.uint32) << 16).view(np.float32)
    return GPT2(config, data.astype(dtype))


def save_model(path, model):
    c = model.config
    header = new_header(MODEL_MAGIC, 3, c.max_seq_len, c.vocab_size, c.num_layers, c.num_heads, c.channels,
                        c.padded_vocab_size)
    write_atomically(path, [header, model.params_memory.astype("<f4")])


# OpenAI's GPT-2 weights, and any GPT-2 that Hugging Face's transformers saved: a folder with config.json and
# model.safetensors, or a name on the Hugging Face hub ("gpt2" is the 124M model, also gpt2-medium, -large, -xl, or
# owner/name), which huggingface_hub downloads once into its cache. The tensors are the same numbers as llm.c's under
# other names, with two differences: transformers keeps each linear layer's weight as (in, out), the transpose of
# ours (its "Conv1D"), and the classifier lm_head is wte itself, which is not stored again (or stored equal).

HF_NAMES = {"wte": "wte.weight", "wpe": "wpe.weight", "ln1w": "h.{}.ln_1.weight", "ln1b": "h.{}.ln_1.bias",
            "qkvw": "h.{}.attn.c_attn.weight", "qkvb": "h.{}.attn.c_attn.bias", "attprojw": "h.{}.attn.c_proj.weight",
            "attprojb": "h.{}.attn.c_proj.bias", "ln2w": "h.{}.ln_2.weight", "ln2b": "h.{}.ln_2.bias",
            "fcw": "h.{}.mlp.c_fc.weight", "fcb": "h.{}.mlp.c_fc.bias", "fcprojw": "h.{}.mlp.c_proj.weight",
            "fcprojb": "h.{}.mlp.c_proj.bias", "lnfw": "ln_f.weight", "lnfb": "ln_f.bias"}
HF_TRANSPOSED = ("qkvw", "attprojw", "fcw", "fcprojw")


def hf_folder(source):
    """The local folder of a Hugging Face GPT-2: `source` itself, or the hub's copy of the repository it names."""
    if os.path.isdir(source):
        return source
    try:
        import huggingface_hub
    except ImportError:
        raise GPT2Error(f"-e {source}: reading a model from the Hugging Face hub needs huggingface_hub: "
                        "pip install huggingface_hub safetensors") from None
    try:  # the hub's cache, resumed downloads, HF_HUB_OFFLINE and HF_ENDPOINT are huggingface_hub's
        return huggingface_hub.snapshot_download(source, allow_patterns=["config.json", "model.safetensors"])
    except Exception as e:  # it raises its own errors, and its HTTP client's
        raise GPT2Error(f"{source}: no such folder here, and cannot get it from the Hugging Face hub "
                        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None


def config_from_hf(folder):
    """The model shape in a Hugging Face GPT-2's config.json; another architecture is refused."""
    path = os.path.join(folder, "config.json")
    try:
        hf = json.loads(read_file(path))
    except ValueError as e:
        raise GPT2Error(f"{path}: not JSON ({e})") from None
    if not isinstance(hf, dict) or hf.get("model_type") != "gpt2":
        found = hf.get("model_type") if isinstance(hf, dict) else None
        raise GPT2Error(f"{path}: not a GPT-2 (model_type {found!r}, not 'gpt2')")
    if not all(isinstance(hf.get(key), int) for key in ("n_positions", "vocab_size", "n_layer", "n_head", "n_embd")):
        raise GPT2Error(f"{path}: a GPT-2 this trainer cannot run: its sizes are not integers")
    expected = {"activation_function": ("gelu_new", "gelu_pytorch_tanh"),  # both GELU's tanh approximation
                "n_inner": (None, 4 * hf["n_embd"]), "layer_norm_epsilon": (1e-5,), "scale_attn_weights": (True,),
                "scale_attn_by_inverse_layer_idx": (False,), "reorder_and_upcast_attn": (False,)}
    unlike = {key: hf[key] for key, values in expected.items() if key in hf and hf[key] not in values}
    if unlike:
        raise GPT2Error(f"{path}: a GPT-2 this trainer cannot run: " + ", ".join(f"{k} {v}" for k, v in unlike.items()))
    V = hf["vocab_size"]
    config = GPT2Config(max_seq_len=hf["n_positions"], vocab_size=V, padded_vocab_size=(V + 127) // 128 * 128,
                        num_layers=hf["n_layer"], num_heads=hf["n_head"], channels=hf["n_embd"])
    check_config(config, path)
    return config


def load_hf(folder):
    """A Hugging Face GPT-2's weights, in our layout: transposed where it keeps (in, out), wte padded to Vp rows."""
    from safetensors import SafetensorError, safe_open
    config, path = config_from_hf(folder), os.path.join(folder, "model.safetensors")
    check_regular_file(path)
    if os.path.exists(path + ".index.json"):
        raise GPT2Error(f"{path}: split over several files (model.safetensors.index.json), which this trainer does "
                        "not read: save the model with a max_shard_size larger than it")
    if not os.path.exists(path):
        raise GPT2Error(f"{path}: missing (weights are read from safetensors only, never from a pickled "
                        "pytorch_model.bin)")
    model = GPT2(config, zeros(num_parameters(config), np.float32))
    try:
        with safe_open(path, framework="np") as f:
            names = set(f.keys())
            prefix = "transformer." if "transformer.wte.weight" in names else ""
            known = {prefix + name.format(l) for name in HF_NAMES.values() for l in range(config.num_layers)}
            unknown = sorted(name for name in names - known - {"lm_head.weight"}  # and the causal masks of old saves:
                             if not re.fullmatch(re.escape(prefix) + r"h\.[0-9]+\.attn\.(masked_)?bias", name))
            if unknown:
                raise GPT2Error(f"{path}: tensors that its config.json has no place for: {', '.join(unknown[:3])}")
            bfloat16 = [name for name in names if f.get_slice(name).get_dtype() == "BF16"]
            if bfloat16:
                raise GPT2Error(f"{path}: bfloat16 weights ({bfloat16[0]}...), which safetensors' numpy API cannot "
                                "read: save the model in float32 or float16")

            def tensor(name):
                if prefix + name not in names:
                    raise GPT2Error(f"{path}: no tensor {prefix + name}")
                return f.get_tensor(prefix + name)

            for name, hf_name in HF_NAMES.items():
                ours = getattr(model.params, name)
                for l, part in enumerate(ours if "{}" in hf_name else [ours]):
                    value = tensor(hf_name.format(l))
                    value = value.T if name in HF_TRANSPOSED else value
                    target = part[:config.vocab_size] if name == "wte" else part
                    if value.shape != target.shape:
                        raise GPT2Error(f"{path}: {prefix + hf_name.format(l)} is {value.shape}, not {target.shape}")
                    target[...] = value
            if "lm_head.weight" in names and not np.array_equal(f.get_tensor("lm_head.weight"),
                                                                model.params.wte[:config.vocab_size]):
                raise GPT2Error(f"{path}: its lm_head is not its wte: GPT-2 ties them, and so does this trainer")
    except (OSError, ValueError, TypeError, SafetensorError) as e:  # a damaged file, a dtype numpy lacks
        raise GPT2Error(f"{path}: cannot read it as safetensors: {e}") from None
    return model


GPT2_SHAPES = {6: (384, 6), 12: (768, 12), 24: (1024, 16), 36: (1280, 20), 48: (1600, 25), 60: (1920, 30),
               72: (2880, 30), 84: (3456, 36)}  # depth: (channels, heads)
GPT3_SHAPES = {384: (6, 64), 768: (12, 64), 1024: (24, 64), 1536: (24, 96), 2048: (24, 128), 2560: (32, 80),
               4096: (32, 128), 5140: (40, 128), 12288: (96, 128)}  # channels: (depth, head size)


def config_from_descriptor(descriptor):
    match = re.fullmatch(r"(gpt2:)?d([0-9]+)|gpt3:c([0-9]+)", descriptor)
    if not match:
        raise GPT2Error(f"unknown model descriptor {descriptor!r}: expected an llm.c .bin file, a Hugging Face GPT-2 "
                        "(a hub name or a folder), dN, gpt2:dN or gpt3:cN")
    number = match[2] or match[3]
    if match[3]:
        if int(number) not in GPT3_SHAPES:
            raise GPT2Error(f"unsupported GPT-3 channels {number}: one of {sorted(GPT3_SHAPES)}")
        channels = int(number)
        depth, head_size = GPT3_SHAPES[channels]
        heads, max_seq_len = max(1, channels // head_size), 2048
    else:
        if int(number) not in GPT2_SHAPES:
            raise GPT2Error(f"unsupported GPT-2 depth {number}: one of {sorted(GPT2_SHAPES)}")
        depth = int(number)
        (channels, heads), max_seq_len = GPT2_SHAPES[depth], 1024
    config = GPT2Config(max_seq_len=max_seq_len, vocab_size=50257, padded_vocab_size=50304, num_layers=depth,
                        num_heads=heads, channels=channels)
    check_config(config, descriptor)
    return config


def build_from_descriptor(descriptor):
    config = config_from_descriptor(descriptor)
    model = GPT2(config, np.zeros(num_parameters(config), dtype=np.float32))
    p, L, rng = model.params, config.num_layers, MersenneTwister(42)
    residual_scale = np.float32(1.0) / np.sqrt(np.float32(2.0 * L))  # float32 arithmetic, as in llm.c
    for name in ("ln1w", "ln2w", "lnfw"):
        getattr(p, name)[...] = 1.0
    rng.fill_normal(p.wte[:config.vocab_size].reshape(-1), 0.02)  # the padded rows stay zero
    rng.fill_normal(p.wpe.reshape(-1), 0.02)
    for l in range(L):
        for name, std in (("qkvw", 0.02), ("attprojw", np.float32(0.02) * residual_scale), ("fcw", 0.02),
                          ("fcprojw", np.float32(0.02) * residual_scale)):
            rng.fill_normal(getattr(p, name)[l].reshape(-1), std)
    return model




def model_kind(source):
    """What -e names: "shape" (dN, gpt2:dN, gpt3:cN, even where a file of that name exists), "llm.c" (a model file),
    "hf" (a Hugging Face GPT-2: a folder, or a name on the hub such as gpt2 or owner/name), or else "shape" again,
    refused then as an unknown one."""
    if re.fullmatch(r"(gpt2:)?d[0-9]+|gpt3:c[0-9]+", source):
        return "shape"
    if source.endswith(".safetensors"):
        raise GPT2Error(f"{source}: give -e the folder that holds it and its config.json")
    if os.path.isdir(source):
        return "hf"
    if os.path.lexists(source) or source.endswith(".bin"):
        return "llm.c"
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?", source):
        return "hf"
    return "llm.c" if "/" in source or source.startswith(".") else "shape"  # a path, then: "cannot open"


def model_config(source):
    """The shape of the model -e names, without loading its weights."""
    kind = model_kind(source)
    if kind == "llm.c":
        config = config_from_header(read_header(source, MODEL_MAGIC, (3, 5)))
        check_config(config, source)
        return config
    return config_from_hf(hf_folder(source)) if kind == "hf" else config_from_descriptor(source)


def load_gpt2(source):
    """The model -e names: an llm.c model file (.bin), a Hugging Face GPT-2 (a folder or a hub name), or a shape
    (d12, gpt2:d12, gpt3:c768) initialised as llm.c does. Parameters only: allocate() adds what running it needs."""
    kind = model_kind(source)
    if kind == "llm.c":
        return load_model(source)
    return load_hf(hf_folder(source)) if kind == "hf" else build_from_descriptor(source)


# ----------------------------------------------------------------------------------------------------------------
# 5. The optimizer: AdamW, as llm.c's gpt2_update
#
# m and v are running averages of the gradient and of its square; their bias-corrected ratio sets each
# parameter's step. Weight decay is decoupled (it shrinks the parameter directly) and, as in llm.c's full
# trainer, applies only to the embeddings and the weight matrices (one 2-D matrix per layer; stored here as
# one (L, out, in) tensor), not to the biases or layernorms. m and v exist only in a model that trains: they are
# the optimizer's, not the model's.

@kernel
def adamw_kernel(params, grads, m, v, lr, beta1, beta2, eps, weight_decay, grad_scale, beta1_correction,
                 beta2_correction):
    # params, grads, m, v (P,): one parameter tensor, flat; the scalars have the parameters' dtype
    one = params.dtype.type(1)
    for i in prange(params.shape[0]):
        grad = grads[i] * grad_scale
        m[i] = beta1 * m[i] + (one - beta1) * grad
        v[i] = beta2 * v[i] + (one - beta2) * grad * grad
        m_hat = m[i] / beta1_correction
        v_hat = v[i] / beta2_correction
        params[i] -= lr * (m_hat / (math.sqrt(v_hat) + eps) + weight_decay * params[i])


DECAYED = ("wte", "wpe", "qkvw", "attprojw", "fcw", "fcprojw")  # the matrices; not the biases or layernorms


class AdamW:
    def __init__(self, model, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, shard=None):
        """Updates the parameters `shard` = (start, stop) of the flat buffer (default: all of them), and keeps m and
        v for those only (a shard: ZeRO-1, section 9)."""
        self.model, self.beta1, self.beta2, self.eps, self.weight_decay = model, beta1, beta2, eps, weight_decay
        self.start, self.stop = shard or (0, model.num_parameters)
        self.m_memory = zeros(self.stop - self.start, model.dtype)  # the parameters' layout, from start to stop
        self.v_memory = zeros(self.stop - self.start, model.dtype)
        self.grads = model.grads_memory[self.start:self.stop]

    def update(self, lr, t, grad_scale=1.0):
        """One AdamW step; t counts steps from 1. The gradients are multiplied by grad_scale first (for
        clipping). The arithmetic is in the parameters' dtype, float32 as in llm.c; the bias corrections
        1 - beta**t are computed in double first, as PyTorch does, and then rounded."""
        model, f, start = self.model, self.model.dtype.type, self.start
        offset = 0
        for name, shape in model.shapes.items():  # each tensor's part in start..stop
            first, last = max(offset, start), min(offset + math.prod(shape), self.stop)
            if first < last:
                adamw_kernel(model.params_memory[first:last], self.grads[first - start:last - start],
                             self.m_memory[first - start:last - start], self.v_memory[first - start:last - start],
                             f(lr), f(self.beta1), f(self.beta2), f(self.eps),
                             f(self.weight_decay if name in DECAYED else 0.0), f(grad_scale),
                             f(1.0 - self.beta1 ** t), f(1.0 - self.beta2 ** t))
            offset += math.prod(shape)


@kernel
def sum_of_squares(x):
    # x (P,) -> sum of x[i]^2 in float64. Each block of 65536 values has its own partial sum, added up in order
    # afterwards: a plain parallel reduction would add the threads' partial sums in whatever order the threads
    # finish, and the last bits of the norm, and so of a clipped update, would change from run to run.
    block = 65536
    partial = np.zeros((x.shape[0] + block - 1) // block)
    for j in prange(partial.shape[0]):
        total = 0.0
        for i in range(j * block, min(x.shape[0], (j + 1) * block)):
            total += x[i] * x[i]
        partial[j] = total
    return partial.sum()


def gradient_norm(grads):
    """The L2 norm of all the gradients together (grads: the flat buffer), which clipping compares to its
    threshold."""
    return math.sqrt(sum_of_squares(grads))


# Learning rate schedules, as llmc/schedulers.h: a linear warmup over the first `warmup` steps, then "cosine" or
# "linear" decay to lr * final_frac at the last step, "wsd" (warmup, stable, decay) holding lr until 80% of the
# steps and then decaying as 1 - sqrt, or "constant".

SCHEDULES = ("cosine", "linear", "constant", "wsd")


def learning_rate(schedule, step, lr, warmup, final_frac, num_steps):
    if schedule == "constant":
        return lr
    if step < warmup:
        return lr * (step + 1) / warmup
    min_lr = lr * final_frac
    if schedule == "wsd":
        decay_start = int(0.8 * num_steps)
        if step < decay_start:
            return lr
        return min_lr + (1.0 - math.sqrt((step - decay_start) / (num_steps - decay_start))) * (lr - min_lr)
    decay = (step - warmup) / max(num_steps - warmup, 1)
    if schedule == "cosine":
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * decay)) * (lr - min_lr)
    return lr - decay * (lr - min_lr)  # linear


# ----------------------------------------------------------------------------------------------------------------
# 6. Data: llm.c's token shards and its data loader
#
# A shard is a header ([2] = number of tokens) and then the tokens as uint16. The loader reads batches of B*T+1
# consecutive tokens: inputs are the first B*T, targets the same shifted by one. It walks the shards matched by a
# glob pattern in sorted order, and each shard in steps of B*T tokens. With shuffling on (llm.c shuffles the
# training set, not the validation set), each epoch visits the shards in a random order and each shard's batches
# in a random order, drawn from a Mersenne Twister seeded 42 + rank, exactly as llmc/dataloader.h does, so the
# same files give the same batches in the same order as llm.c.

def read_shard_header(path):
    """Checks a token shard's header and size; returns its number of tokens."""
    header = read_header(path, SHARD_MAGIC, (1,))
    num_tokens = int(header[2])
    check_file_size(path, HEADER_BYTES + 2 * num_tokens)
    return num_tokens


class DataLoader:
    def __init__(self, pattern, B, T, vocab_size, shuffle=False, process_rank=0, num_processes=1):
        self.files = sorted(glob.glob(pattern))
        if not self.files:
            raise GPT2Error(f"no token shards match {pattern!r}")
        self.B, self.T, self.vocab_size, self.shuffle = B, T, vocab_size, shuffle
        self.tokens_per_sample = num_processes * B * T   # one step of all processes together
        self.local_offset = process_rank * B * T         # where this process's part of a sample starts
        self.num_tokens = self.num_batches = 0  # in all the shards
        for path in self.files:
            n = read_shard_header(path)
            if n < self.tokens_per_sample + 1:
                raise GPT2Error(f"{path}: {n} tokens, fewer than B*T+1 = {self.tokens_per_sample + 1}")
            self.num_tokens += n
            self.num_batches += (n - 1) // self.tokens_per_sample
        if shuffle:  # the same order on every process: llm.c seeds 42 + rank, and its ranks can read the same
            self.rng = MersenneTwister(42)  # batches twice and miss others (its issue #792)
            self.shard_order = np.arange(len(self.files))
        self.reset()

    def open_shard(self, index):
        """Maps the index-th shard of this epoch's order into memory."""
        path = self.files[self.shard_order[index] if self.shuffle else index]
        self.shard = np.memmap(path, dtype="<u2", mode="r", offset=HEADER_BYTES)
        if self.shard.max() >= self.vocab_size:
            position = int(np.argmax(self.shard >= self.vocab_size))
            raise GPT2Error(f"{path}: token id {self.shard[position]} at token {position} is out of range for "
                            f"vocab size {self.vocab_size}")
        # the last token of a shard is only ever a target, hence the -1
        self.shard_num_samples = (self.shard.size - 1) // self.tokens_per_sample

    def start_shard(self, index):
        self.shard_index, self.sample_index = index, 0
        self.open_shard(index)
        if self.shuffle:
            self.sample_order = self.rng.permutation(self.shard_num_samples)

    def reset(self):
        """Back to the start of the first shard; with shuffling, a new epoch in a new order."""
        if self.shuffle:
            self.shard_order = self.shard_order[self.rng.permutation(len(self.files))]
        self.start_shard(0)

    def next_batch(self):
        """Returns (inputs, targets), each (B,T) int32."""
        if self.sample_index >= self.shard_num_samples:  # this shard is done: the next one, or a new epoch
            if self.shard_index == len(self.files) - 1:
                self.reset()
            else:
                self.start_shard(self.shard_index + 1)
        sample = self.sample_order[self.sample_index] if self.shuffle else self.sample_index
        start = sample * self.tokens_per_sample + self.local_offset
        buffer = np.array(self.shard[start:start + self.B * self.T + 1], dtype=np.int32)
        self.sample_index += 1
        return buffer[:-1].reshape(self.B, self.T), buffer[1:].reshape(self.B, self.T)

    def resume(self, shard_index, sample_index, shard_order=None, sample_order=None, rng_state=None):
        """Continues from a saved position: llm.c's dataloader_resume, and with shuffling the saved orders."""
        if self.shuffle:
            self.shard_order, self.sample_order = shard_order, sample_order
            self.rng.bit_generator.state = rng_state
        self.shard_index, self.sample_index = shard_index, sample_index
        self.open_shard(shard_index)


# A multiple-choice evaluation set, such as HellaSwag's (dev/data/hellaswag.py writes it), is llm.c's eval file:
# a header ([2] = number of examples, [3] = the longest example's bytes), then each example as a stream of uint16:
# 65535 (a delimiter), the example's bytes, its index, its label (the right completion), its number of
# completions, its context (a length, then the tokens), and each completion (a length, then the tokens).

def read_eval_file(path, vocab_size):
    """The examples of an eval file, every field checked: [(label, context tokens, [completion tokens, ...])]."""
    header = read_header(path, EVAL_MAGIC, (1,))
    num_examples, longest = int(header[2]), int(header[3])
    if num_examples < 1:
        raise GPT2Error(f"{path}: its header counts {num_examples} examples")
    body = read_file(path)[HEADER_BYTES:]
    data = np.frombuffer(body[:len(body) // 2 * 2], dtype="<u2")
    examples, offset, largest = [], 0, 0
    for index in range(num_examples):
        where = f"{path}: example {index}"
        if offset + 6 > len(data):
            raise GPT2Error(f"{path}: truncated: {index} of {num_examples} examples")
        delimiter, size, stored_index, label, count = (int(v) for v in data[offset:offset + 5])
        if delimiter != 65535:
            raise GPT2Error(f"{where}: no delimiter (65535) where it should start")
        if size % 2 or not 12 <= size <= longest:
            raise GPT2Error(f"{where}: a byte count of {size}, where the header's longest example is {longest}")
        if offset + size // 2 > len(data):
            raise GPT2Error(f"{path}: truncated: example {index} is {size} bytes, {2 * (len(data) - offset)} are left")
        if stored_index != index:
            raise GPT2Error(f"{where}: holds the index {stored_index}")
        stream, parts, at = data[offset + 5:offset + size // 2], [], 0
        for _ in range(1 + count):  # the context, then the completions: each a length and that many tokens
            length = int(stream[at]) if at < len(stream) else 0
            if length == 0 or at + 1 + length > len(stream):
                raise GPT2Error(f"{where}: an empty context or completion, or one that runs past its {size} bytes")
            parts.append(stream[at + 1:at + 1 + length].astype(np.int32))
            at += 1 + length
        if at != len(stream):
            raise GPT2Error(f"{where}: its {size} bytes are not its fields' {2 * (5 + at)}")
        if not label < count:
            raise GPT2Error(f"{where}: label {label} of {count} completions")
        bad = [token for part in parts for token in part if token >= vocab_size]
        if bad:
            raise GPT2Error(f"{where}: token id {bad[0]} is out of range for vocab size {vocab_size}")
        examples.append((label, parts[0], parts[1:]))
        offset, largest = offset + size // 2, max(largest, size)
    if 2 * offset != len(body) or largest != longest:
        raise GPT2Error(f"{path}: its size or its header's longest example ({longest} bytes) disagrees with its "
                        f"{num_examples} examples")
    return examples


# ----------------------------------------------------------------------------------------------------------------
# 7. Tokenizer
#
# GPT-2's byte-pair encoding comes from tiktoken. tiktoken downloads its two BPE files on first use; with no
# network we build the same encoding from the identical files in data/gpt2/ (OpenAI's, MIT-licensed), after
# checking their sha256. llm.c's tokenizer file holds, for each token id, its bytes (a 1-byte length, then the
# bytes), which is all that decoding needs.

EOT_TOKEN = 50256  # <|endoftext|>, which separates documents and starts every sample
BPE_FILES_SHA256 = {"vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
                    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"}


@functools.cache
def gpt2_encoding():
    """tiktoken's "gpt2" encoding, downloaded (or cached) by tiktoken, or else built offline."""
    import tiktoken
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception:  # no network: tiktoken raises whatever its HTTP client raises
        return gpt2_encoding_offline()


BPE_FILES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "gpt2")


def gpt2_encoding_offline():
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str
    paths = {name: os.path.join(BPE_FILES_DIR, name) for name in BPE_FILES_SHA256}
    for name, path in paths.items():
        digest = hashlib.sha256(read_file(path)).hexdigest()
        if digest != BPE_FILES_SHA256[name]:
            raise GPT2Error(f"{path}: sha256 {digest} is not GPT-2's {BPE_FILES_SHA256[name]}")
    ranks = data_gym_to_mergeable_bpe_ranks(paths["vocab.bpe"], paths["encoder.json"])
    return tiktoken.Encoding(name="gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": EOT_TOKEN}, explicit_n_vocab=EOT_TOKEN + 1)


def token_pieces(encoding):
    """The bytes of each token id, which is all that decoding needs."""
    return [encoding.decode_single_token_bytes(i) for i in range(encoding.n_vocab)]


def write_tokenizer(path, encoding):
    """llm.c's tokenizer file, version 2: header [2] number of tokens, [3] the EOT token id."""
    pieces = token_pieces(encoding)
    body = b"".join(bytes([len(piece)]) + piece for piece in pieces)
    write_atomically(path, [new_header(TOKENIZER_MAGIC, 2, len(pieces), encoding.eot_token),
                            np.frombuffer(body, dtype=np.uint8)])


def read_tokenizer(path):
    """Returns the list of each token's bytes and the EOT token id (version 1 files have none: GPT-2's)."""
    header = read_header(path, TOKENIZER_MAGIC, (1, 2))
    num_tokens = int(header[2])
    eot = int(header[3]) if header[1] == 2 else EOT_TOKEN
    if not 0 <= eot < num_tokens:
        raise GPT2Error(f"{path}: EOT token id {eot} is out of range for its {num_tokens} tokens")
    data = read_file(path)[HEADER_BYTES:]
    pieces, offset = [], 0
    for _ in range(num_tokens):
        if offset >= len(data) or offset + 1 + data[offset] > len(data):
            raise GPT2Error(f"{path}: truncated: {len(pieces)} of {num_tokens} tokens")
        pieces.append(data[offset + 1:offset + 1 + data[offset]])
        offset += 1 + data[offset]
    return pieces, eot


# ----------------------------------------------------------------------------------------------------------------
# 8. Generating text
#
# A model continues a text one token at a time: it gives the probabilities of the next token, one is drawn, and
# it becomes the input of the next position. Recomputing the whole sequence for each new token would repeat the
# same work over and over: position t's keys and values never change once computed, since a position only
# attends to those before it. So a model allocated without training keeps every layer's keys and values in its
# KV cache (see attention_forward): the prompt runs once, all its positions together, which fills the cache; then
# each new token runs alone, one position, attending to the cached keys and values. A step then costs about one
# read of the weights (every matrix is multiplied by a single row), and memory is the parameters, the cache and
# one layer's activations: no gradients, no optimizer state.
#
# The draw is llm.c's: softmax over the V real tokens, and the first token where the running sum of the
# probabilities passes a uniform "coin" from the xorshift generator, seeded 1337 in the trainer. A temperature
# divides the logits first (below 1 sharpens the distribution, 0 always takes the most likely token), and top-k
# and top-p (nucleus) sampling draw only from the most likely tokens.

@njit(cache=True)
def sample_token(logits, V, coin, temperature=1.0, top_k=0, top_p=1.0):
    # logits (Vp,) -> a token id below V; coin is uniform in [0, 1). In float32, as llm.c's softmax and
    # sample_mult: with the defaults, exactly those
    if np.float32(temperature) == 0:
        return np.argmax(logits[:V])
    maxval = logits[:V].max()
    probs = np.exp((logits[:V] - maxval) / np.float32(temperature))
    probs /= probs.sum()
    if 0 < top_k < V or top_p < 1:
        probs = keep_most_likely(probs, top_k, top_p)
    cdf = np.float32(0.0)
    for i in range(V):
        cdf += probs[i]
        if coin < cdf:
            return i
    for i in range(V - 1, -1, -1):  # the sum fell short of the coin by a rounding: the last token that may come
        if probs[i] > 0:
            return i
    return V - 1


@njit(cache=True)
def keep_most_likely(probs, top_k, top_p):
    # probs (V,) -> the probabilities of the top_k most likely tokens (all if 0) and, of those, of the fewest most
    # likely whose probabilities add up to top_p or more (of the top_k's sum), rescaled to sum to 1; the others 0.
    # Equal probabilities are taken in the order of their token ids. Sorting all V tokens for every draw would
    # cost more than a GPT-2 124M forward pass, so only candidates are sorted: the top_k found by a partition,
    # or, for top-p alone, the tokens above the largest threshold whose tokens reach top_p of the sum.
    V = len(probs)
    k = V if top_k <= 0 else min(top_k, V)
    candidates = np.arange(V)
    if k < V:
        candidates = np.nonzero(probs >= np.partition(probs, V - k)[V - k])[0]  # the k-th largest, and above
    elif top_p < 1:
        for threshold in (1e-3, 1e-5, 1e-7):
            above = np.nonzero(probs >= threshold)[0]
            if probs[above].sum() >= top_p * probs.sum():
                candidates = above
                break
    order = candidates[np.argsort(-probs[candidates], kind="mergesort")]  # most likely first
    keep = min(k, len(order))
    if top_p < 1:
        target = top_p * (probs[order[:k]].sum() if k < V else probs.sum())
        running = np.float32(0.0)
        for n in range(keep):
            running += probs[order[n]]
            if running >= target:
                keep = n + 1
                break
    kept = np.zeros_like(probs)
    kept[order[:keep]] = probs[order[:keep]]
    return kept / kept.sum()


def generate(model, prompt, num_tokens, rng, temperature=1.0, top_k=0, top_p=1.0):
    """Yields num_tokens new tokens, one at a time, drawn after `prompt` (a list of token ids) with the coins of
    rng (XorShift). The model is allocated without training, for B=1, T >= len(prompt) and a context of at least
    len(prompt) + num_tokens - 1 positions (the last token drawn never runs through it)."""
    _, T, context = model.capacity
    if model.training or not 1 <= len(prompt) <= T or len(prompt) + num_tokens - 1 > context:
        raise ValueError(f"a prompt of {len(prompt)} tokens and {num_tokens} new tokens do not fit the "
                         f"(B, T, context) {model.capacity} of a model allocated without training")
    V, top_k = model.config.vocab_size, min(int(top_k), model.config.vocab_size)
    model.forward(np.array([prompt], dtype=np.int32))  # the whole prompt at once
    logits = model.activations(1, len(prompt)).logits[0, -1]
    for n in range(num_tokens):
        token = int(sample_token(logits, V, rng.random_f32(), float(temperature), top_k, float(top_p)))
        yield token
        if n + 1 < num_tokens:
            pos = len(prompt) + n  # the new token's position: it attends to the cache's first pos positions
            with one_numba_thread():
                model.forward(np.array([[token]], dtype=np.int32), pos=pos)
            logits = model.activations(1, 1, pos).logits[0, 0]


@contextlib.contextmanager
def one_numba_thread():
    """One position is too little work to share: waking numba's other threads for each small kernel cost 5% of a
    token. Numba's kernels then keep to the calling thread; the matrix products still use all of BLAS's."""
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(threads)


def printable(text):
    """Drops control characters but whitespace, as llm.c's safe_printf drops the single bytes that are neither
    printable nor space: a sample's text then cannot move the terminal's cursor or change its colours."""
    return "".join(ch for ch in text if unicodedata.category(ch) != "Cc" or ch in " \t\n\v\f\r")


class TextStream:
    """Prints tokens as text as they come. The bytes of the tokens are decoded as one stream: a character split
    over two tokens is printed whole once its last byte came, never as two replacement characters."""

    def __init__(self, pieces, out=None):
        self.pieces, self.out = pieces, out or sys.stdout
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def write(self, token):
        self.out.write(printable(self.decoder.decode(self.pieces[token])))
        self.out.flush()

    def end(self):  # bytes left of a character that never ended print as one replacement character
        self.out.write(printable(self.decoder.decode(b"", final=True)))
        self.out.flush()


# ----------------------------------------------------------------------------------------------------------------
# 9. Many processes: data-parallel training over MPI
#
# `mpirun -np N python train_gpt2.py ...` starts N copies of this program, on one machine or many, which train one
# model together, as llm.c's trainer does on N GPUs. Each process (rank 0..N-1) holds the whole model and reads its
# own B rows of every batch (the data loader's process_rank), so a step sees N*B rows; its backward pass scales the
# loss by 1/N, and one all-reduce per optimizer step sums the gradients over the processes: every process then
# holds the gradient of the mean loss over all N*B rows and takes the same AdamW step. With ZeRO-1 (-z 1), each
# process keeps AdamW's m and v for its 1/N slice of the parameters only: the gradients are reduce-scattered (each
# process gets the sum of its slice), each process updates its slice, and an all-gather gives every process all
# the parameters again. Rank 0 prints, samples and writes the model and main.log; every rank writes its own
# training state. Without mpirun, MPI is never imported, and the one process is what the rest of the file reads as.

def launched_processes():
    """How many processes mpirun started, from the environment it gives them (Open MPI's, or MPICH's Hydra)."""
    return int(os.environ.get("OMPI_COMM_WORLD_SIZE") or os.environ.get("PMI_SIZE") or 1)


def launched_rank():
    return int(os.environ.get("OMPI_COMM_WORLD_RANK") or os.environ.get("PMI_RANK") or 0)


class Processes:
    def __init__(self, zero=False, comm=None):
        self.comm, self.zero = comm, zero
        self.rank, self.count = (comm.rank, comm.size) if comm else (0, 1)
        self.received = None  # reduce_scatter's buffer

    @classmethod
    def start(cls, zero):
        """This process and its peers: under mpirun, MPI's world; otherwise this process alone."""
        if launched_processes() == 1:
            return cls(zero)
        try:
            from mpi4py import MPI
        except ImportError:
            raise GPT2Error("mpirun started this process, but mpi4py is not installed: pip install '.[mpi]'") from None
        return cls(zero, MPI.COMM_WORLD)

    def shards(self, size):
        """(start, stop) of each process's slice of `size` values, in rank order: equal but for one value."""
        counts = [size // self.count + (rank < size % self.count) for rank in range(self.count)]
        starts = np.cumsum([0] + counts[:-1]).tolist()
        return [(start, start + count) for start, count in zip(starts, counts)]

    def optimizer_shard(self, num_parameters):
        """With ZeRO-1, the slice of the parameters whose AdamW state this process keeps; None for all of them."""
        return self.shards(num_parameters)[self.rank] if self.zero and self.comm else None

    @contextlib.contextmanager
    def together(self):
        """A block that may fail on one process alone (its own files, rank 0's work): if it fails on any process,
        it fails on all, with the message of the first rank that failed, so that none waits for the others
        forever. With one process, nothing to do."""
        error = None
        try:
            yield
        except (GPT2Error, OSError, MemoryError) as e:
            error = e
        if self.comm:
            failed = next((message for message in self.comm.allgather(error and str(error)) if message), None)
            if failed:
                raise GPT2Error(failed, every_process=True) from None
        elif error:
            raise error

    def broadcast(self, value):
        """Rank 0's value, on every process."""
        return self.comm.bcast(value) if self.comm else value

    def sum(self, value):
        """The sum of a number over the processes, the same on every process (added up in rank order)."""
        return sum(self.comm.allgather(value)) if self.comm else value

    def average(self, value):
        return self.sum(value) / self.count

    def sum_gradients(self, model, optimizer):
        """Every process's gradients summed: with ZeRO-1 into this process's slice of the gradient buffer, where its
        optimizer reads them (a reduce-scatter); otherwise into all of it, on every process (an all-reduce, made of
        the same reduce-scatter and an all-gather: each slice is summed once, by its process, so every process holds
        the same sums to the bit)."""
        if self.comm:
            self.reduce_scatter(model.grads_memory)
            if not self.zero:
                self.all_gather(model.grads_memory)

    def reduce_scatter(self, x):
        """Sums x over the processes into each process's slice of it, around a ring: at exchange k, process r sends
        its running sum of slice r-k-1 to process r+1 and adds what r-1 sends of slice r-k-2 to its own; after N-1
        exchanges its slice r holds the sum of all. (Open MPI's own Reduce_scatter was several times slower here,
        and took a temporary buffer the size of x.) The other slices of x are left holding partial sums."""
        shards, rank, count = self.shards(x.size), self.rank, self.count
        if self.received is None:  # allocated once: fresh pages every step cost their faults
            self.received = np.empty(max(stop - start for start, stop in shards), dtype=x.dtype)
        received = self.received
        for k in range(count - 1):
            send_start, send_stop = shards[(rank - k - 1) % count]
            start, stop = shards[(rank - k - 2) % count]
            self.comm.Sendrecv(x[send_start:send_stop], dest=(rank + 1) % count,
                               recvbuf=received[:stop - start], source=(rank - 1) % count)
            x[start:stop] += received[:stop - start]

    def gradient_norm(self, optimizer):
        """The norm of all the gradients: from this process's slice and the others' with ZeRO-1."""
        if not (self.comm and self.zero):
            return gradient_norm(optimizer.grads)
        return math.sqrt(sum(self.comm.allgather(sum_of_squares(optimizer.grads))))

    def all_gather(self, x):
        """Each process's slice of x to every process."""
        from mpi4py import MPI
        from mpi4py.util.dtlib import from_numpy_dtype
        shards = self.shards(x.size)
        counts, starts = [stop - start for start, stop in shards], [start for start, _ in shards]
        self.comm.Allgatherv(MPI.IN_PLACE, [x, counts, starts, from_numpy_dtype(x.dtype)])

    def gather_parameters(self, model):
        """With ZeRO-1, each process updated its slice of the parameters: an all-gather gives every process all."""
        if self.comm and self.zero:
            self.all_gather(model.params_memory)

    def check_same_parameters(self, model):
        """The processes' parameters must be equal to the bit; a cheap check of it, made at each checkpoint."""
        if self.comm and len(set(self.comm.allgather(zlib.crc32(model.params_memory)))) > 1:
            raise GPT2Error("the processes' parameters differ: their MPI reductions did not agree to the bit")


ONE_PROCESS = Processes()  # a run without mpirun


# ----------------------------------------------------------------------------------------------------------------
# 10. Training: one step, the command line, checkpoints and logs, and the loop

def train_step(model, optimizer, next_batch, grad_accum_steps, lr, step, grad_clip=0.0, processes=ONE_PROCESS):
    """One optimizer step, as the body of llm.c's training loop: forward and backward passes over grad_accum_steps
    micro-batches from next_batch(), their gradients adding up; the gradient norm, and clipping; AdamW. With many
    processes, each runs this on its own rows, and the marked lines combine their work. Returns the mean loss and
    the gradient norm."""
    model.zero_grad()
    loss = 0.0
    for _ in range(grad_accum_steps):
        loss += model.forward(*next_batch()) / grad_accum_steps
        model.backward(loss_scale=1.0 / (grad_accum_steps * processes.count))  # processes: the mean of all rows
    loss = processes.average(loss)  # processes
    if not math.isfinite(loss):
        raise GPT2Error(f"the training loss is {loss} at step {step}: the run diverged (lower -l?)", True)
    processes.sum_gradients(model, optimizer)  # processes: one all-reduce (or reduce-scatter) per step
    norm = processes.gradient_norm(optimizer)
    if not math.isfinite(norm):
        raise GPT2Error(f"the gradient norm is {norm} at step {step}: the run diverged (lower -l?)", True)
    grad_scale = grad_clip / norm if 0 < grad_clip < norm else 1.0
    optimizer.update(lr, step + 1, grad_scale)
    processes.gather_parameters(model)  # processes: with ZeRO-1, every process's updated slice to every process
    return loss, norm


# The command line. The flags are llm.c's (train_gpt2.cu); the defaults are its CPU demo (train_gpt2.c): GPT-2 124M
# fine-tuned on Tiny Shakespeare with B=4, T=64 and a constant learning rate of 1e-4 for 40 steps.

DEFAULT_MODEL = "gpt2_124M.bin"
TINYSHAKESPEARE_DIR = os.path.join("data", "tinyshakespeare")
DEFAULT_TRAIN = os.path.join(TINYSHAKESPEARE_DIR, "tiny_shakespeare_train.bin")
DEFAULT_VAL = os.path.join(TINYSHAKESPEARE_DIR, "tiny_shakespeare_val.bin")
TOKENIZER_FILE = "gpt2_tokenizer.bin"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A run's settings, as the flags give them (parse_args has each one's help)."""
    model: str = DEFAULT_MODEL            # -e
    train_data: str = DEFAULT_TRAIN       # -i
    val_data: str = DEFAULT_VAL           # -j
    output_dir: str | None = None         # -o
    checkpoint_every: int = 0             # -n
    checkpoints_keep: int = 0             # -nk
    resume: int = 0                       # -y
    batch_size: int = 4                   # -b, B
    seq_len: int = 64                     # -t, T
    total_batch_size: int | None = None   # -d: B*T*processes unless given
    max_steps: int | None = None          # -x: 40 unless given, or with -d one epoch
    learning_rate: float = 1e-4           # -l
    schedule: str = "cosine"              # -k
    warmup: int = 0                       # -u
    final_frac: float = 1.0               # -q
    weight_decay: float = 0.0             # -c
    beta1: float = 0.9
    beta2: float = 0.999
    grad_clip: float = 0.0
    overfit: int = 0                      # -a
    zero: int = 0                         # -z
    val_every: int = 10                   # -v
    val_max_steps: int = 5                # -m
    sample_every: int = 20                # -s
    gen_tokens: int = 64                  # -g
    eval_data: str | None = None          # --eval-data


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):
        """A bad flag: one line and exit status 2, as for any usage error. Under mpirun every process finds the
        same bad flag: rank 0 says it and its status becomes mpirun's; the others end quietly with status 0, since
        a failing one could make mpirun stop rank 0 before its line is out."""
        if launched_rank() == 0:
            self.exit(2, f"error: {message} (see {self.prog} --help)\n")
        self.exit(0)


def parse_args(argv=None):
    parser = ArgumentParser(
        prog="train_gpt2.py",
        description="Train GPT-2 on the CPU. The flags are llm.c's (train_gpt2.cu); the defaults are its CPU demo "
                    "(train_gpt2.c): GPT-2 124M on Tiny Shakespeare, which is prepared if absent.")
    add = parser.add_argument
    add("-e", "--model", metavar="MODEL",
        help="llm.c model checkpoint (.bin) to start from; or a Hugging Face GPT-2, by its name on the hub (gpt2, "
             "gpt2-medium, owner/name) or a folder with config.json and model.safetensors; or a model shape to "
             "train from scratch: dN / gpt2:dN (GPT-2 with N layers, e.g. d12) or gpt3:cN (GPT-3 with N channels) "
             "(default: %(default)s if it is there, else GPT-2 124M from the hub, gpt2, else offline d12)")
    add("-i", "--train-data", metavar="PATTERN", help="glob pattern of training token shards (default: %(default)s)")
    add("-j", "--val-data", metavar="PATTERN",
        help="glob pattern of validation token shards, '' for none (default: %(default)s)")
    add("-o", "--output-dir", metavar="DIR",
        help="directory for main.log and checkpoints, which holds one run only (default: none)")
    add("-n", "--checkpoint-every", type=int, metavar="N",
        help="write a checkpoint every N steps, and with -o always at the end (default: 0, at the end only)")
    add("-nk", "--checkpoints-keep", type=int, metavar="K", help="keep only the last K checkpoints (default: 0, all)")
    add("-y", "--resume", type=int, choices=(0, 1), help="1: resume from the newest checkpoint in -o (default: 0)")
    add("-b", "--batch-size", type=int, metavar="B", help="sequences per micro-batch (default: %(default)s)")
    add("-t", "--seq-len", type=int, metavar="T", help="tokens per sequence (default: %(default)s)")
    add("-d", "--total-batch-size", type=int, metavar="TOKENS",
        help="tokens per optimizer step, reached by accumulating gradients over micro-batches of B*T "
             "(default: B*T)")
    add("-x", "--max-steps", type=int, metavar="STEPS",
        help="optimizer steps (default: 40, or with -d one epoch of the training shards)")
    add("-l", "--learning-rate", type=float, metavar="LR", help="peak AdamW learning rate (default: %(default)s)")
    add("-k", "--schedule", choices=SCHEDULES, help="learning rate schedule (default: %(default)s)")
    add("-u", "--warmup", type=int, metavar="STEPS", help="learning rate warmup steps (default: %(default)s)")
    add("-q", "--final-frac", type=float, metavar="FRAC",
        help="final learning rate as a fraction of -l (default: %(default)s, no decay: cosine is then constant)")
    add("-c", "--weight-decay", type=float, metavar="WD",
        help="AdamW weight decay, on the embeddings and weight matrices only (default: %(default)s)")
    add("--beta1", type=float, help="AdamW beta1 (default: %(default)s)")
    add("--beta2", type=float, help="AdamW beta2 (default: %(default)s)")
    add("--grad-clip", type=float, metavar="NORM",
        help="clip the global gradient norm to NORM (default: %(default)s, no clipping)")
    add("-a", "--overfit", type=int, choices=(0, 1),
        help="1: train on the first batch of the validation data over and over, a check that the model learns "
             "(default: %(default)s)")
    add("-z", "--zero", type=int, choices=(0, 1),
        help="1: ZeRO-1, AdamW's state split over the processes of an mpirun (default: %(default)s)")
    add("-v", "--val-every", type=int, metavar="N",
        help="validation loss every N steps, 0: never (default: %(default)s)")
    add("-m", "--val-max-steps", type=int, metavar="N",
        help="at most N batches per validation loss (default: %(default)s)")
    add("-s", "--sample-every", type=int, metavar="N",
        help="sample text every N steps, 0: never (default: %(default)s)")
    add("-g", "--gen-tokens", type=int, metavar="N",
        help="tokens per sample, the first being EOT (default: %(default)s)")
    add("--eval-data", metavar="FILE",
        help="llm.c eval file (HellaSwag's: python -m dev.data.hellaswag): its accuracy at step 0, every -v steps "
             "and at the end; with -x 0, the model is evaluated and nothing trained (default: none)")
    parser.set_defaults(**dataclasses.asdict(TrainConfig()))
    args = TrainConfig(**vars(parser.parse_args(argv)))
    for name in ("batch_size", "seq_len", "gen_tokens", "val_max_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("learning_rate", "final_frac", "weight_decay", "beta1", "beta2", "grad_clip"):
        if not abs(getattr(args, name)) <= float(np.finfo(np.float32).max):  # the optimizer computes in float32
            parser.error(f"--{name.replace('_', '-')} must be a finite float32 number, not {getattr(args, name)}")
    for name, low, high in (("learning_rate", 0, math.inf), ("beta1", 0, 1), ("beta2", 0, 1)):
        if not low <= getattr(args, name) < high:
            parser.error(f"--{name.replace('_', '-')} {getattr(args, name)} is outside [{low}, {high})")
    if not 0 <= args.final_frac <= 1:
        parser.error(f"--final-frac {args.final_frac} is outside [0, 1]")
    for name in ("max_steps", "val_every", "val_max_steps", "sample_every", "checkpoint_every", "checkpoints_keep",
                 "warmup", "weight_decay", "grad_clip", "total_batch_size"):
        if (getattr(args, name) or 0) < 0:
            parser.error(f"--{name.replace('_', '-')} must not be negative")
        if (getattr(args, name) or 0) >= 2**31:  # a training state keeps them as int32
            parser.error(f"--{name.replace('_', '-')} {getattr(args, name)} is too large: at most {2**31 - 1}")
    for name in ("model", "train_data", "output_dir", "eval_data"):
        if getattr(args, name) == "":
            parser.error(f"--{name.replace('_', '-')} is empty")
    if args.max_steps == 0 and args.output_dir:
        parser.error("-x 0 trains nothing: there is no run to keep in -o")
    if args.overfit and not args.val_data:
        parser.error("-a 1 trains on the validation data: it needs -j")
    tokens_per_micro_batch = args.batch_size * args.seq_len
    if args.total_batch_size is not None and (args.total_batch_size <= 0
                                              or args.total_batch_size % tokens_per_micro_batch):
        parser.error(f"-d {args.total_batch_size} must be a positive multiple of B*T = {tokens_per_micro_batch}")
    if (args.checkpoint_every or args.resume) and not args.output_dir:
        parser.error("-n and -y need an output directory, -o")
    return args


def complete_settings(args, train_tokens, num_processes):
    """The settings with the defaults that depend on the data and the processes filled in: -d is B*T on each
    process; -x is 40 steps, as llm.c's CPU demo, or with -d one epoch of the training shards, as its full
    trainer."""
    tokens_per_micro_batch = args.batch_size * args.seq_len * num_processes
    if args.total_batch_size is not None and args.total_batch_size % tokens_per_micro_batch:
        raise GPT2Error(f"-d {args.total_batch_size} is not a multiple of B*T*processes = {tokens_per_micro_batch}")
    total_batch_size = args.total_batch_size or tokens_per_micro_batch
    max_steps = args.max_steps
    if max_steps is None:
        max_steps = 40 if args.total_batch_size is None else train_tokens // total_batch_size
    return dataclasses.replace(args, total_batch_size=total_batch_size, max_steps=max_steps)


# Checkpoints. With -o DIR, a run writes a checkpoint at its last step, and with -n N every N steps, as llm.c's full
# trainer does: model_%08d.bin (the model file), state_%08d_%05d.bin for each process (llm.c's training state: the
# step, AdamW's m and v, where the data loader is and its shuffle state, the sampling RNG) and last DONE_%08d, an
# empty file that marks the checkpoint complete. Every file is written to a temporary name, flushed to the disk and
# renamed, so a run killed at any moment leaves only whole checkpoints, and -y 1 resumes from the newest one and
# continues exactly as if it had never stopped.

# What shapes a run's trajectory, kept in header slots llm.c leaves unused, so that resuming with other settings
# is refused: (slot, flag, argument, type); floats are kept as their float32 bits, the schedule as its index. Slot
# 56 holds a fingerprint of the training shards (their names and sizes), so that -i must match them too.
RUN_SETTINGS = [(40, "-b", "batch_size", int), (41, "-t", "seq_len", int), (42, "-d", "total_batch_size", int),
                (43, "-x", "max_steps", int), (44, "-u", "warmup", int), (45, "-k", "schedule", str),
                (46, "-a", "overfit", int), (47, "-z", "zero", int), (50, "-l", "learning_rate", float),
                (51, "-q", "final_frac", float), (52, "-c", "weight_decay", float), (53, "--beta1", "beta1", float),
                (54, "--beta2", "beta2", float), (55, "--grad-clip", "grad_clip", float)]
DATA_SLOT = 56


def encode_setting(value, kind):
    if kind is float:
        return int(np.float32(value).view(np.int32))
    return SCHEDULES.index(value) if kind is str else int(value)


def decode_setting(stored, kind):
    if kind is float:
        return str(np.int32(stored).view(np.float32))  # the shortest decimal of that float32
    if kind is str:
        return SCHEDULES[stored] if 0 <= stored < len(SCHEDULES) else f"schedule #{stored}"
    return int(stored)


def data_fingerprint(loader):
    """A 32-bit number that changes when the shards' names or sizes do (not when they move to another folder)."""
    names = "\n".join(f"{os.path.basename(path)} {os.path.getsize(path)}" for path in loader.files)
    return int(np.uint32(zlib.crc32(names.encode())).view(np.int32))


def extends_run(args):
    """Whether -x may change on resume: where the learning rate does not depend on it (a constant schedule, or no
    decay, -q 1.0), a run can go on for more steps, or end sooner."""
    return args.schedule == "constant" or args.final_frac == 1.0


def save_state(path, step, optimizer, loader, sample_rng, args, processes):
    # processes, this one's rank, no master weights (float32 training), the data shuffled or not
    header = new_header(STATE_MAGIC, 1, processes.count, processes.rank, 0, int(loader.shuffle))
    header[10] = step
    wide = header.view("<u8")  # 64-bit fields: wide[k] covers slots 2k and 2k+1
    # [20] and [22] hold llm.c's RNG for stochastic rounding, which float32 training does not use: left 0
    wide[12] = sample_rng.state  # [24], a slot llm.c leaves unused: our sampling RNG
    wide[15], wide[16] = loader.shard_index, loader.sample_index  # [30] shard, [32] next sample in it
    for slot, _, name, kind in RUN_SETTINGS:
        header[slot] = encode_setting(getattr(args, name), kind)
    header[DATA_SLOT] = data_fingerprint(loader)
    chunks = [header, optimizer.m_memory.astype("<f4"), optimizer.v_memory.astype("<f4")]
    if loader.shuffle:
        chunks += [np.array([len(loader.files)], "<u8"), loader.shard_order.astype("<i4"),
                   np.array([loader.shard_num_samples], "<u8"), loader.sample_order.astype("<i4"),
                   mersenne_twister_words(loader.rng)]
    write_atomically(path, chunks)


def check_state_header(path, header, step, loader, args, processes):
    """Refuses a training state that is not of this checkpoint, of this many processes, or of these settings."""
    if header[10] != step:
        raise GPT2Error(f"{path}: holds the state of step {header[10]}, not of step {step} as its name says")
    if header[4]:
        raise GPT2Error(f"{path}: written with master weights (llm.c's mixed precision); this run trains in float32")
    if tuple(header[2:4]) != (processes.count, processes.rank):
        raise GPT2Error(f"{path}: written by process {header[3]} of {header[2]}, but this is process "
                        f"{processes.rank} of {processes.count}: resume with as many processes as the run had "
                        f"(mpirun -np {header[2]})")
    if header[5] not in (0, 1):
        raise GPT2Error(f"{path}: data shuffling flag {header[5]} is neither 0 nor 1")
    if not any(header[slot] for slot, *_ in RUN_SETTINGS):  # llm.c writes none of them
        print(f"{path}: no run settings in it (written by llm.c?), so they cannot be compared with this run's")
        return
    differences = []
    for slot, flag, name, kind in RUN_SETTINGS:
        stored = encode_setting(getattr(args, name), kind)
        if header[slot] == stored:
            continue
        there, now = decode_setting(header[slot], kind), decode_setting(stored, kind)
        if flag == "-x" and extends_run(args):
            print(f"-x {there} there, {now} now: the learning rate does not depend on -x, so the run goes on to "
                  f"step {now}")
        elif flag == "-x":
            differences.append(f"-x {there} there, {now} now (the {args.schedule} schedule decays over the -x steps; "
                               "only a run whose learning rate does not depend on -x, with -k constant or -q 1.0, "
                               "can be extended)")
        else:
            differences.append(f"{flag} {there} there, {now} now")
    if header[5] != int(loader.shuffle):
        on_off = ("off", "on")
        differences.append(f"data shuffling {on_off[header[5]]} there, {on_off[int(loader.shuffle)]} now")
    if header[DATA_SLOT] != data_fingerprint(loader):
        differences.append("other training shards (-i) than the run had: their names or sizes differ")
    if differences:
        raise GPT2Error(f"{path}: cannot resume with other settings: " + "; ".join(differences))


def load_state(path, step, optimizer, loader, sample_rng, args, processes):
    """Restores AdamW's moments, the data loader and the sampling RNG from the state of checkpoint `step`, every
    field checked before it is used."""
    header = read_header(path, STATE_MAGIC, (1,))
    check_state_header(path, header, step, loader, args, processes)
    data, offset = np.memmap(path, dtype=np.uint8, mode="r"), HEADER_BYTES

    def take(count, dtype):  # the next `count` values of the body
        nonlocal offset
        size = count * np.dtype(dtype).itemsize
        if offset + size > data.size:
            raise GPT2Error(f"{path}: truncated: {data.size} bytes, and more were expected")
        offset += size
        return data[offset - size:offset].view(dtype)

    optimizer.m_memory[:] = take(optimizer.m_memory.size, "<f4")
    optimizer.v_memory[:] = take(optimizer.v_memory.size, "<f4")
    if not (np.isfinite(optimizer.m_memory).all() and np.isfinite(optimizer.v_memory).all()
            and (optimizer.v_memory >= 0).all()):
        raise GPT2Error(f"{path}: AdamW's moments are not finite, or a second moment is negative")
    wide = header.view("<u8")
    shard_index, sample_index = int(wide[15]), int(wide[16])
    if shard_index >= len(loader.files):
        raise GPT2Error(f"{path}: at shard {shard_index}, but -i matches {len(loader.files)} shard(s)")
    if wide[12] == 0:
        raise GPT2Error(f"{path}: the sampling RNG's state is 0, which xorshift never leaves")
    if loader.shuffle:
        num_shards = int(take(1, "<u8")[0])
        if num_shards != len(loader.files):
            raise GPT2Error(f"{path}: written for {num_shards} shards, but -i matches {len(loader.files)}")
        shard_order = take(num_shards, "<i4").astype(np.int64)
        num_samples = int(take(1, "<u8")[0])
        sample_order = take(num_samples, "<i4").astype(np.int64)
        for name, order in (("shard", shard_order), ("batch", sample_order)):
            if not np.array_equal(np.sort(order), np.arange(order.size)):
                raise GPT2Error(f"{path}: the saved {name} order is not a permutation")
        rng_words = take(630, "<u4")
        if not 1 <= rng_words[2] <= 625:
            raise GPT2Error(f"{path}: the data order's RNG has {rng_words[2]} draws left, not 1 to 625")
        loader.resume(shard_index, sample_index, shard_order, sample_order, mersenne_twister_state(rng_words))
        if loader.shard_num_samples != num_samples:
            raise GPT2Error(f"{path}: written for a shard of {num_samples} batches, but it now has "
                            f"{loader.shard_num_samples}")
    else:
        loader.resume(shard_index, sample_index)
    if sample_index > loader.shard_num_samples:
        raise GPT2Error(f"{path}: at batch {sample_index} of shard {shard_index}, which has "
                        f"{loader.shard_num_samples}")
    if offset != data.size:
        raise GPT2Error(f"{path}: too long: {data.size} bytes, expected {offset}")
    sample_rng.state = int(wide[12])


def checkpoint_files(out_dir, step, rank=0):
    """model_%08d.bin, the training state of process `rank`, state_%08d_%05d.bin (llm.c's names), and DONE_%08d."""
    return [os.path.join(out_dir, name) for name in (f"model_{step:08d}.bin", f"state_{step:08d}_{rank:05d}.bin",
                                                     f"DONE_{step:08d}")]


def state_file(out_dir, step, rank):
    """The training state to resume from; runs of one process used to write state_%08d.bin, which still loads."""
    path = checkpoint_files(out_dir, step, rank)[1]
    older = os.path.join(out_dir, f"state_{step:08d}.bin")
    return older if rank == 0 and not os.path.exists(path) and os.path.exists(older) else path


def write_checkpoint(out_dir, step, model, optimizer, loader, sample_rng, args, processes):
    """The model (rank 0's) and every process's training state, and last the DONE_ file, once all of them are on
    the disk."""
    model_path, state_path, done_path = checkpoint_files(out_dir, step, processes.rank)
    with processes.together():
        processes.check_same_parameters(model)
        if processes.rank == 0:
            save_model(model_path, model)
            with open(os.path.join(out_dir, "main.log"), "ab") as log:  # the log up to this checkpoint, too
                os.fsync(log.fileno())
        save_state(state_path, step, optimizer, loader, sample_rng, args, processes)
    with processes.together():
        if processes.rank == 0:
            write_atomically(done_path, [])
            prune_checkpoints(out_dir, args.checkpoints_keep)
    print(f"wrote checkpoint {model_path}, {state_path}" + (f" and the training states of the other "
                                                             f"{processes.count - 1} process(es)"
                                                             if processes.count > 1 else ""))


CHECKPOINT_FILE = re.compile(r"model_([0-9]{8})\.bin|state_([0-9]{8})(_[0-9]{5})?\.bin|DONE_([0-9]{8})")


def checkpoint_steps(out_dir):
    """The checkpoint files in out_dir by step, complete or not: {step: [names]}, the DONE_ file first if any."""
    steps = {}
    for entry in os.scandir(out_dir):
        match = CHECKPOINT_FILE.fullmatch(entry.name)
        if match and entry.is_file():
            names = steps.setdefault(int(match[1] or match[2] or match[4]), [])
            names.insert(0 if match[4] else len(names), entry.name)
    return steps


def complete_checkpoints(out_dir):
    return sorted(step for step, names in checkpoint_steps(out_dir).items() if names[0].startswith("DONE_"))


def latest_checkpoint(out_dir):
    complete = complete_checkpoints(out_dir)
    return complete[-1] if complete else None


def prune_checkpoints(out_dir, keep):
    """Keeps the newest `keep` complete checkpoints (0: all) and deletes every older checkpoint file, complete or
    not: what the run retires as it goes, and what a run killed before it could retire them left."""
    complete = complete_checkpoints(out_dir)
    if not keep or len(complete) <= keep:
        return
    for step, names in checkpoint_steps(out_dir).items():
        if step < complete[-keep]:
            for name in names:  # DONE_ first: never a DONE_ without its files
                os.remove(os.path.join(out_dir, name))


def lock_run_directory(out_dir):
    """Creates out_dir if need be and locks it for this process (released when it ends, however it ends); refuses
    a directory another run holds."""
    path = os.path.join(out_dir, ".lock")
    try:
        os.makedirs(out_dir, exist_ok=True)
        check_regular_file(path)
        lock = open(path, "a+")
    except OSError as e:
        raise GPT2Error(f"{path}: cannot create: {e.strerror or e}") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        raise GPT2Error(f"{out_dir}: another run (process {lock.read().strip() or '?'}) is writing into it; "
                        "wait for it to end, or give another -o") from None
    try:
        lock.truncate(0)
        lock.write(f"{os.getpid()}\n")  # for the message above
        lock.flush()
    except OSError as e:
        raise GPT2Error(f"{path}: cannot write: {e.strerror}") from None
    return lock


def remove_leftovers(out_dir):
    """Removes the temporary files of writes that a kill interrupted (their process is gone)."""
    for name in os.listdir(out_dir):
        if is_temporary_name(name) and not process_exists(int(name.rpartition(".tmp")[2])):
            os.remove(os.path.join(out_dir, name))


def process_exists(pid):
    try:
        os.kill(pid, 0)  # signal 0 only asks whether the process exists
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # another user's
        return True
    return True


def open_run_directory(args):
    """Takes -o for this run and returns (a lock held while the run lives, the step to resume from or None).

    A run directory holds one run only. A fresh run (no -y 1) refuses a directory that holds another run's log or
    checkpoints, so that a resume can never load the files of two runs; a second run writing into the directory
    at the same time is refused too (the lock)."""
    out_dir = args.output_dir
    lock = lock_run_directory(out_dir)
    remove_leftovers(out_dir)
    check_regular_file(os.path.join(out_dir, "main.log"))
    if args.resume:
        resume_step = latest_checkpoint(out_dir)
        if resume_step is None:
            print(f"no complete checkpoint in {out_dir}: starting from the beginning")
        return lock, resume_step
    previous = sorted(name for name in os.listdir(out_dir) if name == "main.log" or CHECKPOINT_FILE.fullmatch(name))
    if previous == ["main.log"]:
        raise GPT2Error(f"{out_dir}: holds the log of another run, which wrote no checkpoint: -y 1 starts it again "
                        "from the beginning; or give a new or empty -o")
    if previous:
        raise GPT2Error(f"{out_dir}: holds another run ({', '.join(previous[:3])}"
                        f"{', ...' if len(previous) > 3 else ''}): resume it with -y 1, or give a new or empty -o")
    return lock, None


def resume_run(out_dir, step, optimizer, loader, sample_rng, args, processes):
    """Continues from the complete checkpoint of `step` (its model is already loaded)."""
    with processes.together():
        if step > args.max_steps:
            raise GPT2Error(f"{out_dir}: its newest checkpoint is of step {step}, after -x {args.max_steps}")
        load_state(state_file(out_dir, step, processes.rank), step, optimizer, loader, sample_rng, args, processes)
        if processes.rank == 0:
            trim_log(out_dir, step)
            prune_checkpoints(out_dir, args.checkpoints_keep)
    print(f"resumed from the checkpoint of step {step} in {out_dir}")


def append_log(out_dir, line):
    """llm.c's main.log: `s:STEP trl:LOSS lr:LR norm:NORM` for training, `s:STEP tel:LOSS` for validation."""
    if out_dir:
        path = os.path.join(out_dir, "main.log")
        try:
            with open(path, "a") as f:
                f.write(line)
        except OSError as e:
            raise GPT2Error(f"{path}: cannot write: {e.strerror}") from None


def trim_log(out_dir, step):
    """On resume, drops what the stopped run logged after its checkpoint of `step`, which is logged again. The log
    is rewritten as every file is, through a temporary file: a kill in the middle leaves the old one whole."""
    path = os.path.join(out_dir, "main.log")
    if not os.path.exists(path):
        return
    with open(path, "rb") as f:
        lines = f.read().splitlines(keepends=True)

    def logged_before(line):  # the validation and evaluation of `step` itself came before its checkpoint
        match = re.match(rb"s:([0-9]+) ", line)
        return match and (int(match[1]) < step or (int(match[1]) == step and (b" tel:" in line or b" eval:" in line)))

    write_atomically(path, [np.frombuffer(b"".join(filter(logged_before, lines)), dtype=np.uint8)])


# Setting up a run: its model, its data, the tokenizer for its samples.

def model_source(name):
    """What -e names; for the default, llm.c's gpt2_124M.bin, and without that file the same weights from the
    Hugging Face hub, gpt2 (downloaded once, 0.5 GB), or offline its shape, d12 (the same shape)."""
    return "gpt2" if name == DEFAULT_MODEL and not os.path.exists(name) else name


def load_run_model(args, resume_step):
    """The model to train: from -e, or from the checkpoint being resumed, which must have the shape -e names."""
    source = model_source(args.model)
    if resume_step is None and source != args.model:  # the default run, as llm.c's demo: fine-tune GPT-2 124M
        try:
            model = load_gpt2(source)
            print(f"{args.model} not found: fine-tuning OpenAI's GPT-2 124M from the Hugging Face hub ({source})")
            return model
        except GPT2Error as e:
            print(f"{args.model} not found, and {e}: training GPT-2 124M's shape (d12) from scratch instead; to "
                  f"fine-tune the real one, run once with a network, or: python -m dev.hf_gpt2 import gpt2 -o "
                  f"{DEFAULT_MODEL}")
            return load_gpt2("d12")
    if resume_step is None:
        return load_gpt2(source)
    model_path = checkpoint_files(args.output_dir, resume_step)[0]
    model, wanted = load_model(model_path), model_config("d12" if source != args.model else source)
    if vars(wanted) != vars(model.config):
        differences = [f"{key} {value} there, {vars(wanted)[key]} from -e {args.model}"
                       for key, value in vars(model.config).items() if vars(wanted)[key] != value]
        raise GPT2Error(f"{model_path}: cannot resume with another model: " + "; ".join(differences))
    return model


def data_loaders(args, config, processes):
    """The training and validation loaders, each process reading its rows. As llm.c, overfitting (-a 1) trains
    on the first batches of the validation set, unshuffled. The default data, Tiny Shakespeare, is prepared the
    first time (by rank 0, while the others wait)."""
    B, T, V, rank, count = args.batch_size, args.seq_len, config.vocab_size, processes.rank, processes.count
    if args.max_steps == 0:  # evaluating only: no training data, and the default validation data only if there
        has_val = args.val_data and (args.val_data != DEFAULT_VAL or os.path.exists(DEFAULT_VAL))
        return None, DataLoader(args.val_data, B, T, V, process_rank=rank, num_processes=count) if has_val else None
    with processes.together():
        if processes.rank == 0 and (args.train_data, args.val_data) == (DEFAULT_TRAIN, DEFAULT_VAL) and not (
                os.path.exists(DEFAULT_TRAIN) and os.path.exists(DEFAULT_VAL)):
            print(f"{DEFAULT_TRAIN} not found: preparing Tiny Shakespeare")
            from dev.data.tinyshakespeare import prepare_tinyshakespeare
            prepare_tinyshakespeare(TINYSHAKESPEARE_DIR)
    train_loader = DataLoader(args.val_data if args.overfit else args.train_data, B, T, V, shuffle=not args.overfit,
                              process_rank=rank, num_processes=count)
    val_loader = DataLoader(args.val_data, B, T, V, process_rank=rank, num_processes=count) if args.val_data else None
    return train_loader, val_loader


def load_or_write_tokenizer(path=TOKENIZER_FILE):
    if not os.path.exists(path):
        print(f"writing {path} from tiktoken's GPT-2 encoding")
        write_tokenizer(path, gpt2_encoding())
    return read_tokenizer(path)


def sampling_tokenizer(args, config):
    """(pieces, eot) of llm.c's tokenizer file to print samples with; None if sampling is off, or if the
    tokenizer's vocabulary is not the model's."""
    if not args.sample_every:
        return None
    pieces, eot = load_or_write_tokenizer()
    if len(pieces) != config.vocab_size:
        print(f"sampling off: the model's vocabulary ({config.vocab_size} tokens) is not the tokenizer's "
              f"({len(pieces)}, {TOKENIZER_FILE})")
        return None
    return pieces, eot


def validation_loss(model, loader, max_batches, processes):
    loader.reset()
    num_batches = min(max_batches, loader.num_batches)
    loss = sum(model.forward(*loader.next_batch()) for _ in range(num_batches)) / max(num_batches, 1)
    return processes.average(loss)


def share_of_examples(examples, processes):
    """This process's share of the examples: consecutive ones, as llm.c's evalloader_reset splits them."""
    per_process = -(-len(examples) // processes.count)
    return examples[processes.rank * per_process:(processes.rank + 1) * per_process]


def fit_to_context(context, completions, max_seq_len):
    """An example cut to fit the model, whose positions take the context and each completion but its last token
    (which predicts nothing that counts): the context keeps its last tokens, as many as leave room for the
    longest completion, and at least one; a completion longer than the rest of the room keeps its first tokens."""
    room = max(max_seq_len + 1 - max(map(len, completions)), 1)
    return context[-room:], [completion[:max_seq_len + 1 - min(room, len(context))] for completion in completions]


def evaluation_model(model, examples):
    """The model's parameters, with what scoring an example needs: a row per completion, and a KV cache for the
    longest context and completion. No gradients."""
    evaluator = GPT2(model.config, model.params_memory)
    maxT = model.config.max_seq_len
    fitted = [fit_to_context(context, completions, maxT) for _, context, completions in examples]
    rows = max(len(completions) for _, completions in fitted)
    T = max(max(len(context), max(map(len, completions)) - 1) for context, completions in fitted)
    context = max(len(context) + max(map(len, completions)) - 1 for context, completions in fitted)
    evaluator.allocate(rows, T, context=context)
    return evaluator


def completion_losses(evaluator, context, completions):
    """Each completion's mean loss per token after the context. The context runs once; its keys and values, in the
    KV cache's first row, are copied to a row for each completion, and the completions run together from there.
    The context's last logits predict each completion's first token; a completion's last token predicts nothing
    that counts, so it never runs."""
    P, n, V = len(context), len(completions), evaluator.config.vocab_size
    evaluator.forward(np.array([context], np.int32))
    logits = evaluator.activations(1, P).logits[0, -1, :V].astype(np.float64)
    logsumexp = logits.max() + np.log(np.exp(logits - logits.max()).sum())
    loss_sums = [logsumexp - logits[completion[0]] for completion in completions]
    evaluator.kv_cache[:, 1:n, :P] = evaluator.kv_cache[:, :1, :P]
    T = max(map(len, completions)) - 1
    if T:
        inputs, targets = np.zeros((n, T), np.int32), np.zeros((n, T), np.int32)
        for r, completion in enumerate(completions):  # shorter ones padded after their end, which they never see
            inputs[r, :len(completion) - 1], targets[r, :len(completion) - 1] = completion[:-1], completion[1:]
        evaluator.forward(inputs, targets, pos=P)
        losses = evaluator.activations(n, T, P).losses
        loss_sums = [total + losses[r, :len(c) - 1].sum() for r, (total, c) in enumerate(zip(loss_sums, completions))]
    return [total / len(completion) for total, completion in zip(loss_sums, completions)]


def eval_accuracy(evaluator, examples, processes):
    """llm.c's multiple-choice score (acc_norm, as its evalloader_stat_losses): each completion runs after its
    example's context, and the mean loss of its tokens says how unlikely the model finds it; the completion with
    the lowest is the model's answer (the first of equal ones), right if it is the label. Each process scores its
    share of the examples; returns (right answers, examples) over all the processes."""
    right = 0
    for label, context, completions in share_of_examples(examples, processes):
        context, completions = fit_to_context(context, completions, evaluator.config.max_seq_len)
        right += int(np.argmin(completion_losses(evaluator, context, completions)) == label)
    return processes.sum(right), len(examples)


def format_duration(seconds):
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def load_kernels():
    """Runs every kernel of a training step and of generation once, on a tiny model: numba loads them from its
    cache, or compiles them on the first run, here rather than inside the first timed step."""
    print("loading the numba kernels (the first run compiles them, for some seconds; later runs load them from "
          "the cache)", flush=True)
    started = time.perf_counter()
    config = GPT2Config(max_seq_len=4, vocab_size=8, padded_vocab_size=8, num_layers=1, num_heads=2, channels=16)
    model = GPT2(config, np.full(num_parameters(config), 0.01, dtype=np.float32))
    model.allocate(2, 4, training=True)
    tokens = np.zeros((2, 4), dtype=np.int32)
    train_step(model, AdamW(model), lambda: (tokens, tokens), 1, 0.0, 0)
    sampler = GPT2(config, model.params_memory)
    sampler.allocate(1, 2, context=4)
    for temperature, top_k, top_p in ((1.0, 0, 1.0), (0.0, 0, 1.0), (0.5, 2, 0.9)):
        list(generate(sampler, [0, 1], 3, XorShift(), temperature, top_k, top_p))
    print(f"kernels ready in {time.perf_counter() - started:.1f} s")


def train(args, processes):
    started = time.perf_counter()
    B, T, out_dir, rank = args.batch_size, args.seq_len, args.output_dir, processes.rank
    log_dir = out_dir if rank == 0 else None  # rank 0 writes main.log
    run_lock = resume_step = None  # the lock on -o is held while run_lock lives
    with processes.together():  # rank 0 opens the run directory; the others learn from it where the run starts
        if out_dir and rank == 0:
            run_lock, resume_step = open_run_directory(args)
    resume_step = processes.broadcast(resume_step)
    with processes.together():
        model = load_run_model(args, resume_step)
        cfg = model.config
        print(f"model: max_seq_len {cfg.max_seq_len}, vocab_size {cfg.vocab_size}, padded_vocab_size "
              f"{cfg.padded_vocab_size}, num_layers {cfg.num_layers}, num_heads {cfg.num_heads}, channels "
              f"{cfg.channels}, num_parameters {model.num_parameters:,}")
        training = args.max_steps != 0  # -x 0 only evaluates: no gradients, no optimizer state
        model.allocate(B, T, training=training)  # refuses a T longer than the model's maximum
        optimizer = AdamW(model, args.beta1, args.beta2, eps=1e-8, weight_decay=args.weight_decay,
                          shard=processes.optimizer_shard(model.num_parameters)) if training else None
    train_loader, val_loader = data_loaders(args, cfg, processes)
    args = complete_settings(args, train_loader.num_tokens if train_loader else 0, processes.count)
    grad_accum_steps = args.total_batch_size // (B * T * processes.count)
    val = f"val: {val_loader.num_tokens:,} tokens" if val_loader else "no validation data"
    if train_loader:
        print(f"train: {train_loader.num_tokens:,} tokens in {len(train_loader.files)} shard(s), {val}; "
              f"{args.max_steps} steps of {args.total_batch_size} tokens = {grad_accum_steps} micro-batch(es) of "
              f"B={B} x T={T}" + (f" on each of {processes.count} processes" if processes.count > 1 else ""))
    else:
        print(f"-x 0: evaluating the model, no training; {val}")
    with processes.together():
        examples = read_eval_file(args.eval_data, cfg.vocab_size) if args.eval_data else None
    if examples:
        evaluator = evaluation_model(model, examples)  # the model's parameters, with activations to evaluate them
        print(f"eval: {len(examples):,} examples of {args.eval_data}, up to {evaluator.capacity[0]} completions "
              f"and {evaluator.capacity[2]} positions each")
    with processes.together():
        tokenizer = sampling_tokenizer(args, cfg) if rank == 0 else None  # rank 0 samples
    if tokenizer:  # the model's parameters, and a KV cache to generate from them (see generate)
        if args.gen_tokens > cfg.max_seq_len:
            raise GPT2Error(f"-g {args.gen_tokens} tokens per sample is more than the model's context of "
                            f"{cfg.max_seq_len}")
        sampler = GPT2(cfg, model.params_memory)
        sampler.allocate(1, 1, context=args.gen_tokens)
    sample_rng = XorShift(1337)
    if resume_step is not None:
        resume_run(out_dir, resume_step, optimizer, train_loader, sample_rng, args, processes)
    elif out_dir and rank == 0:
        write_atomically(os.path.join(out_dir, "main.log"), [])  # a fresh run starts a fresh log
    start_step = resume_step or 0
    if optimizer:
        print(f"memory{' per process' if processes.count > 1 else ''}: parameters and gradients "
              f"{2 * model.params_memory.nbytes / 2**20:.0f} MiB, AdamW state "
              f"{(optimizer.m_memory.nbytes + optimizer.v_memory.nbytes) / 2**20:.0f} MiB"
              f"{f' (ZeRO-1: 1/{processes.count} of it)' if args.zero and processes.count > 1 else ''}, activations "
              f"{model.acts_memory.nbytes / 2**20:.0f} MiB; ready in {time.perf_counter() - started:.1f} s")
    else:
        print(f"memory: parameters {model.params_memory.nbytes / 2**20:.0f} MiB, activations "
              f"{model.acts_memory.nbytes / 2**20:.0f} MiB; ready in {time.perf_counter() - started:.1f} s")
    load_kernels()

    training_time = 0.0
    for step in range(start_step, args.max_steps + 1):
        last_step = step == args.max_steps
        if interrupted:  # a Ctrl-C that numba's callbacks swallowed (see on_interrupt)
            raise KeyboardInterrupt
        resumed_here = resume_step is not None and step == start_step  # then the run being resumed did these:
        if not resumed_here:
            if val_loader and args.val_every and (step % args.val_every == 0 or last_step):
                val_loss = validation_loss(model, val_loader, args.val_max_steps, processes)
                if not math.isfinite(val_loss):
                    raise GPT2Error(f"the validation loss is {val_loss} at step {step}: the run diverged", True)
                print(f"val loss {val_loss:f}")
                append_log(log_dir, f"s:{step} tel:{val_loss:.4f}\n")
            if examples and ((args.val_every and step % args.val_every == 0) or last_step):
                eval_start = time.perf_counter()
                right, total = eval_accuracy(evaluator, examples, processes)
                print(f"eval accuracy {right}/{total} = {right / total:.4f} ({time.perf_counter() - eval_start:.1f} s)")
                append_log(log_dir, f"s:{step} eval:{right / total:.4f}\n")
            if tokenizer and ((step > 0 and step % args.sample_every == 0) or last_step):
                pieces, eot = tokenizer
                print("generating:\n---")
                stream = TextStream(pieces)
                for token in generate(sampler, [eot], args.gen_tokens - 1, sample_rng):
                    stream.write(token)
                stream.end()
                print("\n---")
            if out_dir and ((args.checkpoint_every and step > 0 and step % args.checkpoint_every == 0)
                            or last_step):  # with -o, the trained model is never thrown away
                write_checkpoint(out_dir, step, model, optimizer, train_loader, sample_rng, args, processes)
        if last_step:
            break

        # one optimizer step over total_batch_size tokens
        if args.overfit:
            train_loader.reset()
        lr = learning_rate(args.schedule, step, args.learning_rate, args.warmup, args.final_frac, args.max_steps)
        step_start = time.perf_counter()
        loss, norm = train_step(model, optimizer, train_loader.next_batch, grad_accum_steps, lr, step, args.grad_clip,
                                processes)
        took = time.perf_counter() - step_start
        training_time += took
        eta = training_time / (step + 1 - start_step) * (args.max_steps - step - 1)
        print(f"step {step}: train loss {loss:f} (took {took * 1000:.0f} ms) | norm {norm:.4f} | lr {lr:.2e} | "
              f"{args.total_batch_size / took:.0f} tok/s | ETA {format_duration(eta)}", flush=True)
        append_log(log_dir, f"s:{step} trl:{loss:.4f} lr:{lr:.6f} norm:{norm:.2f}\n")
    print(f"total time {time.perf_counter() - started:.1f} s")


interrupted = False  # set by on_interrupt


def on_interrupt(signum, frame):
    """Ctrl-C: a KeyboardInterrupt, as Python's own handler raises; and a note of it, for where the exception is
    lost: raised inside a callback that numba's compiler makes from C, it is printed and ignored."""
    global interrupted
    interrupted = True
    raise KeyboardInterrupt


def print_anything():
    """Makes stdout and stderr print what their encoding cannot (a file name that is not UTF-8, a character a
    latin-1 terminal lacks) as backslash escapes, rather than fail."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def main(argv=None):
    processes = ONE_PROCESS
    print_anything()
    previous_handler = signal.signal(signal.SIGINT, on_interrupt)
    try:
        args = parse_args(argv)
        processes = Processes.start(args.zero)
        if processes.rank != 0:  # only rank 0 prints, and the errors that every process raised alike
            sys.stdout = open(os.devnull, "w")
        if args.zero and processes.count == 1:
            print("-z 1: ZeRO-1 splits AdamW's state over the processes of an mpirun; one process keeps it whole")
        with np.errstate(all="ignore"):  # a run that diverges is told in one line, by the checks of the loss and norm
            train(args, processes)
    except (GPT2Error, OSError, MemoryError, ImportError) as e:  # bad input, a full disk, too big a model, ...
        alike = getattr(e, "every_process", False)
        if processes.rank == 0 or not alike:
            where = f"process {processes.rank}: " if processes.rank else ""
            print(f"error: {where}{str(e) or type(e).__name__}", file=sys.stderr, flush=True)
        if processes.count > 1 and not alike:  # the others would wait for this one forever: ending without
            os._exit(1)  # MPI_Finalize (which would wait for them too) makes mpirun end them all
        return 1
    except KeyboardInterrupt:
        if processes.rank == 0:
            print("interrupted", file=sys.stderr, flush=True)
        if processes.count > 1:
            os._exit(130)
        return 130
    finally:
        signal.signal(signal.SIGINT, previous_handler)
    return 0


if __name__ == "__main__":
    # the default run's data preparation (dev/data/tinyshakespeare.py) imports train_gpt2: let it find this module
    # rather than load the file a second time, whose errors would then be of another class
    sys.modules.setdefault("train_gpt2", sys.modules["__main__"])
    sys.exit(main())
