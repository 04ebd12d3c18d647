"""benchmarks/bench.py in its smoke mode (tiny config): it runs and reports sensible numbers.

Speed itself is not asserted (machines differ and CI is noisy); the README holds the
measured table of a full run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import numpy_gpt2

from helpers import REPO_ROOT  # noqa: E402
ROOT = REPO_ROOT
BENCH = os.path.join(ROOT, "benchmarks", "bench.py")
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import bench  # noqa: E402


def run_bench(*args):
    done = subprocess.run([sys.executable, BENCH, "--smoke", *args], capture_output=True, text=True,
                          timeout=240, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return done.stdout


def check_rows(result, with_torch):
    rows = {r["what"]: r for r in result["rows"]}
    expected = [f"prefill T={T}" for T in bench.SMOKE["prefill"]]
    expected += [f"prefill T={T}, all logits" for T in bench.SMOKE["prefill_all"]]
    expected += [f"decode b{B}" for B in bench.SMOKE["batches"]] + ["load to first logits", "peak RSS"]
    assert list(rows) == expected
    for row in rows.values():
        assert np.isfinite(row["numpy_gpt2"]) and row["numpy_gpt2"] > 0, row
        if with_torch:
            assert row["pytorch"] > 0
            assert abs(row["ratio"] - row["numpy_gpt2"] / row["pytorch"]) < 1e-9 * row["ratio"]
        else:
            assert row["pytorch"] is None and "ratio" not in row
    # Each timed row's share of the machine's limit (its floor: matmuls at the best SGEMM rate
    # measured in the same run, weights at the read bandwidth) for each side measured.
    for row in list(rows.values())[:-2]:
        assert row["floor_seconds"] > 0 and set(row["fraction"]) == ({"numpy_gpt2", "pytorch"} if with_torch
                                                                      else {"numpy_gpt2"})
        tokens = int(row["what"].split("=")[1].split(",")[0]) if row["what"].startswith("prefill") else None
        if tokens:  # fraction = floor / median time, time = tokens / speed
            assert abs(row["fraction"]["numpy_gpt2"] - row["floor_seconds"] * row["numpy_gpt2"] / tokens) < 1e-9
    assert result["limits"]["bandwidth"] > 0 and all(r > 0 for r in result["limits"]["gemm"].values())
    small = result["small_model"]  # the small model under a competing load: 1 thread, N, default
    assert set(small["seconds"]) == {"1", str(result["threads"]), "default"}
    assert all(t > 0 for t in small["seconds"].values())
    assert small["default_over_best"] == pytest.approx(
        small["seconds"]["default"] / min(v for k, v in small["seconds"].items() if k != "default"))
    # A process that loaded weights and ran a model holds at least them, and far less than 10 GB.
    assert result["weights_mib"] < rows["peak RSS"]["numpy_gpt2"] < 10_000
    assert rows["load to first logits"]["numpy_gpt2"] < 60
    assert result["threads"] >= 1 and result["machine"]["cpus"] >= 1


def test_smoke_json_both_sides():
    result = json.loads(run_bench("--json"))
    assert result["pytorch"] is True  # torch and transformers are test requirements
    check_rows(result, with_torch=True)
    assert result["info"]["torch"]["torch_threads"] == result["threads"]
    # The machine and the kernels, so results from different machines can be told apart
    assert result["machine"]["cpu"] and result["info"]["torch"]["blas"] and result["info"]["torch"]["cpu capability"]
    assert result["info"]["numpy"]["blas kernel"].split()[0] in ("openblas", "mkl", "blis", "flexiblas"), \
        result["info"]["numpy"]


def test_smoke_table_numpy_only(tmp_path):
    out = run_bench("--numpy-only", "--reps", "1", "--dir", str(tmp_path))
    assert "numpy_gpt2 alone" in out
    for label in ["prefill T=16", "decode b2", "load to first logits", "peak RSS"]:
        assert label in out
    # --dir keeps the checkpoint: hub layout, readable by numpy_gpt2, reused by the next run.
    params, config = numpy_gpt2.load(tmp_path)
    assert (config.n_layer, config.n_embd, config.vocab_size) == (2, 64, 512)
    assert not bench.ensure_checkpoint(str(tmp_path), dict(bench.SMOKE))


def test_quick_rows_are_the_quoted_ones():
    """--quick runs the rows the speed tables quote (prefill 128 and 1024, decode b1 and b8)."""
    assert bench.QUICK["prefill"] == [128, 1024] and bench.QUICK["batches"] == [1, 8]
    assert bench.QUICK["n_embd"] == 768 and bench.QUICK["extras"] is False


def test_limit_floor_of_a_prefill_counts_every_matmul():
    """bench_limits.forward_floor: every block matmul and the head at a flat 100 GFLOP/s, the
    attention's causal half at its rate, or the weights at the bandwidth if that is longer."""
    import bench_limits
    model = dict(n_layer=2, n_head=2, n_embd=64, n_ctx=128, vocab_size=512)
    shapes = bench_limits.forward_shapes(model, [16], [1], [16])
    rates = {bench_limits.key(s): 100.0 for s in shapes}
    flops = 2 * (2 * 16 * 12 * 64 * 64 + 64 * 512) + 4 * 2 * 16 * 8 * 32 * 2
    assert bench_limits.forward_floor(model, 16, 16, 0, 1, rates, 1e6) == pytest.approx(flops / 100e9)
    weight_bytes = 4 * (2 * 12 * 64 * 64 + 512 * 64)
    assert bench_limits.forward_floor(model, 16, 16, 0, 1, rates, 1e-3) == pytest.approx(weight_bytes / 1e6)


def test_checkpoint_has_the_hub_layout(tmp_path):
    cfg = dict(bench.SMOKE)
    bench.write_checkpoint(str(tmp_path), cfg)
    header, data_start = numpy_gpt2.io.formats.safetensors.read_safetensors_header(str(tmp_path / "model.safetensors"))
    with open(tmp_path / "model.safetensors", "rb") as f:  # unpadded header, like the hub file:
        assert f.read(data_start)[-1:] == b"}"              # data starts right after the JSON
    assert "lm_head.weight" not in header and not any(k.startswith("transformer.") for k in header)
    assert header["h.1.attn.bias"]["shape"] == [1, 1, cfg["n_ctx"], cfg["n_ctx"]]
    assert {e["dtype"] for e in header.values()} == {"F32"}
    params, config = numpy_gpt2.load(tmp_path)
    assert config.n_head == cfg["n_head"] and params["h"][1]["mlp"]["c_fc"]["weight"].shape == (64, 256)
    logits = numpy_gpt2.forward(params, config, [1, 2, 3])
    assert logits.shape == (3, 512) and np.isfinite(logits).all() and logits.std() > 0


def test_attention_bench_times_the_fast_attention():
    """benchmarks/bench_attention.py: its per-step breakdown runs the fast attention's own
    steps (the same output, bit for bit, over several blocks and head groups), and the
    script runs and prints both sides and the breakdown."""
    pytest.importorskip("torch")
    import bench_attention
    from numpy_gpt2.fast import forward
    q, k, v = bench_attention.views(200)
    _, out = bench_attention.parts(forward, q, k, v, reps=1)
    assert np.array_equal(out, forward.causal_attention_fast(q, k, v)[0])
    done = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_attention.py"), "--T", "64",
                           "--threads", "1", "--reps", "1", "--parts"], capture_output=True, text=True,
                          timeout=240, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "numpy_gpt2" in done.stdout and "torch sdpa" in done.stdout and "parts, one thread" in done.stdout
