"""
Round trips of every file the trainer reads and writes (model, token shards, tokenizer), GPT-2's tokenizer
offline, and every bad input and bad flag the trainer must refuse with one line and a non-zero exit.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

import train_gpt2 as g
from conftest import (FIXTURE_DEBUG_STATE, FIXTURE_MODEL, HERE, assert_refused, bad_copy, read_debug_state, run_main,
                      write_tokens)


def test_offline_encoding_is_gpt2(encoding):
    assert encoding.encode("Hello world") == [15496, 995]
    assert encoding.n_vocab == 50257 and encoding.eot_token == g.EOT_TOKEN
    assert encoding.encode("<|endoftext|>", allowed_special="all") == [50256]


def test_tokenizer_file_round_trip(tmp_path, encoding):
    path = str(tmp_path / "tok.bin")
    g.write_tokenizer(path, encoding)
    pieces, eot = g.read_tokenizer(path)
    assert len(pieces) == 50257 and eot == 50256 and pieces[eot] == b"<|endoftext|>"
    text = "First Citizen:\nBefore we proceed any further, hear me speak. Ünïcödé ✓"
    assert b"".join(pieces[t] for t in encoding.encode(text)).decode("utf-8") == text


def test_model_file_round_trip(tmp_path):
    model = g.load_model(FIXTURE_MODEL)
    path = str(tmp_path / "model.bin")
    g.save_model(path, model)
    with open(path, "rb") as a, open(FIXTURE_MODEL, "rb") as b:
        assert a.read() == b.read()  # byte for byte


def test_bf16_checkpoint_loads_widened(tmp_path):
    model = g.load_model(FIXTURE_MODEL)
    header = np.fromfile(FIXTURE_MODEL, dtype="<i4", count=256).copy()
    header[1] = 5
    bf16 = (model.params_memory.view(np.uint32) >> 16).astype("<u2")  # truncation of float32 to bfloat16
    path = str(tmp_path / "model_bf16.bin")
    g.write_atomically(path, [header, bf16])
    widened = g.load_model(path).params_memory
    np.testing.assert_array_equal(widened.view(np.uint32), bf16.astype(np.uint32) << 16)
    assert np.abs(widened - model.params_memory).max() <= np.abs(model.params_memory).max() / 128


def test_shard_round_trip(tmp_path):
    tokens = np.array([0, 1, 50256, 65535, 7], dtype=np.uint16)
    path = write_tokens(tmp_path / "s.bin", tokens)
    assert g.read_shard_header(path) == 5
    np.testing.assert_array_equal(np.fromfile(path, dtype="<u2", offset=1024), tokens)
    assert np.fromfile(path, dtype="<i4", count=3).tolist() == [20240520, 1, 5]


def test_refuses_bad_model_files(shards, tmp_path, capsys):
    args = shards[2:] + ["-x", "1", "-s", "0", "-b", "2", "-t", "8"]
    assert_refused(["-e", str(tmp_path / "missing.bin")] + args, capsys, "missing.bin", "cannot open")
    short = bad_copy(tmp_path, FIXTURE_MODEL, "short.bin", keep_bytes=5000)
    assert_refused(["-e", short] + args, capsys, "short.bin", "truncated", "expected 540672 bytes, found 5000")
    tiny = bad_copy(tmp_path, FIXTURE_MODEL, "tiny.bin", keep_bytes=100)
    assert_refused(["-e", tiny] + args, capsys, "tiny.bin", "truncated")
    magic = bad_copy(tmp_path, FIXTURE_MODEL, "magic.bin", {0: 1234})
    assert_refused(["-e", magic] + args, capsys, "magic.bin", "bad magic number: expected 20240326, found 1234")
    version = bad_copy(tmp_path, FIXTURE_MODEL, "version.bin", {1: 4})
    assert_refused(["-e", version] + args, capsys, "version.bin", "expected 3 or 5, found 4")
    assert_refused(["-e", "d7"] + args, capsys, "depth 7")


def test_refuses_bad_shards(shards, tmp_path, capsys):
    model = ["-e", FIXTURE_MODEL, "-x", "1", "-s", "0", "-j", "", "-b", "2", "-t", "8"]
    train = str(tmp_path / "train.bin")
    assert_refused(model + ["-i", str(tmp_path / "nothing_*.bin")], capsys, "no token shards match")
    short = bad_copy(tmp_path, train, "short.bin", keep_bytes=1024 + 100)
    assert_refused(model + ["-i", short], capsys, "short.bin", "truncated")
    magic = bad_copy(tmp_path, train, "magic.bin", {0: 20240326})
    assert_refused(model + ["-i", magic], capsys, "magic.bin", "bad magic number: expected 20240520")
    version = bad_copy(tmp_path, train, "version.bin", {1: 2})
    assert_refused(model + ["-i", version], capsys, "version.bin", "expected 1, found 2")
    few = write_tokens(tmp_path / "few.bin", np.arange(32))
    assert_refused(model + ["-i", few, "-b", "4"], capsys, "few.bin", "32 tokens, fewer than B*T+1 = 33")
    out_of_range = write_tokens(tmp_path / "range.bin", np.concatenate([np.arange(20), [500], np.arange(50)]))
    assert_refused(model + ["-i", out_of_range, "-b", "1", "-x", "5"], capsys, "range.bin",
                   "token id 500 at token 20 is out of range for vocab size 500")


def test_refuses_too_long_sequences_and_divergence(shards, tmp_path, capsys):
    assert_refused(shards + ["-t", "33", "-s", "0"], capsys, "T=33", "maximum 32")
    model = g.load_model(FIXTURE_MODEL)
    model.params.lnfw[0] = np.inf
    path = str(tmp_path / "inf.bin")
    g.save_model(path, model)
    assert_refused(["-e", path] + shards[2:] + ["-s", "0", "-v", "0", "-b", "2", "-t", "8"], capsys,
                   "loss is nan at step 0")


def test_refuses_bad_tokenizer_and_debug_state(tmp_path, encoding):
    path = str(tmp_path / "tok.bin")
    g.write_tokenizer(path, encoding)
    with pytest.raises(g.GPT2Error, match="truncated: 50000 of 50257 tokens"):
        size = 1024 + sum(1 + len(encoding.decode_single_token_bytes(i)) for i in range(50000))
        g.read_tokenizer(bad_copy(tmp_path, path, "short_tok.bin", keep_bytes=size))
    with pytest.raises(g.GPT2Error, match="bad magic number: expected 20240328"):
        g.read_tokenizer(bad_copy(tmp_path, path, "magic_tok.bin", {0: 7}))
    config = g.load_model(FIXTURE_MODEL).config
    with pytest.raises(g.GPT2Error, match="truncated"):
        read_debug_state(bad_copy(tmp_path, FIXTURE_DEBUG_STATE, "short_state.bin", keep_bytes=4096), config)
    with pytest.raises(g.GPT2Error, match="expected 2, found 3"):
        read_debug_state(bad_copy(tmp_path, FIXTURE_DEBUG_STATE, "version_state.bin", {1: 3}), config)


def test_bad_flags_exit_with_one_line(capsys):
    for argv in (["-b", "0"], ["-t", "-1"], ["-x", "-2"], ["-g", "0"], ["--no-such-flag"], ["-l", "-1"],
                 ["--beta1", "1.5"], ["-q", "2"], ["-m", "0"], ["-k", "steep"], ["-n", "5"], ["-b", "3", "-d", "100"],
                 ["-c", "nan"], ["-l", "inf"], ["--grad-clip", "nan"], ["-q", "nan"], ["--beta2", "nan"],
                 ["-l", "1e39"], ["-c", "-inf"], ["-u", "3000000000"], ["-x", "2147483648"], ["-o", ""], ["-e", ""],
                 ["-a", "1", "-j", ""], ["-q", "1.5"]):
        with pytest.raises(SystemExit) as exit_info:
            g.parse_args(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.endswith("(see train_gpt2.py --help)\n") and err.count("\n") == 1, err


def test_error_is_one_line_without_traceback(tmp_path):
    result = subprocess.run([sys.executable, os.path.join(HERE, "train_gpt2.py"), "-e", "missing.bin"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert result.stderr == "error: missing.bin: cannot open: No such file or directory\n"


def test_descriptors_with_other_digits_are_refused(shards, capsys):
    for descriptor in ("d\u0661\u0662", "d\u00b2", "gpt3:c\uff17\uff16\uff18"):  # Arabic-Indic, superscript, fullwidth
        assert_refused(shards[2:] + ["-e", descriptor, "-s", "0"], capsys, "unknown model descriptor")


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
    os.remove(g.TOKENIZER_FILE)
    os.mkfifo(g.TOKENIZER_FILE)
    assert_refused(shards + ["-b", "2", "-t", "8", "-g", "4"], capsys, "gpt2_tokenizer.bin: not a regular file")


def test_a_tokenizer_whose_eot_is_out_of_range_is_refused_before_training(shards, capsys):
    pieces = [bytes([97 + i % 26]) for i in range(500)]
    body = np.frombuffer(b"".join(bytes([len(p)]) + p for p in pieces), dtype=np.uint8)
    g.write_atomically(g.TOKENIZER_FILE, [g.new_header(g.TOKENIZER_MAGIC, 2, 500, 600), body])
    code, out, err = run_main(shards + ["-b", "2", "-t", "8", "-g", "4"], capsys)
    assert code == 1 and "step 0" not in out
    assert err == "error: gpt2_tokenizer.bin: EOT token id 600 is out of range for its 500 tokens\n"


def test_a_diverging_run_prints_one_line(shards, capsys):
    code, out, err = run_main(shards + ["-b", "2", "-t", "8", "-s", "0", "-l", "1e30", "-x", "5"], capsys)
    assert code == 1
    assert err == "error: the training loss is nan at step 1: the run diverged (lower -l?)\n"  # no RuntimeWarning


def test_ctrl_c_while_the_libraries_load_exits_130_without_a_traceback(tmp_path):
    # the interrupt (a real SIGINT) is made to land while numba is imported, before the trainer's own code runs
    code = ("import os, runpy, signal, sys\n"
            "class Interrupt:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'numba':\n"
            "            os.kill(os.getpid(), signal.SIGINT)\n"
            "sys.meta_path.insert(0, Interrupt())\n"
            f"sys.argv = ['train_gpt2.py']\n"
            f"runpy.run_path({os.path.join(HERE, 'train_gpt2.py')!r}, run_name='__main__')\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert (result.returncode, result.stderr) == (130, "interrupted\n")


def test_ctrl_c_while_the_run_starts_exits_130(shards, capsys, monkeypatch):
    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(g, "load_kernels", interrupted)
    code, out, err = run_main(shards + ["-b", "2", "-t", "8", "-s", "0"], capsys)
    assert (code, err) == (130, "interrupted\n")


def test_a_ctrl_c_that_numba_swallowed_still_stops_the_run(shards, capsys, monkeypatch):
    # a KeyboardInterrupt raised inside numba's C callbacks is printed and lost; the handler's note of it is not
    def swallowed():
        monkeypatch.setattr(g, "interrupted", True)

    monkeypatch.setattr(g, "load_kernels", swallowed)
    code, out, err = run_main(shards + ["-b", "2", "-t", "8", "-s", "0"], capsys)
    assert (code, err) == (130, "interrupted\n") and "step 0" not in out


def test_a_descriptor_is_a_descriptor_even_where_a_directory_has_its_name(shards, tmp_path, capsys):
    # -o d6 makes a directory d6 before -e d6 is read: d6 is still GPT-2's shape of 6 layers
    code, out, err = run_main(["-e", "d6", "-o", "d6", "-i", str(tmp_path / "train.bin"), "-j", "", "-x", "1",
                               "-s", "0", "-b", "1", "-t", "8"], capsys)
    assert code == 0, err
    assert "num_layers 6" in out and os.path.isdir(tmp_path / "d6")
