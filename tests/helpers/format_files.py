"""Write checkpoints in the other formats people hold, with torch as the writer and the oracle.

  * pytorch_model.bin: torch.save of a GPT2LMHeadModel's state dict (zip layout, or the
    legacy one with _use_new_zipfile_serialization=False), with or without "transformer.";
  * sharded checkpoints: save_pretrained(max_shard_size=...) (safetensors or .bin);
  * nanoGPT ckpt.pt: the dict nanoGPT's train.py saves (model state dict with nn.Linear
    (out, in) weights, optimizer state of a real torch AdamW step, model_args, iter_num,
    best_val_loss as a 0-dim tensor, config), optionally "_orig_mod."-prefixed, bias=False,
    with attn.bias mask buffers, vocabulary padded;
  * llm.c model files: the 256-int32 header and llm.c's parameter order (train_gpt2.py
    write_model), float32 (version 3) or bfloat16 (version 5).
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
import transformers

from helpers.checkpoints import make_config, random_state_dict

LINEAR = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def hf_model(config, sd) -> transformers.GPT2LMHeadModel:
    """GPT2LMHeadModel (eval, eager attention) with the GPT-2-layout state dict sd."""
    config._attn_implementation = "eager"
    model = transformers.GPT2LMHeadModel(config).eval()
    missing, unexpected = model.transformer.load_state_dict(sd, strict=False)
    assert not unexpected and all(k.endswith("attn.bias") or k.endswith("masked_bias") for k in missing)
    return model


def logits(model, tokens) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(tokens)).logits.double().numpy()


def nanogpt_checkpoint(sd, n_head, block_size, vocab_size, *, bias=True, compiled=False,
                       mask_buffers=False, pad_to=None):
    """The dict nanoGPT's train.py torch.saves, from a GPT-2-layout state dict sd (biases
    are dropped when bias=False; wte is zero-padded to pad_to rows)."""
    model = {}
    for key, t in sd.items():
        if not bias and key.endswith(".bias"):
            continue
        t = t.t().contiguous() if key.endswith(LINEAR) else t.clone()
        if key == "wte.weight" and pad_to:
            t = torch.cat([t, torch.zeros(pad_to - t.shape[0], t.shape[1])])
        model["transformer." + key] = t
        if mask_buffers and key.endswith("attn.c_attn.weight"):
            P = block_size
            model["transformer." + key.replace("c_attn.weight", "bias")] = \
                torch.tril(torch.ones(P, P)).view(1, 1, P, P)
    model["lm_head.weight"] = model["transformer.wte.weight"]  # tied: the same tensor
    n_layer = 1 + max(int(k.split(".")[2]) for k in model if k.startswith("transformer.h."))
    params = [torch.nn.Parameter(t.clone()) for k, t in model.items()
              if not k.endswith("attn.bias") and k != "lm_head.weight"]
    optimizer = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    sum((p * p).sum() for p in params).backward()
    optimizer.step()
    if compiled:
        model = {"_orig_mod." + k: v for k, v in model.items()}
    model_args = dict(n_layer=n_layer, n_head=n_head, n_embd=sd["wte.weight"].shape[1],
                      block_size=block_size, bias=bias, vocab_size=pad_to or vocab_size,
                      dropout=0.0)
    return {"model": model, "optimizer": optimizer.state_dict(), "model_args": model_args,
            "iter_num": 250, "best_val_loss": torch.tensor(1.4697),
            "config": {"out_dir": "out-shakespeare-char", "eval_interval": 250,
                       "dataset": "shakespeare_char", "learning_rate": 1e-3, "compile": compiled,
                       "bias": bias, "dtype": "float32"}}


def llmc_bytes(sd, n_head, vocab_size, n_ctx, dtype="float32") -> bytes:
    """An llm.c model file of the GPT-2-layout state dict sd, as train_gpt2.py writes it
    (vocabulary zero-padded to a multiple of 128, matrices (out, in))."""
    E = sd["wte.weight"].shape[1]
    L = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("h."))
    Vp = math.ceil(vocab_size / 128) * 128
    header = np.zeros(256, "<i4")
    header[:8] = [20240326, 3 if dtype == "float32" else 5, n_ctx, vocab_size, L, n_head, E, Vp]
    wte = torch.cat([sd["wte.weight"], torch.zeros(Vp - vocab_size, E)])
    order = [wte, sd["wpe.weight"]]
    for name in ("ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias",
                 "attn.c_proj.weight", "attn.c_proj.bias", "ln_2.weight", "ln_2.bias",
                 "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias"):
        for i in range(L):
            t = sd[f"h.{i}.{name}"]
            order.append(t.t() if name in LINEAR else t)
    order += [sd["ln_f.weight"], sd["ln_f.bias"]]
    raw = [header.tobytes()]
    for t in order:
        t = t.contiguous()
        raw.append(t.numpy().astype("<f4").tobytes() if dtype == "float32"
                   else t.to(torch.bfloat16).view(torch.int16).numpy().tobytes())
    return b"".join(raw)


def bf16_rounded(sd):
    return {k: v.to(torch.bfloat16).float() for k, v in sd.items()}


def small(n_layer=2, n_head=2, n_embd=32, n_ctx=64, vocab_size=97, seed=0, **kw):
    """(transformers config, GPT-2-layout state dict) of a small random model."""
    config = make_config(n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_ctx=n_ctx,
                         vocab_size=vocab_size, **kw)
    return config, random_state_dict(config, seed=seed)


def save_torch(path, obj, zip_layout=True):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    torch.save(obj, path, _use_new_zipfile_serialization=zip_layout)
