"""Floating sums compared with a user's threshold: the answer must be the decimal one.

A float sum lands a few units in the last place either side of its exact value (0.5 + 0.3 is
0.7999999999999999), so a comparison with a threshold the user typed (top_p = 0.8) must not
depend on which side it rounded to. Two places compare such sums with a user's number:

- top-p: the smallest most-likely set whose probability mass reaches p. Distributions whose
  partial sums hit p exactly in decimal keep exactly that set, as transformers'
  TopPLogitsWarper does when p is moved off the boundary by less than any gap between partial
  sums (at the boundary itself it is decided by its own rounding: float64 keeps 3 tokens of
  [.5, .3, .1, .1] at p = 0.8).
- data.split_text: the first len * train_fraction characters, computed exactly (0.57 * 100 is
  56.99999999999999 in floats).
(clip_grad_norm scales when max_norm / (norm + 1e-6) < 1, exactly torch's clamp, which the
optimizer tests compare bit for bit; it is not a decimal threshold.)
"""

from __future__ import annotations

from decimal import Decimal

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from transformers import TopPLogitsWarper

from numpy_gpt2.training.data import split_text
from numpy_gpt2.generation.sampling import filter_logits, top_p_filter


def warper_keeps(logits, p):
    """The tokens transformers' TopPLogitsWarper keeps, computed in float64."""
    scores = torch.tensor(np.atleast_2d(logits), dtype=torch.float64)
    return np.isfinite(TopPLogitsWarper(top_p=float(p))(None, scores).numpy()).reshape(np.shape(logits))


def test_the_reported_case():
    logits = np.log([[0.5, 0.3, 0.1, 0.1]])
    np.testing.assert_array_equal(np.isfinite(top_p_filter(logits, 0.8)), [[1, 1, 0, 0]])
    np.testing.assert_array_equal(np.isfinite(filter_logits(logits, 1.0, top_p=0.8)), [[1, 1, 0, 0]])
    np.testing.assert_array_equal(warper_keeps(logits, 0.8 - 1e-6), [[1, 1, 0, 0]])
    # 0.1 + 0.2 = 0.30000000000000004 > 0.3: rounding up must not matter either
    logits = np.log([0.1, 0.2, 0.3, 0.4])
    np.testing.assert_array_equal(np.isfinite(top_p_filter(logits, 0.7)), [0, 0, 1, 1])
    np.testing.assert_array_equal(np.isfinite(top_p_filter(logits, 0.9)), [0, 1, 1, 1])


@st.composite
def decimal_distributions(draw):
    """(probabilities as Decimals with `digits` decimal places, all different, summing to
    exactly 1; their float64 logits, shifted; the scale 10**-digits)."""
    digits = draw(st.integers(1, 4), label="digits")
    total = 10 ** digits
    n = draw(st.integers(1, min(40, total - 1)), label="V - 1")
    cuts = draw(st.lists(st.integers(1, total - 1), min_size=n, max_size=n, unique=True), label="cuts")
    counts = np.diff([0, *sorted(cuts), total])
    assume(len(set(counts.tolist())) == len(counts))  # no ties: transformers keeps either of two
    probs = [Decimal(int(c)) / total for c in counts]
    shift = draw(st.sampled_from([0.0, 3.0, -7.5, 20.0]), label="shift")
    logits = np.log(np.array([float(q) for q in probs])) + shift
    return probs, logits, Decimal(1) / total


@given(dist=decimal_distributions(), data=st.data())
def test_top_p_where_a_partial_sum_equals_p_in_decimal(dist, data):
    probs, logits, step = dist
    order = sorted(range(len(probs)), key=lambda i: -probs[i])
    k = data.draw(st.integers(1, len(probs)), label="k")
    p = float(sum(probs[i] for i in order[:k]))  # exactly the mass of the k most likely, in decimal
    expected = np.zeros(len(probs), bool)
    expected[order[:k]] = True
    # transformers, with p moved below the boundary by less than any gap between partial sums
    # (each probability is at least `step`): the same k tokens, decided without rounding.
    np.testing.assert_array_equal(warper_keeps(logits, p - float(step) / 2), expected)
    np.testing.assert_array_equal(np.isfinite(top_p_filter(logits, p)), expected)
    np.testing.assert_array_equal(np.isfinite(filter_logits(logits, 1.0, top_p=p)), expected)
    if k < len(probs):  # just above the boundary: one more token, as transformers
        above = p + float(step) / 2
        np.testing.assert_array_equal(np.isfinite(top_p_filter(logits, above)),
                                      warper_keeps(logits, above))
        assert np.isfinite(top_p_filter(logits, above)).sum() == k + 1


@given(logits=st.lists(st.floats(-10, 10), min_size=2, max_size=60, unique=True),
       p=st.floats(0.001, 1.0))
def test_top_p_keeps_what_transformers_keeps(logits, p):
    """Random distributions (no decimal structure), wherever p is not within rounding of a
    partial sum (there transformers' answer is its rounding's), without ties (of two equally
    likely tokens, transformers keeps either; top_p_filter keeps both)."""
    logits = np.array(logits)
    assume(np.diff(np.sort(logits)).min() > 1e-6)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    cumulative = np.cumsum(np.sort(probs)[::-1])
    assume(np.abs(cumulative[:-1] - p).min() > 1e-9)
    np.testing.assert_array_equal(np.isfinite(top_p_filter(logits, p)), warper_keeps(logits, p))


@given(n=st.integers(1, 10**6), hundredths=st.integers(1, 99))
def test_split_text_cuts_at_the_decimal_fraction(n, hundredths):
    fraction = hundredths / 100
    cut = n * hundredths // 100  # floor(n * fraction), in integers
    assert split_text_cut(n, fraction) == cut


def split_text_cut(n, fraction):
    train, val = split_text("x" * n, fraction)
    assert len(train) + len(val) == n
    return len(train)


@pytest.mark.parametrize("n, fraction, cut", [(100, 0.57, 57), (100, 0.29, 29), (1000, 0.9, 900),
                                              (1_115_394, 0.9, 1_003_854)])
def test_split_text_known_cuts(n, fraction, cut):
    assert split_text_cut(n, fraction) == cut
