"""Every hook point against TransformerLens' HookedTransformer holding the same weights without
weight processing (tests/interp_oracle.tl_model(process=False)): numpy_gpt2.activations
converted by numpy_gpt2.interp.names.to_transformer_lens equals run_with_cache hook by hook, in
float32 and float64; and hooks that ablate a head's z, zero an MLP neuron or patch resid_pre
give the logits of TransformerLens' run_with_hooks with the same intervention."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers.interp_oracle import random_params, small_config, tl_model
from numpy_gpt2.debug.capture import activation_names, activations
from numpy_gpt2.interp import (from_transformer_lens, from_transformer_lens_name, to_transformer_lens,
                               to_transformer_lens_name)
from numpy_gpt2.model import forward

# |ours - TL| <= TOL * max |TL| per hook point (finite entries; -inf at the same places).
# Measured on 2-3 layer models with weights of std 0.5: float64 worst 5e-15 (pattern) forward,
# 2e-14 (grad of ln1.hook_scale) backward; float32 worst 4e-6 (pattern) forward, 5e-6 (grad of
# ln1.hook_scale) backward: both sides round at ~6e-8 per op in different orders.
TOL = {np.float32: 2e-5, np.float64: 1e-13}


@pytest.fixture(autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def oracle(params, config):
    model = tl_model(params, config, process=False)
    model.set_use_attn_result(True)  # hook_result exists only then
    return model


def tl_run(model, tokens, hooks=()):
    batch = np.asarray(tokens).ndim == 2
    t = torch.as_tensor(np.asarray(tokens) if batch else np.asarray(tokens)[None])
    with torch.no_grad():
        if hooks:
            logits = model.run_with_hooks(t, fwd_hooks=list(hooks))
            return (logits if batch else logits[0]).numpy()
        logits, cache = model.run_with_cache(t, remove_batch_dim=not batch)
    return (logits if batch else logits[0]).numpy(), {k: v.numpy() for k, v in cache.items()}


def assert_close(ours, theirs, dtype, what):
    assert ours.shape == theirs.shape, f"{what}: shape {ours.shape}, TransformerLens {theirs.shape}"
    finite = np.isfinite(theirs)
    assert np.array_equal(np.isfinite(ours), finite), f"{what}: -inf at other places"
    assert np.array_equal(ours[~finite], theirs[~finite]), what
    if finite.any():
        err = np.abs(ours[finite] - theirs[finite]).max()
        scale = np.abs(theirs[finite]).max()
        assert err <= TOL[dtype] * scale, f"{what}: max abs err {err:.3g} (max |value| {scale:.3g})"


def every_point(params, config, tokens):
    return activations(params, config, tokens, activation_names(config, points=True))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("batch", [False, True])
def test_every_hook_equals_transformer_lens(dtype, batch):
    config = small_config(n_layer=3, n_head=3, n_embd=24, n_ctx=32, vocab_size=61)
    params = random_params(config, seed=1, dtype=dtype, scale=0.5)
    shape = (2, 13) if batch else (13,)
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, size=shape)
    logits, cache = tl_run(oracle(params, config), tokens)
    ours = every_point(params, config, tokens)
    converted = to_transformer_lens(ours, config)
    assert sorted(converted) == sorted(cache)  # every TransformerLens hook, nothing else
    for name, theirs in cache.items():
        assert_close(converted[name], theirs, dtype, name)
    assert_close(ours["logits"], logits, dtype, "logits")
    # and the other way: TransformerLens' cache under our names and layouts
    back = from_transformer_lens(cache)
    for name, theirs in back.items():
        assert_close(ours[name], theirs, dtype, name)


@settings(max_examples=6)
@given(n_layer=st.integers(1, 2), n_head=st.integers(1, 3), D=st.sampled_from([2, 4, 8]),
       T=st.integers(1, 10), seed=st.integers(0, 2**16))
def test_every_hook_equals_transformer_lens_any_shape(n_layer, n_head, D, T, seed):
    config = small_config(n_layer=n_layer, n_head=n_head, n_embd=n_head * D, n_ctx=12, vocab_size=29)
    params = random_params(config, seed=seed, dtype=np.float64, scale=0.5)
    tokens = np.random.default_rng(seed).integers(0, config.vocab_size, size=T)
    _, cache = tl_run(oracle(params, config), tokens)
    converted = to_transformer_lens(every_point(params, config, tokens), config)
    assert sorted(converted) == sorted(cache)
    for name, theirs in cache.items():
        assert_close(converted[name], theirs, np.float64, name)


def test_names_both_ways():
    config = small_config(n_layer=2)
    for name in activation_names(config, points=True):
        tl = to_transformer_lens_name(name)
        if tl is None:
            assert name.endswith(("ln_1", "ln_2", "attn.c_attn")), name
        else:
            assert from_transformer_lens_name(tl) == name
    assert to_transformer_lens_name("h.1.attn.z") == "blocks.1.attn.hook_z"
    assert to_transformer_lens_name("h.1") == "blocks.1.hook_resid_post"
    assert from_transformer_lens_name("ln_final.hook_scale") == "ln_f.scale"
    with pytest.raises(ValueError, match="hook_attn_in"):
        from_transformer_lens_name("blocks.0.hook_attn_in")


# ---- interventions: our hooks and TransformerLens' run_with_hooks ------------------------------

def interventions(config, clean_cache_ours, clean_cache_tl):
    """(description, our hooks, TransformerLens fwd_hooks) for the same three interventions."""
    layer, head, neuron, pos = config.n_layer - 1, config.n_head - 1, 5, 2

    def ablate_z(name, z):  # ours (H, T, D) or (B, H, T, D): zero one head
        z = z.copy()
        z[..., head, :, :] = 0
        return z

    def ablate_z_tl(z, hook):  # (B, T, H, D)
        z[:, :, head, :] = 0
        return z

    def zero_neuron(name, a):
        a = a.copy()
        a[..., neuron] = 0
        return a

    def zero_neuron_tl(a, hook):
        a[..., neuron] = 0
        return a

    def patch(name, x):  # resid_pre at one position from the clean run
        x = x.copy()
        x[..., pos, :] = clean_cache_ours[name][..., pos, :]
        return x

    def patch_tl(x, hook):
        x[:, pos, :] = torch.as_tensor(clean_cache_tl[hook.name][..., pos, :])
        return x

    return [("ablate a head's z", {f"h.{layer}.attn.z": ablate_z}, [(f"blocks.{layer}.attn.hook_z", ablate_z_tl)]),
            ("zero an MLP neuron", {"h.0.mlp.gelu": zero_neuron}, [("blocks.0.mlp.hook_post", zero_neuron_tl)]),
            ("patch resid_pre", {f"h.{layer}.resid_pre": patch},
             [(f"blocks.{layer}.hook_resid_pre", patch_tl)])]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("batch", [False, True])
def test_interventions_equal_run_with_hooks(dtype, batch):
    config = small_config(n_layer=2, n_head=3, n_embd=24, n_ctx=32, vocab_size=61)
    params = random_params(config, seed=2, dtype=dtype, scale=0.5)
    rng = np.random.default_rng(3)
    shape = (2, 9) if batch else (9,)
    clean, corrupt = rng.integers(0, config.vocab_size, size=(2,) + shape)
    model = oracle(params, config)
    _, clean_tl = tl_run(model, clean)
    clean_ours = activations(params, config, clean, "*resid_pre")
    unhooked = forward(params, config, corrupt)
    for what, hooks, tl_hooks in interventions(config, clean_ours, clean_tl):
        theirs = tl_run(model, corrupt, tl_hooks)
        for reference in (False, True):
            ours = forward(params, config, corrupt, hooks=hooks, reference=reference)
            assert_close(ours, theirs, dtype, f"{what} (reference={reference})")
        assert not np.allclose(ours, unhooked), f"{what} changed nothing: the test could not fail"


# ---- gradients at every hook point -------------------------------------------------------------

def tl_gradients(model, tokens, targets):
    """dloss/d(every hook point's value) by torch autograd, the loss the mean cross-entropy of
    targets (-100 not scored). ln1 runs three times (for q, k and v), so its hooks' gradients
    are summed over the calls: the gradient of the one value they share."""
    grads = {}

    def keep(tensor, hook):
        def add(g, name=hook.name):
            grads[name] = grads.get(name, 0) + g.detach().numpy()
        tensor.register_hook(add)

    for point in model.hook_dict.values():
        point.add_hook(keep)
    try:
        logits = model(torch.as_tensor(tokens))
        V = logits.shape[-1]
        torch.nn.functional.cross_entropy(logits.reshape(-1, V), torch.as_tensor(targets).reshape(-1),
                                          ignore_index=-100).backward()
    finally:
        model.reset_hooks()
    return grads


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reference", [False, True])
def test_gradients_at_every_hook_equal_transformer_lens(dtype, reference):
    from numpy_gpt2.debug.capture import GRAD, gradient_names, gradients, next_token_targets

    config = small_config(n_layer=2, n_head=3, n_embd=24, n_ctx=32, vocab_size=61)
    params = random_params(config, seed=1, dtype=dtype, scale=0.5)
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, size=(2, 9))
    targets = next_token_targets(tokens)
    theirs = tl_gradients(oracle(params, config), tokens, targets)
    _, grads, _ = gradients(params, config, tokens, targets, gradient_names(config, points=True),
                            reference=reference)
    ours = to_transformer_lens({name[len(GRAD):]: g for name, g in grads.items()}, config)
    assert sorted(ours) == sorted(theirs)
    for name, g in theirs.items():
        assert_close(ours[name], g, dtype, f"grad of {name}")


# ---- numpy-gpt2 compare reads a TransformerLens cache --------------------------------------------

def test_compare_reads_a_transformer_lens_cache(tmp_path, capsys, tokenizer_dir):
    from numpy_gpt2.debug.dump_format import save_activations
    from numpy_gpt2.io.checkpoint import save_checkpoint
    from helpers.run_scripts import run_script

    config = small_config(n_layer=2, n_head=3, n_embd=24, n_ctx=32, vocab_size=61)
    params = random_params(config, seed=4, dtype=np.float64, scale=0.5)
    tokens = np.random.default_rng(1).integers(0, config.vocab_size, size=10)
    model = oracle(params, config)
    with torch.no_grad():
        _, cache = model.run_with_cache(torch.as_tensor(tokens)[None])  # with the batch axis
    tl = {name: value.numpy() for name, value in cache.items()}
    np.savez(tmp_path / "tl.npz", tokens=tokens, **tl)
    ours = activations(params, config, tokens, activation_names(config, points=True))
    save_activations(tmp_path / "ours.safetensors", tokens, ours)
    save_checkpoint(tmp_path / "model", params, config, tokenizer_dir)

    status, out, _ = run_script("compare", [tmp_path / "ours.safetensors", tmp_path / "tl.npz",
                                            "--atol", "1e-12", "--rtol", "1e-12"], capsys)
    assert status == 0, out
    assert f"OK: all {len(cache)} compared tensors" in out
    status, out, _ = run_script("compare", [tmp_path / "tl.npz", "live", "--model", tmp_path / "model",
                                            "--dtype", "float64", "--atol", "1e-12", "--rtol", "1e-12"], capsys)
    assert status == 0, out
    tl["blocks.1.attn.hook_z"][0, 3, 2, 1] += 1e-3  # (batch, pos, head, d_head)
    np.savez(tmp_path / "tl.npz", tokens=tokens, **tl)
    status, out, _ = run_script("compare", [tmp_path / "ours.safetensors", tmp_path / "tl.npz"], capsys)
    assert status == 1
    assert "FIRST FAILURE: h.1.attn.z" in out and "at (2,3,1)" in out  # ours: (head, pos, d_head)
