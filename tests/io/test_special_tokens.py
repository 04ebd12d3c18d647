"""Token ids a model or its tokenizer does not have.

1. Special-token ids outside the vocabulary. transformers writes eos_token_id = bos_token_id =
   50256 into every GPT2Config's config.json, whatever its vocab_size; other configs carry
   pad_token_id, decoder_start_token_id, ... The checkpoint must load (such an id means "this
   model has no such token"), compute transformers' logits, and generate transformers' tokens
   (generation cannot stop on a token that does not exist); generate.py says so once on stderr.
2. A padded vocabulary (nanoGPT and llm.c: 50304 rows for GPT-2's 50257 tokens). Ids the
   tokenizer cannot decode are never sampled (generate(..., suppress_tokens=...), used by
   generate.py), and decoding one raises ValueError naming it.

Oracle: transformers' GPT2LMHeadModel (save_pretrained writes the checkpoints, its forward and
greedy generate give the reference logits and tokens) and GPT-2's real tokenizer.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import tiktoken
import torch
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st

import numpy_gpt2
from helpers.checkpoints import reference_model
from numpy_gpt2.io.tokenizer import undecodable_ids
from helpers.run_scripts import run_script

# Vocabulary sizes below, at and around GPT-2's: 50256 is outside all but the last two.
VOCAB_SIZES = [5, 100, 1000, 50256, 50257, 50304]
EXTRA_IDS = {"pad_token_id": 60000, "decoder_start_token_id": 70000, "sep_token_id": -1}


def save_pretrained_checkpoint(directory, vocab_size, seed=0, **extra):
    """A tiny GPT2LMHeadModel written by transformers' own save_pretrained (its config.json is
    exactly what transformers writes, default special-token ids included)."""
    torch.manual_seed(seed)
    config = transformers.GPT2Config(vocab_size=vocab_size, n_layer=2, n_head=2, n_embd=32,
                                     n_positions=64, **extra)
    model = transformers.GPT2LMHeadModel(config)
    with torch.no_grad():  # spread the logits: greedy continuations then vary
        model.transformer.wte.weight.normal_(0, 1.0)
        model.transformer.wpe.weight.normal_(0, 2.0)
    model.save_pretrained(directory)
    return model.eval()


@pytest.mark.parametrize("vocab_size", VOCAB_SIZES)
def test_transformers_written_configs_load_with_ids_outside_the_vocabulary(tmp_path, vocab_size):
    model = save_pretrained_checkpoint(tmp_path, vocab_size, **EXTRA_IDS)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["eos_token_id"] == written["bos_token_id"] == 50256  # transformers' default
    assert written["pad_token_id"] == 60000
    params, config = numpy_gpt2.load(tmp_path)
    assert (config.eos_token_id, config.bos_token_id) == (50256, 50256)
    assert config.has_token(50256) == (vocab_size > 50256)
    assert not config.has_token(vocab_size) and not config.has_token(-1)
    tokens = np.random.default_rng(0).integers(0, vocab_size, size=(2, 9))
    with torch.no_grad():
        ref = model(torch.tensor(tokens)).logits.numpy()
    ours = numpy_gpt2.forward(params, config, tokens)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=2e-4 * np.abs(ref).max())


@pytest.mark.parametrize("vocab_size", [5, 100, 1000])
def test_greedy_generation_without_an_eos_token_equals_transformers(tmp_path, vocab_size):
    """eos 50256 does not exist: every row runs to max_new_tokens, token for token as
    transformers' greedy generate (given the same eos id, which it can never produce)."""
    save_pretrained_checkpoint(tmp_path, vocab_size, seed=1)
    params, config = numpy_gpt2.load(tmp_path, dtype=np.float64)
    ref = reference_model(tmp_path, torch.float64)
    prompt = [[1, 2, 3], [4, 0, 2]]
    with torch.no_grad():
        want = ref.generate(torch.tensor(prompt), attention_mask=torch.ones(2, 3, dtype=torch.long),
                            do_sample=False, max_new_tokens=30, eos_token_id=50256,
                            pad_token_id=50256)[:, 3:].numpy()
    got = np.stack(list(numpy_gpt2.generate(params, config, prompt, 30, temperature=0)), axis=1)
    np.testing.assert_array_equal(got, want)
    sampled = list(numpy_gpt2.generate(params, config, prompt[0], 30, seed=0, num_samples=3))
    assert len(sampled) == 30 and all(0 <= t < vocab_size for step in sampled for t in step)


@pytest.fixture(scope="module")
def small_vocab_dir(tmp_path_factory, tokenizer_dir):
    """vocab_size 100 (ids 0..99 are GPT-2's single printable bytes), config by transformers,
    GPT-2's tokenizer files beside it."""
    directory = tmp_path_factory.mktemp("small-vocab")
    save_pretrained_checkpoint(directory, 100, seed=2)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(os.path.join(tokenizer_dir, name), directory)
    return directory


def test_generate_script_notes_once_that_it_cannot_stop(small_vocab_dir, capsys):
    status, out, err = run_script("generate", ["a", "--model", small_vocab_dir, "--temperature", 0,
                                               "--max-new-tokens", 12], capsys)
    assert status == 0, err
    assert err.count("eos_token_id=50256 is not a token this model can produce") == 1, err
    assert "--max-new-tokens 12 reached" in err
    enc = numpy_gpt2.load_tokenizer(small_vocab_dir)
    params, config = numpy_gpt2.load(small_vocab_dir)
    want = list(numpy_gpt2.generate(params, config, enc.encode("a"), 12, temperature=0))
    assert out == "a" + enc.decode(want) + "\n"
    # An empty prompt would start from bos 50256, which this model does not have: one line.
    status, out, err = run_script("generate", ["", "--model", small_vocab_dir], capsys)
    assert status == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "bos_token_id=50256" in err and "give a prompt" in err


def test_generate_script_says_nothing_when_eos_exists(tmp_path, tokenizer_dir, capsys):
    save_pretrained_checkpoint(tmp_path, 50257, seed=3)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(os.path.join(tokenizer_dir, name), tmp_path)
    status, _, err = run_script("generate", ["Hi", "--model", tmp_path, "--max-new-tokens", 3,
                                             "--seed", 0], capsys)
    assert status == 0 and "eos_token_id" not in err, err


# --- padded vocabularies -----------------------------------------------------------------

PADDED, PAD_ARGMAX = 50304, 50300


@pytest.fixture(scope="module")
def padded_dir(tmp_path_factory, tokenizer_dir):
    """vocab_size 50304 whose largest logit is always id 50300 (which GPT-2's tokenizer cannot
    decode): ln_f outputs its bias b whatever the input, and wte[50300] = 8 b."""
    directory = tmp_path_factory.mktemp("padded")
    model = save_pretrained_checkpoint(directory, PADDED, seed=4)
    with torch.no_grad():
        ln_f = model.transformer.ln_f
        ln_f.weight.zero_()
        ln_f.bias.normal_(0, 1.0)
        wte = model.transformer.wte.weight
        wte.normal_(0, 0.05)
        wte[PAD_ARGMAX] = 8 * ln_f.bias
        wte[50290:PADDED] += 4 * ln_f.bias  # every padding id beats every real one
    model.save_pretrained(directory)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(os.path.join(tokenizer_dir, name), directory)
    return directory


@pytest.fixture(scope="module")
def padded_model(padded_dir):
    return numpy_gpt2.load(padded_dir)


def test_padded_checkpoint_argmax_is_a_padding_id(padded_model):
    params, config = padded_model
    logits = numpy_gpt2.forward(params, config, [464, 3290])
    assert config.vocab_size == PADDED and (logits.argmax(axis=-1) == PAD_ARGMAX).all()


def test_generate_script_never_samples_an_undecodable_id(padded_dir, padded_model, capsys):
    """The reported crash: greedy generation picked 50300, then a KeyError traceback."""
    enc = numpy_gpt2.load_tokenizer(padded_dir)
    params, config = padded_model
    for flags in (["--temperature", 0], ["--seed", 1], ["--seed", 2, "--top-k", 5],
                  ["--seed", 3, "--num-samples", 2], ["--num-beams", 3, "--num-samples", 2]):
        status, out, err = run_script("generate", ["The dog", "--model", padded_dir,
                                                   "--max-new-tokens", 6, *flags], capsys)
        assert status == 0 and "Traceback" not in err, err
        assert out.count("The dog") == (2 if "--num-samples" in flags else 1)
    status, out, _ = run_script("generate", ["The dog", "--model", padded_dir, "--temperature", 0,
                                             "--max-new-tokens", 6], capsys)
    logits = numpy_gpt2.forward(params, config, enc.encode("The dog"))[-1]
    best = int(logits[:enc.n_vocab].argmax())  # the best decodable token
    assert out.startswith("The dog" + enc.decode([best]))
    status, out, _ = run_script("generate", ["--help"], capsys)
    assert "cannot decode" in " ".join(out.split())


@pytest.fixture(scope="module")
def padded_tokenizer(padded_dir):
    return numpy_gpt2.load_tokenizer(padded_dir)


@settings(max_examples=10)
@given(seed=st.integers(0, 2**32 - 1), temperature=st.floats(0.5, 3.0),
       top_k=st.sampled_from([None, 1, 60]), top_p=st.sampled_from([None, 0.5, 1.0]))
def test_suppressed_ids_are_never_generated(padded_tokenizer, padded_model, seed, temperature,
                                            top_k, top_p):
    """The padding ids hold nearly all the probability mass, and are never drawn."""
    params, config = padded_model
    banned = undecodable_ids(padded_tokenizer, config.vocab_size)
    assert banned == range(50257, PADDED)
    steps = list(numpy_gpt2.generate(params, config, [464, 3290], 5, temperature, top_k, top_p,
                                     seed=seed, num_samples=4, suppress_tokens=banned))
    assert (np.stack(steps) < 50257).all()
    free = np.stack(list(numpy_gpt2.generate(params, config, [464, 3290], 5, temperature, top_k,
                                             top_p, seed=seed, num_samples=4)))
    assert (free >= 50257).any()  # without suppress_tokens they are what comes out


def test_suppress_tokens_is_checked(padded_model):
    params, config = padded_model
    with pytest.raises(ValueError, match=r"suppress_tokens must hold token ids \(integers\), got 'x'"):
        numpy_gpt2.generate(params, config, [1], 2, suppress_tokens=[3, "x"])
    with pytest.raises(ValueError, match=r"suppress_tokens bans every token id .*\[0, 50304\)"):
        numpy_gpt2.generate(params, config, [1], 2, suppress_tokens=range(-5, PADDED + 5))
    # ids outside the vocabulary are ignored, as by transformers' SuppressTokensLogitsProcessor
    out = list(numpy_gpt2.generate(params, config, [1], 2, temperature=0,
                                   suppress_tokens=[-1, PADDED, *range(50257, PADDED)]))
    assert all(t < 50257 for t in out)


def test_greedy_suppress_tokens_equals_transformers_processor(tmp_path):
    """generate(..., suppress_tokens=S) greedy = transformers' generate(suppress_tokens=S)."""
    save_pretrained_checkpoint(tmp_path, 100, seed=5)
    params, config = numpy_gpt2.load(tmp_path, dtype=np.float64)
    ref = reference_model(tmp_path, torch.float64)
    prompt = [7, 8, 9]
    free = list(numpy_gpt2.generate(params, config, prompt, 20, temperature=0))
    banned = sorted(set(free))[:3]  # tokens the free run produced: the ban changes the text
    with torch.no_grad():
        want = ref.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, 3, dtype=torch.long),
                            do_sample=False, max_new_tokens=20, eos_token_id=50256,
                            pad_token_id=50256, suppress_tokens=banned)[0, 3:].tolist()
    got = list(numpy_gpt2.generate(params, config, prompt, 20, temperature=0, suppress_tokens=banned))
    assert got == want and not set(got) & set(banned) and got != free


@pytest.mark.parametrize("bad", [50257, 50300, -1, 2**70])
def test_decoding_an_unknown_id_names_it(tokenizer_dir, bad):
    enc = numpy_gpt2.load_tokenizer(tokenizer_dir)
    message = rf"token id {bad} cannot be decoded: the tokenizer's vocabulary is \[0, 50257\)"
    with pytest.raises(ValueError, match=message):
        enc.decode([15496, bad])
    with pytest.raises(ValueError, match=message):
        enc.decode_single_token_bytes(bad)
    with pytest.raises(ValueError, match=message):
        enc.decode_tokens_bytes([bad])
    pieces = numpy_gpt2.stream_decode(enc, [15496, bad])
    assert next(pieces) == "Hello"  # what came before is still streamed
    with pytest.raises(ValueError, match=message):
        next(pieces)
    plain = tiktoken.Encoding(name="x", pat_str=enc._pat_str, mergeable_ranks=enc._mergeable_ranks,
                              special_tokens={})
    with pytest.raises(ValueError, match=r"token id 50256 cannot be decoded.*\[0, 50256\)"):
        list(numpy_gpt2.stream_decode(plain, [50256]))  # any tiktoken Encoding


def test_tiktoken_fallback_decodes_with_the_same_check(tokenizer_dir, monkeypatch):
    """Without local files, load_tokenizer uses tiktoken.get_encoding("gpt2") (here given the
    local files, no download): the same encoding, and unknown ids still name themselves."""
    local = numpy_gpt2.io.tokenizer.encoding_from_files(tokenizer_dir)
    theirs = tiktoken.Encoding(name="gpt2", pat_str=local._pat_str,
                               mergeable_ranks=local._mergeable_ranks,
                               special_tokens=local._special_tokens)
    monkeypatch.setattr(tiktoken, "get_encoding", lambda name: theirs)
    monkeypatch.delenv("NUMPY_GPT2_TOKENIZER", raising=False)
    enc = numpy_gpt2.load_tokenizer()
    assert enc.encode("Hello world") == theirs.encode("Hello world") == [15496, 995]
    assert enc.n_vocab == 50257 and enc.decode([15496, 50256]) == "Hello<|endoftext|>"
    with pytest.raises(ValueError, match=r"token id 50257 cannot be decoded"):
        enc.decode([50257])
    with pytest.raises(KeyError):  # tiktoken's own object is left as it was
        theirs.decode([50257])
