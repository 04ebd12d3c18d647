"""Models without biases (GPT2Config.bias False, nanoGPT's bias=False): the biases are constant
zeros, not parameters.

The oracle is nanoGPT's bias-free GPT written in torch below (model.py with bias=False:
nn.Linear(..., bias=False), LayerNorm with no bias, exact GELU, tied head, scaled dot-product
attention), holding our weights; its optimizer is torch.optim.AdamW with nanoGPT's parameter
groups (weight decay on tensors of >= 2 dimensions only) and clip_grad_norm_.

Tolerances, float64: logits 1e-10 relative to max |logit|, every weight gradient 1e-9
(max |ours - torch| / max |torch| per tensor), weights after 3 AdamW steps 1e-9 (max
|ours - torch| / max |torch|). Bias gradients and biases after training: exactly 0.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st

import numpy_gpt2
from helpers.checkpoints import make_config, random_state_dict
from helpers.format_files import nanogpt_checkpoint, save_torch
from helpers.grad_oracle import grad_error
from numpy_gpt2 import CheckpointError, GPT2Config
from numpy_gpt2.debug.capture import gradients, parameter_gradient_names
from numpy_gpt2.io.checkpoint import hf_config_dict
from numpy_gpt2.config import config_from_dict
from numpy_gpt2.dropout import Dropout
from numpy_gpt2.training.optim import adamw_init, adamw_update
from numpy_gpt2.params import flatten_params, frozen_keys, nest_params
from numpy_gpt2.training.step import train_step
from helpers.run_scripts import run_script
from helpers.mpi_runs import TINY, assert_same_run, mpi, needs_mpi, one_process

# test_distributed's fixtures: the environment of an mpiexec run and a directory of tokens.
LINEAR = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def bias_free_model(seed=0, n_layer=2, n_head=2, n_embd=16, n_ctx=12, vocab_size=29):
    """(params float64 with zero biases, our config with bias=False)."""
    sd = random_state_dict(make_config(n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_ctx=n_ctx,
                                       vocab_size=vocab_size), seed=seed)
    sd["wte.weight"] = sd["wte.weight"] * 0.3  # logits of a few units: softmaxes not one-hot
    flat = {k: np.zeros(v.shape) if k.endswith(".bias") else v.double().numpy()
            for k, v in sd.items()}
    config = GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_ctx=n_ctx,
                        vocab_size=vocab_size, activation_function="gelu", bias=False)
    return nest_params(flat), config


# --- the oracle: nanoGPT's GPT with bias=False, in torch ---------------------------------------

def nanogpt_leaves(params) -> dict:
    """{checkpoint key: float64 leaf tensor} of every parameter nanoGPT's bias-free model has
    (no biases), nn.Linear weights in torch's (out, in) layout."""
    leaves = {}
    for key, value in flatten_params(params).items():
        if key.endswith(".bias"):
            continue
        value = value.T if key.endswith(LINEAR) else value
        leaves[key] = torch.tensor(np.ascontiguousarray(value), dtype=torch.float64, requires_grad=True)
    return leaves


def nanogpt_logits(w: dict, config, idx) -> torch.Tensor:
    """nanoGPT model.py GPT.forward with bias=False (dropout 0), weights w from nanogpt_leaves."""
    idx = torch.as_tensor(np.asarray(idx))
    B, T = idx.shape
    E, H = config.n_embd, config.n_head
    ln = lambda x, key: F.layer_norm(x, (E,), w[key], None, config.layer_norm_epsilon)  # noqa: E731
    x = w["wte.weight"][idx] + w["wpe.weight"][:T]
    for i in range(config.n_layer):
        p = f"h.{i}."
        q, k, v = F.linear(ln(x, p + "ln_1.weight"), w[p + "attn.c_attn.weight"]).split(E, dim=2)
        q, k, v = (a.view(B, T, H, E // H).transpose(1, 2) for a in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, E)
        x = x + F.linear(y, w[p + "attn.c_proj.weight"])
        h = F.gelu(F.linear(ln(x, p + "ln_2.weight"), w[p + "mlp.c_fc.weight"]))
        x = x + F.linear(h, w[p + "mlp.c_proj.weight"])
    return F.linear(ln(x, "ln_f.weight"), w["wte.weight"])  # lm_head tied to wte


def nanogpt_loss(w, config, x, y):
    logits = nanogpt_logits(w, config, x)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.as_tensor(np.asarray(y)).reshape(-1))


def as_ours(key, tensor) -> np.ndarray:
    a = tensor.detach().numpy()
    return a.T if key.endswith(LINEAR) else a


TOKENS = np.array([[5, 17, 2, 23, 8, 0, 21, 26, 12, 3, 9, 1], [1, 9, 28, 7, 7, 25, 14, 2, 19, 4, 4, 0]])
TARGETS = np.roll(TOKENS, -1, axis=1)


# --- config --------------------------------------------------------------------------------

def test_config_bias_field_is_read_checked_and_written():
    assert GPT2Config(n_layer=1, n_head=1, n_embd=4).bias is True
    base = {"n_layer": 1, "n_head": 1, "n_embd": 4}
    assert config_from_dict(base).bias is True
    assert config_from_dict({**base, "bias": True}).bias is True
    config = config_from_dict({**base, "bias": False})
    assert config.bias is False
    assert hf_config_dict(config)["bias"] is False
    assert "bias" not in hf_config_dict(config_from_dict(base))  # transformers' keys only
    assert config_from_dict(hf_config_dict(config)) == config
    for bad in (0, 1, "false", None, [False]):
        with pytest.raises(CheckpointError, match=r"^m/config\.json: bias must be true or false, got "):
            config_from_dict({**base, "bias": bad}, where="m/config.json")
        with pytest.raises(CheckpointError, match=r"^config: bias must be true or false"):
            GPT2Config(n_layer=1, n_head=1, n_embd=4, bias=bad)


def test_frozen_keys_are_every_linear_and_layernorm_bias():
    params, config = bias_free_model()
    keys = frozen_keys(params, config)
    assert keys == [k for k in flatten_params(params) if k.endswith(".bias")]
    assert len(keys) == 6 * config.n_layer + 1 and "ln_f.bias" in keys
    assert frozen_keys(params, dataclasses.replace(config, bias=True)) == []


# --- forward and backward against nanoGPT --------------------------------------------------

@settings(max_examples=6)
@given(seed=st.integers(0, 2**16), n_layer=st.integers(1, 3), n_head=st.sampled_from([1, 2, 4]),
       T=st.integers(1, 12))
def test_logits_and_gradients_match_nanogpt_bias_false(seed, n_layer, n_head, T):
    params, config = bias_free_model(seed=seed, n_layer=n_layer, n_head=n_head)
    x, y = TOKENS[:, :T], TARGETS[:, :T]
    w = nanogpt_leaves(params)
    loss_ref = nanogpt_loss(w, config, x, y)
    loss_ref.backward()
    with torch.no_grad():
        ref = nanogpt_logits(w, config, x).numpy()
    for reference in (True, False):
        logits = numpy_gpt2.forward(params, config, x, reference=reference)
        assert np.abs(logits - ref).max() <= 1e-10 * np.abs(ref).max()
        seen = []
        loss, grads = numpy_gpt2.loss_and_grads(params, config, x, y, reference=reference,
                                                record_grad=lambda name, a: seen.append(name))
        assert abs(loss - loss_ref.item()) <= 1e-10 * loss_ref.item()
        flat = flatten_params(grads)
        assert list(flat) == list(flatten_params(params))  # grads mirror params
        for key, g in flat.items():
            assert g.shape == flatten_params(params)[key].shape and g.dtype == np.float64
            if key.endswith(".bias"):
                assert not g.any(), f"d{key} is not zero"
                assert key not in seen  # not a parameter: record_grad does not see it
            else:
                err = grad_error(g, as_ours(key, w[key].grad))
                assert err <= 1e-9, f"reference={reference}: d{key} off by {err:.2e}"
                assert key in seen


def test_gradient_norm_and_accumulation_ignore_the_constant_biases():
    """The global gradient norm (what clipping uses) is nanoGPT's over its parameters; an
    accumulator with the previous micro-batch's gradients keeps zero bias gradients."""
    params, config = bias_free_model(seed=3)
    w = nanogpt_leaves(params)
    nanogpt_loss(w, config, TOKENS, TARGETS).backward()
    torch_norm = torch.nn.utils.clip_grad_norm_(list(w.values()), 1e9).item()
    _, grads = numpy_gpt2.loss_and_grads(params, config, TOKENS, TARGETS)
    assert abs(numpy_gpt2.training.optim.grad_norm(grads) - torch_norm) <= 1e-12 * torch_norm
    _, grads = numpy_gpt2.loss_and_grads(params, config, TOKENS[::-1], TARGETS[::-1], grads=grads)
    assert not any(g.any() for k, g in flatten_params(grads).items() if k.endswith(".bias"))


# --- training: AdamW against torch.optim.AdamW with nanoGPT's parameter groups -------------

def test_three_train_steps_match_torch_adamw_with_nanogpt_param_groups():
    params, config = bias_free_model(seed=5)
    w = nanogpt_leaves(params)
    decay = [p for p in w.values() if p.dim() >= 2]
    no_decay = [p for p in w.values() if p.dim() < 2]
    hyper = dict(betas=(0.9, 0.95), eps=1e-8)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}], lr=1.0, **hyper)
    state = adamw_init(params)
    micro = [(TOKENS[:1], TARGETS[:1]), (TOKENS[1:], TARGETS[1:])]  # grad accumulation, 2
    worst = 0.0
    for step, lr in enumerate([3e-3, 1e-2, 5e-3]):
        loss, norm = train_step(params, config, state, micro, lr, weight_decay=0.1, grad_clip=0.5, **hyper)
        opt.zero_grad()
        for x, y in micro:
            (nanogpt_loss(w, config, x, y) / len(micro)).backward()
        torch_norm = torch.nn.utils.clip_grad_norm_(list(w.values()), 0.5).item()
        assert torch_norm > 0.5  # clipping is active
        assert abs(norm - torch_norm) <= 1e-10 * torch_norm
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
        flat = flatten_params(params)
        for key, value in flat.items():
            if key.endswith(".bias"):
                assert not value.any(), f"step {step}: {key} is not zero"
                continue
            ref = as_ours(key, w[key])
            err = float(np.abs(value - ref).max() / np.abs(ref).max())
            assert err <= 1e-9, f"step {step}: {key} off by {err:.2e}"
            worst = max(worst, err)
    assert state["step"] == 3
    for which in ("m", "v"):  # the moments still mirror params; the constants' stay zero
        moments = flatten_params(state[which])
        assert list(moments) == list(flatten_params(params))
        assert not any(moments[k].any() for k in frozen_keys(params, config))
    print(f"\n3 AdamW steps vs torch (nanoGPT param groups): max weight error {worst:.1e}")


@pytest.mark.parametrize("eps, dropout", [(0.0, 0.0), (1e-8, 0.3)])
def test_eps_zero_weight_decay_dropout_leave_the_biases_zero(eps, dropout):
    """eps=0: AdamW on a zero gradient would be 0/0 = NaN; the constants are not updated at
    all. T = n_ctx so that every wpe row has a gradient, and no dropout with eps=0 (a
    parameter element whose gradient is exactly 0, e.g. wpe where both micro-batches' masks
    drop it, is NaN with eps=0 in torch too). Dropout: the bias gradients are zero anyway."""
    params, config = bias_free_model(seed=7)
    state = adamw_init(params)
    micro = [(TOKENS[:1], TARGETS[:1], Dropout(dropout, 1)), (TOKENS[1:], TARGETS[1:], Dropout(dropout, 2))]
    start = {k: v.copy() for k, v in flatten_params(params).items()}
    for lr in (1e-2, 1e-2):
        train_step(params, config, state, micro, lr, weight_decay=0.5, grad_clip=1.0, eps=eps)
    flat = flatten_params(params)
    assert all(np.isfinite(v).all() for v in flat.values())
    assert not any(flat[k].any() for k in frozen_keys(params, config))
    assert all(not np.array_equal(v, start[k]) for k, v in flat.items() if not k.endswith(".bias"))
    # Without frozen= the same update makes the biases NaN: the skip is what keeps them.
    _, grads = numpy_gpt2.loss_and_grads(params, config, TOKENS, TARGETS)
    with np.errstate(invalid="ignore"):
        adamw_update(params, grads, state, 1e-2, eps=0.0)
    assert np.isnan(params["h"][0]["ln_1"]["bias"]).all()


def test_adamw_frozen_names_must_be_params():
    params, config = bias_free_model()
    _, grads = numpy_gpt2.loss_and_grads(params, config, TOKENS, TARGETS)
    with pytest.raises(ValueError, match=r"frozen= names \['h\.9\.ln_1\.bias'\], which are not keys"):
        adamw_update(params, grads, adamw_init(params), 1e-3, frozen=["h.9.ln_1.bias"])


def test_init_params_of_a_bias_free_model_has_zero_biases():
    config = GPT2Config(n_layer=2, n_head=2, n_embd=8, n_ctx=8, vocab_size=11, bias=False)
    flat = flatten_params(numpy_gpt2.init_params(config))
    assert all(not flat[k].any() for k in frozen_keys(numpy_gpt2.init_params(config), config))
    assert flat["h.0.attn.c_attn.weight"].std() > 0.01


# --- loading ---------------------------------------------------------------------------------

def saved_bias_free(tmp_path, tokenizer_dir, params, config, name="m"):
    directory = tmp_path / name
    numpy_gpt2.save_checkpoint(directory, params, config, tokenizer_dir)
    return directory


def test_load_round_trip_and_a_nonzero_bias_is_refused(tmp_path, tokenizer_dir):
    params, config = bias_free_model()
    directory = saved_bias_free(tmp_path, tokenizer_dir, params, config)
    assert json.loads((directory / "config.json").read_text())["bias"] is False
    loaded, cfg = numpy_gpt2.load(directory, dtype=np.float64)
    assert cfg == config
    assert all(np.array_equal(a, flatten_params(params)[k]) for k, a in flatten_params(loaded).items())
    params["h"][0]["attn"]["c_attn"]["bias"][5] = 1e-30
    params["h"][1]["ln_1"]["bias"][0] = 2.0
    with pytest.raises(ValueError, match=r"params' h\.0\.attn\.c_attn\.bias is not zero, but the "
                                         r"config has no biases"):
        numpy_gpt2.save_checkpoint(directory, params, config, tokenizer_dir)  # nothing written
    assert numpy_gpt2.load(directory)[1] == config
    # Such a file, written as a model with biases and then declared bias=false (transformers
    # trains the biases of a bias=false checkpoint and keeps the key): refused, always naming
    # the model's first nonzero bias, with the way out.
    numpy_gpt2.save_checkpoint(directory, params, dataclasses.replace(config, bias=True), tokenizer_dir)
    (directory / "config.json").write_text(json.dumps(hf_config_dict(config)))
    for _ in range(3):
        with pytest.raises(CheckpointError, match=r"config\.json says bias=false but "
                                                  r"h\.0\.attn\.c_attn\.bias is not zero \(.*remove "
                                                  r"\"bias\": false from config\.json"):
            numpy_gpt2.load(directory)


def test_save_checkpoint_refuses_params_that_do_not_fit_the_config(tmp_path, tokenizer_dir):
    params, config = bias_free_model()
    del params["h"][1]["mlp"]["c_fc"]["bias"]
    with pytest.raises(ValueError, match=r"params has no h\.1\.mlp\.c_fc\.bias \(a \[64\] array"):
        numpy_gpt2.save_checkpoint(tmp_path / "a", params, config, tokenizer_dir)
    params, config = bias_free_model()
    params["wpe"]["weight"] = params["wpe"]["weight"][:5]
    with pytest.raises(ValueError, match=r"params' wpe\.weight has shape \[5, 16\], expected \[12, 16\]"):
        numpy_gpt2.save_checkpoint(tmp_path / "b", params, config, tokenizer_dir)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_absent_biases_load_as_zeros_only_for_a_bias_free_config(tmp_path):
    from safetensors.numpy import save_file
    params, config = bias_free_model()
    flat = {k: v for k, v in flatten_params(params).items() if not k.endswith(".bias")}
    flat["h.1.ln_2.bias"] = np.zeros(config.n_embd)  # some present (zero), the rest absent
    os.makedirs(tmp_path / "m")
    save_file(flat, str(tmp_path / "m" / "model.safetensors"))
    (tmp_path / "m" / "config.json").write_text(json.dumps(hf_config_dict(config)))
    loaded, cfg = numpy_gpt2.load(tmp_path / "m", dtype=np.float64)
    assert cfg.bias is False
    assert list(flatten_params(loaded)) == list(flatten_params(params))
    assert all(np.array_equal(a, flatten_params(params)[k]) for k, a in flatten_params(loaded).items())
    d = hf_config_dict(config)
    del d["bias"]
    (tmp_path / "m" / "config.json").write_text(json.dumps(d))
    with pytest.raises(CheckpointError, match=r"missing keys h\.0\.attn\.c_attn\.bias, "):
        numpy_gpt2.load(tmp_path / "m")


def test_transformers_loads_a_saved_bias_free_checkpoint(tmp_path, tokenizer_dir):
    params, config = bias_free_model(seed=2)
    directory = saved_bias_free(tmp_path, tokenizer_dir, params, config)
    model, info = transformers.GPT2LMHeadModel.from_pretrained(
        directory, output_loading_info=True, dtype=torch.float64, attn_implementation="eager")
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert model.config.bias is False  # kept as a plain attribute, unused
    with torch.no_grad():
        theirs = model.eval()(torch.as_tensor(TOKENS)).logits.numpy()
    ours = numpy_gpt2.forward(params, config, TOKENS)
    assert np.abs(theirs - ours).max() <= 1e-10 * np.abs(ours).max()


# --- scripts ---------------------------------------------------------------------------------

def test_dump_grads_writes_no_bias_gradients_and_compare_live_agrees(tmp_path, tokenizer_dir, capsys):
    from numpy_gpt2.debug.dump_format import load_dump
    params, config = bias_free_model()
    directory = saved_bias_free(tmp_path, tokenizer_dir, params, config)
    assert not [n for n in parameter_gradient_names(params, config) if n.endswith(".bias")]
    assert len(parameter_gradient_names(params)) == len(flatten_params(params))  # no config: all
    _, _, weights = gradients(params, config, TOKENS[0], TARGETS[0], reference=True)
    assert weights and not [n for n in weights if n.endswith(".bias")]
    out = tmp_path / "grads.safetensors"
    status, _, err = run_script("dump", ["--model", directory, "--tokens", "5,17,2,23,8", "--grads",
                                         "--dtype", "float64", "--out", out], capsys)
    assert status == 0, err
    names = list(load_dump(out)["tensors"])
    assert "grad.h.0.attn.c_attn.weight" in names and "grad.h.0.mlp.c_fc" in names
    assert not [n for n in names if n.endswith(".bias")]
    status, stdout, err = run_script("compare", [out, "live", "--model", directory, "--atol", "1e-12",
                                                 "--rtol", "1e-12"], capsys)
    assert status == 0, err + stdout


def nanogpt_ckpt(tmp_path):
    """A nanoGPT bias=False ckpt.pt (GPT-2 vocabulary padded to 50304 rows, n_ctx 32)."""
    hf_config = make_config(n_layer=2, n_head=2, n_embd=16, n_ctx=32, vocab_size=50257)
    save_torch(tmp_path / "ckpt.pt", nanogpt_checkpoint(random_state_dict(hf_config), 2, 32, 50257,
                                                        bias=False, pad_to=50304))
    (tmp_path / "text.txt").write_text("To be, or not to be, that is the question. " * 40)
    return tmp_path / "ckpt.pt"


TRAIN = ["--block-size", 16, "--batch-size", 2, "--eval-iters", 1, "--eval-interval", 2,
         "--lr", 1e-3, "--warmup-iters", 0, "--dtype", "float64"]


def saved_biases_are_zero(directory) -> GPT2Config:
    params, config = numpy_gpt2.load(directory, dtype=np.float64)
    assert json.loads((directory / "config.json").read_text())["bias"] is False
    assert config.bias is False
    assert not any(flatten_params(params)[k].any() for k in frozen_keys(params, config))
    return params, config


def test_train_init_from_nanogpt_bias_false_stays_bias_free_and_resumes(tmp_path, tokenizer_dir,
                                                                         monkeypatch, capsys):
    ckpt = nanogpt_ckpt(tmp_path)
    monkeypatch.setenv("NUMPY_GPT2_TOKENIZER", tokenizer_dir)
    args = ["--init", ckpt, "--data", tmp_path / "text.txt", "--out", tmp_path / "out", *TRAIN]
    status, out, err = run_script("train", args + ["--max-iters", 2, "--grad-accum", 2,
                                                   "--dropout", 0.1], capsys)
    assert status == 0, err
    assert "no biases" in err
    start, _ = numpy_gpt2.load(ckpt, dtype=np.float64)
    tuned, config = saved_biases_are_zero(tmp_path / "out")
    assert np.abs(tuned["h"][0]["mlp"]["c_fc"]["weight"] - start["h"][0]["mlp"]["c_fc"]["weight"]).max() > 0
    state = json.loads((tmp_path / "out" / "train_state.json").read_text())
    assert state["settings"]["bias"] is False
    model, info = transformers.GPT2LMHeadModel.from_pretrained(
        tmp_path / "out", output_loading_info=True, dtype=torch.float64, attn_implementation="eager")
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    tokens = TOKENS + 50000
    with torch.no_grad():
        theirs = model.eval()(torch.as_tensor(tokens)).logits.numpy()
    ours = numpy_gpt2.forward(tuned, config, tokens)
    assert np.abs(theirs - ours).max() <= 1e-10 * np.abs(ours).max()

    status, _, err = run_script("train", ["--resume", tmp_path / "out", "--max-iters", 4], capsys)
    assert status == 0, err
    resumed, _ = saved_biases_are_zero(tmp_path / "out")
    assert json.loads((tmp_path / "out" / "train_state.json").read_text())["step"] == 4
    assert not np.array_equal(resumed["wte"]["weight"], tuned["wte"]["weight"])
    status, _, err = run_script("train", ["--resume", tmp_path / "out", "--max-iters", 6,
                                          "--bias", "true"], capsys)
    assert status == 2 and err.count("\n") == 1
    assert "--bias cannot change when resuming" in err and err.rstrip().endswith("has false)"), err
    # The run's config.json edited to say nothing of biases: the run's files disagree.
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    (tmp_path / "out" / "config.json").write_text(json.dumps({k: v for k, v in saved.items() if k != "bias"}))
    status, _, err = run_script("train", ["--resume", tmp_path / "out", "--max-iters", 6], capsys)
    assert status == 2 and err.count("\n") == 1, err
    assert 'the run trains a model without biases (train_state.json: "bias": false), but its ' \
           'config.json describes one with biases' in err, err
    assert json.loads((tmp_path / "out" / "train_state.json").read_text())["settings"]["bias"] is False
    (tmp_path / "out" / "config.json").write_text(json.dumps(saved))  # restored: it resumes
    status, _, err = run_script("train", ["--resume", tmp_path / "out", "--max-iters", 6], capsys)
    assert status == 0, err
    saved_biases_are_zero(tmp_path / "out")


def test_train_bias_false_from_scratch_and_bias_flag_errors(tmp_path, tokenizer_dir, monkeypatch, capsys):
    ckpt = nanogpt_ckpt(tmp_path)
    monkeypatch.setenv("NUMPY_GPT2_TOKENIZER", tokenizer_dir)
    new = ["--data", tmp_path / "text.txt", "--n-layer", 1, "--n-head", 2, "--n-embd", 8, *TRAIN]
    status, _, err = run_script("train", new + ["--out", tmp_path / "new", "--max-iters", 2,
                                                "--bias", "False"], capsys)
    assert status == 0, err
    saved_biases_are_zero(tmp_path / "new")
    status, _, err = run_script("train", new + ["--out", tmp_path / "with", "--max-iters", 1], capsys)
    assert status == 0, err
    assert "bias" not in json.loads((tmp_path / "with" / "config.json").read_text())
    assert numpy_gpt2.load(tmp_path / "with")[1].bias is True
    # A run saved before the flag existed (no "bias" in its settings) resumes; a damaged one
    # is one line.
    state_file = tmp_path / "with" / "train_state.json"
    state = json.loads(state_file.read_text())
    del state["settings"]["bias"]
    state_file.write_text(json.dumps(state))
    status, _, err = run_script("train", ["--resume", tmp_path / "with", "--max-iters", 2], capsys)
    assert status == 0, err
    state = json.loads(state_file.read_text())
    assert state["step"] == 2 and state["settings"]["bias"] is True
    state["settings"]["bias"] = "no"
    state_file.write_text(json.dumps(state))
    status, _, err = run_script("train", ["--resume", tmp_path / "with", "--max-iters", 3], capsys)
    assert status == 2 and err.count("\n") == 1
    assert '"settings" "bias" is \'no\' (a string), expected true or false' in err, err
    for argv, message in [
            (new + ["--out", tmp_path / "x", "--bias", "no"], "argument --bias: invalid choice: 'no'"),
            (["--init", ckpt, "--data", tmp_path / "text.txt", "--out", tmp_path / "y", "--bias", "false"],
             "--bias cannot be used with --init")]:
        status, out, err = run_script("train", argv, capsys)
        assert status == 2 and err.count("\n") == 1 and message in err, err


def test_convert_to_llmc_writes_zero_biases(tmp_path, tokenizer_dir, capsys):
    params, config = bias_free_model()
    config = dataclasses.replace(config, activation_function="gelu_new")  # llm.c's GELU
    directory = saved_bias_free(tmp_path, tokenizer_dir, params, config)
    status, out, err = run_script("convert", [directory, tmp_path / "m.bin", "--to", "llmc"], capsys)
    assert status == 0, err
    assert "zero biases" in out
    loaded, cfg = numpy_gpt2.load(tmp_path / "m.bin", dtype=np.float64)
    assert cfg.bias is True  # llm.c files have biases: an ordinary GPT-2 whose biases are 0
    assert not any(flatten_params(loaded)[k].any() for k in frozen_keys(params, config))
    ref = numpy_gpt2.forward(params, config, TOKENS)
    got = numpy_gpt2.forward(loaded, cfg, TOKENS)[..., :config.vocab_size]  # llm.c pads the rows
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()  # float32 in the file


@needs_mpi
def test_two_ranks_train_a_bias_free_model_as_one_process(env, token_dir, tmp_path):
    """2 ranks x 1 micro-batch = 1 process x 2 (bit for bit, with dropout), and the summed
    bias gradients stay zero: the biases are zero after the run."""
    args = ["--data", token_dir, *TINY, "--max-iters", 2, "--dropout", 0.1, "--bias", "false"]
    status, _, err = one_process(env, *args, "--out", tmp_path / "one", "--grad-accum", 2)
    assert status == 0, err
    status, _, err = mpi(env, 2, *args, "--out", tmp_path / "two")
    assert status == 0, err
    assert_same_run(tmp_path / "one", tmp_path / "two")
    params, config = saved_biases_are_zero(tmp_path / "two")
    assert config.n_layer == 1


def test_flops_per_token_counts_no_constant_biases():
    from numpy_gpt2.training.mfu import flops_per_token
    params, config = bias_free_model()
    with_biases = dataclasses.replace(config, bias=True)
    n_biases = sum(a.size for k, a in flatten_params(params).items() if k.endswith(".bias"))
    assert flops_per_token(params, with_biases, 8) - flops_per_token(params, config, 8) == 6.0 * n_biases
