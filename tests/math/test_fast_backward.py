"""The fast backward twins (numpy_gpt2/layers_backward_fast.py) equal their readable twins.

No oracle needed here: the readable functions are themselves checked against PyTorch
autograd (tests/test_layers_backward.py) and finite differences. Tolerances: float64 to
~1e-12 of the largest value (only the summation order differs), float32 to ~1e-5.
"""

from __future__ import annotations

import numpy as np
from hypothesis import assume, example, given, settings, strategies as st

from numpy_gpt2 import layers, layers_backward as lb
from numpy_gpt2.fast import forward as layers_fast, training as lbf, threads
from numpy_gpt2.hooks import is_weight_name, no_record

from helpers.tolerances import FAST_BACKWARD_RTOL as TOL  # noqa: E402


def close(fast, ref, dtype, scale=0.0):
    """|fast - ref| <= TOL * max(max|ref|, scale) elementwise, with a message naming the worst
    error (scale: for a reference that can be exactly 0, the size its rounding errors have)."""
    fast, ref = np.asarray(fast, np.float64), np.asarray(ref, np.float64)
    assert fast.shape == ref.shape, (fast.shape, ref.shape)
    scale = max(float(np.abs(ref).max()), scale, 1e-30)
    err = float(np.abs(fast - ref).max()) / scale
    assert err <= TOL[dtype], f"max error {err:.3g} of max|ref| {scale:.3g}"


def close_tree(fast, ref, dtype):
    assert fast.keys() == ref.keys()
    for key in ref:
        if isinstance(ref[key], dict):
            close_tree(fast[key], ref[key], dtype)
        else:
            close(fast[key], ref[key], dtype)


def _tree(tree, dtype):
    return {k: _tree(v, dtype) if isinstance(v, dict) else v.astype(dtype) for k, v in tree.items()}


def flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


def close_at_rounding(fast, ref, exact):
    """float32: |fast - ref| <= max(TOL * max|ref|, 3 * max|ref - exact|), i.e. the fast path's
    own error is at most about twice the readable path's (|fast - ref| <= |fast - exact| +
    |ref - exact|; exact: the readable path in float64 on the same inputs)."""
    fast, ref, exact = (np.asarray(a, np.float64) for a in (fast, ref, exact))
    scale = max(float(np.abs(ref).max()), 1e-30)
    allowed = max(TOL[np.float32] * scale, 3 * float(np.abs(ref - exact).max()))
    err = float(np.abs(fast - ref).max())
    assert err <= allowed, f"max error {err:.3g}, allowed {allowed:.3g} (max|ref| {scale:.3g})"


dtypes = st.sampled_from([np.float32, np.float64])
seeds = st.integers(0, 2**31 - 1)


def block_params(rng, E, dtype, scale):
    def w(*shape):
        return (rng.standard_normal(shape) * scale / np.sqrt(shape[0])).astype(dtype)

    def ln():
        return {"weight": (1 + 0.3 * rng.standard_normal(E)).astype(dtype),
                "bias": (0.3 * rng.standard_normal(E)).astype(dtype)}

    def lin(n_in, n_out):
        return {"weight": w(n_in, n_out), "bias": (0.1 * rng.standard_normal(n_out)).astype(dtype)}

    return {"ln_1": ln(), "attn": {"c_attn": lin(E, 3 * E), "c_proj": lin(E, E)},
            "ln_2": ln(), "mlp": {"c_fc": lin(E, 4 * E), "c_proj": lin(4 * E, E)}}


@given(seed=seeds, dtype=dtypes, n=st.integers(1, 70_000), scale=st.sampled_from([0.1, 1.0, 5.0, 30.0]))
def test_gelu_and_derivative_fast(seed, dtype, n, scale):
    """One pass gives gelu(x) and gelu'(x), over several cache-sized chunks and the tails
    (x large and negative: exp overflows, the limits 0 and 0 must come out, not NaN)."""
    x = (np.random.default_rng(seed).standard_normal(n) * scale).astype(dtype)
    derivative = x.copy()
    g = lbf.gelu_and_derivative_fast(derivative)
    # gelu(x) is about x or about 0: errors at the scale of |x| (a lone x << 0 has gelu ~1e-30);
    # gelu'(x) lies in [-0.17, 1.13]
    close(g, layers.gelu(x), dtype, scale=float(np.abs(x).max()))
    close(derivative, lb.gelu_backward(np.ones_like(x), x), dtype, scale=1.0)
    assert np.isfinite(derivative).all()


@given(seed=seeds, dtype=dtypes, N=st.integers(1, 40), E=st.integers(2, 80),
       scale=st.sampled_from([1e-3, 1.0, 100.0]))
def test_layer_norm_backward_fast(seed, dtype, N, E, scale):
    rng = np.random.default_rng(seed)
    x = ((rng.standard_normal((N, E)) + rng.standard_normal((N, 1))) * scale).astype(dtype)
    weight = rng.standard_normal(E).astype(dtype)
    dout = rng.standard_normal((N, E)).astype(dtype)
    xhat, std = layers_fast.normalize(x, 1e-5)
    close(xhat * weight, layers.layer_norm(x, weight, np.zeros_like(weight)), dtype)
    dx, grads = lbf.layer_norm_backward_fast(dout, xhat, std, weight)
    dx_ref, grads_ref = lb.layer_norm_backward(dout, x, weight, 1e-5)
    # dx is a difference of terms of size |dout w| / std that can cancel almost exactly (E = 2:
    # xhat = +-1): its rounding errors have that size, not the size of dx
    close(dx, dx_ref, dtype, scale=float(np.abs(dout * weight / std).max()))
    close_tree(grads, grads_ref, dtype)


@given(seed=seeds, dtype=dtypes, B=st.integers(1, 3), T=st.integers(1, 150),
       H=st.integers(1, 4), D=st.integers(1, 20), block=st.sampled_from([1, 7, 64]))
def test_causal_attention_backward_fast(seed, dtype, B, T, H, D, block):
    """Blocked backward from the log-sum-exp == attention_backward with the causal mask,
    for any number of blocks, a ragged last block, and T = 1."""
    rng = np.random.default_rng(seed)
    q, k, v, dout = (rng.standard_normal((B, H, T, D)).astype(dtype) for _ in range(4))
    lse = np.empty((B, H, T), dtype)
    out = np.swapaxes(layers_fast.causal_attention_fast(q, k, v, block=block, lse=lse), 1, 2)
    dq, dk, dv = (np.full_like(q, np.nan) for _ in range(3))  # every element must be written
    seen = {}
    lbf.causal_attention_backward_fast(dout, q, k, v, out, lse, dq, dk, dv, block=block,
                                      record=lambda name, a: seen.update({name: a.copy()}))
    ref = {}
    expected = lb.attention_backward(dout, q, k, v, layers.causal_mask(T, T),
                                     record=lambda name, a: ref.update({name: a}))
    # dq and dk are exactly 0 for T = 1 (one key: the softmax is constant); dv sets the scale
    scale = max(float(np.abs(e).max()) for e in expected)
    for got, want in zip((dq, dk, dv), expected):
        close(got, want, dtype, scale)
    close(seen["softmax"], ref["softmax"], dtype)


@settings(max_examples=10)
@given(seed=seeds, dtype=dtypes, B=st.integers(1, 3), T=st.integers(1, 40), H=st.integers(1, 5),
       n_threads=st.integers(2, 4), block=st.sampled_from([1, 7, 64]), scale=st.sampled_from([None, 0.5]),
       p_drop=st.sampled_from([0.0, 0.3]))
def test_causal_attention_backward_fast_heads_shared_out_between_threads(seed, dtype, B, T, H, n_threads,
                                                                          block, scale, p_drop):
    """Heads shared out between threads (single-threaded BLAS inside) give the one-thread
    path's dq, dk, dv bit for bit, however the B x H heads are split: with a config's score
    scale and with dropout (each share cuts its heads from the forward's full-block masks)."""
    from numpy_gpt2.dropout import Dropout

    rng = np.random.default_rng(seed)
    q, k, v, dout = (rng.standard_normal((B, H, T, 8)).astype(dtype) for _ in range(4))
    dropout = Dropout(p_drop, seed) if p_drop else None
    lse = np.empty((B, H, T), dtype)
    out = np.swapaxes(layers_fast.causal_attention_fast(q, k, v, block=block, lse=lse, scale=scale,
                                                        dropout=dropout, layer=2), 1, 2)
    grads = {}
    for n in (1, n_threads):
        saved = layers_fast.PARALLEL_FLOPS
        layers_fast.PARALLEL_FLOPS = 0  # share out even this little work
        threads.set_threads(n)
        try:
            grads[n] = [np.full_like(q, np.nan) for _ in range(3)]
            lbf.causal_attention_backward_fast(dout, q, k, v, out, lse, *grads[n], block=block, scale=scale,
                                               dropout=dropout, layer=2)
        finally:
            layers_fast.PARALLEL_FLOPS = saved
            threads.set_threads(None)
    for one, shared in zip(grads[1], grads[n_threads]):
        assert np.array_equal(one, shared)


@settings(max_examples=15, deadline=None)
@given(seed=seeds, dtype=dtypes, B=st.integers(1, 3), T=st.integers(1, 70), H=st.integers(1, 5),
       block=st.sampled_from([1, 7, 64]), group=st.sampled_from([0, 50, 300]), n_threads=st.integers(1, 3),
       p_drop=st.sampled_from([0.0, 0.3]), record=st.booleans())
def test_causal_attention_backward_fast_head_groups(seed, dtype, B, T, H, block, group, n_threads, p_drop, record):
    """The backward's blocks in groups of GROUP_SCORES scores (0: one head at a time) give
    every head at once's dq, dk, dv and recorded dL/dS bit for bit, on 1-3 threads, with
    dropout; and the readable attention_backward without it."""
    from numpy_gpt2.dropout import Dropout

    rng = np.random.default_rng(seed)
    q, k, v, dout = (rng.standard_normal((B, H, T, 8)).astype(dtype) for _ in range(4))
    dropout = Dropout(p_drop, seed) if p_drop else None
    lse = np.empty((B, H, T), dtype)
    out = np.swapaxes(layers_fast.causal_attention_fast(q, k, v, block=block, lse=lse, dropout=dropout), 1, 2)

    def run(group_scores, n):
        saved = layers_fast.GROUP_SCORES, layers_fast.PARALLEL_FLOPS
        layers_fast.GROUP_SCORES, layers_fast.PARALLEL_FLOPS = group_scores, 0
        threads.set_threads(n)
        grads, seen = [np.full_like(q, np.nan) for _ in range(3)], Seen()
        try:
            lbf.causal_attention_backward_fast(dout, q, k, v, out, lse, *grads, block=block, dropout=dropout,
                                               record=seen if record else no_record)
        finally:
            layers_fast.GROUP_SCORES, layers_fast.PARALLEL_FLOPS = saved
            threads.set_threads(None)
        return grads + ([seen["scores"]] if record else [])

    class Seen(dict):  # records every point, dL/dS ("scores") included
        def wants(self, name):
            return True

        def __call__(self, name, a):
            self[name] = a.copy()

    every, grouped = run(1 << 30, 1), run(group, n_threads)
    for a, b in zip(grouped, every):
        assert np.array_equal(a, b)
    if dropout is None:
        expected = lb.attention_backward(dout, q, k, v, layers.causal_mask(T, T))
        scale = max(float(np.abs(e).max()) for e in expected)
        for got, want in zip(grouped[:3], expected):
            close(got, want, dtype, scale)


@given(seed=seeds, dtype=dtypes, B=st.integers(1, 3), T=st.integers(1, 80),
       H=st.integers(1, 4), D=st.integers(2, 12), scale=st.sampled_from([0.3, 1.0, 3.0]))
def test_transformer_block_backward_fast(seed, dtype, B, T, H, D, scale):
    """Saving forward + fast backward == the readable block and its readable backward:
    the output, dx, every weight gradient, and every recorded activation gradient.
    (E >= 4: a LayerNorm over one number has variance 0, and its 1/sqrt(eps) = 316 would
    only amplify float32 rounding; over two numbers xhat is +-1 and its derivative 1/std
    amplifies float32 rounding by as much, in either path, 1e-4 of max|dx| and more.)"""
    assume(H * D >= 4)
    rng = np.random.default_rng(seed)
    E = H * D
    block = block_params(rng, E, dtype, scale)
    x = rng.standard_normal((B, T, E)).astype(dtype)
    dout = rng.standard_normal((B, T, E)).astype(dtype)
    out, saved = lbf.transformer_block_saving_fast(x, block, H, 1e-5)
    close(out, layers.transformer_block(x, block, H, 1e-5), dtype)
    fast_seen, ref_seen = {}, {}
    dx, grads = lbf.transformer_block_backward_fast(
        dout.reshape(B * T, E).copy(), saved, block, H, 1e-5,
        record=lambda n, a: fast_seen.update({n: np.array(a).reshape(B, T, -1)
                                              if a.ndim == 2 and not is_weight_name(n) else a.copy()}))
    dx_ref, grads_ref = lb.transformer_block_backward(
        dout, x, block, H, 1e-5, record=lambda n, a: ref_seen.update({n: a}))
    assert list(fast_seen) == list(ref_seen)  # same names, same (backward) order, weights' too
    assert {n for n in fast_seen if is_weight_name(n)} == {
        f"{module}.{key}" for module in ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc",
                                         "mlp.c_proj") for key in ("weight", "bias")}
    ref_seen = {n: a.reshape(fast_seen[n].shape) for n, a in ref_seen.items()}
    if dtype is np.float64:
        close(dx.reshape(B, T, E), dx_ref, dtype)
        close_tree(grads, grads_ref, dtype)
        for name in ref_seen:
            close(fast_seen[name], ref_seen[name], dtype)
        return
    # A LayerNorm over few features with a small variance is ill-conditioned: there both
    # float32 paths are far from the exact value (E=2 showed 4.7e-5 of max|dx| each). The
    # fast path may then differ from the readable one by the readable path's own float32
    # error, measured against the same equations in float64.
    seen64 = {}
    dx64, grads64 = lb.transformer_block_backward(
        *(a.astype(np.float64) for a in (dout, x)), _tree(block, np.float64), H, 1e-5,
        record=lambda n, a: seen64.update({n: a}))
    close_at_rounding(dx.reshape(B, T, E), dx_ref, dx64)
    for key, fast_g in flat(grads).items():
        close_at_rounding(fast_g, flat(grads_ref)[key], flat(grads64)[key])
    for name in ref_seen:
        close_at_rounding(fast_seen[name], ref_seen[name], seen64[name].reshape(fast_seen[name].shape))


@given(seed=seeds, dtype=dtypes, N=st.integers(1, 50), E=st.integers(1, 16), V=st.integers(2, 300),
       rows=st.sampled_from([1, 7, 512]), scale=st.sampled_from([0.1, 1.0, 10.0]))
@example(seed=4, dtype=np.float32, N=1, E=1, V=2, rows=1, scale=10.0)  # the cancelling case below
def test_lm_head_cross_entropy_fast(seed, dtype, N, E, V, rows, scale):
    """Fused chunked head + loss + backward == logits, masked_cross_entropy,
    cross_entropy_backward and lm_head_backward, with some targets ignored."""
    from numpy_gpt2.loss import cross_entropy_backward, masked_cross_entropy

    rng = np.random.default_rng(seed)
    h = rng.standard_normal((N, E)).astype(dtype)
    head = (rng.standard_normal((V, E)) * scale).astype(dtype)
    targets = rng.integers(0, V, N)
    targets[rng.random(N) < 0.3] = -100
    targets[rng.integers(N)] = rng.integers(V)  # at least one kept
    loss, dh, dhead = lbf.lm_head_cross_entropy_fast(h, head, targets, rows=rows)
    logits = h @ head.T
    assert abs(loss - masked_cross_entropy(logits, targets)) <= TOL[dtype] * max(1.0, abs(loss))
    dh_ref, dhead_ref = lb.lm_head_backward(cross_entropy_backward(logits, targets), h, head)
    # dL/dz = (P - Y) / n cancels: P_t ~ 1 next to Y_t = 1, and with V = 2 its two entries are
    # +-p, so dh = p (head_1 - head_0) can be far smaller than its terms (N=E=1, V=2, scale 10
    # showed 2e-2 of max|dhead|, 8e-8 absolute). Rounding errors scale with the terms, so
    # compare at their scale: |P| + |Y| pushed through each product, in float64.
    terms = _head_loss_term_sizes(h, head, targets)
    close(dh, dh_ref, dtype, scale=float((terms @ np.abs(head.astype(np.float64))).max()))
    close(dhead, dhead_ref, dtype, scale=float((terms.T @ np.abs(h.astype(np.float64))).max()))


def _head_loss_term_sizes(h, head, targets):
    """(N, V) sizes of the terms of dL/dz = (softmax(z) - onehot(y)) / n: (P + Y) / n over the
    n kept rows, 0 in ignored rows (targets -100). In float64 from h (N, E), head (V, E)."""
    z = h.astype(np.float64) @ head.astype(np.float64).T
    sizes = np.exp(z - z.max(axis=-1, keepdims=True))
    sizes /= sizes.sum(axis=-1, keepdims=True)
    keep = targets != -100
    sizes[np.nonzero(keep)[0], targets[keep]] += 1.0
    return sizes * keep[:, None] / keep.sum()


@given(seed=seeds, dtype=dtypes, N=st.integers(1, 60), V=st.integers(2, 300),
       scale=st.sampled_from([0.1, 1.0, 30.0]))
def test_cross_entropy_sum_fast(seed, dtype, N, V, scale):
    """The evaluation loss in place over row pieces == token_nll(...).sum()."""
    from numpy_gpt2.loss import token_nll

    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((N, V)) * scale).astype(dtype)
    targets = rng.integers(0, V, N)
    expected = float(token_nll(logits, targets).sum(dtype=np.float64))
    got = lbf.cross_entropy_sum_fast(logits.copy(), targets)
    assert abs(got - expected) <= TOL[dtype] * max(1.0, abs(expected))
