"""The math of GPT-2, one short function per equation.

Shapes: B batch, T new positions, S = past + T key positions, E = n_embd, H = n_head,
D = E // H head size, V = vocab size. Every function works for any leading batch dims
unless it says otherwise. Arrays keep the dtype of the weights (float32 or float64).

`record(name, array)` arguments, where present, let a caller see intermediate values
(see numpy_gpt2.activations); the default does nothing.
"""

from __future__ import annotations

import concurrent.futures
import functools
import math
import os

import numpy as np


def _ignore(name, value):
    pass


def prefixed(record, prefix):
    """record, with names prefixed; stays _ignore when nothing records (the fast path checks)."""
    return _ignore if record is _ignore else lambda name, value: record(prefix + name, value)


def gelu(x):
    """GELU, tanh form ("gelu_new"), as GPT-2 was trained:

        gelu(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
    """
    # Python-float constants keep float32 inputs float32 (a NumPy float64 scalar would upcast).
    # x * x * x, not x ** 3: NumPy computes float32 powers with powf, over 10x slower.
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * (x * x * x))))


def layer_norm(x, weight, bias, eps=1e-5):
    """LayerNorm over the last axis: (x - mean) / sqrt(var + eps) * weight + bias.

    x: (..., E); weight, bias: (E,). The variance is the biased one (divide by E).
    """
    mean = x.mean(axis=-1, keepdims=True)
    centered = x - mean
    var = (centered * centered).mean(axis=-1, keepdims=True)
    return centered / np.sqrt(var + eps) * weight + bias


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


def attention(q, k, v, mask, record=_ignore):
    """Scaled dot-product attention: softmax(q k^T / sqrt(D), masked) v.

    q: (..., T, D); k, v: (..., S, D); mask: (T, S) bool, True where a key is visible.
    Returns (..., T, D).
    """
    scores = q @ np.swapaxes(k, -1, -2) / math.sqrt(q.shape[-1])
    probs = softmax(np.where(mask, scores, -np.inf))
    record("softmax", probs)
    return probs @ v


def causal_self_attention_reference(x, c_attn, c_proj, n_head):
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


def causal_self_attention(x, c_attn, c_proj, n_head, kv=None, record=_ignore):
    """Causal multi-head self-attention, all heads and the whole batch at once.

    x: (B, T, E) -> (B, T, E). Same math as causal_self_attention_reference.
    kv: optional (keys, values, past) cache for this layer: keys/values are preallocated
    (B, H, n_ctx, D) arrays holding `past` earlier positions; this call writes its T new
    keys/values after them and attends over all past + T positions.
    """
    qkv = linear(x, **c_attn)  # (B, T, 3E) = [q | k | v]
    record("c_attn", qkv)
    q, k, v = (split_heads(a, n_head) for a in np.split(qkv, 3, axis=-1))  # each (B, H, T, D)
    if kv is not None:
        keys, values, past = kv
        T = x.shape[1]
        keys[:, :, past:past + T] = k
        values[:, :, past:past + T] = v
        k, v = keys[:, :, :past + T], values[:, :, :past + T]
    mask = causal_mask(q.shape[-2], k.shape[-2])
    out = merge_heads(attention(q, k, v, mask, record))  # (B, T, E)
    return linear(out, **c_proj)


def mlp(x, c_fc, c_proj, record=_ignore):
    """Position-wise feed-forward: c_proj(gelu(c_fc(x))). x: (..., E) -> (..., E); hidden 4E."""
    h = linear(x, **c_fc)
    record("c_fc", h)
    h = gelu(h)
    record("gelu", h)
    return linear(h, **c_proj)


def transformer_block(x, block, n_head, eps, kv=None, record=_ignore):
    """One pre-LayerNorm GPT-2 block (x: (B, T, E) -> (B, T, E)):

        x = x + attn(ln_1(x))
        x = x + mlp(ln_2(x))

    block: this layer's weights, params["h"][i] (ln_1, attn, ln_2, mlp).
    """
    h = layer_norm(x, **block["ln_1"], eps=eps)
    record("ln_1", h)
    a = causal_self_attention(h, **block["attn"], n_head=n_head, kv=kv,
                              record=prefixed(record, "attn."))
    record("attn", a)
    x = x + a
    h = layer_norm(x, **block["ln_2"], eps=eps)
    record("ln_2", h)
    m = mlp(h, **block["mlp"], record=prefixed(record, "mlp."))
    record("mlp.c_proj", m)
    return x + m


# ----------------------------------------------------------------------------------------
# The fast path: the same equations, arranged for speed. model.forward runs it (recording
# or not, so a recorded activation is exactly what generation computes); the readable
# functions above are what it is checked against: tests/test_fast_paths.py tests every
# function below against its readable twin. The tricks, each one small:
#   * matmuls see 2-D inputs: (B, T, E) @ (E, N) would call BLAS once per sequence and read
#     the weights B times; (B*T, E) @ (E, N) reads them once (decoding is weight-bandwidth bound);
#   * in-place updates (`out=`, `+=`): fewer temporaries, less memory traffic, lower peak RSS;
#   * attention in blocks of queries: a block never touches the keys after it (they are all
#     masked), and its scores stay cache-sized instead of a (B, H, T, T) array (48 MB per
#     layer at T = 1024);
#   * softmax left unnormalized until after `@ v`: dividing (T, D) outputs is cheaper than
#     dividing (T, S) probabilities.

QUERY_BLOCK = 64  # queries per attention block: a block's scores are <= 3 MB at S = 1024


@functools.lru_cache(maxsize=1)
def thread_pool():
    """Worker threads, one per core, for elementwise work split into pieces: NumPy runs a
    ufunc on one core, but releases the GIL while it runs, so pieces in threads use them all."""
    return concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1)


def linear_fast(x, weight, bias):
    """linear() as one 2-D matmul (weights read once for the whole batch), bias added in place."""
    out = x.reshape(-1, x.shape[-1]) @ weight
    out += bias
    return out.reshape(*x.shape[:-1], weight.shape[1])


GELU_CHUNK = 1 << 16  # elements per gelu_fast pass: 256 KB of float32 stays in the L2 cache


def gelu_fast(x):
    """gelu() computed in x's own memory (x is overwritten and returned).

    Uses 0.5 (1 + tanh(u)) = 1 / (1 + exp(-2u)), so gelu(x) = x / (1 + exp(-2u)) with
    u = sqrt(2/pi) (x + 0.044715 x^3): NumPy's float32 exp is about twice as fast as its tanh.
    A big array goes in cache-sized chunks: its eight passes then hit the cache, not memory,
    and the one temporary stays small.
    """
    flat = x.reshape(-1) if x.flags.c_contiguous else None  # a view, so writes reach x
    if flat is None or flat.size <= GELU_CHUNK:
        return _gelu_in_place(x)
    for start in range(0, flat.size, GELU_CHUNK):
        _gelu_in_place(flat[start:start + GELU_CHUNK])
    return x


def _gelu_in_place(x):
    t = x * x
    t *= x                                    # x^3 as x*x*x (x ** 3 calls powf: 10x slower)
    t *= 0.044715                             # Python floats keep float32 arrays float32
    t += x
    t *= -2.0 * math.sqrt(2.0 / math.pi)      # t = -2u
    with np.errstate(over="ignore"):          # x << 0: exp -> inf, x / inf -> -0, gelu's limit
        np.exp(t, out=t)
    t += 1.0
    x /= t
    return x


def normalize(x, eps):
    """LayerNorm's normalization of x (..., E), in one new array: (xhat, std) with
    xhat = (x - mean) / std and std = sqrt(var + eps) (..., 1). layer_norm(x) = xhat * weight
    + bias; the backward pass (layers_backward.layer_norm_backward_fast) needs xhat and std."""
    xhat = x - x.mean(axis=-1, keepdims=True)
    std = np.mean(xhat * xhat, axis=-1, keepdims=True)
    std += eps
    np.sqrt(std, out=std)
    xhat /= std
    return xhat, std


def layer_norm_fast(x, weight, bias, eps=1e-5):
    """layer_norm() with one output array updated in place: normalize(), then the affine map."""
    out, _ = normalize(x, eps)
    out *= weight
    out += bias
    return out


@functools.lru_cache(maxsize=8)
def _future_mask(n, dtype):
    """(n, n) additive mask: 0 on and below the diagonal, -inf above (key after query)."""
    mask = np.triu(np.full((n, n), -np.inf, dtype=dtype), k=1)
    mask.flags.writeable = False  # shared by every call
    return mask


def causal_attention_fast(q, k, v, past=0, block=QUERY_BLOCK, record=_ignore, lse=None):
    """attention() with the causal mask, for T queries at positions past .. past+T-1.

    q: (B, H, T, D); k, v: (B, H, past + T, D). Returns (B, T, H, D), the layout in which
    merging the heads to (B, T, E) is a free reshape. Query block [t0, t1) needs keys
    0 .. past+t1-1 only, and only its last t1-t0 keys need masking. block: queries per block.
    lse: optional (B, H, T) array, filled with each query's log sum_j exp(score_j): with it,
    the backward pass recomputes any block of probabilities as exp(score - lse), so no
    (B, H, T, S) array needs to be kept for it.
    """
    B, H, T, D = q.shape
    out = np.empty((B, T, H, D), dtype=q.dtype)
    # The (B, H, T, S) probabilities exist only when someone records them.
    probs = None if record is _ignore else np.zeros((B, H, T, past + T), dtype=q.dtype)
    for t0 in range(0, T, block):
        t1 = min(t0 + block, T)
        S = past + t1  # keys this block can see
        # Scale q (n x D numbers), not the scores (n x S); for D = 64 it is exact either way.
        scores = (q[:, :, t0:t1] * (1.0 / math.sqrt(D))) @ np.swapaxes(k[:, :, :S], -1, -2)
        if t1 - t0 > 1:  # a single query sees every key so far: nothing to mask
            scores[..., S - (t1 - t0):] += _future_mask(t1 - t0, scores.dtype)
        top = scores.max(axis=-1, keepdims=True)
        scores -= top
        np.exp(scores, out=scores)
        sums = scores.sum(axis=-1, keepdims=True)
        if lse is not None:
            lse[:, :, t0:t1] = (top + np.log(sums))[..., 0]
        heads = scores @ v[:, :, :S]  # (B, H, n, D), unnormalized
        heads /= sums
        out[:, t0:t1] = np.swapaxes(heads, 1, 2)
        if probs is not None:
            probs[:, :, t0:t1, :S] = scores / sums
    if probs is not None:
        record("softmax", probs)
    return out


def causal_self_attention_fast(x, c_attn, c_proj, n_head, kv=None, last_only=False, record=_ignore):
    """causal_self_attention(), fast. x: (B, T, E) -> (B, T, E); kv and record as there.

    last_only: the output for the last position only, (B, 1, E); every position's keys and
    values are still computed (and cached), only the other queries are skipped.
    """
    B, T, E = x.shape
    qkv = linear_fast(x, **c_attn)
    record("c_attn", qkv)
    q, k, v = (split_heads(a, n_head) for a in np.split(qkv, 3, axis=-1))  # views, no copies
    past = 0
    if kv is not None:
        keys, values, past = kv
        keys[:, :, past:past + T] = k
        values[:, :, past:past + T] = v
        k, v = keys[:, :, :past + T], values[:, :, :past + T]
    if last_only:
        q, past, T = q[:, :, -1:], past + T - 1, 1
    out = causal_attention_fast(q, k, v, past, record=record).reshape(B, T, E)
    return linear_fast(out, **c_proj)


def mlp_fast(x, c_fc, c_proj, record=_ignore):
    """mlp(), fast: GELU overwrites the hidden (..., 4E) array in place."""
    h = linear_fast(x, **c_fc)
    if record is not _ignore:
        record("c_fc", h.copy())  # a copy: gelu_fast is about to overwrite h
    h = gelu_fast(h)
    record("gelu", h)
    return linear_fast(h, **c_proj)


def transformer_block_fast(x, block, n_head, eps, kv=None, last_only=False, record=_ignore):
    """transformer_block(), fast; adds to x IN PLACE (x must be the caller's own array).

    last_only: return the last position only, (B, 1, E) (a new array; x is left as it was).
    The model's last block uses it when only the next token's logits are wanted: after the
    keys/values, nothing there depends on the other positions.
    """
    h = layer_norm_fast(x, **block["ln_1"], eps=eps)
    record("ln_1", h)
    a = causal_self_attention_fast(h, **block["attn"], n_head=n_head, kv=kv, last_only=last_only,
                                   record=prefixed(record, "attn."))
    record("attn", a)
    if last_only:
        x = x[:, -1:].copy()
    x += a
    h = layer_norm_fast(x, **block["ln_2"], eps=eps)
    record("ln_2", h)
    m = mlp_fast(h, **block["mlp"], record=prefixed(record, "mlp."))
    record("mlp.c_proj", m)
    x += m
    return x


def transformer_block_saving_fast(x, block, n_head, eps, record=_ignore):
    """transformer_block() for training: returns (out, saved), where saved holds what
    layers_backward.transformer_block_backward_fast needs and nothing more.

    x: (B, T, E), left as it is (it is saved: the block's input). out: a new (B, T, E) array.
    saved: {"x": input (N, E), "qkv": c_attn's output (N, 3E), "lse": each query's attention
    log-sum-exp (B, H, T), "y": the merged heads before c_proj (N, E), "x1": the residual
    after attention (N, E), "u": c_fc's output before the GELU (N, 4E)}, N = B * T.
    """
    B, T, E = x.shape
    x2d = x.reshape(B * T, E)
    h = layer_norm_fast(x2d, **block["ln_1"], eps=eps)
    record("ln_1", h)
    qkv = linear_fast(h, **block["attn"]["c_attn"])
    record("attn.c_attn", qkv)
    q, k, v = (split_heads(a.reshape(B, T, E), n_head) for a in np.split(qkv, 3, axis=-1))
    lse = np.empty((B, n_head, T), dtype=x.dtype)
    y = causal_attention_fast(q, k, v, lse=lse, record=prefixed(record, "attn.")).reshape(B * T, E)
    x1 = linear_fast(y, **block["attn"]["c_proj"])
    record("attn", x1)
    x1 += x2d
    h = layer_norm_fast(x1, **block["ln_2"], eps=eps)
    record("ln_2", h)
    u = linear_fast(h, **block["mlp"]["c_fc"])
    record("mlp.c_fc", u)
    h = gelu_fast(u.copy())
    record("mlp.gelu", h)
    out = linear_fast(h, **block["mlp"]["c_proj"])
    record("mlp.c_proj", out)
    out += x1
    return out.reshape(B, T, E), {"x": x2d, "qkv": qkv, "lse": lse, "y": y, "x1": x1, "u": u}
