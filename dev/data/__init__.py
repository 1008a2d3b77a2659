"""Data set scripts, run from the repository root as modules: python -m dev.data.tinyshakespeare, ..."""
