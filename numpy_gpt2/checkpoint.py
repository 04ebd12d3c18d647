"""Load GPT-2 weights from a safetensors checkpoint into a nested dict of NumPy arrays.

The dict mirrors the checkpoint's own key names: the tensor stored under
``h.3.attn.c_attn.weight`` is ``params["h"][3]["attn"]["c_attn"]["weight"]``.

We parse safetensors ourselves (an 8-byte little-endian header length, a JSON header, then
raw little-endian data) rather than through ``safetensors.safe_open`` because we need
BF16 (NumPy has no bfloat16), errors that name the file and key, a check of every header
field before anything is allocated, a check that every weight is finite, and to copy each
tensor straight into its final array so the weights are never held twice (gpt2-xl is 6.4 GB).

How the bytes get in (see _copy_tensors): the file is memory-mapped (its pages are the
page cache, not our memory) and copied, in 1 MB chunks on a few threads, into new arrays.
The hub files' data block starts at an odd byte (14,291 in gpt2), so arrays viewing the map
in place would be misaligned and read-only; copies are aligned, writable and ours.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .checks import cut, is_int, show
from .config import GPT2Config, infer_config, read_config_json
from .errors import CheckpointError
from .params import flatten_params, nest_params

# safetensors dtype name -> little-endian NumPy dtype of the stored bytes.
# BF16 is read as raw uint16 and widened by hand (see _convert).
FILE_DTYPES = {"F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
               "BF16": np.dtype("<u2")}

MAX_HEADER_BYTES = 100_000_000  # the safetensors format's own limit
CHUNK_ELEMENTS = 1 << 18  # copy and check 1 MB of float32 at a time: it stays in the CPU cache

# Buffers some checkpoints carry: the causal mask ("bias") and a -1e4 constant ("masked_bias").
# They are not parameters; we recompute the mask and never keep them in memory.
_BUFFER = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")


def expected_shapes(config: GPT2Config) -> dict[str, tuple[int, ...]]:
    """Every parameter key of a GPT-2 checkpoint (without ``transformer.``) -> its shape."""
    E, V, P = config.n_embd, config.vocab_size, config.n_ctx
    shapes = {"wte.weight": (V, E), "wpe.weight": (P, E)}
    for i in range(config.n_layer):
        for name, shape in [
            ("ln_1.weight", (E,)), ("ln_1.bias", (E,)),
            ("attn.c_attn.weight", (E, 3 * E)), ("attn.c_attn.bias", (3 * E,)),
            ("attn.c_proj.weight", (E, E)), ("attn.c_proj.bias", (E,)),
            ("ln_2.weight", (E,)), ("ln_2.bias", (E,)),
            ("mlp.c_fc.weight", (E, 4 * E)), ("mlp.c_fc.bias", (4 * E,)),
            ("mlp.c_proj.weight", (4 * E, E)), ("mlp.c_proj.bias", (E,)),
        ]:
            shapes[f"h.{i}.{name}"] = shape
    shapes["ln_f.weight"] = (E,)
    shapes["ln_f.bias"] = (E,)
    return shapes


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


def _find_files(source) -> tuple[str, str | None]:
    """A directory or a .safetensors path -> (weights path, config.json path or None)."""
    source = os.fspath(source)
    if os.path.isdir(source):
        weights = os.path.join(source, "model.safetensors")
        if not os.path.isfile(weights):
            raise CheckpointError(f"{source}: directory has no model.safetensors")
        config = os.path.join(source, "config.json")
    elif os.path.isfile(source):
        weights = source
        config = os.path.join(os.path.dirname(source) or ".", "config.json")
    else:
        raise CheckpointError(f"{source}: no such file or directory")
    return weights, (config if os.path.isfile(config) else None)


def _strip_prefix(names, path) -> dict[str, str]:
    """Checkpoint key -> our key: drop "transformer." (save_pretrained adds it)."""
    mapping = {}
    for name in names:
        key = name[len("transformer."):] if name.startswith("transformer.") else name
        mapping[name] = key
    if len(set(mapping.values())) < len(mapping):
        key = next(k for k in mapping.values() if f"transformer.{k}" in mapping and k in mapping)
        raise CheckpointError(f"{path}: {key} is stored twice (with and without 'transformer.')")
    return mapping


def load(source, dtype=np.float32, *, threads: int | None = None,
         n_head: int | None = None) -> tuple[dict, GPT2Config]:
    """Load a GPT-2 checkpoint: ``params, config = load(source, dtype)``.

    source: a directory holding ``model.safetensors`` (and usually ``config.json``), or a
    path to a ``.safetensors`` file (a ``config.json`` beside it is used when present).
    dtype: float32 (default) or float64; F16/BF16/F32/F64 files are converted to it.
    threads: threads that copy the weights out of the file (default: the CPUs this process
    may use, at most 8); the result does not depend on it.
    n_head: the number of attention heads, for a checkpoint without config.json whose shapes
    are not a published GPT-2 model's (the weights do not show the head count; without
    config.json and without n_head such a checkpoint raises CheckpointError). With a
    config.json it must agree with the file's n_head.
    Returns the nested weight dict (checkpoint names, buffers dropped) and the config.
    Raises CheckpointError naming the file and the key/shape/dtype that is wrong, or the key
    and index of the first NaN or inf in a weight.
    """
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}") from None
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    threads = _default_threads() if threads is None else threads
    if not is_int(threads) or threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    if n_head is not None and (not is_int(n_head) or n_head < 1):
        raise ValueError(f"n_head must be a positive integer (or None), got {n_head!r}")
    weights, config_path = _find_files(source)
    header, data_start = read_safetensors_header(weights)
    keys = _strip_prefix(header, weights)
    params_in_file = {k: n for n, k in keys.items() if not _BUFFER.fullmatch(k)}

    for key, name in params_in_file.items():
        if header[name]["dtype"] not in FILE_DTYPES:
            raise CheckpointError(
                f"{weights}: {name} has dtype {cut(header[name]['dtype'])}; expected one of "
                f"{', '.join(FILE_DTYPES)}")
    if config_path:
        config, config_from = read_config_json(config_path), config_path
        if n_head is not None and n_head != config.n_head:
            raise CheckpointError(f"{config_path}: n_head={config.n_head}, but load() was "
                                  f"given n_head={n_head}")
    else:
        config = _infer_from_header(header, params_in_file, weights, n_head)
        config_from = "the inferred config"

    n_file = _layers_in_file(params_in_file)
    if config.n_layer > n_file:  # said before listing keys: n_layer may be a billion
        more = f" to h.{config.n_layer - 1}.*" if config.n_layer - 1 > n_file else ""
        raise CheckpointError(
            f"{weights}: missing keys h.{n_file}.*{more} (the file has {n_file} "
            f"layer{'s' if n_file != 1 else ''}, {config_from} says n_layer={config.n_layer})")
    shapes = expected_shapes(config)
    has_head = "lm_head.weight" in params_in_file
    if has_head:
        shapes["lm_head.weight"] = (config.vocab_size, config.n_embd)
    missing = [k for k in shapes if k not in params_in_file]
    unexpected = [params_in_file[k] for k in params_in_file if k not in shapes]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_short(unexpected)}")
        raise CheckpointError(
            f"{weights}: {'; '.join(parts)} (the file has {n_file} layer{'s' if n_file != 1 else ''}, "
            f"{config_from} says n_layer={config.n_layer})")
    for key, shape in shapes.items():
        got = tuple(header[params_in_file[key]]["shape"])
        if got != shape:
            raise CheckpointError(
                f"{weights}: {params_in_file[key]} has shape {cut(str(list(got)))}, expected "
                f"{list(shape)} (n_embd={config.n_embd}, vocab_size={config.vocab_size}, "
                f"n_ctx={config.n_ctx})")

    # Every shape is now the config's, so the arrays below are exactly the weights' size.
    arrays = _copy_tensors(weights, data_start, {params_in_file[k]: header[params_in_file[k]]
                                                 for k in shapes}, dtype, threads)
    flat = {key: arrays[params_in_file[key]] for key in shapes}
    if has_head:
        head = flat.pop("lm_head.weight")
        if config.tie_word_embeddings and not np.array_equal(head, flat["wte.weight"]):
            raise CheckpointError(
                f"{weights}: lm_head.weight differs from wte.weight but config says the output "
                f"head is tied (tie_word_embeddings=true)")
        if not config.tie_word_embeddings:
            flat["lm_head.weight"] = head
    elif not config.tie_word_embeddings:
        raise CheckpointError(f"{weights}: tie_word_embeddings=false but no lm_head.weight")
    return nest_params(flat), config


def _short(keys, n=5) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def _layers_in_file(params_in_file) -> int:
    """Number of transformer layers the keys h.0. .. h.N. describe (N + 1; 0 if none)."""
    # At most 9 digits: int() of a 5000-digit string raises, and no model has a billion layers.
    layers = [int(m.group(1)) for k in params_in_file if (m := re.match(r"h\.(\d{1,9})\.", k))]
    return max(layers, default=-1) + 1


def _infer_from_header(header, params_in_file, path, n_head=None) -> GPT2Config:
    for key in ("wte.weight", "wpe.weight"):
        if key not in params_in_file:
            raise CheckpointError(f"{path}: missing key {key} (and no config.json to say otherwise)")
        if len(header[params_in_file[key]]["shape"]) != 2:
            raise CheckpointError(f"{path}: {params_in_file[key]} has shape "
                                  f"{header[params_in_file[key]]['shape']}, expected 2 dimensions")
    vocab, n_embd = header[params_in_file["wte.weight"]]["shape"]
    n_ctx = header[params_in_file["wpe.weight"]]["shape"][0]
    return infer_config(_layers_in_file(params_in_file), vocab, n_ctx, n_embd, path, n_head)


# ----------------------------------------------------------------------------------------
# Saving a checkpoint in the Hugging Face layout (model.safetensors, config.json, vocab.json,
# merges.txt) that numpy_gpt2.load, the scripts and transformers' from_pretrained all read.
# Every write is atomic: all files are first written to temporary names in the same
# directory, then renamed over the old ones, so a crash (or an error) while writing leaves
# the previous checkpoint whole.

def write_files_atomically(directory, writers: dict) -> None:
    """writers: {file name: write(path)}. Each writer writes its file to a temporary path in
    `directory` (created if needed); once ALL have succeeded they are fsynced and renamed onto
    their names (os.replace, atomic on POSIX) in the given order. If any writer fails, every
    temporary file is removed, nothing is renamed, and the exception propagates."""
    import contextlib
    import tempfile

    os.makedirs(directory, exist_ok=True)
    umask = os.umask(0)
    os.umask(umask)
    temps = {}
    try:
        for name, write in writers.items():
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
            os.close(fd)
            temps[name] = tmp
            write(tmp)
            # mkstemp makes 0600 (and a writer may recreate the file): the usual permissions
            os.chmod(tmp, 0o666 & ~umask)
            with open(tmp, "rb+") as f:  # on disk before the rename makes it visible
                os.fsync(f.fileno())
        for name, tmp in temps.items():
            os.replace(tmp, os.path.join(directory, name))
    except BaseException:
        for tmp in temps.values():
            with contextlib.suppress(OSError):
                os.remove(tmp)
        raise


def hf_config_dict(config: GPT2Config, dtype=np.float32) -> dict:
    """config.json of a Hugging Face GPT-2 checkpoint for config (dropout 0: what was trained)."""
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
            "n_layer": config.n_layer, "n_head": config.n_head, "n_embd": config.n_embd,
            "n_ctx": config.n_ctx, "n_positions": config.n_ctx, "vocab_size": config.vocab_size,
            "n_inner": None, "activation_function": config.activation_function,
            "layer_norm_epsilon": config.layer_norm_epsilon, "initializer_range": 0.02,
            "bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id,
            "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "summary_first_dropout": 0.0,
            "scale_attn_weights": True, "use_cache": True,
            "tie_word_embeddings": config.tie_word_embeddings,
            "torch_dtype": np.dtype(dtype).name}


def checkpoint_writers(params: dict, config: GPT2Config, tokenizer_dir, metadata=None) -> dict:
    """{file name: writer} for the four checkpoint files (see write_files_atomically).

    model.safetensors: every parameter under its checkpoint key, in the params' dtype (F32 or
    F64), no "transformer." prefix, no lm_head when tied (as the hub's gpt2 file), written by
    the safetensors library; metadata {"format": "pt", **metadata}. config.json from
    hf_config_dict; vocab.json and merges.txt copied from tokenizer_dir.
    """
    import shutil

    from safetensors.numpy import save_file

    flat = {k: np.ascontiguousarray(v) for k, v in flatten_params(params).items()}
    dtype = flat["wte.weight"].dtype
    meta = {"format": "pt", **{k: str(v) for k, v in (metadata or {}).items()}}
    if not isinstance(tokenizer_dir, (str, os.PathLike)):
        raise ValueError(f"tokenizer_dir must be a directory holding GPT-2's vocab.json and "
                         f"merges.txt (they are copied into the checkpoint), got {tokenizer_dir!r}")
    missing = [n for n in ("vocab.json", "merges.txt")
               if not os.path.isfile(os.path.join(os.fspath(tokenizer_dir), n))]
    if missing:
        raise ValueError(f"{tokenizer_dir}: no {' or '.join(missing)} to copy into the checkpoint")

    def write_config(path):
        with open(path, "w", encoding="utf-8") as f:
            json.dump(hf_config_dict(config, dtype), f, indent=2)
            f.write("\n")

    def copier(name):
        return lambda path: shutil.copyfile(os.path.join(tokenizer_dir, name), path)

    return {"model.safetensors": lambda path: save_file(flat, path, metadata=meta),
            "config.json": write_config,
            "vocab.json": copier("vocab.json"), "merges.txt": copier("merges.txt")}


def save_checkpoint(directory, params: dict, config: GPT2Config, tokenizer_dir, metadata=None) -> None:
    """Write params as a Hugging Face GPT-2 checkpoint into directory, atomically:
    model.safetensors, config.json, vocab.json and merges.txt (copied from tokenizer_dir, a
    directory holding GPT-2's tokenizer files). numpy_gpt2.load(directory),
    scripts/generate.py --model directory and GPT2LMHeadModel.from_pretrained(directory) read
    it. metadata: optional {str: str} stored in the safetensors header."""
    write_files_atomically(directory, checkpoint_writers(params, config, tokenizer_dir, metadata))
