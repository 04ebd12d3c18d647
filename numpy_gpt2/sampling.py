"""Text generation: pick the next token from the logits, feed it back, repeat.

Each step turns the last position's logits (B, V) into one token per row:

    greedy (temperature 0):  argmax(logits)
    otherwise:               logits / temperature -> keep the top_k largest -> keep the
                             smallest set with probability mass >= top_p -> softmax -> draw

The prompt is run once through the model ("prefill"), filling a key/value cache; afterwards
each step feeds only the newest token (numpy_gpt2.model.forward with kv_cache=...).
"""

from __future__ import annotations

import numpy as np

from . import layers
from .checks import check_prompt, check_sampling_args, check_seed, check_suppress_tokens
from .config import GPT2Config
from .errors import NonFiniteError
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
             eos_token_id: int | None = None, compact: bool = True, suppress_tokens=None):
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
    suppress_tokens: token ids never to produce (transformers' SuppressTokensLogitsProcessor):
        their logits are set to -inf at every step, before temperature, top-k and top-p, greedy
        included; ids outside [0, vocab_size) are ignored. E.g. tokenizer.undecodable_ids(enc,
        config.vocab_size) for a padded vocabulary (ids the tokenizer cannot decode).
    compact: finished rows leave the batch (and their rows of the kv cache), so the model
        only computes the rows still running; compact=False computes every row until all are
        done (the slower way, kept for comparison: the same tokens come out, see _generate).

    Yields: an int per step for a single prompt (T,) with num_samples == 1, else an int64
    array (B * num_samples,) per step.

    The context: a sequence never grows past n_ctx positions. With a prompt of T tokens, at
    most n_ctx - T + 1 tokens can be made (the last one is predicted from a full window and
    cannot be fed back); the generator then ends normally, even if max_new_tokens was larger.

    Every argument is checked here, before any computation: invalid ones raise ValueError.
    Non-finite logits (a NaN or inf weight, a float32 overflow) raise NonFiniteError from the
    step that meets them, naming where they started; nothing is ever sampled from NaN.
    """
    check_sampling_args(max_new_tokens, temperature, top_k, top_p, num_samples)
    prompt = check_prompt(tokens, config)
    eos = config.eos_token_id if eos_token_id is None else eos_token_id
    rng = make_rng(seed)
    suppress = check_suppress_tokens(suppress_tokens, config.vocab_size)
    single = prompt.ndim == 1 and num_samples == 1
    batch = np.repeat(np.atleast_2d(prompt), num_samples, axis=0)  # (B * num_samples, T)
    return _generate(params, config, batch, max_new_tokens, float(temperature), top_k, top_p,
                     rng, stop_at_eos, eos, single, compact, suppress)


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


def _generate(params, config, prompts, max_new_tokens, temperature, top_k, top_p, rng,
              stop_at_eos, eos, single, compact, suppress=()):
    """The decoding loop. `running` holds the original indices of the rows still computed.

    The random numbers do not depend on compaction: each sampled step draws one uniform
    number per ORIGINAL row, rng.random(B), finished or not, and a running row uses the one
    at its own index; so row b's tokens are the same whichever rows have stopped. (The logits
    of a row can differ in the last bits with the batch size, as BLAS sums in another order
    for other matrix shapes; a token changes only where two choices are that close.)
    """
    B, T = prompts.shape
    steps = min(max_new_tokens, config.n_ctx - T + 1)  # see "The context" in generate()
    if steps <= 0:
        return
    # Room for the prompt and every token that will be fed back (all but the last one made).
    cache = new_kv_cache(config, B, params["wte"]["weight"].dtype, max_len=T + steps - 1)
    logits = forward(params, config, prompts, kv_cache=cache, last_only=True)[:, -1]  # (B', V)
    running = np.arange(B)  # original row of each row still in the batch
    finished = np.zeros(B, dtype=bool)  # by original row; finished rows yield eos from then on
    for step in range(steps):
        u = rng.random(B)[running] if temperature else None  # one number per original row
        logits[:, suppress] = -np.inf
        token = new = next_token(logits, temperature, top_k, top_p, u)  # (B',)
        if stop_at_eos:
            new = np.where(finished[running], eos, new)  # (rows kept when compact=False)
            finished[running] |= new == eos
            token = np.full(B, eos, dtype=np.int64)  # rows no longer computed yield eos
            token[running] = new
        yield int(token[0]) if single else token
        if step == steps - 1 or finished.all():
            return
        if compact and finished[running].any():
            keep = np.flatnonzero(~finished[running])
            running, new = running[keep], new[keep]
            cache = keep_cache_rows(cache, keep)
        logits = forward(params, config, new[:, None], kv_cache=cache, last_only=True)[:, -1]
