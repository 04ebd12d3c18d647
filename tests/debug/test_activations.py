"""numpy_gpt2.activations: every named activation against the same intermediate of
transformers' GPT2LMHeadModel (forward hooks, output_attentions), per name, float32 and float64;
capture changes nothing; name selection and shapes are as documented."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import numpy_gpt2
from helpers.checkpoints import make_config, reference_model, write_checkpoint
from numpy_gpt2.debug.capture import activation_names, activations, forward_order_key, select_names
from helpers.oracle_activations import one_torch_thread, oracle_activations  # noqa: F401  (autouse fixture)

N_CTX, VOCAB, N_LAYER, N_HEAD, N_EMBD = 24, 97, 3, 4, 32

# max |ours - oracle| <= RTOL * max |oracle| + ATOL, per name. float32: both sides round at
# ~6e-8 per op in different orders (measured worst ~1e-6 of the tensor's max); float64: ~1e-15.
from helpers.tolerances import ACTIVATION_TOL as TOL  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("acts_ckpt")
    write_checkpoint(directory, make_config(n_layer=N_LAYER, n_head=N_HEAD, n_embd=N_EMBD,
                                            n_ctx=N_CTX, vocab_size=VOCAB))
    return directory


@pytest.fixture(scope="module")
def models(checkpoint):
    """dtype -> (params, config, oracle model)."""
    return {dt: numpy_gpt2.load(checkpoint, dtype=dt) + (reference_model(checkpoint, tdt),)
            for dt, tdt in [(np.float32, torch.float32), (np.float64, torch.float64)]}


def expected_shapes(config, T):
    E, H, V = config.n_embd, config.n_head, config.vocab_size
    block = {"ln_1": (T, E), "attn.c_attn": (T, 3 * E), "attn.softmax": (H, T, T), "attn": (T, E),
             "ln_2": (T, E), "mlp.c_fc": (T, 4 * E), "mlp.gelu": (T, 4 * E), "mlp.c_proj": (T, E),
             "": (T, E)}
    shapes = {"wte": (T, E), "wpe": (T, E)}
    for i in range(config.n_layer):
        shapes.update({f"h.{i}.{n}" if n else f"h.{i}": s for n, s in block.items()})
    shapes.update({"ln_f": (T, E), "logits": (T, V)})
    return shapes


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@settings(max_examples=8)
@given(data=st.data())
def test_every_name_matches_transformers(models, dtype, data):
    params, config, oracle = models[dtype]
    T = data.draw(st.integers(1, N_CTX), label="T")
    tokens = np.array(data.draw(st.lists(st.integers(0, VOCAB - 1), min_size=T, max_size=T)))
    ours = activations(params, config, tokens, "*,*softmax")
    theirs = oracle_activations(oracle, tokens, "*,*softmax")
    assert list(ours) == list(theirs) == activation_names(config)
    shapes = expected_shapes(config, T)
    rtol, atol = TOL[dtype]
    for name, a in ours.items():
        b = theirs[name]
        assert a.shape == b.shape == shapes[name], name
        assert a.dtype == dtype, name
        err = np.abs(a - b).max()
        assert err <= rtol * np.abs(b).max() + atol, f"{name}: max abs err {err:.3g}"


def test_capturing_does_not_change_the_logits(models):
    """activations() returns the logits of the forward pass it observed, bit for bit, and
    copying every activation on the way does not perturb them."""
    params, config, _ = models[np.float32]
    tokens = np.arange(N_CTX) * 7 % VOCAB
    seen = []
    observed = numpy_gpt2.forward(params, config, tokens, record=lambda n, v: seen.append(n))
    captured = activations(params, config, tokens, "*,*softmax")
    assert np.array_equal(observed, captured["logits"])
    assert seen == activation_names(config)  # the forward pass reports every name, in order
    # the captures are copies: nothing kept aliases the weights or another capture
    arrays = list(captured.values())
    for p in numpy_gpt2.flatten_params(params).values():
        assert not any(np.shares_memory(a, p) for a in arrays)
    assert all(a.flags.owndata for a in arrays)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_logits_with_and_without_capture_are_identical(models, dtype):
    """forward() without a record callable gives the very same bits as with one: what a
    dump shows is exactly what generation computes. (So the record calls must sit in the
    code path forward always runs; a separate unrecorded fast path breaks this.)"""
    params, config, _ = models[dtype]
    for tokens in (np.arange(N_CTX) * 7 % VOCAB, np.array([[5, 1, 2], [96, 0, 3]])):
        plain = numpy_gpt2.forward(params, config, tokens)
        captured = activations(params, config, tokens)
        assert np.array_equal(plain, captured["logits"]), \
            f"max abs diff {np.abs(plain - captured['logits']).max():.3g}"


def test_batch_keeps_the_batch_axis_everywhere(models):
    params, config, _ = models[np.float64]
    tokens = np.array([[1, 5, 9, 2, 40], [3, 3, 0, 96, 11]])
    batch = activations(params, config, tokens, "*,*softmax")
    shapes = expected_shapes(config, 5)
    for name, a in batch.items():
        assert a.shape == (2,) + shapes[name], name
        for b in range(2):
            single = activations(params, config, tokens[b], name)[name]
            np.testing.assert_allclose(a[b], single, rtol=1e-12, atol=1e-13, err_msg=name)


def test_name_selection(models):
    _, config, _ = models[np.float32]
    names = activation_names(config)
    everything_but_softmax = [n for n in names if not n.endswith("softmax")]
    assert select_names(names, "*") == everything_but_softmax
    assert select_names(names, "*softmax") == [f"h.{i}.attn.softmax" for i in range(N_LAYER)]
    assert select_names(names, "logits,h.1.*") == [n for n in everything_but_softmax
                                                   if n.startswith("h.1.")] + ["logits"]
    assert select_names(names, ["h.2", "wte"]) == ["wte", "h.2"]  # forward order, not pattern order
    assert select_names(names, "h.0.attn*") == ["h.0.attn.c_attn", "h.0.attn"]
    with pytest.raises(ValueError, match="'h.9.*' matches no name"):
        select_names(names, "h.0.ln_1,h.9.*")
    with pytest.raises(ValueError, match="no activation name patterns"):
        select_names(names, " , ")


def test_forward_order_key_sorts_any_names():
    names = ["logits", "h.10.ln_1", "h.2", "h.2.mlp.gelu", "wpe", "ln_f", "wte", "mystery",
             "h.2.attn.softmax", "h.2.attn"]
    assert sorted(names, key=forward_order_key) == [
        "wte", "wpe", "h.2.attn.softmax", "h.2.attn", "h.2.mlp.gelu", "h.2", "h.10.ln_1",
        "ln_f", "logits", "mystery"]
