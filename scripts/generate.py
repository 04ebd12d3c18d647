#!/usr/bin/env python3
"""`python scripts/generate.py ARGS` is `numpy-gpt2 generate ARGS` (numpy_gpt2/cli/generate.py), from a checkout too."""
import os, signal  # noqa: E401
for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # until the command takes over: stop
    if signal.getsignal(s) != signal.SIG_IGN:  # at once, 128 + N (a nohup's SIGHUP: ignored)
        signal.signal(s, lambda n, f: os._exit(128 + n))
import sys, importlib.util  # noqa: E401, E402
if importlib.util.find_spec("numpy_gpt2") is None:  # not pip-installed: this checkout's copy
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from numpy_gpt2.cli import run_script  # noqa: E402
sys.exit(run_script("generate"))
