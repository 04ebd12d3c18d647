"""Our hook point names and TransformerLens' (HookedTransformer's ActivationCache), both ways.

numpy_gpt2 names its points after the checkpoint's modules ("h.3.attn.z", numpy_gpt2.debug.capture);
TransformerLens after its own ("blocks.3.attn.hook_z"). The values are the same (a GPT-2 built
without weight processing: fold_ln=False, center_writing_weights=False, center_unembed=False,
fold_value_biases=False), but some layouts differ: TransformerLens puts the position before the
head in q, k, v, z ([pos, head, d_head]) and result ([pos, head, d_model]); we put the head first.
to_transformer_lens and from_transformer_lens convert names and layouts; a leading batch axis
stays as it is. Points without a TransformerLens hook (ln_1 and ln_2 after their gain and
bias, attn.c_attn) are left out. Pure NumPy: no framework is imported.
"""

from __future__ import annotations

import re

import numpy as np

# Our name inside block i ("h.{i}." + key; "" the block output) -> TransformerLens' in "blocks.{i}."
BLOCK = {"resid_pre": "hook_resid_pre", "ln_1.scale": "ln1.hook_scale",
         "ln_1.normalized": "ln1.hook_normalized", "attn.q": "attn.hook_q", "attn.k": "attn.hook_k",
         "attn.v": "attn.hook_v", "attn.scores": "attn.hook_attn_scores",
         "attn.softmax": "attn.hook_pattern", "attn.z": "attn.hook_z", "attn.result": "attn.hook_result",
         "attn": "hook_attn_out", "resid_mid": "hook_resid_mid", "ln_2.scale": "ln2.hook_scale",
         "ln_2.normalized": "ln2.hook_normalized", "mlp.c_fc": "mlp.hook_pre",
         "mlp.gelu": "mlp.hook_post", "mlp.c_proj": "hook_mlp_out", "": "hook_resid_post"}
TOP = {"wte": "hook_embed", "wpe": "hook_pos_embed", "ln_f.scale": "ln_final.hook_scale",
       "ln_f.normalized": "ln_final.hook_normalized", "ln_f": "unembed.hook_in",
       "logits": "unembed.hook_out"}
_BLOCK_BACK = {tl: ours for ours, tl in BLOCK.items()}
_TOP_BACK = {tl: ours for ours, tl in TOP.items()}
HEAD_BEFORE_POSITION = ("attn.q", "attn.k", "attn.v", "attn.z", "attn.result")  # ours (.., H, T, X)


def to_transformer_lens_name(name: str) -> str | None:
    """"h.3.attn.z" -> "blocks.3.attn.hook_z", "wte" -> "hook_embed", "logits" ->
    "unembed.hook_out"; None for a name without a TransformerLens hook point (ln_1, ln_2,
    attn.c_attn)."""
    if name in TOP:
        return TOP[name]
    m = re.fullmatch(r"h\.(\d+)(?:\.(.+))?", name)
    if m and (m.group(2) or "") in BLOCK:
        return f"blocks.{m.group(1)}.{BLOCK[m.group(2) or '']}"
    return None


def from_transformer_lens_name(name: str) -> str:
    """"blocks.3.attn.hook_z" -> "h.3.attn.z", "ln_final.hook_scale" -> "ln_f.scale".
    ValueError for a name GPT-2's numpy_gpt2 points do not have (e.g. "blocks.0.hook_attn_in")."""
    if name in _TOP_BACK:
        return _TOP_BACK[name]
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", name)
    if m and m.group(2) in _BLOCK_BACK:
        ours = _BLOCK_BACK[m.group(2)]
        return f"h.{m.group(1)}.{ours}" if ours else f"h.{m.group(1)}"
    raise ValueError(f"TransformerLens hook name {name!r} has no numpy_gpt2 point (known: "
                     f"hook_embed, hook_pos_embed, blocks.{{i}}.{', blocks.{i}.'.join(BLOCK.values())}, "
                     f"{', '.join(k for k in _TOP_BACK if k.startswith(('ln_final', 'unembed')))})")


def _swap_head_and_position(name: str, a: np.ndarray) -> np.ndarray:
    """(..., H, T, X) <-> (..., T, H, X) for the per-head points whose layouts differ."""
    inner = re.sub(r"^h\.\d+\.", "", name)
    return np.swapaxes(a, -3, -2) if inner in HEAD_BEFORE_POSITION else a


def to_transformer_lens(cache: dict, config=None) -> dict:
    """Our activations {name: array} (numpy_gpt2.activations) -> {TransformerLens hook name:
    array in its layout}: q, k, v, z (pos, head, d_head) and result (pos, head, d_model),
    the others as they are; a leading batch axis stays. Names without a TransformerLens hook
    are left out. config: optional GPT2Config, to check the per-head arrays' head count."""
    out = {}
    for name, a in cache.items():
        tl = to_transformer_lens_name(name)
        if tl is None:
            continue
        a = np.asarray(a)
        inner = re.sub(r"^h\.\d+\.", "", name)
        if config is not None and inner in HEAD_BEFORE_POSITION + ("attn.scores", "attn.softmax") \
                and a.shape[-3] != config.n_head:
            raise ValueError(f"{name} has shape {a.shape}; expected the head axis (n_head="
                             f"{config.n_head}) third from last")
        out[tl] = _swap_head_and_position(name, a)
    return out


def from_transformer_lens(cache: dict) -> dict:
    """A TransformerLens cache {hook name: array} (e.g. a saved ActivationCache) -> ours
    {name: array in our layout}; ValueError for hook names we do not have."""
    out = {}
    for tl, a in cache.items():
        name = from_transformer_lens_name(tl)
        out[name] = _swap_head_and_position(name, np.asarray(a))
    return out


def is_transformer_lens_name(name: str) -> bool:
    """Whether name looks like a TransformerLens hook name (its last part starts with "hook_")."""
    return name.rsplit(".", 1)[-1].startswith("hook_")
