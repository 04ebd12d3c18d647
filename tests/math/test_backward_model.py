"""numpy_gpt2.loss_and_grads against transformers.GPT2LMHeadModel + loss.backward().

The oracle's loss is F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1),
ignore_index=-100) on the model's own logits with OUR targets (nothing shifted differently);
every parameter's .grad is compared with ours (the tied wte/lm_head is one torch Parameter,
so its .grad holds the embedding's and the output head's parts, as our wte gradient must).

Configs, with random weights (tests/checkpoints.py's scaling: softmaxes far from uniform;
wte scaled down so the logits spread like GPT-2's, loss near log(vocab)):
  * 124M-shaped: 2 of GPT-2's 12 layers at full width 768, 12 heads, vocab 50257, n_ctx 1024;
    one case at the full context T = 1024;
  * distilgpt2-shaped: all 6 layers of 768, 12 heads, n_ctx 1024, vocab cut to 8000;
  * small and odd: n_embd 40, 5 heads (head size 8), 3 layers, prime vocab 97;
single sequences (T,) and batches (B, T), about a quarter of the targets ignored (-100),
float32 and float64, the fast path (default) and reference=True (the readable one), tied and
untied output heads (in memory, and loaded from a "variant" checkpoint file with
lm_head.weight and tie_word_embeddings=false). Also: the fast and the readable paths agree
with each other (hypothesis over shapes), record_grad's names, order, shapes and values
(against the oracle's retain_grad() of each module's output), gradient accumulation, and
the ValueErrors for bad input, raised before any work.

Run with `-s` to see the max relative gradient error per case (a table at the end).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import numpy_gpt2
from helpers.checkpoints import make_config, reference_model, write_checkpoint
from helpers.grad_oracle import (TORCH, assert_grad_close, grad_error, random_model, torch_loss_and_grads,
                                 torch_model)
from numpy_gpt2 import flatten_params
from numpy_gpt2.params import nest_params
from helpers.oracle_activations import one_torch_thread  # noqa: F401  (fixture: one torch thread)

# Tolerance per gradient tensor: max |ours - oracle| <= RTOL * max |oracle| (see
# grad_oracle.grad_error). float32: every gradient passes through the output head's softmax
# (logits of O(10..100): near one-hot rows) and each block's attention, summing over up to
# N = B*T = 1024 rows and 768..3072 features in a different order than torch; measured worst
# 1.5e-5 (distilgpt2-shaped, h.0.ln_1.bias). float64: measured worst 4.3e-14. Both bounds
# keep a margin of >= 6x; a wrong gradient (a missing term, the erf GELU's derivative, wte
# without the head's part) is off by > 1e-4. Run with -s for the table of measured errors.
from helpers.tolerances import GRADIENT_RTOL as RTOL, LOSS_RTOL  # noqa: E402

CONFIGS = {
    "gpt2-124M-2layers": dict(n_layer=2, n_head=12, n_embd=768, n_ctx=1024, vocab_size=50257),
    # distilgpt2-shaped: all 6 layers of 768, 12 heads; vocab cut to 8000 to keep the test fast
    # (the full vocabulary is covered by the 124M-shaped config).
    "distilgpt2-shape": dict(n_layer=6, n_head=12, n_embd=768, n_ctx=1024, vocab_size=8000),
    "odd-40x5": dict(n_layer=3, n_head=5, n_embd=40, n_ctx=64, vocab_size=97),
}
# wte (and lm_head) scaled so the logits have GPT-2-like spreads (std ~3) and the loss is near
# log(vocab): the output softmax's gradient is then not trivially one-hot (see random_model).
# (The checkpoint-file test below keeps the full scale: one-hot softmaxes, losses of ~100.)
HEAD_SCALE = {"gpt2-124M-2layers": 0.1, "distilgpt2-shape": 0.1, "odd-40x5": 0.3}

# (config, dtype, token shape, untied, paths)
CASES = [
    ("odd-40x5", np.float32, (17,), False, ("fast", "reference")),
    ("odd-40x5", np.float32, (3, 64), False, ("fast", "reference")),
    ("odd-40x5", np.float64, (17,), False, ("fast", "reference")),
    ("odd-40x5", np.float64, (3, 64), False, ("fast", "reference")),
    ("odd-40x5", np.float32, (2, 33), True, ("fast", "reference")),
    ("odd-40x5", np.float64, (2, 33), True, ("fast", "reference")),
    ("gpt2-124M-2layers", np.float32, (1024,), False, ("fast",)),  # the full context
    ("gpt2-124M-2layers", np.float32, (3, 40), False, ("fast", "reference")),
    ("gpt2-124M-2layers", np.float64, (2, 64), False, ("fast", "reference")),
    ("distilgpt2-shape", np.float32, (2, 48), False, ("fast",)),
    ("distilgpt2-shape", np.float64, (40,), False, ("fast", "reference")),  # kept for record_grad
]

MEASURED: list[tuple] = []


@functools.lru_cache(maxsize=1)  # one model at a time: the 124M-shaped float64 pair is ~1 GB
def model_pair(name, dtype, untied):
    """(params, config, torch model) with the same random weights."""
    params, config, hf_config = random_model(dtype, seed=7, untied=untied, head_scale=HEAD_SCALE[name],
                                             **CONFIGS[name])
    return params, config, torch_model(params, hf_config, dtype)


def batch(config, shape, seed, p_ignore=0.25):
    """Random tokens and targets of `shape`, a fraction p_ignore of the targets -100 (never all)."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, config.vocab_size, size=shape)
    tokens.flat[0], tokens.flat[-1] = 0, config.vocab_size - 1  # both ends of the vocabulary
    targets = rng.integers(0, config.vocab_size, size=shape)
    targets[rng.random(shape) < p_ignore] = -100
    targets.flat[-1] = config.vocab_size - 1
    return tokens, targets


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    model_pair.cache_clear()
    print("\n\nloss_and_grads vs GPT2LMHeadModel + loss.backward(): max over parameters of "
          "max|Δgrad| / max|grad_oracle|")
    print("| config | dtype | tokens | head | path | loss | |Δloss| | max rel. grad error (tensor) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in MEASURED:
        print("| " + " | ".join(row) + " |")


def compare_grads(ours: dict, theirs: dict, dtype, what) -> tuple[float, str]:
    """Every parameter gradient within RTOL; the same key set. Returns the worst (error, key)."""
    flat = flatten_params(ours)
    assert sorted(flat) == sorted(theirs), f"{what}: gradient keys differ from the oracle's parameters"
    worst = (0.0, "")
    for key, ref in theirs.items():
        err = assert_grad_close(flat[key], ref, dtype, RTOL[dtype], f"{what} {key}")
        worst = max(worst, (err, key))
    return worst


@pytest.mark.parametrize("name,dtype,shape,untied,paths", CASES,
                         ids=[f"{c[0]}-{np.dtype(c[1]).name}-{'x'.join(map(str, c[2]))}"
                              f"{'-untied' if c[3] else ''}" for c in CASES])
def test_loss_and_grads_match_gpt2_lm_head_model(name, dtype, shape, untied, paths):
    params, config, model = model_pair(name, dtype, untied)
    tokens, targets = batch(config, shape, seed=sum(shape))
    ref_loss, ref_grads, _ = torch_loss_and_grads(model, tokens, targets)
    assert ("lm_head.weight" in ref_grads) == untied
    # the gradient is not trivially small: the test means something
    assert max(np.abs(g).max() for g in ref_grads.values()) > 1e-3
    for path in paths:
        loss, grads = numpy_gpt2.loss_and_grads(params, config, tokens, targets,
                                                reference=(path == "reference"))
        assert isinstance(loss, float)
        dloss = abs(loss - ref_loss)
        assert dloss <= LOSS_RTOL[dtype] * max(1.0, abs(ref_loss)), f"{path}: loss {loss} vs {ref_loss}"
        err, key = compare_grads(grads, ref_grads, dtype, f"{name} {path}")
        MEASURED.append((name, np.dtype(dtype).name, "x".join(map(str, shape)),
                         "untied" if untied else "tied", path, f"{ref_loss:.4f}", f"{dloss:.2g}",
                         f"{err:.2g} ({key})"))
        print(f"\n{name} {np.dtype(dtype).name} {shape} {'untied' if untied else 'tied'} {path}: "
              f"|Δloss| = {dloss:.2g}, worst grad {key}: {err:.2g}")


@pytest.mark.parametrize("tied", [True, False])
def test_checkpoint_file_with_lm_head_gives_its_gradient(tmp_path, tied):
    """A "variant" checkpoint (transformer. prefix, masked_bias buffers, an explicit
    lm_head.weight): load keeps lm_head only when config.json says tie_word_embeddings=false;
    the gradients then have "lm_head.weight" and wte's holds only the embedding's part."""
    hf_config = make_config(n_layer=2, n_head=5, n_embd=40, n_ctx=64, vocab_size=97,
                            tie_word_embeddings=tied)
    write_checkpoint(tmp_path, hf_config, layout="variant", seed=3)
    params, config = numpy_gpt2.load(tmp_path, dtype=np.float64)
    assert ("lm_head" in params) == (not tied)
    model = reference_model(tmp_path, torch.float64)
    assert (model.lm_head.weight is model.transformer.wte.weight) == tied
    tokens, targets = batch(config, (2, 30), seed=1)
    ref_loss, ref_grads, _ = torch_loss_and_grads(model, tokens, targets)
    for reference in (False, True):
        loss, grads = numpy_gpt2.loss_and_grads(params, config, tokens, targets, reference=reference)
        assert abs(loss - ref_loss) <= 1e-12 * abs(ref_loss)
        compare_grads(grads, ref_grads, np.float64, "variant file")
        if not tied:  # rows of wte no token uses get no gradient: the head's part went to lm_head
            unused = np.setdiff1d(np.arange(config.vocab_size), tokens)
            assert np.all(grads["wte"]["weight"][unused] == 0)
            assert np.abs(grads["lm_head"]["weight"][unused]).max() > 0


# --- the fast path equals the readable one ---------------------------------------------------

@settings(max_examples=12)
@given(seed=st.integers(0, 2**32 - 1), n_layer=st.integers(1, 3), n_head=st.integers(1, 4),
       head_size=st.sampled_from([4, 8, 16]), vocab=st.integers(8, 120),
       B=st.integers(1, 3), T=st.integers(1, 150), dtype=st.sampled_from([np.float32, np.float64]),
       p_ignore=st.sampled_from([0.0, 0.3, 0.9]), untied=st.booleans(), scale=st.sampled_from([0.3, 1.0]),
       single=st.booleans())
def test_fast_path_equals_reference_path(seed, n_layer, n_head, head_size, vocab, B, T, dtype,
                                         p_ignore, untied, scale, single):
    """Query blocks of 64 (T up to 150 crosses two block boundaries), tiny and odd heads,
    batches or one sequence, ignored targets, both dtypes, tied and untied heads.

    float64: the two paths agree to 1e-10 relative (not RTOL's 1e-11: in tiny random models a
    gradient tensor can be a sum whose terms nearly cancel; with a 2-token vocabulary ln_f.bias's
    gradient is (sum_t dlogits[t, 0]) (wte[0] - wte[1]), seen cancelling to 1e-8 of its terms,
    hence vocab >= 8). float32: tiny random models can be badly
    conditioned (4 features per LayerNorm, a loss near 0 whose gradient is p - 1 rounded),
    so both float32 paths are measured against the float64 readable result (the same
    weights), and the fast one must be as accurate as the readable one: error <= 2x the
    readable path's + RTOL."""
    shape = dict(n_layer=n_layer, n_head=n_head, n_embd=n_head * head_size, n_ctx=160, vocab_size=vocab)
    params, config, _ = random_model(dtype, seed=seed % 1000, untied=untied, scale=scale, **shape)
    tokens, targets = batch(config, (T,) if single else (B, T), seed, p_ignore)
    fast_loss, fast = numpy_gpt2.loss_and_grads(params, config, tokens, targets)
    ref_loss, ref = numpy_gpt2.loss_and_grads(params, config, tokens, targets, reference=True)
    assert abs(fast_loss - ref_loss) <= LOSS_RTOL[dtype] * max(1.0, abs(ref_loss))
    if dtype == np.float64:
        fast, ref = flatten_params(fast), flatten_params(ref)
        assert sorted(fast) == sorted(ref)
        for key, g in ref.items():
            assert_grad_close(fast[key], g, dtype, 1e-10, f"fast vs reference {key}")
        return
    params64, _, _ = random_model(np.float64, seed=seed % 1000, untied=untied, scale=scale, **shape)
    _, exact = numpy_gpt2.loss_and_grads(params64, config, tokens, targets, reference=True)
    fast, ref = flatten_params(fast), flatten_params(ref)
    assert sorted(fast) == sorted(ref)
    for key, g in flatten_params(exact).items():
        assert fast[key].dtype == ref[key].dtype == np.float32
        fast_err, ref_err = grad_error(fast[key], g), grad_error(ref[key], g)
        assert fast_err <= 2 * ref_err + RTOL[dtype], \
            f"{key}: fast float32 error {fast_err:.3g}, readable float32 error {ref_err:.3g} (vs float64)"


def test_fast_path_output_head_in_chunks_of_rows():
    """B*T = 3 * 400 = 1200 rows: more than one chunk of the fused output head + loss
    (layers_backward_fast.HEAD_ROWS), and seven query blocks of attention, against the oracle."""
    from numpy_gpt2.fast.training import HEAD_ROWS

    assert 3 * 400 > HEAD_ROWS
    params, config, hf_config = random_model(np.float64, seed=5, n_layer=1, n_head=2, n_embd=16,
                                             n_ctx=512, vocab_size=50)
    tokens, targets = batch(config, (3, 400), seed=9, p_ignore=0.5)
    targets[1] = -100  # a whole sequence ignored
    ref_loss, ref_grads, _ = torch_loss_and_grads(torch_model(params, hf_config, np.float64),
                                                  tokens, targets)
    loss, grads = numpy_gpt2.loss_and_grads(params, config, tokens, targets)
    assert abs(loss - ref_loss) <= 1e-12 * ref_loss
    compare_grads(grads, ref_grads, np.float64, "chunked head")


# --- record_grad ------------------------------------------------------------------------------

def gradient_names(n_layer):
    """The activation names record_grad must see, in backward order."""
    names = ["logits", "ln_f"]
    for i in reversed(range(n_layer)):
        names += [f"h.{i}"] + [f"h.{i}.{n}" for n in ("mlp.c_proj", "mlp.gelu", "mlp.c_fc", "ln_2", "attn",
                                                     "attn.softmax", "attn.c_attn", "ln_1")]
    return names + ["wpe", "wte"]


def all_gradient_names(n_layer, untied):
    """Every name record_grad must see, activations' and weights', in the order the backward
    pass computes them: each module's weight gradients right after its output's gradient."""
    names = ["logits"] + ["lm_head.weight"] * untied + ["ln_f", "ln_f.weight", "ln_f.bias"]
    for i in reversed(range(n_layer)):
        names += [f"h.{i}"] + [f"h.{i}.{n}" for n in (
            "mlp.c_proj", "mlp.c_proj.weight", "mlp.c_proj.bias", "mlp.gelu", "mlp.c_fc",
            "mlp.c_fc.weight", "mlp.c_fc.bias", "ln_2", "ln_2.weight", "ln_2.bias", "attn",
            "attn.c_proj.weight", "attn.c_proj.bias", "attn.softmax", "attn.c_attn",
            "attn.c_attn.weight", "attn.c_attn.bias", "ln_1", "ln_1.weight", "ln_1.bias")]
    return names + ["wpe", "wte", "wpe.weight", "wte.weight"]


def activation_shape(name, config, B, T):
    E, H = config.n_embd, config.n_head
    last = name.split(".")[-1] if name.startswith("h.") and name.count(".") >= 2 else name
    if name == "logits":
        return (B, T, config.vocab_size)
    if name.endswith("attn.softmax"):
        return (B, H, T, T)
    return (B, T, {"c_attn": 3 * E, "c_fc": 4 * E, "gelu": 4 * E}.get(last, E))


@pytest.mark.parametrize("reference", [False, True], ids=["fast", "reference"])
@pytest.mark.parametrize("name,dtype,shape", [("odd-40x5", np.float64, (2, 20)),
                                              ("odd-40x5", np.float32, (9,)),
                                              ("distilgpt2-shape", np.float64, (2, 12))])
def test_record_grad_sees_every_activation_gradient_in_backward_order(name, dtype, shape, reference):
    params, config, model = model_pair(name, dtype, False)
    tokens, targets = batch(config, shape, seed=4)
    seen = []

    def record_grad(n, a):
        assert isinstance(a, np.ndarray) and a.dtype == dtype, n
        seen.append((n, a.copy()))  # arrays may be reused after the call

    loss, grads = numpy_gpt2.loss_and_grads(params, config, tokens, targets, reference=reference,
                                            record_grad=record_grad)
    assert [n for n, _ in seen] == all_gradient_names(config.n_layer, untied=False)
    flat = flatten_params(grads)
    for n, a in seen:  # the weights' gradients: exactly what loss_and_grads returns
        if n in flat:
            assert np.array_equal(a, flat[n]), n
    seen = [(n, a) for n, a in seen if n not in flat]
    assert [n for n, _ in seen] == gradient_names(config.n_layer)
    B, T = (1, *shape) if len(shape) == 1 else shape
    ours = dict(seen)
    for n, a in seen:
        assert a.shape == activation_shape(n, config, B, T), n
    # recording changes nothing
    loss2, grads2 = numpy_gpt2.loss_and_grads(params, config, tokens, targets, reference=reference)
    assert loss2 == loss
    for key, g in flatten_params(grads2).items():
        assert np.array_equal(g, flatten_params(grads)[key]), key

    _, _, theirs = torch_loss_and_grads(model, tokens, targets, activations=True)
    # torch's wpe output is (1, T, E), broadcast over the batch: its gradient is the sum of ours
    theirs["wpe"] = np.broadcast_to(theirs["wpe"], (B, T, config.n_embd))
    ours["wpe"] = np.broadcast_to(ours["wpe"].sum(axis=0, keepdims=True), (B, T, config.n_embd))
    # dL/dP at masked (future) keys has no effect on anything; compare the visible ones
    visible = np.tri(T, dtype=bool)
    for n in gradient_names(config.n_layer):
        a, ref = ours[n], theirs[n]
        if n.endswith("softmax"):
            a, ref = np.where(visible, a, 0), np.where(visible, ref, 0)
        err = grad_error(a, ref)
        assert err <= RTOL[dtype], f"record_grad {n}: {err:.3g} relative to the oracle"
    # the residual stream's gradient is the same tensor at the documented points
    for i in range(config.n_layer):
        assert np.array_equal(ours[f"h.{i}.mlp.c_proj"], ours[f"h.{i}"])
    assert np.array_equal(ours["wte"], dict(seen)["wpe"])


# --- accumulation ----------------------------------------------------------------------------

@pytest.mark.parametrize("reference", [False, True])
def test_grads_argument_accumulates(reference):
    params, config, _ = random_model(np.float64, seed=2, n_layer=2, n_head=5, n_embd=40, n_ctx=64,
                                     vocab_size=97)
    (t1, y1), (t2, y2) = batch(config, (2, 10), 1), batch(config, (2, 10), 2)
    _, g1 = numpy_gpt2.loss_and_grads(params, config, t1, y1, reference=reference)
    _, g2 = numpy_gpt2.loss_and_grads(params, config, t2, y2, reference=reference)
    acc = {k: v.copy() for k, v in flatten_params(g1).items()}
    _, out = numpy_gpt2.loss_and_grads(params, config, t2, y2, reference=reference, grads=g1)
    assert out is g1
    for key, g in flatten_params(out).items():
        assert np.allclose(g, acc[key] + flatten_params(g2)[key], rtol=0, atol=1e-14 * np.abs(acc[key]).max())


# --- bad input ---------------------------------------------------------------------------------

def never(name, array):
    raise AssertionError(f"work started ({name} recorded) before the input was checked")


BAD = {
    "targets of another shape": (np.zeros(8, int), np.zeros(7, int), "shape"),
    "targets batched, tokens not": (np.zeros(8, int), np.zeros((1, 8), int), "shape"),
    "float targets": (np.zeros(8, int), np.zeros(8), "integer"),
    "ragged targets": (np.zeros((2, 2), int), [[1, 2], [3]], "shape"),
    "target = vocab_size": (np.zeros(8, int), np.full(8, 97), "97"),
    "negative target": (np.zeros(8, int), np.full(8, -1), "-1"),
    "every target ignored": (np.zeros(8, int), np.full(8, -100), "ignore"),
    "token out of range": (np.full(8, 97), np.zeros(8, int), "97"),
    "negative token": (np.full(8, -3), np.zeros(8, int), "-3"),
    "float tokens": (np.zeros(8), np.zeros(8, int), "integer"),
    "3-D tokens": (np.zeros((1, 2, 8), int), np.zeros((1, 2, 8), int), "shape"),
    "too long": (np.zeros(65, int), np.zeros(65, int), "n_ctx"),
    "empty": (np.zeros(0, int), np.zeros(0, int), "at least one"),
}


@pytest.mark.parametrize("reference", [False, True])
@pytest.mark.parametrize("case", BAD)
def test_bad_input_raises_value_error_before_any_work(case, reference):
    params, config, _ = random_model(np.float64, seed=2, n_layer=1, n_head=5, n_embd=40, n_ctx=64,
                                     vocab_size=97)
    tokens, targets, words = BAD[case]
    acc = {k: np.zeros_like(v) for k, v in flatten_params(params).items()}
    grads = nest_params(acc)
    with pytest.raises(ValueError, match=words):
        numpy_gpt2.loss_and_grads(params, config, tokens, targets, reference=reference,
                                  record=never, record_grad=never, grads=grads)
    assert all(not v.any() for v in acc.values())  # nothing accumulated


@pytest.mark.parametrize("break_it", ["missing key", "wrong shape", "wrong dtype"])
def test_grads_argument_must_mirror_params(break_it):
    """A grads= dict that does not mirror params is refused before any work, naming the key."""
    params, config, _ = random_model(np.float64, seed=2, n_layer=1, n_head=5, n_embd=40, n_ctx=64,
                                     vocab_size=97)
    acc = {k: np.zeros_like(v) for k, v in flatten_params(params).items()}
    if break_it == "missing key":
        del acc["h.0.mlp.c_fc.bias"]
    elif break_it == "wrong shape":
        acc["h.0.mlp.c_fc.bias"] = np.zeros(3)
    else:
        acc["h.0.mlp.c_fc.bias"] = acc["h.0.mlp.c_fc.bias"].astype(np.float32)
    tokens, targets = batch(config, (2, 8), seed=3)
    with pytest.raises(ValueError, match="h.0.mlp.c_fc.bias"):
        numpy_gpt2.loss_and_grads(params, config, tokens, targets, record=never, record_grad=never,
                                  grads=nest_params(acc))


def test_ignore_index_other_than_default():
    """ignore_index=-1: targets -1 are not scored, and -100 is then an id out of range."""
    params, config, _ = random_model(np.float64, seed=2, n_layer=1, n_head=5, n_embd=40, n_ctx=64,
                                     vocab_size=97)
    tokens, targets = batch(config, (2, 8), seed=3)
    with pytest.raises(ValueError, match="-100"):
        numpy_gpt2.loss_and_grads(params, config, tokens, targets, ignore_index=-1)
    loss_a, ga = numpy_gpt2.loss_and_grads(params, config, tokens, np.where(targets == -100, -1, targets),
                                           ignore_index=-1)
    loss_b, gb = numpy_gpt2.loss_and_grads(params, config, tokens, targets)
    assert loss_a == pytest.approx(loss_b, rel=1e-14)
    for key, g in flatten_params(ga).items():
        assert np.allclose(g, flatten_params(gb)[key], rtol=1e-12, atol=0)
