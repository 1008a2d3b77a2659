"""
Generation: the draw (temperature, top-k, top-p) against distributions computed here, greedy generation with the
KV cache against a float64 full recomputation, the trainer's samples against llm.c's way of drawing them, and
sample_gpt2.py's command line.
"""

import subprocess
import sys

import numba
import numpy as np
import pytest

import sample_gpt2
import train_gpt2 as g
from conftest import FIXTURE_MODEL, HERE, assert_refused, random_model

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
    drawn = [g.sample_token(LOGITS, V, coin, temperature, top_k, top_p) for coin in coins]
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
    shares = np.bincount([g.sample_token(TIES, V, coin, 1.0, top_k, top_p) for coin in coins], minlength=V) / N
    np.testing.assert_allclose(shares, expected_distribution(TIES.astype(np.float64), 1.0, top_k, top_p), atol=2 / N)


def test_the_draw_keeps_llmc_s_comparison_and_never_returns_a_filtered_token():
    assert g.sample_token(np.zeros(2, np.float32), 2, np.float32(0.5)) == 1  # llm.c: coin < cdf, not <=
    # a coin above the float32 sum of the kept probabilities: the last kept token, not token V-1
    logits = np.array([0.79492515, -3.48639035, -0.87693375, -0.29719201, -2.84974957, 3.76467657, -1.08154678,
                       2.77994346, -1.32868421, -0.45994231], dtype=np.float32)
    probs = np.exp(logits - logits.max())
    kept, total = g.keep_most_likely(probs / probs.sum(), 3, 1.0), np.float32(0)
    for p in kept:
        total += p
    coin = np.float32(1 - 2**-24)
    assert total < coin and set(np.nonzero(kept)[0]) == {5, 7, 0}  # the sum falls short of the coin
    assert g.sample_token(logits, 10, coin, 1.0, 3, 1.0) == 7  # the last of the three, in token order
    assert g.sample_token(logits, 10, np.float32(0.5), 1e-46) == 5  # a temperature float32 rounds to 0: greedy


def test_printable_drops_control_characters_only():
    text = "a\u00a0b\u200dc\u3000d\u00ad\u2028e\t\n"
    assert g.printable(text) == text
    assert g.printable("x\x1b[31my\x07\x00\x85z") == "x[31myz"


def test_generate_checks_its_model_and_keeps_numba_s_threads():
    model = random_model(g.GPT2Config(max_seq_len=16, vocab_size=11, padded_vocab_size=16, num_layers=1,
                                      num_heads=2, channels=8), np.float32)
    model.allocate(1, 3, context=6)
    for prompt, count in (([1, 2, 3, 4], 1), ([1, 2], 6), ([], 1)):
        with pytest.raises(ValueError, match="do not fit the"):
            next(g.generate(model, prompt, count, g.XorShift()))
    threads = numba.get_num_threads()
    tokens = g.generate(model, [1, 2], 5, g.XorShift())
    for n, _ in enumerate(tokens):
        assert numba.get_num_threads() == threads  # between tokens too
        if n == 2:
            break
    with pytest.raises(ValueError, match="shorter than T=3"):
        model.allocate(1, 3, context=2)
    with pytest.raises(ValueError, match="no KV cache"):
        model.allocate(1, 3, training=True, context=6)


def test_trainer_samples_up_to_the_model_s_context(shards, capsys):
    assert_refused(shards + ["-x", "1", "-t", "8", "-g", "33"], capsys, "-g 33 tokens per sample is more than the model's "
                                                             "context of 32")
    code, out, err = g.main(shards + ["-x", "1", "-t", "8", "-g", "32"]), *capsys.readouterr()
    assert code == 0 and "generating:" in out, err


def greedy_reference(params, config, prompt, num_tokens):
    """Greedy generation without a cache, in float64: the whole sequence runs again for each new token."""
    model = g.GPT2(config, params.astype(np.float64))
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
    config = g.GPT2Config(max_seq_len=40, vocab_size=97, padded_vocab_size=128, num_layers=3, num_heads=4,
                          channels=32)
    model = random_model(config, np.float32, seed=3)
    num_tokens = config.max_seq_len - len(prompt) + 1  # the whole context
    expected, margin = greedy_reference(model.params_memory, config, prompt, num_tokens)
    assert margin > 1e-3  # float32's errors (1e-5 here) cannot swap the two most likely tokens
    model.allocate(1, len(prompt), context=config.max_seq_len)
    assert list(g.generate(model, prompt, num_tokens, g.XorShift(), temperature=0.0)) == expected


def test_trainer_samples_are_llmc_s():
    # llm.c's trainer runs all the positions again for each token, then draws with the next xorshift coin: the
    # same tokens as from the KV cache
    model = g.load_model(FIXTURE_MODEL)
    num_tokens, eot = 32, 0  # the whole context
    model.allocate(1, num_tokens)
    tokens, rng = [eot], g.XorShift(1337)
    for t in range(1, num_tokens):
        model.forward(np.array([tokens], dtype=np.int32))
        logits = model.activations(1, t).logits[0, t - 1]
        tokens.append(int(g.sample_token(logits, model.config.vocab_size, rng.random_f32())))
    sampler = g.GPT2(model.config, model.params_memory)
    sampler.allocate(1, 1, context=num_tokens)
    assert list(g.generate(sampler, [eot], num_tokens - 1, g.XorShift(1337))) == tokens[1:]


# sample_gpt2.py

@pytest.fixture(scope="module")
def gpt2_vocab_model(tmp_path_factory):
    """A small llm.c model file with GPT-2's vocabulary, for the command line (which encodes text)."""
    config = g.GPT2Config(max_seq_len=24, vocab_size=50257, padded_vocab_size=50304, num_layers=2, num_heads=2,
                          channels=16)
    path = tmp_path_factory.mktemp("model") / "model.bin"
    g.save_model(str(path), random_model(config, np.float32, seed=5))
    return str(path)


@pytest.fixture(autouse=True)
def offline_encoding(monkeypatch, encoding):
    monkeypatch.setattr(g, "gpt2_encoding", lambda: encoding)


def run_sample(argv, capsys):
    code = sample_gpt2.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_sample_streams_the_prompt_and_its_continuation(gpt2_vocab_model, encoding, capsys):
    code, out, err = run_sample(["-e", gpt2_vocab_model, "--prompt", "Hello, I am", "-g", "12"], capsys)
    assert code == 0, err
    assert out.startswith("Hello, I am") and out.endswith("\n")
    code, ids, _ = run_sample(["-e", gpt2_vocab_model, "--prompt", "Hello, I am", "-g", "12", "--ids"], capsys)
    new = [int(i) for i in ids.split()]
    assert len(new) == 12 and ids.count("\n") == 1
    assert out == "Hello, I am" + g.printable(encoding.decode_bytes(new).decode(errors="replace")) + "\n"
    assert "prompt: 4 tokens in " in err and "then 11 tokens at " in err and " ms/token, " in err
    assert " tokens/s" in err


def test_sample_flags_choose_the_draw(gpt2_vocab_model, capsys):
    model = g.load_model(gpt2_vocab_model)
    prompt = [15496, 11, 314, 716]  # "Hello, I am"
    model.allocate(1, 4, context=4 + 9)

    def ids(*flags):
        code, out, err = run_sample(["-e", gpt2_vocab_model, "--prompt", "Hello, I am", "-g", "10", "--ids", *flags],
                                    capsys)
        assert code == 0, err
        return [[int(i) for i in line.split()] for line in out.split("---\n")]

    def generated(rng, **settings):
        return list(g.generate(model, prompt, 10, rng, **settings))

    assert ids("--temperature", "0") == [generated(g.XorShift(), temperature=0.0)]
    assert ids("--seed", "7", "--top-k", "5", "--temperature", "0.8") == [
        generated(g.XorShift(7), top_k=5, temperature=0.8)]
    rng = g.XorShift(3)  # samples follow one another from one generator
    assert ids("--seed", "3", "--top-p", "0.9", "--num-samples", "2") == [generated(rng, top_p=0.9),
                                                                          generated(rng, top_p=0.9)]
    default = ids()
    assert default == [generated(g.XorShift(1337))] and default != ids("--seed", "1")


def test_sample_prompts(gpt2_vocab_model, tmp_path, capsys):
    model = g.load_model(gpt2_vocab_model)
    model.allocate(1, 1, context=6)
    from_eot = list(g.generate(model, [g.EOT_TOKEN], 6, g.XorShift()))
    code, out, err = run_sample(["-e", gpt2_vocab_model, "-g", "6", "--ids"], capsys)
    assert code == 0 and [int(i) for i in out.split()] == from_eot  # an empty prompt starts from EOT, as llm.c
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text("caf\u00e9 au lait\n", encoding="utf-8")
    code, out, err = run_sample(["-e", gpt2_vocab_model, "--prompt-file", str(prompt_file), "-g", "3"], capsys)
    assert code == 0 and out.startswith("caf\u00e9 au lait\n")
    code, same, err = run_sample(["-e", gpt2_vocab_model, "--prompt", "caf\u00e9 au lait\n", "-g", "3"], capsys)
    assert same == out


@pytest.mark.parametrize("flags, fragment", [
    (["--prompt", " word" * 20, "-g", "6"], "a prompt of 20 tokens and -g 6 new tokens need 25 positions, more than "
                                            "the model's context of 24"),
    (["--prompt-file", "missing.txt"], "missing.txt"),
    (["--prompt-file", "."], ".: not a regular file"),
    (["--prompt-file", "latin1.txt"], "latin1.txt: not UTF-8 text"),
    (["-e", FIXTURE_MODEL], "the model's vocabulary has 500 tokens, GPT-2's tokenizer 50257"),
    (["-e", "no_such_model.bin"], "no_such_model.bin"),
])
def test_sample_refuses_in_one_line(gpt2_vocab_model, tmp_path, monkeypatch, capsys, flags, fragment):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "latin1.txt").write_bytes("caf\u00e9".encode("latin-1"))
    code, out, err = run_sample(["-e", gpt2_vocab_model, *flags], capsys)
    lines = err.strip().splitlines()
    assert code == 1 and lines[-1].startswith("error: ") and fragment in lines[-1], err
    assert not out


@pytest.mark.parametrize("flags, fragment", [
    (["-g", "0"], "--gen-tokens must be at least 1"), (["--num-samples", "0"], "--num-samples must be at least 1"),
    (["--temperature", "-1"], "--temperature must be"), (["--temperature", "nan"], "--temperature must be"),
    (["--top-k", "-1"], "--top-k must not be negative"), (["--top-p", "0"], "--top-p 0.0 is outside (0, 1]"),
    (["--top-p", "1.5"], "outside (0, 1]"), (["--seed", "0"], "--seed 0 is outside"), (["-e", ""], "--model is empty"),
    (["--prompt", "a", "--prompt-file", "b"], "not allowed with"),
])
def test_sample_refuses_bad_flags(flags, fragment, capsys):
    with pytest.raises(SystemExit) as exit:
        sample_gpt2.parse_args(flags)
    err = capsys.readouterr().err
    assert exit.value.code == 2 and err.startswith("error: ") and fragment in err and err.count("\n") == 1, err


def test_sample_script_ends_quietly_when_its_reader_does(gpt2_vocab_model, encoding):
    # python sample_gpt2.py ... | head: the reader ends before the text does; no traceback, and exit 0
    script = f"""
import sys, train_gpt2, sample_gpt2
train_gpt2.gpt2_encoding = train_gpt2.gpt2_encoding_offline
sys.exit(sample_gpt2.main(["-e", {gpt2_vocab_model!r}, "--prompt", "Hello", "-g", "20"]))
"""
    process = subprocess.Popen([sys.executable, "-c", script], cwd=HERE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    err = ""
    while "kernels ready" not in err:  # then it has written nothing to stdout yet
        line = process.stderr.readline()
        assert line, err
        err += line
    process.stdout.close()  # from here, every write to stdout fails
    err += process.stderr.read()
    assert process.wait(timeout=120) == 0 and "Traceback" not in err and "error" not in err, err


def test_bench_times_generation():
    # python -m dev.bench --generate, as the README's table is made, on the small fixture
    result = subprocess.run([sys.executable, "-m", "dev.bench", "--generate", "-e", FIXTURE_MODEL, "--prompt-tokens",
                             "3", "--gen-tokens", "5", "--steps", "1"], cwd=HERE, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ours")]
    assert len(rows) == 2 and "bandwidth: " in result.stdout and "tokens/s; ours with the KV cache reach " in \
        result.stdout
    assert "the KV cache's and recompute's agree on the first 5 of 5" in result.stdout
