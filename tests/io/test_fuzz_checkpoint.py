"""Fuzzing load(): random corruptions of a real-layout checkpoint and random config.json values.

The guarantee under test: whatever the bytes, load() either works -- and then every weight
is a finite float32 array of the shape the config implies -- or raises exactly one
CheckpointError whose one-line message names the file. Never another exception type, never
a hang (each load runs under a 10 s alarm), never an allocation the file cannot back (a
header claiming a [2**40, 2**40] tensor must be refused from the header alone: tracemalloc's
peak during the load is bounded by a few times the file's size).

The starting point is a small checkpoint in the exact layout of openai-community/gpt2's
model.safetensors (tests/checkpoints.py, "hub": no prefix, F32, h.N.attn.bias mask buffers,
metadata, unaligned data block), 2 layers, n_embd 16.

Examples per test are fixed below: 1,850 in all (300 + 400 + 150 + 200 + 200 + 500 + 100),
~25 s on 2 cores (60 s when they are busy); set NUMPY_GPT2_FUZZ_SCALE=10 for a ten times
longer run (18,500 cases, ~4 min).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import signal
import tempfile
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

import numpy_gpt2
from helpers.timeouts import alarm
from helpers.checkpoints import make_config, write_checkpoint
from numpy_gpt2 import CheckpointError
from numpy_gpt2.io.checkpoint import expected_shapes
from numpy_gpt2.params import flatten_params

SCALE = float(os.environ.get("NUMPY_GPT2_FUZZ_SCALE", "1"))


def examples(n):
    return settings(max_examples=max(1, int(n * SCALE)), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


CONFIG = make_config(n_layer=2, n_head=2, n_embd=16, n_ctx=16, vocab_size=37)


@functools.cache
def pristine():
    """(model.safetensors bytes, config.json dict, {key: float32 array}) of the unharmed file.
    (A cached function, not a fixture, so hypothesis does not print it with every failure.)"""
    with tempfile.TemporaryDirectory() as d:
        write_checkpoint(d, CONFIG, layout="hub", seed=7)
        with open(os.path.join(d, "model.safetensors"), "rb") as f:
            data = f.read()
        with open(os.path.join(d, "config.json")) as f:
            config = json.load(f)
        params, _ = numpy_gpt2.load(d)
    n = int.from_bytes(data[:8], "little")
    assert (8 + n) % 8 != 0  # unaligned data block, as in the hub file
    return data, config, flatten_params(params)


@pytest.fixture(scope="module")
def workdir():
    with tempfile.TemporaryDirectory(prefix="numpy_gpt2_fuzz_") as d:
        yield d


def write(directory, weights: bytes, config) -> None:
    with open(os.path.join(directory, "model.safetensors"), "wb") as f:
        f.write(weights)
    path = os.path.join(directory, "config.json")
    if config is None:
        if os.path.exists(path):
            os.remove(path)
    else:
        with open(path, "wb") as f:
            f.write(config.encode("utf-8") if isinstance(config, str) else config)


def load_or_one_error(directory, weights: bytes, config=None, threads=2):
    """Write the files, load; return the flat params, or None after exactly one CheckpointError.
    Any other exception propagates (and fails the test)."""
    config = json.dumps(config) if isinstance(config, dict) else config
    write(directory, weights, config)
    tracemalloc.start()
    try:
        with alarm(10):
            params, cfg = numpy_gpt2.load(directory, threads=threads)
    except CheckpointError as e:
        message = str(e)
        assert "\n" not in message and len(message) < 2000, message
        assert directory in message, message  # names the file (model.safetensors or config.json)
        # For --hypothesis-show-statistics: which errors the examples reached.
        if currently_in_test_context():
            event("CheckpointError: " + re.sub(r"\d+", "N", message.split(": ", 1)[1])[:45])
        return None
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    # 64 KB of file, ~12 KB of float32 weights: anything near 1 MB would be a runaway allocation.
    assert peak < 4 * len(weights) + 2**20 + 4 * len(config or ""), f"peak allocation {peak} bytes"
    if currently_in_test_context():
        event("loaded")
    flat = flatten_params(params)
    shapes = expected_shapes(cfg)
    assert set(flat) == set(shapes) | ({"lm_head.weight"} if not cfg.tie_word_embeddings else set())
    for key, a in flat.items():
        assert a.dtype == np.float32 and a.flags.c_contiguous and a.flags.aligned, key
        assert a.shape == shapes.get(key, shapes["wte.weight"]), key
        assert np.isfinite(a).all(), key
    return flat


def split(data: bytes):
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + n]), data[8 + n:]


def join(header: dict, body: bytes) -> bytes:
    h = json.dumps(header, separators=(",", ":"), allow_nan=True).encode()
    return len(h).to_bytes(8, "little") + h + body


# JSON values with the edges that break parsers: big and negative integers (int64 and
# uint64 limits), floats that are integers, non-finite floats (Python's json writes NaN and
# Infinity, and reads them back), empty and nested containers, every JSON type.
EDGE_INTS = st.sampled_from([0, 1, 2, 3, 4, 7, 16, 37, 64, 97, 2**31 - 1, 2**31, 2**32,
                             2**40, 2**53 + 1, 2**62, 2**63 - 1, 2**63, 2**64 - 1, 2**64,
                             10**30, -1, -2, -(2**63), -(2**64)])
INTS = st.one_of(EDGE_INTS, st.integers(-(2**70), 2**70), st.integers(0, 200))
FLOATS = st.one_of(st.sampled_from([0.0, -0.0, 1.0, 16.0, 1e-5, 1.5, -1e-5, 1e308, 1e-320,
                                    float("inf"), float("-inf"), float("nan")]),
                   st.floats(allow_nan=True, allow_infinity=True))
STRINGS = st.one_of(st.sampled_from(["", "F32", "F16", "BF16", "F64", "I64", "BOOL", "U8",
                                     "f32", "gelu_new", "gelu", "16", "1e-5", "true", "null",
                                     "gpt2", "\x00", "\u2603" * 3]),
                    st.text(max_size=12))
SCALARS = st.one_of(st.none(), st.booleans(), INTS, FLOATS, STRINGS)
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(STRINGS, inner, max_size=3)), max_leaves=8)


# --- the safetensors file ---------------------------------------------------------------

@examples(300)
@given(data=st.data())
def test_flipped_header_bytes(workdir, data):
    raw = bytearray(pristine()[0])
    n = int.from_bytes(raw[:8], "little")
    for _ in range(data.draw(st.integers(1, 4), label="flips")):
        at = data.draw(st.integers(0, 8 + n - 1), label="byte")
        raw[at] ^= data.draw(st.integers(1, 255), label="xor")
    load_or_one_error(workdir, bytes(raw), pristine()[1])


SHAPES = st.one_of(
    st.lists(INTS, max_size=5),
    st.lists(st.one_of(INTS, FLOATS, st.booleans(), st.lists(INTS, max_size=2)), max_size=4),
    st.sampled_from([[2**40, 2**40], [2**32, 2**32, 2**32], [2**64], [2**63, 2], [-1, -16],
                     [16, 0], [0], [], [16.0], [True, 16], [[16]], [4, 4], [1, 16]]),
    JSON_VALUES)


@examples(400)
@given(data=st.data())
def test_header_fields_replaced(workdir, data):
    """One field of one entry (tensor or buffer) gets a value of the wrong type or range."""
    header, body = split(pristine()[0])
    name = data.draw(st.sampled_from(sorted(header)), label="entry")
    entry = header[name]
    field = data.draw(st.sampled_from(["dtype", "shape", "data_offsets", "entry", "drop", "extra"]),
                      label="field")
    if name == "__metadata__" or field == "entry":
        header[name] = data.draw(JSON_VALUES, label="entry value")
    elif field == "drop":
        del entry[data.draw(st.sampled_from(sorted(entry)), label="dropped")]
    elif field == "extra":
        entry[data.draw(STRINGS, label="extra key")] = data.draw(JSON_VALUES, label="extra value")
    elif field == "dtype":
        entry["dtype"] = data.draw(st.one_of(STRINGS, JSON_VALUES), label="dtype")
    elif field == "shape":
        entry["shape"] = data.draw(SHAPES, label="shape")
    else:
        begin, end = entry["data_offsets"]
        near = st.sampled_from([begin, end, begin - 1, begin + 1, end - 1, end + 1, end + 4,
                                end - 4, len(body), len(body) + 1, 0])
        entry["data_offsets"] = data.draw(st.one_of(
            st.lists(st.one_of(near, INTS), min_size=2, max_size=2),
            st.lists(st.one_of(near, INTS, FLOATS, st.booleans()), max_size=3),
            JSON_VALUES), label="data_offsets")
    load_or_one_error(workdir, join(header, body), pristine()[1])


@examples(150)
@given(data=st.data())
def test_length_prefix_changed(workdir, data):
    raw = pristine()[0]
    n = int.from_bytes(raw[:8], "little")
    new = data.draw(st.one_of(
        st.integers(-64, 64).map(lambda d: n + d), st.integers(0, 2**64 - 1),
        st.sampled_from([0, 1, 2, 8, len(raw) - 8, len(raw), 100_000_000, 100_000_001,
                         2**63, 2**64 - 1])), label="length")
    assume(0 <= new < 2**64 and new != n)
    load_or_one_error(workdir, new.to_bytes(8, "little") + raw[8:], pristine()[1])


@examples(200)
@given(data=st.data())
def test_truncated_anywhere(workdir, data):
    raw = pristine()[0]
    n = int.from_bytes(raw[:8], "little")
    cut = data.draw(st.one_of(st.integers(0, len(raw) - 1), st.integers(0, 8 + n + 1),
                              st.integers(len(raw) - 64, len(raw) - 1)), label="cut")
    assert load_or_one_error(workdir, raw[:cut], pristine()[1]) is None  # nothing is optional


SPECIAL_F32 = st.sampled_from([np.float32(v).tobytes() for v in
                               (np.nan, -np.nan, np.inf, -np.inf, 3.4e38, -3.4e38, 1e-45, 0.0)]
                              + [b"\x01\x00\xc0\x7f", b"\xff\xff\xff\xff", b"\x00\x00\x80\x7f"])


def first_non_finite(header: dict, body: bytes):
    """(key, index, kind) of the first NaN/inf in the weights load() reads, in file order."""
    header = {k: e for k, e in header.items()
              if k != "__metadata__" and not k.endswith(".attn.bias")}  # buffers are never read
    for key, e in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        a = np.frombuffer(body[slice(*e["data_offsets"])], "<f4")
        bad = np.flatnonzero(~np.isfinite(a))
        if bad.size:
            v = a[bad[0]]
            kind = "nan" if np.isnan(v) else ("inf" if v > 0 else "-inf")
            return key, [int(i) for i in np.unravel_index(bad[0], e["shape"])], kind
    return None


@examples(200)
@given(data=st.data())
def test_corrupted_weight_values(workdir, data):
    """Weights overwritten in place (any float32 bits, or NaN/inf/huge/tiny ones): either all
    still finite, and loaded as exactly the file's bits, or the error names the FIRST NaN/inf
    in file order: its key, its index, and what it is -- whichever chunk/thread found it."""
    raw = bytearray(pristine()[0])
    n = int.from_bytes(raw[:8], "little")
    n_values = (len(raw) - 8 - n) // 4
    for _ in range(data.draw(st.integers(1, 4), label="values")):
        at = 8 + n + 4 * data.draw(st.integers(0, n_values - 1), label="element")
        raw[at:at + 4] = data.draw(st.one_of(SPECIAL_F32, st.binary(min_size=4, max_size=4)),
                                   label="bits")
    threads = data.draw(st.sampled_from([1, 2, 3]), label="threads")
    chunk = data.draw(st.sampled_from([1 << 18, 1000, 7]), label="chunk")
    header, body = split(bytes(raw))
    expected = first_non_finite(header, body)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(numpy_gpt2.io.formats.tensor_copy, "CHUNK_ELEMENTS", chunk)
        flat = load_or_one_error(workdir, bytes(raw), pristine()[1], threads=threads)
    if expected is None:
        assert flat is not None
        for key, a in flat.items():  # each array is exactly the file's bytes now
            assert np.array_equal(a.reshape(-1).view("<u4"),
                                  np.frombuffer(body[slice(*header[key]["data_offsets"])], "<u4")), key
    else:
        key, index, kind = expected
        assert flat is None
        with pytest.raises(CheckpointError, match=re.escape(
                f"{key} holds a non-finite value: {kind} at index {index}")):
            numpy_gpt2.load(workdir, threads=threads)


# --- config.json ------------------------------------------------------------------------

# Every field of openai-community/gpt2's config.json, and the ones only other GPT-2
# checkpoints carry.
CONFIG_FIELDS = ["activation_function", "architectures", "attn_pdrop", "bos_token_id",
                 "embd_pdrop", "eos_token_id", "initializer_range", "layer_norm_epsilon",
                 "model_type", "n_ctx", "n_embd", "n_head", "n_inner", "n_layer", "n_positions",
                 "resid_pdrop", "summary_activation", "summary_first_dropout",
                 "summary_proj_to_labels", "summary_type", "summary_use_proj",
                 "task_specific_params", "vocab_size", "tie_word_embeddings",
                 "scale_attn_weights", "scale_attn_by_inverse_layer_idx",
                 "reorder_and_upcast_attn", "add_cross_attention", "use_cache", "torch_dtype",
                 "transformers_version", "bias"]
# Values that are right for this checkpoint, so some examples load.
GOOD = st.sampled_from([None, True, False, 0, 1, 2, 4, 8, 16, 36, 37, 64, 1e-5, 1e-12, 0.5,
                        "gelu_new", "gelu_pytorch_tanh", "gpt2", "float32"])


@examples(500)
@given(data=st.data())
def test_config_fields_random_values(workdir, data):
    config = dict(pristine()[1])
    fields = data.draw(st.lists(st.sampled_from(CONFIG_FIELDS), min_size=1, max_size=3,
                                unique=True), label="fields")
    for field in fields:
        if data.draw(st.integers(0, 9), label="drop?") == 0:
            config.pop(field, None)
        else:
            config[field] = data.draw(st.one_of(GOOD, JSON_VALUES), label=field)
    flat = load_or_one_error(workdir, pristine()[0], config)
    if flat is not None:  # the weights are the file's, whatever the config said
        assert all(np.array_equal(flat[k], pristine()[2][k]) for k in pristine()[2])


@examples(100)
@given(text=st.one_of(JSON_VALUES.map(lambda v: json.dumps(v, allow_nan=True)), st.text(max_size=50),
                      st.binary(max_size=50),
                      st.sampled_from(["[" * 100_000, '{"n_layer": ' + "9" * 5000 + "}", "\ufeff{}",
                                       "", "null", "{}", '{"n_layer": 2, "n_layer": "2"}'])))
def test_config_json_not_an_object(workdir, text):
    assert load_or_one_error(workdir, pristine()[0], text) is None  # n_layer etc. are required


def test_lying_shape_is_refused_before_any_allocation(workdir):
    """[2**40, 2**40] float32 is 4 * 2**80 bytes; int64 arithmetic (np.prod) would overflow
    to 0 and agree with a 0-byte span. Python ints do not."""
    header, body = split(pristine()[0])
    for shape, span in [([2**40, 2**40], 0), ([2**32, 2**32, 2**32], 0), ([2**62, 4], 0),
                        ([2**40, 2**40], 64)]:
        h = json.loads(json.dumps(header))
        h["wte.weight"]["shape"] = shape
        begin = h["wte.weight"]["data_offsets"][0]
        h["wte.weight"]["data_offsets"] = [begin, begin + span]
        assert load_or_one_error(workdir, join(h, body), pristine()[1]) is None
        with pytest.raises(CheckpointError, match=rf"wte\.weight: header says F32 \[{shape[0]}, "):
            numpy_gpt2.load(workdir)
