"""The logits processors, each against the transformers processor of the same name.

Random logits and token histories from hypothesis (ties, negative and -inf logits included);
each of our rows is left-padded with random ids (that may equal real ones) and a mask, and
must equal transformers' processor applied to that row's real tokens alone: padding is never
a seen token. frequency/presence penalties have no transformers twin: checked against the
formula with explicit counting loops.
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from transformers.generation import logits_process as lp

from numpy_gpt2.cli.common import flag_message
from numpy_gpt2.generation.checks import check_processor_args
from numpy_gpt2.generation.processors import (apply_processors, apply_warpers,
                                              frequency_penalty, logit_bias, min_new_tokens, min_p_filter,
                                              no_repeat_ngram, presence_penalty, repetition_penalty,
                                              suppress_tokens, token_counts, typical_p_filter)


@st.composite
def batches(draw, min_len=0, max_len=12, small_vocab=False):
    """(logits (B, V) float64, rows: list of B real-token lists, tokens (B, L) left-padded,
    mask (B, L)). Small vocabularies make repeats (and n-gram matches) common."""
    B = draw(st.integers(1, 4))
    V = draw(st.integers(2, 6 if small_vocab else 40))
    rows = [draw(st.lists(st.integers(0, V - 1), min_size=min_len, max_size=max_len)) for _ in range(B)]
    L = max(len(r) for r in rows) + draw(st.integers(0, 3))
    tokens = np.zeros((B, L), np.int64)
    mask = np.zeros((B, L), np.int64)
    for b, r in enumerate(rows):
        tokens[b, :L - len(r)] = draw(st.lists(st.integers(0, V - 1), min_size=L - len(r), max_size=L - len(r)))
        tokens[b, L - len(r):] = r
        mask[b, L - len(r):] = 1
    values = st.one_of(st.floats(-30, 30, allow_nan=False), st.sampled_from([0.0, 1.0, -1.0]))
    logits = np.array([draw(st.lists(values, min_size=V, max_size=V)) for _ in range(B)])
    if draw(st.booleans()):  # some tokens already dropped by an earlier processor
        logits[np.asarray(draw(st.lists(st.booleans(), min_size=B * V, max_size=B * V))).reshape(B, V)
               & (np.arange(V) > 0)] = -np.inf
    return logits, rows, tokens, mask


def per_row(processor, logits, rows):
    """transformers' processor applied to each row alone (its real tokens only)."""
    out = []
    for z, r in zip(logits, rows):
        ids = torch.tensor([r], dtype=torch.long).reshape(1, len(r))
        out.append(processor(ids, torch.tensor(z[None])).numpy()[0])
    return np.stack(out)


@given(data=batches(), penalty=st.floats(0.05, 20.0))
def test_repetition_penalty_equals_transformers(data, penalty):
    logits, rows, tokens, mask = data
    ours = repetition_penalty(logits, tokens, penalty, mask)
    theirs = per_row(lp.RepetitionPenaltyLogitsProcessor(penalty), logits, rows)
    np.testing.assert_array_equal(ours, theirs)  # one multiply or divide: the same bits


@given(data=batches(small_vocab=True), n=st.integers(1, 4))
def test_no_repeat_ngram_equals_transformers(data, n):
    logits, rows, tokens, mask = data
    ours = no_repeat_ngram(logits, tokens, n, mask)
    theirs = per_row(lp.NoRepeatNGramLogitsProcessor(n), logits, rows)
    np.testing.assert_array_equal(ours, theirs)


@given(data=batches(), minimum=st.integers(0, 5), n_new=st.integers(0, 6), eos=st.integers(0, 1))
def test_min_new_tokens_equals_transformers(data, minimum, n_new, eos):
    logits, rows, tokens, mask = data
    ours = min_new_tokens(logits, n_new, minimum, eos)
    # transformers counts new tokens as input length - prompt length: any ids of length n_new.
    processor = lp.MinNewTokensLengthLogitsProcessor(prompt_length_to_skip=0, min_new_tokens=minimum,
                                                     eos_token_id=eos)
    theirs = processor(torch.zeros((len(logits), n_new), dtype=torch.long), torch.tensor(logits)).numpy()
    np.testing.assert_array_equal(ours, theirs)


@given(data=batches(), seed=st.integers(0, 2**32 - 1))
def test_logit_bias_equals_transformers_sequence_bias(data, seed):
    logits, rows, tokens, mask = data
    V = logits.shape[1]
    rng = np.random.default_rng(seed)
    ids = rng.choice(V, size=rng.integers(1, V + 1), replace=False).tolist()
    # float32 values: transformers keeps its bias tensor in float32.
    values = [float(np.float32(v)) for v in rng.normal(0, 5, len(ids))]
    if len(ids) > 1:
        values[0] = -math.inf  # a ban
    bias = dict(zip(ids, values))
    ours = logit_bias(logits, bias)
    processor = lp.SequenceBiasLogitsProcessor({(i,): v for i, v in bias.items()})
    theirs = processor(torch.tensor(tokens), torch.tensor(logits)).numpy()
    np.testing.assert_array_equal(ours, theirs)


@given(data=batches(), seed=st.integers(0, 2**32 - 1))
def test_suppress_tokens_equals_transformers(data, seed):
    logits, rows, tokens, mask = data
    rng = np.random.default_rng(seed)
    ids = rng.choice(logits.shape[1], size=rng.integers(0, 4), replace=True).tolist()
    ours = suppress_tokens(logits, ids)
    theirs = lp.SuppressTokensLogitsProcessor(ids)(torch.tensor(tokens), torch.tensor(logits)).numpy()
    np.testing.assert_array_equal(ours, theirs)


@given(data=batches(), which=st.sampled_from(["min_p", "typical_p"]), value=st.floats(0.0, 1.0))
def test_min_p_and_typical_p_equal_transformers(data, which, value):
    logits, rows, tokens, mask = data
    if which == "min_p":
        ours, theirs = min_p_filter(logits, value), lp.MinPLogitsWarper(value)
    else:
        value = min(max(value, 0.01), 0.99)  # transformers' TypicalLogitsWarper needs 0 < mass < 1
        ours, theirs = typical_p_filter(logits, value), lp.TypicalLogitsWarper(value)
    theirs = theirs(torch.tensor(tokens), torch.tensor(logits)).numpy()
    np.testing.assert_array_equal(np.isfinite(ours), np.isfinite(theirs))
    np.testing.assert_array_equal(ours[np.isfinite(ours)], logits[np.isfinite(ours)])


@given(data=batches(), penalty=st.floats(-2.0, 2.0))
def test_frequency_and_presence_penalties_follow_the_formula(data, penalty):
    """z_i - penalty * count_i and z_i - penalty * [count_i > 0], counts of the row's real
    tokens only, counted by a plain loop."""
    logits, rows, tokens, mask = data
    expected_f, expected_p = logits.copy(), logits.copy()
    for b, r in enumerate(rows):
        for i in range(logits.shape[1]):
            expected_f[b, i] -= penalty * r.count(i)
            expected_p[b, i] -= penalty * (i in r)
    np.testing.assert_array_equal(frequency_penalty(logits, tokens, penalty, mask), expected_f)
    np.testing.assert_array_equal(presence_penalty(logits, tokens, penalty, mask), expected_p)


@given(data=batches())
def test_processors_leave_their_input_untouched_and_padding_unseen(data):
    logits, rows, tokens, mask = data
    before = logits.copy()
    counts = token_counts(tokens, logits.shape[1], mask)
    for b, r in enumerate(rows):
        np.testing.assert_array_equal(counts[b], np.bincount(np.array(r, int), minlength=logits.shape[1]))
    for f in (lambda z: repetition_penalty(z, tokens, 1.3, mask), lambda z: no_repeat_ngram(z, tokens, 2, mask),
              lambda z: frequency_penalty(z, tokens, 0.5, mask), lambda z: logit_bias(z, {0: 1.0}),
              lambda z: suppress_tokens(z, [0]), lambda z: min_new_tokens(z, 0, 1, 0),
              lambda z: min_p_filter(z, 0.2), lambda z: typical_p_filter(z, 0.5)):
        f(logits)
        np.testing.assert_array_equal(logits, before)


@pytest.mark.filterwarnings("ignore:invalid value encountered")  # rows where every token is banned
@given(data=batches(min_len=1), n_new=st.integers(0, 3), penalty=st.floats(0.5, 3.0),
       n=st.integers(1, 3), minimum=st.integers(0, 4), min_p=st.floats(0.0, 0.5),
       mass=st.floats(0.2, 0.99))
def test_apply_processors_runs_them_in_transformers_order(data, n_new, penalty, n, minimum, min_p, mass):
    """The composition equals transformers' LogitsProcessorList built in the order of
    GenerationMixin._get_logits_processor (sequence_bias, repetition, n-gram, min_new_tokens,
    suppress; then min_p, typical_p), per row on its real tokens."""
    logits, rows, tokens, mask = data
    n_new = min(n_new, min(len(r) for r in rows))
    bias = {0: 0.5, logits.shape[1] - 1: -2.0}
    options = check_processor_args(logits.shape[1], logit_bias=bias, repetition_penalty=penalty,
                                   no_repeat_ngram_size=n, min_new_tokens=minimum, suppress_tokens=[1],
                                   min_p=min_p, typical_p=mass)
    ours = apply_warpers(apply_processors(logits, tokens, mask, n_new, 0, options), options)
    processors = lp.LogitsProcessorList([
        lp.SequenceBiasLogitsProcessor({(i,): v for i, v in bias.items()}),
        lp.RepetitionPenaltyLogitsProcessor(penalty), lp.NoRepeatNGramLogitsProcessor(n),
        lp.MinNewTokensLengthLogitsProcessor(0, minimum, 0), lp.SuppressTokensLogitsProcessor([1]),
        lp.MinPLogitsWarper(min_p), lp.TypicalLogitsWarper(mass)])
    out = []
    for z, r in zip(logits, rows):
        # MinNewTokens counts length - prompt length: give it a prompt length of len(r) - n_new.
        processors[3].prompt_length_to_skip = len(r) - n_new
        out.append(processors(torch.tensor([r]), torch.tensor(z[None])).numpy()[0])
    theirs = np.stack(out)
    np.testing.assert_array_equal(np.isfinite(ours), np.isfinite(theirs))
    np.testing.assert_allclose(ours[np.isfinite(ours)], theirs[np.isfinite(ours)], rtol=1e-15, atol=0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(repetition_penalty=0.0), "repetition_penalty must be a finite number > 0"),
    (dict(repetition_penalty=float("inf")), "repetition_penalty"),
    (dict(repetition_penalty="2"), "repetition_penalty"),
    (dict(frequency_penalty=float("nan")), "frequency_penalty must be a finite number"),
    (dict(presence_penalty=True), "presence_penalty"),
    (dict(no_repeat_ngram_size=-1), "no_repeat_ngram_size must be an integer >= 0"),
    (dict(no_repeat_ngram_size=2.0), "no_repeat_ngram_size"),
    (dict(min_new_tokens=-3), "min_new_tokens must be an integer >= 0"),
    (dict(min_p=1.5), r"min_p must be in \[0, 1\]"),
    (dict(typical_p=0.0), r"typical_p must be in \(0, 1\]"),
    (dict(logit_bias=[(1, 2.0)]), r"logit_bias must be a dict \{token_id: bias\}"),
    (dict(logit_bias={10: 1.0}), r"logit_bias: token id 10 is not an integer in \[0, 10\)"),
    (dict(logit_bias={"1": 1.0}), "logit_bias: token id '1'"),
    (dict(logit_bias={1: float("inf")}), r"logit_bias\[1\] must be a finite number or -inf"),
    (dict(logit_bias={1: float("nan")}), r"logit_bias\[1\]"),
    (dict(suppress_tokens=[3, "a"]), r"suppress_tokens must hold token ids \(integers\), got 'a'"),
    (dict(suppress_tokens=5), "suppress_tokens must be a list of token ids"),
    (dict(suppress_tokens=range(10)), r"suppress_tokens bans every token id of the vocabulary \[0, 10\)"),
])
def test_bad_options_are_value_errors_naming_them(kwargs, message):
    with pytest.raises(ValueError, match=message):
        check_processor_args(10, **kwargs)


def test_cli_messages_name_the_flags_and_off_values_are_dropped():
    with pytest.raises(ValueError, match="^no_repeat_ngram_size must") as error:
        check_processor_args(10, no_repeat_ngram_size=-1)
    assert flag_message(error.value).startswith("--no-repeat-ngram-size must")  # the command's wording
    assert check_processor_args(10, repetition_penalty=1.0, frequency_penalty=0.0, no_repeat_ngram_size=0,
                                min_new_tokens=0, typical_p=1.0, min_p=None) == {}
    assert check_processor_args(10, typical_p=0.5, repetition_penalty=2) == {"repetition_penalty": 2,
                                                                           "typical_p": 0.5}
    # ids outside the vocabulary are ignored (as by transformers and generate's suppress_tokens)
    assert check_processor_args(10, suppress_tokens=[12, 3, -1, 3]) == {"suppress_tokens": (3,)}
    assert check_processor_args(10, suppress_tokens=[12]) == {}
