"""benchmarks/bench_optim.py in its smoke mode: every pass runs on both sides and reports a
time, a rate and its fraction of the measured bandwidth (speed itself is not asserted:
docs/speed.md holds measured numbers)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from helpers import REPO_ROOT

BENCH = os.path.join(REPO_ROOT, "benchmarks", "bench_optim.py")


def test_optim_smoke_reports_every_pass():
    done = subprocess.run([sys.executable, BENCH, "--smoke", "--threads", "2"], capture_output=True,
                          text=True, timeout=180, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert re.match(r"3\.\dM float32 parameters, 2 threads, 1 rounds; streaming read bandwidth", lines[0])
    rows = {}
    for line in lines[2:]:
        name, numbers = line[:34].strip(), line[34:].split()
        rows[name] = [float(x.rstrip("%")) for x in numbers]
    assert list(rows) == ["numpy_gpt2 adamw_update", "numpy_gpt2 grad_norm", "numpy_gpt2 non_finite_weights",
                          "torch AdamW foreach=False", "torch AdamW foreach=True", "torch AdamW fused=True",
                          "torch clip_grad_norm_"]
    for name, (best, median, rate, share) in rows.items():
        assert 0 < best <= median and rate > 0 and share > 0, name
