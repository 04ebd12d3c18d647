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

import dataclasses
import math
import mmap
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from numpy_gpt2.errors import CheckpointError

# safetensors dtype name -> little-endian NumPy dtype of the stored bytes.
# BF16 is read as raw uint16 and widened by hand (see _convert).
FILE_DTYPES = {"F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
               "BF16": np.dtype("<u2")}
# Bytes per element of every dtype a file may hold (integers in optimizer states, masks).
ITEMSIZE = {**{name: d.itemsize for name, d in FILE_DTYPES.items()},
            "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}

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


@dataclasses.dataclass(frozen=True)
class Stored:
    """Where one tensor's values are: `path`, stored as `dtype` (a FILE_DTYPES name), element
    [0, ..., 0] at byte `offset` of the file, `strides` in elements (None: C order).

    Strides let a reader describe a transposed tensor (nanoGPT's and llm.c's (out, in)
    weights read as GPT-2's (in, out)) or a torch view without copying it first."""

    path: str
    dtype: str
    shape: tuple
    offset: int
    strides: tuple | None = None

    @property
    def contiguous(self) -> bool:
        return self.strides is None or self.strides == c_strides(self.shape)

    def extent(self) -> int:
        """Bytes from offset to the end of the last element (0 for an empty tensor)."""
        if math.prod(self.shape) == 0:
            return 0
        strides = c_strides(self.shape) if self.strides is None else self.strides
        last = sum((n - 1) * s for n, s in zip(self.shape, strides))
        return (last + 1) * ITEMSIZE[self.dtype]


def c_strides(shape) -> tuple:
    """Strides (in elements) of a C-ordered array of `shape`."""
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= n
    return tuple(reversed(strides))


def copy_tensors(tensors: dict, dtype: np.dtype, threads: int) -> dict:
    """{key: Stored} -> {key: a new C-contiguous array of dtype with the tensor's values}.

    Callers have checked every Stored against its file (dtype in FILE_DTYPES, offset +
    extent() within the file). Each tensor gets its own np.empty array (aligned, lazily
    backed: pages appear as they are written). Each file is mapped once and each tensor cut
    into chunks of about CHUNK_ELEMENTS (rows of its first axis when it is strided);
    `threads` threads take alternate chunks, copy (NumPy releases the GIL while it copies),
    convert when the file's dtype is not `dtype`, and sum each chunk while it is still in the
    CPU cache: NaN and inf survive a sum, so a finite sum proves the chunk finite. Chunks
    whose sum is not finite are searched element by element afterwards (a sum can also
    overflow on huge finite values). Raises CheckpointError for the first non-finite value,
    in file order.
    """
    out = {key: np.empty(t.shape, dtype) for key, t in tensors.items()}
    stored = {key: t for key, t in tensors.items() if out[key].size}
    order = sorted(stored, key=lambda k: (stored[k].path, stored[k].offset))  # sequential reads
    jobs = [job for key in order for job in _chunks(key, stored[key])]
    if not jobs:
        return out
    maps = {path: _map(path, max(t.offset + t.extent() for t in stored.values() if t.path == path))
            for path in {t.path for t in stored.values()}}
    suspects = []  # (key, lo, hi) chunks whose sum is not finite

    def work(first: int) -> None:
        with np.errstate(over="ignore", invalid="ignore"):  # errstate is per thread
            for key, lo, hi in jobs[first::threads]:
                t = stored[key]
                chunk = _copy_chunk(t, maps[t.path], out[key], lo, hi, dtype)
                if not _sum_is_finite(chunk):
                    suspects.append((key, lo, hi))

    if threads == 1 or len(jobs) == 1:
        work(0)
    else:
        with ThreadPoolExecutor(threads) as pool:
            for done in [pool.submit(work, i) for i in range(threads)]:
                done.result()  # re-raises a worker's exception here
    for key, lo, hi in sorted(suspects, key=lambda s: (stored[s[0]].path, stored[s[0]].offset, s[1])):
        flat = out[key].reshape(-1)[lo * _row(out[key]):hi * _row(out[key])] \
            if not stored[key].contiguous else out[key].reshape(-1)[lo:hi]
        bad = np.flatnonzero(~np.isfinite(flat))
        if bad.size:  # else the sum overflowed on finite values: fine
            first = (lo * _row(out[key]) if not stored[key].contiguous else lo) + int(bad[0])
            raise _non_finite_error(key, stored[key], first, out[key], maps[stored[key].path], dtype)
    return out


def _row(array) -> int:
    """Elements per index of the first axis."""
    return math.prod(array.shape[1:])


def _chunks(key, t: Stored):
    """(key, lo, hi) jobs: flat element ranges of a contiguous tensor, first-axis row ranges
    of a strided one."""
    if t.contiguous:
        n = math.prod(t.shape)
        return [(key, lo, min(lo + CHUNK_ELEMENTS, n)) for lo in range(0, n, CHUNK_ELEMENTS)]
    rows = max(1, CHUNK_ELEMENTS // max(1, math.prod(t.shape[1:])))
    return [(key, lo, min(lo + rows, t.shape[0])) for lo in range(0, t.shape[0], rows)]


def _map(path: str, needed: int) -> mmap.mmap:
    """The file mapped read-only. The readers checked the tensors against the file's size; a
    file that shrank since then would make the map raise SIGBUS, so check again on the open file."""
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size < needed:
                raise CheckpointError(f"{path}: truncated: the file shrank while being loaded")
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None


def _source(t: Stored, data: mmap.mmap) -> np.ndarray:
    """The stored tensor as a (possibly unaligned, strided) read-only view of the map."""
    stored_dtype = FILE_DTYPES[t.dtype]
    strides = c_strides(t.shape) if t.strides is None else t.strides
    return np.ndarray(t.shape, stored_dtype, buffer=data, offset=t.offset,
                      strides=tuple(s * stored_dtype.itemsize for s in strides))


def _copy_chunk(t: Stored, data, array, lo, hi, dtype):
    """Copy chunk [lo, hi) of t (flat elements, or first-axis rows when strided) into array;
    returns the filled part of array, flattened."""
    stored_dtype = FILE_DTYPES[t.dtype]
    if t.contiguous:
        chunk = array.reshape(-1)[lo:hi]
        begin = t.offset + lo * stored_dtype.itemsize
        raw = np.frombuffer(data, np.uint8, (hi - lo) * stored_dtype.itemsize, begin)
        if stored_dtype == dtype:  # copy bytes: the file's odd alignment does not matter
            np.copyto(chunk.view(np.uint8), raw)
        else:
            _convert(raw.view(stored_dtype), t.dtype, chunk)
        return chunk
    target = array[lo:hi]
    if t.dtype == "BF16" or stored_dtype != dtype:
        _convert(_source(t, data)[lo:hi], t.dtype, target)
    else:
        np.copyto(target, _source(t, data)[lo:hi])
    return target.reshape(-1)


def _sum_is_finite(chunk: np.ndarray) -> bool:
    """True when the sum of the 1-D chunk is finite: then every element is (a NaN or inf
    makes any sum NaN or inf, in any order). np.einsum's sum is SIMD: 3.7x np.sum here."""
    return bool(np.isfinite(np.einsum("i->", chunk)))


def _non_finite_error(name, t: Stored, flat_index, array, data, dtype):
    """The CheckpointError for the first NaN/inf: file, key, index, value (and if the file's
    value was finite, that it overflows `dtype`, e.g. an F64 1e300 read as float32)."""
    index = tuple(int(i) for i in np.unravel_index(flat_index, array.shape))
    value = array.reshape(-1)[flat_index]
    what = "nan" if np.isnan(value) else ("inf" if value > 0 else "-inf")
    stored = _source(t, data)[index]
    why = ""
    if t.dtype != "BF16" and np.isfinite(stored):
        why = f" (the file holds {t.dtype} {float(stored)!r}, too large for {np.dtype(dtype)})"
    return CheckpointError(
        f"{t.path}: {name} holds a non-finite value: {what} at index {list(index)} "
        f"(flat index {flat_index}, the first in this tensor){why}; every weight must be finite")
