"""Each layer of numpy_gpt2.layers against the PyTorch reference (the oracle).

The oracle is transformers' own GPT-2 modules (NewGELUActivation, Conv1D, GPT2Attention,
GPT2MLP, GPT2Block) and torch functional ops (layer_norm, softmax), with our NumPy weights
copied in. Hypothesis varies batch, length, width, head count and head size (8..64), the
scales of weights and inputs (so activations are far from zero and softmaxes far from
uniform), and seeds, in float32 and float64.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.activations import NewGELUActivation
from transformers.models.gpt2.modeling_gpt2 import GPT2MLP, GPT2Attention, GPT2Block
from transformers.pytorch_utils import Conv1D

from numpy_gpt2.layers import (attention, causal_mask, causal_self_attention,
                               causal_self_attention_per_head, gelu, layer_norm, linear, mlp,
                               merge_heads, softmax, split_heads, transformer_block)

from helpers.layer_oracle import (DTYPES, HEAD_SIZES, SCALES, TORCH, assert_close, gpt2_config, load_into,  # noqa: F401
                                  normal, random_block, seeds, shapes, t)


# --- elementwise / last-axis ops -----------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@given(seed=seeds, shape=st.lists(st.integers(1, 9), min_size=1, max_size=3),
       scale=st.sampled_from([0.01, 0.5, 1.0, 3.0, 10.0, 40.0]))
def test_gelu_matches_transformers_new_gelu(dtype, seed, shape, scale):
    x = normal(np.random.default_rng(seed), shape, scale, dtype)
    assert_close(gelu(x), NewGELUActivation()(t(x)), dtype, "gelu")


def test_gelu_is_the_tanh_form_not_erf():
    # The tanh and erf GELUs differ by up to ~5e-4 near |x| = 2: a test that would catch a swap.
    x = np.linspace(-4, 4, 81)
    erf = torch.nn.functional.gelu(t(x)).numpy()
    assert np.max(np.abs(gelu(x) - erf)) > 1e-4
    assert_close(gelu(x), torch.nn.functional.gelu(t(x), approximate="tanh"), np.float64, "gelu")


@pytest.mark.parametrize("dtype", DTYPES)
@given(seed=seeds, shape=shapes, E=st.sampled_from([8, 24, 40, 64, 768]),
       scale=st.sampled_from([0.01, 1.0, 30.0]), offset=st.sampled_from([0.0, 1.0, 5.0]))
def test_layer_norm_matches_torch(dtype, seed, shape, E, scale, offset):
    rng = np.random.default_rng(seed)
    # offset: a mean far from zero relative to the spread (the residual stream has such rows).
    x = normal(rng, (*shape, E), scale, dtype, mean=offset * scale)
    w, b = normal(rng, (E,), 0.5, dtype, mean=1.0), normal(rng, (E,), 0.5, dtype)
    ours = layer_norm(x, w, b, eps=1e-5)
    assert_close(ours, torch.nn.functional.layer_norm(t(x), (E,), t(w), t(b), eps=1e-5), dtype,
                 "layer_norm")
    ln = torch.nn.LayerNorm(E, eps=1e-5, dtype=TORCH[dtype])  # the module GPT2Block uses
    assert_close(ours, load_into(ln, {"weight": w, "bias": b})(t(x)), dtype, "LayerNorm")


@pytest.mark.parametrize("dtype", DTYPES)
@given(seed=seeds, shape=shapes, n_in=st.integers(1, 80), n_out=st.integers(1, 80),
       scale=st.sampled_from([0.01, 1.0, 50.0]))
def test_linear_matches_transformers_conv1d(dtype, seed, shape, n_in, n_out, scale):
    rng = np.random.default_rng(seed)
    x = normal(rng, (*shape, n_in), scale, dtype)
    w, b = normal(rng, (n_in, n_out), 1 / math.sqrt(n_in), dtype), normal(rng, (n_out,), 1.0, dtype)
    conv = load_into(Conv1D(n_out, n_in).to(TORCH[dtype]), {"weight": w, "bias": b})  # (in, out) too
    assert_close(linear(x, w, b), conv(t(x)), dtype, "linear")


@pytest.mark.parametrize("dtype", DTYPES)
@given(seed=seeds, shape=st.lists(st.integers(1, 9), min_size=1, max_size=3),
       scale=st.sampled_from([0.1, 1.0, 10.0, 300.0]), masked=st.booleans())
def test_softmax_matches_torch(dtype, seed, shape, scale, masked):
    rng = np.random.default_rng(seed)
    x = normal(rng, shape, scale, dtype)
    if masked:  # -inf entries (masked keys) get probability 0; keep one finite entry per row
        x[..., 1:][rng.random(x[..., 1:].shape) < 0.3] = -np.inf
    axes = [-1] if masked else range(-len(shape), 0)  # masked rows run along the last axis
    for axis in axes:
        assert_close(softmax(x, axis=axis), torch.softmax(t(x), dim=axis), dtype, f"softmax axis {axis}")
    probs = softmax(x)
    assert np.allclose(probs.sum(-1), 1.0, rtol=0, atol=10 * np.finfo(dtype).eps * shape[-1])
    if masked:
        assert np.all(probs[np.isneginf(x)] == 0)


def test_softmax_does_not_overflow():
    x = np.array([[1000.0, 999.0, -1000.0]], dtype=np.float32)
    assert_close(softmax(x), torch.softmax(t(x), -1), np.float32, "softmax")
    assert np.isfinite(softmax(x)).all()


def test_causal_mask_with_past():
    # 2 new queries after 3 cached positions: query t sees keys 0 .. 3 + t.
    assert causal_mask(2, 5).tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
    assert (causal_mask(4, 4) == np.tril(np.ones((4, 4), bool))).all()


@given(seed=seeds, B=st.integers(1, 3), T=st.integers(1, 10), H=st.integers(1, 4),
       D=st.sampled_from(HEAD_SIZES))
def test_split_and_merge_heads_are_inverse(seed, B, T, H, D):
    x = np.random.default_rng(seed).standard_normal((B, T, H * D))
    heads = split_heads(x, H)
    assert heads.shape == (B, H, T, D)
    assert np.array_equal(heads[:, 1 % H], x[:, :, (1 % H) * D:(1 % H + 1) * D])  # head h = slice h
    assert np.array_equal(merge_heads(heads), x)


# --- attention, MLP, block against transformers' GPT-2 modules ----------------------------

# Scales: (input std, weight scale). Attention scores have std ~ (2 * input std * weight scale)^2,
# so the largest pair gives scores of O(10..100): softmax rows near one-hot, far from the
# uniform rows of tiny random weights. (Beyond that, float32 scores of O(1000) lose ~1e-4
# absolute precision in ANY implementation: a conditioning limit, not a bug to test for.)
LARGE = (2.0, 2.0)


def attention_case(seed, B, T, H, D, scales, dtype):
    rng = np.random.default_rng(seed)
    E = H * D
    w = random_block(rng, E, dtype, w_scale=scales[1])
    x = normal(rng, (B, T, E), scales[0], dtype)
    return x, w


@pytest.mark.parametrize("dtype", DTYPES)
@given(seed=seeds, shape=shapes, H=st.integers(1, 5), D=st.sampled_from(HEAD_SIZES),
       scales=st.sampled_from(SCALES))
def test_attention_matches_gpt2_attention(dtype, seed, shape, H, D, scales):
    B, T = shape
    x, w = attention_case(seed, B, T, H, D, scales, dtype)
    probs = {}
    ours = causal_self_attention(x, **w["attn"], n_head=H,
                                 record=lambda name, v: probs.setdefault(name, v))
    oracle = load_into(GPT2Attention(gpt2_config(H * D, H), layer_idx=0).to(TORCH[dtype]), w["attn"])
    with torch.no_grad():
        ref, ref_probs = oracle(t(x), output_attentions=True)
    assert_close(ours, ref, dtype, "causal_self_attention")
    assert_close(probs["softmax"], ref_probs, dtype, "attention probabilities")
    # The test means something: for large scales some row with >= 2 visible keys is far
    # from uniform (its largest probability is above 1/2).
    if scales >= LARGE and T >= 2:
        assert probs["softmax"][..., 1:, :].max() > 0.5


@pytest.mark.parametrize("dtype", DTYPES)
@given(seed=seeds, shape=shapes, H=st.integers(1, 5), D=st.sampled_from(HEAD_SIZES),
       scales=st.sampled_from(SCALES))
def test_reference_attention_equals_vectorized(dtype, seed, shape, H, D, scales):
    B, T = shape
    x, w = attention_case(seed, B, T, H, D, scales, dtype)
    fast = causal_self_attention(x, **w["attn"], n_head=H)
    for b in range(B):  # the reference handles one sequence, head by head
        assert_close(causal_self_attention_per_head(x[b], **w["attn"], n_head=H), fast[b], dtype,
                     "reference vs vectorized attention")


@pytest.mark.parametrize("dtype", DTYPES)
@given(seed=seeds, B=st.integers(1, 2), past=st.integers(0, 8), T=st.integers(1, 6),
       H=st.integers(1, 4), D=st.sampled_from(HEAD_SIZES))
def test_attention_with_kv_cache_equals_full_sequence(dtype, seed, B, past, T, H, D):
    """Attending in two steps (past, then T new positions through the cache) = all at once."""
    x, w = attention_case(seed, B, past + T, H, D, LARGE, dtype)
    full = causal_self_attention(x, **w["attn"], n_head=H)
    keys = np.full((B, H, 16, D), np.nan, dtype)  # untouched slots must never be read
    values = np.full((B, H, 16, D), np.nan, dtype)
    if past:
        causal_self_attention(x[:, :past], **w["attn"], n_head=H, kv=(keys, values, 0))
    new = causal_self_attention(x[:, past:], **w["attn"], n_head=H, kv=(keys, values, past))
    assert_close(new, full[:, past:], dtype, "attention through the kv cache")


def test_attention_helper_masks_future_keys():
    q = k = np.eye(3)[None]  # (1, 3, 3)
    v = np.arange(9.0).reshape(1, 3, 3)
    out = attention(q, k, v, causal_mask(3, 3))
    assert np.array_equal(out[0, 0], v[0, 0])  # the first query sees only the first key


@pytest.mark.parametrize("dtype", DTYPES)
@given(seed=seeds, shape=shapes, E=st.sampled_from([8, 40, 64, 96]),
       scales=st.sampled_from(SCALES))
def test_mlp_matches_gpt2_mlp(dtype, seed, shape, E, scales):
    rng = np.random.default_rng(seed)
    w = random_block(rng, E, dtype, w_scale=scales[1])
    x = normal(rng, (*shape, E), scales[0], dtype)
    oracle = load_into(GPT2MLP(4 * E, gpt2_config(E, 1)).to(TORCH[dtype]), w["mlp"])
    with torch.no_grad():
        assert_close(mlp(x, **w["mlp"]), oracle(t(x)), dtype, "mlp")


@pytest.mark.parametrize("dtype", DTYPES)
@given(seed=seeds, shape=shapes, H=st.integers(1, 4), D=st.sampled_from(HEAD_SIZES),
       scales=st.sampled_from(SCALES))
def test_transformer_block_matches_gpt2_block(dtype, seed, shape, H, D, scales):
    B, T = shape
    x, w = attention_case(seed, B, T, H, D, scales, dtype)
    x = x + 2.0 * scales[0]  # a residual stream with a mean offset, like real hidden states
    oracle = load_into(GPT2Block(gpt2_config(H * D, H), layer_idx=0).to(TORCH[dtype]), w)
    with torch.no_grad():
        ref = oracle(t(x))[0]
    assert_close(transformer_block(x, w, H, 1e-5), ref, dtype, "transformer_block")
