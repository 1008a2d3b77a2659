"""TinyStories (roneneldan/TinyStories on the Hugging Face hub) as llm.c token shards, prepared as llm.c's
dev/data/tinystories.py does: the archive TinyStories_all_data.tar.gz holds data00.json .. data49.json, each a
JSON list of objects whose "story" is a document. data00.json is the validation split, the other files the
training split. Each file's stories are shuffled with random.Random(1337 + the file's index in its split), then
each story is stripped and becomes [EOT] + encode_ordinary(story). Unlike llm.c, which gathers the files in
whatever order its worker processes finish, the files follow each other in sorted order, so that two runs
give the same bytes.

With the default --shard-size each split is one file, TinyStories_val.bin and TinyStories_train.bin, as llm.c
writes them. With a smaller --shard-size a split larger than that is cut into TinyStories_val_000000.bin,
TinyStories_val_000001.bin, ..., TinyStories_train_000000.bin, ..., so that the patterns 'TinyStories_val*'
and 'TinyStories_train*' find a split either way. A rerun resumes an interrupted run (see data_common.py).

  python -m dev.data.tinystories                                   # downloads ~1.5 GB into data/tinystories
  python -m dev.data.tinystories --input TinyStories_all_data/     # or local data*.json files, or the .tar.gz
  python train_gpt2.py -e d6 -i 'data/tinystories/TinyStories_train*' -j 'data/tinystories/TinyStories_val*'
"""

import argparse
import glob
import os
import shutil
import sys
import tarfile

if __name__ == "__main__" and not __package__:  # run as a file, where `import dev` cannot work
    sys.exit("error: run it from the repository's root, as a module: python -m dev.data.tinystories")

from dev.data import data_common
from dev.data.data_common import GPT2Error

URL = "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/TinyStories_all_data.tar.gz"
ARCHIVE = "TinyStories_all_data.tar.gz"
EXTRACTED = "TinyStories_all_data"
DEFAULT_OUT_DIR = os.path.join("data", "tinystories")
NAME = "TinyStories"
SEED = 1337


def shard_namer(split):
    def shard_name(index, last):
        return f"{NAME}_{split}.bin" if last and index == 0 else f"{NAME}_{split}_{index:06d}.bin"
    return shard_name


def extract(archive, out_dir):
    """The archive's .json files, extracted into out_dir/TinyStories_all_data (once: reused when there)."""
    target = os.path.join(out_dir, EXTRACTED)
    if not os.path.isdir(target):
        print(f"extracting {archive} into {target}")
        for old in glob.glob(f"{glob.escape(target)}.tmp*"):  # what an interrupted extraction left
            shutil.rmtree(old, ignore_errors=True)
        tmp = f"{target}.tmp{os.getpid()}"
        os.makedirs(tmp)
        try:
            with tarfile.open(archive, "r:*") as tar:
                for member in tar:
                    if member.isfile() and member.name.endswith(".json"):  # by base name: nothing lands elsewhere
                        with tar.extractfile(member) as source, open(os.path.join(tmp, os.path.basename(member.name)),
                                                                     "wb") as f:
                            shutil.copyfileobj(source, f, 1 << 20)
        except (tarfile.TarError, EOFError, OSError) as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise GPT2Error(f"{archive}: cannot extract: {data_common.one_line(e)}") from None
        os.replace(tmp, target)
    else:
        print(f"using the files already extracted into {target}")
    files = sorted(glob.glob(os.path.join(target, "*.json")))
    if not files:
        raise GPT2Error(f"{archive}: holds no .json files")
    return files


def json_files(args):
    """The data*.json files: from --input (files, directories, or the archive), else downloaded."""
    if not args.input:
        archive = os.path.join(args.out_dir, ARCHIVE)
        if not os.path.exists(archive) and not os.path.isdir(os.path.join(args.out_dir, EXTRACTED)):
            data_common.download_file(args.url, archive, "TinyStories")
        return extract(archive, args.out_dir)
    files = []
    for path in args.input:
        if path.endswith((".tar.gz", ".tgz", ".tar")) and os.path.isfile(path):
            files.extend(extract(path, args.out_dir))
        else:
            files.extend(data_common.expand_inputs([path], (".json",)))
    return files


def prepare(args):
    files = json_files(args)
    if len(files) < 2:
        raise GPT2Error(f"{len(files)} JSON file(s): TinyStories needs at least two, the first for the validation "
                        f"split and the rest for the training split")
    print(f"{len(files)} JSON files: {files[0]} is the validation split")
    streams = []
    for split, split_files in (("val", files[:1]), ("train", files[1:])):
        units = [data_common.JsonListUnit(path, "story", SEED + i) for i, path in enumerate(split_files)]
        streams.append(data_common.Stream(split, f"{split} split", units, shard_namer(split),
                                          lambda index, split=split: split,
                                          [f"{NAME}_{split}.bin", f"{NAME}_{split}_*.bin"]))
    config = {"dataset": "TinyStories v1", "inputs": data_common.file_identity(files)}
    return data_common.build_shards(args.out_dir, NAME, streams, args.shard_size, args.workers, config)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m dev.data.tinystories", description=__doc__.split("\n\n")[0])
    parser.add_argument("-i", "--input", nargs="+", metavar="PATH",
                        help="local data*.json files, directories of them, or TinyStories_all_data.tar.gz "
                             "(default: download the archive into --out-dir)")
    parser.add_argument("-o", "--out-dir", default=DEFAULT_OUT_DIR, help="where the shards go (default: %(default)s)")
    parser.add_argument("--url", default=URL, help=argparse.SUPPRESS)  # another source of the archive
    data_common.add_common_arguments(parser, data_common.MAX_SHARD_TOKENS,
                                     "tokens per shard (the default, the most a header can count, gives one file per "
                                     "split, as llm.c)")
    return parser.parse_args(argv)


def main(argv=None):
    return data_common.run_cli(prepare, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
