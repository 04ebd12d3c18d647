"""Text generation: pick the next token from the logits, feed it back, repeat.

Each step turns the last position's logits (B, V) into one token per row:

    greedy (temperature 0):  argmax(logits)
    otherwise:               logits / temperature -> keep the top_k largest -> keep the
                             smallest set with probability mass >= top_p -> softmax -> draw

The prompt is run once through the model ("prefill"), filling a key/value cache; afterwards
each step feeds only the newest token (numpy_gpt2.model.forward with kv_cache=...).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from numpy_gpt2 import layers
from numpy_gpt2.checks import check_seed
from numpy_gpt2.generation.checks import (check_generation_args, check_processor_args, check_prompts,
                                          check_sampling_args)
from numpy_gpt2.config import GPT2Config
from numpy_gpt2.errors import NonFiniteError
from numpy_gpt2.loss import log_softmax
from numpy_gpt2.model import forward, new_kv_cache
from numpy_gpt2.generation.processors import apply_processors, apply_warpers


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
    reaches p (0 < p <= 1), set the rest to -inf (transformers' TopPLogitsWarper; Holtzman et
    al. 2019, "The Curious Case of Neural Text Degeneration").

    logits: (..., V) -> (..., V). Sort the probabilities in decreasing order; the set is the
    first n of them, where n is the first position at which the running sum reaches p. Tokens
    tied with the last one kept are kept too, so the result does not depend on sort order.

    "Reaches" allows for rounding: a running sum within top_p_slack(V) of p counts. A float
    sum of probabilities lands a few units in the last place either side of its exact value
    (0.5 + 0.3 is 0.7999999999999999 < 0.8), so a set whose mass is exactly p must not depend
    on which side it rounded to.
    """
    logits = np.asarray(logits)
    probs = softmax(logits)
    sorted_probs = -np.sort(-probs, axis=-1)  # (..., V), decreasing
    cumulative = np.cumsum(sorted_probs, axis=-1)
    reached = cumulative >= p - top_p_slack(probs.shape[-1])
    # n - 1 = the first sorted position that reaches p; if none does (rounding keeps the total
    # just below p = 1), everything is kept.
    last = np.where(reached.any(axis=-1), reached.argmax(axis=-1), probs.shape[-1] - 1)[..., None]
    threshold = np.take_along_axis(sorted_probs, last, axis=-1)  # (..., 1) smallest kept prob
    return np.where(probs >= threshold, logits, -np.inf)


def top_p_slack(vocab_size: int) -> float:
    """How far below p a running sum of vocab_size float64 probabilities may be and still count
    as reaching p: 64 (V + 1) float64 epsilons (7e-10 for GPT-2's 50257). It bounds the
    rounding of softmax and of the running sum (each at most ~V epsilons), and it is far below
    any difference of probability mass that changes what is sampled."""
    return 64 * (vocab_size + 1) * np.finfo(np.float64).eps


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


def inverse_cdf(logits, u):
    """One token per row of softmax(logits), chosen by the uniform numbers u in [0, 1).

    logits: (B, V) (-inf allowed) -> (B,) int64; u: (B,). token = the first index whose
    cumulative probability exceeds u * total. A token with probability 0 adds nothing to the
    running sum, so it can never be the one chosen. NaN or inf logits raise NonFiniteError
    (they would otherwise pick token 0 or the last token, silently).
    """
    cdf = np.cumsum(softmax(logits), axis=-1)  # (B, V)
    total = cdf[:, -1]
    if not (np.isfinite(total).all() and (total > 0).all()):
        raise NonFiniteError(f"cannot sample from non-finite logits (rows "
                             f"{np.flatnonzero(~(np.isfinite(total) & (total > 0))).tolist()})")
    token = (cdf <= (u * total)[:, None]).sum(axis=-1)  # first index with cdf > u * total
    return np.minimum(token, cdf.shape[-1] - 1)


def sample(logits, rng: np.random.Generator):
    """Draw one token per row from softmax(logits): inverse_cdf with one uniform number per
    row, rng.random(B). logits: (B, V) -> (B,) int64."""
    logits = np.asarray(logits)
    return inverse_cdf(logits, rng.random(logits.shape[0]))


def next_token(logits, temperature, top_k, top_p, u=None):
    """logits (B, V) -> the next token of each row (B,): argmax when temperature == 0,
    else inverse_cdf of the filtered distribution at the uniform numbers u (B,)."""
    if temperature == 0:
        return np.asarray(logits).argmax(axis=-1)
    return inverse_cdf(filter_logits(logits, temperature, top_k, top_p), u)


def make_rng(seed) -> np.random.Generator:
    """seed -> the Generator the draws come from: a Generator is used as is; None (fresh
    randomness), an integer >= 0 or a sequence of them go through numpy.random.default_rng.
    Anything else: ValueError naming seed (checks.check_seed)."""
    return np.random.default_rng(check_seed(seed))


def generate(params: dict, config: GPT2Config, tokens, max_new_tokens: int, temperature=1.0,
             top_k=None, top_p=None, seed=None, num_samples: int = 1, stop_at_eos: bool = True,
             eos_token_id: int | None = None, compact: bool = True, suppress_tokens=None, *,
             repetition_penalty=None, frequency_penalty=None, presence_penalty=None,
             no_repeat_ngram_size=None, min_new_tokens=None, logit_bias=None, min_p=None,
             typical_p=None, logprobs=None, context="stop", hooks=None):
    """Generate tokens after a prompt; returns a generator yielding each new token as it is made.

        for token in generate(params, config, enc.encode("Hello"), 20, temperature=0): ...

    tokens: the prompt (T,), a batch (B, T), or a list of B prompts of different lengths
        (left-padded and masked: each row yields what its prompt yields alone).
    max_new_tokens >= 0; temperature (0 = greedy), top_k, top_p, seed, num_samples (samples per
    prompt, one batch), stop_at_eos, suppress_tokens, compact, the logits processors
    (repetition_penalty, frequency_penalty, presence_penalty, no_repeat_ngram_size,
    min_new_tokens, logit_bias, min_p, typical_p), logprobs (k: yield (tokens, info)),
    context ("stop" at n_ctx, or "slide" nanoGPT's window) and hooks (forward's, at every step):
    transformers' names and semantics, docs/generation.md and docs/sampling.md.
    Yields an int per step for one prompt, else an int64 array (B * num_samples,).
    Raises ValueError for any bad argument before any work, NonFiniteError at a non-finite step.
    """
    check_sampling_args(max_new_tokens, temperature, top_k, top_p, num_samples)
    options = check_processor_args(
        config.vocab_size, repetition_penalty=repetition_penalty,
        frequency_penalty=frequency_penalty, presence_penalty=presence_penalty,
        no_repeat_ngram_size=no_repeat_ngram_size, min_new_tokens=min_new_tokens,
        logit_bias=logit_bias, suppress_tokens=suppress_tokens, min_p=min_p, typical_p=typical_p)
    check_generation_args(config, logprobs, context)
    prompts, single = check_prompts(tokens, config, context)
    eos = config.eos_token_id if eos_token_id is None else eos_token_id
    rng = make_rng(seed)
    single = single and num_samples == 1
    batch = [p for p in prompts for _ in range(num_samples)]  # row b * num_samples + s
    choice = Choice(float(temperature), top_k, top_p, options, eos)
    return _generate(params, config, batch, max_new_tokens, choice, rng, stop_at_eos, single,
                     compact, logprobs, context == "slide", hooks)


def keep_cache_rows(kv_cache: dict, rows) -> dict:
    """The kv cache with only the batch rows `rows` (increasing indices), moved to the front
    in place: keys/values become (len(rows), H, max_len, D) views of the same memory.

    Only the filled positions are copied (the rest were never written). Rows move towards
    the front (rows[j] >= j), and the selection is copied out before it is written back.
    """
    length, n = kv_cache["length"], len(rows)
    for arrays in (kv_cache["keys"], kv_cache["values"]):
        for i, a in enumerate(arrays):
            a[:n, :, :length] = a[rows, :, :length]
            arrays[i] = a[:n]
    return kv_cache


@dataclasses.dataclass(frozen=True)
class Choice:
    """How a step picks its tokens: the (checked) sampling and processor options."""
    temperature: float
    top_k: int | None
    top_p: float | None
    options: dict  # from checks.check_processor_args
    eos: int

    def final_logits(self, logits, tokens, mask, n_new):
        """logits (B, V) of the next position -> the logits the token is chosen from: the
        processors (given the rows so far, tokens (B, L) ending with n_new generated ones,
        mask (B, L) 0 at padding), then when sampling the temperature, top_k, top_p, min_p
        and typical_p."""
        if self.options:
            logits = apply_processors(logits, tokens, mask, n_new, self.eos, self.options)
            banned = ~np.isfinite(logits).any(axis=-1) & ~np.isnan(logits).any(axis=-1)
            if banned.any():
                raise ValueError(f"the logits processors ({', '.join(self.options)}) leave no "
                                 f"token to choose from after {n_new} new tokens "
                                 f"(rows {np.flatnonzero(banned).tolist()} of the running batch)")
        if self.temperature == 0:
            return logits
        return apply_warpers(filter_logits(logits, self.temperature, self.top_k, self.top_p),
                             self.options)

    def pick(self, final, u):
        """argmax (greedy) or inverse_cdf at the uniform numbers u (B,) of final (B, V)."""
        return np.asarray(final).argmax(axis=-1) if self.temperature == 0 else inverse_cdf(final, u)


def _logprob_info(logits, final, token, k):
    """The logprobs report of one step for the rows computed: logits (B', V) from the model,
    final (B', V) the distribution the tokens (B',) were chosen from."""
    rows = np.arange(len(token))
    logp = log_softmax(np.asarray(logits, dtype=np.float64))
    top = np.argpartition(-logp, k - 1, axis=-1)[:, :k] if 0 < k < logp.shape[-1] else \
        np.broadcast_to(np.arange(logp.shape[-1]), logp.shape)[:, :k]
    # most likely first; equal logprobs by token id (lexsort: last key is the primary one)
    top_lp = np.take_along_axis(logp, top, axis=-1)
    order = np.lexsort((top, -top_lp), axis=-1)
    top = np.take_along_axis(top, order, axis=-1)
    return {"logprob": logp[rows, token],
            "processed_logprob": log_softmax(np.asarray(final, dtype=np.float64))[rows, token],
            "top_ids": top, "top_logprobs": np.take_along_axis(logp, top, axis=-1)}


def _full_info(info, running, B, k):
    """Scatter the computed rows' info into arrays for all B original rows (NaN / -1 for rows
    no longer computed)."""
    full = {"logprob": np.full(B, np.nan), "processed_logprob": np.full(B, np.nan),
            "top_ids": np.full((B, k), -1, np.int64), "top_logprobs": np.full((B, k), np.nan)}
    for key, value in info.items():
        full[key][running] = value
    return full


def _left_pad(prompts, width, steps, pad):
    """prompts (list of (T_b,)) -> seqs (B, width + steps) with each prompt right-aligned at
    column width, and real (B, width + steps) bool: False at the padding on the left."""
    seqs = np.full((len(prompts), width + steps), pad, np.int64)
    real = np.ones(seqs.shape, bool)
    for b, p in enumerate(prompts):
        seqs[b, width - len(p):width] = p
        real[b, :width - len(p)] = False
    return seqs, real


def _widen(seqs, real, pad):
    """seqs and real (B, W) -> (B, 2 W): the same columns, then W of padding (real True),
    so a sliding run of any length holds only the tokens made so far."""
    return (np.concatenate([seqs, np.full_like(seqs, pad)], axis=1),
            np.concatenate([real, np.ones_like(real)], axis=1))


def _next_logits(params, config, tokens, real, **kw):
    """forward's logits (B, V) for the last position; the attention mask `real` is passed
    only where there is padding (without one, forward takes its plain path)."""
    if not real.all():
        kw["attention_mask"] = real
    return forward(params, config, tokens, last_only=True, **kw)[:, -1]


def _drop_columns(cache, n):
    """Remove the first n positions of every row of the cache (padding no running row needs)."""
    if n > 0:
        length = cache["length"]
        for arrays in (cache["keys"], cache["values"]):
            for a in arrays:
                a[:, :, :length - n] = a[:, :, n:length]
        cache["length"] = length - n


def _generate(params, config, prompts, max_new_tokens, choice, rng, stop_at_eos, single,
              compact, logprobs, slide, hooks=None):
    """The decoding loop over prompts, a list of B int arrays (T_b,).

    Prompts of different lengths are left-padded to T = max T_b (seqs, real: see _left_pad)
    and run with an attention mask, so each row computes what it computes alone; the kv
    cache holds columns off .. of that layout. `active` holds the original indices of the
    rows still computed: a row leaves when it has made its last token (its own context
    limit, n_ctx - T_b + 1 tokens with context="stop"), and when compact, once it finished
    at eos. When the longest rows have left, the padding columns no remaining row needs are
    dropped from the cache, so the cache never holds more than n_ctx positions.

    The random numbers do not depend on compaction or on the other rows: each sampled step
    draws one uniform number per ORIGINAL row, rng.random(B), and a computed row uses the one
    at its own index. (The logits of a row can differ in the last bits with the batch size,
    as BLAS sums in another order for other matrix shapes; a token changes only where two
    choices are that close.)
    """
    B, n_ctx, eos = len(prompts), config.n_ctx, choice.eos
    lengths = np.array([len(p) for p in prompts])
    T = int(lengths.max())
    # (a Python int first: max_new_tokens may exceed int64; with context="stop" no row makes
    # more than n_ctx + 1 tokens, and a sliding run ends long before 2**62 steps)
    room = np.full(B, min(max_new_tokens, 2**62)) if slide else \
        np.minimum(min(max_new_tokens, n_ctx + 1), n_ctx - lengths + 1)
    steps = int(room.max())
    if steps <= 0:
        return
    seqs, real = _left_pad(prompts, T, min(steps, n_ctx + 1), eos)  # slide: grown as needed
    off = T - min(T, n_ctx)  # the first column the model sees (slide: prompts past n_ctx)
    # Room for the prompts and every token that will be fed back (all but the last one made).
    cache = new_kv_cache(config, B, params["wte"]["weight"].dtype, max_len=min(n_ctx, T - off + steps - 1))
    logits = _next_logits(params, config, seqs[:, off:T], real[:, off:T], kv_cache=cache, hooks=hooks)
    active = np.arange(B)  # original row of each row still in the batch
    finished = np.zeros(B, dtype=bool)  # by original row; finished rows yield eos from then on
    for step in range(steps):
        cur = T + step  # columns so far
        u = rng.random(B)[active] if choice.temperature else None  # one per original row
        final = choice.final_logits(logits, seqs[active, :cur], real[active, :cur], step)
        new = choice.pick(final, u)  # (B',)
        if logprobs is not None:
            info = _full_info(_logprob_info(logits, final, new, logprobs), active, B, logprobs)
        if stop_at_eos:
            if logprobs is not None:  # rows that finished at an earlier step
                for value in info.values():
                    value[finished] = -1 if value.dtype.kind == "i" else np.nan
            new = np.where(finished[active], eos, new)  # (rows kept when compact=False)
            finished[active] |= new == eos
        token = np.full(B, eos, dtype=np.int64)  # rows no longer computed yield eos
        token[active] = new
        if single:
            token = int(token[0])
            info = {key: value[0] for key, value in info.items()} if logprobs is not None else None
        yield token if logprobs is None else (token, info)
        done = room <= step + 1  # rows that made their last token
        if step == steps - 1 or (done | finished).all():
            return
        if cur == seqs.shape[1]:  # (slide) full: room for as many columns again
            seqs, real = _widen(seqs, real, eos)
        seqs[active, cur] = new
        leave = done[active] | (finished[active] if compact else False)
        if leave.any():
            keep = np.flatnonzero(~leave)
            active, new = active[keep], new[keep]
            if cache is not None:
                cache = keep_cache_rows(cache, keep)
                new_off = max(off, T - int(lengths[active].max()))
                _drop_columns(cache, new_off - off)
                off = new_off
        longest = int(lengths[active].max()) + step + 1  # tokens of the longest row now
        if cache is not None and longest <= n_ctx:  # feed the new tokens through the cache
            logits = _next_logits(params, config, new[:, None], real[active, off:cur + 1], kv_cache=cache,
                                 hooks=hooks)
        else:  # sliding: each row's last n_ctx tokens again, from position 0
            cache = None  # its keys and values belong to positions that have moved
            window = min(n_ctx, longest)
            columns = slice(cur + 1 - window, cur + 1)
            logits = _next_logits(params, config, seqs[active, columns], real[active, columns], hooks=hooks)
