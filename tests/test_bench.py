"""
dev/bench.py and dev/gemm_bf16.py, the measurements behind the README's tables: they run (ours alone, which needs
no PyTorch) on the small fixture, and the bfloat16 rounding of the GEMM measurement is llm.c's.
"""

import subprocess
import sys

import numpy as np

from tests.helpers import FIXTURE_MODEL, HERE


def test_bench_times_attention():
    # python -m dev.bench --attention, as the README's table is made (ours alone, which needs no PyTorch)
    command = [sys.executable, "-m", "dev.bench", "--attention", "-e", FIXTURE_MODEL, "-t", "16", "--steps", "2"]
    result = subprocess.run(command, cwd=HERE, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    rows = [line.split(" | ") for line in result.stdout.splitlines() if line.startswith("| ours (train_gpt2) |")]
    assert len(rows) == 1 and float(rows[0][1]) > 0 and float(rows[0][2]) > 0 and rows[0][4] == "1.00x", rows
    refused = subprocess.run(command + ["--profile"], cwd=HERE, capture_output=True, text=True)
    assert refused.returncode == 2 and "--attention goes with --vs torch only" in refused.stderr


def test_bench_times_generation():
    # python -m dev.bench --generate, as the README's table is made, on the small fixture
    result = subprocess.run([sys.executable, "-m", "dev.bench", "--generate", "-e", FIXTURE_MODEL, "--prompt-tokens",
                             "3", "--gen-tokens", "5", "--steps", "1"], cwd=HERE, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ours")]
    assert len(rows) == 2 and "bandwidth: " in result.stdout and "tokens/s; ours with the KV cache reach " in \
        result.stdout
    assert "the KV cache's and recompute's agree on the first 5 of 5" in result.stdout


def test_bf16_rounding_of_the_gemm_measurement_is_llmc_s():
    # dev/gemm_bf16.py rounds float32 to bfloat16 to nearest, ties to even, as llm.c's and the libraries' do
    from dev.gemm_bf16 import to_bf16
    values = np.array([1.0, 1.0 + 2**-8, 1.0 + 3 * 2**-8, 1.0 + 2**-8 + 2**-20, -2.5, 65504.0], dtype=np.float32)
    widened = (to_bf16(np, values).astype(np.uint32) << 16).view(np.float32)
    np.testing.assert_array_equal(widened, [1.0, 1.0, 1.0 + 4 * 2**-8, 1.0 + 2**-7, -2.5, 65536.0])


def test_bench_times_another_checkout_alternated(tmp_path):
    # python -m dev.bench --vs-tree DIR, as issue 21's comparison of two commits was made: here the other checkout is
    # this one under another path (a link), whose worker runs from there and must give the same losses
    other = tmp_path / "other"
    other.symlink_to(HERE, target_is_directory=True)
    command = [sys.executable, "-m", "dev.bench", "-e", FIXTURE_MODEL, "-t", "16", "--warmup", "1", "--steps", "2"]
    result = subprocess.run(command + ["--vs-tree", str(other)], cwd=HERE, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ours (numba)")]
    assert len(rows) == 2 and rows[1].startswith(f"| ours (numba) at {other} |"), rows
    assert f"this checkout against {other} (its ms / ours ms): " in result.stdout
    losses = result.stdout.split("loss, first step -> last: ")[1].splitlines()[0].split("; ")
    assert losses[0].removeprefix("ours ") == losses[1].removeprefix(f"ours at {other} "), losses
    refused = subprocess.run(command + ["--vs-tree", str(tmp_path)], cwd=HERE, capture_output=True, text=True)
    assert refused.returncode == 2 and "not a checkout of this repository" in refused.stderr
