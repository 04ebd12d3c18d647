"""Every checkpoint format load() reads, against transformers' logits on the same weights:
pytorch_model.bin (zip and legacy layouts, with and without "transformer.", F16/BF16,
views and shared storages), sharded safetensors and .bin, nanoGPT ckpt.pt, llm.c .bin
(float32 and bfloat16, and writing float32); memory; loading never imports torch.

Tolerances: float32 logits within 1e-4 of transformers' (measured ~1e-5 on logits spread
over tens of units); float64 runs compare to a float64 oracle within 1e-9.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import tracemalloc

import numpy as np
import pytest
import torch

import numpy_gpt2
from helpers.format_files import (bf16_rounded, hf_model, llmc_bytes, logits, nanogpt_checkpoint,
                                  save_torch, small)
from numpy_gpt2 import CheckpointError
from numpy_gpt2.params import flatten_params
from numpy_gpt2.io.formats.llmc import write_llmc
from helpers import REPO_ROOT

TOKENS = np.array([[3, 17, 42, 5, 0, 96, 11, 8], [1, 2, 3, 4, 5, 6, 7, 8]])
ROOT = REPO_ROOT


def max_diff(params, config, model, tokens=TOKENS, dtype=np.float32):
    ours = numpy_gpt2.forward(params, config, tokens)
    return float(np.abs(ours - logits(model, tokens)).max())


def report(name, diff):
    print(f"\n{name}: max |dlogit| {diff:.2e}")


# --- pytorch_model.bin -----------------------------------------------------------------------

@pytest.mark.parametrize("zip_layout", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize("which", ["GPT2LMHeadModel", "transformer"])
def test_pytorch_model_bin_matches_transformers(tmp_path, zip_layout, which):
    config, sd = small()
    model = hf_model(config, sd)
    state = model.state_dict() if which == "GPT2LMHeadModel" else model.transformer.state_dict()
    assert any(k.startswith("transformer.") for k in state) == (which == "GPT2LMHeadModel")
    save_torch(tmp_path / "pytorch_model.bin", state, zip_layout)
    config.save_pretrained(tmp_path)
    params, cfg = numpy_gpt2.load(tmp_path)
    assert "lm_head" not in params  # tied: the same storage as wte, not copied twice
    diff = max_diff(params, cfg, model)
    report(f"pytorch_model.bin {'zip' if zip_layout else 'legacy'} {which}", diff)
    assert diff < 1e-4


def test_original_2019_layout_bin_with_buffers_and_no_config(tmp_path):
    """The 2019 GPT-2 uploads: legacy pickle, no prefix, h.N.attn.bias and masked_bias
    buffers; without config.json the config is inferred (with a warning)."""
    config, sd = small(n_embd=128, n_head=2)
    state = dict(sd)
    for i in range(config.n_layer):
        state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(64, 64)).view(1, 1, 64, 64)
        state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    save_torch(tmp_path / "pytorch_model.bin", state, zip_layout=False)
    with pytest.warns(UserWarning, match="no config.json"):
        params, cfg = numpy_gpt2.load(tmp_path / "pytorch_model.bin", n_head=2)
    assert (cfg.n_layer, cfg.n_embd, cfg.n_ctx, cfg.vocab_size) == (2, 128, 64, 97)
    flat = flatten_params(params)
    assert set(flat) == set(sd)
    for key, t in sd.items():
        assert np.array_equal(flat[key], t.numpy()), key


@pytest.mark.parametrize("zip_layout", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize("file_dtype", [torch.float16, torch.bfloat16])
def test_half_precision_bin(tmp_path, zip_layout, file_dtype):
    config, sd = small()
    rounded = {k: v.to(file_dtype).float() for k, v in sd.items()}
    model = hf_model(config, rounded)
    save_torch(tmp_path / "pytorch_model.bin", {k: v.to(file_dtype) for k, v in sd.items()},
               zip_layout)
    config.save_pretrained(tmp_path)
    params, cfg = numpy_gpt2.load(tmp_path)
    for key, value in flatten_params(params).items():
        assert np.array_equal(value, rounded[key].numpy()), key
    assert max_diff(params, cfg, model) < 1e-4


@pytest.mark.parametrize("zip_layout", [True, False], ids=["zip", "legacy"])
def test_views_offsets_strides_and_shared_storages(tmp_path, zip_layout):
    """Tensors saved as views: a transposed matrix, slices of one big storage (offsets), the
    same storage under two names; each is read from its own elements."""
    config, sd = small()
    state = dict(sd)
    w = sd["h.0.attn.c_attn.weight"]
    state["h.0.attn.c_attn.weight"] = w.t().contiguous().t()  # strides (1, E)
    big = torch.cat([sd["h.1.ln_1.weight"], sd["h.1.ln_1.bias"], sd["h.1.ln_2.weight"]])
    E = config.n_embd
    state["h.1.ln_1.weight"], state["h.1.ln_1.bias"], state["h.1.ln_2.weight"] = \
        big[:E], big[E:2 * E], big[2 * E:]
    state["h.1.ln_2.bias"] = big[2 * E:]  # shares ln_2.weight's elements
    save_torch(tmp_path / "pytorch_model.bin", state, zip_layout)
    config.save_pretrained(tmp_path)
    params, _ = numpy_gpt2.load(tmp_path)
    flat = flatten_params(params)
    assert flat["h.0.attn.c_attn.weight"].flags.c_contiguous
    for key, t in state.items():
        assert np.array_equal(flat[key], t.numpy()), key


def test_float64_oracle(tmp_path):
    config, sd = small()
    model = hf_model(config, sd).double()
    save_torch(tmp_path / "pytorch_model.bin", {k: v.double() for k, v in sd.items()})
    config.save_pretrained(tmp_path)
    params, cfg = numpy_gpt2.load(tmp_path, dtype=np.float64)
    diff = float(np.abs(numpy_gpt2.forward(params, cfg, TOKENS) - logits(model, TOKENS)).max())
    report("pytorch_model.bin F64 -> float64", diff)
    assert diff < 1e-9


# --- sharded checkpoints ---------------------------------------------------------------------

@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
def test_sharded_save_pretrained(tmp_path, safe):
    config, sd = small()
    model = hf_model(config, sd)
    model.save_pretrained(tmp_path, safe_serialization=safe, max_shard_size="40KB")
    name = "model.safetensors.index.json" if safe else "pytorch_model.bin.index.json"
    with open(tmp_path / name) as f:
        shards = set(json.load(f)["weight_map"].values())
    assert len(shards) >= 3
    for source in (tmp_path, tmp_path / name):  # the directory, or the index itself
        params, cfg = numpy_gpt2.load(source)
        diff = max_diff(params, cfg, model)
        report(f"sharded {'safetensors' if safe else 'pytorch_model.bin'} ({len(shards)} shards)", diff)
        assert diff < 1e-4


def sharded(tmp_path):
    config, sd = small()
    hf_model(config, sd).save_pretrained(tmp_path, max_shard_size="40KB")
    index = tmp_path / "model.safetensors.index.json"
    with open(index) as f:
        return index, json.load(f)


def test_sharded_missing_shard_is_named(tmp_path):
    index, data = sharded(tmp_path)
    shard = data["weight_map"]["transformer.ln_f.weight"]
    os.remove(tmp_path / shard)
    with pytest.raises(CheckpointError, match=f"{index}: shard {shard} is missing"):
        numpy_gpt2.load(tmp_path)


@pytest.mark.parametrize("edit,message", [
    (lambda m, shards: m.update({"transformer.ln_f.weight": next(s for s in shards if s != m["transformer.ln_f.weight"])}),
     r"inconsistent shard: (lacks transformer\.ln_f\.weight|holds transformer\.ln_f\.weight, but "
     r"model\.safetensors\.index\.json maps it to)"),
    (lambda m, shards: m.pop("transformer.wpe.weight"),
     r"inconsistent shard: holds transformer\.wpe\.weight, but .* does not list it"),
    (lambda m, shards: m.update({"transformer.extra": sorted(shards)[0]}),
     r"inconsistent shard: lacks transformer\.extra"),
    (lambda m, shards: m.update({"transformer.wpe.weight": "../model.safetensors"}),
     r"weight_map\['transformer\.wpe\.weight'.*expected a file name in the index's directory"),
])
def test_sharded_inconsistent_index_is_named(tmp_path, edit, message):
    index, data = sharded(tmp_path)
    edit(data["weight_map"], set(data["weight_map"].values()))
    index.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=message):
        numpy_gpt2.load(tmp_path)


def test_sharded_and_bin_peak_memory_is_the_weights(tmp_path):
    """Shards and .bin files are copied straight into the final arrays as a single
    safetensors file is: peak NumPy allocation = the weights + a few MB."""
    config, sd = small(n_layer=4, n_head=4, n_embd=256, n_ctx=256, vocab_size=4000)
    model = hf_model(config, sd)
    model.save_pretrained(tmp_path / "sharded", max_shard_size="2MB")
    save_torch(tmp_path / "bin" / "pytorch_model.bin", model.state_dict())
    save_torch(tmp_path / "legacy" / "pytorch_model.bin", model.state_dict(), zip_layout=False)
    weight_bytes = sum(t.numel() for t in sd.values()) * 4
    for name in ("sharded", "bin", "legacy"):
        config.save_pretrained(tmp_path / name)
        tracemalloc.start()
        try:
            params, _ = numpy_gpt2.load(tmp_path / name)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        del params
        print(f"\n{name}: peak {peak / weight_bytes:.3f}x the {weight_bytes / 1e6:.1f} MB of weights")
        assert weight_bytes <= peak <= weight_bytes + 4_000_000


# --- nanoGPT ---------------------------------------------------------------------------------

@pytest.mark.parametrize("zip_layout", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize("variant", ["plain", "compiled+buffers", "bias=False", "char-65", "padded-50304"])
def test_nanogpt_checkpoint_weights_and_config(tmp_path, zip_layout, variant):
    vocab = {"char-65": 65, "padded-50304": 50257}.get(variant, 97)
    config, sd = small(vocab_size=vocab, n_embd=16 if vocab > 1000 else 32)
    bias = variant != "bias=False"
    ckpt = nanogpt_checkpoint(sd, config.n_head, config.n_positions, vocab, bias=bias,
                              compiled=variant.startswith("compiled"),
                              mask_buffers=variant.endswith("buffers"),
                              pad_to=50304 if variant.startswith("padded") else None)
    save_torch(tmp_path / "ckpt.pt", ckpt, zip_layout)
    params, cfg = numpy_gpt2.load(tmp_path)  # a directory holding ckpt.pt
    expected_vocab = 50304 if variant.startswith("padded") else vocab
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.n_ctx, cfg.vocab_size) == \
        (config.n_layer, config.n_head, config.n_embd, config.n_positions, expected_vocab)
    assert cfg.activation_function == "gelu"  # nanoGPT's nn.GELU(): the exact erf form
    assert cfg.eos_token_id == 50256 and cfg.has_token(50256) == (vocab > 1000)
    flat = flatten_params(params)
    assert "lm_head.weight" not in flat
    for key, t in sd.items():
        want = t.numpy()
        if not bias and key.endswith(".bias"):
            want = np.zeros_like(want)
        if key == "wte.weight" and expected_vocab > vocab:
            assert not flat[key][vocab:].any()  # the padding rows, zeros as saved
            assert flat[key].shape == (expected_vocab, cfg.n_embd)
            got = flat[key][:vocab]
        else:
            got = flat[key]
        assert got.flags.c_contiguous or key == "wte.weight"
        assert np.array_equal(got, want), key


@pytest.mark.parametrize("variant", ["plain", "bias=False+compiled", "padded-50304"])
def test_nanogpt_logits_match_transformers_with_exact_gelu(tmp_path, variant):
    """The oracle: transformers' GPT-2 with activation_function "gelu" (nn.GELU's exact erf
    form, nanoGPT's MLP) holding the same weights (zero biases for bias=False, the padded
    vocabulary's zero rows)."""
    vocab = 50257 if variant.startswith("padded") else 97
    config, sd = small(vocab_size=vocab, n_embd=16 if vocab > 1000 else 32)
    bias = not variant.startswith("bias=False")
    pad = 50304 if variant.startswith("padded") else None
    save_torch(tmp_path / "ckpt.pt", nanogpt_checkpoint(sd, config.n_head, config.n_positions, vocab,
                                                        bias=bias, compiled="compiled" in variant,
                                                        pad_to=pad))
    params, cfg = numpy_gpt2.load(tmp_path / "ckpt.pt", dtype=np.float64)
    config.activation_function = "gelu"
    config.vocab_size = pad or vocab
    weights = {k: (torch.zeros_like(v) if not bias and k.endswith(".bias") else v) for k, v in sd.items()}
    if pad:
        weights["wte.weight"] = torch.cat([sd["wte.weight"], torch.zeros(pad - vocab, config.n_embd)])
    model = hf_model(config, weights).double()
    diff = float(np.abs(numpy_gpt2.forward(params, cfg, TOKENS) - logits(model, TOKENS)).max())
    report(f"nanoGPT ckpt.pt {variant} (float64)", diff)
    assert diff < 1e-9


def test_nanogpt_checkpoint_as_train_init(tmp_path, tokenizer_dir, monkeypatch, capsys):
    """scripts/train.py --init ckpt.pt fine-tunes a nanoGPT model (GPT-2 vocabulary padded to
    50304, bias=False, exact GELU) and saves it as a Hugging Face checkpoint that keeps
    activation_function "gelu"."""
    from helpers.run_scripts import run_script
    config, sd = small(vocab_size=50257, n_embd=16, n_ctx=32)
    save_torch(tmp_path / "ckpt.pt", nanogpt_checkpoint(sd, config.n_head, 32, 50257, bias=False,
                                                        pad_to=50304))
    (tmp_path / "text.txt").write_text("To be, or not to be, that is the question. " * 40)
    monkeypatch.setenv("NUMPY_GPT2_TOKENIZER", tokenizer_dir)
    status, _, err = run_script("train", ["--init", tmp_path / "ckpt.pt", "--data", tmp_path / "text.txt",
                                          "--out", tmp_path / "out", "--block-size", 16,
                                          "--batch-size", 2, "--max-iters", 2, "--eval-iters", 1,
                                          "--lr", 1e-3, "--warmup-iters", 0], capsys)
    assert status == 0, err
    tuned, cfg = numpy_gpt2.load(tmp_path / "out")
    assert cfg.activation_function == "gelu" and cfg.vocab_size == 50304
    with open(tmp_path / "out" / "config.json") as f:
        assert json.load(f)["activation_function"] == "gelu"
    start, _ = numpy_gpt2.load(tmp_path / "ckpt.pt")
    assert 0 < np.abs(tuned["h"][0]["mlp"]["c_fc"]["weight"] - start["h"][0]["mlp"]["c_fc"]["weight"]).max() < 3e-3


def test_nanogpt_bias_false_rejects_a_bias(tmp_path):
    config, sd = small()
    ckpt = nanogpt_checkpoint(sd, config.n_head, config.n_positions, 97, bias=False)
    ckpt["model"]["transformer.h.1.mlp.c_fc.bias"] = torch.zeros(4 * config.n_embd)
    save_torch(tmp_path / "ckpt.pt", ckpt)
    with pytest.raises(CheckpointError, match=r"ckpt\.pt: model_args says bias=False but the "
                                              r"model has h\.1\.mlp\.c_fc\.bias"):
        numpy_gpt2.load(tmp_path / "ckpt.pt")


# --- llm.c -----------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_llmc_file_matches_transformers(tmp_path, dtype):
    config, sd = small(vocab_size=200)
    path = tmp_path / ("gpt2_124M.bin" if dtype == "float32" else "gpt2_124M_bf16.bin")
    path.write_bytes(llmc_bytes(sd, config.n_head, 200, config.n_positions, dtype))
    weights = sd if dtype == "float32" else bf16_rounded(sd)
    model = hf_model(config, weights)
    params, cfg = numpy_gpt2.load(path)
    assert cfg.vocab_size == 256 and params["wte"]["weight"].shape == (256, config.n_embd)
    assert not params["wte"]["weight"][200:].any()  # llm.c's zero padding rows, as they are
    flat = flatten_params(params)
    for key, t in weights.items():
        got = flat[key][:200] if key == "wte.weight" else flat[key]
        assert np.array_equal(got, t.numpy()), key
    ours = numpy_gpt2.forward(params, cfg, TOKENS)
    diff = float(np.abs(ours[..., :200] - logits(model, TOKENS)).max())
    report(f"llm.c {dtype}", diff)
    assert diff < 1e-4


def test_write_llmc_is_byte_identical_to_llmc_own_writer(tmp_path):
    config, sd = small(vocab_size=200)
    params, cfg = numpy_gpt2.load(_bin(tmp_path, config, sd))
    ours = tmp_path / "ours.bin"
    # Our model has the padded vocabulary (256) as its vocab_size: it stays 256 in the header.
    write_llmc(str(ours), params, cfg)
    theirs = llmc_bytes({**sd, "wte.weight": torch.from_numpy(params["wte"]["weight"])},
                        config.n_head, 256, config.n_positions)
    assert ours.read_bytes() == theirs
    # ... unless told the real vocabulary: then the header says 200 (padded to 256) again.
    write_llmc(str(ours), params, cfg, vocab_size=200)
    assert ours.read_bytes() == _bin(tmp_path, config, sd).read_bytes()
    again, cfg2 = numpy_gpt2.load(ours)
    assert cfg2 == cfg
    for key, value in flatten_params(params).items():
        assert np.array_equal(flatten_params(again)[key], value), key


def _bin(tmp_path, config, sd):
    path = tmp_path / "model.bin"
    path.write_bytes(llmc_bytes(sd, config.n_head, config.vocab_size, config.n_positions))
    return path


@pytest.mark.parametrize("edit,message", [
    (lambda b: b[:4] + (7).to_bytes(4, "little") + b[8:], "llm.c model version 7 is not supported"),
    (lambda b: b[:-4], r"bytes, but the llm.c header \(L=2, C=32, Vp=128, max_seq_len=64, F32\) needs"),
    (lambda b: b + b"\0" * 4, "bytes, but the llm.c header"),
    (lambda b: b[:16] + (0).to_bytes(4, "little") + b[20:], "llm.c header num_layers=0"),
    (lambda b: b[:100], "truncated llm.c header"),
])
def test_llmc_bad_files(tmp_path, edit, message):
    config, sd = small()
    path = _bin(tmp_path, config, sd)
    path.write_bytes(edit(path.read_bytes()))
    with pytest.raises(CheckpointError, match=message):
        numpy_gpt2.load(path)


# --- torch is never imported -----------------------------------------------------------------

def test_loading_every_format_never_imports_torch(tmp_path):
    """A subprocess where `import torch` fails loads every format."""
    config, sd = small()
    model = hf_model(config, sd)
    save_torch(tmp_path / "zip" / "pytorch_model.bin", model.state_dict())
    save_torch(tmp_path / "legacy" / "pytorch_model.bin", model.state_dict(), zip_layout=False)
    model.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    model.save_pretrained(tmp_path / "sharded_bin", max_shard_size="40KB", safe_serialization=False)
    for d in ("zip", "legacy"):
        config.save_pretrained(tmp_path / d)
    save_torch(tmp_path / "nanogpt" / "ckpt.pt", nanogpt_checkpoint(sd, 2, 64, 97))
    (tmp_path / "gpt2.bin").write_bytes(llmc_bytes(sd, 2, 97, 64))
    sources = [tmp_path / d for d in ("zip", "legacy", "sharded", "sharded_bin", "nanogpt")]
    sources.append(tmp_path / "gpt2.bin")
    code = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # import torch now raises ImportError
        import numpy_gpt2
        for source in {[str(s) for s in sources]!r}:
            params, config = numpy_gpt2.load(source)
            assert params["h"][1]["mlp"]["c_proj"]["weight"].shape == (128, 32)
        assert "torch" not in [m for m in sys.modules if sys.modules[m] is not None]
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": ROOT})
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
