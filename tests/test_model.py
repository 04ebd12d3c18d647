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

import numpy_gpt2
from checkpoints import make_config, reference_model, write_checkpoint

# max |Δlogit| <= RTOL * max |logit|: float32 sums over 768..3072 terms per layer in a
# different order than torch, ~1e-7 relative per op adding up over layers; measured
# worst ~3e-6 relative (6.6e-4 absolute on logits up to 240). float64: ~1e-14 relative.
RTOL = {np.float32: 2e-5, np.float64: 1e-11}
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
