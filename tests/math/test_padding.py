"""Padding: forward's attention_mask and position_ids, and prompts of different lengths in generate.

Oracles: each row run ALONE (no padding at all), and transformers' GPT2LMHeadModel given the
same attention_mask and position_ids. Tolerances (absolute, logits of size ~20): float64 1e-11,
float32 2e-4 (the padded batch multiplies matrices of other shapes, so float32 rounding
differs); the readable path and the fast path both. Measured over 20 random batches of 4
rows: against each row alone 1.3e-5 (float32) and 2e-14 (float64); against transformers
3.2e-5 and 8.1e-14.
"""

import contextlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import numpy_gpt2
from helpers.checkpoints import reference_model
from helpers.generation_checkpoint import write_generation_checkpoint

N_CTX = 32
V = 97
from helpers.tolerances import PADDING_RTOL as TOL  # noqa: E402


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    directory = tmp_path_factory.mktemp("padding")
    write_generation_checkpoint(directory, n_ctx=N_CTX)
    return directory


@pytest.fixture(scope="module")
def models(ckpt):
    return {dtype: numpy_gpt2.load(ckpt, dtype) for dtype in (np.float32, np.float64)}


def left_pad(rows, extra=0, pad=0):
    """rows -> tokens (B, L), mask (B, L): each row right-aligned after its padding."""
    L = max(len(r) for r in rows) + extra
    tokens = np.full((len(rows), L), pad)
    mask = np.zeros((len(rows), L), np.int64)
    for b, r in enumerate(rows):
        tokens[b, L - len(r):] = r
        mask[b, L - len(r):] = 1
    return tokens, mask


rows_strategy = st.lists(st.lists(st.integers(0, V - 1), min_size=1, max_size=N_CTX - 4), min_size=1, max_size=4)


# --- forward ---------------------------------------------------------------------------------

@settings(max_examples=15)
@given(rows=rows_strategy, extra=st.integers(0, 3), pad=st.integers(0, V - 1),
       dtype=st.sampled_from([np.float32, np.float64]), reference=st.booleans())
def test_each_padded_row_equals_the_row_alone(models, rows, extra, pad, dtype, reference):
    params, config = models[dtype]
    tokens, mask = left_pad(rows, extra, pad)
    logits = numpy_gpt2.forward(params, config, tokens, attention_mask=mask, reference=reference)
    assert np.isfinite(logits).all()  # padding positions too (their values mean nothing)
    for b, r in enumerate(rows):
        alone = numpy_gpt2.forward(params, config, np.array(r), reference=reference)
        np.testing.assert_allclose(logits[b, -len(r):], alone, rtol=0, atol=TOL[dtype])


@settings(max_examples=10)
@given(rows=rows_strategy, prefill=st.integers(1, 4), dtype=st.sampled_from([np.float32, np.float64]),
       reference=st.booleans())
def test_padded_rows_with_the_kv_cache_and_last_only(models, rows, prefill, dtype, reference):
    """Prefill the padded prompts, then feed 3 more tokens per row one at a time, the mask
    growing with them: every step's logits equal the row alone over the same tokens."""
    params, config = models[dtype]
    rng = np.random.default_rng(len(rows))
    tokens, mask = left_pad(rows)
    more = rng.integers(0, V, size=(len(rows), 3))
    cache = numpy_gpt2.new_kv_cache(config, len(rows), dtype, max_len=tokens.shape[1] + 3)
    step = numpy_gpt2.forward(params, config, tokens, attention_mask=mask, kv_cache=cache, last_only=True,
                              reference=reference)
    outputs = [step[:, -1]]
    for t in range(3):
        mask = np.concatenate([mask, np.ones((len(rows), 1), np.int64)], axis=1)
        step = numpy_gpt2.forward(params, config, more[:, t:t + 1], attention_mask=mask, kv_cache=cache,
                                  last_only=True, reference=reference)
        outputs.append(step[:, -1])
    for b, r in enumerate(rows):
        alone = numpy_gpt2.forward(params, config, np.concatenate([r, more[b]]), reference=reference)
        for t, out in enumerate(outputs):
            np.testing.assert_allclose(out[b], alone[len(r) - 1 + t], rtol=0, atol=TOL[dtype])


def test_recording_with_a_mask_does_not_change_the_logits(models):
    params, config = models[np.float32]
    tokens, mask = left_pad([[1, 2, 3, 4, 5], [6, 7]])
    seen = {}
    plain = numpy_gpt2.forward(params, config, tokens, attention_mask=mask)
    recorded = numpy_gpt2.forward(params, config, tokens, attention_mask=mask,
                                  record=lambda name, a: seen.setdefault(name, a.copy()))
    np.testing.assert_array_equal(plain, recorded)
    assert seen["wpe"].shape == (2, 5, config.n_embd)  # per-row positions
    np.testing.assert_array_equal(seen["wpe"][1, 3:], params["wpe"]["weight"][:2])  # row 1 starts at 0
    probs = seen["h.0.attn.softmax"]  # (B, H, T, S): no real query attends to padding
    assert (probs[1, :, 3:, :3] == 0).all()


def test_position_ids_given_explicitly(models):
    """position_ids replace the default (cumsum(mask) - 1, or 0, 1, ... without a mask): a row
    at positions 3..7 with no mask equals it left-padded by 3 masked tokens at positions 0..7."""
    params, config = models[np.float64]
    row = np.array([3, 1, 4, 1, 5])
    shifted = numpy_gpt2.forward(params, config, row[None], position_ids=np.arange(3, 8)[None])
    tokens, mask = left_pad([row], extra=3, pad=9)
    masked = numpy_gpt2.forward(params, config, tokens, attention_mask=mask, position_ids=np.arange(8)[None])
    np.testing.assert_allclose(shifted[0], masked[0, 3:], rtol=0, atol=1e-11)
    default = numpy_gpt2.forward(params, config, row)
    assert np.abs(shifted[0] - default).max() > 1e-3  # the positions matter


@pytest.mark.parametrize("dtype, torch_dtype", [(np.float32, torch.float32), (np.float64, torch.float64)])
def test_masked_forward_equals_transformers_with_the_same_mask_and_positions(ckpt, models, dtype, torch_dtype):
    params, config = models[dtype]
    rows = [[5, 17, 3, 40, 2, 8, 11], [1, 2], [60, 61, 62, 63]]
    tokens, mask = left_pad(rows, extra=1, pad=50)
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    ours = numpy_gpt2.forward(params, config, tokens, attention_mask=mask)
    explicit = numpy_gpt2.forward(params, config, tokens, attention_mask=mask, position_ids=positions)
    ref = reference_model(ckpt, torch_dtype)
    with torch.no_grad():
        theirs = ref(torch.tensor(tokens), attention_mask=torch.tensor(mask),
                     position_ids=torch.tensor(positions)).logits.numpy()
    for b, r in enumerate(rows):
        np.testing.assert_allclose(ours[b, -len(r):], theirs[b, -len(r):], rtol=0, atol=TOL[dtype])
        np.testing.assert_allclose(explicit[b, -len(r):], theirs[b, -len(r):], rtol=0, atol=TOL[dtype])


@pytest.mark.parametrize("kwargs, message", [
    (dict(attention_mask=np.ones((2, 4))), r"attention_mask must have shape \(2, 5\)"),
    (dict(attention_mask=np.full((2, 5), 2)), "attention_mask must hold only 0 and 1"),
    (dict(attention_mask=np.array([[1, 1, 1, 1, 1], [0, 0, 0, 0, 0]])), r"attention_mask: row 1 is all padding"),
    (dict(attention_mask=np.ones((2, 5)) * 0.5), "attention_mask must hold only 0 and 1"),
    (dict(position_ids=np.ones((2, 4), int)), r"position_ids must have shape \(2, 5\)"),
    (dict(position_ids=np.full((2, 5), N_CTX)), rf"position_ids must be in \[0, {N_CTX}\)"),
    (dict(position_ids=np.full((2, 5), 1.5)), "position_ids must be integers"),
])
def test_bad_mask_or_positions_are_value_errors(models, kwargs, message):
    _, config = models[np.float32]
    with pytest.raises(ValueError, match=message):  # params=None: raised before any work
        numpy_gpt2.forward(None, config, np.ones((2, 5), int), **kwargs)


# --- generate with prompts of different lengths ------------------------------------------------

PROMPTS = [[5, 17, 3, 40, 2, 8, 11, 7, 6], [1, 2], [60, 61, 62, 63, 64], [9]]


def run(params, config, tokens, n, **kw):
    steps = list(numpy_gpt2.generate(params, config, tokens, n, **kw))
    return np.stack(steps, axis=-1) if steps and isinstance(steps[0], np.ndarray) else np.array(steps)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kw", [{}, dict(repetition_penalty=1.5, no_repeat_ngram_size=2),
                                dict(frequency_penalty=0.5, presence_penalty=0.3, min_new_tokens=2)])
def test_greedy_ragged_rows_equal_each_prompt_alone(models, dtype, kw):
    params, config = models[dtype]
    batch = run(params, config, PROMPTS, 20, temperature=0, stop_at_eos=False, **kw)
    assert batch.shape == (4, 20)
    for b, p in enumerate(PROMPTS):
        np.testing.assert_array_equal(batch[b], run(params, config, p, 20, temperature=0, stop_at_eos=False, **kw))


class RowDraws:
    """A stand-in Generator: .random(n) returns the next row of U (steps, B), or only the
    column of one row, so a prompt run alone gets the draws its row got in the batch."""

    def __init__(self, U, row=None):
        self.U, self.row, self.step = U, row, 0

    def random(self, n):
        u = self.U[self.step] if self.row is None else self.U[self.step, self.row:self.row + 1]
        self.step += 1
        assert len(u) == n
        return u


@contextlib.contextmanager
def draws(rng):
    """generate() draws its uniform numbers from rng (a RowDraws) inside the block."""
    real = numpy_gpt2.generation.sampling.make_rng
    numpy_gpt2.generation.sampling.make_rng = lambda seed: rng
    try:
        yield
    finally:
        numpy_gpt2.generation.sampling.make_rng = real


@pytest.mark.parametrize("kw", [dict(temperature=1.0), dict(temperature=0.8, top_k=20, top_p=0.9,
                                                             repetition_penalty=1.3, min_p=0.05)])
def test_sampled_ragged_rows_equal_each_prompt_alone_given_its_draws(models, kw):
    params, config = models[np.float64]
    U = np.random.default_rng(0).random((25, len(PROMPTS)))
    with draws(RowDraws(U)):
        batch = run(params, config, PROMPTS, 25, stop_at_eos=False, **kw)
    for b, p in enumerate(PROMPTS):
        with draws(RowDraws(U, row=b)):
            alone = run(params, config, p, 25, stop_at_eos=False, **kw)
        assert len(alone) == min(25, N_CTX - len(p) + 1)  # then the row's context is full
        np.testing.assert_array_equal(batch[b, :len(alone)], alone)
        assert (batch[b, len(alone):] == config.eos_token_id).all()
    assert len({tuple(r) for r in batch.tolist()}) == 4


def test_ragged_rows_finish_at_eos_leave_the_batch_and_keep_their_tokens(models, monkeypatch):
    params, config = models[np.float64]
    free = run(params, config, PROMPTS, 20, temperature=0, stop_at_eos=False)
    # the token whose first appearances are most spread over the rows
    eos = max(range(V), key=lambda t: len({int(np.argmax(r == t)) for r in free if (r == t).any()}))
    sizes, real = [], numpy_gpt2.generation.sampling.forward

    def counting(params, config, tokens, **kw):
        sizes.append(np.shape(tokens)[0])
        return real(params, config, tokens, **kw)

    monkeypatch.setattr(numpy_gpt2.generation.sampling, "forward", counting)
    out = run(params, config, PROMPTS, 20, temperature=0, eos_token_id=eos)
    full = run(params, config, PROMPTS, 20, temperature=0, eos_token_id=eos, compact=False)
    monkeypatch.undo()
    np.testing.assert_array_equal(out, full)
    for b, row in enumerate(out):
        k = int(np.argmax(free[b] == eos)) if (free[b] == eos).any() else 20
        np.testing.assert_array_equal(row[:k + 1], free[b, :k + 1][:len(row[:k + 1])])
        assert (row[k:] == eos).all()
    assert min(sizes) < len(PROMPTS)  # rows left the batch


def test_each_ragged_row_runs_to_its_own_context_limit(ckpt, models):
    """Rows of lengths 30, 20 and 3 in n_ctx = 32: they make 3, 13 and 30 tokens (each as
    alone), then yield eos as padding; the generator ends with the last one. The rows that
    remain after the longest left drop the padding columns from the cache."""
    params, config = models[np.float64]
    rng = np.random.default_rng(3)
    prompts = [rng.integers(0, 96, size=n).tolist() for n in (30, 20, 3)]
    out = run(params, config, prompts, 100, temperature=0, stop_at_eos=False)
    assert out.shape == (3, N_CTX - 3 + 1)
    for row, p in zip(out, prompts):
        alone = run(params, config, p, 100, temperature=0, stop_at_eos=False)
        assert len(alone) == N_CTX - len(p) + 1
        np.testing.assert_array_equal(row[:len(alone)], alone)
        assert (row[len(alone):] == config.eos_token_id).all()


def test_ragged_greedy_equals_transformers_left_padded_batch(ckpt, models):
    """transformers' generate with left padding and an attention mask derives position ids
    from the mask (cumsum - 1) as forward does: without processors the tokens agree."""
    params, config = models[np.float64]
    ours = run(params, config, PROMPTS, 15, temperature=0, stop_at_eos=False)
    tokens, mask = left_pad(PROMPTS, pad=0)
    ref = reference_model(ckpt, torch.float64)
    with torch.no_grad():
        theirs = ref.generate(torch.tensor(tokens), attention_mask=torch.tensor(mask), do_sample=False,
                              max_new_tokens=15, pad_token_id=0, eos_token_id=None)
    np.testing.assert_array_equal(ours, theirs[:, tokens.shape[1]:].numpy())


@settings(max_examples=8)
@given(lengths=st.lists(st.integers(1, 40), min_size=1, max_size=3), seed=st.integers(0, 100),
       temperature=st.sampled_from([0.0, 1.0]))
def test_ragged_slide_equals_each_row_alone(models, lengths, seed, temperature):
    params, config = models[np.float64]
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(0, 96, size=n).tolist() for n in lengths]
    U = rng.random((20, len(prompts)))
    with draws(RowDraws(U)):
        batch = run(params, config, prompts, 20, temperature=temperature, stop_at_eos=False, context="slide",
                    repetition_penalty=1.2)
    for b, p in enumerate(prompts):
        with draws(RowDraws(U, row=b)):
            alone = run(params, config, p, 20, temperature=temperature, stop_at_eos=False, context="slide",
                        repetition_penalty=1.2)
        np.testing.assert_array_equal(batch[b], alone)
