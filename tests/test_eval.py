"""
llmc/eval.py, multiple-choice evaluation (HellaSwag's, as llm.c scores it): the eval file read and checked field by
field, the accuracy against a float64 computation written out here, and the trainer's --eval-data and -x 0.
"""

import numpy as np
import pytest

import llmc.eval
import train_gpt2 as tg
from llmc import cli
from llmc.eval import (completion_losses, eval_accuracy, evaluation_sizes, fit_to_context, read_eval_file,
                       share_of_examples)
from llmc.files import GPT2Error
from llmc.mpi import ONE_PROCESS
from tests.helpers import (FIXTURE_MODEL, assert_refused, evaluator_for, random_examples, read_log, run_main,
                           trainer_args, write_eval_file)


def reference_mean_losses(params, config, context, completions):
    """Each completion's mean loss after the context, in float64, one whole row at a time (no cache), with the
    log-softmax written out here. A row longer than the model's context: the context keeps its last tokens, as
    many as leave room for the longest completion but its last token."""
    model = tg.GPT2(config, params.astype(np.float64))
    model.allocate(1, config.max_seq_len)
    context = list(context)[-(config.max_seq_len + 1 - max(map(len, completions))):]
    means = []
    for completion in completions:
        row = context + list(completion)
        model.forward(np.array([row[:-1]], np.int32))  # the last token predicts nothing that counts
        logits = model.activations(1, len(row) - 1).logits[0, :, :config.vocab_size]
        log_probs = logits - logits.max(axis=1, keepdims=True)
        log_probs -= np.log(np.exp(log_probs).sum(axis=1, keepdims=True))
        means.append(-np.mean([log_probs[t - 1, row[t]] for t in range(len(context), len(row))]))
    return means


def test_eval_accuracy_matches_a_float64_computation(tmp_path):
    model = tg.read_model_file(FIXTURE_MODEL)
    config, rng = model.config, np.random.default_rng(21)
    examples = random_examples(rng, 30, config.vocab_size)
    examples += random_examples(rng, 3, config.vocab_size, context=(30, 40), completion=(2, 5))  # cropped: maxT 32
    examples += random_examples(rng, 2, config.vocab_size, completions=2)  # any number of completions
    path = write_eval_file(tmp_path / "eval.bin", examples)
    read = read_eval_file(path, config.vocab_size)
    assert [(label, list(c), [list(e) for e in es]) for label, c, es in read] == examples
    expected = 0
    for label, context, completions in examples:
        means = reference_mean_losses(model.params_memory, config, context, completions)
        expected += int(np.argmin(means) == label)
    evaluator, examples_read = tg.evaluation_model(cli.TrainConfig(eval_data=path), model, ONE_PROCESS)  # the trainer's
    assert [(label, list(c), [list(e) for e in es]) for label, c, es in examples_read] == examples
    assert evaluator.params_memory is model.params_memory  # the model's own parameters, as they train
    assert evaluator.capacity[0] == 4 and evaluator.capacity[2] <= config.max_seq_len and evaluator.grads_memory is None
    assert eval_accuracy(evaluator, read, ONE_PROCESS) == (expected, len(examples))
    assert 0 < expected < len(examples)
    # and the mean losses themselves, from the KV cache, against the reference; a cropped example too
    for label, context, completions in read[29:32]:
        context, completions = fit_to_context(context, completions, config.max_seq_len)
        np.testing.assert_allclose(completion_losses(evaluator, context, completions),
                                   reference_mean_losses(model.params_memory, config, context, completions), rtol=1e-5)


def test_the_evaluation_model_fits_the_longest_context_and_completion():
    model = tg.read_model_file(FIXTURE_MODEL)
    examples = [(0, np.arange(5), [np.arange(3), np.arange(7), np.arange(2)]), (1, np.arange(9), [np.arange(2)] * 2)]
    assert evaluation_sizes(examples, model.config.max_seq_len) == (3, 9, 11)  # 9 = the longest context, 11 = 5 + 7 - 1
    assert evaluator_for(model, examples).capacity == (3, 9, 11)
    context, completions = fit_to_context(np.arange(40), [np.arange(5), np.arange(3)], 32)
    assert list(context) == list(range(12, 40)) and [len(c) for c in completions] == [5, 3]  # 28 + 5 - 1 = 32
    context, completions = fit_to_context(np.arange(40), [np.arange(50), np.arange(3)], 32)
    assert list(context) == [39] and [len(c) for c in completions] == [32, 3]
    tiny_config = tg.GPT2Config(max_seq_len=1, vocab_size=500, padded_vocab_size=512, num_layers=1, num_heads=1,
                                channels=4)
    tiny = tg.GPT2(tiny_config, np.zeros(tg.num_parameters(tg.GPT2Config(1, 500, 512, 1, 1, 4)), np.float32))
    examples = [(1, np.arange(3), [np.arange(4), np.arange(2)])]
    assert eval_accuracy(evaluator_for(tiny, examples), examples, ONE_PROCESS) == (0, 1)  # equal: the first


def test_ties_go_to_the_first_completion(monkeypatch):
    monkeypatch.setattr(llmc.eval, "completion_losses", lambda evaluator, context, completions: [1.0, 0.5, 0.5, 2.0])
    examples = [(1, np.arange(2), [np.arange(1)] * 4), (2, np.arange(2), [np.arange(1)] * 4)]
    evaluator = evaluator_for(tg.read_model_file(FIXTURE_MODEL), examples)
    assert eval_accuracy(evaluator, examples, ONE_PROCESS) == (1, 2)


def test_each_process_scores_its_share():
    model = tg.read_model_file(FIXTURE_MODEL)
    examples = [(label, np.array(c, np.int32), [np.array(e, np.int32) for e in es])
                for label, c, es in random_examples(np.random.default_rng(4), 7, 500)]
    evaluator = evaluator_for(model, examples)
    whole, _ = eval_accuracy(evaluator, examples, ONE_PROCESS)

    class Share:  # what process `rank` of 3 sees of the others: their counts, summed
        count = 3

        def __init__(self, rank):
            self.rank = rank

        def sum(self, value):
            return value

    parts = [eval_accuracy(evaluator, examples, Share(rank)) for rank in range(3)]
    assert sum(right for right, _ in parts) == whole and {total for _, total in parts} == {7}
    assert [len(share_of_examples(examples, Share(rank))) for rank in range(3)] == [3, 3, 1]


@pytest.mark.parametrize("damage, message", [
    (lambda b: np.int32(20240520).tobytes() + b[4:], "magic"),
    (lambda b: b[:-7], "truncated"),
    (lambda b: b + b"\x00\x00", "disagrees"),
    (lambda b: b[:1024] + b"\x00\x00" + b[1026:], "no delimiter"),
    (lambda b: b[:1026] + np.uint16(1000).tobytes() + b[1028:], "a byte count of 1000"),
    (lambda b: b[:1028] + np.uint16(5).tobytes() + b[1030:], "holds the index 5"),
    (lambda b: b[:1030] + np.uint16(4).tobytes() + b[1032:], "label 4 of 4 completions"),
    (lambda b: b[:1034] + np.uint16(0).tobytes() + b[1036:], "an empty context or completion"),
    (lambda b: b[:1036] + np.uint16(600).tobytes() + b[1038:], "token id 600 is out of range for vocab size 500"),
])
def test_bad_eval_files_get_one_line(tmp_path, damage, message):
    good = open(write_eval_file(tmp_path / "good.bin", random_examples(np.random.default_rng(1), 3, 500)), "rb").read()
    bad = tmp_path / "bad.bin"
    bad.write_bytes(damage(good))
    with pytest.raises(GPT2Error, match=message):
        read_eval_file(str(bad), 500)


def test_a_header_that_lies_about_the_longest_example(tmp_path):
    examples = random_examples(np.random.default_rng(2), 3, 500)
    longest = max(2 * (5 + len(c) + 1 + sum(1 + len(e) for e in es)) for _, c, es in examples)
    with pytest.raises(GPT2Error, match="longest example"):
        read_eval_file(write_eval_file(tmp_path / "e.bin", examples, longest=longest + 2), 500)
    with pytest.raises(GPT2Error, match="a byte count of"):
        read_eval_file(write_eval_file(tmp_path / "e.bin", examples, longest=longest - 2), 500)
    with pytest.raises(GPT2Error, match="truncated: 3 of 4 examples"):
        read_eval_file(write_eval_file(tmp_path / "e.bin", examples, header_count=4), 500)


def test_trainer_evaluates_at_step_0_every_v_steps_and_the_end(run_dir, capsys):
    eval_file = write_eval_file(run_dir / "eval.bin", random_examples(np.random.default_rng(3), 9, 500))
    out = run_dir / "out"
    code, printed, err = run_main(trainer_args(run_dir, out, "-x", "7", "-v", "3", "--eval-data", eval_file), capsys)
    assert code == 0, err
    evals = [line for line in printed.splitlines() if line.startswith("eval accuracy ")]
    logged = [line for line in read_log(out).splitlines() if " eval:" in line]
    assert [line.split(":")[0] for line in logged] == ["s", "s", "s", "s"] and len(evals) == 4
    assert [line.split()[0] for line in logged] == ["s:0", "s:3", "s:6", "s:7"]
    for line, entry in zip(evals, logged):
        right, total = map(int, line.split()[2].split("/"))
        assert total == 9 and entry.endswith(f"eval:{right / total:.4f}")


def test_a_resume_keeps_the_evaluation_of_its_checkpoint_step(run_dir, capsys):
    eval_file = write_eval_file(run_dir / "eval.bin", random_examples(np.random.default_rng(3), 5, 500))
    straight, resumed = run_dir / "straight", run_dir / "resumed"
    for out, steps in ((straight, "6"), (resumed, "3")):
        assert run_main(trainer_args(run_dir, out, "-x", steps, "-v", "3", "-k", "constant", "--eval-data",
                                     eval_file), capsys)[0] == 0
    assert run_main(trainer_args(run_dir, resumed, "-x", "6", "-v", "3", "-k", "constant", "--eval-data", eval_file,
                                 "-y", "1"), capsys)[0] == 0
    evals = [[line for line in read_log(out).splitlines() if " eval:" in line] for out in (straight, resumed)]
    assert evals[0] == evals[1] and [line.split()[0] for line in evals[0]] == ["s:0", "s:3", "s:6"]


def test_x_0_evaluates_any_model_without_training_data(run_dir, capsys, tmp_path):
    eval_file = write_eval_file(run_dir / "eval.bin", random_examples(np.random.default_rng(3), 9, 500))
    code, printed, err = run_main(["-e", FIXTURE_MODEL, "-i", "no_such_shards_*.bin", "-j", "", "-x", "0", "-t", "8",
                                   "-s", "0", "--eval-data", eval_file], capsys)
    assert code == 0, err
    assert "-x 0: evaluating the model, no training; no validation data" in printed
    assert "memory: parameters " in printed and "gradients" not in printed and "AdamW" not in printed
    assert sum(line.startswith("eval accuracy ") for line in printed.splitlines()) == 1
    assert "step 0:" not in printed
    missing = str(run_dir / "nothing.bin")
    assert_refused(["-e", FIXTURE_MODEL, "-x", "0", "-t", "8", "-s", "0", "-j", "", "--eval-data", missing], capsys,
                   "nothing.bin")
    with pytest.raises(SystemExit):
        cli.parse_args(["-x", "0", "-o", str(tmp_path / "out")])
