"""
Counts the lines of train_gpt2.py, the tutorial, function by function: how many are the core a learner reads to see
how GPT-2 trains (the kernels, the model, AdamW, the data loader, generating text, one training step, the training
loop and main) and how many are what a run needs around it (imports, setting up a run, printing, checkpoints).

  python -m dev.tutorial_lines            # the summary and every top-level definition with its lines and kind
  python -m dev.tutorial_lines --summary  # the summary only

Each top-level statement owns its lines and the comments and blank lines above it, so a section's introduction
counts with the section's first definition. What is not core is named in AROUND below; everything else is core.
"""

import argparse
import ast
import os
import sys

TUTORIAL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "train_gpt2.py")

# What train_gpt2.py holds beyond the algorithm itself: its imports, and what sets up, prints and checkpoints a run
AROUND = {"imports", "config_from_hf", "check_inputs", "load_run_model", "build_model", "data_loaders", "evaluation_model",
          "sampling_model", "FIRST_RUN_COMPILES", "load_kernels", "write_checkpoint"}
BUDGET_LINES, CORE_SHARE = 1400, 0.85  # issue 21's targets


def statement_name(node):
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return "imports"
    if isinstance(node, ast.If) and "startup" in ast.unparse(node):
        return "imports"  # the quiet Ctrl-C while the libraries load
    if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
        return node.name
    if isinstance(node, ast.Assign):
        return ast.unparse(node.targets[0])
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
        return "the map (docstring)"
    if isinstance(node, ast.If):
        return "__main__"
    return type(node).__name__


def count(path=TUTORIAL):
    """[(name, lines, core)] in the file's order, one per top-level statement (imports merged)."""
    source = open(path).read()
    total = len(source.splitlines())
    rows, previous_end, body = [], 0, ast.parse(source).body
    for node in body:
        name = statement_name(node)
        end = total if node is body[-1] else node.end_lineno  # the last also owns what trails it
        lines = end - previous_end
        previous_end = end
        if rows and rows[-1][0] == name == "imports":
            rows[-1] = (name, rows[-1][1] + lines, False)
        else:
            rows.append((name, lines, name not in AROUND))
    return rows, total


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m dev.tutorial_lines", description=__doc__.split("\n\n")[0])
    parser.add_argument("--summary", action="store_true", help="the summary only")
    args = parser.parse_args(argv)
    rows, total = count()
    core = sum(lines for _, lines, is_core in rows if is_core)
    if not args.summary:
        for name, lines, is_core in rows:
            print(f"{lines:5d}  {'core  ' if is_core else 'around'}  {name}")
    print(f"train_gpt2.py: {total} lines (budget {BUDGET_LINES}), core {core} = {core / total:.1%} "
          f"(target {CORE_SHARE:.0%}), around {total - core}")
    return 0 if total <= BUDGET_LINES and core >= CORE_SHARE * total else 1


if __name__ == "__main__":
    sys.exit(main())
