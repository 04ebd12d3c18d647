"""generate() with a max_new_tokens far beyond what a run makes: any Python int is accepted
(also past int64), context="stop" ends at the context as with a small limit, and
context="slide" allocates only for the tokens made so far (a lazy generator the caller stops),
its greedy tokens equal to a hand-written sliding loop over numpy_gpt2.forward."""

import itertools

import numpy as np
import pytest

import numpy_gpt2

N_CTX = 8


@pytest.fixture(scope="module")
def tiny():
    config = numpy_gpt2.GPT2Config(n_layer=1, n_head=2, n_embd=16, n_ctx=N_CTX)
    params = numpy_gpt2.init_params(config, seed=4)
    for w in numpy_gpt2.flatten_params(params).values():
        w *= 20  # spread the logits: greedy choices far from ties
    return params, config


@pytest.mark.parametrize("huge", [2**63, 10**30])
def test_stop_with_a_huge_limit_is_the_context_limit(tiny, huge):
    params, config = tiny
    prompt = [3, 7, 1]
    expected = list(numpy_gpt2.generate(params, config, prompt, N_CTX + 1, seed=5,
                                        suppress_tokens=[config.eos_token_id]))
    got = list(numpy_gpt2.generate(params, config, prompt, huge, seed=5,
                                   suppress_tokens=[config.eos_token_id]))
    assert len(expected) == N_CTX - len(prompt) + 1
    assert got == expected


@pytest.mark.parametrize("huge", [10**12, 2**63, 10**30])
def test_slide_with_a_huge_limit_runs_lazily(tiny, huge):
    """Many times n_ctx tokens (the token buffer grows several times), greedy, equal to
    re-running forward on the last n_ctx tokens at every step."""
    params, config = tiny
    prompt, n = [3, 7, 1], 5 * N_CTX + 3
    got = list(itertools.islice(numpy_gpt2.generate(
        params, config, prompt, huge, temperature=0, context="slide",
        suppress_tokens=[config.eos_token_id]), n))
    seq = list(prompt)
    for _ in range(n):
        logits = numpy_gpt2.forward(params, config, np.array(seq[-N_CTX:]))[-1].copy()
        logits[config.eos_token_id] = -np.inf
        seq.append(int(np.argmax(logits)))
    assert got == seq[len(prompt):]
