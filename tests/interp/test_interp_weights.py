"""numpy_gpt2.interp.weights against TransformerLens' weight processing, and its identities.

process_weights then numpy_gpt2.forward equals a HookedTransformer with TransformerLens'
default processing, hook by hook (relative to each array's largest value: float64 1e-12,
measured 2.4e-15; float32 with TL's own process_weights 3e-5, measured 1.3e-6), and the
documented identities hold in float64: log-probs unchanged (1e-12), logits shifted by their
per-position mean, residual stream centred, v and z shifted by b_V.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from numpy_gpt2.debug.capture import activations
from numpy_gpt2.interp.weights import (center_unembed, center_writing_weights, fold_layer_norm,
                                       fold_value_biases, process_weights)
from numpy_gpt2.loss import log_softmax

from helpers.interp_oracle import random_params, small_config, tl_as_numpy_names, tl_cache, tl_model


def run(params, config, tokens):
    """numpy_gpt2.activations with the softmax (forward adds the unembedding bias lm_head.bias)."""
    return activations(params, config, tokens, names="*,*softmax")


def max_rel(a, b):
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 3e-5)])
@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 2 ** 16), shape=st.sampled_from([(1, 1, 8), (2, 2, 16), (3, 4, 24)]),
       T=st.integers(2, 12))
def test_process_weights_equals_transformer_lens(dtype, tol, seed, shape, T):
    n_layer, n_head, n_embd = shape
    config = small_config(n_layer, n_head, n_embd)
    params = random_params(config, seed, dtype)
    tokens = np.random.default_rng(seed).integers(0, config.vocab_size, T)
    ours = run(process_weights(params, config), config, tokens)
    theirs_logits, theirs = tl_cache(tl_model(params, config), tokens)
    theirs = tl_as_numpy_names(theirs, config)
    assert set(theirs) <= set(ours)
    for name, value in theirs.items():
        assert ours[name].shape == value.shape, name
        assert max_rel(ours[name], value) < tol, name
    assert max_rel(ours["logits"], theirs_logits) < tol


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2 ** 16), T=st.integers(1, 10))
def test_identities_float64(seed, T):
    config = small_config(2, 2, 16)
    params = random_params(config, seed)
    tokens = np.random.default_rng(seed + 1).integers(0, config.vocab_size, T)
    before = run(params, config, tokens)
    after = run(process_weights(params, config), config, tokens)
    # log-probs unchanged; logits shifted by their per-position mean
    assert np.abs(log_softmax(after["logits"]) - log_softmax(before["logits"])).max() < 1e-12
    shifted = before["logits"] - before["logits"].mean(-1, keepdims=True)
    assert np.abs(after["logits"] - shifted).max() < 1e-12 * np.abs(shifted).max() * 10
    # the residual stream at every point is its centred original
    for name in ["h.0", "h.1", "h.0.attn", "h.1.mlp.c_proj"]:
        centred = before[name] - before[name].mean(-1, keepdims=True)
        assert np.abs(after[name] - centred).max() < 1e-12
    # LayerNorm outputs unchanged only up to their weight and bias: normalized values equal
    for i in range(2):
        w, b = params["h"][i]["ln_1"]["weight"], params["h"][i]["ln_1"]["bias"]
        assert np.abs(after[f"h.{i}.ln_1"] * w + b - before[f"h.{i}.ln_1"]).max() < 1e-12


def test_fold_value_biases_shifts_v_and_z():
    config = small_config(2, 2, 16)
    params = random_params(config, 3)
    tokens = np.array([1, 5, 9, 5, 2])
    before = run(params, config, tokens)
    after = run(fold_value_biases(params, config), config, tokens)
    E = config.n_embd
    for i in range(2):
        b_V = params["h"][i]["attn"]["c_attn"]["bias"][2 * E:]
        v0, v1 = before[f"h.{i}.attn.c_attn"][:, 2 * E:], after[f"h.{i}.attn.c_attn"][:, 2 * E:]
        assert np.abs(v1 - (v0 - b_V)).max() < 1e-13
        # z = softmax @ v: the attention rows sum to 1, so z shifts by b_V too
        H, D = config.n_head, config.head_size
        p = before[f"h.{i}.attn.softmax"]
        z0 = p @ v0.reshape(-1, H, D).transpose(1, 0, 2)
        z1 = after[f"h.{i}.attn.softmax"] @ v1.reshape(-1, H, D).transpose(1, 0, 2)
        assert np.abs(z1 - (z0 - b_V.reshape(H, 1, D))).max() < 1e-13
        assert np.abs(after[f"h.{i}"] - before[f"h.{i}"]).max() < 1e-13


def test_each_step_alone_keeps_the_log_probs():
    config = small_config(2, 2, 16)
    params = random_params(config, 7)
    tokens = np.array([3, 1, 4, 1, 5, 9, 2, 6])
    reference = log_softmax(run(params, config, tokens)["logits"])
    for step in (fold_layer_norm, center_writing_weights, center_unembed, fold_value_biases):
        new = step(params, config)
        assert np.abs(log_softmax(run(new, config, tokens)["logits"]) - reference).max() < 1e-12, step
    folded = fold_layer_norm(params, config)
    for ln in [b[n] for b in folded["h"] for n in ("ln_1", "ln_2")] + [folded["ln_f"]]:
        assert np.all(ln["weight"] == 1) and np.all(ln["bias"] == 0)
    # the caller's weights are untouched, and the head is untied where it changes
    assert "lm_head" not in params and "lm_head" in folded
    assert np.all(params["h"][0]["ln_1"]["weight"] != 1)


@pytest.mark.parametrize("kwargs,message", [
    ({"fold_ln": 1}, "fold_ln"), ({"center_writing_weights": None}, "center_writing_weights"),
    ({"center_unembed": "yes"}, "center_unembed"), ({"fold_value_biases": 0}, "fold_value_biases")])
def test_bad_flags(kwargs, message):
    config = small_config()
    with pytest.raises(ValueError, match=message):
        process_weights(random_params(config), config, **kwargs)


def test_bad_params():
    config = small_config()
    with pytest.raises(ValueError, match="params"):
        process_weights({"wte": {}}, config)
    with pytest.raises(ValueError, match="center_weights"):
        fold_layer_norm(random_params(config), config, center_weights="no")


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 3e-5)])
def test_process_weights_every_hook_point(dtype, tol):
    # every TransformerLens hook (resid_pre/mid, LayerNorm scale and normalized, q, k, v in
    # its layout, scores, z, ...) of the processed model, through numpy_gpt2.interp.names
    from numpy_gpt2.debug.capture import activation_names
    from numpy_gpt2.interp import to_transformer_lens

    config = small_config(2, 4, 24)
    params = random_params(config, 11, dtype)
    tokens = np.random.default_rng(11).integers(0, config.vocab_size, 10)
    ours = to_transformer_lens(activations(process_weights(params, config), config, tokens,
                                           activation_names(config, points=True)), config)
    _, theirs = tl_cache(tl_model(params, config), tokens)
    assert set(theirs.keys()) <= set(ours)  # all 40 of TransformerLens' hooks here
    for name in theirs.keys():
        a, b = ours[name], theirs[name].numpy()
        assert a.shape == b.shape, name
        finite = np.isfinite(b)
        assert np.array_equal(finite, np.isfinite(a)), name  # the masked scores: -inf on both sides
        assert np.abs(a[finite] - b[finite]).max() <= tol * np.abs(b[finite]).max(), name
