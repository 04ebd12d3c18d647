"""The key/value cache: prefill + step-by-step decoding gives the logits of a full recompute.

Oracle: forward() over the whole sequence without a cache (itself tested against transformers
elsewhere). Checked at every position up to n_ctx, single sequences and batches, float32 and
float64. Tolerances, absolute, on logits up to ~23 in size: float64 1e-11 (measured 4e-14);
float32 2e-4 (measured 2.5e-5: the cached path multiplies matrices of other shapes, so float32
rounding differs).
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import numpy_gpt2
from helpers.checkpoints import make_config, write_checkpoint

N_CTX = 40
from helpers.tolerances import KV_CACHE_RTOL as TOL  # noqa: E402


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    directory = tmp_path_factory.mktemp("kv")
    write_checkpoint(directory, make_config(n_layer=2, n_head=4, n_embd=32, n_ctx=N_CTX, vocab_size=97))
    return directory


@pytest.fixture(scope="module", params=[np.float32, np.float64], ids=["float32", "float64"])
def model(request, ckpt):
    params, config = numpy_gpt2.load(ckpt, request.param)
    return params, config, request.param


def tokens_for(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 97, size=shape)


@pytest.mark.parametrize("batch", [None, 3], ids=["single", "batch3"])
@pytest.mark.parametrize("prefill", [1, 7])
def test_decoding_step_by_step_equals_full_recompute_at_every_position(model, batch, prefill):
    params, config, dtype = model
    tokens = tokens_for((N_CTX,) if batch is None else (batch, N_CTX))
    cache = numpy_gpt2.new_kv_cache(config, 1 if batch is None else batch, dtype)
    first = numpy_gpt2.forward(params, config, tokens[..., :prefill], kv_cache=cache)
    full = numpy_gpt2.forward(params, config, tokens[..., :prefill])
    assert first.dtype == dtype and cache["length"] == prefill
    worst = np.abs(first - full).max()
    for t in range(prefill, N_CTX):
        step = numpy_gpt2.forward(params, config, tokens[..., t:t + 1], kv_cache=cache, last_only=True)
        # The oracle recomputes positions 0..t from scratch, no cache.
        full = numpy_gpt2.forward(params, config, tokens[..., :t + 1])[..., -1:, :]
        worst = max(worst, np.abs(step - full).max())
        assert cache["length"] == t + 1
    assert worst <= TOL[dtype], f"max |logit difference| {worst:.3g}"


@settings(max_examples=10)
@given(cuts=st.lists(st.integers(1, N_CTX - 1), max_size=6, unique=True), seed=st.integers(0, 1000))
def test_any_split_into_chunks_gives_the_full_logits(model, cuts, seed):
    params, config, dtype = model
    tokens = tokens_for((2, N_CTX), seed)
    bounds = [0, *sorted(cuts), N_CTX]
    cache = numpy_gpt2.new_kv_cache(config, 2, dtype)
    chunks = [numpy_gpt2.forward(params, config, tokens[:, a:b], kv_cache=cache)
              for a, b in zip(bounds, bounds[1:])]
    full = numpy_gpt2.forward(params, config, tokens)
    np.testing.assert_allclose(np.concatenate(chunks, axis=1), full, rtol=0, atol=TOL[dtype])


def test_a_full_cache_refuses_more_tokens_with_a_value_error(model):
    params, config, dtype = model
    cache = numpy_gpt2.new_kv_cache(config, 1, dtype)
    numpy_gpt2.forward(params, config, tokens_for((N_CTX,)), kv_cache=cache, last_only=True)
    with pytest.raises(ValueError, match=rf"{N_CTX} cached \+ 1 new.*n_ctx={N_CTX}"):
        numpy_gpt2.forward(params, config, [1], kv_cache=cache)
    small = numpy_gpt2.new_kv_cache(config, 1, dtype, max_len=4)
    with pytest.raises(ValueError, match="cache holds 4"):
        numpy_gpt2.forward(params, config, tokens_for((5,)), kv_cache=small)


def test_a_cache_is_for_one_batch_size(model):
    params, config, dtype = model
    cache = numpy_gpt2.new_kv_cache(config, 2, dtype)
    with pytest.raises(ValueError, match="batch of 3 sequences but the kv_cache was made for 2"):
        numpy_gpt2.forward(params, config, tokens_for((3, 4)), kv_cache=cache)


def test_generate_uses_the_cache_like_a_full_recompute(model):
    """Greedy generate() (cached) == a greedy loop that recomputes everything each step."""
    params, config, dtype = model
    prompt = tokens_for((2, 5))
    cached = np.stack(list(numpy_gpt2.generate(params, config, prompt, N_CTX, temperature=0,
                                               stop_at_eos=False)), axis=1)
    seq = prompt
    for _ in range(N_CTX - 5 + 1):  # the last step reads a full window of N_CTX tokens
        nxt = numpy_gpt2.forward(params, config, seq)[:, -1].argmax(-1)
        seq = np.concatenate([seq, nxt[:, None]], axis=1)
    np.testing.assert_array_equal(cached, seq[:, 5:])
    assert cached.shape == (2, N_CTX - 5 + 1)


def test_non_finite_logits_with_a_cache_are_diagnosed_from_the_cached_state(model):
    """A decoding step meets a NaN (here: a weight that went bad after the prefill): the error
    names the first non-finite activation and the absolute position, and the cache stays
    usable for the diagnosis (its earlier keys/values are finite). Once the cache itself holds
    non-finite keys/values, later steps say so."""
    params, config, dtype = model
    tokens = tokens_for((2, 9))
    cache = numpy_gpt2.new_kv_cache(config, 2, dtype)
    numpy_gpt2.forward(params, config, tokens[:, :8], kv_cache=cache)
    saved = params["h"][0]["attn"]["c_attn"]["weight"][4, 70].copy()
    params["h"][0]["attn"]["c_attn"]["weight"][4, 70] = np.nan  # a value column (E=32: v is 64..95)
    try:
        with pytest.raises(numpy_gpt2.NonFiniteError) as err:
            numpy_gpt2.forward(params, config, tokens[:, 8:], kv_cache=cache, last_only=True)
        assert ("in forward order, is h.0.attn.c_attn (nan at sequence 0, position 8, feature 70; "
                "index (0, 0, 70) of shape (2, 1, 96))") in str(err.value)
        assert "kv cache already held" not in str(err.value)
        # The NaN value is now cached at position 8: the next step's attention reads it.
        with pytest.raises(numpy_gpt2.NonFiniteError) as err:
            numpy_gpt2.forward(params, config, tokens[:, :1], kv_cache=cache, last_only=True)
        assert "kv cache already held non-finite keys/values from earlier calls (layers 0, 1)" in str(err.value)
    finally:
        params["h"][0]["attn"]["c_attn"]["weight"][4, 70] = saved
