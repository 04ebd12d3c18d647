"""The fast path of the backward pass: the gradients of numpy_gpt2/layers_backward.py arranged
for speed, as fast/forward.py arranges the forward (2-D matmuls over the N = B*T rows,
in-place updates, attention in query blocks), each tested equal to its readable twin
(tests/math/test_fast_backward.py).

The training forward, transformer_block_saving_fast (first below), keeps per block only
what the backward needs: the block's input x, c_attn's output [q | k | v], each query's
log-sum-exp, the merged heads y, x1 = x + attn, and c_fc's output u: 10 E numbers per
position. The LayerNorm outputs and the GELU are recomputed (elementwise, cheap next to the
matmuls), and the attention probabilities are recomputed one query block at a time from the
log-sum-exp, so no (B, H, T, T) array is ever kept. The output head and the cross-entropy
run fused, a chunk of rows at a time (lm_head_cross_entropy_fast).

Shapes: B batch, T positions, N = B*T rows, E = n_embd, H = n_head, D = E // H, V = vocab size.
"""

from __future__ import annotations

import math

import numpy as np

from numpy_gpt2.activation_functions import TANH_GELU_NAMES, activation_fast
from numpy_gpt2.dropout import apply as apply_dropout
from numpy_gpt2.hooks import no_record, prefixed, record_weights, wants
from numpy_gpt2.layers import split_heads
from numpy_gpt2.activation_functions import SQRT_2_OVER_PI as GELU_C
from numpy_gpt2.fast import forward as fast_forward
from numpy_gpt2.fast.forward import (GELU_CHUNK, PARALLEL_PIECES, QUERY_BLOCK, _future_mask, causal_attention_fast,
                                     gelu_fast, layer_norm_fast, linear_fast, matmul_fast, normalize, run_head_groups)
from numpy_gpt2.fast.threads import for_each_piece, thread_pool


def transformer_block_saving_fast(x, block, n_head, eps, record=no_record, dropout=None, layer=0, *,
                                  act="gelu_new", scale=None):
    """transformer_block() for training: returns (out, saved), where saved holds what
    transformer_block_backward_fast (below) needs and nothing more.

    x: (B, T, E), left as it is (it is saved: the block's input). out: a new (B, T, E) array.
    saved: {"x": input (N, E), "qkv": c_attn's output (N, 3E), "lse": each query's attention
    log-sum-exp (B, H, T), "y": the merged heads before c_proj (N, E), "x1": the residual
    after attention (N, E), "u": c_fc's output before the GELU (N, 4E)}, N = B * T.
    dropout: a dropout.Dropout (None: none) for the attention probabilities and the two
    residual branches of block number `layer`; then saved also holds the two branch masks
    "m_attn" and "m_mlp" (N, E).
    act, scale: the MLP's activation function and the attention scores' factor (as in
    layers.transformer_block).
    """
    B, T, E = x.shape
    x2d = x.reshape(B * T, E)
    h = layer_norm_fast(x2d, **block["ln_1"], eps=eps)
    record("ln_1", h)
    qkv = linear_fast(h, **block["attn"]["c_attn"])
    record("attn.c_attn", qkv)
    q, k, v = (split_heads(a.reshape(B, T, E), n_head) for a in np.split(qkv, 3, axis=-1))
    lse = np.empty((B, n_head, T), dtype=x.dtype)
    y = causal_attention_fast(q, k, v, lse=lse, record=prefixed(record, "attn."), dropout=dropout,
                              layer=layer, scale=scale).reshape(B * T, E)
    x1 = linear_fast(y, **block["attn"]["c_proj"])
    m_attn = apply_dropout(dropout, (1, layer, 0), x1)
    record("attn", x1)
    x1 += x2d
    h = layer_norm_fast(x1, **block["ln_2"], eps=eps)
    record("ln_2", h)
    u = linear_fast(h, **block["mlp"]["c_fc"])
    record("mlp.c_fc", u)
    h = gelu_fast(u.copy()) if act in TANH_GELU_NAMES else activation_fast(act)[0](u)
    record("mlp.gelu", h)
    out = linear_fast(h, **block["mlp"]["c_proj"])
    m_mlp = apply_dropout(dropout, (1, layer, 1), out)
    record("mlp.c_proj", out)
    out += x1
    saved = {"x": x2d, "qkv": qkv, "lse": lse, "y": y, "x1": x1, "u": u}
    if m_attn is not None:
        saved.update(m_attn=m_attn, m_mlp=m_mlp, dropout=dropout, layer=layer)
    return out.reshape(B, T, E), saved


def layer_norm_backward_fast(dout, xhat, std, weight):
    """layer_norm_backward() from fast.forward.normalize()'s (xhat, std): the forward's own
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
    """OVERWRITES x with gelu'(x) and returns gelu(x) as a new array: both in one pass, for
    the MLP's backward (c_fc's output is not needed after that).

    With s = 1 / (1 + exp(-2u)) = 0.5 (1 + tanh u), u = c (x + 0.044715 x^3), c = sqrt(2/pi):
        gelu(x) = x s,   gelu'(x) = s + 2 c x s (1 - s) (1 + 3 * 0.044715 x^2)
    (the forms of gelu() and gelu_backward() with tanh written through exp, as fast.forward.gelu_fast).
    x: C-contiguous float array, processed in cache-sized chunks (fast.forward.GELU_CHUNK).
    """
    out = np.empty_like(x)
    flat, flat_out = x.reshape(-1), out.reshape(-1)

    def piece(i):
        part = slice(i * GELU_CHUNK, (i + 1) * GELU_CHUNK)
        _gelu_and_derivative_inplace(flat[part], flat_out[part])

    for_each_piece(piece, -(-flat.size // GELU_CHUNK), min_pieces=PARALLEL_PIECES)
    return out


def _gelu_and_derivative_inplace(x, out):
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
                                   record=no_record, dropout=None, layer=0, scale=None):
    """attention_backward() with the causal mask, one block of queries at a time.

    dout, out: (B, H, T, D), the gradient of the attention output and the output itself;
    q, k, v: (B, H, T, D); lse: (B, H, T) from causal_attention_fast(lse=...).
    Writes dq, dk, dv (B, H, T, D) (views are fine). For query block [t0, t1) only keys
    0 .. t1-1 matter; its probabilities are recomputed as P = exp(q k^T / sqrt(D) - lse), and
    the softmax's row-sum term uses sum_j dP_ij P_ij = sum_d dout_id out_id (P v = out), so
    it needs no second pass over the block.
    record sees "softmax": dL/dP = dout v^T, (B, H, T, T), computed only when recording, and
    "scores": dL/dS (B, H, T, T), when someone wants it.
    dropout: the forward's (causal_attention_fast): each block's mask M is regenerated, and
    P M replaces P in dv, dL/dP = (dout v^T) M; the row-sum term is unchanged (it is
    dout . out, out being the output after dropout).
    scale: the scores' factor, 1 / sqrt(D) unless the config changes it.
    """
    B, H, T, D = q.shape
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    delta = np.einsum("bhtd,bhtd->bht", dout, out)[..., None]  # (B, H, T, 1)
    if wants(record, "softmax"):  # dL/dP for every (query, key), masked keys too, as autograd has it
        record("softmax", dout @ np.swapaxes(v, -1, -2))
    dscores = np.zeros((B, H, T, T), dtype=q.dtype) if wants(record, "scores") else None

    def heads(b, h):
        def mask(t0, t1, dtype):  # the forward's full-block mask cut to these heads, as it did
            return dropout.mask((1, layer, 2, t0), (B, H, t1 - t0, t1), dtype)[b, h]

        _attention_backward_heads(dout[b, h], q[b, h], k[b, h], v[b, h], lse[b, h], delta[b, h],
                                  dq[b, h], dk[b, h], dv[b, h], block, scale, None if dropout is None else mask,
                                  None if dscores is None else dscores[b, h])

    # A dropout mask is drawn whole for every block and cut to a piece's heads: one piece per thread.
    run_head_groups(heads, B, H, 8 * B * H * T * (T / 2) * D, pieces=None if dropout is None else 1)
    if dscores is not None:
        record("scores", dscores)


def _attention_backward_heads(dout, q, k, v, lse, delta, dq, dk, dv, block, scale, mask, dscores=None):
    """causal_attention_backward_fast for some heads: every array (..., h, T, ...).
    mask: None, or mask(t0, t1, dtype) -> the forward's dropout mask (..., h, t1 - t0, t1)
    of query block [t0, t1). dscores: None, or (..., h, T, T) zeros to write dL/dS into.
    Each block runs its heads in groups of GROUP_SCORES scores, as the forward does
    (fast.forward._attend_heads): a group's (g, n, t1) arrays stay in the cache (one thread,
    T = 1024: 70 ms with 1-2 heads per call against 83 with 12). Every operation is per head,
    so any grouping computes the same bits."""
    T, h = q.shape[-2], q.shape[-3]
    every = math.prod(q.shape[:-2])  # heads of every sequence
    dk[...] = 0.0
    dv[...] = 0.0
    rest = (slice(None), slice(None))  # the two axes after the heads'
    for t0 in range(0, T, block):
        t1 = min(t0 + block, T)
        m = None if mask is None else mask(t0, t1, q.dtype)
        g = max(1, fast_forward.GROUP_SCORES // ((t1 - t0) * t1))
        if g >= every:
            groups = [(Ellipsis, slice(None))]
        else:
            groups = [pre + (slice(h0, min(h0 + g, h)),) for pre in np.ndindex(*q.shape[:-3]) for h0 in range(0, h, g)]
        for heads in groups:
            i = tuple(heads) + rest
            _attention_backward_block(dout[i], q[i], k[i], v[i], lse[tuple(heads) + rest[:1]], delta[i], dq[i],
                                      dk[i], dv[i], t0, t1, scale, None if m is None else m[i],
                                      None if dscores is None else dscores[i])


def _attention_backward_block(dout, q, k, v, lse, delta, dq, dk, dv, t0, t1, scale, m, dscores):
    """Query block [t0, t1) of _attention_backward_heads for some heads; m: its dropout mask or None."""
    qb = q[..., t0:t1, :] * scale
    p = qb @ np.swapaxes(k[..., :t1, :], -1, -2)  # scores (..., n, t1)
    if t1 - t0 > 1:
        p[..., t0:] += _future_mask(t1 - t0, p.dtype)
    p -= lse[..., t0:t1, None]
    np.exp(p, out=p)                                                       # P
    pm = p if m is None else p * m                                         # P M: dropped
    dv[..., :t1, :] += np.swapaxes(pm, -1, -2) @ dout[..., t0:t1, :]       # dv = (P M)^T dout
    dp = dout[..., t0:t1, :] @ np.swapaxes(v[..., :t1, :], -1, -2)         # dP = dout v^T
    if m is not None:
        dp *= m
    dp -= delta[..., t0:t1, :]
    dp *= p                                                                # dS (of the scaled scores)
    if dscores is not None:
        dscores[..., t0:t1, :t1] = dp
    dq[..., t0:t1, :] = (dp @ k[..., :t1, :]) * scale
    dk[..., :t1, :] += np.swapaxes(dp, -1, -2) @ qb                        # qb carries the scale


def _heads(a, B, n_head):
    """(N, E) rows of B sequences -> (B, H, T, D) view."""
    return split_heads(a.reshape(B, -1, a.shape[-1]), n_head)


def _linear_grads(dout, x):
    """linear_backward()'s weight gradients for 2-D dout (N, n_out), x (N, n_in)."""
    return {"weight": matmul_fast(x.T, dout), "bias": dout.sum(axis=0)}


def record_layer_norm_inner_fast(record, dout, xhat, std, weight):
    """layers_backward.record_layer_norm_inner from the forward's own (xhat, std)."""
    if wants(record, "normalized") or wants(record, "scale"):
        g = dout * weight
        record("normalized", g)
        record("scale", -(g * xhat).sum(axis=-1, keepdims=True) / std)


def _layer_norm_linear_backward(dy, x, ln, weight, eps, record, ln_name, linear_name):
    """Backward through y = linear(layer_norm(x)) (a block's ln_1 -> c_attn and ln_2 -> c_fc):
    dy (N, n_out), x (N, E) the LayerNorm's input, weight (E, n_out). The LayerNorm output is
    recomputed from x (the training forward does not keep it). Records the linear's weight
    gradients, then dL/d(layer_norm output) under ln_name, then the LayerNorm's weight
    gradients. Returns (dx (N, E), LayerNorm grads, linear grads)."""
    xhat, std = normalize(x, eps)
    dlinear = record_weights(record, linear_name, _linear_grads(dy, xhat * ln["weight"] + ln["bias"]))
    dh = matmul_fast(dy, weight.T)
    record(ln_name, dh)
    record_layer_norm_inner_fast(prefixed(record, ln_name + "."), dh, xhat, std, ln["weight"])
    dx, dln = layer_norm_backward_fast(dh, xhat, std, ln["weight"])
    record_weights(record, ln_name, dln)
    return dx, dln, dlinear


def transformer_block_backward_fast(dout, saved, block, n_head, eps, record=no_record, *,
                                    act="gelu_new", scale=None):
    """transformer_block_backward() from what transformer_block_saving_fast kept, OVERWRITING
    dout (and saved["u"]): returns (dx in dout's memory, grads).

    dout: (N, E) with N = B*T rows.
    saved: {"x", "qkv", "lse", "y", "x1", "u"}; "u" is overwritten too. act, scale: as in
    transformer_block_saving_fast.
    """
    x, qkv, lse, y, x1, u = (saved[k] for k in ("x", "qkv", "lse", "y", "x1", "u"))
    B = lse.shape[0]
    ln_1, attn, ln_2, mlp = block["ln_1"], block["attn"], block["ln_2"], block["mlp"]
    dropout, layer = saved.get("dropout"), saved.get("layer", 0)

    record("mlp.c_proj", dout)
    g = _activation_and_derivative(u, act)                 # u := gelu'(u)
    dbranch = dout if dropout is None else dout * saved["m_mlp"]  # through the branch's dropout
    dc_proj = record_weights(record, "mlp.c_proj", _linear_grads(dbranch, g))
    dg = matmul_fast(dbranch, mlp["c_proj"]["weight"].T, out=g)  # g's memory is free again
    record("mlp.gelu", dg)
    dg *= u                                                # dL/du
    record("mlp.c_fc", dg)
    dx1, dln_2, dc_fc = _layer_norm_linear_backward(dg, x1, ln_2, mlp["c_fc"]["weight"], eps, record,
                                                    "ln_2", "mlp.c_fc")
    dout += dx1                                            # dout := dL/dx1
    record("resid_mid", dout)
    record("attn", dout)

    dbranch = dout if dropout is None else dout * saved["m_attn"]
    if wants(record, "attn.result"):  # attn = sum of the heads' results + bias: each gets dbranch
        branch = dbranch.reshape(B, 1, -1, dbranch.shape[-1])
        record("attn.result", np.broadcast_to(branch, (B, n_head) + branch.shape[2:]))
    dattn_proj = record_weights(record, "attn.c_proj", _linear_grads(dbranch, y))
    dy = matmul_fast(dbranch, attn["c_proj"]["weight"].T)
    if wants(record, "attn.z"):
        record("attn.z", _heads(dy, B, n_head))
    dqkv = np.empty_like(qkv)
    dq, dk, dv = (_heads(a, B, n_head) for a in np.split(dqkv, 3, axis=-1))
    causal_attention_backward_fast(
        _heads(dy, B, n_head), *(_heads(a, B, n_head) for a in np.split(qkv, 3, axis=-1)),
        _heads(y, B, n_head), lse, dq, dk, dv,
        record=prefixed(record, "attn."), dropout=dropout, layer=layer, scale=scale)
    for name, grad in (("attn.q", dq), ("attn.k", dk), ("attn.v", dv)):
        if wants(record, name):
            record(name, grad)
    record("attn.c_attn", dqkv)
    dx, dln_1, dattn_c = _layer_norm_linear_backward(dqkv, x, ln_1, attn["c_attn"]["weight"], eps,
                                                     record, "ln_1", "attn.c_attn")
    dout += dx
    record("resid_pre", dout)
    return dout, {"ln_1": dln_1, "attn": {"c_attn": dattn_c, "c_proj": dattn_proj},
                  "ln_2": dln_2, "mlp": {"c_fc": dc_fc, "c_proj": dc_proj}}


def _activation_and_derivative(u, act):
    """(f(u) as a new array, u overwritten with f'(u)): the tanh GELU in one fused pass,
    other activation functions from activation_functions.activation_fast."""
    if act in TANH_GELU_NAMES:
        return gelu_and_derivative_fast(u)
    f, derivative = activation_fast(act)
    g = f(u)
    u[...] = derivative(u)
    return g


HEAD_ROWS = 1024  # positions per output-head chunk: a chunk's logits are 200 MB at V = 50257
ROW_PIECE = 16   # rows per elementwise task: 3 MB of float32 logits at V = 50257, cache-sized


def lm_head_cross_entropy_fast(h, head, targets, ignore_index=-100, rows=HEAD_ROWS,
                               record=no_record, record_grad=no_record, num_items_in_batch=None):
    """Output head, cross-entropy and their backward, fused, a chunk of rows at a time:
    logits = h head^T, loss = masked_cross_entropy, dlogits = cross_entropy_backward,
    dh = dlogits head, dhead = dlogits^T h; each chunk's logits turn into its gradient in
    place, so the (N, V) logits never exist whole (unless someone records them).

    h: (N, E); head: (V, E); targets: (N,) ints. Returns (loss, dh (N, E), dhead (V, E)).
    num_items_in_batch: the mean's denominator, as for masked_cross_entropy.
    """
    N = h.shape[0]
    if record is not no_record or record_grad is not no_record:
        rows = N  # the recorded logits and their gradient are whole arrays
    keep = targets != ignore_index
    # each row's share of the mean: 0 for ignored rows
    weight = keep / (keep.sum() if num_items_in_batch is None else num_items_in_batch)
    safe = np.where(keep, targets, 0)
    dh = np.empty_like(h)
    # dhead = dlogits^T h straight into its (V, E) layout (BLAS reads dlogits transposed in
    # place): no transposed copy of a (V, E) array afterwards. The same bits as accumulating
    # h^T dlogits (E, V) and copying it transposed, and faster on a 2-core AMD EPYC
    # (docs/speed.md); on a quiet Xeon h^T dlogits alone had been ~25% faster.
    dhead = None
    loss = 0.0
    for r0 in range(0, N, rows):
        r = slice(r0, min(r0 + rows, N))
        z = matmul_fast(h[r], head.T)                   # logits (n, V)
        record("logits", z)
        loss += _cross_entropy_in_pieces(z, safe[r], weight[r])
        record_grad("logits", z)
        matmul_fast(z, head, out=dh[r])
        if dhead is None:
            dhead = matmul_fast(z.T, h[r])
        else:
            dhead += matmul_fast(z.T, h[r])
    return loss, dh, dhead


def cross_entropy_sum_fast(logits, targets):
    """sum_t -log softmax(logits_t)[targets_t] (token_nll(logits, targets).sum()), computed
    IN PLACE (logits are overwritten) over cache-sized pieces of rows on every core.
    logits: (N, V) C-contiguous; targets: (N,) ints. For evaluation: no (N, V) temporaries."""
    return _cross_entropy_in_pieces(logits, np.asarray(targets), np.ones(logits.shape[0]))


def _cross_entropy_in_pieces(z, targets, weight):
    """_cross_entropy_rows (z OVERWRITTEN) over pieces of ROW_PIECE rows in threads: NumPy runs elementwise
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
