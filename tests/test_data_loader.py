"""
Section 4 of train_gpt2.py, the data loader: llm.c's token shards read in llm.c's order, shuffled and not, each
process its rows of the same batches, and every bad shard refused in one line.
"""

import numpy as np

import train_gpt2 as tg
from llmc.rand import MersenneTwister
from tests.helpers import FIXTURE_MODEL, assert_refused, bad_copy, write_tokens


def test_loader_order_and_wraparound(tmp_path):
    # two shards of 30 and 21 tokens; B*T = 4: 7 and 5 samples, each of B*T+1 tokens, stepping by B*T
    first = write_tokens(tmp_path / "s_000.bin", np.arange(30))
    second = write_tokens(tmp_path / "s_001.bin", np.arange(100, 121))
    loader = tg.DataLoader(str(tmp_path / "s_*.bin"), 2, 2, 200)
    assert loader.files == [first, second] and loader.num_tokens == 51
    starts = [0, 4, 8, 12, 16, 20, 24, 100, 104, 108, 112, 116, 0, 4]  # then back to the first shard
    for start in starts:
        x, y = loader.next_batch()
        np.testing.assert_array_equal(x.ravel(), np.arange(start, start + 4))
        np.testing.assert_array_equal(y.ravel(), np.arange(start + 1, start + 5))
        assert x.dtype == np.int32 and x.shape == (2, 2)
    loader.reset()
    np.testing.assert_array_equal(loader.next_batch()[0].ravel(), np.arange(4))


def llmc_shuffled_starts(shard_sizes, tokens_per_sample, num_batches):
    """llmc/dataloader.h with should_shuffle=1, transcribed statement by statement, one draw at a time."""
    rng = MersenneTwister(42)

    def permute(data):
        for i in range(len(data) - 1, 0, -1):
            j = int(rng.randint32(1)[0]) % (i + 1)
            data[i], data[j] = data[j], data[i]

    shard_indices = list(range(len(shard_sizes)))
    state = {}

    def load_shard(index):
        state["shard"] = shard_indices[index]
        state["num_samples"] = (shard_sizes[state["shard"]] - 1) // tokens_per_sample
        state["intra"] = list(range(state["num_samples"]))
        permute(state["intra"])

    def reset():
        state["shard_idx"], state["sample_idx"] = 0, 0
        permute(shard_indices)
        load_shard(0)

    reset()
    starts = []
    for _ in range(num_batches):
        if state["sample_idx"] >= state["num_samples"]:
            if state["shard_idx"] == len(shard_sizes) - 1:
                reset()
            else:
                state["shard_idx"] += 1
                state["sample_idx"] = 0
                load_shard(state["shard_idx"])
        starts.append((state["shard"], state["intra"][state["sample_idx"]] * tokens_per_sample))
        state["sample_idx"] += 1
    return starts


def test_shuffled_loader_follows_llmc(tmp_path):
    sizes = [41, 33, 57]
    for i, size in enumerate(sizes):
        write_tokens(tmp_path / f"s_{i:03d}.bin", 1000 * i + np.arange(size))
    loader = tg.DataLoader(str(tmp_path / "s_*.bin"), 2, 4, 5000, shuffle=True)
    expected = llmc_shuffled_starts(sizes, 8, 40)  # 5 + 4 + 7 = 16 batches an epoch: two and a half epochs
    got = []
    for _ in range(40):
        x, _ = loader.next_batch()
        got.append((int(x[0, 0]) // 1000, int(x[0, 0]) % 1000))
    assert got == expected
    assert len(set(got[:16])) == 16  # one epoch visits every batch once


def test_processes_read_their_rows_of_the_same_shuffled_batches(tmp_path):
    # N processes with B rows each read exactly the rows one process with N*B rows reads, batch for batch: the same
    # shuffle on every process (llm.c seeds each rank differently, its issue #792, so that ranks overlap)
    for i, size in enumerate([97, 81]):
        write_tokens(tmp_path / f"s_{i:03d}.bin", 1000 * i + np.arange(size))
    pattern = str(tmp_path / "s_*.bin")
    whole = tg.DataLoader(pattern, 6, 4, 5000, shuffle=True)
    parts = [tg.DataLoader(pattern, 2, 4, 5000, shuffle=True, process_rank=rank, num_processes=3) for rank in range(3)]
    assert [loader.num_batches for loader in parts] == [whole.num_batches] * 3
    for _ in range(3 * whole.num_batches):  # three epochs
        x, y = whole.next_batch()
        batches = [loader.next_batch() for loader in parts]
        np.testing.assert_array_equal(np.concatenate([px for px, _ in batches]), x)
        np.testing.assert_array_equal(np.concatenate([py for _, py in batches]), y)


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
