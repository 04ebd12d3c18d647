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
