"""The safetensors format: an 8-byte little-endian header length, a JSON header, then raw
little-endian data. Parsed here rather than through ``safetensors.safe_open`` because we need
BF16 (NumPy has no bfloat16), errors that name the file and key, and a check of every header
field before anything is allocated."""

from __future__ import annotations

import json
import math
import os

import numpy as np

from numpy_gpt2.checks import cut, is_int, show
from numpy_gpt2.errors import CheckpointError
from numpy_gpt2.io.formats.tensor_copy import CHUNK_ELEMENTS, FILE_DTYPES, Stored

MAX_HEADER_BYTES = 100_000_000  # the safetensors format's own limit


def read_safetensors_header(path: str) -> tuple[dict, int]:
    """Parse and check a safetensors header.

    Returns ``(entries, data_start)`` where entries maps each tensor name to
    ``{"dtype", "shape", "data_offsets"}`` (offsets relative to data_start). Every field is
    checked against the file before anything is allocated: a header that claims a
    [2**40, 2**40] tensor is rejected here, by arithmetic on Python ints (no overflow).
    """
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path}: not a safetensors file ({size} bytes, too short)")
            n = int.from_bytes(head, "little")
            if n < 2 or n > MAX_HEADER_BYTES or 8 + n > size:
                raise CheckpointError(
                    f"{path}: not a safetensors file (header length {n} does not fit a {size}-byte file)")
            raw = f.read(n)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
    if len(raw) != n:
        raise CheckpointError(f"{path}: truncated while reading the header")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):  # not UTF-8, not JSON, a 5000-digit number, [[[[...
        raise CheckpointError(f"{path}: not a safetensors file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a safetensors file (header is not a JSON object)")
    header.pop("__metadata__", None)
    data_start, data_size = 8 + n, size - 8 - n
    spans = []
    for name, e in header.items():
        if not name.isprintable() or len(name) > 1000:  # messages below print it
            raise CheckpointError(f"{path}: corrupted header: tensor name {show(name)}")
        ok = (isinstance(e, dict) and isinstance(e.get("dtype"), str) and e["dtype"].isprintable()
              and _naturals(e.get("shape")) and _naturals(e.get("data_offsets"))
              and len(e["data_offsets"]) == 2)
        if not ok:
            raise CheckpointError(f"{path}: corrupted header entry for {show(name)}: {show(e)} "
                                  f"(expected {{\"dtype\": str, \"shape\": [int >= 0, ...], "
                                  f"\"data_offsets\": [begin, end]}})")
        begin, end = e["data_offsets"]
        if end < begin:
            raise CheckpointError(f"{path}: {name}: data_offsets {e['data_offsets']} are reversed")
        if e["dtype"] in FILE_DTYPES:
            nbytes = math.prod(e["shape"]) * FILE_DTYPES[e["dtype"]].itemsize  # exact, any size
            if end - begin != nbytes:
                raise CheckpointError(
                    f"{path}: {name}: header says {e['dtype']} {cut(str(e['shape']))} "
                    f"({nbytes} bytes) but data_offsets span {end - begin} bytes")
        if end > data_size:
            raise CheckpointError(
                f"{path}: truncated: {name} needs data bytes {begin}..{end} but the file has only "
                f"{data_size} data bytes")
        spans.append((begin, end, name))
    spans.sort()
    for (_, end_a, a), (begin_b, _, b) in zip(spans, spans[1:]):
        if begin_b < end_a:
            raise CheckpointError(f"{path}: corrupted: data of {a} and {b} overlap")
    return header, data_start


def _naturals(value) -> bool:
    """A JSON list of integers >= 0 (no floats, no bools, nothing nested)."""
    return isinstance(value, list) and all(is_int(v) and v >= 0 for v in value)


def safetensors_tensors(path: str) -> dict:
    """{name: Stored} of a safetensors file (header checked by read_safetensors_header)."""
    header, data_start = read_safetensors_header(path)
    return {name: Stored(path, e["dtype"], tuple(e["shape"]), data_start + e["data_offsets"][0])
            for name, e in header.items()}


WRITE_DTYPES = ("F32", "F16", "BF16")


def encode(values: np.ndarray, dtype: str) -> np.ndarray:
    """Float values -> the little-endian array whose bytes store them as dtype (F32, F16 or
    BF16; BF16 rounds float32 to nearest, ties to even, as torch's .to(torch.bfloat16)).
    Raises ValueError when a finite value becomes infinite (too large for dtype)."""
    if dtype == "BF16":
        bits = values.astype("<f4").view("<u4")
        out = ((bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))
               >> np.uint32(16)).astype("<u2")
        finite_after = (out & np.uint16(0x7F80)) != np.uint16(0x7F80)
    else:
        with np.errstate(over="ignore"):
            out = values.astype("<f4" if dtype == "F32" else "<f2")
        finite_after = np.isfinite(out)
    if not finite_after.all():
        value = float(values.reshape(-1)[int(np.flatnonzero(~finite_after.reshape(-1))[0])])
        why = "too large" if np.isfinite(value) else "only finite values are written"
        raise ValueError(f"value {value!r} cannot be stored as {dtype} ({why})")
    return out


def write_safetensors(path: str, tensors: dict, dtype: str = "F32", metadata=None,
                      progress=None) -> None:
    """Write {name: float array} to a safetensors file, every tensor stored as dtype, one
    chunk of CHUNK_ELEMENTS at a time (no second copy of the weights in memory).
    progress: optional callable(bytes of tensor data written so far).
    Raises ValueError (naming the tensor) for a value too large for dtype."""
    if dtype not in WRITE_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(WRITE_DTYPES)}, got {dtype!r}")
    itemsize = FILE_DTYPES[dtype].itemsize
    header, offset = {}, 0
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for name, a in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(a.shape),
                        "data_offsets": [offset, offset + a.size * itemsize]}
        offset += a.size * itemsize
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # data aligned to 8 bytes, as the safetensors library does
    written = 0
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        for name, a in tensors.items():
            flat = np.ascontiguousarray(a).reshape(-1)
            for lo in range(0, flat.size, CHUNK_ELEMENTS):
                try:
                    f.write(encode(flat[lo:lo + CHUNK_ELEMENTS], dtype).tobytes())
                except ValueError as e:
                    raise ValueError(f"{name}: {e}") from None
                written += min(CHUNK_ELEMENTS, flat.size - lo) * itemsize
                if progress:
                    progress(written)
