"""Development scripts, run from the repository root as modules: python -m dev.bench, python -m dev.vislog, ..."""
