"""
llmc/tokenizer.py: GPT-2's tokenizer offline, llm.c's tokenizer file (round trip, bad ones refused), the tokenizer
the trainer samples with, and tokens printed as text.
"""

import numpy as np
import pytest

import llmc.tokenizer
import train_gpt2 as tg
from llmc.files import TOKENIZER_MAGIC, GPT2Error, new_header, write_atomically
from llmc.tokenizer import (EOT_TOKEN, TOKENIZER_FILE, TextStream, printable, read_tokenizer_file, sampling_tokenizer,
                            write_tokenizer_file)
from tests.helpers import FIXTURE_DEBUG_STATE, FIXTURE_MODEL, bad_copy, read_debug_state, run_main


def test_offline_encoding_is_gpt2(encoding):
    assert encoding.encode("Hello world") == [15496, 995]
    assert encoding.n_vocab == 50257 and encoding.eot_token == EOT_TOKEN
    assert encoding.encode("<|endoftext|>", allowed_special="all") == [50256]


def test_tokenizer_file_round_trip(tmp_path, encoding):
    path = str(tmp_path / "tok.bin")
    write_tokenizer_file(path, encoding)
    pieces, eot = read_tokenizer_file(path)
    assert len(pieces) == 50257 and eot == 50256 and pieces[eot] == b"<|endoftext|>"
    text = "First Citizen:\nBefore we proceed any further, hear me speak. Ünïcödé ✓"
    assert b"".join(pieces[t] for t in encoding.encode(text)).decode("utf-8") == text


def test_refuses_bad_tokenizer_and_debug_state(tmp_path, encoding):
    path = str(tmp_path / "tok.bin")
    write_tokenizer_file(path, encoding)
    with pytest.raises(GPT2Error, match="truncated: 50000 of 50257 tokens"):
        size = 1024 + sum(1 + len(encoding.decode_single_token_bytes(i)) for i in range(50000))
        read_tokenizer_file(bad_copy(tmp_path, path, "short_tok.bin", keep_bytes=size))
    with pytest.raises(GPT2Error, match="bad magic number: expected 20240328"):
        read_tokenizer_file(bad_copy(tmp_path, path, "magic_tok.bin", {0: 7}))
    config = tg.read_model_file(FIXTURE_MODEL).config
    with pytest.raises(GPT2Error, match="truncated"):
        read_debug_state(bad_copy(tmp_path, FIXTURE_DEBUG_STATE, "short_state.bin", keep_bytes=4096), config)
    with pytest.raises(GPT2Error, match="expected 2, found 3"):
        read_debug_state(bad_copy(tmp_path, FIXTURE_DEBUG_STATE, "version_state.bin", {1: 3}), config)


def test_a_tokenizer_whose_eot_is_out_of_range_is_refused_before_training(shards, capsys):
    pieces = [bytes([97 + i % 26]) for i in range(500)]
    body = np.frombuffer(b"".join(bytes([len(p)]) + p for p in pieces), dtype=np.uint8)
    write_atomically(TOKENIZER_FILE, [new_header(TOKENIZER_MAGIC, 2, 500, 600), body])
    code, out, err = run_main(shards + ["-b", "2", "-t", "8", "-g", "4"], capsys)
    assert code == 1 and "step 0" not in out
    assert err == "error: gpt2_tokenizer.bin: EOT token id 600 is out of range for its 500 tokens\n"


def test_printable_drops_control_characters_only():
    text = "a\u00a0b\u200dc\u3000d\u00ad\u2028e\t\n"
    assert printable(text) == text
    assert printable("x\x1b[31my\x07\x00\x85z") == "x[31myz"


def test_text_stream_decodes_characters_split_over_tokens(capsys):
    # tokens 1, 2, 3 are the three bytes of "\u2713" (e2 9c 93), token 4 a control byte
    pieces = [b"?", b"\xe2", b"\x9c", b"\x93", b"\x07"]
    stream = TextStream(pieces)
    printed = []
    for token in [1, 2, 3, 4] * 7 + [1, 2]:
        stream.write(token)
        printed.append(capsys.readouterr().out)
    stream.end()
    assert printed[:3] == ["", "", "\u2713"] and "".join(printed) == "\u2713" * 7
    assert capsys.readouterr().out == "\ufffd"  # a character cut off by the end


def test_the_sampling_tokenizer_is_written_once_and_must_be_the_model_s(tmp_path, monkeypatch, encoding, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(llmc.tokenizer, "gpt2_encoding", lambda: encoding)
    pieces, eot = sampling_tokenizer(50257)
    assert capsys.readouterr().out == "writing gpt2_tokenizer.bin from tiktoken's GPT-2 encoding\n"
    assert (pieces, eot) == read_tokenizer_file(TOKENIZER_FILE) and eot == EOT_TOKEN and len(pieces) == 50257
    written = (tmp_path / TOKENIZER_FILE).stat().st_mtime_ns
    assert sampling_tokenizer(50257) == (pieces, eot) and capsys.readouterr().out == ""  # read, not written again
    assert sampling_tokenizer(500) is None
    assert capsys.readouterr().out == ("sampling off: the model's vocabulary (500 tokens) is not the tokenizer's "
                                       "(50257, gpt2_tokenizer.bin)\n")
    assert (tmp_path / TOKENIZER_FILE).stat().st_mtime_ns == written
