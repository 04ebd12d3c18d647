"""scripts/dump.py and scripts/compare.py: the file format, numpy_gpt2 against the oracle's
dump, and deliberately broken candidates caught at the right FIRST tensor.

Broken candidates are numpy_gpt2 runs with one thing changed (a monkeypatched function, a
modified config, a modified copy of the weights), saved as candidate files; the package has
no bug switches."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import numpy_gpt2
import numpy_gpt2.layers as layers
import numpy_gpt2.fast.forward as layers_fast
from helpers.checkpoints import (checkpoint_tensors, make_config, random_state_dict, reference_model,
                                 write_checkpoint, write_safetensors)
from numpy_gpt2.debug.capture import activation_names, activations
from numpy_gpt2.debug.dump_format import load_activations, save_activations
from helpers.oracle_activations import one_torch_thread, write_oracle_dump  # noqa: F401  (autouse fixture)
from helpers.run_scripts import SCRIPTS, load_script, run_script

CFG = dict(n_layer=2, n_head=4, n_embd=32, n_ctx=16, vocab_size=97)
TOKENS = [3, 14, 15, 92, 65, 35, 89, 79, 32, 38, 46]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    directory = tmp_path_factory.mktemp("dump_ckpt")
    write_checkpoint(directory, make_config(**CFG))
    return directory


@pytest.fixture(scope="module")
def small_embedding_ckpt(tmp_path_factory):
    """wte and wpe scaled by 1e-2, so the residual stream entering h.0.ln_1 has variance ~1e-4:
    then LayerNorm's eps (1e-5) changes its output by ~eps/(2 var) = 5% and eps=1e-12 shows.
    (With O(1) variance the difference, ~4e-6 relative, is below float32 tolerances.)"""
    directory = tmp_path_factory.mktemp("small_emb_ckpt")
    config = make_config(**CFG)
    sd = random_state_dict(config, seed=1)
    sd["wte.weight"] *= 1e-2
    sd["wpe.weight"] *= 1e-2
    write_safetensors(os.path.join(directory, "model.safetensors"), checkpoint_tensors(sd, config),
                      metadata={"format": "pt"})
    config.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def reference_dump(ckpt, tmp_path_factory):
    """numpy_gpt2's dump (with the softmax probabilities), written by scripts/dump.py."""
    path = tmp_path_factory.mktemp("dumps") / "ref.safetensors"
    status = run_script_plain("dump", ["--model", ckpt, "--tokens", ",".join(map(str, TOKENS)),
                                       "--out", path, "--names", "*,*softmax"])
    assert status == 0
    return path


def run_script_plain(name, argv):
    """Exit status of scripts/<name>.py (its output goes to the test's captured output)."""
    return load_script(name).main([str(a) for a in argv])


def first_failure(out: str) -> str | None:
    lines = [line for line in out.splitlines() if line.startswith("FIRST FAILURE: ")]
    return lines[0].split()[2].rstrip(":") if lines else None


def save_candidate(path, params, config, names="*,*softmax", tokens=TOKENS, transform=None):
    acts = activations(params, config, np.array(tokens), names)
    if transform:
        acts = transform(acts)
    save_activations(path, tokens, acts, {"model": "candidate", "dtype": "float32"})
    return path


# ---- the file ----------------------------------------------------------------------------

def test_dump_file_format(ckpt, tmp_path, capsys):
    out = tmp_path / "a.safetensors"
    status, stdout, _ = run_script("dump", ["--model", ckpt, "--tokens", "5, 6,7", "--out", out,
                                            "--dtype", "float64"], capsys)
    assert status == 0 and "wrote 20 activations" in stdout
    with open(out, "rb") as f:  # read the header by hand, as a C or Rust reader would
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    meta = header.pop("__metadata__")
    params, config = numpy_gpt2.load(ckpt, dtype=np.float64)
    names = [n for n in activation_names(config) if not n.endswith("softmax")]
    assert meta["format"] == "numpy_gpt2.activations"
    assert meta["names"].split(",") == names
    assert meta["model"] == str(ckpt) and meta["dtype"] == "float64"
    assert "numpy_gpt2_version" in meta and json.loads(meta["config"])["n_layer"] == 2
    assert header["tokens"]["dtype"] == "I64" and header["tokens"]["shape"] == [3]
    assert set(header) == set(names) | {"tokens"}
    assert header["h.1.mlp.c_fc"] == {**header["h.1.mlp.c_fc"], "dtype": "F64", "shape": [3, 128]}
    tokens, acts, meta2 = load_activations(out)
    assert tokens.tolist() == [5, 6, 7] and list(acts) == names and meta2 == meta
    expected = activations(params, config, np.array([5, 6, 7]))
    for name in names:
        assert np.array_equal(acts[name], expected[name]), name


def test_dump_names_pattern_and_prompt(ckpt, tmp_path, capsys, tokenizer_dir):
    out = tmp_path / "b.safetensors"
    status, _, _ = run_script("dump", ["--model", ckpt, "--tokens", "1,2", "--out", out,
                                       "--names", "h.1.*softmax,logits,h.0.ln_*"], capsys)
    assert status == 0
    assert list(load_activations(out)[1]) == ["h.0.ln_1", "h.0.ln_2", "h.1.attn.softmax", "logits"]
    # --prompt tokenizes with the GPT-2 tokenizer; these ids do not fit a 97-token vocabulary
    status, _, err = run_script("dump", ["--model", ckpt, "--prompt", "Hello world", "--out", out],
                                capsys)
    assert status == 2 and "token id 15496" in err and "outside [0, 97)" in err
    for bad, message in [(["--tokens", "1,x"], "comma-separated integers"),
                         (["--tokens", "1", "--names", "h.7.*"], "'h.7.*' matches no name"),
                         (["--tokens", "1,200"], "token id 200")]:
        status, _, err = run_script("dump", ["--model", ckpt, "--out", out] + bad, capsys)
        assert status == 2 and message in err and len(err.strip().splitlines()) == 1


# ---- numpy_gpt2 against the oracle ---------------------------------------------------------

@pytest.mark.parametrize("dtype,tolerance", [("float32", []),  # the defaults
                                             ("float64", ["--atol", "1e-11", "--rtol", "1e-11"])])
def test_numpy_gpt2_dump_matches_oracle_dump(ckpt, tmp_path, capsys, dtype, tolerance):
    oracle = tmp_path / "oracle.safetensors"
    write_oracle_dump(oracle, reference_model(ckpt, getattr(torch, dtype)), TOKENS, "*,*softmax",
                      dtype)
    ours = tmp_path / "ours.safetensors"
    assert run_script_plain("dump", ["--model", ckpt, "--tokens", ",".join(map(str, TOKENS)),
                                     "--out", ours, "--names", "*,*softmax", "--dtype", dtype]) == 0
    status, out, _ = run_script("compare", [oracle, ours] + tolerance, capsys)
    assert status == 0, out
    assert f"OK: all {2 + 9 * 2 + 2} compared tensors within tolerance" in out
    # and live: numpy_gpt2 run on the oracle file's tokens, model given explicitly
    status, out, _ = run_script("compare", [oracle, "live", "--model", ckpt, "--dtype", dtype]
                                + tolerance, capsys)
    assert status == 0, out


# ---- broken candidates -----------------------------------------------------------------

def erf_gelu(x):
    """The exact GELU, x * Phi(x) (transformers' "gelu"): not what GPT-2 was trained with."""
    return (0.5 * x * (1.0 + torch.special.erf(torch.as_tensor(x) / np.sqrt(2.0)).numpy())).astype(x.dtype)


def test_erf_gelu_is_caught_at_h0_mlp_gelu(ckpt, reference_dump, tmp_path, capsys, monkeypatch):
    params, config = numpy_gpt2.load(ckpt)
    monkeypatch.setattr(layers, "gelu", erf_gelu)
    monkeypatch.setattr(layers_fast, "gelu_fast", erf_gelu)  # the fast path forward runs
    cand = save_candidate(tmp_path / "cand.safetensors", params, config)
    status, out, _ = run_script("compare", [reference_dump, cand], capsys)
    assert status == 1 and first_failure(out) == "h.0.mlp.gelu", out
    # the same through a live run of the patched package
    status, out, _ = run_script("compare", [reference_dump, "live"], capsys)
    assert status == 1 and first_failure(out) == "h.0.mlp.gelu", out


def test_tiny_eps_is_caught_at_h0_ln_1(small_embedding_ckpt, tmp_path, capsys):
    ref = tmp_path / "ref.safetensors"
    assert run_script_plain("dump", ["--model", small_embedding_ckpt, "--out", ref,
                                     "--tokens", ",".join(map(str, TOKENS))]) == 0
    params, config = numpy_gpt2.load(small_embedding_ckpt)
    cand = save_candidate(tmp_path / "cand.safetensors", params,
                          dataclasses.replace(config, layer_norm_epsilon=1e-12), names="*")
    status, out, _ = run_script("compare", [ref, cand], capsys)
    assert status == 1 and first_failure(out) == "h.0.ln_1", out


def test_c_attn_weight_read_as_transposed_is_caught_at_h0_c_attn(ckpt, reference_dump, tmp_path,
                                                                  capsys):
    """A port that reads the (E, 3E) Conv1D weight as a (3E, E) nn.Linear weight (and so
    computes x @ W.reshape(3E, E).T): right shapes, wrong values."""
    params, config = numpy_gpt2.load(ckpt)
    E = config.n_embd
    for block in params["h"]:
        w = block["attn"]["c_attn"]["weight"]
        block["attn"]["c_attn"]["weight"] = np.ascontiguousarray(w.reshape(3 * E, E).T)
    cand = save_candidate(tmp_path / "cand.safetensors", params, config)
    status, out, _ = run_script("compare", [reference_dump, cand], capsys)
    assert status == 1 and first_failure(out) == "h.0.attn.c_attn", out


def test_transposed_tensors_are_named(ckpt, reference_dump, tmp_path, capsys):
    """A port computing W^T x^T stores c_attn's output as (3E, T): reported as TRANSPOSED
    (a shape mismatch), and it matches once transposed back. A square (T, T) softmax stored
    (key, query) has the right shape: reported as matching the reference transposed."""
    params, config = numpy_gpt2.load(ckpt)

    def transpose_some(acts):
        acts["h.0.attn.c_attn"] = np.ascontiguousarray(acts["h.0.attn.c_attn"].T)
        acts["h.1.attn.softmax"] = np.ascontiguousarray(np.swapaxes(acts["h.1.attn.softmax"], -1, -2))
        return acts

    cand = save_candidate(tmp_path / "cand.safetensors", params, config, transform=transpose_some)
    status, out, _ = run_script("compare", [reference_dump, cand], capsys)
    assert status == 1 and first_failure(out) == "h.0.attn.c_attn", out
    row = next(line for line in out.splitlines() if line.startswith("h.0.attn.c_attn "))
    assert "(11,96) vs (96,11)" in row and "SHAPE: TRANSPOSED" in row and "transposed back it matches" in row
    row = next(line for line in out.splitlines() if line.startswith("h.1.attn.softmax "))
    assert "FAIL" in row and "values match the reference TRANSPOSED" in row
    assert "2 of 22 compared tensors exceed the tolerance" in out


@pytest.mark.parametrize("names,first", [("*,*softmax", "h.0.attn.softmax"), ("*", "h.0.attn")])
def test_missing_causal_mask_is_caught_at_h0_attention(ckpt, reference_dump, tmp_path, capsys,
                                                       monkeypatch, names, first):
    params, config = numpy_gpt2.load(ckpt)
    monkeypatch.setattr(layers, "causal_mask", lambda T, S: np.ones((T, S), dtype=bool))
    # the same bug in the fast path, whose mask is additive (0 / -inf)
    monkeypatch.setattr(layers_fast, "_future_mask", lambda n, dtype: np.zeros((n, n), dtype))
    cand = save_candidate(tmp_path / "cand.safetensors", params, config, names=names)
    status, out, _ = run_script("compare", [reference_dump, cand], capsys)
    assert status == 1 and first_failure(out) == first, out


# ---- reporting and errors ------------------------------------------------------------------

def write_like_a_port(path, tensors: dict):
    """A safetensors file written by hand, the way the README tells a C or Rust port to:
    8-byte little-endian header length, JSON header (no metadata), row-major data."""
    dtypes = {np.dtype("<f4"): "F32", np.dtype("<f8"): "F64", np.dtype("<i4"): "I32",
              np.dtype("<i8"): "I64"}
    header, blobs, offset = {}, [], 0
    for name, a in tensors.items():
        raw = np.ascontiguousarray(a).tobytes()
        header[name] = {"dtype": dtypes[a.dtype], "shape": list(a.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    head = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(len(head).to_bytes(8, "little") + head + b"".join(blobs))


def test_a_ports_file_without_metadata(ckpt, reference_dump, tmp_path, capsys):
    """Tensors in any order, int32 tokens of shape (1, T), no metadata: compared in forward
    order; live mode needs --model then."""
    params, config = numpy_gpt2.load(ckpt)
    acts = activations(params, config, np.array(TOKENS), "h.1,h.1.ln_1,wte,logits")
    port = tmp_path / "port.safetensors"
    write_like_a_port(port, {"logits": acts["logits"], "h.1": acts["h.1"], "wte": acts["wte"],
                             "tokens": np.array([TOKENS], dtype=np.int32),
                             "h.1.ln_1": acts["h.1.ln_1"].astype(np.float64)})
    status, out, _ = run_script("compare", [reference_dump, port], capsys)
    assert status == 0, out
    assert "18 reference tensor(s) missing from the candidate" in out
    compared = [line.split()[0] for line in out.splitlines() if line.endswith(" ok")]
    assert compared == ["wte", "h.1.ln_1", "h.1", "logits"]
    status, out, err = run_script("compare", ["live", port], capsys)
    assert status == 2 and "pass --model" in err
    status, out, _ = run_script("compare", ["live", port, "--model", ckpt], capsys)
    assert status == 0 and "OK: all 4 compared tensors within tolerance" in out


def test_missing_extra_and_reshaped_tensors_are_reported(ckpt, reference_dump, tmp_path, capsys):
    params, config = numpy_gpt2.load(ckpt)

    def edit(acts):
        del acts["h.1.ln_2"]
        acts["my.debug.tensor"] = np.zeros(3, np.float32)
        acts["h.0.ln_1"] = acts["h.0.ln_1"][None]  # an extra batch axis of 1 is tolerated
        return acts

    cand = save_candidate(tmp_path / "cand.safetensors", params, config, transform=edit)
    status, out, _ = run_script("compare", [reference_dump, cand], capsys)
    assert status == 0, out
    assert "1 reference tensor(s) missing from the candidate: h.1.ln_2" in out
    lines = {line.split()[0]: line for line in out.splitlines() if line and not line.startswith(("reference", "candidate"))}
    assert "missing in candidate" in lines["h.1.ln_2"]
    assert "extra: not in reference" in lines["my.debug.tensor"]
    assert "ok: batch axis of size 1 ignored" in lines["h.0.ln_1"]

    def flatten(acts):
        acts["h.0.mlp.c_fc"] = acts["h.0.mlp.c_fc"].reshape(-1)
        acts["h.0.mlp.gelu"] = acts["h.0.mlp.gelu"][:5]
        return acts

    cand = save_candidate(tmp_path / "cand2.safetensors", params, config, transform=flatten)
    status, out, _ = run_script("compare", [reference_dump, cand], capsys)
    assert status == 1 and first_failure(out) == "h.0.mlp.c_fc", out
    assert "same number of elements; reshaped to the reference's shape it matches" in out
    assert "shape mismatch: 640 elements vs 1408" in out


def test_values_table_and_tolerances(ckpt, reference_dump, tmp_path, capsys):
    params, config = numpy_gpt2.load(ckpt)

    def nudge(acts):
        acts["h.1.mlp.c_proj"][4, 7] += 3e-3
        return acts

    cand = save_candidate(tmp_path / "cand.safetensors", params, config, transform=nudge)
    ref_value = float(load_activations(reference_dump)[1]["h.1.mlp.c_proj"][4, 7])
    status, out, _ = run_script("compare", [reference_dump, cand], capsys)
    assert status == 1 and first_failure(out) == "h.1.mlp.c_proj"
    assert f"FIRST FAILURE: h.1.mlp.c_proj: max abs err 0.003 at (4,7): reference {ref_value:.6g}" in out
    row = next(line for line in out.splitlines() if line.startswith("h.1.mlp.c_proj "))
    assert "3.00e-03" in row and "(4,7)" in row and "FAIL" in row
    status, out, _ = run_script("compare", [reference_dump, cand, "--atol", "4e-3"], capsys)
    assert status == 0, out

    def poison(acts):
        acts["h.1.attn"][2, 3] = np.nan
        return acts

    cand = save_candidate(tmp_path / "nan.safetensors", params, config, transform=poison)
    status, out, _ = run_script("compare", [reference_dump, cand], capsys)
    assert status == 1 and first_failure(out) == "h.1.attn", out
    assert "FIRST FAILURE: h.1.attn: max abs err inf at (2,3)" in out and "candidate nan" in out
    status, out, _ = run_script("compare", [reference_dump, cand, "--names", "h.0.*"], capsys)
    assert status == 0 and "h.1.mlp.c_proj" not in out


def test_input_errors_exit_2_with_one_line(ckpt, reference_dump, tmp_path, capsys):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    other_tokens = tmp_path / "other.safetensors"
    save_activations(other_tokens, [1, 2], {"logits": np.zeros((2, 97), np.float32)})
    unrelated = tmp_path / "unrelated.safetensors"
    save_activations(unrelated, TOKENS, {"foo": np.zeros(2, np.float32)})
    no_model = tmp_path / "no_model.safetensors"
    save_activations(no_model, TOKENS, {"logits": np.zeros((11, 97), np.float32)})
    cases = [([garbage, reference_dump], "cannot read as safetensors"),
             ([tmp_path / "nope.safetensors", reference_dump], "no such file"),
             ([tmp_path, reference_dump], f"{tmp_path}: a directory, not a dump file (.safetensors)"),
             ([reference_dump, other_tokens], "different tokens"),
             ([reference_dump, unrelated], "no tensor names in common"),
             ([no_model, "live"], "pass --model"),
             ([unrelated, "live", "--model", ckpt], "holds no numpy_gpt2 activation or gradient names"),
             ([reference_dump, "live", "--model", tmp_path / "missing_dir"], "no such file")]
    for argv, message in cases:
        status, out, err = run_script("compare", argv, capsys)
        assert status == 2 and message in err and len(err.strip().splitlines()) == 1, (argv, err)
    status, _, err = run_script("compare", ["live", "live"], capsys)
    assert status == 2 and "at most one" in err


def test_compare_as_a_process_exit_codes(ckpt, reference_dump, tmp_path):
    """Run as a real command: exit status and a message without a traceback."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(SCRIPTS)] + os.environ.get("PYTHONPATH", "").split(os.pathsep)))
    script = os.path.join(SCRIPTS, "compare.py")
    ok = subprocess.run([sys.executable, script, reference_dump, reference_dump],
                        capture_output=True, text=True, env=env)
    assert ok.returncode == 0 and "OK: all 22 compared tensors" in ok.stdout
    bad = subprocess.run([sys.executable, script, reference_dump, tmp_path / "missing.safetensors"],
                         capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip() == f"compare.py: error: {tmp_path / 'missing.safetensors'}: no such file"
