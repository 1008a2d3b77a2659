"""
llmc/data.py: llm.c's token shards written (and read back by the trainer's data loader), and Tiny Shakespeare
prepared for the default run. (The scripts of dev/data/ are in test_data_scripts.py.)
"""

import re
import urllib.error
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
    with pytest.raises(GPT2Error, match=r"^cannot download Tiny Shakespeare \(no network\); offline, copy it to "
                                         + re.escape(str(tmp_path / "ts" / "tiny_shakespeare.txt")) + "$"):
        prepare_tinyshakespeare(str(tmp_path / "ts"))


def test_the_default_run_offline_stops_at_the_data_before_building_a_model(tmp_path, monkeypatch, capsys):
    # a new user's first run without a network: one short line saying where to put the text, and no model built
    # (GPT-2 124M's takes seconds) before the data is known to be missing
    monkeypatch.chdir(tmp_path)

    def offline(*args, **kwargs):
        raise urllib.error.URLError(OSError(-2, "Name or service not known"))

    def no_model(source):
        raise AssertionError(f"a model was loaded: {source}")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setattr(tg, "load_gpt2", no_model)
    assert tg.main([]) == 1
    out, err = capsys.readouterr()
    assert out.splitlines() == ["data/tinyshakespeare/tiny_shakespeare_train.bin not found: preparing Tiny Shakespeare",
                                "downloading https://raw.githubusercontent.com/karpathy/char-rnn/master/data/"
                                "tinyshakespeare/input.txt"]
    assert err == ("error: cannot download Tiny Shakespeare ([Errno -2] Name or service not known); offline, copy it "
                   "to data/tinyshakespeare/tiny_shakespeare.txt\n")
    assert not (tmp_path / "ts").exists()


def test_a_shard_refuses_token_ids_beyond_uint16(tmp_path):
    for bad in ([0, 65536], [-1, 5]):
        with pytest.raises(GPT2Error, match="token ids must fit in uint16"):
            write_shard(str(tmp_path / "bad.bin"), np.array(bad))
    assert not list(tmp_path.iterdir())
    write_shard(str(tmp_path / "empty.bin"), np.array([], dtype=np.int64))
    assert tg.read_shard_header(str(tmp_path / "empty.bin")) == 0
