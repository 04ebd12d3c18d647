"""The training loop's pieces: one optimizer step (with gradient accumulation) and evaluation
(saving and restoring a run: numpy_gpt2.training.state; the loop: numpy_gpt2.training.loop).

One optimizer step over k micro-batches (nanoGPT's recipe):

    g = 1/k sum_j grad L_j        each L_j a mean over its B*T tokens, so with equal micro-
                                  batches g is the gradient of the mean over all k*B*T tokens
    g <- clip(g, grad_clip)       by the global L2 norm (optim.clip_grad_norm)
    params <- AdamW(params, g)    (optim.adamw_update)
"""

from __future__ import annotations

import math

import numpy as np

from numpy_gpt2.backward import loss_and_grads
from numpy_gpt2.finite import non_finite_weights
from numpy_gpt2.fast.training import cross_entropy_sum_fast
from numpy_gpt2.model import forward
from numpy_gpt2.training.optim import adamw_update, clip_grad_norm, grad_norm
from numpy_gpt2.params import flatten_params, frozen_keys


def accumulate_grads(params: dict, config, micro_batches) -> tuple[float, dict]:
    """Mean loss and mean gradient over micro-batches [(x, y), ...] of equal shape:
    loss = 1/k sum_j L_j, grads = 1/k sum_j grad L_j (gradient accumulation). A micro-batch
    (x, y, dropout) trains with that dropout.Dropout (its masks)."""
    grads, total = None, 0.0
    for x, y, *dropout in micro_batches:
        loss, grads = loss_and_grads(params, config, x, y, grads=grads, dropout=(dropout or [None])[0])
        total += loss
    k = len(micro_batches)
    if k > 1:
        for g in flatten_params(grads).values():
            g *= 1.0 / k
    return total / k, grads


def train_step(params: dict, config, opt_state: dict, micro_batches, lr: float, *,
               betas=(0.9, 0.95), weight_decay=0.1, grad_clip=1.0, eps=1e-8,
               accumulate=accumulate_grads) -> tuple[float, float]:
    """One optimizer step, in place: accumulate gradients over micro_batches, clip them to
    global norm grad_clip (0 = no clipping), AdamW update. Returns (loss, grad norm before
    clipping), the loss being the mean over the micro-batches before the update. A model
    without biases (config.bias False) keeps them: they are constants (params.frozen_keys),
    not parameters, so their gradients are zero and AdamW skips them.

    accumulate(params, config, micro_batches) -> (loss, grads): accumulate_grads, or a
    data-parallel one that also sums over ranks (distributed.MPIWorld.accumulate_grads).

    Raises NonFiniteError (from the forward/backward pass) or FloatingPointError, before
    touching the weights, if the logits, the loss, a gradient or the gradient norm is not
    finite. Raises FloatingPointError AFTER the update if it made a weight non-finite (an
    absurd learning rate, e.g. 1e39 overflows float32): params then hold NaN/inf and must be
    discarded (scripts/train.py stops without saving them; its last save is intact).
    A diverged run must never silently continue with, or save, non-finite weights."""
    loss, grads = accumulate(params, config, micro_batches)
    norm = clip_grad_norm(grads, grad_clip) if grad_clip else grad_norm(grads)
    if not (math.isfinite(loss) and math.isfinite(norm)):
        raise FloatingPointError(f"loss {loss} / gradient norm {norm} is not finite "
                                 f"(lr {lr:g} too high?); weights left as they were")
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported just below
        adamw_update(params, grads, opt_state, lr, betas=betas, eps=eps, weight_decay=weight_decay,
                     frozen=frozen_keys(params, config))
    bad = non_finite_weights(params)
    if bad:
        raise FloatingPointError(f"the AdamW update with lr {lr:g} made weights non-finite "
                                 f"({', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}); "
                                 f"the learning rate is far too high")
    return loss, norm


EVAL_LOGITS = 1 << 24  # at most this many logits at once in evaluate (64 MB in float32)


def evaluate(params: dict, config, batches) -> float:
    """Mean next-token cross-entropy over a list of (x, y) batches of (B, T) tokens (every
    batch the same shape: the mean over all their tokens).

    The (B, T, V) logits of a whole batch can be large (B=4, T=1024: 0.8 GB in float32, and
    the log-softmax makes more), so the rows of each batch are scored a few at a time, at
    most EVAL_LOGITS logits per forward."""
    total, count = 0.0, 0
    for x, y in batches:
        x, y = np.atleast_2d(x), np.atleast_2d(y)
        rows = max(1, EVAL_LOGITS // (x.shape[1] * config.vocab_size))
        for r in range(0, x.shape[0], rows):
            logits = forward(params, config, x[r:r + rows])
            total += cross_entropy_sum_fast(logits.reshape(-1, logits.shape[-1]), y[r:r + rows].reshape(-1))
            count += y[r:r + rows].size
    return total / count
