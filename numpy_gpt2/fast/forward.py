"""The fast path of the forward pass: the equations of numpy_gpt2/layers.py, arranged for speed.

model.forward runs these (recording or not, so a recorded activation is exactly what
generation computes); the readable functions of layers.py are the reference they are
checked against: tests/math/test_fast_paths.py tests every function here against its readable
twin. The tricks, each one small:
  * matmuls see 2-D inputs: (B, T, E) @ (E, N) would call BLAS once per sequence and read
    the weights B times; (B*T, E) @ (E, N) reads them once (decoding is weight-bandwidth bound);
  * in-place updates (`out=`, `+=`): fewer temporaries, less memory traffic, lower peak RSS;
  * attention in blocks of queries: a block never touches the keys after it (they are all
    masked), and its scores stay cache-sized instead of a (B, H, T, T) array (48 MB per
    layer at T = 1024);
  * softmax left unnormalized until after `@ v`: dividing (T, D) outputs is cheaper than
    dividing (T, S) probabilities.
The fast forward of training, which also saves what the backward pass needs, is
fast.training.transformer_block_saving_fast.
"""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np

from numpy_gpt2.activation_functions import TANH_GELU_NAMES, activation_fast
from numpy_gpt2.hooks import changed, no_record, prefixed, record_copy, recorder, wants
from numpy_gpt2.layers import head_results, softmax, split_heads
from numpy_gpt2.fast.threads import blas_single_threaded, can_limit_blas, for_each_piece, run_shares, threads

QUERY_BLOCK = 64  # queries per attention block: a block's scores are <= 3 MB at S = 1024


def linear_fast(x, weight, bias):
    """linear() as one 2-D matmul (weights read once for the whole batch), bias added in place."""
    out = matmul_fast(x.reshape(-1, x.shape[-1]), weight, bias=bias)
    return out.reshape(*x.shape[:-1], weight.shape[1])


SPLIT_FLOPS = 1 << 20  # matmuls with fewer floating-point operations run on the calling thread


def matmul_fast(a, b, out=None, bias=None):
    """a @ b (+ bias) for 2-D a (M, K), b (K, N), into out (M, N) (a new array when None).

    The columns of b are shared out between the threads (numpy_gpt2.fast.threads), each running a
    single-threaded BLAS on its share and adding its part of bias while it is in the cache:
    one meeting of the threads per matmul, where BLAS's own threads meet many times inside
    one call, and a share that no thread has started yet is taken by the caller
    (threads.run_shares), so a thread the system does not run soon is not waited for. On a
    2-core AMD EPYC with other processes busy, a (128, 768) @ (768, 768) took 40 ms on
    average on OpenBLAS's 2 threads, 5-8 ms on one (docs/speed.md). Below SPLIT_FLOPS, one
    thread. A plain matmul on BLAS's own threads when threads() == 1
    (threads.blas_threads_only) or BLAS cannot be limited (not OpenBLAS).
    """
    M, N = a.shape[0], b.shape[1]
    if out is None:
        out = np.empty((M, N), dtype=np.result_type(a, b))
    if not can_limit_blas() or threads() == 1:  # (can_limit_blas first: it applies $NUMPY_GPT2_THREADS)
        np.matmul(a, b, out=out)
        if bias is not None:
            out += bias
        return out
    shares = min(threads(), N // 64) if 2 * M * a.shape[1] * N >= SPLIT_FLOPS else 1
    shares = max(shares, 1)
    edges = [N * i // shares // 16 * 16 for i in range(shares)] + [N]  # 64-byte aligned cuts

    def share(i):
        c = slice(edges[i], edges[i + 1])
        np.matmul(a, b[:, c], out=out[:, c])
        if bias is not None:
            out[:, c] += bias[c]

    with blas_single_threaded():
        run_shares(share, shares)
    return out


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
        return _gelu_inplace(x)
    # Chunks shared out between the threads (ufuncs release the GIL).
    for_each_piece(lambda i: _gelu_inplace(flat[i * GELU_CHUNK:(i + 1) * GELU_CHUNK]),
                   -(-flat.size // GELU_CHUNK), min_pieces=PARALLEL_PIECES)
    return x


PARALLEL_PIECES = 4  # cache-sized pieces of elementwise work worth handing to threads


def _gelu_inplace(x):
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


def normalize(x, eps, record=no_record):
    """LayerNorm's normalization of x (..., E), in one new array: (xhat, std) with
    xhat = (x - mean) / std and std = sqrt(var + eps) (..., 1). layer_norm(x) = xhat * weight
    + bias; the backward pass (fast.training.layer_norm_backward_fast) needs xhat and std.
    record sees (and a hook may replace) std as "scale" and xhat as "normalized"."""
    # np.add.reduce and a division: the bits of x.mean(), without its Python-level wrapper
    # (a decode step normalizes 25 single rows, where that wrapper was most of the time).
    n = x.shape[-1]
    mean = np.add.reduce(x, axis=-1, keepdims=True)
    mean /= n
    xhat = x - mean
    std = np.add.reduce(xhat * xhat, axis=-1, keepdims=True)
    std /= n
    std += eps
    np.sqrt(std, out=std)
    std = record("scale", std)
    xhat /= std
    xhat = record("normalized", xhat)
    return xhat, std


LN_ROWS = 64  # rows per layer_norm_fast piece: 192 KB of float32 at E = 768, cache-sized


def layer_norm_fast(x, weight, bias, eps=1e-5, record=no_record):
    """layer_norm(): normalize(), then the affine map in place, in pieces of LN_ROWS rows
    shared out between the threads (each piece's passes stay in the cache). In one piece
    when someone wants its "scale" or "normalized" (the same numbers: rows are independent)."""
    if wants(record, "scale") or wants(record, "normalized"):
        xhat, _ = normalize(x, eps, recorder(record))
        out = xhat * weight  # a new array: a hook may keep xhat
        out += bias
        return out
    rows = x.reshape(-1, x.shape[-1])
    out = np.empty_like(rows)

    def piece(i):
        part = slice(i * LN_ROWS, (i + 1) * LN_ROWS)
        xhat, _ = normalize(rows[part], eps)
        xhat *= weight
        np.add(xhat, bias, out=out[part])

    for_each_piece(piece, -(-rows.shape[0] // LN_ROWS), min_pieces=PARALLEL_PIECES)
    return out.reshape(x.shape)


@functools.lru_cache(maxsize=8)
def _future_mask(n, dtype):
    """(n, n) additive mask: 0 on and below the diagonal, -inf above (key after query)."""
    mask = np.triu(np.full((n, n), -np.inf, dtype=dtype), k=1)
    mask.flags.writeable = False  # shared by every call
    return mask


def causal_attention_fast(q, k, v, past=0, block=QUERY_BLOCK, record=no_record, lse=None,
                          dropout=None, layer=0, key_bias=None, scale=None):
    """attention() with the causal mask, for T queries at positions past .. past+T-1.

    q: (B, H, T, D); k, v: (B, H, past + T, D). Returns (B, T, H, D), the layout in which
    merging the heads to (B, T, E) is a free reshape. Query block [t0, t1) needs keys
    0 .. past+t1-1 only, and only its last t1-t0 keys need masking. block: queries per block.
    lse: optional (B, H, T), filled with each query's log-sum-exp (the backward pass
    recomputes probabilities from it). dropout: a Dropout (mask (1, layer, 2, t0) per block,
    applied before `@ v`; lse and the recorded probabilities are those before dropout).
    record sees "scores" and "softmax" (B, H, T, past + T), made whole only when someone
    wants them; when a hook changes either, the output is recomputed from it as written
    (softmax(scores) @ v), else it stays the fused computation's, bit for bit.
    key_bias: optional (B, past + T) layers.padding_bias, added to every query's scores.
    scale: the scores' factor (1 / sqrt(D) unless the config changes it).
    Enough work (PARALLEL_FLOPS) is shared out by heads between the pool's threads; the
    result is the same either way.
    """
    B, H, T, D = q.shape
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    out = np.empty((B, T, H, D), dtype=q.dtype)
    # The (B, H, T, S) scores and probabilities exist only when someone wants them.
    want = wants(record, "scores")
    scores = np.full((B, H, T, past + T), -np.inf, dtype=q.dtype) if want else None
    probs = np.zeros((B, H, T, past + T), dtype=q.dtype) if wants(record, "softmax") else None

    def attend(b, heads):
        def mask(t0, S, dtype):  # the full block's mask cut to these heads: the same in any share
            return dropout.mask((1, layer, 2, t0), (B, H, min(block, T - t0), S), dtype)[b, heads]

        _attend_heads(q[b, heads], k[b, heads], v[b, heads], past, block, out[b, :, heads],
                      None if lse is None else lse[b, heads], None if probs is None else probs[b, heads],
                      scale, None if key_bias is None else key_bias[b], None if dropout is None else mask,
                      None if scores is None else scores[b, heads])

    # A dropout mask is drawn whole for every block and cut to a piece's heads: one piece per thread.
    run_head_groups(attend, B, H, 4 * B * H * T * (past + T / 2) * D, pieces=None if dropout is None else 1)
    if scores is not None or probs is not None:
        _attention_hooks(out, scores, probs, v, recorder(record))
    return out


def _attention_hooks(out, scores, probs, v, record):
    """Pass the whole scores and probabilities (B, H, T, S) through record; if a hook changed
    either, recompute out (B, T, H, D) from them as the equations say."""
    seen, scores_changed = changed(record, "scores", lambda: scores)
    if scores_changed:
        probs = softmax(seen)
    seen, probs_changed = changed(record, "softmax", lambda: probs)
    if probs_changed:
        probs = seen
    if scores_changed or probs_changed:
        out[...] = np.swapaxes(probs @ v, 1, 2)


PARALLEL_FLOPS = 1 << 23  # attention work below this runs on the calling thread (threads cost ~0.1 ms)


def run_head_groups(work, B, H, flops, pieces=None):
    """Call work(b, heads) over all B x H heads: once with b = heads = slice(None) (every
    head at once) when flops < PARALLEL_FLOPS or only one thread is there, else in pieces of
    contiguous heads (b an int, heads a slice of sequence b's heads), HEAD_PIECES per pool
    thread, each thread claiming the next piece nobody has started, with single-threaded
    BLAS inside. Claimed pieces, not one fixed share per thread: when another process takes
    a core from one thread, the other runs the pieces left, and waits at most for the piece
    under way, not for half of the work. pieces: per thread instead of HEAD_PIECES (1 where
    each piece pays for work of all heads, as drawing a dropout mask)."""
    n = threads()
    if n == 1 or flops < PARALLEL_FLOPS or not can_limit_blas():
        with blas_single_threaded():
            return work(slice(None), slice(None))
    count = min(B * H, n * (HEAD_PIECES if pieces is None else pieces))
    bounds = [round(i * B * H / count) for i in range(count + 1)]
    claim = itertools.count()  # next(claim) is atomic under the GIL

    def share(_):
        for i in iter(lambda: next(claim), None):
            if i >= count:
                return
            for b in range(B):  # the part of sequence b's heads in piece i
                h0, h1 = max(bounds[i] - b * H, 0), min(bounds[i + 1] - b * H, H)
                if h0 < h1:
                    work(b, slice(h0, h1))

    with blas_single_threaded():
        run_shares(share, n)


HEAD_PIECES = 3  # pieces of heads per thread in run_head_groups (2 heads each at H = 12, 2 threads)


def _attend_heads(q, k, v, past, block, out, lse, probs, scale, key_bias, mask, scores_out=None):
    """causal_attention_fast for some heads: q (..., h, T, D), k, v (..., h, S, D); writes
    out (..., T, h, D) and, when given, lse (..., h, T), probs and scores_out (..., h, T, S)
    (the masked scores: its entries after a block's last key stay as they were, -inf).
    key_bias: these heads' sequences' rows of the padding bias, (..., past + T), or None.
    mask: None, or mask(t0, S, dtype) -> the dropout mask (..., h, n, S) of the block from t0.

    Each query block of n queries and S keys runs in groups of max(1, GROUP_SCORES // (n S))
    heads: a group's (g, n, S) scores, their softmax and `@ v` stay in one cache-sized buffer
    (512 KB: 2 heads at n = 64, S = 1024) instead of h such blocks streaming through memory
    between the passes, and a group shares each NumPy call's overhead (the calls, not the
    arithmetic, dominate small blocks: decoding runs every head at once). Every operation is
    per head and row, so any grouping and any split of the heads computes the same bits."""
    T, h = q.shape[-2], q.shape[-3]
    blocks = [(t0, min(t0 + block, T), past + min(t0 + block, T)) for t0 in range(0, T, block)]  # (t0, t1, S)
    group = [max(1, GROUP_SCORES // ((t1 - t0) * S)) for t0, t1, S in blocks]  # heads per group
    every = math.prod(q.shape[:-2])  # heads of every sequence
    buffer = np.empty(max(min(g, every) * (t1 - t0) * S for g, (t0, t1, S) in zip(group, blocks)), dtype=q.dtype)
    for g, (t0, t1, S) in zip(group, blocks):
        n = t1 - t0
        m = None if mask is None else mask(t0, S, q.dtype)
        if g >= every:  # all at once (decoding: one query per head)
            groups = [((Ellipsis,), slice(None), every)]
        else:  # (sequence index, heads, their count)
            groups = [(pre, slice(h0, min(h0 + g, h)), min(g, h - h0))
                      for pre in np.ndindex(*q.shape[:-3]) for h0 in range(0, h, g)]
        for pre, hs, count in groups:
            _attend_block(q[pre + (hs, slice(t0, t1), slice(None))] * scale,
                          k[pre + (hs, slice(S), slice(None))], v[pre + (hs, slice(S), slice(None))],
                          np.swapaxes(out[pre + (slice(t0, t1), hs, slice(None))], -2, -3),
                          None if lse is None else lse[pre + (hs, slice(t0, t1))],
                          None if probs is None else probs[pre + (hs, slice(t0, t1), slice(S))],
                          None if key_bias is None else key_bias[pre + (None, None, slice(S))],
                          None if m is None else m[pre + (hs, slice(None), slice(None))],
                          scores=buffer[:count * n * S].reshape(q[pre + (hs,)].shape[:-2] + (n, S)),
                          scores_out=None if scores_out is None else scores_out[pre + (hs, slice(t0, t1), slice(S))])


GROUP_SCORES = 1 << 17  # scores (512 KB of float32) per group of heads in _attend_heads


def _attend_block(q, k, v, out, lse, probs, key_bias, mask, scores=None, scores_out=None):
    """One query block: scaled queries q (..., n, D) against keys k, v (..., S, D), the causal
    mask on the last n keys; writes out (..., n, D) (any strides), lse (..., n), probs
    (..., n, S) and the masked scores scores_out (..., n, S) when given. key_bias: the padding
    bias as (..., 1, 1, S) (every head and query), or None. scores: a (..., n, S) buffer to
    compute in, else a new array."""
    n, S = q.shape[-2], k.shape[-2]
    scores = np.matmul(q, np.swapaxes(k, -1, -2), out=scores)
    if n > 1:  # a single query sees every key so far: nothing to mask
        scores[..., S - n:] += _future_mask(n, scores.dtype)
    if key_bias is not None:  # the same for every head and query
        scores += key_bias
    if scores_out is not None:
        scores_out[...] = scores
    top = np.maximum.reduce(scores, axis=-1, keepdims=True)
    scores -= top
    np.exp(scores, out=scores)
    sums = np.add.reduce(scores, axis=-1, keepdims=True)
    if lse is not None:
        lse[...] = (top + np.log(sums))[..., 0]
    if probs is not None:
        np.divide(scores, sums, out=probs)
    if mask is not None:
        scores *= mask  # dropped: the probabilities are written
    np.matmul(scores, v, out=out)  # unnormalized
    out /= sums


def causal_self_attention_fast(x, c_attn, c_proj, n_head, kv=None, last_only=False, record=no_record,
                               key_bias=None, scale=None):
    """causal_self_attention(), fast. x: (B, T, E) -> (B, T, E); kv, record, key_bias, scale as there.

    last_only: the output for the last position only, (B, 1, E); every position's keys and
    values are still computed (and cached), only the other queries are skipped (the hooks
    at q, k, v see every position, those after them the last one).
    """
    B, T, E = x.shape
    record = recorder(record)
    qkv = record("c_attn", linear_fast(x, **c_attn))
    q, k, v = (split_heads(qkv[..., i * E:(i + 1) * E], n_head) for i in range(3))  # views, no copies
    q = record("q", q)
    k = record("k", k)
    v = record("v", v)
    past = 0
    if kv is not None:
        keys, values, past = kv
        keys[:, :, past:past + T] = k
        values[:, :, past:past + T] = v
        k, v = keys[:, :, :past + T], values[:, :, :past + T]
    if last_only:
        q, past, T = q[:, :, -1:], past + T - 1, 1
    out = causal_attention_fast(q, k, v, past, record=record, key_bias=key_bias, scale=scale)
    if wants(record, "z"):
        z = np.swapaxes(out, 1, 2)  # (B, H, T, D), a view: edits in place reach out
        seen = record("z", z)
        if seen is not z:
            out[...] = np.swapaxes(seen, 1, 2)
    result, edited = changed(record, "result", lambda: head_results(np.swapaxes(out, 1, 2), c_proj["weight"]))
    if edited:  # a hook changed some head's result: the output is their sum
        return result.sum(axis=1) + c_proj["bias"]
    return linear_fast(out.reshape(B, T, E), **c_proj)


def mlp_fast(x, c_fc, c_proj, record=no_record, act="gelu_new"):
    """mlp(), fast: the tanh GELU overwrites the hidden (..., 4E) array in place; other
    activation functions make a new one (activation_functions.activation_fast)."""
    record = recorder(record)
    h = record_copy(record, "c_fc", linear_fast(x, **c_fc))  # gelu_fast is about to overwrite h
    h = gelu_fast(h) if act in TANH_GELU_NAMES else activation_fast(act)[0](h)
    h = record("gelu", h)
    return linear_fast(h, **c_proj)


def transformer_block_fast(x, block, n_head, eps, kv=None, last_only=False, record=no_record,
                           key_bias=None, *, act="gelu_new", scale=None):
    """transformer_block(), fast; adds to x IN PLACE (x must be the caller's own array).

    last_only: return the last position only, (B, 1, E) (a new array; x is left as it was).
    The model's last block uses it when only the next token's logits are wanted: after the
    keys/values, nothing there depends on the other positions.
    """
    record = recorder(record)
    x = record_copy(record, "resid_pre", x)  # x is updated in place below
    h = layer_norm_fast(x, **block["ln_1"], eps=eps, record=prefixed(record, "ln_1."))
    h = record("ln_1", h)
    a = causal_self_attention_fast(h, **block["attn"], n_head=n_head, kv=kv, last_only=last_only,
                                   record=prefixed(record, "attn."), key_bias=key_bias, scale=scale)
    a = record("attn", a)
    if last_only:
        x = x[:, -1:].copy()
    x += a
    x = record_copy(record, "resid_mid", x)  # the MLP's output is added to x in place
    h = layer_norm_fast(x, **block["ln_2"], eps=eps, record=prefixed(record, "ln_2."))
    h = record("ln_2", h)
    m = mlp_fast(h, **block["mlp"], record=prefixed(record, "mlp."), act=act)
    m = record("mlp.c_proj", m)
    x += m
    return x

