"""Each backward of numpy_gpt2.layers_backward (and the loss's) against torch autograd.

The oracle is autograd through the SAME modules tests/test_layers.py checks the forward
against (transformers' NewGELUActivation, Conv1D, GPT2Attention, GPT2MLP, GPT2Block;
torch.nn.LayerNorm, torch.softmax, torch.nn.functional.embedding / cross_entropy), with our
NumPy weights copied in. Both sides get the same random upstream gradient dout
(torch: out.backward(dout)); we compare dx and every parameter gradient (the gradient dict's
keys must be the module's parameter names). Hypothesis varies batch, length, width, head
count and head size (8..64), the scales of weights, inputs and dout, and seeds, in float32
and float64.

Run with `-s` for the worst relative error measured per function and dtype.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from transformers.activations import NewGELUActivation
from transformers.models.gpt2.modeling_gpt2 import GPT2MLP, GPT2Attention, GPT2Block
from transformers.pytorch_utils import Conv1D

from helpers.grad_oracle import assert_grad_close
from numpy_gpt2 import flatten_params
from numpy_gpt2.layers import causal_mask, merge_heads, split_heads
from numpy_gpt2.layers_backward import (attention_backward, causal_self_attention_backward,
                                        embedding_backward, gelu_backward, layer_norm_backward,
                                        linear_backward, lm_head_backward, merge_heads_backward,
                                        mlp_backward, position_embedding_backward,
                                        softmax_backward, split_heads_backward,
                                        transformer_block_backward)
from numpy_gpt2.loss import cross_entropy_backward, masked_cross_entropy
from helpers.oracle_activations import one_torch_thread  # noqa: F401  (fixture: one torch thread)
from helpers.layer_oracle import (DTYPES, HEAD_SIZES, SCALES, TORCH, gpt2_config, load_into, normal,
                                  random_block, seeds, shapes, t)

# Tolerance: max |ours - oracle| <= RTOL[dtype] * max |oracle| for every gradient tensor
# (relative to the tensor's largest entry: many exact gradients are ~0, e.g. attention's key
# bias, whose true gradient is exactly 0 since a constant added to a row of scores changes
# no probability). Measured worst over ~1000 examples per test (float64 / float32):
# elementwise and last-axis ops ~2e-16 / 2e-7, linear ~4e-16 / 6e-7, attention,
# self-attention and block at the largest scales (near one-hot softmaxes) ~4e-14 / 2.5e-5.
# The bounds keep a margin of >= 4x over the worst measured, and are still far below what a
# classic backward bug costs (a missing LayerNorm mean term, a softmax without its row-sum
# term, the erf GELU's derivative: all > 1e-4 relative, tested below where cheap).
from helpers.tolerances import LAYER_BACKWARD_RTOL as RTOL  # noqa: E402
# Self-attention and the block in float32 at the largest scales: scores of O(100) carry ~1e-5
# absolute rounding into near one-hot softmax rows, whose gradient then cancels terms ~1e3
# larger than itself (dS = P (dP - rowsum)); measured worst 1.03e-4 over ~3000 examples.
from helpers.tolerances import LAYER_BACKWARD_RTOL_ATTENTION as RTOL_ATTENTION  # noqa: E402

WORST: dict[tuple[str, str], float] = {}


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    print("\n\nworst max|ours - autograd| / max|autograd| per backward function:")
    for (what, dtype), err in sorted(WORST.items()):
        print(f"  {what:40s} {dtype:8s} {err:.2g}")


def check(ours, ref, dtype, what, floor=0.0, rtol=RTOL):
    """assert_grad_close at rtol[dtype], keeping the worst error per (what, dtype)."""
    err = assert_grad_close(ours, ref, dtype, rtol[dtype], what, floor)
    key = (what.split("[")[0], np.dtype(dtype).name)
    WORST[key] = max(WORST.get(key, 0.0), err)
    return err


def check_param_grads(ours: dict, module, dtype, what, rtol=RTOL):
    """Our gradient dict (nested like the weights) against module's .grad of every parameter:
    the same set of names, and the values."""
    ours = flatten_params(ours)
    theirs = {name: p.grad for name, p in module.named_parameters()}
    assert sorted(ours) == sorted(theirs), f"{what}: gradient keys {sorted(ours)} vs {sorted(theirs)}"
    for name, grad in theirs.items():
        check(ours[name], grad, dtype, f"{what} d{name}", rtol=rtol)


def autograd(fn, *inputs, dout):
    """Run fn on torch copies of the numpy `inputs` (that require grad), backpropagate dout;
    returns the inputs' gradients (numpy)."""
    xs = [t(x).requires_grad_() for x in inputs]
    fn(*xs).backward(t(dout))
    return [x.grad.numpy() for x in xs]


def module_autograd(module, x, dout):
    """dx of a transformers module (output: a tensor or a tuple whose [0] is the output);
    the parameters' gradients are left in module's .grad."""
    def run(x):
        out = module(x)
        return out[0] if isinstance(out, tuple) else out
    return autograd(run, x, dout=dout)[0]


# --- elementwise / last-axis ops -----------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@given(seed=seeds, shape=st.lists(st.integers(1, 9), min_size=1, max_size=3),
       scale=st.sampled_from([0.01, 0.5, 1.0, 3.0, 10.0, 40.0]))
def test_gelu_backward_matches_new_gelu_autograd(dtype, seed, shape, scale):
    rng = np.random.default_rng(seed)
    x, dout = normal(rng, shape, scale, dtype), normal(rng, shape, 1.0, dtype)
    ref = autograd(NewGELUActivation(), x, dout=dout)[0]
    # gelu' is a sum of O(1) terms that cancel near x = -0.75 (where gelu' = 0): relative to
    # max |dout|, the size of those terms, not to a tiny max |ref| (e.g. one such x)
    check(gelu_backward(dout, x), ref, dtype, "gelu_backward", floor=np.abs(dout).max())


def test_gelu_backward_is_the_tanh_forms_derivative_not_erfs():
    # d/dx of the erf GELU differs from the tanh form's by up to ~1e-3: this test would see it.
    x = np.linspace(-5, 5, 201)
    dout = np.ones_like(x)
    erf = autograd(F.gelu, x, dout=dout)[0]
    ours = gelu_backward(dout, x)
    assert np.max(np.abs(ours - erf)) > 5e-4
    check(ours, autograd(lambda z: F.gelu(z, approximate="tanh"), x, dout=dout)[0], np.float64,
          "gelu_backward")


@pytest.mark.parametrize("dtype", DTYPES)
@given(seed=seeds, shape=shapes, E=st.sampled_from([3, 8, 24, 40, 64, 768]),
       scale=st.sampled_from([0.01, 1.0, 30.0]), offset=st.sampled_from([0.0, 1.0, 5.0]))
def test_layer_norm_backward_matches_torch_layer_norm(dtype, seed, shape, E, scale, offset):
    rng = np.random.default_rng(seed)
    x = normal(rng, (*shape, E), scale, dtype, mean=offset * scale)
    w, b = normal(rng, (E,), 0.5, dtype, mean=1.0), normal(rng, (E,), 0.5, dtype)
    dout = normal(rng, x.shape, 1.0, dtype)
    ln = load_into(torch.nn.LayerNorm(E, eps=1e-5, dtype=TORCH[dtype]), {"weight": w, "bias": b})
    dx_ref = module_autograd(ln, x, dout)
    dx, grads = layer_norm_backward(dout, x, w, eps=1e-5)
    # dx = (g - mean(g) - xhat mean(g xhat)) rstd, g = dout w: terms of size |g| rstd that can
    # cancel (E = 3, a row far from zero mean): relative to that size
    rstd = 1 / np.sqrt(x.astype(np.float64).var(axis=-1, keepdims=True) + 1e-5)
    check(dx, dx_ref, dtype, "layer_norm_backward dx", floor=np.abs(dout * w * rstd).max())
    check_param_grads(grads, ln, dtype, "layer_norm_backward")


def test_layer_norm_backward_keeps_the_mean_and_variance_terms():
    # Without the mean(g) and xhat * mean(g xhat) terms dx is off by O(1): the test sees it.
    rng = np.random.default_rng(0)
    x, w, dout = rng.standard_normal((3, 16)) * 2 + 1, rng.standard_normal(16), rng.standard_normal((3, 16))
    dx, _ = layer_norm_backward(dout, x, w)
    rstd = 1 / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
    assert np.max(np.abs(dx - dout * w * rstd)) > 0.1
    ln = load_into(torch.nn.LayerNorm(16, eps=1e-5, dtype=torch.float64), {"weight": w, "bias": 0 * w})
    check(dx, module_autograd(ln, x, dout), np.float64, "layer_norm_backward dx")


@pytest.mark.parametrize("dtype", DTYPES)
@given(seed=seeds, shape=shapes, n_in=st.integers(1, 80), n_out=st.integers(1, 80),
       scale=st.sampled_from([0.01, 1.0, 50.0]))
def test_linear_backward_matches_conv1d_autograd(dtype, seed, shape, n_in, n_out, scale):
    rng = np.random.default_rng(seed)
    x = normal(rng, (*shape, n_in), scale, dtype)
    w, b = normal(rng, (n_in, n_out), 1 / math.sqrt(n_in), dtype), normal(rng, (n_out,), 1.0, dtype)
    dout = normal(rng, (*shape, n_out), 1.0, dtype)
    conv = load_into(Conv1D(n_out, n_in).to(TORCH[dtype]), {"weight": w, "bias": b})
    dx_ref = module_autograd(conv, x, dout)
    dx, grads = linear_backward(dout, x, w)
    check(dx, dx_ref, dtype, "linear_backward dx")
    check_param_grads(grads, conv, dtype, "linear_backward")


@pytest.mark.parametrize("dtype", DTYPES)
@given(seed=seeds, shape=st.lists(st.integers(1, 9), min_size=1, max_size=3),
       scale=st.sampled_from([0.1, 1.0, 10.0, 300.0]), masked=st.booleans())
def test_softmax_backward_matches_torch_softmax_autograd(dtype, seed, shape, scale, masked):
    rng = np.random.default_rng(seed)
    x = normal(rng, shape, scale, dtype)
    if masked:  # -inf entries (masked keys): probability 0, gradient 0
        x[..., 1:][rng.random(x[..., 1:].shape) < 0.3] = -np.inf
    dprobs = normal(rng, shape, 1.0, dtype)
    axes = [-1] if masked else range(-len(shape), 0)
    for axis in axes:
        xt = t(x).requires_grad_()
        probs = torch.softmax(xt, dim=axis)
        probs.backward(t(dprobs))
        p = probs.detach().numpy()
        ours = softmax_backward(dprobs, p, axis=axis)
        # ds = p (dp - sum(dp p)): a near one-hot row (scale 300) cancels terms of size
        # |p| |dp| down to ~1e-11 of that; relative to the terms' size
        check(ours, xt.grad, dtype, f"softmax_backward[axis {axis}]", floor=np.abs(p).max() * np.abs(dprobs).max())
        if masked:
            assert np.all(ours[np.isneginf(x)] == 0)


def test_softmax_backward_keeps_the_row_sum_term():
    # Without "- sum(dp * p)" the result is p * dp: off by O(1) for a non-constant dout.
    rng = np.random.default_rng(1)
    probs = torch.softmax(torch.from_numpy(rng.standard_normal((4, 7))), -1).numpy()
    dprobs = rng.standard_normal((4, 7))
    ours = softmax_backward(dprobs, probs)
    assert np.max(np.abs(ours - probs * dprobs)) > 1e-2
    assert np.allclose(ours.sum(-1), 0.0, atol=1e-15)  # softmax ignores a constant added to a row


# --- attention ----------------------------------------------------------------------------

def torch_attention(q, k, v, mask):
    """softmax(q k^T / sqrt(D), masked) v written out in torch (autograd's oracle)."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~torch.from_numpy(mask), -math.inf)
    return torch.softmax(scores, dim=-1) @ v


@pytest.mark.parametrize("dtype", DTYPES)
@given(seed=seeds, B=st.integers(1, 3), H=st.integers(1, 4), T=st.integers(1, 10),
       past=st.integers(0, 5), D=st.sampled_from(HEAD_SIZES), scales=st.sampled_from(SCALES))
def test_attention_backward_matches_autograd_of_the_same_math(dtype, seed, B, H, T, past, D, scales):
    rng = np.random.default_rng(seed)
    S = past + T  # queries at the last T of S positions (the kv-cache mask), keys at all S
    std = 2 * scales[0] * scales[1]  # q, k, v with scores of O(std^2 sqrt(D)): near one-hot rows at the top
    q, k, v = (normal(rng, (B, H, n, D), std, dtype) for n in (T, S, S))
    dout = normal(rng, (B, H, T, D), 1.0, dtype)
    mask = causal_mask(T, S)
    ours = attention_backward(dout, q, k, v, mask)
    assert len(ours) == 3
    refs = autograd(lambda q, k, v: torch_attention(q, k, v, mask), q, k, v, dout=dout)
    sdpa = autograd(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=t(mask)),
                    q, k, v, dout=dout)  # torch's own attention kernel: the same numbers
    # dS = P (dP - rowsum(dP P)) cancels terms of size |dP| (a near one-hot row: to ~1e-10 of
    # that; one key, S = 1: to exactly 0, where torch returns rounding noise). dq and dk are
    # sums of S (T) such terms times k (q) / sqrt(D): relative to that size, not to a tiny max.
    dP = np.abs(dout.astype(np.float64) @ np.swapaxes(v, -1, -2)).max()
    floors = (dP * S * np.abs(k).max() / math.sqrt(D), dP * T * np.abs(q).max() / math.sqrt(D), 0.0)
    for name, d, ref, ref2, floor in zip("qkv", ours, refs, sdpa, floors):
        check(d, ref, dtype, f"attention_backward d{name}", floor)
        check(d, ref2, dtype, f"attention_backward d{name} (vs sdpa)", floor)


@given(seed=seeds, B=st.integers(1, 3), T=st.integers(1, 6), H=st.integers(1, 4),
       D=st.sampled_from(HEAD_SIZES))
def test_split_and_merge_heads_backward_move_gradients_back_exactly(seed, B, T, H, D):
    rng = np.random.default_rng(seed)
    x, dheads = rng.standard_normal((B, T, H * D)), rng.standard_normal((B, H, T, D))
    # split_heads' backward: autograd of torch's reshape/permute, bit for bit
    ref = autograd(lambda z: z.reshape(B, T, H, D).permute(0, 2, 1, 3), x, dout=dheads)[0]
    assert np.array_equal(split_heads_backward(dheads), ref)
    ref = autograd(lambda z: z.permute(0, 2, 1, 3).reshape(B, T, H * D), dheads, dout=x)[0]
    assert np.array_equal(merge_heads_backward(x, H), ref)
    assert np.array_equal(split_heads_backward(split_heads(x, H)), x)
    assert np.array_equal(merge_heads_backward(merge_heads(dheads), H), dheads)


@pytest.mark.parametrize("dtype", DTYPES)
@given(seed=seeds, shape=shapes, H=st.integers(1, 5), D=st.sampled_from(HEAD_SIZES),
       scales=st.sampled_from(SCALES), dscale=st.sampled_from([1e-3, 1.0, 100.0]))
def test_causal_self_attention_backward_matches_gpt2_attention(dtype, seed, shape, H, D, scales, dscale):
    B, T = shape
    rng = np.random.default_rng(seed)
    w = random_block(rng, H * D, dtype, w_scale=scales[1])
    x = normal(rng, (B, T, H * D), scales[0], dtype)
    dout = normal(rng, x.shape, dscale, dtype)
    oracle = load_into(GPT2Attention(gpt2_config(H * D, H), layer_idx=0).to(TORCH[dtype]), w["attn"])
    dx_ref = module_autograd(oracle, x, dout)
    dx, grads = causal_self_attention_backward(dout, x, **w["attn"], n_head=H)
    check(dx, dx_ref, dtype, "causal_self_attention_backward dx", rtol=RTOL_ATTENTION)
    check_param_grads(grads, oracle, dtype, "causal_self_attention_backward", rtol=RTOL_ATTENTION)


@pytest.mark.parametrize("dtype", DTYPES)
@given(seed=seeds, shape=shapes, E=st.sampled_from([8, 40, 64, 96]), scales=st.sampled_from(SCALES))
def test_mlp_backward_matches_gpt2_mlp(dtype, seed, shape, E, scales):
    rng = np.random.default_rng(seed)
    w = random_block(rng, E, dtype, w_scale=scales[1])
    x = normal(rng, (*shape, E), scales[0], dtype)
    dout = normal(rng, x.shape, 1.0, dtype)
    oracle = load_into(GPT2MLP(4 * E, gpt2_config(E, 1)).to(TORCH[dtype]), w["mlp"])
    dx_ref = module_autograd(oracle, x, dout)
    dx, grads = mlp_backward(dout, x, **w["mlp"])
    check(dx, dx_ref, dtype, "mlp_backward dx")
    check_param_grads(grads, oracle, dtype, "mlp_backward")


@pytest.mark.parametrize("dtype", DTYPES)
@given(seed=seeds, shape=shapes, H=st.integers(1, 4), D=st.sampled_from(HEAD_SIZES),
       scales=st.sampled_from(SCALES))
def test_transformer_block_backward_matches_gpt2_block(dtype, seed, shape, H, D, scales):
    B, T = shape
    rng = np.random.default_rng(seed)
    w = random_block(rng, H * D, dtype, w_scale=scales[1])
    x = normal(rng, (B, T, H * D), scales[0], dtype, mean=2.0 * scales[0])  # residual with an offset
    dout = normal(rng, x.shape, 1.0, dtype)
    oracle = load_into(GPT2Block(gpt2_config(H * D, H), layer_idx=0).to(TORCH[dtype]), w)
    dx_ref = module_autograd(oracle, x, dout)
    dx, grads = transformer_block_backward(dout, x, w, H, 1e-5)
    check(dx, dx_ref, dtype, "transformer_block_backward dx", rtol=RTOL_ATTENTION)
    check_param_grads(grads, oracle, dtype, "transformer_block_backward", rtol=RTOL_ATTENTION)


# --- the model's two ends: embeddings, output head, loss -----------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@given(seed=seeds, shape=shapes, V=st.integers(1, 12), E=st.sampled_from([1, 3, 16]))
def test_embedding_backward_scatter_adds_like_torch_embedding(dtype, seed, shape, V, E):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, V, size=shape)  # V small: ids repeat within and across sequences
    tokens.flat[-1] = tokens.flat[0]  # at least one repeat whenever there are two positions
    wte = normal(rng, (V, E), 1.0, dtype)
    dout = normal(rng, (*shape, E), 1.0, dtype)
    ref = autograd(lambda w: F.embedding(torch.from_numpy(tokens), w), wte, dout=dout)[0]
    ours = embedding_backward(dout, tokens, V)
    check(ours, ref, dtype, "embedding_backward")
    unused = np.setdiff1d(np.arange(V), tokens)
    assert np.all(ours[unused] == 0)


@pytest.mark.parametrize("dtype", DTYPES)
@given(seed=seeds, shape=shapes, extra=st.integers(0, 5), E=st.sampled_from([1, 3, 16]))
def test_position_embedding_backward_sums_over_the_batch_like_torch(dtype, seed, shape, extra, E):
    B, T = shape
    rng = np.random.default_rng(seed)
    wpe = normal(rng, (T + extra, E), 1.0, dtype)
    dout = normal(rng, (B, T, E), 1.0, dtype)
    # as GPT2Model: wpe(position_ids) of shape (1, T, E), broadcast over the batch
    ref = autograd(lambda w: F.embedding(torch.arange(T)[None], w).expand(B, T, E), wpe, dout=dout)[0]
    ours = position_embedding_backward(dout, T + extra)
    check(ours, ref, dtype, "position_embedding_backward")
    assert np.all(ours[T:] == 0)


@pytest.mark.parametrize("dtype", DTYPES)
@given(seed=seeds, shape=shapes, V=st.integers(1, 60), E=st.sampled_from([1, 8, 40]))
def test_lm_head_backward_matches_autograd(dtype, seed, shape, V, E):
    rng = np.random.default_rng(seed)
    x, head = normal(rng, (*shape, E), 1.0, dtype), normal(rng, (V, E), 1.0, dtype)
    dlogits = normal(rng, (*shape, V), 1.0, dtype)
    dx_ref, dhead_ref = autograd(lambda x, w: x @ w.T, x, head, dout=dlogits)
    dx, dhead = lm_head_backward(dlogits, x, head)
    check(dx, dx_ref, dtype, "lm_head_backward dx")
    check(dhead, dhead_ref, dtype, "lm_head_backward dhead")


@pytest.mark.parametrize("dtype", DTYPES)
@given(seed=seeds, shape=st.lists(st.integers(1, 6), min_size=1, max_size=2), V=st.integers(2, 70),
       scale=st.sampled_from([0.01, 1.0, 10.0, 100.0]), ignore_index=st.sampled_from([-100, -1, 0]),
       p_ignore=st.sampled_from([0.0, 0.3, 0.8]))
def test_cross_entropy_and_its_backward_match_torch(dtype, seed, shape, V, scale, ignore_index, p_ignore):
    rng = np.random.default_rng(seed)
    logits = normal(rng, (*shape, V), scale, dtype)
    targets = rng.integers(0, V, size=shape)
    targets[rng.random(shape) < p_ignore] = ignore_index
    keep = targets != ignore_index
    if not keep.any():  # at least one target scored (a mean over none is undefined)
        targets.flat[0] = 1 if ignore_index == 0 else 0
    lt = t(logits).requires_grad_()
    loss = F.cross_entropy(lt.reshape(-1, V), t(targets).reshape(-1), ignore_index=ignore_index)
    loss.backward()
    ours = masked_cross_entropy(logits, targets, ignore_index)
    assert isinstance(ours, float)
    # the loss: float32 logits of O(100) carry ~1e-5 absolute rounding into log-softmax
    assert abs(ours - loss.item()) <= RTOL[dtype] * max(1.0, abs(loss.item()))
    dlogits = cross_entropy_backward(logits, targets, ignore_index)
    # (softmax - onehot) / N: terms of size 1/N that cancel for a confident right target
    check(dlogits, lt.grad, dtype, "cross_entropy_backward", floor=1.0 / (targets != ignore_index).sum())
    assert np.all(dlogits[targets == ignore_index] == 0)
