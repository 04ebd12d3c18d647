#!/usr/bin/env python3
"""`python scripts/explain.py ARGS` is `numpy-gpt2 explain ARGS` (numpy_gpt2/cli/explain.py), from a checkout too."""
import os, sys, importlib.util  # noqa: E401
if importlib.util.find_spec("numpy_gpt2") is None:  # not pip-installed: this checkout's copy
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from numpy_gpt2.cli import run_script  # noqa: E402
sys.exit(run_script("explain"))
