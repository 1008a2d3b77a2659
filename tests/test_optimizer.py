"""
Section 3 of train_gpt2.py, the optimizer: AdamW against llm.c's update written out, the gradient norm and
clipping, and the learning rate schedules (llm.c's llmc/schedulers.h).
"""

import math

import numpy as np
import pytest

import train_gpt2 as tg
from llmc import cli
from tests.helpers import random_model, tiny_config


def test_adamw_matches_llmc_update():
    model = random_model(tiny_config(), np.float64)
    rng = np.random.default_rng(10)
    model.allocate(1, 1, training=True)
    optimizer = tg.AdamW(model, 0.9, 0.95, 1e-8, 0.1)
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


def test_gradient_norm_and_clipping():
    model = random_model(tiny_config(), np.float64)
    model.allocate(1, 1, training=True)
    rng = np.random.default_rng(12)
    model.grads_memory[:] = rng.standard_normal(model.num_parameters)
    assert tg.gradient_norm(model.grads_memory) == pytest.approx(np.linalg.norm(model.grads_memory), rel=1e-12)
    clipped = tg.GPT2(model.config, model.params_memory.copy())
    clipped.allocate(1, 1, training=True)
    clipped.grads_memory[:] = model.grads_memory * 0.25
    optimizer, clipped_optimizer = tg.AdamW(model, 0.9, 0.95, 1e-8, 0.1), tg.AdamW(clipped, 0.9, 0.95, 1e-8, 0.1)
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
    clipped_optimizer, scaled_optimizer = tg.AdamW(clipped), tg.AdamW(scaled)
    loss, norm = tg.train_step(clipped, clipped_optimizer, lambda: (x, y), 1, 1e-3, 0, grad_clip=0.5)
    assert norm > 0.5 and loss == pytest.approx(scaled.forward(x, y), rel=1e-12)
    scaled.zero_grad()
    scaled.backward()
    scaled_optimizer.update(1e-3, 1, grad_scale=0.5 / norm)
    np.testing.assert_array_equal(clipped.params_memory, scaled.params_memory)


def test_learning_rate_schedules():
    lr, warmup, frac, steps = 1e-3, 10, 0.1, 100
    schedule = {name: [tg.learning_rate(name, s, lr, warmup, frac, steps) for s in range(steps + 1)]
                for name in cli.SCHEDULES}
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
    assert {tg.learning_rate("cosine", s, lr, 0, 1.0, steps) for s in range(steps)} == {lr}


def test_the_gradient_norm_of_zero_1_slices_adds_up_their_squares():
    # with ZeRO-1 each process holds a slice of the gradients: the sums of squares of the slices add up over the
    # processes (sum_over_slices) to the whole norm's square
    grads = np.random.default_rng(16).standard_normal(1000)
    slices = [(0, 334), (334, 668), (668, 1000)]

    class Slice:  # what process `rank` of 3 sees of the others: their sums of squares, added in rank order
        def __init__(self, rank):
            self.rank = rank

        def sum_over_slices(self, value):
            squares = [float(tg.sum_of_squares(grads[a:b])) for a, b in slices]
            assert value == squares[self.rank]
            return sum(squares)

    whole = tg.gradient_norm(grads)
    assert whole == pytest.approx(np.linalg.norm(grads), rel=1e-12)
    assert [tg.gradient_norm(grads[a:b], Slice(rank)) for rank, (a, b) in enumerate(slices)] == \
        [pytest.approx(whole, rel=1e-12)] * 3
