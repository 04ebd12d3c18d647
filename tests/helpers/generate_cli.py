"""Running `python scripts/generate.py` as a user would: a process, offline, no PYTHONPATH."""

import os
import subprocess
import sys

from helpers import REPO_ROOT

SCRIPT = os.path.join(REPO_ROOT, "scripts", "generate.py")
EOS = 50256  # <|endoftext|>


def run_cli(*args, stdin="", cwd, extra_env=None):
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "NUMPY_GPT2_TOKENIZER")}
    # Offline, and any network access that slipped through would fail at once (dead proxy).
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(cwd / "hf-home"), PYTHONIOENCODING="utf-8",
               OMP_NUM_THREADS="1", HTTPS_PROXY="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9",
               **(extra_env or {}))
    proc = subprocess.run([sys.executable, SCRIPT, *map(str, args)], input=stdin.encode(),
                          capture_output=True, cwd=cwd, env=env, timeout=120)
    return proc.returncode, proc.stdout.decode("utf-8"), proc.stderr.decode("utf-8")
