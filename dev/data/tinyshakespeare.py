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
import sys

if __name__ == "__main__" and not __package__:  # run as a file, where `import dev` cannot work
    sys.exit("error: run it from the repository's root, as a module: python -m dev.data.tinyshakespeare")

from dev.data import data_common
from llmc.data import TINYSHAKESPEARE_DIR, TINYSHAKESPEARE_URL, prepare_tinyshakespeare
from llmc.tokenizer import TOKENIZER_FILE, gpt2_encoding, write_tokenizer_file


def prepare(args):
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
