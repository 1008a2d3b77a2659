"""Tiny Shakespeare as llm.c token shards, prepared as llm.c's dev/data/tinyshakespeare.py does: every blank-line
separated section is a document preceded by EOT; the first 32,768 tokens are the validation split,
tiny_shakespeare_val.bin, the rest tiny_shakespeare_train.bin. Also writes llm.c's tokenizer file,
gpt2_tokenizer.bin, which the trainer reads to print its samples.

The trainer's default run calls prepare_tinyshakespeare (llmc/data.py) itself when data/tinyshakespeare/ has no
shards.

  python -m dev.data.tinyshakespeare                               # downloads char-rnn's input.txt
  python -m dev.data.tinyshakespeare --input tinyshakespeare.txt   # or from a local copy
  python train_gpt2.py                                             # trains on data/tinyshakespeare/
"""

import argparse
import os
import sys

if __name__ == "__main__" and not __package__:  # run as a file, where `import dev` cannot work
    sys.exit("error: run it from the repository's root, as a module: python -m dev.data.tinyshakespeare")

import train_gpt2 as tg
from dev.data import data_common
from llmc.data import TINYSHAKESPEARE_DIR, TINYSHAKESPEARE_URL, prepare_tinyshakespeare
from llmc.files import GPT2Error
from llmc.tokenizer import TOKENIZER_FILE, gpt2_encoding, write_tokenizer_file


def prepared_shards(out_dir):
    """The two shards' token counts if out_dir holds both, whole (their sizes those their headers give); else None."""
    paths = [os.path.join(out_dir, f"tiny_shakespeare_{split}.bin") for split in ("val", "train")]
    if not all(os.path.isfile(path) for path in paths):
        return None
    try:
        return [tg.read_shard_header(path) for path in paths]
    except GPT2Error:  # a damaged or truncated one: prepare them again
        return None


def prepare(args):
    counts = None if args.input else prepared_shards(args.out_dir)
    if counts:  # a finished preparation: nothing to download again
        print(f"{args.out_dir} holds Tiny Shakespeare already: {counts[0]:,} val and {counts[1]:,} train tokens "
              "(--input prepares it again)")
    else:
        prepare_tinyshakespeare(args.out_dir, args.input)
    write_tokenizer_file(args.tokenizer, gpt2_encoding())
    print(f"wrote {args.tokenizer}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m dev.data.tinyshakespeare", description=__doc__.split("\n\n")[0])
    parser.add_argument("-i", "--input", metavar="PATH",
                        help=f"a local copy of the text (default: download {TINYSHAKESPEARE_URL} into --out-dir, "
                             f"unless it is there already)")
    parser.add_argument("-o", "--out-dir", default=TINYSHAKESPEARE_DIR,
                        help="where the shards go (default: %(default)s, where the trainer looks)")
    parser.add_argument("--tokenizer", default=TOKENIZER_FILE, metavar="PATH",
                        help="where llm.c's tokenizer file goes (default: %(default)s, where the trainer looks)")
    return parser.parse_args(argv)


def main(argv=None):
    return data_common.run_cli(prepare, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
