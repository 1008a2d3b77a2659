"""FineWeb (HuggingFaceFW/fineweb, the 10B-token sample "sample-10BT" by default) as llm.c token shards, prepared
as llm.c's dev/data/fineweb.py does: every document becomes [EOT] + encode_ordinary(text), and the token stream
is cut into shards of --shard-size tokens (100M by default), a document running over into the next shard. The
first shard is the validation split, the rest the training split: fineweb_val_000000.bin,
fineweb_train_000001.bin, fineweb_train_000002.bin, ... (edu_fineweb_... with --type edu).

The documents come from the Hugging Face hub through the `datasets` package (pip install datasets; the 10B
sample is ~28 GB of parquet files), or from local files given with --input: parquet files with a "text" column
(such as the hub's sample/10BT/*.parquet) or JSON-lines files of objects with a "text" field, or directories of
them, read in sorted order. A rerun resumes an interrupted run (see data_common.py).

  python -m dev.data.fineweb                                    # downloads, writes data/fineweb10B/
  python -m dev.data.fineweb --input sample/10BT/ -s 10000000   # local parquet files, 10M-token shards
  python train_gpt2.py -e d12 -i 'data/fineweb10B/fineweb_train_*' -j 'data/fineweb10B/fineweb_val_*'
"""

import argparse
import os
import sys

if __name__ == "__main__" and not __package__:  # run as a file, where `import dev` cannot work
    sys.exit("error: run it from the repository's root, as a module: python -m dev.data.fineweb")

from dev.data import data_common
from dev.data.data_common import GPT2Error

# (type, version) -> the local directory, as llm.c names it, and the hub's name of the sample
SAMPLES = {("classic", "10B"): ("fineweb10B", "sample-10BT"), ("classic", "100B"): ("fineweb100B", "sample-100BT"),
           ("edu", "10B"): ("edu_fineweb10B", "sample-10BT"), ("edu", "100B"): ("edu_fineweb100B", "sample-100BT")}
REPOS = {"classic": ("HuggingFaceFW/fineweb", "fineweb"), "edu": ("HuggingFaceFW/fineweb-edu", "edu_fineweb")}
SHARD_SIZE = 10 ** 8
EXTENSIONS = (".parquet", ".jsonl")


def hub_units(repo, sample):
    try:
        import datasets
    except ImportError:
        raise GPT2Error(f"downloading {repo} needs the datasets package (pip install datasets), or give local "
                        f"parquet or jsonl files with --input") from None
    print(f"loading {repo} ({sample}) from the Hugging Face hub")
    try:
        dataset = datasets.load_dataset(repo, name=sample, split="train").select_columns(["text"])
    except Exception as e:  # the hub's client raises many kinds: network, authentication, missing files
        raise GPT2Error(f"cannot load {repo} ({sample}) from the Hugging Face hub: {type(e).__name__}: "
                        f"{data_common.one_line(e)}") from None
    return [data_common.DatasetUnit(dataset, "text", f"{repo}/{sample}")], ["hub", repo, sample, len(dataset)]


def local_units(paths):
    files = data_common.expand_inputs(paths, EXTENSIONS)
    units = [data_common.ParquetUnit(path, "text") if path.endswith(".parquet") else data_common.JsonlUnit(path, "text")
             for path in files]
    return units, data_common.file_identity(files)


def prepare(args):
    repo, name = REPOS[args.type]
    local_dir, sample = SAMPLES[(args.type, args.version)]
    out_dir = args.out_dir or os.path.join("data", local_dir)
    units, identity = local_units(args.input) if args.input else hub_units(repo, sample)

    def shard_name(index, last):
        return f"{name}_{split(index)}_{index:06d}.bin"

    def split(index):
        return "val" if index == 0 else "train"

    stream = data_common.Stream("all", name, units, shard_name, split, [f"{name}_val_*.bin", f"{name}_train_*.bin"])
    config = {"dataset": f"{repo} {sample} v1", "inputs": identity}
    return data_common.build_shards(out_dir, name, [stream], args.shard_size, args.workers, config)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m dev.data.fineweb", description=__doc__.split("\n\n")[0])
    parser.add_argument("-t", "--type", choices=["classic", "edu"], default="classic",
                        help="FineWeb, or FineWeb-Edu (default: %(default)s)")
    parser.add_argument("-v", "--version", choices=["10B", "100B"], default="10B",
                        help="which sample (default: %(default)s)")
    parser.add_argument("-i", "--input", nargs="+", metavar="PATH",
                        help="local .parquet or .jsonl files, or directories of them (default: download with "
                             "the datasets package)")
    parser.add_argument("-o", "--out-dir", help="where the shards go (default: data/fineweb10B, or as llm.c names "
                                                "the directory for --type and --version)")
    data_common.add_common_arguments(parser, SHARD_SIZE, "tokens per shard (default: %(default)s)")
    return parser.parse_args(argv)


def main(argv=None):
    return data_common.run_cli(prepare, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
