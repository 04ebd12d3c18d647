"""llm.c's model files (gpt2_124M.bin: float32, version 3; gpt2_124M_bf16.bin: bfloat16,
version 5), as karpathy/llm.c train_gpt2.py write_model writes and train_gpt2.c
gpt2_build_from_checkpoint reads them.

Layout: a header of 256 little-endian int32 -- [0] magic 20240326, [1] version, [2]
max_seq_len, [3] vocab_size, [4] n_layer, [5] n_head, [6] channels, [7] padded_vocab_size,
the rest 0 -- then every parameter, layer by layer within each kind, in this order
(C channels, L layers, Vp padded vocabulary, weights stored (out, in) like nn.Linear):
    wte (Vp, C), wpe (max_seq_len, C), ln_1.weight (L, C), ln_1.bias (L, C),
    c_attn.weight (L, 3C, C), c_attn.bias (L, 3C), attn.c_proj.weight (L, C, C),
    attn.c_proj.bias (L, C), ln_2.weight (L, C), ln_2.bias (L, C), c_fc.weight (L, 4C, C),
    c_fc.bias (L, 4C), mlp.c_proj.weight (L, C, 4C), mlp.c_proj.bias (L, C),
    ln_f.weight (C), ln_f.bias (C).
llm.c pads GPT-2's 50257-token vocabulary with zero rows to a multiple of 128 (50304); the
rows are loaded as they are (vocab_size = padded_vocab_size). The GELU is the tanh form.
"""

from __future__ import annotations

import math
import os

import numpy as np

from numpy_gpt2.activation_functions import TANH_GELU_NAMES
from numpy_gpt2.config import GPT2Config
from numpy_gpt2.errors import CheckpointError
from numpy_gpt2.io.formats.safetensors import encode
from numpy_gpt2.io.formats.tensor_copy import Stored

MAGIC = 20240326
VERSIONS = {3: "F32", 5: "BF16"}  # version -> dtype of every parameter
HEADER_BYTES = 256 * 4
PAD_MULTIPLE = 128


def layout(L: int, C: int, Vp: int, T: int) -> list[tuple[str, tuple, bool]]:
    """[(GPT-2 key pattern with {i} for the layer, shape as stored per layer, per_layer)] in
    file order. Matrices are stored (out, in)."""
    per_layer = [("ln_1.weight", (C,)), ("ln_1.bias", (C,)),
                 ("attn.c_attn.weight", (3 * C, C)), ("attn.c_attn.bias", (3 * C,)),
                 ("attn.c_proj.weight", (C, C)), ("attn.c_proj.bias", (C,)),
                 ("ln_2.weight", (C,)), ("ln_2.bias", (C,)),
                 ("mlp.c_fc.weight", (4 * C, C)), ("mlp.c_fc.bias", (4 * C,)),
                 ("mlp.c_proj.weight", (C, 4 * C)), ("mlp.c_proj.bias", (C,))]
    return ([("wte.weight", (Vp, C), False), ("wpe.weight", (T, C), False)]
            + [(f"h.{{i}}.{name}", shape, True) for name, shape in per_layer]
            + [("ln_f.weight", (C,), False), ("ln_f.bias", (C,), False)])


def is_llmc(head: bytes) -> bool:
    return len(head) >= 4 and int.from_bytes(head[:4], "little") == MAGIC


def read_header(path: str) -> list[int]:
    try:
        with open(path, "rb") as f:
            raw = f.read(HEADER_BYTES)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
    if len(raw) < HEADER_BYTES:
        raise CheckpointError(f"{path}: truncated llm.c header ({len(raw)} of {HEADER_BYTES} bytes)")
    return [int(v) for v in np.frombuffer(raw, "<i4")]


def llmc_tensors(path: str) -> tuple[dict, GPT2Config]:
    """{GPT-2 key: Stored} and the config of an llm.c model file. Raises CheckpointError for
    a wrong magic or version, a header value out of range, or a file size that is not
    exactly header + parameters."""
    h = read_header(path)
    if h[0] != MAGIC:
        raise CheckpointError(f"{path}: not an llm.c model file (magic {h[0]}, expected {MAGIC})")
    if h[1] not in VERSIONS:
        raise CheckpointError(f"{path}: llm.c model version {h[1]} is not supported (expected 3, "
                              f"float32, or 5, bfloat16)")
    T, V, L, H, C, Vp = h[2:8]
    names = ["max_seq_len", "vocab_size", "num_layers", "num_heads", "channels",
             "padded_vocab_size"]
    for name, value in zip(names, h[2:8]):
        if value < 1:
            raise CheckpointError(f"{path}: llm.c header {name}={value}, expected a positive integer")
    if Vp < V:
        raise CheckpointError(f"{path}: llm.c header padded_vocab_size={Vp} < vocab_size={V}")
    dtype = VERSIONS[h[1]]
    itemsize = 4 if dtype == "F32" else 2
    entries = layout(L, C, Vp, T)
    total = sum(math.prod(shape) * (L if per_layer else 1) for _, shape, per_layer in entries)
    size = os.path.getsize(path)
    if size != HEADER_BYTES + total * itemsize:
        raise CheckpointError(
            f"{path}: {size} bytes, but the llm.c header (L={L}, C={C}, Vp={Vp}, "
            f"max_seq_len={T}, {dtype}) needs {HEADER_BYTES + total * itemsize}")
    try:
        config = GPT2Config(n_layer=L, n_head=H, n_embd=C, n_ctx=T, vocab_size=Vp,
                            eos_token_id=50256, bos_token_id=50256)  # <|endoftext|>
    except CheckpointError as e:
        raise CheckpointError(f"{path}: llm.c header: {str(e).removeprefix('config: ')}") from None
    out, offset = {}, HEADER_BYTES
    for pattern, shape, per_layer in entries:
        for i in range(L if per_layer else 1):
            t = Stored(path, dtype, shape, offset)
            if len(shape) == 2 and per_layer:  # (out, in) -> GPT-2's (in, out), a strided view
                t = Stored(path, dtype, shape[::-1], offset, (1, shape[1]))
            out[pattern.format(i=i)] = t
            offset += math.prod(shape) * itemsize
    return out, config


def last_nonzero_row(wte) -> int:
    """The index of wte's last row that is not all zeros (-1 for none): the rows after it
    may be llm.c's zero padding."""
    nonzero = np.flatnonzero(np.any(wte != 0, axis=1))
    return int(nonzero[-1]) if nonzero.size else -1


def check_llmc_vocab(params: dict, config: GPT2Config, vocab_size: int) -> None:
    """ValueError unless vocab_size (the header's real vocabulary) is in 1..config.vocab_size
    and keeps every trained row: the rows past it are llm.c's padding, zeros."""
    if not 1 <= vocab_size <= config.vocab_size:
        raise ValueError(f"vocab_size {vocab_size} must be in 1..{config.vocab_size} (the "
                         f"model's rows)")
    trained = last_nonzero_row(params["wte"]["weight"]) + 1
    if vocab_size < trained:
        raise ValueError(f"vocab_size {vocab_size} is smaller than the model's vocabulary: wte "
                         f"row {trained - 1} is trained (not zero padding); give at least {trained}")


def padded_vocab(V: int) -> int:
    """llm.c's padded vocabulary: V rounded up to a multiple of 128 (50257 -> 50304)."""
    return -(-V // PAD_MULTIPLE) * PAD_MULTIPLE


def llmc_header(config: GPT2Config, vocab_size: int, version: int = 3) -> np.ndarray:
    """The 256-int32 header of a version 3 (float32) or 5 (bfloat16) file for config."""
    h = np.zeros(256, "<i4")
    h[:8] = [MAGIC, version, config.n_ctx, vocab_size, config.n_layer, config.n_head,
             config.n_embd, padded_vocab(config.vocab_size)]
    return h


HF_INSTEAD = "Hugging Face's format (save_checkpoint) holds any model"


def check_llmc_config(config: GPT2Config) -> None:
    """ValueError unless llm.c computes config's function: llm.c (train_gpt2.c) has GPT-2's
    math only -- the tanh GELU, LayerNorm epsilon 1e-5, scores / sqrt(head size), an MLP
    4 n_embd wide -- and its header has no field for anything else, so a file of another
    model would load and compute something else. (Zero biases are fine: the same function.)"""
    differences = []
    if config.activation_function not in TANH_GELU_NAMES:
        differences.append(f"activation_function {config.activation_function!r} (llm.c: the "
                           f"tanh GELU, gelu_new)")
    if config.layer_norm_epsilon != 1e-5:
        differences.append(f"layer_norm_epsilon {config.layer_norm_epsilon!r} (llm.c: 1e-5)")
    if not config.scale_attn_weights:
        differences.append("scale_attn_weights false (llm.c divides scores by sqrt(head size))")
    if config.scale_attn_by_inverse_layer_idx:
        differences.append("scale_attn_by_inverse_layer_idx true (llm.c: no such scaling)")
    if config.mlp_width != 4 * config.n_embd:
        differences.append(f"n_inner {config.n_inner} (llm.c: 4 * n_embd = {4 * config.n_embd})")
    if differences:
        raise ValueError(f"llm.c's format cannot hold this model: {'; '.join(differences)}; "
                         f"llm.c would compute a different function; {HF_INSTEAD}")


def write_llmc(path: str, params: dict, config: GPT2Config, vocab_size: int | None = None,
               dtype: str = "F32", progress=None) -> None:
    """Write params as an llm.c model file: version 3 (dtype "F32", what train_gpt2.c
    loads) or 5 ("BF16", what train_gpt2.cu loads; rounded to nearest even).

    vocab_size: the real vocabulary written in the header, when the model's rows are padded
    (50257 for a GPT-2 model read from a 50304-row file); default config.vocab_size.
    wte is padded with zero rows to padded_vocab(config.vocab_size); matrices are written
    (out, in). ValueError for a model llm.c would compute differently (check_llmc_config:
    e.g. nanoGPT's exact erf GELU), with an untied lm_head (llm.c ties it) or a vocab_size
    outside 1..config.vocab_size.
    progress: optional callable(bytes written so far) after each tensor.
    """
    vocab_size = config.vocab_size if vocab_size is None else vocab_size
    check_llmc_config(config)
    if "lm_head" in params:
        raise ValueError("llm.c ties the output head to wte; this model has its own lm_head")
    check_llmc_vocab(params, config, vocab_size)
    version = {v: k for k, v in VERSIONS.items()}.get(dtype)
    if version is None:
        raise ValueError(f"llm.c files hold F32 (version 3) or BF16 (version 5), not {dtype!r}")
    L, C = config.n_layer, config.n_embd
    Vp = padded_vocab(config.vocab_size)
    with open(path, "wb") as f:
        f.write(llmc_header(config, vocab_size, version).tobytes())
        for pattern, shape, per_layer in layout(L, C, Vp, config.n_ctx):
            for i in range(L if per_layer else 1):
                *parents, leaf = pattern.format(i=i).split(".")
                node = params
                for part in parents:
                    node = node[int(part)] if isinstance(node, list) else node[part]
                a = np.asarray(node[leaf], "<f4")
                if len(shape) == 2 and per_layer:
                    a = a.T
                if pattern == "wte.weight" and Vp > a.shape[0]:
                    a = np.concatenate([a, np.zeros((Vp - a.shape[0], C), "<f4")])
                try:
                    f.write(encode(np.ascontiguousarray(a), dtype).tobytes())
                except ValueError as e:
                    raise ValueError(f"{pattern.format(i=i)}: {e}") from None
                if progress:
                    progress(f.tell())
