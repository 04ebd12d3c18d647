"""Checks of what comes into the model: token ids, masks, positions, targets, seeds, gradient dicts.

Each check raises ValueError (or returns the checked value) with a message that names the
argument, what is wrong and what was expected, before any computation starts; the math
modules call these and contain no validation of their own. `is_int`, `show` and `cut` are
the small helpers the messages use everywhere (config.json and checkpoint errors too).
Functions take the model's GPT2Config as `config` (only its fields are read). The checks of
generation's arguments are in numpy_gpt2/generation/checks.py.
"""

from __future__ import annotations

import numbers

import numpy as np

from numpy_gpt2.params import flatten_params


def is_int(value) -> bool:
    """An integer (a JSON integer, or a NumPy one) but not a bool (True == 1 in Python, not in JSON)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value) -> bool:
    """A real number (JSON int or float, or a NumPy one), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def show(value) -> str:
    """repr(value) cut short, and its JSON type: error messages stay one readable line."""
    kind = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)
    try:
        text = "null" if value is None else repr(value)
    except RecursionError:  # [[[[...]]]] nested deeper than repr goes
        text = "(deeply nested)"
    return f"{cut(text)} ({kind})"


def cut(text: str, limit: int = 60) -> str:
    """text, cut to at most limit characters (ending in "...") for one-line messages."""
    return text if len(text) <= limit else text[:limit - 3] + "..."


# ---- token ids and targets --------------------------------------------------------------

def check_tokens(tokens, config, past: int = 0, capacity: int | None = None,
                 what: str = "tokens") -> np.ndarray:
    """Validate token ids: integers in [0, vocab_size), shape (T,) or (B, T), T >= 1, past + T <= n_ctx.

    Returns them as an array; raises ValueError naming what is wrong. what: how messages name
    the argument (generate passes "prompt tokens").
    """
    try:
        tokens = np.asarray(tokens)
    except ValueError:  # NumPy refuses ragged nesting, e.g. [[1, 2], [3]]
        lengths = [len(row) if hasattr(row, "__len__") else "a number" for row in tokens]
        raise ValueError(f"{what} must be one sequence (T,) or a batch (B, T) of equally long "
                         f"sequences, got rows of lengths {lengths}") from None
    if tokens.ndim not in (1, 2):
        raise ValueError(f"{what} must have shape (T,) or (B, T), got shape {tokens.shape}")
    if tokens.shape[-1] == 0 or tokens.size == 0:  # before the dtype: [] is a float array
        start = (f" (to start a text from nothing: [{config.bos_token_id}], <|endoftext|>)"
                 if 0 <= config.bos_token_id < config.vocab_size else "")
        raise ValueError(f"{what} must hold at least one position, got shape {tokens.shape}{start}")
    if tokens.dtype.kind not in "iu":
        raise ValueError(f"{what} must be integers, got dtype {tokens.dtype}")
    bad = (tokens < 0) | (tokens >= config.vocab_size)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{what}: token id {int(tokens[where])} at index {where} is outside "
                         f"[0, {config.vocab_size}) (vocab_size)")
    limit = config.n_ctx if capacity is None else capacity
    if past + tokens.shape[-1] > limit:
        length = f"{past} cached + {tokens.shape[-1]} new" if past else f"{tokens.shape[-1]}"
        raise ValueError(f"{what}: sequence of {length} positions is longer than the context "
                         f"(n_ctx={config.n_ctx}{'' if capacity is None else f', cache holds {capacity}'})")
    return tokens


def check_forward_tokens(tokens, config, kv_cache: dict | None = None) -> np.ndarray:
    """forward()'s tokens as an array: check_tokens, counting the positions a kv_cache already
    holds and its capacity, and (with a cache) the batch size the cache was made for."""
    past = 0 if kv_cache is None else kv_cache["length"]
    capacity = None if kv_cache is None else kv_cache["keys"][0].shape[2]
    tokens = check_tokens(tokens, config, past, capacity)
    batch = 1 if tokens.ndim == 1 else tokens.shape[0]
    if kv_cache is not None and kv_cache["keys"][0].shape[0] != batch:
        raise ValueError(f"batch of {batch} sequences but the kv_cache was made for "
                         f"{kv_cache['keys'][0].shape[0]}")
    return tokens


def check_targets(tokens, targets, config, ignore_index: int, allow_none_kept: bool = False):
    """Validate a training batch; returns (tokens, targets) as (B, T) int arrays.

    targets must have the tokens' shape, be integers in [0, vocab_size) or ignore_index,
    and keep at least one target (a mean over no targets is undefined), unless
    allow_none_kept (one micro-batch of several: the mean is over all of them).
    """
    tokens = check_tokens(tokens, config)
    try:
        targets = np.asarray(targets)
    except ValueError:  # NumPy refuses ragged nesting
        raise ValueError(f"targets must have the tokens' shape {tokens.shape}, got rows of "
                         f"different lengths") from None
    if targets.shape != tokens.shape:
        raise ValueError(f"targets must have the tokens' shape {tokens.shape}, got {targets.shape}")
    if targets.dtype.kind not in "iu":
        raise ValueError(f"targets must be integers, got dtype {targets.dtype}")
    kept = targets != ignore_index
    bad = kept & ((targets < 0) | (targets >= config.vocab_size))
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"target id {int(targets[where])} at index {where} is outside "
                         f"[0, {config.vocab_size}) (vocab_size) and is not ignore_index={ignore_index}")
    if not (allow_none_kept or kept.any()):
        raise ValueError(f"every target is ignore_index={ignore_index}: there is nothing to score")
    if tokens.ndim == 1:
        tokens, targets = tokens[None], targets[None]
    return tokens, targets


def _per_row(value, name, batch: int, length: int, single: bool, what: str):
    """value as an array of shape (batch, length), accepting (length,) for one sequence;
    ValueError naming `name` for any other shape."""
    value = np.asarray(value)
    expected = (length,) if single else (batch, length)
    if value.shape != expected and not (single and value.shape == (1, length)):
        raise ValueError(f"{name} must have shape {expected} ({what}), got {value.shape}")
    return value.reshape(-1, length)


def check_attention_mask(mask, batch: int, length: int, single: bool):
    """forward()'s attention_mask as a (B, S) bool array: 0/1 (or bools) of shape (S,) for one
    sequence or (B, S), S = cached + new positions, no row all padding. None stays None."""
    if mask is None:
        return None
    mask = _per_row(mask, "attention_mask", batch, length, single, "cached + new positions")
    if mask.dtype != bool and not (mask.dtype.kind in "iuf" and np.isin(mask, (0, 1)).all()):
        raise ValueError("attention_mask must hold only 0 and 1 (1 = a real token, 0 = padding)")
    mask = mask.astype(bool)
    empty = np.flatnonzero(~mask.any(axis=1))
    if len(empty):
        raise ValueError(f"attention_mask: row {int(empty[0])} is all padding (every row needs "
                         f"at least one real token)")
    return mask


def check_position_ids(position_ids, batch: int, length: int, single: bool, config):
    """forward()'s position_ids as a (B, T) int array in [0, n_ctx). None stays None."""
    if position_ids is None:
        return None
    position_ids = _per_row(position_ids, "position_ids", batch, length, single, "the new tokens'")
    if position_ids.dtype.kind not in "iu":
        raise ValueError(f"position_ids must be integers, got dtype {position_ids.dtype}")
    if position_ids.min() < 0 or position_ids.max() >= config.n_ctx:
        raise ValueError(f"position_ids must be in [0, {config.n_ctx}) (n_ctx), got values "
                         f"from {position_ids.min()} to {position_ids.max()}")
    return position_ids


def check_seed(seed, name: str = "seed"):
    """seed, if numpy.random.default_rng accepts it: None (fresh randomness), an integer >= 0,
    a sequence of them, or a numpy.random.Generator; else ValueError naming `name` (NumPy's
    own errors for -1 or 1.5 do not say which argument was wrong)."""
    if seed is None or isinstance(seed, np.random.Generator):
        return seed
    try:
        if isinstance(seed, (bool, float, str, bytes)):  # default_rng would hash or truncate some
            raise TypeError
        np.random.SeedSequence(seed)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be None, an integer >= 0 (or a sequence of them) or a "
                         f"numpy.random.Generator, got {seed!r}") from None
    return seed


# ---- gradient dicts ------------------------------------------------------------------------

def check_mirrors_params(grads: dict, params: dict, what: str = "grads") -> dict:
    """flatten_params(grads), after checking that it mirrors params: the same checkpoint keys,
    and for each the parameter's shape and dtype. Raises ValueError naming the first key that
    differs; what: how the message names grads."""
    flat, expected = flatten_params(grads), flatten_params(params)
    if flat.keys() != expected.keys():
        raise ValueError(f"{what} must mirror params: missing {sorted(expected.keys() - flat.keys())[:3]}, "
                         f"unexpected {sorted(flat.keys() - expected.keys())[:3]}")
    for key, p in expected.items():
        if flat[key].shape != p.shape or flat[key].dtype != p.dtype:
            raise ValueError(f"{what}: {key!r} is {flat[key].dtype} {flat[key].shape}, expected "
                             f"{p.dtype} {p.shape} (as params)")
    return flat
