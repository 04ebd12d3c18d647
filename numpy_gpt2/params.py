"""The parameter dict: GPT-2's weights as nested dicts and lists of NumPy arrays.

    params["h"][3]["attn"]["c_attn"]["weight"]   is the checkpoint's "h.3.attn.c_attn.weight"

The nesting mirrors the checkpoint's key names, so the layers take a module's weights with
`**block["attn"]`; gradient dicts and the optimizer's moments have the same structure
("grads mirror params"). flatten_params / nest_params convert to and from the flat
{checkpoint key: array} dict that files store.
"""

from __future__ import annotations

import numpy as np


def nest_params(flat: dict[str, np.ndarray]) -> dict:
    """{"h.0.ln_1.weight": a, "wte.weight": b} -> {"h": [{"ln_1": {"weight": a}}], "wte": {"weight": b}}."""
    params: dict = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = params
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    if "h" in params:  # the layers {"0": ..., "1": ...} become a list, so params["h"][i] works
        params["h"] = [params["h"][str(i)] for i in range(len(params["h"]))]
    return params


def flatten_params(params: dict, prefix: str = "") -> dict[str, np.ndarray]:
    """Inverse of nest_params: the nested weight dict -> {checkpoint key: array}."""
    flat = {}
    items = enumerate(params) if isinstance(params, list) else params.items()
    for k, v in items:
        key = f"{prefix}{k}"
        if isinstance(v, (dict, list)):
            flat.update(flatten_params(v, key + "."))
        else:
            flat[key] = v
    return flat


def is_frozen(key: str, config) -> bool:
    """True when checkpoint key `key` holds a constant, not a parameter: a Linear or LayerNorm
    bias ("h.{i}.ln_1.bias", "h.{i}.attn.c_attn.bias", ..., "ln_f.bias") of a model without
    biases (config.bias False, nanoGPT model.py's bias=False). Such a bias is zero (the layers'
    equations stay GPT-2's, x @ W + 0)."""
    return not config.bias and key.endswith(".bias")


def frozen_keys(params: dict, config) -> list[str]:
    """The checkpoint keys of params that hold constants, not parameters (is_frozen): every
    bias of a model without biases, none otherwise. Their gradients are zeros
    (loss_and_grads) and training leaves them exactly as they are (optim.adamw_update's
    frozen=)."""
    return [key for key in flatten_params(params) if is_frozen(key, config)]
