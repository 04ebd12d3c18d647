"""Build GPT-2 checkpoints in the exact on-disk formats of the originals, with random weights.

Real GPT-2 weights cannot be downloaded here, so tests write their own files and load the
PyTorch reference (transformers.GPT2LMHeadModel) from the same file. Layouts (see
../shared/gpt2-checkpoint-layout.md):

  "hub"            openai-community/gpt2's model.safetensors: no "transformer." prefix,
                   no lm_head, F32 h.N.attn.bias [1,1,n_ctx,n_ctx] mask buffers, metadata
                   {"format": "pt"}, data block NOT aligned (header not padded).
  "save_pretrained" what GPT2LMHeadModel.save_pretrained() writes: "transformer." prefix,
                   no buffers, no lm_head.
  "variant"        hub repos' mixes: prefix + masked_bias buffers + an explicit lm_head.weight.
Any layout can be stored as F32, F16 or BF16.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import torch
import transformers

SAFETENSORS_DTYPE = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
                     torch.float64: "F64"}


def make_config(n_layer=2, n_head=2, n_embd=32, n_ctx=64, vocab_size=97, **kw):
    return transformers.GPT2Config(
        n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_positions=n_ctx, n_ctx=n_ctx,
        vocab_size=vocab_size, activation_function="gelu_new", layer_norm_epsilon=1e-5,
        bos_token_id=vocab_size - 1, eos_token_id=vocab_size - 1,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **kw)


def random_state_dict(config, seed=0, scale=1.0):
    """Random GPT-2 weights (no prefix, float32 torch tensors), scaled so activations are O(1),
    softmaxes are far from uniform and logits spread over tens of units."""
    g = torch.Generator().manual_seed(seed)
    E, V, P = config.n_embd, config.vocab_size, config.n_positions

    def normal(*shape, std=1.0, mean=0.0):
        return torch.randn(*shape, generator=g) * std * scale + mean

    sd = {"wte.weight": normal(V, E, std=1.0), "wpe.weight": normal(P, E, std=0.5)}
    for i in range(config.n_layer):
        p = f"h.{i}."
        sd.update({
            p + "ln_1.weight": normal(E, std=0.2, mean=1.0), p + "ln_1.bias": normal(E, std=0.2),
            p + "attn.c_attn.weight": normal(E, 3 * E, std=2.0 / math.sqrt(E)),
            p + "attn.c_attn.bias": normal(3 * E, std=0.2),
            p + "attn.c_proj.weight": normal(E, E, std=1.0 / math.sqrt(E)),
            p + "attn.c_proj.bias": normal(E, std=0.1),
            p + "ln_2.weight": normal(E, std=0.2, mean=1.0), p + "ln_2.bias": normal(E, std=0.2),
            p + "mlp.c_fc.weight": normal(E, 4 * E, std=1.5 / math.sqrt(E)),
            p + "mlp.c_fc.bias": normal(4 * E, std=0.2),
            p + "mlp.c_proj.weight": normal(4 * E, E, std=1.0 / math.sqrt(4 * E)),
            p + "mlp.c_proj.bias": normal(E, std=0.1),
        })
    sd["ln_f.weight"] = normal(E, std=0.2, mean=1.0)
    sd["ln_f.bias"] = normal(E, std=0.2)
    return sd


def write_safetensors(path, tensors: dict, metadata=None, align=True):
    """Write torch tensors as safetensors by hand, so the header padding (alignment) is ours
    to choose: the hub's GPT-2 file has an unpadded header and an unaligned data block."""
    header, blobs, offset = {}, [], 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, t in tensors.items():
        t = t.contiguous()
        raw = t.view(torch.int16).numpy().tobytes() if t.dtype == torch.bfloat16 else t.numpy().tobytes()
        header[name] = {"dtype": SAFETENSORS_DTYPE[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    if align:
        h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little"))
        f.write(h)
        for raw in blobs:
            f.write(raw)


def checkpoint_tensors(sd, config, layout="hub", dtype=torch.float32):
    """The tensors (name -> tensor) a checkpoint file of `layout` holds."""
    P = config.n_positions
    out = {}
    prefix = "" if layout == "hub" else "transformer."
    for key, t in sd.items():
        out[prefix + key] = t.to(dtype)
        if key.endswith("ln_1.bias") and layout in ("hub", "variant"):
            i = key.split(".")[1]
            if layout == "hub":
                out[f"h.{i}.attn.bias"] = torch.tril(torch.ones(P, P)).view(1, 1, P, P).to(dtype)
            else:
                out[f"transformer.h.{i}.attn.masked_bias"] = torch.tensor(-1e4).to(dtype)
    if layout == "variant":
        out["lm_head.weight"] = sd["wte.weight"].to(dtype)
    return out


def write_checkpoint(directory, config, layout="hub", dtype=torch.float32, seed=0, scale=1.0,
                     with_config=True):
    """Write model.safetensors (+ config.json) into `directory`; returns the state dict
    (float32, before any F16/BF16 rounding)."""
    os.makedirs(directory, exist_ok=True)
    sd = random_state_dict(config, seed=seed, scale=scale)
    if layout == "save_pretrained" and dtype == torch.float32:
        model = transformers.GPT2LMHeadModel(config)
        model.transformer.load_state_dict(sd, strict=False)
        model.save_pretrained(directory, safe_serialization=True)
    else:
        write_safetensors(os.path.join(directory, "model.safetensors"),
                          checkpoint_tensors(sd, config, layout, dtype),
                          metadata={"format": "pt"}, align=(layout != "hub"))
        if with_config:
            config.save_pretrained(directory)
    if not with_config and os.path.exists(os.path.join(directory, "config.json")):
        os.remove(os.path.join(directory, "config.json"))
    return sd


def reference_model(directory, dtype=torch.float32):
    """transformers' GPT2LMHeadModel loaded from the same checkpoint directory (eval mode)."""
    model = transformers.GPT2LMHeadModel.from_pretrained(directory, torch_dtype=dtype,
                                                         attn_implementation="eager")
    return model.eval()
