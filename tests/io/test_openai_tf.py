"""OpenAI's original TensorFlow checkpoint (numpy_gpt2.io.formats.openai_tf), against:

  * a real TensorFlow-written tiny GPT-2 ($NUMPY_GPT2_OPENAI_TINY, ../shared/openai-gpt2-tiny;
    skipped without it): its expected.json logits (a float64 forward of OpenAI's model.py
    equations, float32-rounded), transformers' GPT2LMHeadModel with the same weights, and
    helpers/tf_bundle.py's writer, which must reproduce its index and data byte for byte;
  * bundles of random models written by helpers/tf_bundle.py (several shards, several index
    blocks, F32/F64/F16/BF16): the same weights as a safetensors file of the same model;
  * refusals, each a CheckpointError naming the file and what was expected (the fuzzing is
    in test_fuzz_formats.py).
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st

import numpy_gpt2
from helpers.format_files import hf_model
from helpers.run_scripts import run_script
from helpers.tf_bundle import (openai_gpt2_variables, random_flat, write_bundle,
                               write_openai_checkpoint)
from helpers.tolerances import MODEL_RTOL, OPENAI_EXPECTED_ATOL
from numpy_gpt2 import CheckpointError
from numpy_gpt2.io.checkpoint import hf_config_dict
from numpy_gpt2.io.formats.openai_tf import read_entry
from numpy_gpt2.io.formats.tf_table import read_table
from numpy_gpt2.io.formats.safetensors import write_safetensors
from numpy_gpt2.params import flatten_params

TINY = os.environ.get("NUMPY_GPT2_OPENAI_TINY")
needs_tiny = pytest.mark.skipif(not TINY, reason="NUMPY_GPT2_OPENAI_TINY is not set (a directory "
                                "holding ../shared/openai-gpt2-tiny, TensorFlow-written)")
DATA = "model.ckpt.data-00000-of-00001"


def expected():
    with open(os.path.join(TINY, "expected.json")) as f:
        return json.load(f)


def flat_load(source, dtype=np.float32):
    params, config = numpy_gpt2.load(source, dtype)
    return flatten_params(params), config


# ---- the real TensorFlow-written checkpoint ------------------------------------------------

@needs_tiny
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tiny_logits_match_expected_json(dtype):
    """expected.json: float32 logits of a float64 forward (see OPENAI_EXPECTED_ATOL)."""
    e = expected()
    params, config = numpy_gpt2.load(TINY, dtype)
    assert (config.n_layer, config.n_head, config.n_embd, config.n_ctx, config.vocab_size) == (
        2, 2, 16, 64, 50257)
    logits = numpy_gpt2.forward(params, config, np.array(e["token_ids"]))
    assert logits.dtype == dtype and logits.shape == tuple(e["logits_shape"])
    tol = OPENAI_EXPECTED_ATOL[dtype]
    np.testing.assert_allclose(logits[:, :8], e["logits_first8"], rtol=0, atol=tol)
    assert logits.argmax(-1).tolist() == e["argmax"]
    np.testing.assert_allclose(logits.max(-1), e["max_logit"], rtol=0, atol=tol)
    lse = np.log(np.exp(logits.astype(np.float64) - logits.max(-1, keepdims=True)).sum(-1)) \
        + logits.max(-1)
    np.testing.assert_allclose(lse, e["logsumexp"], rtol=0, atol=tol)


@needs_tiny
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_tiny_matches_transformers(dtype):
    params, config = flat_load(TINY, dtype)
    hf_config = transformers.GPT2Config(
        n_layer=2, n_head=2, n_embd=16, n_positions=64, vocab_size=50257,
        activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch_dtype = torch.float64 if dtype == np.float64 else torch.float32
    # float64 params hold the file's float32 values: loading them into float32 is exact
    model = hf_model(hf_config, {k: torch.from_numpy(v) for k, v in params.items()}).to(torch_dtype)
    tokens = np.array([expected()["token_ids"]])
    with torch.no_grad():
        reference = model(torch.as_tensor(tokens)).logits.numpy()
    logits = numpy_gpt2.forward(*numpy_gpt2.load(TINY, dtype), tokens)
    assert np.abs(logits - reference).max() <= MODEL_RTOL[dtype] * np.abs(reference).max()


@needs_tiny
def test_writer_reproduces_tensorflows_files_byte_for_byte(tmp_path):
    """tf_bundle.write_bundle given the tensors TensorFlow saved writes the same .index and
    .data bytes: the writer the other tests use is TensorFlow's format exactly."""
    index = read_table(os.path.join(TINY, "model.ckpt.index"))
    with open(os.path.join(TINY, DATA), "rb") as f:
        data = f.read()
    tensors = {}
    for key, value in index[1:]:
        e = read_entry(key.decode(), value, "tiny")
        tensors[key.decode()] = np.frombuffer(data, "<f4", e["size"] // 4, e["offset"]).reshape(e["shape"])
    assert len(tensors) == 28
    write_bundle(str(tmp_path / "model.ckpt"), tensors)
    for name in ("model.ckpt.index", DATA):
        assert (tmp_path / name).read_bytes() == open(os.path.join(TINY, name), "rb").read(), name


@needs_tiny
def test_tiny_every_way_to_name_it(tmp_path):
    """The directory, P.index, the prefix P and the data file load the same weights; the
    tokenizer comes from encoder.json + vocab.bpe (not $NUMPY_GPT2_TOKENIZER)."""
    reference, _ = flat_load(TINY)
    for source in ("model.ckpt.index", "model.ckpt", DATA, "model.ckpt.meta"):
        params, _ = flat_load(os.path.join(TINY, source))
        assert all(np.array_equal(params[k], reference[k]) for k in reference), source
    env = os.environ.pop("NUMPY_GPT2_TOKENIZER", None)
    try:
        enc = numpy_gpt2.load_tokenizer(TINY)
    finally:
        if env is not None:
            os.environ["NUMPY_GPT2_TOKENIZER"] = env
    assert enc.encode(expected()["prompt"]) == expected()["token_ids"]
    assert enc.decode([50256]) == "<|endoftext|>"


@needs_tiny
def test_convert_tiny_to_hf_loads_in_transformers(tmp_path, capsys):
    out = tmp_path / "hf"
    status, _, err = run_script("convert", [TINY, out, "--to", "hf"], capsys)
    assert status == 0, err
    assert (out / "vocab.json").read_bytes() == open(os.path.join(TINY, "encoder.json"), "rb").read()
    assert (out / "merges.txt").read_bytes() == open(os.path.join(TINY, "vocab.bpe"), "rb").read()
    model = transformers.GPT2LMHeadModel.from_pretrained(
        out, attn_implementation="eager").eval()
    e = expected()
    with torch.no_grad():
        logits = model(torch.tensor([e["token_ids"]])).logits[0].numpy()
    np.testing.assert_allclose(logits[:, :8], e["logits_first8"], rtol=0,
                               atol=OPENAI_EXPECTED_ATOL[np.float32])
    assert logits.argmax(-1).tolist() == e["argmax"]


@pytest.mark.skipif(not os.environ.get("NUMPY_GPT2_TOKENIZER"), reason="NUMPY_GPT2_TOKENIZER "
                    "is not set (GPT-2's vocab.json and merges.txt)")
def test_tokenizer_from_openai_file_names(tmp_path, monkeypatch):
    """encoder.json + vocab.bpe (OpenAI's names) give the same tokenizer as vocab.json +
    merges.txt, from the checkpoint directory and from $NUMPY_GPT2_TOKENIZER."""
    source = os.environ["NUMPY_GPT2_TOKENIZER"]
    shutil.copyfile(os.path.join(source, "vocab.json"), tmp_path / "encoder.json")
    shutil.copyfile(os.path.join(source, "merges.txt"), tmp_path / "vocab.bpe")
    text = "Hello, world: naïve café 東京 <|endoftext|>"
    want = numpy_gpt2.load_tokenizer(source).encode(text, allowed_special="all")
    assert numpy_gpt2.load_tokenizer(tmp_path).encode(text, allowed_special="all") == want
    monkeypatch.setenv("NUMPY_GPT2_TOKENIZER", str(tmp_path))
    assert numpy_gpt2.load_tokenizer().encode(text, allowed_special="all") == want
    assert want[-1] == 50256


# ---- round trips of random models ----------------------------------------------------------

@settings(max_examples=12, deadline=None)
@given(n_layer=st.integers(1, 3), heads_width=st.sampled_from([(1, 8), (2, 8), (2, 16), (4, 16),
                                                                (3, 24), (4, 32)]),
       vocab=st.integers(5, 300), n_ctx=st.integers(1, 40), seed=st.integers(0, 2**16),
       num_shards=st.integers(1, 3), block_size=st.sampled_from([64, 300, 262144]))
def test_round_trip_equals_the_safetensors_path(tmp_path_factory, n_layer, heads_width, vocab,
                                                n_ctx, seed, num_shards, block_size):
    """A bundle (any number of shards, index blocks of 64 B .. 256 kB) of a random model
    loads exactly the weights a safetensors file of the same model does, layer by layer."""
    n_head, n_embd = heads_width
    config = numpy_gpt2.GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_ctx=n_ctx,
                                   vocab_size=vocab)
    flat = random_flat(config, seed)
    d = tmp_path_factory.mktemp("rt")
    rng = np.random.default_rng(seed)
    shard = {name: int(rng.integers(num_shards)) for name in openai_gpt2_variables(flat)}
    write_openai_checkpoint(str(d / "tf"), flat, config, num_shards=num_shards,
                            shard_of=shard.__getitem__, block_size=block_size)
    os.makedirs(d / "st")
    write_safetensors(str(d / "st" / "model.safetensors"), flat)
    with open(d / "st" / "config.json", "w") as f:
        json.dump(hf_config_dict(config), f)
    for dtype in (np.float32, np.float64):
        got, got_config = flat_load(d / "tf", dtype)
        want, want_config = flat_load(d / "st", dtype)
        assert got_config == want_config
        assert list(got) == list(want)
        for key in want:
            assert got[key].dtype == dtype and np.array_equal(got[key], want[key]), key
        assert np.array_equal(got["wte.weight"], flat["wte.weight"])


@pytest.mark.parametrize("dtype", ["F64", "F16", "BF16"])
def test_other_float_dtypes(tmp_path, dtype):
    """DT_DOUBLE, DT_HALF and DT_BFLOAT16 variables load as their values."""
    config = numpy_gpt2.GPT2Config(n_layer=1, n_head=2, n_embd=8, n_ctx=4, vocab_size=11)
    flat = random_flat(config, 1)
    variables = openai_gpt2_variables(flat)
    if dtype == "BF16":
        bits = {k: (v.view("<u4") >> 16).astype("<u2") for k, v in variables.items()}
        stored = {k: (14, b) for k, b in bits.items()}
        values = {k: (b.astype("<u4") << 16).view("<f4") for k, b in bits.items()}
    else:
        np_dtype = {"F64": "<f8", "F16": "<f2"}[dtype]
        stored = {k: v.astype(np_dtype) for k, v in variables.items()}
        values = stored
    write_openai_checkpoint(str(tmp_path), flat, config)
    write_bundle(str(tmp_path / "model.ckpt"), stored)
    got, _ = flat_load(tmp_path, np.float64)
    assert np.array_equal(got["wte.weight"], values["model/wte"].astype(np.float64))
    assert np.array_equal(got["h.0.mlp.c_fc.weight"], values["model/h0/mlp/c_fc/w"][0].astype(np.float64))


def test_checkpoint_file_names_the_prefix(tmp_path):
    """`checkpoint`'s model_checkpoint_path (gpt-2-simple's model-1000) is the prefix used,
    also when it is an absolute path of a directory since moved."""
    config = numpy_gpt2.GPT2Config(n_layer=1, n_head=1, n_embd=8, n_ctx=4, vocab_size=7)
    flat = random_flat(config, 2)
    write_openai_checkpoint(str(tmp_path), flat, config)
    for name in os.listdir(tmp_path):
        if name.startswith("model.ckpt"):
            os.rename(tmp_path / name, tmp_path / name.replace("model.ckpt", "model-1000"))
    for path in ("model-1000", "/elsewhere/run1/model-1000"):
        (tmp_path / "checkpoint").write_text(f'model_checkpoint_path: "{path}"\n')
        got, _ = flat_load(tmp_path)
        assert np.array_equal(got["wpe.weight"], flat["wpe.weight"])
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "model-2000"\n')
    refused(tmp_path, r"checkpoint: names the checkpoint .*model-2000, but there is no "
                      r"model-2000.index")


# ---- refusals --------------------------------------------------------------------------------

@pytest.fixture
def small_ckpt(tmp_path):
    config = numpy_gpt2.GPT2Config(n_layer=2, n_head=2, n_embd=8, n_ctx=4, vocab_size=13)
    flat = random_flat(config, 3)
    write_openai_checkpoint(str(tmp_path), flat, config)
    return tmp_path, flat, config


def rewrite(directory, flat, change):
    """Write the bundle again with change(variables) applied."""
    variables = openai_gpt2_variables(flat)
    change(variables)
    write_bundle(str(directory / "model.ckpt"), variables)


def refused(source, pattern):
    with pytest.raises(CheckpointError, match=pattern) as info:
        numpy_gpt2.load(source)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_truncated_data_file(small_ckpt):
    d, _, _ = small_ckpt
    data = (d / DATA).read_bytes()
    (d / DATA).write_bytes(data[:-10])
    refused(d, rf"{DATA}: truncated: model/wte needs bytes \d+\.\.{len(data)} but the file has "
               rf"{len(data) - 10}")


def test_flipped_data_byte_names_the_tensor(small_ckpt):
    d, _, _ = small_ckpt
    index = read_table(str(d / "model.ckpt.index"))
    entry = read_entry("model/h1/mlp/c_fc/w", dict(index)[b"model/h1/mlp/c_fc/w"], "")
    data = bytearray((d / DATA).read_bytes())
    data[entry["offset"] + 5] ^= 0x10
    (d / DATA).write_bytes(bytes(data))
    refused(d, rf"{DATA}: model/h1/mlp/c_fc/w is corrupted: the crc32c of its 1024 bytes at "
               rf"offset {entry['offset']} is 0x[0-9a-f]{{8}}, the index says 0x[0-9a-f]{{8}}")


def test_bad_footer_magic(small_ckpt):
    d, _, _ = small_ckpt
    raw = bytearray((d / "model.ckpt.index").read_bytes())
    raw[-1] ^= 0xFF
    (d / "model.ckpt.index").write_bytes(bytes(raw))
    refused(d, r"model.ckpt.index: not a TensorFlow checkpoint index \(footer magic "
               r"0x244775248b80fb57, expected 0xdb4775248b80fb57\)")


def test_corrupted_index_block(small_ckpt):
    d, _, _ = small_ckpt
    raw = bytearray((d / "model.ckpt.index").read_bytes())
    raw[40] ^= 0x01  # inside the data block
    (d / "model.ckpt.index").write_bytes(bytes(raw))
    refused(d, r"model.ckpt.index: the data block 0 at byte 0 is corrupted \(crc32c 0x")


def test_missing_shard(tmp_path):
    config = numpy_gpt2.GPT2Config(n_layer=1, n_head=1, n_embd=8, n_ctx=4, vocab_size=7)
    flat = random_flat(config, 4)
    write_openai_checkpoint(str(tmp_path), flat, config, num_shards=2,
                            shard_of=lambda name: int(name.startswith("model/h0/mlp")))
    os.remove(tmp_path / "model.ckpt.data-00001-of-00002")
    refused(tmp_path, r"model.ckpt.data-00001-of-00002: missing data shard \(it holds "
                      r"model/h0/mlp/c_fc/b\)")


def test_wrong_shape(small_ckpt):
    d, flat, _ = small_ckpt
    rewrite(d, flat, lambda v: v.update({"model/h0/attn/c_proj/w": v["model/h0/attn/c_proj/w"][0]}))
    refused(d, r"model.ckpt.index: model/h0/attn/c_proj/w has shape \[8, 8\], expected \[1, 8, 8\] "
               r"\(hparams.json: n_vocab=13, n_ctx=4, n_embd=8\)")


def test_unknown_dtype(small_ckpt):
    d, flat, _ = small_ckpt
    rewrite(d, flat, lambda v: v.update({"model/ln_f/g": (3, v["model/ln_f/g"].view("<i4"))}))
    refused(d, r"model.ckpt.index: model/ln_f/g has dtype DT_INT32, expected DT_FLOAT \(or "
               r"DT_DOUBLE, DT_HALF, DT_BFLOAT16\)")


@pytest.mark.parametrize("name,pattern", [
    ("global_step", r"variable 'global_step' is not one of GPT-2's"),
    ("model/h0/attn/c_attn/w/Adam", r"variable 'model/h0/attn/c_attn/w/Adam' is not one of GPT-2's"),
    ("model/h2/ln_1/g", r"unexpected variable model/h2/ln_1/g \(hparams.json says n_layer=2\)"),
])
def test_extra_variable(small_ckpt, name, pattern):
    d, flat, _ = small_ckpt
    rewrite(d, flat, lambda v: v.update({name: np.zeros(8, np.float32)}))
    refused(d, "model.ckpt.index: " + pattern)


def test_missing_variable(small_ckpt):
    d, flat, _ = small_ckpt
    rewrite(d, flat, lambda v: (v.pop("model/h1/ln_2/b"), v.pop("model/wpe")))
    refused(d, r"model.ckpt.index: missing variable model/wpe and 1 more \(hparams.json says "
               r"n_layer=2\)")


def test_hparams_json(small_ckpt):
    d, _, _ = small_ckpt
    (d / "hparams.json").write_text('{"n_vocab": 13, "n_ctx": 4, "n_embd": 8, "n_head": 3, '
                                    '"n_layer": 2}')
    refused(d, r"hparams.json: n_embd=8 is not divisible by n_head=3")
    (d / "hparams.json").write_text('{"n_vocab": 13, "n_ctx": "4"}')
    refused(d, r"hparams.json: n_ctx is '4' \(a string\), expected a positive integer")
    os.remove(d / "hparams.json")
    refused(d, r"hparams.json: missing: a TensorFlow GPT-2 checkpoint needs openai/gpt-2's "
               r"hparams.json beside its index")


def test_directory_without_any_checkpoint(tmp_path):
    (tmp_path / "hparams.json").write_text("{}")
    refused(tmp_path, r"directory has no model.safetensors \(nor .*model.ckpt.index\)")
