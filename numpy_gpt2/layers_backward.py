"""The gradients of GPT-2's math: one backward function per forward function of layers.py.

The functions stand in the same order as their forward twins in numpy_gpt2/layers.py, so a
reader finds `layer_norm` and `layer_norm_backward` at the same place in the two files.

Conventions. For a forward y = f(x, w), `f_backward(dout, x, w)` takes dout = dL/dy (the
shape of y) and the forward's INPUTS, and returns dL/dx (the shape of x) and, for functions
with weights, the weights' gradients in a dict named like the weights ({"weight", "bias"}),
so the gradient dicts of a block or a model have exactly the structure of the params.
These readable functions recompute what they need from the inputs (the forward's
intermediates are not kept). They are the reference: the fast twins, which take what the
training forward saved, live in numpy_gpt2/fast/training.py and are tested equal to them.

Shapes: B batch, T positions, E = n_embd, H = n_head, D = E // H, V = vocab size.
`record(name, array)` sees dL/d(activation) under the forward's activation names.
"""

from __future__ import annotations

import math

import numpy as np

from numpy_gpt2.activation_functions import activation, tanh_gelu_derivative
from numpy_gpt2.hooks import no_record, prefixed, record_weights, wants
from numpy_gpt2.layers import (attention, causal_mask, gelu, layer_norm, linear, merge_heads, softmax,
                               split_heads)

def gelu_backward(dout, x):
    """Derivative of the tanh GELU, gelu(x) = 0.5 x (1 + tanh u), u = c (x + 0.044715 x^3):

        gelu'(x) = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) c (1 + 3 * 0.044715 x^2)

    with c = sqrt(2/pi). dout, x: same shape -> dx = dout * gelu'(x).
    """
    return dout * tanh_gelu_derivative(x)  # (numpy_gpt2/activation_functions.py)


def layer_norm_backward(dout, x, weight, eps=1e-5):
    """Backward of y = xhat * w + b, xhat = (x - mean) / sqrt(var + eps), over the last axis:

        dw = sum_rows dout * xhat,   db = sum_rows dout,   g = dout * w
        dx = (g - mean(g) - xhat * mean(g * xhat)) / sqrt(var + eps)

    The two mean terms are the paths through the mean and through the variance.
    dout, x: (..., E); weight: (E,) -> (dx (..., E), {"weight": (E,), "bias": (E,)}).
    """
    centered = x - x.mean(axis=-1, keepdims=True)
    rstd = 1.0 / np.sqrt((centered * centered).mean(axis=-1, keepdims=True) + eps)
    xhat = centered * rstd
    g = dout * weight
    dx = (g - g.mean(axis=-1, keepdims=True) - xhat * (g * xhat).mean(axis=-1, keepdims=True)) * rstd
    rows = tuple(range(x.ndim - 1))
    return dx, {"weight": (dout * xhat).sum(axis=rows), "bias": dout.sum(axis=rows)}


def record_layer_norm_inner(record, dout, x, weight, eps=1e-5):
    """Pass the gradients at a LayerNorm's inner points through record, when wanted:
    "normalized" g = dL/dxhat = dout * weight (..., E) and "scale" dL/d sqrt(var + eps) =
    -sum(g * xhat) / sqrt(var + eps) (..., 1), since xhat = centered / sqrt(var + eps)."""
    if wants(record, "normalized") or wants(record, "scale"):
        centered = x - x.mean(axis=-1, keepdims=True)
        scale = np.sqrt((centered * centered).mean(axis=-1, keepdims=True) + eps)
        g = dout * weight
        record("normalized", g)
        record("scale", -(g * (centered / scale)).sum(axis=-1, keepdims=True) / scale)


def linear_backward(dout, x, weight):
    """Backward of y = x W + b (W: (n_in, n_out), GPT-2's Conv1D layout):

        dx = dout W^T,   dW = x^T dout,   db = sum_rows dout   (rows: every leading axis)

    dout: (..., n_out); x: (..., n_in) -> (dx (..., n_in), {"weight": (n_in, n_out), "bias": (n_out,)}).
    """
    x2, dout2 = x.reshape(-1, x.shape[-1]), dout.reshape(-1, dout.shape[-1])
    return dout @ weight.T, {"weight": x2.T @ dout2, "bias": dout2.sum(axis=0)}


def softmax_backward(dprobs, probs, axis=-1):
    """Backward of p = softmax(s): the Jacobian is diag(p) - p p^T, so

        ds = p * (dp - sum(dp * p))   (the row-sum term comes from the normalization)

    Masked entries (p = 0) get ds = 0. dprobs, probs: same shape -> ds.
    """
    return probs * (dprobs - (dprobs * probs).sum(axis=axis, keepdims=True))


def attention_backward(dout, q, k, v, mask, record=no_record, scale=None):
    """Backward of out = P v, P = softmax(S masked), S = q k^T * scale, scale = 1 / sqrt(D)
    (or the config's, as in layers.attention):

        dv = P^T dout,   dP = dout v^T,   dS = softmax_backward(dP, P)
        dq = dS k * scale,   dk = dS^T q * scale

    dout: (..., T, D); q: (..., T, D); k, v: (..., S, D); mask: (T, S) -> (dq, dk, dv).
    P is recomputed from q and k. record sees "softmax": dL/dP, and "scores": dL/dS.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    probs = softmax(np.where(mask, q @ np.swapaxes(k, -1, -2) * scale, -np.inf))
    dprobs = dout @ np.swapaxes(v, -1, -2)
    record("softmax", dprobs)
    dscores = softmax_backward(dprobs, probs)
    record("scores", dscores)
    dscores = dscores * scale  # dL/d(q k^T)
    return dscores @ k, np.swapaxes(dscores, -1, -2) @ q, np.swapaxes(probs, -1, -2) @ dout


def split_heads_backward(dheads):
    """split_heads only moves numbers, so its backward moves them back: (B, H, T, D) -> (B, T, E)."""
    return merge_heads(dheads)


def merge_heads_backward(dx, n_head):
    """merge_heads' backward is split_heads: (B, T, E) -> (B, H, T, D)."""
    return split_heads(dx, n_head)


def causal_self_attention_backward(dout, x, c_attn, c_proj, n_head, record=no_record, scale=None):
    """Backward of y = c_proj(merge(attention(split(q), split(k), split(v)))), [q|k|v] = c_attn(x).

    Each step's backward in reverse order; the [q | k | v] gradients are concatenated back
    into one (B, T, 3E) gradient of c_attn's output. dout, x: (B, T, E) ->
    (dx, {"c_attn": {...}, "c_proj": {...}}). record sees "result" (dout, the same for every
    head: (B, H, T, E)), "z", "softmax" (dL/dP), "scores", "q", "k", "v" and "c_attn".
    """
    qkv = linear(x, **c_attn)
    q, k, v = (split_heads(a, n_head) for a in np.split(qkv, 3, axis=-1))
    mask = causal_mask(x.shape[1], x.shape[1])
    merged = merge_heads(attention(q, k, v, mask, scale=scale))

    if wants(record, "result"):  # attn = sum of the heads' results + bias
        record("result", np.broadcast_to(dout[:, None], (dout.shape[0], n_head) + dout.shape[1:]))
    dmerged, dc_proj = linear_backward(dout, merged, c_proj["weight"])
    record_weights(record, "c_proj", dc_proj)
    dz = merge_heads_backward(dmerged, n_head)
    record("z", dz)
    dq, dk, dv = attention_backward(dz, q, k, v, mask, record, scale)
    record("q", dq)
    record("k", dk)
    record("v", dv)
    dqkv = np.concatenate([split_heads_backward(d) for d in (dq, dk, dv)], axis=-1)
    record("c_attn", dqkv)
    dx, dc_attn = linear_backward(dqkv, x, c_attn["weight"])
    record_weights(record, "c_attn", dc_attn)
    return dx, {"c_attn": dc_attn, "c_proj": dc_proj}


def mlp_backward(dout, x, c_fc, c_proj, record=no_record, act="gelu_new"):
    """Backward of y = c_proj(gelu(c_fc(x))): through c_proj, the GELU, then c_fc.

    dout, x: (..., E) -> (dx, {"c_fc": {...}, "c_proj": {...}}). record sees "gelu", "c_fc".
    act: the activation function, as in layers.mlp (its derivative from activation_functions).
    """
    h = linear(x, **c_fc)
    f, derivative = (gelu, None) if act == "gelu_new" else activation(act)
    dg, dc_proj = linear_backward(dout, f(h), c_proj["weight"])
    record_weights(record, "c_proj", dc_proj)
    record("gelu", dg)
    dh = gelu_backward(dg, h) if act == "gelu_new" else dg * derivative(h)
    record("c_fc", dh)
    dx, dc_fc = linear_backward(dh, x, c_fc["weight"])
    record_weights(record, "c_fc", dc_fc)
    return dx, {"c_fc": dc_fc, "c_proj": dc_proj}


def transformer_block_backward(dout, x, block, n_head, eps, record=no_record, *, act="gelu_new",
                               scale=None):
    """Backward of one block, x1 = x + attn(ln_1(x)), out = x1 + mlp(ln_2(x1)):

        dx1 = dout + ln_2'(mlp'(dout))     (the residual passes dout straight through)
        dx  = dx1  + ln_1'(attn'(dx1))

    x is the block's INPUT (B, T, E); the block's forward is recomputed from it.
    Returns (dx, grads with the structure of block). record sees the activation names
    inside the block in backward order: mlp.c_proj, mlp.gelu, mlp.c_fc, ln_2, ln_2.normalized,
    ln_2.scale, resid_mid, attn, attn.result, attn.z, attn.softmax, attn.scores, attn.q, .k,
    .v, attn.c_attn, ln_1, ln_1.normalized, ln_1.scale, resid_pre. act, scale: as in
    layers.transformer_block.
    """
    h1 = layer_norm(x, **block["ln_1"], eps=eps)
    x1 = x + linear(merge_heads(_attention_heads(h1, block["attn"]["c_attn"], n_head, scale)),
                    **block["attn"]["c_proj"])
    h2 = layer_norm(x1, **block["ln_2"], eps=eps)

    record("mlp.c_proj", dout)
    dh2, dmlp = mlp_backward(dout, h2, **block["mlp"], record=prefixed(record, "mlp."), act=act)
    record("ln_2", dh2)
    record_layer_norm_inner(prefixed(record, "ln_2."), dh2, x1, block["ln_2"]["weight"], eps)
    dx1_ln, dln_2 = layer_norm_backward(dh2, x1, block["ln_2"]["weight"], eps)
    record_weights(record, "ln_2", dln_2)
    dx1 = dout + dx1_ln
    record("resid_mid", dx1)
    record("attn", dx1)
    dh1, dattn = causal_self_attention_backward(dx1, h1, **block["attn"], n_head=n_head,
                                                record=prefixed(record, "attn."), scale=scale)
    record("ln_1", dh1)
    record_layer_norm_inner(prefixed(record, "ln_1."), dh1, x, block["ln_1"]["weight"], eps)
    dx_ln, dln_1 = layer_norm_backward(dh1, x, block["ln_1"]["weight"], eps)
    record_weights(record, "ln_1", dln_1)
    dx = dx1 + dx_ln
    record("resid_pre", dx)
    return dx, {"ln_1": dln_1, "attn": dattn, "ln_2": dln_2, "mlp": dmlp}


def _attention_heads(x, c_attn, n_head, scale=None):
    """The attention heads' outputs (B, H, T, D) for input x (B, T, E): the forward, again."""
    q, k, v = (split_heads(a, n_head) for a in np.split(linear(x, **c_attn), 3, axis=-1))
    return attention(q, k, v, causal_mask(x.shape[1], x.shape[1]), scale=scale)


# ---- the model's two ends (model.forward): embeddings in, output head out -----------------

def embedding_backward(dout, tokens, vocab_size, dwte=None):
    """Backward of the lookup x = wte[tokens]: each row of dout goes back to its token's row,

        dwte[v] = sum over positions t with tokens[t] = v of dout[t]

    a scatter-ADD (a token that appears twice gets both rows). dout: (..., T, E);
    tokens: (..., T) ints -> dwte (V, E). dwte: optional (V, E) array to add into instead of
    zeros (the tied output head's gradient, which wte's gradient also includes).
    """
    if dwte is None:
        dwte = np.zeros((vocab_size, dout.shape[-1]), dtype=dout.dtype)
    np.add.at(dwte, np.asarray(tokens).reshape(-1), dout.reshape(-1, dout.shape[-1]))
    return dwte


def position_embedding_backward(dout, n_positions):
    """Backward of x = wpe[0..T-1] broadcast over the batch: dwpe[t] = sum_b dout[b, t].

    dout: (..., T, E) -> dwpe (n_positions, E); rows T.. get 0 (they were not used).
    """
    T, E = dout.shape[-2:]
    dwpe = np.zeros((n_positions, E), dtype=dout.dtype)
    dwpe[:T] = dout.reshape(-1, T, E).sum(axis=0)
    return dwpe


def lm_head_backward(dlogits, x, head):
    """Backward of logits = x head^T (head: (V, E), wte itself when the head is tied):

        dx = dlogits head,   dhead = dlogits^T x

    With a tied head, wte's full gradient is this dhead PLUS embedding_backward's: wte is
    used twice, so both uses send gradient back to it.
    dlogits: (..., V); x: (..., E) -> (dx (..., E), dhead (V, E)).
    """
    d2, x2 = dlogits.reshape(-1, dlogits.shape[-1]), x.reshape(-1, x.shape[-1])
    return dlogits @ head, d2.T @ x2

