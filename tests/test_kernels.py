"""
Each kernel's backward pass, and the whole model's, against finite differences in float64 (the kernels are
dtype-generic: the same code runs in float32 to train); forward passes against plain numpy; the KV cache against
the full recomputation; AdamW and the gradient norm against llm.c's update written out.
"""

import math
import subprocess
import sys

import numpy as np
import pytest

import train_gpt2 as g
from conftest import FIXTURE_MODEL, HERE, random_model, split_parameters, tiny_config

# the finite-difference checks, in float64
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


def rand(rng, *shape):
    return rng.standard_normal(shape)


def test_encoder_gradients():
    rng = np.random.default_rng(0)
    B, T, C, Vp = 2, 3, 4, 5
    tokens = np.array([[1, 3, 1], [0, 3, 3]], dtype=np.int32)  # repeated tokens share a row of dwte
    wte, wpe, weights = rand(rng, Vp, C), rand(rng, T, C), rand(rng, B, T, C)
    out = np.zeros((B, T, C))

    def loss():
        g.encoder_forward(out, tokens, wte, wpe)
        return float((out * weights).sum())

    dwte, dwpe = np.zeros_like(wte), np.zeros_like(wpe)
    g.encoder_backward(dwte, dwpe, weights, tokens)
    assert_gradient("wte", dwte, numerical_gradient(loss, wte))
    assert_gradient("wpe", dwpe, numerical_gradient(loss, wpe))


def test_layernorm_gradients():
    rng = np.random.default_rng(1)
    N, C = 5, 20  # C > COLUMN_BLOCK, so the column blocks of the weight gradients are exercised
    inp, weight, bias, weights = rand(rng, N, C), rand(rng, C), rand(rng, C), rand(rng, N, C)
    out, mean, rstd = np.zeros((N, C)), np.zeros(N), np.zeros(N)

    def loss():
        g.layernorm_forward(out, mean, rstd, inp, weight, bias)
        return float((out * weights).sum())

    loss()
    normalized = (inp - inp.mean(1, keepdims=True)) / np.sqrt(inp.var(1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(out, normalized * weight + bias)
    dinp, dweight, dbias = np.zeros_like(inp), np.zeros_like(weight), np.zeros_like(bias)
    g.layernorm_backward(dinp, dweight, dbias, weights, inp, weight, mean, rstd)
    assert_gradient("inp", dinp, numerical_gradient(loss, inp))
    assert_gradient("weight", dweight, numerical_gradient(loss, weight))
    assert_gradient("bias", dbias, numerical_gradient(loss, bias))


def test_matmul_gradients():
    rng = np.random.default_rng(2)
    N, C, OC = 4, 3, 17
    inp, weight, bias, weights = rand(rng, N, C), rand(rng, OC, C), rand(rng, OC), rand(rng, N, OC)
    out = np.zeros((N, OC))

    def loss():
        g.matmul_forward(out, inp, weight, bias)
        return float((out * weights).sum())

    loss()
    np.testing.assert_allclose(out, inp @ weight.T + bias)
    dinp, dweight, dbias = np.zeros_like(inp), np.zeros_like(weight), np.zeros_like(bias)
    scratch = np.zeros(5 * C)  # room for 5 rows of dweight at a time: 4 blocks, the last one short
    g.matmul_backward(dinp, dweight, dbias, weights, inp, weight, scratch)  # through scratch: accumulate=True
    assert_gradient("inp", dinp, numerical_gradient(loss, inp))
    assert_gradient("weight", dweight, numerical_gradient(loss, weight))
    assert_gradient("bias", dbias, numerical_gradient(loss, bias))
    written = np.full_like(weight, np.nan)  # right after zero_grad the product is written, not added
    g.matmul_backward(dinp, written, None, weights, inp, weight, scratch, accumulate=False)
    np.testing.assert_allclose(written, dweight, rtol=1e-13)


@pytest.mark.parametrize("blocks", [(128, 512), (2, 3), (3, 2), (1, 1)])
def test_attention_gradients(monkeypatch, blocks):
    # with the default blocks, one block of each; the small ones split T=7 into several blocks, uneven at the end,
    # so that the online softmax rescales and the backward pass adds its blocks' products
    monkeypatch.setattr(g, "SMALL_BLOCK", blocks[0])
    monkeypatch.setattr(g, "LARGE_BLOCK", blocks[1])
    rng = np.random.default_rng(3)
    B, T, C, NH = 2, 7, 6, 2
    qkv, weights = 3 * rand(rng, B, T, 3 * C), rand(rng, B, T, C)
    out, lse = np.zeros((B, T, C)), np.zeros((B, NH, T))
    scratch = [np.full(size, np.nan) for size in (B * C * T * T, B * C * T * T, (B, NH, T), (B, NH, T), B * T * C)]
    scores, dscores, rowmax, rowsum, partial = scratch

    def loss():
        g.attention_forward(out, lse, qkv, NH, scores, rowmax, rowsum, partial)
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
    g.attention_backward(dqkv, weights, qkv, out, lse, NH, scores, dscores, np.full((B, NH, T), np.nan), partial)
    assert_gradient("qkv", dqkv, numerical_gradient(loss, qkv))


def test_bench_times_attention():
    # python -m dev.bench --attention, as the README's table is made (ours alone, which needs no PyTorch)
    command = [sys.executable, "-m", "dev.bench", "--attention", "-e", FIXTURE_MODEL, "-t", "16", "--steps", "2"]
    result = subprocess.run(command, cwd=HERE, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    rows = [line.split(" | ") for line in result.stdout.splitlines() if line.startswith("| ours (train_gpt2) |")]
    assert len(rows) == 1 and float(rows[0][1]) > 0 and float(rows[0][2]) > 0 and rows[0][4] == "1.00x", rows
    refused = subprocess.run(command + ["--profile"], cwd=HERE, capture_output=True, text=True)
    assert refused.returncode == 2 and "--attention goes with --vs torch only" in refused.stderr


@pytest.mark.parametrize("x", [0.0, 1e-300, -1e-9, 0.5, -0.34657359, 0.34657359, 1.0, -20.5, 88.7, -87.3, -103.9,
                               -700.0, -708.0, -708.5, -745.2, -1e4, 709.0, 709.5, 1e4, math.inf, -math.inf])
def test_fast_exp_values(x):
    # float64: within 2 units in the last place of the exact value (math.exp's own error is under 1), and 0 where
    # that is below 2^-1021 (x < -708); float32: the exact value rounded to float32, or what float32 makes of it
    value = g.fast_exp(np.float64(x))
    assert value == (0 if x < -708 else pytest.approx(math.exp(x) if x < 709.8 else math.inf, rel=4.5e-16, abs=0))
    x32 = np.float32(x)
    with np.errstate(over="ignore"):  # float32 overflows to inf above 88.7, as it should
        exact32 = np.float32(math.exp(x32) if x32 < 709.8 else math.inf)
    assert g.fast_exp(x32) == exact32 or abs(exact32) < 1e-36


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


@g.kernel
def exp_all(out, x):
    for i in g.prange(x.shape[0]):
        out[i] = g.fast_exp(x[i])


def test_gelu_gradients():
    rng = np.random.default_rng(4)
    inp, weights = 2 * rand(rng, 3, 7), rand(rng, 3, 7)
    out = np.zeros_like(inp)

    def loss():
        g.gelu_forward(out, inp)
        return float((out * weights).sum())

    dinp = np.zeros_like(inp)
    g.gelu_backward(dinp, inp, weights)
    assert_gradient("inp", dinp, numerical_gradient(loss, inp))


def test_crossentropy_gradients():
    rng = np.random.default_rng(5)
    N, V, Vp = 6, 5, 8
    logits, targets = rand(rng, N, Vp), np.array([0, 4, 2, 2, 1, 3], dtype=np.int32)
    losses, logsumexp = np.zeros(N), np.zeros(N)

    def loss():
        g.crossentropy_forward(losses, logsumexp, logits, targets, V)
        return float(losses.mean())

    loss()
    log_probs = logits[:, :V] - np.log(np.exp(logits[:, :V]).sum(1, keepdims=True))
    np.testing.assert_allclose(losses, -log_probs[np.arange(N), targets])
    dlogits = np.zeros_like(logits)
    g.crossentropy_backward(dlogits, logits, logsumexp, targets, 1.0 / N, V)
    numeric = numerical_gradient(loss, logits)
    assert np.all(dlogits[:, V:] == 0) and np.all(numeric[:, V:] == 0)  # the padded columns play no part
    assert_gradient("logits", dlogits, numeric)


def test_residual_forward():
    rng = np.random.default_rng(6)
    out, residual = rand(rng, 3, 4), rand(rng, 3, 4)
    expected = out + residual
    g.residual_forward(out, residual)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("blocks", [(128, 512), (2, 3)])
def test_whole_model_gradients(monkeypatch, blocks):
    # with small attention blocks too: the training buffers that activation_shapes sizes hold every block
    monkeypatch.setattr(g, "SMALL_BLOCK", blocks[0])
    monkeypatch.setattr(g, "LARGE_BLOCK", blocks[1])
    config = tiny_config()
    model = random_model(config, np.float64)
    rng = np.random.default_rng(7)
    B, T = 2, 5  # T < max_seq_len
    x = rng.integers(0, config.vocab_size, (B, T), dtype=np.int32)
    y = rng.integers(0, config.vocab_size, (B, T), dtype=np.int32)
    model.allocate(B, T, training=True)

    def loss():
        return model.forward(x, y)

    loss()
    model.zero_grad()
    model.backward()
    analytic = model.grads_memory.copy()
    numeric = numerical_gradient(loss, model.params_memory)
    for name in model.shapes:
        assert_gradient(name, getattr(model.grads, name), split_parameters(model, numeric)[name])
    assert_gradient("all parameters", analytic, numeric)


def test_gradients_accumulate_with_loss_scale():
    model = random_model(tiny_config(), np.float64)
    rng = np.random.default_rng(8)
    x = rng.integers(0, 13, (2, 4), dtype=np.int32)
    y = rng.integers(0, 13, (2, 4), dtype=np.int32)
    model.allocate(2, 4, training=True)
    model.forward(x, y)
    model.zero_grad()
    model.backward()
    once = model.grads_memory.copy()
    model.zero_grad()
    for _ in range(2):  # two micro-steps of half weight each add up to one full step
        model.forward(x, y)
        model.backward(loss_scale=0.5)
    np.testing.assert_allclose(model.grads_memory, once, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("training", [True, False])
def test_shorter_batches_give_the_same_logits(training):
    # sampling runs the model on (1, t) prefixes of the buffers allocated for (B, T); causality makes the logits
    # at positions < t independent of what follows
    model = random_model(tiny_config(), np.float64)
    rng = np.random.default_rng(9)
    x = rng.integers(0, 13, (3, 6), dtype=np.int32)
    model.allocate(3, 6, training)
    model.forward(x)
    full = model.activations(3, 6).logits.copy()
    model.forward(x[1:2, :4])
    np.testing.assert_allclose(model.activations(1, 4).logits[0], full[1, :4], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype, tolerance", [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_kv_cache_continues_a_sequence(dtype, tolerance, monkeypatch):
    # a prompt of 3 positions at once, then one position at a time from the KV cache: at every position, the
    # logits of the full recomputation. Blocks of 2 queries and 3 keys make the prompt two query blocks, and the
    # later positions see keys over up to three key blocks
    monkeypatch.setattr(g, "SMALL_BLOCK", 2)
    monkeypatch.setattr(g, "LARGE_BLOCK", 3)
    config = tiny_config()
    rng = np.random.default_rng(14)
    B, T = 2, config.max_seq_len
    x = rng.integers(0, config.vocab_size, (B, T), dtype=np.int32)
    full_model = random_model(config, dtype)
    full_model.allocate(B, T)
    full_model.forward(x)
    full = full_model.activations(B, T).logits
    model = g.GPT2(config, full_model.params_memory)
    model.allocate(B, 3, context=T)  # activations for 3 positions, a cache for T
    model.forward(x[:, :3])
    steps = [model.activations(B, 3).logits.copy()]
    for pos in range(3, T):
        model.forward(x[:, pos:pos + 1], pos=pos)
        steps.append(model.activations(B, 1, pos).logits.copy())
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, rtol=0, atol=tolerance)
    # fewer sequences, and several positions at a time from pos > 0, as evaluation runs completions: their queries
    # span two query blocks, and some of them see none of a key block's keys
    model.forward(x[:1, :2])
    steps = [model.activations(1, 2).logits.copy()]
    for pos in range(2, T, 3):
        model.forward(x[:1, pos:pos + 3], pos=pos)
        steps.append(model.activations(1, min(3, T - pos), pos).logits.copy())
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full[:1], rtol=0, atol=tolerance)
    for too_many, pos in ((x[:, :2], T - 1), (x[:, :4], 0), (np.concatenate([x, x])[:, :1], 0)):
        with pytest.raises(ValueError, match=r"does not fit the \(B, T, context\) \(2, 3, 8\) allocated"):
            model.forward(too_many, pos=pos)
    trainer = random_model(config, dtype)
    trainer.allocate(B, T, training=True)  # a training model keeps no cache
    with pytest.raises(RuntimeError, match="KV cache"):
        trainer.forward(x[:, :1], pos=1)
    with pytest.raises(g.GPT2Error, match="context of 9 positions is longer than the model's maximum 8"):
        model.allocate(1, 1, context=T + 1)


def test_a_model_that_does_not_train_keeps_one_layer_of_activations():
    # memory to generate: the parameters, the KV cache and one layer's activations, whatever the depth
    config = tiny_config()
    deep = g.GPT2Config(**{**vars(config), "num_layers": 3 * config.num_layers})
    sizes = {}
    for c in (config, deep):
        model = random_model(c, np.float32)
        model.allocate(1, 4, context=8)
        sizes[c.num_layers] = (model.acts_memory.size, model.kv_cache.size)
        assert model.kv_cache.shape == (c.num_layers, 1, 8, 2 * c.channels)
    assert sizes[deep.num_layers][0] == sizes[config.num_layers][0]
    assert sizes[deep.num_layers][1] == 3 * sizes[config.num_layers][1]


def test_a_model_that_does_not_train_holds_no_gradients():
    model = random_model(tiny_config(), np.float32)
    model.allocate(2, 8)
    assert model.grads_memory is None and not hasattr(model.activations(2, 8), "dresidual")
    model.forward(np.zeros((2, 8), dtype=np.int32), np.zeros((2, 8), dtype=np.int32))
    with pytest.raises(RuntimeError, match="allocated for training"):
        model.backward()
    model.allocate(2, 8, training=True)
    assert model.grads_memory.shape == model.params_memory.shape


def test_adamw_matches_llmc_update():
    model = random_model(tiny_config(), np.float64)
    rng = np.random.default_rng(10)
    model.allocate(1, 1, training=True)
    optimizer = g.AdamW(model, 0.9, 0.95, 1e-8, 0.1)
    params, m, v = model.params_memory.copy(), np.zeros(model.num_parameters), np.zeros(model.num_parameters)
    matrices = ("wte", "wpe", "qkvw", "attprojw", "fcw", "fcprojw")  # written out, not taken from the trainer
    decay = np.concatenate([np.full(math.prod(s), 0.1 if name in matrices else 0.0)
                            for name, s in model.shapes.items()])
    for t in range(1, 4):
        grads = rng.standard_normal(model.num_parameters)
        model.grads_memory[:] = grads
        optimizer.update(1e-3, t)
        # llm.c's gpt2_update, written out, with weight decay on the 2-D tensors only
        m = 0.9 * m + 0.1 * grads
        v = 0.95 * v + 0.05 * grads ** 2
        m_hat, v_hat = m / (1 - 0.9 ** t), v / (1 - 0.95 ** t)
        params -= 1e-3 * (m_hat / (np.sqrt(v_hat) + 1e-8) + decay * params)
    np.testing.assert_allclose(model.params_memory, params, rtol=1e-12)


def test_accumulation_equals_one_larger_batch():
    model = g.load_model(FIXTURE_MODEL)
    rng = np.random.default_rng(11)
    x, y = rng.integers(0, 500, (6, 16), dtype=np.int32), rng.integers(0, 500, (6, 16), dtype=np.int32)
    model.allocate(6, 16, training=True)
    model.zero_grad()
    model.forward(x, y)
    model.backward()
    whole = model.grads_memory.copy()
    model.zero_grad()
    for part in range(3):  # three micro-batches of 2 sequences
        model.forward(x[2 * part:2 * part + 2], y[2 * part:2 * part + 2])
        model.backward(loss_scale=1 / 3)
    difference = np.abs(model.grads_memory - whole).max()
    print(f"accumulated vs whole batch: largest difference {difference:.2e}, "
          f"largest gradient {np.abs(whole).max():.2e}")
    assert difference <= 1e-6 * np.abs(whole).max() * 10


def test_gradient_norm_and_clipping():
    model = random_model(tiny_config(), np.float64)
    model.allocate(1, 1, training=True)
    rng = np.random.default_rng(12)
    model.grads_memory[:] = rng.standard_normal(model.num_parameters)
    assert g.gradient_norm(model.grads_memory) == pytest.approx(np.linalg.norm(model.grads_memory), rel=1e-12)
    clipped = g.GPT2(model.config, model.params_memory.copy())
    clipped.allocate(1, 1, training=True)
    clipped.grads_memory[:] = model.grads_memory * 0.25
    optimizer, clipped_optimizer = g.AdamW(model, 0.9, 0.95, 1e-8, 0.1), g.AdamW(clipped, 0.9, 0.95, 1e-8, 0.1)
    optimizer.update(1e-3, 1, grad_scale=0.25)  # clipping scales the gradients
    clipped_optimizer.update(1e-3, 1)
    np.testing.assert_allclose(model.params_memory, clipped.params_memory, rtol=1e-12)
    np.testing.assert_allclose(optimizer.m_memory, clipped_optimizer.m_memory, rtol=1e-12)


def test_train_step_clips_to_the_threshold():
    # with the threshold below the norm, train_step's update is the one of the gradients scaled to that norm
    config = tiny_config()
    rng = np.random.default_rng(15)
    x, y = rng.integers(0, 13, (2, 8), dtype=np.int32), rng.integers(0, 13, (2, 8), dtype=np.int32)
    clipped, scaled = random_model(config, np.float64), random_model(config, np.float64)
    for model in (clipped, scaled):
        model.allocate(2, 8, training=True)
    clipped_optimizer, scaled_optimizer = g.AdamW(clipped), g.AdamW(scaled)
    loss, norm = g.train_step(clipped, clipped_optimizer, lambda: (x, y), 1, 1e-3, 0, grad_clip=0.5)
    assert norm > 0.5 and loss == pytest.approx(scaled.forward(x, y), rel=1e-12)
    scaled.zero_grad()
    scaled.backward()
    scaled_optimizer.update(1e-3, 1, grad_scale=0.5 / norm)
    np.testing.assert_array_equal(clipped.params_memory, scaled.params_memory)


def test_bf16_rounding_of_the_gemm_measurement_is_llmc_s():
    # dev/gemm_bf16.py rounds float32 to bfloat16 to nearest, ties to even, as llm.c's and the libraries' do
    from dev.gemm_bf16 import to_bf16
    values = np.array([1.0, 1.0 + 2**-8, 1.0 + 3 * 2**-8, 1.0 + 2**-8 + 2**-20, -2.5, 65504.0], dtype=np.float32)
    widened = (to_bf16(np, values).astype(np.uint32) << 16).view(np.float32)
    np.testing.assert_array_equal(widened, [1.0, 1.0, 1.0 + 4 * 2**-8, 1.0 + 2**-7, -2.5, 65536.0])
