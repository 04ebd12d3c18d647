"""numpy_gpt2.generate and the sampling functions.

Oracle for greedy decoding: transformers' GPT2LMHeadModel.generate(do_sample=False) on the same
checkpoint file. Oracle for sampling: the definitions of top-k / top-p, checked as properties
over hypothesis-chosen logits and parameters, plus empirical frequencies of many draws.
"""

import copy
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import numpy_gpt2
from helpers.checkpoints import reference_model
from helpers.generation_checkpoint import write_generation_checkpoint
from numpy_gpt2.generation.sampling import (apply_temperature, filter_logits, keep_cache_rows, next_token, sample,
                                            softmax, top_k_filter, top_p_filter)

N_CTX = 128
PROMPTS = np.array([[5, 17, 3, 40], [1, 2, 3, 4]])


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    directory = tmp_path_factory.mktemp("gen")
    write_generation_checkpoint(directory, n_ctx=N_CTX)
    return directory


@pytest.fixture(scope="module")
def model32(ckpt):
    return numpy_gpt2.load(ckpt, np.float32)


def hf_greedy(directory, dtype, prompts, max_new_tokens, eos=None):
    """transformers' greedy continuation (B, n); never stops early unless eos is given."""
    ref = reference_model(directory, dtype)
    ref.generation_config.eos_token_id = eos
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: threads only contend (10x slower on a busy machine)
    try:
        with torch.no_grad():
            out = ref.generate(torch.tensor(prompts), attention_mask=torch.ones(prompts.shape, dtype=torch.long),
                               do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=eos,
                               pad_token_id=0 if eos is None else eos)
    finally:
        torch.set_num_threads(threads)
    return out[:, prompts.shape[1]:].numpy()


def run(params, config, tokens, max_new_tokens, **kw):
    """All tokens of a generate() call stacked: (B, n) (or (n,) for single int steps)."""
    steps = list(numpy_gpt2.generate(params, config, tokens, max_new_tokens, **kw))
    return np.stack(steps, axis=-1) if steps and isinstance(steps[0], np.ndarray) else np.array(steps)


# --- greedy == transformers ------------------------------------------------------------------

@pytest.mark.parametrize("dtype, torch_dtype", [(np.float32, torch.float32), (np.float64, torch.float64)])
def test_greedy_equals_transformers_for_100_tokens(ckpt, dtype, torch_dtype):
    params, config = numpy_gpt2.load(ckpt, dtype)
    ours = run(params, config, PROMPTS, 100, temperature=0, stop_at_eos=False)
    theirs = hf_greedy(ckpt, torch_dtype, PROMPTS, 100)
    assert ours.shape == theirs.shape == (2, 100)
    np.testing.assert_array_equal(ours, theirs)
    assert min(len(set(row)) for row in ours.tolist()) >= 10  # not a constant sequence


def test_single_prompt_yields_python_ints_equal_to_the_batch_row(model32):
    params, config = model32
    steps = list(numpy_gpt2.generate(params, config, PROMPTS[1].tolist(), 30, temperature=0))
    assert all(type(t) is int for t in steps)
    np.testing.assert_array_equal(steps, run(params, config, PROMPTS, 30, temperature=0)[1])


def test_stops_at_eos_like_transformers(ckpt, model32):
    params, config = model32
    free = run(params, config, PROMPTS[0], 40, temperature=0, stop_at_eos=False)
    # Pretend the first token greedy produces that was not produced before is eos.
    step = next(i for i in range(5, 40) if free[i] not in free[:i])
    eos = int(free[step])
    ours = run(params, config, PROMPTS[0], 40, temperature=0, eos_token_id=eos)
    np.testing.assert_array_equal(ours, free[:step + 1])  # eos itself is yielded, then it stops
    theirs = hf_greedy(ckpt, torch.float32, PROMPTS[:1], 40, eos=eos)[0]
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("prompt_len", [N_CTX - 9, N_CTX])
def test_full_context_stops_cleanly_after_n_ctx_minus_prompt_plus_one_tokens(ckpt, model32, prompt_len):
    params, config = model32
    prompt = np.random.default_rng(0).integers(0, 96, size=(1, prompt_len))
    room = N_CTX - prompt_len + 1  # the last token is predicted from a full window
    ours = run(params, config, prompt, 1000, temperature=0, stop_at_eos=False)
    assert ours.shape == (1, room)
    np.testing.assert_array_equal(ours, hf_greedy(ckpt, torch.float32, prompt, room))


def test_prompt_longer_than_context_is_a_value_error(model32):
    params, config = model32
    with pytest.raises(ValueError, match=rf"prompt tokens: sequence of 129 positions.*n_ctx={N_CTX}"):
        numpy_gpt2.generate(params, config, [1] * (N_CTX + 1), 5)


def test_max_new_tokens_zero_yields_nothing(model32):
    assert list(numpy_gpt2.generate(*model32, [1, 2], 0)) == []


# --- eos in batches, samples, seeds ----------------------------------------------------------

def first_eos(free, eos):
    """For each row of tokens (B, n): the step of its first `eos`, or n if there is none."""
    return [int(np.flatnonzero(row == eos)[0]) if (row == eos).any() else free.shape[1] for row in free]


def spread_eos(free, vocab_size):
    """The token whose first appearances are the most spread out over the rows: calling it
    "eos" makes the rows of a batch finish at many different steps."""
    return max(range(vocab_size), key=lambda t: len(set(first_eos(free, t))))


def test_each_sample_stops_at_eos_independently(model32):
    params, config = model32
    kw = dict(temperature=1.5, seed=3, num_samples=8)
    free = run(params, config, PROMPTS[0], 60, stop_at_eos=False, **kw)  # (8, 60)
    eos = spread_eos(free, config.vocab_size)
    ends = first_eos(free, eos)
    assert len(set(ends)) >= 4
    stopped = run(params, config, PROMPTS[0], 60, eos_token_id=eos, **kw)
    # Generation ends once every row has produced eos; before that, each row is exactly what it
    # would have been without stopping (stopping only masks), and after its eos only eos.
    assert stopped.shape == (8, min(max(ends) + 1, 60))
    for row, ref, k in zip(stopped, free, ends):
        np.testing.assert_array_equal(row[:k + 1], ref[:k + 1])
        assert (row[k:] == eos).all()


def old_rule_loop(params, config, prompts, n, temperature, top_k, top_p, seed, eos):
    """The readable twin of the decoding loop, as generate() worked before finished rows left
    the batch: every row's logits recomputed from scratch (no cache), one rng.random(B) per
    sampled step for all B rows, finished rows forced to eos; stops when all have finished."""
    rng, seqs, out = np.random.default_rng(seed), prompts, []
    finished = np.zeros(len(prompts), bool)
    for _ in range(n):
        logits = numpy_gpt2.forward(params, config, seqs)[:, -1]
        u = rng.random(len(prompts)) if temperature else None
        token = np.where(finished, eos, next_token(logits, temperature, top_k, top_p, u))
        finished |= token == eos
        out.append(token)
        if finished.all():
            break
        seqs = np.concatenate([seqs, token[:, None]], axis=1)
    return np.stack(out, axis=1)


@pytest.mark.parametrize("temperature, top_k, top_p", [(0, None, None), (1.5, None, None),
                                                       (0.9, 20, 0.95)])
def test_finished_rows_leave_the_batch_and_every_row_keeps_its_tokens(model32, monkeypatch,
                                                                      temperature, top_k, top_p):
    """compact=True (the default) == compact=False (every row computed to the end) == the
    readable loop, token for token, with rows finishing at many different steps; and the
    compacted run really feeds fewer rows to the model as rows finish."""
    params, config = model32
    prompts = np.random.default_rng(4).integers(0, 96, size=(8, 3))
    prompts[:4] = PROMPTS[0, :3]  # some equal prompts: their samples differ only by the draws
    kw = dict(temperature=temperature, top_k=top_k, top_p=top_p, seed=11)
    free = run(params, config, prompts, 40, stop_at_eos=False, **kw)
    eos = spread_eos(free, config.vocab_size)
    ends = first_eos(free, eos)
    assert len(set(ends)) >= 3 and min(ends) < 20  # rows finish at different steps, some early

    batch_sizes = []
    real_forward = numpy_gpt2.generation.sampling.forward

    def counting_forward(params, config, tokens, **kw):
        batch_sizes.append(np.shape(tokens)[0])
        return real_forward(params, config, tokens, **kw)

    monkeypatch.setattr(numpy_gpt2.generation.sampling, "forward", counting_forward)
    compact = run(params, config, prompts, 40, eos_token_id=eos, **kw)
    compact_sizes, batch_sizes[:] = list(batch_sizes), []
    full = run(params, config, prompts, 40, eos_token_id=eos, compact=False, **kw)
    monkeypatch.undo()
    np.testing.assert_array_equal(compact, full)
    np.testing.assert_array_equal(compact, old_rule_loop(params, config, prompts, 40, eos=eos, **kw))
    for row, ref, k in zip(compact, free, ends):  # each row: its free run up to its eos
        np.testing.assert_array_equal(row[:k + 1], ref[:k + 1])
        assert (row[k:] == eos).all()
    # One forward per step but the last; the batch shrinks by the rows that finished.
    expected = [8] + [sum(e >= s for e in ends) for s in range(1, compact.shape[1])]
    assert compact_sizes == expected and batch_sizes == [8] * compact.shape[1]
    assert sum(compact_sizes) < sum(batch_sizes)  # something was saved


def test_keep_cache_rows_continues_like_a_batch_of_those_rows(model32):
    params, config = model32
    tokens = np.random.default_rng(5).integers(0, 96, size=(5, 9))
    cache = numpy_gpt2.new_kv_cache(config, 5, max_len=12)
    numpy_gpt2.forward(params, config, tokens[:, :8], kv_cache=cache)
    keep_cache_rows(cache, np.array([1, 3, 4]))
    assert cache["keys"][0].shape == (3, config.n_head, 12, config.head_size) and cache["length"] == 8
    step = numpy_gpt2.forward(params, config, tokens[[1, 3, 4], 8:], kv_cache=cache)
    full = numpy_gpt2.forward(params, config, tokens[[1, 3, 4]])[:, -1:]
    np.testing.assert_allclose(step, full, rtol=0, atol=2e-4 * np.abs(full).max())


def test_same_seed_same_tokens_different_seed_different(model32):
    params, config = model32
    a = run(params, config, PROMPTS[0], 30, seed=7)
    b = run(params, config, PROMPTS[0], 30, seed=7)
    c = run(params, config, PROMPTS[0], 30, seed=8)
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    g = np.random.default_rng(7)  # a Generator is accepted as the seed too
    np.testing.assert_array_equal(run(params, config, PROMPTS[0], 30, seed=g), a)


def test_samples_are_rows_prompt_major(model32):
    params, config = model32
    out = run(params, config, PROMPTS, 20, temperature=0, num_samples=3)
    assert out.shape == (6, 20)
    greedy = run(params, config, PROMPTS, 20, temperature=0)
    np.testing.assert_array_equal(out, np.repeat(greedy, 3, axis=0))
    sampled = run(params, config, PROMPTS[0], 20, seed=1, num_samples=3)
    assert len({tuple(r) for r in sampled.tolist()}) == 3  # independent samples differ


@pytest.mark.parametrize("temperature", [1e-6, 1e-300])
def test_tiny_temperature_equals_greedy(model32, temperature):
    params, config = model32
    greedy = run(params, config, PROMPTS, 50, temperature=0, stop_at_eos=False)
    cold = run(params, config, PROMPTS, 50, temperature=temperature, seed=0, stop_at_eos=False)
    np.testing.assert_array_equal(cold, greedy)


# --- parameter validation --------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    (dict(temperature=-0.1), "temperature must be a finite number >= 0"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(top_k=0), "top_k must be an integer >= 1"),
    (dict(top_k=2.5), "top_k"),
    (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
    (dict(top_p=1.5), "top_p"),
    (dict(max_new_tokens=-1), "max_new_tokens must be an integer >= 0"),
    (dict(num_samples=0), "num_samples must be an integer >= 1"),
    (dict(tokens=[]), r"prompt tokens must hold at least one position.*\[96\], <\|endoftext\|>"),
    (dict(tokens=np.zeros((2, 0), int)), r"prompt tokens must hold at least one position, got shape \(2, 0\)"),
    (dict(tokens=[1.5, 2.0]), "prompt tokens must be integers, got dtype float64"),
    (dict(tokens=[3, 97]), r"prompt tokens: token id 97 at index \(1,\) is outside \[0, 97\) \(vocab_size\)"),
    (dict(tokens=[[1, 2, 3], [4, 97]]), r"prompt 1: token id 97 at index \(1,\) is outside \[0, 97\)"),
    (dict(tokens=[[1, 2, 3], []]), r"prompt 1 must hold at least one position"),
    (dict(tokens=[[1, 2, 3], [[4, 5]]]), r"prompt 1 must be one sequence of token ids, got shape \(1, 2\)"),
    (dict(tokens=[[1, 2], [5] * 129]), r"prompt 1: sequence of 129 positions is longer than the context"),
    (dict(tokens=np.zeros((2, 2, 2), int)), r"prompt tokens must have shape \(T,\) or \(B, T\)"),
    (dict(seed="x"), r"seed must be None, an integer >= 0 .* got 'x'"),
    (dict(seed=1.5), "seed must be None.* got 1.5"),
    (dict(seed=-1), "seed must be None.* got -1"),
    (dict(seed=True), "seed must be None.* got True"),
])
def test_invalid_arguments_raise_before_any_work(model32, kwargs, message):
    _, config = model32
    args = dict(tokens=[1, 2, 3], max_new_tokens=5) | kwargs
    # params=None: any computation would fail with a TypeError, so the ValueError comes first.
    with pytest.raises(ValueError, match=message):
        numpy_gpt2.generate(None, config, args.pop("tokens"), args.pop("max_new_tokens"), **args)


# --- the sampling functions ------------------------------------------------------------------

def test_top_k_keeps_exactly_the_k_largest():
    logits = np.array([[0.1, 3.0, -1.0, 2.0, 0.5], [5.0, 4.0, 3.0, 2.0, 1.0]])
    kept = np.isfinite(top_k_filter(logits, 2))
    np.testing.assert_array_equal(kept, [[0, 1, 0, 1, 0], [1, 1, 0, 0, 0]])
    assert np.isfinite(top_k_filter(logits, 10)).all()
    np.testing.assert_array_equal(np.isfinite(top_k_filter([1.0, 2.0, 2.0, 0.0], 1)), [0, 1, 1, 0])  # ties


# (p exactly equal to a running sum, like 0.8 here, is decided by float rounding either way.)
@pytest.mark.parametrize("p, expected", [(0.01, [1, 0, 0, 0]), (0.49, [1, 0, 0, 0]), (0.51, [1, 1, 0, 0]),
                                         (0.79, [1, 1, 0, 0]), (0.81, [1, 1, 1, 0]), (0.94, [1, 1, 1, 0]),
                                         (0.96, [1, 1, 1, 1]), (1.0, [1, 1, 1, 1])])
def test_top_p_keeps_the_smallest_set_reaching_p(p, expected):
    logits = np.log([0.5, 0.3, 0.15, 0.05])
    np.testing.assert_array_equal(np.isfinite(top_p_filter(logits, p)), expected)


def test_temperature_scales_log_probabilities():
    logits = np.array([1.0, 2.0, 4.0])
    probs = softmax(apply_temperature(logits, 2.0))
    np.testing.assert_allclose(probs, np.exp(logits / 2) / np.exp(logits / 2).sum(), rtol=1e-14)


def draw_many(logits, n, seed=0):
    """n independent draws from one row of logits, as one batch."""
    return sample(np.tile(logits, (n, 1)), np.random.default_rng(seed))


def assert_frequencies_match(draws, probs, n_sigma=6.0):
    """Every token's empirical frequency within n_sigma binomial standard deviations (+2/N):
    a false alarm is a < 1e-6 event per token, so the check is deterministic in practice."""
    n = len(draws)
    freq = np.bincount(draws, minlength=len(probs)) / n
    bound = n_sigma * np.sqrt(probs * (1 - probs) / n) + 2.0 / n
    assert (np.abs(freq - probs) <= bound).all(), (freq, probs)


def test_top_k_never_picks_outside_the_k_most_likely():
    logits = np.random.default_rng(1).normal(0, 2, size=200)
    draws = draw_many(filter_logits(logits, 1.0, top_k=5), 50_000)
    top5 = set(np.argsort(logits)[-5:].tolist())
    assert set(draws.tolist()) == top5
    probs = np.zeros(200)
    probs[list(top5)] = np.exp(logits[list(top5)]) / np.exp(logits[list(top5)]).sum()
    assert_frequencies_match(draws, probs)


def test_top_p_picks_only_from_the_nucleus():
    logits = np.random.default_rng(2).normal(0, 2, size=200)
    probs = softmax(logits)
    order = np.argsort(-probs)
    n = int(np.searchsorted(np.cumsum(probs[order]), 0.7) + 1)  # smallest prefix with mass >= 0.7
    nucleus = order[:n]
    draws = draw_many(filter_logits(logits, 1.0, top_p=0.7), 50_000)
    assert set(draws.tolist()) <= set(nucleus.tolist())
    expected = np.zeros(200)
    expected[nucleus] = probs[nucleus] / probs[nucleus].sum()
    assert_frequencies_match(draws, expected)


def test_plain_sampling_matches_softmax_frequencies():
    logits = np.array([2.0, 1.0, 0.0, -1.0, -np.inf, 0.5])
    draws = draw_many(logits, 40_000, seed=5)
    assert_frequencies_match(draws, softmax(logits))
    assert 4 not in draws


logit_rows = st.integers(2, 24).flatmap(lambda v: st.lists(
    st.one_of(st.floats(-8, 8, allow_nan=False), st.sampled_from([0.0, 1.0])),  # ties too
    min_size=v, max_size=v))


@settings(max_examples=40)
@given(logits=logit_rows, temperature=st.floats(0.05, 5.0),
       top_k=st.one_of(st.none(), st.integers(1, 30)),
       top_p=st.one_of(st.none(), st.floats(0.01, 1.0)), seed=st.integers(0, 2**32 - 1))
def test_sampling_properties(logits, temperature, top_k, top_p, seed):
    logits = np.array(logits)
    V = len(logits)
    filtered = filter_logits(logits, temperature, top_k, top_p)
    kept = np.isfinite(filtered)
    scaled = apply_temperature(logits, temperature)  # (logits - max) / T: the same rounding

    # top-k: the survivors are the largest logits, at least min(k, V) of them, exactly that
    # many unless there are ties at the boundary.
    after_k = np.isfinite(top_k_filter(scaled, top_k)) if top_k else np.ones(V, bool)
    if top_k:
        assert after_k.sum() >= min(top_k, V)
        assert scaled[after_k].min() >= scaled[~after_k].max(initial=-np.inf)
        if len(set(scaled.tolist())) == V:
            assert after_k.sum() == min(top_k, V)
    # top-p on the renormalized top-k distribution q: the kept set reaches mass p, dropping its
    # least likely tokens would not, and no dropped token is more likely than a kept one.
    q = np.where(after_k, np.exp(scaled - scaled[after_k].max()), 0.0)
    q /= q.sum()
    assert (kept <= after_k).all()
    if top_p is not None and top_p < 1:
        assert q[kept].sum() >= top_p - 1e-9
        smallest = q[kept].min()
        assert q[kept & (q > smallest)].sum() < top_p + 1e-9
        assert smallest >= q[~kept].max(initial=0.0)
    else:
        np.testing.assert_array_equal(kept, after_k)
    # The final distribution is q restricted to the kept set, renormalized.
    expected = np.where(kept, q, 0.0) / q[kept].sum()
    np.testing.assert_allclose(softmax(filtered), expected, rtol=1e-9, atol=1e-12)

    draws = draw_many(filtered, 4000, seed)
    assert kept[draws].all()  # never a token with zero filtered probability
    assert_frequencies_match(draws, expected)
    assert math.isclose(softmax(filtered).sum(), 1.0, rel_tol=1e-12)


@settings(max_examples=15)
@given(temperature=st.floats(0.1, 3.0), top_k=st.one_of(st.none(), st.integers(1, 20)),
       top_p=st.one_of(st.none(), st.floats(0.05, 1.0)), seed=st.integers(0, 2**32 - 1),
       num_samples=st.integers(1, 3))
def test_every_generated_token_is_allowed_by_the_filters_at_its_step(model32, temperature, top_k, top_p,
                                                                     seed, num_samples):
    """The whole loop (cache, filters, draws): each token has nonzero filtered probability under
    the logits a full recompute gives for its prefix, and the same seed repeats the run."""
    params, config = model32
    kw = dict(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, num_samples=num_samples,
              stop_at_eos=False)
    out = run(params, config, PROMPTS[0], 12, **kw).reshape(num_samples, 12)
    np.testing.assert_array_equal(run(params, config, PROMPTS[0], 12, **kw).reshape(num_samples, 12), out)
    seqs = np.concatenate([np.tile(PROMPTS[0], (num_samples, 1)), out], axis=1)
    logits = numpy_gpt2.forward(params, config, seqs[:, :-1])[:, PROMPTS.shape[1] - 1:]  # (S, 12, V)
    allowed = np.isfinite(filter_logits(logits, temperature, top_k, top_p))
    assert np.take_along_axis(allowed, out[..., None], axis=-1).all()


# --- non-finite logits: an error, never a sample ---------------------------------------------

@pytest.mark.parametrize("temperature", [0.8, 0])
@pytest.mark.parametrize("num_samples", [1, 3])
def test_generate_raises_on_nan_weights_instead_of_yielding_tokens(model32, temperature, num_samples):
    params, config = model32
    params = copy.deepcopy(params)
    params["h"][1]["mlp"]["c_fc"]["weight"][5, 7] = np.nan
    tokens = numpy_gpt2.generate(params, config, PROMPTS[0], 10, temperature=temperature, seed=0,
                                 num_samples=num_samples)
    with pytest.raises(numpy_gpt2.NonFiniteError, match=r"non-finite logits \(nan\).* is h\.1\.mlp\.c_fc "
                                                        r".*non-finite weights: h\.1\.mlp\.c_fc\.weight"):
        next(tokens)


def test_generate_raises_at_the_step_that_first_meets_nan(model32):
    """A NaN that only the 4th new token reaches (an embedding row): 3 tokens, then the error."""
    params, config = model32
    clean = run(params, config, PROMPTS[0], 10, temperature=0, stop_at_eos=False)
    params = copy.deepcopy(params)
    fourth = int(clean[3])
    assert fourth not in clean[:3].tolist() + PROMPTS[0].tolist()
    params["wte"]["weight"][fourth, 0] = np.inf  # read as an input only once fed back
    tokens = numpy_gpt2.generate(params, config, PROMPTS[0], 10, temperature=0, stop_at_eos=False)
    with pytest.raises(numpy_gpt2.NonFiniteError) as err:
        for _ in tokens:
            pass
    # Its logit is already inf in the output head (logits = ln_f @ wte.T) at the first step.
    assert "is logits (" in str(err.value) and "wte.weight (1 of" in str(err.value)


def test_sample_refuses_nan_logits():
    with pytest.raises(numpy_gpt2.NonFiniteError, match=r"rows \[1\]"):
        sample(np.array([[0.0, 1.0], [np.nan, 1.0]]), np.random.default_rng(0))
    with pytest.raises(numpy_gpt2.NonFiniteError):
        sample(np.array([[np.inf, 1.0]]), np.random.default_rng(0))
