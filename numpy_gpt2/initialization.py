"""GPT-2's initialisation of a new model's weights (training from scratch).

As Hugging Face's GPT2PreTrainedModel._init_weights and nanoGPT's GPT._init_weights (they agree):

    wte, wpe, every c_attn / c_fc weight          ~ N(0, 0.02^2)
    attn.c_proj and mlp.c_proj weights            ~ N(0, (0.02 / sqrt(2 n_layer))^2)
    every bias                                    = 0
    LayerNorm weight (gain) / bias (shift)        = 1 / 0

The c_proj scaling is GPT-2's "modified initialization which accounts for the accumulation
on the residual path with model depth" (Radford et al. 2019, section 2.3): each block adds
two c_proj outputs to the residual stream, so 2 n_layer random terms add up, and scaling
each by 1/sqrt(2 n_layer) keeps the residual stream's variance independent of depth.
(Position embeddings get the same 0.02 as everything else, as in both references.)
"""

from __future__ import annotations

import math

import numpy as np

from numpy_gpt2.io.checkpoint import expected_shapes
from numpy_gpt2.checks import check_seed
from numpy_gpt2.config import GPT2Config
from numpy_gpt2.params import nest_params

INIT_STD = 0.02  # GPT-2's initializer_range


def init_std(key: str, n_layer: int) -> float | None:
    """Standard deviation of the normal init of checkpoint key `key`, or None for the
    parameters that start at a constant (biases and LayerNorm)."""
    if key.endswith(".bias") or ".ln_" in key or key.startswith("ln_f"):
        return None
    if key.endswith("c_proj.weight"):
        return INIT_STD / math.sqrt(2 * n_layer)
    return INIT_STD


def init_params(config: GPT2Config, seed: int = 0, dtype=np.float32) -> dict:
    """New GPT-2 weights for config, drawn with np.random.default_rng(seed) (see module doc).

    Returns the nested weight dict, keys as a checkpoint's (tied head: no lm_head unless
    config.tie_word_embeddings is False). The normal draws are float32 in checkpoint-key
    order and then cast, so float32 and float64 models from one seed hold the same values.
    """
    rng = np.random.default_rng(check_seed(seed))  # -1: a ValueError naming seed
    shapes = expected_shapes(config)
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (config.vocab_size, config.n_embd)
    flat = {}
    for key, shape in shapes.items():
        std = init_std(key, config.n_layer)
        if std is not None:
            value = rng.standard_normal(shape, dtype=np.float32)
            value *= np.float32(std)
            flat[key] = value.astype(dtype, copy=False)
        elif key.endswith(".weight"):  # LayerNorm gain
            flat[key] = np.ones(shape, dtype)
        else:
            flat[key] = np.zeros(shape, dtype)
    return nest_params(flat)
