"""The dump file: the format in which numpy_gpt2 and a port (in C, Rust, ...) write the
tensors of one run, so that scripts/compare.py can say where they first differ.

A dump is a safetensors file (an 8-byte little-endian header length, a JSON header, then
the raw little-endian tensors; https://github.com/huggingface/safetensors), holding:

    "tokens"    I64 (T,) or (B, T)   the input token ids (I32 accepted on reading)
    "targets"   I64, tokens' shape   the training targets (gradient dumps only)
    <name>      F32 or F64           each activation, named as numpy_gpt2.activations says
                                     ("h.0.ln_1", ...; shapes there), in forward order
    "loss"      F64 scalar           the mean cross-entropy (gradient dumps only)
    "grad.<name>"                    dloss/d(activation or weight), in backward order

and metadata (all strings): "format" = "numpy_gpt2.activations", "names" = the tensor names
comma-separated in the order above, "loss" (repr of the float), plus what the writer adds
(model, dtype, config as JSON, numpy_gpt2_version). A port may write any subset of the
names and no metadata at all: load_dump orders the tensors by their names.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from numpy_gpt2.debug.capture import forward_order_key, gradient_order_key
from numpy_gpt2.config import GPT2Config

DUMP_FORMAT = "numpy_gpt2.activations"  # metadata "format" of files written by save_activations


def dump_order_key(name: str) -> tuple:
    """Sort key for every tensor name of a dump: the activations in forward order, then
    "loss", then the gradients (activations' and weights') in the order the backward pass
    produces them (gradient_order_key); unknown names last."""
    if forward_order_key(name)[0] < 3:
        return (0, forward_order_key(name))
    if name == "loss":
        return (1,)
    if gradient_order_key(name)[0] < 3:
        return (2, gradient_order_key(name))
    return (3,)


RESERVED = ("tokens", "targets")  # integer tensors of a dump, never compared as values


def save_activations(path, tokens, acts: dict, metadata: dict | None = None, *,
                     targets=None, loss: float | None = None) -> None:
    """Write tokens (int64 tensor "tokens") and the activations to a safetensors file.

    acts may hold gradients too ("grad.*" names); then pass the step's `targets` (written
    as int64 "targets", same shape as tokens) and `loss` (float64 scalar "loss", also in
    metadata "loss"). Metadata (all strings): format = "numpy_gpt2.activations", names =
    the tensor names comma-separated in their order in `acts` (forward order, then the
    gradients in backward order), plus `metadata` (e.g. model, dtype, numpy_gpt2_version).
    Raises OSError with a one-line message when the file cannot be written.
    """
    from safetensors.numpy import save_file

    for name in RESERVED + ("loss",):
        if name in acts:
            raise ValueError(f"{name!r} is reserved; it cannot be an activation name")
    tensors = {"tokens": np.ascontiguousarray(tokens, dtype=np.int64)}
    meta = {"format": DUMP_FORMAT, "names": ",".join(acts)}
    if targets is not None:
        tensors["targets"] = np.ascontiguousarray(targets, dtype=np.int64)
    if loss is not None:
        tensors["loss"] = np.array(loss, dtype=np.float64)
        meta["loss"] = repr(float(loss))
    tensors.update({name: np.ascontiguousarray(a) for name, a in acts.items()})
    meta.update({k: str(v) for k, v in (metadata or {}).items()})
    try:  # safetensors writes a temporary file and renames it: no half-written dump
        save_file(tensors, str(path), metadata=meta)
    except Exception as e:  # its own error type, with a multi-part message
        from numpy_gpt2.io.atomic import library_os_error

        if library_os_error(e, path) is not None:  # a full disk, an I/O error: say which
            raise library_os_error(e, path) from None
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise OSError(f"{path}: cannot write ({reason})") from None


def load_dump(path) -> dict:
    """Read a dump: {"tokens": int array or None, "targets": int array or None,
    "tensors": {name: array}, "metadata": {str: str}}.

    tensors holds every other tensor, "loss" included, ordered by dump_order_key: the
    activations in forward order, then "loss", then the gradients in backward order, then
    unknown names (in the order of metadata "names", then alphabetical). Any safetensors
    file works (e.g. one written by a port in C or Rust). Raises ValueError with a one-line
    message for unreadable files.
    """
    from safetensors import safe_open

    if os.path.isdir(path):  # (safetensors would say "No such device")
        raise ValueError(f"{path}: a directory, not a dump file (.safetensors)")
    try:
        with safe_open(str(path), framework="np") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except Exception as e:  # safetensors raises its own error types; keep one line
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"{path}: cannot read as safetensors ({reason}); "
                         f"activations must be stored as F32 or F64, tokens as I64") from None
    ints = {name: tensors.pop(name, None) for name in RESERVED}
    for name, a in ints.items():
        if a is not None and a.dtype.kind not in "iu":
            raise ValueError(f"{path}: {name!r} must hold integers (I64 or I32), got {a.dtype}")
    if "loss" in tensors and tensors["loss"].size != 1:
        raise ValueError(f"{path}: 'loss' must hold one number, got shape {tensors['loss'].shape}")
    listed = [n for n in metadata.get("names", "").split(",") if n in tensors]
    names = listed + sorted(n for n in tensors if n not in listed)
    names.sort(key=dump_order_key)  # stable: unknown names keep the order above
    return {"tokens": ints["tokens"], "targets": ints["targets"],
            "tensors": {n: tensors[n] for n in names}, "metadata": metadata}


def load_activations(path) -> tuple[np.ndarray | None, dict[str, np.ndarray], dict[str, str]]:
    """Read a dump: (tokens or None, {name: array}, metadata dict), the tensors ordered as
    load_dump orders them (forward order; a gradient dump's "loss" and "grad.*" follow).
    Use load_dump for a gradient dump's targets."""
    dump = load_dump(path)
    return dump["tokens"], dump["tensors"], dump["metadata"]


def config_metadata(config: GPT2Config) -> str:
    """The config as a JSON string, for dump metadata."""
    return json.dumps(dataclasses.asdict(config))


def package_version() -> str:
    """numpy_gpt2's version (from the installed package metadata; "unknown" when not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("numpy_gpt2")
    except PackageNotFoundError:
        return "unknown"
