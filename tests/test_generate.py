"""
Section 5 of train_gpt2.py, generating text: the draw (temperature, top-k, top-p) against distributions computed
here, greedy generation with the KV cache against a float64 full recomputation, and the trainer's samples against
llm.c's way of drawing them. (sample_gpt2.py's command line is in test_sample_gpt2.py.)
"""

import numba
import numpy as np
import pytest

import train_gpt2 as tg
from llmc.rand import XorShift
from llmc.tokenizer import TextStream
from tests.helpers import FIXTURE_MODEL, assert_refused, random_model


# a small vocabulary, two padded rows whose large logits the draw must never see, and a tie (tokens 1 and 5)
LOGITS = np.array([2.0, 1.0, 0.5, 0.0, -1.0, 1.0, 50.0, 50.0], dtype=np.float32)


V = 6


def expected_distribution(logits, temperature, top_k, top_p):
    """Written out in float64, apart from the sampler: softmax(logits / temperature), the top_k most likely (equal
    ones by id), then of those the fewest most likely that reach top_p of their mass, rescaled."""
    if temperature == 0:
        return np.eye(len(logits))[np.argmax(logits)]
    probs = np.exp(logits / temperature - np.max(logits / temperature))
    probs /= probs.sum()
    order = sorted(range(len(probs)), key=lambda i: (-probs[i], i))
    kept = order[:top_k] if top_k else order
    mass = sum(probs[i] for i in kept)
    count = next(n for n in range(1, len(kept) + 1) if sum(probs[i] for i in kept[:n]) >= top_p * mass - 1e-12)
    result = np.zeros_like(probs)
    result[kept[:count]] = probs[kept[:count]]
    return result / result.sum()


@pytest.mark.parametrize("temperature, top_k, top_p, support", [
    (1.0, 0, 1.0, 6), (0.5, 0, 1.0, 6), (2.0, 0, 1.0, 6), (0.0, 0, 1.0, 1),
    (1.0, 3, 1.0, 3), (1.0, 2, 1.0, 2),   # top-2 takes token 1 of the tie 1, 5
    (1.0, 0, 0.8, 3), (1.0, 0, 0.3, 1),   # 0.467 + 0.172 + 0.172 >= 0.8; 0.467 >= 0.3
    (0.7, 4, 0.9, 3), (1.5, 1, 1.0, 1), (1.0, 100, 1.0, 6)])
def test_the_draw_follows_temperature_top_k_and_top_p(temperature, top_k, top_p, support):
    # the draw is a function of the coin: coins evenly spread over [0, 1) give each token a share of them equal
    # to its probability, to 1/N
    N = 20000
    coins = ((np.arange(N) + 0.5) / N).astype(np.float32)
    drawn = [tg.sample_token(LOGITS, V, coin, temperature, top_k, top_p) for coin in coins]
    shares = np.bincount(drawn, minlength=len(LOGITS)) / N
    expected = expected_distribution(LOGITS[:V].astype(np.float64), temperature, top_k, top_p)
    assert np.count_nonzero(expected) == support
    np.testing.assert_allclose(shares[:V], expected, atol=2 / N)
    assert shares[V:].sum() == 0  # never a padded token


# ties across the top-k boundary in a larger vocabulary: 9 tokens share the largest logit, 7 the next
TIES = np.array([0.0] * 17 + [3.0, 1.0, 3.0, 1.0, 3.0] + [1.0] * 5 + [3.0] * 6 + [2.5] * 5, dtype=np.float32)


@pytest.mark.parametrize("top_k, top_p", [(4, 1.0), (9, 1.0), (12, 1.0), (0, 0.3), (0, 0.95), (11, 0.9)])
def test_equal_probabilities_are_taken_by_token_id(top_k, top_p):
    N, V = 20000, len(TIES)
    coins = ((np.arange(N) + 0.5) / N).astype(np.float32)
    shares = np.bincount([tg.sample_token(TIES, V, coin, 1.0, top_k, top_p) for coin in coins], minlength=V) / N
    np.testing.assert_allclose(shares, expected_distribution(TIES.astype(np.float64), 1.0, top_k, top_p), atol=2 / N)


def test_the_draw_keeps_llmc_s_comparison_and_never_returns_a_filtered_token():
    assert tg.sample_token(np.zeros(2, np.float32), 2, np.float32(0.5)) == 1  # llm.c: coin < cdf, not <=
    # a coin above the float32 sum of the kept probabilities: the last kept token, not token V-1
    logits = np.array([0.79492515, -3.48639035, -0.87693375, -0.29719201, -2.84974957, 3.76467657, -1.08154678,
                       2.77994346, -1.32868421, -0.45994231], dtype=np.float32)
    probs = np.exp(logits - logits.max())
    kept, total = tg.keep_most_likely(probs / probs.sum(), 3, 1.0), np.float32(0)
    for p in kept:
        total += p
    coin = np.float32(1 - 2**-24)
    assert total < coin and set(np.nonzero(kept)[0]) == {5, 7, 0}  # the sum falls short of the coin
    assert tg.sample_token(logits, 10, coin, 1.0, 3, 1.0) == 7  # the last of the three, in token order
    assert tg.sample_token(logits, 10, np.float32(0.5), 1e-46) == 5  # a temperature float32 rounds to 0: greedy


def test_generate_checks_its_model_and_keeps_numba_s_threads():
    model = random_model(tg.GPT2Config(max_seq_len=16, vocab_size=11, padded_vocab_size=16, num_layers=1,
                                       num_heads=2, channels=8), np.float32)
    model.allocate(1, 3, context=6)
    for prompt, count in (([1, 2, 3, 4], 1), ([1, 2], 6), ([], 1)):
        with pytest.raises(ValueError, match="do not fit the"):
            next(tg.generate(model, prompt, count, XorShift()))
    threads = numba.get_num_threads()
    tokens = tg.generate(model, [1, 2], 5, XorShift())
    for n, _ in enumerate(tokens):
        assert numba.get_num_threads() == threads  # between tokens too
        if n == 2:
            break
    with pytest.raises(ValueError, match="shorter than T=3"):
        model.allocate(1, 3, context=2)
    with pytest.raises(ValueError, match="no KV cache"):
        model.allocate(1, 3, training=True, context=6)


def greedy_reference(params, config, prompt, num_tokens):
    """Greedy generation without a cache, in float64: the whole sequence runs again for each new token."""
    model = tg.GPT2(config, params.astype(np.float64))
    model.allocate(1, len(prompt) + num_tokens - 1)  # the last token never runs
    tokens, margins = list(prompt), []
    for _ in range(num_tokens):
        model.forward(np.array([tokens], dtype=np.int32))
        logits = model.activations(1, len(tokens)).logits[0, -1, :config.vocab_size]
        top_two = np.sort(logits)[-2:]
        margins.append(top_two[1] - top_two[0])
        tokens.append(int(np.argmax(logits)))
    return tokens[len(prompt):], min(margins)


@pytest.mark.parametrize("prompt", [[5, 17, 42, 8], [96], list(range(0, 90, 3))])
def test_greedy_generation_matches_a_float64_full_recomputation(prompt):
    config = tg.GPT2Config(max_seq_len=40, vocab_size=97, padded_vocab_size=128, num_layers=3, num_heads=4,
                           channels=32)
    model = random_model(config, np.float32, seed=3)
    num_tokens = config.max_seq_len - len(prompt) + 1  # the whole context
    expected, margin = greedy_reference(model.params_memory, config, prompt, num_tokens)
    assert margin > 1e-3  # float32's errors (1e-5 here) cannot swap the two most likely tokens
    model.allocate(1, len(prompt), context=config.max_seq_len)
    assert list(tg.generate(model, prompt, num_tokens, XorShift(), temperature=0.0)) == expected


def test_trainer_samples_are_llmc_s():
    # llm.c's trainer runs all the positions again for each token, then draws with the next xorshift coin: the
    # same tokens as from the KV cache
    model = tg.read_model_file(FIXTURE_MODEL)
    num_tokens, eot = 32, 0  # the whole context
    model.allocate(1, num_tokens)
    tokens, rng = [eot], XorShift(1337)
    for t in range(1, num_tokens):
        model.forward(np.array([tokens], dtype=np.int32))
        logits = model.activations(1, t).logits[0, t - 1]
        tokens.append(int(tg.sample_token(logits, model.config.vocab_size, rng.random_f32())))
    sampler = tg.GPT2(model.config, model.params_memory)
    sampler.allocate(1, 1, context=num_tokens)
    assert list(tg.generate(sampler, [eot], num_tokens - 1, XorShift(1337))) == tokens[1:]


def test_generate_prints_decoded_tokens(capsys):
    model = tg.read_model_file(FIXTURE_MODEL)
    model.allocate(1, 1, context=8)  # to generate, not to train: no gradients
    pieces = [bytes([97 + i % 26]) for i in range(model.config.vocab_size)]
    tokens = list(tg.generate(model, [0], 7, XorShift(1337)))
    assert tokens == list(tg.generate(model, [0], 7, XorShift(1337)))
    stream = TextStream(pieces)
    for token in tokens:
        stream.write(token)
    stream.end()
    assert capsys.readouterr().out == b"".join(pieces[t] for t in tokens).decode()


def test_trainer_samples_up_to_the_model_s_context(shards, capsys):
    assert_refused(shards + ["-x", "1", "-t", "8", "-g", "33"], capsys,
                   "-g 33 tokens per sample is more than the model's context of 32")
    code, out, err = tg.main(shards + ["-x", "1", "-t", "8", "-g", "32"]), *capsys.readouterr()
    assert code == 0 and "generating:" in out, err
