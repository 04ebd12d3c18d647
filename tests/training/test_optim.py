"""numpy_gpt2.training.optim against PyTorch: AdamW (torch.optim.AdamW), global-norm clipping
(torch.nn.utils.clip_grad_norm_) and nanoGPT's learning-rate schedule.

The optimizer tests drive both sides with the same gradients (random, with per-tensor scales
spread over orders of magnitude so clipping is active on some steps and not on others) on the
parameters of a tiny GPT-2, for 12 steps with a changing learning rate, and compare every
parameter after every step. Real gradients: see test_train.py (whole loop against PyTorch).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import numpy_gpt2
from numpy_gpt2.initialization import init_params
from numpy_gpt2.training.optim import get_lr, grad_norm
from helpers.oracle_activations import one_torch_thread  # noqa: F401  (autouse fixture)

TINY = numpy_gpt2.GPT2Config(n_layer=2, n_head=2, n_embd=16, n_ctx=8, vocab_size=50)
TORCH_DTYPE = {np.float32: torch.float32, np.float64: torch.float64}
# float64: the two sides do the same operations in the same order, so they agree to rounding.
# float32: rounding differs (torch's fused kernels), and Adam divides by sqrt(v) + eps, which
# amplifies the relative error of small updates; 12 steps of lr <= 1e-2 move a weight by at
# most ~0.1, so an absolute 2e-6 is ~100 float32 ulps of the 0.02-sized weights.
from helpers.tolerances import ADAMW_TOL as TOL  # noqa: E402


def random_grads(params, rng, scale):
    """Gradients like params, each tensor with its own magnitude (10^-3 .. 10^1) times scale."""
    flat = numpy_gpt2.flatten_params(params)
    out = {k: (rng.standard_normal(p.shape) * 10.0 ** rng.uniform(-3, 1) * scale).astype(p.dtype)
           for k, p in flat.items()}
    return numpy_gpt2.params.nest_params(out)


def torch_twins(params, dtype, lr, betas, eps, weight_decay):
    """torch tensors holding the same values, and a torch AdamW over them with nanoGPT's two
    parameter groups (decay for ndim >= 2, none for the rest)."""
    flat = numpy_gpt2.flatten_params(params)
    tensors = {k: torch.tensor(p.copy(), dtype=TORCH_DTYPE[dtype], requires_grad=True)
               for k, p in flat.items()}
    groups = [{"params": [t for t in tensors.values() if t.ndim >= 2], "weight_decay": weight_decay},
              {"params": [t for t in tensors.values() if t.ndim < 2], "weight_decay": 0.0}]
    return tensors, torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)


def run_both(dtype, seed, lr, min_lr, betas, eps, weight_decay, max_norm, grad_scale, steps=12):
    params = init_params(TINY, seed=seed, dtype=dtype)
    tensors, opt = torch_twins(params, dtype, lr, betas, eps, weight_decay)
    state = numpy_gpt2.adamw_init(params)
    rng = np.random.default_rng(seed)
    for step in range(steps):
        lr_t = get_lr(step, lr, min_lr, warmup_iters=3, decay_iters=steps)
        grads = random_grads(params, rng, grad_scale)
        for key, g in numpy_gpt2.flatten_params(grads).items():
            tensors[key].grad = torch.tensor(g.copy())
        if max_norm is not None:
            ours = numpy_gpt2.clip_grad_norm(grads, max_norm)
            theirs = float(torch.nn.utils.clip_grad_norm_(list(tensors.values()), max_norm))
            assert ours == pytest.approx(theirs, rel=1e-5 if dtype == np.float32 else 1e-13)
        for group in opt.param_groups:
            group["lr"] = lr_t
        opt.step()
        numpy_gpt2.adamw_update(params, grads, state, lr_t, betas=betas, eps=eps,
                                weight_decay=weight_decay)
        assert state["step"] == step + 1
        for key, p in numpy_gpt2.flatten_params(params).items():
            assert p.dtype == dtype
            np.testing.assert_allclose(p, tensors[key].detach().numpy(), **TOL[dtype],
                                       err_msg=f"{key} after step {step + 1}")
    # The moments too (torch keeps them as exp_avg / exp_avg_sq). m is a running mean of
    # gradients of both signs, so entries near 0 are differences of large terms: compared
    # relative to the tensor's largest entry.
    for key, t in tensors.items():
        for ours, theirs in [(state["m"], "exp_avg"), (state["v"], "exp_avg_sq")]:
            expected = opt.state[t][theirs].numpy()
            np.testing.assert_allclose(numpy_gpt2.flatten_params(ours)[key], expected,
                                       rtol=TOL[dtype]["rtol"],
                                       atol=TOL[dtype]["rtol"] * np.abs(expected).max(), err_msg=key)
    return params


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adamw_and_clip_match_torch_gpt2_recipe(dtype):
    # nanoGPT's Shakespeare recipe: betas (0.9, 0.99), decay 0.1, clip 1.0; the gradients'
    # norms (~1..100) make the clip active on most steps.
    params = run_both(dtype, seed=0, lr=1e-2, min_lr=1e-3, betas=(0.9, 0.99), eps=1e-8,
                      weight_decay=0.1, max_norm=1.0, grad_scale=1.0)
    assert np.abs(params["wte"]["weight"] - init_params(TINY, 0, dtype)["wte"]["weight"]).max() > 1e-3


@settings(max_examples=8)
@given(seed=st.integers(0, 2**16), lr=st.floats(1e-4, 3e-2), beta1=st.sampled_from([0.0, 0.5, 0.9]),
       beta2=st.sampled_from([0.95, 0.99, 0.999]), eps=st.sampled_from([1e-8, 1e-6, 1e-3]),
       weight_decay=st.sampled_from([0.0, 0.1, 1.0]),
       max_norm=st.sampled_from([None, 0.5, 10.0, 1e4]), grad_scale=st.sampled_from([1e-3, 1.0, 30.0]),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_adamw_and_clip_match_torch_any_settings(seed, lr, beta1, beta2, eps, weight_decay, max_norm,
                                                 grad_scale, dtype):
    run_both(dtype, seed, lr, lr / 10, (beta1, beta2), eps, weight_decay, max_norm, grad_scale)


def test_weight_decay_only_on_matrices():
    """With zero gradients Adam's step is 0/(0 + eps) = 0, so only the decay moves weights:
    ndim >= 2 tensors (matmul weights, wte, wpe) shrink by exactly (1 - lr wd), biases and
    LayerNorm parameters do not change at all."""
    params = init_params(TINY, seed=1, dtype=np.float64)
    before = {k: p.copy() for k, p in numpy_gpt2.flatten_params(params).items()}
    zeros = numpy_gpt2.params.nest_params({k: np.zeros_like(p) for k, p in before.items()})
    numpy_gpt2.adamw_update(params, zeros, numpy_gpt2.adamw_init(params), lr=0.5, weight_decay=0.2)
    for key, p in numpy_gpt2.flatten_params(params).items():
        expected = before[key] * (1 - 0.5 * 0.2) if p.ndim >= 2 else before[key]
        np.testing.assert_array_equal(p, expected, err_msg=key)
    assert sum(p.ndim >= 2 for p in before.values()) == 2 + 4 * TINY.n_layer


def test_adamw_init_mirrors_params():
    params = init_params(TINY, seed=0, dtype=np.float32)
    state = numpy_gpt2.adamw_init(params)
    assert state["step"] == 0
    for which in ("m", "v"):
        flat = numpy_gpt2.flatten_params(state[which])
        assert flat.keys() == numpy_gpt2.flatten_params(params).keys()
        assert all(a.dtype == np.float32 and not a.any() for a in flat.values())


def test_adamw_rejects_mismatched_grads():
    params = init_params(TINY, seed=0)
    grads = numpy_gpt2.params.nest_params(
        {k: np.zeros_like(p) for k, p in numpy_gpt2.flatten_params(params).items() if k != "ln_f.bias"})
    with pytest.raises(ValueError, match="ln_f.bias"):
        numpy_gpt2.adamw_update(params, grads, numpy_gpt2.adamw_init(params), lr=1e-3)
    with pytest.raises(ValueError, match="betas"):
        numpy_gpt2.adamw_update(params, params, numpy_gpt2.adamw_init(params), 1e-3, betas=(1.0, 0.9))


@settings(max_examples=15)
@given(seed=st.integers(0, 2**16), scale=st.sampled_from([1e-8, 1e-3, 1.0, 1e3]),
       max_norm=st.sampled_from([1e-3, 0.5, 1.0, 100.0]))
def test_clip_grad_norm_matches_torch(seed, scale, max_norm):
    params = init_params(TINY, seed=0, dtype=np.float64)
    grads = random_grads(params, np.random.default_rng(seed), scale)
    flat = numpy_gpt2.flatten_params(grads)
    tensors = [torch.tensor(g.copy()) for g in flat.values()]
    for t in tensors:
        t.grad = t.clone()
    expected_norm = math.sqrt(sum(float((g * g).sum()) for g in flat.values()))
    norm = numpy_gpt2.clip_grad_norm(grads, max_norm)
    assert norm == pytest.approx(float(torch.nn.utils.clip_grad_norm_(tensors, max_norm)), rel=1e-13)
    assert norm == pytest.approx(expected_norm, rel=1e-13)
    for g, t in zip(flat.values(), tensors):
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-14, atol=0)
    # After clipping the norm is norm * min(1, max_norm / (norm + 1e-6)) (torch's 1e-6 guard:
    # about max_norm, slightly less when the norm is small).
    assert grad_norm(grads) == pytest.approx(norm * min(1.0, max_norm / (norm + 1e-6)), rel=1e-12)


def test_grad_norm_is_accurate_over_many_float32_elements():
    # 3 million float32 elements: a naive float32 running sum would be off by ~1e-3 relative.
    g = np.random.default_rng(0).standard_normal(3_000_000).astype(np.float32)
    exact = math.sqrt(float(np.sum(g.astype(np.float64) ** 2)))
    assert grad_norm({"a": {"weight": g}}) == pytest.approx(exact, rel=1e-6)


def test_get_lr_nanogpt_schedule():
    lr, min_lr, warmup, decay = 6e-4, 6e-5, 10, 110
    # Linear warmup: (step + 1) / (warmup + 1) of lr.
    assert get_lr(0, lr, min_lr, warmup, decay) == pytest.approx(lr / 11)
    assert get_lr(9, lr, min_lr, warmup, decay) == pytest.approx(lr * 10 / 11)
    # Cosine from lr at the end of warmup, through the midpoint, to min_lr at decay_iters.
    assert get_lr(10, lr, min_lr, warmup, decay) == pytest.approx(lr)
    assert get_lr(60, lr, min_lr, warmup, decay) == pytest.approx((lr + min_lr) / 2)
    assert get_lr(35, lr, min_lr, warmup, decay) == pytest.approx(
        min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi / 4)))
    assert get_lr(110, lr, min_lr, warmup, decay) == min_lr
    assert get_lr(10_000, lr, min_lr, warmup, decay) == min_lr
    rates = [get_lr(s, lr, min_lr, warmup, decay) for s in range(200)]
    assert all(a < b for a, b in zip(rates[:10], rates[1:11]))           # rising in warmup
    assert all(a >= b for a, b in zip(rates[10:], rates[11:]))            # never rising after
    # Constant: min_lr == lr and no warmup (the resume test uses this).
    assert {get_lr(s, 1e-3, 1e-3, 0, 50) for s in range(100)} == {1e-3}
    # decay_iters == warmup_iters: straight to min_lr after warmup (no division by zero).
    assert get_lr(5, lr, min_lr, 5, 5) == min_lr


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**16), max_norm=st.sampled_from([1e-3, 0.5, 1e4]),
       dtype=st.sampled_from([np.float32, np.float64]), chunk=st.sampled_from([7, 64, 1 << 16]))
def test_adamw_grad_scale_is_clip_then_update_bit_for_bit(seed, max_norm, dtype, chunk):
    """adamw_update(grad_scale=clip_coefficient(norm)) (what train_step runs: clipping's
    scaling inside the update's cache-sized pieces) gives the very bits of clip_grad_norm then
    adamw_update, with any piece size; the gradients it was given are left unscaled."""
    from numpy_gpt2.training import optim
    saved, optim._UPDATE_CHUNK = optim._UPDATE_CHUNK, chunk
    try:
        _check_grad_scale(seed, max_norm, dtype)
    finally:
        optim._UPDATE_CHUNK = saved


def _check_grad_scale(seed, max_norm, dtype):
    from numpy_gpt2.training import optim
    rng = np.random.default_rng(seed)
    params = init_params(TINY, seed=seed, dtype=dtype)
    fused_params = numpy_gpt2.params.nest_params({k: p.copy() for k, p in numpy_gpt2.flatten_params(params).items()})
    grads = random_grads(params, rng, 1.0)
    kept = {k: g.copy() for k, g in numpy_gpt2.flatten_params(grads).items()}
    states = [numpy_gpt2.adamw_init(params), numpy_gpt2.adamw_init(params)]
    scale = optim.clip_coefficient(grad_norm(grads), max_norm)
    optim.adamw_update(fused_params, grads, states[1], 1e-2, grad_scale=scale)
    for key, g in numpy_gpt2.flatten_params(grads).items():
        np.testing.assert_array_equal(g, kept[key], err_msg=key)
    numpy_gpt2.clip_grad_norm(grads, max_norm)
    numpy_gpt2.adamw_update(params, grads, states[0], 1e-2)
    for tree in ("m", "v"):
        for key, a in numpy_gpt2.flatten_params(states[0][tree]).items():
            np.testing.assert_array_equal(a, numpy_gpt2.flatten_params(states[1][tree])[key], err_msg=key)
    for key, a in numpy_gpt2.flatten_params(params).items():
        np.testing.assert_array_equal(a, numpy_gpt2.flatten_params(fused_params)[key], err_msg=key)
    assert (scale is None) == (max_norm == 1e4)
