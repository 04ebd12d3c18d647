"""Checks of generation's arguments: prompts, sampling, the logits processors, beam search.

Each raises ValueError naming the argument (as the Python API spells it: `max_new_tokens`),
what is wrong and what was expected, before any work; the command line words the same
messages with its flags (numpy_gpt2/cli/common.py, flag_message).
"""

from __future__ import annotations

import math
import numbers
import sys

import numpy as np

from numpy_gpt2.checks import check_seed, check_tokens, is_int, is_number


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


def check_sampling_args(max_new_tokens, temperature=1.0, top_k=None, top_p=None, num_samples=1,
                        *, seed=None):
    """Raise ValueError naming the first invalid generation parameter (nothing else happens)."""
    if not is_int(max_new_tokens) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    if (not isinstance(temperature, numbers.Real) or isinstance(temperature, bool)
            or not np.isfinite(temperature) or temperature < 0):
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), "
                         f"got {temperature!r}")
    if top_k is not None and (not is_int(top_k) or top_k < 1):
        raise ValueError(f"top_k must be an integer >= 1 (or None for no limit), got {top_k!r}")
    if top_p is not None and (not isinstance(top_p, numbers.Real) or isinstance(top_p, bool)
                              or not 0 < top_p <= 1):
        raise ValueError(f"top_p must be in (0, 1] (or None for no limit), got {top_p!r}")
    if not is_int(num_samples) or num_samples < 1:
        raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}")
    check_seed(seed, "seed")


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
    if vocab_size is None:  # (not known yet: only the types are checked)
        return np.unique(np.array([t for t in ids if 0 <= t < 2**63], dtype=np.int64))
    ids = np.unique(np.array([t for t in ids if 0 <= t < vocab_size], dtype=np.int64))
    if len(ids) == vocab_size:
        raise ValueError(f"suppress_tokens bans every token id of the vocabulary [0, {vocab_size})")
    return ids


def check_generation_args(config, logprobs=None, context="stop"):
    """ValueError naming logprobs (None, or an integer in 0..vocab_size) or context ("stop" or
    "slide") when invalid."""
    if logprobs is not None and (not is_int(logprobs) or not 0 <= logprobs <= config.vocab_size):
        raise ValueError(f"logprobs must be an integer in 0..{config.vocab_size} (vocab_size)"
                         f" or None, got {logprobs!r}")
    if context not in ("stop", "slide"):
        raise ValueError(f"context must be \"stop\" or \"slide\", got {context!r}")


# The logits processors' options and the values that mean "off" (None is always off).
PROCESSOR_OFF = {"logit_bias": (), "repetition_penalty": (1.0,), "frequency_penalty": (0.0,),
                 "presence_penalty": (0.0,), "no_repeat_ngram_size": (0,), "min_new_tokens": (0,),
                 "suppress_tokens": ((),), "min_p": (), "typical_p": (1.0,)}


def _check_token_id(name, token, vocab_size):
    """token as an int; vocab_size None: the vocabulary is not known yet (only >= 0 checked)."""
    if vocab_size is None:
        if not is_int(token) or token < 0:
            raise ValueError(f"{name}: token id {token!r} is not an integer >= 0")
        return int(token)
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


def check_processor_args(vocab_size: int | None, **options) -> dict:
    """Validate the logits processors' options (numpy_gpt2.generation.processors); returns the active
    ones, normalized (logit_bias a dict of floats, suppress_tokens a tuple of ints).

    options: any of logit_bias ({id: float or -inf}), repetition_penalty (> 0; 1 = off),
    frequency_penalty, presence_penalty (finite; 0 = off), no_repeat_ngram_size (int >= 0;
    0 = off), min_new_tokens (int >= 0), suppress_tokens (ids; those outside the vocabulary
    ignored, as check_suppress_tokens), min_p ([0, 1]),
    typical_p ((0, 1]; 1 = off); None is always off. vocab_size None: the vocabulary is not
    known yet, token ids are checked to be integers >= 0 only. Raises ValueError naming the
    first bad one; an unknown name is a TypeError, as for a call.
    """
    unknown = set(options) - set(PROCESSOR_OFF)
    if unknown:
        raise TypeError(f"unknown processor option(s): {sorted(unknown)}")
    active = {}
    for name, off in PROCESSOR_OFF.items():
        value = options.get(name)
        if value is not None:
            value = _check_processor_value(name, value, vocab_size, name)
            if value not in off:
                active[name] = value
    return active


def check_beam_args(config, max_new_tokens, num_beams, length_penalty, early_stopping,
                    num_return_sequences, no_repeat_ngram_size, eos_token_id):
    """ValueError naming the first invalid beam_search argument."""
    if not is_int(max_new_tokens) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer >= 1 for beam search, "
                         f"got {max_new_tokens!r}")
    if not is_int(num_beams) or num_beams < 1:
        raise ValueError(f"num_beams must be an integer >= 1, got {num_beams!r}")
    if not is_number(length_penalty) or not math.isfinite(length_penalty):
        raise ValueError(f"length_penalty must be a finite number, got {length_penalty!r}")
    # a finished score is s / L ** length_penalty: L ** length_penalty must stay a finite,
    # non-zero float for every length L <= max_new_tokens (else Python's float power overflows)
    bound = math.log(sys.float_info.max) / math.log(max(2, max_new_tokens))
    if abs(length_penalty) > bound:
        raise ValueError(f"length_penalty must be at most {bound:.6g} in size for "
                         f"{max_new_tokens} new tokens (L ** length_penalty must stay finite "
                         f"for every length L), got {length_penalty!r}")
    if early_stopping is not True and early_stopping is not False and early_stopping != "never":
        raise ValueError(f"early_stopping must be True, False or \"never\", "
                         f"got {early_stopping!r}")
    if not is_int(num_return_sequences) or not 1 <= num_return_sequences <= num_beams:
        raise ValueError(f"num_return_sequences must be an integer from 1 to num_beams "
                         f"({num_beams}), got {num_return_sequences!r}")
    if not is_int(no_repeat_ngram_size) or no_repeat_ngram_size < 0:
        raise ValueError(f"no_repeat_ngram_size must be an integer >= 0 (0 = off), "
                         f"got {no_repeat_ngram_size!r}")
    if eos_token_id is not None and (not is_int(eos_token_id)
                                     or not 0 <= eos_token_id < config.vocab_size):
        raise ValueError(f"eos_token_id must be a token id in [0, {config.vocab_size}) "
                         f"or None (config.eos_token_id), got {eos_token_id!r}")


