"""AdamW, gradient clipping and the learning-rate schedule, as functions over explicit state.

The optimizer state is a plain dict (no classes around the math):

    state = {"step": 0,          # updates done so far (t in the equations)
             "m": {...},         # first moments, nested exactly like params
             "v": {...}}         # second moments, nested exactly like params

AdamW (Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization"), one update at
step t = state["step"] + 1, for every parameter p with gradient g:

    p <- p * (1 - lr * weight_decay)             decoupled decay (ndim >= 2 tensors only)
    m <- beta1 * m + (1 - beta1) * g             running mean of the gradient
    v <- beta2 * v + (1 - beta2) * g^2           running mean of its square
    p <- p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

exactly the arithmetic of torch.optim.AdamW (the bias corrections 1 - beta^t undo the zero
initialisation of m and v). Weight decay is applied to matmul weights and embeddings (2 or
more dimensions) and never to biases or LayerNorm gains/shifts, nanoGPT's rule: shrinking a
LayerNorm gain towards 0 or a bias towards 0 is not a useful prior. Tensors that are not
parameters at all (the zero biases of a nanoGPT bias=False model) are passed as frozen= and
never touched.
"""

from __future__ import annotations

import math

import numpy as np

from numpy_gpt2.checks import check_mirrors_params
from numpy_gpt2.params import flatten_params, nest_params
from numpy_gpt2.finite import all_finite
from numpy_gpt2.fast.threads import blas_single_threaded, claim_pieces

# Elements per chunk when summing squares: small enough that the float32 partial sums stay
# accurate and no gradient-sized temporary is made, large enough for BLAS to be fast.
_NORM_CHUNK = 1 << 16
_UPDATE_CHUNK = 1 << 16  # AdamW: 6 arrays of 64K float32 = 1.5 MB, in L2/L3; fewer NumPy calls than 16K


def adamw_init(params: dict) -> dict:
    """A fresh AdamW state for params: step 0, zero moments m and v shaped like params."""
    flat = flatten_params(params)
    return {"step": 0,
            "m": nest_params({k: np.zeros_like(p) for k, p in flat.items()}),
            "v": nest_params({k: np.zeros_like(p) for k, p in flat.items()})}


def adamw_update_tensor(p, g, m, v, lr, beta1, beta2, eps, weight_decay, step, scratch, grad_scale=None,
                        scaled=None):
    """One AdamW update of one tensor, in place (p, m, v change). step: t, counting from 1.

    Equations in the module docstring; decay is applied when weight_decay != 0 (the caller
    passes 0 for 1-D tensors). scratch: an array shaped like p, the one temporary (so a
    124M-parameter update allocates nothing tensor-sized per tensor).
    grad_scale: when not None, the update uses g * grad_scale (computed into `scaled`, an
    array shaped like p; g is left as it is): clip_grad_norm's scaling, done here while g
    is in the cache instead of in a pass of its own, with the same float rounding.
    """
    if grad_scale is not None:
        g = np.multiply(g, grad_scale, out=scaled)
    if weight_decay:
        p *= 1.0 - lr * weight_decay
    # m <- beta1 m + (1 - beta1) g, computed as torch's lerp(m, g, w = 1 - beta1) does it:
    # m + w (g - m) for w < 0.5, else g - (1 - w)(g - m) (exact at w = 1, i.e. beta1 = 0).
    np.subtract(g, m, out=scratch)
    if 1.0 - beta1 < 0.5:
        scratch *= 1.0 - beta1
        m += scratch
    else:
        scratch *= beta1
        np.subtract(g, scratch, out=m)
    # v <- beta2 v + (1 - beta2) g^2
    np.multiply(g, g, out=scratch)
    scratch *= 1.0 - beta2
    v *= beta2
    v += scratch
    bias_correction1 = 1.0 - beta1 ** step
    bias_correction2 = 1.0 - beta2 ** step
    # denom = sqrt(v) / sqrt(1 - beta2^t) + eps
    denom = np.sqrt(v, out=scratch)
    if p.dtype.type(math.sqrt(bias_correction2)) != 1.0:  # x / 1 is x: skipped once 1 - beta2^t
        denom /= math.sqrt(bias_correction2)              # rounds to 1 (float32, beta2 0.95: t >= 325)
    denom += eps
    # p <- p - lr / (1 - beta1^t) * m / denom
    np.divide(m, denom, out=denom)
    denom *= lr / bias_correction1
    p -= denom


def adamw_update(params: dict, grads: dict, state: dict, lr: float, betas=(0.9, 0.95), eps=1e-8,
                 weight_decay=0.1, *, frozen=(), grad_scale: float | None = None) -> list[str]:
    """One AdamW step over every parameter, in place (params and state change).

    params, grads: nested dicts with the same keys (grads from numpy_gpt2.loss_and_grads);
    state: from adamw_init(params). Decay only on tensors with ndim >= 2 (see module doc).
    Arithmetic in the parameters' dtype, as torch.optim.AdamW.
    frozen: checkpoint keys of tensors that are constants, not parameters (the zero biases
    of a model without biases: params.frozen_keys). They, and their moments, are left
    exactly as they are, as torch leaves a tensor that is in no parameter group (AdamW on
    them would not be a no-op: with eps=0 their zero gradient gives 0/0 = NaN).
    grad_scale: None, or a factor every gradient is multiplied by first (clip_coefficient's:
    the same numbers as clip_grad_norm then adamw_update, without clipping's own pass over
    the gradients; grads are left unscaled).
    Returns the checkpoint keys of the parameters the update left holding NaN or inf
    (normally none: an absurd lr), checked on each chunk while it is in the cache.
    Raises ValueError for a bad lr, betas, eps or weight_decay, or a frozen key that is
    not one of params'.
    """
    beta1, beta2 = betas
    if not (math.isfinite(lr) and lr >= 0):
        raise ValueError(f"lr must be a finite number >= 0, got {lr!r}")
    if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
        raise ValueError(f"betas must be in [0, 1), got {betas!r}")
    if not eps >= 0 or not weight_decay >= 0:
        raise ValueError(f"eps and weight_decay must be >= 0, got eps={eps!r}, "
                         f"weight_decay={weight_decay!r}")
    flat_p, flat_g = flatten_params(params), check_mirrors_params(grads, params)
    flat_m, flat_v = flatten_params(state["m"]), flatten_params(state["v"])
    frozen = set(frozen)
    if not frozen <= flat_p.keys():
        raise ValueError(f"frozen= names {sorted(frozen - flat_p.keys())[:3]}, which are not "
                         f"keys of params")
    state["step"] += 1
    # The update is elementwise, so it runs on chunks of _UPDATE_CHUNK elements: its ~15
    # NumPy passes over p, g, m, v and the scratch then hit the CPU cache, and memory sees
    # one read of p, g, m, v and one write of p, m, v per step. Both threads claim chunks
    # one at a time (ufuncs release the GIL). Same arithmetic, same bits, chunked, threaded
    # or not.
    whole, pieces, flats = [], [], []  # non-contiguous tensors; (tensor, start) chunks
    for key, p in flat_p.items():
        if key in frozen:
            continue
        decay = weight_decay if p.ndim >= 2 else 0.0
        arrays = [p, flat_g[key], flat_m[key], flat_v[key]]
        if not all(a.flags.c_contiguous for a in arrays):
            whole.append((key, arrays, decay))
            continue
        pieces += [(len(flats), lo) for lo in range(0, p.size, _UPDATE_CHUNK)]
        flats.append((key, [a.reshape(-1) for a in arrays], decay))  # views: writes reach the tensors
    step, errors = state["step"], np.geterr()

    def worker():
        buffers = {}  # dtype -> this thread's scratch: 2 chunks (the update's scratch, the scaled g)

        def piece(i):
            t, lo = pieces[i]
            _, arrays, decay = flats[t]
            p, g, m, v = (a[lo:lo + _UPDATE_CHUNK] for a in arrays)
            buf = buffers.get(p.dtype)
            if buf is None:
                buf = buffers[p.dtype] = np.empty(2 * _UPDATE_CHUNK, p.dtype)
            adamw_update_tensor(p, g, m, v, lr, beta1, beta2, eps, decay, step, buf[:p.size],
                                grad_scale, buf[_UPDATE_CHUNK:_UPDATE_CHUNK + p.size])
            # train_step's check of the new weights, on the chunk while it is in the cache:
            # NaN and +-inf survive max and min (a sum could overflow).
            return math.isfinite(np.maximum.reduce(p)) and math.isfinite(np.minimum.reduce(p))

        return piece

    # each thread under the caller's np.errstate (NumPy's is per thread)
    finite = claim_pieces(len(pieces), worker, context=lambda: np.errstate(**errors))
    for key, (p, g, m, v), decay in whole:
        adamw_update_tensor(p, g, m, v, lr, beta1, beta2, eps, decay, step, np.empty_like(p),
                            grad_scale, None if grad_scale is None else np.empty_like(p))
    suspects = {flats[t][0] for (t, _), ok in zip(pieces, finite) if not ok} | {key for key, *_ in whole}
    return [key for key in flat_p if key in suspects and not all_finite(flat_p[key])]


def grad_norm(grads: dict) -> float:
    """Global L2 norm of all gradients: sqrt(sum over every tensor of sum(g^2)).

    Squares are summed in chunks (float32 BLAS dot per chunk, the chunks added in float64),
    so no gradient-sized temporary is made and the sum stays accurate for 10^8 elements.
    """
    chunks = [g.reshape(-1)[start:start + _NORM_CHUNK] for g in flatten_params(grads).values()
              for start in range(0, g.size, _NORM_CHUNK)]
    # The chunks claimed one at a time by the threads, each dot on one thread (BLAS threads
    # would meet once per chunk); the partial sums added in chunk order: the same result always.
    with blas_single_threaded():
        parts = claim_pieces(len(chunks), lambda: lambda i: float(chunks[i] @ chunks[i]))
    total = 0.0
    for part in parts:
        total += part
    return math.sqrt(total)


def clip_grad_norm(grads: dict, max_norm: float) -> float:
    """Scale all gradients in place so their global L2 norm is at most max_norm.

    As torch.nn.utils.clip_grad_norm_: norm = sqrt(sum_i ||g_i||^2); when
    max_norm / (norm + 1e-6) < 1, every g_i is multiplied by that factor (the direction of
    the full gradient is kept, only its length shrinks). Returns the norm BEFORE clipping
    (what training logs plot). A non-finite norm is returned as is, gradients untouched.
    """
    if not max_norm > 0:
        raise ValueError(f"max_norm must be > 0, got {max_norm!r}")
    norm = grad_norm(grads)
    coef = clip_coefficient(norm, max_norm)
    if coef is not None:
        for g in flatten_params(grads).values():
            g *= coef
    return norm


def clip_coefficient(norm: float, max_norm: float) -> float | None:
    """clip_grad_norm's factor for gradients of global norm `norm`: max_norm / (norm + 1e-6)
    when that is < 1, else None (no scaling). For adamw_update(grad_scale=...)."""
    coef = max_norm / (norm + 1e-6)
    return coef if coef < 1.0 else None


def get_lr(step: int, lr: float, min_lr: float, warmup_iters: int, decay_iters: int) -> float:
    """Learning rate at optimizer step `step` (0-based), nanoGPT's schedule:

        step < warmup_iters:          lr * (step + 1) / (warmup_iters + 1)     linear warmup
        step >= decay_iters:          min_lr
        otherwise:                    min_lr + 0.5 (1 + cos(pi r)) (lr - min_lr),
                                      r = (step - warmup_iters) / (decay_iters - warmup_iters)

    Cosine decay from lr to min_lr between the end of warmup and decay_iters, then flat.
    With min_lr == lr and warmup_iters == 0 the rate is constant.
    """
    if step < warmup_iters:
        return lr * (step + 1) / (warmup_iters + 1)
    if step >= decay_iters:
        return min_lr
    ratio = (step - warmup_iters) / (decay_iters - warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)
