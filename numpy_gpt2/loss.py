"""Language-model loss: the cross-entropy of the next token, and its gradient.

Cross-entropy of a sequence, in nats per token (natural log):

    CE = -1/N sum_t log p(x_{t+1} | x_1 .. x_t),   p = softmax(logits_t)

Only the math of the loss, on logits given to it; numpy_gpt2.generation.perplexity runs the model to
score texts (perplexity = exp(CE)).
"""

from __future__ import annotations

import numpy as np


def log_softmax(logits, axis=-1):
    """log softmax(logits) = logits - logsumexp(logits), computed stably:

        log p_i = (z_i - m) - log sum_j exp(z_j - m),   m = max_j z_j

    so exp never overflows (z - m <= 0) and log never sees 0 (the max term is exp(0) = 1).
    """
    shifted = logits - logits.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def token_nll(logits, targets):
    """Negative log-likelihood -log p(target) of each target token, in nats.

    logits: (..., T, V) scores predicting the tokens `targets`: (..., T) int ids (already
    shifted: targets[t] is the token that follows the input at position t). Returns (..., T)
    in the logits' dtype. ValueError when targets do not match the logits' leading shape or
    are not ids in [0, V) (a negative id would silently index from the end).
    """
    targets = np.asarray(targets)
    if targets.shape != np.shape(logits)[:-1] or (targets.size and targets.dtype.kind not in "iu"):
        raise ValueError(f"targets must be token ids of shape {np.shape(logits)[:-1]} (the "
                         f"logits' shape without V), got {targets.dtype} of shape {targets.shape}")
    if targets.size and not 0 <= targets.min() <= targets.max() < np.shape(logits)[-1]:
        bad = targets[(targets < 0) | (targets >= np.shape(logits)[-1])].flat[0]
        raise ValueError(f"targets must be ids in [0, {np.shape(logits)[-1]}) (V), got {bad}")
    logp = log_softmax(logits)
    return -np.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]


def cross_entropy(logits, targets) -> float:
    """Mean next-token cross-entropy in nats: mean(token_nll(logits, targets)).

    To score a sequence x of T tokens with logits = forward(params, config, x):
    cross_entropy(logits[:-1], x[1:]) (position t predicts token t + 1)."""
    return float(token_nll(logits, targets).mean(dtype=np.float64))


def masked_cross_entropy(logits, targets, ignore_index=-100, num_items_in_batch=None) -> float:
    """Mean next-token cross-entropy over the targets that are not ignore_index, in nats:

        L = -1/N sum_{t: y_t != ignore} log softmax(z_t)[y_t],   N = number of kept targets

    as torch.nn.functional.cross_entropy(..., reduction="mean", ignore_index=-100) computes it.
    logits: (..., V); targets: (...) ints. The training loss of numpy_gpt2.loss_and_grads.
    num_items_in_batch: N given (transformers' name): the kept targets of the whole step
    when this batch is one of several (gradient accumulation; docs/training.md); then a
    batch with no kept target is 0.
    """
    targets = np.asarray(targets)
    keep = targets != ignore_index
    nll = token_nll(logits[keep], targets[keep])
    if num_items_in_batch is None:
        return float(nll.mean(dtype=np.float64))
    return float(nll.sum(dtype=np.float64) / num_items_in_batch)


def cross_entropy_backward(logits, targets, ignore_index=-100, num_items_in_batch=None):
    """Gradient of masked_cross_entropy with respect to the logits (the same N):

        dL/dz_t = (softmax(z_t) - onehot(y_t)) / N   for kept targets,   0 for ignored ones

    (the log-softmax and the one-hot pick fold into this one short expression).
    logits: (..., V); targets: (...) ints -> (..., V) in the logits' dtype.
    """
    targets = np.asarray(targets)
    keep = targets != ignore_index
    probs = np.exp(log_softmax(logits))
    rows = np.nonzero(keep)
    probs[rows + (targets[rows],)] -= 1.0  # the one-hot of each kept target
    n = keep.sum() if num_items_in_batch is None else num_items_in_batch
    probs *= keep[..., None] / n  # ignored rows -> 0; mean over the kept ones (or the step's)
    return probs
