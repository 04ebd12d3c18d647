"""TransformerLens as the oracle for numpy_gpt2.interp: a HookedTransformer holding the same
weights as a numpy_gpt2 weight dict (through transformers' GPT2LMHeadModel and
TransformerLens' own convert_gpt2_weights), and its hook values under numpy_gpt2's names.

TransformerLens' process_weights upcasts to float32 and back, so in float64 the processing
calls its individual functions (fold_layer_norm, center_writing_weights, center_unembed,
fold_value_biases, then b_O centred) in load_and_process_state_dict's order, in float64.
"""

from __future__ import annotations

import numpy as np
import torch
import transformers
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens.components import LayerNormPre
from transformer_lens.pretrained.weight_conversions.gpt2 import convert_gpt2_weights
from transformer_lens.weight_processing import ProcessWeights

from numpy_gpt2.config import GPT2Config
from numpy_gpt2.params import flatten_params

DTYPES = {np.float32: torch.float32, np.float64: torch.float64}


def small_config(n_layer=2, n_head=2, n_embd=16, n_ctx=32, vocab_size=61, **kw):
    return GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_ctx=n_ctx,
                      vocab_size=vocab_size, **kw)


def random_params(config, seed=0, dtype=np.float64, scale=0.3):
    """Weights with every parameter random (LayerNorm weights around 1, biases non-zero), so
    every fold and centring has something to do."""
    from numpy_gpt2.initialization import init_params
    rng = np.random.default_rng(seed)
    flat = flatten_params(init_params(config, dtype=np.float64))
    out = {}
    for key, value in flat.items():
        noise = rng.normal(0, scale, value.shape)
        out[key] = (1 + noise * 0.5 if key.endswith("ln_1.weight") or key.endswith("ln_2.weight")
                    or key == "ln_f.weight" else noise).astype(dtype)
    from numpy_gpt2.params import nest_params
    return nest_params(out)


def hf_model(params, config, dtype):
    hf_config = transformers.GPT2Config(
        n_layer=config.n_layer, n_head=config.n_head, n_embd=config.n_embd, n_positions=config.n_ctx,
        vocab_size=config.vocab_size, activation_function=config.activation_function,
        layer_norm_epsilon=config.layer_norm_epsilon, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0,
        tie_word_embeddings="lm_head" not in params)
    model = transformers.GPT2LMHeadModel(hf_config).to(DTYPES[dtype]).eval()
    sd = {("" if key.startswith("lm_head") else "transformer.") + key: torch.tensor(np.asarray(v))
          for key, v in flatten_params(params).items()}
    model.load_state_dict(sd, strict=False)
    return model


def tl_model(params, config, process=True):
    """A HookedTransformer with params' weights in their dtype; process=True applies
    TransformerLens' default weight processing (fold_ln, center_writing_weights,
    center_unembed, fold_value_biases) in that dtype."""
    dtype = params["wte"]["weight"].dtype.type
    cfg = HookedTransformerConfig(
        n_layers=config.n_layer, d_model=config.n_embd, d_head=config.head_size,
        n_heads=config.n_head, d_mlp=config.mlp_width, d_vocab=config.vocab_size,
        n_ctx=config.n_ctx, act_fn=config.activation_function, normalization_type="LN",
        eps=config.layer_norm_epsilon, dtype=DTYPES[dtype], default_prepend_bos=False,
        positional_embedding_type="standard", device="cpu")
    model = HookedTransformer(cfg)
    sd = convert_gpt2_weights(hf_model(params, config, dtype), cfg)
    sd = {k: v.detach().clone() for k, v in sd.items()}
    if not process:
        model.load_state_dict(model.fill_missing_keys(sd), strict=False)
        return model.eval()
    if dtype == np.float32:
        model.load_and_process_state_dict(sd)
        return model.eval()
    sd = model.fill_missing_keys(sd)
    sd = ProcessWeights.fold_layer_norm(sd, cfg, fold_biases=True, center_weights=True)
    sd = ProcessWeights.center_writing_weights(sd, cfg)
    sd = ProcessWeights.center_unembed(sd, cfg=cfg)
    sd = ProcessWeights.fold_value_biases(sd, cfg)
    for layer in range(cfg.n_layers):
        sd[f"blocks.{layer}.attn.b_O"] = sd[f"blocks.{layer}.attn.b_O"] - sd[f"blocks.{layer}.attn.b_O"].mean()
    cfg.normalization_type = "LNPre"  # what load_and_process_state_dict does when folding
    model.ln_final = LayerNormPre(cfg)
    for block in model.blocks:
        block.ln1, block.ln2 = LayerNormPre(cfg), LayerNormPre(cfg)
    model.load_state_dict(sd, strict=False)
    model.setup()
    return model.eval()


def tl_cache(model, tokens):
    """(logits, {TL hook name: numpy array}) for one sequence (T,), without the batch axis."""
    with torch.no_grad():
        logits, cache = model.run_with_cache(torch.as_tensor(np.asarray(tokens))[None],
                                             remove_batch_dim=True)
    return logits[0].numpy(), cache


def tl_as_numpy_names(cache, config):
    """TransformerLens' hook values under numpy_gpt2's activation names (one sequence)."""
    out = {"wte": cache["hook_embed"], "wpe": cache["hook_pos_embed"],
           "ln_f": cache["ln_final.hook_normalized"]}
    for i in range(config.n_layer):
        b = f"blocks.{i}."
        qkv = [cache[b + f"attn.hook_{n}"].reshape(cache[b + "attn.hook_q"].shape[0], -1)
               for n in "qkv"]  # (T, H, D) -> (T, E)
        out.update({
            f"h.{i}.ln_1": cache[b + "ln1.hook_normalized"], f"h.{i}.attn.c_attn": torch.cat(qkv, -1),
            f"h.{i}.attn.softmax": cache[b + "attn.hook_pattern"], f"h.{i}.attn": cache[b + "hook_attn_out"],
            f"h.{i}.ln_2": cache[b + "ln2.hook_normalized"], f"h.{i}.mlp.c_fc": cache[b + "mlp.hook_pre"],
            f"h.{i}.mlp.gelu": cache[b + "mlp.hook_post"], f"h.{i}.mlp.c_proj": cache[b + "hook_mlp_out"],
            f"h.{i}": cache[b + "hook_resid_post"]})
    return {k: v.numpy() for k, v in out.items()}
