"""
llmc/data.py: llm.c's token shards written (and read back by the trainer's data loader), and Tiny Shakespeare
prepared for the default run. (The scripts of dev/data/ are in test_data_scripts.py.)
"""

import urllib.request

import numpy as np
import pytest

import train_gpt2 as tg
from llmc.data import prepare_tinyshakespeare, write_shard
from llmc.files import GPT2Error
from tests.helpers import write_tokens


def test_shard_round_trip(tmp_path):
    tokens = np.array([0, 1, 50256, 65535, 7], dtype=np.uint16)
    path = write_tokens(tmp_path / "s.bin", tokens)
    assert tg.read_shard_header(path) == 5
    np.testing.assert_array_equal(np.fromfile(path, dtype="<u2", offset=1024), tokens)
    assert np.fromfile(path, dtype="<i4", count=3).tolist() == [20240520, 1, 5]


def test_no_network_tells_how_to_give_the_text(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("no network")
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(GPT2Error,
                       match=r"cannot download Tiny Shakespeare .*python -m dev\.data\.tinyshakespeare --input PATH"):
        prepare_tinyshakespeare(str(tmp_path / "ts"))
    assert not (tmp_path / "ts").exists()


def test_a_shard_refuses_token_ids_beyond_uint16(tmp_path):
    for bad in ([0, 65536], [-1, 5]):
        with pytest.raises(GPT2Error, match="token ids must fit in uint16"):
            write_shard(str(tmp_path / "bad.bin"), np.array(bad))
    assert not list(tmp_path.iterdir())
    write_shard(str(tmp_path / "empty.bin"), np.array([], dtype=np.int64))
    assert tg.read_shard_header(str(tmp_path / "empty.bin")) == 0
