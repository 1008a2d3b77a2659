"""
llm.c's token shards, written, and Tiny Shakespeare prepared as one, for the trainer's default run.

A shard is a header ([2] = number of tokens) and then the tokens as uint16, which the trainer's DataLoader reads.
Tiny Shakespeare is prepared as llm.c's dev/data/tinyshakespeare.py does: every blank-line separated section is a
document preceded by EOT; the first 32,768 tokens are the validation split, the rest the training split. Larger
data sets have scripts of their own in dev/data/, which write their shards with write_shard too.
"""

import os

import numpy as np

from llmc.files import SHARD_MAGIC, GPT2Error, check_regular_file, new_header, write_atomically
from llmc.tokenizer import gpt2_encoding

TINYSHAKESPEARE_DIR = os.path.join("data", "tinyshakespeare")  # in the working directory
DEFAULT_TRAIN = os.path.join(TINYSHAKESPEARE_DIR, "tiny_shakespeare_train.bin")
DEFAULT_VAL = os.path.join(TINYSHAKESPEARE_DIR, "tiny_shakespeare_val.bin")


def write_shard(path, tokens):
    """llm.c's token shard: header [2] the number of tokens, then the tokens as uint16 (read by the trainer)."""
    tokens = np.asarray(tokens)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= 2 ** 16):
        raise GPT2Error(f"{path}: token ids must fit in uint16 (0..65535)")
    write_atomically(path, [new_header(SHARD_MAGIC, 1, tokens.size), tokens.astype("<u2")])


TINYSHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"


def prepare_tinyshakespeare(out_dir=TINYSHAKESPEARE_DIR, input_path=None):
    """Writes tiny_shakespeare_{val,train}.bin into out_dir from input_path, or from the downloaded text."""
    text_path = input_path or os.path.join(out_dir, "tiny_shakespeare.txt")
    if input_path is None and not os.path.exists(text_path):
        import urllib.request  # here: it takes a while to load, and only a download needs it
        print(f"downloading {TINYSHAKESPEARE_URL}")
        try:
            with urllib.request.urlopen(TINYSHAKESPEARE_URL, timeout=30) as response:
                text = response.read()
        except OSError as e:
            reason = str(getattr(e, "reason", e))[:60]  # a URLError's reason, without its wrapping
            raise GPT2Error(f"cannot download Tiny Shakespeare ({reason}); offline, copy it to {text_path}") from None
        write_atomically(text_path, [np.frombuffer(text, dtype=np.uint8)])
    check_regular_file(text_path)
    try:
        with open(text_path, "rb") as f:
            text = f.read().decode("utf-8")
    except OSError as e:
        raise GPT2Error(f"{text_path}: cannot open: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise GPT2Error(f"{text_path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not text.strip():
        raise GPT2Error(f"{text_path}: no text")
    encoding = gpt2_encoding()
    text = "<|endoftext|>" + text.replace("\n\n", "\n\n<|endoftext|>")
    tokens = np.array(encoding.encode(text, allowed_special={"<|endoftext|>"}), dtype=np.uint16)
    paths = [os.path.join(out_dir, f"tiny_shakespeare_{split}.bin") for split in ("val", "train")]
    write_shard(paths[0], tokens[:32768])
    write_shard(paths[1], tokens[32768:])
    print(f"wrote {paths[0]} ({min(32768, tokens.size)} tokens) and {paths[1]} ({max(0, tokens.size - 32768)} tokens)")
    return paths


def prepare_default_data(train_pattern, val_pattern):
    """Prepares Tiny Shakespeare the first time a run uses the default data (-i and -j not given)."""
    if (train_pattern, val_pattern) == (DEFAULT_TRAIN, DEFAULT_VAL) and not (
            os.path.exists(DEFAULT_TRAIN) and os.path.exists(DEFAULT_VAL)):
        print(f"{DEFAULT_TRAIN} not found: preparing Tiny Shakespeare")
        prepare_tinyshakespeare(TINYSHAKESPEARE_DIR)
