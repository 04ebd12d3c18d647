"""OpenAI's original GPT-2 release (openai/gpt-2 download_model.py, 2019), a TensorFlow
checkpoint, read without TensorFlow. Role: say where each tensor's bytes are (a Stored under
this project's keys, wte.weight, h.0.attn.c_attn.weight, ...) and the config from
hparams.json, after checking the index, its block checksums, every entry against the data
files and every tensor's crc32c; numpy_gpt2.checkpoint.load then copies the values like any
other format's. Boundary: TensorBundle V2 as tf.train.Saver writes it -- whole float32 (or
float64, float16, bfloat16) little-endian variables in one or more data shards, an
uncompressed index; sliced (partitioned) variables, string tensors, Snappy-compressed index
blocks and big-endian bundles are refused; model.ckpt.meta (the graph) is never read.

The files of a checkpoint with prefix P (model.ckpt): P.index, P.data-00000-of-00001 (or
P.data-0000i-of-0000N), `checkpoint` (a text proto whose model_checkpoint_path names P),
hparams.json ({n_vocab, n_ctx, n_embd, n_head, n_layer}), encoder.json + vocab.bpe (the
tokenizer: numpy_gpt2.tokenizer reads them), P.meta (unused).

P.index is a LevelDB table of protobuf values (numpy_gpt2/io/formats/tf_table.py reads both):
(tensorflow/core/protobuf/tensor_bundle.proto, read by hand here): key "" holds
BundleHeaderProto {1 num_shards, 2 endianness, 3 version {1 producer, 2 min_consumer,
3 bad_consumers}}; every other key is a variable name holding BundleEntryProto {1 dtype,
2 shape {2 dim {1 size}}, 3 shard_id, 4 offset, 5 size, 6 crc32c (fixed32), 7 slices}
(tensorflow/core/util/tensor_bundle/tensor_bundle.cc). A tensor is `size` raw bytes at
`offset` of shard `shard_id`; crc32c is the masked CRC-32C (Castagnoli) of those bytes.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from numpy_gpt2.checks import cut, is_int, show
from numpy_gpt2.config import GPT2Config
from numpy_gpt2.errors import CheckpointError
from numpy_gpt2.io.formats.tensor_copy import ITEMSIZE, Stored, _default_threads
from numpy_gpt2.io.formats.tf_table import crc32c, fields, int64, mask, read_table, scalar, varint

BUNDLE_VERSION = 1  # tensor_bundle.cc kTensorBundleVersion: the consumer version we are

# DataType enum (tensorflow/core/framework/types.proto) -> tensor_copy's dtype name.
DTYPES = {1: "F32", 2: "F64", 19: "F16", 14: "BF16"}
DTYPE_NAMES = {1: "DT_FLOAT", 2: "DT_DOUBLE", 3: "DT_INT32", 4: "DT_UINT8", 5: "DT_INT16",
               6: "DT_INT8", 7: "DT_STRING", 9: "DT_INT64", 10: "DT_BOOL", 14: "DT_BFLOAT16",
               19: "DT_HALF", 20: "DT_RESOURCE", 21: "DT_VARIANT", 22: "DT_UINT32",
               23: "DT_UINT64"}

# OpenAI's variable names (gpt-2 src/model.py) -> this project's keys, per layer and global.
LAYER_KEYS = {"ln_1/g": "ln_1.weight", "ln_1/b": "ln_1.bias",
              "attn/c_attn/w": "attn.c_attn.weight", "attn/c_attn/b": "attn.c_attn.bias",
              "attn/c_proj/w": "attn.c_proj.weight", "attn/c_proj/b": "attn.c_proj.bias",
              "ln_2/g": "ln_2.weight", "ln_2/b": "ln_2.bias",
              "mlp/c_fc/w": "mlp.c_fc.weight", "mlp/c_fc/b": "mlp.c_fc.bias",
              "mlp/c_proj/w": "mlp.c_proj.weight", "mlp/c_proj/b": "mlp.c_proj.bias"}
GLOBAL_KEYS = {"model/wte": "wte.weight", "model/wpe": "wpe.weight",
               "model/ln_f/g": "ln_f.weight", "model/ln_f/b": "ln_f.bias"}
LAYER_NAME = re.compile(r"model/h(0|[1-9][0-9]{0,8})/(.+)")
HPARAMS = ("n_vocab", "n_ctx", "n_embd", "n_head", "n_layer")


# ---- the bundle ------------------------------------------------------------------------

def data_filename(prefix: str, shard: int, num_shards: int) -> str:
    """tensor_bundle naming.cc DataFilename: P.data-00000-of-00001."""
    return f"{prefix}.data-{shard:05d}-of-{num_shards:05d}"


def read_header(value: bytes, path: str) -> int:
    """num_shards of the BundleHeaderProto, checked as BundleReader does."""
    try:
        msg = fields(value)
        num_shards = int64(scalar(msg, 1, 0))
        endianness = scalar(msg, 2, 0)
        version = fields(scalar(msg, 3, 2, b""))
        min_consumer = int64(scalar(version, 2, 0))
        bad = [int64(v) for n, w, v in version if n == 3 and w == 0]
        for n, w, v in version:  # packed repeated bad_consumers
            if n == 3 and w == 2:
                pos = 0
                while pos < len(v):
                    x, pos = varint(v, pos, len(v))
                    bad.append(int64(x))
    except ValueError as e:
        raise CheckpointError(f"{path}: the header entry is not a BundleHeaderProto ({e})") from None
    if endianness != 0:
        raise CheckpointError(f"{path}: a big-endian bundle (endianness {endianness}); only "
                              f"little-endian checkpoints are supported")
    if min_consumer > BUNDLE_VERSION or BUNDLE_VERSION in bad:
        raise CheckpointError(f"{path}: bundle format version needs a reader of version >= "
                              f"{min_consumer} (bad: {cut(str(bad))}); this reader is "
                              f"version {BUNDLE_VERSION}")
    if not 1 <= num_shards <= 99999:
        raise CheckpointError(f"{path}: the header says num_shards={num_shards}, expected "
                              f"1..99999")
    return num_shards


def read_entry(name: str, value: bytes, path: str) -> dict:
    """{dtype, shape, shard, offset, size, crc32c} of a BundleEntryProto."""
    try:
        msg = fields(value)
        shape_msg = fields(scalar(msg, 2, 2, b""))
        dims = [int64(scalar(fields(v), 1, 0)) for n, w, v in shape_msg if n == 2 and w == 2]
        entry = {"dtype": scalar(msg, 1, 0), "shape": tuple(dims),
                 "unknown_rank": scalar(shape_msg, 3, 0), "shard": int64(scalar(msg, 3, 0)),
                 "offset": int64(scalar(msg, 4, 0)), "size": int64(scalar(msg, 5, 0)),
                 "crc32c": scalar(msg, 6, 5), "slices": any(n == 7 for n, _, _ in msg)}
    except ValueError as e:
        raise CheckpointError(f"{path}: the entry of {name} is not a BundleEntryProto ({e})") from None
    if entry["slices"]:
        raise CheckpointError(f"{path}: {name} is saved in slices (a partitioned variable), "
                              f"which this reader does not support; expected whole variables")
    if entry["unknown_rank"] or any(d < 0 for d in dims):
        raise CheckpointError(f"{path}: {name} has shape {cut(str(list(dims)))}, expected "
                              f"sizes >= 0")
    return entry


def gpt2_key(name: str) -> str | None:
    """This project's key for an OpenAI variable name, or None when it is not one."""
    if name in GLOBAL_KEYS:
        return GLOBAL_KEYS[name]
    m = LAYER_NAME.fullmatch(name)
    if m and m.group(2) in LAYER_KEYS:
        return f"h.{m.group(1)}.{LAYER_KEYS[m.group(2)]}"
    return None


def expected_variables(config: GPT2Config) -> dict[str, tuple[int, ...]]:
    """Every OpenAI variable name of a model of config -> its shape as stored (gpt-2
    src/model.py: conv1d weights are [1, in, out])."""
    E, M = config.n_embd, config.mlp_width
    layer = {"ln_1/g": (E,), "ln_1/b": (E,), "attn/c_attn/w": (1, E, 3 * E),
             "attn/c_attn/b": (3 * E,), "attn/c_proj/w": (1, E, E), "attn/c_proj/b": (E,),
             "ln_2/g": (E,), "ln_2/b": (E,), "mlp/c_fc/w": (1, E, M), "mlp/c_fc/b": (M,),
             "mlp/c_proj/w": (1, M, E), "mlp/c_proj/b": (E,)}
    out = {"model/wte": (config.vocab_size, E), "model/wpe": (config.n_ctx, E)}
    for i in range(config.n_layer):
        out.update({f"model/h{i}/{k}": shape for k, shape in layer.items()})
    out.update({"model/ln_f/g": (E,), "model/ln_f/b": (E,)})
    return out


def read_hparams(path: str) -> GPT2Config:
    """GPT2Config from openai/gpt-2's hparams.json (n_vocab, n_ctx, n_embd, n_head, n_layer;
    its model.py: tanh GELU, LayerNorm epsilon 1e-5, <|endoftext|> = 50256)."""
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing: a TensorFlow GPT-2 checkpoint needs "
                              f"openai/gpt-2's hparams.json beside its index") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
    except (ValueError, RecursionError):
        raise CheckpointError(f"{path}: not valid JSON") from None
    if not isinstance(d, dict):
        raise CheckpointError(f"{path}: expected a JSON object {{{', '.join(HPARAMS)}}}")
    for key in HPARAMS:
        if not is_int(d.get(key)) or d[key] < 1:
            raise CheckpointError(f"{path}: {key} is {show(d.get(key))}, expected a positive "
                                  f"integer")
    try:
        return GPT2Config(n_layer=d["n_layer"], n_head=d["n_head"], n_embd=d["n_embd"],
                          n_ctx=d["n_ctx"], vocab_size=d["n_vocab"])
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {str(e).removeprefix('config: ')}") from None


def openai_tf_tensors(index_path: str) -> tuple[dict, GPT2Config]:
    """{project key: Stored} and the config (hparams.json) of the checkpoint whose index is
    index_path (P.index). Raises CheckpointError naming the file, the variable and what was
    expected: a bad footer, block checksum or entry; a variable that is not GPT-2's, missing,
    of another shape or dtype (DT_FLOAT; DT_DOUBLE, DT_HALF, DT_BFLOAT16 also load); a shard
    that is missing; bytes outside a data file; a tensor whose crc32c differs from the index's."""
    prefix = index_path[:-len(".index")]
    config = read_hparams(os.path.join(os.path.dirname(index_path) or ".", "hparams.json"))
    table = read_table(index_path)
    if not table or table[0][0] != b"":
        raise CheckpointError(f"{index_path}: no header entry (the empty key) first: not a "
                              f"TensorFlow checkpoint index (TensorBundle V2)")
    num_shards = read_header(table[0][1], index_path)
    expected = expected_variables(config)
    entries = {}
    for raw, value in table[1:]:
        try:
            name = raw.decode("utf-8")
        except UnicodeDecodeError:
            name = None
        if name is None or not name.isprintable() or gpt2_key(name) is None:
            raise CheckpointError(f"{index_path}: variable {cut(repr(name or raw))} is not one "
                                  f"of GPT-2's (model/wte, model/wpe, model/h<i>/..., "
                                  f"model/ln_f/g|b)")
        if name not in expected:
            raise CheckpointError(f"{index_path}: unexpected variable {name} (hparams.json says "
                                  f"n_layer={config.n_layer})")
        entries[name] = read_entry(name, value, index_path)
    missing = [n for n in expected if n not in entries]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise CheckpointError(f"{index_path}: missing variable {missing[0]}{more} (hparams.json "
                              f"says n_layer={config.n_layer})")
    sizes = {}
    for shard in sorted({e["shard"] for e in entries.values()}):
        if not 0 <= shard < num_shards:
            name = next(n for n, e in entries.items() if e["shard"] == shard)
            raise CheckpointError(f"{index_path}: {name} is in shard {shard}, but the header "
                                  f"says num_shards={num_shards}")
        data_path = data_filename(prefix, shard, num_shards)
        try:
            sizes[shard] = os.path.getsize(data_path)
        except OSError:
            name = next(n for n, e in entries.items() if e["shard"] == shard)
            raise CheckpointError(f"{data_path}: missing data shard (it holds {name})") from None
    for name, e in entries.items():
        data_path = data_filename(prefix, e["shard"], num_shards)
        shape = expected[name]
        if e["shape"] != shape:
            raise CheckpointError(f"{index_path}: {name} has shape {cut(str(list(e['shape'])))}, "
                                  f"expected {list(shape)} (hparams.json: n_vocab="
                                  f"{config.vocab_size}, n_ctx={config.n_ctx}, n_embd="
                                  f"{config.n_embd})")
        if e["dtype"] not in DTYPES:
            what = DTYPE_NAMES.get(e["dtype"], f"enum {e['dtype']}")
            raise CheckpointError(f"{index_path}: {name} has dtype {what}, expected DT_FLOAT "
                                  f"(or DT_DOUBLE, DT_HALF, DT_BFLOAT16)")
        nbytes = math.prod(shape) * ITEMSIZE[DTYPES[e["dtype"]]]
        if e["size"] != nbytes:
            raise CheckpointError(f"{index_path}: {name} has size {e['size']} bytes, expected "
                                  f"{nbytes} ({DTYPE_NAMES[e['dtype']]} {list(shape)})")
        if e["offset"] < 0 or e["offset"] + nbytes > sizes[e["shard"]]:
            raise CheckpointError(f"{data_path}: truncated: {name} needs bytes {e['offset']}.."
                                  f"{e['offset'] + nbytes} but the file has {sizes[e['shard']]}")
    check_crc32c(entries, prefix, num_shards)
    out = {}
    for name, e in entries.items():
        shape = expected[name][1:] if len(expected[name]) == 3 else expected[name]  # [1, in, out]
        out[gpt2_key(name)] = Stored(data_filename(prefix, e["shard"], num_shards),
                                     DTYPES[e["dtype"]], shape, e["offset"])
    return out, config


def check_crc32c(entries: dict, prefix: str, num_shards: int) -> None:
    """Every tensor's bytes against its entry's masked crc32c, read from the mapped data
    files (never into memory) on a few threads, largest tensors first (google-crc32c
    releases the GIL): ~0.1 s for GPT-2 124M's 500 MB. Raises CheckpointError for the
    first mismatch in file order."""
    maps = {}
    try:
        for shard in sorted({e["shard"] for e in entries.values()}):
            path = data_filename(prefix, shard, num_shards)
            try:
                with open(path, "rb") as f:
                    size = os.fstat(f.fileno()).st_size
                    maps[shard] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
            except OSError as e:
                raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
            if any(e["shard"] == shard and e["offset"] + e["size"] > size for e in entries.values()):
                raise CheckpointError(f"{path}: truncated: the file shrank while being loaded")

        def actual(name):
            e = entries[name]
            return mask(crc32c(np.frombuffer(maps[e["shard"]], np.uint8, e["size"], e["offset"])))

        order = sorted(entries, key=lambda n: -entries[n]["size"])
        with ThreadPoolExecutor(min(_default_threads(), len(order) or 1)) as pool:
            crcs = dict(zip(order, pool.map(actual, order)))
    finally:
        for m in maps.values():
            if isinstance(m, mmap.mmap):
                m.close()
    for name in sorted(entries, key=lambda n: (entries[n]["shard"], entries[n]["offset"])):
        e = entries[name]
        if crcs[name] != e["crc32c"]:
            raise CheckpointError(
                f"{data_filename(prefix, e['shard'], num_shards)}: {name} is corrupted: the "
                f"crc32c of its {e['size']} bytes at offset {e['offset']} is "
                f"0x{crcs[name]:08x}, the index says 0x{e['crc32c']:08x}")


# ---- finding a checkpoint --------------------------------------------------------------

SIBLING_FILE = re.compile(r"(.+)\.(data-\d{5}-of-\d{5}|meta)")


def index_of(source: str) -> str | None:
    """The P.index a path names, or None: a P.index file, a P.data-*-of-* or P.meta file,
    the prefix P itself, or a directory holding `checkpoint` (its model_checkpoint_path) or
    model.ckpt.index. CheckpointError when `checkpoint` names a prefix without an index."""
    if os.path.isdir(source):
        prefix = checkpoint_state_prefix(source)
        if prefix is not None and not os.path.isfile(prefix + ".index"):
            raise CheckpointError(f"{os.path.join(source, 'checkpoint')}: names the checkpoint "
                                  f"{prefix}, but there is no {os.path.basename(prefix)}.index")
        prefix = prefix or os.path.join(source, "model.ckpt")
        return prefix + ".index" if os.path.isfile(prefix + ".index") else None
    if source.endswith(".index") and os.path.isfile(source):
        return source
    m = SIBLING_FILE.fullmatch(source)
    prefix = m.group(1) if m and os.path.isfile(source) else source
    return prefix + ".index" if os.path.isfile(prefix + ".index") else None


def checkpoint_state_prefix(directory: str) -> str | None:
    """The prefix that directory/checkpoint (tf.train.CheckpointState, text format) names as
    model_checkpoint_path, resolved as TensorFlow does (relative to the directory; an
    absolute path of a moved directory falls back to its last part), or None."""
    try:
        with open(os.path.join(directory, "checkpoint"), "rb") as f:
            text = f.read(1 << 16).decode("utf-8")  # its first line names the prefix
    except (OSError, UnicodeDecodeError):
        return None
    m = re.search(r'^model_checkpoint_path:\s*"([^"\\]*)"', text, re.M)
    if not m or not m.group(1):
        return None
    path = m.group(1)
    if not os.path.isabs(path):
        return os.path.join(directory, path)
    if os.path.isfile(path + ".index"):
        return path
    return os.path.join(directory, os.path.basename(path))
