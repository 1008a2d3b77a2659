"""
sample_gpt2.py's command line: the prompt and its continuation streamed, the flags that choose the draw, the
prompts, every bad input and bad flag refused in one line, and a reader of its output that ends first.
"""

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import sample_gpt2
import train_gpt2 as tg
from llmc.rand import XorShift
from llmc.tokenizer import EOT_TOKEN, printable
from tests.helpers import FIXTURE_MODEL, HERE, random_model


@pytest.fixture(scope="module")
def gpt2_vocab_model(tmp_path_factory):
    """A small llm.c model file with GPT-2's vocabulary, for the command line (which encodes text)."""
    config = tg.GPT2Config(max_seq_len=24, vocab_size=50257, padded_vocab_size=50304, num_layers=2, num_heads=2,
                           channels=16)
    path = tmp_path_factory.mktemp("model") / "model.bin"
    tg.write_model_file(str(path), random_model(config, np.float32, seed=5))
    return str(path)


@pytest.fixture(autouse=True)
def offline_encoding(monkeypatch, encoding):
    monkeypatch.setattr(sample_gpt2, "gpt2_encoding", lambda: encoding)


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
    assert out == "Hello, I am" + printable(encoding.decode_bytes(new).decode(errors="replace")) + "\n"
    assert "prompt: 4 tokens in " in err and "then 11 tokens at " in err and " ms/token, " in err
    assert " tokens/s" in err


def test_sample_flags_choose_the_draw(gpt2_vocab_model, capsys):
    model = tg.read_model_file(gpt2_vocab_model)
    prompt = [15496, 11, 314, 716]  # "Hello, I am"
    model.allocate(1, 4, context=4 + 9)

    def ids(*flags):
        code, out, err = run_sample(["-e", gpt2_vocab_model, "--prompt", "Hello, I am", "-g", "10", "--ids", *flags],
                                    capsys)
        assert code == 0, err
        return [[int(i) for i in line.split()] for line in out.split("---\n")]

    def generated(rng, **settings):
        return list(tg.generate(model, prompt, 10, rng, **settings))

    assert ids("--temperature", "0") == [generated(XorShift(), temperature=0.0)]
    assert ids("--seed", "7", "--top-k", "5", "--temperature", "0.8") == [
        generated(XorShift(7), top_k=5, temperature=0.8)]
    rng = XorShift(3)  # samples follow one another from one generator
    assert ids("--seed", "3", "--top-p", "0.9", "--num-samples", "2") == [generated(rng, top_p=0.9),
                                                                          generated(rng, top_p=0.9)]
    default = ids()
    assert default == [generated(XorShift(1337))] and default != ids("--seed", "1")


def test_sample_prompts(gpt2_vocab_model, tmp_path, capsys):
    model = tg.read_model_file(gpt2_vocab_model)
    model.allocate(1, 1, context=6)
    from_eot = list(tg.generate(model, [EOT_TOKEN], 6, XorShift()))
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


def full_pipe():
    """A pipe whose buffer is full: a write to it waits until its reader reads, or fails once the reader is gone."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    for chunk in (b"x" * 65536, b"x"):
        try:
            while True:
                os.write(write_end, chunk)
        except BlockingIOError:
            pass
    os.set_blocking(write_end, True)  # the file description the script gets: its writes must wait, not fail
    return read_end, write_end


def test_sample_script_ends_quietly_when_its_reader_does(gpt2_vocab_model):
    # python sample_gpt2.py ... | head: the reader ends before the text does; no traceback, and exit 0. The reader
    # ends once the kernels are ready, as the text is about to come. Its pipe is full from the start, so that none
    # of the text can get in before the reader ends, whenever each process runs: the script's first write waits,
    # and fails with a broken pipe once the reader is gone. (With an empty pipe, the script could write its whole
    # sample into the pipe's buffer before the reader ended, and the broken pipe would never be met.)
    script = f"""
import sys, sample_gpt2
from llmc.tokenizer import gpt2_encoding_offline
sample_gpt2.gpt2_encoding = gpt2_encoding_offline
sys.exit(sample_gpt2.main(["-e", {gpt2_vocab_model!r}, "--prompt", "Hello", "-g", "20"]))
"""
    read_end, write_end = full_pipe()
    try:
        process = subprocess.Popen([sys.executable, "-c", script], cwd=HERE, stdout=write_end,
                                   stderr=subprocess.PIPE, text=True)
    finally:
        os.close(write_end)
    watchdog = threading.Timer(300, process.kill)  # a script that waits for ever fails the test, not the suite
    watchdog.start()
    try:
        err = ""
        while "kernels ready" not in err:  # it has written nothing to stdout yet
            line = process.stderr.readline()
            assert line, err
            err += line
        os.close(read_end)  # from here, every write to stdout fails
        read_end = None
        err += process.stderr.read()
        code = process.wait()
    finally:
        watchdog.cancel()
        if read_end is not None:
            os.close(read_end)
        if process.poll() is None:
            process.kill()
        process.wait()
        process.stderr.close()
    assert code == 0 and "Traceback" not in err and "error" not in err, err
    assert "prompt: " not in err, err  # it stopped at the broken pipe, before its sample's timing


def test_sample_offline_with_the_default_model_says_what_would_work(tmp_path, monkeypatch, capsys):
    # no gpt2_124M.bin here and no hub: one line naming what -e could be instead
    from huggingface_hub.errors import LocalEntryNotFoundError
    import huggingface_hub

    def offline(repo_id, **kwargs):
        raise LocalEntryNotFoundError("outgoing traffic has been disabled")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    assert sample_gpt2.main([]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.splitlines() == [
        "loading gpt2", "error: gpt2_124M.bin not found, and the Hugging Face hub cannot give gpt2 "
        "(LocalEntryNotFoundError): give -e a model, such as a run's model_NNNNNNNN.bin, or a shape such as d12 "
        "(random weights, for timing)"]
    assert sample_gpt2.main(["-e", "gpt2"]) == 1  # asked for by name: the hub's own line, and what -e takes
    assert capsys.readouterr().err.splitlines()[-1] == (
        "error: gpt2: not a folder here, and the Hugging Face hub cannot give it (LocalEntryNotFoundError: outgoing "
        "traffic has been disabled); offline, -e takes an llm.c model file or a shape such as d12")
