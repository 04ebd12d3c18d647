"""Logits processors: the controls that reshape next-token logits before a token is chosen.

Each is a pure function of the logits (B, V) of the next position (and, for the ones that
look back, the tokens so far), returning new logits (B, V) and leaving its input untouched.
-inf means "can no longer be chosen". Names and semantics are transformers' (one function
per transformers LogitsProcessor, tested equal to it), plus the additive frequency and
presence penalties of the OpenAI API, which transformers does not have.

The tokens so far: `tokens` (B, L) ints with an optional `mask` (B, L) of 0/1, where 0 marks
padding. Padding is never a "seen" token: a row's result depends only on its own real tokens,
never on how much padding the batch gave it (transformers counts pad ids as seen, so its
left-padded rows can differ from the same prompts run alone).

apply_processors applies them in transformers' order (GenerationMixin._get_logits_processor):

    logit_bias -> repetition_penalty -> frequency_penalty -> presence_penalty
    -> no_repeat_ngram_size -> min_new_tokens -> suppress_tokens
    and, only when sampling, after the temperature:  top_k -> top_p -> min_p -> typical_p
"""

from __future__ import annotations

import numpy as np

from numpy_gpt2.layers import softmax
from numpy_gpt2.loss import log_softmax


def token_counts(tokens, vocab_size: int, mask=None) -> np.ndarray:
    """How often each token id occurs in each row: (B, L) ids (+ (B, L) 0/1 mask) -> (B, V) int64.

    Padding (mask == 0) is not counted. One bincount over row * V + id.
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    B, L = tokens.shape
    flat = (np.arange(B)[:, None] * vocab_size + tokens)
    if mask is not None:
        flat = flat[np.asarray(mask, dtype=bool)]
    return np.bincount(flat.ravel(), minlength=B * vocab_size).reshape(B, vocab_size)


def repetition_penalty(logits, tokens, penalty: float, mask=None):
    """CTRL's repetition penalty on every token already in the row (prompt and generated):

        z_i -> z_i / penalty   if z_i > 0   (i seen)
        z_i -> z_i * penalty   if z_i <= 0  (i seen)

    penalty > 1 makes seen tokens less likely (both branches lower z_i), < 1 more likely.
    logits (B, V), tokens (B, L), mask (B, L) or None -> (B, V).
    Source: Keskar et al. 2019, "CTRL", section 4.1; transformers
    RepetitionPenaltyLogitsProcessor (the same rule, including z_i < 0 -> multiply).
    """
    logits = np.asarray(logits)
    seen = token_counts(tokens, logits.shape[-1], mask) > 0
    penalized = np.where(logits < 0, logits * penalty, logits / penalty)
    return np.where(seen, penalized, logits)


def frequency_penalty(logits, tokens, penalty: float, mask=None):
    """OpenAI's frequency penalty over the GENERATED tokens (not the prompt):

        z_i -> z_i - penalty * c_i,   c_i = how many times token i was generated so far

    logits (B, V), tokens (B, L): the generated tokens only (+ mask) -> (B, V).
    Source: OpenAI API reference, "Parameter details" (frequency_penalty, -2.0 .. 2.0 there);
    no transformers twin.
    """
    logits = np.asarray(logits)
    counts = token_counts(tokens, logits.shape[-1], mask)
    return logits - penalty * counts.astype(logits.dtype)


def presence_penalty(logits, tokens, penalty: float, mask=None):
    """OpenAI's presence penalty over the GENERATED tokens (not the prompt):

        z_i -> z_i - penalty * [c_i > 0]

    logits (B, V), tokens (B, L): the generated tokens only (+ mask) -> (B, V).
    Source: OpenAI API reference, "Parameter details" (presence_penalty); no transformers twin.
    """
    logits = np.asarray(logits)
    present = token_counts(tokens, logits.shape[-1], mask) > 0
    return logits - penalty * present.astype(logits.dtype)


def banned_ngram_tokens(row, n: int) -> np.ndarray:
    """The tokens that would complete an n-gram already in `row` (1-D, real tokens only):
    every token that followed an earlier occurrence of the row's last n - 1 tokens."""
    row = np.asarray(row, dtype=np.int64)
    if len(row) < n:  # no complete n-gram yet (transformers: cur_len + 1 < n, and none fits)
        return row[:0]
    windows = np.lib.stride_tricks.sliding_window_view(row, n)  # (L - n + 1, n)
    match = (windows[:, :-1] == row[len(row) - (n - 1):]).all(axis=1)
    return windows[match, -1]


def no_repeat_ngram(logits, tokens, n: int, mask=None):
    """no_repeat_ngram_size: no n-gram occurs twice in a row (prompt + generated).

        z_i -> -inf  if (t_{L-n+2}, ..., t_L, i) already occurs in the row

    logits (B, V), tokens (B, L), mask (B, L) or None -> (B, V). n >= 1 (n = 1 bans every
    token already seen). Source: fairseq's sequence_generator (no_repeat_ngram_size);
    transformers NoRepeatNGramLogitsProcessor.
    """
    out = np.array(logits, copy=True)
    tokens = np.asarray(tokens)
    keep = None if mask is None else np.asarray(mask, dtype=bool)
    for b in range(len(tokens)):
        row = tokens[b] if keep is None else tokens[b][keep[b]]
        out[b, banned_ngram_tokens(row, n)] = -np.inf
    return out


def min_new_tokens(logits, n_new: int, minimum: int, eos_token_id: int):
    """eos cannot be chosen before `minimum` tokens have been generated:

        z_eos -> -inf  while n_new < minimum      (n_new = tokens generated so far)

    logits (B, V) -> (B, V). Source: transformers MinNewTokensLengthLogitsProcessor.
    """
    out = np.array(logits, copy=True)
    if n_new < minimum:
        out[:, eos_token_id] = -np.inf
    return out


def logit_bias(logits, bias: dict):
    """Add a fixed bias to some tokens' logits: z_i -> z_i + bias[i]; bias -inf bans i.

    logits (B, V), bias {token_id: float} -> (B, V). Source: OpenAI API's logit_bias; the
    single-token case of transformers SequenceBiasLogitsProcessor (sequence_bias).
    """
    out = np.array(logits, copy=True)
    ids = np.fromiter(bias.keys(), dtype=np.int64, count=len(bias))
    out[:, ids] += np.fromiter(bias.values(), dtype=np.float64, count=len(bias)).astype(out.dtype)
    return out


def suppress_tokens(logits, token_ids):
    """z_i -> -inf for every i in token_ids. logits (B, V) -> (B, V).
    Source: transformers SuppressTokensLogitsProcessor."""
    out = np.array(logits, copy=True)
    out[:, np.asarray(list(token_ids), dtype=np.int64)] = -np.inf
    return out


def min_p_filter(logits, min_p: float):
    """Min-p sampling: keep the tokens at least min_p times as likely as the most likely one.

        keep i  iff  p_i >= min_p * max_j p_j,    p = softmax(z)

    logits (B, V) -> (B, V), -inf where dropped; min_p in [0, 1] (0 keeps all; the most likely
    token is always kept). Source: Nguyen et al. 2024, "Turning Up the Heat: Min-p Sampling";
    transformers MinPLogitsWarper.
    """
    logits = np.asarray(logits)
    probs = softmax(np.asarray(logits, dtype=np.float64))
    drop = probs < min_p * probs.max(axis=-1, keepdims=True)
    return np.where(drop, -np.inf, logits)


def typical_p_filter(logits, mass: float):
    """Locally typical sampling: keep the tokens whose surprisal is closest to the entropy.

        H = -sum_j p_j log p_j,   d_i = |-log p_i - H|
        sort by d increasing; keep the shortest prefix whose probability reaches `mass`
        (every token with d_i <= d of the last one kept; at least one token)

    logits (B, V) -> (B, V), -inf where dropped; 0 < mass < 1 (1 = keep all). The most likely
    token can be dropped. Source: Meister et al. 2023, "Locally Typical Sampling" (TACL);
    transformers TypicalLogitsWarper.
    """
    logits = np.asarray(logits)
    logp = log_softmax(np.asarray(logits, dtype=np.float64))
    p = np.exp(logp)
    with np.errstate(invalid="ignore"):  # -inf * 0 for tokens already dropped: no entropy
        entropy = -np.nansum(logp * p, axis=-1, keepdims=True)
    distance = np.abs(-logp - entropy)  # (B, V), inf for dropped tokens
    order = np.argsort(distance, axis=-1, kind="stable")
    cumulative = np.cumsum(np.take_along_axis(p, order, axis=-1), axis=-1)
    last = np.minimum((cumulative < mass).sum(axis=-1, keepdims=True), p.shape[-1] - 1)
    threshold = np.take_along_axis(np.take_along_axis(distance, order, axis=-1), last, axis=-1)
    return np.where(distance > threshold, -np.inf, logits)


# --- applied in transformers' order (options from checks.check_processor_args) ------------

PROCESSORS = ("logit_bias", "repetition_penalty", "frequency_penalty", "presence_penalty",
              "no_repeat_ngram_size", "min_new_tokens", "suppress_tokens")


def apply_processors(logits, tokens, mask, n_new: int, eos_token_id: int, options: dict):
    """The processors in `options` (from checks.check_processor_args) in transformers' order.

    logits (B, V); tokens (B, L): each row so far, prompt then its n_new generated tokens
    (the last n_new columns); mask (B, L) 0/1 or None. Returns (B, V); the warpers (min_p,
    typical_p) are not applied here (see apply_warpers).
    """
    new, new_mask = tokens[:, tokens.shape[1] - n_new:], None if mask is None else mask[:, mask.shape[1] - n_new:]
    steps = {
        "logit_bias": lambda z, v: logit_bias(z, v),
        "repetition_penalty": lambda z, v: repetition_penalty(z, tokens, v, mask),
        "frequency_penalty": lambda z, v: frequency_penalty(z, new, v, new_mask),
        "presence_penalty": lambda z, v: presence_penalty(z, new, v, new_mask),
        "no_repeat_ngram_size": lambda z, v: no_repeat_ngram(z, tokens, v, mask),
        "min_new_tokens": lambda z, v: min_new_tokens(z, n_new, v, eos_token_id),
        "suppress_tokens": lambda z, v: suppress_tokens(z, v),
    }
    for name in PROCESSORS:
        if name in options:
            logits = steps[name](logits, options[name])
    return logits


def apply_warpers(logits, options: dict):
    """min_p then typical_p (when in `options`), after temperature, top_k and top_p."""
    if "min_p" in options:
        logits = min_p_filter(logits, options["min_p"])
    if "typical_p" in options:
        logits = typical_p_filter(logits, options["typical_p"])
    return logits
