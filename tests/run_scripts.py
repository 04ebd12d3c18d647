"""Run a scripts/*.py command-line tool in-process (fast, and monkeypatches apply to it)."""

from __future__ import annotations

import glob
import importlib.util
import os
import sys

SCRIPTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts")
# The scripts import their shared helper scripts/_cli.py as `_cli`, as when run from scripts/.
if SCRIPTS not in sys.path:
    sys.path.insert(0, SCRIPTS)


def script_names() -> list[str]:
    """Every command-line tool in scripts/ (not the helper modules, whose names start with _)."""
    return sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(SCRIPTS, "*.py"))
                  if not os.path.basename(p).startswith("_"))


def load_script(name: str):
    """scripts/<name>.py as a module (its main(argv) -> exit status)."""
    spec = importlib.util.spec_from_file_location(f"scripts_{name}", os.path.join(SCRIPTS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(name: str, argv, capsys) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of scripts/<name>.py with arguments argv."""
    capsys.readouterr()  # drop earlier output
    try:
        status = load_script(name).main([str(a) for a in argv])
    except SystemExit as e:  # argparse usage errors exit 2
        status = e.code
    out, err = capsys.readouterr()
    return status, out, err
