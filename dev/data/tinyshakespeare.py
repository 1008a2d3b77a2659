#!/usr/bin/env python
"""Tiny Shakespeare as llm.c token shards, prepared as llm.c's dev/data/tinyshakespeare.py does (the work is
the trainer's prepare_tinyshakespeare): every blank-line separated section is a document preceded by EOT; the
first 32,768 tokens are the validation split, tiny_shakespeare_val.bin, the rest tiny_shakespeare_train.bin.
Also writes llm.c's tokenizer file, gpt2_tokenizer.bin, which the trainer reads to print its samples.

  python dev/data/tinyshakespeare.py                               # downloads char-rnn's input.txt
  python dev/data/tinyshakespeare.py --input tinyshakespeare.txt   # or from a local copy
  python train_gpt2.py                                             # trains on data/tinyshakespeare/
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import data_common  # noqa: E402  (puts the repository's root on sys.path)
import train_gpt2  # noqa: E402


def prepare(args):
    train_gpt2.prepare_tinyshakespeare(args.out_dir, args.input)
    train_gpt2.write_tokenizer(args.tokenizer, train_gpt2.gpt2_encoding())
    print(f"wrote {args.tokenizer}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-i", "--input", metavar="PATH",
                        help=f"a local copy of the text (default: download {train_gpt2.TINYSHAKESPEARE_URL} into "
                             f"--out-dir, unless it is there already)")
    parser.add_argument("-o", "--out-dir", default=train_gpt2.TINYSHAKESPEARE_DIR,
                        help="where the shards go (default: %(default)s, where the trainer looks)")
    parser.add_argument("--tokenizer", default=train_gpt2.TOKENIZER_FILE, metavar="PATH",
                        help="where llm.c's tokenizer file goes (default: %(default)s, where the trainer looks)")
    return parser.parse_args(argv)


def main(argv=None):
    return data_common.run_cli(prepare, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
