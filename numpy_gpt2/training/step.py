"""The training loop's pieces: one optimizer step (with gradient accumulation) and evaluation
(saving and restoring a run: numpy_gpt2.training.state; the loop: numpy_gpt2.training.loop).

One optimizer step over k micro-batches (nanoGPT's recipe, with the loss of transformers'
gradient accumulation since 4.46):

    L = 1/N sum_j S_j             S_j the summed cross-entropy of micro-batch j's kept targets
                                  (not ignore_index), N the kept targets of all k of them:
                                  exactly the mean loss of ONE batch holding all k, whatever
                                  the padding (not the mean of the k means)
    g = sum_j grad (S_j / N)      each micro-batch's backward divides by N (num_items_in_batch)
    g <- clip(g, grad_clip)       by the global L2 norm (optim.clip_grad_norm)
    params <- AdamW(params, g)    (optim.adamw_update)
"""

from __future__ import annotations

import math

import numpy as np

from numpy_gpt2.backward import check_finite_grads, loss_and_grads
from numpy_gpt2.checks import check_targets, show
from numpy_gpt2.finite import non_finite_weights
from numpy_gpt2.fast.training import cross_entropy_sum_fast
from numpy_gpt2.model import forward
from numpy_gpt2.training.optim import adamw_update, clip_coefficient, grad_norm
from numpy_gpt2.params import flatten_params, frozen_keys


def kept_targets(config, micro_batches, ignore_index: int = -100) -> list[int]:
    """The number of kept targets (not ignore_index) of each micro-batch [(x, y), ...] or
    [(x, y, dropout), ...], each checked as loss_and_grads checks it (ValueError naming
    the micro-batch; one with no kept target is allowed)."""
    if not isinstance(micro_batches, (list, tuple)) or not micro_batches:
        raise ValueError(f"micro_batches must be a non-empty list of (x, y) pairs, got "
                         f"{show(micro_batches)}")
    counts = []
    for j, (x, y, *_) in enumerate(micro_batches):
        try:
            _, y = check_targets(x, y, config, ignore_index, allow_none_kept=True)
        except ValueError as e:
            raise ValueError(f"micro-batch {j}: {e}") from None
        counts.append(int(np.count_nonzero(y != ignore_index)))
    return counts


def no_targets_error(what: str, ignore_index: int) -> ValueError:
    """The error for batches with no kept target at all (what: which batches)."""
    return ValueError(f"every target of {what} is ignore_index={ignore_index}: there is "
                      f"nothing to score")


def accumulate_grads(params: dict, config, micro_batches, ignore_index: int = -100,
                     num_items_in_batch: int | None = None, grads: dict | None = None, *,
                     check_grads: bool = True) -> tuple[float, dict]:
    """Loss and gradient of micro-batches [(x, y), ...] taken as ONE batch (gradient
    accumulation): loss = sum_j S_j / N, grads = its gradient, S_j the summed cross-entropy
    of micro-batch j's kept targets, N = num_items_in_batch, by default the kept targets of
    all of them. So k micro-batches equal one batch holding them all, whatever their shapes
    and padding (docs/training.md#how-the-loss-is-averaged). A micro-batch with no kept
    target adds nothing (and is not run); none at all: ValueError. A micro-batch (x, y,
    dropout) trains with that dropout.Dropout (its masks). grads: a dict to add into.
    check_grads: False leaves the check that the gradients are finite to the caller
    (loss_and_grads(check_grads=...)); train_step checks their sum through its norm."""
    counts = kept_targets(config, micro_batches, ignore_index)
    n = sum(counts) if num_items_in_batch is None else num_items_in_batch
    if n == 0:
        raise no_targets_error(f"the step's {len(micro_batches)} micro-batch(es)", ignore_index)
    total = 0.0
    for (x, y, *dropout), count in zip(micro_batches, counts):
        if count:
            loss, grads = loss_and_grads(params, config, x, y, ignore_index, grads=grads,
                                         dropout=(dropout or [None])[0], num_items_in_batch=n,
                                         check_grads=check_grads)
            total += loss
    return total, grads


def train_step(params: dict, config, opt_state: dict, micro_batches, lr: float, *,
               betas=(0.9, 0.95), weight_decay=0.1, grad_clip=1.0, eps=1e-8,
               accumulate=None) -> tuple[float, float]:
    """One optimizer step, in place: accumulate gradients over micro_batches, clip them to
    global norm grad_clip (0 = no clipping), AdamW update. Returns (loss, grad norm before
    clipping), the loss being the mean over all the micro-batches' kept targets (see
    accumulate_grads) before the update. A model
    without biases (config.bias False) keeps them: they are constants (params.frozen_keys),
    not parameters, so their gradients are zero and AdamW skips them.

    accumulate(params, config, micro_batches) -> (loss, grads): None, accumulate_grads
    with check_grads=False (their norm checks the gradients: one pass over them less per
    micro-batch), or a data-parallel one that also sums over ranks
    (distributed.MPIWorld.accumulate_grads).

    Raises NonFiniteError (from the forward/backward pass) or FloatingPointError, before
    touching the weights, if the logits, the loss, a gradient or the gradient norm is not
    finite. Raises FloatingPointError AFTER the update if it made a weight non-finite (an
    absurd learning rate, e.g. 1e39 overflows float32): params then hold NaN/inf and must be
    discarded (scripts/train.py stops without saving them; its last save is intact).
    A diverged run must never silently continue with, or save, non-finite weights."""
    if accumulate is None:
        loss, grads = accumulate_grads(params, config, micro_batches, check_grads=False)
    else:
        loss, grads = accumulate(params, config, micro_batches)
    norm = grad_norm(grads)  # NaN or inf when a gradient is
    if grad_clip and not grad_clip > 0:
        raise ValueError(f"grad_clip must be > 0 (or 0: no clipping), got {grad_clip!r}")
    # Clipping's scaling runs inside the AdamW update (grad_scale), while each piece of the
    # gradient is in the cache: the same numbers as clip_grad_norm, one pass less.
    scale = clip_coefficient(norm, grad_clip) if grad_clip and math.isfinite(norm) else None
    if not (math.isfinite(loss) and math.isfinite(norm)):
        if math.isfinite(loss):  # NonFiniteError naming the gradients that are not finite, if
            check_finite_grads(grads)  # any (else the norm's squares overflowed)
        raise FloatingPointError(f"loss {loss} / gradient norm {norm} is not finite "
                                 f"(lr {lr:g} too high?); weights left as they were")
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported just below
        # the keys of the weights the update made non-finite (checked while in the cache)
        bad = adamw_update(params, grads, opt_state, lr, betas=betas, eps=eps, weight_decay=weight_decay,
                           frozen=frozen_keys(params, config), grad_scale=scale)
    flat = flatten_params(params)
    bad = non_finite_weights({key: flat[key] for key in bad})
    if bad:
        raise FloatingPointError(f"the AdamW update with lr {lr:g} made weights non-finite "
                                 f"({', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}); "
                                 f"the learning rate is far too high")
    return loss, norm


EVAL_LOGITS = 1 << 24  # at most this many logits at once in evaluate (64 MB in float32)


def evaluate(params: dict, config, batches, ignore_index: int = -100) -> float:
    """Mean next-token cross-entropy over all the kept targets (not ignore_index) of a list
    of (x, y) batches of (B, T) tokens, whatever their shapes: the summed loss over the
    number of targets (evaluation_sums), never a mean of the batches' means. ValueError when
    no target is kept.

    The (B, T, V) logits of a whole batch can be large (B=4, T=1024: 0.8 GB in float32, and
    the log-softmax makes more), so the rows of each batch are scored a few at a time, at
    most EVAL_LOGITS logits per forward."""
    total, count = evaluation_sums(params, config, batches, ignore_index)
    if count == 0:
        raise no_targets_error(f"the {len(batches)} evaluation batch(es)", ignore_index)
    return total / count


def evaluation_sums(params: dict, config, batches, ignore_index: int = -100) -> tuple[float, int]:
    """(summed cross-entropy, number of scored targets) over the kept targets of (x, y)
    batches: what evaluate divides, and what ranks add up (distributed.MPIWorld.evaluate)."""
    total, count = 0.0, 0
    for x, y in batches:
        x, y = np.atleast_2d(x), np.atleast_2d(y)
        rows = max(1, EVAL_LOGITS // (x.shape[1] * config.vocab_size))
        for r in range(0, x.shape[0], rows):
            targets = y[r:r + rows].reshape(-1)
            keep = targets != ignore_index
            if not keep.any():
                continue
            logits = forward(params, config, x[r:r + rows])
            logits = logits.reshape(-1, logits.shape[-1])
            if not keep.all():  # the padded positions' logits are not scored
                logits, targets = logits[keep], targets[keep]
            total += cross_entropy_sum_fast(logits, targets)
            count += targets.size
    return total, count
