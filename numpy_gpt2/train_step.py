"""The training loop's pieces: one optimizer step (with gradient accumulation), evaluation,
and saving/restoring everything a run needs to continue exactly where it stopped.

One optimizer step over k micro-batches (nanoGPT's recipe):

    g = 1/k sum_j grad L_j        each L_j a mean over its B*T tokens, so with equal micro-
                                  batches g is the gradient of the mean over all k*B*T tokens
    g <- clip(g, grad_clip)       by the global L2 norm (optim.clip_grad_norm)
    params <- AdamW(params, g)    (optim.adamw_update)

A training run's state on disk, all in one directory and written atomically together
(checkpoint.write_files_atomically) — a crash mid-save leaves the previous save whole:

    model.safetensors, config.json, vocab.json, merges.txt   the model (Hugging Face layout)
    optimizer.safetensors     AdamW's m and v ("m.<key>", "v.<key>"), in the params' dtype
    train_state.json          step, the data sampler's RNG state, the run's settings
The step is also stored in both .safetensors headers, so a mixed-up directory is detected.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np

from .backward import loss_and_grads
from .checkpoint import checkpoint_writers, write_files_atomically
from .layers_backward_fast import cross_entropy_sum_fast
from .model import forward
from .optim import adamw_update, clip_grad_norm, grad_norm
from .params import flatten_params, nest_params

STATE_FILE = "train_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"


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
    clipping), the loss being the mean over the micro-batches before the update.

    accumulate(params, config, micro_batches) -> (loss, grads): accumulate_grads, or a
    data-parallel one that also sums over ranks (distributed.MPIWorld.accumulate_grads).

    Raises FloatingPointError, before touching the weights, if the loss or the gradient
    norm is not finite (a diverged run must not silently write NaN weights)."""
    loss, grads = accumulate(params, config, micro_batches)
    norm = clip_grad_norm(grads, grad_clip) if grad_clip else grad_norm(grads)
    if not (math.isfinite(loss) and math.isfinite(norm)):
        raise FloatingPointError(f"loss {loss} / gradient norm {norm} is not finite "
                                 f"(lr {lr:g} too high?); weights left as they were")
    adamw_update(params, grads, opt_state, lr, betas=betas, eps=eps, weight_decay=weight_decay)
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


# ----------------------------------------------------------------------------------------
# Saving and restoring a run.

def save_training_state(directory, params: dict, config, tokenizer_dir, opt_state: dict,
                        info: dict) -> None:
    """Write the model checkpoint, the optimizer state and train_state.json (info: a JSON-able
    dict, e.g. {"rng": ..., "settings": ...}; the step is taken from opt_state) into
    directory, all atomically together (see module doc)."""
    step = int(opt_state["step"])
    meta = {"step": str(step)}
    flat_m, flat_v = flatten_params(opt_state["m"]), flatten_params(opt_state["v"])
    moments = {**{f"m.{k}": np.ascontiguousarray(v) for k, v in flat_m.items()},
               **{f"v.{k}": np.ascontiguousarray(v) for k, v in flat_v.items()}}

    def write_optimizer(path):
        from safetensors.numpy import save_file
        save_file(moments, path, metadata=meta)

    def write_state(path):
        with open(path, "w", encoding="utf-8") as f:
            json.dump({**info, "step": step}, f, indent=1)
            f.write("\n")

    writers = checkpoint_writers(params, config, tokenizer_dir, metadata=meta)
    writers[OPTIMIZER_FILE] = write_optimizer
    writers[STATE_FILE] = write_state  # last: its presence means a complete save
    write_files_atomically(directory, writers)


def _file_step(path) -> str | None:
    from safetensors import safe_open
    with safe_open(path, framework="np") as f:
        return (f.metadata() or {}).get("step")


def load_training_state(directory, params: dict) -> tuple[dict, dict]:
    """(opt_state, info) saved by save_training_state in directory, for these params (the
    weights loaded from the same directory). ValueError, naming the file, when something is
    missing, or the files disagree about the step or with the params' keys/shapes/dtype."""
    from safetensors.numpy import load_file

    state_path = os.path.join(directory, STATE_FILE)
    try:
        with open(state_path, encoding="utf-8") as f:
            info = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{directory}: no {STATE_FILE}; not a training run saved by "
                         f"scripts/train.py") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"{state_path}: cannot read ({e})") from None
    step = str(info.get("step"))
    opt_path = os.path.join(directory, OPTIMIZER_FILE)
    try:
        for path in (os.path.join(directory, "model.safetensors"), opt_path):
            if _file_step(path) != step:
                raise ValueError(f"{path}: saved at step {_file_step(path)}, but {STATE_FILE} says "
                                 f"step {step}; the directory mixes two saves")
        moments = load_file(opt_path)
    except (OSError, RuntimeError) as e:  # missing or unreadable file (safetensors raises these)
        raise ValueError(f"{opt_path}: cannot read the optimizer state ({e})") from None
    flat_p = flatten_params(params)
    state = {"step": int(info["step"])}
    for which in ("m", "v"):
        flat = {}
        for key, p in flat_p.items():
            a = moments.get(f"{which}.{key}")
            if a is None or a.shape != p.shape or a.dtype != p.dtype:
                got = "missing" if a is None else f"{a.dtype} {list(a.shape)}"
                raise ValueError(f"{opt_path}: {which}.{key} is {got}, expected {p.dtype} "
                                 f"{list(p.shape)}")
            flat[key] = a if a.flags.writeable else a.copy()
        state[which] = nest_params(flat)
    return state, info
