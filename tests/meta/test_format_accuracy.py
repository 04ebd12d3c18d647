"""benchmarks/format_accuracy.py runs (in this process) and its rows hold the numbers the
format and config-variant tests assert: one llm.c bfloat16 row, one n_inner row. The whole
table is in docs/formats.md's command; it is not asserted here.

Tolerances: tests/test_formats.py's (logits 1e-4 in float32, 1e-9 in float64) and
tests/test_config_variants.py's for gradients (2e-4 float32, 1e-9 float64).
"""

from __future__ import annotations

import os
import sys

from helpers import REPO_ROOT  # noqa: E402
ROOT = REPO_ROOT
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import format_accuracy  # noqa: E402


def table_rows(capsys, text):
    assert format_accuracy.main(["-k", text]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "| --- | --- | --- | --- | --- | --- |"
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def test_format_and_variant_rows(capsys):
    [(name, top, f32, f64, g32, g64)] = table_rows(capsys, "llm.c .bin bfloat16")
    assert name == "llm.c .bin bfloat16 (v5)" and float(top) > 10 and (g32, g64) == ("—", "—")
    assert 0 < float(f32) < 1e-4 and float(f64) < 1e-9
    [(name, top, f32, f64, g32, g64)] = table_rows(capsys, "n_inner=24")
    assert name == "config n_inner=24" and float(top) > 5
    assert 0 < float(f32) < 1e-4 and float(f64) < 1e-9
    assert 0 < float(g32) < 2e-4 and float(g64) < 1e-9
