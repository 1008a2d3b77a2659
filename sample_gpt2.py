"""
Generate text with a GPT-2: python sample_gpt2.py -e MODEL --prompt "Once upon a time" -g 128

The model is anything train_gpt2.py's -e takes: an llm.c model file (a trained run's model_NNNNNNNN.bin), a Hugging
Face GPT-2 (gpt2, gpt2-medium, a folder), or a shape such as d12 (random weights, for timing). The prompt runs
through the model once; then each new token runs alone, attending to the keys and values of every earlier position
that the model keeps in its KV cache (section 5 of train_gpt2.py explains it). The text goes to stdout as it comes;
what it took goes to stderr.
"""

import contextlib
import math
import os
import signal
import sys
import time

from llmc import startup  # first, before numpy and numba load

if __name__ == "__main__":
    startup.quiet_interrupt()  # Ctrl-C while the libraries load: stop, quietly

import train_gpt2 as tg
from llmc import cli, hf
from llmc.files import GPT2Error, read_file
from llmc.rand import XorShift
from llmc.tokenizer import TextStream, gpt2_encoding, printable, token_pieces


def parse_args(argv=None):
    parser = cli.ArgumentParser(
        prog="sample_gpt2.py",
        description="Generate text with a GPT-2 on the CPU, from a prompt, with a KV cache. The draw is llm.c's "
                    "(softmax, then a uniform coin from its xorshift generator), with a temperature and top-k, as "
                    "nanoGPT's sample.py, and top-p, as transformers' generate.")
    add = parser.add_argument
    add("-e", "--model", metavar="MODEL", default=cli.DEFAULT_MODEL,
        help="llm.c model file (.bin); or a Hugging Face GPT-2, by its name on the hub (gpt2, gpt2-medium, "
             "owner/name) or a folder with config.json and model.safetensors; or a shape, dN (random weights) "
             "(default: %(default)s if it is there, else gpt2 from the hub)")
    prompt = parser.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", default="", metavar="TEXT",
                        help="the text to continue; empty: start from <|endoftext|>, as llm.c (default: empty)")
    prompt.add_argument("--prompt-file", metavar="FILE", help="read the prompt from FILE (UTF-8)")
    add("-g", "--gen-tokens", type=int, default=128, metavar="N", help="new tokens per sample (default: %(default)s)")
    add("--temperature", type=float, default=1.0, metavar="T",
        help="divides the logits: below 1 sharper, above 1 flatter, 0 always the most likely token (greedy) "
             "(default: %(default)s)")
    add("--top-k", type=int, default=0, metavar="K",
        help="draw only from the K most likely tokens, 0: all (default: %(default)s)")
    add("--top-p", type=float, default=1.0, metavar="P",
        help="draw only from the fewest most likely tokens whose probabilities add up to P, 1: all "
             "(default: %(default)s)")
    add("--seed", type=int, default=1337, help="seed of the xorshift generator, from 1 (default: %(default)s, llm.c's)")
    add("--num-samples", type=int, default=1, metavar="N", help="samples to generate, one after the other "
                                                                "(default: %(default)s)")
    add("--ids", action="store_true", help="print the generated token ids, space-separated on one line per sample, "
                                           "instead of text")
    args = parser.parse_args(argv)
    if args.model == "":
        parser.error("--model is empty")
    for name in ("gen_tokens", "num_samples"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        parser.error(f"--temperature must be a finite number >= 0, not {args.temperature}")
    if args.top_k < 0:
        parser.error("--top-k must not be negative")
    if not 0 < args.top_p <= 1:
        parser.error(f"--top-p {args.top_p} is outside (0, 1]")
    if not 1 <= args.seed < 2**64:
        parser.error(f"--seed {args.seed} is outside [1, 2^64): xorshift's state must not be 0")
    return args


def read_prompt(args):
    """The prompt's text: --prompt, or the contents of --prompt-file."""
    if args.prompt_file is None:
        return args.prompt
    try:
        return read_file(args.prompt_file).decode("utf-8-sig")  # without a byte order mark
    except UnicodeDecodeError as e:
        raise GPT2Error(f"{args.prompt_file}: not UTF-8 text ({e.reason} at byte {e.start})")


def encode_prompt(text, encoding, config):
    """The prompt's token ids: <|endoftext|> alone for an empty prompt, as llm.c's samples start. The prompt and
    the new tokens must fit the model's context."""
    if config.vocab_size != encoding.n_vocab:
        raise GPT2Error(f"the model's vocabulary has {config.vocab_size} tokens, GPT-2's tokenizer "
                        f"{encoding.n_vocab}: sample_gpt2.py needs a model with GPT-2's vocabulary")
    return encoding.encode(text, allowed_special={"<|endoftext|>"}) or [encoding.eot_token]


def check_context(prompt, args, config):
    positions = len(prompt) + args.gen_tokens - 1  # the last new token never runs through the model
    if positions > config.max_seq_len:
        raise GPT2Error(f"a prompt of {len(prompt)} tokens and -g {args.gen_tokens} new tokens need "
                        f"{positions} positions, more than the model's context of {config.max_seq_len}: "
                        f"shorten the prompt or lower -g")
    return positions


def sample(model, text, prompt, args, rng, pieces):
    """One sample: the prompt's text and the new text (or the new ids) to stdout as it comes, what it took to
    stderr."""
    stream = TextStream(pieces)
    if not args.ids:
        sys.stdout.write(printable(text))
    started = time.perf_counter()
    first_token = None
    tokens = tg.generate(model, prompt, args.gen_tokens, rng, args.temperature, args.top_k, args.top_p)
    for n, token in enumerate(tokens):
        cli.stop_if_interrupted()  # a Ctrl-C that numba swallowed (see llmc/cli.py's on_interrupt)
        if n == 0:
            first_token = time.perf_counter()
        if args.ids:
            print(token, end=" " if n + 1 < args.gen_tokens else "\n", flush=True)
        else:
            stream.write(token)
    ended = time.perf_counter()
    if not args.ids:
        stream.end()
        print(flush=True)
    rest = args.gen_tokens - 1
    timing = (f"prompt: {len(prompt)} token{'s' * (len(prompt) > 1)} in {(first_token - started) * 1000:.0f} ms "
              "(to the first new token)")
    if rest:
        per_token = (ended - first_token) / rest
        timing += (f"; then {rest} token{'s' * (rest > 1)} at {per_token * 1000:.1f} ms/token, "
                   f"{1 / per_token:.1f} tokens/s")
    print(timing, file=sys.stderr, flush=True)


def main(argv=None):
    previous_handler = signal.signal(signal.SIGINT, cli.on_interrupt)
    cli.print_anything()
    try:
        args = parse_args(argv)
        if sys.stdout is None:
            raise GPT2Error("stdout is closed: there is nowhere to print the text")
        text = read_prompt(args)
        source = cli.model_source(args.model)
        print(f"loading {source}", file=sys.stderr, flush=True)
        try:
            model = tg.load_gpt2(source)
        except GPT2Error as e:  # the default, offline: say what -e could be instead
            why = hf.unreachable(e, source)
            if source == args.model or not why:
                raise
            raise GPT2Error(f"{args.model} not found, and {why}: give -e a model, such as a run's "
                            "model_NNNNNNNN.bin, or a shape such as d12 (random weights, for timing)") from None
        encoding = gpt2_encoding()
        prompt = encode_prompt(text, encoding, model.config)
        model.allocate(1, len(prompt), context=check_context(prompt, args, model.config))
        with contextlib.redirect_stdout(sys.stderr):  # stdout is the samples' only
            tg.load_kernels()
        pieces = token_pieces(encoding)
        rng = XorShift(args.seed)
        for n in range(args.num_samples):
            if n:
                print("---", flush=True)
            sample(model, text, prompt, args, rng, pieces)
    except (GPT2Error, OSError, MemoryError, ImportError) as e:
        if isinstance(e, BrokenPipeError):  # the reader of stdout ended (| head): so does this, quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        print(f"error: {str(e) or type(e).__name__}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr, flush=True)
        return 130
    finally:
        signal.signal(signal.SIGINT, previous_handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
