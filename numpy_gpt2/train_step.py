"""The training loop's pieces: one optimizer step (with gradient accumulation), evaluation,
and saving/restoring everything a run needs to continue exactly where it stopped.

One optimizer step over k micro-batches (nanoGPT's recipe):

    g = 1/k sum_j grad L_j        each L_j a mean over its B*T tokens, so with equal micro-
                                  batches g is the gradient of the mean over all k*B*T tokens
    g <- clip(g, grad_clip)       by the global L2 norm (optim.clip_grad_norm)
    params <- AdamW(params, g)    (optim.adamw_update)

A training run's state on disk, all in one directory, written as ONE atomic commit
(numpy_gpt2.atomic.write_files_atomically): a crash at any moment leaves either the previous
save or the new one, whole:

    model.safetensors, config.json, vocab.json, merges.txt   the model (Hugging Face layout)
    optimizer.safetensors     AdamW's m and v ("m.<key>", "v.<key>"), in the params' dtype
    train_state.json          step, the data sampler's RNG state, the run's settings
    (and any files the caller adds to the same commit, e.g. scripts/train.py's metrics)
The step is also stored in both .safetensors headers, so a mixed-up directory is detected.
Nothing non-finite is ever saved: save_training_state refuses NaN or inf weights or moments.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np

from .backward import loss_and_grads
from .atomic import write_files_atomically
from .checkpoint import checkpoint_writers, read_safetensors_header
from .checks import is_int, show
from .finite import all_finite, non_finite_weights
from .layers_backward_fast import cross_entropy_sum_fast
from .model import forward
from .optim import adamw_update, clip_coefficient, grad_norm
from .params import flatten_params, frozen_keys, nest_params

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
    norm = grad_norm(grads)
    if grad_clip and not grad_clip > 0:
        raise ValueError(f"grad_clip must be > 0 (or 0: no clipping), got {grad_clip!r}")
    # Clipping's scaling runs inside the AdamW update (grad_scale), while each piece of the
    # gradient is in the cache: the same numbers as clip_grad_norm, one pass less.
    scale = clip_coefficient(norm, grad_clip) if grad_clip and math.isfinite(norm) else None
    if not (math.isfinite(loss) and math.isfinite(norm)):
        raise FloatingPointError(f"loss {loss} / gradient norm {norm} is not finite "
                                 f"(lr {lr:g} too high?); weights left as they were")
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported just below
        adamw_update(params, grads, opt_state, lr, betas=betas, eps=eps, weight_decay=weight_decay,
                     frozen=frozen_keys(params, config), grad_scale=scale)
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


# ----------------------------------------------------------------------------------------
# Saving and restoring a run.

def save_training_state(directory, params: dict, config, tokenizer_dir, opt_state: dict,
                        info: dict, extra_files=None) -> None:
    """Write the model checkpoint, the optimizer state and train_state.json (info: a JSON-able
    dict, e.g. {"rng": ..., "settings": ...}; the step is taken from opt_state) into
    directory as one atomic commit (see module doc). extra_files: {name: write(path)} saved
    in the same commit (before train_state.json). Raises FloatingPointError, before writing
    anything, when a weight or moment is not finite; OSError (e.g. ENOSPC) from the writes,
    the previous save then being intact."""
    step = int(opt_state["step"])
    for what, tree in (("weights", params), ("AdamW m", opt_state["m"]), ("AdamW v", opt_state["v"])):
        bad = non_finite_weights(tree)
        if bad:
            raise FloatingPointError(f"not saving step {step}: non-finite {what} "
                                     f"({', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''})")
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
    writers.update(extra_files or {})
    writers[STATE_FILE] = write_state  # last: installed last
    write_files_atomically(directory, writers)


def read_train_state(directory) -> dict:
    """train_state.json of the run in directory, checked: a JSON object whose "step" is an
    integer >= 0 and whose "rng" and "settings" are objects (what the caller keeps in
    "settings" is the caller's to check). ValueError naming the file and the key otherwise."""
    path = os.path.join(os.fspath(directory), STATE_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{directory}: no {STATE_FILE}; not a training run saved by "
                         f"scripts/train.py") from None
    except (OSError, ValueError, RecursionError) as e:  # unreadable, not UTF-8, not JSON
        raise ValueError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from None
    if not isinstance(info, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(info).__name__}")
    expected = {"step": "an integer >= 0", "rng": "an object", "settings": "an object"}
    for key, what in expected.items():
        value = info.get(key)
        ok = is_int(value) and value >= 0 if key == "step" else isinstance(value, dict)
        if not ok:
            got = "missing" if key not in info else show(value)
            raise ValueError(f"{path}: \"{key}\" is {got}, expected {what}")
    return info


def _read_moments(path) -> tuple[dict, str | None]:
    """({key: array}, the "step" in the header's metadata) of optimizer.safetensors; the
    header is checked first (a truncated file is named as such). ValueError otherwise."""
    from safetensors import safe_open

    try:
        read_safetensors_header(path)  # CheckpointError (a ValueError) naming what is wrong
        with safe_open(path, framework="np") as f:
            step = (f.metadata() or {}).get("step")
            return {k: f.get_tensor(k) for k in f.keys()}, step
    except FileNotFoundError:
        raise ValueError(f"{path}: missing; the optimizer state of the run is needed to resume") from None
    except ValueError:
        raise
    except Exception as e:  # safetensors' own errors (SafetensorError is a bare Exception)
        raise ValueError(f"{path}: cannot read the optimizer state ({e})") from None


def _model_step(path) -> str | None:
    """The "step" in model.safetensors' header metadata (None when absent)."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="np") as f:
            return (f.metadata() or {}).get("step")
    except Exception as e:  # SafetensorError, OSError
        raise ValueError(f"{path}: cannot read ({e})") from None


def load_training_state(directory, params: dict) -> tuple[dict, dict]:
    """(opt_state, info) saved by save_training_state in directory, for these params (the
    weights loaded from the same directory). ValueError, naming the file, when something is
    missing, truncated, malformed or not finite, or the files disagree about the step or with
    the params' keys/shapes/dtype."""
    info = read_train_state(directory)
    step = str(info["step"])
    model_path = os.path.join(directory, "model.safetensors")
    opt_path = os.path.join(directory, OPTIMIZER_FILE)
    moments, opt_step = _read_moments(opt_path)
    for path, saved in ((model_path, _model_step(model_path)), (opt_path, opt_step)):
        if saved != step:
            raise ValueError(f"{path}: saved at step {saved}, but {STATE_FILE} says step {step}; "
                             f"the directory mixes two saves")
    flat_p = flatten_params(params)
    state = {"step": info["step"]}
    for which in ("m", "v"):
        flat = {}
        for key, p in flat_p.items():
            a = moments.get(f"{which}.{key}")
            if a is None or a.shape != p.shape or a.dtype != p.dtype:
                got = "missing" if a is None else f"{a.dtype} {list(a.shape)}"
                raise ValueError(f"{opt_path}: {which}.{key} is {got}, expected {p.dtype} "
                                 f"{list(p.shape)}")
            if not all_finite(a):
                raise ValueError(f"{opt_path}: {which}.{key} holds NaN or inf")
            flat[key] = a if a.flags.writeable else a.copy()
        state[which] = nest_params(flat)
    return state, info
