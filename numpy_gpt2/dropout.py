"""Dropout for training, where GPT-2 (and nanoGPT, and transformers' GPT2Model) place it:

    x = drop(wte[tokens] + wpe)                       the embeddings         (embd_pdrop)
    attention: out = drop(softmax(q k^T / sqrt(D))) v  the probabilities      (attn_pdrop)
    x = x + drop(c_proj(attention)),  x = x + drop(c_proj(gelu(c_fc(...))))  (resid_pdrop)

drop(a) = a * m / (1 - p), m_i ~ Bernoulli(1 - p) (inverted dropout: the expected value is
unchanged, so evaluation and generation use the weights as they are, without dropout).

Masks come from a seed, one per micro-batch (scripts/train.py draws it from the run's RNG,
so a run is reproducible and resumes exactly), and a name per place, so the backward pass
regenerates exactly the forward's masks instead of keeping (B, H, T, T) of them:

    Dropout(p, seed).mask(name, shape, dtype)     name: a tuple of ints (see below)

    (0,)                    the embeddings, (B, T, E)
    (1, layer, 0)           the attention branch after c_proj, (B*T, E)
    (1, layer, 1)           the MLP branch after c_proj, (B*T, E)
    (1, layer, 2, t0)       the attention probabilities of the query block starting at t0,
                            (B, H, n, t1): queries t0 .. t1-1 against keys 0 .. t1-1
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Dropout:
    """Dropout with probability p (0 <= p < 1) and the micro-batch's seed (an int >= 0).
    ValueError for anything else."""

    p: float
    seed: int

    def __post_init__(self):
        if not 0 <= self.p < 1:
            raise ValueError(f"dropout probability {self.p!r}: expected a number in [0, 1)")
        if int(self.seed) != self.seed or self.seed < 0:
            raise ValueError(f"dropout seed {self.seed!r}: expected an integer >= 0")

    def mask(self, name: tuple, shape, dtype) -> np.ndarray:
        """The scaled mask m / (1 - p) for the place `name` (see module doc): values 0 and
        1 / (1 - p) in dtype, drawn from default_rng([seed, *name]) (the same every call)."""
        rng = np.random.default_rng([int(self.seed), *name])
        keep = rng.random(shape, dtype=np.float32) >= self.p
        return keep.astype(dtype) * np.asarray(1.0 / (1.0 - self.p), dtype=dtype)


def apply(dropout, name: tuple, a: np.ndarray) -> np.ndarray | None:
    """a *= the mask for name, in place; returns the mask (None, a untouched, when dropout is
    None or p == 0)."""
    if dropout is None or dropout.p == 0:
        return None
    m = dropout.mask(name, a.shape, a.dtype)
    a *= m
    return m
