"""Gradient dumps: scripts/dump.py --grads and scripts/compare.py on gradients.

numpy_gpt2's gradient dump passes against one made with torch autograd (tests/oracle_gradients.py:
hooks on the same transformers modules, F.cross_entropy on the logits), float32 and float64,
tied and untied heads, file against file and live. Candidates with classic backward bugs
(numpy_gpt2's readable backward with one function monkeypatched, saved as candidate files;
the package has no bug switches) are caught at the right FIRST gradient. And every bad
output path, missing input and bad argument of dump.py and compare.py exits 2 with one line.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import math
import os
import shutil
import subprocess
import sys
import sysconfig

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import numpy_gpt2
from helpers.checkpoints import make_config, reference_model, write_checkpoint
from numpy_gpt2.debug.capture import (activation_names, gradient_names, gradient_order_key, gradients,
                                      next_token_targets, parameter_gradient_names)
from numpy_gpt2.debug.dump_format import dump_order_key, load_dump, save_activations
from helpers.oracle_activations import one_torch_thread  # noqa: F401  (autouse fixture)
from helpers.oracle_gradients import oracle_gradients, write_oracle_gradient_dump
from helpers.run_scripts import SCRIPTS, load_script, run_script

CFG = dict(n_layer=2, n_head=4, n_embd=32, n_ctx=16, vocab_size=97)
TOKENS = [3, 14, 15, 92, 65, 35, 89, 79, 32, 38, 46]
TOKEN_ARG = ",".join(map(str, TOKENS))
from helpers.tolerances import FLOAT64_COMPARE_FLAGS as FLOAT64_TOL  # noqa: E402

layers_backward = importlib.import_module("numpy_gpt2.layers_backward")
backward = importlib.import_module("numpy_gpt2.backward")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    directory = tmp_path_factory.mktemp("grad_ckpt")
    write_checkpoint(directory, make_config(**CFG))
    return directory


@pytest.fixture(scope="module")
def oracles(ckpt):
    """dtype -> transformers' GPT2LMHeadModel of ckpt in that dtype."""
    return {np.float32: reference_model(ckpt, torch.float32),
            np.float64: reference_model(ckpt, torch.float64)}


@pytest.fixture(scope="module")
def reference_dump(ckpt, tmp_path_factory):
    """numpy_gpt2's gradient dump of TOKENS (softmax probabilities and their gradients too),
    written by scripts/dump.py --grads."""
    path = tmp_path_factory.mktemp("grad_dumps") / "ref.safetensors"
    assert load_script("dump").main(["--model", str(ckpt), "--tokens", TOKEN_ARG, "--out",
                                     str(path), "--grads", "--names", "*,*softmax"]) == 0
    return path


def first_failure(out: str) -> str | None:
    lines = [line for line in out.splitlines() if line.startswith("FIRST FAILURE: ")]
    return lines[0].split()[2].rstrip(":") if lines else None


def statuses(out: str) -> dict[str, str]:
    """{tensor name: "ok" or "FAIL"} for the compared rows of compare.py's table, in order."""
    rows = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 8 and parts[7].rstrip(":") in ("ok", "FAIL"):
            rows[parts[0]] = parts[7].rstrip(":")
    return rows


# ---- the file ----------------------------------------------------------------------------

def test_grad_dump_file_format(ckpt, tmp_path, capsys):
    out = tmp_path / "g.safetensors"
    status, stdout, _ = run_script("dump", ["--model", ckpt, "--tokens", TOKEN_ARG, "--out", out,
                                            "--grads", "--dtype", "float64"], capsys)
    assert status == 0 and "wrote 68 tensors (loss " in stdout, stdout
    with open(out, "rb") as f:  # the header as a C or Rust reader sees it
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    meta = header.pop("__metadata__")
    params, config = numpy_gpt2.load(ckpt, dtype=np.float64)
    acts = [n for n in activation_names(config) if not n.endswith("softmax")]
    grads = [n for n in gradient_names(config) if not n.endswith("softmax")]
    weights = parameter_gradient_names(params)
    backward_order = sorted(grads + weights, key=gradient_order_key)
    assert meta["names"].split(",") == acts + backward_order  # forward, then backward order
    assert backward_order[:9] == [
        "grad.logits", "grad.ln_f", "grad.ln_f.weight", "grad.ln_f.bias", "grad.h.1",
        "grad.h.1.mlp.c_proj", "grad.h.1.mlp.c_proj.weight", "grad.h.1.mlp.c_proj.bias",
        "grad.h.1.mlp.gelu"]
    assert backward_order[-7:] == ["grad.h.0.ln_1", "grad.h.0.ln_1.weight", "grad.h.0.ln_1.bias",
                                   "grad.wpe", "grad.wte", "grad.wpe.weight", "grad.wte.weight"]
    assert grads[0] == "grad.logits" and grads[-2:] == ["grad.wpe", "grad.wte"]
    assert weights[:3] == ["grad.ln_f.weight", "grad.ln_f.bias", "grad.h.1.mlp.c_proj.weight"]
    assert weights[-3:] == ["grad.h.0.ln_1.bias", "grad.wpe.weight", "grad.wte.weight"]
    assert sorted(w[5:] for w in weights) == sorted(numpy_gpt2.flatten_params(params))
    assert header["targets"]["dtype"] == "I64" and header["targets"]["shape"] == [11]
    assert header["loss"]["dtype"] == "F64" and header["loss"]["shape"] == []
    assert header["grad.h.1.attn.c_attn.weight"]["shape"] == [32, 96]
    assert header["grad.h.0.mlp.gelu"]["shape"] == [11, 128]
    assert meta["targets"] == "next tokens" and meta["ignore_index"] == "-100"

    dump = load_dump(out)
    assert dump["targets"].tolist() == TOKENS[1:] + [-100]  # the next token; last ignored
    assert list(dump["tensors"]) == acts + ["loss"] + backward_order
    loss, act_grads, param_grads = gradients(params, config, np.array(TOKENS),
                                             next_token_targets(TOKENS))
    assert float(meta["loss"]) == float(dump["tensors"]["loss"]) == loss
    assert loss == pytest.approx(numpy_gpt2.loss_and_grads(params, config, TOKENS[:-1], TOKENS[1:])[0],
                                 rel=1e-12)  # the last position really is not scored
    for name, a in {**act_grads, **param_grads}.items():
        assert np.array_equal(dump["tensors"][name], a), name
    # activation gradients are those of the (B, T) call, without the batch axis
    _, batched, _ = gradients(params, config, np.array([TOKENS]), next_token_targets([TOKENS]),
                              "grad.h.0.mlp.c_fc,grad.wpe")
    assert np.array_equal(batched["grad.h.0.mlp.c_fc"][0], act_grads["grad.h.0.mlp.c_fc"])
    assert np.array_equal(batched["grad.wpe"][0], act_grads["grad.wte"])  # both dL/d(wte + wpe)


def test_targets_option_and_names_filter(ckpt, tmp_path, capsys):
    out = tmp_path / "t.safetensors"
    status, _, _ = run_script("dump", ["--model", ckpt, "--tokens", "5,6,7,8", "--out", out, "--grads",
                                       "--targets", "-100,9,-100,96", "--names", "grad.h.0.*"], capsys)
    assert status == 0
    dump = load_dump(out)
    assert dump["targets"].tolist() == [-100, 9, -100, 96] and dump["metadata"]["targets"] == "given"
    params, config = numpy_gpt2.load(ckpt)
    loss, act_grads, param_grads = gradients(params, config, np.array([5, 6, 7, 8]),
                                             np.array([-100, 9, -100, 96]), "grad.h.0.*")
    block0 = ["grad.h.0.mlp.c_proj", "grad.h.0.mlp.gelu", "grad.h.0.mlp.c_fc",
              "grad.h.0.ln_2", "grad.h.0.attn", "grad.h.0.attn.c_attn", "grad.h.0.ln_1"]
    assert list(act_grads) == block0 and len(param_grads) == 12
    assert list(dump["tensors"]) == ["loss"] + sorted(block0 + list(param_grads), key=gradient_order_key)
    assert list(dump["tensors"])[1:5] == ["grad.h.0.mlp.c_proj", "grad.h.0.mlp.c_proj.weight",
                                          "grad.h.0.mlp.c_proj.bias", "grad.h.0.mlp.gelu"]  # not grad.h.0
    assert float(dump["tensors"]["loss"]) == loss
    # rows 0 and 2 are not scored: no gradient reaches the logits there
    status, _, _ = run_script("dump", ["--model", ckpt, "--tokens", "5,6,7,8", "--out", out, "--grads",
                                       "--targets=-100,9,-100,96", "--names", "*h.1.mlp.gelu,grad.logits"],
                              capsys)
    dump = load_dump(out)
    assert list(dump["tensors"]) == ["h.1.mlp.gelu", "loss", "grad.logits", "grad.h.1.mlp.gelu"]
    assert not dump["tensors"]["grad.logits"][[0, 2]].any() and dump["tensors"]["grad.logits"][1].any()
    # 'loss,grad.*': every gradient and no activation
    status, _, _ = run_script("dump", ["--model", ckpt, "--tokens", "5,6,7,8", "--out", out, "--grads",
                                       "--names", "loss,grad.*"], capsys)
    dump = load_dump(out)
    assert status == 0 and list(dump["tensors"]) == ["loss"] + sorted(
        gradient_names(config, softmax=False) + parameter_gradient_names(params), key=gradient_order_key)
    # activations only: targets and loss are still written
    status, _, _ = run_script("dump", ["--model", ckpt, "--tokens", "5,6,7,8", "--out", out, "--grads",
                                       "--names", "logits"], capsys)
    dump = load_dump(out)
    assert status == 0 and list(dump["tensors"]) == ["logits", "loss"]
    assert dump["targets"].tolist() == [6, 7, 8, -100]


# ---- numpy_gpt2 against torch autograd ----------------------------------------------------

@pytest.mark.parametrize("dtype,tolerance", [("float32", []), ("float64", FLOAT64_TOL)])
def test_numpy_gpt2_gradient_dump_matches_torch_autograd(ckpt, tmp_path, capsys, dtype, tolerance):
    oracle = tmp_path / "oracle.safetensors"
    write_oracle_gradient_dump(oracle, reference_model(ckpt, getattr(torch, dtype)), TOKENS,
                               next_token_targets(TOKENS), "*,*softmax", dtype)
    ours = tmp_path / "ours.safetensors"
    assert load_script("dump").main(["--model", str(ckpt), "--tokens", TOKEN_ARG, "--out", str(ours),
                                     "--grads", "--names", "*,*softmax", "--dtype", dtype]) == 0
    status, out, _ = run_script("compare", [oracle, ours] + tolerance, capsys)
    n = 22 + 1 + 22 + 28  # activations, loss, activation gradients, weight gradients
    assert status == 0 and f"OK: all {n} compared tensors within tolerance" in out, out
    rows = [line.split()[0] for line in out.splitlines() if line.endswith(" ok")]
    assert rows[21:25] == ["logits", "loss", "grad.logits", "grad.ln_f"] and rows[-1] == "grad.wte.weight"
    # live: numpy_gpt2's loss_and_grads on the oracle file's tokens and targets, both directions
    for argv in ([oracle, "live", "--model", ckpt, "--dtype", dtype],
                 ["live", oracle, "--model", ckpt, "--dtype", dtype]):
        status, out, _ = run_script("compare", argv + tolerance, capsys)
        assert status == 0 and f"OK: all {n} compared tensors within tolerance" in out, out


def test_untied_head_gradient_dump_matches_torch_autograd(tmp_path, capsys):
    """An untied lm_head gets its own gradient, first of the weights (the head is the first
    thing backward passes), and wte gets only the embedding's part."""
    directory = tmp_path / "untied"
    write_checkpoint(directory, make_config(n_layer=1, n_head=2, n_embd=16, n_ctx=8, vocab_size=31,
                                            tie_word_embeddings=False), layout="variant")
    tokens = [1, 30, 7, 7, 2]
    oracle = tmp_path / "oracle.safetensors"
    write_oracle_gradient_dump(oracle, reference_model(directory, torch.float64), tokens,
                               next_token_targets(tokens), "*", "float64")
    status, out, _ = run_script("compare", [oracle, "live", "--model", directory] + FLOAT64_TOL, capsys)
    assert status == 0, out
    weights = [line.split()[0] for line in out.splitlines() if line.startswith("grad.") and
               line.split()[0].endswith(("weight", "bias"))]
    assert weights[0] == "grad.lm_head.weight" and weights[-1] == "grad.wte.weight"


# max |ours - oracle| <= RTOL * max |oracle| + ATOL per gradient name (measured worst on these
# checkpoints: 6e-6 of the tensor's max in float32, 4e-15 in float64)
from helpers.tolerances import GRAD_DUMP_TOL as GRAD_TOL  # noqa: E402


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@settings(max_examples=6)
@given(data=st.data())
def test_every_gradient_name_matches_torch_autograd(ckpt, oracles, dtype, data):
    """numpy_gpt2.gradients against oracle_gradients, name by name: random lengths, tokens
    (repeats included: wte's scatter-add) and targets, some of them ignored."""
    params, config = numpy_gpt2.load(ckpt, dtype=dtype)
    oracle = oracles[dtype]
    T = data.draw(st.integers(1, CFG["n_ctx"]), label="T")
    tokens = np.array(data.draw(st.lists(st.integers(0, 96), min_size=T, max_size=T)), dtype=np.int64)
    targets = np.array(data.draw(st.lists(st.just(-100) | st.integers(0, 96), min_size=T, max_size=T)),
                       dtype=np.int64)
    assume((targets != -100).any())
    loss, act_grads, param_grads = gradients(params, config, tokens, targets, "*,*softmax")
    oracle_loss, _, expected = oracle_gradients(oracle, tokens, targets, "grad.*,grad.*softmax")
    ours = {**act_grads, **param_grads}
    assert list(ours) == list(expected)  # the same names, in the same (backward) order
    rtol, atol = GRAD_TOL[dtype]
    assert abs(loss - oracle_loss) <= rtol * abs(oracle_loss)
    for name, a in ours.items():
        b = expected[name]
        assert a.shape == b.shape and a.dtype == dtype, name
        err = np.abs(a - b).max()
        assert err <= rtol * np.abs(b).max() + atol, f"{name}: max abs err {err:.3g}"


# ---- classic backward bugs, caught at the right first gradient --------------------------

def erf_gelu_backward(dout, x):
    """The derivative of the exact GELU x * Phi(x): Phi(x) + x phi(x). Not GPT-2's tanh form."""
    phi = np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    Phi = 0.5 * (1.0 + torch.special.erf(torch.as_tensor(x) / math.sqrt(2.0)).numpy())
    return dout * (Phi + x * phi)


def layer_norm_backward_without_mean_terms(dout, x, weight, eps=1e-5):
    """dx = dout * w / sigma, as if mean and variance were constants; dw and db are right."""
    dx, dparams = layer_norm_backward(dout, x, weight, eps)
    centered = x - x.mean(axis=-1, keepdims=True)
    return dout * weight / np.sqrt((centered * centered).mean(axis=-1, keepdims=True) + eps), dparams


def softmax_backward_without_row_sum(dprobs, probs, axis=-1):
    """ds = p * dp: the diagonal of the Jacobian only, missing - p * sum(dp * p)."""
    return probs * dprobs


def lm_head_backward_for_the_input_only(dlogits, x, head):
    """The head's input gradient is right, but nothing of dlogits reaches wte: a port that
    treats the tied head as a constant."""
    dx, dhead = lm_head_backward(dlogits, x, head)
    return dx, np.zeros_like(dhead)


layer_norm_backward = layers_backward.layer_norm_backward
lm_head_backward = layers_backward.lm_head_backward

BUGS = {  # bug -> (the functions replaced, in the modules that call them; first wrong tensor)
    "erf GELU derivative": ({"gelu_backward": erf_gelu_backward}, "grad.h.1.mlp.c_fc"),
    # ln_f is the first LayerNorm backward meets: its input is block 1's output
    "LayerNorm without mean terms": ({"layer_norm_backward": layer_norm_backward_without_mean_terms},
                                     "grad.h.1"),
    "softmax without row sum": ({"softmax_backward": softmax_backward_without_row_sum},
                                "grad.h.1.attn.c_attn"),
    "wte without the head's part": ({"lm_head_backward": lm_head_backward_for_the_input_only},
                                    "grad.wte.weight"),
}


@pytest.mark.parametrize("bug", list(BUGS))
@pytest.mark.parametrize("names", ["*,*softmax", "*"])
def test_backward_bug_is_caught_at_the_first_wrong_gradient(ckpt, reference_dump, tmp_path, capsys,
                                                            monkeypatch, bug, names):
    patches, expected = BUGS[bug]
    params, config = numpy_gpt2.load(ckpt)
    for name, function in patches.items():
        for module in (layers_backward, backward):  # backward.py imports some by name
            if hasattr(module, name):
                monkeypatch.setattr(module, name, function)
    targets = next_token_targets(TOKENS)
    # the candidate: the readable backward pass (it calls the patched functions)
    loss, act_grads, param_grads = gradients(params, config, np.array(TOKENS), targets, names,
                                             reference=True)
    cand = tmp_path / "cand.safetensors"
    save_activations(cand, TOKENS, {**act_grads, **param_grads}, {"model": "candidate"},
                     targets=targets, loss=loss)
    status, out, _ = run_script("compare", [reference_dump, cand], capsys)
    assert status == 1 and first_failure(out) == expected, out
    rows = statuses(out)
    order = list(rows)
    assert all(rows[n] == "ok" for n in order[:order.index(expected)]), out
    if bug == "wte without the head's part":  # every activation gradient passes
        assert [n for n, s in rows.items() if s == "FAIL"] == ["grad.wte.weight"], out


# ---- targets, loss and tolerances ---------------------------------------------------------

def test_different_targets_or_loss_are_reported(ckpt, reference_dump, tmp_path, capsys):
    ref = load_dump(reference_dump)
    shifted = tmp_path / "shifted.safetensors"  # a port that shifts the targets once more
    save_activations(shifted, TOKENS, {n: ref["tensors"][n] for n in ("logits", "grad.logits")},
                     targets=np.array(TOKENS[2:] + [-100, -100]), loss=float(ref["tensors"]["loss"]))
    status, _, err = run_script("compare", [reference_dump, shifted], capsys)
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert "different targets (first difference at position 0: reference 14, candidate 15" in err
    # the activations do not depend on the targets: they alone are compared without complaint
    status, out, _ = run_script("compare", [reference_dump, shifted, "--names", "logits"], capsys)
    assert status == 0 and "OK: all 1 compared tensors" in out, out
    wrong_loss = tmp_path / "loss.safetensors"
    tensors = {n: a for n, a in ref["tensors"].items() if n != "loss"}
    save_activations(wrong_loss, TOKENS, tensors, targets=ref["targets"],
                     loss=float(ref["tensors"]["loss"]) + 0.01)
    status, out, _ = run_script("compare", [reference_dump, wrong_loss], capsys)
    assert status == 1 and first_failure(out) == "loss", out
    assert "(difference 0.01)" in out and "1 of 73 compared tensors exceed" in out
    # a port's loss as a (1,) float32 tensor is fine
    port = tmp_path / "port.safetensors"
    save_activations(port, TOKENS, {"grad.logits": ref["tensors"]["grad.logits"]}, targets=ref["targets"])
    with open(port, "rb") as f:
        assert b'"loss"' not in f.read(2000)
    from safetensors.numpy import save_file
    save_file({"tokens": np.array(TOKENS), "targets": ref["targets"],
               "loss": np.array([ref["tensors"]["loss"]], np.float32),
               "grad.logits": ref["tensors"]["grad.logits"]}, str(port))
    status, out, _ = run_script("compare", [reference_dump, port], capsys)
    assert status == 0 and "OK: all 2 compared tensors" in out, out


def test_gradient_tolerance_is_relative_to_each_tensors_scale(reference_dump, tmp_path, capsys):
    """A gradient much smaller than atol still fails when it is wrong by 1%: atol is scaled by
    the tensor's largest |value|; rounding-sized differences pass."""
    ref = load_dump(reference_dump)
    tensors = dict(ref["tensors"])
    tiny = {"grad.logits": tensors["grad.logits"] * 1e-6}  # a long sequence: grads ~1/N
    base = tmp_path / "base.safetensors"
    save_activations(base, TOKENS, tiny, targets=ref["targets"])
    scale = np.abs(tiny["grad.logits"]).max()
    for factor, noise, ok in [(1.01, 0.0, False), (1.0, 3e-6, True), (1.0, 3e-4, False)]:
        cand = tmp_path / "cand.safetensors"
        save_activations(cand, TOKENS, {"grad.logits": tiny["grad.logits"] * factor + noise * scale},
                         targets=ref["targets"])
        status, out, _ = run_script("compare", [base, cand], capsys)
        assert status == (0 if ok else 1), (factor, noise, out)


def test_ports_file_is_compared_in_backward_order(ckpt, reference_dump, tmp_path, capsys):
    """A port writes its gradients in any order and without metadata: compared (and the
    first failure named) in the order the backward pass computes them."""
    ref = load_dump(reference_dump)
    names = ["grad.wte.weight", "grad.h.0.ln_1", "grad.logits", "grad.h.1.mlp.c_fc.bias",
             "grad.lm_head_typo", "grad.h.1.mlp.gelu", "grad.ln_f.weight", "grad.wte"]
    tensors = {n: ref["tensors"].get(n, np.zeros(3, np.float32)) for n in names}
    tensors["grad.h.0.ln_1"] = tensors["grad.h.0.ln_1"] * 2  # two wrong tensors: block 1's
    tensors["grad.h.1.mlp.c_fc.bias"] = tensors["grad.h.1.mlp.c_fc.bias"] * 2  # c_fc.bias is first
    from safetensors.numpy import save_file
    port = tmp_path / "port.safetensors"
    save_file({"targets": ref["targets"], **tensors, "tokens": np.array(TOKENS, np.int32)}, str(port))
    status, out, _ = run_script("compare", [reference_dump, port], capsys)
    assert status == 1 and first_failure(out) == "grad.h.1.mlp.c_fc.bias", out
    compared = [n for n in statuses(out) if n in names]
    assert compared == ["grad.logits", "grad.ln_f.weight", "grad.h.1.mlp.gelu",
                        "grad.h.1.mlp.c_fc.bias", "grad.h.0.ln_1", "grad.wte", "grad.wte.weight"]
    assert "extra: not in reference" in next(l for l in out.splitlines() if l.startswith("grad.lm_head_typo"))


def test_order_keys_sort_any_names():
    names = ["grad.wte.weight", "h.10.ln_1", "grad.h.2.ln_1.bias", "grad.h.10.mlp.c_fc", "loss",
             "grad.h.2.ln_1.weight", "mystery", "grad.wte", "grad.h.10.attn.c_proj.weight",
             "grad.lm_head.weight", "grad.h.2", "grad.logits", "logits", "grad.h.10.mlp.c_fc.bias",
             "grad.ln_f.bias", "grad.wpe", "h.2.mlp.gelu", "grad.wpe.weight", "grad.h.2.attn.softmax"]
    assert sorted(names, key=dump_order_key) == [
        "h.2.mlp.gelu", "h.10.ln_1", "logits", "loss",
        "grad.logits", "grad.lm_head.weight", "grad.ln_f.bias", "grad.h.10.mlp.c_fc",
        "grad.h.10.mlp.c_fc.bias", "grad.h.10.attn.c_proj.weight", "grad.h.2",
        "grad.h.2.attn.softmax", "grad.h.2.ln_1.weight", "grad.h.2.ln_1.bias", "grad.wpe",
        "grad.wte", "grad.wpe.weight", "grad.wte.weight", "mystery"]


# ---- errors: exit status 2 and one line ---------------------------------------------------

def test_dump_errors_exit_2_with_one_line(ckpt, tmp_path, capsys):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    good = ["--model", ckpt, "--tokens", "1,2,3"]
    cases = [  # bad output paths
        (good + ["--out", a_file / "x.safetensors"], "file.txt is not a directory"),
        (good + ["--out", tmp_path], "is a directory"),
        # missing inputs
        (["--model", tmp_path / "no_model", "--tokens", "1", "--out", tmp_path / "o.st"], "no such file"),
        # bad arguments
        (good, "the following arguments are required: --out"),
        (good + ["--out", tmp_path / "o.st", "--bogus"], "unrecognized arguments: --bogus"),
        (good + ["--out", tmp_path / "o.st", "--dtype", "float16"], "invalid choice: 'float16'"),
        (["--model", ckpt, "--out", tmp_path / "o.st"], "one of the arguments --prompt --tokens is required"),
        (good + ["--out", tmp_path / "o.st", "--targets", "1,2,3"], "--targets is used only with --grads"),
        (good + ["--out", tmp_path / "o.st", "--grads", "--targets", "1,2"], "--targets has 2 ids for 3 tokens"),
        (good + ["--out", tmp_path / "o.st", "--grads", "--targets", "1,x,2"], "--targets must be comma-separated"),
        (good + ["--out", tmp_path / "o.st", "--grads", "--targets", "1,2,97"], "target id 97"),
        (good + ["--out", tmp_path / "o.st", "--grads", "--targets", "-100,-100,-100"], "every target is ignore_index"),
        (["--model", ckpt, "--tokens", "4", "--out", tmp_path / "o.st", "--grads"], "a single token has no next token"),
        (good + ["--out", tmp_path / "o.st", "--names", "h.0.*,grad.*"], "gradient names need --grads"),
        (good + ["--out", tmp_path / "o.st", "--names", "h.7.*"], "'h.7.*' matches no name"),
    ]
    for argv, message in cases:
        status, _, err = run_script("dump", argv, capsys)
        assert status == 2 and message in err and len(err.strip().splitlines()) == 1, (argv, err)
        assert err.startswith("dump.py: error: "), err
    assert not os.path.exists(tmp_path / "o.st")


def test_compare_errors_exit_2_with_one_line(ckpt, reference_dump, tmp_path, capsys):
    ref = load_dump(reference_dump)
    no_targets = tmp_path / "no_targets.safetensors"
    save_activations(no_targets, TOKENS, {"grad.logits": ref["tensors"]["grad.logits"]},
                     {"model": str(ckpt)})
    bad_targets = tmp_path / "bad_targets.safetensors"
    save_activations(bad_targets, TOKENS, {"grad.logits": ref["tensors"]["grad.logits"]},
                     {"model": str(ckpt)}, targets=[500] * len(TOKENS))
    float_targets = tmp_path / "float_targets.safetensors"
    from safetensors.numpy import save_file
    save_file({"tokens": np.array(TOKENS), "targets": np.zeros(len(TOKENS))}, str(float_targets))
    cases = [([reference_dump, tmp_path / "missing.safetensors"], "no such file"),
             ([reference_dump, reference_dump, "--atol", "-1"], "--atol and --rtol must be >= 0"),
             ([reference_dump, reference_dump, "--atol", "x"], "invalid float value: 'x'"),
             ([reference_dump], "the following arguments are required: candidate"),
             ([reference_dump, reference_dump, "--bogus"], "unrecognized arguments: --bogus"),
             ([no_targets, "live"], "no 'targets' tensor: a live run needs the targets"),
             (["live", bad_targets], "target id 500"),
             ([float_targets, reference_dump], "'targets' must hold integers"),
             (["live", "live"], "at most one of REFERENCE and CANDIDATE")]
    for argv, message in cases:
        status, _, err = run_script("compare", argv, capsys)
        assert status == 2 and message in err and len(err.strip().splitlines()) == 1, (argv, err)
        assert err.startswith("compare.py: error: "), err


def test_scripts_run_from_a_plain_checkout(ckpt, tmp_path):
    """dump.py and compare.py from a copy of the repository, as processes, with the package
    not installed (python -S: no .pth files, so no editable install; NumPy and the other
    dependencies from site-packages on PYTHONPATH): they find the package next to them.
    A bad --out is one line, exit status 2, no traceback."""
    repo = tmp_path / "checkout"
    shutil.copytree(os.path.join(os.path.dirname(SCRIPTS), "numpy_gpt2"), repo / "numpy_gpt2",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "scripts").mkdir()
    for name in ("dump.py", "compare.py"):  # the shims; the commands are in numpy_gpt2/cli
        shutil.copy(os.path.join(SCRIPTS, name), repo / "scripts" / name)
    env = dict(os.environ, PYTHONPATH=sysconfig.get_paths()["purelib"])
    python = [sys.executable, "-S"]
    not_installed = subprocess.run(python + ["-c", "import numpy_gpt2"], cwd=tmp_path, env=env,
                                   capture_output=True, text=True)
    if not_installed.returncode == 0:
        pytest.skip("numpy_gpt2 is installed into site-packages itself (not editable): "
                    "python -S cannot hide it")
    assert "No module named 'numpy_gpt2'" in not_installed.stderr
    out = tmp_path / "g.safetensors"
    dump = subprocess.run(python + [repo / "scripts" / "dump.py", "--model", ckpt, "--tokens", "1,2,3",
                                    "--grads", "--out", out], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert dump.returncode == 0, dump.stderr
    compare = subprocess.run(python + [repo / "scripts" / "compare.py", out, "live"], cwd=tmp_path,
                             env=env, capture_output=True, text=True)
    assert compare.returncode == 0 and "OK: all 69 compared tensors" in compare.stdout, compare.stderr
    bad = subprocess.run(python + [repo / "scripts" / "dump.py", "--model", ckpt, "--tokens", "1",
                                   "--out", "/dev/null/x.safetensors"], cwd=tmp_path, env=env,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr == (
        "dump.py: error: --out /dev/null/x.safetensors: /dev/null is not a directory\n")


# ---- the order is the backward pass's own ---------------------------------------------------

@pytest.mark.parametrize("n_layer, untied, reference", [(1, False, False), (3, True, False),
                                                        (3, False, True), (2, True, True)])
def test_gradient_order_is_the_order_the_backward_pass_computes(n_layer, untied, reference):
    """Sorting every gradient name with gradient_order_key gives exactly the sequence
    record_grad sees on a real backward pass (fast or readable, tied or untied head, any
    n_layer): the order is read off the pass, so it cannot drift from it."""
    config = numpy_gpt2.GPT2Config(n_layer=n_layer, n_head=2, n_embd=8, n_ctx=8, vocab_size=13,
                                   tie_word_embeddings=not untied)
    params = numpy_gpt2.init_params(config, seed=1)
    seen = []
    numpy_gpt2.loss_and_grads(params, config, [[1, 2, 3], [4, 5, 6]], [[2, 3, 4], [5, 6, -100]],
                              reference=reference, record_grad=lambda n, a: seen.append("grad." + n))
    every = gradient_names(config) + parameter_gradient_names(params)
    assert sorted(every, key=gradient_order_key) == seen
    assert sorted(seen, key=dump_order_key) == seen and len(set(seen)) == len(seen)


@pytest.fixture(scope="module")
def deep_ckpt(tmp_path_factory):
    """3 layers, so that errors can sit in three different blocks."""
    directory = tmp_path_factory.mktemp("grad_ckpt_3")
    write_checkpoint(directory, make_config(**{**CFG, "n_layer": 3}))
    return directory


@pytest.fixture(scope="module")
def deep_dump(deep_ckpt, tmp_path_factory):
    path = tmp_path_factory.mktemp("deep_dump") / "ref.safetensors"
    assert load_script("dump").main(["--model", str(deep_ckpt), "--tokens", TOKEN_ARG, "--out",
                                     str(path), "--grads", "--names", "*,*softmax"]) == 0
    return load_dump(path), path


def planted(deep_dump, tmp_path, wrong: list[str]):
    """The reference dump with the tensors `wrong` doubled (in the file's own order)."""
    ref, _ = deep_dump
    tensors = {n: (a * 2 + 1 if n in wrong else a) for n, a in ref["tensors"].items() if n != "loss"}
    cand = tmp_path / "cand.safetensors"
    save_activations(cand, TOKENS, tensors, targets=ref["targets"], loss=float(ref["tensors"]["loss"]))
    return cand


def test_two_planted_errors_in_different_layers(deep_dump, tmp_path, capsys):
    """The reported case: layer 2's c_fc weight gradient is computed long before layer 1's
    ln_2 activation gradient, so it is the first failure."""
    _, ref_path = deep_dump
    for wrong, first in [(["grad.h.2.mlp.c_fc.weight", "grad.h.1.ln_2"], "grad.h.2.mlp.c_fc.weight"),
                         (["grad.h.1.ln_2", "grad.h.2.mlp.c_fc.weight"], "grad.h.2.mlp.c_fc.weight"),
                         (["grad.h.0.ln_1.bias", "grad.h.1.attn.c_attn.weight"], "grad.h.1.attn.c_attn.weight"),
                         (["grad.wte", "grad.h.0.ln_1.weight"], "grad.h.0.ln_1.weight"),
                         (["grad.ln_f.bias", "grad.h.2"], "grad.ln_f.bias")]:
        status, out, _ = run_script("compare", [ref_path, planted(deep_dump, tmp_path, wrong)], capsys)
        assert status == 1 and first_failure(out) == first, (wrong, out)
        assert [n for n, s in statuses(out).items() if s == "FAIL"] == sorted(wrong, key=dump_order_key)


@settings(max_examples=10)
@given(data=st.data())
def test_any_two_planted_errors_fail_first_at_the_earlier_computed(deep_dump, tmp_path_factory, data):
    ref, ref_path = deep_dump
    names = [n for n in ref["tensors"] if n.startswith("grad.")]  # the file's (backward) order
    i, j = sorted(data.draw(st.lists(st.integers(0, len(names) - 1), min_size=2, max_size=2,
                                     unique=True), label="wrong"))
    wrong = [names[j], names[i]]  # given in the wrong order
    tmp = tmp_path_factory.mktemp("planted")
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        status = load_script("compare").main([str(ref_path), str(planted(deep_dump, tmp, wrong))])
    assert status == 1 and first_failure(out.getvalue()) == names[i], out.getvalue()
