"""
Section 6 of train_gpt2.py, training: a run end to end and what it prints, a single batch overfitted, and a run
that diverges (or asks for a longer T than the model's) told in one line. (Checkpoints and resuming are in
test_run_dir.py and test_state.py, main.log in test_vislog.py.)
"""

import numpy as np

import train_gpt2 as tg
from tests.helpers import FIXTURE_MODEL, assert_refused, run_main, trainer_args


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


def test_refuses_too_long_sequences_and_divergence(shards, tmp_path, capsys):
    assert_refused(shards + ["-t", "33", "-s", "0"], capsys, "T=33", "maximum 32")
    model = tg.read_model_file(FIXTURE_MODEL)
    model.params.lnfw[0] = np.inf
    path = str(tmp_path / "inf.bin")
    tg.write_model_file(path, model)
    assert_refused(["-e", path] + shards[2:] + ["-s", "0", "-v", "0", "-b", "2", "-t", "8"], capsys,
                   "loss is nan at step 0")


def test_a_diverging_run_prints_one_line(shards, capsys):
    code, out, err = run_main(shards + ["-b", "2", "-t", "8", "-s", "0", "-l", "1e30", "-x", "5"], capsys)
    assert code == 1
    assert err == "error: the training loss is nan at step 1: the run diverged (lower -l?)\n"  # no RuntimeWarning


def test_overfit_a_single_batch(run_dir, capsys):
    code, out, err = run_main(trainer_args(run_dir, run_dir / "out", "-x", "30", "-a", "1", "-l", "1e-3", "-u", "0",
                                           "-q", "1.0", "-c", "0"), capsys)
    assert code == 0, err
    losses = [float(line.split("train loss ")[1].split()[0]) for line in out.splitlines() if line.startswith("step ")]
    assert losses[-1] < 0.5 * losses[0]
