"""Copy tensors out of checkpoint files into new NumPy arrays, checking every value is finite.

Every reader (safetensors, pytorch_model.bin, nanoGPT, llm.c) describes where each tensor's
bytes are; this module copies them, converted to the wanted dtype, straight into the final
arrays, so the weights are never held twice.

How the bytes get in (see _copy_tensors): the file is memory-mapped (its pages are the
page cache, not our memory) and copied, in 1 MB chunks on a few threads, into new arrays.
The hub files' data block starts at an odd byte (14,291 in gpt2), so arrays viewing the map
in place would be misaligned and read-only; copies are aligned, writable and ours.
"""

from __future__ import annotations

import mmap
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..errors import CheckpointError

# safetensors dtype name -> little-endian NumPy dtype of the stored bytes.
# BF16 is read as raw uint16 and widened by hand (see _convert).
FILE_DTYPES = {"F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
               "BF16": np.dtype("<u2")}

CHUNK_ELEMENTS = 1 << 18  # copy and check 1 MB of float32 at a time: it stays in the CPU cache


def _convert(stored: np.ndarray, file_dtype: str, out: np.ndarray) -> None:
    """Stored values (a view of the file's bytes as FILE_DTYPES[file_dtype]) -> floats in out.

    BF16 is the top half of a float32's bits: widened as ``uint16 << 16`` viewed as float32,
    which is exact (NaN and inf included)."""
    if file_dtype == "BF16":
        bits = np.left_shift(stored, np.uint32(16))  # uint16 -> uint32, shifted (one chunk)
        stored = bits.view(np.float32)
    np.copyto(out, stored, casting="unsafe")  # F16 -> F32/F64, F32 <-> F64: NumPy's rounding


def _default_threads() -> int:
    """The CPUs this process may run on, at most 8 (copying saturates memory bandwidth)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus))


def _copy_tensors(path: str, data_start: int, entries: dict, dtype: np.dtype, threads: int) -> dict:
    """{key: header entry} -> {key: a new C-contiguous array of dtype with the tensor's values}.

    Each tensor gets its own np.empty array (aligned, lazily backed: pages appear as they are
    written). The file is mapped and cut into chunks of CHUNK_ELEMENTS; `threads` threads take
    alternate chunks, copy (NumPy releases the GIL while it copies), convert when the file's
    dtype is not `dtype`, and sum each chunk while it is still in the CPU cache: NaN and inf
    survive a sum, so a finite sum proves the chunk finite. Chunks whose sum is not finite are
    searched element by element afterwards (a sum can also overflow on huge finite values).
    Raises CheckpointError for the first non-finite value in file order.
    """
    out = {key: np.empty(e["shape"], dtype) for key, e in entries.items()}
    order = sorted(entries, key=lambda k: entries[k]["data_offsets"][0])  # sequential reads
    jobs = [(key, lo, min(lo + CHUNK_ELEMENTS, out[key].size))
            for key in order for lo in range(0, out[key].size, CHUNK_ELEMENTS)]
    if not jobs:
        return out
    with open(path, "rb") as f:
        # The header was checked against the file's size; a file that shrank since then would
        # make the map raise SIGBUS, so check again on the open file.
        last = max(e["data_offsets"][1] for e in entries.values())
        if os.fstat(f.fileno()).st_size < data_start + last:
            raise CheckpointError(f"{path}: truncated: the file shrank while being loaded")
        data = np.frombuffer(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), np.uint8)
    suspects = []  # (key, lo, hi) chunks whose sum is not finite

    def work(first: int) -> None:
        with np.errstate(over="ignore", invalid="ignore"):  # errstate is per thread
            for key, lo, hi in jobs[first::threads]:
                e = entries[key]
                stored_dtype = FILE_DTYPES[e["dtype"]]
                begin = data_start + e["data_offsets"][0] + lo * stored_dtype.itemsize
                stored = data[begin:begin + (hi - lo) * stored_dtype.itemsize]
                chunk = out[key].reshape(-1)[lo:hi]
                if stored_dtype == dtype:  # copy bytes: the file's odd alignment does not matter
                    np.copyto(chunk.view(np.uint8), stored)
                else:
                    _convert(stored.view(stored_dtype), e["dtype"], chunk)
                if not _sum_is_finite(chunk):
                    suspects.append((key, lo, hi))

    if threads == 1 or len(jobs) == 1:
        work(0)
    else:
        with ThreadPoolExecutor(threads) as pool:
            for done in [pool.submit(work, i) for i in range(threads)]:
                done.result()  # re-raises a worker's exception here
    for key, lo, hi in sorted(suspects, key=lambda s: (entries[s[0]]["data_offsets"][0], s[1])):
        bad = np.flatnonzero(~np.isfinite(out[key].reshape(-1)[lo:hi]))
        if bad.size:  # else the sum overflowed on finite values: fine
            raise _non_finite_error(path, key, entries[key], lo + int(bad[0]), out[key], data,
                                    data_start, dtype)
    return out


def _sum_is_finite(chunk: np.ndarray) -> bool:
    """True when the sum of the 1-D chunk is finite: then every element is (a NaN or inf
    makes any sum NaN or inf, in any order). np.einsum's sum is SIMD: 3.7x np.sum here."""
    return bool(np.isfinite(np.einsum("i->", chunk)))


def _non_finite_error(path, name, entry, flat_index, array, data, data_start, dtype):
    """The CheckpointError for the first NaN/inf: file, key, index, value (and if the file's
    value was finite, that it overflows `dtype`, e.g. an F64 1e300 read as float32)."""
    index = tuple(int(i) for i in np.unravel_index(flat_index, array.shape))
    value = array.reshape(-1)[flat_index]
    what = "nan" if np.isnan(value) else ("inf" if value > 0 else "-inf")
    stored_dtype = FILE_DTYPES[entry["dtype"]]
    begin = data_start + entry["data_offsets"][0] + flat_index * stored_dtype.itemsize
    stored = data[begin:begin + stored_dtype.itemsize].view(stored_dtype)[0]
    why = ""
    if entry["dtype"] != "BF16" and np.isfinite(stored):
        why = f" (the file holds {entry['dtype']} {float(stored)!r}, too large for {np.dtype(dtype)})"
    return CheckpointError(
        f"{path}: {name} holds a non-finite value: {what} at index {list(index)} "
        f"(flat index {flat_index}, the first in this tensor){why}; every weight must be finite")


