"""
Errors and durable file writes, and the 256-int header every llm.c binary file starts with (llm.c's llmc/utils.h).

Every llm.c binary file starts with a header of 256 little-endian int32: header[0] is a magic number saying what kind
of file it is, header[1] a version, and the rest depends on the kind. Anything wrong with what the user gives
(a missing or truncated file, a wrong magic number, a token id out of range) raises GPT2Error, which the trainer's
main() prints as one line before exiting with status 1. Every file is written to a temporary name, flushed to the
disk and renamed, so that neither a kill nor a power cut leaves half a file.
"""

import os
import re

import numpy as np

HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
MODEL_MAGIC, TOKENIZER_MAGIC, SHARD_MAGIC = 20240326, 20240328, 20240520
STATE_MAGIC = 20240527  # the training state of llm.c's full trainer
EVAL_MAGIC = 20240522  # a multiple-choice evaluation set, such as HellaSwag's


class GPT2Error(Exception):
    """Bad input: main() prints the message as one line and exits with status 1. With many processes (llmc/mpi.py),
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


def process_exists(pid):
    try:
        os.kill(pid, 0)  # signal 0 only asks whether the process exists
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # another user's
        return True
    return True
