"""TensorFlow's on-disk building blocks, read by hand (no TensorFlow, no protobuf package): the
masked CRC-32C, the protobuf wire format, and the LevelDB table a checkpoint's .index is.
Role: bytes in, keys and values out, every length and checksum checked (CheckpointError
naming the file); what the values mean (a TensorBundle) is openai_tf.py's.

P.index is a LevelDB table (https://github.com/google/leveldb/blob/main/doc/table_format.md;
TensorFlow's copy: tensorflow/core/lib/io/format.cc, block_builder.cc, table_builder.cc):
data blocks of entries (varint shared key bytes, varint unshared, varint value length, key
suffix, value), then uint32 restart offsets and their count; each block followed by a
1-byte compression type and the masked crc32c of block + type; a metaindex block (empty);
an index block (one entry per data block: a separator key -> BlockHandle (varint offset,
varint size)); a 48-byte footer (two BlockHandles, zero padding to 40 bytes, the magic
0xdb4775248b80fb57 little-endian). Its values are protobufs read with the wire format here;
which fields a checkpoint's values hold (BundleHeaderProto, BundleEntryProto) is in
openai_tf.py's module doc.
"""

from __future__ import annotations

import os

from numpy_gpt2.checks import cut
from numpy_gpt2.errors import CheckpointError

FOOTER_BYTES = 48  # 2 BlockHandles of at most 20 bytes each, padded to 40, + 8-byte magic
TABLE_MAGIC = 0xDB4775248B80FB57
BLOCK_TRAILER_BYTES = 5  # compression type + masked crc32c
MAX_INDEX_BYTES = 1 << 30  # a GPT-2 index is a few kB; refuse to read gigabytes of "index"


# ---- CRC-32C ---------------------------------------------------------------------------

def crc32c(data) -> int:
    """CRC-32C (Castagnoli) of bytes or a uint8 array, in hardware (google-crc32c: ~10 GB/s;
    its pure-Python fallback, used only where no wheel exists, is far slower)."""
    import google_crc32c  # imported here: only this format needs it
    return google_crc32c.value(data)


def mask(crc: int) -> int:
    """LevelDB's and TensorFlow's masked CRC (crc32c.h Mask): rotated right 15, + 0xa282ead8."""
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# ---- protobuf wire format --------------------------------------------------------------

def varint(buf: bytes, pos: int, end: int, limit_bits: int = 64) -> tuple[int, int]:
    """(unsigned value, next position) of the varint at buf[pos:end]; ValueError when it
    runs past end or is longer than limit_bits allow."""
    value = shift = 0
    while True:
        if pos >= end:
            raise ValueError("a varint runs past the end of its field")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
        if shift >= limit_bits + 6:
            raise ValueError("a varint is too long")
    if value >> limit_bits:
        raise ValueError("a varint is too large")
    return value, pos


def fields(buf: bytes) -> list[tuple[int, int, object]]:
    """[(field number, wire type, value)] of a protobuf message: varints as unsigned ints,
    fixed32/fixed64 as ints, length-delimited fields as bytes. ValueError for anything that
    is not a well-formed message (groups included: no TensorFlow proto here has them)."""
    out, pos, end = [], 0, len(buf)
    while pos < end:
        tag, pos = varint(buf, pos, end)
        number, wire = tag >> 3, tag & 7
        if number == 0:
            raise ValueError("field number 0")
        if wire == 0:
            value, pos = varint(buf, pos, end)
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            if pos + width > end:
                raise ValueError("a fixed-width field runs past the end")
            value, pos = int.from_bytes(buf[pos:pos + width], "little"), pos + width
        elif wire == 2:
            n, pos = varint(buf, pos, end)
            if pos + n > end:
                raise ValueError("a length-delimited field runs past the end")
            value, pos = bytes(buf[pos:pos + n]), pos + n
        else:
            raise ValueError(f"wire type {wire}")
        out.append((number, wire, value))
    return out


def scalar(msg, number: int, wire: int, default=0):
    """The last value of field `number` (protobuf: the last one wins); ValueError when it
    has another wire type."""
    value = default
    for n, w, v in msg:
        if n == number:
            if w != wire:
                raise ValueError(f"field {number} has wire type {w}, expected {wire}")
            value = v
    return value


def int64(value: int) -> int:
    """An int64 field's varint (two's complement in 64 bits) as a signed int."""
    return value - (1 << 64) if value >> 63 else value


# ---- the LevelDB table -----------------------------------------------------------------

def block(data: bytes, handle: tuple[int, int], what: str, path: str) -> bytes:
    """The contents of the block at handle (offset, size), its trailer checked."""
    offset, size = handle
    end = len(data) - FOOTER_BYTES
    if offset + size + BLOCK_TRAILER_BYTES > end:
        raise CheckpointError(f"{path}: the {what} (bytes {offset}..{offset + size}) "
                              f"lies outside the {end} bytes before the footer (truncated?)")
    contents = data[offset:offset + size]
    kind = data[offset + size]
    stored = int.from_bytes(data[offset + size + 1:offset + size + 5], "little")
    actual = mask(crc32c(data[offset:offset + size + 1]))
    if stored != actual:
        raise CheckpointError(f"{path}: the {what} at byte {offset} is corrupted "
                              f"(crc32c 0x{actual:08x}, its trailer says 0x{stored:08x})")
    if kind == 1:
        raise CheckpointError(f"{path}: the {what} is Snappy-compressed, which this "
                              f"reader does not support (TensorFlow writes checkpoint indexes "
                              f"uncompressed)")
    if kind != 0:
        raise CheckpointError(f"{path}: the {what} has compression type {kind}, "
                              f"expected 0 (none)")
    return contents


def block_entries(contents: bytes, what: str, path: str) -> list[tuple[bytes, bytes]]:
    """[(key, value)] of a block: prefix-compressed keys, then the restart array."""
    size = len(contents)
    if size < 4:
        raise CheckpointError(f"{path}: the {what} is {size} bytes, too short for its "
                              f"restart count")
    restarts = int.from_bytes(contents[size - 4:], "little")
    if restarts < 1 or 4 * (restarts + 1) > size:
        raise CheckpointError(f"{path}: the {what} says {restarts} restart points, "
                              f"which do not fit its {size} bytes")
    end = size - 4 * (restarts + 1)
    out, pos, key, starts = [], 0, b"", set()  # starts: entries that begin a full key
    try:
        while pos < end:
            begin = pos
            shared, pos = varint(contents, pos, end, 32)
            if shared == 0:
                starts.add(begin)
            unshared, pos = varint(contents, pos, end, 32)
            length, pos = varint(contents, pos, end, 32)
            if shared > len(key) or pos + unshared + length > end:
                raise ValueError("an entry does not fit the block")
            key = key[:shared] + bytes(contents[pos:pos + unshared])
            pos += unshared
            out.append((key, bytes(contents[pos:pos + length])))
            pos += length
    except ValueError as e:
        raise CheckpointError(f"{path}: the {what} is corrupted at byte {pos} ({e})") from None
    # Restart points (where a reader's binary search lands) must each begin a full key.
    offsets = [int.from_bytes(contents[end + 4 * i:end + 4 * i + 4], "little")
               for i in range(restarts)]
    if out and (offsets[0] != 0 or any(o not in starts for o in offsets)
                or any(b <= a for a, b in zip(offsets, offsets[1:]))):
        raise CheckpointError(f"{path}: the {what} is corrupted (its restart points "
                              f"{cut(str(offsets))} are not increasing entry starts)")
    return out


def block_handle(buf: bytes, pos: int, end: int) -> tuple[tuple[int, int], int]:
    offset, pos = varint(buf, pos, end)
    size, pos = varint(buf, pos, end)
    return (offset, size), pos


def read_table(path: str) -> list[tuple[bytes, bytes]]:
    """[(key, value)] of the LevelDB table at path, in file order, every block's crc32c
    checked and the keys strictly increasing."""
    try:
        size = os.path.getsize(path)
        if size > MAX_INDEX_BYTES:
            raise CheckpointError(f"{path}: {size} bytes, too large for a checkpoint index")
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
    if len(data) < FOOTER_BYTES:
        raise CheckpointError(f"{path}: {len(data)} bytes, too short for a TensorFlow index "
                              f"(a LevelDB table ends with a {FOOTER_BYTES}-byte footer)")
    footer = data[-FOOTER_BYTES:]
    magic = int.from_bytes(footer[40:], "little")
    if magic != TABLE_MAGIC:
        raise CheckpointError(f"{path}: not a TensorFlow checkpoint index (footer magic "
                              f"0x{magic:016x}, expected 0x{TABLE_MAGIC:016x})")
    try:
        metaindex, pos = block_handle(footer, 0, 40)
        index, _ = block_handle(footer, pos, 40)
    except ValueError as e:
        raise CheckpointError(f"{path}: corrupted footer ({e})") from None
    block_entries(block(data, metaindex, "metaindex block", path), "metaindex block", path)
    out, separators = [], block_entries(block(data, index, "index block", path), "index block", path)
    for i, (separator, value) in enumerate(separators):
        try:
            handle, end = block_handle(value, 0, len(value))
            if end != len(value):
                raise ValueError("bytes after the handle")
        except ValueError as e:
            raise CheckpointError(f"{path}: index entry {i} is not a block handle ({e})") from None
        entries = block_entries(block(data, handle, f"data block {i}", path), f"data block {i}", path)
        # A reader seeks by the separators: each is >= its block's keys, < the next block's.
        if not entries or entries[-1][0] > separator or (out and out[-1][0] >= separator) \
                or (i and separators[i - 1][0] >= entries[0][0]):
            raise CheckpointError(f"{path}: index entry {i} ({cut(repr(separator))}) does not "
                                  f"separate data block {i}'s keys from its neighbours'")
        out += entries
    for (a, _), (b, _) in zip(out, out[1:]):
        if b <= a:
            raise CheckpointError(f"{path}: keys out of order ({cut(repr(a))} then "
                                  f"{cut(repr(b))}): the index is corrupted")
    return out
