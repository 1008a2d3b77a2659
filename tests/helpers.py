"""Shared by the test files: the reference fixture, llm.c's debug state, small models, token shards, eval files
and run directories, and the helpers that run the trainer's command line. (conftest.py, at the repository's root,
holds the pytest options and fixtures only.)"""

import math
import os
from types import SimpleNamespace

import numpy as np

import train_gpt2 as tg
from llmc.data import write_shard
from llmc.eval import evaluation_sizes
from llmc.files import HEADER_BYTES, check_file_size, new_header, read_header, write_atomically

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository's root
FIXTURE_MODEL = os.path.join(HERE, "data", "fixtures", "ref_model.bin")
FIXTURE_DEBUG_STATE = os.path.join(HERE, "data", "fixtures", "ref_debug_state.bin")


def repository_env(**variables):
    """The environment for a `python -c` or `python -m` subprocess that imports train_gpt2, llmc or dev from this
    checkout, from any working directory (whether or not, or however, the project is installed)."""
    path = os.pathsep.join(filter(None, [HERE, os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=path, **variables)


# llm.c's debug state: what its test_gpt2.c checks a model against: a batch, the logits and loss of one forward
# pass and the gradients of one backward pass. dev/make_reference.py may append, after the gradients where llm.c
# stops reading, the losses of header[4] AdamW steps on that batch.

DEBUG_STATE_MAGIC = 20240327


def read_debug_state(path, config):
    header = read_header(path, DEBUG_STATE_MAGIC, (2,))
    B, T, num_losses = int(header[2]), int(header[3]), int(header[4])
    V = config.vocab_size
    sizes = [B * T, B * T, B * T * V, 1, tg.num_parameters(config), num_losses]
    check_file_size(path, HEADER_BYTES + 4 * sum(sizes))
    body = np.fromfile(path, dtype="<i4", offset=HEADER_BYTES)
    x, y, logits, loss, grads, losses = np.split(body, np.cumsum(sizes)[:-1])
    return SimpleNamespace(x=x.reshape(B, T), y=y.reshape(B, T), logits=logits.view("<f4").reshape(B, T, V),
                           loss=float(loss.view("<f4")[0]), grads=grads.view("<f4"), losses=losses.view("<f4"))


def write_debug_state(path, x, y, logits, loss, grads, losses=()):
    B, T, V = logits.shape
    header = new_header(DEBUG_STATE_MAGIC, 2, B, T, len(losses))
    write_atomically(path, [header, x.astype("<i4"), y.astype("<i4"), logits.astype("<f4"),
                            np.array([loss], "<f4"), grads.astype("<f4"), np.asarray(losses, "<f4")])


# Gradient checks against finite differences, in float64 (test_kernels.py, test_model.py)

RELATIVE_ERROR_TOLERANCE = 1e-6


def numerical_gradient(f, x, h=1e-5):
    """Central differences of the scalar f() with respect to each entry of x, which is changed and restored."""
    flat = x.reshape(-1)
    assert np.shares_memory(flat, x)
    grad = np.zeros(flat.size)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        plus = f()
        flat[i] = old - h
        minus = f()
        flat[i] = old
        grad[i] = (plus - minus) / (2 * h)
    return grad.reshape(x.shape)


def assert_gradient(name, analytic, numeric):
    """Relative error |a - n| / max(|a|, |n|) at most 1e-6, where the gradient is at least 1e-3; below that the
    difference itself must be at most 1e-9, which is what central differences resolve in float64."""
    scale = np.maximum(np.maximum(np.abs(analytic), np.abs(numeric)), 1e-3)
    error = np.abs(analytic - numeric) / scale
    print(f"{name}: largest relative error {error.max():.2e} over {error.size} entries")
    assert error.max() <= RELATIVE_ERROR_TOLERANCE, f"{name}: {error.max():.2e}"


# Small models and data

def split_parameters(model, flat):
    offsets = np.cumsum([0] + [math.prod(s) for s in model.shapes.values()])
    return {name: flat[offsets[i]:offsets[i + 1]].reshape(shape)
            for i, (name, shape) in enumerate(model.shapes.items())}


def tiny_config():
    return tg.GPT2Config(max_seq_len=8, vocab_size=13, padded_vocab_size=16, num_layers=2, num_heads=2, channels=8)


def random_model(config, dtype, seed=0):
    rng = np.random.default_rng(seed)
    model = tg.GPT2(config, np.zeros(sum(math.prod(s) for s in tg.parameter_shapes(config).values()), dtype=dtype))
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


def evaluator_for(model, examples):
    """A model to score these examples, sharing the model's parameters, as the trainer makes it (evaluation_model)."""
    evaluator = tg.GPT2(model.config, model.params_memory)
    B, T, context = evaluation_sizes(examples, model.config.max_seq_len)
    evaluator.allocate(B, T, context=context)
    return evaluator


# The trainer's command line, in this process

def run_main(argv, capsys):
    code = tg.main(argv)
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


def trainer_args(run_dir, out, *extra):
    return ["-e", FIXTURE_MODEL, "-i", str(run_dir / "train_*.bin"), "-j", str(run_dir / "val.bin"), "-o", str(out),
            "-b", "2", "-t", "8", "-d", "32", "-k", "cosine", "-u", "3", "-q", "0.1", "-c", "0.1", "--beta2", "0.95",
            "--grad-clip", "1.0", "-s", "0", "-v", "5", *extra]


def read_log(out):
    return (out / "main.log").read_text()


# Run directories (-o)

def complete_checkpoints(out):
    return sorted(int(name[5:]) for name in os.listdir(out) if name.startswith("DONE_"))


def checkpointed_run(run_dir, capsys, *extra):
    """A run of 6 steps with checkpoints at 3 and 6, in run_dir/out."""
    out = run_dir / "out"
    code, stdout, err = run_main(trainer_args(run_dir, out, "-x", "6", "-n", "3", *extra), capsys)
    assert code == 0, err
    return out
