"""GPT-2 hyperparameters: read from a checkpoint's config.json, or inferred from weight shapes."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings

from numpy_gpt2.activation_functions import ACTIVATIONS, TANH_GELU_NAMES  # noqa: F401 (re-exported)
from numpy_gpt2.checks import is_int, is_number, show
from numpy_gpt2.errors import CheckpointError

# The five published checkpoints: (n_layer, n_embd, vocab_size, n_ctx) -> (hub name, n_head).
# n_head cannot be read from the weights (any divisor of n_embd fits them), so a checkpoint
# without config.json is loaded only when its shapes are exactly one of these.
KNOWN_SIZES = {
    (12, 768, 50257, 1024): ("gpt2", 12),
    (24, 1024, 50257, 1024): ("gpt2-medium", 16),
    (36, 1280, 50257, 1024): ("gpt2-large", 20),
    (48, 1600, 50257, 1024): ("gpt2-xl", 25),
    (6, 768, 50257, 1024): ("distilgpt2", 12),
}

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
    n_inner: int | None = None  # the MLP's hidden width; None: 4 * n_embd
    scale_attn_weights: bool = True  # attention scores / sqrt(head_size)
    scale_attn_by_inverse_layer_idx: bool = False  # layer i's scores also / (i + 1)
    reorder_and_upcast_attn: bool = False  # transformers: scores in float32 (we keep the dtype)
    # nanoGPT's bias (model.py GPTConfig.bias): False = no biases in the Linear and LayerNorm
    # layers. The bias tensors are kept, as constant zeros (the same equations, e.g.
    # ln(x) = xhat * weight + 0): not parameters, so training leaves them exactly zero
    # (params.frozen_keys) and record_grad does not report their (zero) gradients.
    bias: bool = True

    def __post_init__(self):
        # Type checks first: a comparison of a str or None with an int would raise TypeError.
        for name in ("n_layer", "n_head", "n_embd", "n_ctx", "vocab_size"):
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                raise CheckpointError(f"config: {name} must be a positive integer, got {show(value)}")
        if self.n_embd % self.n_head:
            raise CheckpointError(
                f"config: n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        eps = self.layer_norm_epsilon
        if not is_number(eps) or not (0 < eps < math.inf):
            raise CheckpointError(
                f"config: layer_norm_epsilon must be a positive finite number (> 0), got {show(eps)}")
        if not isinstance(self.activation_function, str):
            raise CheckpointError(f"config: activation_function must be a string such as "
                                  f"'gelu_new', got {show(self.activation_function)}")
        if self.activation_function not in ACTIVATIONS:
            raise CheckpointError(
                f"config: activation_function {show(self.activation_function)} is not one "
                f"transformers' GPT-2 accepts without learned parameters ({', '.join(ACTIVATIONS)})")
        if self.n_inner is not None and (not is_int(self.n_inner) or self.n_inner < 1):
            raise CheckpointError(f"config: n_inner must be null or a positive integer, "
                                  f"got {show(self.n_inner)}")
        for name in ("scale_attn_weights", "scale_attn_by_inverse_layer_idx",
                     "reorder_and_upcast_attn", "bias"):
            if not isinstance(getattr(self, name), bool):
                raise CheckpointError(f"config: {name} must be true or false, "
                                      f"got {show(getattr(self, name))}")
        for name in ("bos_token_id", "eos_token_id"):
            value = getattr(self, name)
            if not is_int(value):  # outside [0, vocab_size) is allowed: see has_token
                raise CheckpointError(f"config: {name} must be a token id (an integer), "
                                      f"got {show(value)}")
        if not isinstance(self.tie_word_embeddings, bool):
            raise CheckpointError(f"config: tie_word_embeddings must be true or false, "
                                  f"got {show(self.tie_word_embeddings)}")

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    @property
    def mlp_width(self) -> int:
        """The MLP's hidden width: n_inner, or 4 * n_embd when it is None."""
        return 4 * self.n_embd if self.n_inner is None else self.n_inner

    def attention_scale(self, layer: int) -> float:
        """The factor of layer `layer`'s attention scores q.k (transformers' GPT2Attention):
        1 / sqrt(head_size) (1 with scale_attn_weights=False), further divided by layer + 1
        with scale_attn_by_inverse_layer_idx=True (the Stanford CRFM runs)."""
        scale = 1.0 / math.sqrt(self.head_size) if self.scale_attn_weights else 1.0
        return scale / (layer + 1) if self.scale_attn_by_inverse_layer_idx else scale

    def block_options(self, layer: int) -> dict:
        """The keyword arguments layer `layer`'s block functions take from the config."""
        return {"act": self.activation_function, "scale": self.attention_scale(layer)}

    def has_token(self, token_id) -> bool:
        """True when token_id is one of the model's ids, [0, vocab_size). A special-token id
        outside it (transformers writes eos_token_id=50256 into every GPT2Config, whatever
        its vocab_size) means the model has no such token: generation cannot stop on it."""
        return is_int(token_id) and 0 <= token_id < self.vocab_size


# config.json options whose non-default values change the math; we refuse rather than ignore them.
_UNSUPPORTED = {
    "add_cross_attention": False,
}
# Flags that change the math and are implemented (GPT2Config fields). "bias" is nanoGPT's
# (not a transformers GPT2Config option: written by hf_config_dict only when false).
_MATH_BOOLS = ("scale_attn_weights", "scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn",
               "bias")
# Options that only change training or caching and are ignored, but must still have the
# type transformers gives them.
_IGNORED_BOOLS = ("use_cache",)


def _int_field(d: dict, key: str, where: str, default=None, minimum: int = 1):
    """d[key] (or default when absent) as an int >= minimum; anything else is an error."""
    value = d.get(key, default)
    if not is_int(value) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise CheckpointError(f"{where}: {key} must be {what}, got {show(value)}")
    return value


def config_from_dict(d: dict, where: str = "config.json") -> GPT2Config:
    """Build a GPT2Config from a Hugging Face GPT-2 config.json dict.

    Every field we read is type-checked here, where it enters, so a wrong value is reported
    with the file and the field (and never surfaces later as a TypeError deep in the math).
    JSON integers must be integers (not 12.0, "12" or true), the epsilon a positive finite
    number, flags true/false (also "bias": false, a model without biases, nanoGPT's
    bias=False; absent: true), token ids integers (an id outside [0, vocab_size) is loaded and
    means the model has no such token, see GPT2Config.has_token).
    """
    if "model_type" in d and d["model_type"] != "gpt2":
        raise CheckpointError(f"{where}: model_type must be \"gpt2\", got {show(d['model_type'])}")
    for key, expected in _UNSUPPORTED.items():
        if key in d and not isinstance(d[key], bool):
            raise CheckpointError(f"{where}: {key} must be true or false, got {show(d[key])}")
        if key in d and d[key] != expected:
            raise CheckpointError(f"{where}: {key}={d[key]!r} is not supported (expected {expected!r})")
    for key in _IGNORED_BOOLS + _MATH_BOOLS:
        if key in d and not isinstance(d[key], bool):
            raise CheckpointError(f"{where}: {key} must be true or false, got {show(d[key])}")
    missing = [k for k in ("n_layer", "n_head", "n_embd") if k not in d]
    if missing:
        raise CheckpointError(f"{where}: missing {', '.join(missing)}")
    n_layer, n_head, n_embd = (_int_field(d, k, where) for k in ("n_layer", "n_head", "n_embd"))
    vocab_size = _int_field(d, "vocab_size", where, default=50257)
    # n_positions (rows of wpe) and its older name n_ctx: either, or both when they agree.
    sizes = {k: _int_field(d, k, where) for k in ("n_positions", "n_ctx") if k in d}
    if len(set(sizes.values())) > 1:
        raise CheckpointError(
            f"{where}: n_ctx={d['n_ctx']} and n_positions={d['n_positions']} disagree")
    n_ctx = next(iter(sizes.values()), 1024)
    n_inner = d.get("n_inner")  # the MLP's hidden width; null means 4 * n_embd
    if n_inner is not None and (not is_int(n_inner) or n_inner < 1):
        raise CheckpointError(f"{where}: n_inner must be null or a positive integer, got "
                              f"{show(n_inner)}")
    # Token ids: GPT-2's <|endoftext|> (50256) when absent or null, bos defaulting to eos.
    # Any integer loads, as in transformers: one outside [0, vocab_size) means "no such token".
    ids = {}
    for key, default in (("eos_token_id", 50256), ("bos_token_id", None)):
        value = d.get(key)
        value = value if value is not None else (ids.get("eos_token_id") if default is None else default)
        if not is_int(value):
            raise CheckpointError(f"{where}: {key} must be a token id (an integer), got {show(value)}")
        ids[key] = value
    try:
        return GPT2Config(
            n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_ctx=n_ctx, vocab_size=vocab_size,
            layer_norm_epsilon=d.get("layer_norm_epsilon", 1e-5),
            activation_function=d.get("activation_function", "gelu_new"),
            bos_token_id=ids["bos_token_id"], eos_token_id=ids["eos_token_id"],
            tie_word_embeddings=d.get("tie_word_embeddings", True), n_inner=n_inner,
            **{key: d[key] for key in _MATH_BOOLS if key in d},
        )
    except CheckpointError as e:  # name the file rather than "config"
        raise CheckpointError(f"{where}: {str(e).removeprefix('config: ')}") from None


def read_config_json(path: str) -> GPT2Config:
    """GPT2Config from a Hugging Face config.json file (errors name the file)."""
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except (ValueError, RecursionError) as e:  # bad JSON, bad UTF-8, a 5000-digit integer, [[[[...
        raise CheckpointError(f"{path}: not valid JSON ({_one_line(e)})") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
    if not isinstance(d, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return config_from_dict(d, where=os.fspath(path))


def _one_line(e: BaseException, limit=200) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def infer_config(n_layer: int, vocab_size: int, n_ctx: int, n_embd: int, where: str,
                 n_head: int | None = None) -> GPT2Config:
    """The config of a checkpoint without config.json, from its shapes (warns: eps 1e-5 and the
    tanh GELU are assumed too).

    n_head: the caller's head count (numpy_gpt2.load(..., n_head=)); when None, the shapes
    must be exactly those of a published GPT-2 model (KNOWN_SIZES: layers, width, vocabulary
    and context), whose head count is known. Anything else raises CheckpointError asking for
    config.json: a guessed n_head loads without error and computes a different model.
    """
    shape = (n_layer, n_embd, vocab_size, n_ctx)
    name, known_heads = KNOWN_SIZES.get(shape, (None, None))
    if n_head is None and name is None:
        raise CheckpointError(
            f"{where}: no config.json, and the shapes (n_layer={n_layer}, n_embd={n_embd}, "
            f"vocab_size={vocab_size}, n_ctx={n_ctx}) are not those of a published GPT-2 model "
            f"({', '.join(n for n, _ in KNOWN_SIZES.values())}), so n_head is unknown (the weights "
            f"do not show it); add the model's config.json, or pass n_head to load()")
    what = f"the {name} shape" if n_head is None else "given"
    n_head = known_heads if n_head is None else n_head
    try:
        config = GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_ctx=n_ctx,
                            vocab_size=vocab_size)
    except CheckpointError as e:  # e.g. n_embd not divisible by the given n_head
        raise CheckpointError(f"{where}: no config.json, and the inferred "
                              f"{str(e).removeprefix('config: ')}") from None
    warnings.warn(
        f"{where}: no config.json; inferred n_layer={n_layer}, n_embd={n_embd}, n_head={n_head} "
        f"({what}), n_ctx={n_ctx}, vocab_size={vocab_size}, tanh GELU, eps=1e-5",
        stacklevel=3)
    return config
