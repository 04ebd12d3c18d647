"""GPT2Config variants real checkpoints use, forward and backward, readable and fast paths,
against transformers' GPT2LMHeadModel (eager attention: the default sdpa attention ignores
scale_attn_weights=False and scale_attn_by_inverse_layer_idx) and autograd:

  * every activation_function transformers' GPT-2 accepts (ACT2FN, but prelu and xielu,
    which have learned parameters), each function and derivative also against torch's;
  * n_inner (an MLP width other than 4 n_embd), scale_attn_weights=False,
    scale_attn_by_inverse_layer_idx=True, reorder_and_upcast_attn=True, zero biases (a
    nanoGPT bias=False model), and all of them at once;
  * erf: erf_fast against math.erf.

Tolerances, float64: logits within 1e-10 of transformers' (relative to max |logit|),
gradients within 1e-9 (max |ours - autograd| / max |autograd| per tensor). float32 (only
reorder_and_upcast_attn, which transformers computes in float32 whatever the model's
dtype): 2e-5 and 2e-4.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st

import numpy_gpt2
from helpers.checkpoints import make_config, random_state_dict
from helpers.grad_oracle import grad_error, torch_loss_and_grads, torch_model
from numpy_gpt2.activation_functions import ACTIVATIONS, activation, activation_fast, erf, erf_fast
from numpy_gpt2.config import config_from_dict
from numpy_gpt2.params import nest_params

from helpers.tolerances import CONFIG_VARIANT_TOL as TOL  # noqa: E402
from helpers.config_variants import TARGETS, TOKENS, variant_model  # noqa: E402


def check_against_transformers(params, config, model, dtype, what):
    """Logits (both paths) and gradients (both paths) against the oracle; returns the
    largest errors for the report."""
    logit_tol, grad_tol = TOL[dtype]
    with torch.no_grad():
        ref = model(torch.from_numpy(TOKENS)).logits.double().numpy()
    loss_ref, grads_ref, _ = torch_loss_and_grads(model, TOKENS, TARGETS)
    worst = {"logits": 0.0, "grads": 0.0}
    for reference in (True, False):
        logits = numpy_gpt2.forward(params, config, TOKENS, reference=reference)
        err = float(np.abs(logits - ref).max()) / float(np.abs(ref).max())
        assert err <= logit_tol, f"{what} (reference={reference}): logits off by {err:.2e} (relative)"
        worst["logits"] = max(worst["logits"], float(np.abs(logits - ref).max()))
        loss, grads = numpy_gpt2.loss_and_grads(params, config, TOKENS, TARGETS, reference=reference)
        assert abs(loss - loss_ref) <= logit_tol * max(1.0, abs(loss_ref))
        for key, g in numpy_gpt2.flatten_params(grads).items():
            err = grad_error(g, grads_ref[key], floor=1e-12)
            assert err <= grad_tol, f"{what} (reference={reference}): d{key} off by {err:.2e}"
            worst["grads"] = max(worst["grads"], err)
    print(f"\n{what}: max |dlogit| {worst['logits']:.1e}, max grad error {worst['grads']:.1e}")
    return worst


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_every_activation_function(name):
    params, config, model = variant_model(activation_function=name)
    assert config.activation_function == name
    check_against_transformers(params, config, model, np.float64, f"activation_function={name}")


@pytest.mark.parametrize("options", [
    {"n_inner": 24}, {"n_inner": 100},
    {"scale_attn_weights": False},
    {"scale_attn_by_inverse_layer_idx": True},
    {"scale_attn_weights": False, "scale_attn_by_inverse_layer_idx": True},
    {"no_bias": True},
    {"no_bias": True, "activation_function": "gelu"},  # a nanoGPT bias=False model
    {"n_inner": 40, "activation_function": "silu", "scale_attn_by_inverse_layer_idx": True},
], ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_config_options(options):
    params, config, model = variant_model(**options)
    check_against_transformers(params, config, model, np.float64, str(options))


def test_reorder_and_upcast_attn_float32():
    """transformers computes this attention in float32 (even in a float64 model); ours keeps
    the model's dtype: in float32 both are float32 attention."""
    params, config, model = variant_model(np.float32, reorder_and_upcast_attn=True)
    assert config.reorder_and_upcast_attn
    check_against_transformers(params, config, model, np.float32, "reorder_and_upcast_attn")


@settings(max_examples=8)  # each example builds and runs a transformers model (~2 s)
@given(act=st.sampled_from(sorted(ACTIVATIONS)), n_inner=st.sampled_from([None, 8, 48]),
       scaled=st.booleans(), by_layer=st.booleans(), seed=st.integers(0, 2**16))
def test_variant_combinations(act, n_inner, scaled, by_layer, seed):
    params, config, model = variant_model(seed=seed, n_inner=n_inner, activation_function=act,
                                          scale_attn_weights=scaled,
                                          scale_attn_by_inverse_layer_idx=by_layer)
    check_against_transformers(params, config, model, np.float64, "combination")


def test_kv_cache_decoding_with_variants():
    """Token by token with the cache = all at once, with the per-layer attention scale."""
    params, config, _ = variant_model(activation_function="gelu", scale_attn_weights=False,
                                      scale_attn_by_inverse_layer_idx=True, n_inner=24)
    full = numpy_gpt2.forward(params, config, TOKENS)
    cache = numpy_gpt2.new_kv_cache(config, batch_size=2, dtype=np.float64)
    steps = [numpy_gpt2.forward(params, config, TOKENS[:, t:t + 1], kv_cache=cache)
             for t in range(TOKENS.shape[1])]
    assert np.abs(np.concatenate(steps, axis=1) - full).max() < 1e-12


def test_variants_round_trip_through_config_json(tmp_path, tokenizer_dir):
    params, config, model = variant_model(n_inner=24, activation_function="quick_gelu",
                                          scale_attn_weights=False,
                                          scale_attn_by_inverse_layer_idx=True)
    numpy_gpt2.save_checkpoint(tmp_path, params, config, tokenizer_dir)
    again, config2 = numpy_gpt2.load(tmp_path, dtype=np.float64)
    assert config2 == config
    theirs = transformers.GPT2LMHeadModel.from_pretrained(tmp_path, attn_implementation="eager",
                                                          torch_dtype=torch.float64)
    with torch.no_grad():
        ref = theirs(torch.from_numpy(TOKENS)).logits.numpy()
    assert np.abs(numpy_gpt2.forward(again, config2, TOKENS) - ref).max() < 1e-9


# --- the functions themselves --------------------------------------------------------------

X = np.concatenate([np.linspace(-12, 12, 4801), np.random.default_rng(0).normal(0, 3, 4000)])


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_and_derivative_against_torch(name):
    from transformers.activations import ACT2FN
    x = torch.tensor(X, dtype=torch.float64, requires_grad=True)
    y = ACT2FN[name](x)
    (dy,) = torch.autograd.grad(y.sum(), x)
    for which, (f, df) in (("readable", activation(name)), ("fast", activation_fast(name))):
        assert np.abs(f(X) - y.detach().numpy()).max() <= 4e-15 * max(1.0, np.abs(X).max())
        assert np.abs(df(X) - dy.numpy()).max() <= 1e-14, (name, which)
        x32 = X.astype(np.float32)
        assert f(x32).dtype == np.float32 and df(x32).dtype == np.float32, (name, which)


def test_erf_fast_accuracy():
    grid = np.concatenate([np.linspace(-8, 8, 160_001), [0.0, -0.0, 1.0, 3.0, 6.0, 40.0, -1e300]])
    exact = np.array([math.erf(v) for v in grid])
    err64 = np.abs(erf_fast(grid) - exact).max()
    assert err64 <= 3e-15 and np.array_equal(erf(grid), exact)
    x32 = grid[np.abs(grid) < 1e30].astype(np.float32)
    exact32 = np.array([math.erf(v) for v in x32.astype(np.float64)])
    err32 = np.abs(erf_fast(x32).astype(np.float64) - exact32).max()
    print(f"\nerf_fast: max |error| float64 {err64:.1e}, float32 {err32:.1e}")
    assert err32 <= 6e-7
