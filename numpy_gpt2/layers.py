"""The math of GPT-2, one short function per equation: the REFERENCE.

These functions are the equations as written, for reading and for checking: the fast twins
that model.forward runs live in numpy_gpt2/fast/forward.py, and tests/math/test_fast_paths.py
tests each of them equal to its reference here (which tests/math/test_layers.py tests against
PyTorch). forward(..., reference=True) runs these.

Shapes: B batch, T new positions, S = past + T key positions, E = n_embd, H = n_head,
D = E // H head size, V = vocab size. Every function works for any leading batch dims
unless it says otherwise. Arrays keep the dtype of the weights (float32 or float64).

`record(name, array)` arguments, where present, let a caller see intermediate values and
hooks replace them (numpy_gpt2.hooks; names in docs/debugging.md); the default does nothing.
"""

from __future__ import annotations

import math

import numpy as np

from numpy_gpt2.activation_functions import activation, tanh_gelu
from numpy_gpt2.hooks import changed, no_record, prefixed, recorder


def gelu(x):
    """GELU, tanh form ("gelu_new"), as GPT-2 was trained:

        gelu(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))

    (written once, with GELU's other forms, in numpy_gpt2/activation_functions.py)
    """
    return tanh_gelu(x)


def layer_norm(x, weight, bias, eps=1e-5, record=no_record):
    """LayerNorm over the last axis: (x - mean) / sqrt(var + eps) * weight + bias.

    x: (..., E); weight, bias: (E,). The variance is the biased one (divide by E).
    record sees "scale" = sqrt(var + eps) (..., 1) and "normalized" (..., E), before the
    gain and bias (TransformerLens' hook_scale, hook_normalized).
    """
    record = recorder(record)
    mean = x.mean(axis=-1, keepdims=True)
    centered = x - mean
    var = (centered * centered).mean(axis=-1, keepdims=True)
    scale = record("scale", np.sqrt(var + eps))
    normalized = record("normalized", centered / scale)
    return normalized * weight + bias


def linear(x, weight, bias):
    """Affine map with GPT-2's (in, out) weight layout ("Conv1D"): x @ weight + bias.

    x: (..., n_in); weight: (n_in, n_out); bias: (n_out,) -> (..., n_out).
    """
    return x @ weight + bias


def softmax(x, axis=-1):
    """exp(x) / sum(exp(x)) along `axis`; the max is subtracted first so exp cannot overflow.

    Entries equal to -inf (masked) get probability 0.
    """
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def causal_mask(T, S):
    """(T, S) boolean mask: query t (absolute position S - T + t) may see keys 0 .. S - T + t."""
    return np.tri(T, S, k=S - T, dtype=bool)


def padding_bias(attention_mask, dtype):
    """(B, S) 0/1 mask -> (B, S) additive bias on the attention scores: 0 for a real key, the
    dtype's most negative number for padding (transformers' convention).

    A real query's weight on a padded key is then exp(min - max score) = 0 exactly, as with
    -inf; but a padding query, whose visible keys are all padding, gets finite (meaningless)
    weights instead of 0/0 = NaN.
    """
    return np.where(attention_mask, 0, np.finfo(dtype).min).astype(dtype)


def attention(q, k, v, mask, record=no_record, key_bias=None, scale=None):
    """Scaled dot-product attention: softmax(q k^T * scale + key_bias, masked) v, scale = 1 / sqrt(D).

    q: (..., T, D); k, v: (..., S, D); mask: (T, S) bool, True where a key is visible.
    key_bias: optional (B, S) padding_bias, added to every query's scores (q, k: (B, H, ., D)).
    scale: the scores' factor when the config changes it (GPT2Config.attention_scale:
    1 without scale_attn_weights, / (layer + 1) with scale_attn_by_inverse_layer_idx).
    record sees "scores" (the softmax's input: -inf where masked, the padding bias added)
    and "softmax" (the probabilities), both (..., T, S). Returns (..., T, D).
    """
    record = recorder(record)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = q @ np.swapaxes(k, -1, -2) * scale
    if key_bias is not None:
        scores = scores + key_bias[:, None, None, :]
    scores = record("scores", np.where(mask, scores, -np.inf))
    probs = record("softmax", softmax(scores))
    return probs @ v


def causal_self_attention_per_head(x, c_attn, c_proj, n_head):
    """Causal multi-head self-attention for ONE sequence, head by head, as in the paper.

    x: (T, E); c_attn: {"weight": (E, 3E), "bias": (3E,)}; c_proj: {"weight": (E, E), ...}.
    Each head h attends with its own slice q[:, h*D:(h+1)*D] (and k, v); the heads'
    outputs are concatenated back to (T, E) and projected by c_proj. Returns (T, E).
    The model uses the vectorized causal_self_attention; this one is for reading and tests.
    """
    T, E = x.shape
    D = E // n_head
    q, k, v = np.split(linear(x, **c_attn), 3, axis=-1)  # each (T, E): [q | k | v]
    mask = causal_mask(T, T)
    heads = [attention(q[:, h * D:(h + 1) * D], k[:, h * D:(h + 1) * D], v[:, h * D:(h + 1) * D], mask)
             for h in range(n_head)]
    return linear(np.concatenate(heads, axis=-1), **c_proj)


def split_heads(x, n_head):
    """(B, T, E) -> (B, H, T, D)."""
    B, T, E = x.shape
    return x.reshape(B, T, n_head, E // n_head).transpose(0, 2, 1, 3)


def merge_heads(x):
    """(B, H, T, D) -> (B, T, E)."""
    B, H, T, D = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, H * D)


def head_results(z, weight):
    """Each head's share of the attention output, before the bias: z_h @ W_O[h], where
    W_O[h] = weight[h*D:(h+1)*D] (D, E) is head h's rows of c_proj's weight.

    z: (B, H, T, D); weight: (E, E) -> (B, H, T, E); summed over the heads, plus the bias,
    it is c_proj(merge_heads(z)). (TransformerLens' hook_result: H times the memory.)
    """
    H, D = z.shape[1], z.shape[-1]
    return z @ weight.reshape(H, D, weight.shape[-1])


def causal_self_attention(x, c_attn, c_proj, n_head, kv=None, record=no_record, key_bias=None,
                          scale=None):
    """Causal multi-head self-attention, all heads and the whole batch at once.

    x: (B, T, E) -> (B, T, E). Same math as causal_self_attention_per_head.
    kv: optional (keys, values, past) cache for this layer: keys/values are preallocated
    (B, H, n_ctx, D) arrays holding `past` earlier positions; this call writes its T new
    keys/values after them and attends over all past + T positions.
    key_bias: optional (B, past + T) padding_bias: padded keys get no attention. scale: as in
    attention. record sees "c_attn" (B, T, 3E); "q", "k", "v" (B, H, T, D) (the new
    positions only: a hook's k, v go into the cache); "scores", "softmax" (attention);
    "z" (B, H, T, D), the heads' outputs; and, only when a hook asks for it, "result"
    (head_results): the output is then the sum of the heads' results plus the bias.
    """
    record = recorder(record)
    qkv = record("c_attn", linear(x, **c_attn))  # (B, T, 3E) = [q | k | v]
    q, k, v = (split_heads(a, n_head) for a in np.split(qkv, 3, axis=-1))  # each (B, H, T, D)
    q = record("q", q)
    k = record("k", k)
    v = record("v", v)
    if kv is not None:
        keys, values, past = kv
        T = x.shape[1]
        keys[:, :, past:past + T] = k
        values[:, :, past:past + T] = v
        k, v = keys[:, :, :past + T], values[:, :, :past + T]
    mask = causal_mask(q.shape[-2], k.shape[-2])
    z = record("z", attention(q, k, v, mask, record, key_bias, scale))  # (B, H, T, D)
    result, edited = changed(record, "result", lambda: head_results(z, c_proj["weight"]))
    if edited:  # a hook changed some head's result: the output is their sum
        return result.sum(axis=1) + c_proj["bias"]
    return linear(merge_heads(z), **c_proj)


def mlp(x, c_fc, c_proj, record=no_record, act="gelu_new"):
    """Position-wise feed-forward: c_proj(gelu(c_fc(x))). x: (..., E) -> (..., E); hidden 4E
    (n_inner). act: the config's activation_function (numpy_gpt2.activation_functions;
    GPT-2's tanh GELU by default); its output is recorded as "gelu" whatever it is."""
    record = recorder(record)  # record(name, a) returns a (numpy_gpt2.hooks)
    f = gelu if act == "gelu_new" else activation(act)[0]
    h = record("c_fc", linear(x, **c_fc))
    h = record("gelu", f(h))
    return linear(h, **c_proj)


def transformer_block(x, block, n_head, eps, kv=None, record=no_record, key_bias=None, *,
                      act="gelu_new", scale=None):
    """One pre-LayerNorm GPT-2 block (x: (B, T, E) -> (B, T, E)):

        x = x + attn(ln_1(x))
        x = x + mlp(ln_2(x))

    block: this layer's weights, params["h"][i] (ln_1, attn, ln_2, mlp). kv, key_bias: as in
    causal_self_attention. record sees resid_pre, ln_1.*, ln_1, attn.*, attn, resid_mid,
    ln_2.*, ln_2, mlp.*, mlp.c_proj: each record(name, a) returns a (or a hook's
    replacement), so the lines below are the two equations. act, scale: the MLP's
    activation function and the attention scores' factor (see mlp, attention).
    """
    record = recorder(record)
    x = record("resid_pre", x)
    a = record("ln_1", layer_norm(x, **block["ln_1"], eps=eps, record=prefixed(record, "ln_1.")))
    a = record("attn", causal_self_attention(a, **block["attn"], n_head=n_head, kv=kv, key_bias=key_bias,
                                             scale=scale, record=prefixed(record, "attn.")))
    x = record("resid_mid", x + a)
    m = record("ln_2", layer_norm(x, **block["ln_2"], eps=eps, record=prefixed(record, "ln_2.")))
    m = record("mlp.c_proj", mlp(m, **block["mlp"], act=act, record=prefixed(record, "mlp.")))
    return x + m
