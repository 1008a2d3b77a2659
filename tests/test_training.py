"""
The training loop: a run end to end, schedules, gradient accumulation, logs, sampling, checkpoints, pruning and
resume (bit-identical after a kill), and the settings a resume refuses.
"""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import train_gpt2 as g
from conftest import FIXTURE_MODEL, HERE, assert_refused, read_log, run_main, trainer_args


def test_generate_prints_decoded_tokens(capsys):
    model = g.load_model(FIXTURE_MODEL)
    model.allocate(1, 1, context=8)  # to generate, not to train: no gradients
    pieces = [bytes([97 + i % 26]) for i in range(model.config.vocab_size)]
    tokens = list(g.generate(model, [0], 7, g.XorShift(1337)))
    assert tokens == list(g.generate(model, [0], 7, g.XorShift(1337)))
    stream = g.TextStream(pieces)
    for token in tokens:
        stream.write(token)
    stream.end()
    assert capsys.readouterr().out == b"".join(pieces[t] for t in tokens).decode()


def test_text_stream_decodes_characters_split_over_tokens(capsys):
    # tokens 1, 2, 3 are the three bytes of "\u2713" (e2 9c 93), token 4 a control byte
    pieces = [b"?", b"\xe2", b"\x9c", b"\x93", b"\x07"]
    stream = g.TextStream(pieces)
    printed = []
    for token in [1, 2, 3, 4] * 7 + [1, 2]:
        stream.write(token)
        printed.append(capsys.readouterr().out)
    stream.end()
    assert printed[:3] == ["", "", "\u2713"] and "".join(printed) == "\u2713" * 7
    assert capsys.readouterr().out == "\ufffd"  # a character cut off by the end


def test_training_run(shards, capsys):
    code, out, err = run_main(shards + ["-b", "2", "-t", "8", "-x", "4", "-v", "2", "-s", "4", "-g", "5"], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert sum(line.startswith("val loss ") for line in lines) == 3  # steps 0, 2 and the last, 4
    steps = [line for line in lines if line.startswith("step ")]
    assert [line.split(":")[0] for line in steps] == ["step 0", "step 1", "step 2", "step 3"]
    assert "(took " in steps[0] and " tok/s | ETA " in steps[0]
    took = steps[0].split("(took ")[1].split(" ms)")[0]
    assert took.isdigit()  # whole milliseconds
    assert out.index("loading the numba kernels") < out.index("kernels ready in") < out.index("step 0")
    assert "generating:" in out
    losses = [float(line.split("train loss ")[1].split()[0]) for line in steps]
    assert losses[-1] < losses[0]  # learning rate 1e-4 on random tokens still moves the loss down


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
    from dev import vislog
    train_losses, val_losses, evals = vislog.parse_log(str(run_dir / "out" / "main.log"))
    assert sorted(train_losses) == list(range(12)) and sorted(val_losses) == [0, 5, 10, 12] and evals == {}
    pytest.importorskip("matplotlib")
    assert vislog.main([str(run_dir / "out" / "main.log"), "-o", str(run_dir / "loss.png")]) == 0
    assert (run_dir / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_vislog_plots_eval_accuracy_beside_the_losses(tmp_path, capsys):
    """llm.c's eval lines (`s:STEP eval:ACC`, HellaSwag's accuracy) make a third panel; a log without them, two."""
    from dev import vislog
    with_evals, losses_only = tmp_path / "evals" / "main.log", tmp_path / "losses" / "main.log"
    for path in (with_evals, losses_only):
        path.parent.mkdir()
    with_evals.write_text("s:0 tel:4.5000\ns:0 eval:0.2955\ns:0 trl:4.6000 lr:0.000100 norm:1.50\n"
                          "s:1 trl:4.4000 lr:0.000100 norm:1.40\ns:2 tel:4.2000\ns:2 eval:0.3120\n"
                          "s:2 eval:0.3100\n")  # a later line wins, as after a resume
    losses_only.write_text("s:0 tel:4.5000\ns:0 trl:4.6000 lr:0.000100 norm:1.50\n")
    assert vislog.parse_log(str(with_evals)) == ({0: 4.6, 1: 4.4}, {0: 4.5, 2: 4.2}, {0: 0.2955, 2: 0.31})
    assert vislog.parse_log(str(losses_only)) == ({0: 4.6}, {0: 4.5}, {})
    (tmp_path / "bad.log").write_text("s:0 eval:0.3\ns:1 evl:0.3\n")
    with pytest.raises(ValueError, match="bad.log:2: not a main.log line"):
        vislog.parse_log(str(tmp_path / "bad.log"))
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figures = []
    save = plt.Figure.savefig

    def keep(figure, *args, **kwargs):  # the panels' titles, before the PNG
        figures.append([ax.get_title() for ax in figure.axes])
        return save(figure, *args, **kwargs)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(plt.Figure, "savefig", keep)
        assert vislog.main([str(losses_only), "-o", str(tmp_path / "two.png")]) == 0
        assert vislog.main([str(with_evals), str(losses_only), "-o", str(tmp_path / "three.png")]) == 0
    assert figures == [["train loss", "val loss"], ["train loss", "val loss", "eval accuracy (HellaSwag)"]]
    for name in ("two.png", "three.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "evals: best eval accuracy 0.3100, at step 2" in capsys.readouterr().out


def complete_checkpoints(out):
    return sorted(int(name[5:]) for name in os.listdir(out) if name.startswith("DONE_"))


def test_resume_after_a_kill_is_bit_identical(run_dir):
    """A straight run, and the same run killed (SIGKILL) mid-way and resumed: the same losses and logs. The kill
    lands wherever it lands (the run may even have finished): the test asserts only what holds everywhere."""
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
    assert process.wait() in (0, -signal.SIGKILL)
    latest = g.latest_checkpoint(str(run_dir / "killed"))
    assert latest >= 20
    # a kill between a checkpoint's DONE_ file and the retiring of the oldest leaves one more than -nk 3
    assert len(complete_checkpoints(run_dir / "killed")) <= 4
    resumed = subprocess.run([sys.executable, script] + args + ["-y", "1"], cwd=run_dir, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from the checkpoint of step {latest}" in resumed.stdout
    assert complete_checkpoints(run_dir / "killed") == [50, 55, 60]
    straight = subprocess.run([sys.executable, script] + trainer_args(run_dir, run_dir / "straight", "-x", "60"),
                              cwd=run_dir, capture_output=True, text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr

    def losses(stdout):
        return [line.split(" (took")[0] for line in stdout.splitlines() if line.startswith("step ")]

    assert losses(resumed.stdout) == losses(straight.stdout)[latest:]
    assert read_log(run_dir / "killed") == read_log(run_dir / "straight")


@pytest.mark.parametrize("killed_at", [5, 10, 15, 20])
def test_a_kill_right_after_a_checkpoint_is_pruned_on_resume(run_dir, capsys, monkeypatch, killed_at):
    # the kill is made to land exactly between a checkpoint's DONE_ file and the pruning that follows it
    out = run_dir / "out"
    args = trainer_args(run_dir, out, "-x", "20", "-n", "5", "-nk", "2", "-v", "0")
    prune = g.prune_checkpoints

    def killed_before_pruning(out_dir, keep):
        if g.latest_checkpoint(out_dir) == killed_at:
            raise KeyboardInterrupt
        prune(out_dir, keep)

    monkeypatch.setattr(g, "prune_checkpoints", killed_before_pruning)
    assert run_main(args, capsys)[0] == 130
    assert complete_checkpoints(out) == list(range(5, killed_at + 1, 5))[-3:]
    (out / "model_00000001.bin").write_bytes(b"a model whose checkpoint a kill left incomplete")
    monkeypatch.setattr(g, "prune_checkpoints", prune)
    code, stdout, err = run_main(args + ["-y", "1"], capsys)
    assert code == 0, err
    assert f"resumed from the checkpoint of step {killed_at}" in stdout
    assert complete_checkpoints(out) == [15, 20]
    assert sorted(os.listdir(out)) == [".lock", "DONE_00000015", "DONE_00000020", "main.log", "model_00000015.bin",
                                       "model_00000020.bin", "state_00000015_00000.bin", "state_00000020_00000.bin"]


def test_resume_refuses_what_does_not_fit(run_dir, capsys):
    out = run_dir / "out"
    assert g.main(trainer_args(run_dir, out, "-x", "6", "-n", "3")) == 0
    capsys.readouterr()
    assert_refused(trainer_args(run_dir, out, "-x", "6", "-n", "3", "-y", "1", "-b", "4", "-l", "3e-4"), capsys,
                   "state_00000006_00000.bin: cannot resume with other settings", "-b 2 there, 4 now",
                   "-l 1e-04 there, 0.0003 now")
    assert_refused(trainer_args(run_dir, out, "-x", "6", "-n", "3", "-y", "1")[2:] + ["-e", "d6"], capsys,
                   "model_00000006.bin: cannot resume with another model", "num_layers 2 there, 6 from -e d6")
    state = out / "state_00000006_00000.bin"
    state.write_bytes(state.read_bytes()[:-100])
    assert_refused(trainer_args(run_dir, out, "-x", "6", "-n", "3", "-y", "1"), capsys, "state_00000006_00000.bin",
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


def test_with_an_output_directory_the_last_step_is_always_saved(run_dir, capsys):
    out = run_dir / "out"
    code, stdout, err = run_main(trainer_args(run_dir, out, "-x", "4"), capsys)  # no -n
    assert code == 0, err
    assert complete_checkpoints(out) == [4]
    assert g.load_model(str(out / "model_00000004.bin")).num_parameters > 0


def test_a_run_extends_where_the_learning_rate_does_not_depend_on_its_length(run_dir, capsys):
    constant = ["-k", "constant", "-u", "0"]
    short, straight = run_dir / "short", run_dir / "straight"
    assert run_main(trainer_args(run_dir, short, "-x", "4", "-n", "2", *constant), capsys)[0] == 0
    code, extended, err = run_main(trainer_args(run_dir, short, "-x", "8", "-n", "2", "-y", "1", *constant), capsys)
    assert code == 0, err
    assert "-x 4 there, 8 now: the learning rate does not depend on -x, so the run goes on to step 8" in extended
    code, whole, err = run_main(trainer_args(run_dir, straight, "-x", "8", "-n", "2", *constant), capsys)
    assert code == 0, err

    def losses(stdout):
        return [line.split(" (took")[0] for line in stdout.splitlines() if line.startswith("step ")]

    assert losses(extended) == losses(whole)[4:]
    # the same log, but for the validation the first run did at its last step
    assert read_log(short).replace("s:4 tel:6.2321\n", "") == read_log(straight)
    # a cosine decay over -x steps would change the learning rate of the steps already taken
    assert_refused(trainer_args(run_dir, short, "-x", "12", "-n", "2", "-y", "1"), capsys,
                   "-x 8 there, 12 now (the cosine schedule decays over the -x steps; only a run whose learning rate "
                   "does not depend on -x, with -k constant or -q 1.0, can be extended)",
                   "-k constant there, cosine now")


def test_odd_names_and_bytes_in_the_output_directory(run_dir, capsys):
    out = run_dir / "out"
    assert run_main(trainer_args(run_dir, out, "-x", "6", "-n", "3"), capsys)[0] == 0
    for name in ("DONE_0000000\u00b2", "DONE_\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668", "DONE_abc",
                 "model_99999999.bin.bak", "DONE_000000090"):
        (out / name).write_bytes(b"")
    (out / "DONE_00000009").mkdir()  # a directory is no checkpoint
    with open(out / "main.log", "ab") as log:
        log.write(b"a line that is not UTF-8: \xff\xfe\n")
    code, stdout, err = run_main(trainer_args(run_dir, out, "-x", "6", "-n", "3", "-y", "1"), capsys)
    assert code == 0, err
    assert "resumed from the checkpoint of step 6" in stdout
