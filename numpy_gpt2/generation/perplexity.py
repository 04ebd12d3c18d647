"""Scoring a text with the model: cross-entropy and perplexity over texts of any length.

perplexity = exp(CE), CE the mean next-token cross-entropy in nats (numpy_gpt2.loss). A text
longer than the context (n_ctx) is scored with sliding windows (the Hugging Face
"perplexity of fixed-length models" method): windows of `max_length` tokens start every
`stride` tokens; each window scores only the tokens no earlier window scored, so every token
(but the first of the text) is scored exactly once, with up to max_length - stride tokens of
context from its window's start.
"""

from __future__ import annotations

import math
import sys

import numpy as np

from numpy_gpt2.config import GPT2Config
from numpy_gpt2.errors import NonFiniteError
from numpy_gpt2.loss import token_nll
from numpy_gpt2.model import forward


def sliding_windows(n_tokens: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """The windows that score a text of n_tokens: a list of (begin, end, first_scored).

    Window tokens[begin:end] (at most max_length long) scores the targets
    tokens[first_scored:end], each predicted from the logits one position earlier. Windows
    start at 0, stride, 2*stride, ... until one reaches the end of the text; a window scores
    the tokens after the previous window's end (the first window: all but token 0, which has
    no context). With stride == max_length the windows do not overlap, and the first token of
    each window is not scored (it would have no context in its window).
    """
    if n_tokens < 2:
        raise ValueError(f"need at least 2 tokens to score (one to predict from, one to predict), "
                         f"got {n_tokens}")
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2, got {max_length}")
    if not 1 <= stride <= max_length:
        raise ValueError(f"stride must be in 1..max_length={max_length}, got {stride} (a stride "
                         f"longer than the window would skip the tokens between windows)")
    windows, prev_end = [], 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + max_length, n_tokens)
        windows.append((begin, end, max(prev_end, begin + 1)))
        prev_end = end
        if end == n_tokens:
            break
    return windows


def perplexity(params: dict, config: GPT2Config, tokens, *, max_length: int | None = None,
               stride: int | None = None, progress=None) -> dict:
    """Token-level cross-entropy and perplexity of a long token sequence (sliding windows).

    tokens: 1-D int array of the whole text. max_length: window length (default and at most
    n_ctx). stride: default max_length // 2 (the HF recipe's 512 for GPT-2). progress: optional
    callable(scored_so_far, total_to_score) called after each window.

    Returns {"cross_entropy": mean NLL in nats/token, "perplexity": exp of it (inf above
    709.78 nats, where exp overflows float64),
    "n_scored": tokens scored, "nll_sum": summed NLL, "n_windows": windows run,
    "max_length", "stride": the window settings used}.
    Sums are accumulated in float64.
    """
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise ValueError(f"tokens must be a 1-D sequence, got shape {tokens.shape}")
    max_length = config.n_ctx if max_length is None else max_length
    if max_length > config.n_ctx:
        raise ValueError(f"max_length={max_length} is longer than the model's context "
                         f"(n_ctx={config.n_ctx})")
    stride = max(1, max_length // 2) if stride is None else stride
    windows = sliding_windows(len(tokens), max_length, stride)
    total = sum(end - first for _, end, first in windows)
    nll_sum, scored = 0.0, 0
    for begin, end, first in windows:
        try:  # forward raises NonFiniteError for NaN/inf logits; say which window it was
            logits = forward(params, config, tokens[begin:end])  # (end - begin, V)
        except NonFiniteError as e:
            raise NonFiniteError(f"window of tokens {begin}..{end - 1} (positions count from "
                                 f"the window's start): {e}") from None
        # Only the rows that predict the scored targets go through log_softmax.
        nll = token_nll(logits[first - 1 - begin:end - 1 - begin], tokens[first:end])
        nll_sum += float(nll.sum(dtype=np.float64))
        if not math.isfinite(nll_sum):  # finite logits, yet a log-probability of -inf
            raise NonFiniteError(f"window of tokens {begin}..{end - 1}: the loss is not finite "
                                 f"({nll_sum}) although the logits are: logits further apart "
                                 f"than the {logits.dtype} range make a log-probability -inf")
        scored += end - first
        if progress is not None:
            progress(scored, total)
    ce = nll_sum / scored
    ppl = math.exp(ce) if ce <= math.log(sys.float_info.max) else math.inf
    return {"cross_entropy": ce, "perplexity": ppl, "n_scored": scored,
            "nll_sum": nll_sum, "n_windows": len(windows), "max_length": max_length, "stride": stride}
