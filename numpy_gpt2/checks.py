"""Checks of what comes in: token ids, training targets, generation arguments, gradient dicts.

Each check raises ValueError (or returns the checked value) with a message that names the
argument, what is wrong and what was expected, before any computation starts; the math
modules call these and contain no validation of their own. `is_int`, `show` and `cut` are
the small helpers the messages use everywhere (config.json and checkpoint errors too).
Functions take the model's GPT2Config as `config` (only its fields are read).
"""

from __future__ import annotations

import math
import numbers
import sys

import numpy as np

from .params import flatten_params


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


def check_prompt(tokens, config, context: str = "stop", what: str = "prompt tokens") -> np.ndarray:
    """The prompt as an int64 array (T,) or (B, T): check_tokens, worded for a prompt
    (empty, ragged, not integers, ids outside the vocabulary: ValueError; longer than n_ctx
    too, unless context="slide", where the model sees only the last n_ctx tokens)."""
    capacity = None if context == "stop" else sys.maxsize
    return check_tokens(tokens, config, capacity=capacity, what=what).astype(np.int64)


def check_prompts(tokens, config, context: str = "stop") -> tuple[list, bool]:
    """The prompts as a list of int64 arrays (T_b,), and whether one prompt (T,) was given.

    tokens: one prompt (T,), a batch (B, T), or a list of B prompts of different lengths,
    each checked by check_prompt (a ragged batch's messages name "prompt b").
    """
    try:
        array = np.asarray(tokens)
    except ValueError:  # NumPy refuses ragged nesting: prompts of different lengths
        array = None
    if array is not None and array.dtype != object:
        array = check_prompt(array, config, context)
        return list(np.atleast_2d(array)), array.ndim == 1
    rows = [check_prompt(row, config, context, what=f"prompt {b}") for b, row in enumerate(tokens)]
    for b, row in enumerate(rows):
        if row.ndim != 1:
            raise ValueError(f"prompt {b} must be one sequence of token ids, got shape {row.shape}")
    return rows, False


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


# ---- generation arguments ---------------------------------------------------------------

def check_sampling_args(max_new_tokens, temperature=1.0, top_k=None, top_p=None, num_samples=1,
                        *, seed=None, cli=False):
    """Raise ValueError naming the first invalid generation parameter (nothing else happens).

    cli=True: the messages name the command-line flags (--max-new-tokens, --top-k, ...).
    """
    def name(arg):
        return "--" + arg.replace("_", "-") if cli else arg

    no_limit = "leave it out for no limit" if cli else "or None for no limit"
    if not is_int(max_new_tokens) or max_new_tokens < 0:
        raise ValueError(f"{name('max_new_tokens')} must be an integer >= 0, got {max_new_tokens!r}")
    if (not isinstance(temperature, numbers.Real) or isinstance(temperature, bool)
            or not np.isfinite(temperature) or temperature < 0):
        raise ValueError(f"{name('temperature')} must be a finite number >= 0 (0 = greedy), "
                         f"got {temperature!r}")
    if top_k is not None and (not is_int(top_k) or top_k < 1):
        raise ValueError(f"{name('top_k')} must be an integer >= 1 ({no_limit}), got {top_k!r}")
    if top_p is not None and (not isinstance(top_p, numbers.Real) or isinstance(top_p, bool)
                              or not 0 < top_p <= 1):
        raise ValueError(f"{name('top_p')} must be in (0, 1] ({no_limit}), got {top_p!r}")
    if not is_int(num_samples) or num_samples < 1:
        raise ValueError(f"{name('num_samples')} must be an integer >= 1, got {num_samples!r}")
    check_seed(seed, name("seed"))


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
        if name.startswith("--"):  # a command-line flag: only integers can be given there
            raise ValueError(f"{name} must be an integer >= 0, got {seed!r}") from None
        raise ValueError(f"{name} must be None, an integer >= 0 (or a sequence of them) or a "
                         f"numpy.random.Generator, got {seed!r}") from None
    return seed


def check_suppress_tokens(suppress_tokens, vocab_size: int) -> np.ndarray:
    """generate()'s suppress_tokens (None or an iterable of ints) as the sorted int64 array of
    those in [0, vocab_size) (others are ignored, as by transformers). ValueError if one is not
    an integer, or if every id of the vocabulary is banned (nothing would be left to pick)."""
    if isinstance(suppress_tokens, (str, bytes)) or not (suppress_tokens is None
                                                         or hasattr(suppress_tokens, "__iter__")):
        raise ValueError(f"suppress_tokens must be a list of token ids, got {suppress_tokens!r}")
    ids = [] if suppress_tokens is None else list(suppress_tokens)
    bad = next((t for t in ids if not is_int(t)), None)
    if bad is not None:
        raise ValueError(f"suppress_tokens must hold token ids (integers), got {bad!r}")
    ids = np.unique(np.array([t for t in ids if 0 <= t < vocab_size], dtype=np.int64))
    if len(ids) == vocab_size:
        raise ValueError(f"suppress_tokens bans every token id of the vocabulary [0, {vocab_size})")
    return ids


def check_generation_args(config, logprobs=None, context="stop", *, cli=False):
    """ValueError naming logprobs (None, or an integer in 0..vocab_size) or context ("stop" or
    "slide") when invalid; cli=True names the flags (--logprobs, --context)."""
    flag = "--logprobs" if cli else "logprobs"
    if logprobs is not None and (not is_int(logprobs) or not 0 <= logprobs <= config.vocab_size):
        raise ValueError(f"{flag} must be an integer in 0..{config.vocab_size} (vocab_size)"
                         f"{'' if cli else ' or None'}, got {logprobs!r}")
    if context not in ("stop", "slide"):
        raise ValueError(f"{'--context' if cli else 'context'} must be \"stop\" or \"slide\", "
                         f"got {context!r}")


# The logits processors' options and the values that mean "off" (None is always off).
PROCESSOR_OFF = {"logit_bias": (), "repetition_penalty": (1.0,), "frequency_penalty": (0.0,),
                 "presence_penalty": (0.0,), "no_repeat_ngram_size": (0,), "min_new_tokens": (0,),
                 "suppress_tokens": ((),), "min_p": (), "typical_p": (1.0,)}


def _check_token_id(name, token, vocab_size):
    if not is_int(token) or not 0 <= token < vocab_size:
        raise ValueError(f"{name}: token id {token!r} is not an integer in [0, {vocab_size}) "
                         f"(vocab_size)")
    return int(token)


def _check_logit_bias(bias, vocab_size, name):
    if not isinstance(bias, dict):
        raise ValueError(f"{name} must be a dict {{token_id: bias}}, got {type(bias).__name__}")
    checked = {}
    for token, value in bias.items():
        token = _check_token_id(name, token, vocab_size)
        if not is_number(value) or math.isnan(value) or value == math.inf:
            raise ValueError(f"{name}[{token}] must be a finite number or -inf (a ban), got {value!r}")
        checked[token] = float(value)
    return checked


def _check_processor_value(name, value, vocab_size, flag):
    """One processor option, checked and normalized (see check_processor_args)."""
    if name == "logit_bias":
        return _check_logit_bias(value, vocab_size, flag)
    if name == "suppress_tokens":  # ids outside the vocabulary are ignored, as by transformers
        try:
            return tuple(check_suppress_tokens(value, vocab_size).tolist())
        except ValueError as e:
            raise ValueError(str(e).replace("suppress_tokens", flag, 1)) from None
    if name == "repetition_penalty" and (not is_number(value) or not 0 < value < math.inf):
        raise ValueError(f"{flag} must be a finite number > 0 (1 = off), got {value!r}")
    if name in ("frequency_penalty", "presence_penalty") and (not is_number(value) or not math.isfinite(value)):
        raise ValueError(f"{flag} must be a finite number (0 = off), got {value!r}")
    if name in ("no_repeat_ngram_size", "min_new_tokens") and (not is_int(value) or value < 0):
        raise ValueError(f"{flag} must be an integer >= 0 (0 = off), got {value!r}")
    if name == "min_p" and (not is_number(value) or not 0 <= value <= 1):
        raise ValueError(f"{flag} must be in [0, 1], got {value!r}")
    if name == "typical_p" and (not is_number(value) or not 0 < value <= 1):
        raise ValueError(f"{flag} must be in (0, 1] (1 = off), got {value!r}")
    return value


def check_processor_args(vocab_size: int, *, cli=False, **options) -> dict:
    """Validate the logits processors' options (numpy_gpt2.processors); returns the active
    ones, normalized (logit_bias a dict of floats, suppress_tokens a tuple of ints).

    options: any of logit_bias ({id: float or -inf}), repetition_penalty (> 0; 1 = off),
    frequency_penalty, presence_penalty (finite; 0 = off), no_repeat_ngram_size (int >= 0;
    0 = off), min_new_tokens (int >= 0), suppress_tokens (ids; those outside the vocabulary
    ignored, as check_suppress_tokens), min_p ([0, 1]),
    typical_p ((0, 1]; 1 = off); None is always off. Raises ValueError naming the first bad
    one (its command-line flag when cli=True); an unknown name is a TypeError, as for a call.
    """
    unknown = set(options) - set(PROCESSOR_OFF)
    if unknown:
        raise TypeError(f"unknown processor option(s): {sorted(unknown)}")
    active = {}
    for name, off in PROCESSOR_OFF.items():
        value = options.get(name)
        if value is not None:
            value = _check_processor_value(name, value, vocab_size, "--" + name.replace("_", "-") if cli else name)
            if value not in off:
                active[name] = value
    return active


def check_beam_args(config, max_new_tokens, num_beams, length_penalty, early_stopping,
                    num_return_sequences, no_repeat_ngram_size, eos_token_id, *, cli=False):
    """ValueError naming the first invalid beam_search argument (cli=True: the flag's name)."""
    def name(arg):
        return "--" + arg.replace("_", "-") if cli else arg

    if not is_int(max_new_tokens) or max_new_tokens < 1:
        raise ValueError(f"{name('max_new_tokens')} must be an integer >= 1 for beam search, "
                         f"got {max_new_tokens!r}")
    if not is_int(num_beams) or num_beams < 1:
        raise ValueError(f"{name('num_beams')} must be an integer >= 1, got {num_beams!r}")
    if not is_number(length_penalty) or not math.isfinite(length_penalty):
        raise ValueError(f"{name('length_penalty')} must be a finite number, got {length_penalty!r}")
    if early_stopping is not True and early_stopping is not False and early_stopping != "never":
        raise ValueError(f"{name('early_stopping')} must be True, False or \"never\", "
                         f"got {early_stopping!r}")
    if not is_int(num_return_sequences) or not 1 <= num_return_sequences <= num_beams:
        raise ValueError(f"{name('num_return_sequences')} must be an integer in 1..num_beams="
                         f"{num_beams}, got {num_return_sequences!r}")
    if not is_int(no_repeat_ngram_size) or no_repeat_ngram_size < 0:
        raise ValueError(f"{name('no_repeat_ngram_size')} must be an integer >= 0 (0 = off), "
                         f"got {no_repeat_ngram_size!r}")
    if eos_token_id is not None and (not is_int(eos_token_id)
                                     or not 0 <= eos_token_id < config.vocab_size):
        raise ValueError(f"{name('eos_token_id')} must be a token id in [0, {config.vocab_size}) "
                         f"or None (config.eos_token_id), got {eos_token_id!r}")


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
