"""scripts/train.py's trainer extras: samples that leave training unchanged, DIR/best/,
--eval-only, tokens/s and MFU per evaluation (numpy_gpt2.training.mfu)."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest

import numpy_gpt2
from numpy_gpt2.training import mfu
from numpy_gpt2.initialization import init_params

from helpers.run_scripts import run_script

TINY = ["--n-layer", 1, "--n-head", 2, "--n-embd", 16, "--block-size", 16, "--batch-size", 2,
        "--eval-iters", 2, "--seed", 3, "--lr", 3e-3, "--min-lr", 3e-3, "--warmup-iters", 0, "--threads", 1]


@pytest.fixture
def token_dir(tmp_path, tokenizer_dir, monkeypatch):
    monkeypatch.setenv("NUMPY_GPT2_TOKENIZER", tokenizer_dir)
    rng = np.random.default_rng(0)
    (tmp_path / "tok").mkdir()
    (rng.integers(0, 300, 4000)).astype("<u2").tofile(tmp_path / "tok" / "train.bin")  # learnable: few ids
    (rng.integers(0, 300, 500)).astype("<u2").tofile(tmp_path / "tok" / "val.bin")
    return tmp_path / "tok"


def weights(directory):
    params, _ = numpy_gpt2.load(directory)
    return numpy_gpt2.flatten_params(params)


def assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    for key in wa:
        np.testing.assert_array_equal(wa[key], wb[key], err_msg=key)


def test_flops_per_token_is_nanogpts_estimate():
    config = numpy_gpt2.GPT2Config(n_layer=2, n_head=2, n_embd=8, n_ctx=16, vocab_size=50)
    params = init_params(config, seed=0)
    # nanoGPT get_num_params(non_embedding=True): every parameter but wpe (tied head counted once).
    n = 50 * 8 + 2 * (2 * 2 * 8 + 8 * 24 + 24 + 8 * 8 + 8 + 8 * 32 + 32 + 32 * 8 + 8) + 2 * 8
    assert mfu.flops_per_token(params, config, 16) == 6 * n + 12 * 2 * 8 * 16
    assert mfu.mfu(100.0, 10.0, 4000.0, ranks=2) == 100.0 * 10.0 / 8000.0
    assert 1e8 < mfu.measure_peak_flops("float32", size=256, repeats=2) < 1e14


def test_samples_leave_training_unchanged_and_are_logged(token_dir, tmp_path, capsys):
    args = ["--data", token_dir, *TINY, "--max-iters", 4, "--eval-interval", 2]
    status, out, err = run_script("train", [*args, "--out", tmp_path / "plain"], capsys)
    assert status == 0, err
    status, out, err = run_script("train", [*args, "--out", tmp_path / "sampled", "--sample-every", 2,
                                            "--sample-prompt", "Once upon a time"], capsys)
    assert status == 0, err
    assert_same_weights(tmp_path / "plain", tmp_path / "sampled")
    assert out.count("sample at step ") == 2 and "'Once upon a time" in out
    samples = [json.loads(line) for line in open(tmp_path / "sampled" / "metrics.jsonl")
               if '"sample"' in line]
    assert [m["step"] for m in samples] == [2, 4] and all(m["text"].startswith("Once upon a time") for m in samples)


def test_best_holds_the_lowest_val_loss_checkpoint(token_dir, tmp_path, capsys):
    """With a constant learning rate a shorter run is a prefix of a longer one, so best/ must
    equal the run stopped at the step of the lowest evaluated val loss."""
    args = ["--data", token_dir, *TINY, "--eval-interval", 1, "--lr", 0.3, "--min-lr", 0.3]
    status, out, err = run_script("train", [*args, "--max-iters", 6, "--out", tmp_path / "run"], capsys)
    assert status == 0, err
    evals = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl") if '"eval"' in line]
    best = min(evals, key=lambda m: m["val_loss"])
    saved = json.load(open(tmp_path / "run" / "best" / "best.json"))
    assert saved == {"step": best["step"], "val_loss": best["val_loss"]}
    assert best["step"] != 6, "lr 0.3 should overshoot: the best is not the last step"
    status, _, err = run_script("train", [*args, "--max-iters", best["step"], "--out", tmp_path / "short"], capsys)
    assert status == 0, err
    assert_same_weights(tmp_path / "short", tmp_path / "run" / "best")
    assert set(os.listdir(tmp_path / "run" / "best")) == {"model.safetensors", "config.json", "vocab.json",
                                                          "merges.txt", "best.json"}


def tree_digest(directory):
    h = hashlib.sha256()
    for root, _, names in sorted(os.walk(directory)):
        for name in sorted(names):
            path = os.path.join(root, name)
            h.update(path.encode() + open(path, "rb").read() + str(os.stat(path).st_mtime_ns).encode())
    return h.hexdigest()


def test_eval_only_prints_the_losses_and_changes_nothing(token_dir, tmp_path, capsys):
    status, out, err = run_script("train", ["--data", token_dir, *TINY, "--max-iters", 2,
                                            "--eval-interval", 2, "--out", tmp_path / "run"], capsys)
    assert status == 0, err
    last = [line for line in out.splitlines() if line.startswith("step 2:")][0]
    before = tree_digest(tmp_path / "run")
    status, out, err = run_script("train", ["--eval-only", "--resume", tmp_path / "run"], capsys)
    assert status == 0, err
    assert out.strip() == last.split(": ", 1)[1].split(", ")[0] + ", " + last.split(", ")[1]
    status, out2, err = run_script("train", ["--eval-only", "--init", tmp_path / "run", "--data", token_dir,
                                             *TINY[:-2]], capsys)
    assert status == 2 and "cannot be used with --init" in err  # the shape comes from the checkpoint
    status, out2, err = run_script("train", ["--eval-only", "--init", tmp_path / "run", "--data", token_dir,
                                             "--block-size", 16, "--batch-size", 2, "--eval-iters", 2,
                                             "--seed", 3], capsys)
    assert status == 0 and out2 == out, err
    assert tree_digest(tmp_path / "run") == before


def test_eval_lines_and_metrics_report_tokens_per_s_and_mfu(token_dir, tmp_path, capsys):
    status, out, err = run_script("train", ["--data", token_dir, *TINY, "--max-iters", 2, "--eval-interval", 2,
                                            "--out", tmp_path / "run", "--peak-flops", 1e9], capsys)
    assert status == 0, err
    evals = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl") if '"eval"' in line]
    assert "mfu" not in evals[0]  # step 0: nothing trained yet
    params, config = numpy_gpt2.load(tmp_path / "run")
    expected = mfu.flops_per_token(params, config, 16) * evals[1]["tokens_per_s"] / 1e9
    assert evals[1]["mfu"] == pytest.approx(expected, rel=1e-12)
    trains = [m for m in map(json.loads, open(tmp_path / "run" / "metrics.jsonl")) if m["kind"] == "train"]
    tokens = 2 * 16  # per step: --batch-size x --block-size
    assert evals[1]["tokens_per_s"] == pytest.approx(2 * tokens / sum(tokens / m["tokens_per_s"] for m in trains),
                                                     rel=1e-9)
    assert f"MFU {100 * evals[1]['mfu']:.2f}%" in out and f"{evals[1]['tokens_per_s']:,.0f} tokens/s" in out
    status, _, err = run_script("train", ["--data", token_dir, *TINY, "--out", tmp_path / "x", "--peak-flops", -1], capsys)
    assert status == 2 and "--peak-flops -1.0 is invalid" in err


def test_dropout_runs_resume_exactly_and_p_zero_changes_nothing(token_dir, tmp_path, capsys):
    args = ["--data", token_dir, *TINY, "--eval-interval", 2]
    for out, extra in [("plain", []), ("zero", ["--dropout", 0]), ("drop", ["--dropout", 0.2]),
                       ("half", ["--dropout", 0.2, "--max-iters", 2])]:
        status, _, err = run_script("train", [*args, "--max-iters", 4, *extra, "--out", tmp_path / out], capsys)
        assert status == 0, err
    status, _, err = run_script("train", ["--resume", tmp_path / "half", "--max-iters", 4], capsys)
    assert status == 0, err
    assert_same_weights(tmp_path / "plain", tmp_path / "zero")  # p = 0: every number as without
    assert_same_weights(tmp_path / "drop", tmp_path / "half")  # masks from the saved RNG: exact resume
    assert not np.array_equal(weights(tmp_path / "plain")["h.0.mlp.c_fc.weight"],
                              weights(tmp_path / "drop")["h.0.mlp.c_fc.weight"])
    status, _, err = run_script("train", [*args, "--dropout", 1, "--out", tmp_path / "bad"], capsys)
    assert status == 2 and "--dropout 1.0 is invalid: expected a number in [0, 1)" in err
