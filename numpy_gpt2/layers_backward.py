"""The gradients of GPT-2's math: one backward function per forward function of layers.py.

The functions stand in the same order as their forward twins in numpy_gpt2/layers.py, so a
reader finds `layer_norm` and `layer_norm_backward` at the same place in the two files.

Conventions. For a forward y = f(x, w), `f_backward(dout, x, w)` takes dout = dL/dy (the
shape of y) and the forward's INPUTS, and returns dL/dx (the shape of x) and, for functions
with weights, the weights' gradients in a dict named like the weights ({"weight", "bias"}),
so the gradient dicts of a block or a model have exactly the structure of the params.
The readable functions recompute what they need from the inputs (the forward's
intermediates are not kept); the fast twins at the end take what the training forward saved.

Shapes: B batch, T positions, E = n_embd, H = n_head, D = E // H, V = vocab size.
`record(name, array)` sees dL/d(activation) under the forward's activation names.
"""

from __future__ import annotations

import math

import numpy as np

from .layers import (GELU_CHUNK, QUERY_BLOCK, _future_mask, _ignore, attention, causal_mask, gelu,
                     layer_norm, linear, merge_heads, normalize, prefixed, softmax, split_heads,
                     thread_pool)

GELU_C = math.sqrt(2.0 / math.pi)


def gelu_backward(dout, x):
    """Derivative of the tanh GELU, gelu(x) = 0.5 x (1 + tanh u), u = c (x + 0.044715 x^3):

        gelu'(x) = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) c (1 + 3 * 0.044715 x^2)

    with c = sqrt(2/pi). dout, x: same shape -> dx = dout * gelu'(x).
    """
    t = np.tanh(GELU_C * (x + 0.044715 * (x * x * x)))
    return dout * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * GELU_C * (1.0 + 3 * 0.044715 * (x * x)))


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


def attention_backward(dout, q, k, v, mask, record=_ignore):
    """Backward of out = P v, P = softmax(S masked), S = q k^T / sqrt(D):

        dv = P^T dout,   dP = dout v^T,   dS = softmax_backward(dP, P)
        dq = dS k / sqrt(D),   dk = dS^T q / sqrt(D)

    dout: (..., T, D); q: (..., T, D); k, v: (..., S, D); mask: (T, S) -> (dq, dk, dv).
    P is recomputed from q and k. record sees "softmax": dL/dP.
    """
    scale = 1.0 / math.sqrt(q.shape[-1])
    probs = softmax(np.where(mask, q @ np.swapaxes(k, -1, -2) * scale, -np.inf))
    dprobs = dout @ np.swapaxes(v, -1, -2)
    record("softmax", dprobs)
    dscores = softmax_backward(dprobs, probs) * scale  # dL/d(q k^T)
    return dscores @ k, np.swapaxes(dscores, -1, -2) @ q, np.swapaxes(probs, -1, -2) @ dout


def split_heads_backward(dheads):
    """split_heads only moves numbers, so its backward moves them back: (B, H, T, D) -> (B, T, E)."""
    return merge_heads(dheads)


def merge_heads_backward(dx, n_head):
    """merge_heads' backward is split_heads: (B, T, E) -> (B, H, T, D)."""
    return split_heads(dx, n_head)


def causal_self_attention_backward(dout, x, c_attn, c_proj, n_head, record=_ignore):
    """Backward of y = c_proj(merge(attention(split(q), split(k), split(v)))), [q|k|v] = c_attn(x).

    Each step's backward in reverse order; the [q | k | v] gradients are concatenated back
    into one (B, T, 3E) gradient of c_attn's output. dout, x: (B, T, E) ->
    (dx, {"c_attn": {...}, "c_proj": {...}}). record sees "softmax" (dL/dP) and "c_attn".
    """
    qkv = linear(x, **c_attn)
    q, k, v = (split_heads(a, n_head) for a in np.split(qkv, 3, axis=-1))
    mask = causal_mask(x.shape[1], x.shape[1])
    merged = merge_heads(attention(q, k, v, mask))

    dmerged, dc_proj = linear_backward(dout, merged, c_proj["weight"])
    dq, dk, dv = attention_backward(merge_heads_backward(dmerged, n_head), q, k, v, mask, record)
    dqkv = np.concatenate([split_heads_backward(d) for d in (dq, dk, dv)], axis=-1)
    record("c_attn", dqkv)
    dx, dc_attn = linear_backward(dqkv, x, c_attn["weight"])
    return dx, {"c_attn": dc_attn, "c_proj": dc_proj}


def mlp_backward(dout, x, c_fc, c_proj, record=_ignore):
    """Backward of y = c_proj(gelu(c_fc(x))): through c_proj, the GELU, then c_fc.

    dout, x: (..., E) -> (dx, {"c_fc": {...}, "c_proj": {...}}). record sees "gelu", "c_fc".
    """
    h = linear(x, **c_fc)
    dg, dc_proj = linear_backward(dout, gelu(h), c_proj["weight"])
    record("gelu", dg)
    dh = gelu_backward(dg, h)
    record("c_fc", dh)
    dx, dc_fc = linear_backward(dh, x, c_fc["weight"])
    return dx, {"c_fc": dc_fc, "c_proj": dc_proj}


def transformer_block_backward(dout, x, block, n_head, eps, record=_ignore):
    """Backward of one block, x1 = x + attn(ln_1(x)), out = x1 + mlp(ln_2(x1)):

        dx1 = dout + ln_2'(mlp'(dout))     (the residual passes dout straight through)
        dx  = dx1  + ln_1'(attn'(dx1))

    x is the block's INPUT (B, T, E); the block's forward is recomputed from it.
    Returns (dx, grads with the structure of block). record sees the activation names
    inside the block in backward order: mlp.c_proj, mlp.gelu, mlp.c_fc, ln_2, attn,
    attn.softmax, attn.c_attn, ln_1.
    """
    h1 = layer_norm(x, **block["ln_1"], eps=eps)
    x1 = x + linear(merge_heads(_attention_heads(h1, block["attn"]["c_attn"], n_head)),
                    **block["attn"]["c_proj"])
    h2 = layer_norm(x1, **block["ln_2"], eps=eps)

    record("mlp.c_proj", dout)
    dh2, dmlp = mlp_backward(dout, h2, **block["mlp"], record=prefixed(record, "mlp."))
    record("ln_2", dh2)
    dx1_ln, dln_2 = layer_norm_backward(dh2, x1, block["ln_2"]["weight"], eps)
    dx1 = dout + dx1_ln
    record("attn", dx1)
    dh1, dattn = causal_self_attention_backward(dx1, h1, **block["attn"], n_head=n_head,
                                                record=prefixed(record, "attn."))
    record("ln_1", dh1)
    dx_ln, dln_1 = layer_norm_backward(dh1, x, block["ln_1"]["weight"], eps)
    return dx1 + dx_ln, {"ln_1": dln_1, "attn": dattn, "ln_2": dln_2, "mlp": dmlp}


def _attention_heads(x, c_attn, n_head):
    """The attention heads' outputs (B, H, T, D) for input x (B, T, E): the forward, again."""
    q, k, v = (split_heads(a, n_head) for a in np.split(linear(x, **c_attn), 3, axis=-1))
    return attention(q, k, v, causal_mask(x.shape[1], x.shape[1]))


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


# ----------------------------------------------------------------------------------------
# The fast path: the same gradients arranged for speed, as in layers.py's fast section
# (2-D matmuls over the N = B*T rows, in-place updates, attention in query blocks), each
# tested equal to its readable twin in tests. The training forward
# (layers.transformer_block_saving_fast) keeps per block only what these need: the block's
# input x, c_attn's output [q | k | v], each query's log-sum-exp, the merged heads y,
# x1 = x + attn, and c_fc's output u: 10 E numbers per position. The LayerNorm outputs and
# the GELU are recomputed (elementwise, cheap next to the matmuls), and the attention
# probabilities are recomputed one query block at a time from the log-sum-exp, so no
# (B, H, T, T) array is ever kept.

def layer_norm_backward_fast(dout, xhat, std, weight):
    """layer_norm_backward() from layers.normalize()'s (xhat, std): the forward's own
    normalization, so nothing is recomputed differently. dout, xhat: (N, E).

    Returns (dx (N, E), {"weight", "bias"}); dx is a new array.
    """
    g = dout * xhat
    grads = {"weight": g.sum(axis=0), "bias": dout.sum(axis=0)}
    np.multiply(dout, weight, out=g)  # g = dL/dxhat
    mean_gx = np.einsum("ne,ne->n", g, xhat)[:, None] / g.shape[-1]
    g -= g.mean(axis=-1, keepdims=True)
    g -= xhat * mean_gx
    g /= std
    return g, grads


def gelu_and_derivative_fast(x):
    """(gelu(x), gelu'(x)) in one pass, for the MLP's backward: returns gelu(x) as a new array
    and OVERWRITES x with gelu'(x) (c_fc's output is not needed after that).

    With s = 1 / (1 + exp(-2u)) = 0.5 (1 + tanh u), u = c (x + 0.044715 x^3), c = sqrt(2/pi):
        gelu(x) = x s,   gelu'(x) = s + 2 c x s (1 - s) (1 + 3 * 0.044715 x^2)
    (the forms of gelu() and gelu_backward() with tanh written through exp, as layers.gelu_fast).
    x: C-contiguous float array, processed in cache-sized chunks (layers.GELU_CHUNK).
    """
    out = np.empty_like(x)
    flat, flat_out = x.reshape(-1), out.reshape(-1)
    for start in range(0, flat.size, GELU_CHUNK):
        part = slice(start, start + GELU_CHUNK)
        _gelu_and_derivative_in_place(flat[part], flat_out[part])
    return out


def _gelu_and_derivative_in_place(x, out):
    x2 = x * x
    s = x2 * 0.044715
    s += 1.0
    s *= x
    s *= -2.0 * GELU_C                  # s = -2u
    with np.errstate(over="ignore"):    # x << 0: exp -> inf, s -> 0: gelu's and gelu''s limits
        np.exp(s, out=s)
    s += 1.0
    np.reciprocal(s, out=s)             # s = 0.5 (1 + tanh u)
    np.multiply(x, s, out=out)          # gelu(x)
    x2 *= 3 * 0.044715
    x2 += 1.0
    x2 *= x
    x2 *= 2.0 * GELU_C                  # 2 c x (1 + 3 * 0.044715 x^2)
    x2 *= s
    x2 *= 1.0 - s
    x2 += s
    x[...] = x2


def causal_attention_backward_fast(dout, q, k, v, out, lse, dq, dk, dv, block=QUERY_BLOCK,
                                   record=_ignore):
    """attention_backward() with the causal mask, one block of queries at a time.

    dout, out: (B, H, T, D), the gradient of the attention output and the output itself;
    q, k, v: (B, H, T, D); lse: (B, H, T) from causal_attention_fast(lse=...).
    Writes dq, dk, dv (B, H, T, D) (views are fine). For query block [t0, t1) only keys
    0 .. t1-1 matter; its probabilities are recomputed as P = exp(q k^T / sqrt(D) - lse), and
    the softmax's row-sum term uses sum_j dP_ij P_ij = sum_d dout_id out_id (P v = out), so
    it needs no second pass over the block.
    record sees "softmax": dL/dP = dout v^T, (B, H, T, T), computed only when recording.
    """
    B, H, T, D = q.shape
    scale = 1.0 / math.sqrt(D)
    delta = np.einsum("bhtd,bhtd->bht", dout, out)[..., None]  # (B, H, T, 1)
    dk[...] = 0.0
    dv[...] = 0.0
    if record is not _ignore:  # dL/dP for every (query, key), masked keys too, as autograd has it
        record("softmax", dout @ np.swapaxes(v, -1, -2))
    for t0 in range(0, T, block):
        t1 = min(t0 + block, T)
        qb = q[:, :, t0:t1] * scale
        p = qb @ np.swapaxes(k[:, :, :t1], -1, -2)  # scores (B, H, n, t1)
        if t1 - t0 > 1:
            p[..., t0:] += _future_mask(t1 - t0, p.dtype)
        p -= lse[:, :, t0:t1, None]
        np.exp(p, out=p)                                             # P
        dv[:, :, :t1] += np.swapaxes(p, -1, -2) @ dout[:, :, t0:t1]  # dv = P^T dout
        dp = dout[:, :, t0:t1] @ np.swapaxes(v[:, :, :t1], -1, -2)   # dP = dout v^T
        dp -= delta[:, :, t0:t1]
        dp *= p                                                      # dS (of the scaled scores)
        dq[:, :, t0:t1] = (dp @ k[:, :, :t1]) * scale
        dk[:, :, :t1] += np.swapaxes(dp, -1, -2) @ qb                # qb carries the scale


def _heads(a, B, n_head):
    """(N, E) rows of B sequences -> (B, H, T, D) view."""
    return split_heads(a.reshape(B, -1, a.shape[-1]), n_head)


def _linear_grads(dout, x):
    """linear_backward()'s weight gradients for 2-D dout (N, n_out), x (N, n_in)."""
    return {"weight": x.T @ dout, "bias": dout.sum(axis=0)}


def transformer_block_backward_fast(dout, saved, block, n_head, eps, record=_ignore):
    """transformer_block_backward() from what layers.transformer_block_saving_fast kept.

    dout: (N, E) with N = B*T rows, OVERWRITTEN: returns (dx in dout's memory, grads).
    saved: {"x", "qkv", "lse", "y", "x1", "u"}; "u" is overwritten too.
    """
    x, qkv, lse, y, x1, u = (saved[k] for k in ("x", "qkv", "lse", "y", "x1", "u"))
    B = lse.shape[0]
    ln_1, attn, ln_2, mlp = block["ln_1"], block["attn"], block["ln_2"], block["mlp"]

    record("mlp.c_proj", dout)
    xhat2, std2 = normalize(x1, eps)
    g = gelu_and_derivative_fast(u)                        # u := gelu'(u)
    dc_proj = _linear_grads(dout, g)
    dg = np.matmul(dout, mlp["c_proj"]["weight"].T, out=g)  # g's memory is free again
    record("mlp.gelu", dg)
    dg *= u                                                # dL/du
    record("mlp.c_fc", dg)
    dc_fc = _linear_grads(dg, xhat2 * ln_2["weight"] + ln_2["bias"])
    dh2 = dg @ mlp["c_fc"]["weight"].T
    record("ln_2", dh2)
    dx1, dln_2 = layer_norm_backward_fast(dh2, xhat2, std2, ln_2["weight"])
    dout += dx1                                            # dout := dL/dx1
    record("attn", dout)

    dattn_proj = _linear_grads(dout, y)
    dy = dout @ attn["c_proj"]["weight"].T
    dqkv = np.empty_like(qkv)
    causal_attention_backward_fast(
        _heads(dy, B, n_head), *(_heads(a, B, n_head) for a in np.split(qkv, 3, axis=-1)),
        _heads(y, B, n_head), lse, *(_heads(a, B, n_head) for a in np.split(dqkv, 3, axis=-1)),
        record=prefixed(record, "attn."))
    record("attn.c_attn", dqkv)
    xhat1, std1 = normalize(x, eps)
    dattn_c = _linear_grads(dqkv, xhat1 * ln_1["weight"] + ln_1["bias"])
    dh1 = dqkv @ attn["c_attn"]["weight"].T
    record("ln_1", dh1)
    dx, dln_1 = layer_norm_backward_fast(dh1, xhat1, std1, ln_1["weight"])
    dout += dx
    return dout, {"ln_1": dln_1, "attn": {"c_attn": dattn_c, "c_proj": dattn_proj},
                  "ln_2": dln_2, "mlp": {"c_fc": dc_fc, "c_proj": dc_proj}}


HEAD_ROWS = 1024  # positions per output-head chunk: a chunk's logits are 200 MB at V = 50257
ROW_PIECE = 16   # rows per elementwise task: 3 MB of float32 logits at V = 50257, cache-sized


def lm_head_cross_entropy_fast(h, head, targets, ignore_index=-100, rows=HEAD_ROWS,
                               record=_ignore, record_grad=_ignore):
    """Output head, cross-entropy and their backward, fused, a chunk of rows at a time:
    logits = h head^T, loss = masked_cross_entropy, dlogits = cross_entropy_backward,
    dh = dlogits head, dhead = dlogits^T h; each chunk's logits turn into its gradient in
    place, so the (N, V) logits never exist whole (unless someone records them).

    h: (N, E); head: (V, E); targets: (N,) ints. Returns (loss, dh (N, E), dhead (V, E)).
    """
    N = h.shape[0]
    if record is not _ignore or record_grad is not _ignore:
        rows = N  # the recorded logits and their gradient are whole arrays
    keep = targets != ignore_index
    weight = keep / keep.sum()  # each row's share of the mean: 0 for ignored rows
    safe = np.where(keep, targets, 0)
    dh = np.empty_like(h)
    # dhead is accumulated transposed, (E, V) = h^T dlogits: BLAS runs that product ~25%
    # faster here than dlogits^T h, whose output has only E columns.
    dhead_t = None
    loss = 0.0
    for r0 in range(0, N, rows):
        r = slice(r0, min(r0 + rows, N))
        z = h[r] @ head.T                               # logits (n, V)
        record("logits", z)
        loss += _cross_entropy_in_pieces(z, safe[r], weight[r])
        record_grad("logits", z)
        np.matmul(z, head, out=dh[r])
        if dhead_t is None:
            dhead_t = h[r].T @ z
        else:
            dhead_t += h[r].T @ z
    return loss, dh, np.ascontiguousarray(dhead_t.T)


def cross_entropy_sum_fast(logits, targets):
    """sum_t -log softmax(logits_t)[targets_t] (token_nll(logits, targets).sum()), computed
    IN PLACE (logits are overwritten) over cache-sized pieces of rows on every core.
    logits: (N, V) C-contiguous; targets: (N,) ints. For evaluation: no (N, V) temporaries."""
    return _cross_entropy_in_pieces(logits, np.asarray(targets), np.ones(logits.shape[0]))


def _cross_entropy_in_pieces(z, targets, weight):
    """_cross_entropy_rows over pieces of ROW_PIECE rows in threads: NumPy runs elementwise
    work on one core, pieces in threads use them all (ufuncs release the GIL), and each
    piece's passes stay in the cache."""
    pieces = [slice(i, i + ROW_PIECE) for i in range(0, z.shape[0], ROW_PIECE)]
    return sum(thread_pool().map(lambda p: _cross_entropy_rows(z[p], targets[p], weight[p]), pieces))


def _cross_entropy_rows(z, targets, weight):
    """Turn logits z (n, V) IN PLACE into w (softmax(z) - onehot(target)) per row, and return
    sum_rows w (-log softmax(z)[target]): cross_entropy_backward and the loss, for rows
    weighted by w (1/N for kept rows, 0 for ignored ones)."""
    picked = np.arange(z.shape[0]), targets
    z -= z.max(axis=-1, keepdims=True)
    target_z = z[picked]
    np.exp(z, out=z)
    sums = z.sum(axis=-1, dtype=np.float64)
    z *= (weight / sums)[:, None].astype(z.dtype)      # softmax, times the row's weight
    z[picked] -= weight.astype(z.dtype)                # minus the one-hot, times the weight
    return float(((np.log(sums) - target_z) * weight).sum())

