"""Loading checkpoints: the 124M hub file's exact layout, every layout and file dtype giving
the same weights, config from config.json or inferred, memory use, and a clear error for
every bad input (the exception type AND a message naming the file/key/shape/dtype)."""

from __future__ import annotations

import json
import math
import os
import pathlib
import re
import shutil
import tempfile
import tracemalloc

import numpy as np
import pytest
import torch
import transformers

import numpy_gpt2
from helpers.checkpoints import (checkpoint_tensors, make_config, random_state_dict, reference_model,
                                 write_checkpoint, write_safetensors)
from numpy_gpt2 import CheckpointError
from numpy_gpt2.io.checkpoint import expected_shapes
from numpy_gpt2.io.formats.tensor_copy import _convert
from numpy_gpt2.params import flatten_params, nest_params
from numpy_gpt2.config import GPT2Config, infer_config

# The published sizes: (n_layer, n_head, n_embd) and the data bytes of their hub files
# (../shared/gpt2-checkpoint-layout.md).
SIZES = {
    "gpt2": (12, 12, 768, 548_090_880),
    "gpt2-medium": (24, 16, 1024, 1_519_955_968),
    "gpt2-large": (36, 20, 1280, 3_247_115_264),
    "gpt2-xl": (48, 25, 1600, 6_431_771_392),
    "distilgpt2": (6, 12, 768, 352_816_128),
}
HUB_DATA_BYTES = 548_090_880  # the real gpt2 file: 8 + 14,283 header bytes + these


# --- writing files byte by byte ------------------------------------------------------------

def write_raw(path, tensors: dict, metadata=None, header_bytes=None, edit=None):
    """Write numpy arrays (or (dtype name, shape, raw bytes) triples) as safetensors.

    header_bytes: pad the JSON header with spaces to exactly this length (the hub's gpt2 file
    is unpadded: 14,283 bytes, so its data block starts at the unaligned byte 14,291).
    edit: optional function(header dict) -> None to corrupt the header before writing.
    """
    names = {np.dtype("<f4"): "F32", np.dtype("<f2"): "F16", np.dtype("<f8"): "F64",
             np.dtype("<i8"): "I64"}
    header, blobs, offset = {}, [], 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, a in tensors.items():
        dtype, shape, raw = (names[a.dtype], list(a.shape), a.tobytes()) if isinstance(a, np.ndarray) else a
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    if edit:
        edit(header)
    h = json.dumps(header, separators=(",", ":")).encode()
    if header_bytes is not None:
        assert len(h) <= header_bytes
        h += b" " * (header_bytes - len(h))
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little"))
        f.write(h)
        for raw in blobs:
            f.write(raw)
    return path


def small_tensors(config=None, layout="hub", seed=0):
    """The tensors of a small checkpoint as numpy float32 arrays (checkpoint key -> array)."""
    config = config or make_config()
    return {k: v.numpy() for k, v in checkpoint_tensors(random_state_dict(config, seed), config,
                                                        layout).items()}


def small_dir(tmp_path, tensors=None, config=None, with_config=True, **kw):
    """tmp_path/model.safetensors (+ config.json) from small_tensors; returns the file path."""
    config = config or make_config()
    if with_config:
        config.save_pretrained(tmp_path)
    return write_raw(tmp_path / "model.safetensors", small_tensors(config) if tensors is None
                     else tensors, metadata={"format": "pt"}, **kw)


def raises(match_parts, exc=CheckpointError):
    """pytest.raises whose message must contain every part, in order (each regex-escaped)."""
    return pytest.raises(exc, match=".*".join(re.escape(str(p)) for p in match_parts))


# --- the 124M-shaped hub file ---------------------------------------------------------------

def hub_124m_header_order():
    """Key order of the hub file: sorted by name like safetensors' own writer."""
    cfg = GPT2Config(n_layer=12, n_head=12, n_embd=768)
    shapes = expected_shapes(cfg)
    for i in range(12):
        shapes[f"h.{i}.attn.bias"] = (1, 1, 1024, 1024)
    return dict(sorted(shapes.items()))


def is_mask(key):
    return re.fullmatch(r"h\.\d+\.attn\.bias", key) is not None


def pattern(index, shape):
    """A cheap array that identifies its key (index) and the position of each value."""
    a = np.full(shape, float(index), dtype=np.float32)
    flat = a.reshape(-1)
    flat[:1000] = index + np.arange(min(1000, flat.size), dtype=np.float32) / 1024
    return a


@pytest.fixture(scope="session")
def hub_124m():
    """A 124M-shaped model.safetensors with the hub file's exact layout: same keys, shapes,
    F32, 12 lower-triangular h.N.attn.bias buffers, metadata, unpadded header (the real one
    is 14,283 bytes: its data starts at the unaligned byte 14,291). ~548 MB, written once per session and deleted after.
    Yields (directory with config.json, directory without it, {key: pattern index})."""
    top = tempfile.mkdtemp(prefix="numpy_gpt2_hub124m_")
    try:
        with_cfg, without = os.path.join(top, "gpt2"), os.path.join(top, "no-config")
        os.makedirs(with_cfg)
        os.makedirs(without)
        shapes = hub_124m_header_order()
        index = {k: i for i, k in enumerate(shapes) if not is_mask(k)}
        tril = np.tril(np.ones((1024, 1024), np.float32)).reshape(1, 1, 1024, 1024)
        # Write tensor data one array at a time to keep the fixture's memory small.
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for k, s in shapes.items():
            n = math.prod(s) * 4
            header[k] = {"dtype": "F32", "shape": list(s), "data_offsets": [offset, offset + n]}
            offset += n
        h = json.dumps(header, separators=(",", ":")).encode()
        if (8 + len(h)) % 8 == 0:  # keep the data block unaligned, like the real file's (14,291)
            h += b" "
        path = os.path.join(with_cfg, "model.safetensors")
        with open(path, "wb") as f:
            f.write(len(h).to_bytes(8, "little"))
            f.write(h)
            for k, s in shapes.items():
                f.write((tril if is_mask(k) else pattern(index[k], s)).tobytes())
        os.link(path, os.path.join(without, "model.safetensors"))  # same bytes, no config.json
        make_config(n_layer=12, n_head=12, n_embd=768, n_ctx=1024,
                    vocab_size=50257).save_pretrained(with_cfg)
        yield pathlib.Path(with_cfg), pathlib.Path(without), index
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_hub_124m_file_has_the_real_files_layout(hub_124m):
    path = hub_124m[0] / "model.safetensors"
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    assert abs(n - 14_283) < 100  # the real header's size, give or take key order
    assert os.path.getsize(path) == 8 + n + HUB_DATA_BYTES
    assert (8 + n) % 8 != 0  # data block not aligned, like the real file's
    assert header.pop("__metadata__") == {"format": "pt"}
    assert len(header) == 160 and {e["dtype"] for e in header.values()} == {"F32"}
    assert sum(math.prod(e["shape"]) for e in header.values()) == 137_022_720
    assert not any(k.startswith("transformer.") or k == "lm_head.weight" for k in header)


def test_load_hub_124m_keys_buffers_and_values(hub_124m):
    directory, _, index = hub_124m
    params, config = numpy_gpt2.load(directory)
    assert (config.n_layer, config.n_head, config.n_embd, config.n_ctx, config.vocab_size) == \
        (12, 12, 768, 1024, 50257)
    assert config.layer_norm_epsilon == 1e-5 and config.head_size == 64
    # The nest mirrors the checkpoint keys exactly; the mask buffers are gone.
    assert set(params) == {"wte", "wpe", "h", "ln_f"} and len(params["h"]) == 12
    for block in params["h"]:
        assert set(block) == {"ln_1", "attn", "ln_2", "mlp"}
        assert set(block["attn"]) == {"c_attn", "c_proj"}  # no "bias" / "masked_bias" buffers
        assert set(block["mlp"]) == {"c_fc", "c_proj"}
    flat = flatten_params(params)
    assert set(flat) == set(index)
    assert sum(a.size for a in flat.values()) == 124_439_808
    for key, i in index.items():  # every array is the one stored under its key, in place
        a = flat[key]
        assert a.dtype == np.float32 and a.flags.c_contiguous
        assert a.shape == expected_shapes(config)[key]
        assert np.array_equal(a, pattern(i, a.shape)), key
    assert params["h"][3]["attn"]["c_attn"]["weight"] is flat["h.3.attn.c_attn.weight"]


def test_load_hub_124m_without_config_infers_gpt2(hub_124m):
    _, no_config, index = hub_124m
    with pytest.warns(UserWarning, match=r"no config\.json.*n_head=12.*gpt2 shape"):
        params, config = numpy_gpt2.load(str(no_config / "model.safetensors"))
    assert (config.n_layer, config.n_head, config.n_embd, config.n_ctx, config.vocab_size) == \
        (12, 12, 768, 1024, 50257)
    assert config.activation_function == "gelu_new" and config.layer_norm_epsilon == 1e-5


def test_loading_f32_keeps_one_copy_of_the_weights(hub_124m):
    """gpt2-xl is 6.4 GB: loading must read each tensor straight into its final array, so the
    peak NumPy allocation is the weights themselves (1.0x), not weights + a second copy (2x).
    The mask buffers (48 MB here) must not be allocated at all."""
    weight_bytes = 124_439_808 * 4
    tracemalloc.start()
    try:
        params, _ = numpy_gpt2.load(hub_124m[0])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del params
    print(f"\nF32 -> float32: peak {peak / weight_bytes:.4f}x the weight bytes")
    assert weight_bytes <= peak <= 1.01 * weight_bytes


def test_loading_f16_keeps_at_most_one_extra_tensor(tmp_path):
    config = make_config(n_layer=2, n_head=4, n_embd=256, n_ctx=256, vocab_size=5000)
    for file_dtype, dtype in [(torch.float16, np.float32), (torch.bfloat16, np.float32),
                              (torch.bfloat16, np.float64), (torch.float32, np.float64)]:
        d = tmp_path / str(file_dtype)
        write_checkpoint(d, config, layout="hub", dtype=file_dtype)
        shapes = expected_shapes(GPT2Config(n_layer=2, n_head=4, n_embd=256, n_ctx=256,
                                            vocab_size=5000))
        out_bytes = sum(math.prod(s) for s in shapes.values()) * np.dtype(dtype).itemsize
        largest = max(math.prod(s) for s in shapes.values())  # elements of wte
        tracemalloc.start()
        try:
            params, _ = numpy_gpt2.load(d, dtype=dtype)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        del params
        # The one tensor being converted: its stored bytes (2 or 4) + a uint32 widening for BF16.
        extra = largest * (6 if file_dtype == torch.bfloat16 else file_dtype.itemsize)
        print(f"\n{file_dtype} -> {np.dtype(dtype)}: peak {peak / out_bytes:.3f}x the weights, "
              f"allowed 1.0x + {extra / out_bytes:.3f}x")
        assert peak <= 1.01 * out_bytes + extra


# --- all layouts and file dtypes give the same weights --------------------------------------

def test_layouts_and_file_dtypes_load_identical_weights(tmp_path):
    config = make_config(n_layer=2, n_head=4, n_embd=32, n_ctx=48, vocab_size=101)
    sd = random_state_dict(config, seed=3)
    rounded = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
    for name, tdtype in rounded.items():
        expected = {k: v.to(tdtype).to(torch.float64).numpy() for k, v in sd.items()}
        for layout in ("hub", "save_pretrained", "variant"):
            d = tmp_path / f"{layout}-{name}"
            write_checkpoint(d, config, layout=layout, dtype=tdtype, seed=3)
            for dtype in (np.float32, np.float64):
                params, cfg = numpy_gpt2.load(d, dtype=dtype)
                flat = flatten_params(params)
                assert set(flat) == set(expected), (layout, name)  # prefix, buffers, lm_head gone
                for k, want in expected.items():
                    assert flat[k].dtype == dtype
                    # F16/BF16 values are exact in float32: every layout gives the same bits.
                    assert np.array_equal(flat[k], want.astype(dtype)), (layout, name, dtype, k)


@pytest.mark.parametrize("tdtype", [torch.float16, torch.bfloat16, torch.float32])
def test_files_written_by_transformers_and_safetensors_themselves(tmp_path, tdtype):
    """Not only our hand-written files: save_pretrained() of a half/bfloat16 model, and the
    safetensors library's own writer (aligned header) with the hub layout."""
    import safetensors.torch
    config = make_config(n_layer=2, n_head=4, n_embd=32, n_ctx=48, vocab_size=101)
    sd = random_state_dict(config, seed=5)
    expected = {k: v.to(tdtype).to(torch.float32).numpy() for k, v in sd.items()}
    model = transformers.GPT2LMHeadModel(config)
    model.transformer.load_state_dict(sd, strict=False)
    model.to(tdtype).save_pretrained(tmp_path / "hf", safe_serialization=True)
    (tmp_path / "lib").mkdir()
    safetensors.torch.save_file(checkpoint_tensors(sd, config, "hub", tdtype),
                                tmp_path / "lib" / "model.safetensors", metadata={"format": "pt"})
    config.save_pretrained(tmp_path / "lib")
    for source in (tmp_path / "hf", tmp_path / "lib" / "model.safetensors"):
        params, cfg = numpy_gpt2.load(source)
        flat = flatten_params(params)
        assert set(flat) == set(expected)
        assert all(np.array_equal(flat[k], expected[k]) for k in expected), source


def test_bf16_is_widened_bit_exactly(tmp_path):
    # BF16 is the top 16 bits of a float32: signs, tiny, subnormal and huge values survive
    # a load bit for bit; inf and NaN survive the widening itself (load then rejects them).
    values = torch.tensor([0.0, -0.0, 1.0, -2.5, 3.0e38, -1.0e-38, 1e-40, -3.3e38, 0.1,
                           65504.0, 7.0e4, -1e-45], dtype=torch.float32)
    config = make_config(n_layer=1, n_head=1, n_embd=12, n_ctx=4, vocab_size=3)
    tensors = small_tensors(config)
    tensors["wte.weight"] = ("BF16", [3, 12], values.to(torch.bfloat16).repeat(3).view(
        torch.int16).numpy().tobytes())
    small_dir(tmp_path, tensors, config)
    params, _ = numpy_gpt2.load(tmp_path)
    want = values.to(torch.bfloat16).to(torch.float32).repeat(3).view(3, 12).numpy()
    assert np.array_equal(params["wte"]["weight"].view(np.uint32), want.view(np.uint32))
    special = torch.tensor([float("inf"), float("-inf"), float("nan"), -0.0]).to(torch.bfloat16)
    out = np.empty(4, np.float32)
    _convert(special.view(torch.int16).numpy().view("<u2"), "BF16", out)
    assert np.array_equal(out.view(np.uint32), special.to(torch.float32).numpy().view(np.uint32))


def test_f64_file_and_pathlib_and_file_path(tmp_path):
    config = make_config()
    tensors = {k: v.astype(np.float64) for k, v in small_tensors(config).items()}
    path = small_dir(tmp_path, tensors, config)
    for source in (tmp_path, str(tmp_path), path, str(path)):
        params, cfg = numpy_gpt2.load(source, dtype=np.float64)
        assert np.array_equal(params["h"][1]["mlp"]["c_fc"]["weight"], tensors["h.1.mlp.c_fc.weight"])
    p32, _ = numpy_gpt2.load(path, dtype=np.float32)
    assert np.array_equal(p32["wte"]["weight"], tensors["wte.weight"].astype(np.float32))


def test_nest_and_flatten_are_inverse():
    flat = {f"h.{i}.ln_1.weight": np.full(2, i) for i in range(12)} | {"wte.weight": np.zeros(1)}
    nested = nest_params(flat)
    assert [b["ln_1"]["weight"][0] for b in nested["h"]] == list(range(12))  # h.10 after h.9
    back = flatten_params(nested)
    assert set(back) == set(flat) and all(back[k] is flat[k] for k in flat)


def test_expected_shapes_match_the_published_file_sizes():
    for name, (n_layer, n_head, n_embd, data_bytes) in SIZES.items():
        shapes = expected_shapes(GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd))
        buffers = n_layer * 1024 * 1024
        assert (sum(math.prod(s) for s in shapes.values()) + buffers) * 4 == data_bytes, name


# --- non-finite weights -------------------------------------------------------------------

BAD_KEY, BAD_INDEX = "h.1.mlp.c_fc.weight", (17, 101)  # [32, 128] in the small config


def file_with_bad_value(directory, file_dtype, value, layout="hub", config=None):
    """A checkpoint (written by tests/checkpoints.py) whose h.1.mlp.c_fc.weight[17, 101] is value."""
    config = config or make_config()
    sd = {k: v.to(torch.float64) for k, v in random_state_dict(config, seed=1).items()}
    sd[BAD_KEY][BAD_INDEX] = value
    tensors = checkpoint_tensors(sd, config, layout, file_dtype)
    write_safetensors(os.path.join(directory, "model.safetensors"), tensors,
                      metadata={"format": "pt"}, align=layout != "hub")
    config.save_pretrained(directory)
    return pathlib.Path(directory) / "model.safetensors"


@pytest.mark.parametrize("file_dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("value,kind", [(float("nan"), "nan"), (float("inf"), "inf"),
                                        (float("-inf"), "-inf")])
def test_non_finite_weight_is_rejected_with_key_and_index(tmp_path, file_dtype, value, kind):
    prefix = "transformer." if file_dtype == torch.float16 else ""  # also through the prefix
    path = file_with_bad_value(tmp_path, file_dtype, value,
                               layout="variant" if prefix else "hub")
    for dtype in (np.float32, np.float64):
        with raises([path, f"{prefix}{BAD_KEY} holds a non-finite value: {kind} at index [17, 101]",
                     f"flat index {17 * 128 + 101}", "every weight must be finite"]):
            numpy_gpt2.load(tmp_path, dtype=dtype)


def test_f64_value_too_large_for_float32(tmp_path):
    path = file_with_bad_value(tmp_path, torch.float64, 1e300)
    with raises([path, f"{BAD_KEY} holds a non-finite value: inf at index [17, 101]",
                 "the file holds F64 1e+300, too large for float32"]):
        numpy_gpt2.load(tmp_path)
    params, _ = numpy_gpt2.load(tmp_path, dtype=np.float64)  # fine in float64
    assert params["h"][1]["mlp"]["c_fc"]["weight"][BAD_INDEX] == 1e300


def test_first_non_finite_in_file_order_whatever_the_chunks_and_threads(tmp_path, monkeypatch):
    config = make_config()
    sd = random_state_dict(config, seed=2)
    sd["h.1.mlp.c_fc.weight"][20, 5] = float("inf")
    sd["h.1.mlp.c_fc.weight"][3, 7] = float("nan")  # the first in this tensor
    sd["ln_f.bias"][0] = float("nan")  # a later tensor in the file
    write_safetensors(tmp_path / "model.safetensors", checkpoint_tensors(sd, config, "hub"),
                      metadata={"format": "pt"}, align=False)
    config.save_pretrained(tmp_path)
    for chunk in (7, 100, 1 << 18):
        monkeypatch.setattr(numpy_gpt2.io.formats.tensor_copy, "CHUNK_ELEMENTS", chunk)
        for threads in (1, 2, 5):
            with raises([f"{BAD_KEY} holds a non-finite value: nan at index [3, 7]"]):
                numpy_gpt2.load(tmp_path, threads=threads)


def test_huge_finite_weights_load(tmp_path, monkeypatch):
    """A sum over float32 3e38s overflows to inf: the chunk is then checked value by value
    and loads (the check must not reject finite weights)."""
    config = make_config()
    tensors = small_tensors(config)
    tensors["wte.weight"] = np.full((97, 32), 3e38, np.float32)
    tensors["wte.weight"][::2] *= -1
    small_dir(tmp_path, tensors, config)
    monkeypatch.setattr(numpy_gpt2.io.formats.tensor_copy, "CHUNK_ELEMENTS", 1000)
    params, _ = numpy_gpt2.load(tmp_path)
    assert np.array_equal(params["wte"]["weight"], tensors["wte.weight"])


@pytest.mark.parametrize("file_dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_chunks_and_threads_give_the_same_arrays(tmp_path, monkeypatch, file_dtype):
    """The copy is cut into chunks taken by alternating threads; any cut gives the same bits
    as the safetensors library reading the same file (torch for BF16, which NumPy lacks)."""
    import safetensors.torch
    config = make_config(n_layer=2, n_head=4, n_embd=32, n_ctx=48, vocab_size=101)
    write_checkpoint(tmp_path, config, layout="hub", dtype=file_dtype, seed=4)
    want = {k: v.to(torch.float64).numpy() for k, v in
            safetensors.torch.load_file(tmp_path / "model.safetensors").items()
            if not k.endswith(".attn.bias")}
    for chunk, threads in [(1 << 18, 1), (1 << 18, 2), (5, 3), (1000, 2), (4096, 8)]:
        monkeypatch.setattr(numpy_gpt2.io.formats.tensor_copy, "CHUNK_ELEMENTS", chunk)
        for dtype in (np.float32, np.float64):
            flat = flatten_params(numpy_gpt2.load(tmp_path, dtype=dtype, threads=threads)[0])
            assert set(flat) == set(want)
            for k, a in flat.items():
                assert a.dtype == dtype and a.flags.c_contiguous and a.flags.aligned and a.flags.writeable
                assert np.array_equal(a, want[k].astype(dtype)), (chunk, threads, k)


def test_bad_threads(tmp_path):
    small_dir(tmp_path)
    for bad in (0, -1, 1.5, "2", True):
        with raises(["threads must be a positive integer"], ValueError):
            numpy_gpt2.load(tmp_path, threads=bad)


# --- config ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", SIZES)
def test_infer_config_names_each_published_size(name):
    n_layer, n_head, n_embd, _ = SIZES[name]
    with pytest.warns(UserWarning, match=rf"no config\.json.*n_head={n_head} \(the {name} shape\)"):
        config = infer_config(n_layer, 50257, 1024, n_embd, "some/model.safetensors")
    assert (config.n_layer, config.n_head, config.n_embd) == (n_layer, n_head, n_embd)


@pytest.mark.parametrize("shape", [
    (6, 768, 5, 8),  # distilgpt2's layers and width, but a small vocabulary and context
    (12, 768, 50304, 1024),  # gpt2 with nanoGPT's padded vocabulary
    (12, 768, 50257, 512),  # gpt2 with a shorter context
    (1, 128, 5, 8),  # n_embd 128: 2 heads of 64, or 4 of 32, or ...
    (2, 32, 97, 64),  # n_embd not a multiple of 64
])
def test_infer_config_refuses_unpublished_shapes(shape):
    """Only the five published shapes have a known head count: any other shape without
    config.json raises CheckpointError (it used to load with n_head = n_embd / 64)."""
    n_layer, n_embd, vocab_size, n_ctx = shape
    with raises(["some/model.safetensors: no config.json", f"n_layer={n_layer}, n_embd={n_embd}, "
                 f"vocab_size={vocab_size}, n_ctx={n_ctx}", "not those of a published GPT-2 model",
                 "n_head is unknown", "add the model's config.json, or pass n_head to load()"]):
        infer_config(n_layer, vocab_size, n_ctx, n_embd, "some/model.safetensors")


def test_no_config_json_and_an_unpublished_shape_needs_n_head(tmp_path):
    """The reported case: n_embd 128 trained with 4 heads, no config.json. It used to load as
    n_head=2 (head size 64) with only a warning, and compute a different model."""
    config = make_config(n_layer=1, n_head=4, n_embd=128, n_ctx=8, vocab_size=5)
    small_dir(tmp_path, small_tensors(config), config, with_config=False)
    with raises([tmp_path / "model.safetensors", "no config.json", "n_embd=128",
                 "not those of a published GPT-2 model", "pass n_head to load()"]):
        numpy_gpt2.load(tmp_path)
    with pytest.warns(UserWarning, match=r"no config\.json.*n_head=4 \(given\)"):
        params, cfg = numpy_gpt2.load(tmp_path, n_head=4)
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.n_ctx, cfg.vocab_size) == (1, 4, 128, 8, 5)
    config.save_pretrained(tmp_path)  # the reference, from the same weights with their config
    tokens = np.array([[0, 3, 1, 4, 2, 2]])
    with torch.no_grad():
        ref = reference_model(tmp_path)(torch.tensor(tokens)).logits.numpy()
    np.testing.assert_allclose(numpy_gpt2.forward(params, cfg, tokens), ref, rtol=0,
                               atol=1e-4 * np.abs(ref).max())
    assert numpy_gpt2.load(tmp_path, n_head=4)[1].n_head == 4  # agrees with config.json: fine
    with raises([tmp_path / "config.json", "n_head=4, but load() was given n_head=2"]):
        numpy_gpt2.load(tmp_path, n_head=2)
    for bad in (0, -4, 4.0, "4", True):
        with raises(["n_head must be a positive integer (or None), got"], ValueError):
            numpy_gpt2.load(tmp_path, n_head=bad)
    (tmp_path / "config.json").unlink()
    with raises(["no config.json, and the inferred n_embd=128 is not divisible by n_head=3"]):
        numpy_gpt2.load(tmp_path, n_head=3)


def edit_config(tmp_path, **changes):
    """A small checkpoint whose config.json has `changes` applied; returns the config path."""
    small_dir(tmp_path)
    path = tmp_path / "config.json"
    d = json.loads(path.read_text())
    d.update(changes)
    path.write_text(json.dumps(d))
    return path


@pytest.mark.parametrize("changes,parts", [
    ({"activation_function": "prelu"}, ["activation_function 'prelu' (a string) is not one transformers'",
                                        "gelu_new, gelu_pytorch_tanh"]),
    ({"activation_function": "GELU"}, ["activation_function 'GELU' (a string) is not one"]),
    ({"n_ctx": 32}, ["n_ctx=32 and n_positions=64 disagree"]),
    ({"n_head": 3}, ["n_embd=32 is not divisible by n_head=3"]),
    ({"n_head": 0}, ["n_head must be a positive integer, got 0"]),
    ({"n_embd": "32"}, ["n_embd must be a positive integer, got '32'"]),
    ({"layer_norm_epsilon": 0}, ["layer_norm_epsilon must be a positive finite number (> 0), got 0"]),
    ({"n_inner": 100}, ["mlp.c_fc.weight has shape [32, 128], expected [32, 100]"]),
    ({"n_inner": 0}, ["n_inner must be null or a positive integer, got 0"]),
    ({"scale_attn_by_inverse_layer_idx": 1}, ["scale_attn_by_inverse_layer_idx must be true or false, got 1"]),
    ({"add_cross_attention": True}, ["add_cross_attention=True is not supported"]),
    ({"tie_word_embeddings": False}, ["tie_word_embeddings=false but no lm_head.weight"]),
])
def test_bad_config_json_is_rejected(tmp_path, changes, parts):
    path = edit_config(tmp_path, **changes)
    in_weights = "tie_word" in str(changes) or "n_inner': 100" in str(changes)
    where = tmp_path / "model.safetensors" if in_weights else path
    with raises([where, *parts]):
        numpy_gpt2.load(tmp_path)


INT_FIELDS = ["n_layer", "n_head", "n_embd", "n_positions", "n_ctx", "vocab_size"]


@pytest.mark.parametrize("field", INT_FIELDS)
@pytest.mark.parametrize("value,shown", [
    (2.0, "2.0 (a number)"), ("2", "'2' (a string)"), (True, "True (a boolean)"),
    (None, "null (null)"), ([2], "[2] (a list)"), ({"n": 2}, "{'n': 2} (an object)"),
    (-3, "-3 (an integer)"), (0, "0 (an integer)")])
def test_config_int_fields_are_type_checked(tmp_path, field, value, shown):
    path = edit_config(tmp_path, **{field: value})
    with raises([path, f"{field} must be a positive integer, got {shown}"]):
        numpy_gpt2.load(tmp_path)


@pytest.mark.parametrize("changes,parts", [
    ({"layer_norm_epsilon": "x"}, ["layer_norm_epsilon must be a positive finite number", "got 'x' (a string)"]),
    ({"layer_norm_epsilon": None}, ["layer_norm_epsilon must be a positive finite number", "got null"]),
    ({"layer_norm_epsilon": True}, ["layer_norm_epsilon must be a positive finite number", "got True (a boolean)"]),
    ({"layer_norm_epsilon": -1e-5}, ["layer_norm_epsilon must be a positive finite number", "got -1e-05"]),
    ({"layer_norm_epsilon": float("inf")}, ["layer_norm_epsilon must be a positive finite number", "got inf"]),
    ({"layer_norm_epsilon": float("nan")}, ["layer_norm_epsilon must be a positive finite number", "got nan"]),
    ({"layer_norm_epsilon": [1e-5]}, ["layer_norm_epsilon must be a positive finite number", "(a list)"]),
    ({"activation_function": 3}, ["activation_function must be a string such as 'gelu_new', got 3 (an integer)"]),
    ({"activation_function": None}, ["activation_function must be a string", "got null"]),
    ({"tie_word_embeddings": "true"}, ["tie_word_embeddings must be true or false, got 'true' (a string)"]),
    ({"tie_word_embeddings": 1}, ["tie_word_embeddings must be true or false, got 1 (an integer)"]),
    ({"eos_token_id": "97"}, ["eos_token_id must be a token id (an integer), got '97' (a string)"]),
    ({"eos_token_id": True}, ["eos_token_id must be a token id", "got True (a boolean)"]),
    ({"bos_token_id": 96.0}, ["bos_token_id must be a token id", "got 96.0 (a number)"]),
    ({"bos_token_id": [96]}, ["bos_token_id must be a token id", "got [96] (a list)"]),
    ({"n_inner": "128"}, ["n_inner must be null or a positive integer, got '128' (a string)"]),
    ({"n_inner": 128.0}, ["n_inner must be null or a positive integer, got 128.0"]),
    ({"n_ctx": 64.0}, ["n_ctx must be a positive integer, got 64.0"]),
    ({"scale_attn_weights": 1}, ["scale_attn_weights must be true or false, got 1 (an integer)"]),
    ({"add_cross_attention": "no"}, ["add_cross_attention must be true or false"]),
    ({"use_cache": None}, ["use_cache must be true or false, got null"]),
    ({"model_type": "llama"}, ['model_type must be "gpt2", got \'llama\'']),
    ({"n_layer": 10**40}, ["missing keys h.2.* to h.9999999999999999999999999999999999999999.*",
                           "the file has 2 layers", "says n_layer=10000000000000000000000000000000000000000"]),
    ({"vocab_size": 2**70}, ["wte.weight has shape [97, 32], expected [1180591620717411303424, 32]"]),
])
def test_config_fields_are_type_and_range_checked(tmp_path, changes, parts):
    path = edit_config(tmp_path, **changes)
    where = tmp_path / "model.safetensors" if {"n_layer", "vocab_size"} & set(changes) else path
    with raises([where, *parts]):
        numpy_gpt2.load(tmp_path)


@pytest.mark.parametrize("changes", [
    {"n_inner": None}, {"n_inner": 128}, {"bos_token_id": 0, "eos_token_id": 5},
    {"layer_norm_epsilon": 1}, {"layer_norm_epsilon": 1e-12}, {"n_ctx": None},
    {"activation_function": "gelu_pytorch_tanh"}, {"reorder_and_upcast_attn": True},
    {"summary_type": 5, "architectures": None, "torch_dtype": [], "initializer_range": "x"},
])
def test_config_values_that_are_fine(tmp_path, changes):
    """Right types and values load; fields that do not change inference are ignored."""
    path = edit_config(tmp_path, **changes)
    d = json.loads(path.read_text())
    if changes.get("n_ctx", 0) is None:
        del d["n_ctx"]
        path.write_text(json.dumps(d))
    _, config = numpy_gpt2.load(tmp_path)
    assert config.layer_norm_epsilon == d["layer_norm_epsilon"]
    assert (config.bos_token_id, config.eos_token_id) == (d["bos_token_id"], d["eos_token_id"])


def test_config_json_that_json_cannot_read(tmp_path):
    path = edit_config(tmp_path)
    for text, parts in [("[" * 100_000, ["not valid JSON", "recursion"]),
                        ('{"n_layer": ' + "9" * 5000 + "}", ["not valid JSON", "digits"]),
                        (b"\xff\xfe{}", ["not valid JSON"])]:
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        with raises([path, *parts]):
            numpy_gpt2.load(tmp_path)


def test_gpt2config_itself_checks_types():
    # NumPy numbers are numbers: a config built from arrays' shapes or a float32 epsilon works.
    config = GPT2Config(n_layer=np.int64(1), n_head=np.int32(2), n_embd=4, layer_norm_epsilon=np.float32(1e-5))
    assert config.head_size == 2
    with raises(["config: n_layer must be a positive integer, got True (a boolean)"]):
        GPT2Config(n_layer=True, n_head=1, n_embd=4)
    with raises(["config: layer_norm_epsilon must be a positive finite number", "got 'x'"]):
        GPT2Config(n_layer=1, n_head=1, n_embd=4, layer_norm_epsilon="x")
    with raises(["config: eos_token_id must be a token id (an integer), got 1.0"]):
        GPT2Config(n_layer=1, n_head=1, n_embd=4, eos_token_id=1.0)
    with raises(["config: tie_word_embeddings must be true or false, got 0"]):
        GPT2Config(n_layer=1, n_head=1, n_embd=4, tie_word_embeddings=0)


def test_config_without_sizes_or_not_json(tmp_path):
    path = edit_config(tmp_path)
    d = json.loads(path.read_text())
    del d["n_layer"]
    path.write_text(json.dumps(d))
    with raises([path, "missing n_layer"]):
        numpy_gpt2.load(tmp_path)
    path.write_text("{not json")
    with raises([path, "not valid JSON"]):
        numpy_gpt2.load(tmp_path)
    path.write_text("[1, 2]")
    with raises([path, "expected a JSON object"]):
        numpy_gpt2.load(tmp_path)


@pytest.mark.parametrize("n_layer", [1, 3])
def test_config_n_layer_disagrees_with_file(tmp_path, n_layer):
    path = edit_config(tmp_path, n_layer=n_layer)  # the file has 2 layers
    with raises([tmp_path / "model.safetensors", "the file has 2 layers", path, f"says n_layer={n_layer}"]):
        numpy_gpt2.load(tmp_path)


def test_config_vocab_disagrees_with_file(tmp_path):
    edit_config(tmp_path, vocab_size=100)  # the file has 97 rows
    with raises([tmp_path / "model.safetensors", "wte.weight has shape [97, 32]",
                 "expected [100, 32]"]):
        numpy_gpt2.load(tmp_path)


# --- bad files ------------------------------------------------------------------------------

def test_missing_path(tmp_path):
    with raises([tmp_path / "nowhere", "no such file or directory"]):
        numpy_gpt2.load(tmp_path / "nowhere")


def test_directory_without_model_safetensors(tmp_path):
    (tmp_path / "weights.npz").write_bytes(b"\0" * 16)
    with raises([tmp_path, "has no model.safetensors", "pytorch_model.bin", "ckpt.pt"]):
        numpy_gpt2.load(tmp_path)


def test_a_bin_file_of_no_known_format_is_named_as_such(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"\0" * 16)
    with raises([tmp_path / "pytorch_model.bin", "not a torch.save file", "llm.c"]):
        numpy_gpt2.load(tmp_path)


@pytest.mark.parametrize("content,parts", [
    (b"", ["0 bytes, too short"]),
    (b"abc", ["3 bytes, too short"]),
    (json.dumps({"n_layer": 2, "n_head": 2}).encode(), ["not a safetensors file", "header length"]),
    (np.random.default_rng(0).bytes(4096), ["not a safetensors file", "header length"]),
    ((20).to_bytes(8, "little") + b"\xff\xfe not json at all...", ["not a safetensors file", "not JSON"]),
    ((4).to_bytes(8, "little") + b"[12]", ["not a safetensors file", "not a JSON object"]),
])
def test_not_a_safetensors_file(tmp_path, content, parts):
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    with raises([path, *parts]):
        numpy_gpt2.load(path)


def test_truncated_file(tmp_path):
    path = small_dir(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) - 1000])  # cut inside the last tensors' data
    with raises([path, "truncated", "needs data bytes", "only"]):
        numpy_gpt2.load(tmp_path)


def first_key(header):
    return next(k for k in header if k != "__metadata__")


@pytest.mark.parametrize("edit,parts", [
    (lambda h: h["wte.weight"].update(data_offsets=[0, 12]),
     ["wte.weight", "header says F32 [97, 32]", "but data_offsets span 12 bytes"]),
    (lambda h: h["wpe.weight"].update(data_offsets=[o := h["wte.weight"]["data_offsets"][0], o + 8192]),
     ["corrupted: data of wpe.weight and wte.weight overlap"]),
    (lambda h: h["ln_f.bias"].update(data_offsets=[128, 0]), ["ln_f.bias", "data_offsets [128, 0] are reversed"]),
    (lambda h: h["ln_f.bias"].update(shape=[-32]), ["corrupted header entry for 'ln_f.bias'"]),
    (lambda h: h["ln_f.bias"].pop("data_offsets"), ["corrupted header entry for 'ln_f.bias'"]),
    (lambda h: h.update({"wte.weight": [1, 2]}), ["corrupted header entry for 'wte.weight'"]),
    (lambda h: h["ln_f.weight"].update(data_offsets=[10**9, 10**9 + 128]),
     ["truncated", "ln_f.weight needs data bytes 1000000000..1000000128"]),
])
def test_corrupted_header(tmp_path, edit, parts):
    path = small_dir(tmp_path, edit=edit)
    with raises([path, *parts]):
        numpy_gpt2.load(tmp_path)


def test_missing_keys(tmp_path):
    tensors = small_tensors()
    del tensors["h.1.mlp.c_fc.bias"], tensors["ln_f.weight"]
    path = small_dir(tmp_path, tensors)
    with raises([path, "missing keys h.1.mlp.c_fc.bias, ln_f.weight"]):
        numpy_gpt2.load(tmp_path)


def test_missing_layer(tmp_path):
    tensors = {k: v for k, v in small_tensors().items() if not k.startswith("h.1.")}
    path = small_dir(tmp_path, tensors)
    with raises([path, "missing keys h.1.", "the file has 1 layer,", "says n_layer=2"]):
        numpy_gpt2.load(tmp_path)


@pytest.mark.parametrize("extra", ["h.0.attn.q_proj.weight", "transformer.h.0.mlp.gate.weight",
                                   "score.weight", "h.2.ln_1.weight"])
def test_unexpected_non_buffer_keys(tmp_path, extra):
    tensors = small_tensors()
    tensors[extra] = np.zeros(32, np.float32)
    path = small_dir(tmp_path, tensors)
    with raises([path, "unexpected", extra]):
        numpy_gpt2.load(tmp_path)


def test_same_key_with_and_without_prefix(tmp_path):
    tensors = small_tensors()
    tensors["transformer.ln_f.bias"] = tensors["ln_f.bias"]
    path = small_dir(tmp_path, tensors)
    with raises([path, "ln_f.bias is stored twice"]):
        numpy_gpt2.load(tmp_path)


@pytest.mark.parametrize("key,shape,expected", [
    ("h.0.attn.c_attn.weight", (96, 32), "[32, 96]"),  # stored (out, in): an nn.Linear export
    ("h.1.mlp.c_proj.bias", (33,), "[32]"),
    ("wpe.weight", (63, 32), "[64, 32]"),
    ("lm_head.weight", (96, 32), "[97, 32]"),
])
def test_wrong_shapes(tmp_path, key, shape, expected):
    tensors = small_tensors()
    tensors[key] = np.zeros(shape, np.float32)
    path = small_dir(tmp_path, tensors)
    with raises([path, f"{key} has shape {list(shape)}, expected {expected}"]):
        numpy_gpt2.load(tmp_path)


@pytest.mark.parametrize("dtype", ["I64", "F8_E4M3", "BOOL", "U8"])
def test_unsupported_dtype(tmp_path, dtype):
    tensors = small_tensors()
    n = tensors["h.0.ln_2.weight"].size
    size = {"I64": 8, "F8_E4M3": 1, "BOOL": 1, "U8": 1}[dtype] * n
    tensors["h.0.ln_2.weight"] = (dtype, [n], b"\0" * size)
    path = small_dir(tmp_path, tensors)
    with raises([path, f"h.0.ln_2.weight has dtype {dtype}", "expected one of F64, F32, F16, BF16"]):
        numpy_gpt2.load(tmp_path)


def test_buffers_of_any_dtype_are_ignored(tmp_path):
    tensors = small_tensors()  # hub layout: F32 h.N.attn.bias masks
    tensors["h.0.attn.bias"] = ("BOOL", [1, 1, 64, 64], b"\1" * 4096)
    tensors["transformer.h.1.attn.masked_bias"] = np.array(-1e4, np.float32)
    small_dir(tmp_path, tensors)
    params, _ = numpy_gpt2.load(tmp_path)
    assert set(params["h"][0]["attn"]) == {"c_attn", "c_proj"}


def test_untied_lm_head_that_differs_from_wte(tmp_path):
    tensors = small_tensors(layout="variant")
    tensors["lm_head.weight"] = tensors["lm_head.weight"] + 1
    path = small_dir(tmp_path, tensors)
    with raises([path, "lm_head.weight differs from wte.weight", "tie_word_embeddings"]):
        numpy_gpt2.load(tmp_path)


def test_untied_lm_head_is_kept_and_used(tmp_path):
    config = make_config(tie_word_embeddings=False)
    tensors = small_tensors(config, layout="variant")
    tensors["lm_head.weight"] = tensors["lm_head.weight"][::-1].copy()
    small_dir(tmp_path, tensors, config)
    params, cfg = numpy_gpt2.load(tmp_path, dtype=np.float64)
    assert np.array_equal(params["lm_head"]["weight"], tensors["lm_head.weight"])
    model = transformers.GPT2LMHeadModel.from_pretrained(tmp_path, dtype=torch.float64).eval()
    tokens = np.arange(10)
    with torch.no_grad():
        ref = model(torch.from_numpy(tokens)[None]).logits[0].numpy()
    np.testing.assert_allclose(numpy_gpt2.forward(params, cfg, tokens), ref, rtol=0, atol=1e-10)


def test_bad_load_dtype(tmp_path):
    small_dir(tmp_path)
    with raises(["dtype must be float32 or float64, got float16"], ValueError):
        numpy_gpt2.load(tmp_path, dtype=np.float16)
    with raises(["dtype must be float32 or float64, got 'double precision'"], ValueError):
        numpy_gpt2.load(tmp_path, dtype="double precision")


# --- bad tokens -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("small")
    small_dir(d)
    return numpy_gpt2.load(d)


@pytest.mark.parametrize("tokens,parts", [
    ([1, 97, 2], ["token id 97 at index (1,) is outside [0, 97)"]),
    ([[1, 2], [3, -1]], ["token id -1 at index (1, 1) is outside [0, 97)"]),
    (np.arange(65) % 97, ["sequence of 65 positions is longer than the context (n_ctx=64)"]),
    (np.zeros((2, 70), np.int64), ["sequence of 70 positions", "n_ctx=64"]),
    (np.array([1.0, 2.0]), ["tokens must be integers, got dtype float64"]),
    (np.array([True, False]), ["tokens must be integers, got dtype bool"]),
    (["a", "b"], ["tokens must be integers, got dtype <U1"]),
    (np.int64(5), ["tokens must have shape (T,) or (B, T), got shape ()"]),
    (np.zeros((1, 2, 3), np.int64), ["tokens must have shape (T,) or (B, T), got shape (1, 2, 3)"]),
    (np.zeros(0, np.int64), ["at least one position, got shape (0,)"]),
    (np.zeros((2, 0), np.int64), ["at least one position, got shape (2, 0)"]),
    (np.zeros((0, 3), np.int64), ["at least one position, got shape (0, 3)"]),
])
def test_bad_tokens(small_model, tokens, parts):
    params, config = small_model
    with raises(parts, ValueError):
        numpy_gpt2.forward(params, config, tokens)


def test_good_token_dtypes(small_model):
    params, config = small_model
    ref = numpy_gpt2.forward(params, config, np.array([1, 2, 96]))
    for dtype in (np.uint8, np.int16, np.int32, np.uint64):
        assert np.array_equal(numpy_gpt2.forward(params, config, np.array([1, 2, 96], dtype)), ref)
    assert np.array_equal(numpy_gpt2.forward(params, config, [1, 2, 96]), ref)
    assert numpy_gpt2.forward(params, config, np.zeros(64, np.int64)).shape == (64, 97)  # = n_ctx


def test_error_messages_are_one_line(tmp_path):
    messages = []
    for source in (tmp_path / "nowhere", tmp_path):
        with pytest.raises(CheckpointError) as e:
            numpy_gpt2.load(source)
        messages.append(str(e.value))
    assert all("\n" not in m for m in messages), messages
    assert issubclass(CheckpointError, ValueError)  # one `except ValueError` catches all
