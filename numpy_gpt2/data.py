"""Training data: a UTF-8 text file -> GPT-2 token ids -> random (input, target) windows.

As nanoGPT's shakespeare recipe: the first 90% of the text's CHARACTERS are the training
split and the last 10% the validation split (split before tokenizing, so no token straddles
the cut); each split is tokenized on its own with GPT-2's BPE (encode below).

Or a directory of pre-tokenized uint16 token files, DIR/train.bin and DIR/val.bin (nanoGPT's
or llm.c's format, see token_files), read through a memory map: any size.

One rule for the text "<|endoftext|>" in every script that tokenizes a file (train.py,
perplexity.py, prepare.py): it is the separator token 50256, and the text between separators
is tokenized as given (encode_ordinary, no stripping or normalising).

A batch is B windows of block_size + 1 consecutive tokens starting at uniformly random
offsets: inputs are the first block_size tokens, targets the last block_size (the next
token at every position), nanoGPT's get_batch.
"""

from __future__ import annotations

import fractions
import math
import os

import numpy as np

from .token_files import open_token_dir
from .tokenizer import ENDOFTEXT

TRAIN_FRACTION = 0.9


def read_text(path) -> str:
    """The whole file as text. ValueError (one line, naming the file) when it is missing,
    unreadable, not UTF-8 or empty."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ValueError(f"{path}: cannot read the data file ({e.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not text:
        raise ValueError(f"{path}: the data file is empty")
    return text


def split_text(text: str, train_fraction: float = TRAIN_FRACTION) -> tuple[str, str]:
    """(train, val): the first split_point(len(text), train_fraction) characters, and the rest."""
    cut = split_point(len(text), train_fraction)
    return text[:cut], text[cut:]


def split_point(n_chars: int, train_fraction) -> int:
    """floor(n_chars * train_fraction), the number of characters that train.

    The product is exact, with train_fraction read as the decimal it prints as (0.57 is
    57/100): in floats 100 * 0.57 is 56.99999999999999, and the cut would move by one.
    For 0.9 this is nanoGPT's int(n * 0.9). A fractions.Fraction is taken as it is."""
    return math.floor(n_chars * fractions.Fraction(str(train_fraction)))


def encode(tokenizer, text: str) -> np.ndarray:
    """GPT-2 token ids of text as an int64 array: every literal "<|endoftext|>" becomes the
    separator token (tokenizer.eot_token, 50256), the text between them encode_ordinary's ids
    (what tiktoken's encode(text, allowed_special={"<|endoftext|>"}) gives)."""
    ids = []
    for i, piece in enumerate(text.split(ENDOFTEXT)):
        if i:
            ids.append(tokenizer.eot_token)
        ids.extend(tokenizer.encode_ordinary(piece))
    return np.asarray(ids, dtype=np.int64)


def load_splits(path, tokenizer, train_fraction: float = TRAIN_FRACTION) -> dict[str, np.ndarray]:
    """{"train": token ids, "val": token ids} of the text file at path (see module doc)."""
    train, val = split_text(read_text(path), train_fraction)
    return {"train": encode(tokenizer, train), "val": encode(tokenizer, val)}


def load_data(path, tokenizer) -> dict[str, np.ndarray]:
    """{"train": tokens, "val": tokens}: a directory's train.bin/val.bin memory-mapped
    (token_files.open_token_dir), else the text file's load_splits. ValueError naming the
    file when it cannot be used."""
    if os.path.isdir(path):
        return open_token_dir(path)
    return load_splits(path, tokenizer)


def check_split_length(tokens: np.ndarray, block_size: int, name: str) -> None:
    """ValueError unless the split holds at least one window of block_size + 1 tokens."""
    if len(tokens) < block_size + 1:
        raise ValueError(f"the {name} split has {len(tokens)} tokens, fewer than block_size + 1 = "
                         f"{block_size + 1} (one window of inputs and next-token targets); "
                         f"use more text or a smaller --block-size")


def draw_starts(n_tokens: int, block_size: int, batch_size: int,
                rng: np.random.Generator) -> np.ndarray:
    """B window offsets drawn uniformly from [0, n_tokens - T) (what get_batch draws)."""
    return rng.integers(0, n_tokens - block_size, size=batch_size)


def windows_at(tokens: np.ndarray, starts: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """x = tokens[i : i + T], y = tokens[i + 1 : i + 1 + T] for each offset i in starts, as
    int64 (B, T) arrays (tokens may be a uint16 memory map: only these windows are read)."""
    windows = np.asarray(tokens[starts[:, None] + np.arange(block_size + 1)], dtype=np.int64)
    return windows[:, :-1], windows[:, 1:]


def get_batch(tokens: np.ndarray, block_size: int, batch_size: int,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """B random windows: x = tokens[i : i + T], y = tokens[i + 1 : i + 1 + T] for B offsets i
    drawn uniformly from [0, len(tokens) - T). Returns int64 (B, T) arrays x, y."""
    return windows_at(tokens, draw_starts(len(tokens), block_size, batch_size, rng), block_size)


def micro_batches(tokens: np.ndarray, block_size: int, batch_size: int, count: int,
                  rng: np.random.Generator, keep=None) -> list[tuple[np.ndarray, np.ndarray]]:
    """The next count micro-batches drawn from rng (the RNG moves as for count get_batch
    calls), of which only those numbered keep (default: all) are read and returned:
    data-parallel ranks each keep their share of one stream."""
    starts = [draw_starts(len(tokens), block_size, batch_size, rng) for _ in range(count)]
    return [windows_at(tokens, starts[i], block_size) for i in (range(count) if keep is None else keep)]


def eval_batches(tokens: np.ndarray, block_size: int, batch_size: int, n_batches: int,
                 seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """A fixed list of n_batches batches (same seed, same batches), so evaluations at
    different steps score the same windows and their losses are comparable."""
    rng = np.random.default_rng(seed)
    return [get_batch(tokens, block_size, batch_size, rng) for _ in range(n_batches)]
