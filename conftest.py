"""pytest's options and fixtures, for every test file (the helpers the tests share are in tests/helpers.py).

The options check the trainer against any llm.c model + debug state pair, not only the fixture:
    python -m pytest test_gpt2.py --model PATH --state PATH
"""

import numpy as np
import pytest

from llmc.files import TOKENIZER_MAGIC, GPT2Error, new_header, read_header, write_atomically
from llmc.tokenizer import TOKENIZER_FILE, gpt2_encoding_offline
from tests.helpers import DEBUG_STATE_MAGIC, FIXTURE_DEBUG_STATE, FIXTURE_MODEL, write_tokens


def pytest_addoption(parser):
    parser.addoption("--model", default=FIXTURE_MODEL,
                     help="llm.c model checkpoint to check (default: the committed fixture)")
    parser.addoption("--state", default=FIXTURE_DEBUG_STATE,
                     help="llm.c debug state made from that checkpoint (default: the committed fixture's)")


def pytest_configure(config):
    """A --model or --state that is missing or not llm.c's file is one line and pytest's usage-error status, 4."""
    import train_gpt2 as tg
    try:
        tg.read_model_header(config.getoption("--model"))
        read_header(config.getoption("--state"), DEBUG_STATE_MAGIC, (2,))
    except GPT2Error as e:
        raise pytest.UsageError(f"test_gpt2.py's reference: {e}") from None


@pytest.fixture(scope="session")
def encoding():
    return gpt2_encoding_offline()


@pytest.fixture
def shards(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the tokenizer file is written to the working directory
    rng = np.random.default_rng(0)
    write_tokens(tmp_path / "train.bin", rng.integers(0, 500, 300))
    write_tokens(tmp_path / "val.bin", rng.integers(0, 500, 100))
    pieces = [b"<eot>"] + [bytes([97 + i % 26]) for i in range(499)]  # a tokenizer file for the fixture's 500 tokens
    body = np.frombuffer(b"".join(bytes([len(p)]) + p for p in pieces), dtype=np.uint8)
    write_atomically(TOKENIZER_FILE, [new_header(TOKENIZER_MAGIC, 2, 500, 0), body])
    return ["-e", FIXTURE_MODEL, "-i", str(tmp_path / "train.bin"), "-j", str(tmp_path / "val.bin")]


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    """Three small training shards and a validation shard for the fixture's 500-token vocabulary."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(13)
    for i in range(3):
        write_tokens(tmp_path / f"train_{i}.bin", rng.integers(0, 500, 400 + 37 * i))
    write_tokens(tmp_path / "val.bin", rng.integers(0, 500, 300))
    return tmp_path
