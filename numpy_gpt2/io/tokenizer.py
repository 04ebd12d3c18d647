"""GPT-2's byte-level BPE tokenizer (through tiktoken), and UTF-8-safe streaming decode.

Where the vocabulary comes from (load_tokenizer), first match wins:
  1. the checkpoint directory itself: its vocab.json + merges.txt (every Hugging Face GPT-2
     repo ships them, so a downloaded checkpoint works offline), or encoder.json + vocab.bpe,
     OpenAI's names for the same two files in its original release;
  2. the directory in the environment variable NUMPY_GPT2_TOKENIZER (holding the same files);
  3. tiktoken.get_encoding("gpt2"), which downloads the files on first use (then caches them).
"""

from __future__ import annotations

import codecs
import contextlib
import json
import os

import tiktoken
import tiktoken.load

TOKENIZER_ENV = "NUMPY_GPT2_TOKENIZER"
TOKENIZER_FILES = ("vocab.json", "merges.txt")
# OpenAI's names for the same files (openai/gpt-2 download_model.py), in TOKENIZER_FILES' order.
OPENAI_TOKENIZER_FILES = ("encoder.json", "vocab.bpe")
ENDOFTEXT = "<|endoftext|>"

# GPT-2's pre-tokenizer regex, exactly as tiktoken's own "gpt2" encoding uses it (words,
# numbers, punctuation runs and whitespace become separate chunks before BPE).
try:
    from tiktoken_ext.openai_public import r50k_pat_str as GPT2_PAT_STR
except ImportError:  # the original pattern from OpenAI's encoder.py
    GPT2_PAT_STR = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def tokenizer_dir(source=None) -> str | None:
    """The directory whose vocab.json + merges.txt to use, or None for tiktoken's download.

    source: a checkpoint directory, a file inside one (e.g. model.safetensors), or None.
    """
    candidates = []
    if source is not None:
        source = os.fspath(source)
        candidates.append(source if os.path.isdir(source) else os.path.dirname(source) or ".")
    if os.environ.get(TOKENIZER_ENV):
        candidates.append(os.environ[TOKENIZER_ENV])
    for directory in candidates:
        if tokenizer_paths(directory) is not None:
            return directory
    if os.environ.get(TOKENIZER_ENV):  # set on purpose but wrong: say so instead of downloading
        raise FileNotFoundError(
            f"{TOKENIZER_ENV}={os.environ[TOKENIZER_ENV]}: expected a directory holding "
            f"{' and '.join(TOKENIZER_FILES)} (or {' and '.join(OPENAI_TOKENIZER_FILES)})")
    return None


def tokenizer_paths(directory) -> dict[str, str] | None:
    """{"vocab.json": path, "merges.txt": path} of the tokenizer files in directory, under
    Hugging Face's names or else OpenAI's (encoder.json, vocab.bpe); None when neither pair
    is complete."""
    for names in (TOKENIZER_FILES, OPENAI_TOKENIZER_FILES):
        paths = {hf: os.path.join(directory, name) for hf, name in zip(TOKENIZER_FILES, names)}
        if all(os.path.isfile(p) for p in paths.values()):
            return paths
    return None


@contextlib.contextmanager
def _tiktoken_file_cache_disabled():
    # tiktoken caches every file it reads under a key made from the *path* alone, and for
    # local files (no expected hash) returns that copy without checking it again: a changed
    # vocab.json at the same path would be silently ignored. Local files need no cache.
    old = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = ""
    try:
        yield
    finally:
        if old is None:
            del os.environ["TIKTOKEN_CACHE_DIR"]
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = old


def check_decodable(tokens, n_vocab: int) -> None:
    """Raise ValueError naming the first id in tokens outside [0, n_vocab)."""
    for token in tokens:
        if not 0 <= token < n_vocab:
            raise ValueError(f"token id {token} cannot be decoded: the tokenizer's "
                             f"vocabulary is [0, {n_vocab})")


class GPT2Encoding(tiktoken.Encoding):
    """tiktoken.Encoding whose decoders raise ValueError naming an id outside the vocabulary.

    tiktoken raises KeyError('50300') (or OverflowError for -1). Models with a padded
    vocabulary (nanoGPT and llm.c use 50304 rows for GPT-2's 50257 tokens) can produce such
    ids; see undecodable_ids for keeping them out of generation.
    """

    def _check_ids(self, tokens):
        check_decodable(tokens, self.n_vocab)

    def decode_bytes(self, tokens) -> bytes:
        self._check_ids(tokens)
        return super().decode_bytes(tokens)

    def decode(self, tokens, errors: str = "replace") -> str:
        self._check_ids(tokens)
        return super().decode(tokens, errors=errors)

    def decode_single_token_bytes(self, token) -> bytes:
        self._check_ids([token])
        return super().decode_single_token_bytes(token)

    def decode_tokens_bytes(self, tokens) -> list[bytes]:
        self._check_ids(tokens)
        return super().decode_tokens_bytes(tokens)

    def decode_with_offsets(self, tokens):
        self._check_ids(tokens)
        return super().decode_with_offsets(tokens)


def undecodable_ids(tokenizer: tiktoken.Encoding, vocab_size: int) -> range:
    """The ids a model with vocab_size logits can produce that the tokenizer cannot decode:
    [tokenizer.n_vocab, vocab_size), empty unless the vocabulary is padded (nanoGPT and llm.c
    pad GPT-2's 50257 to 50304). Pass them as generate(..., suppress_tokens=...), which sets
    their logits to -inf at every step, so they are never sampled (scripts/generate.py does)."""
    return range(tokenizer.n_vocab, vocab_size)


def encoding_from_files(directory) -> tiktoken.Encoding:
    """A tiktoken Encoding from a GPT-2 vocab.json + merges.txt, or encoder.json + vocab.bpe
    (no network).

    Same regex and special token as tiktoken's "gpt2": <|endoftext|> = 50256 for GPT-2's files.
    """
    paths = tokenizer_paths(directory) or {n: os.path.join(directory, n) for n in TOKENIZER_FILES}
    vocab_path, merges_path = paths["vocab.json"], paths["merges.txt"]
    try:
        with _tiktoken_file_cache_disabled():
            ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(merges_path, vocab_path)
        with open(vocab_path, encoding="utf-8") as f:
            endoftext = json.load(f).get(ENDOFTEXT, len(ranks))
    except (OSError, ValueError, KeyError, AssertionError) as e:
        # tiktoken asserts that vocab.json's ids are the merge order; say which files disagree.
        raise ValueError(f"{directory}: vocab.json and merges.txt are not a matching GPT-2 "
                         f"byte-level BPE pair ({type(e).__name__}: {e})") from None
    return GPT2Encoding(name="gpt2", pat_str=GPT2_PAT_STR, mergeable_ranks=ranks,
                        special_tokens={ENDOFTEXT: endoftext})


def load_tokenizer(source=None) -> tiktoken.Encoding:
    """GPT-2's tokenizer as a tiktoken.Encoding (a GPT2Encoding: decoding an id outside
    [0, n_vocab) raises ValueError naming it).

    source: a checkpoint directory (or a file in it). Its vocab.json + merges.txt are used when
    present, else those in $NUMPY_GPT2_TOKENIZER, else tiktoken.get_encoding("gpt2") (which
    downloads the files once; offline, this raises with a message saying what to do).

        enc = load_tokenizer("path/to/gpt2")
        enc.encode("Hello world")                                   # [15496, 995]
        enc.encode("<|endoftext|>", allowed_special={"<|endoftext|>"})  # [50256]
    """
    directory = tokenizer_dir(source)
    if directory is not None:
        return encoding_from_files(directory)
    try:
        enc = tiktoken.get_encoding("gpt2")
    except Exception as e:  # no network and nothing in tiktoken's cache
        where = f"{os.fspath(source)} has no {' + '.join(TOKENIZER_FILES)}, " if source else ""
        raise RuntimeError(
            f"GPT-2 tokenizer: {where}{TOKENIZER_ENV} is not set, and tiktoken could not fetch "
            f"the 'gpt2' encoding ({type(e).__name__}); set {TOKENIZER_ENV} to a directory "
            f"holding GPT-2's {' and '.join(TOKENIZER_FILES)}") from None
    # The same encoding, with decoders that name an unknown id (tiktoken's own is shared).
    return GPT2Encoding(name=enc.name, pat_str=enc._pat_str, mergeable_ranks=enc._mergeable_ranks,
                        special_tokens=enc._special_tokens)


def stream_decode(tokenizer: tiktoken.Encoding, tokens):
    """Decode token ids one at a time, yielding text as soon as it is complete UTF-8.

    GPT-2 tokens are byte sequences, and one character can be split across tokens (most emoji
    and many CJK characters are 2-3 tokens of 1-2 bytes each). Decoding each token on its own
    would print replacement characters; instead the bytes are fed to an incremental UTF-8
    decoder, which holds back an incomplete character until its last byte arrives. Bytes that
    can never be valid UTF-8 become U+FFFD, exactly as tokenizer.decode(all_tokens) does, so
    "".join(stream_decode(enc, ids)) == enc.decode(ids).

    tokens: any iterable of ints (e.g. the generator numpy_gpt2.generate returns).
    Yields str pieces (possibly empty strings are skipped).
    Raises ValueError naming the first id outside [0, tokenizer.n_vocab), once it arrives.
    """
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for token in tokens:
        token = int(token)
        check_decodable([token], tokenizer.n_vocab)  # any Encoding, not only a GPT2Encoding
        text = decoder.decode(tokenizer.decode_single_token_bytes(token))
        if text:
            yield text
    text = decoder.decode(b"", final=True)  # an unfinished character at the very end
    if text:
        yield text
