"""token_nll and cross_entropy (numpy_gpt2.loss) take any leading shape and equal PyTorch's
cross-entropy; targets that do not fit the logits are a ValueError naming targets, never an
IndexError or a silently wrong loss (NumPy reads a negative index from the end)."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from numpy_gpt2.loss import cross_entropy, masked_cross_entropy, token_nll


@settings(max_examples=20, deadline=None)
@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=3), V=st.integers(2, 9),
       seed=st.integers(0, 2**31 - 1))
def test_token_nll_equals_torch(shape, V, seed):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, (*shape, V))
    targets = rng.integers(0, V, shape)
    expected = torch.nn.functional.cross_entropy(
        torch.tensor(logits).reshape(-1, V), torch.tensor(targets).reshape(-1), reduction="none")
    np.testing.assert_allclose(token_nll(logits, targets), expected.numpy().reshape(shape),
                               rtol=1e-12, atol=1e-12)
    assert cross_entropy(logits, targets) == pytest.approx(float(expected.mean()), rel=1e-12)


@pytest.mark.parametrize("targets, message", [
    (np.array([1, 2]), r"targets must be token ids of shape \(3,\) .*got int64 of shape \(2,\)"),
    (np.array([[1, 2, 3]]), r"of shape \(3,\) .*got int64 of shape \(1, 3\)"),
    (np.array([1.0, 2.0, 0.0]), r"got float64 of shape \(3,\)"),
    (np.array([1, -1, 2]), r"targets must be ids in \[0, 5\) \(V\), got -1"),
    (np.array([1, 5, 2]), r"targets must be ids in \[0, 5\) \(V\), got 5"),
])
def test_targets_that_do_not_fit_are_refused(targets, message):
    logits = np.zeros((3, 5))
    for loss in (token_nll, cross_entropy):
        with pytest.raises(ValueError, match=message):
            loss(logits, targets)


def test_masked_cross_entropy_still_skips_ignored_targets():
    """-100 (ignore_index) is dropped before token_nll sees the targets."""
    logits = np.random.default_rng(0).normal(size=(4, 6))
    targets = np.array([2, -100, 5, -100])
    expected = torch.nn.functional.cross_entropy(torch.tensor(logits), torch.tensor(targets))
    assert masked_cross_entropy(logits, targets) == pytest.approx(float(expected), rel=1e-12)
