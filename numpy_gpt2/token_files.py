"""Pre-tokenized datasets on disk: uint16 GPT-2 token ids read through a memory map.

Two file formats, told apart by the first four bytes:

    nanoGPT (data/openwebtext/prepare.py):  no header, the tokens as little-endian uint16
    llm.c (dev/data/data_common.py):        a header of 256 little-endian int32
                                            [20240520 (magic), 1 (version), token count, 0...]
                                            then the tokens as little-endian uint16

Read as llm.c's only when the magic is there: a nanoGPT file cannot start with it, since its
low half read as a token would be id 54984, beyond GPT-2's 50257 ids.

A dataset directory holds train.bin and val.bin (either format), as nanoGPT's prepare.py
writes them and scripts/prepare.py does. The tokens are never read into memory as a whole:
np.memmap maps the file, so batches read only the pages they touch and the process's own
memory does not grow with the dataset (the page cache holds what was read, and the kernel
drops it under memory pressure).

Writing them: write_token_splits turns a stream of tokenized documents into train.bin and
val.bin with scripts/prepare.py's split rules (by document; a single document by characters).
"""

from __future__ import annotations

import os

import numpy as np

LLMC_MAGIC = 20240520
LLMC_VERSION = 1
LLMC_HEADER_INTS = 256
LLMC_HEADER_BYTES = LLMC_HEADER_INTS * 4
TOKEN_DTYPE = np.dtype("<u2")
SPLITS = ("train", "val")
SCAN_CHUNK = 1 << 24  # tokens per pass of max_token (32 MB of uint16)


def open_tokens(path) -> np.memmap:
    """The uint16 tokens of a nanoGPT or llm.c .bin file (see module doc), memory-mapped
    read-only: a (n_tokens,) np.memmap. ValueError naming the file when it cannot be read,
    is empty, has an odd byte count (not uint16), or has an llm.c header whose version or
    token count does not match the file."""
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(LLMC_HEADER_BYTES)
    except OSError as e:
        raise ValueError(f"{path}: cannot read the token file ({e.strerror})") from None
    offset = 0
    if len(head) >= 4 and int(np.frombuffer(head[:4], "<i4")[0]) == LLMC_MAGIC:
        if len(head) < LLMC_HEADER_BYTES:
            raise ValueError(f"{path}: llm.c token file shorter than its {LLMC_HEADER_BYTES}-byte header")
        header = np.frombuffer(head, "<i4")
        if header[1] != LLMC_VERSION:
            raise ValueError(f"{path}: llm.c token file version {header[1]}, expected {LLMC_VERSION} "
                             f"(uint16 GPT-2 tokens)")
        expected = LLMC_HEADER_BYTES + 2 * int(header[2])
        if size != expected:
            raise ValueError(f"{path}: llm.c header says {int(header[2])} tokens ({expected} bytes "
                             f"with the header), but the file has {size} bytes")
        offset = LLMC_HEADER_BYTES
    elif size % 2:
        raise ValueError(f"{path}: {size} bytes, an odd count: not a file of uint16 tokens")
    if size == offset:
        raise ValueError(f"{path}: the token file holds no tokens")
    return np.memmap(path, dtype=TOKEN_DTYPE, mode="r", offset=offset, shape=((size - offset) // 2,))


def open_token_dir(directory) -> dict[str, np.memmap]:
    """{"train": tokens, "val": tokens} of directory/train.bin and directory/val.bin
    (open_tokens each). ValueError naming the missing file."""
    splits = {}
    for name in SPLITS:
        path = os.path.join(directory, f"{name}.bin")
        if not os.path.isfile(path):
            raise ValueError(f"{directory}: no {name}.bin (a token directory holds train.bin and "
                             f"val.bin, as scripts/prepare.py or nanoGPT's prepare.py write them)")
        splits[name] = open_tokens(path)
    return splits


def max_token(tokens, chunk: int = SCAN_CHUNK) -> int:
    """The largest id in tokens, read chunk by chunk (a memory map's pages are read once and
    no token-sized temporary is made)."""
    return max(int(tokens[i:i + chunk].max()) for i in range(0, len(tokens), chunk))


def write_tokens(f, tokens) -> int:
    """Append tokens (ints in [0, 65535]) to the open binary file f in nanoGPT's format
    (headerless little-endian uint16). Returns the count written. ValueError for ids that do
    not fit in uint16."""
    a = np.asarray(tokens)
    if a.size and (a.min() < 0 or a.max() > np.iinfo(TOKEN_DTYPE).max):
        raise ValueError(f"token ids must be in [0, 65535] to be stored as uint16, got "
                         f"[{a.min()}, {a.max()}]")
    f.write(a.astype(TOKEN_DTYPE).tobytes())
    return int(a.size)


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
    from fractions import Fraction

    from .data import split_point

    cut = split_point(chars, 1 - Fraction(str(val_fraction)))
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
