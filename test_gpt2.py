"""
Tests for train_gpt2.py, in the spirit of llm.c's test_gpt2.c and stricter:

- against a PyTorch reference (dev/make_reference.py): logits, loss and all 16 gradient tensors of one
  forward/backward, then the losses of 10 AdamW steps. By default on the committed fixture in data/fixtures/;
  `pytest test_gpt2.py --model PATH --state PATH` runs the same checks on any llm.c model + debug state pair;
- finite-difference gradient checks in float64 of every kernel's backward and of the whole model;
- llm.c's random number generator against the outputs llmc/rand.h documents, and its data loader's order;
- round trips of every file the trainer writes, and every bad input the trainer must refuse.

No PyTorch, no network and nothing outside the repository is needed.
"""

import math
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import train_gpt2 as g

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE_MODEL = os.path.join(HERE, "data", "fixtures", "ref_model.bin")

# llm.c's CPU test (test_gpt2.c) allows 1e-2 on logits and loss and 2e-2 on gradients; we allow 100 times less.
LOGITS_TOLERANCE = 1e-4
LOSS_TOLERANCE = 1e-4
GRADIENT_TOLERANCE = 2e-4
# test_gpt2.c checks its 10 AdamW losses to 1e-2
STEP_LOSS_TOLERANCE = 1e-4
# the finite-difference checks, in float64
RELATIVE_ERROR_TOLERANCE = 1e-6


# ------------------------------------------------------------------------------------------------------------
# Against the PyTorch reference

@pytest.fixture(scope="module")
def reference(request):
    model = g.load_model(request.config.getoption("--model"))
    state = g.read_debug_state(request.config.getoption("--state"), model.config)
    model.allocate(*state.x.shape)
    return model, state


def split_parameters(model, flat):
    offsets = np.cumsum([0] + [math.prod(s) for s in model.shapes.values()])
    return {name: flat[offsets[i]:offsets[i + 1]].reshape(shape)
            for i, (name, shape) in enumerate(model.shapes.items())}


def test_forward_backward_matches_reference(reference):
    model, state = reference
    B, T = state.x.shape
    V = model.config.vocab_size
    loss = model.forward(state.x, state.y)
    logits_diff = np.abs(model.activations(B, T).logits[:, :, :V] - state.logits).max()
    print(f"logits: largest difference {logits_diff:.3e} (tolerance {LOGITS_TOLERANCE})")
    print(f"loss: ours {loss:.6f}, reference {state.loss:.6f}, difference {abs(loss - state.loss):.3e}")
    model.zero_grad()
    model.backward()
    expected = split_parameters(model, state.grads)
    worst = {}
    for name, ours in vars(model.grads).items():
        worst[name] = float(np.abs(ours - expected[name]).max())
        print(f"grad {name:9s}: largest difference {worst[name]:.3e}, largest value {np.abs(expected[name]).max():.3e}")
    assert logits_diff <= LOGITS_TOLERANCE
    assert abs(loss - state.loss) <= LOSS_TOLERANCE
    assert max(worst.values()) <= GRADIENT_TOLERANCE, worst


def test_adamw_steps_match_reference(reference):
    model, state = reference
    if state.losses.size == 0:
        pytest.skip("this debug state carries no AdamW step losses")
    model = g.GPT2(model.config, model.params_memory.copy())  # a fresh optimizer on the same weights
    model.allocate(*state.x.shape)
    losses = []
    for step in range(state.losses.size):
        losses.append(model.forward(state.x, state.y))
        model.zero_grad()
        model.backward()
        g.adamw_update(model, 1e-4, 0.9, 0.999, 1e-8, 0.0, step + 1)
    diffs = np.abs(np.array(losses) - state.losses)
    for step, (ours, theirs) in enumerate(zip(losses, state.losses)):
        print(f"step {step}: loss {ours:.6f}, reference {theirs:.6f}, difference {abs(ours - theirs):.3e}")
    assert diffs.max() <= STEP_LOSS_TOLERANCE


# ------------------------------------------------------------------------------------------------------------
# Finite-difference gradient checks, float64

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


def test_attention_gradients():
    rng = np.random.default_rng(3)
    B, T, C, NH = 2, 4, 6, 2
    qkv, weights = rand(rng, B, T, 3 * C), rand(rng, B, T, C)
    out, att = np.zeros((B, T, C)), np.zeros((B, NH, T, T))

    def loss():
        g.attention_forward(out, att, qkv, NH)
        return float((out * weights).sum())

    loss()
    # against a plain reference: masked softmax attention per head
    hs = C // NH
    q, k, v = (qkv[:, :, i * C:(i + 1) * C].reshape(B, T, NH, hs).transpose(0, 2, 1, 3) for i in range(3))
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hs) + np.triu(np.full((T, T), -np.inf), 1)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    np.testing.assert_allclose(att, probs, atol=1e-12)
    np.testing.assert_allclose(out, (probs @ v).transpose(0, 2, 1, 3).reshape(B, T, C), atol=1e-12)
    dqkv = np.full_like(qkv, np.nan)  # attention_backward writes every entry
    g.attention_backward(dqkv, weights, qkv, att, np.full_like(att, np.nan), NH)
    assert_gradient("qkv", dqkv, numerical_gradient(loss, qkv))


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


def tiny_config():
    return g.GPT2Config(max_seq_len=8, vocab_size=13, padded_vocab_size=16, num_layers=2, num_heads=2, channels=8)


def random_model(config, dtype, seed=0):
    rng = np.random.default_rng(seed)
    model = g.GPT2(config, np.zeros(sum(math.prod(s) for s in g.parameter_shapes(config).values()), dtype=dtype))
    model.params_memory[:] = 0.3 * rng.standard_normal(model.num_parameters)
    model.params.wte[config.vocab_size:] = 0  # the padded rows, as in a checkpoint
    return model


def test_whole_model_gradients():
    config = tiny_config()
    model = random_model(config, np.float64)
    rng = np.random.default_rng(7)
    B, T = 2, 5  # T < max_seq_len
    x = rng.integers(0, config.vocab_size, (B, T), dtype=np.int32)
    y = rng.integers(0, config.vocab_size, (B, T), dtype=np.int32)
    model.allocate(B, T)

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
    model.allocate(2, 4)
    model.forward(x, y)
    model.zero_grad()
    model.backward()
    once = model.grads_memory.copy()
    model.zero_grad()
    for _ in range(2):  # two micro-steps of half weight each add up to one full step
        model.forward(x, y)
        model.backward(loss_scale=0.5)
    np.testing.assert_allclose(model.grads_memory, once, rtol=1e-12, atol=1e-15)


def test_shorter_batches_give_the_same_logits():
    # sampling runs the model on (1, t) prefixes of the buffers allocated for (B, T); causality makes the logits
    # at positions < t independent of what follows
    model = random_model(tiny_config(), np.float64)
    rng = np.random.default_rng(9)
    x = rng.integers(0, 13, (3, 6), dtype=np.int32)
    model.allocate(3, 6)
    model.forward(x)
    full = model.activations(3, 6).logits.copy()
    model.forward(x[1:2, :4])
    np.testing.assert_allclose(model.activations(1, 4).logits[0], full[1, :4], rtol=1e-12, atol=1e-12)


def test_adamw_matches_llmc_update():
    model = random_model(tiny_config(), np.float64)
    rng = np.random.default_rng(10)
    params, m, v = model.params_memory.copy(), np.zeros(model.num_parameters), np.zeros(model.num_parameters)
    matrices = ("wte", "wpe", "qkvw", "attprojw", "fcw", "fcprojw")  # written out, not taken from the trainer
    decay = np.concatenate([np.full(math.prod(s), 0.1 if name in matrices else 0.0)
                            for name, s in model.shapes.items()])
    for t in range(1, 4):
        grads = rng.standard_normal(model.num_parameters)
        model.grads_memory[:] = grads
        g.adamw_update(model, 1e-3, 0.9, 0.95, 1e-8, 0.1, t)
        # llm.c's gpt2_update, written out, with weight decay on the 2-D tensors only
        m = 0.9 * m + 0.1 * grads
        v = 0.95 * v + 0.05 * grads ** 2
        m_hat, v_hat = m / (1 - 0.9 ** t), v / (1 - 0.95 ** t)
        params -= 1e-3 * (m_hat / (np.sqrt(v_hat) + 1e-8) + decay * params)
    np.testing.assert_allclose(model.params_memory, params, rtol=1e-12)


# ------------------------------------------------------------------------------------------------------------
# llm.c's random numbers, initialisation and data order

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
    np.testing.assert_allclose(rng.normal(16, 1.0), expected, rtol=0, atol=1e-6)
    assert rng.randint32(1).tolist() == [2756748748]


def test_normal_redraws_the_tail_as_llmc_does():
    # for n not a multiple of 16, llm.c draws n uniforms, transforms whole blocks of 16, then draws 16 fresh
    # uniforms for the last 16 values
    a, b = g.MersenneTwister(42), g.MersenneTwister(42)
    values = a.normal(21, 0.02)
    head = b.normal(16, 0.02)
    b.randint32(5)
    tail = b.normal(16, 0.02)
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
    np.testing.assert_array_equal(p.wte[:cfg.vocab_size].ravel(), rng.normal(cfg.vocab_size * cfg.channels, 0.02))
    np.testing.assert_array_equal(p.wpe.ravel(), rng.normal(p.wpe.size, 0.02))
    np.testing.assert_array_equal(p.qkvw[0].ravel(), rng.normal(p.qkvw[0].size, 0.02))
    assert np.all(p.wte[cfg.vocab_size:] == 0)
    for name in ("ln1w", "ln2w", "lnfw"):
        assert np.all(getattr(p, name) == 1)
    for name in ("ln1b", "qkvb", "attprojb", "ln2b", "fcb", "fcprojb", "lnfb"):
        assert np.all(getattr(p, name) == 0)
    assert abs(p.fcw.std() - 0.02) < 1e-4 and abs(p.fcprojw.std() - 0.02 / math.sqrt(12)) < 1e-4


def write_tokens(path, tokens):
    g.write_shard(str(path), np.asarray(tokens))
    return str(path)


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


# ------------------------------------------------------------------------------------------------------------
# Tokenizer and sampling

@pytest.fixture(scope="module")
def encoding():
    return g.gpt2_encoding_offline()


def test_offline_encoding_is_gpt2(encoding):
    assert encoding.encode("Hello world") == [15496, 995]
    assert encoding.n_vocab == 50257 and encoding.eot_token == g.EOT_TOKEN
    assert encoding.encode("<|endoftext|>", allowed_special="all") == [50256]


def test_tokenizer_file_round_trip(tmp_path, encoding):
    path = str(tmp_path / "tok.bin")
    g.write_tokenizer(path, encoding)
    pieces, eot = g.read_tokenizer(path)
    assert len(pieces) == 50257 and eot == 50256 and pieces[eot] == b"<|endoftext|>"
    text = "First Citizen:\nBefore we proceed any further, hear me speak. Ünïcödé ✓"
    assert b"".join(pieces[t] for t in encoding.encode(text)).decode("utf-8") == text


def test_xorshift_and_sampling():
    rng = g.XorShift(1337)
    coins = [rng.random_f32() for _ in range(1000)]
    assert all(0 <= c < 1 for c in coins) and 0.45 < np.mean(coins) < 0.55
    assert g.XorShift(1337).random_f32() == coins[0]
    logits = np.log(np.array([0.1, 0.2, 0.3, 0.4, 99.0], dtype=np.float32))  # the last column is padding
    assert [g.sample_token(logits, 4, np.float32(c)) for c in (0.05, 0.15, 0.35, 0.65, 0.999)] == [0, 1, 2, 3, 3]


def test_generate_prints_decoded_tokens(capsysbinary):
    model = g.load_model(FIXTURE_MODEL)
    model.allocate(1, 8)
    pieces = [bytes([97 + i % 26]) for i in range(model.config.vocab_size)]
    tokens = g.generate(model, pieces, 0, g.XorShift(1337), 8)
    again = g.generate(model, pieces, 0, g.XorShift(1337), 8)
    assert tokens[0] == 0 and tokens.tolist() == again.tolist()
    printed = capsysbinary.readouterr().out
    assert printed == 2 * b"".join(pieces[t] for t in tokens[1:])


# ------------------------------------------------------------------------------------------------------------
# File round trips

def test_model_file_round_trip(tmp_path):
    model = g.load_model(FIXTURE_MODEL)
    path = str(tmp_path / "model.bin")
    g.save_model(path, model)
    with open(path, "rb") as a, open(FIXTURE_MODEL, "rb") as b:
        assert a.read() == b.read()  # byte for byte


def test_bf16_checkpoint_loads_widened(tmp_path):
    model = g.load_model(FIXTURE_MODEL)
    header = np.fromfile(FIXTURE_MODEL, dtype="<i4", count=256).copy()
    header[1] = 5
    bf16 = (model.params_memory.view(np.uint32) >> 16).astype("<u2")  # truncation of float32 to bfloat16
    path = str(tmp_path / "model_bf16.bin")
    g.write_atomically(path, [header, bf16])
    widened = g.load_model(path).params_memory
    np.testing.assert_array_equal(widened.view(np.uint32), bf16.astype(np.uint32) << 16)
    assert np.abs(widened - model.params_memory).max() <= np.abs(model.params_memory).max() / 128


def test_debug_state_round_trip(tmp_path):
    model = g.load_model(FIXTURE_MODEL)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 500, (2, 3)), rng.integers(0, 500, (2, 3))
    logits = rng.standard_normal((2, 3, 500)).astype(np.float32)
    grads = rng.standard_normal(model.num_parameters).astype(np.float32)
    path = str(tmp_path / "state.bin")
    g.write_debug_state(path, x, y, logits, 1.5, grads, [3.0, 2.0])
    state = g.read_debug_state(path, model.config)
    np.testing.assert_array_equal(state.x, x)
    np.testing.assert_array_equal(state.y, y)
    np.testing.assert_array_equal(state.logits, logits)
    np.testing.assert_array_equal(state.grads, grads)
    assert state.loss == 1.5 and state.losses.tolist() == [3.0, 2.0]


def test_shard_round_trip(tmp_path):
    tokens = np.array([0, 1, 50256, 65535, 7], dtype=np.uint16)
    path = write_tokens(tmp_path / "s.bin", tokens)
    assert g.read_shard_header(path) == 5
    np.testing.assert_array_equal(np.fromfile(path, dtype="<u2", offset=1024), tokens)
    assert np.fromfile(path, dtype="<i4", count=3).tolist() == [20240520, 1, 5]


# ------------------------------------------------------------------------------------------------------------
# The command line, and the bad input it must refuse with one line and a non-zero exit

@pytest.fixture
def shards(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the tokenizer file is written to the working directory
    rng = np.random.default_rng(0)
    write_tokens(tmp_path / "train.bin", rng.integers(0, 500, 300))
    write_tokens(tmp_path / "val.bin", rng.integers(0, 500, 100))
    pieces = [b"<eot>"] + [bytes([97 + i % 26]) for i in range(499)]  # a tokenizer file for the fixture's 500 tokens
    body = np.frombuffer(b"".join(bytes([len(p)]) + p for p in pieces), dtype=np.uint8)
    g.write_atomically(g.TOKENIZER_FILE, [g.new_header(g.TOKENIZER_MAGIC, 2, 500, 0), body])
    return ["-e", FIXTURE_MODEL, "-i", str(tmp_path / "train.bin"), "-j", str(tmp_path / "val.bin")]


def run_main(argv, capsys):
    code = g.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_training_run(shards, capsys):
    code, out, err = run_main(shards + ["-b", "2", "-t", "8", "-x", "4", "-v", "2", "-s", "4", "-g", "5"], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert sum(line.startswith("val loss ") for line in lines) == 3  # steps 0, 2 and the last, 4
    steps = [line for line in lines if line.startswith("step ")]
    assert [line.split(":")[0] for line in steps] == ["step 0", "step 1", "step 2", "step 3"]
    assert "(took " in steps[0] and " tok/s | ETA " in steps[0]
    assert "generating:" in out
    losses = [float(line.split("train loss ")[1].split()[0]) for line in steps]
    assert losses[-1] < losses[0]  # learning rate 1e-4 on random tokens still moves the loss down


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


def test_refuses_bad_model_files(shards, tmp_path, capsys):
    args = shards[2:] + ["-x", "1", "-s", "0", "-b", "2", "-t", "8"]
    assert_refused(["-e", str(tmp_path / "missing.bin")] + args, capsys, "missing.bin", "cannot open")
    short = bad_copy(tmp_path, FIXTURE_MODEL, "short.bin", keep_bytes=5000)
    assert_refused(["-e", short] + args, capsys, "short.bin", "truncated", "expected 540672 bytes, found 5000")
    tiny = bad_copy(tmp_path, FIXTURE_MODEL, "tiny.bin", keep_bytes=100)
    assert_refused(["-e", tiny] + args, capsys, "tiny.bin", "truncated")
    magic = bad_copy(tmp_path, FIXTURE_MODEL, "magic.bin", {0: 1234})
    assert_refused(["-e", magic] + args, capsys, "magic.bin", "bad magic number: expected 20240326, found 1234")
    version = bad_copy(tmp_path, FIXTURE_MODEL, "version.bin", {1: 4})
    assert_refused(["-e", version] + args, capsys, "version.bin", "expected 3 or 5, found 4")
    assert_refused(["-e", "d7"] + args, capsys, "depth 7")


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


def test_refuses_too_long_sequences_and_divergence(shards, tmp_path, capsys):
    assert_refused(shards + ["-t", "33", "-s", "0"], capsys, "T=33", "maximum 32")
    model = g.load_model(FIXTURE_MODEL)
    model.params.lnfw[0] = np.inf
    path = str(tmp_path / "inf.bin")
    g.save_model(path, model)
    assert_refused(["-e", path] + shards[2:] + ["-s", "0", "-v", "0", "-b", "2", "-t", "8"], capsys,
                   "loss is nan at step 0")


def test_refuses_bad_tokenizer_and_debug_state(tmp_path, encoding):
    path = str(tmp_path / "tok.bin")
    g.write_tokenizer(path, encoding)
    with pytest.raises(g.GPT2Error, match="truncated: 50000 of 50257 tokens"):
        size = 1024 + sum(1 + len(encoding.decode_single_token_bytes(i)) for i in range(50000))
        g.read_tokenizer(bad_copy(tmp_path, path, "short_tok.bin", keep_bytes=size))
    with pytest.raises(g.GPT2Error, match="bad magic number: expected 20240328"):
        g.read_tokenizer(bad_copy(tmp_path, path, "magic_tok.bin", {0: 7}))
    config = g.load_model(FIXTURE_MODEL).config
    state = os.path.join(HERE, "data", "fixtures", "ref_debug_state.bin")
    with pytest.raises(g.GPT2Error, match="truncated"):
        g.read_debug_state(bad_copy(tmp_path, state, "short_state.bin", keep_bytes=4096), config)
    with pytest.raises(g.GPT2Error, match="expected 2, found 3"):
        g.read_debug_state(bad_copy(tmp_path, state, "version_state.bin", {1: 3}), config)


def test_bad_flags_exit_with_one_line(capsys):
    for argv in (["-b", "0"], ["-t", "-1"], ["-x", "-2"], ["-g", "65"], ["--no-such-flag"], ["-l", "-1"],
                 ["--beta1", "1.5"], ["-q", "2"], ["-m", "0"], ["-k", "steep"], ["-n", "5"], ["-b", "3", "-d", "100"]):
        with pytest.raises(SystemExit) as exit_info:
            g.parse_args(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.endswith("(see train_gpt2.py --help)\n") and err.count("\n") == 1, err


def test_no_network_tells_how_to_give_the_text(tmp_path, monkeypatch, capsys):
    def offline(*args, **kwargs):
        raise OSError("no network")
    monkeypatch.setattr(g.urllib.request, "urlopen", offline)
    with pytest.raises(g.GPT2Error, match="cannot download Tiny Shakespeare .*--input PATH"):
        g.prepare_tinyshakespeare(str(tmp_path / "ts"))


def test_error_is_one_line_without_traceback(tmp_path):
    result = subprocess.run([sys.executable, os.path.join(HERE, "train_gpt2.py"), "-e", "missing.bin"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert result.stderr == "error: missing.bin: cannot open: No such file or directory\n"


# ------------------------------------------------------------------------------------------------------------
# The full trainer: schedules, accumulation, clipping, checkpoints and resume, logs

def test_learning_rate_schedules():
    lr, warmup, frac, steps = 1e-3, 10, 0.1, 100
    schedule = {name: [g.learning_rate(name, s, lr, warmup, frac, steps) for s in range(steps + 1)]
                for name in g.SCHEDULES}
    for name in ("cosine", "linear", "wsd"):
        np.testing.assert_allclose(schedule[name][:warmup], lr * np.arange(1, warmup + 1) / warmup)
    assert schedule["constant"] == [lr] * (steps + 1)
    decay = (np.arange(warmup, steps + 1) - warmup) / (steps - warmup)
    np.testing.assert_allclose(schedule["cosine"][warmup:],
                               lr * frac + 0.5 * (1 + np.cos(np.pi * decay)) * lr * (1 - frac))
    np.testing.assert_allclose(schedule["linear"][warmup:], lr - decay * lr * (1 - frac))
    np.testing.assert_allclose(schedule["wsd"][warmup:80], lr)  # stable until 80% of the steps
    wsd_decay = (np.arange(80, steps + 1) - 80) / 20
    np.testing.assert_allclose(schedule["wsd"][80:], lr * frac + (1 - np.sqrt(wsd_decay)) * lr * (1 - frac))
    assert schedule["cosine"][-1] == pytest.approx(lr * frac)
    # llm.c's CPU demo: cosine with no warmup and final fraction 1 is constant
    assert {g.learning_rate("cosine", s, lr, 0, 1.0, steps) for s in range(steps)} == {lr}


def test_accumulation_equals_one_larger_batch():
    model = g.load_model(FIXTURE_MODEL)
    rng = np.random.default_rng(11)
    x, y = rng.integers(0, 500, (6, 16), dtype=np.int32), rng.integers(0, 500, (6, 16), dtype=np.int32)
    model.allocate(6, 16)
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
    rng = np.random.default_rng(12)
    model.grads_memory[:] = rng.standard_normal(model.num_parameters)
    assert g.gradient_norm(model) == pytest.approx(np.linalg.norm(model.grads_memory), rel=1e-12)
    clipped = g.GPT2(model.config, model.params_memory.copy())
    clipped.grads_memory[:] = model.grads_memory * 0.25
    g.adamw_update(model, 1e-3, 0.9, 0.95, 1e-8, 0.1, 1, grad_scale=0.25)  # clipping scales the gradients
    g.adamw_update(clipped, 1e-3, 0.9, 0.95, 1e-8, 0.1, 1)
    np.testing.assert_allclose(model.params_memory, clipped.params_memory, rtol=1e-12)
    np.testing.assert_allclose(model.m_memory, clipped.m_memory, rtol=1e-12)


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    """Three small training shards and a validation shard for the fixture's 500-token vocabulary."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(13)
    for i in range(3):
        write_tokens(tmp_path / f"train_{i}.bin", rng.integers(0, 500, 400 + 37 * i))
    write_tokens(tmp_path / "val.bin", rng.integers(0, 500, 300))
    return tmp_path


def trainer_args(run_dir, out, *extra):
    return ["-e", FIXTURE_MODEL, "-i", str(run_dir / "train_*.bin"), "-j", str(run_dir / "val.bin"), "-o", str(out),
            "-b", "2", "-t", "8", "-d", "32", "-k", "cosine", "-u", "3", "-q", "0.1", "-c", "0.1", "--beta2", "0.95",
            "--grad-clip", "1.0", "-s", "0", "-v", "5", *extra]


def read_log(out):
    return (out / "main.log").read_text()


def test_log_lines_parse(run_dir, capsys):
    assert g.main(trainer_args(run_dir, run_dir / "out", "-x", "12")) == 0
    lines = read_log(run_dir / "out").splitlines()
    train = [line for line in lines if " trl:" in line]
    val = [line for line in lines if " tel:" in line]
    assert len(train) == 12 and [line.split()[0] for line in val] == ["s:0", "s:5", "s:10", "s:12"]
    for line in train:
        step, loss, lr, norm = line.split()
        assert step.startswith("s:") and loss.startswith("trl:") and lr.startswith("lr:") and norm.startswith("norm:")
        float(loss[4:]), float(lr[3:]), float(norm[5:])
    sys.path.insert(0, os.path.join(HERE, "dev"))
    import vislog
    train_losses, val_losses = vislog.parse_log(str(run_dir / "out" / "main.log"))
    assert sorted(train_losses) == list(range(12)) and sorted(val_losses) == [0, 5, 10, 12]
    pytest.importorskip("matplotlib")
    assert vislog.main([str(run_dir / "out" / "main.log"), "-o", str(run_dir / "loss.png")]) == 0
    assert (run_dir / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resume_after_a_kill_is_bit_identical(run_dir):
    """A straight run, and the same run killed (SIGKILL) mid-way and resumed: the same losses and logs."""
    script = os.path.join(HERE, "train_gpt2.py")
    args = trainer_args(run_dir, run_dir / "killed", "-x", "60", "-n", "5", "-nk", "3")
    # one step first, so that every kernel is compiled and cached before the runs that are compared
    subprocess.run([sys.executable, script] + trainer_args(run_dir, run_dir / "warm", "-x", "1"), cwd=run_dir,
                   capture_output=True, timeout=600, check=True)
    process = subprocess.Popen([sys.executable, script] + args, stdout=subprocess.DEVNULL, cwd=run_dir)
    done = run_dir / "killed" / "DONE_00000020"
    while not done.exists() and process.poll() is None:
        time.sleep(0.002)
    process.kill()
    process.wait()
    latest = g.latest_checkpoint(str(run_dir / "killed"))
    assert 20 <= latest < 60, "the run was to be killed before its end"
    kept = sorted(name for name in os.listdir(run_dir / "killed") if name.startswith("DONE_"))
    assert len(kept) <= 3  # -nk 3
    resumed = subprocess.run([sys.executable, script] + args + ["-y", "1"], cwd=run_dir, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from the checkpoint of step {latest}" in resumed.stdout
    straight = subprocess.run([sys.executable, script] + trainer_args(run_dir, run_dir / "straight", "-x", "60"),
                              cwd=run_dir, capture_output=True, text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr

    def losses(stdout):
        return [line.split(" (took")[0] for line in stdout.splitlines() if line.startswith("step ")]

    assert losses(resumed.stdout) == losses(straight.stdout)[latest:]
    assert read_log(run_dir / "killed") == read_log(run_dir / "straight")


def test_resume_refuses_what_does_not_fit(run_dir, capsys):
    out = run_dir / "out"
    assert g.main(trainer_args(run_dir, out, "-x", "6", "-n", "3")) == 0
    capsys.readouterr()
    assert_refused(trainer_args(run_dir, out, "-x", "6", "-n", "3", "-y", "1", "-b", "4", "-l", "3e-4"), capsys,
                   "state_00000006.bin: cannot resume with other settings", "-b 2 there, 4 now",
                   "-l 9.999999747378752e-05 there, 0.0003 now")
    assert_refused(trainer_args(run_dir, out, "-x", "6", "-n", "3", "-y", "1")[2:] + ["-e", "d6"], capsys,
                   "model_00000006.bin: cannot resume with another model", "num_layers 2 there, 6 from -e d6")
    state = out / "state_00000006.bin"
    state.write_bytes(state.read_bytes()[:-100])
    assert_refused(trainer_args(run_dir, out, "-x", "6", "-n", "3", "-y", "1"), capsys, "state_00000006.bin",
                   "truncated")
    (out / "DONE_00000006").unlink()  # an incomplete checkpoint is never resumed: the one before it is
    code, out_text, err = run_main(trainer_args(run_dir, out, "-x", "6", "-n", "3", "-y", "1"), capsys)
    assert code == 0 and "resumed from the checkpoint of step 3" in out_text


def test_overfit_a_single_batch(run_dir, capsys):
    code, out, err = run_main(trainer_args(run_dir, run_dir / "out", "-x", "30", "-a", "1", "-l", "1e-3", "-u", "0",
                                           "-q", "1.0", "-c", "0"), capsys)
    assert code == 0, err
    losses = [float(line.split("train loss ")[1].split()[0]) for line in out.splitlines() if line.startswith("step ")]
    assert losses[-1] < 0.5 * losses[0]


def test_total_batch_size_and_default_steps(run_dir, capsys):
    with pytest.raises(SystemExit):
        g.parse_args(["-b", "2", "-t", "8", "-d", "40", "-s", "0"])  # not a multiple of B*T = 16
    assert "must be a positive multiple of B*T = 16" in capsys.readouterr().err
    code, out, err = run_main(trainer_args(run_dir, run_dir / "out")[:-4] + ["-s", "0", "-v", "0"], capsys)
    assert code == 0, err
    # no -x with -d 32: one epoch, 1311 training tokens // 32 = 40 steps of 2 micro-batches
    assert "40 steps of 32 tokens = 2 micro-batch(es)" in out
    assert sum(line.startswith("step ") for line in out.splitlines()) == 40
