"""HellaSwag's validation set (rowanz/hellaswag) as llm.c's eval file, prepared as llm.c's dev/data/hellaswag.py
does: each line of hellaswag_val.jsonl (10,042 of them) is an example whose context is the GPT-2 encoding of its
"ctx", whose 4 completions are the encodings of " " + each of its "endings" (the space that joins an ending to the
context belongs to the ending's first token, as GPT-2's tokenizer has it), and whose "label" is the index of the
right ending. The examples go, in the file's order, into data/hellaswag/hellaswag_val.bin in llm.c's eval file
format (data_common.write_evalfile), which the trainer reads to score a model on them.

Unlike llm.c's script, this one evaluates no model (llm.c's runs OpenAI's GPT-2 with PyTorch): it writes the file.

  python -m dev.data.hellaswag                                      # downloads hellaswag_val.jsonl
  python -m dev.data.hellaswag --input hellaswag_val.jsonl          # or from a local copy
  python train_gpt2.py --eval-data data/hellaswag/hellaswag_val.bin
"""

import argparse
import os
import sys

if __name__ == "__main__" and not __package__:  # run as a file, where `import dev` cannot work
    sys.exit("error: run it from the repository's root, as a module: python -m dev.data.hellaswag")

from dev.data import data_common
from dev.data.data_common import GPT2Error
from llmc.files import check_regular_file
from llmc.tokenizer import gpt2_encoding

URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
JSONL = "hellaswag_val.jsonl"
DEFAULT_OUTPUT = os.path.join("data", "hellaswag", "hellaswag_val.bin")
NUM_ENDINGS = 4  # llm.c's writer and loader take exactly 4


def read_examples(path):
    """The JSON objects of the file's lines, each with its line number, every field checked (blank lines are
    skipped: llm.c's script would stop at one)."""
    check_regular_file(path)
    raw = data_common.read_input(path)
    lines = [(number, line) for number, line in enumerate(raw.splitlines(), 1) if line.strip()]
    if not lines:
        raise GPT2Error(f"{path}: empty file: expected HellaSwag examples, one JSON object a line")
    if len(lines) > data_common.MAX_EVAL_EXAMPLES:
        raise GPT2Error(f"{path}: line {lines[data_common.MAX_EVAL_EXAMPLES][0]:,} is example "
                        f"{data_common.MAX_EVAL_EXAMPLES + 1:,}: an eval file holds at most "
                        f"{data_common.MAX_EVAL_EXAMPLES:,} (its example index is a uint16)")
    return [(number, checked(path, number, data_common.parse_json(path, line, number))) for number, line in lines]


def checked(path, number, example):
    """The example's (label, context, endings), or one line saying what is wrong with line `number`."""
    where = f"{path}: line {number}"
    if not isinstance(example, dict):
        raise GPT2Error(f"{where} is not a JSON object")
    for field in ("ctx", "label", "endings"):
        if field not in example:
            raise GPT2Error(f"{where} has no {field!r} field")
    context, label, endings = example["ctx"], example["label"], example["endings"]
    if not isinstance(context, str):
        raise GPT2Error(f"{where}: 'ctx' is not a string")
    if not isinstance(endings, list) or not all(isinstance(ending, str) for ending in endings):
        raise GPT2Error(f"{where}: 'endings' is not a list of strings")
    if len(endings) != NUM_ENDINGS:
        raise GPT2Error(f"{where}: {len(endings)} endings, where HellaSwag (and llm.c's eval file) has {NUM_ENDINGS}")
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < NUM_ENDINGS:
        raise GPT2Error(f"{where}: 'label' is {label!r}, not the index of one of its endings (0..{NUM_ENDINGS - 1})")
    for name, text in [("ctx", context)] + [(f"ending {i}", ending) for i, ending in enumerate(endings)]:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # bytes that are not UTF-8 (surrogateescape), or a lone surrogate's escape
            raise GPT2Error(f"{where}: its {name} is not valid UTF-8") from None
    if not context:
        raise GPT2Error(f"{where}: its 'ctx' is empty (llm.c's loader needs at least one context token)")
    return label, context, endings


def tokenize(path, examples):
    """llm.c's render_example: (label, encode(ctx), [encode(" " + ending) for each ending]) for each example.
    encode_ordinary is llm.c's enc.encode on every text that one accepts (it refuses "<|endoftext|>" in a text)."""
    encoding = gpt2_encoding()
    meter = data_common.Meter("tokenizing", unit="examples", total=len(examples))
    rendered = []
    try:
        for number, (label, context, endings) in examples:
            context_tokens = encoding.encode_ordinary(context)
            ending_tokens = [encoding.encode_ordinary(" " + ending) for ending in endings]
            size = data_common.eval_example_bytes(context_tokens, ending_tokens)
            if size > data_common.MAX_EVAL_EXAMPLE_BYTES:
                raise GPT2Error(f"{path}: line {number}: the example takes {size:,} bytes, more than the "
                                f"{data_common.MAX_EVAL_EXAMPLE_BYTES:,} an eval file's uint16 byte count can hold")
            rendered.append((label, context_tokens, ending_tokens))
            meter.update(1)
    finally:
        meter.close()
    return rendered


def jsonl_path(args):
    """--input, or the validation set downloaded next to the output (once: reused when there)."""
    if args.input:
        return args.input
    path = os.path.join(os.path.dirname(args.output), JSONL)
    if os.path.exists(path):
        print(f"using {path}, downloaded already")
    else:
        data_common.download_file(args.url, path, "HellaSwag's validation set")
    return path


def prepare(args):
    path = jsonl_path(args)
    examples = tokenize(path, read_examples(path))
    longest = data_common.write_evalfile(args.output, examples)
    print(f"wrote {args.output}: {len(examples):,} examples, {os.path.getsize(args.output):,} bytes, the longest "
          f"example {longest:,} bytes")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m dev.data.hellaswag", description=__doc__.split("\n\n")[0])
    parser.add_argument("-i", "--input", metavar="PATH",
                        help=f"a local copy of {JSONL} (default: download {URL} next to --output, unless it is "
                             f"there already)")
    parser.add_argument("-o", "--output", default=DEFAULT_OUTPUT, metavar="PATH",
                        help="the eval file to write (default: %(default)s)")
    parser.add_argument("--url", default=URL, help=argparse.SUPPRESS)  # another source of the .jsonl
    return parser.parse_args(argv)


def main(argv=None):
    return data_common.run_cli(prepare, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
