"""Load GPT-2 weights from a safetensors checkpoint into a nested dict of NumPy arrays.

The dict mirrors the checkpoint's own key names: the tensor stored under
``h.3.attn.c_attn.weight`` is ``params["h"][3]["attn"]["c_attn"]["weight"]``.

We parse safetensors ourselves (an 8-byte little-endian header length, a JSON header, then
raw little-endian data) rather than through ``safetensors.safe_open`` because we need
BF16 (NumPy has no bfloat16), errors that name the file and key, a check of every header
field before anything is allocated, a check that every weight is finite, and to copy each
tensor straight into its final array so the weights are never held twice (gpt2-xl is 6.4 GB).
(numpy_gpt2.io.formats.tensor_copy copies the bytes.)
"""

from __future__ import annotations

import json
import os
import re

import numpy as np

from numpy_gpt2.io.atomic import write_files_atomically
from numpy_gpt2.checks import cut, is_int
from numpy_gpt2.config import GPT2Config, infer_config, read_config_json
from numpy_gpt2.errors import CheckpointError
from numpy_gpt2.io.formats.detect import find_checkpoint
from numpy_gpt2.io.formats.tensor_copy import FILE_DTYPES, _default_threads, copy_tensors
from numpy_gpt2.params import flatten_params, is_frozen, nest_params

# Buffers some checkpoints carry: the causal mask ("bias") and a -1e4 constant ("masked_bias").
# They are not parameters; we recompute the mask and never keep them in memory.
_BUFFER = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")


def expected_shapes(config: GPT2Config) -> dict[str, tuple[int, ...]]:
    """Every parameter key of a GPT-2 checkpoint (without ``transformer.``) -> its shape."""
    E, V, P, M = config.n_embd, config.vocab_size, config.n_ctx, config.mlp_width
    shapes = {"wte.weight": (V, E), "wpe.weight": (P, E)}
    for i in range(config.n_layer):
        for name, shape in [
            ("ln_1.weight", (E,)), ("ln_1.bias", (E,)),
            ("attn.c_attn.weight", (E, 3 * E)), ("attn.c_attn.bias", (3 * E,)),
            ("attn.c_proj.weight", (E, E)), ("attn.c_proj.bias", (E,)),
            ("ln_2.weight", (E,)), ("ln_2.bias", (E,)),
            ("mlp.c_fc.weight", (E, M)), ("mlp.c_fc.bias", (M,)),
            ("mlp.c_proj.weight", (M, E)), ("mlp.c_proj.bias", (E,)),
        ]:
            shapes[f"h.{i}.{name}"] = shape
    shapes["ln_f.weight"] = (E,)
    shapes["ln_f.bias"] = (E,)
    return shapes


def _strip_prefix(names, path) -> dict[str, str]:
    """Checkpoint key -> our key: drop "transformer." (save_pretrained adds it)."""
    mapping = {}
    for name in names:
        key = name[len("transformer."):] if name.startswith("transformer.") else name
        mapping[name] = key
    if len(set(mapping.values())) < len(mapping):
        key = next(k for k in mapping.values() if f"transformer.{k}" in mapping and k in mapping)
        raise CheckpointError(f"{path}: {key} is stored twice (with and without 'transformer.')")
    return mapping


def load(source, dtype=np.float32, *, threads: int | None = None,
         n_head: int | None = None) -> tuple[dict, GPT2Config]:
    """Load a GPT-2 checkpoint: ``params, config = load(source, dtype)``.

    source: a checkpoint directory or file in any format docs/formats.md lists (safetensors,
    sharded, pytorch_model.bin without running its pickle, nanoGPT, llm.c, ...).
    dtype: float32 (default) or float64; F16/BF16/F32/F64 files are converted to it.
    threads: threads that copy the weights (default: this process's CPUs, at most 8); the
    result does not depend on it. n_head: the head count of a checkpoint without config.json
    whose shapes are not a published GPT-2's (the weights do not show it).
    Returns the nested weight dict (checkpoint names, buffers dropped) and the config; a
    bias-free model (config.bias False) gets zero biases.
    Raises CheckpointError naming the file and the key, shape or dtype that is wrong, or the
    first NaN or inf in a weight. More: docs/loading.md.
    """
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}") from None
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    threads = _default_threads() if threads is None else threads
    if not is_int(threads) or threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    if n_head is not None and (not is_int(n_head) or n_head < 1):
        raise ValueError(f"n_head must be a positive integer (or None), got {n_head!r}")
    found = find_checkpoint(source)
    weights, config_path = found.weights, found.config_path
    header = {n: {"dtype": t.dtype, "shape": list(t.shape)} for n, t in found.tensors.items()}
    keys = _strip_prefix(header, weights)
    params_in_file = {k: n for n, k in keys.items() if not _BUFFER.fullmatch(k)}

    for key, name in params_in_file.items():
        if header[name]["dtype"] not in FILE_DTYPES:
            raise CheckpointError(
                f"{weights}: {name} has dtype {cut(header[name]['dtype'])}; expected one of "
                f"{', '.join(FILE_DTYPES)}")
    if found.config:  # nanoGPT's model_args, llm.c's header
        config, config_from = found.config, f"its {found.format} header"
        if n_head is not None and n_head != config.n_head:
            raise CheckpointError(f"{weights}: n_head={config.n_head} ({config_from}), but "
                                  f"load() was given n_head={n_head}")
    elif config_path:
        config, config_from = read_config_json(config_path), config_path
        if n_head is not None and n_head != config.n_head:
            raise CheckpointError(f"{config_path}: n_head={config.n_head}, but load() was "
                                  f"given n_head={n_head}")
    else:
        config = _infer_from_header(header, params_in_file, weights, n_head)
        config_from = "the inferred config"
    if config.tie_word_embeddings and "wte.weight" not in params_in_file and "lm_head.weight" in params_in_file:
        # A tied model whose one copy of the embedding is stored under the head's name:
        # safetensors.torch.save_model keeps lm_head.weight and drops transformer.wte.weight.
        params_in_file["wte.weight"] = params_in_file.pop("lm_head.weight")

    n_file = _layers_in_file(params_in_file)
    if config.n_layer > n_file:  # said before listing keys: n_layer may be a billion
        more = f" to h.{config.n_layer - 1}.*" if config.n_layer - 1 > n_file else ""
        raise CheckpointError(
            f"{weights}: missing keys h.{n_file}.*{more} (the file has {n_file} "
            f"layer{'s' if n_file != 1 else ''}, {config_from} says n_layer={config.n_layer})")
    shapes = expected_shapes(config)
    has_head = "lm_head.weight" in params_in_file
    if has_head:
        shapes["lm_head.weight"] = (config.vocab_size, config.n_embd)
    # A model without biases (config bias=false): its bias keys may be absent (nanoGPT's
    # state dicts have none); they are zeros, and any that the file holds must be zeros.
    optional = {k for k in shapes if is_frozen(k, config)}
    missing = [k for k in shapes if k not in params_in_file and k not in optional]
    unexpected = [params_in_file[k] for k in params_in_file if k not in shapes]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_short(unexpected)}")
        raise CheckpointError(
            f"{weights}: {'; '.join(parts)} (the file has {n_file} layer{'s' if n_file != 1 else ''}, "
            f"{config_from} says n_layer={config.n_layer})")
    for key, shape in shapes.items():
        if key not in params_in_file:
            continue  # an absent bias of a model without biases
        got = tuple(header[params_in_file[key]]["shape"])
        if got != shape:
            raise CheckpointError(
                f"{weights}: {params_in_file[key]} has shape {cut(str(list(got)))}, expected "
                f"{list(shape)} (n_embd={config.n_embd}, vocab_size={config.vocab_size}, "
                f"n_ctx={config.n_ctx})")

    # Every shape is now the config's, so the arrays below are exactly the weights' size.
    in_file = [k for k in shapes if k in params_in_file]
    arrays = copy_tensors({params_in_file[k]: found.tensors[params_in_file[k]] for k in in_file},
                          dtype, threads)
    flat = {key: arrays[params_in_file[key]] if key in params_in_file else np.zeros(shape, dtype)
            for key, shape in shapes.items()}
    for key in shapes:  # in the model's order: the first such bias is the one named
        if key in optional and key in params_in_file and flat[key].any():
            raise CheckpointError(
                f"{weights}: {config_from} says bias=false but {params_in_file[key]} is not zero "
                f"(a model whose biases were trained, e.g. by transformers: remove \"bias\": "
                f"false from config.json to load it as a GPT-2 with biases)")
    if has_head:
        head = flat.pop("lm_head.weight")
        if config.tie_word_embeddings and not np.array_equal(head, flat["wte.weight"]):
            raise CheckpointError(
                f"{weights}: lm_head.weight differs from wte.weight but config says the output "
                f"head is tied (tie_word_embeddings=true)")
        if not config.tie_word_embeddings:
            flat["lm_head.weight"] = head
    elif not config.tie_word_embeddings:
        raise CheckpointError(f"{weights}: tie_word_embeddings=false but no lm_head.weight")
    return nest_params(flat), config


def _short(keys, n=5) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def _layers_in_file(params_in_file) -> int:
    """Number of transformer layers the keys h.0. .. h.N. describe (N + 1; 0 if none)."""
    # At most 9 digits: int() of a 5000-digit string raises, and no model has a billion layers.
    layers = [int(m.group(1)) for k in params_in_file if (m := re.match(r"h\.(\d{1,9})\.", k))]
    return max(layers, default=-1) + 1


def _infer_from_header(header, params_in_file, path, n_head=None) -> GPT2Config:
    """The config of a checkpoint without config.json, from its shapes: wte.weight's (or,
    when the file holds only lm_head.weight, that: the same (vocab, n_embd) shape),
    wpe.weight's and the layers; tied (GPT-2's only form)."""
    if "wte.weight" not in params_in_file and "lm_head.weight" in params_in_file:
        params_in_file = {**params_in_file, "wte.weight": params_in_file["lm_head.weight"]}
    for key in ("wte.weight", "wpe.weight"):
        if key not in params_in_file:
            raise CheckpointError(f"{path}: missing key {key} (and no config.json to say otherwise)")
        if len(header[params_in_file[key]]["shape"]) != 2:
            raise CheckpointError(f"{path}: {params_in_file[key]} has shape "
                                  f"{header[params_in_file[key]]['shape']}, expected 2 dimensions")
    vocab, n_embd = header[params_in_file["wte.weight"]]["shape"]
    n_ctx = header[params_in_file["wpe.weight"]]["shape"][0]
    return infer_config(_layers_in_file(params_in_file), vocab, n_ctx, n_embd, path, n_head)


# ----------------------------------------------------------------------------------------
# Saving a checkpoint in the Hugging Face layout (model.safetensors, config.json, vocab.json,
# merges.txt) that numpy_gpt2.load, the scripts and transformers' from_pretrained all read.
# The files are written as one atomic commit (numpy_gpt2.io.atomic): a crash or an error at any
# moment leaves either the previous checkpoint or the new one, whole.


def hf_config_dict(config: GPT2Config, dtype=np.float32) -> dict:
    """config.json of a Hugging Face GPT-2 checkpoint for config (dropout 0: what was trained).

    A model without biases (config.bias False) also gets "bias": false (nanoGPT's name;
    written only then, so other checkpoints' config.json stay transformers' own):
    numpy_gpt2.load reads it back, and transformers keeps the unknown key as a plain
    attribute and loads the zero biases the checkpoint holds (the same function)."""
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
            "n_layer": config.n_layer, "n_head": config.n_head, "n_embd": config.n_embd,
            "n_ctx": config.n_ctx, "n_positions": config.n_ctx, "vocab_size": config.vocab_size,
            "n_inner": config.n_inner, "activation_function": config.activation_function,
            "layer_norm_epsilon": config.layer_norm_epsilon, "initializer_range": 0.02,
            "bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id,
            "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "summary_first_dropout": 0.0,
            "scale_attn_weights": config.scale_attn_weights,
            "scale_attn_by_inverse_layer_idx": config.scale_attn_by_inverse_layer_idx,
            "reorder_and_upcast_attn": config.reorder_and_upcast_attn, "use_cache": True,
            "tie_word_embeddings": config.tie_word_embeddings,
            "torch_dtype": np.dtype(dtype).name, **({} if config.bias else {"bias": False})}


def check_params_match(params: dict, config: GPT2Config) -> None:
    """ValueError naming the first key of params that a checkpoint of config cannot hold: a
    missing weight, a shape other than config's, or (config.bias False) a bias that is not
    zero -- such a file would not load, or load as another model."""
    flat = flatten_params(params)
    shapes = expected_shapes(config)
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (config.vocab_size, config.n_embd)
    for key, shape in shapes.items():
        if key not in flat:
            raise ValueError(f"params has no {key} (a {list(shape)} array for this config)")
        if tuple(np.shape(flat[key])) != shape:
            raise ValueError(f"params' {key} has shape {list(np.shape(flat[key]))}, expected "
                             f"{list(shape)} for this config")
        if is_frozen(key, config) and np.any(flat[key]):
            raise ValueError(f"params' {key} is not zero, but the config has no biases "
                             f"(bias=False: they are constant zeros)")


def checkpoint_writers(params: dict, config: GPT2Config, tokenizer_dir, metadata=None) -> dict:
    """{file name: writer} for the four checkpoint files (see atomic.write_files_atomically),
    config.json first and model.safetensors last, so that after the very first save into a
    directory model.safetensors never appears without its config.

    model.safetensors: every parameter under its checkpoint key, in the params' dtype (F32 or
    F64), no "transformer." prefix, no lm_head when tied (as the hub's gpt2 file), written by
    the safetensors library; metadata {"format": "pt", **metadata}. config.json from
    hf_config_dict; vocab.json and merges.txt copied from tokenizer_dir. ValueError, before
    anything is written, when params do not fit config (check_params_match).
    """
    import shutil

    from safetensors.numpy import save_file

    check_params_match(params, config)
    flat = {k: np.ascontiguousarray(v) for k, v in flatten_params(params).items()}
    dtype = flat["wte.weight"].dtype
    meta = {"format": "pt", **{k: str(v) for k, v in (metadata or {}).items()}}
    if not isinstance(tokenizer_dir, (str, os.PathLike)):
        raise ValueError(f"tokenizer_dir must be a directory holding GPT-2's vocab.json and "
                         f"merges.txt (they are copied into the checkpoint), got {tokenizer_dir!r}")
    missing = [n for n in ("vocab.json", "merges.txt")
               if not os.path.isfile(os.path.join(os.fspath(tokenizer_dir), n))]
    if missing:
        raise ValueError(f"{tokenizer_dir}: no {' or '.join(missing)} to copy into the checkpoint")

    def write_config(path):
        with open(path, "w", encoding="utf-8") as f:
            json.dump(hf_config_dict(config, dtype), f, indent=2)
            f.write("\n")

    def copier(name):
        return lambda path: shutil.copyfile(os.path.join(tokenizer_dir, name), path)

    return {"config.json": write_config, "vocab.json": copier("vocab.json"),
            "merges.txt": copier("merges.txt"),
            "model.safetensors": lambda path: save_file(flat, path, metadata=meta)}


def save_checkpoint(directory, params: dict, config: GPT2Config, tokenizer_dir, metadata=None) -> None:
    """Write params as a Hugging Face GPT-2 checkpoint into directory: model.safetensors,
    config.json, vocab.json and merges.txt (copied from tokenizer_dir, a directory holding
    GPT-2's tokenizer files). numpy_gpt2.load(directory), scripts/generate.py --model
    directory and GPT2LMHeadModel.from_pretrained(directory) read it. metadata: optional
    {str: str} stored in the safetensors header.

    The four files are one atomic commit (numpy_gpt2.io.atomic.write_files_atomically): after a
    crash at any moment the directory holds the previous checkpoint or the new one, whole
    (a save the crash interrupted after its commit is completed by the next save or by
    numpy_gpt2.io.atomic.recover(directory)). Raises ValueError when tokenizer_dir is not a
    directory holding vocab.json and merges.txt, or when params do not fit config
    (check_params_match: a missing key, a wrong shape, a nonzero bias of a bias=False model);
    OSError from the writes (e.g. a full disk),
    the previous checkpoint then being untouched."""
    write_files_atomically(directory, checkpoint_writers(params, config, tokenizer_dir, metadata))
