"""Gradient accumulation with padding: k micro-batches (and N MPI ranks) are ONE batch.

The loss of a step is the summed cross-entropy of every kept target (not ignore_index = -100)
of all its micro-batches over their number, not the mean of the micro-batches' means (which
weights a micro-batch of 1 real target like one of 1000). Oracles: transformers'
GPT2LMHeadModel + F.cross_entropy(ignore_index=-100) on the micro-batches concatenated into
one batch (float64: 1e-12), and our own loss_and_grads on that one batch (right-padded to one
length: exact in a causal model, tests/training/test_right_padding_training.py), to 1e-13 relative.
The MPI test runs 2 ranks with mpiexec (skipped without mpi4py/mpiexec).
"""

from __future__ import annotations

from helpers import REPO_ROOT  # noqa: F401

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import numpy_gpt2
from helpers.grad_oracle import grad_error, random_model, torch_loss_and_grads, torch_model
from numpy_gpt2.training.distributed import Solo
from numpy_gpt2.params import nest_params
from numpy_gpt2.training.step import accumulate_grads, evaluate, train_step

ROOT = REPO_ROOT
IGNORE = -100
# The example: micro-batch 0 has 1 real target, micro-batch 1 has 2.
EXAMPLE = [(np.array([[464, 3290]]), np.array([[3290, IGNORE]])),
           (np.array([[15496, 11]]), np.array([[11, 616]]))]


def one_batch(micro_batches, pad=0):
    """The micro-batches as one batch: rows right-padded to the longest (token `pad`, target
    ignore_index), then stacked."""
    T = max(np.atleast_2d(x).shape[1] for x, y in micro_batches)
    xs, ys = [], []
    for x, y in micro_batches:
        x, y = np.atleast_2d(x), np.atleast_2d(y)
        xs.append(np.pad(x, ((0, 0), (0, T - x.shape[1])), constant_values=pad))
        ys.append(np.pad(y, ((0, 0), (0, T - y.shape[1])), constant_values=IGNORE))
    return np.concatenate(xs), np.concatenate(ys)


def assert_same(loss, grads, ref_loss, ref_grads, rtol):
    assert abs(loss - ref_loss) <= rtol * abs(ref_loss), (loss, ref_loss)
    for key, g in numpy_gpt2.flatten_params(grads).items():
        err = grad_error(g, ref_grads[key])
        assert err <= rtol, f"{key}: {err:.3g}"


def test_the_example_equals_one_batch_in_transformers():
    """GPT-2's vocabulary, 2 layers, float64: 14.4379 (transformers on one batch), where
    the mean of the two micro-batches' means was 14.0078."""
    params, config, hf = random_model(np.float64, seed=0, n_layer=2, n_head=2, n_embd=16, n_ctx=64,
                                      vocab_size=50257)
    loss, grads = accumulate_grads(params, config, EXAMPLE)
    x, y = one_batch(EXAMPLE)
    ref_loss, ref_grads, _ = torch_loss_and_grads(torch_model(params, hf, np.float64), x, y)
    assert_same(loss, grads, ref_loss, ref_grads, 1e-12)
    assert round(ref_loss, 4) == 14.4379
    mean_of_means = np.mean([numpy_gpt2.loss_and_grads(params, config, x, y)[0] for x, y in EXAMPLE])
    assert round(mean_of_means, 4) == 14.0078  # what gradient accumulation used to return


CONFIG_KW = dict(n_layer=2, n_head=2, n_embd=16, n_ctx=12, vocab_size=64)
PARAMS, CONFIG, _ = random_model(np.float64, seed=1, head_scale=0.3, **CONFIG_KW)


def random_micro_batches(rng, k, p_pad, empty):
    """k micro-batches of random shapes (B in 1..3, T in 1..12), targets ignored with
    probability p_pad (anywhere: padding, prompts, masked spans), micro-batch `empty` (if
    any) all ignored."""
    out = []
    for j in range(k):
        B, T = rng.integers(1, 4), rng.integers(1, 13)
        x = rng.integers(0, 64, (B, T))
        y = rng.integers(0, 64, (B, T))
        y[rng.random((B, T)) < p_pad] = IGNORE
        if j == empty:
            y[...] = IGNORE
        out.append((x, y))
    return out


@given(k=st.integers(1, 5), p_pad=st.sampled_from([0.0, 0.3, 0.7]), empty=st.integers(-1, 4),
       seed=st.integers(0, 10**6))
def test_k_micro_batches_equal_one_batch_k_times_larger(k, p_pad, empty, seed):
    micro = random_micro_batches(np.random.default_rng(seed), k, p_pad, empty)
    x, y = one_batch(micro)
    if not (y != IGNORE).any():
        with pytest.raises(ValueError, match="is ignore_index=-100: there is nothing to score"):
            accumulate_grads(PARAMS, CONFIG, micro)
        return
    loss, grads = accumulate_grads(PARAMS, CONFIG, micro)
    ref_loss, ref_grads = numpy_gpt2.loss_and_grads(PARAMS, CONFIG, x, y)
    assert_same(loss, grads, ref_loss, numpy_gpt2.flatten_params(ref_grads), 1e-13)


def test_a_micro_batch_without_real_targets_adds_nothing_and_all_padding_is_an_error():
    micro = random_micro_batches(np.random.default_rng(7), 3, 0.5, -1)
    empty = (np.array([[1, 2, 3]]), np.full((1, 3), IGNORE))
    loss, grads = accumulate_grads(PARAMS, CONFIG, micro)
    for where in (0, 2, 3):
        with_empty = micro[:where] + [empty] + micro[where:]
        loss_e, grads_e = accumulate_grads(PARAMS, CONFIG, with_empty)
        assert loss_e == loss  # exactly: it is not even run
        for key, g in numpy_gpt2.flatten_params(grads).items():
            np.testing.assert_array_equal(numpy_gpt2.flatten_params(grads_e)[key], g)
    with pytest.raises(ValueError, match="every target of the step's 2 micro-batch"):
        accumulate_grads(PARAMS, CONFIG, [empty, empty])
    # A micro-batch that is not run is still checked.
    bad = (np.array([[1, 64, 3]]), np.full((1, 3), IGNORE))
    with pytest.raises(ValueError, match=r"micro-batch 1: tokens: token id 64 at index \(0, 1\) is outside"):
        accumulate_grads(PARAMS, CONFIG, [micro[0], bad])
    with pytest.raises(ValueError, match="micro_batches must be a non-empty list"):
        accumulate_grads(PARAMS, CONFIG, [])


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_a_train_step_on_padded_micro_batches_is_the_step_on_one_batch(dtype, rtol):
    """The same loss, gradients, norm and (float64) weights after one AdamW step (lr 1e-2).
    Weights to 1e-10 absolute: AdamW's first step is lr g / (|g| + eps), so where the true
    gradient is 0 (the key bias) rounding noise of |g| << eps moves a weight by up to
    lr |noise| / eps (in float32 that is ~lr: its weights are not compared)."""
    params, config, _ = random_model(dtype, seed=2, head_scale=0.3, **CONFIG_KW)
    micro = random_micro_batches(np.random.default_rng(3), 3, 0.5, 1)
    x, y = one_batch(micro)
    loss, grads = accumulate_grads(params, config, micro)
    ref_loss, ref_grads = numpy_gpt2.loss_and_grads(params, config, x, y)
    assert_same(loss, grads, ref_loss, numpy_gpt2.flatten_params(ref_grads), rtol)
    results = []
    for batches in (micro, [(x, y)]):
        p = nest_params({k: v.copy() for k, v in numpy_gpt2.flatten_params(params).items()})
        state = numpy_gpt2.adamw_init(p)
        loss, norm = train_step(p, config, state, batches, 1e-2, grad_clip=1.0)
        results.append((loss, norm, numpy_gpt2.flatten_params(p)))
    (la, na, pa), (lb, nb, pb) = results
    assert la == pytest.approx(lb, rel=rtol) and na == pytest.approx(nb, rel=rtol) and nb > 1.0
    if dtype == np.float64:
        for key, w in pb.items():
            np.testing.assert_allclose(pa[key], w, rtol=rtol, atol=1e-10, err_msg=key)


def test_num_items_in_batch_is_the_denominator_on_both_paths():
    x, y = random_micro_batches(np.random.default_rng(4), 1, 0.3, -1)[0]
    kept = int((y != IGNORE).sum())
    loss, grads = numpy_gpt2.loss_and_grads(PARAMS, CONFIG, x, y)
    for reference in (False, True):
        l2, g2 = numpy_gpt2.loss_and_grads(PARAMS, CONFIG, x, y, reference=reference,
                                           num_items_in_batch=4 * kept)
        assert l2 == pytest.approx(loss / 4, rel=1e-13)
        for key, g in numpy_gpt2.flatten_params(grads).items():
            assert grad_error(numpy_gpt2.flatten_params(g2)[key], g / 4) <= 1e-13, key
    # No kept target: 0 and zero gradients.
    l0, g0 = numpy_gpt2.loss_and_grads(PARAMS, CONFIG, x, np.full_like(y, IGNORE), num_items_in_batch=5)
    assert l0 == 0.0 and all(not g.any() for g in numpy_gpt2.flatten_params(g0).values())
    for bad in (0, kept - 1, 2.5, "3", True):
        with pytest.raises(ValueError, match="num_items_in_batch must be an integer"):
            numpy_gpt2.loss_and_grads(PARAMS, CONFIG, x, y, num_items_in_batch=bad)


def test_evaluate_averages_over_real_targets_of_batches_of_any_shape():
    """evaluate's loss = transformers' F.cross_entropy over the batches as one (padding
    ignored); it used to read the -100 targets as token ids."""
    params, config, hf = random_model(np.float64, seed=3, head_scale=0.3, **CONFIG_KW)
    batches = random_micro_batches(np.random.default_rng(5), 3, 0.4, 2)
    x, y = one_batch(batches)
    ref, _, _ = torch_loss_and_grads(torch_model(params, hf, np.float64), x, y)
    assert evaluate(params, config, batches) == pytest.approx(ref, rel=1e-12)
    assert Solo().evaluate(params, config, batches) == pytest.approx(ref, rel=1e-12)
    with pytest.raises(ValueError, match="every target of the 1 evaluation batch"):
        evaluate(params, config, [batches[2]])


# ----------------------------------------------------------------------------------------
# Two MPI ranks: the count of real targets is summed over the ranks too.

MPIEXEC = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
try:
    import mpi4py  # noqa: F401
    HAVE_MPI4PY = True
except ImportError:
    HAVE_MPI4PY = False

RANKS = '''
import sys
import numpy as np
sys.path[:0] = [{here!r}, {tests!r}]  # this module, and the tests' helpers package
from test_grad_accumulation import PARAMS, CONFIG, random_micro_batches
from numpy_gpt2 import flatten_params
from numpy_gpt2.training.distributed import world

w = world()
assert w.size == 2
out = {{}}
for name, seed, empty in (("a", 11, -1), ("b", 12, 2), ("c", 13, 3)):
    # rank 1's share of "c" (micro-batches 2 and 3) has one all-padding micro-batch
    micro = random_micro_batches(np.random.default_rng(seed), 4, 0.6, empty)
    loss, grads = w.accumulate_grads(PARAMS, CONFIG, w.share(micro))
    out[name + ".loss"] = np.array(loss)
    out.update({{name + "." + k: g.copy() for k, g in flatten_params(grads).items()}})
out["eval"] = np.array(w.evaluate(PARAMS, CONFIG, random_micro_batches(np.random.default_rng(14), 3, 0.5, 0)))
empty = (np.array([[1, 2]]), np.full((1, 2), -100))
real = random_micro_batches(np.random.default_rng(15), 1, 0.0, -1)[0]
# rank 0: all padding, rank 1: real targets -> fine; both all padding -> ValueError on both
out["half.loss"] = np.array(w.accumulate_grads(PARAMS, CONFIG, [empty] if w.rank == 0 else [real])[0])
try:
    w.accumulate_grads(PARAMS, CONFIG, [empty])
    print(f"rank {{w.rank}} no error", flush=True)  # one write per line: the ranks print at once
except ValueError as e:
    print(f"rank {{w.rank}} ValueError: {{e}}", flush=True)
if w.rank == 0:
    np.savez(sys.argv[1], **out)
w.finish()
'''


@pytest.mark.skipif(not (HAVE_MPI4PY and MPIEXEC), reason="needs mpi4py and mpiexec "
                    "(pip install -e '.[mpi]' installs both)")
def test_two_ranks_equal_one_process_whatever_the_padding(tmp_path):
    script = tmp_path / "ranks.py"
    script.write_text(RANKS.format(here=os.path.dirname(os.path.abspath(__file__)),
                                  tests=os.path.join(ROOT, "tests")))
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", NUMPY_GPT2_THREADS="1",
               PYTHONPATH=ROOT)
    run = subprocess.run([MPIEXEC, "-n", "2", sys.executable, "-m", "mpi4py", str(script),
                          str(tmp_path / "out.npz")], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    for rank in (0, 1):
        assert (f"rank {rank} ValueError: every target of the step's 2 micro-batch(es) on 2 ranks "
                f"is ignore_index=-100") in run.stdout
    got = np.load(tmp_path / "out.npz")
    rng_of = {"a": (11, -1), "b": (12, 2), "c": (13, 3)}
    for name, (seed, empty) in rng_of.items():
        micro = random_micro_batches(np.random.default_rng(seed), 4, 0.6, empty)
        x, y = one_batch(micro)
        ref_loss, ref_grads = numpy_gpt2.loss_and_grads(PARAMS, CONFIG, x, y)
        grads = {k[len(name) + 1:]: v for k, v in got.items() if k.startswith(name + ".") and k != name + ".loss"}
        assert_same(float(got[name + ".loss"]), nest_params(grads), ref_loss,
                    numpy_gpt2.flatten_params(ref_grads), 1e-13)
    batches = random_micro_batches(np.random.default_rng(14), 3, 0.5, 0)
    assert float(got["eval"]) == pytest.approx(evaluate(PARAMS, CONFIG, batches), rel=1e-13)
    real = random_micro_batches(np.random.default_rng(15), 1, 0.0, -1)[0]
    assert float(got["half.loss"]) == pytest.approx(numpy_gpt2.loss_and_grads(PARAMS, CONFIG, *real)[0],
                                                    rel=1e-13)
