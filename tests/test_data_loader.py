"""
llm.c's random numbers (its Mersenne Twister, normal draws, permutations and xorshift) to the bit, the model
initialisation they give, and its data loader's order, shuffled and not.
"""

import math

import numpy as np
import pytest

import train_gpt2 as g
from conftest import write_tokens


def normal(rng, n, std):
    """llm.c's normal_ of n values."""
    return rng.fill_normal(np.empty(n, dtype=np.float32), std)


def test_mersenne_twister_matches_llmc_rand_h():
    # the example in the header comment of llm.c's llmc/rand.h, which prints the same as torch.manual_seed(137)
    rng = g.MersenneTwister(137)
    assert rng.randint32(5).tolist() == [4053805790, 2173880614, 380293709, 1237255315, 2986595568]
    rng.randint32(16)  # normal_ of 8 values draws 8 pairs of 32-bit numbers (the n < 16 path)
    assert rng.randint32(1).tolist() == [2186503452]
    expected = [-1.2813878059387207, -2.646395683288574, -0.06569503247737885, 0.2180829495191574,
                -0.46536165475845337, -0.33108410239219666, 2.5485482215881348, 0.10425379872322083,
                0.8460659980773926, 0.9462448358535767, -0.2913765013217926, 0.34313806891441345,
                -1.1186704635620117, -0.18305328488349915, -2.3153159618377686, 0.3961987793445587]
    np.testing.assert_allclose(normal(rng, 16, 1.0), expected, rtol=0, atol=1e-6)
    assert rng.randint32(1).tolist() == [2756748748]


def test_normal_redraws_the_tail_as_llmc_does():
    # for n not a multiple of 16, llm.c draws n uniforms, transforms whole blocks of 16, then draws 16 fresh
    # uniforms for the last 16 values
    a, b = g.MersenneTwister(42), g.MersenneTwister(42)
    values = normal(a, 21, 0.02)
    head = normal(b, 16, 0.02)
    b.randint32(5)
    tail = normal(b, 16, 0.02)
    np.testing.assert_array_equal(values[:5], head[:5])
    np.testing.assert_array_equal(values[5:], tail)
    assert a.randint32(1) == b.randint32(1)


def test_permutation_is_llmc_random_permutation():
    a, b = g.MersenneTwister(42), g.MersenneTwister(42)
    order = list(range(10))
    for i in range(9, 0, -1):  # llm.c's random_permutation, one draw at a time
        j = int(b.randint32(1)[0]) % (i + 1)
        order[i], order[j] = order[j], order[i]
    assert a.permutation(10).tolist() == order


def test_descriptors():
    assert vars(g.config_from_descriptor("d12")) == vars(g.config_from_descriptor("gpt2:d12")) == dict(
        max_seq_len=1024, vocab_size=50257, padded_vocab_size=50304, num_layers=12, num_heads=12, channels=768)
    assert vars(g.config_from_descriptor("gpt3:c768")) == dict(
        max_seq_len=2048, vocab_size=50257, padded_vocab_size=50304, num_layers=12, num_heads=12, channels=768)
    assert g.config_from_descriptor("d6").channels == 384
    for bad in ("d7", "x12", "gpt3:c100", "gpt2:c768", "d"):
        with pytest.raises(g.GPT2Error):
            g.config_from_descriptor(bad)


def test_init_from_descriptor_follows_llmc():
    model = g.build_from_descriptor("d6")
    p, cfg = model.params, model.config
    # llm.c's gpt_build_from_descriptor("d6"), compiled from llm.c's sources, prints these float32 values (as
    # exact decimals) for the first weights it draws (wte), for layer 0's attention projection (scaled by
    # 1/sqrt(2L)) and for the last weights it draws (layer 5's MLP projection)
    assert p.wte[0, :4].tolist() == [0.03853829950094223, 0.029745683073997498, 0.018014343455433846,
                                     -0.04211042821407318]
    assert p.attprojw[0].ravel()[:4].tolist() == [0.00692613422870636, -0.004702634643763304,
                                                  0.0046526649966835976, -0.009493827819824219]
    assert p.fcprojw[5].ravel()[-4:].tolist() == [-0.0012744128471240401, -0.0038539080414921045,
                                                  -0.005731486715376377, 0.0051993620581924915]
    rng = g.MersenneTwister(42)  # llm.c draws wte (its V real rows), wpe, then per layer qkvw, attprojw, fcw, fcprojw
    np.testing.assert_array_equal(p.wte[:cfg.vocab_size].ravel(), normal(rng, cfg.vocab_size * cfg.channels, 0.02))
    np.testing.assert_array_equal(p.wpe.ravel(), normal(rng, p.wpe.size, 0.02))
    np.testing.assert_array_equal(p.qkvw[0].ravel(), normal(rng, p.qkvw[0].size, 0.02))
    assert np.all(p.wte[cfg.vocab_size:] == 0)
    for name in ("ln1w", "ln2w", "lnfw"):
        assert np.all(getattr(p, name) == 1)
    for name in ("ln1b", "qkvb", "attprojb", "ln2b", "fcb", "fcprojb", "lnfb"):
        assert np.all(getattr(p, name) == 0)
    assert abs(p.fcw.std() - 0.02) < 1e-4 and abs(p.fcprojw.std() - 0.02 / math.sqrt(12)) < 1e-4


def test_loader_order_and_wraparound(tmp_path):
    # two shards of 30 and 21 tokens; B*T = 4: 7 and 5 samples, each of B*T+1 tokens, stepping by B*T
    first = write_tokens(tmp_path / "s_000.bin", np.arange(30))
    second = write_tokens(tmp_path / "s_001.bin", np.arange(100, 121))
    loader = g.DataLoader(str(tmp_path / "s_*.bin"), 2, 2, 200)
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
    rng = g.MersenneTwister(42)

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
    loader = g.DataLoader(str(tmp_path / "s_*.bin"), 2, 4, 5000, shuffle=True)
    expected = llmc_shuffled_starts(sizes, 8, 40)  # 5 + 4 + 7 = 16 batches an epoch: two and a half epochs
    got = []
    for _ in range(40):
        x, _ = loader.next_batch()
        got.append((int(x[0, 0]) // 1000, int(x[0, 0]) % 1000))
    assert got == expected
    assert len(set(got[:16])) == 16  # one epoch visits every batch once


def test_xorshift_and_sampling():
    rng = g.XorShift(1337)
    coins = [rng.random_f32() for _ in range(1000)]
    assert all(0 <= c < 1 for c in coins) and 0.45 < np.mean(coins) < 0.55
    assert g.XorShift(1337).random_f32() == coins[0]
    logits = np.log(np.array([0.1, 0.2, 0.3, 0.4, 99.0], dtype=np.float32))  # the last column is padding
    assert [g.sample_token(logits, 4, np.float32(c)) for c in (0.05, 0.15, 0.35, 0.65, 0.999)] == [0, 1, 2, 3, 3]


def test_processes_read_their_rows_of_the_same_shuffled_batches(tmp_path):
    # N processes with B rows each read exactly the rows one process with N*B rows reads, batch for batch: the same
    # shuffle on every process (llm.c seeds each rank differently, its issue #792, so that ranks overlap)
    for i, size in enumerate([97, 81]):
        write_tokens(tmp_path / f"s_{i:03d}.bin", 1000 * i + np.arange(size))
    pattern = str(tmp_path / "s_*.bin")
    whole = g.DataLoader(pattern, 6, 4, 5000, shuffle=True)
    parts = [g.DataLoader(pattern, 2, 4, 5000, shuffle=True, process_rank=rank, num_processes=3) for rank in range(3)]
    assert [loader.num_batches for loader in parts] == [whole.num_batches] * 3
    for _ in range(3 * whole.num_batches):  # three epochs
        x, y = whole.next_batch()
        batches = [loader.next_batch() for loader in parts]
        np.testing.assert_array_equal(np.concatenate([px for px, _ in batches]), x)
        np.testing.assert_array_equal(np.concatenate([py for _, py in batches]), y)
