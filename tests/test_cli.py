"""
llmc/cli.py, the trainer's command line: every bad flag refused in one line with exit status 2, bad input in one
line with status 1 and no traceback, Ctrl-C at any moment with status 130, what -e names, and the defaults that
depend on the data (-d, -x).
"""

import os
import subprocess
import sys

import pytest

import train_gpt2 as tg
from llmc import cli
from llmc.files import GPT2Error
from tests.helpers import HERE, repository_env, run_main, trainer_args


def test_bad_flags_exit_with_one_line(capsys):
    for argv in (["-b", "0"], ["-t", "-1"], ["-x", "-2"], ["-g", "0"], ["--no-such-flag"], ["-l", "-1"],
                 ["--beta1", "1.5"], ["-q", "2"], ["-m", "0"], ["-k", "steep"], ["-n", "5"], ["-b", "3", "-d", "100"],
                 ["-c", "nan"], ["-l", "inf"], ["--grad-clip", "nan"], ["-q", "nan"], ["--beta2", "nan"],
                 ["-l", "1e39"], ["-c", "-inf"], ["-u", "3000000000"], ["-x", "2147483648"], ["-o", ""], ["-e", ""],
                 ["-a", "1", "-j", ""], ["-q", "1.5"]):
        with pytest.raises(SystemExit) as exit_info:
            cli.parse_args(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.endswith("(see train_gpt2.py --help)\n") and err.count("\n") == 1, err


def test_error_is_one_line_without_traceback(tmp_path):
    result = subprocess.run([sys.executable, os.path.join(HERE, "train_gpt2.py"), "-e", "missing.bin"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert result.stderr == "error: missing.bin: cannot open: No such file or directory\n"


def test_ctrl_c_while_the_libraries_load_exits_130_without_a_traceback(tmp_path):
    # the interrupt (a real SIGINT) is made to land while numba is imported, before the trainer's own code runs
    code = ("import os, runpy, signal, sys\n"
            "class Interrupt:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'numba':\n"
            "            os.kill(os.getpid(), signal.SIGINT)\n"
            "sys.meta_path.insert(0, Interrupt())\n"
            f"sys.argv = ['train_gpt2.py']\n"
            f"runpy.run_path({os.path.join(HERE, 'train_gpt2.py')!r}, run_name='__main__')\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env=repository_env())
    assert (result.returncode, result.stderr) == (130, "interrupted\n")


def test_ctrl_c_while_the_run_starts_exits_130(shards, capsys, monkeypatch):
    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(tg, "load_kernels", interrupted)
    code, out, err = run_main(shards + ["-b", "2", "-t", "8", "-s", "0"], capsys)
    assert (code, err) == (130, "interrupted\n")


def test_a_ctrl_c_that_numba_swallowed_still_stops_the_run(shards, capsys, monkeypatch):
    # a KeyboardInterrupt raised inside numba's C callbacks is printed and lost; the handler's note of it is not
    def swallowed():
        monkeypatch.setattr(cli, "interrupted", True)

    monkeypatch.setattr(tg, "load_kernels", swallowed)
    code, out, err = run_main(shards + ["-b", "2", "-t", "8", "-s", "0"], capsys)
    assert (code, err) == (130, "interrupted\n") and "step 0" not in out


def test_a_descriptor_is_a_descriptor_even_where_a_directory_has_its_name(shards, tmp_path, capsys):
    # -o d6 makes a directory d6 before -e d6 is read: d6 is still GPT-2's shape of 6 layers
    code, out, err = run_main(["-e", "d6", "-o", "d6", "-i", str(tmp_path / "train.bin"), "-j", "", "-x", "1",
                               "-s", "0", "-b", "1", "-t", "8"], capsys)
    assert code == 0, err
    assert "num_layers 6" in out and os.path.isdir(tmp_path / "d6")


def test_total_batch_size_and_default_steps(run_dir, capsys):
    with pytest.raises(SystemExit):
        cli.parse_args(["-b", "2", "-t", "8", "-d", "40", "-s", "0"])  # not a multiple of B*T = 16
    assert "must be a positive multiple of B*T = 16" in capsys.readouterr().err
    code, out, err = run_main(trainer_args(run_dir, run_dir / "out")[:-4] + ["-s", "0", "-v", "0"], capsys)
    assert code == 0, err
    # no -x with -d 32: one epoch, 1311 training tokens // 32 = 40 steps of 2 micro-batches
    assert "40 steps of 32 tokens = 2 micro-batch(es)" in out
    assert sum(line.startswith("step ") for line in out.splitlines()) == 40


def test_what_e_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d12").write_bytes(b"")  # a shape, even where a file has its name
    (tmp_path / "folder").mkdir()
    (tmp_path / "model").write_bytes(b"")
    kinds = {"d12": "shape", "gpt2:d24": "shape", "gpt3:c768": "shape", "folder": "hf", "gpt2": "hf",
             "gpt2-medium": "hf", "owner/name": "hf", "model": "llm.c", "missing.bin": "llm.c", "./missing": "llm.c",
             "a/b/c": "llm.c", "d12x!": "shape"}
    assert {source: cli.model_kind(source) for source in kinds} == kinds
    with pytest.raises(GPT2Error, match="weights.safetensors: give -e the folder that holds it and its config.json"):
        cli.model_kind("weights.safetensors")
    assert cli.model_source(cli.DEFAULT_MODEL) == "gpt2" and cli.model_source("d6") == "d6"
    (tmp_path / cli.DEFAULT_MODEL).write_bytes(b"")
    assert cli.model_source(cli.DEFAULT_MODEL) == cli.DEFAULT_MODEL


def test_durations_are_printed_in_minutes_or_hours():
    assert [cli.format_duration(s) for s in (0, 59.9, 61, 3599, 3600, 3661.9, 90000)] == \
        ["0m00s", "0m59s", "1m01s", "59m59s", "1h00m", "1h01m", "25h00m"]
