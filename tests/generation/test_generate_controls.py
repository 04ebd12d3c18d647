"""generate() with logits processors, logprobs and context="slide".

Oracles: transformers' generate() on the same checkpoint file, greedy (token for token) and
sampled (its torch.multinomial replaced, for the call, by the same inverse-CDF draws from the
same numpy Generator that generate() uses, so the same uniform numbers pick the tokens);
for the formulas without a transformers twin and for "slide", readable loops that re-run the
full sequence (or window) through forward() at every step.
"""

import contextlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import numpy_gpt2
from helpers.checkpoints import reference_model
from helpers.generation_checkpoint import write_generation_checkpoint
from numpy_gpt2.loss import log_softmax
from numpy_gpt2.generation.sampling import filter_logits, inverse_cdf, next_token

N_CTX = 64
PROMPTS = np.array([[5, 17, 3, 40, 5, 17], [1, 2, 3, 4, 1, 2]])


def run(params, config, tokens, n, **kw):
    steps = list(numpy_gpt2.generate(params, config, tokens, n, **kw))
    return np.stack(steps, axis=-1) if steps and isinstance(steps[0], np.ndarray) else np.array(steps)


@contextlib.contextmanager
def numpy_draws(seed):
    """torch.multinomial(probs, 1) replaced by inverse_cdf at rng.random(B): transformers then
    samples with the uniform numbers numpy_gpt2.generate draws (one per row per step)."""
    rng, real = np.random.default_rng(seed), torch.multinomial

    def multinomial(probs, num_samples, **kw):
        assert num_samples == 1
        with np.errstate(divide="ignore"):
            token = inverse_cdf(np.log(probs.double().numpy()), rng.random(probs.shape[0]))
        return torch.tensor(token)[:, None]

    torch.multinomial = multinomial
    try:
        yield
    finally:
        torch.multinomial = real


def hf_generate(ref, prompts, n, eos=None, seed=None, **kw):
    """transformers' continuation (B, n') of the prompts; sampled when seed is given."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad(), (numpy_draws(seed) if seed is not None else contextlib.nullcontext()):
            out = ref.generate(torch.tensor(prompts), attention_mask=torch.ones(prompts.shape, dtype=torch.long),
                               do_sample=seed is not None, max_new_tokens=n, eos_token_id=eos,
                               pad_token_id=0 if eos is None else eos, top_k=kw.pop("top_k", 0), **kw)
    finally:
        torch.set_num_threads(threads)
    return out[:, prompts.shape[1]:].numpy()


# --- processors in generation == transformers ------------------------------------------------

GREEDY_CASES = {
    "repetition_penalty": (dict(repetition_penalty=1.8), dict(repetition_penalty=1.8)),
    "repetition_penalty<1": (dict(repetition_penalty=0.7), dict(repetition_penalty=0.7)),
    "no_repeat_ngram_size": (dict(no_repeat_ngram_size=2), dict(no_repeat_ngram_size=2)),
    "no_repeat_ngram_size=1": (dict(no_repeat_ngram_size=1), dict(no_repeat_ngram_size=1)),
    # (52, 25, 18 are tokens greedy makes often without the processors)
    "logit_bias": (dict(logit_bias={25: -np.inf, 62: 3.0, 18: -2.5}),
                   dict(sequence_bias={(25,): -np.inf, (62,): 3.0, (18,): -2.5})),
    "suppress_tokens": (dict(suppress_tokens=[52, 25, 18]), dict(suppress_tokens=[52, 25, 18])),
    "all": (dict(repetition_penalty=1.3, no_repeat_ngram_size=3, logit_bias={7: 2.0}, suppress_tokens=[52]),
            dict(repetition_penalty=1.3, no_repeat_ngram_size=3, sequence_bias={(7,): 2.0}, suppress_tokens=[52])),
}


@pytest.mark.parametrize("case", list(GREEDY_CASES))
def test_greedy_with_processors_equals_transformers(model64, hf64, case):
    ours_kw, theirs_kw = GREEDY_CASES[case]
    params, config = model64
    plain = run(params, config, PROMPTS, 40, temperature=0, stop_at_eos=False)
    ours = run(params, config, PROMPTS, 40, temperature=0, stop_at_eos=False, **ours_kw)
    theirs = hf_generate(hf64, PROMPTS, 40, **theirs_kw)
    np.testing.assert_array_equal(ours, theirs)
    assert (ours != plain).any()  # the processor changed the text: the comparison means something


def test_min_new_tokens_equals_transformers(model64, hf64):
    """eos = the first new token greedy makes: min_new_tokens=k postpones it past step k."""
    params, config = model64
    free = run(params, config, PROMPTS[:1], 30, temperature=0, stop_at_eos=False)[0]
    eos = int(free[0])
    for k in (0, 1, 5):
        ours = run(params, config, PROMPTS[:1], 30, temperature=0, eos_token_id=eos, min_new_tokens=k)
        theirs = hf_generate(hf64, PROMPTS[:1], 30, eos=eos, min_new_tokens=k)
        np.testing.assert_array_equal(ours[0], theirs[0][:ours.shape[1]])
        assert (ours[0, :k] != eos).all()
        assert len(ours[0]) == 1 if k == 0 else len(ours[0]) > k


SAMPLED_CASES = {
    "plain": dict(temperature=1.0),
    "min_p": dict(temperature=1.3, min_p=0.1),
    "typical_p": dict(temperature=1.0, typical_p=0.6),
    "everything": dict(temperature=0.8, top_k=30, top_p=0.95, min_p=0.02, typical_p=0.9,
                       repetition_penalty=1.2, no_repeat_ngram_size=3),
}


@pytest.mark.parametrize("case", list(SAMPLED_CASES))
def test_sampling_with_warpers_equals_transformers_given_the_same_draws(model64, hf64, case):
    params, config = model64
    kw = SAMPLED_CASES[case]
    ours = run(params, config, PROMPTS, 40, seed=5, stop_at_eos=False, **kw)
    theirs = hf_generate(hf64, PROMPTS, 40, seed=5, **kw)
    np.testing.assert_array_equal(ours, theirs)
    if case != "plain":
        plain = run(params, config, PROMPTS, 40, seed=5, stop_at_eos=False, temperature=kw["temperature"])
        assert (ours != plain).any()


def readable_loop(params, config, prompts, n, temperature=0.0, seed=None, window=None, **options):
    """One full forward per step over each row so far (or its last `window` tokens), the
    processors written out as formulas, then next_token; one rng.random(B) per step."""
    rng, seqs = np.random.default_rng(seed), np.array(prompts)
    T = seqs.shape[1]
    for _ in range(n):
        seen = seqs if window is None else seqs[:, -window:]
        z = numpy_gpt2.forward(params, config, seen)[:, -1].copy()
        for b, row in enumerate(seqs):
            new = row[T:].tolist()
            for i in range(config.vocab_size):
                if "repetition_penalty" in options and i in row:
                    p = options["repetition_penalty"]
                    z[b, i] = z[b, i] * p if z[b, i] < 0 else z[b, i] / p
                z[b, i] -= options.get("frequency_penalty", 0.0) * new.count(i)
                z[b, i] -= options.get("presence_penalty", 0.0) * (i in new)
        u = rng.random(len(seqs)) if temperature else None
        token = next_token(z, temperature, None, None, u)
        seqs = np.concatenate([seqs, token[:, None]], axis=1)
    return seqs[:, T:]


@pytest.mark.parametrize("kw", [dict(frequency_penalty=0.8), dict(presence_penalty=1.5),
                                dict(frequency_penalty=-0.5, presence_penalty=0.7, repetition_penalty=1.2),
                                dict(frequency_penalty=0.6, temperature=1.0, seed=3)])
def test_frequency_and_presence_penalties_follow_the_formula_in_generation(model64, kw):
    params, config = model64
    kw = dict(temperature=0.0) | kw
    ours = run(params, config, PROMPTS, 25, stop_at_eos=False, **kw)
    np.testing.assert_array_equal(ours, readable_loop(params, config, PROMPTS, 25, **kw))
    plain = run(params, config, PROMPTS, 25, stop_at_eos=False, temperature=kw["temperature"], seed=kw.get("seed"))
    assert (ours != plain).any()


def test_processors_that_ban_everything_are_an_error_not_token_0(model64):
    params, config = model64
    # Everything but token 5 suppressed, and no token may repeat (n-grams of size 1): token 5
    # first, then nothing is left.
    steps = numpy_gpt2.generate(params, config, [1, 2], 10, temperature=0, no_repeat_ngram_size=1,
                                suppress_tokens=[t for t in range(config.vocab_size) if t != 5])
    assert next(steps) == 5
    with pytest.raises(ValueError, match=r"processors \(no_repeat_ngram_size, suppress_tokens\) leave no "
                                         r"token to choose from after 1 new tokens"):
        next(steps)
    with pytest.raises(ValueError, match="suppress_tokens bans every token id"):  # found up front
        numpy_gpt2.generate(params, config, [1, 2], 10, suppress_tokens=range(config.vocab_size))


# --- logprobs ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kw", [dict(temperature=0), dict(temperature=0.7, top_k=20, seed=2),
                                dict(temperature=0, repetition_penalty=1.5)])
def test_logprobs_are_log_softmax_of_the_forward_logits(model64, kw):
    params, config = model64
    k = 5
    steps = list(numpy_gpt2.generate(params, config, PROMPTS, 20, logprobs=k, stop_at_eos=False, **kw))
    tokens = np.stack([t for t, _ in steps], axis=1)  # (B, 20)
    np.testing.assert_array_equal(tokens, run(params, config, PROMPTS, 20, stop_at_eos=False, **kw))
    seqs = np.concatenate([PROMPTS, tokens], axis=1)
    logp = log_softmax(numpy_gpt2.forward(params, config, seqs[:, :-1])[:, PROMPTS.shape[1] - 1:])  # (B, 20, V)
    info = {key: np.stack([i[key] for _, i in steps], axis=1) for key in steps[0][1]}
    chosen = np.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0]
    np.testing.assert_allclose(info["logprob"], chosen, rtol=0, atol=1e-11)
    expected_ids = np.argsort(-logp, axis=-1, kind="stable")[..., :k]
    np.testing.assert_array_equal(info["top_ids"], expected_ids)
    np.testing.assert_allclose(info["top_logprobs"], np.take_along_axis(logp, expected_ids, -1), rtol=0, atol=1e-11)
    if kw == dict(temperature=0):
        np.testing.assert_allclose(info["processed_logprob"], info["logprob"], rtol=0, atol=1e-12)
        np.testing.assert_array_equal(info["top_ids"][..., 0], tokens)  # greedy takes the top one
    elif "top_k" in kw:
        filtered = log_softmax(filter_logits(logp, kw["temperature"], kw["top_k"]))
        np.testing.assert_allclose(info["processed_logprob"],
                                   np.take_along_axis(filtered, tokens[..., None], -1)[..., 0], rtol=0, atol=1e-9)
    assert (info["processed_logprob"] > -np.inf).all()


def test_logprobs_single_prompt_scalars_and_finished_rows_nan(model64):
    params, config = model64
    token, info = next(iter(numpy_gpt2.generate(params, config, PROMPTS[0], 3, temperature=0, logprobs=3)))
    assert type(token) is int and np.ndim(info["logprob"]) == 0 and info["top_ids"].shape == (3,)
    free = run(params, config, PROMPTS, 20, temperature=0, stop_at_eos=False)
    eos = int(free[0, 2])  # row 0 finishes at step 2 (if row 1 makes it, it finishes too)
    steps = list(numpy_gpt2.generate(params, config, PROMPTS, 20, temperature=0, eos_token_id=eos, logprobs=2))
    for s, (tokens, info) in enumerate(steps):
        done = [eos in free[b, :s] for b in range(2)]
        np.testing.assert_array_equal(np.isnan(info["logprob"]), done)
        np.testing.assert_array_equal(info["top_ids"][done], -1)
    with pytest.raises(ValueError, match=r"logprobs must be an integer in 0\.\.97"):
        numpy_gpt2.generate(params, config, PROMPTS, 5, logprobs=98)
    with pytest.raises(ValueError, match=r'context must be "stop" or "slide", got \'crop\''):
        numpy_gpt2.generate(params, config, PROMPTS, 5, context="crop")


# --- context="slide" ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_ctx(tmp_path_factory):
    directory = tmp_path_factory.mktemp("slide")
    write_generation_checkpoint(directory, n_ctx=12)
    return numpy_gpt2.load(directory, np.float64)


@settings(max_examples=8)
@given(prompt_len=st.integers(1, 20), n=st.integers(1, 30), temperature=st.sampled_from([0.0, 1.0]),
       seed=st.integers(0, 100), penalty=st.sampled_from([None, 1.4]), batch=st.integers(1, 3))
def test_slide_equals_a_loop_that_reruns_the_cropped_window(small_ctx, prompt_len, n, temperature, seed,
                                                            penalty, batch):
    params, config = small_ctx
    prompts = np.random.default_rng(seed).integers(0, 96, size=(batch, prompt_len))
    kw = dict(temperature=temperature, seed=seed) | ({} if penalty is None else dict(repetition_penalty=penalty))
    ours = run(params, config, prompts, n, stop_at_eos=False, context="slide", **kw)
    np.testing.assert_array_equal(ours, readable_loop(params, config, prompts, n, window=config.n_ctx, **kw))


def test_slide_uses_the_cache_until_the_window_is_full_then_one_window_per_token(small_ctx, monkeypatch):
    params, config = small_ctx
    shapes, real = [], numpy_gpt2.generation.sampling.forward

    def recording(params, config, tokens, **kw):
        shapes.append((np.shape(tokens)[1], kw.get("kv_cache") is not None))
        return real(params, config, tokens, **kw)

    monkeypatch.setattr(numpy_gpt2.generation.sampling, "forward", recording)
    out = run(params, config, PROMPTS[:, :5], 20, temperature=0, stop_at_eos=False, context="slide")
    assert out.shape == (2, 20)
    # prefill 5, then cached steps for positions 5..11, then a full window of 12 per token
    assert shapes == [(5, True)] + [(1, True)] * 7 + [(12, False)] * 12
    stopped = run(params, config, PROMPTS[:, :5], 20, temperature=0, stop_at_eos=False)
    assert stopped.shape == (2, 12 - 5 + 1)
    np.testing.assert_array_equal(out[:, :8], stopped)


@pytest.mark.parametrize("kwargs, message", [
    (dict(repetition_penalty=-1.0), "repetition_penalty must be a finite number > 0"),
    (dict(frequency_penalty=float("inf")), "frequency_penalty must be a finite number"),
    (dict(presence_penalty="1"), "presence_penalty must be a finite number"),
    (dict(no_repeat_ngram_size=1.5), "no_repeat_ngram_size must be an integer >= 0"),
    (dict(min_new_tokens=-1), "min_new_tokens must be an integer >= 0"),
    (dict(logit_bias={97: 1.0}), r"logit_bias: token id 97 is not an integer in \[0, 97\)"),
    (dict(suppress_tokens=["a"]), r"suppress_tokens must hold token ids \(integers\), got 'a'"),
    (dict(min_p=-0.1), r"min_p must be in \[0, 1\]"),
    (dict(typical_p=2), r"typical_p must be in \(0, 1\]"),
    (dict(logprobs=-1), r"logprobs must be an integer in 0\.\.97"),
    (dict(logprobs=2.0), "logprobs"),
    (dict(context=None), "context must be"),
    (dict(tokens=list(range(N_CTX + 1))), "prompt tokens: sequence of 65 positions is longer than the context"),
])
def test_invalid_new_arguments_raise_before_any_work(model64, kwargs, message):
    _, config = model64
    tokens = kwargs.pop("tokens", [1, 2, 3])
    with pytest.raises(ValueError, match=message):  # params=None: any computation would be a TypeError
        numpy_gpt2.generate(None, config, tokens, 5, **kwargs)


def test_slide_accepts_a_prompt_longer_than_the_context(small_ctx):
    params, config = small_ctx
    prompt = np.random.default_rng(1).integers(0, 96, size=30)
    ours = run(params, config, prompt, 5, temperature=0, context="slide", stop_at_eos=False)
    np.testing.assert_array_equal(ours, readable_loop(params, config, prompt[None], 5, window=12)[0])
