"""
Plot the training and validation loss of one or more runs from their main.log files (llm.c's log format, which
train_gpt2.py writes with -o DIR), as llm.c's dev/vislog.ipynb does, into a PNG.

    python -m dev.vislog out/main.log [other/main.log ...] -o loss.png

Needs matplotlib: pip install ".[plot]".
"""

import argparse
import os
import re
import sys

LINE = re.compile(r"^s:(\d+) (trl|tel):(\S+)")


def parse_log(path):
    """Returns ({step: train loss}, {step: val loss}) from a main.log; later lines win, as after a resume."""
    train, val = {}, {}
    if os.path.exists(path) and not os.path.isfile(path):  # a FIFO would make open() wait forever
        raise ValueError(f"{path}: not a regular file")
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            match = LINE.match(line)
            if not match:
                raise ValueError(f"{path}:{number}: not a main.log line: {line.strip()!r}")
            step, kind, value = int(match[1]), match[2], float(match[3])
            (train if kind == "trl" else val)[step] = value
    if not train and not val:
        raise ValueError(f"{path}: no losses in it")
    return train, val


def plot(logs, out_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax_train, ax_val) = plt.subplots(1, 2, figsize=(12, 4.5))
    for path in logs:
        train, val = parse_log(path)
        label = os.path.basename(os.path.dirname(os.path.abspath(path))) or path
        ax_train.plot(list(train), list(train.values()), label=label)
        ax_val.plot(list(val), list(val.values()), marker="o", label=label)
    for ax, title in ((ax_train, "train loss"), (ax_val, "val loss")):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    print(f"wrote {out_path}")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m dev.vislog",
                                     description="Plot train/val loss from llm.c-format main.log files.")
    parser.add_argument("logs", nargs="+", help="main.log files")
    parser.add_argument("-o", "--output", default="loss.png", help="PNG to write")
    args = parser.parse_args(argv)
    try:
        plot(args.logs, args.output)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except ImportError:
        print("error: dev/vislog.py needs matplotlib: pip install matplotlib", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
