"""Activation patching: which activations carry the difference between a clean and a corrupted
input (Meng et al. 2022; Wang et al. 2022), exactly (patch_sweep: one forward pass per patched
activation, TransformerLens' patching.get_act_patch_*) or to first order (attribution_patch:
two forward passes and one backward, Nanda 2023).

Both run numpy_gpt2.forward with hooks= ({name: fn}); the gradients at hook points come from
the readable backward functions (numpy_gpt2.layers_backward) started from the metric's
dmetric/dlogits. Nothing here changes the weights or the caller's arrays. See docs/interp.md.
"""

from __future__ import annotations

import numpy as np

from numpy_gpt2.checks import check_forward_tokens
from numpy_gpt2.layers import layer_norm, transformer_block
from numpy_gpt2.layers_backward import layer_norm_backward, transformer_block_backward
from numpy_gpt2.model import forward

# point -> hook point name in block i; the grid's second axis
POINTS = {"resid_pre": ("h.{i}.resid_pre", "position"), "attn_out": ("h.{i}.attn", "position"),
          "mlp_out": ("h.{i}.mlp.c_proj", "position"), "z": ("h.{i}.attn.z", "head")}


def _check(params, config, clean_tokens, corrupted_tokens, metric, point):
    if point not in POINTS:
        raise ValueError(f"point must be one of {', '.join(POINTS)}, got {point!r}")
    if not callable(metric):
        raise ValueError(f"metric must be a function of the logits, got {metric!r}")
    checked = []
    for name, tokens in (("clean_tokens", clean_tokens), ("corrupted_tokens", corrupted_tokens)):
        try:
            checked.append(np.asarray(check_forward_tokens(tokens, config, None)))
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
    clean, corrupted = checked
    if clean.shape != corrupted.shape:
        raise ValueError(f"clean_tokens and corrupted_tokens must have one shape, got "
                         f"{clean.shape} and {corrupted.shape}")
    return clean, corrupted


def _logits(params, config, tokens, hooks=None):
    """forward's logits (with the unembedding bias of processed weights, lm_head.bias)."""
    return forward(params, config, tokens, hooks=hooks or None)


def _value(out):
    """A metric's value: out itself, or out[0] for a (value, gradient) metric."""
    value = out[0] if isinstance(out, tuple) else out
    value = np.asarray(value)
    if value.shape != ():
        raise ValueError(f"metric must return a scalar (or (scalar, dlogits)), got shape {value.shape}")
    return float(value)


def _cache(params, config, tokens, names):
    """One forward pass keeping copies of the named hook points' values."""
    kept = {}

    def keep(name, value):
        kept[name] = np.array(value)

    _logits(params, config, tokens, {name: keep for name in names})
    return kept


def patch_sweep(params, config, clean_tokens, corrupted_tokens, metric, point="resid_pre"):
    """Run the corrupted tokens once per activation, with that one activation replaced by its
    value on the clean tokens, and return metric(patched logits) in a grid:

        point "resid_pre", "attn_out", "mlp_out": (n_layer, T), block i's input residual
            stream / attention output / MLP output at one position (all batch rows)
        point "z": (n_layer, n_head), one head's z = softmax(q k^T) v at every position

    (TransformerLens' get_act_patch_resid_pre, _attn_out, _mlp_out, _attn_head_out_all_pos).
    tokens: (T,) or (B, T), the same shape; metric(logits) -> a float (a (value, dlogits)
    tuple is accepted: its value is used). Raises ValueError for bad arguments, before any work.
    """
    clean, corrupted = _check(params, config, clean_tokens, corrupted_tokens, metric, point)
    template, axis = POINTS[point]
    names = [template.format(i=i) for i in range(config.n_layer)]
    source = _cache(params, config, clean, names)
    width = clean.shape[-1] if axis == "position" else config.n_head
    grid = np.empty((config.n_layer, width))
    for i, name in enumerate(names):
        for j in range(width):
            def patch(_, value, j=j, name=name):
                value = np.array(value)
                if axis == "position":
                    value[..., j, :] = source[name][..., j, :]
                else:  # z: (..., H, T, D)
                    value[..., j, :, :] = source[name][..., j, :, :]
                return value
            grid[i, j] = _value(metric(_logits(params, config, corrupted, {name: patch})))
    return grid


def _point_gradients(params, config, tokens, dlogits):
    """d(metric)/d(activation) at every patching point, from d(metric)/d(logits): the readable
    backward pass (numpy_gpt2.backward's reference path) started from dlogits instead of the
    loss's. tokens (B, T); returns {hook point name: (B, T, E) or z's (B, H, T, D)}."""
    eps, H = config.layer_norm_epsilon, config.n_head
    wte, wpe = params["wte"]["weight"], params["wpe"]["weight"]
    head = params["lm_head"]["weight"] if "lm_head" in params else wte
    x = wte[tokens] + wpe[:tokens.shape[1]]
    inputs = []
    for i, block in enumerate(params["h"]):
        inputs.append(x)
        x = transformer_block(x, block, H, eps, **config.block_options(i))
    dx, _ = layer_norm_backward(dlogits @ head, x, params["ln_f"]["weight"], eps)
    grads = {}
    for i in reversed(range(config.n_layer)):
        seen = {}
        dx, _ = transformer_block_backward(dx, inputs[i], params["h"][i], H, eps,
                                           record=lambda name, g: seen.__setitem__(name, g),
                                           **config.block_options(i))
        grads[f"h.{i}.resid_pre"] = dx
        grads[f"h.{i}.attn"] = seen["attn"]
        grads[f"h.{i}.mlp.c_proj"] = seen["mlp.c_proj"]
        dmerged = seen["attn"] @ params["h"][i]["attn"]["c_proj"]["weight"].T  # (B, T, E)
        B, T, E = dmerged.shape
        grads[f"h.{i}.attn.z"] = dmerged.reshape(B, T, H, E // H).transpose(0, 2, 1, 3)
    return grads


def attribution_patch(params, config, clean_tokens, corrupted_tokens, metric, point="resid_pre"):
    """Attribution patching: patch_sweep's grid to first order, from one clean and one
    corrupted forward pass and one backward pass of the metric on the corrupted run:

        grid[i, j] = sum over the patched entries of (clean - corrupted) * dmetric/dactivation

    (the gradient at the corrupted activations). metric(logits) -> (value, dmetric/dlogits)
    with dlogits of the logits' shape. Exact when the metric is linear in the activation;
    tested against finite differences and patch_sweep. Grid shapes, points and tokens as in
    patch_sweep. Raises ValueError for bad arguments, before any work.
    """
    clean, corrupted = _check(params, config, clean_tokens, corrupted_tokens, metric, point)
    template, axis = POINTS[point]
    names = [template.format(i=i) for i in range(config.n_layer)]
    source = _cache(params, config, clean, names)
    target = {}

    def keep(name, value):
        target[name] = np.array(value)

    logits = _logits(params, config, corrupted, {name: keep for name in names})
    out = metric(logits)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise ValueError("metric must return (value, dmetric/dlogits) for attribution_patch")
    dlogits = np.asarray(out[1], dtype=logits.dtype)
    if dlogits.shape != logits.shape:
        raise ValueError(f"metric's dmetric/dlogits must have the logits' shape {logits.shape}, "
                         f"got {dlogits.shape}")
    batched = corrupted.ndim == 2
    grads = _point_gradients(params, config, corrupted if batched else corrupted[None],
                             dlogits if batched else dlogits[None])
    grid = []
    for name in names:
        g = grads[name] if batched else grads[name][0]
        product = (source[name] - target[name]) * g
        if axis == "position":  # (..., T, E) -> (T,)
            grid.append(product.reshape(-1, *product.shape[-2:]).sum(axis=(0, 2)))
        else:  # (..., H, T, D) -> (H,)
            grid.append(product.reshape(-1, *product.shape[-3:]).sum(axis=(0, 2, 3)))
    return np.stack(grid)
