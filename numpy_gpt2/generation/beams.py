"""Beam search: keep the num_beams most likely continuations, extend each by every token, keep
the best again; finished hypotheses (eos, or the length limit) compete by length-normalized score.

The rules are transformers' GenerationMixin._beam_search (4.57, do_sample=False), so the
tokens and sequences_scores agree with generate(num_beams=..., do_sample=False):

    running score of a beam      s = sum of log softmax(logits)[token] over its new tokens
    score of a finished beam     s / L ** length_penalty     (L = its new tokens, eos included)
    each step: from all num_beams * V extensions keep the best 2 * num_beams by s; those
    ending in eos (or at the length limit) that rank among the first num_beams become
    finished candidates; the best num_beams that did not finish continue.

The beams share one kv cache: after each step its rows are reordered to the beams that
continue (a beam's keys and values are those of the beam it extends), never recomputed.
"""

from __future__ import annotations

import numpy as np

from numpy_gpt2.generation.checks import check_beam_args, check_prompt, check_suppress_tokens
from numpy_gpt2.config import GPT2Config
from numpy_gpt2.loss import log_softmax
from numpy_gpt2.model import forward, new_kv_cache
from numpy_gpt2.generation.processors import no_repeat_ngram

# transformers marks impossible candidates by adding this (not -inf: scores stay comparable).
UNREACHABLE = -1.0e9


def _top(scores, k):
    """Indices of the k largest scores (1-D), best first; equal scores by index (as the
    candidates of transformers' torch.topk come, lower index first)."""
    k = min(k, len(scores))
    part = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
    return part[np.lexsort((part, -scores[part]))]


def _reorder_cache(cache, rows):
    """Beam b continues beam rows[b]: copy its filled keys/values (fancy indexing copies first)."""
    length = cache["length"]
    for arrays in (cache["keys"], cache["values"]):
        for a in arrays:
            a[:, :, :length] = a[rows, :, :length]


def _beam_cache(params, config, prompt, num_beams, max_len, hooks=None):
    """Prefill the prompt once and give every beam a copy of its keys/values -> (logits (V,), cache)."""
    one = new_kv_cache(config, 1, params["wte"]["weight"].dtype, max_len=max_len)
    logits = forward(params, config, prompt[None], kv_cache=one, last_only=True, hooks=hooks)[0, -1]
    cache = {"keys": [np.repeat(k, num_beams, axis=0) for k in one["keys"]],
             "values": [np.repeat(v, num_beams, axis=0) for v in one["values"]],
             "length": one["length"]}
    return logits, cache


class _Finished:
    """The num_beams best finished hypotheses so far: scores (best first), tokens, and which
    slots hold a real hypothesis (the others have score UNREACHABLE)."""

    def __init__(self, num_beams):
        self.scores = np.full(num_beams, UNREACHABLE)
        self.tokens = [np.zeros(0, np.int64)] * num_beams
        self.done = np.zeros(num_beams, bool)

    def merge(self, scores, tokens, done):
        """Keep the best len(self.scores) of the current ones and the candidates."""
        all_scores = np.concatenate([self.scores, scores])
        keep = _top(all_scores, len(self.scores))
        all_tokens = self.tokens + list(tokens)
        self.scores, self.done = all_scores[keep], np.concatenate([self.done, done])[keep]
        self.tokens = [all_tokens[i] for i in keep]


def beam_search(params: dict, config: GPT2Config, prompt, max_new_tokens: int, num_beams: int, *,
                length_penalty: float = 1.0, early_stopping=False, num_return_sequences: int = 1,
                no_repeat_ngram_size: int = 0, eos_token_id: int | None = None, suppress_tokens=None,
                hooks=None):
    """The num_return_sequences best continuations of `prompt` by beam search, best first.

    prompt: token ids (T,), 1 <= T <= n_ctx; max_new_tokens >= 1; num_beams >= 1 (1 is beam
    search with one beam, not greedy); length_penalty (finished scores s / L ** length_penalty);
    early_stopping (True, False or "never"); no_repeat_ngram_size; eos_token_id (default
    config's); suppress_tokens (ids never chosen); hooks (forward's, at every step: the prompt's
    pass (1, T, ...), then (num_beams, 1, ...)). Transformers' semantics: docs/sampling.md.
    Returns [(tokens, score), ...]: the new tokens (int64, ending with eos if the beam finished on
    it) and transformers' sequences_scores (sum of their log probabilities / n ** length_penalty).
    Raises ValueError for bad arguments, before any work. Source: GenerationMixin._beam_search.
    """
    check_beam_args(config, max_new_tokens, num_beams, length_penalty, early_stopping,
                    num_return_sequences, no_repeat_ngram_size, eos_token_id)
    banned = check_suppress_tokens(suppress_tokens, config.vocab_size)
    prompt = check_prompt(prompt, config)
    if prompt.ndim != 1:
        raise ValueError(f"prompt tokens must be one sequence (T,) for beam search, got shape "
                         f"{prompt.shape}")
    eos = config.eos_token_id if eos_token_id is None else eos_token_id
    T, n, V = len(prompt), num_beams, config.vocab_size
    steps = min(max_new_tokens, config.n_ctx - T + 1)  # the last token is never fed back
    logits, cache = _beam_cache(params, config, prompt, n, max_len=min(config.n_ctx, T + steps - 1),
                                hooks=hooks)
    logits = np.broadcast_to(logits, (n, V))

    seqs = np.tile(prompt, (n, 1))  # (n, T + t): prompt and each running beam's tokens
    running = np.full(n, UNREACHABLE)
    running[0] = 0.0  # all beams start equal: only the first one's extensions count at first
    finished = _Finished(n)
    improvable = True
    for t in range(steps):
        logp = log_softmax(np.asarray(logits, dtype=np.float64))  # (n, V)
        if no_repeat_ngram_size:
            logp = no_repeat_ngram(logp, seqs, no_repeat_ngram_size)
        logp[:, banned] = -np.inf
        total = (logp + running[:, None]).ravel()  # (n * V,)
        top = _top(total, 2 * n)  # candidates: one eos each could take at most n of them
        beam, token, score = top // V, top % V, total[top]
        ends = (token == eos) | (t + 1 == steps)
        # Finished candidates: only those among the first n count.
        candidate = ends & (np.arange(len(top)) < n)
        full = early_stopping is True and finished.done.all()
        # (each reason adds UNREACHABLE once, as in transformers)
        length_score = (score / (t + 1) ** length_penalty + UNREACHABLE * full
                        + UNREACHABLE * (not improvable) + UNREACHABLE * ~candidate)
        cand_tokens = np.concatenate([seqs[beam, T:], token[:, None]], axis=1)
        finished.merge(length_score, cand_tokens, candidate)
        # The n best candidates that did not end continue.
        keep = _top(score + UNREACHABLE * ends, n)
        running, seqs = (score + UNREACHABLE * ends)[keep], np.concatenate(
            [seqs[beam[keep]], token[keep, None]], axis=1)
        best_length = steps if early_stopping == "never" and length_penalty > 0 else t + 1
        worst = np.where(finished.done, finished.scores.min(), UNREACHABLE)
        improvable = improvable and bool((running[0] / best_length ** length_penalty > worst).any())
        if not improvable or (early_stopping is True and finished.done.all()) or ends.all():
            break
        _reorder_cache(cache, beam[keep])
        logits = forward(params, config, token[keep, None], kv_cache=cache, last_only=True,
                         hooks=hooks)[:, -1]
    return [(finished.tokens[i], float(finished.scores[i])) for i in range(num_return_sequences)]
