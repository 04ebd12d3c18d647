"""The layer tests' shared oracle tools: transformers' GPT-2 modules loaded with our weights,
random blocks and inputs, hypothesis strategies, and the per-layer tolerance check."""

from __future__ import annotations

import math

import numpy as np
import torch
import transformers
from hypothesis import strategies as st

from helpers.tolerances import LAYER_ATOL as ATOL, LAYER_RTOL as RTOL

DTYPES = [np.float32, np.float64]
TORCH = {np.float32: torch.float32, np.float64: torch.float64}

HEAD_SIZES = [8, 16, 24, 40, 64]


def assert_close(ours, ref, dtype, what=""):
    """ours (numpy) vs ref (torch or numpy), same dtype, within the module tolerance."""
    ref = ref.detach().numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref)
    assert ours.dtype == dtype, f"{what}: dtype {ours.dtype}, expected {np.dtype(dtype)}"
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} vs oracle {ref.shape}"
    err = float(np.max(np.abs(ours.astype(np.float64) - ref.astype(np.float64))))
    bound = RTOL[dtype] * float(np.max(np.abs(ref))) + ATOL[dtype]
    assert err <= bound, f"{what}: max|ours - oracle| = {err:.3g} > {bound:.3g} ({np.dtype(dtype)})"
    return err


def t(a):
    return torch.from_numpy(np.ascontiguousarray(a))


def gpt2_config(n_embd, n_head, n_ctx=32):
    cfg = transformers.GPT2Config(n_embd=n_embd, n_head=n_head, n_layer=1, n_positions=n_ctx,
                                  vocab_size=10, activation_function="gelu_new",
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                  layer_norm_epsilon=1e-5)
    cfg._attn_implementation = "eager"  # the plain matmul-softmax-matmul path, causal via its mask buffer
    return cfg


def normal(rng, shape, std, dtype, mean=0.0):
    return (rng.standard_normal(shape) * std + mean).astype(dtype)


def random_block(rng, E, dtype, w_scale=1.0):
    """One GPT-2 block's weights (our nested layout), scaled by w_scale."""
    def lin(n_in, n_out, gain):
        return {"weight": normal(rng, (n_in, n_out), gain * w_scale / math.sqrt(n_in), dtype),
                "bias": normal(rng, (n_out,), 0.2 * w_scale, dtype)}

    def ln():
        return {"weight": normal(rng, (E,), 0.2, dtype, mean=1.0), "bias": normal(rng, (E,), 0.2, dtype)}

    return {"ln_1": ln(), "attn": {"c_attn": lin(E, 3 * E, 2.0), "c_proj": lin(E, E, 1.0)},
            "ln_2": ln(), "mlp": {"c_fc": lin(E, 4 * E, 1.5), "c_proj": lin(4 * E, E, 1.0)}}


def load_into(module, weights: dict, prefix=""):
    """Copy our nested numpy weights into a torch module with the same parameter names."""
    flat = {}

    def walk(d, p):
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, p + k + ".")
            else:
                flat[p + k] = t(v)

    walk(weights, prefix)
    module.load_state_dict(flat, strict=True)  # strict: every parameter of the oracle is set
    return module.eval()


seeds = st.integers(0, 2**32 - 1)
shapes = st.tuples(st.integers(1, 3), st.integers(1, 12))  # (batch, length)
SCALES = [(0.3, 0.5), (1.0, 1.0), (1.5, 1.5), (2.0, 2.0)]  # (weight scale, input scale)
