"""
Section 2 of train_gpt2.py, the model: the whole model's gradients against finite differences in float64, gradient
accumulation, the KV cache against the full recomputation, what a model that does not train holds, llm.c's model
file (and every bad one refused in one line), and the shapes and initialisation of a model from scratch (llm.c's
-e d12, gpt2:d24, gpt3:c768), to the bit.
"""

import math

import numpy as np
import pytest

import train_gpt2 as tg
from llmc.files import GPT2Error, write_atomically
from llmc.rand import MersenneTwister
from tests.helpers import (FIXTURE_MODEL, assert_gradient, assert_refused, bad_copy, numerical_gradient,
                           random_model, split_parameters, tiny_config)


@pytest.mark.parametrize("blocks", [(128, 512), (2, 3)])
def test_whole_model_gradients(monkeypatch, blocks):
    # with small attention blocks too: the training buffers that activation_shapes sizes hold every block
    monkeypatch.setattr(tg, "SMALL_BLOCK", blocks[0])
    monkeypatch.setattr(tg, "LARGE_BLOCK", blocks[1])
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
    monkeypatch.setattr(tg, "SMALL_BLOCK", 2)
    monkeypatch.setattr(tg, "LARGE_BLOCK", 3)
    config = tiny_config()
    rng = np.random.default_rng(14)
    B, T = 2, config.max_seq_len
    x = rng.integers(0, config.vocab_size, (B, T), dtype=np.int32)
    full_model = random_model(config, dtype)
    full_model.allocate(B, T)
    full_model.forward(x)
    full = full_model.activations(B, T).logits
    model = tg.GPT2(config, full_model.params_memory)
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
    with pytest.raises(GPT2Error, match="context of 9 positions is longer than the model's maximum 8"):
        model.allocate(1, 1, context=T + 1)


def test_a_model_that_does_not_train_keeps_one_layer_of_activations():
    # memory to generate: the parameters, the KV cache and one layer's activations, whatever the depth
    config = tiny_config()
    deep = tg.GPT2Config(**{**vars(config), "num_layers": 3 * config.num_layers})
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


def test_accumulation_equals_one_larger_batch():
    model = tg.read_model_file(FIXTURE_MODEL)
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


def test_model_file_round_trip(tmp_path):
    model = tg.read_model_file(FIXTURE_MODEL)
    path = str(tmp_path / "model.bin")
    tg.write_model_file(path, model)
    with open(path, "rb") as a, open(FIXTURE_MODEL, "rb") as b:
        assert a.read() == b.read()  # byte for byte


def test_bf16_checkpoint_loads_widened(tmp_path):
    model = tg.read_model_file(FIXTURE_MODEL)
    header = np.fromfile(FIXTURE_MODEL, dtype="<i4", count=256).copy()
    header[1] = 5
    bf16 = (model.params_memory.view(np.uint32) >> 16).astype("<u2")  # truncation of float32 to bfloat16
    path = str(tmp_path / "model_bf16.bin")
    write_atomically(path, [header, bf16])
    widened = tg.read_model_file(path).params_memory
    np.testing.assert_array_equal(widened.view(np.uint32), bf16.astype(np.uint32) << 16)
    assert np.abs(widened - model.params_memory).max() <= np.abs(model.params_memory).max() / 128


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


def test_descriptors_with_other_digits_are_refused(shards, capsys):
    for descriptor in ("d\u0661\u0662", "d\u00b2", "gpt3:c\uff17\uff16\uff18"):  # Arabic-Indic, superscript, fullwidth
        assert_refused(shards[2:] + ["-e", descriptor, "-s", "0"], capsys, "unknown model descriptor")


def normal(rng, n, std):
    """llm.c's normal_ of n values."""
    return rng.fill_normal(np.empty(n, dtype=np.float32), std)


def test_descriptors():
    assert vars(tg.config_from_descriptor("d12")) == vars(tg.config_from_descriptor("gpt2:d12")) == dict(
        max_seq_len=1024, vocab_size=50257, padded_vocab_size=50304, num_layers=12, num_heads=12, channels=768)
    assert vars(tg.config_from_descriptor("gpt3:c768")) == dict(
        max_seq_len=2048, vocab_size=50257, padded_vocab_size=50304, num_layers=12, num_heads=12, channels=768)
    assert tg.config_from_descriptor("d6").channels == 384
    for bad in ("d7", "x12", "gpt3:c100", "gpt2:c768", "d"):
        with pytest.raises(GPT2Error):
            tg.config_from_descriptor(bad)


def test_init_from_descriptor_follows_llmc():
    model = tg.build_from_random(tg.config_from_descriptor("d6"))
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
    rng = MersenneTwister(42)  # llm.c draws wte (its V real rows), wpe, then per layer qkvw, attprojw, fcw, fcprojw
    np.testing.assert_array_equal(p.wte[:cfg.vocab_size].ravel(), normal(rng, cfg.vocab_size * cfg.channels, 0.02))
    np.testing.assert_array_equal(p.wpe.ravel(), normal(rng, p.wpe.size, 0.02))
    np.testing.assert_array_equal(p.qkvw[0].ravel(), normal(rng, p.qkvw[0].size, 0.02))
    assert np.all(p.wte[cfg.vocab_size:] == 0)
    for name in ("ln1w", "ln2w", "lnfw"):
        assert np.all(getattr(p, name) == 1)
    for name in ("ln1b", "qkvb", "attprojb", "ln2b", "fcb", "fcprojb", "lnfb"):
        assert np.all(getattr(p, name) == 0)
    assert abs(p.fcw.std() - 0.02) < 1e-4 and abs(p.fcprojw.std() - 0.02 / math.sqrt(12)) < 1e-4
