"""forward(..., hooks=): hooks observe or replace any hook point, on the fast and the readable
path. Identity hooks change no bit; a replacement of the wrong shape or dtype is an error
naming the hook; hooks agree between the two paths, with an attention mask, through the kv
cache, and in generate / beam_search (where ablating a head equals zeroing its rows of c_proj,
an oracle independent of the hooks); activations(generate=N) equals one forward pass."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers.interp_oracle import random_params, small_config
from numpy_gpt2.debug.capture import activation_names, activations
from numpy_gpt2.generation.beams import beam_search
from numpy_gpt2.generation.sampling import generate
from numpy_gpt2.model import forward, new_kv_cache

CONFIG = small_config(n_layer=2, n_head=3, n_embd=24, n_ctx=32, vocab_size=61)


@pytest.fixture(scope="module")
def models():
    return {dt: random_params(CONFIG, seed=5, dtype=dt, scale=0.5) for dt in (np.float32, np.float64)}


def tokens(shape, seed=0):
    return np.random.default_rng(seed).integers(0, CONFIG.vocab_size, size=shape)


def ablate(head):
    """A hook zeroing one head's z, (.., H, T, D)."""
    def hook(name, z):
        z = z.copy()
        z[..., head, :, :] = 0
        return z
    return hook


def without_head(params, layer, head):
    """The weights whose output equals ablating that head's z: its rows of c_proj's weight zeroed."""
    params = copy.deepcopy(params)
    D = CONFIG.head_size
    params["h"][layer]["attn"]["c_proj"]["weight"][head * D:(head + 1) * D] = 0
    return params


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reference", [False, True])
@pytest.mark.parametrize("shape", [(11,), (2, 11)])
def test_identity_hooks_change_no_bit(models, dtype, reference, shape):
    params, toks = models[dtype], tokens(shape)
    plain = forward(params, CONFIG, toks, reference=reference)
    names = []
    for hook in (lambda n, a: names.append(n),  # observe
                 lambda n, a: a,                 # return the argument
                 lambda n, a: a.copy()):         # return an equal array
        out = forward(params, CONFIG, toks, reference=reference, hooks={"*": hook})
        assert np.array_equal(out, plain)
    assert names == activation_names(CONFIG, points=True)  # every point, in forward order


@settings(max_examples=10)
@given(n_layer=st.integers(1, 2), n_head=st.integers(1, 3), D=st.sampled_from([2, 4]), B=st.integers(1, 2),
       T=st.integers(1, 9), seed=st.integers(0, 2**16), dtype=st.sampled_from([np.float32, np.float64]))
def test_identity_hooks_change_no_bit_any_shape(n_layer, n_head, D, B, T, seed, dtype):
    config = small_config(n_layer=n_layer, n_head=n_head, n_embd=n_head * D, n_ctx=12, vocab_size=23)
    params = random_params(config, seed=seed, dtype=dtype, scale=0.5)
    toks = np.random.default_rng(seed).integers(0, 23, size=(B, T))
    assert np.array_equal(forward(params, config, toks, hooks={"*": lambda n, a: a}),
                          forward(params, config, toks))


@pytest.mark.parametrize("point", activation_names(CONFIG, points=True))
@pytest.mark.parametrize("batch", [False, True])
def test_replacing_any_point_agrees_between_fast_and_readable(models, point, batch, seed=0):
    """A replacement at any point (the fused attention then recomputes as written) gives the
    same logits, to rounding, on both paths, and changes them (not an affine map of every
    row alike: the LayerNorms would undo it)."""
    params, toks = models[np.float64], tokens((2, 10) if batch else (10,), seed)
    hooks = {point: lambda n, a: a * 1.5 + 0.3 * np.cos(np.arange(a.shape[-1]))}
    fast = forward(params, CONFIG, toks, hooks=hooks)
    readable = forward(params, CONFIG, toks, hooks=hooks, reference=True)
    assert np.abs(fast - readable).max() <= 1e-12 * np.abs(readable).max()
    assert not np.allclose(fast, forward(params, CONFIG, toks))


def test_hooks_see_single_or_batch_shapes_and_replacements_are_checked(models):
    params = models[np.float32]
    E, H, D, T = CONFIG.n_embd, CONFIG.n_head, CONFIG.head_size, 7
    for shape, lead in [((T,), ()), ((2, T), (2,))]:
        seen = {}
        forward(params, CONFIG, tokens(shape), hooks={"*": lambda n, a: seen.setdefault(n, a.shape) and None})
        assert seen["wpe"] == seen["h.0.resid_pre"] == seen["ln_f.normalized"] == lead + (T, E)
        assert seen["h.1.ln_2.scale"] == lead + (T, 1)
        assert seen["h.0.attn.q"] == seen["h.0.attn.z"] == lead + (H, T, D)
        assert seen["h.0.attn.scores"] == seen["h.0.attn.softmax"] == lead + (H, T, T)
        assert seen["h.0.attn.result"] == lead + (H, T, E)

    def too_short(name, a):
        return a[..., :-1]

    with pytest.raises(ValueError, match=r"hook too_short at 'h\.0\.attn\.z' returned an array of shape \(3, 7, 7\)"):
        forward(params, CONFIG, tokens(T), hooks={"h.*.attn.z": too_short}, reference=True)
    with pytest.raises(ValueError, match=r"'h\.0\.resid_mid'.*dtype float64.*float32"):
        forward(params, CONFIG, tokens(T), hooks={"h.0.resid_mid": lambda n, a: a.astype(np.float64)})
    with pytest.raises(ValueError, match=r"'logits' returned list"):
        forward(params, CONFIG, tokens(T), hooks={"logits": lambda n, a: a.tolist()})
    with pytest.raises(ValueError, match="hooks must map name patterns"):
        forward(params, CONFIG, tokens(T), hooks={3: print})


def test_hooks_compose_in_order_and_the_cache_is_the_hooked_run(models):
    params, toks = models[np.float64], tokens(9)
    calls = []
    hooks = {"h.1.attn.z": ablate(1), "h.*.attn.z": lambda n, z: calls.append((n, z[1].any()))}
    cache = activations(params, CONFIG, toks, "*.z,logits", hooks=hooks)
    assert calls == [("h.0.attn.z", True), ("h.1.attn.z", False)]  # the second sees the first's result
    assert not cache["h.1.attn.z"][1].any() and cache["h.0.attn.z"][1].any()
    assert np.array_equal(cache["logits"], forward(params, CONFIG, toks, hooks=hooks))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ablating_z_or_result_equals_zeroing_c_proj_rows(models, dtype):
    params, toks = models[dtype], tokens((2, 9))
    want = forward(without_head(params, 1, 2), CONFIG, toks)

    def zero_result(name, r):
        r = r.copy()
        r[:, 2] = 0
        return r

    tol = 1e-5 if dtype == np.float32 else 1e-13
    for hooks in ({"h.1.attn.z": ablate(2)}, {"h.1.attn.result": zero_result}):
        for reference in (False, True):
            got = forward(params, CONFIG, toks, hooks=hooks, reference=reference)
            assert np.abs(got - want).max() <= tol * np.abs(want).max()


def test_hooks_with_an_attention_mask(models):
    """A left-padded row with a hook computes what it computes alone with the hook."""
    params = models[np.float64]
    short, long = tokens(5, 1), tokens(8, 2)
    batch = np.stack([np.concatenate([np.zeros(3, np.int64), short]), long])
    mask = np.array([[0] * 3 + [1] * 5, [1] * 8])
    hooks = {"h.0.attn.z": ablate(0), "h.1.mlp.gelu": lambda n, a: a * 0.5}
    for reference in (False, True):
        both = forward(params, CONFIG, batch, attention_mask=mask, hooks=hooks, reference=reference)
        for row, alone in ((0, short), (1, long)):
            one = forward(params, CONFIG, alone, hooks=hooks, reference=reference)
            assert np.abs(both[row, -len(alone):] - one).max() <= 1e-12 * np.abs(one).max()


@pytest.mark.parametrize("reference", [False, True])
def test_hooks_through_the_kv_cache(models, reference):
    """A decode step's hooks see its new positions only; a hooked prefill plus hooked steps
    equal one hooked pass (the replaced keys and values are what the cache holds)."""
    params, toks = models[np.float64], tokens(10)
    hooks = {"h.0.attn.k": lambda n, k: k * 0.7, "h.1.attn.z": ablate(1), "h.*.resid_mid": lambda n, x: x + 0.01}
    whole = forward(params, CONFIG, toks, hooks=hooks, reference=reference)
    cache = new_kv_cache(CONFIG, 1, np.float64)
    seen = []
    shapes = {"h.1.attn.q": lambda n, a: seen.append(a.shape)}
    parts = [forward(params, CONFIG, toks[:6], kv_cache=cache, hooks={**hooks, **shapes}, reference=reference)]
    for t in range(6, 10):
        parts.append(forward(params, CONFIG, toks[t:t + 1], kv_cache=cache, hooks={**hooks, **shapes},
                             reference=reference))
    stepped = np.concatenate(parts)
    assert seen == [(3, 6, 8)] + [(3, 1, 8)] * 4
    assert np.abs(stepped - whole).max() <= 1e-12 * np.abs(whole).max()
    assert not np.allclose(whole, forward(params, CONFIG, toks))


def test_generate_and_beam_search_with_hooks(models):
    params, prompt = models[np.float64], tokens(4, 3)
    hooks = {"h.1.attn.z": ablate(2)}
    same = without_head(params, 1, 2)
    hooked = list(generate(params, CONFIG, prompt, 8, temperature=0, hooks=hooks))
    assert hooked == list(generate(same, CONFIG, prompt, 8, temperature=0))
    ragged = dict(seed=1, eos_token_id=0, stop_at_eos=False)  # left-padded with token 0
    sampled = list(generate(params, CONFIG, [prompt, prompt[:2]], 6, hooks=hooks, **ragged))
    assert np.array_equal(sampled, list(generate(same, CONFIG, [prompt, prompt[:2]], 6, **ragged)))
    beams = beam_search(params, CONFIG, prompt, 6, 3, num_return_sequences=2, eos_token_id=0, hooks=hooks)
    want = beam_search(same, CONFIG, prompt, 6, 3, num_return_sequences=2, eos_token_id=0)
    assert [list(t) for t, _ in beams] == [list(t) for t, _ in want]
    assert np.allclose([s for _, s in beams], [s for _, s in want], rtol=1e-12, atol=0)
    assert hooked != list(generate(params, CONFIG, prompt, 8, temperature=0))  # the hook mattered


@pytest.mark.parametrize("shape", [(5,), (2, 5)])
def test_activations_over_generated_tokens_equal_one_forward(models, shape):
    params, prompt = models[np.float64], tokens(shape, 4)
    names = activation_names(CONFIG, points=True)
    made = activations(params, CONFIG, prompt, names, generate=6, temperature=0.8, seed=7)
    new = np.array(list(generate(params, CONFIG, prompt, 6, temperature=0.8, seed=7)))
    whole = activations(params, CONFIG, np.concatenate([prompt, new.T], axis=-1), names)
    assert list(made) == list(whole) == names
    for name in names:
        a, b = made[name], whole[name]
        assert a.shape == b.shape, name
        finite = np.isfinite(b)
        assert np.array_equal(np.isfinite(a), finite), name
        assert np.abs(a[finite] - b[finite]).max() <= 1e-12 * max(np.abs(b[finite]).max(), 1), name
    with pytest.raises(ValueError, match="n_ctx"):
        activations(params, CONFIG, tokens(30), generate=5)
    with pytest.raises(ValueError, match="need generate"):
        activations(params, CONFIG, tokens(3), temperature=0)


def test_an_unembedding_bias_is_added(models):
    params = copy.deepcopy(models[np.float64])
    toks = tokens(6)
    plain = forward(params, CONFIG, toks)
    bias = np.random.default_rng(0).normal(size=CONFIG.vocab_size)
    params["lm_head"] = {"weight": params["wte"]["weight"], "bias": bias}
    for reference in (False, True):
        assert np.allclose(forward(params, CONFIG, toks, reference=reference), plain + bias, rtol=0, atol=1e-12)
    assert np.allclose(forward(params, CONFIG, toks, last_only=True), (plain + bias)[-1:], rtol=0, atol=1e-12)


def test_fine_points_are_selected_by_name_only():
    from numpy_gpt2.debug.capture import select_names

    every = activation_names(CONFIG, points=True)
    assert select_names(every, "*") == activation_names(CONFIG, softmax=False)  # as before
    assert select_names(every, "h.0.*") == [n for n in activation_names(CONFIG, softmax=False)
                                            if n.startswith("h.0.")]
    assert select_names(every, "*resid_pre") == ["h.0.resid_pre", "h.1.resid_pre"]
    assert select_names(every, "h.*.attn.z,*.scale") == [
        "h.0.ln_1.scale", "h.0.attn.z", "h.0.ln_2.scale", "h.1.ln_1.scale", "h.1.attn.z",
        "h.1.ln_2.scale", "ln_f.scale"]
    assert select_names(every, "h.1.attn.*scores,h.1.attn.result") == ["h.1.attn.scores", "h.1.attn.result"]
    with pytest.raises(ValueError, match="spelled out"):
        select_names(every, "h.0.ln_1.*")
