"""
Section 1 of train_gpt2.py, the kernels: each layer's backward pass against finite differences in float64 (the
kernels are dtype-generic: the same code runs in float32 to train), the forward passes against plain numpy, and
fast_exp against the exact exponential. The whole model's gradients are in test_model.py.
"""

import math

import numba
import numpy as np
import pytest

import train_gpt2 as tg
from tests.helpers import assert_gradient, numerical_gradient


def rand(rng, *shape):
    return rng.standard_normal(shape)


def test_encoder_gradients():
    rng = np.random.default_rng(0)
    B, T, C, Vp = 2, 3, 4, 5
    tokens = np.array([[1, 3, 1], [0, 3, 3]], dtype=np.int32)  # repeated tokens share a row of dwte
    wte, wpe, weights = rand(rng, Vp, C), rand(rng, T, C), rand(rng, B, T, C)
    out = np.zeros((B, T, C))

    def loss():
        tg.encoder_forward(out, tokens, wte, wpe)
        return float((out * weights).sum())

    dwte, dwpe = np.zeros_like(wte), np.zeros_like(wpe)
    tg.encoder_backward(dwte, dwpe, weights, tokens)
    assert_gradient("wte", dwte, numerical_gradient(loss, wte))
    assert_gradient("wpe", dwpe, numerical_gradient(loss, wpe))


def test_layernorm_gradients():
    rng = np.random.default_rng(1)
    N, C = 5, 20  # C > COLUMN_BLOCK, so the column blocks of the weight gradients are exercised
    inp, weight, bias, weights = rand(rng, N, C), rand(rng, C), rand(rng, C), rand(rng, N, C)
    out, mean, rstd = np.zeros((N, C)), np.zeros(N), np.zeros(N)

    def loss():
        tg.layernorm_forward(out, mean, rstd, inp, weight, bias)
        return float((out * weights).sum())

    loss()
    normalized = (inp - inp.mean(1, keepdims=True)) / np.sqrt(inp.var(1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(out, normalized * weight + bias)
    dinp, dweight, dbias = np.zeros_like(inp), np.zeros_like(weight), np.zeros_like(bias)
    tg.layernorm_backward(dinp, dweight, dbias, weights, inp, weight, mean, rstd)
    assert_gradient("inp", dinp, numerical_gradient(loss, inp))
    assert_gradient("weight", dweight, numerical_gradient(loss, weight))
    assert_gradient("bias", dbias, numerical_gradient(loss, bias))


def test_matmul_gradients():
    rng = np.random.default_rng(2)
    N, C, OC = 4, 3, 17
    inp, weight, bias, weights = rand(rng, N, C), rand(rng, OC, C), rand(rng, OC), rand(rng, N, OC)
    out = np.zeros((N, OC))

    def loss():
        tg.matmul_forward(out, inp, weight, bias)
        return float((out * weights).sum())

    loss()
    np.testing.assert_allclose(out, inp @ weight.T + bias)
    dinp, dweight, dbias = np.zeros_like(inp), np.zeros_like(weight), np.zeros_like(bias)
    scratch = np.zeros(5 * C)  # room for 5 rows of dweight at a time: 4 blocks, the last one short
    tg.matmul_backward(dinp, dweight, dbias, weights, inp, weight, scratch)  # through scratch: accumulate=True
    assert_gradient("inp", dinp, numerical_gradient(loss, inp))
    assert_gradient("weight", dweight, numerical_gradient(loss, weight))
    assert_gradient("bias", dbias, numerical_gradient(loss, bias))
    written = np.full_like(weight, np.nan)  # right after zero_grad the product is written, not added
    tg.matmul_backward(dinp, written, None, weights, inp, weight, scratch, accumulate=False)
    np.testing.assert_allclose(written, dweight, rtol=1e-13)


@pytest.mark.parametrize("blocks", [(128, 512), (2, 3), (3, 2), (1, 1)])
def test_attention_gradients(monkeypatch, blocks):
    # with the default blocks, one block of each; the small ones split T=7 into several blocks, uneven at the end,
    # so that the online softmax rescales and the backward pass adds its blocks' products
    monkeypatch.setattr(tg, "SMALL_BLOCK", blocks[0])
    monkeypatch.setattr(tg, "LARGE_BLOCK", blocks[1])
    rng = np.random.default_rng(3)
    B, T, C, NH = 2, 7, 6, 2
    qkv, weights = 3 * rand(rng, B, T, 3 * C), rand(rng, B, T, C)
    out, lse = np.zeros((B, T, C)), np.zeros((B, NH, T))
    scratch = [np.full(size, np.nan) for size in (B * C * T * T, B * C * T * T, (B, NH, T), (B, NH, T), B * T * C)]
    scores, dscores, rowmax, rowsum, partial = scratch

    def loss():
        tg.attention_forward(out, lse, qkv, NH, scores, rowmax, rowsum, partial)
        return float((out * weights).sum())

    loss()
    # against a plain reference: masked softmax attention per head
    hs = C // NH
    q, k, v = (qkv[:, :, i * C:(i + 1) * C].reshape(B, T, NH, hs).transpose(0, 2, 1, 3) for i in range(3))
    scores_ref = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hs) + np.triu(np.full((T, T), -np.inf), 1)
    probs = np.exp(scores_ref - scores_ref.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    np.testing.assert_allclose(out, (probs @ v).transpose(0, 2, 1, 3).reshape(B, T, C), atol=1e-12)
    np.testing.assert_allclose(lse, np.log(np.exp(scores_ref).sum(-1)), atol=1e-12)
    dqkv = np.full_like(qkv, np.nan)  # attention_backward writes every entry
    tg.attention_backward(dqkv, weights, qkv, out, lse, NH, scores, dscores, np.full((B, NH, T), np.nan), partial)
    assert_gradient("qkv", dqkv, numerical_gradient(loss, qkv))


@pytest.mark.parametrize("x", [0.0, 1e-300, -1e-9, 0.5, -0.34657359, 0.34657359, 1.0, -20.5, 88.7, -87.3, -103.9,
                               -700.0, -708.0, -708.5, -745.2, -1e4, 709.0, 709.5, 1e4, math.inf, -math.inf])
def test_fast_exp_values(x):
    # float64: within 2 units in the last place of the exact value (math.exp's own error is under 1), and 0 where
    # that is below 2^-1021 (x < -708); float32: the exact value rounded to float32, or what float32 makes of it
    value = tg.fast_exp(np.float64(x))
    assert value == (0 if x < -708 else pytest.approx(math.exp(x) if x < 709.8 else math.inf, rel=4.5e-16, abs=0))
    x32 = np.float32(x)
    with np.errstate(over="ignore"):  # float32 overflows to inf above 88.7, as it should
        exact32 = np.float32(math.exp(x32) if x32 < 709.8 else math.inf)
    assert tg.fast_exp(x32) == exact32 or abs(exact32) < 1e-36


def test_fast_exp_array():
    # over a million values spread from -100 to 100: float32 results equal the exact value rounded; NaN stays NaN
    x = np.linspace(-100, 100, 1_000_001)
    out64, out32 = np.empty_like(x), np.empty(x.size, np.float32)
    exp_all(out64, x)
    exp_all(out32, x.astype(np.float32))
    assert np.max(np.abs(out64 / np.exp(x) - 1)) < 5e-16
    with np.errstate(over="ignore"):  # float32 overflows to inf above 88.7, as it should
        np.testing.assert_array_equal(out32, np.exp(x.astype(np.float32).astype(np.float64)).astype(np.float32))
    exp_all(out64[:1], np.array([np.nan]))
    assert np.isnan(out64[0])


# the kernels' flags (train_gpt2's `kernel`) but not their cache=True: numba's cache of a function notices a change
# of its own file only, and would keep running the fast_exp of train_gpt2.py as it was when it compiled this
@numba.njit(parallel=True, fastmath={"nsz", "arcp", "contract"})
def exp_all(out, x):
    for i in numba.prange(x.shape[0]):
        out[i] = tg.fast_exp(x[i])


def test_gelu_gradients():
    rng = np.random.default_rng(4)
    inp, weights = 2 * rand(rng, 3, 7), rand(rng, 3, 7)
    out = np.zeros_like(inp)

    def loss():
        tg.gelu_forward(out, inp)
        return float((out * weights).sum())

    dinp = np.zeros_like(inp)
    tg.gelu_backward(dinp, inp, weights)
    assert_gradient("inp", dinp, numerical_gradient(loss, inp))


def test_crossentropy_gradients():
    rng = np.random.default_rng(5)
    N, V, Vp = 6, 5, 8
    logits, targets = rand(rng, N, Vp), np.array([0, 4, 2, 2, 1, 3], dtype=np.int32)
    losses, logsumexp = np.zeros(N), np.zeros(N)

    def loss():
        tg.crossentropy_forward(losses, logsumexp, logits, targets, V)
        return float(losses.mean())

    loss()
    log_probs = logits[:, :V] - np.log(np.exp(logits[:, :V]).sum(1, keepdims=True))
    np.testing.assert_allclose(losses, -log_probs[np.arange(N), targets])
    dlogits = np.zeros_like(logits)
    tg.crossentropy_backward(dlogits, logits, logsumexp, targets, 1.0 / N, V)
    numeric = numerical_gradient(loss, logits)
    assert np.all(dlogits[:, V:] == 0) and np.all(numeric[:, V:] == 0)  # the padded columns play no part
    assert_gradient("logits", dlogits, numeric)


def test_residual_forward():
    rng = np.random.default_rng(6)
    out, residual = rand(rng, 3, 4), rand(rng, 3, 4)
    expected = out + residual
    tg.residual_forward(out, residual)
    np.testing.assert_array_equal(out, expected)
