"""scripts/convert.py: any format load() reads -> a Hugging Face directory that transformers
loads with the same logits, or an llm.c file byte-identical to llm.c's own writer; dtypes;
atomic writes; one-line errors."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import transformers

import numpy_gpt2
from helpers.format_files import bf16_rounded, hf_model, llmc_bytes, logits, nanogpt_checkpoint, save_torch, small
from numpy_gpt2.params import flatten_params
from helpers.run_scripts import run_script

TOKENS = np.array([[3, 17, 42, 5, 0, 60, 11, 8]])


def one_line_error(status, out, err, *parts):
    err = err.split("\r")[-1]  # a progress bar drawn before the error is erased by \r
    assert status == 2 and out == "" and err.count("\n") == 1, (status, out, err)
    assert err.startswith("convert.py: error: ")
    for part in parts:
        assert part in err, err


@pytest.mark.parametrize("zip_layout", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize("dtype,file_dtype,tol", [("float32", torch.float32, 1e-4),
                                                  ("float16", torch.float16, 1e-4),
                                                  ("bfloat16", torch.bfloat16, 1e-4)])
def test_bin_to_hf_loads_in_transformers_with_the_same_logits(tmp_path, capsys, tokenizer_dir,
                                                              zip_layout, dtype, file_dtype, tol):
    config, sd = small()
    model = hf_model(config, sd)
    save_torch(tmp_path / "src" / "pytorch_model.bin", model.state_dict(), zip_layout)
    config.save_pretrained(tmp_path / "src")
    status, out, err = run_script("convert", [tmp_path / "src", tmp_path / "out", "--to", "hf",
                                              "--dtype", dtype, "--tokenizer", tokenizer_dir], capsys)
    assert status == 0 and out.startswith(f"wrote {tmp_path / 'out'} (hf, {dtype}"), err
    assert sorted(os.listdir(tmp_path / "out")) == ["config.json", "merges.txt",
                                                    "model.safetensors", "vocab.json"]
    theirs = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "out", torch_dtype=file_dtype,
                                                          attn_implementation="eager").float().eval()
    rounded = {k: v.to(file_dtype).float() for k, v in sd.items()}
    expected = logits(hf_model(config, rounded), TOKENS)
    diff = float(np.abs(logits(theirs, TOKENS) - expected).max())
    print(f"\nconvert {'zip' if zip_layout else 'legacy'} .bin -> hf {dtype}: max |dlogit| {diff:.2e}")
    assert diff < tol
    params, _ = numpy_gpt2.load(tmp_path / "out")  # and back: the same rounded weights
    for key, value in flatten_params(params).items():
        assert np.array_equal(value, rounded[key].numpy()), key


def test_hf_to_llmc_is_llmc_own_bytes_and_back(tmp_path, capsys):
    config, sd = small(vocab_size=200)
    hf_model(config, sd).save_pretrained(tmp_path / "src")
    status, out, err = run_script("convert", [tmp_path / "src", tmp_path / "m.bin", "--to", "llmc"],
                                  capsys)
    assert status == 0, err
    assert (tmp_path / "m.bin").read_bytes() == llmc_bytes(sd, config.n_head, 200, config.n_positions)
    status, _, err = run_script("convert", [tmp_path / "src", tmp_path / "m16.bin", "--to", "llmc",
                                            "--dtype", "bfloat16"], capsys)
    assert status == 0, err
    assert (tmp_path / "m16.bin").read_bytes() == llmc_bytes(sd, config.n_head, 200,
                                                             config.n_positions, "bfloat16")
    params, _ = numpy_gpt2.load(tmp_path / "m16.bin")
    for key, t in bf16_rounded(sd).items():
        got = flatten_params(params)[key]
        assert np.array_equal(got[:200] if key == "wte.weight" else got, t.numpy()), key


def test_llmc_vocab_size_for_padded_models(tmp_path, capsys):
    config, sd = small(vocab_size=200)
    (tmp_path / "a.bin").write_bytes(llmc_bytes(sd, config.n_head, 200, config.n_positions))
    status, _, err = run_script("convert", [tmp_path / "a.bin", tmp_path / "b.bin", "--to", "llmc",
                                            "--vocab-size", 200], capsys)
    assert status == 0, err
    assert (tmp_path / "b.bin").read_bytes() == (tmp_path / "a.bin").read_bytes()


def test_nanogpt_to_hf_says_gelu_and_keeps_the_padded_vocabulary(tmp_path, capsys):
    config, sd = small(vocab_size=65)
    save_torch(tmp_path / "ckpt.pt", nanogpt_checkpoint(sd, config.n_head, config.n_positions, 65,
                                                        bias=False, compiled=True))
    status, out, err = run_script("convert", [tmp_path / "ckpt.pt", tmp_path / "out", "--to", "hf"],
                                  capsys)
    assert status == 0, err
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["activation_function"] == "gelu" and saved["vocab_size"] == 65
    assert not (tmp_path / "out" / "vocab.json").exists()  # character-level: no GPT-2 tokenizer
    theirs = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "out",
                                                          attn_implementation="eager").eval()
    no_bias = {k: (torch.zeros_like(v) if k.endswith(".bias") else v) for k, v in sd.items()}
    reference = hf_model(transformers.GPT2Config(**{**config.to_dict(), "activation_function": "gelu"}),
                         no_bias)
    assert np.abs(logits(theirs, TOKENS) - logits(reference, TOKENS)).max() < 1e-4


def test_atomic_nothing_is_written_on_error(tmp_path, capsys):
    config, sd = small()
    sd["h.1.mlp.c_fc.weight"][0, 0] = 1e6  # finite in float32, too large for float16
    hf_model(config, sd).save_pretrained(tmp_path / "src")
    status, out, err = run_script("convert", [tmp_path / "src", tmp_path / "out", "--to", "hf"], capsys)
    assert status == 0, err
    before = {n: (tmp_path / "out" / n).read_bytes() for n in os.listdir(tmp_path / "out")}
    status, out, err = run_script("convert", [tmp_path / "src", tmp_path / "out", "--to", "hf",
                                              "--dtype", "float16"], capsys)
    one_line_error(status, out, err, "h.1.mlp.c_fc.weight",
                   "value 1000000.0 cannot be stored as F16 (too large)")
    assert {n: (tmp_path / "out" / n).read_bytes() for n in os.listdir(tmp_path / "out")} == before
    # a user's own file there is never replaced (docs/scripts.md, "Where outputs go")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "config.json").write_text("old")
    status, out, err = run_script("convert", [tmp_path / "src", tmp_path / "mine", "--to", "hf"], capsys)
    one_line_error(status, out, err, "already holds config.json, which this command did not write")
    assert os.listdir(tmp_path / "mine") == ["config.json"]
    assert (tmp_path / "mine" / "config.json").read_text() == "old"


@pytest.mark.parametrize("args,parts", [
    (["{tmp}/nowhere", "{tmp}/out", "--to", "hf"], ["nowhere: no such file or directory"]),
    (["{tmp}/src", "{tmp}/out.bin", "--to", "llmc", "--dtype", "float16"],
     ["llm.c files hold float32 (version 3) or bfloat16 (version 5), not float16"]),
    (["{tmp}/src", "{tmp}/out", "--to", "onnx"], ["argument --to: invalid choice: 'onnx'"]),
    (["{tmp}/src", "{tmp}/o.bin", "--to", "llmc", "--vocab-size", "98"], ["--vocab-size 98 must be in 1..97"]),
    (["{tmp}/src", "{tmp}/out", "--to", "hf", "--tokenizer", "{tmp}"], ["no vocab.json or merges.txt (--tokenizer)"]),
    (["{tmp}/src", "{tmp}/src/config.json/x", "--to", "hf"], ["config.json"]),
])
def test_bad_input_is_one_line(tmp_path, capsys, args, parts):
    config, sd = small()
    hf_model(config, sd).save_pretrained(tmp_path / "src")
    status, out, err = run_script("convert", [a.format(tmp=tmp_path) for a in args], capsys)
    one_line_error(status, out, err, *parts)


def test_never_overwrites_its_source_or_a_training_run(tmp_path, capsys):
    """OUT = the source's directory (hf), an existing file beside the source (llmc), or a place
    in a training run's directory: refused before anything is read or written."""
    config, sd = small()
    hf_model(config, sd).save_pretrained(tmp_path / "src")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "train_state.json").write_text("{}")
    before = {p.name: p.read_bytes() for p in (tmp_path / "src").iterdir()}
    for args, part in [
            (["{tmp}/src", "{tmp}/src", "--to", "hf"], "would overwrite the checkpoint being converted"),
            (["{tmp}/src", "{tmp}/src/../src/", "--to", "hf", "--dtype", "bfloat16"], "would overwrite"),
            (["{tmp}/src", "{tmp}/src/model.safetensors", "--to", "llmc"], "would overwrite"),
            (["{tmp}/src/model.safetensors", "{tmp}/src/config.json", "--to", "llmc"], "would overwrite"),
            (["{tmp}/src", "{tmp}/run", "--to", "hf"], "training run's directory"),
            (["{tmp}/src", "{tmp}/run/model.bin", "--to", "llmc"], "training run's directory"),
            (["{tmp}/src", "{tmp}/run/best", "--to", "hf"], "training run's directory"),
            (["{tmp}/src", "{tmp}/run/x/y", "--to", "hf"], "training run's directory"),
            (["{tmp}/src", "{tmp}/run/best/model.bin", "--to", "llmc"], "training run's directory")]:
        status, out, err = run_script("convert", [a.format(tmp=tmp_path) for a in args], capsys)
        one_line_error(status, out, err, part)
    assert {p.name: p.read_bytes() for p in (tmp_path / "src").iterdir()} == before
    assert os.listdir(tmp_path / "run") == ["train_state.json"]
    status, _, err = run_script("convert", [tmp_path / "src", tmp_path / "src" / "new.bin", "--to", "llmc"],
                                capsys)
    assert status == 0, err  # a new file beside the source is fine


def test_tokenizer_files_come_from_the_environment_too(tmp_path, capsys, tokenizer_dir, monkeypatch):
    """Weights without tokenizer files beside them (an llm.c .bin): --tokenizer, else
    $NUMPY_GPT2_TOKENIZER as generate.py and train.py use it, else one line asking for either."""
    config, sd = small(vocab_size=50257)
    hf_model(config, sd).save_pretrained(tmp_path / "src")
    assert run_script("convert", [tmp_path / "src", tmp_path / "m.bin", "--to", "llmc"], capsys)[0] == 0
    monkeypatch.delenv("NUMPY_GPT2_TOKENIZER", raising=False)
    status, out, err = run_script("convert", [tmp_path / "m.bin", tmp_path / "a", "--to", "hf"], capsys)
    one_line_error(status, out, err, "no vocab.json and merges.txt beside the weights", "NUMPY_GPT2_TOKENIZER")
    monkeypatch.setenv("NUMPY_GPT2_TOKENIZER", tokenizer_dir)
    status, _, err = run_script("convert", [tmp_path / "m.bin", tmp_path / "b", "--to", "hf"], capsys)
    assert status == 0, err
    assert (tmp_path / "b" / "vocab.json").read_bytes() == open(os.path.join(tokenizer_dir, "vocab.json"), "rb").read()


@pytest.mark.parametrize("options,part", [
    ({"activation_function": "gelu"}, "activation_function 'gelu'"),
    ({"activation_function": "relu"}, "activation_function 'relu'"),
    ({"scale_attn_weights": False}, "scale_attn_weights false"),
    ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx true"),
    ({"layer_norm_epsilon": 1e-3}, "layer_norm_epsilon 0.001"),
])
def test_llmc_refuses_a_model_llmc_would_compute_differently(tmp_path, capsys, options, part):
    """llm.c has GPT-2's math only (tanh GELU, eps 1e-5, 1/sqrt(D), MLP 4E) and no header field
    for anything else: another model is refused, in one line, before any file is written."""
    config, sd = small()
    for key, value in options.items():  # the same weights' shapes
        setattr(config, key, value)
    hf_model(config, sd).save_pretrained(tmp_path / "src")
    status, out, err = run_script("convert", [tmp_path / "src", tmp_path / "m.bin", "--to", "llmc"], capsys)
    one_line_error(status, out, err, "llm.c's format cannot hold this model", part, "--to hf")
    assert not (tmp_path / "m.bin").exists() and sorted(os.listdir(tmp_path)) == ["src"]


def test_llmc_refuses_nanogpt_exact_gelu_and_other_widths(tmp_path, capsys):
    from numpy_gpt2.io.formats.llmc import check_llmc_config, write_llmc
    config, sd = small(vocab_size=65)
    save_torch(tmp_path / "ckpt.pt", nanogpt_checkpoint(sd, config.n_head, config.n_positions, 65))
    status, out, err = run_script("convert", [tmp_path / "ckpt.pt", tmp_path / "m.bin", "--to", "llmc"],
                                  capsys)
    one_line_error(status, out, err, "activation_function 'gelu' (llm.c: the tanh GELU, gelu_new)")
    wide = numpy_gpt2.GPT2Config(n_layer=1, n_head=2, n_embd=8, n_ctx=4, vocab_size=5, n_inner=40)
    with pytest.raises(ValueError, match=r"n_inner 40 \(llm.c: 4 \* n_embd = 32\)"):
        check_llmc_config(wide)
    with pytest.raises(ValueError, match="cannot hold this model"):
        write_llmc(str(tmp_path / "w.bin"), numpy_gpt2.init_params(wide), wide)
    assert not (tmp_path / "w.bin").exists()
    for name in numpy_gpt2.config.TANH_GELU_NAMES:  # every tanh form is llm.c's GELU
        check_llmc_config(numpy_gpt2.GPT2Config(n_layer=1, n_head=2, n_embd=8, activation_function=name))
