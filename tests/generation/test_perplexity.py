"""numpy_gpt2.loss, numpy_gpt2.generation.perplexity and scripts/perplexity.py against PyTorch: log-softmax and cross-entropy
on extreme logits, the sliding windows, and the perplexity of a text computed the Hugging Face
way (GPT2LMHeadModel with labels, same windows), plus the edge cases."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import numpy_gpt2
from helpers.checkpoints import make_config, reference_model, write_checkpoint
from numpy_gpt2.generation.perplexity import perplexity, sliding_windows
from numpy_gpt2.loss import cross_entropy, log_softmax, token_nll
from helpers.oracle_activations import one_torch_thread  # noqa: F401  (autouse fixture)
from helpers.run_scripts import run_script

TEXT = ("The tower is 324 metres (1,063 ft) tall, about the same height as an 81-storey "
        "building, and the tallest structure in Paris. Its base is square, measuring 125 metres "
        "(410 ft) on each side. During its construction, the Eiffel Tower surpassed the "
        "Washington Monument to become the tallest man-made structure in the world.")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A small model with GPT-2's real vocabulary size, so the real tokenizer's ids fit."""
    directory = tmp_path_factory.mktemp("ppl_ckpt")
    write_checkpoint(directory, make_config(n_layer=2, n_head=2, n_embd=32, n_ctx=32,
                                            vocab_size=50257), scale=0.3)
    return directory


def torch_sliding_window_nll(model, tokens, max_length, stride):
    """The Hugging Face recipe ("Perplexity of fixed-length models"), computed in PyTorch:
    labels = the window's ids with the already-scored prefix set to -100, loss from the model
    (which shifts labels by one inside). Returns (summed NLL, tokens scored).
    A float64 model's own loss is computed in float32 (transformers casts the logits with
    .float()), so for float64 the same cross-entropy is taken from its float64 logits."""
    ids = torch.as_tensor(np.asarray(tokens, dtype=np.int64))[None]
    nll_sum, n_scored, prev_end = 0.0, 0, 0
    for begin in range(0, ids.shape[1], stride):
        end = min(begin + max_length, ids.shape[1])
        window = ids[:, begin:end]
        labels = window.clone()
        labels[:, :max(prev_end - begin, 0)] = -100
        n = int((labels[:, 1:] != -100).sum())  # the first label has no logits before it
        with torch.no_grad():
            if model.dtype == torch.float32:
                loss = model(window, labels=labels).loss
            else:
                logits = model(window).logits[0, :-1]
                loss = torch.nn.functional.cross_entropy(logits, labels[0, 1:], ignore_index=-100)
        if n:
            nll_sum += float(loss) * n
            n_scored += n
        prev_end = end
        if end == ids.shape[1]:
            break
    return nll_sum, n_scored


# ---- token-level functions ---------------------------------------------------------------------

@settings(max_examples=20)
@given(st.integers(0, 2**32 - 1), st.sampled_from([1.0, 30.0, 1e4]),
       st.sampled_from([np.float32, np.float64]))
def test_log_softmax_and_nll_match_torch(seed, scale, dtype):
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((3, 7, 50)) * scale).astype(dtype)
    targets = rng.integers(0, 50, (3, 7))
    ours = log_softmax(logits)
    theirs = torch.log_softmax(torch.as_tensor(logits), dim=-1).numpy()
    tol = 1e-6 if dtype == np.float32 else 1e-13
    assert np.isfinite(ours).all()  # no overflow at logits ~1e4
    np.testing.assert_allclose(ours, theirs, rtol=tol, atol=tol * max(scale, 1.0))
    nll = token_nll(logits, targets)
    ce = torch.nn.functional.cross_entropy(torch.as_tensor(logits).reshape(-1, 50),
                                           torch.as_tensor(targets).reshape(-1), reduction="none")
    np.testing.assert_allclose(nll, ce.numpy().reshape(3, 7), rtol=tol, atol=tol * max(scale, 1.0))
    assert math.isclose(cross_entropy(logits, targets), float(ce.double().mean()),
                        rel_tol=tol, abs_tol=tol * scale)


@given(n=st.integers(2, 200), max_length=st.integers(2, 64), data=st.data())
def test_sliding_windows_score_every_token_once(n, max_length, data):
    stride = data.draw(st.integers(1, max_length), label="stride")
    windows = sliding_windows(n, max_length, stride)
    scored = [t for _, end, first in windows for t in range(first, end)]
    if stride < max_length:  # overlapping windows: every token but the first, once
        assert scored == list(range(1, n))
    else:  # disjoint windows: a window's first token has no context and is skipped
        assert scored == [t for t in range(1, n) if t % max_length]
    for begin, end, first in windows:
        assert 0 <= begin < first <= end <= n and end - begin <= max_length
        assert begin % stride == 0
    assert windows[-1][1] == n


def test_sliding_windows_reject_bad_settings():
    with pytest.raises(ValueError, match="at least 2 tokens"):
        sliding_windows(1, 8, 4)
    with pytest.raises(ValueError, match="stride must be in 1..max_length=8, got 9"):
        sliding_windows(20, 8, 9)
    with pytest.raises(ValueError, match="stride must be in"):
        sliding_windows(20, 8, 0)
    with pytest.raises(ValueError, match="max_length must be at least 2"):
        sliding_windows(20, 1, 1)


# ---- whole texts against PyTorch ---------------------------------------------------------

@pytest.fixture(scope="module")
def text_tokens(tokenizer_dir):
    return numpy_gpt2.load_tokenizer(tokenizer_dir).encode(TEXT)


@pytest.fixture(scope="module")
def oracles(ckpt):
    return {np.float32: reference_model(ckpt, torch.float32),
            np.float64: reference_model(ckpt, torch.float64)}


@pytest.mark.parametrize("dtype,tol,max_length,stride", [
    (np.float32, 1e-5, 32, 16), (np.float32, 1e-5, 32, 7), (np.float32, 1e-5, 32, 32),
    (np.float32, 1e-5, 12, 5), (np.float32, 1e-5, 2, 1),
    (np.float64, 1e-12, 32, 16), (np.float64, 1e-12, 12, 5)])
def test_perplexity_matches_pytorch(ckpt, text_tokens, oracles, dtype, tol, max_length, stride):
    tokens = text_tokens
    assert len(tokens) > 2 * max_length  # several windows
    params, config = numpy_gpt2.load(ckpt, dtype=dtype)
    seen = []
    ours = perplexity(params, config, tokens, max_length=max_length, stride=stride,
                      progress=lambda done, total: seen.append((done, total)))
    nll_sum, n = torch_sliding_window_nll(oracles[dtype], tokens, max_length, stride)
    assert ours["n_scored"] == n == seen[-1][0] == seen[-1][1]
    assert ours["n_windows"] == len(seen) == len(sliding_windows(len(tokens), max_length, stride))
    assert math.isclose(ours["cross_entropy"], nll_sum / n, rel_tol=tol)
    assert math.isclose(ours["perplexity"], math.exp(nll_sum / n), rel_tol=10 * tol)


def test_text_shorter_than_the_window_is_one_forward_pass(ckpt):
    params, config = numpy_gpt2.load(ckpt, dtype=np.float64)
    tokens = [464, 3290, 318, 257, 922, 3290, 13]
    result = perplexity(params, config, tokens)  # max_length = n_ctx = 32 > 7 tokens
    logits = numpy_gpt2.forward(params, config, np.array(tokens))
    assert result["n_windows"] == 1 and result["n_scored"] == 6
    assert math.isclose(result["cross_entropy"], cross_entropy(logits[:-1], tokens[1:]), rel_tol=1e-13)
    with pytest.raises(ValueError, match="longer than the model's context"):
        perplexity(params, config, tokens, max_length=33)


# ---- the script ----------------------------------------------------------------------------

def test_script_reports_cross_entropy_and_perplexity(ckpt, text_tokens, oracles, tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text(TEXT, encoding="utf-8")
    status, out, err = run_script("perplexity", ["--model", ckpt, text, "--stride", "8"], capsys)
    assert status == 0, err
    tokens = text_tokens
    nll_sum, n = torch_sliding_window_nll(oracles[np.float32], tokens, 32, 8)
    ce = float(re.search(r"cross-entropy: ([0-9.]+) nats/token", out).group(1))
    ppl = float(re.search(r"perplexity: ([0-9.]+)", out).group(1))
    assert f"{len(tokens)} in the text, {n} scored" in out and "stride 8" in out
    assert math.isclose(ce, nll_sum / n, abs_tol=1e-4) and math.isclose(ppl, math.exp(nll_sum / n), rel_tol=1e-3)
    assert f"| {n}/{n} [" in err and "tok/s]" in err and "scoring: 100%" in err  # tqdm, on stderr
    # a text shorter than the window: one window scores all but the first token
    short = tmp_path / "short.txt"
    short.write_text("Hello world, this is short.")
    status, out, _ = run_script("perplexity", ["--model", ckpt, short], capsys)
    assert status == 0 and "7 in the text, 6 scored in 1 window (max length 32, stride 16)" in out
    # stride = window: windows do not overlap
    status, out, _ = run_script("perplexity", ["--model", ckpt, text, "--stride", "32"], capsys)
    assert status == 0 and f"{len(tokens) - math.ceil(len(tokens) / 32)} scored" in out


def test_script_input_errors(ckpt, tokenizer_dir, tmp_path, capsys):
    empty, one, text = tmp_path / "empty.txt", tmp_path / "one.txt", tmp_path / "text.txt"
    empty.write_text("")
    one.write_text("Hello")
    text.write_text(TEXT)
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00abc")
    cases = [([empty], "the file is empty"),
             ([one], "the text is 1 token long; perplexity needs at least 2 tokens"),
             ([text, "--stride", "33"], "--stride must be in 1..32 (the window, --max-length), got 33"),
             ([text, "--max-length", "8", "--stride", "0"], "--stride must be in 1..8 (the window, --max-length), got 0\n"),
             ([text, "--stride", "33"], "got 33; a longer stride would skip the tokens between windows\n"),
             ([text, "--max-length", "64"], "--max-length must be in 2..32 (the model's context, n_ctx), got 64"),
             ([text, "--max-length", "1"], "--max-length must be in 2..32 (the model's context"),
             ([text, "--max-length", "99999999999999999999"], "--max-length: 99999999999999999999 is out of range"),
             ([tmp_path / "nope.txt"], "No such file"),
             ([binary], "not UTF-8 text"),
             ([text, "--bogus"], "perplexity.py: error: unrecognized arguments: --bogus (see --help)"),
             ([text, "--stride", "x"], "argument --stride: invalid int value: 'x'")]
    for argv, message in cases:
        status, out, err = run_script("perplexity", ["--model", ckpt] + argv, capsys)
        assert status == 2 and message in err and out == "", (argv, err)
        assert len(err.strip().splitlines()) == 1


# ---- non-finite numbers ----------------------------------------------------------------------

def test_perplexity_raises_on_nan_naming_the_window_and_activation(ckpt):
    params, config = numpy_gpt2.load(ckpt, dtype=np.float32)
    tokens = np.arange(100) % 50257
    params["h"][1]["mlp"]["c_fc"]["weight"][0, 3] = np.nan
    with pytest.raises(numpy_gpt2.NonFiniteError, match=r"^window of tokens 0\.\.31 \(positions count from the "
                                                        r"window's start\): non-finite logits \(nan\): .* is "
                                                        r"h\.1\.mlp\.c_fc \(nan at position 0, feature 3;"):
        perplexity(params, config, tokens, max_length=32, stride=16)


def test_perplexity_raises_when_the_loss_alone_is_not_finite(ckpt, monkeypatch):
    """Finite float32 logits 6e38 apart: the log-probability of the low one is -inf."""
    params, config = numpy_gpt2.load(ckpt, dtype=np.float32)

    def extreme_logits(params, config, tokens):
        logits = np.zeros((len(tokens), config.vocab_size), np.float32)
        logits[:, 0], logits[:, 1] = 3e38, -3e38
        return logits

    monkeypatch.setattr(numpy_gpt2.generation.perplexity, "forward", extreme_logits)
    with pytest.raises(numpy_gpt2.NonFiniteError, match=r"window of tokens 0\.\.9: the loss is not finite \(inf\)"):
        perplexity(params, config, np.ones(10, np.int64))  # every target is token 1
