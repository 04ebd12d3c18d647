"""The whole model against transformers.GPT2LMHeadModel loaded from the same checkpoint file.

Checkpoints are written by tests/checkpoints.py in the three layouts (hub, save_pretrained,
variant) and as F32/F16/BF16 files, for a 124M-shaped config (2 of its 12 layers, full
width, vocab and context), a distilgpt2-shaped one (all 6 layers) and a small odd one
(head size 8). Random weights are scaled so logits spread over tens of units.

Run with `-s` to see the measured max |Δlogit| per case (and a table at the end).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import numpy_gpt2
from helpers.checkpoints import (checkpoint_tensors, make_config, random_state_dict, reference_model, write_checkpoint,
                                 write_safetensors)

# max |Δlogit| <= RTOL * max |logit|: float32 sums over 768..3072 terms per layer in a
# different order than torch, ~1e-7 relative per op adding up over layers; measured
# worst ~3e-6 relative (6.6e-4 absolute on logits up to 240). float64: ~1e-14 relative.
from helpers.tolerances import MODEL_RTOL as RTOL  # noqa: E402
MIN_LOGIT_STD = 3.0  # logits must spread widely, or agreement would mean little

CONFIGS = {
    # 124M-shaped: n_embd 768, n_head 12 (head size 64), n_ctx 1024, vocab 50257; 2 of 12 layers.
    "gpt2-124M-2layers": dict(n_layer=2, n_head=12, n_embd=768, n_ctx=1024, vocab_size=50257),
    # distilgpt2-shaped: 6 layers of 768, 12 heads; vocab cut to 8000 to keep the test fast.
    "distilgpt2-shape": dict(n_layer=6, n_head=12, n_embd=768, n_ctx=1024, vocab_size=8000),
    # small and odd: head size 8, 5 heads, prime vocab.
    "odd-40x5": dict(n_layer=3, n_head=5, n_embd=40, n_ctx=64, vocab_size=97),
}
FILE_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
TORCH = {np.float32: torch.float32, np.float64: torch.float64}

SMALL = [("odd-40x5", layout, fd, dt, shape)
         for layout in ("hub", "save_pretrained", "variant")
         for fd in ("F32", "F16", "BF16")
         for dt in (np.float32, np.float64)
         for shape in [(3, 64)]] + [("odd-40x5", "hub", "F32", np.float64, (17,))]
LARGE = [
    ("gpt2-124M-2layers", "hub", "F32", np.float32, (1024,)),  # a full context window
    ("gpt2-124M-2layers", "hub", "F32", np.float64, (2, 96)),
    ("gpt2-124M-2layers", "save_pretrained", "F32", np.float32, (3, 40)),
    ("gpt2-124M-2layers", "variant", "BF16", np.float32, (2, 33)),
    ("distilgpt2-shape", "save_pretrained", "F16", np.float32, (2, 200)),
    ("distilgpt2-shape", "hub", "F32", np.float64, (300,)),
]

MEASURED: list[tuple] = []


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory):
    """(config name, layout, file dtype) -> a directory with model.safetensors + config.json."""
    cache = {}

    def get(name, layout, file_dtype):
        key = (name, layout, file_dtype)
        if key not in cache:
            path = tmp_path_factory.mktemp(f"{name}-{layout}-{file_dtype}")
            write_checkpoint(path, make_config(**CONFIGS[name]), layout=layout,
                             dtype=FILE_DTYPES[file_dtype], seed=len(cache))
            cache[key] = path
        return cache[key]

    return get


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    print("\n\nmax |Δlogit| vs transformers.GPT2LMHeadModel (same file):")
    print("| config | layout | file | dtype | tokens | max abs logit | max abs Δlogit |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in MEASURED:
        print("| " + " | ".join(row) + " |")


def compare_with_oracle(checkpoint_dir, name, layout, file_dtype, dtype, shape):
    path = checkpoint_dir(name, layout, file_dtype)
    params, config = numpy_gpt2.load(path, dtype=dtype)
    assert params["wte"]["weight"].dtype == dtype
    rng = np.random.default_rng(sum(shape))
    tokens = rng.integers(0, config.vocab_size, size=shape)
    tokens.flat[0], tokens.flat[-1] = 0, config.vocab_size - 1  # both ends of the vocab

    ours = numpy_gpt2.forward(params, config, tokens)
    model = reference_model(path, TORCH[dtype])
    with torch.no_grad():
        ref = model(torch.from_numpy(np.atleast_2d(tokens))).logits.numpy()
    ref = ref[0] if len(shape) == 1 else ref

    assert ours.dtype == dtype and ours.shape == (*shape, config.vocab_size)
    assert ref.std() > MIN_LOGIT_STD, f"logits barely spread (std {ref.std():.2f}): weak test"
    err = float(np.abs(ours.astype(np.float64) - ref).max())
    top = float(np.abs(ref).max())
    MEASURED.append((name, layout, file_dtype, np.dtype(dtype).name, str(shape), f"{top:.1f}",
                     f"{err:.2g}"))
    print(f"\n{name} {layout} {file_dtype} -> {np.dtype(dtype).name} {shape}: "
          f"max|Δlogit| = {err:.3g} (max|logit| = {top:.1f})")
    assert err <= RTOL[dtype] * top, f"max|Δlogit| = {err:.3g} exceeds {RTOL[dtype]:g} * {top:.1f}"
    if config.n_embd < 100:  # small models: the readable reference layers too
        readable = numpy_gpt2.forward(params, config, tokens, reference=True)
        assert np.abs(readable - ref).max() <= RTOL[dtype] * top

    # argmax agrees wherever the oracle's top two logits are further apart than the tolerance
    # (an exact near-tie may legitimately flip); such ties must be rare.
    top2 = np.sort(ref, axis=-1)[..., -2:]
    decided = (top2[..., 1] - top2[..., 0]) > 2 * RTOL[dtype] * top
    assert decided.mean() > 0.95
    assert np.array_equal(ours.argmax(-1)[decided], ref.argmax(-1)[decided])
    return ours


@pytest.mark.parametrize("name,layout,file_dtype,dtype,shape", SMALL,
                         ids=[f"{c[1]}-{c[2]}-{np.dtype(c[3]).name}-{len(c[4])}d" for c in SMALL])
def test_small_model_matches_transformers(checkpoint_dir, name, layout, file_dtype, dtype, shape):
    compare_with_oracle(checkpoint_dir, name, layout, file_dtype, dtype, shape)


@pytest.mark.parametrize("name,layout,file_dtype,dtype,shape", LARGE,
                         ids=[f"{c[0]}-{c[1]}-{c[2]}-{np.dtype(c[3]).name}-{c[4]}" for c in LARGE])
def test_large_model_matches_transformers(checkpoint_dir, name, layout, file_dtype, dtype, shape):
    compare_with_oracle(checkpoint_dir, name, layout, file_dtype, dtype, shape)


def test_batch_rows_equal_single_sequences_and_last_only(checkpoint_dir):
    params, config = numpy_gpt2.load(checkpoint_dir("odd-40x5", "hub", "F32"), dtype=np.float64)
    tokens = np.random.default_rng(1).integers(0, config.vocab_size, size=(3, 20))
    batch = numpy_gpt2.forward(params, config, tokens)
    for b in range(3):
        np.testing.assert_allclose(numpy_gpt2.forward(params, config, tokens[b]), batch[b],
                                   rtol=0, atol=1e-12)
    last = numpy_gpt2.forward(params, config, tokens, last_only=True)
    assert last.shape == (3, 1, config.vocab_size)
    np.testing.assert_allclose(last[:, 0], batch[:, -1], rtol=0, atol=1e-12)


def test_float64_mode_is_float64_end_to_end(checkpoint_dir):
    params, config = numpy_gpt2.load(checkpoint_dir("odd-40x5", "hub", "F32"), dtype=np.float64)
    flat = numpy_gpt2.flatten_params(params)
    assert {a.dtype for a in flat.values()} == {np.dtype(np.float64)}
    seen = {}
    numpy_gpt2.forward(params, config, [1, 2, 3], record=lambda n, v: seen.setdefault(n, v.dtype))
    assert seen and set(seen.values()) == {np.dtype(np.float64)}, seen


def test_float32_is_closer_to_float64_than_the_tolerance(checkpoint_dir):
    """Our float32 forward vs our own float64 forward: the float32 error is small by itself."""
    path = checkpoint_dir("odd-40x5", "save_pretrained", "F32")
    tokens = np.arange(64) % 97
    p32, config = numpy_gpt2.load(path, dtype=np.float32)
    p64, _ = numpy_gpt2.load(path, dtype=np.float64)
    hi = numpy_gpt2.forward(p64, config, tokens)
    lo = numpy_gpt2.forward(p32, config, tokens)
    assert np.abs(lo - hi).max() <= RTOL[np.float32] * np.abs(hi).max()


# ---- non-finite numbers: NonFiniteError names the first non-finite activation -----------------

# The activation a module's weights feed first (every element of a weight reaches every
# position of that output, so a NaN or inf there shows up first in that activation).
FIRST_READER = {"ln_1": "ln_1", "attn.c_attn": "attn.c_attn", "attn.c_proj": "attn",
                "ln_2": "ln_2", "mlp.c_fc": "mlp.c_fc", "mlp.c_proj": "mlp.c_proj"}


def first_reader(key: str, row: int, tokens, T: int) -> str | None:
    """Where a non-finite value at `key`[row, ...] must first appear (None: nowhere)."""
    if key == "wte.weight":  # an input row only for tokens in the input; always in the head
        return "wte" if row in np.asarray(tokens).ravel() else "logits"
    if key == "wpe.weight":
        return "wpe" if row < T else None
    if key.startswith("ln_f."):
        return "ln_f"
    i, module = key.split(".", 2)[1], key.split(".", 2)[2].rsplit(".", 1)[0]
    return f"h.{i}.{FIRST_READER[module]}"


@settings(max_examples=25)
@given(data=st.data(), bad=st.sampled_from([np.nan, np.inf, -np.inf]),
       dtype=st.sampled_from([np.float32, np.float64]), batch=st.sampled_from([None, 2]),
       reference=st.booleans())
def test_a_non_finite_weight_is_named_by_the_first_activation_it_reaches(checkpoint_dir, data, bad, dtype,
                                                                         batch, reference):
    params, config = numpy_gpt2.load(checkpoint_dir("odd-40x5", "hub", "F32"), dtype=dtype)
    flat = numpy_gpt2.flatten_params(params)
    key = data.draw(st.sampled_from(sorted(flat)), label="key")
    index = tuple(data.draw(st.integers(0, n - 1), label=f"axis {a}") for a, n in enumerate(flat[key].shape))
    T = data.draw(st.integers(1, 12), label="T")
    tokens = data.draw(st.lists(st.integers(0, 96), min_size=T, max_size=T), label="tokens")
    tokens = np.array(tokens if batch is None else [tokens, tokens[::-1]])
    flat[key][index] = bad  # the arrays of params themselves
    expected = first_reader(key, index[0], tokens, T)
    if expected is None:  # a position embedding no token uses: nothing to complain about
        assert np.isfinite(numpy_gpt2.forward(params, config, tokens, reference=reference)).all()
        return
    with pytest.raises(numpy_gpt2.NonFiniteError) as err:
        numpy_gpt2.forward(params, config, tokens, reference=reference)
    message = str(err.value)
    assert message.startswith("non-finite logits (")
    assert f"in forward order, is {expected} (" in message
    assert f"non-finite weights: {key} (1 of {flat[key].size} values)" in message
    assert isinstance(err.value, ValueError)


def test_nan_in_a_weight_names_its_activation_position_and_index(checkpoint_dir):
    """The example of the issue: a NaN in h.1.mlp.c_fc.weight; the message, word for word."""
    params, config = numpy_gpt2.load(checkpoint_dir("odd-40x5", "hub", "F32"), dtype=np.float32)
    params["h"][1]["mlp"]["c_fc"]["weight"][3, 17] = np.nan
    with pytest.raises(numpy_gpt2.NonFiniteError) as err:
        numpy_gpt2.forward(params, config, [5, 6, 7, 8, 9])
    assert str(err.value) == (
        "non-finite logits (nan): the first activation holding a non-finite value, in forward order, "
        "is h.1.mlp.c_fc (nan at position 0, feature 17; index (0, 17) of shape (5, 160)); "
        "everything before it is finite; non-finite weights: h.1.mlp.c_fc.weight (1 of 6400 values)")
    # the same in a batch: the sequence is named too
    with pytest.raises(numpy_gpt2.NonFiniteError, match=r"at sequence 0, position 0, feature 17; "
                                                        r"index \(0, 0, 17\) of shape \(2, 5, 160\)"):
        numpy_gpt2.forward(params, config, [[5, 6, 7, 8, 9], [1, 2, 3, 4, 5]])


def test_overflow_with_finite_weights_is_named_too(checkpoint_dir):
    """No NaN in any weight, but float32 overflows: q.k of 1e19-sized projections is inf, so
    the attention probabilities are the first non-finite activation; in float64 all is well."""
    path = checkpoint_dir("odd-40x5", "hub", "F32")
    for dtype in (np.float32, np.float64):
        params, config = numpy_gpt2.load(path, dtype=dtype)
        params["h"][1]["attn"]["c_attn"]["weight"] *= dtype(1e19)
        if dtype == np.float64:
            assert np.isfinite(numpy_gpt2.forward(params, config, [1, 2, 3])).all()
            continue
        with pytest.raises(numpy_gpt2.NonFiniteError) as err:
            numpy_gpt2.forward(params, config, [1, 2, 3])
        assert "in forward order, is h.1.attn.softmax (nan at head " in str(err.value)
        assert "every weight is finite, so the values overflowed" in str(err.value)


def test_the_finite_check_is_a_sum_that_never_misses():
    from numpy_gpt2.finite import all_finite
    x = np.ones((7, 11), np.float32)
    assert all_finite(x) and all_finite(np.arange(5)) and all_finite(np.float64(2.0))
    for bad in (np.nan, np.inf, -np.inf):
        y = x.copy()
        y[3, 4] = bad
        assert not all_finite(y)
    y = np.full(10, np.inf, np.float32)
    y[::2] = -np.inf  # inf + -inf = nan: still caught
    assert not all_finite(y)
    assert all_finite(np.full(100, 3e38, np.float32))  # the sum overflows, the values do not


# ---- all 12 layers of gpt2 (124M) at a full 1024-token window ---------------------------------

def test_full_124M_checkpoint_at_1024_tokens_logits_and_greedy_continuation(tmp_path):
    """Every layer of a 124M-shaped hub-layout file (12 x 768, 12 heads, vocab 50257, n_ctx 1024;
    ~548 MB, written here and deleted with tmp_path) against GPT2LMHeadModel on the same file.

    generate() continues a 1020-token prompt greedily (5 tokens, through its KV cache; the last
    one predicted from a full window). One forward of transformers over the 1024 tokens of
    the prompt and the first 4 new ones gives the oracle: its logits at all 1024 positions
    against ours, and its argmax at positions 1019..1023 must be our 5 tokens: then
    transformers' own greedy decoding makes the same ones (each step sees the same prefix).
    Position embeddings x16 (see generation_checkpoint.py) keep the continuation from
    repeating one token.
    """
    config_hf = make_config(**dict(CONFIGS["gpt2-124M-2layers"], n_layer=12))
    sd = random_state_dict(config_hf, seed=12)
    sd["wpe.weight"] = sd["wpe.weight"] * 16.0
    write_safetensors(tmp_path / "model.safetensors", checkpoint_tensors(sd, config_hf, "hub"),
                      metadata={"format": "pt"}, align=False)
    config_hf.save_pretrained(tmp_path)
    del sd
    params, config = numpy_gpt2.load(tmp_path, dtype=np.float32)
    assert config.n_layer == 12 and len(numpy_gpt2.flatten_params(params)) == 148
    prompt = np.random.default_rng(12).integers(0, config.vocab_size, size=1020)
    greedy = list(numpy_gpt2.generate(params, config, prompt, 10, temperature=0, stop_at_eos=False))
    assert len(greedy) == 5 and len(set(greedy)) >= 3  # n_ctx - 1020 + 1; not one repeated token
    tokens = np.concatenate([prompt, greedy[:4]])  # 1024 tokens
    ours = numpy_gpt2.forward(params, config, tokens)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the other core belongs to the other test processes
    try:
        with torch.no_grad():
            ref = reference_model(tmp_path, torch.float32)(torch.from_numpy(tokens[None])).logits[0].numpy()
    finally:
        torch.set_num_threads(threads)
    assert ref.std() > MIN_LOGIT_STD
    top = float(np.abs(ref).max())
    err = float(np.abs(ours - ref).max())  # float32: close values subtract exactly
    MEASURED.append(("gpt2-124M (12 layers)", "hub", "F32", "float32", "(1024,)", f"{top:.1f}", f"{err:.2g}"))
    print(f"\n124M, 12 layers, T=1024: max|Δlogit| = {err:.3g} (max|logit| = {top:.1f})")
    assert err <= RTOL[np.float32] * top
    top2 = np.sort(ref, axis=-1)[:, -2:]
    decided = (top2[:, 1] - top2[:, 0]) > 2 * RTOL[np.float32] * top
    assert decided.mean() > 0.95 and decided[1019:].all()
    assert np.array_equal(ours.argmax(-1)[decided], ref.argmax(-1)[decided])
    np.testing.assert_array_equal(ref[1019:].argmax(-1), greedy)


def test_check_finite_logits_on_a_loss_value(checkpoint_dir):
    """The form loss_and_grads uses: a scalar loss, what="loss"; finite activations are said so."""
    from numpy_gpt2.finite import check_finite_logits
    params, config = numpy_gpt2.load(checkpoint_dir("odd-40x5", "hub", "F32"), dtype=np.float64)
    check_finite_logits(np.float64(2.5), params, config, [1, 2, 3], what="loss", forward=numpy_gpt2.forward)  # no error
    with pytest.raises(numpy_gpt2.NonFiniteError, match=r"^non-finite loss \(inf\), although every activation "
                                                        r"of the forward pass, logits included, is finite"):
        check_finite_logits(np.float64(np.inf), params, config, [1, 2, 3], what="loss",
                            forward=numpy_gpt2.forward)
    params["ln_f"]["bias"][2] = np.nan
    with pytest.raises(numpy_gpt2.NonFiniteError, match=r"^non-finite loss \(nan\): .* is ln_f \(nan at sequence 0, "
                                                        r"position 0, feature 2; .*non-finite weights: ln_f\.bias"):
        check_finite_logits(np.float64(np.nan), params, config, [[1, 2, 3], [4, 5, 6]], what="loss",
                            forward=numpy_gpt2.forward)
