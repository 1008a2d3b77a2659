"""
llmc/run_dir.py, what a run directory (-o) guarantees: it holds one run only, one process writes into it at a
time, every file reaches the disk before the DONE_ file that makes a checkpoint count, nothing a killed write left
stays behind, the last step is always saved, old checkpoints are pruned even after a kill, and a run killed at any
moment resumes bit for bit. (What a training state holds, and the resumes it refuses, are in test_state.py.)
"""

import fcntl
import os
import signal
import subprocess
import sys
import time

import pytest

import llmc.run_dir
import train_gpt2 as tg
from llmc.files import temporary_name, write_atomically
from llmc.mpi import ONE_PROCESS
from llmc.run_dir import RunDirectory
from tests.helpers import (HERE, assert_refused, checkpointed_run, complete_checkpoints, dead_pid, read_log,
                           run_main, trainer_args)


def test_a_fresh_run_refuses_a_directory_that_holds_another_run(run_dir, capsys):
    out = checkpointed_run(run_dir, capsys)
    log = read_log(out)
    assert_refused(trainer_args(run_dir, out, "-x", "6", "-n", "3", "-l", "3e-4"), capsys,
                   f"{out}: holds another run (DONE_00000003, DONE_00000006, main.log, ...)", "-y 1")
    assert read_log(out) == log  # untouched
    for name in os.listdir(out):
        if name != "main.log":
            os.remove(out / name)
    assert_refused(trainer_args(run_dir, out, "-x", "6"), capsys,
                   "holds the log of another run, which wrote no checkpoint: -y 1 starts it again")
    code, stdout, err = run_main(trainer_args(run_dir, out, "-x", "6", "-y", "1"), capsys)  # nothing to resume
    assert code == 0 and "no complete checkpoint" in stdout, err


def test_a_second_run_in_the_same_directory_is_refused(run_dir, capsys):
    out = run_dir / "out"
    out.mkdir()
    with open(out / ".lock", "a+") as lock:  # another process holds the directory
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.write("4242\n")
        lock.flush()
        assert_refused(trainer_args(run_dir, out, "-x", "2"), capsys,
                       f"{out}: another run (process 4242) is writing into it")
    assert run_main(trainer_args(run_dir, out, "-x", "2"), capsys)[0] == 0  # released


def test_every_write_reaches_the_disk_before_done(run_dir, capsys, monkeypatch):
    events = []
    fsync, replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                 fsync(fd)))
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("rename", str(b))), replace(a, b)))
    out = checkpointed_run(run_dir, capsys)
    names = [(kind, os.path.basename(path)) for kind, path in events]
    done = names.index(("rename", "DONE_00000003"))
    before_done = names[:done]
    for name in ("model_00000003.bin", "state_00000003_00000.bin"):
        tmp = f".{name}.tmp{os.getpid()}"
        assert before_done.index(("fsync", tmp)) < before_done.index(("rename", name))  # the file, then its name
        assert ("fsync", "out") in before_done[before_done.index(("rename", name)):]   # then the directory
    assert ("fsync", "main.log") in before_done
    assert names[done + 1] == ("fsync", "out")
    assert sorted(os.listdir(out)) == [".lock", "DONE_00000003", "DONE_00000006", "main.log", "model_00000003.bin",
                                       "model_00000006.bin", "state_00000003_00000.bin", "state_00000006_00000.bin"]


def test_resume_rewrites_the_log_through_a_temporary_file(run_dir, capsys, monkeypatch):
    out = checkpointed_run(run_dir, capsys)
    (out / "DONE_00000006").unlink()  # so that the resume trims the log back to step 3
    log = read_log(out)
    write = write_atomically

    def killed_while_writing_the_log(path, chunks):
        if path.endswith("main.log"):
            tmp = os.path.join(os.path.dirname(path), temporary_name("main.log"))
            with open(tmp, "wb") as f:
                f.write(b"s:0 half a log")
            raise KeyboardInterrupt  # the kill lands after the temporary file, before the rename
        write(path, chunks)

    monkeypatch.setattr(llmc.run_dir, "write_atomically", killed_while_writing_the_log)
    assert run_main(trainer_args(run_dir, out, "-x", "6", "-n", "3", "-y", "1"), capsys)[0] == 130
    assert read_log(out) == log  # whole
    monkeypatch.setattr(llmc.run_dir, "write_atomically", write)
    code, stdout, err = run_main(trainer_args(run_dir, out, "-x", "6", "-n", "3", "-y", "1"), capsys)
    assert code == 0, err
    assert not [name for name in os.listdir(out) if ".tmp" in name]  # the killed write's file, removed at start


def test_leftovers_of_killed_writes_are_removed_when_a_run_starts(run_dir, capsys):
    out = checkpointed_run(run_dir, capsys)
    for name in (".model_00000009.bin", ".state_00000009_00000.bin", ".main.log"):  # of processes that are gone
        (out / f"{name}.tmp{dead_pid()}").write_bytes(b"x" * 1000)
    (out / ".notes.tmp").write_text("not ours: kept")
    (out / f".live.tmp{os.getpid()}").write_text("a live process's: kept")
    code, stdout, err = run_main(trainer_args(run_dir, out, "-x", "6", "-n", "3", "-y", "1"), capsys)
    assert code == 0, err
    assert sorted(name for name in os.listdir(out) if name.startswith(".")) == [f".live.tmp{os.getpid()}", ".lock",
                                                                               ".notes.tmp"]


def test_a_lock_file_that_is_no_file(run_dir, capsys):
    out = run_dir / "out"
    out.mkdir()
    os.mkfifo(out / ".lock")
    assert_refused(trainer_args(run_dir, out, "-x", "2"), capsys, f"{out}/.lock: not a regular file")


def test_an_output_directory_whose_name_is_not_utf8(run_dir):
    # its name is printed (with the byte escaped) even where stdout encodes strictly
    argv = [sys.executable, os.path.join(HERE, "train_gpt2.py")] + trainer_args(run_dir, "OUT", "-x", "2")
    argv[argv.index("OUT")] = os.fsencode(run_dir) + b"/run_\xff"
    result = subprocess.run(argv, cwd=run_dir, capture_output=True, timeout=600,
                            env=dict(os.environ, PYTHONIOENCODING="utf-8:strict"))
    assert result.returncode == 0, result.stderr
    assert b"wrote checkpoint " in result.stdout and b"run_\\udcff/model_00000002.bin" in result.stdout


def test_with_an_output_directory_the_last_step_is_always_saved(run_dir, capsys):
    out = run_dir / "out"
    code, stdout, err = run_main(trainer_args(run_dir, out, "-x", "4"), capsys)  # no -n
    assert code == 0, err
    assert complete_checkpoints(out) == [4]
    assert tg.read_model_file(str(out / "model_00000004.bin")).num_parameters > 0


def test_resuming_a_finished_run_says_so_and_how_it_could_go_on(run_dir, capsys):
    # -y 1 on a run that reached -x: one line saying it is finished, and whether a larger -x can extend it
    for name, extra, advice in (
            ("decaying", (), "its cosine schedule decays over -x steps, so it cannot go further (-k constant or -q "
                             "1.0 runs can)"),
            ("constant", ("-k", "constant"), "to train it further, give -y 1 a larger -x")):
        out = run_dir / name
        assert run_main(trainer_args(run_dir, out, "-x", "3", *extra), capsys)[0] == 0
        log = read_log(out)
        code, stdout, err = run_main(trainer_args(run_dir, out, "-x", "3", "-y", "1", *extra), capsys)
        assert (code, err) == (0, "")
        assert f"{out}: the run is finished at step 3 (-x 3); {advice}\n" in stdout
        assert "step " not in stdout.replace("at step 3", "") and "loading the numba kernels" not in stdout
        assert read_log(out) == log and complete_checkpoints(out) == [3]


def test_resume_after_a_kill_is_bit_identical(run_dir):
    """A straight run, and the same run killed (SIGKILL) mid-way and resumed: the same losses and logs. The kill
    lands wherever it lands (the run may even have finished): the test asserts only what holds everywhere."""
    script = os.path.join(HERE, "train_gpt2.py")
    args = trainer_args(run_dir, run_dir / "killed", "-x", "60", "-n", "5", "-nk", "3")
    # one step first, so that every kernel is compiled and cached before the runs that are compared
    subprocess.run([sys.executable, script] + trainer_args(run_dir, run_dir / "warm", "-x", "1"), cwd=run_dir,
                   capture_output=True, timeout=600, check=True)
    process = subprocess.Popen([sys.executable, script] + args, stdout=subprocess.DEVNULL, cwd=run_dir)
    done = run_dir / "killed" / "DONE_00000020"
    while not done.exists() and process.poll() is None:
        time.sleep(0.002)
    process.kill()
    assert process.wait() in (0, -signal.SIGKILL)
    latest = RunDirectory(str(run_dir / "killed"), ONE_PROCESS).latest_checkpoint()
    assert latest >= 20
    # a kill between a checkpoint's DONE_ file and the retiring of the oldest leaves one more than -nk 3
    assert len(complete_checkpoints(run_dir / "killed")) <= 4
    resumed = subprocess.run([sys.executable, script] + args + ["-y", "1"], cwd=run_dir, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from the checkpoint of step {latest}" in resumed.stdout
    assert complete_checkpoints(run_dir / "killed") == [50, 55, 60]
    straight = subprocess.run([sys.executable, script] + trainer_args(run_dir, run_dir / "straight", "-x", "60"),
                              cwd=run_dir, capture_output=True, text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr

    def losses(stdout):
        return [line.split(" (took")[0] for line in stdout.splitlines() if line.startswith("step ")]

    assert losses(resumed.stdout) == losses(straight.stdout)[latest:]
    assert read_log(run_dir / "killed") == read_log(run_dir / "straight")


@pytest.mark.parametrize("killed_at", [5, 10, 15, 20])
def test_a_kill_right_after_a_checkpoint_is_pruned_on_resume(run_dir, capsys, monkeypatch, killed_at):
    # the kill is made to land exactly between a checkpoint's DONE_ file and the pruning that follows it
    out = run_dir / "out"
    args = trainer_args(run_dir, out, "-x", "20", "-n", "5", "-nk", "2", "-v", "0")
    prune = RunDirectory.prune

    def killed_before_pruning(run_directory, keep):
        if run_directory.latest_checkpoint() == killed_at:
            raise KeyboardInterrupt
        prune(run_directory, keep)

    monkeypatch.setattr(RunDirectory, "prune", killed_before_pruning)
    assert run_main(args, capsys)[0] == 130
    assert complete_checkpoints(out) == list(range(5, killed_at + 1, 5))[-3:]
    (out / "model_00000001.bin").write_bytes(b"a model whose checkpoint a kill left incomplete")
    monkeypatch.setattr(RunDirectory, "prune", prune)
    code, stdout, err = run_main(args + ["-y", "1"], capsys)
    assert code == 0, err
    assert (f"resumed from the checkpoint of step {killed_at}" if killed_at < 20  # a kill after the last: finished
            else f"{out}: the run is finished at step 20 (-x 20)") in stdout
    assert complete_checkpoints(out) == [15, 20]
    assert sorted(os.listdir(out)) == [".lock", "DONE_00000015", "DONE_00000020", "main.log", "model_00000015.bin",
                                       "model_00000020.bin", "state_00000015_00000.bin", "state_00000020_00000.bin"]


def test_odd_names_and_bytes_in_the_output_directory(run_dir, capsys):
    out = run_dir / "out"
    assert run_main(trainer_args(run_dir, out, "-x", "6", "-n", "3"), capsys)[0] == 0
    for name in ("DONE_0000000\u00b2", "DONE_\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668", "DONE_abc",
                 "model_99999999.bin.bak", "DONE_000000090"):
        (out / name).write_bytes(b"")
    (out / "DONE_00000009").mkdir()  # a directory is no checkpoint
    with open(out / "main.log", "ab") as log:
        log.write(b"a line that is not UTF-8: \xff\xfe\n")
    code, stdout, err = run_main(trainer_args(run_dir, out, "-x", "6", "-n", "3", "-y", "1"), capsys)
    assert code == 0, err
    assert f"{out}: the run is finished at step 6 (-x 6)" in stdout  # the newest checkpoint, 6, was found
