"""A small model in any GPT2Config variant, as numpy weights + our config + transformers' model."""

import math

import numpy as np
import torch

from helpers.checkpoints import make_config, random_state_dict
from helpers.grad_oracle import torch_model
from numpy_gpt2.config import config_from_dict
from numpy_gpt2.params import nest_params

TOKENS = np.array([[5, 17, 2, 33, 8, 0, 21, 36, 12, 3], [1, 9, 30, 7, 7, 25, 14, 2, 19, 4]])
TARGETS = np.roll(TOKENS, -1, axis=1)


def variant_model(dtype=np.float64, seed=0, n_inner=None, no_bias=False, **options):
    """(params, our config read from the transformers config's dict, transformers model)."""
    hf_config = make_config(n_layer=3, n_head=2, n_embd=16, n_ctx=16, vocab_size=37)
    for key, value in options.items():
        setattr(hf_config, key, value)
    hf_config.n_inner = n_inner
    hf_config._attn_implementation = "eager"
    sd = random_state_dict(hf_config, seed=seed)
    if n_inner is not None:
        g = torch.Generator().manual_seed(seed + 1)
        E = hf_config.n_embd
        for i in range(hf_config.n_layer):
            sd[f"h.{i}.mlp.c_fc.weight"] = torch.randn(E, n_inner, generator=g) * 1.5 / math.sqrt(E)
            sd[f"h.{i}.mlp.c_fc.bias"] = torch.randn(n_inner, generator=g) * 0.2
            sd[f"h.{i}.mlp.c_proj.weight"] = torch.randn(n_inner, E, generator=g) / math.sqrt(n_inner)
    if no_bias:
        sd = {k: torch.zeros_like(v) if k.endswith(".bias") else v for k, v in sd.items()}
    params = nest_params({k: v.numpy().astype(dtype) for k, v in sd.items()})
    config = config_from_dict(hf_config.to_dict())
    return params, config, torch_model(params, hf_config, dtype)
