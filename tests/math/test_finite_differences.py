"""An oracle-free proof of loss_and_grads: central finite differences of the loss.

No autograd here (torch only draws the random weights, as tests/checkpoints.py does for
every test): the loss is recomputed from numpy_gpt2.forward (the readable layers, whose
forward is tested against transformers in tests/test_layers.py and tests/test_model.py) and
a cross-entropy written out below, with one weight moved by +-h and +-2h. In float64 on a
tiny model, the five-point stencil

    dL/dw ~ (8 (L(w + h) - L(w - h)) - (L(w + 2h) - L(w - 2h))) / (12 h)

is accurate to O(h^4) truncation plus O(eps |L| / h) rounding: ~1e-11 at h = 1e-3, so the
comparison can be tight (FD_ATOL below) while any wrong gradient term shows up at >= 1e-4.

Every parameter tensor is sampled: random entries of each, plus the entries that exercise
the easy-to-miss paths: wpe rows the sequence uses (rows past T must get exactly 0), wte rows
used by the tokens (embedding + output head) and rows used only by the tied output head, the
LayerNorm weights and biases, every bias. Tied and untied heads; the fast path and
reference=True; a batch with repeated token ids and ignored targets.
"""

from __future__ import annotations

import numpy as np
import pytest

import numpy_gpt2
from helpers.grad_oracle import random_model
from numpy_gpt2 import flatten_params

H = 1e-3
# |FD - ours| <= FD_ATOL + FD_RTOL * |ours|. Measured worst |FD - ours| ~1e-10 on entries whose
# gradient is O(1) (the stencil's h^4 term plus rounding at |L| ~ 5); a missing term of
# any layer's backward is > 1e-4 on some sampled entry (tested by mutation during development).
FD_ATOL, FD_RTOL = 2e-9, 1e-7
SAMPLES = 4  # random entries per parameter tensor (plus the chosen rows below)

SHAPE = dict(n_layer=2, n_head=2, n_embd=8, n_ctx=10, vocab_size=13)


def loss_of(params, config, tokens, targets, ignore_index=-100):
    """The mean cross-entropy over kept targets, from the forward pass alone (float64)."""
    logits = numpy_gpt2.forward(params, config, tokens, reference=True)
    z = logits - logits.max(axis=-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    keep = targets != ignore_index
    return -np.take_along_axis(logp, np.where(keep, targets, 0)[..., None], axis=-1)[..., 0][keep].mean()


def finite_difference(params, config, tokens, targets, array, index):
    """dL/d array[index] by the five-point central stencil (array is moved and restored)."""
    original = array[index]

    def at(delta):
        array[index] = original + delta
        return loss_of(params, config, tokens, targets)

    try:
        return (8 * (at(H) - at(-H)) - (at(2 * H) - at(-2 * H))) / (12 * H)
    finally:
        array[index] = original


def entries_to_check(key, shape, tokens, T, rng):
    """Indices of `key`'s tensor to check: SAMPLES random ones, plus chosen rows."""
    picks = [tuple(int(rng.integers(0, n)) for n in shape) for _ in range(SAMPLES)]
    if key == "wpe.weight":  # rows 0..T-1 are used, the last one too
        picks = [(int(rng.integers(0, T)), int(rng.integers(0, shape[1]))) for _ in range(SAMPLES)]
        picks += [(T - 1, 0), (T, 1), (shape[0] - 1, 2)]  # and two unused rows: gradient 0
    if key in ("wte.weight", "lm_head.weight"):
        used = np.unique(tokens)
        unused = np.setdiff1d(np.arange(shape[0]), used)
        picks += [(int(r), int(rng.integers(0, shape[1]))) for r in rng.choice(used, 3)]
        picks += [(int(r), int(rng.integers(0, shape[1]))) for r in rng.choice(unused, 3)]
    return picks


@pytest.mark.parametrize("untied", [False, True], ids=["tied", "untied"])
@pytest.mark.parametrize("reference", [False, True], ids=["fast", "reference"])
def test_gradients_equal_finite_differences(reference, untied):
    params, config, _ = random_model(np.float64, seed=11, untied=untied, scale=0.7, **SHAPE)
    rng = np.random.default_rng(3)
    T = 7
    tokens = rng.integers(0, 6, size=(2, T))  # ids 0..5 only: repeated ids, and wte rows 6..12
    tokens[1, 3] = tokens[0, 5]               # are reached by the tied output head alone
    targets = rng.integers(0, config.vocab_size, size=(2, T))
    targets[0, 2] = targets[1, 6] = -100
    loss, grads = numpy_gpt2.loss_and_grads(params, config, tokens, targets, reference=reference)
    assert loss == pytest.approx(loss_of(params, config, tokens, targets), rel=1e-13)

    flat_params, flat_grads = flatten_params(params), flatten_params(grads)
    assert sorted(flat_grads) == sorted(flat_params)
    worst, checked = 0.0, 0
    for key, array in flat_params.items():
        for index in entries_to_check(key, array.shape, tokens, T, rng):
            fd = finite_difference(params, config, tokens, targets, array, index)
            ours = flat_grads[key][index]
            assert abs(fd - ours) <= FD_ATOL + FD_RTOL * abs(ours), \
                f"{key}{list(index)}: loss_and_grads {ours:.10g}, finite difference {fd:.10g}"
            worst, checked = max(worst, abs(fd - ours)), checked + 1
        if key == "wpe.weight":
            assert not flat_grads[key][T:].any()  # positions the sequence does not reach
        if key == "wte.weight" and untied:
            assert not flat_grads[key][np.setdiff1d(np.arange(config.vocab_size), tokens)].any()
    print(f"\n{'reference' if reference else 'fast'} {'untied' if untied else 'tied'}: "
          f"{checked} entries of {len(flat_params)} tensors, worst |FD - ours| = {worst:.2g}")
    assert checked >= SAMPLES * len(flat_params)
