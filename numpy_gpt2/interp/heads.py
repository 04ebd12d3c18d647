"""Attention heads: each head's output, and which heads attend like a known kind of head
(previous-token, duplicate-token, induction; TransformerLens' head_detector), measured on a
cache of named activations or on repeated random tokens (Olsson et al. 2022).

Pure functions: they read a cache ({name: array}, numpy_gpt2.activations with the "*softmax"
names, or forward's hooks) and weights, and never modify them. See docs/interp.md.
"""

from __future__ import annotations

import numpy as np

from numpy_gpt2 import layers
from numpy_gpt2.checks import is_int
from numpy_gpt2.interp.resid import _check_cache, _need, check_bool, check_layer


def _heads(a, n_head):
    """(..., T, E) -> (..., H, T, D)."""
    return np.moveaxis(a.reshape(*a.shape[:-1], n_head, a.shape[-1] // n_head), -2, -3)


def head_z(cache, config, layer):
    """Each head's attention-weighted values z = softmax(q k^T) v of block `layer`,
    (..., H, T, D): the cache's h.{layer}.attn.z, or from h.{layer}.attn.c_attn and
    h.{layer}.attn.softmax."""
    layer = check_layer(layer, config, allow_none=False, top=config.n_layer - 1)
    if f"h.{layer}.attn.z" in cache:
        return cache[f"h.{layer}.attn.z"]
    v = np.split(_need(cache, f"h.{layer}.attn.c_attn"), 3, axis=-1)[2]
    return _need(cache, f"h.{layer}.attn.softmax") @ _heads(v, config.n_head)


def head_results(cache, config, layer, params=None):
    """Each head's output written to the residual stream by block `layer`: (H, ..., T, E),
    result[h] = z[h] @ W_O[h] (W_O[h]: rows h*D..(h+1)*D of attn.c_proj.weight), so that
    result.sum(0) + attn.c_proj.bias is the block's attention output h.{layer}.attn
    (TransformerLens' hook_result / stack_head_results). From the cache's h.{layer}.attn.result
    when present, else from z and params (required then). Raises ValueError for bad arguments.
    """
    _check_cache(cache)
    layer = check_layer(layer, config, allow_none=False, top=config.n_layer - 1)
    if f"h.{layer}.attn.result" in cache:
        return np.moveaxis(cache[f"h.{layer}.attn.result"], -3, 0)
    if params is None:
        raise ValueError(f"params is required: the cache has no 'h.{layer}.attn.result'")
    z = head_z(cache, config, layer)  # (..., H, T, D)
    result = layers.head_results(z.reshape(-1, *z.shape[-3:]),  # it takes (B, H, T, D)
                                 params["h"][layer]["attn"]["c_proj"]["weight"])
    return np.moveaxis(result.reshape(*z.shape[:-1], config.n_embd), -3, 0)


# ---- detecting kinds of heads ------------------------------------------------------------

KINDS = ("previous_token", "duplicate_token", "induction")


def detection_pattern(kind, tokens):
    """TransformerLens' ideal (T, T) attention pattern of a kind of head on `tokens` (T,):
    previous_token: query t on key t-1; duplicate_token: on every earlier key holding the same
    token; induction: on the key after each earlier occurrence of the current token."""
    tokens = np.asarray(tokens)
    T = tokens.shape[-1]
    if kind == "previous_token":
        return np.eye(T, k=-1)
    same = (tokens[:, None] == tokens[None, :]).astype(float)
    np.fill_diagonal(same, 0)
    duplicate = np.tril(same)
    if kind == "duplicate_token":
        return duplicate
    induction = np.zeros_like(duplicate)
    induction[:, 1:] = duplicate[:, :-1]  # key s+1 where s holds the current token
    return np.tril(induction)


def detect_heads(cache, config, kind, tokens=None, exclude_bos=False, exclude_current_token=False,
                 error_measure="mul"):
    """How much each head attends like `kind` (TransformerLens' detect_head): (n_layer, n_head).

    kind: "previous_token", "duplicate_token", "induction" (their patterns need tokens (T,)
    for the last two: detection_pattern), or a (T, T) lower-triangular array of your own.
    The cache holds one sequence's h.{i}.attn.softmax (H, T, T), T > 1.
    error_measure "mul": sum(pattern * detection) / sum(pattern), the share of attention on
    the detection pattern (exclude_bos / exclude_current_token zero the first key / the
    diagonal of the pattern first); "abs": 1 - round(mean |pattern - detection| * T, 3).
    Raises ValueError for bad arguments.
    """
    _check_cache(cache)
    check_bool(exclude_bos, "exclude_bos")
    check_bool(exclude_current_token, "exclude_current_token")
    if error_measure not in ("mul", "abs"):
        raise ValueError(f"error_measure must be 'mul' or 'abs', got {error_measure!r}")
    T = _need(cache, "h.0.attn.softmax").shape[-1]
    if _need(cache, "h.0.attn.softmax").ndim != 3:
        raise ValueError("detect_heads reads one sequence: the cache's h.{i}.attn.softmax must "
                         "be (H, T, T) (activations of tokens of shape (T,))")
    if T < 2:
        raise ValueError("detect_heads needs a sequence of at least 2 tokens")
    if isinstance(kind, str):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)} or a (T, T) array, got {kind!r}")
        if kind != "previous_token":
            tokens = np.asarray(tokens) if tokens is not None else None
            if tokens is None or tokens.shape != (T,):
                raise ValueError(f"tokens must be the cache's sequence, shape ({T},), for kind="
                                 f"{kind!r}, got {None if tokens is None else tokens.shape}")
        target = np.eye(T, k=-1) if kind == "previous_token" else detection_pattern(kind, tokens)
    else:
        target = np.asarray(kind, dtype=float)
        if target.shape != (T, T) or np.any(np.triu(target, 1)):
            raise ValueError(f"kind as an array must be a lower-triangular ({T}, {T}) pattern, "
                             f"got shape {target.shape}")
    scores = np.empty((config.n_layer, config.n_head))
    for i in range(config.n_layer):
        pattern = np.array(_need(cache, f"h.{i}.attn.softmax"), dtype=np.float64)  # a copy
        if error_measure == "mul":
            if exclude_bos:
                pattern[..., 0] = 0
            if exclude_current_token:
                pattern[..., np.arange(T), np.arange(T)] = 0
            scores[i] = (pattern * target).sum(axis=(-2, -1)) / pattern.sum(axis=(-2, -1))
        else:
            diff = np.abs(pattern - target)
            if exclude_bos:
                diff[..., 0] = 0
            if exclude_current_token:
                diff[..., np.arange(T), np.arange(T)] = 0
            scores[i] = [1 - round(float(d.mean() * T), 3) for d in diff]
    return scores


def repeated_random_tokens(seq_len, batch, seed, vocab_size, prefix=None):
    """(batch, [1 +] 2 seq_len) token ids: seq_len uniform random ids in [0, vocab_size)
    (numpy.random.default_rng(seed)), then the same ids again; with prefix (a token id, e.g.
    the BOS token 50256) that token first. Half the second copy is predictable only by
    induction: looking back to the first copy. Raises ValueError for bad arguments.
    """
    for name, value, low in (("seq_len", seq_len, 1), ("batch", batch, 1), ("vocab_size", vocab_size, 1)):
        if not is_int(value) or value < low:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not is_int(seed):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    if prefix is not None and (not is_int(prefix) or not 0 <= prefix < vocab_size):
        raise ValueError(f"prefix must be None or a token id in [0, {vocab_size}), got {prefix!r}")
    half = np.random.default_rng(seed).integers(0, vocab_size, size=(batch, seq_len))
    tokens = np.concatenate([half, half], axis=1)
    if prefix is not None:
        tokens = np.concatenate([np.full((batch, 1), prefix), tokens], axis=1)
    return tokens.astype(np.int64)


def induction_stripe(probs, seq_len, offset=0):
    """Mean attention of (..., H, T, T) probabilities on the induction stripe of a repeated
    sequence: query q in the second copy on key q - seq_len + 1 (the token after the current
    token's first occurrence), averaged over the queries and the leading axes -> (H,)."""
    queries = np.arange(offset + seq_len, offset + 2 * seq_len)
    stripe = probs[..., queries, queries - seq_len + 1]  # (..., H, seq_len)
    return stripe.reshape(-1, *stripe.shape[-2:]).mean(axis=(0, 2))


def induction_scores(params, config, seq_len=50, batch=10, seed=0, prefix=None):
    """Each head's induction score (n_layer, n_head): its mean attention from the second copy
    of repeated random tokens (repeated_random_tokens) to the token after the current token's
    first occurrence (the ARENA / Olsson et al. 2022 measure: 1 = a perfect induction head).
    2 seq_len (+1 with prefix) must fit in n_ctx. Raises ValueError for bad arguments.
    """
    from numpy_gpt2.debug.capture import activations  # the cache; imported here: capture imports the model

    tokens = repeated_random_tokens(seq_len, batch, seed, config.vocab_size, prefix)
    if tokens.shape[1] > config.n_ctx:
        raise ValueError(f"seq_len={seq_len}: 2 * seq_len{' + 1' if prefix is not None else ''} "
                         f"tokens exceed n_ctx={config.n_ctx}")
    offset = 0 if prefix is None else 1
    total = np.zeros((config.n_layer, config.n_head))
    for row in tokens:  # one sequence at a time: the (T, V) logits of a batch can be large
        cache = activations(params, config, row, names="*softmax")
        total += [induction_stripe(cache[f"h.{i}.attn.softmax"], seq_len, offset)
                  for i in range(config.n_layer)]
    return total / len(tokens)
