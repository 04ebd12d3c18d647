"""What the hostile tests of the commands share: the exit statuses docs/scripts.md documents,
and the checks every run must pass (a documented status, no traceback, one error line, no
temporary files, outputs whole or absent)."""

import os
import re
import signal

import numpy_gpt2
from helpers import REPO_ROOT

ROOT = REPO_ROOT


def documented_statuses() -> dict[str, set[int]]:
    """{script: exit statuses} from the table in docs/scripts.md."""
    with open(os.path.join(ROOT, "docs", "scripts.md"), encoding="utf-8") as f:
        rows = re.findall(r"^\| `(\w+)\.py` \| ([\d, ]+) \|$", f.read(), flags=re.M)
    return {name: {int(s) for s in statuses.split(",")} for name, statuses in rows}


STATUSES = documented_statuses()
OUTPUTS = ("d.safetensors",)  # files in `out` that must be whole if they exist


def check_run(name, status, err, out_dir, what):
    assert status in STATUSES[name], f"{what}: exit status {status}, documented {STATUSES[name]}\n{err}"
    assert "Traceback" not in err and "Exception ignored" not in err, f"{what}:\n{err}"
    assert "internal error" not in err, f"{what}: an unexpected exception:\n{err}"
    # Lines as a terminal shows them (a progress bar erased with \r leaves nothing).
    lines = [ln.rsplit("\r", 1)[-1] for ln in err.split("\n")]
    lines = [ln for ln in lines if ln.strip()]
    if status == 2:
        errors = [ln for ln in lines if ": error:" in ln]
        assert len(errors) == 1 and lines[-1] == errors[0], f"{what}: not one error line:\n{err}"
        assert errors[0].startswith(f"{name}.py: error: "), f"{what}:\n{err}"
    left = [os.path.join(d, f) for d, _, files in os.walk(out_dir) for f in files
            if f.endswith(".tmp") or f.startswith(".write-test")]
    assert not left, f"{what}: temporary files left: {left}"
    for path in (os.path.join(out_dir, f) for f in OUTPUTS):
        if os.path.exists(path):  # whole (written before stdout broke, say), never partial
            assert status != 2, f"{what}: bad input, yet {path} was written"
            numpy_gpt2.load_dump(path)


def _handler_installed(pid) -> bool:
    """The script's first line has run: it catches SIGTERM (Python alone does not), and
    SIGHUP (installed after it) is caught or ignored (nohup)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = {ln.split(":")[0]: int(ln.split()[1], 16) for ln in f
                      if ln.startswith(("SigCgt:", "SigIgn:"))}
    except (OSError, ValueError, IndexError):
        return False
    caught, ignored = fields.get("SigCgt", 0), fields.get("SigIgn", 0)
    hup = 1 << (signal.SIGHUP - 1)
    return bool(caught & (1 << (signal.SIGTERM - 1))) and bool((caught | ignored) & hup)
