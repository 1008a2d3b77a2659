"""Tiny Shakespeare as llm.c token shards, prepared as llm.c's dev/data/tinyshakespeare.py does: every blank-line
separated section is a document preceded by EOT; the first 32,768 tokens are the validation split,
tiny_shakespeare_val.bin, the rest tiny_shakespeare_train.bin. Also writes llm.c's tokenizer file,
gpt2_tokenizer.bin, which the trainer reads to print its samples.

The trainer's default run calls prepare_tinyshakespeare itself when data/tinyshakespeare/ has no shards.

  python -m dev.data.tinyshakespeare                               # downloads char-rnn's input.txt
  python -m dev.data.tinyshakespeare --input tinyshakespeare.txt   # or from a local copy
  python train_gpt2.py                                             # trains on data/tinyshakespeare/
"""

import argparse
import os
import sys
import urllib.request

if __name__ == "__main__" and not __package__:  # run as a file, where `import dev` cannot work
    sys.exit("error: run it from the repository's root, as a module: python -m dev.data.tinyshakespeare")

import numpy as np

import train_gpt2
from dev.data import data_common

TINYSHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"


def prepare_tinyshakespeare(out_dir=train_gpt2.TINYSHAKESPEARE_DIR, input_path=None):
    """Writes tiny_shakespeare_{val,train}.bin into out_dir from input_path, or from the downloaded text."""
    text_path = input_path or os.path.join(out_dir, "tiny_shakespeare.txt")
    if input_path is None and not os.path.exists(text_path):
        print(f"downloading {TINYSHAKESPEARE_URL} to {text_path}")
        try:
            with urllib.request.urlopen(TINYSHAKESPEARE_URL, timeout=30) as response:
                text = response.read()
        except OSError as e:
            raise train_gpt2.GPT2Error(f"cannot download Tiny Shakespeare ({e}); with a local copy of the text, "
                                       "run python -m dev.data.tinyshakespeare --input PATH") from None
        train_gpt2.write_atomically(text_path, [np.frombuffer(text, dtype=np.uint8)])
    train_gpt2.check_regular_file(text_path)
    try:
        with open(text_path, "rb") as f:
            text = f.read().decode("utf-8")
    except OSError as e:
        raise train_gpt2.GPT2Error(f"{text_path}: cannot open: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise train_gpt2.GPT2Error(f"{text_path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not text.strip():
        raise train_gpt2.GPT2Error(f"{text_path}: no text")
    encoding = train_gpt2.gpt2_encoding()
    text = "<|endoftext|>" + text.replace("\n\n", "\n\n<|endoftext|>")
    tokens = np.array(encoding.encode(text, allowed_special={"<|endoftext|>"}), dtype=np.uint16)
    paths = [os.path.join(out_dir, f"tiny_shakespeare_{split}.bin") for split in ("val", "train")]
    data_common.write_shard(paths[0], tokens[:32768])
    data_common.write_shard(paths[1], tokens[32768:])
    print(f"wrote {paths[0]} ({min(32768, tokens.size)} tokens) and {paths[1]} ({max(0, tokens.size - 32768)} tokens)")
    return paths


def prepare(args):
    prepare_tinyshakespeare(args.out_dir, args.input)
    train_gpt2.write_tokenizer(args.tokenizer, train_gpt2.gpt2_encoding())
    print(f"wrote {args.tokenizer}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m dev.data.tinyshakespeare", description=__doc__.split("\n\n")[0])
    parser.add_argument("-i", "--input", metavar="PATH",
                        help=f"a local copy of the text (default: download {TINYSHAKESPEARE_URL} into --out-dir, "
                             f"unless it is there already)")
    parser.add_argument("-o", "--out-dir", default=train_gpt2.TINYSHAKESPEARE_DIR,
                        help="where the shards go (default: %(default)s, where the trainer looks)")
    parser.add_argument("--tokenizer", default=train_gpt2.TOKENIZER_FILE, metavar="PATH",
                        help="where llm.c's tokenizer file goes (default: %(default)s, where the trainer looks)")
    return parser.parse_args(argv)


def main(argv=None):
    return data_common.run_cli(prepare, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
