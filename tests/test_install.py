"""
The installed package: `pip install .` installs the trainer, the sampler and llmc/ with GPT-2's BPE files, and the
installed copy runs from any directory, preparing the default data under ./data of the working directory.
"""

import os
import shutil
import subprocess
import sys

from tests.helpers import HERE


def test_the_installed_copy_runs_from_another_directory(tmp_path):
    # pip builds in its source's folder: a copy of what the package is made of, not HERE (which may hold data sets)
    source, site = tmp_path / "source", tmp_path / "site"
    shutil.copytree(os.path.join(HERE, "llmc"), source / "llmc", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE", "train_gpt2.py", "sample_gpt2.py"):
        shutil.copy(os.path.join(HERE, name), source / name)
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "--quiet",
                                "--target", str(site), str(source)], capture_output=True, text=True)
    assert installed.returncode == 0, installed.stderr
    files = {os.path.relpath(os.path.join(root, name), site) for root, _, names in os.walk(site) for name in names}
    expected = {"train_gpt2.py", "sample_gpt2.py", "llmc/__init__.py", "llmc/cli.py", "llmc/run_dir.py",
                "llmc/gpt2/encoder.json", "llmc/gpt2/vocab.bpe"}
    assert expected <= files, sorted(files)
    assert not any(name.startswith(("dev/", "tests/")) for name in files), sorted(files)

    work = tmp_path / "work"  # a directory with nothing of the checkout in it
    (work / "data" / "tinyshakespeare").mkdir(parents=True)
    # the text the default run's data preparation finds where it downloads it to (no network here)
    (work / "data" / "tinyshakespeare" / "tiny_shakespeare.txt").write_text(
        "First Citizen:\nBefore we proceed any further, hear me speak.\n\n" * 5000)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(PYTHONPATH=str(site), HF_HUB_OFFLINE="1")

    def run(*argv):
        return subprocess.run([sys.executable, *argv], cwd=work, env=env, capture_output=True, text=True)

    where = run("-c", "import train_gpt2, llmc; print(train_gpt2.__file__); print(llmc.__file__)")
    assert where.returncode == 0, where.stderr
    assert where.stdout.splitlines() == [str(site / "train_gpt2.py"), str(site / "llmc" / "__init__.py")]
    # the installed copy's first run compiles the kernels (its numba cache is its own), and says so one by one
    compiled = run("-c", "import train_gpt2 as tg; tg.load_kernels()")
    lines = compiled.stdout.splitlines()
    assert compiled.returncode == 0 and lines[0].startswith("loading the numba kernels (a first run compiles them"), \
        compiled.stdout + compiled.stderr
    assert [line.rpartition(":")[0] for line in lines[1:-1]] == [
        f"  compiling kernel {i} of at most 19" for i in range(1, 20)], lines
    assert lines[-1].startswith("kernels ready in ")
    usage = run("-m", "train_gpt2", "--help")
    assert usage.returncode == 0 and usage.stdout.startswith("usage: train_gpt2.py"), usage.stderr
    trained = run("-m", "train_gpt2", "-e", "d6", "-x", "1", "-v", "1", "-s", "1", "-g", "4")
    assert trained.returncode == 0, trained.stdout + trained.stderr
    assert "data/tinyshakespeare/tiny_shakespeare_train.bin not found: preparing Tiny Shakespeare" in trained.stdout
    assert "writing gpt2_tokenizer.bin from tiktoken's GPT-2 encoding" in trained.stdout
    assert "step 0: train loss " in trained.stdout and "generating:\n---" in trained.stdout
    assert "compiling kernel" not in trained.stdout  # loaded from the cache, as a later run does
    prepared = sorted(os.listdir(work / "data" / "tinyshakespeare"))
    assert prepared == ["tiny_shakespeare.txt", "tiny_shakespeare_train.bin", "tiny_shakespeare_val.bin"]
    assert (work / "gpt2_tokenizer.bin").is_file()
