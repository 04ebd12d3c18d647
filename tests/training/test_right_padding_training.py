"""Training needs no attention mask: right padding with ignore_index targets is exact.

In a causal model position t attends to positions <= t only, so padding appended AFTER a row's
real tokens cannot reach any real position, and its targets set to ignore_index are not scored:
the loss and every gradient of a right-padded batch equal those of its rows run one by one,
combined as the batch mean over the real targets. Oracle: loss_and_grads of each row alone
(float64; tolerance 1e-12 relative to the largest gradient entry).
"""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import numpy_gpt2

CONFIG = numpy_gpt2.GPT2Config(n_layer=2, n_head=2, n_embd=16, n_ctx=24, vocab_size=50)
PARAMS = numpy_gpt2.init_params(CONFIG, seed=3, dtype=np.float64)


@given(lengths=st.lists(st.integers(2, 24), min_size=1, max_size=4), pad=st.integers(0, 49),
       seed=st.integers(0, 1000))
def test_right_padded_batch_equals_its_rows_alone(lengths, pad, seed):
    rng = np.random.default_rng(seed)
    rows = [rng.integers(0, 50, size=n) for n in lengths]
    L = max(lengths)
    tokens = np.full((len(rows), L), pad)  # any id: padding is never seen by a real position
    targets = np.full((len(rows), L), -100)
    for b, row in enumerate(rows):
        tokens[b, :len(row)] = row
        targets[b, :len(row) - 1] = row[1:]
    loss, grads = numpy_gpt2.loss_and_grads(PARAMS, CONFIG, tokens, targets)

    counts = np.array([len(r) - 1 for r in rows], dtype=float)
    weights = counts / counts.sum()  # the batch mean is over all real targets
    alone = [numpy_gpt2.loss_and_grads(PARAMS, CONFIG, r[:-1], r[1:]) for r in rows]
    assert abs(loss - sum(w * l for w, (l, _) in zip(weights, alone))) <= 1e-12 * abs(loss)
    flat = numpy_gpt2.flatten_params(grads)
    for key, g in flat.items():
        expected = sum(w * numpy_gpt2.flatten_params(gr)[key] for w, (_, gr) in zip(weights, alone))
        scale = max(np.abs(expected).max(), 1e-300)
        assert np.abs(g - expected).max() <= 1e-12 * scale, key
