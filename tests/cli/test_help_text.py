"""`numpy-gpt2 SUBCOMMAND --help` speaks the command the user typed: its examples run as
shown after `pip install` (no `python scripts/X.py`, which only a checkout has)."""

import os
import subprocess
import sys

import pytest

from helpers import REPO_ROOT
from numpy_gpt2.cli import COMMANDS

# train's --help is rewritten with the training library's refactor: add it here then
CHECKED = [name for name in COMMANDS if name != "train"]


@pytest.mark.parametrize("name", CHECKED)
def test_help_names_the_installed_command(name):
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    proc = subprocess.run([sys.executable, "-m", "numpy_gpt2", name, "--help"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert proc.stdout.startswith(f"usage: numpy-gpt2 {name} ")
    assert "scripts/" not in proc.stdout, proc.stdout  # (nanoGPT's data/*/prepare.py may be cited)
