"""numpy_gpt2.interp.patching: patch_sweep against TransformerLens' patching.get_act_patch_*
(float64 and float32), attribution_patch against central finite differences of the patched
metric and against patch_sweep where the first order is exact.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from transformer_lens import patching

from numpy_gpt2.interp.patching import attribution_patch, patch_sweep
from numpy_gpt2.interp.weights import process_weights
from numpy_gpt2.model import forward

from helpers.interp_oracle import random_params, small_config, tl_model

TL_PATCH = {"resid_pre": patching.get_act_patch_resid_pre, "attn_out": patching.get_act_patch_attn_out,
            "mlp_out": patching.get_act_patch_mlp_out, "z": patching.get_act_patch_attn_head_out_all_pos}
NAMES = {"resid_pre": "h.{i}.resid_pre", "attn_out": "h.{i}.attn", "mlp_out": "h.{i}.mlp.c_proj",
         "z": "h.{i}.attn.z"}


def logit_diff(good, bad):
    """The logit difference good - bad at the last position, averaged over the batch, and its
    gradient with respect to the logits (for attribution_patch)."""
    def metric(logits):
        d = np.zeros_like(logits)
        d[..., -1, good] = 1
        d[..., -1, bad] = -1
        d /= d[..., 0, 0].size
        return float((logits * d).sum()), d
    return metric


def tokens_pair(config, seed, B=2, T=6):
    rng = np.random.default_rng(seed)
    clean = rng.integers(0, config.vocab_size, (B, T))
    corrupted = clean.copy()
    corrupted[:, rng.integers(0, T - 1)] = rng.integers(0, config.vocab_size, B)
    return clean, corrupted


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 2e-5)])
@pytest.mark.parametrize("point", list(TL_PATCH))
@settings(max_examples=2, deadline=None)
@given(seed=st.integers(0, 2 ** 16), processed=st.booleans())
def test_patch_sweep_equals_transformer_lens(dtype, tol, point, seed, processed):
    config = small_config(2, 2, 16, vocab_size=23)
    params = random_params(config, seed, dtype)
    ours_params = process_weights(params, config) if processed else params
    clean, corrupted = tokens_pair(config, seed)
    metric = logit_diff(3, 5)
    ours = patch_sweep(ours_params, config, clean, corrupted, metric, point)
    model = tl_model(params, config, process=processed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64 if dtype == np.float64 else torch.float32)  # TL's result array
    try:
        with torch.no_grad():
            _, clean_cache = model.run_with_cache(torch.as_tensor(clean))
            theirs = TL_PATCH[point](model, torch.as_tensor(corrupted), clean_cache,
                                     lambda logits: (logits[:, -1, 3] - logits[:, -1, 5]).mean()).numpy()
    finally:
        torch.set_default_dtype(default)
    assert ours.shape == theirs.shape
    assert np.abs(ours - theirs).max() / np.abs(theirs).max() < tol


def patched_metric(params, config, corrupted, source, name, index, t, metric):
    """metric of the corrupted run with activation `name` moved by t * (clean - corrupted) at
    `index` (position j of (..., T, E), or head j of (..., H, T, D))."""
    def move(_, value):
        value = np.array(value)
        value[index] += t * (source[index] - value[index])
        return value
    return metric(forward(params, config, corrupted, hooks={name: move}))[0]


@pytest.mark.parametrize("point", list(NAMES))
@settings(max_examples=3, deadline=None)
@given(seed=st.integers(0, 2 ** 16))
def test_attribution_patch_is_the_derivative(point, seed):
    config = small_config(2, 2, 16, vocab_size=23)
    params = random_params(config, seed)
    clean, corrupted = tokens_pair(config, seed)
    metric = logit_diff(3, 7)
    grid = attribution_patch(params, config, clean, corrupted, metric, point)
    h = 1e-5
    for i in range(config.n_layer):
        name = NAMES[point].format(i=i)
        kept = {}
        forward(params, config, clean, hooks={name: lambda n, v: kept.__setitem__(n, np.array(v))})
        for j in range(grid.shape[1]):
            index = (slice(None), j) if point == "z" else (slice(None), j, slice(None))
            slope = (patched_metric(params, config, corrupted, kept[name], name, index, h, metric)
                     - patched_metric(params, config, corrupted, kept[name], name, index, -h, metric)) / (2 * h)
            assert abs(grid[i, j] - slope) < 1e-7 * max(1.0, abs(slope)), (i, j, grid[i, j], slope)


def test_attribution_patch_is_exact_where_the_metric_is_linear():
    # With a huge LayerNorm epsilon and weights as large as its square root, every LayerNorm
    # is x - mean(x) times a constant (sqrt(var + eps) = sqrt(eps) to 1e-12), so the logits
    # are linear in the last block's MLP output: there the first order is the exact effect.
    config = small_config(2, 2, 16, vocab_size=23, layer_norm_epsilon=1e12)
    params = random_params(config, 4)
    for ln in [b[n] for b in params["h"] for n in ("ln_1", "ln_2")] + [params["ln_f"]]:
        ln["weight"] = ln["weight"] * 1e6
    clean, corrupted = tokens_pair(config, 4)
    metric = logit_diff(2, 9)
    base = metric(forward(params, config, corrupted))[0]
    exact = patch_sweep(params, config, clean, corrupted, metric, "mlp_out") - base
    estimate = attribution_patch(params, config, clean, corrupted, metric, "mlp_out")
    assert np.abs(exact[-1]).max() > 1e-9  # the patch does something
    assert np.abs(estimate[-1] - exact[-1]).max() < 1e-9 * np.abs(exact[-1]).max()
    # elsewhere (through a softmax and a GELU) it is only an estimate
    assert np.abs(estimate[0] - exact[0]).max() > 1e-6 * np.abs(exact[0]).max()
    # single sequences (T,) give the same grids as a batch of one
    one = attribution_patch(params, config, clean[0], corrupted[0], metric, "z")
    assert np.allclose(one, attribution_patch(params, config, clean[:1], corrupted[:1], metric, "z"),
                       rtol=1e-12, atol=0)


def test_bad_arguments():
    config = small_config(2, 2, 16, vocab_size=23)
    params = random_params(config, 0)
    clean, corrupted = tokens_pair(config, 0)
    metric = logit_diff(1, 2)
    with pytest.raises(ValueError, match="point"):
        patch_sweep(params, config, clean, corrupted, metric, "resid_post")
    with pytest.raises(ValueError, match="metric"):
        patch_sweep(params, config, clean, corrupted, None)
    with pytest.raises(ValueError, match="corrupted_tokens"):
        patch_sweep(params, config, clean, corrupted[:, :3], metric)
    with pytest.raises(ValueError, match="clean_tokens"):
        attribution_patch(params, config, clean + 100, corrupted, metric)
    with pytest.raises(ValueError, match="metric"):
        attribution_patch(params, config, clean, corrupted, lambda logits: 1.0)
    with pytest.raises(ValueError, match="dlogits"):
        attribution_patch(params, config, clean, corrupted, lambda logits: (1.0, np.zeros(3)))
