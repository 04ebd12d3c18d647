"""A tied checkpoint whose only copy of the embedding is lm_head.weight loads, wte taken from it.

safetensors.torch.save_model(GPT2LMHeadModel) and huggingface_hub.save_torch_state_dict
drop one name of each shared tensor, and for GPT-2 they keep lm_head.weight and drop
transformer.wte.weight (checked below on the files they write). Oracle: the logits of the
transformers model that was saved (float64 1e-10, float32 1e-4 absolute, logits spread over
tens of units). Untied checkpoints keep both tensors, as before; an untied one without wte
is refused.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

import numpy_gpt2
from helpers.format_files import hf_model, logits, save_torch, small
from numpy_gpt2 import CheckpointError

TOKENS = np.array([[3, 17, 42, 5, 0, 96, 11, 8], [1, 2, 3, 4, 5, 6, 7, 8]])
ATOL = {np.float32: 1e-4, np.float64: 1e-10}
TORCH = {np.float32: torch.float32, np.float64: torch.float64}


def tied_model(dtype, **kw):
    config, sd = small(**kw)
    return config, hf_model(config, sd).to(TORCH[dtype])


def file_keys(path):
    from safetensors import safe_open
    with safe_open(path, framework="np") as f:
        return set(f.keys())


def assert_loads_like(source, model, dtype, **load_kw):
    params, config = numpy_gpt2.load(source, dtype=dtype, **load_kw)
    assert "lm_head" not in params and config.tie_word_embeddings
    np.testing.assert_array_equal(params["wte"]["weight"],
                                  model.transformer.wte.weight.detach().numpy().astype(dtype))
    ours = numpy_gpt2.forward(params, config, TOKENS)
    assert ours.dtype == dtype
    np.testing.assert_allclose(ours, logits(model, TOKENS), rtol=0, atol=ATOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_save_model_of_a_tied_gpt2_loads(tmp_path, dtype):
    from safetensors.torch import save_model
    config, model = tied_model(dtype)
    save_model(model, tmp_path / "model.safetensors")
    keys = file_keys(tmp_path / "model.safetensors")
    assert "lm_head.weight" in keys and "transformer.wte.weight" not in keys  # what it writes
    config.save_pretrained(tmp_path)
    assert_loads_like(tmp_path, model, dtype)
    # The file alone (no config.json): the shapes are read from lm_head.weight.
    (tmp_path / "config.json").unlink()
    with pytest.warns(UserWarning, match="no config.json; inferred n_layer=2, n_embd=32"):
        assert_loads_like(tmp_path / "model.safetensors", model, dtype, n_head=2)


def test_sharded_save_torch_state_dict_of_a_tied_gpt2_loads(tmp_path):
    from huggingface_hub import save_torch_state_dict
    config, model = tied_model(np.float32)
    save_torch_state_dict(model.state_dict(), tmp_path, max_shard_size=20_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert "lm_head.weight" in index["weight_map"] and "transformer.wte.weight" not in index["weight_map"]
    assert len(set(index["weight_map"].values())) > 1
    config.save_pretrained(tmp_path)
    assert_loads_like(tmp_path, model, np.float32)


@pytest.mark.parametrize("zip_layout", [True, False], ids=["zip", "legacy"])
def test_pytorch_model_bin_with_only_lm_head(tmp_path, zip_layout):
    config, model = tied_model(np.float32)
    state = {k: v for k, v in model.state_dict().items() if k != "transformer.wte.weight"}
    save_torch(tmp_path / "pytorch_model.bin", state, zip_layout)
    config.save_pretrained(tmp_path)
    assert_loads_like(tmp_path, model, np.float32)


def test_untied_checkpoints_are_read_as_before(tmp_path):
    """tie_word_embeddings=false: both tensors kept, lm_head.weight the head; without
    wte.weight: refused (the head is not the embedding of an untied model)."""
    from safetensors.torch import save_model
    config, sd = small(tie_word_embeddings=False)
    model = hf_model(config, sd)
    with torch.no_grad():
        model.lm_head.weight.copy_(torch.flip(sd["wte.weight"], [0]))
    save_model(model, tmp_path / "model.safetensors")
    assert {"lm_head.weight", "transformer.wte.weight"} <= file_keys(tmp_path / "model.safetensors")
    config.save_pretrained(tmp_path)
    params, cfg = numpy_gpt2.load(tmp_path, dtype=np.float64)
    assert not cfg.tie_word_embeddings
    np.testing.assert_array_equal(params["lm_head"]["weight"], model.lm_head.weight.detach().numpy())
    np.testing.assert_array_equal(params["wte"]["weight"], sd["wte.weight"].numpy())
    np.testing.assert_allclose(numpy_gpt2.forward(params, cfg, TOKENS), logits(model.double(), TOKENS),
                               rtol=0, atol=1e-10)

    from safetensors.numpy import load_file, save_file
    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["transformer.wte.weight"]
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="missing keys wte.weight"):
        numpy_gpt2.load(tmp_path)
    # Tied in config.json but the head differs from wte: refused, as before.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config.tie_word_embeddings = True
        config.save_pretrained(tmp_path)
    tensors["transformer.wte.weight"] = sd["wte.weight"].numpy()
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="lm_head.weight differs from wte.weight"):
        numpy_gpt2.load(tmp_path)
