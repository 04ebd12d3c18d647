"""Text generation: pick the next token from the logits, feed it back, repeat.

Each step turns the last position's logits (B, V) into one token per row:

    greedy (temperature 0):  argmax(logits)
    otherwise:               logits / temperature -> keep the top_k largest -> keep the
                             smallest set with probability mass >= top_p -> softmax -> draw

The prompt is run once through the model ("prefill"), filling a key/value cache; afterwards
each step feeds only the newest token (numpy_gpt2.model.forward with kv_cache=...).
"""

from __future__ import annotations

import numbers

import numpy as np

from . import layers
from .config import GPT2Config
from .model import forward, new_kv_cache


def apply_temperature(logits, temperature):
    """Logits divided by the temperature (> 0), shifted so each row's maximum is 0.

    logits: (..., V) -> (..., V) float64. T < 1 sharpens the distribution, T > 1 flattens it.
    Subtracting the max first (softmax does not change) keeps a tiny temperature from
    overflowing: the best logit stays 0 and the others go to -inf instead of inf - inf = nan.
    """
    logits = np.asarray(logits, dtype=np.float64)
    return (logits - logits.max(axis=-1, keepdims=True)) / temperature


def top_k_filter(logits, k):
    """Keep the k largest logits of each row, set the rest to -inf.

    logits: (..., V) -> (..., V). Logits tied with the k-th largest are all kept (as in
    transformers), so more than k survive only when there are exact ties.
    """
    logits = np.asarray(logits)
    if k >= logits.shape[-1]:
        return logits
    kth_largest = np.partition(logits, -k, axis=-1)[..., -k, None]  # (..., 1)
    return np.where(logits >= kth_largest, logits, -np.inf)


def softmax(logits):
    """layers.softmax over the last axis, in float64 (small probabilities keep their digits);
    -inf -> probability 0."""
    return layers.softmax(np.asarray(logits, dtype=np.float64))


def top_p_filter(logits, p):
    """Nucleus filter: keep the smallest set of most likely tokens whose probability mass
    reaches p (0 < p <= 1), set the rest to -inf.

    logits: (..., V) -> (..., V). Sort the probabilities in decreasing order; the set is the
    first n of them, where n is the first position at which the running sum is >= p. Tokens
    tied with the last one kept are kept too, so the result does not depend on sort order.
    """
    logits = np.asarray(logits)
    probs = softmax(logits)
    sorted_probs = -np.sort(-probs, axis=-1)  # (..., V), decreasing
    cumulative = np.cumsum(sorted_probs, axis=-1)
    # n - 1 = number of sorted entries whose running sum is still below p; if rounding keeps
    # the total just below p (p = 1), everything is kept.
    last = np.minimum((cumulative < p).sum(axis=-1, keepdims=True), probs.shape[-1] - 1)
    threshold = np.take_along_axis(sorted_probs, last, axis=-1)  # (..., 1) smallest kept prob
    return np.where(probs >= threshold, logits, -np.inf)


def filter_logits(logits, temperature=1.0, top_k=None, top_p=None):
    """Temperature, then top-k, then top-p (the order transformers uses).

    logits: (..., V) -> (..., V) float64, -inf where a token can no longer be drawn.
    temperature must be > 0 here (0 means greedy; see next_token).
    """
    logits = apply_temperature(logits, temperature)
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None and top_p < 1.0:
        logits = top_p_filter(logits, top_p)
    return logits


def sample(logits, rng: np.random.Generator):
    """Draw one token per row from softmax(logits), by inverting the cumulative distribution.

    logits: (B, V) (-inf allowed) -> (B,) int64. One uniform number u per row (rng.random(B)),
    token = the first index whose cumulative probability exceeds u * total. A token with
    probability 0 adds nothing to the running sum, so it can never be the one chosen.
    """
    cdf = np.cumsum(softmax(logits), axis=-1)  # (B, V)
    u = rng.random(cdf.shape[0]) * cdf[:, -1]  # (B,) in [0, total)
    token = (cdf <= u[:, None]).sum(axis=-1)  # first index with cdf > u
    return np.minimum(token, cdf.shape[-1] - 1)


def next_token(logits, temperature, top_k, top_p, rng):
    """logits (B, V) -> the next token of each row (B,): argmax when temperature == 0,
    else a draw from the filtered distribution."""
    if temperature == 0:
        return np.asarray(logits).argmax(axis=-1)
    return sample(filter_logits(logits, temperature, top_k, top_p), rng)


def _is_int(x):
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def check_sampling_args(max_new_tokens, temperature=1.0, top_k=None, top_p=None, num_samples=1):
    """Raise ValueError naming the first invalid generation parameter (nothing else happens)."""
    if not _is_int(max_new_tokens) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    if (not isinstance(temperature, numbers.Real) or isinstance(temperature, bool)
            or not np.isfinite(temperature) or temperature < 0):
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and (not _is_int(top_k) or top_k < 1):
        raise ValueError(f"top_k must be an integer >= 1 (or None for no limit), got {top_k!r}")
    if top_p is not None and (not isinstance(top_p, numbers.Real) or isinstance(top_p, bool)
                              or not 0 < top_p <= 1):
        raise ValueError(f"top_p must be in (0, 1] (or None for no limit), got {top_p!r}")
    if not _is_int(num_samples) or num_samples < 1:
        raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}")


def check_prompt(tokens, config: GPT2Config) -> np.ndarray:
    """The prompt as an int array (T,) or (B, T); ValueError if empty, out of the vocabulary
    or longer than the context."""
    tokens = np.asarray(tokens)
    if tokens.size == 0:
        raise ValueError(f"the prompt is empty (shape {tokens.shape}); generation needs at least "
                         f"one token, e.g. [{config.eos_token_id}] (<|endoftext|>) to start a new text")
    if tokens.dtype.kind not in "iu":
        raise ValueError(f"prompt tokens must be integers, got dtype {tokens.dtype}")
    if tokens.ndim not in (1, 2):
        raise ValueError(f"prompt must have shape (T,) or (B, T), got shape {tokens.shape}")
    if tokens.shape[-1] > config.n_ctx:
        raise ValueError(f"the prompt has {tokens.shape[-1]} tokens, more than the model's "
                         f"context of n_ctx={config.n_ctx}")
    bad = (tokens < 0) | (tokens >= config.vocab_size)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"prompt token {int(tokens[where])} at index {where} is outside the "
                         f"vocabulary [0, {config.vocab_size})")
    return tokens.astype(np.int64)


def generate(params: dict, config: GPT2Config, tokens, max_new_tokens: int, temperature=1.0,
             top_k=None, top_p=None, seed=None, num_samples: int = 1, stop_at_eos: bool = True,
             eos_token_id: int | None = None):
    """Generate tokens after a prompt; returns a generator yielding each new token as it is made.

        for token in generate(params, config, enc.encode("Hello"), 20, temperature=0):
            print(enc.decode([token]), end="", flush=True)

    tokens: the prompt, ints (T,) or a batch (B, T) of equally long prompts; 1 <= T <= n_ctx.
    max_new_tokens: at most this many steps (>= 0).
    temperature: 0 = greedy (argmax; top_k, top_p and seed then do nothing), else > 0.
    top_k: keep only the k most likely tokens (None = all). top_p: nucleus, in (0, 1].
    seed: int, None (fresh randomness) or a numpy Generator; the same seed gives the same tokens
        (draws come from numpy.random.default_rng(seed)).
    num_samples: samples per prompt, run as one batch: row b * num_samples + s is sample s
        of prompt b.
    stop_at_eos: a row that produces eos_token_id (default config.eos_token_id, 50256 =
        <|endoftext|>) is finished: the eos token is yielded, and from then on that row yields
        eos again at every step (as padding) while the other rows continue; the generator
        ends when every row has finished. stop_at_eos=False samples straight through eos.

    Yields: an int per step for a single prompt (T,) with num_samples == 1, else an int64
    array (B * num_samples,) per step.

    The context: a sequence never grows past n_ctx positions. With a prompt of T tokens, at
    most n_ctx - T + 1 tokens can be made (the last one is predicted from a full window and
    cannot be fed back); the generator then ends normally, even if max_new_tokens was larger.

    Every argument is checked here, before any computation: invalid ones raise ValueError.
    """
    check_sampling_args(max_new_tokens, temperature, top_k, top_p, num_samples)
    prompt = check_prompt(tokens, config)
    eos = config.eos_token_id if eos_token_id is None else eos_token_id
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    single = prompt.ndim == 1 and num_samples == 1
    batch = np.repeat(np.atleast_2d(prompt), num_samples, axis=0)  # (B * num_samples, T)
    return _generate(params, config, batch, max_new_tokens, float(temperature), top_k, top_p,
                     rng, stop_at_eos, eos, single)


def _generate(params, config, prompts, max_new_tokens, temperature, top_k, top_p, rng,
              stop_at_eos, eos, single):
    B, T = prompts.shape
    steps = min(max_new_tokens, config.n_ctx - T + 1)  # see "The context" in generate()
    if steps <= 0:
        return
    # Room for the prompt and every token that will be fed back (all but the last one made).
    cache = new_kv_cache(config, B, params["wte"]["weight"].dtype, max_len=T + steps - 1)
    logits = forward(params, config, prompts, kv_cache=cache, last_only=True)[:, -1]  # (B, V)
    finished = np.zeros(B, dtype=bool)
    for step in range(steps):
        token = next_token(logits, temperature, top_k, top_p, rng)  # (B,)
        if stop_at_eos:
            token = np.where(finished, eos, token)
            finished |= token == eos
        yield int(token[0]) if single else token
        if step == steps - 1 or finished.all():
            return
        logits = forward(params, config, token[:, None], kv_cache=cache, last_only=True)[:, -1]
