"""Training data: a UTF-8 text file -> GPT-2 token ids -> random (input, target) windows.

As nanoGPT's shakespeare recipe: the first 90% of the text's CHARACTERS are the training
split and the last 10% the validation split (split before tokenizing, so no token straddles
the cut); each split is tokenized on its own with GPT-2's BPE (encode below).

Or a directory of pre-tokenized uint16 token files, DIR/train.bin and DIR/val.bin (nanoGPT's
or llm.c's format, see token_files), read through a memory map: any size. write_token_splits
writes such a directory from a stream of tokenized documents with scripts/prepare.py's split
rules (by document; a single document by characters, as above).

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

from numpy_gpt2.errors import not_utf8_text
from numpy_gpt2.io.inputs import check_text_input
from numpy_gpt2.io.token_files import SPLITS, TOKEN_DTYPE, open_token_dir, write_tokens
from numpy_gpt2.io.tokenizer import ENDOFTEXT

TRAIN_FRACTION = 0.9


def read_text(path) -> str:
    """The whole file (or pipe) as text. ValueError (one line, naming the file) when it is
    missing, unreadable, a device or a socket (numpy_gpt2.io.inputs), not UTF-8 or empty."""
    check_text_input(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ValueError(f"{path}: cannot read the data file ({e.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: {not_utf8_text(e)}") from None
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
    return text_splits(read_text(path), tokenizer, train_fraction)


def text_splits(text: str, tokenizer, train_fraction: float = TRAIN_FRACTION) -> dict[str, np.ndarray]:
    """{"train": token ids, "val": token ids} of text (see module doc)."""
    train, val = split_text(text, train_fraction)
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
                         f"use more text or a smaller block_size")


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


# ----------------------------------------------------------------------------------------
# Writing a dataset: documents -> train.bin / val.bin (scripts/prepare.py).

def write_token_splits(out_dir, stream, again, val_fraction: float, seed: int, eot: int, encode) -> dict:
    """Write out_dir/train.bin and val.bin (nanoGPT's format) from a stream of documents and
    return {"train": {"tokens", "documents"}, "val": {...}, "split": the rule used}.

    stream: (text, tokens, ends) for every piece of text in input order, tokens its ids
    (encode(text)), ends True at the end of a document; again(): the same stream once more
    (read only for a single document). The split (docs/distributed.md#token-files):
      * two or more documents: each goes to val with probability val_fraction, drawn in
        input order from default_rng(seed), then followed by eot; a split left without any
        gets the last document (moved from the other);
      * one document: cut by CHARACTERS as train.py --data FILE.txt and nanoGPT's shakespeare
        prepare.py do (data.split_text): its first floor(n (1 - val_fraction)) characters
        train, the rest validate, each half tokenized on its own, no eot.
    Files are written under temporary names and renamed at the end. ValueError when there is
    no document at all (only empty text) or one too short to cut in two."""
    os.makedirs(out_dir, exist_ok=True)
    temp = {name: os.path.join(out_dir, f".{name}.bin.tmp-{os.getpid()}") for name in SPLITS}
    try:
        with open(temp["train"], "w+b") as train, open(temp["val"], "w+b") as val:
            files = {"train": train, "val": val}
            counts, chars = _split_by_document(stream, files, val_fraction, seed, eot)
            documents = sum(c["documents"] for c in counts.values())
            if documents == 0:
                raise ValueError("the inputs hold no text (every file is empty, or holds only "
                                 "<|endoftext|> separators): nothing to write")
            if documents == 1:
                counts = _split_one_document(again(), files, chars, val_fraction, encode)
                rule = "one document, cut by characters"
            else:
                for name, other in (("val", "train"), ("train", "val")):
                    if counts[name]["documents"] == 0:
                        _move_last_document(files[other], files[name], counts, other, name)
                rule = "by document"
        for name in SPLITS:
            os.replace(temp[name], os.path.join(out_dir, f"{name}.bin"))
    finally:
        for path in temp.values():
            if os.path.exists(path):
                os.remove(path)
    return {**{name: {"tokens": counts[name]["tokens"], "documents": counts[name]["documents"]}
               for name in SPLITS}, "split": rule}


def _split_by_document(stream, files, val_fraction, seed, eot):
    """The first pass: documents to the splits at random. Returns (counts, characters read);
    counts[name]["last"] is the byte offset where the split's last document starts."""
    rng = np.random.default_rng(seed)
    counts = {name: {"tokens": 0, "documents": 0, "last": 0} for name in SPLITS}
    split, document, chars = None, [], 0  # the current document's split and tokens so far
    for text, tokens, ends in stream:
        chars += len(text)
        if split is None:
            split = "val" if rng.random() < val_fraction else "train"
            start = files[split].tell()
        counts[split]["tokens"] += write_tokens(files[split], tokens)
        document += tokens[:1]  # only "empty or not" matters
        if ends:
            if document:
                counts[split]["tokens"] += write_tokens(files[split], [eot])
                counts[split]["documents"] += 1
                counts[split]["last"] = start
                split = None  # an empty document keeps its drawn split for the next one
            document = []
    return counts, chars


def _move_last_document(source, target, counts, frm: str, to: str) -> None:
    """Move the last document of split frm (from its start offset to the end of the file)
    to the end of split to, a few MB at a time, and cut it off frm's file."""
    at = counts[frm]["last"]
    source.seek(at)
    while chunk := source.read(1 << 22):
        target.write(chunk)
    moved = (source.tell() - at) // TOKEN_DTYPE.itemsize
    source.truncate(at)
    source.seek(at)
    counts[frm]["tokens"] -= moved
    counts[frm]["documents"] -= 1
    counts[to]["tokens"] += moved
    counts[to]["documents"] += 1


def _split_one_document(stream, files, chars, val_fraction, encode):
    """The second pass for a single document of `chars` characters: cut at the character
    data.split_text cuts at, the piece holding the cut tokenized as two halves."""
    cut = split_point(chars, 1 - fractions.Fraction(str(val_fraction)))
    if cut == 0 or cut == chars:
        raise ValueError(f"the inputs hold one document of {chars} character(s): too short to "
                         f"cut into a train and a val part (val fraction {val_fraction})")
    for f in files.values():
        f.seek(0)
        f.truncate()
    counts = {name: {"tokens": 0, "documents": 1} for name in SPLITS}
    seen = 0
    for text, tokens, _ in stream:
        if seen + len(text) <= cut:
            counts["train"]["tokens"] += write_tokens(files["train"], tokens)
        elif seen >= cut:
            counts["val"]["tokens"] += write_tokens(files["val"], tokens)
        else:  # the cut falls inside this piece
            counts["train"]["tokens"] += write_tokens(files["train"], encode(text[:cut - seen]))
            counts["val"]["tokens"] += write_tokens(files["val"], encode(text[cut - seen:]))
        seen += len(text)
    return counts
