"""GPT-2 hyperparameters: read from a checkpoint's config.json, or inferred from weight shapes."""

from __future__ import annotations

import dataclasses
import json
import os
import warnings

from .errors import CheckpointError

HEAD_SIZE = 64  # every published GPT-2 size uses 64-wide heads

# (n_layer, n_embd) -> (hub name, n_head) for the five published checkpoints.
KNOWN_SIZES = {
    (12, 768): ("gpt2", 12),
    (24, 1024): ("gpt2-medium", 16),
    (36, 1280): ("gpt2-large", 20),
    (48, 1600): ("gpt2-xl", 25),
    (6, 768): ("distilgpt2", 12),
}

# HF names for the tanh GELU the checkpoints were trained with (same formula).
TANH_GELU_NAMES = ("gelu_new", "gelu_pytorch_tanh")


@dataclasses.dataclass(frozen=True)
class GPT2Config:
    """The numbers that fix the shapes and the math of a GPT-2 model."""

    n_layer: int
    n_head: int
    n_embd: int
    n_ctx: int = 1024  # = n_positions: rows of wpe, the longest sequence
    vocab_size: int = 50257
    layer_norm_epsilon: float = 1e-5
    activation_function: str = "gelu_new"
    bos_token_id: int = 50256
    eos_token_id: int = 50256
    tie_word_embeddings: bool = True  # logits = ln_f(x) @ wte.T

    def __post_init__(self):
        for name in ("n_layer", "n_head", "n_embd", "n_ctx", "vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise CheckpointError(f"config: {name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise CheckpointError(
                f"config: n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if not self.layer_norm_epsilon > 0:
            raise CheckpointError(
                f"config: layer_norm_epsilon must be > 0, got {self.layer_norm_epsilon!r}")
        if self.activation_function not in TANH_GELU_NAMES:
            raise CheckpointError(
                f"config: activation_function {self.activation_function!r} is not implemented; "
                f"numpy_gpt2 implements the tanh GELU ({' or '.join(TANH_GELU_NAMES)})")

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head


# config.json options whose non-default values change the math; we refuse rather than ignore them.
_UNSUPPORTED = {
    "scale_attn_weights": True,
    "scale_attn_by_inverse_layer_idx": False,
    "add_cross_attention": False,
}


def config_from_dict(d: dict, where: str = "config.json") -> GPT2Config:
    """Build a GPT2Config from a Hugging Face GPT-2 config.json dict."""
    for key, expected in _UNSUPPORTED.items():
        if key in d and d[key] != expected:
            raise CheckpointError(f"{where}: {key}={d[key]!r} is not supported (expected {expected!r})")
    missing = [k for k in ("n_layer", "n_head", "n_embd") if k not in d]
    if missing:
        raise CheckpointError(f"{where}: missing {', '.join(missing)}")
    n_ctx = d.get("n_positions", d.get("n_ctx", 1024))
    if "n_ctx" in d and "n_positions" in d and d["n_ctx"] != d["n_positions"]:
        raise CheckpointError(
            f"{where}: n_ctx={d['n_ctx']} and n_positions={d['n_positions']} disagree")
    n_inner = d.get("n_inner")
    if n_inner is not None and n_inner != 4 * d["n_embd"]:  # the MLP's hidden width
        raise CheckpointError(f"{where}: n_inner={n_inner} is not supported (expected 4 * n_embd)")
    eos = d.get("eos_token_id", 50256)
    try:
        return GPT2Config(
            n_layer=d["n_layer"], n_head=d["n_head"], n_embd=d["n_embd"], n_ctx=n_ctx,
            vocab_size=d.get("vocab_size", 50257),
            layer_norm_epsilon=d.get("layer_norm_epsilon", 1e-5),
            activation_function=d.get("activation_function", "gelu_new"),
            bos_token_id=d.get("bos_token_id", eos), eos_token_id=eos,
            tie_word_embeddings=d.get("tie_word_embeddings", True),
        )
    except CheckpointError as e:  # name the file rather than "config"
        raise CheckpointError(f"{where}: {str(e).removeprefix('config: ')}") from None


def read_config_json(path: str) -> GPT2Config:
    """GPT2Config from a Hugging Face config.json file (errors name the file)."""
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
    if not isinstance(d, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return config_from_dict(d, where=os.fspath(path))


def infer_config(n_layer: int, vocab_size: int, n_ctx: int, n_embd: int, where: str) -> GPT2Config:
    """Guess the config of a checkpoint without config.json; warns, since n_head is a guess."""
    name, n_head = KNOWN_SIZES.get((n_layer, n_embd), (None, n_embd // HEAD_SIZE))
    if n_embd % HEAD_SIZE:
        raise CheckpointError(
            f"{where}: no config.json, and n_embd={n_embd} is not a multiple of the head size "
            f"{HEAD_SIZE}, so n_head cannot be inferred; add a config.json")
    what = f"the {name} shape" if name else f"head size {HEAD_SIZE}"
    warnings.warn(
        f"{where}: no config.json; inferred n_layer={n_layer}, n_embd={n_embd}, n_head={n_head} "
        f"({what}), n_ctx={n_ctx}, vocab_size={vocab_size}, tanh GELU, eps=1e-5",
        stacklevel=3)
    return GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_ctx=n_ctx,
                      vocab_size=vocab_size)
