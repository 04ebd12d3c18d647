"""The fast path (numpy_gpt2.fast.forward, what model.forward runs) equals the readable
reference path (the functions without _fast; forward(..., reference=True)), function by
function and for the whole model, recorded activations included.

The readable functions are themselves tested against transformers (test_layers.py,
test_model.py); here the oracle is the readable NumPy code, so any rearrangement made for
speed (in-place updates, query blocks, unnormalized softmax, 2-D matmuls) is checked to
change nothing but rounding.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import numpy_gpt2
from numpy_gpt2 import layers
from numpy_gpt2.fast import forward as layers_fast, training as layers_backward_fast, threads
from numpy_gpt2.config import GPT2Config

# max |fast - readable| <= RTOL * max |readable| + ATOL. Same budget as the forward-pass
# tests (test_model.py: 2e-5 relative in float32, 1e-11 in float64): the two paths round
# differently (sum order, x/sqrt(D) vs x*(1/sqrt(D)), normalizing before or after `@ v`),
# never by more.
from helpers.tolerances import FAST_ATOL as ATOL, FAST_RTOL as RTOL  # noqa: E402
DTYPES = st.sampled_from([np.float32, np.float64])


def assert_close(fast, ref, dtype, what=""):
    assert fast.dtype == dtype, f"{what}: dtype {fast.dtype}, expected {np.dtype(dtype)}"
    assert fast.shape == ref.shape, f"{what}: shape {fast.shape} vs {ref.shape}"
    err = float(np.max(np.abs(fast.astype(np.float64) - ref)))
    bound = RTOL[dtype] * float(np.max(np.abs(ref))) + ATOL[dtype]
    assert err <= bound, f"{what}: max|fast - readable| = {err:.3g} > {bound:.3g} ({np.dtype(dtype)})"


def normal(rng, shape, dtype, std=1.0, mean=0.0):
    return (mean + std * rng.standard_normal(shape)).astype(dtype)


def block_weights(rng, E, dtype):
    """One layer's weights, scaled like tests/checkpoints.py so activations are O(1) and
    softmaxes far from uniform."""
    return {
        "ln_1": {"weight": normal(rng, E, dtype, 0.2, 1.0), "bias": normal(rng, E, dtype, 0.2)},
        "attn": {"c_attn": {"weight": normal(rng, (E, 3 * E), dtype, 2 / math.sqrt(E)),
                            "bias": normal(rng, 3 * E, dtype, 0.2)},
                 "c_proj": {"weight": normal(rng, (E, E), dtype, 1 / math.sqrt(E)),
                            "bias": normal(rng, E, dtype, 0.1)}},
        "ln_2": {"weight": normal(rng, E, dtype, 0.2, 1.0), "bias": normal(rng, E, dtype, 0.2)},
        "mlp": {"c_fc": {"weight": normal(rng, (E, 4 * E), dtype, 1.5 / math.sqrt(E)),
                         "bias": normal(rng, 4 * E, dtype, 0.2)},
                "c_proj": {"weight": normal(rng, (4 * E, E), dtype, 1 / math.sqrt(4 * E)),
                           "bias": normal(rng, E, dtype, 0.1)}},
    }


shapes = st.lists(st.integers(1, 9), min_size=1, max_size=3).map(tuple)


@given(shape=shapes, scale=st.sampled_from([0.1, 1.0, 4.0, 12.0]), dtype=DTYPES, seed=st.integers(0, 2**16))
def test_gelu_fast(shape, scale, dtype, seed):
    x = normal(np.random.default_rng(seed), shape, dtype, scale)
    ref = layers.gelu(x.astype(np.float64))
    work = x.copy()
    out = layers_fast.gelu_fast(work)
    assert out is work  # computed in the input's memory, as documented
    assert_close(out, layers.gelu(x).astype(np.float64), dtype, "gelu_fast vs gelu")
    assert_close(out, ref, dtype, "gelu_fast vs float64 gelu")


def test_gelu_fast_in_chunks_and_on_strided_views():
    """Arrays bigger than GELU_CHUNK go in chunks (last one partial); strided views in one go.
    Either way the result lands in the input's own memory."""
    rng = np.random.default_rng(0)
    x = normal(rng, (3, layers_fast.GELU_CHUNK // 2 + 5), np.float32, 4.0)  # 1.5 chunks + 15
    work = x.copy()
    assert layers_fast.gelu_fast(work) is work
    assert_close(work, layers.gelu(x.astype(np.float64)), np.float32, "chunked")
    big = normal(rng, (40, 30), np.float64, 4.0)
    view = big.copy()[::2, 1:]
    assert layers_fast.gelu_fast(view) is view
    assert_close(view, layers.gelu(big[::2, 1:]), np.float64, "strided view")


@given(lead=st.lists(st.integers(1, 5), max_size=2).map(tuple), E=st.integers(2, 80),
       dtype=DTYPES, seed=st.integers(0, 2**16))
def test_layer_norm_fast(lead, E, dtype, seed):
    rng = np.random.default_rng(seed)
    x, w, b = normal(rng, (*lead, E), dtype, 3.0, 1.0), normal(rng, E, dtype, 0.5, 1.0), normal(rng, E, dtype)
    ref = layers.layer_norm(x, w, b)
    assert_close(layers_fast.layer_norm_fast(x, w, b), ref.astype(np.float64), dtype, "layer_norm_fast")


@given(lead=st.lists(st.integers(1, 5), max_size=3).map(tuple), n_in=st.integers(1, 40),
       n_out=st.integers(1, 40), dtype=DTYPES, seed=st.integers(0, 2**16))
def test_linear_fast(lead, n_in, n_out, dtype, seed):
    rng = np.random.default_rng(seed)
    x, w, b = normal(rng, (*lead, n_in), dtype), normal(rng, (n_in, n_out), dtype), normal(rng, n_out, dtype)
    assert_close(layers_fast.linear_fast(x, w, b), layers.linear(x, w, b).astype(np.float64), dtype, "linear_fast")


@given(B=st.integers(1, 3), H=st.integers(1, 3), T=st.integers(1, 40), past=st.integers(0, 20),
       D=st.sampled_from([1, 8, 16, 24, 64]), block=st.sampled_from([1, 3, 16, 128]),
       scale=st.sampled_from([0.5, 3.0]), dtype=DTYPES, seed=st.integers(0, 2**16))
def test_causal_attention_fast(B, H, T, past, D, block, scale, dtype, seed):
    """Any block size, with and without earlier (cached) positions, equals attention() with
    the full causal mask."""
    rng = np.random.default_rng(seed)
    q = normal(rng, (B, H, T, D), dtype, scale)
    k, v = normal(rng, (B, H, past + T, D), dtype, scale), normal(rng, (B, H, past + T, D), dtype)
    ref = layers.attention(q, k, v, layers.causal_mask(T, past + T))  # (B, H, T, D)
    fast = layers_fast.causal_attention_fast(q, k, v, past, block=block)  # (B, T, H, D)
    assert_close(np.swapaxes(fast, 1, 2), ref.astype(np.float64), dtype, f"block {block}")


@settings(max_examples=10)
@given(M=st.integers(1, 9), K=st.integers(1, 40), N=st.integers(1, 300), n_threads=st.integers(1, 4),
       transposed=st.booleans(), dtype=DTYPES, seed=st.integers(0, 2**16))
def test_matmul_fast_columns_shared_out_between_threads(M, K, N, n_threads, transposed, dtype, seed):
    """Columns of b shared out between 1-4 threads (64-byte aligned cuts, b a transposed view
    as the output head's wte.T, with and without a bias) give a @ b (+ bias)."""
    rng = np.random.default_rng(seed)
    a, bias = normal(rng, (M, K), dtype), normal(rng, N, dtype)
    b = normal(rng, (N, K), dtype).T if transposed else normal(rng, (K, N), dtype)
    saved = layers_fast.SPLIT_FLOPS
    layers_fast.SPLIT_FLOPS = 0  # split even these small products
    threads.set_threads(n_threads)
    try:
        plain, biased = layers_fast.matmul_fast(a, b), layers_fast.matmul_fast(a, b, bias=bias)
    finally:
        layers_fast.SPLIT_FLOPS = saved
        threads.set_threads(None)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    assert_close(plain, ref, dtype, f"{n_threads} threads")
    assert_close(biased, ref + bias, dtype, f"{n_threads} threads, bias")


@contextlib.contextmanager
def sharing_out_heads(n_threads):
    """Attention shared out between n_threads threads however little work there is."""
    saved = layers_fast.PARALLEL_FLOPS
    layers_fast.PARALLEL_FLOPS = 0
    threads.set_threads(n_threads)
    try:
        yield
    finally:
        layers_fast.PARALLEL_FLOPS = saved
        threads.set_threads(None)


@settings(max_examples=10)
@given(B=st.integers(1, 3), H=st.integers(1, 5), T=st.integers(1, 20), past=st.integers(0, 9),
       n_threads=st.integers(1, 4), block=st.sampled_from([1, 4, 64]), dtype=DTYPES,
       seed=st.integers(0, 2**16), padded=st.booleans(), scale=st.sampled_from([None, 1.0, 0.1]),
       p_drop=st.sampled_from([0.0, 0.3]))
def test_causal_attention_fast_heads_shared_out_between_threads(B, H, T, past, n_threads, block, dtype, seed,
                                                                padded, scale, p_drop):
    """Heads shared out between 1-4 threads (any split of B x H heads, a share crossing
    sequences included) give the readable attention, and the output, lse and recorded
    probabilities of the one-thread path bit for bit: with a padding key_bias, a config's
    score scale and dropout on the probabilities too (each share cuts its heads from the
    same full-block masks)."""
    from numpy_gpt2.dropout import Dropout

    rng = np.random.default_rng(seed)
    q = normal(rng, (B, H, T, 8), dtype, 2.0)
    k, v = normal(rng, (B, H, past + T, 8), dtype, 2.0), normal(rng, (B, H, past + T, 8), dtype)
    mask = np.ones((B, past + T), bool)
    if padded:  # left padding: sequence b's first b keys (a padding query's output is meaningless)
        for b in range(B):
            mask[b, :min(b, past)] = False
    key_bias = layers.padding_bias(mask, dtype) if padded else None
    dropout = Dropout(p_drop, seed) if p_drop else None

    def run():
        lse, seen = np.empty((B, H, T), dtype), {}
        out = layers_fast.causal_attention_fast(q, k, v, past, block=block, lse=lse, key_bias=key_bias,
                                                scale=scale, dropout=dropout, layer=1,
                                                record=lambda n, a: seen.update({n: a}))
        return np.swapaxes(out, 1, 2), lse, seen["softmax"]

    one = run()
    with sharing_out_heads(n_threads):
        shared = run()
    for a, b in zip(shared, one):
        assert np.array_equal(a, b)  # the same operations on the same numbers, whoever runs them
    if dropout is None:
        ref = layers.attention(q, k, v, layers.causal_mask(T, past + T), key_bias=key_bias, scale=scale)
        assert_close(shared[0], ref.astype(np.float64), dtype, f"{n_threads} threads")


def test_causal_attention_fast_default_blocks_at_length_300():
    """Several default-size query blocks plus a partial one (QUERY_BLOCK is 64: 300 = 4 * 64 + 44)."""
    rng = np.random.default_rng(0)
    q, k, v = (normal(rng, (1, 2, 300, 64), np.float32, 2.0) for _ in range(3))
    ref = layers.attention(q, k, v, layers.causal_mask(300, 300))
    assert_close(np.swapaxes(layers_fast.causal_attention_fast(q, k, v), 1, 2), ref.astype(np.float64),
                 np.float32, "T=300")


@pytest.mark.parametrize("n_threads", [2, 3])
def test_elementwise_pieces_shared_out_between_threads(n_threads):
    """gelu_fast and layer_norm_fast over enough pieces to use the threads (a partial last
    piece included) give the bits of the one-thread run, and the readable values."""
    rng = np.random.default_rng(n_threads)
    x = normal(rng, (5 * layers_fast.GELU_CHUNK + 7,), np.float32, 4.0)
    rows = normal(rng, (9 * layers_fast.LN_ROWS + 5, 24), np.float32, 3.0, 1.0)
    w, b = normal(rng, 24, np.float32, 0.2, 1.0), normal(rng, 24, np.float32, 0.2)
    results = {}
    for n in (1, n_threads):
        threads.set_threads(n)
        try:
            results[n] = layers_fast.gelu_fast(x.copy()), layers_fast.layer_norm_fast(rows, w, b)
        finally:
            threads.set_threads(None)
    for one, shared in zip(results[1], results[n_threads]):
        assert np.array_equal(one, shared)
    assert_close(results[n_threads][0], layers.gelu(x.astype(np.float64)), np.float32, "gelu_fast")
    assert_close(results[n_threads][1], layers.layer_norm(rows.astype(np.float64), w, b), np.float32,
                 "layer_norm_fast")


def test_blas_threads_only_is_one_thread_here_only_and_restored():
    """Inside blas_threads_only() the calling thread shares no work (threads() == 1) while
    another thread still sees the pool's size; nesting and an exception restore it; and the
    layers inside give the bits of a one-thread run (forward runs inside it)."""
    import concurrent.futures

    threads.set_threads(3)
    try:
        with threads.blas_threads_only():
            assert threads.threads() == 1
            with threads.blas_threads_only():
                assert threads.threads() == 1
            assert threads.threads() == 1
            with concurrent.futures.ThreadPoolExecutor(1) as other:
                assert other.submit(threads.threads).result() == 3
        assert threads.threads() == 3
        with pytest.raises(KeyError), threads.blas_threads_only():
            raise KeyError("x")
        assert threads.threads() == 3
        rng = np.random.default_rng(7)
        a, b = normal(rng, (70, 50), np.float32, 1.0), normal(rng, (50, 300), np.float32, 1.0)
        x = normal(rng, (5 * layers_fast.GELU_CHUNK + 7,), np.float32, 4.0)
        with threads.blas_threads_only():
            inside = layers_fast.matmul_fast(a, b), layers_fast.gelu_fast(x.copy())
        threads.set_threads(1)
        one = layers_fast.matmul_fast(a, b), layers_fast.gelu_fast(x.copy())
    finally:
        threads.set_threads(None)
    assert all(np.array_equal(p, q) for p, q in zip(inside, one))
    assert_close(inside[0], a.astype(np.float64) @ b, np.float32, "matmul inside")


@given(B=st.integers(1, 3), T=st.integers(1, 12), past=st.integers(0, 8), n_head=st.integers(1, 4),
       D=st.sampled_from([4, 8, 16]), dtype=DTYPES, seed=st.integers(0, 2**16))
def test_causal_self_attention_fast_with_cache(B, T, past, n_head, D, dtype, seed):
    rng = np.random.default_rng(seed)
    E = n_head * D
    attn = block_weights(rng, E, dtype)["attn"]
    x = normal(rng, (B, T, E), dtype)
    cache = normal(rng, (2, B, n_head, past + T + 3, D), dtype)  # earlier positions already there
    ref_cache = cache.copy()
    fast = layers_fast.causal_self_attention_fast(x, **attn, n_head=n_head, kv=(cache[0], cache[1], past))
    ref = layers.causal_self_attention(x, **attn, n_head=n_head, kv=(ref_cache[0], ref_cache[1], past))
    assert_close(fast, ref.astype(np.float64), dtype, "attention output")
    assert_close(cache, ref_cache.astype(np.float64), dtype, "keys/values written to the cache")
    no_cache = layers_fast.causal_self_attention_fast(x, **attn, n_head=n_head)
    assert_close(no_cache, layers.causal_self_attention(x, **attn, n_head=n_head).astype(np.float64),
                 dtype, "without a cache")


@given(B=st.integers(1, 3), T=st.integers(1, 20), n_head=st.integers(1, 4), D=st.sampled_from([4, 8, 16]),
       dtype=DTYPES, seed=st.integers(0, 2**16))
def test_transformer_block_fast(B, T, n_head, D, dtype, seed):
    rng = np.random.default_rng(seed)
    E = n_head * D
    block = block_weights(rng, E, dtype)
    x = normal(rng, (B, T, E), dtype)
    ref = layers.transformer_block(x, block, n_head, 1e-5)
    work = x.copy()
    out = layers_fast.transformer_block_fast(work, block, n_head, 1e-5)
    assert out is work  # the residual stream is updated in place
    assert_close(out, ref.astype(np.float64), dtype, "transformer_block_fast")

    work = x.copy()
    last = layers_fast.transformer_block_fast(work, block, n_head, 1e-5, last_only=True)
    assert_close(last, ref[:, -1:].astype(np.float64), dtype, "last_only")
    assert np.array_equal(work, x)  # last_only leaves x alone


def test_user_record_callback_straight_into_the_readable_block():
    """A user's record(name, array) returns None; the readable block, which uses what record
    returns (numpy_gpt2.hooks), still computes the same bits and shows the same arrays as the
    fast block, names in forward order."""
    rng = np.random.default_rng(5)
    block = block_weights(rng, 16, np.float64)
    x = normal(rng, (2, 7, 16), np.float64)
    slow, fast = {}, {}

    def keep(name, array):  # returns None, as users' callbacks do
        slow[name] = array.copy()

    out = layers.transformer_block(x, block, 2, 1e-5, record=keep)
    assert np.array_equal(out, layers.transformer_block(x, block, 2, 1e-5))
    layers_fast.transformer_block_fast(x.copy(), block, 2, 1e-5, record=lambda n, a: fast.update({n: a.copy()}))
    assert list(slow) == list(fast) == ["ln_1", "attn.c_attn", "attn.softmax", "attn", "ln_2", "mlp.c_fc",
                                        "mlp.gelu", "mlp.c_proj"]
    for name in slow:
        assert_close(fast[name], slow[name], np.float64, name)


def random_params(config, dtype, seed):
    rng = np.random.default_rng(seed)
    E, V = config.n_embd, config.vocab_size
    return {"wte": {"weight": normal(rng, (V, E), dtype)},
            "wpe": {"weight": normal(rng, (config.n_ctx, E), dtype, 0.5)},
            "h": [block_weights(rng, E, dtype) for _ in range(config.n_layer)],
            "ln_f": {"weight": normal(rng, E, dtype, 0.2, 1.0), "bias": normal(rng, E, dtype, 0.2)}}


def readable_forward(params, config, tokens, **kw):
    """model.forward through the readable layers (layers.transformer_block)."""
    return numpy_gpt2.forward(params, config, tokens, reference=True, **kw)


@settings(max_examples=15)
@given(n_layer=st.integers(1, 3), n_head=st.integers(1, 4), D=st.sampled_from([4, 8, 16]),
       B=st.integers(1, 3), T=st.integers(2, 40), split=st.floats(0.1, 0.9), one_d=st.booleans(),
       dtype=DTYPES, seed=st.integers(0, 2**16))
def test_forward_fast_equals_readable(n_layer, n_head, D, B, T, split, one_d, dtype, seed):
    """Whole model: all logits; last_only; and a KV cache filled in two chunks then one token."""
    config = GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_head * D, n_ctx=48, vocab_size=53)
    params = random_params(config, dtype, seed)
    tokens = np.random.default_rng(seed).integers(0, config.vocab_size, size=(T,) if one_d else (B, T))
    ref = readable_forward(params, config, tokens).astype(np.float64)
    assert_close(numpy_gpt2.forward(params, config, tokens), ref, dtype, "all logits")
    assert_close(numpy_gpt2.forward(params, config, tokens, last_only=True), ref[..., -1:, :], dtype,
                 "last_only")

    batch = 1 if one_d else B
    cut = max(1, int(split * (T - 1)))
    fast_cache = numpy_gpt2.new_kv_cache(config, batch, dtype)
    ref_cache = numpy_gpt2.new_kv_cache(config, batch, dtype)
    pieces = [tokens[..., :cut], tokens[..., cut:T - 1], tokens[..., T - 1:]]  # the last one: decoding
    for piece in (p for p in pieces if p.shape[-1]):
        fast = numpy_gpt2.forward(params, config, piece, kv_cache=fast_cache, last_only=True)
        slow = readable_forward(params, config, piece, kv_cache=ref_cache, last_only=True)
        assert_close(fast, slow.astype(np.float64), dtype, f"cached chunk of {piece.shape[-1]}")
    assert fast_cache["length"] == ref_cache["length"] == T
    assert_close(fast, ref[..., -1:, :], dtype, "cached last logits vs one full pass")


@settings(max_examples=10)
@given(n_layer=st.integers(1, 2), n_head=st.integers(1, 3), D=st.sampled_from([4, 8]),
       B=st.integers(1, 2), T=st.integers(1, 20), dtype=DTYPES, seed=st.integers(0, 2**16))
def test_recorded_activations_fast_equal_readable(n_layer, n_head, D, B, T, dtype, seed):
    """Recording sees the fast path's own arrays: every named activation equals the readable
    path's, the arrays handed out are not overwritten later, and the logits are the very
    same bits as without recording."""
    config = GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_head * D, n_ctx=24, vocab_size=41)
    params = random_params(config, dtype, seed)
    tokens = np.random.default_rng(seed).integers(0, config.vocab_size, size=(B, T))
    fast, slow, snapshot = {}, {}, {}

    def keep(name, array):  # a reference, and a copy of the values as they were when recorded
        fast[name], snapshot[name] = array, array.copy()

    logits = numpy_gpt2.forward(params, config, tokens, record=keep)
    numpy_gpt2.forward(params, config, tokens, reference=True, record=slow.__setitem__)
    assert list(fast) == list(slow)
    for name in fast:
        assert np.array_equal(fast[name], snapshot[name]), f"{name} was overwritten after recording"
        assert_close(fast[name], slow[name].astype(np.float64), dtype, name)
    assert np.array_equal(logits, numpy_gpt2.forward(params, config, tokens))


@settings(max_examples=15, deadline=None)
@given(B=st.integers(1, 2), H=st.integers(1, 4), T=st.integers(1, 70), past=st.integers(0, 40),
       block=st.sampled_from([1, 5, 16, 64]), fuse=st.sampled_from([0, 50, 200, 1 << 30]),
       padded=st.booleans(), scale=st.sampled_from([None, 0.3]), p_drop=st.sampled_from([0.0, 0.25]),
       n_threads=st.integers(1, 3), dtype=DTYPES, seed=st.integers(0, 2**16))
def test_causal_attention_head_groups_equal_all_heads_and_readable(B, H, T, past, block, fuse, padded,
                                                                    scale, p_drop, n_threads, dtype, seed):
    """Heads in groups of GROUP_SCORES scores per block (scores, softmax and `@ v` in one
    buffer; 0: one head at a time) against every head at once (GROUP_SCORES huge): the same
    output, lse and recorded probabilities bit for bit, over T, past (S = past + T), block
    sizes, padding, a config's scale, dropout, and 1-3 threads; and the readable attention."""
    from numpy_gpt2.dropout import Dropout

    rng = np.random.default_rng(seed)
    q = normal(rng, (B, H, T, 8), dtype, 2.0)
    k, v = normal(rng, (B, H, past + T, 8), dtype, 2.0), normal(rng, (B, H, past + T, 8), dtype)
    mask = np.ones((B, past + T), bool)
    if padded:
        mask[-1, :min(3, past)] = False
    key_bias = layers.padding_bias(mask, dtype) if padded else None
    dropout = Dropout(p_drop, seed) if p_drop else None

    def run(fuse_scores, n):
        saved = layers_fast.GROUP_SCORES
        layers_fast.GROUP_SCORES = fuse_scores
        lse, seen = np.empty((B, H, T), dtype), {}
        try:
            with sharing_out_heads(n):
                out = layers_fast.causal_attention_fast(q, k, v, past, block=block, lse=lse, key_bias=key_bias,
                                                        scale=scale, dropout=dropout, layer=0,
                                                        record=lambda name, a: seen.update({name: a}))
        finally:
            layers_fast.GROUP_SCORES = saved
        return np.swapaxes(out, 1, 2), lse, seen["softmax"]

    stacked, fused = run(1 << 30, 1), run(fuse, n_threads)
    for a, b in zip(fused, stacked):
        assert np.array_equal(a, b)
    if dropout is None:
        ref = layers.attention(q, k, v, layers.causal_mask(T, past + T), key_bias=key_bias, scale=scale)
        assert_close(fused[0], ref.astype(np.float64), dtype, f"fuse {fuse}")


def test_run_shares_caller_takes_shares_nobody_started():
    """run_shares: every share runs exactly once and results come back in order, also when the
    pool's threads is busy elsewhere (the caller takes the shares it would have run)."""
    import threading

    threads.set_threads(2)
    try:
        release = threading.Event()
        blocker = threads.thread_pool().submit(release.wait)  # the pool's one other thread, busy
        ran = []
        assert threads.run_shares(lambda i: ran.append(i) or i * i, 5) == [0, 1, 4, 9, 16]
        assert sorted(ran) == [0, 1, 2, 3, 4] and not blocker.done()
        release.set()
        with pytest.raises(ZeroDivisionError):
            threads.run_shares(lambda i: 1 // (i - 3), 4)
    finally:
        threads.set_threads(None)


def test_set_threads_sets_blas_threads_too():
    """set_threads(n) sets OpenBLAS's own thread count to n (set_threads(1): everything on one
    thread), set_threads(None) restores it."""
    if not threads.can_limit_blas():
        pytest.skip("NumPy's BLAS is not OpenBLAS")
    get = threads._blas()[0]
    before = get()
    try:
        threads.set_threads(1)
        assert get() == 1 and threads.threads() == 1
    finally:
        threads.set_threads(None)
    assert get() == before


def test_a_signal_during_the_wait_for_shares_still_waits_for_them(monkeypatch):
    """Ctrl-C while the caller waits for a share a pool thread is running: run_shares raises
    the KeyboardInterrupt only once that share has ended (the caller would otherwise move on,
    e.g. put OpenBLAS's thread count back while the share is inside a BLAS call)."""
    import signal
    import threading
    import time

    from numpy_gpt2.fast import threads
    monkeypatch.setattr(threads, "_count", 2)
    threads._pool.cache_clear()
    started, done = threading.Event(), []

    def work(i):
        if threading.current_thread() is threading.main_thread():
            started.wait(5)  # (so that the other share runs on the pool thread)
            return
        started.set()
        time.sleep(0.4)
        done.append(i)

    def interrupt(signum, frame):
        raise KeyboardInterrupt
    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.15)  # while the caller waits for the pool thread
        with pytest.raises(KeyboardInterrupt):
            threads.run_shares(work, 2)
        assert done, "run_shares raised while a share was still running"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        threads._pool.cache_clear()
