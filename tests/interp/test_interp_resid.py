"""numpy_gpt2.interp.resid and heads against TransformerLens' ActivationCache and head_detector.

The numpy cache is numpy_gpt2.activations of the processed weights (process_weights); the
oracle is a HookedTransformer with the same processing (tests/interp_oracle.py), run on the
same tokens with a batch axis of 1. Tolerances are relative to each array's largest value.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from transformer_lens import head_detector

from numpy_gpt2.debug.capture import activation_names, activations
from numpy_gpt2.interp.heads import (detect_heads, detection_pattern, head_results, induction_scores,
                                     repeated_random_tokens)
from numpy_gpt2.interp.resid import (accumulated_resid, apply_ln_to_stack, decompose_resid,
                                     logit_attrs, logit_lens)
from numpy_gpt2.interp.weights import process_weights, unembedding_bias

from helpers.interp_oracle import random_params, small_config, tl_model

TOL = {np.float64: 1e-12, np.float32: 3e-5}


def setup(dtype, seed, shape=(2, 2, 16), T=9, batch=True):
    config = small_config(*shape)
    params = random_params(config, seed, dtype)
    processed = process_weights(params, config)
    tokens = np.random.default_rng(seed).integers(0, config.vocab_size, T)
    tokens = tokens[None] if batch else tokens
    cache = activations(processed, config, tokens, names="*,*softmax")
    with torch.no_grad():
        _, theirs = tl_model(params, config).run_with_cache(torch.as_tensor(tokens if batch else tokens[None]),
                                                             remove_batch_dim=not batch)
    return config, processed, tokens, cache, theirs


def close(ours, theirs, dtype):
    theirs = theirs.detach().numpy() if isinstance(theirs, torch.Tensor) else np.asarray(theirs)
    assert ours.shape == theirs.shape
    err = np.abs(ours - theirs).max() / max(np.abs(theirs).max(), 1e-30)
    assert err < TOL[dtype], err


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@settings(max_examples=3, deadline=None)
@given(seed=st.integers(0, 2 ** 16), shape=st.sampled_from([(1, 1, 8), (2, 2, 16), (3, 4, 24)]))
def test_stacks_equal_transformer_lens(dtype, seed, shape):
    config, params, tokens, cache, theirs = setup(dtype, seed, shape)
    for layer in [None] + list(range(config.n_layer + 1)):
        labels, stack = decompose_resid(cache, config, layer)
        stack_tl, labels_tl = theirs.decompose_resid(layer, return_labels=True)
        assert labels == labels_tl
        close(stack, stack_tl, dtype)
        tl_layer = config.n_layer if layer is None else layer
        close(apply_ln_to_stack(stack, cache, config, layer),
              theirs.apply_ln_to_stack(stack_tl, tl_layer), dtype)
        for incl_mid in (False, True):
            labels, acc = accumulated_resid(cache, config, layer, incl_mid=incl_mid)
            acc_tl, labels_tl = theirs.accumulated_resid(layer, incl_mid=incl_mid, return_labels=True)
            assert labels == labels_tl
            close(acc, acc_tl, dtype)
        if layer is not None and layer < config.n_layer:  # ln_2's scale
            close(apply_ln_to_stack(stack, cache, config, layer, mlp_input=True),
                  theirs.apply_ln_to_stack(stack_tl, layer, mlp_input=True), dtype)
    # the logit lens's normalization: each point with its own statistics (TL: recompute_ln)
    _, acc = accumulated_resid(cache, config)
    acc_tl = theirs.accumulated_resid(None)
    close(apply_ln_to_stack(acc, cache, config, recompute=True),
          theirs.apply_ln_to_stack(acc_tl, None, recompute_ln=True), dtype)
    # logit attributions, with and without incorrect tokens
    _, stack = decompose_resid(cache, config)
    stack_tl = theirs.decompose_resid(None)
    wrong = (tokens + 1) % config.vocab_size
    close(logit_attrs(params, config, stack, tokens, cache=cache),
          theirs.logit_attrs(stack_tl, torch.as_tensor(tokens)), dtype)
    close(logit_attrs(params, config, stack, tokens, wrong, cache=cache),
          theirs.logit_attrs(stack_tl, torch.as_tensor(tokens), torch.as_tensor(wrong)), dtype)
    # per-head outputs
    theirs.compute_head_results()
    for layer in range(config.n_layer):
        result_tl = theirs[f"blocks.{layer}.attn.hook_result"]  # (B, T, H, E)
        close(head_results(cache, config, layer, params), result_tl.permute(2, 0, 1, 3), dtype)


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 2 ** 16), T=st.integers(1, 10))
def test_identities_float64(seed, T):
    config, params, tokens, cache, _ = setup(np.float64, seed, T=T, batch=False)
    logits = cache["logits"]  # forward adds the unembedding bias
    for layer in [None] + list(range(config.n_layer)):
        _, stack = decompose_resid(cache, config, layer)
        _, acc = accumulated_resid(cache, config, layer)
        assert np.abs(stack.sum(0) - acc[-1]).max() < 1e-12
    # direct logit attributions of the parts plus the unembedding bias are the logits
    _, stack = decompose_resid(cache, config)
    attrs = logit_attrs(params, config, stack, tokens, cache=cache)  # (n, T)
    direct = attrs.sum(0) + unembedding_bias(params)[tokens]
    assert np.abs(direct - logits[np.arange(T), tokens]).max() < 1e-12 * np.abs(logits).max()
    # ... and of the heads, the output biases and the MLPs too
    parts = [stack[:2]] + [np.concatenate([head_results(cache, config, i, params),
                                           np.broadcast_to(params["h"][i]["attn"]["c_proj"]["bias"],
                                                           stack.shape[1:])[None],
                                           stack[3 + 2 * i][None]]) for i in range(config.n_layer)]
    total = logit_attrs(params, config, np.concatenate(parts), tokens, cache=cache).sum(0)
    assert np.abs(total - attrs.sum(0)).max() < 1e-12 * np.abs(logits).max()
    # the logit lens's last row is the model's logits; its other rows read earlier points
    lens = logit_lens(cache, params, config)
    assert lens.shape == (config.n_layer + 1, T, config.vocab_size)
    assert np.abs(lens[-1] - logits).max() < 1e-12 * np.abs(logits).max()
    assert np.abs(logit_lens(cache, params, config, recompute=False)[-1] - logits).max() < 1e-12 * np.abs(logits).max()
    # a cache with every hook point (resid_pre, resid_mid, the LayerNorm scales, z, result)
    # gives the same numbers as the one they are derived from
    full = activations(params, config, tokens, names=activation_names(config, points=True))
    for layer in [None] + list(range(config.n_layer)):
        for mlp_input in ([False] if layer is None else [False, True]):
            _, acc_full = accumulated_resid(full, config, layer, incl_mid=True)
            _, acc = accumulated_resid(cache, config, layer, incl_mid=True)
            assert np.abs(acc_full - acc).max() < 1e-13
            a = apply_ln_to_stack(acc, cache, config, layer, mlp_input=mlp_input)
            b = apply_ln_to_stack(acc, full, config, layer, mlp_input=mlp_input)
            assert np.abs(a - b).max() < 1e-12 * np.abs(a).max()
    for i in range(config.n_layer):
        assert np.abs(head_results(full, config, i) - head_results(cache, config, i, params)).max() < 1e-13
    # heads sum, with the output bias, to the attention output
    for i in range(config.n_layer):
        total = head_results(cache, config, i, params).sum(0) + params["h"][i]["attn"]["c_proj"]["bias"]
        assert np.abs(total - cache[f"h.{i}.attn"]).max() < 1e-12


def test_logit_lens_unprocessed_weights_last_row_is_the_logits():
    config = small_config(2, 2, 16)
    params = random_params(config, 5)  # LayerNorm weights and biases not folded
    tokens = np.array([4, 8, 15, 16, 23, 42])
    cache = activations(params, config, tokens)
    lens = logit_lens(cache, params, config)
    assert np.abs(lens[-1] - cache["logits"]).max() < 1e-12 * np.abs(cache["logits"]).max()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("error_measure", ["mul", "abs"])
@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 2 ** 16), excl=st.tuples(st.booleans(), st.booleans()))
def test_detect_heads_equals_transformer_lens(dtype, error_measure, seed, excl):
    # repeated tokens, so duplicate and induction patterns are not empty
    config = small_config(2, 4, 16)
    params = random_params(config, seed, dtype, scale=0.6)
    half = np.random.default_rng(seed).integers(0, config.vocab_size, 6)
    tokens = np.concatenate([half, half, half[:3]])
    cache = activations(params, config, tokens, names="*softmax")
    exclude_bos, exclude_current = excl
    custom = np.tril(np.random.default_rng(seed).random((15, 15)) > 0.7).astype(float)
    for kind in ("previous_token", "duplicate_token", "induction", custom):
        ours = detect_heads(cache, config, kind, tokens, exclude_bos=exclude_bos,
                            exclude_current_token=exclude_current, error_measure=error_measure)
        if isinstance(kind, str):
            pattern_tl = getattr(head_detector, f"get_{kind}_head_detection_pattern")(
                torch.as_tensor(tokens)[None])
            assert np.array_equal(detection_pattern(kind, tokens), pattern_tl.numpy())
        else:
            pattern_tl = torch.as_tensor(kind)
        theirs = np.array([[head_detector.compute_head_attention_similarity_score(
            torch.as_tensor(cache[f"h.{i}.attn.softmax"][h]).double().clone(), pattern_tl.double(),
            exclude_bos=exclude_bos, exclude_current_token=exclude_current, error_measure=error_measure)
            for h in range(config.n_head)] for i in range(config.n_layer)])
        assert ours.shape == (config.n_layer, config.n_head)
        if isinstance(kind, str) and kind == "previous_token":  # needs no tokens
            assert np.array_equal(ours, detect_heads(
                cache, config, kind, exclude_bos=exclude_bos, exclude_current_token=exclude_current,
                error_measure=error_measure))
        assert np.abs(ours - theirs).max() < 1e-12 if error_measure == "mul" else np.array_equal(ours, theirs)


def test_induction_scores_on_a_constructed_stripe():
    # induction_stripe reads exactly the key after the earlier copy of the current token
    config = small_config(1, 1, 8, n_ctx=64)
    tokens = repeated_random_tokens(7, 3, seed=1, vocab_size=config.vocab_size, prefix=0)
    assert tokens.shape == (3, 15) and np.all(tokens[:, 1:8] == tokens[:, 8:]) and np.all(tokens[:, 0] == 0)
    pattern = detection_pattern("induction", tokens[0])
    # the stripe of repeated_random_tokens is part of TL's induction pattern
    q = np.arange(8, 15)
    assert np.all(pattern[q, q - 7 + 1] == 1)
    params = random_params(config, 0, scale=1.0)
    scores = induction_scores(params, config, seq_len=7, batch=3, seed=1)
    # the same number, written as loops over the sequences and the second copy's queries
    expected = np.mean([[activations(params, config, row, names="*softmax")["h.0.attn.softmax"][0, q, q - 6]
                         for q in range(7, 14)] for row in repeated_random_tokens(7, 3, 1, config.vocab_size)])
    assert scores.shape == (1, 1) and abs(scores[0, 0] - expected) < 1e-12


def test_bad_arguments():
    config, params, tokens, cache, _ = setup(np.float64, 0, batch=False)
    with pytest.raises(ValueError, match="layer"):
        decompose_resid(cache, config, layer=3)
    with pytest.raises(ValueError, match="layer"):
        accumulated_resid(cache, config, layer=-1)
    with pytest.raises(ValueError, match="incl_mid"):
        accumulated_resid(cache, config, incl_mid=1)
    with pytest.raises(ValueError, match="recompute"):
        apply_ln_to_stack(np.zeros((1, 9, 16)), cache, config, recompute="yes")
    with pytest.raises(ValueError, match="recompute"):
        logit_lens(cache, params, config, recompute=None)
    with pytest.raises(ValueError, match="stack"):
        apply_ln_to_stack(np.zeros((1, 9, 15)), cache, config)
    with pytest.raises(ValueError, match="tokens"):
        logit_attrs(params, config, np.zeros((1, 9, 16)), np.full(9, 61))
    with pytest.raises(ValueError, match="incorrect_tokens"):
        logit_attrs(params, config, np.zeros((1, 9, 16)), tokens, incorrect_tokens=tokens[:3])
    with pytest.raises(ValueError, match="cache"):
        decompose_resid({}, config)
    with pytest.raises(ValueError, match="params"):
        head_results(cache, config, 0)
    with pytest.raises(ValueError, match="kind"):
        detect_heads(cache, config, "copying")
    with pytest.raises(ValueError, match="tokens"):
        detect_heads(cache, config, "induction")
    with pytest.raises(ValueError, match="error_measure"):
        detect_heads(cache, config, "previous_token", error_measure="l2")
    with pytest.raises(ValueError, match="exclude_bos"):
        detect_heads(cache, config, "previous_token", exclude_bos=None)
    with pytest.raises(ValueError, match="seq_len"):
        repeated_random_tokens(0, 1, 0, 10)
    with pytest.raises(ValueError, match="prefix"):
        repeated_random_tokens(3, 1, 0, 10, prefix=10)
    with pytest.raises(ValueError, match="seq_len"):
        induction_scores(params, config, seq_len=20)
