"""adamw_update's chunked, threaded pass against the readable update of one whole tensor
(optim.adamw_update_tensor), bit for bit: chunk boundaries inside and between tensors, odd
sizes, a non-contiguous tensor, float32/float64, decay on and off, clipping's grad_scale,
1 or 2 threads, steps where the bias correction's division by 1 is skipped. Also: the keys
of weights the update made non-finite, found on the chunks, the gradient norm's chunks, and
train_step's check of the gradients through their norm.
"""

from __future__ import annotations

import contextlib
import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from numpy_gpt2 import GPT2Config, backward
from numpy_gpt2.errors import NonFiniteError
from numpy_gpt2.fast.threads import claim_pieces, set_threads
from numpy_gpt2.initialization import init_params
from numpy_gpt2.params import flatten_params, nest_params
from numpy_gpt2.training import distributed, optim
from numpy_gpt2.training.step import accumulate_grads, train_step
from helpers.oracle_activations import one_torch_thread  # noqa: F401  (autouse fixture)
from helpers.tolerances import ADAMW_TOL


@contextlib.contextmanager
def chunked(chunk, threads=None):
    """optim._UPDATE_CHUNK = chunk and the pool's threads within the block; both restored."""
    saved = optim._UPDATE_CHUNK
    optim._UPDATE_CHUNK = chunk
    set_threads(threads)
    try:
        yield
    finally:
        optim._UPDATE_CHUNK = saved
        set_threads(None)


def random_tree(rng, sizes, dtype, fortran):
    """{"t0": {"weight": ...}, ...}: 2-D tensors for (rows, cols) sizes and 1-D for ints; the
    first 2-D one Fortran-ordered (not C-contiguous: updated whole) when fortran."""
    tree = {}
    for i, size in enumerate(sizes):
        a = rng.standard_normal(size).astype(dtype)
        if fortran and a.ndim == 2 and not any(np.isfortran(t["weight"]) for t in tree.values()):
            a = np.asfortranarray(a)
        tree[f"t{i}"] = {"weight": a}
    return tree


def copy_tree(tree):
    return {k: {"weight": v["weight"].copy(order="K")} for k, v in tree.items()}


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16),
       sizes=st.lists(st.one_of(st.integers(1, 300), st.tuples(st.integers(1, 40), st.integers(1, 40))),
                      min_size=1, max_size=5),
       chunk=st.sampled_from([1, 7, 64, 1 << 16]), threads=st.sampled_from([1, 2]),
       dtype=st.sampled_from([np.float32, np.float64]), weight_decay=st.sampled_from([0.0, 0.1]),
       grad_scale=st.sampled_from([None, 0.37]), first_step=st.sampled_from([0, 5000]),
       fortran=st.booleans())
def test_chunked_update_is_the_whole_tensor_update_bit_for_bit(seed, sizes, chunk, threads, dtype, weight_decay,
                                                               grad_scale, first_step, fortran):
    with chunked(chunk, threads):
        _check_chunked_update(seed, sizes, dtype, weight_decay, grad_scale, first_step, fortran)


def _check_chunked_update(seed, sizes, dtype, weight_decay, grad_scale, first_step, fortran):
    rng = np.random.default_rng(seed)
    params = random_tree(rng, sizes, dtype, fortran)
    expected = copy_tree(params)
    state = optim.adamw_init(params)
    state["step"] = first_step  # 5000: 1 - beta2^t rounds to 1 in float32 (the division is skipped)
    moments = {k: (np.zeros_like(p["weight"]), np.zeros_like(p["weight"])) for k, p in params.items()}
    lr, betas, eps = 3e-3, (0.9, 0.95), 1e-8
    for step in range(first_step + 1, first_step + 3):
        grads = {k: {"weight": (rng.standard_normal(p["weight"].shape) * 10.0 ** rng.uniform(-3, 1)).astype(dtype)}
                 for k, p in params.items()}
        kept = copy_tree(grads)
        assert optim.adamw_update(params, grads, state, lr, betas, eps, weight_decay, grad_scale=grad_scale) == []
        for key, tensor in expected.items():
            p, g, (m, v) = tensor["weight"], grads[key]["weight"], moments[key]
            optim.adamw_update_tensor(p, g, m, v, lr, *betas, eps, weight_decay if p.ndim >= 2 else 0.0, step,
                                      np.empty_like(p), grad_scale, np.empty_like(p))
        for key in expected:
            np.testing.assert_array_equal(grads[key]["weight"], kept[key]["weight"], err_msg=key)  # not scaled
            np.testing.assert_array_equal(params[key]["weight"], expected[key]["weight"], err_msg=key)
            np.testing.assert_array_equal(state["m"][key]["weight"], moments[key][0], err_msg=key)
            np.testing.assert_array_equal(state["v"][key]["weight"], moments[key][1], err_msg=key)
    assert state["step"] == first_step + 2


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_late_steps_match_torch(dtype):
    """From step 40,000 on, 1 - beta2^t rounds to 1 in both dtypes (beta2 0.999), so the
    update skips its division by sqrt(1 - beta2^t); torch.optim.AdamW divides: same numbers."""
    rng = np.random.default_rng(0)
    p = rng.standard_normal((7, 13)).astype(dtype)
    state = optim.adamw_init({"w": p})
    state["step"] = 40_000
    t = torch.tensor(p.copy(), requires_grad=True)
    opt = torch.optim.AdamW([t], lr=1e-2, betas=(0.9, 0.999), weight_decay=0.1)
    opt.state[t] = {"step": torch.tensor(40_000.0), "exp_avg": torch.zeros_like(t),
                    "exp_avg_sq": torch.zeros_like(t)}
    for _ in range(3):
        g = rng.standard_normal(p.shape).astype(dtype)
        t.grad = torch.tensor(g.copy())
        opt.step()
        optim.adamw_update({"w": p}, {"w": g}, state, 1e-2, betas=(0.9, 0.999), weight_decay=0.1)
    assert state["step"] == float(opt.state[t]["step"]) == 40_003
    np.testing.assert_allclose(p, t.detach().numpy(), **ADAMW_TOL[dtype])


def test_non_finite_weights_are_reported_by_key():
    """The keys of the weights the update left holding NaN or inf, found chunk by chunk: a
    NaN gradient in one chunk of one tensor names that tensor only; lr 1e39 (float32)
    overflows every weight a gradient moves."""
    with chunked(16, 2):
        _check_non_finite_reported()


def _check_non_finite_reported():
    rng = np.random.default_rng(1)
    params = {"a": {"weight": rng.standard_normal((10, 10)).astype(np.float32)},
              "b": {"bias": rng.standard_normal(100).astype(np.float32)}}
    grads = {"a": {"weight": np.ones((10, 10), np.float32)}, "b": {"bias": np.ones(100, np.float32)}}
    grads["b"]["bias"][47] = np.nan  # in the third chunk of b
    with np.errstate(invalid="ignore"):
        assert optim.adamw_update(params, grads, optim.adamw_init(params), 1e-3) == ["b.bias"]
    assert np.isnan(params["b"]["bias"]).sum() == 1 and np.isfinite(params["a"]["weight"]).all()
    params = {"a": {"weight": rng.standard_normal((10, 10)).astype(np.float32)}}
    with np.errstate(over="ignore", invalid="ignore"):
        bad = optim.adamw_update(params, {"a": {"weight": np.ones((10, 10), np.float32)}},
                                 optim.adamw_init(params), 1e39)
    assert bad == ["a.weight"] and not np.isfinite(params["a"]["weight"]).any()


def test_huge_finite_weights_are_not_reported():
    """Weights near float32's largest value sum to inf but are finite: the chunks' check
    (max and min) does not overflow, and nothing is reported."""
    params = {"a": {"weight": np.full((4, 8), 3e38, np.float32)}}
    grads = {"a": {"weight": np.zeros((4, 8), np.float32)}}
    with chunked(8, 2):
        assert optim.adamw_update(params, grads, optim.adamw_init(params), 1e-3, weight_decay=0.0) == []


def test_errstate_of_the_caller_reaches_the_threads():
    """The update's float warnings follow the caller's np.errstate on every thread (it is per
    thread in NumPy): train_step ignores overflow and reports non-finite weights itself, so
    no thread may warn. (Warnings made errors: one raised on a pool thread reaches here.)"""
    params = {"a": {"weight": np.ones((64, 64), np.float32)}}
    grads = {"a": {"weight": np.ones((64, 64), np.float32)}}
    with chunked(1, 2):  # 4,096 pieces: both threads take some
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with np.errstate(over="ignore", invalid="ignore"):
                bad = optim.adamw_update(params, grads, optim.adamw_init(params), 1e39)
        assert bad == ["a.weight"]
        with np.errstate(over="raise"), pytest.raises(FloatingPointError):
            optim.adamw_update(params, grads, optim.adamw_init(params), 1e39)


@pytest.mark.parametrize("threads", [1, 2])
def test_claim_pieces_returns_results_in_order(threads):
    made = []

    def worker():
        made.append(1)  # one per thread that took part
        return lambda i: i * i

    set_threads(threads)
    try:
        assert claim_pieces(1000, worker) == [i * i for i in range(1000)]
        assert 1 <= len(made) <= threads
        assert claim_pieces(0, worker) == []
    finally:
        set_threads(None)


def test_grad_norm_does_not_depend_on_threads():
    """The chunks' partial sums are added in chunk order, whichever thread computed each."""
    rng = np.random.default_rng(3)
    grads = {f"t{i}": {"weight": rng.standard_normal(n).astype(np.float32)}
             for i, n in enumerate([5, 70_000, 200_001, 1])}
    norms = []
    for threads in (1, 2):
        set_threads(threads)
        try:
            norms.append(optim.grad_norm(grads))
        finally:
            set_threads(None)
    exact = math.sqrt(sum(float(np.sum(g["weight"].astype(np.float64) ** 2)) for g in grads.values()))
    assert norms[0] == norms[1] == pytest.approx(exact, rel=1e-6)


def _tiny_run(seed=0):
    config = GPT2Config(n_layer=1, n_head=2, n_embd=16, n_ctx=8, vocab_size=40)
    params = init_params(config, seed=seed)
    x = np.random.default_rng(seed).integers(0, 40, (2, 8))
    return config, params, [(x, (x + 1) % 40)]


def _snapshot(tree):
    return {k: a.copy() for k, a in flatten_params(tree).items()}


@pytest.mark.parametrize("micro_batches", [1, 3])
def test_train_step_names_non_finite_gradients_through_the_norm(monkeypatch, micro_batches):
    """train_step leaves the gradients' finite check to their norm (one pass less per
    micro-batch): a NaN gradient with a finite loss still raises NonFiniteError naming the
    tensor, as loss_and_grads' own check does, and touches neither weights nor moments."""
    config, params, batches = _tiny_run()
    real = backward._loss_and_grads_fast

    def nan_in_c_fc(*args, **kwargs):
        loss, grads = real(*args, **kwargs)
        grads["h"][0]["mlp"]["c_fc"]["weight"][3, 5] = np.nan
        return loss, grads

    monkeypatch.setattr(backward, "_loss_and_grads_fast", nan_in_c_fc)
    with pytest.raises(NonFiniteError, match=r"non-finite gradients \(the loss is finite\) for h\.0\.mlp\.c_fc\.weight$"):
        backward.loss_and_grads(params, config, *batches[0])
    loss, grads = backward.loss_and_grads(params, config, *batches[0], check_grads=False)
    assert math.isfinite(loss) and np.isnan(grads["h"][0]["mlp"]["c_fc"]["weight"][3, 5])
    state = optim.adamw_init(params)
    before, moments = _snapshot(params), _snapshot(state["m"])
    for accumulate in (None, distributed.Solo().accumulate_grads):
        with pytest.raises(NonFiniteError, match=r"for h\.0\.mlp\.c_fc\.weight$"):
            train_step(params, config, state, batches * micro_batches, 1e-3, accumulate=accumulate)
    assert state["step"] == 0
    for key, a in flatten_params(params).items():
        np.testing.assert_array_equal(a, before[key], err_msg=key)
    for key, a in flatten_params(state["m"]).items():
        np.testing.assert_array_equal(a, moments[key], err_msg=key)


def test_train_step_without_the_per_batch_check_is_the_same_step():
    """Skipping loss_and_grads' finite check changes nothing else: the step's loss, norm,
    weights and moments equal those of a step whose accumulate checks every micro-batch."""
    config, params, batches = _tiny_run(1)
    twin = nest_params(_snapshot(params))
    states = [optim.adamw_init(params), optim.adamw_init(twin)]
    first = train_step(params, config, states[0], batches * 2, 1e-3)
    second = train_step(twin, config, states[1], batches * 2, 1e-3,
                        accumulate=lambda p, c, m: accumulate_grads(p, c, m, check_grads=True))
    assert first == second
    for tree in ("m", "v"):
        for key, a in flatten_params(states[0][tree]).items():
            np.testing.assert_array_equal(a, flatten_params(states[1][tree])[key], err_msg=key)
    for key, a in flatten_params(params).items():
        np.testing.assert_array_equal(a, flatten_params(twin)[key], err_msg=key)
