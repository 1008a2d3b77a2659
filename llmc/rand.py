"""
Random numbers, as llm.c draws them (llm.c's llmc/rand.h and its sampler's xorshift).

Three things in training are random: the initial weights, the order of the training data, and the samples. llm.c
draws the first two from its Mersenne Twister (llmc/rand.h, which is PyTorch's CPU generator, so its initial
weights are those of PyTorch's GPT-2 for the same seed), and the samples from a xorshift generator. Both are here
exactly, so the same seed gives llm.c's numbers to the bit; a checkpoint saves their states.
"""

import math

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True)  # no fastmath: the float32 operations must happen exactly as written
def uniform_from_draws(out, draws):
    # draws (n,) uint32 -> out (n,) float32 in [0, 1): llm.c's randfloat32, the low 24 bits over 2**24
    for i in prange(draws.shape[0]):
        out[i] = np.float32(draws[i] & 0xFFFFFF) * np.float32(1.0 / (1 << 24))


@njit(parallel=True, cache=True)
def box_muller(u, std):
    # u (R,16) uniforms in [0,1), turned in place into normals: llm.c's normal_fill_16, pairing column t with
    # column t+8. In float32 with C's logf, sqrtf, cosf and sinf (numba calls the same C library), so the values
    # are llm.c's to the bit; the 1e-12 and the angle are double precision in llm.c too.
    for r in prange(u.shape[0]):
        for t in range(8):
            u1 = np.float32(np.float64(np.float32(1.0) - u[r, t]) + 1e-12)
            radius = np.float32(math.sqrt(np.float32(-2.0) * np.float32(math.log(u1))))
            theta = np.float32(2.0 * math.pi * np.float64(u[r, t + 8]))
            u[r, t] = radius * np.float32(math.cos(theta)) * std
            u[r, t + 8] = radius * np.float32(math.sin(theta)) * std


class MersenneTwister:
    """llm.c's mt19937 (llmc/rand.h), which is PyTorch's CPU generator: numpy's MT19937 with torch's seeding."""

    def __init__(self, seed):
        self.seed = seed
        key = np.zeros(624, dtype=np.uint32)
        key[0] = seed
        for j in range(1, 624):
            prev = int(key[j - 1])
            key[j] = (1812433253 * (prev ^ (prev >> 30)) + j) & 0xFFFFFFFF
        self.bit_generator = np.random.MT19937()
        self.bit_generator.state = {"bit_generator": "MT19937", "state": {"key": key, "pos": 624}}
        self.generator = np.random.Generator(self.bit_generator)

    def randint32(self, n):
        """The next n 32-bit outputs: over the whole uint32 range, numpy returns them as they come."""
        return self.generator.integers(0, 2 ** 32, n, dtype=np.uint32)

    def uniform(self, n):
        """llm.c's randfloat32 n times."""
        out = np.empty(n, dtype=np.float32)
        uniform_from_draws(out, self.randint32(n))
        return out

    def fill_normal(self, out, std):
        """llm.c's normal_ into the flat float32 array out, for n >= 16: Box-Muller on blocks of 16 uniforms, the
        first 8 paired with the last 8; when n is not a multiple of 16, the last 16 values are drawn again from 16
        fresh uniforms."""
        n = out.size
        assert n >= 16, "llm.c draws tensors of fewer than 16 values differently; no GPT-2 tensor is that small"
        uniform_from_draws(out, self.randint32(n))
        box_muller(out[:n // 16 * 16].reshape(-1, 16), np.float32(std))
        if n % 16:
            tail = self.uniform(16)
            box_muller(tail.reshape(1, 16), np.float32(std))
            out[n - 16:] = tail
        return out

    def permutation(self, n):
        """llm.c's random_permutation of 0..n-1: a Fisher-Yates shuffle from the top down."""
        order = list(range(n))
        draws = self.randint32(max(n - 1, 0)).tolist()
        for i, draw in zip(range(n - 1, 0, -1), draws):
            j = draw % (i + 1)
            order[i], order[j] = order[j], order[i]
        return np.array(order, dtype=np.int64)


def mersenne_twister_words(rng):
    """llm.c's mt19937_state struct as 630 u32 words: u64 seed, i32 left, u32 next, u32 state[624],
    u32 MATRIX_A[2]. numpy keeps the index `pos` of the next draw where llm.c counts the `left` draws down."""
    state = rng.bit_generator.state["state"]
    position = int(state["pos"])
    return np.concatenate([np.array([rng.seed, 0, 625 - position, position % 624], "<u4"),
                           state["key"].astype("<u4"), np.array([0, 0x9908B0DF], "<u4")])


def mersenne_twister_state(words):
    """The inverse of mersenne_twister_words, as numpy's MT19937 state."""
    return {"bit_generator": "MT19937", "state": {"key": words[4:628].astype(np.uint32), "pos": 625 - int(words[2])}}


class XorShift:
    """llm.c's random_u32 and random_f32, for sampling."""

    def __init__(self, seed=1337):
        self.state = seed

    def random_u32(self):
        s = self.state
        s ^= s >> 12
        s ^= (s << 25) & 0xFFFFFFFFFFFFFFFF
        s ^= s >> 27
        self.state = s
        return ((s * 0x2545F4914F6CDD1D) & 0xFFFFFFFFFFFFFFFF) >> 32

    def random_f32(self):
        """A float32 in [0, 1)."""
        return np.float32(self.random_u32() >> 8) / np.float32(16777216.0)
