"""beam_search against transformers' generate(num_beams=..., do_sample=False) on the same file.

Tokens must be equal; scores (sequences_scores) equal to float32 rounding: transformers does
its beam arithmetic in float32 (it casts the logits), ours is float64. A score is a sum of up
to 15 log probabilities, each rounded to float32 (absolute error ~1e-7 at logits of tens):
rtol 1e-5 plus atol 2e-6.
"""

import numpy as np
import pytest
import torch

import numpy_gpt2
from numpy_gpt2.generation.beams import beam_search

N_CTX = 64  # test_generate_controls' checkpoint
PROMPT = np.array([5, 17, 3, 40, 8])


def hf_beams(ref, prompt, max_new_tokens, num_beams, eos, **kw):
    """transformers' returned sequences (new tokens, padded with eos) and sequences_scores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            out = ref.generate(torch.tensor(prompt[None]), attention_mask=torch.ones((1, len(prompt)), dtype=torch.long),
                               do_sample=False, num_beams=num_beams, max_new_tokens=max_new_tokens,
                               eos_token_id=eos, pad_token_id=eos, output_scores=True,
                               return_dict_in_generate=True, **kw)
    finally:
        torch.set_num_threads(threads)
    return out.sequences[:, len(prompt):].numpy(), out.sequences_scores.numpy()


def assert_same_beams(ours, theirs, eos):
    sequences, scores = theirs
    assert len(ours) == len(sequences)
    for (tokens, score), row, their_score in zip(ours, sequences, scores):
        np.testing.assert_array_equal(tokens, row[:len(tokens)])
        assert (row[len(tokens):] == eos).all()  # transformers pads shorter beams
        np.testing.assert_allclose(score, their_score, rtol=1e-5, atol=2e-6)


@pytest.fixture(scope="module")
def eos_produced(model64):
    """A token beam search makes at an early step of some beams but not at the first: with it
    as eos, beams finish at different lengths."""
    params, config = model64
    beams = beam_search(params, config, PROMPT, 12, 4, num_return_sequences=4, eos_token_id=0)
    counts = {}
    for tokens, _ in beams:
        for step, token in enumerate(tokens.tolist()[1:8], 1):
            counts.setdefault(token, set()).add(step)
    return max(counts, key=lambda t: len(counts[t]))


CASES = [  # num_beams, length_penalty, early_stopping, num_return_sequences, no_repeat_ngram_size
    (2, 1.0, False, 1, 0), (3, 1.0, True, 3, 0), (4, 0.0, "never", 2, 0), (4, 2.0, False, 4, 0),
    (5, -0.5, True, 2, 0), (3, 1.5, "never", 3, 2), (6, 1.0, False, 6, 3), (2, 0.5, True, 2, 0),
    # with the eos of the fixture, these three give three different results (early stopping
    # True / False / "never" each change what is returned):
    (3, 2.0, True, 3, 0), (3, 2.0, False, 3, 0), (2, 1.0, "never", 2, 0),
]


@pytest.mark.parametrize("with_eos", [True, False], ids=["eos", "no-eos"])
@pytest.mark.parametrize("num_beams, length_penalty, early_stopping, num_return, ngram", CASES)
def test_beam_search_equals_transformers(model64, hf64, eos_produced, with_eos, num_beams, length_penalty,
                                         early_stopping, num_return, ngram):
    params, config = model64
    eos = eos_produced if with_eos else 0
    kw = dict(length_penalty=length_penalty, early_stopping=early_stopping, num_return_sequences=num_return,
              no_repeat_ngram_size=ngram)
    ours = beam_search(params, config, PROMPT, 15, num_beams, eos_token_id=eos, **kw)
    assert_same_beams(ours, hf_beams(hf64, PROMPT, 15, num_beams, eos, **kw), eos)
    ends = [len(t) for t, _ in ours]
    if with_eos:
        assert any(t[-1] == eos for t, _ in ours)
    else:
        assert all(eos not in t for t, _ in ours) and ends == [15] * num_return


def test_beams_reorder_the_cache_instead_of_recomputing(model64, monkeypatch):
    """One prefill of the prompt (batch 1), then one single-token step per beam and step."""
    params, config = model64
    shapes, real = [], numpy_gpt2.generation.beams.forward

    def recording(params, config, tokens, **kw):
        shapes.append(np.shape(tokens))
        return real(params, config, tokens, **kw)

    monkeypatch.setattr(numpy_gpt2.generation.beams, "forward", recording)
    out = beam_search(params, config, PROMPT, 10, 3, eos_token_id=0)
    assert shapes == [(1, len(PROMPT))] + [(3, 1)] * 9 and len(out[0][0]) == 10


def test_one_beam_without_eos_is_greedy(model64):
    params, config = model64
    greedy = list(numpy_gpt2.generate(params, config, PROMPT, 20, temperature=0, stop_at_eos=False))
    (tokens, score), = beam_search(params, config, PROMPT, 20, 1, eos_token_id=0)
    np.testing.assert_array_equal(tokens, greedy)


def test_beam_search_stops_at_the_context(model64, hf64):
    params, config = model64
    prompt = np.random.default_rng(0).integers(0, 96, size=N_CTX - 4)
    ours = beam_search(params, config, prompt, 50, 3, eos_token_id=0, num_return_sequences=3)
    assert [len(t) for t, _ in ours] == [5, 5, 5]
    assert_same_beams(ours, hf_beams(hf64, prompt, 5, 3, 0, num_return_sequences=3), 0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_beams=0), "num_beams must be an integer >= 1"),
    (dict(max_new_tokens=0), "max_new_tokens must be an integer >= 1 for beam search"),
    (dict(length_penalty=float("nan")), "length_penalty must be a finite number"),
    (dict(length_penalty=1e308), r"length_penalty must be at most 441.0\d* in size for 5 new tokens"),
    (dict(length_penalty=-500.0), r"length_penalty must be at most 441.0\d* in size"),
    (dict(early_stopping="always"), "early_stopping must be True, False or \"never\""),
    (dict(early_stopping=1), "early_stopping"),
    (dict(num_return_sequences=4), r"num_return_sequences must be an integer from 1 to num_beams \(3\)"),
    (dict(no_repeat_ngram_size=-2), "no_repeat_ngram_size must be an integer >= 0"),
    (dict(eos_token_id=97), r"eos_token_id must be a token id in \[0, 97\)"),
    (dict(prompt=[[1, 2]]), r"prompt tokens must be one sequence \(T,\) for beam search"),
    (dict(prompt=[]), "prompt tokens must hold at least one position"),
])
def test_bad_arguments_raise_before_any_work(model64, kwargs, message):
    _, config = model64
    args = dict(prompt=[1, 2, 3], max_new_tokens=5, num_beams=3) | kwargs
    with pytest.raises(ValueError, match=message):
        beam_search(None, config, args.pop("prompt"), args.pop("max_new_tokens"), args.pop("num_beams"), **args)


def test_suppressed_tokens_are_never_chosen_and_equal_transformers(model64, hf64):
    """suppress_tokens (a padded vocabulary's undecodable ids): the best tokens of the free
    search are banned, the result changes and equals transformers' with suppress_tokens."""
    params, config = model64
    free = beam_search(params, config, PROMPT, 8, 3, num_return_sequences=3, eos_token_id=0)
    banned = sorted({int(t) for tokens, _ in free for t in tokens[:3]})
    ours = beam_search(params, config, PROMPT, 8, 3, num_return_sequences=3, eos_token_id=0,
                       suppress_tokens=banned + [config.vocab_size + 5])  # outside: ignored
    assert not any(np.isin(tokens, banned).any() for tokens, _ in ours)
    assert_same_beams(ours, hf_beams(hf64, PROMPT, 8, 3, 0, num_return_sequences=3,
                                     suppress_tokens=banned), 0)
    with pytest.raises(ValueError, match="suppress_tokens"):
        beam_search(params, config, PROMPT, 8, 3, suppress_tokens=["x"])


@pytest.mark.parametrize("sign", [1, -1])
def test_the_largest_length_penalty_allowed_runs(model64, sign):
    """Just inside the bound every L ** length_penalty (L <= max_new_tokens) is a finite,
    non-zero float: the search runs and its scores are numbers (no overflow, no 0 / 0)."""
    import math
    import sys
    params, config = model64
    bound = math.log(sys.float_info.max) / math.log(5)
    beams = beam_search(params, config, [1, 2, 3], 5, 3, length_penalty=sign * bound * (1 - 1e-12),
                        num_return_sequences=3)
    assert len(beams) == 3 and all(not math.isnan(score) for _, score in beams), beams
