"""
The trainer's command line: its flags (llm.c's, from train_gpt2.cu), their checks and defaults, what -e names, what a
run prints before it starts, and how main() ends: one line and exit status 1 for bad input, 2 for a bad flag, 130
for Ctrl-C.

The defaults are llm.c's CPU demo (train_gpt2.c): GPT-2 124M fine-tuned on Tiny Shakespeare with B=4, T=64 and a
constant learning rate of 1e-4 for 40 steps.
"""

import argparse
import contextlib
import dataclasses
import math
import os
import re
import signal
import sys
import time

import numpy as np

from llmc.data import DEFAULT_TRAIN, DEFAULT_VAL
from llmc.files import GPT2Error
from llmc.mpi import ONE_PROCESS, launched_rank

DEFAULT_MODEL = "gpt2_124M.bin"
SCHEDULES = ("cosine", "linear", "constant", "wsd")  # the learning rate schedules, as llm.c's llmc/schedulers.h


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A run's settings, as the flags give them (parse_args has each one's help)."""
    model: str = DEFAULT_MODEL            # -e
    train_data: str = DEFAULT_TRAIN       # -i
    val_data: str = DEFAULT_VAL           # -j
    output_dir: str | None = None         # -o
    checkpoint_every: int = 0             # -n
    checkpoints_keep: int = 0             # -nk
    resume: int = 0                       # -y
    batch_size: int = 4                   # -b, B
    seq_len: int = 64                     # -t, T
    total_batch_size: int | None = None   # -d: B*T*processes unless given
    max_steps: int | None = None          # -x: 40 unless given, or with -d one epoch
    learning_rate: float = 1e-4           # -l
    schedule: str = "cosine"              # -k
    warmup: int = 0                       # -u
    final_frac: float = 1.0               # -q
    weight_decay: float = 0.0             # -c
    beta1: float = 0.9
    beta2: float = 0.999
    grad_clip: float = 0.0
    overfit: int = 0                      # -a
    zero: int = 0                         # -z
    val_every: int = 10                   # -v
    val_max_steps: int = 5                # -m
    sample_every: int = 20                # -s
    gen_tokens: int = 64                  # -g
    eval_data: str | None = None          # --eval-data


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):
        """A bad flag: one line and exit status 2, as for any usage error. Under mpirun every process finds the
        same bad flag: rank 0 says it and its status becomes mpirun's; the others end quietly with status 0, since
        a failing one could make mpirun stop rank 0 before its line is out."""
        if launched_rank() == 0:
            self.exit(2, f"error: {message} (see {self.prog} --help)\n")
        self.exit(0)


def parse_args(argv=None):
    parser = ArgumentParser(
        prog="train_gpt2.py",
        description="Train GPT-2 on the CPU. The flags are llm.c's (train_gpt2.cu); the defaults are its CPU demo "
                    "(train_gpt2.c): GPT-2 124M on Tiny Shakespeare, which is prepared if absent.")
    add = parser.add_argument
    add("-e", "--model", metavar="MODEL",
        help="llm.c model checkpoint (.bin) to start from; or a Hugging Face GPT-2, by its name on the hub (gpt2, "
             "gpt2-medium, owner/name) or a folder with config.json and model.safetensors; or a model shape to "
             "train from scratch: dN / gpt2:dN (GPT-2 with N layers, e.g. d12) or gpt3:cN (GPT-3 with N channels) "
             "(default: %(default)s if it is there, else GPT-2 124M from the hub, gpt2, else offline d12)")
    add("-i", "--train-data", metavar="PATTERN", help="glob pattern of training token shards (default: %(default)s)")
    add("-j", "--val-data", metavar="PATTERN",
        help="glob pattern of validation token shards, '' for none (default: %(default)s)")
    add("-o", "--output-dir", metavar="DIR",
        help="directory for main.log and checkpoints, which holds one run only (default: none)")
    add("-n", "--checkpoint-every", type=int, metavar="N",
        help="write a checkpoint every N steps, and with -o always at the end (default: 0, at the end only)")
    add("-nk", "--checkpoints-keep", type=int, metavar="K", help="keep only the last K checkpoints (default: 0, all)")
    add("-y", "--resume", type=int, choices=(0, 1), help="1: resume from the newest checkpoint in -o (default: 0)")
    add("-b", "--batch-size", type=int, metavar="B", help="sequences per micro-batch (default: %(default)s)")
    add("-t", "--seq-len", type=int, metavar="T", help="tokens per sequence (default: %(default)s)")
    add("-d", "--total-batch-size", type=int, metavar="TOKENS",
        help="tokens per optimizer step, reached by accumulating gradients over micro-batches of B*T "
             "(default: B*T)")
    add("-x", "--max-steps", type=int, metavar="STEPS",
        help="optimizer steps (default: 40, or with -d one epoch of the training shards)")
    add("-l", "--learning-rate", type=float, metavar="LR", help="peak AdamW learning rate (default: %(default)s)")
    add("-k", "--schedule", choices=SCHEDULES, help="learning rate schedule (default: %(default)s)")
    add("-u", "--warmup", type=int, metavar="STEPS", help="learning rate warmup steps (default: %(default)s)")
    add("-q", "--final-frac", type=float, metavar="FRAC",
        help="final learning rate as a fraction of -l (default: %(default)s, no decay: cosine is then constant)")
    add("-c", "--weight-decay", type=float, metavar="WD",
        help="AdamW weight decay, on the embeddings and weight matrices only (default: %(default)s)")
    add("--beta1", type=float, help="AdamW beta1 (default: %(default)s)")
    add("--beta2", type=float, help="AdamW beta2 (default: %(default)s)")
    add("--grad-clip", type=float, metavar="NORM",
        help="clip the global gradient norm to NORM (default: %(default)s, no clipping)")
    add("-a", "--overfit", type=int, choices=(0, 1),
        help="1: train on the first batch of the validation data over and over, a check that the model learns "
             "(default: %(default)s)")
    add("-z", "--zero", type=int, choices=(0, 1),
        help="1: ZeRO-1, AdamW's state split over the processes of an mpirun (default: %(default)s)")
    add("-v", "--val-every", type=int, metavar="N",
        help="validation loss every N steps, 0: never (default: %(default)s)")
    add("-m", "--val-max-steps", type=int, metavar="N",
        help="at most N batches per validation loss (default: %(default)s)")
    add("-s", "--sample-every", type=int, metavar="N",
        help="sample text every N steps, 0: never (default: %(default)s)")
    add("-g", "--gen-tokens", type=int, metavar="N",
        help="tokens per sample, the first being EOT (default: %(default)s)")
    add("--eval-data", metavar="FILE",
        help="llm.c eval file (HellaSwag's: python -m dev.data.hellaswag): its accuracy at step 0, every -v steps "
             "and at the end; with -x 0, the model is evaluated and nothing trained (default: none)")
    parser.set_defaults(**dataclasses.asdict(TrainConfig()))
    args = TrainConfig(**vars(parser.parse_args(argv)))
    for name in ("batch_size", "seq_len", "gen_tokens", "val_max_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("learning_rate", "final_frac", "weight_decay", "beta1", "beta2", "grad_clip"):
        if not abs(getattr(args, name)) <= float(np.finfo(np.float32).max):  # the optimizer computes in float32
            parser.error(f"--{name.replace('_', '-')} must be a finite float32 number, not {getattr(args, name)}")
    for name, low, high in (("learning_rate", 0, math.inf), ("beta1", 0, 1), ("beta2", 0, 1)):
        if not low <= getattr(args, name) < high:
            parser.error(f"--{name.replace('_', '-')} {getattr(args, name)} is outside [{low}, {high})")
    if not 0 <= args.final_frac <= 1:
        parser.error(f"--final-frac {args.final_frac} is outside [0, 1]")
    for name in ("max_steps", "val_every", "val_max_steps", "sample_every", "checkpoint_every", "checkpoints_keep",
                 "warmup", "weight_decay", "grad_clip", "total_batch_size"):
        if (getattr(args, name) or 0) < 0:
            parser.error(f"--{name.replace('_', '-')} must not be negative")
        if (getattr(args, name) or 0) >= 2**31:  # a training state keeps them as int32
            parser.error(f"--{name.replace('_', '-')} {getattr(args, name)} is too large: at most {2**31 - 1}")
    for name in ("model", "train_data", "output_dir", "eval_data"):
        if getattr(args, name) == "":
            parser.error(f"--{name.replace('_', '-')} is empty")
    if args.max_steps == 0 and args.output_dir:
        parser.error("-x 0 trains nothing: there is no run to keep in -o")
    if args.overfit and not args.val_data:
        parser.error("-a 1 trains on the validation data: it needs -j")
    tokens_per_micro_batch = args.batch_size * args.seq_len
    if args.total_batch_size is not None and (args.total_batch_size <= 0
                                              or args.total_batch_size % tokens_per_micro_batch):
        parser.error(f"-d {args.total_batch_size} must be a positive multiple of B*T = {tokens_per_micro_batch}")
    if (args.checkpoint_every or args.resume) and not args.output_dir:
        parser.error("-n and -y need an output directory, -o")
    return args


def complete_settings(args, train_tokens, num_processes):
    """The settings with the defaults that depend on the data and the processes filled in: -d is B*T on each
    process; -x is 40 steps, as llm.c's CPU demo, or with -d one epoch of the training shards, as its full
    trainer."""
    tokens_per_micro_batch = args.batch_size * args.seq_len * num_processes
    if args.total_batch_size is not None and args.total_batch_size % tokens_per_micro_batch:
        raise GPT2Error(f"-d {args.total_batch_size} is not a multiple of B*T*processes = {tokens_per_micro_batch}")
    total_batch_size = args.total_batch_size or tokens_per_micro_batch
    max_steps = args.max_steps
    if max_steps is None:
        max_steps = 40 if args.total_batch_size is None else train_tokens // total_batch_size
    return dataclasses.replace(args, total_batch_size=total_batch_size, max_steps=max_steps)


GPT2_SHAPES = {6: (384, 6), 12: (768, 12), 24: (1024, 16), 36: (1280, 20), 48: (1600, 25), 60: (1920, 30),
               72: (2880, 30), 84: (3456, 36)}  # depth: (channels, heads)
GPT3_SHAPES = {384: (6, 64), 768: (12, 64), 1024: (24, 64), 1536: (24, 96), 2048: (24, 128), 2560: (32, 80),
               4096: (32, 128), 5140: (40, 128), 12288: (96, 128)}  # channels: (depth, head size)


def descriptor_sizes(descriptor):
    """The model shape a descriptor names, as the fields of the trainer's GPT2Config: GPT-2's by depth (dN,
    gpt2:dN), GPT-3's by channels (gpt3:cN), both with GPT-2's vocabulary."""
    match = re.fullmatch(r"(gpt2:)?d([0-9]+)|gpt3:c([0-9]+)", descriptor)
    if not match:
        raise GPT2Error(f"unknown model descriptor {descriptor!r}: expected an llm.c .bin file, a Hugging Face GPT-2 "
                        "(a hub name or a folder), dN, gpt2:dN or gpt3:cN")
    number = match[2] or match[3]
    if match[3]:
        if int(number) not in GPT3_SHAPES:
            raise GPT2Error(f"unsupported GPT-3 channels {number}: one of {sorted(GPT3_SHAPES)}")
        channels = int(number)
        depth, head_size = GPT3_SHAPES[channels]
        heads, max_seq_len = max(1, channels // head_size), 2048
    else:
        if int(number) not in GPT2_SHAPES:
            raise GPT2Error(f"unsupported GPT-2 depth {number}: one of {sorted(GPT2_SHAPES)}")
        depth = int(number)
        (channels, heads), max_seq_len = GPT2_SHAPES[depth], 1024
    return dict(max_seq_len=max_seq_len, vocab_size=50257, padded_vocab_size=50304, num_layers=depth,
                num_heads=heads, channels=channels)


def model_kind(source):
    """What -e names: "shape" (dN, gpt2:dN, gpt3:cN, even where a file of that name exists), "llm.c" (a model file),
    "hf" (a Hugging Face GPT-2: a folder, or a name on the hub such as gpt2 or owner/name), or else "shape" again,
    refused then as an unknown one."""
    if re.fullmatch(r"(gpt2:)?d[0-9]+|gpt3:c[0-9]+", source):
        return "shape"
    if source.endswith(".safetensors"):
        raise GPT2Error(f"{source}: give -e the folder that holds it and its config.json")
    if os.path.isdir(source):
        return "hf"
    if os.path.lexists(source) or source.endswith(".bin"):
        return "llm.c"
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?", source):
        return "hf"
    return "llm.c" if "/" in source or source.startswith(".") else "shape"  # a path, then: "cannot open"


def model_source(name):
    """What -e names; for the default, llm.c's gpt2_124M.bin, and without that file the same weights from the
    Hugging Face hub, gpt2 (downloaded once, 0.5 GB), or offline its shape, d12 (the same shape)."""
    return "gpt2" if name == DEFAULT_MODEL and not os.path.exists(name) else name


def format_duration(seconds):
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def print_anything():
    """Makes stdout and stderr print what their encoding cannot (a file name that is not UTF-8, a character a
    latin-1 terminal lacks) as backslash escapes, rather than fail."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


interrupted = False  # set by on_interrupt


def on_interrupt(signum, frame):
    """Ctrl-C: a KeyboardInterrupt, as Python's own handler raises; and a note of it, for where the exception is
    lost: raised inside a callback that numba's compiler makes from C, it is printed and ignored."""
    global interrupted
    interrupted = True
    raise KeyboardInterrupt


def stop_if_interrupted():
    """Raises the KeyboardInterrupt of a Ctrl-C that numba's callbacks swallowed (see on_interrupt)."""
    if interrupted:
        raise KeyboardInterrupt


class ExitStatus:
    """What main() runs inside, and how it ends: bad input (GPT2Error), a full disk, too big a model, a missing
    library is one line, `error: ...`, and status 1; Ctrl-C, at any moment, is `interrupted` and status 130. Under
    mpirun (set .processes once known), an error that every process raised alike is printed by rank 0 alone; an
    error of one process ends them all, since the others would wait for it forever."""

    def __init__(self):
        self.processes, self.code = ONE_PROCESS, 0

    def __enter__(self):
        print_anything()
        self.previous_handler = signal.signal(signal.SIGINT, on_interrupt)
        return self

    def __exit__(self, kind, error, traceback):
        processes = self.processes
        if isinstance(error, (GPT2Error, OSError, MemoryError, ImportError)):
            alike = getattr(error, "every_process", False)
            if processes.rank == 0 or not alike:
                where = f"process {processes.rank}: " if processes.rank else ""
                print(f"error: {where}{str(error) or type(error).__name__}", file=sys.stderr, flush=True)
            if processes.count > 1 and not alike:  # ending without MPI_Finalize (which would wait for the others
                os._exit(1)  # too) makes mpirun end them all
            self.code = 1
        elif isinstance(error, KeyboardInterrupt):
            if processes.rank == 0:
                print("interrupted", file=sys.stderr, flush=True)
            if processes.count > 1:
                os._exit(130)
            self.code = 130
        signal.signal(signal.SIGINT, self.previous_handler)
        return self.code != 0  # the errors above end here; anything else is a bug, with its traceback


# What the trainer prints of a run before it starts

def print_plan(args, train_loader, val_loader, grad_accum_steps, processes):
    val = f"val: {val_loader.num_tokens:,} tokens" if val_loader else "no validation data"
    if not train_loader:
        print(f"-x 0: evaluating the model, no training; {val}")
        return
    print(f"train: {train_loader.num_tokens:,} tokens in {len(train_loader.files)} shard(s), {val}; "
          f"{args.max_steps} steps of {args.total_batch_size} tokens = {grad_accum_steps} micro-batch(es) of "
          f"B={args.batch_size} x T={args.seq_len}" + (f" on each of {processes.count} processes"
                                                       if processes.count > 1 else ""))


def print_memory(model, optimizer, args, processes, started):
    ready = f"activations {model.acts_memory.nbytes / 2**20:.0f} MiB; ready in {time.perf_counter() - started:.1f} s"
    if not optimizer:
        print(f"memory: parameters {model.params_memory.nbytes / 2**20:.0f} MiB, {ready}")
        return
    print(f"memory{' per process' if processes.count > 1 else ''}: parameters and gradients "
          f"{2 * model.params_memory.nbytes / 2**20:.0f} MiB, AdamW state "
          f"{(optimizer.m_memory.nbytes + optimizer.v_memory.nbytes) / 2**20:.0f} MiB"
          f"{f' (ZeRO-1: 1/{processes.count} of it)' if args.zero and processes.count > 1 else ''}, {ready}")


@contextlib.contextmanager
def compile_progress(total):
    """Prints `compiling kernel i of at most total: name` as numba compiles each kernel called inside (the functions
    they call compile with them; kernels an earlier step of the run compiled are not counted again); nothing when
    numba loads them from its cache."""
    from numba.core import event

    class Progress(event.Listener):
        depth = count = 0

        def on_start(self, started):
            if self.depth == 0:
                self.count += 1
                name = getattr(started.data.get("dispatcher"), "__name__", "?")
                print(f"  compiling kernel {self.count} of at most {total}: {name}", flush=True)
            self.depth += 1

        def on_end(self, ended):
            self.depth -= 1

    with event.install_listener("numba:compile", Progress()):
        yield
