"""The train command's flags (--init's errors, --eval-only, --block-size from the checkpoint)
and train when its stderr or terminal goes away: it keeps training, or saves and exits as
for SIGHUP, and never loses a step; under nohup it ignores SIGHUP. Tiny models, 2-4 steps."""

from __future__ import annotations

from helpers import REPO_ROOT  # noqa: F401

import fcntl
import json
import os
import signal
import subprocess
import sys
import termios
import time

import pytest

import numpy_gpt2
from numpy_gpt2.initialization import init_params
from helpers.run_scripts import run_script

ROOT = REPO_ROOT
TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16",
        "--batch-size", "2", "--eval-iters", "1"]
TEXT = "the king and the queen of a small town spoke to all who came to see them. " * 40


@pytest.fixture
def env(tmp_path):
    tokenizer = os.environ.get("NUMPY_GPT2_TOKENIZER")
    if not tokenizer or not os.path.isfile(os.path.join(tokenizer, "vocab.json")):
        pytest.skip("NUMPY_GPT2_TOKENIZER is not set to GPT-2's tokenizer files")
    (tmp_path / "text.txt").write_text(TEXT, encoding="utf-8")
    return {**os.environ, "PYTHONPATH": ROOT, "HF_HUB_OFFLINE": "1"}


def train(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "numpy_gpt2", "train", *map(str, args)],
                            cwd=kwargs.pop("cwd"), **kwargs)


def saved_step(out) -> int:
    return json.loads((out / "train_state.json").read_text())["step"]


def every_step_logged(out) -> None:
    """The metrics of the save hold one training record per step up to the saved step."""
    steps = [m["step"] for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
             if m["kind"] == "train"]
    assert steps == list(range(1, saved_step(out) + 1))


# ----------------------------------------------------------------------------------------
# The flags

def test_a_bad_init_names_inits_flag_not_generates(env, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run_script("train", ["--data", tmp_path / "text.txt", "--out", tmp_path / "out",
                                        "--init", "no-such-model-xyz"], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert "--init PATH" in err and "--model" not in err, err
    assert not (tmp_path / "out").exists()


def test_eval_only_of_a_new_model_is_refused(env, tmp_path, capsys):
    code, out, err = run_script("train", ["--data", tmp_path / "text.txt", "--eval-only", *TINY], capsys)
    assert (code, out) == (2, "")
    assert err == ("train.py: error: --eval-only needs --init CHECKPOINT (with --data) or --resume "
                   "DIR: the losses of a new, untrained model tell nothing\n")


def test_init_of_a_short_context_checkpoint_needs_no_block_size(env, tmp_path, capsys):
    """A checkpoint with n_ctx 16 < 64: --block-size defaults to its context."""
    config = numpy_gpt2.GPT2Config(n_layer=1, n_head=2, n_embd=16, n_ctx=16)
    numpy_gpt2.save_checkpoint(str(tmp_path / "ckpt"), init_params(config, seed=0), config,
                               tokenizer_dir=os.environ["NUMPY_GPT2_TOKENIZER"])
    code, out, err = run_script("train", ["--data", tmp_path / "text.txt", "--out", tmp_path / "out",
                                          "--init", tmp_path / "ckpt", "--batch-size", "2",
                                          "--eval-iters", "1", "--max-iters", "1"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "out" / "train_state.json").read_text())["settings"]["block_size"] == 16
    code, out, err = run_script("train", ["--data", tmp_path / "text.txt", "--eval-only",
                                          "--init", tmp_path / "ckpt", "--eval-iters", "1"], capsys)
    assert code == 0 and out.startswith("train loss "), err
    code, out, err = run_script("train", ["--data", tmp_path / "text.txt", "--out", tmp_path / "o2",
                                          "--init", tmp_path / "ckpt", "--block-size", "32"], capsys)
    assert code == 2 and "--block-size 32 is larger than the checkpoint's context n_ctx=16" in err


# ----------------------------------------------------------------------------------------
# stderr and the terminal going away

def test_stderr_closed_at_start_still_trains_and_saves(env, tmp_path):
    p = train("--data", "text.txt", "--out", "out", *TINY, "--max-iters", 3, cwd=tmp_path, env=env,
              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
              preexec_fn=lambda: os.close(2))  # as 2>&-
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 0 and out.decode().startswith("step 0: train loss ")
    assert saved_step(tmp_path / "out") == 3
    every_step_logged(tmp_path / "out")


def test_stderr_whose_reader_goes_away_mid_run_keeps_training(env, tmp_path):
    """As `2> >(head -c 300 >/dev/null)`: the reader leaves after the first bytes."""
    p = train("--data", "text.txt", "--out", "out", *TINY, "--max-iters", 4, "--eval-interval", 2,
              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stderr.read(300)
    p.stderr.close()
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 0 and "done: step 4" in out.decode()
    assert saved_step(tmp_path / "out") == 4
    every_step_logged(tmp_path / "out")


def test_a_terminal_that_hangs_up_saves_and_exits_129(env, tmp_path):
    """train on a pty as its controlling terminal; the terminal closes: SIGHUP, then writes
    fail (EIO). It saves the step it reached and exits 129."""
    master, slave = os.openpty()
    p = train("--data", "text.txt", "--out", "out", *TINY, "--max-iters", 100000, cwd=tmp_path,
              env=env, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
              preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
    os.close(slave)
    os.set_blocking(master, False)
    deadline = time.time() + 120
    while not (tmp_path / "out" / "train_state.json").exists() and time.time() < deadline:
        try:
            os.read(master, 1 << 16)
        except OSError:  # nothing to read yet
            time.sleep(0.05)
    os.close(master)  # the terminal goes away
    assert p.wait(timeout=120) == 128 + signal.SIGHUP
    assert saved_step(tmp_path / "out") >= 0
    every_step_logged(tmp_path / "out")


def test_nohup_is_respected(env, tmp_path):
    """SIGHUP ignored at start (nohup): a SIGHUP later changes nothing; the run finishes."""
    p = train("--data", "text.txt", "--out", "out", *TINY, "--max-iters", 4, "--eval-interval", 4,
              cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
              preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    deadline = time.time() + 120
    while not (tmp_path / "out" / "train_state.json").exists() and time.time() < deadline:
        time.sleep(0.02)
    p.send_signal(signal.SIGHUP)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err.decode()
    assert saved_step(tmp_path / "out") == 4 and "SIGHUP" not in err.decode()
