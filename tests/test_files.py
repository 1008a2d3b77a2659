"""
llmc/files.py: llm.c's 256-int header read and checked, a FIFO or a directory where a file is expected refused,
durable writes (a temporary name, fsync, rename) and a full disk named in one line, and the processes that the
temporary names tell of.
"""

import os
import resource
import signal
import subprocess
import sys

import numpy as np
import pytest

from llmc.files import (GPT2Error, check_file_size, is_temporary_name, new_header, process_exists, read_header,
                        temporary_name, write_atomically)
from llmc.tokenizer import TOKENIZER_FILE
from tests.helpers import FIXTURE_MODEL, HERE, assert_refused, dead_pid, trainer_args


def test_a_fifo_or_a_directory_where_a_file_is_expected(shards, tmp_path, capsys):
    # opening a FIFO to read would wait forever for a writer
    fifo = str(tmp_path / "model.fifo")
    os.mkfifo(fifo)
    args = ["-i", str(tmp_path / "train.bin"), "-j", str(tmp_path / "val.bin"), "-s", "0", "-b", "2", "-t", "8"]
    assert_refused(["-e", fifo] + args, capsys, f"{fifo}: not a regular file")
    (tmp_path / "folder").mkdir()  # a folder is a Hugging Face GPT-2's
    assert_refused(["-e", str(tmp_path / "folder")] + args, capsys, "folder/config.json: cannot open")
    os.mkfifo(tmp_path / "folder" / "config.json")
    assert_refused(["-e", str(tmp_path / "folder")] + args, capsys, "folder/config.json: not a regular file")
    (tmp_path / "shard_dir.bin").mkdir()
    assert_refused(["-e", FIXTURE_MODEL, "-i", str(tmp_path / "shard_dir.bin")] + args[2:], capsys,
                   "shard_dir.bin: not a regular file")
    out = tmp_path / "out"
    out.mkdir()
    os.mkfifo(out / "main.log")
    assert_refused(shards + ["-s", "0", "-b", "2", "-t", "8", "-o", str(out)], capsys, "main.log: not a regular file")
    os.remove(TOKENIZER_FILE)
    os.mkfifo(TOKENIZER_FILE)
    assert_refused(shards + ["-b", "2", "-t", "8", "-g", "4"], capsys, "gpt2_tokenizer.bin: not a regular file")


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


def test_header_round_trip_and_every_check(tmp_path):
    path = str(tmp_path / "file.bin")
    write_atomically(path, [new_header(1234, 2, 7, -8), np.arange(3, dtype="<u2")])
    header = read_header(path, 1234, (1, 2))
    assert header.dtype == np.dtype("<i4") and header.size == 256 and header[:4].tolist() == [1234, 2, 7, -8]
    assert not header[4:].any()
    check_file_size(path, 1024 + 6)
    for size, problem in ((1024 + 8, "truncated"), (1024 + 4, "too long")):
        with pytest.raises(GPT2Error, match=f"file.bin: {problem}: expected {size} bytes, found 1030"):
            check_file_size(path, size)
    with pytest.raises(GPT2Error, match="bad magic number: expected 4321, found 1234"):
        read_header(path, 4321, (2,))
    with pytest.raises(GPT2Error, match="unsupported version: expected 1 or 3, found 2"):
        read_header(path, 1234, (1, 3))
    with open(path, "r+b") as f:
        f.truncate(1000)
    with pytest.raises(GPT2Error, match="truncated: 1000 bytes, less than the 1024-byte header"):
        read_header(path, 1234, (2,))
    with pytest.raises(GPT2Error, match="missing.bin: cannot open: No such file or directory"):
        read_header(str(tmp_path / "missing.bin"), 1234, (2,))


def test_a_write_leaves_no_temporary_file_and_names_the_one_it_cannot_write(tmp_path):
    path = str(tmp_path / "sub" / "out.bin")  # its folder is made
    write_atomically(path, [b"ab", np.array([1], "<u2")])
    assert open(path, "rb").read() == b"ab\x01\x00" and os.listdir(tmp_path / "sub") == ["out.bin"]
    (tmp_path / "dir.bin").mkdir()
    with pytest.raises(GPT2Error, match="dir.bin: cannot write: Is a directory"):
        write_atomically(str(tmp_path / "dir.bin"), [b"x"])
    assert sorted(os.listdir(tmp_path)) == ["dir.bin", "sub"]


def test_temporary_names_tell_which_process_wrote_them():
    name = temporary_name("model_00000003.bin")
    assert name == f".model_00000003.bin.tmp{os.getpid()}" and is_temporary_name(name)
    for other in ("model_00000003.bin", ".notes.tmp", ".x.tmpabc", "x.tmp12"):
        assert not is_temporary_name(other), other
    assert process_exists(os.getpid()) and not process_exists(dead_pid())


def test_the_reference_check_refuses_missing_files_in_one_line(tmp_path):
    # python -m pytest test_gpt2.py --model PATH --state PATH, as the README gives it, with files that are not there
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_gpt2.py"]
    for flags, expected in (
            (["--model", str(tmp_path / "gpt2_124M.bin")], f"{tmp_path / 'gpt2_124M.bin'}: cannot open"),
            (["--state", str(tmp_path / "state.bin")], f"{tmp_path / 'state.bin'}: cannot open"),
            (["--state", FIXTURE_MODEL], f"{FIXTURE_MODEL}: bad magic number: expected 20240327")):
        result = subprocess.run(command + flags, cwd=HERE, capture_output=True, text=True)
        lines = (result.stdout + result.stderr).strip().splitlines()
        assert result.returncode == 4 and len(lines) == 1, result.stdout + result.stderr
        assert lines[0].startswith("ERROR: test_gpt2.py's reference: ") and expected in lines[0], lines
