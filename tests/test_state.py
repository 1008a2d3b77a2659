"""
llmc/state.py, llm.c's training state file: every field checked before a resume uses it, and a resume with other
settings, another model, other training shards or a damaged state refused in one line; a run whose learning rate
does not depend on -x extends.
"""

import os

import numpy as np
import pytest

import train_gpt2 as tg
from llmc import cli
from llmc.state import RUN_SETTINGS, decode_setting, encode_setting, extends_run
from tests.helpers import assert_refused, checkpointed_run, read_log, run_main, trainer_args


def write_state_with(path, changes=None, wide_changes=None, body=None):
    """A copy of the training state at `path` with header slots (or 64-bit slots) changed, or the body replaced."""
    data = bytearray(open(path, "rb").read())
    header = np.frombuffer(bytes(data[:1024]), dtype="<i4").copy()
    for slot, value in (changes or {}).items():
        header[slot] = value
    for slot, value in (wide_changes or {}).items():
        header.view("<u8")[slot] = value
    data[:1024] = header.tobytes()
    if body is not None:
        data[1024:1024 + len(body)] = body
    open(path, "wb").write(bytes(data))


@pytest.mark.parametrize("case, fragment", [
    ("step", "holds the state of step 3, not of step 6 as its name says"),
    ("negative step", "holds the state of step -6, not of step 6"),
    ("shuffle flag", "data shuffling flag 7 is neither 0 nor 1"),
    ("shard index", "at shard 9, but -i matches 3 shard(s)"),
    ("sample index", "at batch 1000 of shard"),
    ("sampling rng", "the sampling RNG's state is 0"),
    ("data rng", "the data order's RNG has 0 draws left"),
    ("moments", "AdamW's moments are not finite"),
])
def test_every_field_of_the_state_is_checked(run_dir, capsys, case, fragment):
    out = checkpointed_run(run_dir, capsys)
    state = str(out / "state_00000006_00000.bin")
    if case == "step":
        os.replace(out / "state_00000003_00000.bin", state)
    elif case == "negative step":
        write_state_with(state, {10: -6})
    elif case == "shuffle flag":
        write_state_with(state, {5: 7})
    elif case == "shard index":
        write_state_with(state, wide_changes={15: 9})
    elif case == "sample index":
        write_state_with(state, wide_changes={16: 1000})
    elif case == "sampling rng":
        write_state_with(state, wide_changes={12: 0})
    elif case == "data rng":  # the Mersenne Twister's words come last; `left` is the third
        size = os.path.getsize(state)
        with open(state, "r+b") as f:
            f.seek(size - 630 * 4 + 2 * 4)
            f.write(np.array([0], "<u4").tobytes())
    elif case == "moments":
        write_state_with(state, body=np.array([np.nan], "<f4").tobytes())
    assert_refused(trainer_args(run_dir, out, "-x", "6", "-n", "3", "-y", "1"), capsys, "state_00000006_00000.bin",
                   fragment)


def test_resuming_on_other_training_shards_is_refused(run_dir, capsys):
    out = checkpointed_run(run_dir, capsys)
    other = run_dir / "other"
    other.mkdir()
    for i in range(3):  # the same number of shards, of the same sizes, but other names
        os.replace(run_dir / f"train_{i}.bin", other / f"shard_{i}.bin")
    args = trainer_args(run_dir, out, "-x", "6", "-n", "3", "-y", "1")
    args[args.index("-i") + 1] = str(other / "shard_*.bin")
    assert_refused(args, capsys, "other training shards (-i) than the run had")
    for i in range(3):  # moved to another folder under their own names, they are the same shards
        os.replace(other / f"shard_{i}.bin", other / f"train_{i}.bin")
    args[args.index("-i") + 1] = str(other / "train_*.bin")
    code, stdout, err = run_main(args, capsys)
    assert code == 0, err


def test_resume_refuses_what_does_not_fit(run_dir, capsys):
    out = run_dir / "out"
    assert tg.main(trainer_args(run_dir, out, "-x", "6", "-n", "3")) == 0
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


def test_the_settings_kept_in_the_header_decode_as_the_flags_give_them():
    args = cli.TrainConfig(batch_size=3, seq_len=7, total_batch_size=42, max_steps=9, warmup=2, schedule="wsd",
                           learning_rate=3e-4, final_frac=0.25, beta2=0.95, grad_clip=1.0)
    slots = [slot for slot, *_ in RUN_SETTINGS]
    assert len(set(slots)) == len(slots) and min(slots) >= 40  # none of llm.c's own slots
    decoded = {flag: decode_setting(encode_setting(getattr(args, name), kind), kind)
               for _, flag, name, kind in RUN_SETTINGS}
    assert decoded == {"-b": 3, "-t": 7, "-d": 42, "-x": 9, "-u": 2, "-k": "wsd", "-a": 0, "-z": 0, "-l": "0.0003",
                       "-q": "0.25", "-c": "0.0", "--beta1": "0.9", "--beta2": "0.95", "--grad-clip": "1.0"}
    assert decode_setting(7, str) == "schedule #7"
    assert extends_run(cli.TrainConfig(schedule="constant", final_frac=0.1)) and extends_run(cli.TrainConfig())
    assert not extends_run(cli.TrainConfig(final_frac=0.1))
