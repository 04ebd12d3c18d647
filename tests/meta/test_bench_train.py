"""benchmarks/bench.py --train in its smoke mode: the training rows run on both sides and report
consistent numbers (speed itself is not asserted: the README holds a measured table)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from helpers import REPO_ROOT  # noqa: E402
ROOT = REPO_ROOT
BENCH = os.path.join(ROOT, "benchmarks", "bench.py")
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import bench_train  # noqa: E402


def test_train_smoke_json_both_sides():
    done = subprocess.run([sys.executable, BENCH, "--train", "--smoke", "--threads", "1", "--json"],
                          capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    label = bench_train.row_label("smoke", bench_train.SMOKE_ROWS["smoke"])
    rows = {r["what"]: r for r in result["rows"]}
    assert list(rows) == [label, f"{label} peak RSS"]
    for row in rows.values():
        assert np.isfinite(row["numpy_gpt2"]) and row["numpy_gpt2"] > 0
        assert row["pytorch"] > 0 and abs(row["ratio"] - row["numpy_gpt2"] / row["pytorch"]) < 1e-9
    # Both processes built the model and ran steps: each holds at least its weights + AdamW
    # moments (2 * 4 bytes per parameter beyond the weights), and far less than 10 GB.
    cfg = bench_train.SMOKE_ROWS["smoke"]
    n_params = cfg["vocab_size"] * cfg["n_embd"] + cfg["T"] * cfg["n_embd"] + cfg["n_layer"] * 12 * cfg["n_embd"] ** 2
    for side in ("numpy_gpt2", "pytorch"):
        assert 3 * 4 * n_params / 2**20 < rows[f"{label} peak RSS"][side] < 10_000
    assert result["info"]["torch"]["torch_threads"] == 1 and result["threads"] == 1


def test_train_step_workers_compute_the_same_loss_from_the_same_batch():
    """The two sides time the same work: same shapes and tokens; both start from GPT-2's
    initialisation, so their first losses are both ~ln(vocab_size)."""
    cfg = bench_train.SMOKE_ROWS["smoke"]
    x, y = bench_train.random_batch(cfg, seed=0)
    assert x.shape == (cfg["batch"], cfg["T"]) and (x[:, 1:] == y[:, :-1]).all()
    losses = [bench_train.NumpyTrainer(cfg).step(x, y), bench_train.TorchTrainer(cfg, 1).step(x, y)]
    assert np.allclose(losses, np.log(cfg["vocab_size"]), atol=0.1)
