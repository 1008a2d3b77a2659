"""Shared by the test files: the reference fixture, llm.c's debug state, small models, token shards and run
directories, and the helpers that run the trainer's command line.

pytest options: check the trainer against any llm.c model + debug state pair, not only the fixture:
    python -m pytest test_gpt2.py --model PATH --state PATH
"""
import math
import os
from types import SimpleNamespace

import numpy as np
import pytest

import train_gpt2 as g
from dev.data.data_common import write_shard

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE_MODEL = os.path.join(HERE, "data", "fixtures", "ref_model.bin")
FIXTURE_DEBUG_STATE = os.path.join(HERE, "data", "fixtures", "ref_debug_state.bin")


def pytest_addoption(parser):
    parser.addoption("--model", default=FIXTURE_MODEL,
                     help="llm.c model checkpoint to check (default: the committed fixture)")
    parser.addoption("--state", default=FIXTURE_DEBUG_STATE,
                     help="llm.c debug state made from that checkpoint (default: the committed fixture's)")


# llm.c's debug state: what its test_gpt2.c checks a model against: a batch, the logits and loss of one forward
# pass and the gradients of one backward pass. dev/make_reference.py may append, after the gradients where llm.c
# stops reading, the losses of header[4] AdamW steps on that batch.

DEBUG_STATE_MAGIC = 20240327


def read_debug_state(path, config):
    header = g.read_header(path, DEBUG_STATE_MAGIC, (2,))
    B, T, num_losses = int(header[2]), int(header[3]), int(header[4])
    V = config.vocab_size
    sizes = [B * T, B * T, B * T * V, 1, g.num_parameters(config), num_losses]
    g.check_file_size(path, g.HEADER_BYTES + 4 * sum(sizes))
    body = np.fromfile(path, dtype="<i4", offset=g.HEADER_BYTES)
    x, y, logits, loss, grads, losses = np.split(body, np.cumsum(sizes)[:-1])
    return SimpleNamespace(x=x.reshape(B, T), y=y.reshape(B, T), logits=logits.view("<f4").reshape(B, T, V),
                           loss=float(loss.view("<f4")[0]), grads=grads.view("<f4"), losses=losses.view("<f4"))


def write_debug_state(path, x, y, logits, loss, grads, losses=()):
    B, T, V = logits.shape
    header = g.new_header(DEBUG_STATE_MAGIC, 2, B, T, len(losses))
    g.write_atomically(path, [header, x.astype("<i4"), y.astype("<i4"), logits.astype("<f4"),
                              np.array([loss], "<f4"), grads.astype("<f4"), np.asarray(losses, "<f4")])


# Small models and data

def split_parameters(model, flat):
    offsets = np.cumsum([0] + [math.prod(s) for s in model.shapes.values()])
    return {name: flat[offsets[i]:offsets[i + 1]].reshape(shape)
            for i, (name, shape) in enumerate(model.shapes.items())}


def tiny_config():
    return g.GPT2Config(max_seq_len=8, vocab_size=13, padded_vocab_size=16, num_layers=2, num_heads=2, channels=8)


def random_model(config, dtype, seed=0):
    rng = np.random.default_rng(seed)
    model = g.GPT2(config, np.zeros(sum(math.prod(s) for s in g.parameter_shapes(config).values()), dtype=dtype))
    model.params_memory[:] = 0.3 * rng.standard_normal(model.num_parameters)
    model.params.wte[config.vocab_size:] = 0  # the padded rows, as in a checkpoint
    return model


def dead_pid():
    """A process id no process has: above the largest the system gives (the id of a process that has ended can be
    given again at any moment, to whatever starts next)."""
    try:
        with open("/proc/sys/kernel/pid_max") as f:
            return int(f.read()) + 1
    except OSError:
        return 2 ** 22 + 1  # above macOS's 99999 and Linux's largest pid_max


def write_tokens(path, tokens):
    write_shard(str(path), np.asarray(tokens))
    return str(path)


# Multiple-choice eval files (llm.c's, as dev/data/hellaswag.py writes them)

def write_eval_file(path, examples, longest=None, header_count=None):
    """llm.c's eval file, written out: [(label, context, [completion, ...])] -> path."""
    streams = []
    for index, (label, context, completions) in enumerate(examples):
        fields = [len(context), *context]
        for completion in completions:
            fields += [len(completion), *completion]
        stream = [65535, 2 * (5 + len(fields)), index, label, len(completions), *fields]
        streams.append(stream)
    header = np.zeros(256, "<i4")
    header[:4] = [20240522, 1, len(examples) if header_count is None else header_count,
                  longest if longest is not None else max(2 * len(s) for s in streams)]
    with open(path, "wb") as f:
        f.write(header.tobytes() + np.array([v for s in streams for v in s], "<u2").tobytes())
    return str(path)


def random_examples(rng, count, vocab_size, context=(3, 12), completion=(1, 6), completions=4):
    return [(int(rng.integers(0, completions)), list(rng.integers(0, vocab_size, rng.integers(*context))),
             [list(rng.integers(0, vocab_size, rng.integers(*completion))) for _ in range(completions)])
            for _ in range(count)]


@pytest.fixture(scope="session")
def encoding():
    return g.gpt2_encoding_offline()


@pytest.fixture
def shards(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the tokenizer file is written to the working directory
    rng = np.random.default_rng(0)
    write_tokens(tmp_path / "train.bin", rng.integers(0, 500, 300))
    write_tokens(tmp_path / "val.bin", rng.integers(0, 500, 100))
    pieces = [b"<eot>"] + [bytes([97 + i % 26]) for i in range(499)]  # a tokenizer file for the fixture's 500 tokens
    body = np.frombuffer(b"".join(bytes([len(p)]) + p for p in pieces), dtype=np.uint8)
    g.write_atomically(g.TOKENIZER_FILE, [g.new_header(g.TOKENIZER_MAGIC, 2, 500, 0), body])
    return ["-e", FIXTURE_MODEL, "-i", str(tmp_path / "train.bin"), "-j", str(tmp_path / "val.bin")]


def run_main(argv, capsys):
    code = g.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def assert_refused(argv, capsys, *fragments):
    code, out, err = run_main(argv, capsys)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def bad_copy(tmp_path, source, name, header_changes=None, keep_bytes=None):
    data = bytearray(open(source, "rb").read())
    header = np.frombuffer(bytes(data[:1024]), dtype="<i4").copy()
    for slot, value in (header_changes or {}).items():
        header[slot] = value
    data[:1024] = header.tobytes()
    path = tmp_path / name
    path.write_bytes(bytes(data[:keep_bytes]))
    return str(path)


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    """Three small training shards and a validation shard for the fixture's 500-token vocabulary."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(13)
    for i in range(3):
        write_tokens(tmp_path / f"train_{i}.bin", rng.integers(0, 500, 400 + 37 * i))
    write_tokens(tmp_path / "val.bin", rng.integers(0, 500, 300))
    return tmp_path


def trainer_args(run_dir, out, *extra):
    return ["-e", FIXTURE_MODEL, "-i", str(run_dir / "train_*.bin"), "-j", str(run_dir / "val.bin"), "-o", str(out),
            "-b", "2", "-t", "8", "-d", "32", "-k", "cosine", "-u", "3", "-q", "0.1", "-c", "0.1", "--beta2", "0.95",
            "--grad-clip", "1.0", "-s", "0", "-v", "5", *extra]


def read_log(out):
    return (out / "main.log").read_text()
