"""
What a run directory (-o) guarantees: it holds one run only, one process writes into it at a time, every file
reaches the disk before the DONE_ file that makes a checkpoint count, nothing a killed write left stays behind, a
full disk is named in one line, and every field of a training state is checked before a resume uses it.
"""

import fcntl
import os
import resource
import signal
import subprocess
import sys

import numpy as np
import pytest

import train_gpt2 as g
from conftest import HERE, assert_refused, dead_pid, read_log, run_main, trainer_args


def checkpointed_run(run_dir, capsys, *extra):
    """A run of 6 steps with checkpoints at 3 and 6, in run_dir/out."""
    out = run_dir / "out"
    code, stdout, err = run_main(trainer_args(run_dir, out, "-x", "6", "-n", "3", *extra), capsys)
    assert code == 0, err
    return out


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
    write = g.write_atomically

    def killed_while_writing_the_log(path, chunks):
        if path.endswith("main.log"):
            tmp = os.path.join(os.path.dirname(path), g.temporary_name("main.log"))
            with open(tmp, "wb") as f:
                f.write(b"s:0 half a log")
            raise KeyboardInterrupt  # the kill lands after the temporary file, before the rename
        write(path, chunks)

    monkeypatch.setattr(g, "write_atomically", killed_while_writing_the_log)
    assert run_main(trainer_args(run_dir, out, "-x", "6", "-n", "3", "-y", "1"), capsys)[0] == 130
    assert read_log(out) == log  # whole
    monkeypatch.setattr(g, "write_atomically", write)
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


def test_a_full_disk_names_the_file(run_dir):
    # a file size limit makes write() fail as a full disk does (EFBIG instead of ENOSPC), at the first checkpoint
    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    out = run_dir / "out"
    result = subprocess.run([sys.executable, os.path.join(HERE, "train_gpt2.py")]
                            + trainer_args(run_dir, out, "-x", "2", "-n", "1"),
                            cwd=run_dir, capture_output=True, text=True, timeout=600, preexec_fn=limit_file_size)
    assert result.returncode == 1
    assert result.stderr == f"error: {out}/model_00000001.bin: cannot write: File too large\n"
    assert sorted(os.listdir(out)) == [".lock", "main.log"]  # no temporary file left to fill the disk


def write_state_with(path, changes=None, wide_changes=None, body=None):
    """A copy of the training state at `path` with header slots (or 64-bit slots) changed, or the body replaced."""
    data = bytearray(open(path, "rb").read())
    header = np.frombuffer(bytes(data[:1024]), dtype="<i4").copy()
    for slot, value in (changes or {}).items():
        header[slot] = value
    for slot, value in (wide_changes or {}).items():
        header.view("<u8")[slot] = value
    data[:1024] = header.tobytes()
    if body is not None:
        data[1024:1024 + len(body)] = body
    open(path, "wb").write(bytes(data))


@pytest.mark.parametrize("case, fragment", [
    ("step", "holds the state of step 3, not of step 6 as its name says"),
    ("negative step", "holds the state of step -6, not of step 6"),
    ("shuffle flag", "data shuffling flag 7 is neither 0 nor 1"),
    ("shard index", "at shard 9, but -i matches 3 shard(s)"),
    ("sample index", "at batch 1000 of shard"),
    ("sampling rng", "the sampling RNG's state is 0"),
    ("data rng", "the data order's RNG has 0 draws left"),
    ("moments", "AdamW's moments are not finite"),
])
def test_every_field_of_the_state_is_checked(run_dir, capsys, case, fragment):
    out = checkpointed_run(run_dir, capsys)
    state = str(out / "state_00000006_00000.bin")
    if case == "step":
        os.replace(out / "state_00000003_00000.bin", state)
    elif case == "negative step":
        write_state_with(state, {10: -6})
    elif case == "shuffle flag":
        write_state_with(state, {5: 7})
    elif case == "shard index":
        write_state_with(state, wide_changes={15: 9})
    elif case == "sample index":
        write_state_with(state, wide_changes={16: 1000})
    elif case == "sampling rng":
        write_state_with(state, wide_changes={12: 0})
    elif case == "data rng":  # the Mersenne Twister's words come last; `left` is the third
        size = os.path.getsize(state)
        with open(state, "r+b") as f:
            f.seek(size - 630 * 4 + 2 * 4)
            f.write(np.array([0], "<u4").tobytes())
    elif case == "moments":
        write_state_with(state, body=np.array([np.nan], "<f4").tobytes())
    assert_refused(trainer_args(run_dir, out, "-x", "6", "-n", "3", "-y", "1"), capsys, "state_00000006_00000.bin",
                   fragment)


def test_a_lock_file_that_is_no_file(run_dir, capsys):
    out = run_dir / "out"
    out.mkdir()
    os.mkfifo(out / ".lock")
    assert_refused(trainer_args(run_dir, out, "-x", "2"), capsys, f"{out}/.lock: not a regular file")


def test_resuming_on_other_training_shards_is_refused(run_dir, capsys):
    out = checkpointed_run(run_dir, capsys)
    other = run_dir / "other"
    other.mkdir()
    for i in range(3):  # the same number of shards, of the same sizes, but other names
        os.replace(run_dir / f"train_{i}.bin", other / f"shard_{i}.bin")
    args = trainer_args(run_dir, out, "-x", "6", "-n", "3", "-y", "1")
    args[args.index("-i") + 1] = str(other / "shard_*.bin")
    assert_refused(args, capsys, "other training shards (-i) than the run had")
    for i in range(3):  # moved to another folder under their own names, they are the same shards
        os.replace(other / f"shard_{i}.bin", other / f"train_{i}.bin")
    args[args.index("-i") + 1] = str(other / "train_*.bin")
    code, stdout, err = run_main(args, capsys)
    assert code == 0, err


def test_an_output_directory_whose_name_is_not_utf8(run_dir):
    # its name is printed (with the byte escaped) even where stdout encodes strictly
    argv = [sys.executable, os.path.join(HERE, "train_gpt2.py")] + trainer_args(run_dir, "OUT", "-x", "2")
    argv[argv.index("OUT")] = os.fsencode(run_dir) + b"/run_\xff"
    result = subprocess.run(argv, cwd=run_dir, capture_output=True, timeout=600,
                            env=dict(os.environ, PYTHONIOENCODING="utf-8:strict"))
    assert result.returncode == 0, result.stderr
    assert b"wrote checkpoint " in result.stdout and b"run_\\udcff/model_00000002.bin" in result.stdout
