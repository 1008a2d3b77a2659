"""
llmc/mpi.py, data-parallel training over MPI: 2 processes on this machine (mpirun --oversubscribe), against 1
process with twice the rows; ZeRO-1; gradient accumulation; the TCP transport; resume; failures on one process.
Needs mpi4py and Open MPI (pip install ".[mpi]"); skipped with the reason where they are missing.
"""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import train_gpt2 as tg
from tests.helpers import (FIXTURE_MODEL, HERE, random_examples, read_log, repository_env, trainer_args,
                           write_eval_file, write_tokens)

TRAINER = os.path.join(HERE, "train_gpt2.py")
MPIRUN = shutil.which("mpirun", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
try:
    import mpi4py  # noqa: F401
except ImportError:
    mpi4py = None
pytestmark = pytest.mark.skipif(not (MPIRUN and mpi4py), reason="needs mpi4py and Open MPI: pip install '.[mpi]'")
LOSS_TOLERANCE = 1e-4  # float32 sums taken in another order


def run(run_dir, argv, processes=1, mpi_options=()):
    """The trainer, alone or under mpirun with `processes` processes; returns the finished process."""
    command = [sys.executable, TRAINER] + argv
    if processes > 1:
        command = [MPIRUN, "-np", str(processes), "--oversubscribe", *mpi_options] + command
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    return subprocess.run(command, cwd=run_dir, capture_output=True, text=True, timeout=600, env=env)


def losses(stdout, kind):
    prefix = {"train": "step ", "val": "val loss "}[kind]
    lines = [line for line in stdout.splitlines() if line.startswith(prefix)]
    return np.array([float(line.split("train loss ")[1].split()[0] if kind == "train" else line.split()[2])
                     for line in lines])


def settings(run_dir, out, B, *extra):
    return trainer_args(run_dir, out, "-x", "6", "-b", str(B), "-d", "64", "-v", "3", *extra)


@pytest.mark.parametrize("zero", ["0", "1"])
@pytest.mark.parametrize("accumulate", [False, True])
def test_two_processes_train_as_one_with_twice_the_rows(run_dir, zero, accumulate):
    # -d 64 with T=8: one process of B=8, or two of B=4, in one micro-batch; or with accumulation two of B=2
    B = 2 if accumulate else 4
    one = run(run_dir, settings(run_dir, run_dir / "one", 2 * B))
    two = run(run_dir, settings(run_dir, run_dir / "two", B, "-z", zero), processes=2)
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    assert f"= {2 if accumulate else 1} micro-batch(es) of B={B} x T=8 on each of 2 processes" in two.stdout
    for kind in ("train", "val"):
        expected, got = losses(one.stdout, kind), losses(two.stdout, kind)
        assert len(got) == len(expected) > 2
        np.testing.assert_allclose(got, expected, rtol=0, atol=LOSS_TOLERANCE)
    assert ("(ZeRO-1: 1/2 of it)" in two.stdout) == (zero == "1")
    # rank 0 alone writes main.log: the same lines as the single process's, each once
    assert [line.split(":")[:2] for line in read_log(run_dir / "two").splitlines()] == \
        [line.split(":")[:2] for line in read_log(run_dir / "one").splitlines()]
    # one model file and a training state for each process, which holds its half of AdamW's state with ZeRO-1
    files = sorted(os.listdir(run_dir / "two"))
    assert [name for name in files if name.startswith("state_")] == ["state_00000006_00000.bin",
                                                                      "state_00000006_00001.bin"]
    moments = 2 * 4 * tg.read_model_file(FIXTURE_MODEL).num_parameters  # m and v of every parameter, in float32
    state_size = os.path.getsize(run_dir / "two" / "state_00000006_00001.bin")
    assert (moments / 2 < state_size < moments) if zero == "1" else (state_size > moments)


def test_two_processes_split_the_evaluation(run_dir):
    # -x 0 --eval-data: each process scores its share of the examples; the right answers are summed
    eval_file = write_eval_file(run_dir / "eval.bin", random_examples(np.random.default_rng(8), 11, 500))
    argv = ["-e", FIXTURE_MODEL, "-x", "0", "-t", "8", "-s", "0", "-j", "", "--eval-data", eval_file]
    one, two = run(run_dir, argv), run(run_dir, argv, processes=2)
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    lines = [[line.split(" (")[0] for line in p.stdout.splitlines() if line.startswith("eval accuracy")]
             for p in (one, two)]
    assert lines[0] == lines[1] and len(lines[0]) == 1 and "/11 = " in lines[0][0]


def test_the_tcp_transport_between_machines(run_dir):
    one = run(run_dir, settings(run_dir, run_dir / "one", 8))
    two = run(run_dir, settings(run_dir, run_dir / "two", 4, "-z", "1"), processes=2,
              mpi_options=["--mca", "btl", "self,tcp"])
    assert two.returncode == 0, two.stderr
    np.testing.assert_allclose(losses(two.stdout, "train"), losses(one.stdout, "train"), rtol=0, atol=LOSS_TOLERANCE)


def test_a_resumed_two_process_run_matches_a_straight_one(run_dir):
    straight, stopped = run_dir / "straight", run_dir / "stopped"
    argv = ["-x", "8", "-b", "4", "-d", "64", "-n", "2", "-z", "1"]
    result = run(run_dir, trainer_args(run_dir, straight, *argv), processes=2)
    assert result.returncode == 0, result.stderr
    # what a kill right after the checkpoint of step 4 leaves: its files and those before, the log so far, and the
    # model file of step 6 without its DONE_ file
    stopped.mkdir()
    for name in os.listdir(straight):
        step = int(name.split("_")[1][:8]) if name.startswith(("model_", "state_", "DONE_")) else None
        if name == "main.log" or name == "model_00000006.bin" or (step is not None and step <= 4):
            shutil.copy(straight / name, stopped / name)
    assert sorted(os.listdir(stopped))[:3] == ["DONE_00000002", "DONE_00000004", "main.log"]
    resumed = run(run_dir, trainer_args(run_dir, stopped, *argv, "-y", "1"), processes=2)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from the checkpoint of step 4" in resumed.stdout
    assert read_log(stopped) == read_log(straight)
    for name in ("model_00000008.bin", "state_00000008_00000.bin", "state_00000008_00001.bin"):
        assert (stopped / name).read_bytes() == (straight / name).read_bytes(), name


def test_resuming_with_another_number_of_processes_is_refused(run_dir):
    out = run_dir / "out"
    assert run(run_dir, settings(run_dir, out, 4, "-n", "3"), processes=2).returncode == 0
    alone = run(run_dir, settings(run_dir, out, 4, "-n", "3", "-y", "1"))
    assert alone.returncode == 1
    assert alone.stderr == (f"error: {out}/state_00000006_00000.bin: written by process 0 of 2, but this is process 0 "
                            "of 1: resume with as many processes as the run had (mpirun -np 2)\n")


def test_a_failure_on_one_process_stops_all_with_one_line(run_dir):
    out = run_dir / "out"
    assert run(run_dir, settings(run_dir, out, 4, "-n", "3"), processes=2).returncode == 0
    state = out / "state_00000006_00001.bin"  # only process 1 reads it
    state.write_bytes(state.read_bytes()[:-100])
    result = run(run_dir, settings(run_dir, out, 4, "-n", "3", "-y", "1"), processes=2)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: {state}: truncated: {os.path.getsize(state)} bytes, and more were expected"]


def test_a_process_that_dies_ends_the_job(run_dir):
    # process 1 is killed by a signal half-way: MPI ends the whole job rather than let process 0 wait forever
    code = ("import os, signal, sys\n"
            "import train_gpt2 as tg\n"
            "sys.argv[0] = 'train_gpt2.py'\n"
            "step = tg.train_step\n"
            "def dying(*args, **kwargs):\n"
            "    if os.environ.get('OMPI_COMM_WORLD_RANK') == '1' and args[5] == 2:\n"
            "        os.kill(os.getpid(), signal.SIGKILL)\n"
            "    return step(*args, **kwargs)\n"
            "tg.train_step = dying\n"
            "sys.exit(tg.main(sys.argv[1:]))\n")
    env = repository_env(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    result = subprocess.run([MPIRUN, "-np", "2", "--oversubscribe", sys.executable, "-c", code]
                            + settings(run_dir, run_dir / "out", 4), cwd=run_dir, capture_output=True, text=True,
                            timeout=300, env=env)
    assert result.returncode != 0  # and within the timeout: no process waits forever
    assert "signal 9" in result.stderr or "Killed" in result.stderr, result.stderr  # mpirun's own notice


def test_a_plain_run_never_imports_mpi(run_dir):
    code = ("import sys\n"
            "import train_gpt2 as tg\n"
            f"code = tg.main({settings(run_dir, run_dir / 'out', 8)!r})\n"
            "assert code == 0, code\n"
            "print('mpi4py' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=run_dir, capture_output=True, text=True, timeout=300,
                            env=repository_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "False"


def test_the_ring_reduce_scatter_with_three_processes(tmp_path):
    # ZeRO-1's reduce-scatter around a ring, with slices of unequal sizes: each process's slice holds the sum
    code = ("import numpy as np\n"
            "from llmc.mpi import Processes\n"
            "processes = Processes.start(zero=True)\n"
            "x = np.random.default_rng(processes.rank).standard_normal(1001)\n"
            "total = sum(np.random.default_rng(rank).standard_normal(1001) for rank in range(processes.count))\n"
            "processes.reduce_scatter(x)\n"
            "start, stop = processes.shards(x.size)[processes.rank]\n"
            "print(processes.rank, start, stop, np.abs(x[start:stop] - total[start:stop]).max())\n")
    env = repository_env(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    result = subprocess.run([MPIRUN, "-np", "3", "--oversubscribe", sys.executable, "-c", code], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    lines = sorted(line.split() for line in result.stdout.splitlines())
    assert [line[:3] for line in lines] == [["0", "0", "334"], ["1", "334", "668"], ["2", "668", "1001"]]
    assert all(float(line[3]) < 1e-12 for line in lines)


def test_a_failure_on_one_process_alone_ends_the_job(run_dir):
    # one machine's copy of the data is damaged: process 1 alone fails, outside any exchange; MPI ends the job
    # with its line, rather than let process 0 wait for it forever
    bad = write_tokens(run_dir / "bad.bin", np.concatenate([np.arange(100), [700], np.arange(300)]))
    argv = settings(run_dir, run_dir / "out", 4)
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    damaged = [bad if arg == str(run_dir / "train_*.bin") else arg for arg in argv]
    result = subprocess.run([MPIRUN, "--oversubscribe", "-np", "1", sys.executable, TRAINER, *argv, ":",
                             "-np", "1", sys.executable, TRAINER, *damaged], cwd=run_dir, capture_output=True,
                            text=True, timeout=300, env=env)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: process 1: {bad}: token id 700 at token 100 is out of range for vocab size 500"]


def test_a_bad_flag_is_told_once(run_dir):
    result = run(run_dir, settings(run_dir, run_dir / "out", 4)[:-2] + ["-d", "24"], processes=2)
    assert result.returncode != 0
    assert [line for line in result.stderr.splitlines() if line.startswith("error: ")] == [
        "error: -d 24 must be a positive multiple of B*T = 32 (see train_gpt2.py --help)"]
