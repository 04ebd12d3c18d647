"""Dropout (numpy_gpt2.dropout, loss_and_grads(dropout=...)): with the same masks, the loss and
every gradient equal autograd's through transformers' GPT2LMHeadModel, whose four dropout
modules are replaced by multiplications with those masks; p = 0 changes nothing; the masks
are reproducible from the seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers.grad_oracle import assert_grad_close, random_model, t, torch_loss_and_grads, torch_model
from numpy_gpt2 import loss_and_grads
from numpy_gpt2.dropout import Dropout
from numpy_gpt2.fast.forward import QUERY_BLOCK
from numpy_gpt2.params import flatten_params
from helpers.oracle_activations import one_torch_thread  # noqa: F401  (autouse fixture)


class Mask(torch.nn.Module):
    """Stands in for an nn.Dropout: multiplies by a given (scaled) mask."""

    def __init__(self, mask):
        super().__init__()
        self.mask = t(mask)

    def forward(self, x):
        return x * self.mask.reshape(x.shape)


def attention_mask(dropout, layer, B, H, T, dtype):
    """The (B, H, T, T) probability mask the fast path draws block by block (keys past a
    query are masked by causality anyway; their entries here are 0)."""
    full = np.zeros((B, H, T, T), dtype)
    for t0 in range(0, T, QUERY_BLOCK):
        t1 = min(t0 + QUERY_BLOCK, T)
        full[:, :, t0:t1, :t1] = dropout.mask((1, layer, 2, t0), (B, H, t1 - t0, t1), dtype)
    return full


def with_masks(model, dropout, B, T, config, dtype):
    tr = model.transformer
    tr.drop = Mask(dropout.mask((0,), (B, T, config.n_embd), dtype))
    for i, block in enumerate(tr.h):
        block.attn.attn_dropout = Mask(attention_mask(dropout, i, B, config.n_head, T, dtype))
        block.attn.resid_dropout = Mask(dropout.mask((1, i, 0), (B * T, config.n_embd), dtype))
        block.mlp.dropout = Mask(dropout.mask((1, i, 1), (B * T, config.n_embd), dtype))
    return model


@settings(max_examples=8)
@given(seed=st.integers(0, 2**31), p=st.sampled_from([0.1, 0.5]), B=st.integers(1, 2),
       T=st.sampled_from([5, QUERY_BLOCK + 7]), dtype=st.sampled_from([np.float32, np.float64]))
def test_gradients_with_dropout_equal_autograd_with_the_same_masks(seed, p, B, T, dtype):
    params, config, hf_config = random_model(dtype, seed=seed % 1000, n_layer=2, n_head=2, n_embd=16,
                                             n_ctx=QUERY_BLOCK + 8, vocab_size=50, head_scale=0.1)
    rng = np.random.default_rng(seed)
    tokens, targets = rng.integers(0, 50, (B, T)), rng.integers(0, 50, (B, T))
    dropout = Dropout(p, seed)
    loss, grads = loss_and_grads(params, config, tokens, targets, dropout=dropout)
    model = with_masks(torch_model(params, hf_config, dtype), dropout, B, T, config, dtype)
    ref_loss, ref_grads, _ = torch_loss_and_grads(model, tokens, targets)
    rtol = 1e-4 if dtype == np.float32 else 1e-10
    assert loss == pytest.approx(ref_loss, rel=rtol)
    ref_grads.pop("lm_head.weight", None)  # tied: the same tensor as wte
    for key, g in flatten_params(grads).items():
        assert_grad_close(g, ref_grads[key], dtype, rtol, what=key)
    # The masks really changed something: without dropout the loss differs.
    assert loss_and_grads(params, config, tokens, targets)[0] != pytest.approx(loss, rel=1e-6)


def test_p_zero_is_exactly_no_dropout():
    params, config, _ = random_model(np.float32, n_layer=2, n_head=2, n_embd=16, n_ctx=16, vocab_size=50)
    tokens = np.arange(24).reshape(2, 12) % 50
    loss, grads = loss_and_grads(params, config, tokens, tokens)
    loss0, grads0 = loss_and_grads(params, config, tokens, tokens, dropout=Dropout(0.0, 7))
    assert loss == loss0
    for key, g in flatten_params(grads).items():
        np.testing.assert_array_equal(g, flatten_params(grads0)[key], err_msg=key)


def test_masks_come_from_the_seed_and_name():
    d = Dropout(0.25, 11)
    a = d.mask((1, 0, 2, 64), (3, 100), np.float32)
    np.testing.assert_array_equal(a, Dropout(0.25, 11).mask((1, 0, 2, 64), (3, 100), np.float32))
    assert not np.array_equal(a, d.mask((1, 0, 2, 0), (3, 100), np.float32))
    assert set(np.unique(a)) == {0.0, np.float32(1 / 0.75)}
    assert abs((a == 0).mean() - 0.25) < 0.05
    for bad in [(1.0, 0), (-0.1, 0), (0.5, -1), (0.5, 1.5)]:
        with pytest.raises(ValueError, match="expected"):
            Dropout(*bad)
    with pytest.raises(ValueError, match="fast path only"):
        params, config, _ = random_model(np.float32, n_layer=1, n_head=2, n_embd=8, n_ctx=8, vocab_size=20)
        loss_and_grads(params, config, [1, 2], [2, 3], reference=True, dropout=Dropout(0.1, 0))
