"""The dataset scripts of dev/data/: tinyshakespeare.py, tinystories.py, fineweb.py, hellaswag.py and data_common.py.
(Tiny Shakespeare as the trainer's default run prepares it, llmc/data.py, is in test_data.py.)

Offline and fast: every input is small and made here in tmp_path (text, JSON, JSON lines, parquet, a .tar.gz
served from 127.0.0.1). The shards must hold exactly what the GPT-2 tokenizer makes of the documents, with EOT
before each; splits, names and headers as llm.c has them; reruns write nothing, resumed runs the same bytes as
fresh ones; HellaSwag's eval file byte for byte as llm.c writes it; and bad input is one line on stderr and a
non-zero status.
"""

import functools
import http.server
import io
import json
import os
import random
import struct
import subprocess
import sys
import tarfile
import threading
import urllib.request
from contextlib import contextmanager

import numpy as np
import pytest

import llmc.data
import llmc.tokenizer
import train_gpt2 as tg
from dev.data import data_common, fineweb, hellaswag, tinyshakespeare, tinystories
from llmc.files import HEADER_BYTES, GPT2Error
from llmc.tokenizer import EOT_TOKEN, gpt2_encoding_offline, read_tokenizer_file
from tests.helpers import dead_pid, repository_env


@pytest.fixture(scope="module", autouse=True)
def enc():
    """The GPT-2 encoding, made once and offline, for the in-process runs below too: in every module that takes
    gpt2_encoding from llmc.tokenizer under its own name."""
    encoding = gpt2_encoding_offline()
    with pytest.MonkeyPatch.context() as patch:
        for module in (llmc.tokenizer, llmc.data, data_common, hellaswag, tinyshakespeare):
            patch.setattr(module, "gpt2_encoding", lambda: encoding)
        yield encoding


# ----------------------------------------------------------------------------------------------------------------
# Helpers

WORDS = ["Once upon a time", "a little dragon", "named Lily", "found a shiny stone", "in the garden.",
         "She was happy", "and said \"Hello!\"", "The café was warm;", "日本語 and ünïcödé", "🐉 flew away.",
         "Tom's dog", "did not want to share", "—so they played", "together\n\nall day."]


def make_texts(seed, count, words=12):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, words))) for _ in range(count)]


def shard_tokens(path):
    """A shard's tokens, after checking its whole header."""
    n = tg.read_shard_header(path)
    header = np.fromfile(path, dtype="<i4", count=256)
    assert (header[0], header[1], header[2]) == (20240520, 1, n)
    assert not header[3:].any()
    tokens = np.fromfile(path, dtype="<u2", offset=HEADER_BYTES)
    assert tokens.size == n
    return tokens


def token_stream(enc, texts):
    """What every shard format here holds: [EOT] + encode_ordinary(text) for each text, in order."""
    tokens = []
    for text in texts:
        tokens.append(EOT_TOKEN)
        tokens.extend(enc.encode_ordinary(text))
    return np.array(tokens, dtype=np.uint16)


def shards_in(directory, pattern):
    return sorted(p for p in directory.glob(pattern))


def concatenated(paths):
    return np.concatenate([shard_tokens(p) for p in paths])


def snapshot(directory):
    """Every file's bytes and (inode, modification time): equal snapshots mean nothing was rewritten."""
    return {p.name: (p.read_bytes(), p.stat().st_ino, p.stat().st_mtime_ns) for p in directory.iterdir()}


def contents(directory):
    return {name: data for name, (data, _, _) in snapshot(directory).items()}


def run_main(module, argv):
    return module.main([str(arg) for arg in argv])


def run_script(module, *args, cwd):
    """Runs python -m dev.data.<module> as a user would, with this repository importable from any cwd."""
    return subprocess.run([sys.executable, "-m", f"dev.data.{module}", *map(str, args)], cwd=cwd, env=repository_env(),
                          capture_output=True, text=True, timeout=120)


def assert_one_error_line(result, *fragments):
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# TinyStories-format input: data00.json (val), data01.json, data02.json (train), lists of {"story": ...}

def make_tinystories(directory, files=3, stories=30, seed=0):
    directory.mkdir(parents=True, exist_ok=True)
    records = []
    for f in range(files):
        texts = make_texts(seed + f, stories)
        rows = [{"story": f"  {text}\n", "instruction": {"words": ["x"]}, "source": "GPT-4"} for text in texts]
        (directory / f"data{f:02d}.json").write_text(json.dumps(rows, ensure_ascii=f % 2 == 0), encoding="utf-8")
        records.append(rows)
    return records


def tinystories_expected(enc, records):
    """llm.c's recipe: each file's records shuffled with Random(1337 + index in its split), stories stripped."""
    splits = {}
    for split, files in (("val", records[:1]), ("train", records[1:])):
        texts = []
        for i, rows in enumerate(files):
            rows = list(rows)
            random.Random(1337 + i).shuffle(rows)
            texts.extend(r["story"].strip() for r in rows if r["story"] is not None and r["story"].strip())
        splits[split] = token_stream(enc, texts)
    return splits


# FineWeb-format input: JSON lines of {"text": ...}, and parquet files with a "text" column

def make_jsonl(path, texts):
    with open(path, "wb") as f:
        for text in texts:
            f.write(json.dumps({"text": text, "id": "<urn:x>", "url": "http://example.com"}).encode() + b"\n")


def check_fineweb_shards(out, expected, shard_size, name="fineweb"):
    val = shards_in(out, f"{name}_val_*.bin")
    train = shards_in(out, f"{name}_train_*.bin")
    assert [p.name for p in val] == [f"{name}_val_000000.bin"]
    assert [p.name for p in train] == [f"{name}_train_{i:06d}.bin" for i in range(1, len(train) + 1)]
    sizes = [tg.read_shard_header(p) for p in val + train]
    assert all(size == shard_size for size in sizes[:-1]) and 0 < sizes[-1] <= shard_size
    np.testing.assert_array_equal(concatenated(val + train), expected)


# ----------------------------------------------------------------------------------------------------------------
# tinyshakespeare.py

SHAKESPEARE = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
               "First Citizen:\nYou are all resolved rather to die than to famish?\n\nAll:\nResolved. resolved.\n")


def test_tinyshakespeare_writes_shards_and_tokenizer(tmp_path, monkeypatch, enc):
    (tmp_path / "input.txt").write_text(SHAKESPEARE, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert run_main(tinyshakespeare, ["--input", "input.txt"]) == 0
    out = tmp_path / "data" / "tinyshakespeare"  # the trainer's default data, relative to the current directory
    text = "<|endoftext|>" + SHAKESPEARE.replace("\n\n", "\n\n<|endoftext|>")
    expected = enc.encode(text, allowed_special={"<|endoftext|>"})
    assert expected.count(EOT_TOKEN) == 4
    np.testing.assert_array_equal(shard_tokens(out / "tiny_shakespeare_val.bin"), expected[:32768])
    assert shard_tokens(out / "tiny_shakespeare_train.bin").size == 0
    pieces, eot = read_tokenizer_file(tmp_path / "gpt2_tokenizer.bin")
    assert (len(pieces), eot) == (50257, EOT_TOKEN)
    assert pieces[EOT_TOKEN] == b"<|endoftext|>" and b"".join(pieces[t] for t in expected) == text.encode()
    before = contents(tmp_path / "data" / "tinyshakespeare"), (tmp_path / "gpt2_tokenizer.bin").read_bytes()
    assert run_main(tinyshakespeare, ["--input", "input.txt"]) == 0
    assert (contents(out), (tmp_path / "gpt2_tokenizer.bin").read_bytes()) == before


def test_tinyshakespeare_again_is_told_it_is_done(tmp_path, monkeypatch, capsys):
    # a rerun where the shards are there and whole downloads nothing (offline it would fail) and says so
    (tmp_path / "input.txt").write_text(SHAKESPEARE * 100, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert run_main(tinyshakespeare, ["--input", "input.txt"]) == 0
    out = tmp_path / "data" / "tinyshakespeare"
    before = contents(out)
    counts = [shard_tokens(out / f"tiny_shakespeare_{split}.bin").size for split in ("val", "train")]
    capsys.readouterr()

    def no_download(*args, **kwargs):
        raise AssertionError("downloaded again")

    monkeypatch.setattr(urllib.request, "urlopen", no_download)
    assert run_main(tinyshakespeare, []) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"data/tinyshakespeare holds Tiny Shakespeare already: {counts[0]:,} val and {counts[1]:,} train tokens "
        "(--input prepares it again)", "wrote gpt2_tokenizer.bin"]
    assert contents(out) == before
    with open(out / "tiny_shakespeare_train.bin", "r+b") as f:  # a damaged shard is no finished preparation
        f.truncate(HEADER_BYTES + 2)
    with pytest.raises(AssertionError, match="downloaded again"):
        run_main(tinyshakespeare, [])


@pytest.mark.parametrize("case", ["missing", "empty", "invalid UTF-8", "FIFO"])
def test_tinyshakespeare_bad_input(tmp_path, case):
    content, fragment = {"missing": (None, "cannot open"), "empty": (b"\n \n", "no text"),
                         "invalid UTF-8": (b"To be \xff or not", "not UTF-8"),
                         "FIFO": (None, "not a regular file")}[case]
    path = tmp_path / "input.txt"
    if case == "FIFO":  # reading it would wait forever for a writer
        os.mkfifo(path)
    if content is not None:
        path.write_bytes(content)
    result = run_script("tinyshakespeare", "--input", path, "--out-dir", tmp_path / "out", cwd=tmp_path)
    assert_one_error_line(result, "input.txt", fragment)
    assert not (tmp_path / "gpt2_tokenizer.bin").exists()


# ----------------------------------------------------------------------------------------------------------------
# tinystories.py

def test_tinystories_one_file_per_split_as_llmc(tmp_path, enc, capsys):
    records = make_tinystories(tmp_path / "in")
    records[1][4]["story"] = " \n "                    # empty once stripped
    records[2][7]["story"] = None                      # missing
    (tmp_path / "in" / "data01.json").write_text(json.dumps(records[1]), encoding="utf-8")
    raw = json.dumps(records[2]).replace('"story": "', '"story": "INVALID', 1).encode()
    (tmp_path / "in" / "data02.json").write_bytes(raw.replace(b"INVALID", b"\xc3\x28", 1))  # not UTF-8
    records[2][0]["story"] = None                      # which the expected stream must skip

    out = tmp_path / "out"
    assert run_main(tinystories, ["--input", tmp_path / "in", "--out-dir", out, "--workers", "1"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["TinyStories.progress.json", "TinyStories_train.bin",
                                                      "TinyStories_val.bin"]
    expected = tinystories_expected(enc, records)
    np.testing.assert_array_equal(shard_tokens(out / "TinyStories_val.bin"), expected["val"])
    np.testing.assert_array_equal(shard_tokens(out / "TinyStories_train.bin"), expected["train"])
    printed = capsys.readouterr().out
    assert "train split: 57 documents; 2 documents empty" in printed
    assert "1 document not valid UTF-8 (first: " + str(tmp_path / "in" / "data02.json") + " record 0)" in printed
    # the trainer reads them
    loader = tg.DataLoader(str(out / "TinyStories_train*"), 2, 8, 50257)
    inputs, targets = loader.next_batch()
    np.testing.assert_array_equal(inputs.ravel(), expected["train"][:16])
    np.testing.assert_array_equal(targets.ravel(), expected["train"][1:17])


def test_tinystories_numbered_shards_rerun_and_workers(tmp_path, enc):
    records = make_tinystories(tmp_path / "in", files=4)
    expected = tinystories_expected(enc, records)
    out, args = tmp_path / "out", ["--input", tmp_path / "in", "--shard-size", "250"]
    assert run_main(tinystories, [*args, "--out-dir", out, "--workers", "1"]) == 0
    for split in ("val", "train"):
        paths = shards_in(out, f"TinyStories_{split}*")
        assert [p.name for p in paths] == [f"TinyStories_{split}_{i:06d}.bin" for i in range(len(paths))]
        assert len(paths) > 1 and all(tg.read_shard_header(p) == 250 for p in paths[:-1])
        np.testing.assert_array_equal(concatenated(paths), expected[split])
    first = snapshot(out)
    assert run_main(tinystories, [*args, "--out-dir", out, "--workers", "1"]) == 0
    assert snapshot(out) == first  # nothing rewritten
    assert run_main(tinystories, [*args, "--out-dir", tmp_path / "pool", "--workers", "2"]) == 0
    assert contents(tmp_path / "pool") == contents(out)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_tinystories_archive_download_and_local(tmp_path, monkeypatch, enc):
    records = make_tinystories(tmp_path / "in")
    (tmp_path / "served").mkdir()
    with tarfile.open(tmp_path / "served" / "TinyStories_all_data.tar.gz", "w:gz") as tar:
        for f in range(3):
            tar.add(tmp_path / "in" / f"data{f:02d}.json", arcname=f"data{f:02d}.json")
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(tmp_path / "served")))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/TinyStories_all_data.tar.gz"
        assert run_main(tinystories, ["--url", url, "--out-dir", tmp_path / "dl", "--workers", "1"]) == 0
        assert run_main(tinystories, ["--url", url + ".missing", "--out-dir", tmp_path / "dl2", "--workers", "1"]) == 1
    finally:
        server.shutdown()
        server.server_close()
    assert (tmp_path / "dl" / "TinyStories_all_data.tar.gz").read_bytes() == \
        (tmp_path / "served" / "TinyStories_all_data.tar.gz").read_bytes()
    archive = tmp_path / "served" / "TinyStories_all_data.tar.gz"
    assert run_main(tinystories, ["--input", archive, "--out-dir", tmp_path / "local", "--workers", "1"]) == 0
    expected = tinystories_expected(enc, records)
    for out in ("dl", "local"):
        assert sorted(p.name for p in (tmp_path / out / "TinyStories_all_data").iterdir()) == \
            ["data00.json", "data01.json", "data02.json"]
        for split in ("val", "train"):
            np.testing.assert_array_equal(shard_tokens(tmp_path / out / f"TinyStories_{split}.bin"), expected[split])
    assert not (tmp_path / "dl2" / "TinyStories_all_data.tar.gz").exists()


@pytest.mark.parametrize("case", ["missing", "empty", "malformed JSON"])
def test_tinystories_bad_input(tmp_path, case):
    files, fragments = {
        "missing": ({}, ("data00.json", "no such file")),
        "empty": ({"data00.json": b"[]", "data01.json": b"[]"}, ("val split: no usable documents",)),
        "malformed JSON": ({"data00.json": b'[{"story": "x"}', "data01.json": b"[]"},
                           ("data00.json", "the file is not valid JSON")),
    }[case]
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    result = run_script("tinystories", "--input", tmp_path / "data00.json", tmp_path / "data01.json",
                        "--out-dir", tmp_path / "out", "--workers", "1", cwd=tmp_path)
    assert_one_error_line(result, *fragments)


# ----------------------------------------------------------------------------------------------------------------
# fineweb.py

def test_fineweb_jsonl_val_then_train_and_problems(tmp_path, enc, capsys):
    texts = make_texts(1, 60, words=20)
    make_jsonl(tmp_path / "a.jsonl", texts[:30])
    with open(tmp_path / "b.jsonl", "wb") as f:
        f.write(b'{"text": "caf\xe9 is Latin-1, not UTF-8"}\n')  # undecodable
        f.write(b'{"text": ""}\n{"text": null}\n\n')           # three empty documents
        for text in texts[30:]:
            f.write(json.dumps({"text": text}, ensure_ascii=False).encode() + b"\n")
    out = tmp_path / "out"
    assert run_main(fineweb, ["--input", tmp_path, "--out-dir", out, "--shard-size", "300", "--workers", "1"]) == 0
    check_fineweb_shards(out, token_stream(enc, texts), 300)
    printed = capsys.readouterr().out
    assert f"fineweb: 60 documents; 3 documents empty (first: {tmp_path / 'b.jsonl'} line 2, " in printed
    assert f"1 document not valid UTF-8 (first: {tmp_path / 'b.jsonl'} line 1)" in printed
    assert run_main(fineweb, ["--input", tmp_path / "a.jsonl", "-t", "edu", "-o", tmp_path / "edu", "-s", "50"]) == 0
    check_fineweb_shards(tmp_path / "edu", token_stream(enc, texts[:30]), 50, name="edu_fineweb")


def test_fineweb_parquet_and_resume_inside_row_groups(tmp_path, monkeypatch, enc):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    texts = make_texts(2, 120, words=25)
    texts[5] = None
    pq.write_table(pa.table({"text": texts[:70], "id": list(range(70))}), tmp_path / "000_00000.parquet",
                   row_group_size=16)
    pq.write_table(pa.table({"text": pa.array(texts[70:], pa.large_string())}), tmp_path / "001_00000.parquet",
                   row_group_size=7)
    expected = token_stream(enc, [t for t in texts if t is not None])
    args = ["--input", tmp_path, "--shard-size", "400", "--workers", "1"]
    assert run_main(fineweb, [*args, "--out-dir", tmp_path / "fresh"]) == 0
    check_fineweb_shards(tmp_path / "fresh", expected, 400)

    # interrupted while writing its 6th shard, then rerun: the rerun tokenizes only from the 5th shard's end on
    write_shard, writes = data_common.write_shard, []

    def interrupted(path, tokens):
        writes.append(path)
        if len(writes) == 6:
            raise KeyboardInterrupt
        write_shard(path, tokens)
    monkeypatch.setattr(data_common, "write_shard", interrupted)
    out = tmp_path / "out"
    assert run_main(fineweb, [*args, "--out-dir", out]) == 130
    monkeypatch.setattr(data_common, "write_shard", write_shard)
    assert len(shards_in(out, "fineweb_*.bin")) == 5
    before = snapshot(out)
    tokenize_texts, tokenized = data_common.tokenize_texts, []

    def counting(batch):
        tokenized.extend(batch)
        return tokenize_texts(batch)
    monkeypatch.setattr(data_common, "tokenize_texts", counting)
    assert run_main(fineweb, [*args, "--out-dir", out]) == 0
    after = snapshot(out)
    assert all(after[name] == before[name] for name in before if name.endswith(".bin"))  # not rewritten
    with open(out / "fineweb.progress.json") as f:
        unit, doc, _ = json.load(f)["streams"]["all"]["shards"][4]["next"]
    assert len(tokenized) == (70 if unit == 0 else 0) + 50 - doc  # from the 5th shard's end on, and no more
    assert doc > 16 and tokenized[-1] == texts[-1]                # (past the first row group)
    assert contents(out) == contents(tmp_path / "fresh")


def test_fineweb_resume_rewrites_damaged_shard_and_restarts_on_new_settings(tmp_path, enc, capsys):
    texts = make_texts(3, 80, words=20)
    make_jsonl(tmp_path / "docs.jsonl", texts)
    out, args = tmp_path / "out", ["--input", tmp_path / "docs.jsonl", "--out-dir", tmp_path / "out", "-w", "1"]
    assert run_main(fineweb, [*args, "-s", "500"]) == 0
    first = snapshot(out)
    damaged = out / "fineweb_train_000002.bin"
    damaged.write_bytes(damaged.read_bytes()[:-2])  # truncated
    (out / f".fineweb_train_000003.bin.tmp{dead_pid()}").write_bytes(b"what a killed run left")
    assert run_main(fineweb, [*args, "-s", "500"]) == 0
    after = snapshot(out)
    assert contents(out) == {name: data for name, (data, _, _) in first.items()}  # and the leftover is gone
    assert after["fineweb_val_000000.bin"] == first["fineweb_val_000000.bin"]
    assert after["fineweb_train_000001.bin"] == first["fineweb_train_000001.bin"]

    (out / "fineweb_train_000099.bin").write_bytes(b"")  # a file not from this run
    capsys.readouterr()
    assert run_main(fineweb, [*args, "-s", "700"]) == 0
    captured = capsys.readouterr()
    assert "changed since the last run" in captured.out
    assert "fineweb_train_000099.bin is not from this run" in captured.err
    (out / "fineweb_train_000099.bin").unlink()
    check_fineweb_shards(out, token_stream(enc, texts), 700)


def test_fineweb_single_shard_warns_of_no_training_split(tmp_path, enc, capsys):
    make_jsonl(tmp_path / "docs.jsonl", ["one small document", "and another"])
    assert run_main(fineweb, ["--input", tmp_path / "docs.jsonl", "--out-dir", tmp_path / "out", "-w", "1"]) == 0
    assert [p.name for p in (tmp_path / "out").glob("*.bin")] == ["fineweb_val_000000.bin"]
    assert "no training split" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["missing", "empty", "invalid UTF-8", "malformed JSON", "FIFO"])
def test_fineweb_bad_input(tmp_path, case):
    content, fragments = {
        "missing": (None, ("docs.jsonl", "no such file")),
        "empty": (b"", ("fineweb: no usable documents",)),
        "invalid UTF-8": (b'{"text": "\xff\xfe"}\n', ("no usable documents: 1 document not valid UTF-8",)),
        "malformed JSON": (b'{"text": "a"}\n{"text": \n', ("docs.jsonl: line 2 is not valid JSON",)),
        "FIFO": (None, ("docs.jsonl: not a regular file",)),
    }[case]
    if case == "FIFO":
        os.mkfifo(tmp_path / "docs.jsonl")
    if content is not None:
        (tmp_path / "docs.jsonl").write_bytes(content)
    result = run_script("fineweb", "--input", tmp_path / "docs.jsonl", "--out-dir", tmp_path / "out",
                        "--workers", "1", cwd=tmp_path)
    assert_one_error_line(result, *fragments)


# ----------------------------------------------------------------------------------------------------------------
# hellaswag.py

# Lines of hellaswag_val.jsonl, in its format: ActivityNet examples (ctx = ctx_a + " " + ctx_b), WikiHow ones (ctx_b
# empty, [header]/[title]/[step] markers), text beyond ASCII
HELLASWAG = [
    {"ind": 24, "activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.", "ctx_b": "he",
     "ctx": "A man is sitting on a roof. he", "split": "val", "split_type": "indomain", "label": 3,
     "endings": ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.",
                 "is holding a rubik's cube.", "starts pulling up roofing on a roof."],
     "source_id": "activitynet~v_-JhWjGDPHMY"},
    {"ind": 92, "activity_label": "Clean and jerk", "ctx_a": "A lady walks to a barbell. She bends down and grabs "
     "the pole.", "ctx_b": "the lady", "ctx": "A lady walks to a barbell. She bends down and grabs the pole. the lady",
     "split": "val", "split_type": "zeroshot", "label": 3,
     "endings": ["swings and lands in her arms.", "pulls the barbell forward.",
                 "pulls a rope attached to the barbell.", "stands and lifts the weight over her head."],
     "source_id": "activitynet~v_-lJS58hyo1c"},
    {"ind": 1507, "activity_label": "Home and Garden", "ctx_a": "[header] How to descale a coffee maker [title] "
     "Fill the reservoir with vinegar. [step] Use equal parts white vinegar and water.", "ctx_b": "",
     "ctx": "[header] How to descale a coffee maker [title] Fill the reservoir with vinegar. [step] Use equal parts "
     "white vinegar and water.", "split": "val", "split_type": "indomain", "label": 0,
     "endings": ["Run half a brewing cycle, then let it sit for 30 minutes. [substeps] The vinegar loosens the "
                 "scale.", "[title] Buy a new coffee maker.  [step] It is cheaper.",
                 "Pour the mixture over your plants.", ""],
     "source_id": "wikihow~2817"},
    {"ind": 3021, "activity_label": "Making a cake", "ctx_a": "A woman folds crème fraîche into a bowl of batter.",
     "ctx_b": "she", "ctx": "A woman folds crème fraîche into a bowl of batter. she", "split": "val",
     "split_type": "zeroshot", "label": 1,
     "endings": ["pours it into a tin — ½ of it — and slides it into the oven.",
                 "pours the batter into a pan and puts it in the oven.",
                 "eats the bowl 🍰.", "throws the bowl to the dog , who catches it."],
     "source_id": "activitynet~v_x1yZ8c-Tq2k"},
]


def write_hellaswag(path, records):
    """JSON lines as hellaswag_val.jsonl has them (text beyond ASCII as UTF-8, not escaped)."""
    with open(path, "wb") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n")


def hellaswag_expected(enc, records):
    """llm.c's eval file for these records, built here: its render_example (enc.encode of ctx and of " " + each
    ending) and its write_evalfile's layout (256 int32 of header; per example 65535, its bytes, its index, label,
    number of completions, the context's length and tokens, each completion's length and tokens, as uint16)."""
    examples = []
    for index, record in enumerate(records):
        context = enc.encode(record["ctx"])
        endings = [enc.encode(" " + ending) for ending in record["endings"]]
        fields = [index, record["label"], len(endings), len(context), *context]
        for tokens in endings:
            fields += [len(tokens), *tokens]
        examples.append(struct.pack(f"<{2 + len(fields)}H", 65535, 2 * (2 + len(fields)), *fields))
    longest = max(len(example) for example in examples)
    return struct.pack("<256i", 20240522, 1, len(records), longest, *[0] * 252) + b"".join(examples)


def read_evalfile(path):
    """An eval file's examples, (label, context tokens, [completion tokens, ...]) each, its layout checked."""
    data = path.read_bytes()
    magic, version, count, longest = struct.unpack_from("<4i", data)
    assert (magic, version) == (20240522, 1) and not any(struct.unpack_from("<252i", data, 16))
    stream = np.frombuffer(data, dtype="<u2", offset=1024).tolist()
    examples, at = [], 0
    for index in range(count):
        delimiter, size, stored_index, label, completions = stream[at:at + 5]
        assert (delimiter, stored_index) == (65535, index) and size <= longest
        example, parts, position = stream[at:at + size // 2], [], 5
        for _ in range(1 + completions):
            parts.append(example[position + 1:position + 1 + example[position]])
            position += 1 + example[position]
        assert position == len(example)
        examples.append((label, parts[0], parts[1:]))
        at += size // 2
    assert at == len(stream)
    assert longest == max(2 * (6 + len(c) + sum(1 + len(e) for e in es)) for _, c, es in examples)
    return examples


def test_hellaswag_eval_file_as_llmc(tmp_path, monkeypatch, enc, capsys):
    write_hellaswag(tmp_path / "hellaswag_val.jsonl", HELLASWAG)
    out = tmp_path / "eval" / "hs.bin"
    assert run_main(hellaswag, ["--input", tmp_path / "hellaswag_val.jsonl", "-o", out]) == 0
    assert out.read_bytes() == hellaswag_expected(enc, HELLASWAG)
    assert f"wrote {out}: 4 examples, " in capsys.readouterr().out
    examples = read_evalfile(out)
    assert [label for label, _, _ in examples] == [3, 3, 0, 1]
    for (label, context, endings), record in zip(examples, HELLASWAG):
        assert enc.decode(context) == record["ctx"]
        assert [enc.decode(tokens) for tokens in endings] == [" " + ending for ending in record["endings"]]
    assert examples[2][2][3] == [220]  # an empty ending is its space
    # the default output, where the trainer's examples look; the same bytes again, and nothing else left there
    monkeypatch.chdir(tmp_path)
    assert run_main(hellaswag, ["-i", "hellaswag_val.jsonl"]) == 0
    assert os.listdir(tmp_path / "data" / "hellaswag") == ["hellaswag_val.bin"]
    assert (tmp_path / "data" / "hellaswag" / "hellaswag_val.bin").read_bytes() == out.read_bytes()
    # blank lines (a trailing one) are no examples
    (tmp_path / "blank.jsonl").write_bytes(b"\n" + (tmp_path / "hellaswag_val.jsonl").read_bytes() + b"\n \n")
    assert run_main(hellaswag, ["-i", "blank.jsonl", "-o", "blank.bin"]) == 0
    assert (tmp_path / "blank.bin").read_bytes() == out.read_bytes()


@contextmanager
def serving(directory, monkeypatch):
    """A web server on 127.0.0.1 for the files of `directory`; yields its address."""
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler,
                                                                                  directory=str(directory)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_hellaswag_downloads_the_validation_set(tmp_path, monkeypatch, enc, capsys):
    assert hellaswag.URL == "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
    (tmp_path / "served").mkdir()
    write_hellaswag(tmp_path / "served" / "hellaswag_val.jsonl", HELLASWAG)
    monkeypatch.chdir(tmp_path)
    with serving(tmp_path / "served", monkeypatch) as address:
        monkeypatch.setattr(hellaswag, "URL", f"{address}/hellaswag_val.jsonl")  # the stand-in for GitHub's
        assert run_main(hellaswag, []) == 0
        assert run_main(hellaswag, ["--url", f"{address}/missing.jsonl", "-o", "elsewhere/hs.bin"]) == 1
    downloaded = tmp_path / "data" / "hellaswag"
    assert sorted(os.listdir(downloaded)) == ["hellaswag_val.bin", "hellaswag_val.jsonl"]
    assert (downloaded / "hellaswag_val.jsonl").read_bytes() == \
        (tmp_path / "served" / "hellaswag_val.jsonl").read_bytes()
    assert (downloaded / "hellaswag_val.bin").read_bytes() == hellaswag_expected(enc, HELLASWAG)
    captured = capsys.readouterr()
    assert "cannot download HellaSwag's validation set" in captured.err and "--input" in captured.err
    assert os.listdir(tmp_path / "elsewhere") == []  # nothing half-downloaded
    # a rerun uses the file downloaded already (the server is gone)
    (downloaded / "hellaswag_val.bin").unlink()
    assert run_main(hellaswag, []) == 0
    assert "downloaded already" in capsys.readouterr().out
    assert (downloaded / "hellaswag_val.bin").read_bytes() == hellaswag_expected(enc, HELLASWAG)


def hellaswag_lines(**changes):
    """The examples as JSON lines, with changes {index: record or bytes} to some."""
    records = [changes.get(f"line{i + 1}", record) for i, record in enumerate(HELLASWAG)]
    return b"".join(r if isinstance(r, bytes) else json.dumps(r).encode() + b"\n" for r in records)


def changed(index, **fields):
    record = dict(HELLASWAG[index], **fields)
    return {key: value for key, value in record.items() if value is not None}


HELLASWAG_BAD = {
    "empty file": (b"\n \n", "empty file"),
    "malformed JSON": (hellaswag_lines(line2=b'{"ctx": "a", \n'), "line 2 is not valid JSON"),
    "not an object": (hellaswag_lines(line1=b"[1, 2]\n"), "line 1 is not a JSON object"),
    "no endings": (hellaswag_lines(line3=changed(2, endings=None)), "line 3 has no 'endings' field"),
    "no label": (hellaswag_lines(line2=changed(1, label=None)), "line 2 has no 'label' field"),
    "ctx not a string": (hellaswag_lines(line1=changed(0, ctx=["A man"])), "line 1: 'ctx' is not a string"),
    "3 endings": (hellaswag_lines(line4=changed(3, endings=["a", "b", "c"])), "line 4: 3 endings"),
    "an ending not a string": (hellaswag_lines(line1=changed(0, endings=["a", "b", "c", 4])),
                               "line 1: 'endings' is not a list of strings"),
    "label out of range": (hellaswag_lines(line3=changed(2, label=4)), "line 3: 'label' is 4, not the index"),
    "label negative": (hellaswag_lines(line3=changed(2, label=-1)), "line 3: 'label' is -1"),
    "label a string": (hellaswag_lines(line2=changed(1, label="3")), "line 2: 'label' is '3'"),
    "empty ctx": (hellaswag_lines(line2=changed(1, ctx="")), "line 2: its 'ctx' is empty"),
    "not UTF-8": (hellaswag_lines(line2=b'{"ctx": "caf\xe9", "label": 0, "endings": ["a", "b", "c", "d"]}\n'),
                  "line 2: its ctx is not valid UTF-8"),
    "lone surrogate": (hellaswag_lines(line4=changed(3, endings=["a", "b", "\udcff", "d"])),
                       "line 4: its ending 2 is not valid UTF-8"),
    "example too large": (hellaswag_lines(line2=changed(1, ctx=" a" * 33000)),
                          "line 2: the example takes 66,"),
    "too many examples": (b'{"ctx": "a"}\n' * 65536,
                          "line 65,536 is example 65,536: an eval file holds at most 65,535"),
}


@pytest.mark.parametrize("case", list(HELLASWAG_BAD))
def test_hellaswag_bad_input(tmp_path, capsys, case):
    content, fragment = HELLASWAG_BAD[case]
    (tmp_path / "hs.jsonl").write_bytes(content)
    assert run_main(hellaswag, ["--input", tmp_path / "hs.jsonl", "-o", tmp_path / "out" / "hs.bin"]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {tmp_path / 'hs.jsonl'}: ") and fragment in lines[0], lines
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["missing", "FIFO", "malformed JSON"])
def test_hellaswag_bad_input_as_a_command(tmp_path, case):
    path = tmp_path / "hs.jsonl"
    if case == "FIFO":  # reading it would wait forever for a writer
        os.mkfifo(path)
    if case == "malformed JSON":
        path.write_bytes(HELLASWAG_BAD[case][0])
    fragment = {"missing": "cannot open", "FIFO": "not a regular file", "malformed JSON": "line 2 is not valid JSON"}
    result = run_script("hellaswag", "--input", path, cwd=tmp_path)
    assert_one_error_line(result, "hs.jsonl", fragment[case])
    assert not (tmp_path / "data").exists()


def test_write_evalfile_refuses_what_llmc_cannot_read(tmp_path):
    path = tmp_path / "eval.bin"
    good = (1, [10, 11], [[12], [13, 14]])
    data_common.write_evalfile(path, [good, (0, [5], [[6]])])  # any number of completions, as the format allows
    assert read_evalfile(path) == [good, (0, [5], [[6]])]
    for examples, fragment in [([], "no examples"), ([(2, [1], [[2], [3]])], "example 0: label 2"),
                               ([good, (0, [1], [[2], []])], "example 1: an empty context or completion"),
                               ([(0, [], [[2]])], "an empty context"), ([(0, [65535], [[2]])], "token ids must be"),
                               ([(0, [1] * 40000, [[2]])], "takes 80,016 bytes"),
                               ([(0, [1], [[2]])] * 65536, "65,536 examples, more than the 65,535")]:
        with pytest.raises(GPT2Error, match=fragment):
            data_common.write_evalfile(tmp_path / "refused.bin", examples)
    assert os.listdir(tmp_path) == ["eval.bin"]


# ----------------------------------------------------------------------------------------------------------------
# data_common's pieces

def test_dataset_unit_reads_from_any_row():
    class FakeDataset:  # what datasets.Dataset gives: len(), and slices as {column: [values]}
        def __init__(self, texts):
            self.texts = texts

        def __len__(self):
            return len(self.texts)

        def __getitem__(self, rows):
            return {"text": self.texts[rows]}
    texts = [f"document {i}" for i in range(2500)]
    unit = data_common.DatasetUnit(FakeDataset(texts), "text", "fake")
    assert list(unit.documents()) == texts
    assert list(unit.documents(1999)) == texts[1999:]
    assert unit.where(7) == "fake row 7"


def test_tokenize_texts_counts_what_it_cannot_use(enc):
    tokens, lengths = data_common.tokenize_texts(["Hello world", None, "  \n", "bad \udcff byte", "é"])
    assert lengths.tolist() == [3, data_common.EMPTY, data_common.EMPTY, data_common.UNDECODABLE,
                                1 + len(enc.encode_ordinary("é"))]
    np.testing.assert_array_equal(tokens, token_stream(enc, ["Hello world", "é"]))
    assert tokens.dtype == np.uint16


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_meter_shows_tokens_per_second(capsys):
    meter = data_common.Meter("shard 0", every=0.0, out=io.StringIO())  # not a terminal: plain lines
    meter.update(1000)
    meter.close()
    assert "shard 0: 1,000 tokens, " in capsys.readouterr().out
    pytest.importorskip("tqdm")
    terminal = FakeTerminal()
    meter = data_common.Meter("shard 0", out=terminal)
    meter.update(1000)
    meter.close()
    assert "tokens/s" in terminal.getvalue() and "1.00k" in terminal.getvalue()
