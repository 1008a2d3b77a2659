"""
Plot the training and validation loss of one or more runs from their main.log files (llm.c's log format, which
train_gpt2.py writes with -o DIR), as llm.c's dev/vislog.ipynb does, into a PNG; and, when a log has eval lines
(`s:STEP eval:ACCURACY`, HellaSwag's accuracy), the accuracy in a third panel.

    python -m dev.vislog out/main.log [other/main.log ...] -o loss.png

Needs matplotlib: pip install ".[plot]".
"""

import argparse
import os
import re
import sys

LINE = re.compile(r"^s:(\d+) (trl|tel|eval):(\S+)")


def parse_log(path):
    """Returns ({step: train loss}, {step: val loss}, {step: eval accuracy}) from a main.log; later lines win, as
    after a resume."""
    streams = {"trl": {}, "tel": {}, "eval": {}}
    if os.path.exists(path) and not os.path.isfile(path):  # a FIFO would make open() wait forever
        raise ValueError(f"{path}: not a regular file")
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            match = LINE.match(line)
            if not match:
                raise ValueError(f"{path}:{number}: not a main.log line: {line.strip()!r}")
            streams[match[2]][int(match[1])] = float(match[3])
    if not any(streams.values()):
        raise ValueError(f"{path}: no losses in it")
    return streams["trl"], streams["tel"], streams["eval"]


def plot(logs, out_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    runs = [(os.path.basename(os.path.dirname(os.path.abspath(path))) or path, parse_log(path)) for path in logs]
    panels = [("train loss", "loss", {}), ("val loss", "loss", {"marker": "o"})]
    if any(evals for _, (_, _, evals) in runs):
        panels.append(("eval accuracy (HellaSwag)", "accuracy", {"marker": "o"}))
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5))
    for index, (ax, (title, ylabel, style)) in enumerate(zip(axes, panels)):
        for label, streams in runs:
            if streams[index]:
                ax.plot(list(streams[index]), list(streams[index].values()), label=label, **style)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    for label, (_, _, evals) in runs:
        if evals:
            step = max(evals, key=lambda s: (evals[s], -s))
            print(f"{label}: best eval accuracy {evals[step]:.4f}, at step {step}")
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    print(f"wrote {out_path}")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m dev.vislog", description="Plot train/val loss (and eval "
                                     "accuracy) from llm.c-format main.log files.")
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
