"""Write TensorFlow checkpoints (TensorBundle V2) without TensorFlow, byte for byte as
tf.train.Saver does, for the tests of numpy_gpt2.io.formats.openai_tf.

What TensorFlow does, and so this writer (tensorflow/core/util/tensor_bundle/tensor_bundle.cc
BundleWriter, tensorflow/core/lib/io/table_builder.cc, block_builder.cc, format.cc):
  * data: each tensor's raw little-endian bytes, in the order the tensors are added (Saver
    adds them sorted by name), no padding (data_alignment 1);
  * index: a LevelDB table, uncompressed, keys in bytewise order: the header "" ->
    BundleHeaderProto {num_shards, version {producer 1}}, then name -> BundleEntryProto
    {dtype, shape, shard_id, offset, size, crc32c = masked crc32c of the bytes} (fields
    equal to 0 are not written: proto3);
  * blocks: restart points every 16 keys, a block closed once its size estimate reaches
    table::Options' block_size (256 kB), trailer = type 0 + masked crc32c; an empty
    metaindex block; an index block (restart every key) whose keys are LevelDB's shortest
    separators / successor; the footer.
`openai_gpt2_variables` names a model's parameters as OpenAI's checkpoint does;
`random_flat` draws a model whose every value (biases and gains too) is random.
"""

from __future__ import annotations

import os

import numpy as np

from numpy_gpt2.io.checkpoint import expected_shapes
from numpy_gpt2.io.formats.openai_tf import GLOBAL_KEYS, LAYER_KEYS, data_filename
from numpy_gpt2.io.formats.tf_table import FOOTER_BYTES, TABLE_MAGIC, crc32c, mask

BLOCK_SIZE = 262144  # tensorflow/core/lib/io/table_options.h
RESTART_INTERVAL = 16
DT = {np.dtype("<f4"): 1, np.dtype("<f8"): 2, np.dtype("<f2"): 19}


def put_varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # int64 fields: two's complement
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def field_varint(number: int, value: int) -> bytes:
    return put_varint(number << 3) + put_varint(value) if value else b""


def field_bytes(number: int, value: bytes) -> bytes:
    return put_varint(number << 3 | 2) + put_varint(len(value)) + value


def field_fixed32(number: int, value: int) -> bytes:
    return put_varint(number << 3 | 5) + value.to_bytes(4, "little")


def entry_proto(dtype: int, shape, shard: int, offset: int, size: int, crc: int) -> bytes:
    dims = b"".join(field_bytes(2, field_varint(1, d)) for d in shape)
    return (field_varint(1, dtype) + field_bytes(2, dims) + field_varint(3, shard)
            + field_varint(4, offset) + field_varint(5, size) + field_fixed32(6, crc))


def header_proto(num_shards: int) -> bytes:
    return field_varint(1, num_shards) + field_bytes(3, field_varint(1, 1))  # version producer 1


class Block:
    """LevelDB's BlockBuilder."""

    def __init__(self, restart_interval: int):
        self.interval, self.buffer, self.restarts = restart_interval, bytearray(), [0]
        self.counter, self.last, self.entries = 0, b"", 0

    def add(self, key: bytes, value: bytes) -> None:
        shared = 0
        if self.counter < self.interval:
            while shared < min(len(key), len(self.last)) and key[shared] == self.last[shared]:
                shared += 1
        else:
            self.restarts.append(len(self.buffer))
            self.counter = 0
        self.buffer += (put_varint(shared) + put_varint(len(key) - shared)
                        + put_varint(len(value)) + key[shared:] + value)
        self.last, self.counter, self.entries = key, self.counter + 1, self.entries + 1

    def size_estimate(self) -> int:
        return len(self.buffer) + 4 * len(self.restarts) + 4

    def finish(self) -> bytes:
        return bytes(self.buffer) + b"".join(r.to_bytes(4, "little") for r in self.restarts) \
            + len(self.restarts).to_bytes(4, "little")


def shortest_separator(start: bytes, limit: bytes) -> bytes:
    n = 0
    while n < min(len(start), len(limit)) and start[n] == limit[n]:
        n += 1
    if n < min(len(start), len(limit)) and start[n] < 0xFF and start[n] + 1 < limit[n]:
        return start[:n] + bytes([start[n] + 1])
    return start


def short_successor(key: bytes) -> bytes:
    for i, b in enumerate(key):
        if b != 0xFF:
            return key[:i] + bytes([b + 1])
    return key


def table_bytes(items, block_size: int = BLOCK_SIZE) -> bytes:
    """A LevelDB table of the sorted [(key, value)], as TensorFlow's TableBuilder writes it."""
    out = bytearray()
    data, index = Block(RESTART_INTERVAL), Block(1)
    pending, last = None, b""

    def write(contents: bytes) -> tuple[int, int]:
        handle = (len(out), len(contents))
        out.extend(contents + b"\0" + mask(crc32c(contents + b"\0")).to_bytes(4, "little"))
        return handle

    def flush():
        nonlocal data, pending
        if data.entries:
            pending = write(data.finish())
            data = Block(RESTART_INTERVAL)

    for key, value in items:
        if data.entries and len(key) + len(value) >= 2 * block_size:
            flush()
        if pending is not None:
            index.add(shortest_separator(last, key), put_varint(pending[0]) + put_varint(pending[1]))
            pending = None
        last = key
        data.add(key, value)
        if data.size_estimate() >= block_size:
            flush()
    flush()
    metaindex = write(Block(RESTART_INTERVAL).finish())
    if pending is not None:
        index.add(short_successor(last), put_varint(pending[0]) + put_varint(pending[1]))
    index_handle = write(index.finish())
    footer = b"".join(put_varint(v) for v in (*metaindex, *index_handle))
    out.extend(footer.ljust(FOOTER_BYTES - 8, b"\0") + TABLE_MAGIC.to_bytes(8, "little"))
    return bytes(out)


def write_bundle(prefix: str, tensors: dict, num_shards: int = 1, shard_of=None,
                 block_size: int = BLOCK_SIZE) -> None:
    """Write {name: array (float32/float64/float16), or (DataType enum, array of its bytes)} as the
    checkpoint P.index + P.data-0000i-of-0000N. shard_of(name) -> shard id (default 0);
    tensors go into their shard in sorted-name order."""
    os.makedirs(os.path.dirname(prefix) or ".", exist_ok=True)
    files = [open(data_filename(prefix, i, num_shards), "wb") for i in range(num_shards)]
    entries = []
    try:
        for name in sorted(tensors):
            a = tensors[name]
            if isinstance(a, tuple):  # (DataType enum, raw array): e.g. (14, bfloat16 bits)
                dtype, a = a[0], np.ascontiguousarray(a[1])
            else:
                a = np.ascontiguousarray(a)
                dtype = DT[a.dtype.newbyteorder("<") if a.dtype.byteorder == "=" else a.dtype]
            raw = a.tobytes()
            shard = shard_of(name) if shard_of else 0
            offset = files[shard].tell()
            files[shard].write(raw)
            entries.append((name.encode(), entry_proto(dtype, a.shape, shard, offset, len(raw),
                                                       mask(crc32c(raw)))))
    finally:
        for f in files:
            f.close()
    with open(prefix + ".index", "wb") as f:
        f.write(table_bytes([(b"", header_proto(num_shards))] + entries, block_size))


def openai_gpt2_variables(params: dict) -> dict:
    """The flat {project key: array} of a GPT-2 -> {OpenAI variable name: float32 array},
    conv1d weights as [1, in, out] (gpt-2 src/model.py)."""
    names = {v: k for k, v in GLOBAL_KEYS.items()}
    out = {}
    for key, a in params.items():
        if key in names:
            out[names[key]] = np.asarray(a, "<f4")
            continue
        _, i, rest = key.split(".", 2)
        tf_name = {v: k for k, v in LAYER_KEYS.items()}[rest]
        a = np.asarray(a, "<f4")
        out[f"model/h{i}/{tf_name}"] = a[None] if a.ndim == 2 else a
    return out


def write_openai_checkpoint(directory: str, params: dict, config, tokenizer_dir=None, **kw) -> str:
    """A directory as openai/gpt-2's download_model.py leaves it (model.ckpt.*, checkpoint,
    hparams.json, encoder.json + vocab.bpe copied from tokenizer_dir's vocab.json + merges.txt
    when given; no .meta). params: flat {project key: array}. Returns the directory."""
    import json
    import shutil

    os.makedirs(directory, exist_ok=True)
    write_bundle(os.path.join(directory, "model.ckpt"), openai_gpt2_variables(params), **kw)
    with open(os.path.join(directory, "checkpoint"), "w") as f:
        f.write('model_checkpoint_path: "model.ckpt"\nall_model_checkpoint_paths: "model.ckpt"\n')
    with open(os.path.join(directory, "hparams.json"), "w") as f:
        json.dump({"n_vocab": config.vocab_size, "n_ctx": config.n_ctx, "n_embd": config.n_embd,
                   "n_head": config.n_head, "n_layer": config.n_layer}, f, indent=2)
    if tokenizer_dir:
        shutil.copyfile(os.path.join(tokenizer_dir, "vocab.json"),
                        os.path.join(directory, "encoder.json"))
        shutil.copyfile(os.path.join(tokenizer_dir, "merges.txt"),
                        os.path.join(directory, "vocab.bpe"))
    return directory


def random_flat(config, seed=0) -> dict:
    """{project key: float32 array} of a model of config, every value random (N(0, 0.25);
    LayerNorm gains around 1)."""
    rng = np.random.default_rng(seed)
    gains = ("ln_1.weight", "ln_2.weight", "ln_f.weight")
    return {k: (rng.standard_normal(shape) * 0.5 + (1.0 if k.endswith(gains) else 0.0)).astype(np.float32)
            for k, shape in expected_shapes(config).items()}
