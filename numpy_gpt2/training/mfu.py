"""Model FLOPs utilisation (MFU): the training throughput as a fraction of the processor's peak.

    flops_per_token = 6 N + 12 n_layer n_embd T           (nanoGPT's model.estimate_mfu, from
                                                           the PaLM paper, appendix B)
    MFU = flops_per_token * tokens/s / (ranks * peak FLOP/s per rank)

N counts the parameters without the position embeddings (as nanoGPT's get_num_params; a
model without biases has none: its constant zero biases are not counted); 6N
is the forward (2N) and backward (4N) matrix multiplies per token, 12 n_layer n_embd T the
attention scores and their weighted sums at context T. The peak is given (--peak-flops) or
measured once: the best FLOP/s of a few square matrix multiplies in the training dtype,
with the BLAS threads this process uses.
"""

from __future__ import annotations

import time

import numpy as np

from numpy_gpt2.params import flatten_params, frozen_keys


def flops_per_token(params: dict, config, block_size: int) -> float:
    """Training FLOPs per token (forward + backward) of the model at context block_size."""
    skip = set(frozen_keys(params, config))
    n = sum(p.size for key, p in flatten_params(params).items()
            if not key.startswith("wpe.") and key not in skip)
    return 6.0 * n + 12.0 * config.n_layer * config.n_embd * block_size


def measure_peak_flops(dtype="float32", size: int = 1024, repeats: int = 5) -> float:
    """FLOP/s of the fastest of `repeats` (size x size) @ (size x size) products (2 size^3
    FLOPs each) in dtype: what this process's BLAS reaches on the operation that dominates a
    training step."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size)).astype(dtype)
    b = rng.standard_normal((size, size)).astype(dtype)
    a @ b  # warm-up: thread start, page faults
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2.0 * size ** 3 / best


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return max(time.perf_counter() - t0, 1e-9)


def mfu(flops_token: float, tokens_per_s: float, peak_flops: float, ranks: int = 1) -> float:
    """Model FLOPs utilisation: flops_token * tokens_per_s / (ranks * peak_flops)."""
    return flops_token * tokens_per_s / (ranks * peak_flops)
