"""Fuzzing the other formats: flipped bytes and truncations of a pytorch_model.bin (zip and
legacy layouts), a nanoGPT ckpt.pt, an llm.c .bin, a sharded checkpoint's index and OpenAI's
TensorFlow checkpoint (its .index, also with valid block checksums, and its data file).

As for safetensors (test_fuzz_checkpoint.py): load() either works -- and then every weight
is a finite float32 array of the shape the config implies -- or raises exactly one
CheckpointError whose one-line message names a file of the checkpoint. Never another
exception, never a hang (10 s alarm per load), never an allocation the file cannot back
(tracemalloc peak < 4x the file + 1 MB).

Examples: 1,740 in all (6 files x 2 mutations x 100, + 100 archived-pickle flips, + 100
index edits, + 2 TensorFlow files x 2 mutations x 60, + 100 index flips with valid
checksums), ~50 s on 2 busy cores; NUMPY_GPT2_FUZZ_SCALE=10 runs ten times as many.
"""

from __future__ import annotations

import functools
import io
import json
import os
import shutil
import tempfile
import tracemalloc
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

import numpy_gpt2
from helpers.format_files import hf_model, llmc_bytes, nanogpt_checkpoint, save_torch, small
from helpers.tf_bundle import random_flat, write_openai_checkpoint
from numpy_gpt2 import CheckpointError
from numpy_gpt2.io.checkpoint import expected_shapes
from numpy_gpt2.io.formats.tf_table import block_entries, block_handle, crc32c, mask
from numpy_gpt2.params import flatten_params
from helpers.timeouts import alarm

SCALE = float(os.environ.get("NUMPY_GPT2_FUZZ_SCALE", "1"))
FILES = ["zip.bin", "legacy.bin", "ckpt.pt", "legacy-ckpt.pt", "llmc.bin", "shard.safetensors"]


def examples(n):
    return settings(max_examples=max(1, int(n * SCALE)), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


@functools.cache
def pristine() -> dict:
    """{name: (file bytes, file name in the checkpoint directory, config.json text or None)}."""
    config, sd = small(n_layer=2, n_head=2, n_embd=16, n_ctx=16, vocab_size=37, seed=3)
    model = hf_model(config, sd)
    out = {}
    with tempfile.TemporaryDirectory() as d:
        config_json = config.to_json_string()
        save_torch(os.path.join(d, "a"), model.state_dict())
        save_torch(os.path.join(d, "b"), model.state_dict(), zip_layout=False)
        save_torch(os.path.join(d, "c"), nanogpt_checkpoint(sd, 2, 16, 37))
        save_torch(os.path.join(d, "e"), nanogpt_checkpoint(sd, 2, 16, 37), zip_layout=False)
        model.save_pretrained(os.path.join(d, "s"), max_shard_size="8KB")
        for name, src, target, cfg in [("zip.bin", "a", "pytorch_model.bin", config_json),
                                       ("legacy.bin", "b", "pytorch_model.bin", config_json),
                                       ("ckpt.pt", "c", "ckpt.pt", None),
                                       ("legacy-ckpt.pt", "e", "ckpt.pt", None)]:
            with open(os.path.join(d, src), "rb") as f:
                out[name] = (f.read(), target, cfg)
        with open(os.path.join(d, "s", "model.safetensors.index.json")) as f:
            index = json.load(f)
        out["index"] = index
        out["shards"] = {}
        for shard in set(index["weight_map"].values()):
            with open(os.path.join(d, "s", shard), "rb") as f:
                out["shards"][shard] = f.read()
    out["llmc.bin"] = (llmc_bytes(sd, 2, 37, 16), "gpt2.bin", None)
    first = sorted(out["shards"])[0]
    out["shard.safetensors"] = (out["shards"][first], first, config_json)
    return out


@pytest.fixture(scope="module")
def workdir():
    with tempfile.TemporaryDirectory(prefix="numpy_gpt2_fuzz_formats_") as d:
        yield d


def fresh(workdir, name):
    directory = os.path.join(workdir, name)
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory)
    files = pristine()
    if name == "shard.safetensors" or name == "index":
        for shard, data in files["shards"].items():
            with open(os.path.join(directory, shard), "wb") as f:
                f.write(data)
        with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
            json.dump(files["index"], f)
        with open(os.path.join(directory, "config.json"), "w") as f:
            f.write(files["zip.bin"][2])
    return directory


def load_or_one_error(directory, size):
    tracemalloc.start()
    try:
        with alarm(10):
            params, cfg = numpy_gpt2.load(directory, threads=2)
    except CheckpointError as e:
        message = str(e)
        assert "\n" not in message and len(message) < 2000, message
        assert os.path.dirname(directory) in message, message
        if currently_in_test_context():
            event("CheckpointError: " + message.split(": ", 1)[1][:40])
        return None
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < 4 * size + 2**20, f"peak allocation {peak} bytes"
    if currently_in_test_context():
        event("loaded")
    shapes = expected_shapes(cfg)
    for key, a in flatten_params(params).items():
        assert a.dtype == np.float32 and a.flags.c_contiguous, key
        assert a.shape == shapes[key], key
        assert np.isfinite(a).all(), key
    return params


def write_mutated(workdir, name, data: bytes) -> str:
    _, target, config = pristine()[name]
    directory = fresh(workdir, name)
    with open(os.path.join(directory, target), "wb") as f:
        f.write(data)
    if config is not None and name != "shard.safetensors":
        with open(os.path.join(directory, "config.json"), "w") as f:
            f.write(config)
    return os.path.join(directory, target) if target.endswith("gpt2.bin") else directory


@pytest.mark.parametrize("name", FILES)
def test_pristine_files_load(workdir, name):
    data = pristine()[name][0]
    assert load_or_one_error(write_mutated(workdir, name, data), len(data)) is not None


@pytest.mark.parametrize("name", FILES)
@examples(100)
@given(data=st.data())
def test_flipped_bytes(workdir, name, data):
    raw = bytearray(pristine()[name][0])
    n = data.draw(st.integers(1, 8), label="flips")
    # Half the flips land in the first 2 kB: the pickle / header / zip directory live there
    # (and at the end: the zip central directory); the rest anywhere.
    for _ in range(n):
        where = data.draw(st.one_of(st.integers(0, min(2047, len(raw) - 1)),
                                    st.integers(max(0, len(raw) - 1024), len(raw) - 1),
                                    st.integers(0, len(raw) - 1)), label="at")
        raw[where] ^= data.draw(st.integers(1, 255), label="xor")
    load_or_one_error(write_mutated(workdir, name, bytes(raw)), len(raw))


@pytest.mark.parametrize("name", FILES)
@examples(100)
@given(data=st.data())
def test_truncated(workdir, name, data):
    raw = pristine()[name][0]
    cut = data.draw(st.integers(0, len(raw) - 1), label="cut")
    load_or_one_error(write_mutated(workdir, name, raw[:cut]), cut)


@examples(100)
@given(data=st.data())
def test_flipped_bytes_in_the_archived_pickle(workdir, data):
    """data.pkl mutated and archived again (with a right CRC): the pickle interpreter and
    the state dict checks see the damage, not the CRC check."""
    raw = pristine()["zip.bin"][0]
    with zipfile.ZipFile(io.BytesIO(raw)) as z:
        entries = {i.filename: z.read(i) for i in z.infolist()}
    name = next(n for n in entries if n.endswith("/data.pkl"))
    pkl = bytearray(entries[name])
    for _ in range(data.draw(st.integers(1, 4), label="flips")):
        pkl[data.draw(st.integers(0, len(pkl) - 1), label="at")] ^= data.draw(st.integers(1, 255))
    if data.draw(st.booleans(), label="truncate"):
        pkl = pkl[:data.draw(st.integers(0, len(pkl)), label="cut")]
    entries[name] = bytes(pkl)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for n, content in entries.items():
            z.writestr(n, content)
    load_or_one_error(write_mutated(workdir, "zip.bin", buf.getvalue()), len(buf.getvalue()))


@examples(100)
@given(edit=st.sampled_from(["drop", "move", "add", "rename", "junk"]), data=st.data())
def test_index_edits(workdir, edit, data):
    index = json.loads(json.dumps(pristine()["index"]))
    weight_map = index["weight_map"]
    names, shards = sorted(weight_map), sorted(set(weight_map.values()))
    key = data.draw(st.sampled_from(names), label="key")
    if edit == "drop":
        del weight_map[key]
    elif edit == "move":
        weight_map[key] = data.draw(st.sampled_from(shards), label="to")
    elif edit == "add":
        weight_map[data.draw(st.text(max_size=20), label="new")] = data.draw(st.sampled_from(shards))
    elif edit == "rename":
        weight_map[key] = data.draw(st.text(max_size=30), label="shard")
    directory = fresh(workdir, "index")
    path = os.path.join(directory, "model.safetensors.index.json")
    text = json.dumps(index)
    if edit == "junk":
        cut = data.draw(st.integers(0, len(text)), label="cut")
        text = text[:cut] + data.draw(st.text(max_size=5), label="junk") + text[cut:]
    with open(path, "w", encoding="utf-8", errors="surrogatepass") as f:
        f.write(text)
    load_or_one_error(directory, 1 << 16)


# ---- OpenAI's TensorFlow checkpoint (numpy_gpt2.io.formats.openai_tf) --------------------

TF_DATA = "model.ckpt.data-00000-of-00001"


@functools.cache
def tf_pristine() -> dict:
    """{file name: bytes} of a small model's checkpoint directory."""
    config = numpy_gpt2.GPT2Config(n_layer=2, n_head=2, n_embd=16, n_ctx=16, vocab_size=37)
    with tempfile.TemporaryDirectory() as d:
        write_openai_checkpoint(d, random_flat(config, 5), config)
        return {name: open(os.path.join(d, name), "rb").read() for name in os.listdir(d)}


def tf_mutated(tmp_path_factory, name, raw):
    d = tmp_path_factory.mktemp("fuzz")
    for n, content in tf_pristine().items():
        (d / n).write_bytes(raw if n == name else content)
    return str(d)


@pytest.mark.parametrize("name", ["model.ckpt.index", TF_DATA])
@examples(60)
@given(data=st.data())
def test_tf_flipped_bytes(tmp_path_factory, name, data):
    raw = bytearray(tf_pristine()[name])
    for _ in range(data.draw(st.integers(1, 6), label="flips")):
        where = data.draw(st.integers(0, len(raw) - 1), label="at")
        raw[where] ^= data.draw(st.integers(1, 255), label="xor")
    d = tf_mutated(tmp_path_factory, name, bytes(raw))
    params = load_or_one_error(d, len(raw))
    if name == TF_DATA and bytes(raw) != tf_pristine()[name]:  # every data byte is in a crc32c
        assert params is None
    shutil.rmtree(d)


@pytest.mark.parametrize("name", ["model.ckpt.index", TF_DATA])
@examples(60)
@given(data=st.data())
def test_tf_truncated(tmp_path_factory, name, data):
    raw = tf_pristine()[name]
    cut = data.draw(st.integers(0, len(raw) - 1), label="cut")
    d = tf_mutated(tmp_path_factory, name, raw[:cut])
    assert load_or_one_error(d, cut) is None
    shutil.rmtree(d)


def tf_block_spans(raw: bytes) -> list[tuple[int, int]]:
    """(offset, size) of every block of a pristine index: data blocks, metaindex, index."""
    footer = raw[-48:]
    metaindex, pos = block_handle(footer, 0, 40)
    index, _ = block_handle(footer, pos, 40)
    entries = block_entries(raw[index[0]:index[0] + index[1]], "index block", "")
    return [block_handle(v, 0, len(v))[0] for _, v in entries] + [metaindex, index]


@examples(100)
@given(data=st.data())
def test_tf_index_with_valid_checksums(tmp_path_factory, data):
    """Flipped bytes inside the index's blocks whose trailers are then recomputed: the
    parser (entries, restarts, protobufs, handles, names, shapes, offsets) sees the damage."""
    raw = bytearray(tf_pristine()["model.ckpt.index"])
    spans = tf_block_spans(bytes(raw))
    for _ in range(data.draw(st.integers(1, 4), label="flips")):
        offset, size = data.draw(st.sampled_from(spans), label="block")
        where = offset + data.draw(st.integers(0, size - 1), label="at")
        raw[where] ^= data.draw(st.integers(1, 255), label="xor")
    for offset, size in spans:
        raw[offset + size + 1:offset + size + 5] = mask(crc32c(bytes(raw[offset:offset + size + 1]))
                                                        ).to_bytes(4, "little")
    d = tf_mutated(tmp_path_factory, "model.ckpt.index", bytes(raw))
    load_or_one_error(d, len(raw) + len(tf_pristine()[TF_DATA]))
    shutil.rmtree(d)
