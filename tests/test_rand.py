"""
llmc/rand.py: llm.c's random numbers, its Mersenne Twister, normal draws and permutations and its sampler's
xorshift, to the bit. (The model initialisation they give is in test_model.py, the data order in
test_data_loader.py.)
"""

import numpy as np

import train_gpt2 as tg
from llmc.rand import MersenneTwister, XorShift


def normal(rng, n, std):
    """llm.c's normal_ of n values."""
    return rng.fill_normal(np.empty(n, dtype=np.float32), std)


def test_mersenne_twister_matches_llmc_rand_h():
    # the example in the header comment of llm.c's llmc/rand.h, which prints the same as torch.manual_seed(137)
    rng = MersenneTwister(137)
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
    a, b = MersenneTwister(42), MersenneTwister(42)
    values = normal(a, 21, 0.02)
    head = normal(b, 16, 0.02)
    b.randint32(5)
    tail = normal(b, 16, 0.02)
    np.testing.assert_array_equal(values[:5], head[:5])
    np.testing.assert_array_equal(values[5:], tail)
    assert a.randint32(1) == b.randint32(1)


def test_permutation_is_llmc_random_permutation():
    a, b = MersenneTwister(42), MersenneTwister(42)
    order = list(range(10))
    for i in range(9, 0, -1):  # llm.c's random_permutation, one draw at a time
        j = int(b.randint32(1)[0]) % (i + 1)
        order[i], order[j] = order[j], order[i]
    assert a.permutation(10).tolist() == order


def test_xorshift_and_sampling():
    rng = XorShift(1337)
    coins = [rng.random_f32() for _ in range(1000)]
    assert all(0 <= c < 1 for c in coins) and 0.45 < np.mean(coins) < 0.55
    assert XorShift(1337).random_f32() == coins[0]
    logits = np.log(np.array([0.1, 0.2, 0.3, 0.4, 99.0], dtype=np.float32))  # the last column is padding
    assert [tg.sample_token(logits, 4, np.float32(c)) for c in (0.05, 0.15, 0.35, 0.65, 0.999)] == [0, 1, 2, 3, 3]
