"""GPT-2's byte-level BPE tokenizer in plain Python, written to be read next to the GPT-2 paper
(Radford et al. 2019, section 2.2 "Input Representation") and OpenAI's encoder.py
(github.com/openai/gpt-2, src/encoder.py), which it follows step by step. It is the reference,
not the fast path: the rest of numpy_gpt2 tokenizes with tiktoken (numpy_gpt2.io.tokenizer), and
tests/io/test_bpe.py checks that both give the same ids. explain(text) shows every merge, so a
port can be diffed step by step. More: docs/tokenizer.md.
"""

from __future__ import annotations

import json
import operator
import os

import regex  # the pre-tokenizer needs \p{L} and \p{N}, which stdlib re lacks; tiktoken requires regex

from numpy_gpt2.io.tokenizer import ENDOFTEXT, TOKENIZER_ENV

# encoder.py's pre-tokenizer: contractions, letter runs, digit runs and other-symbol runs (each
# with at most one leading space), then whitespace. BPE never merges across these pieces.
# (tiktoken's r50k_pat_str is the same split, rewritten with possessive quantifiers for speed.)
GPT2_PATTERN = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")


def bytes_to_unicode() -> dict[int, str]:
    """{byte: printable character}: the 188 printable bytes stand for themselves, the other 68
    (controls, space, ...) for chr(256), chr(257), ... in order; so b" " is "Ġ" (chr(288)).
    vocab.json and merges.txt spell every token's bytes with these characters."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + n) for n, b in enumerate(others)}}


class Encoder:
    """GPT-2's BPE from vocab.json ({token: id}) and merges.txt (pairs, best first):
    encode(text) -> ids, decode(ids) -> text, explain(text) -> the merges, like tiktoken's "gpt2"."""

    def __init__(self, encoder: dict[str, int], merges: list[tuple[str, str]]):
        self.encoder, self.decoder = encoder, {i: token for token, i in encoder.items()}
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self.bpe_ranks = {pair: rank for rank, pair in enumerate(merges)}  # rank 0 merges first
        self.eot_token = encoder[ENDOFTEXT]
        self.cache = {}  # piece -> its symbols after all merges (words repeat a lot)

    @classmethod
    def from_files(cls, vocab_path, merges_path) -> Encoder:
        """Read vocab.json and merges.txt (first line "#version: 0.2"); ValueError naming a missing or bad file."""
        try:
            with open(vocab_path, encoding="utf-8") as f:
                encoder = json.load(f)
            with open(merges_path, encoding="utf-8") as f:
                lines = f.read().split("\n")
            merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read GPT-2 BPE files {vocab_path}, {merges_path}: {e}") from None
        bad = [m for m in merges if len(m) != 2]
        if bad or not isinstance(encoder, dict) or ENDOFTEXT not in encoder:
            raise ValueError(f"{vocab_path} + {merges_path} are not GPT-2 BPE files: "
                             f"{'merge ' + repr(' '.join(bad[0])) if bad else 'vocab.json has no ' + ENDOFTEXT}")
        return cls(encoder, merges)

    def merge_steps(self, symbols: list[str]) -> list[tuple[tuple[str, str], int, list[str]]]:
        """BPE on one piece: while some adjacent pair is in merges.txt, merge every occurrence
        (left to right) of the pair of lowest rank. [(pair, rank, symbols after the merge)]."""
        steps = []
        while len(symbols) > 1:
            pair = min(zip(symbols, symbols[1:]), key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if pair not in self.bpe_ranks:
                break
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
            steps.append((pair, self.bpe_ranks[pair], symbols))
        return steps

    def bpe(self, symbols: str) -> list[str]:
        """A piece's symbols after all its merges (cached: words repeat, and so do their merges)."""
        if symbols not in self.cache:
            steps = self.merge_steps(list(symbols))
            self.cache[symbols] = steps[-1][2] if steps else list(symbols)
        return self.cache[symbols]

    def pieces(self, text: str, allowed_special=()) -> list[tuple[str, str | None]]:
        """The pre-tokenizer's pieces of text: [(piece, its UTF-8 bytes spelled with
        bytes_to_unicode's characters)]; an allowed "<|endoftext|>" is (ENDOFTEXT, None)."""
        if not isinstance(text, str):
            raise ValueError(f"text: expected a str, got {type(text).__name__}")
        special = {ENDOFTEXT} if allowed_special == "all" else set(allowed_special)
        if special - {ENDOFTEXT}:
            raise ValueError(f"allowed_special: the only special token is {ENDOFTEXT!r}, got {sorted(special)}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # as tiktoken: pair up surrogates, a lone one becomes U+FFFD
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        pieces = []
        for n, part in enumerate(text.split(ENDOFTEXT) if special else [text]):
            if n:
                pieces.append((ENDOFTEXT, None))
            for piece in GPT2_PATTERN.findall(part):
                pieces.append((piece, "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))))
        return pieces

    def encode(self, text: str, allowed_special=()) -> list[int]:
        """Token ids of text. "<|endoftext|>" is plain text (tiktoken's encode_ordinary) unless
        allowed_special={"<|endoftext|>"} (or "all"): then it is eot_token, 50256."""
        ids = []
        for _, symbols in self.pieces(text, allowed_special):
            ids.extend([self.eot_token] if symbols is None else [self.encoder[s] for s in self.bpe(symbols)])
        return ids

    def decode(self, ids, errors: str = "replace") -> str:
        """The text of ids: their bytes as UTF-8, invalid bytes as U+FFFD (tiktoken's decode).
        ValueError naming the first id that is not in vocab.json."""
        tokens = []
        for i in ids:
            try:
                tokens.append(self.decoder[operator.index(i)])  # int or NumPy integer
            except (TypeError, KeyError):
                raise ValueError(f"token id {i!r} cannot be decoded: not an id of vocab.json") from None
        return bytes(self.byte_decoder[c] for c in "".join(tokens)).decode("utf-8", errors=errors)

    def explain(self, text: str, allowed_special=()) -> list[dict]:
        """encode(text), piece by piece: [{"text" (the pre-tokenizer's piece), "symbols" (its
        bytes as bytes_to_unicode's characters), "steps": [{"pair", "rank", "symbols" after the
        merge}, ...] (one per merge), "ids"}]. See docs/tokenizer.md."""
        out = []
        for piece, symbols in self.pieces(text, allowed_special):
            if symbols is None:
                out.append({"text": piece, "symbols": [piece], "steps": [], "ids": [self.eot_token]})
                continue
            out.append({"text": piece, "symbols": list(symbols), "ids": [self.encoder[s] for s in self.bpe(symbols)],
                        "steps": [{"pair": p, "rank": r, "symbols": s} for p, r, s in self.merge_steps(list(symbols))]})
        return out


def load(directory=None) -> Encoder:
    """Encoder from directory/vocab.json + merges.txt: a checkpoint directory (or a file in it),
    or None for $NUMPY_GPT2_TOKENIZER's (the files numpy_gpt2.load_tokenizer reads).
    ValueError naming a missing file, or when both are unset."""
    directory = os.environ.get(TOKENIZER_ENV) if directory is None else os.fspath(directory)
    if directory and os.path.isfile(directory):  # e.g. .../gpt2/model.safetensors
        directory = os.path.dirname(directory) or "."
    if not directory:
        raise ValueError(f"no GPT-2 tokenizer files: pass a directory holding vocab.json and "
                         f"merges.txt, or set {TOKENIZER_ENV} to one")
    return Encoder.from_files(os.path.join(directory, "vocab.json"), os.path.join(directory, "merges.txt"))
