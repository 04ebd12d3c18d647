"""load_tokenizer (tiktoken from vocab.json + merges.txt, offline) and UTF-8-safe streaming decode.

Oracle: transformers' GPT2TokenizerFast built from the same two files, and the known ids of
OpenAI's GPT-2 encoding. Nothing here may reach tiktoken's download path: the fallback is
replaced by a function that fails the test if called.
"""

import os
import shutil

import pytest
import tiktoken
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st

import numpy_gpt2
from numpy_gpt2.io.tokenizer import TOKENIZER_ENV, stream_decode

SPLIT_TEXTS = ["🤗", "日本語のテキスト", "Dvořák in Łódź", "à ö ñ", "한국어", "Ω≈ç√ ∑", "👍🏽 family: 👨‍👩‍👧",
               "Ελληνικά", "emoji at the end 🎉"]
VARIED_TEXTS = ["Hello world", "  leading spaces and trailing   ", "tabs\tand\nnewlines\n\n",
                "It's we'll they're I'd you've", "numbers 1234567 3.14159 -42", "def f(x):\n    return x**2",
                "<html><body>&amp;</body></html>", *SPLIT_TEXTS]


@pytest.fixture(scope="module")
def enc(tokenizer_dir):
    return numpy_gpt2.load_tokenizer(tokenizer_dir)


@pytest.fixture(scope="module")
def hf(tokenizer_dir):
    return transformers.GPT2TokenizerFast(os.path.join(tokenizer_dir, "vocab.json"),
                                          os.path.join(tokenizer_dir, "merges.txt"))


@pytest.fixture(autouse=True)
def no_download(monkeypatch):
    def refuse(name):
        raise AssertionError(f"the test reached tiktoken.get_encoding({name!r}), which downloads")
    monkeypatch.setattr(tiktoken, "get_encoding", refuse)


def test_known_gpt2_ids(enc):
    assert isinstance(enc, tiktoken.Encoding)
    assert enc.encode("Hello world") == [15496, 995]
    assert enc.encode("<|endoftext|>", allowed_special={"<|endoftext|>"}) == [50256]
    assert enc.eot_token == 50256
    assert enc.n_vocab == 50257


def test_same_encoding_as_tiktokens_own_gpt2_definition(enc, tokenizer_dir, monkeypatch):
    """tiktoken's "gpt2" definition, fed our local files instead of its download (after checking
    they have the sha256 it expects): same regex, ranks, special tokens, vocabulary size."""
    import hashlib
    import tiktoken_ext.openai_public as openai_public

    def local_files(vocab_bpe_file, encoder_json_file, vocab_bpe_hash, encoder_json_hash):
        for name, expected in (("merges.txt", vocab_bpe_hash), ("vocab.json", encoder_json_hash)):
            with open(os.path.join(tokenizer_dir, name), "rb") as f:
                assert hashlib.sha256(f.read()).hexdigest() == expected, name
        return tiktoken.load.data_gym_to_mergeable_bpe_ranks(
            os.path.join(tokenizer_dir, "merges.txt"), os.path.join(tokenizer_dir, "vocab.json"))
    monkeypatch.setattr(openai_public, "data_gym_to_mergeable_bpe_ranks", local_files)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")
    theirs = tiktoken.Encoding(**openai_public.gpt2())
    assert enc._pat_str == theirs._pat_str
    assert enc._special_tokens == theirs._special_tokens == {"<|endoftext|>": 50256}
    assert enc._mergeable_ranks == theirs._mergeable_ranks
    assert enc.n_vocab == theirs.n_vocab == 50257


@pytest.mark.parametrize("text", VARIED_TEXTS)
def test_ids_equal_transformers_tokenizer(enc, hf, text):
    assert enc.encode(text) == hf.encode(text)
    assert enc.decode(enc.encode(text)) == text


@settings(max_examples=60)
@given(text=st.text(max_size=60))
def test_round_trip_and_streaming_on_any_unicode(enc, hf, text):
    ids = enc.encode(text, disallowed_special=())
    assert enc.decode(ids) == text
    pieces = list(stream_decode(enc, ids))
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces) or "\ufffd" in text
    assert ids == hf.encode(text)


@pytest.mark.parametrize("text", SPLIT_TEXTS)
def test_streaming_never_prints_half_characters(enc, text):
    ids = enc.encode(text)
    partial = [i for i in ids if not _is_utf8(enc.decode_single_token_bytes(i))]
    assert partial, f"{text!r}: no token holds a partial character, the test would be vacuous"
    assert any("\ufffd" in enc.decode([i]) for i in ids)  # what decoding token by token prints
    pieces = list(stream_decode(enc, ids))
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)


def _is_utf8(b):
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def test_streaming_invalid_bytes_match_the_full_decode(enc):
    lone = enc.encode_single_token(b"\x80")  # a continuation byte with no lead byte
    lead = enc.encode_single_token(b"\xe6")  # the start of a 3-byte character, never finished
    for ids in ([lone, 15496], [15496, lone, lone, 995], [lead, 995], [995, lead]):
        full = enc.decode(ids)
        assert "\ufffd" in full
        assert "".join(stream_decode(enc, ids)) == full


def test_stream_decode_accepts_numpy_ints_and_yields_as_soon_as_complete(enc):
    import numpy as np
    ids = np.array(enc.encode("a🤗b"))  # a, then 🤗 in three tokens, then b
    seen = []
    for piece in stream_decode(enc, _recording(ids, seen)):
        seen.append(piece)
    assert "".join(p for p in seen if isinstance(p, str)) == "a🤗b"
    # "🤗" appears right after its last byte's token, not later.
    assert seen.index("🤗") == seen.index(int(ids[-2])) + 1


def _recording(ids, seen):
    for i in ids:
        seen.append(int(i))
        yield i


# --- where the files come from ---------------------------------------------------------------

def copy_tokenizer(src, dst):
    os.makedirs(dst, exist_ok=True)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(os.path.join(src, name), dst)
    return dst


def test_checkpoint_directory_files_win_over_the_env_var(tokenizer_dir, tmp_path, monkeypatch):
    ckpt = copy_tokenizer(tokenizer_dir, tmp_path / "ckpt")
    (ckpt / "model.safetensors").write_bytes(b"")
    monkeypatch.setenv(TOKENIZER_ENV, str(tmp_path / "does-not-exist"))
    assert numpy_gpt2.io.tokenizer.tokenizer_dir(ckpt) == str(ckpt)
    assert numpy_gpt2.io.tokenizer.tokenizer_dir(ckpt / "model.safetensors") == str(ckpt)  # a file in it
    assert numpy_gpt2.load_tokenizer(ckpt / "model.safetensors").encode("Hello world") == [15496, 995]


def test_env_var_used_when_the_checkpoint_has_no_tokenizer(tokenizer_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(TOKENIZER_ENV, tokenizer_dir)
    assert numpy_gpt2.io.tokenizer.tokenizer_dir(tmp_path) == tokenizer_dir
    assert numpy_gpt2.load_tokenizer(tmp_path).n_vocab == 50257
    assert numpy_gpt2.load_tokenizer().n_vocab == 50257


def test_env_var_pointing_nowhere_is_an_error_not_a_download(tmp_path, monkeypatch):
    monkeypatch.setenv(TOKENIZER_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=rf"{TOKENIZER_ENV}=.*vocab.json and merges.txt"):
        numpy_gpt2.load_tokenizer(tmp_path)


def test_without_files_or_env_var_falls_back_to_tiktoken_and_explains_failure(tmp_path, monkeypatch):
    monkeypatch.delenv(TOKENIZER_ENV, raising=False)
    calls = []

    def offline(name):
        calls.append(name)
        raise ConnectionError("no network")
    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with pytest.raises(RuntimeError, match=rf"has no vocab.json \+ merges.txt, {TOKENIZER_ENV} is not set"):
        numpy_gpt2.load_tokenizer(tmp_path)
    assert calls == ["gpt2"]


def test_mismatched_files_are_a_clear_error(tokenizer_dir, tmp_path):
    bad = copy_tokenizer(tokenizer_dir, tmp_path / "bad")
    lines = (bad / "merges.txt").read_text(encoding="utf-8").splitlines(keepends=True)
    (bad / "merges.txt").write_text("".join(lines[:1] + lines[2:]), encoding="utf-8")  # drop a merge
    with pytest.raises(ValueError, match="vocab.json and merges.txt are not a matching"):
        numpy_gpt2.load_tokenizer(bad)


def test_tiktoken_file_cache_is_bypassed_and_env_restored(tokenizer_dir, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "/nonexistent/should/not/be/written")
    numpy_gpt2.load_tokenizer(tokenizer_dir)
    assert os.environ["TIKTOKEN_CACHE_DIR"] == "/nonexistent/should/not/be/written"
