"""Named intermediate activations: capture them, save/load them, compare two sets.

For people porting GPT-2 to another language: run the same tokens through numpy_gpt2 and
through the port, and the first tensor that differs says where the port goes wrong.

Names follow the checkpoint's module names, in forward order (T tokens, E = n_embd,
H = n_head, V = vocab_size; shapes for one sequence of token ids of shape (T,)):

    wte              (T, E)      token embeddings wte[tokens]
    wpe              (T, E)      position embeddings wpe[0..T-1]
    h.{i}.ln_1       (T, E)      block i: LayerNorm before attention
    h.{i}.attn.c_attn (T, 3E)    [q | k | v] = ln_1 @ W + b
    h.{i}.attn.softmax (H, T, T) attention probabilities (query, key); only when asked for
    h.{i}.attn       (T, E)      attention output, after c_proj
    h.{i}.ln_2       (T, E)      LayerNorm before the MLP
    h.{i}.mlp.c_fc   (T, 4E)     MLP up-projection
    h.{i}.mlp.gelu   (T, 4E)     after the tanh GELU
    h.{i}.mlp.c_proj (T, E)      MLP output
    h.{i}            (T, E)      block output (the residual stream)
    ln_f             (T, E)      final LayerNorm
    logits           (T, V)

A batch of token ids (B, T) gives the same names with a leading batch axis B on every array
(wpe included, repeated over the batch).

The forward pass itself only calls `record(name, array)` at each of these points; the
default `record` does nothing, so nothing is copied or kept unless you ask.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import re

import numpy as np

from .config import GPT2Config
from .model import forward

# The named points inside block i, in forward order ("h.{i}." + name; "" is the block output).
BLOCK_NAMES = ("ln_1", "attn.c_attn", "attn.softmax", "attn", "ln_2", "mlp.c_fc", "mlp.gelu",
               "mlp.c_proj", "")

DUMP_FORMAT = "numpy_gpt2.activations"  # metadata "format" of files written by save_activations


def activation_names(config: GPT2Config, softmax: bool = True) -> list[str]:
    """Every activation name of a model, in forward order (softmax=False leaves out the
    (H, T, T) attention probabilities)."""
    names = ["wte", "wpe"]
    for i in range(config.n_layer):
        names += [f"h.{i}.{n}" if n else f"h.{i}" for n in BLOCK_NAMES
                  if softmax or n != "attn.softmax"]
    return names + ["ln_f", "logits"]


def select_names(all_names: list[str], patterns="*") -> list[str]:
    """The names matching any of the fnmatch `patterns`, kept in the order of `all_names`.

    patterns: one string (comma-separated patterns allowed, e.g. "h.0.*,logits") or a list.
    The attention probabilities ("h.{i}.attn.softmax", (H, T, T) each: large) are selected
    only by a pattern that spells out "softmax", e.g. "*softmax" or "h.3.attn.softmax";
    plain "*" leaves them out. A pattern that matches nothing is an error (likely a typo).
    """
    if isinstance(patterns, str):
        patterns = patterns.split(",")
    patterns = [p.strip() for p in patterns if p.strip()]
    if not patterns:
        raise ValueError("no activation name patterns given (e.g. '*', 'h.0.*', 'logits')")
    chosen = set()
    for pattern in patterns:
        hits = [n for n in all_names if fnmatch.fnmatchcase(n, pattern)
                and ("softmax" in pattern or not n.endswith(".softmax"))]
        if not hits:
            raise ValueError(f"activation name pattern {pattern!r} matches no name; names are "
                             f"{all_names[0]}, {all_names[1]}, h.0.ln_1, ..., {all_names[-1]} "
                             f"(see numpy_gpt2.activation_names)")
        chosen.update(hits)
    return [n for n in all_names if n in chosen]


def activations(params: dict, config: GPT2Config, tokens, names="*") -> dict[str, np.ndarray]:
    """Run the forward pass and return the named activations {name: array}, in forward order.

    tokens: int array (T,) -> arrays without a batch axis (see the module docstring for
    shapes); (B, T) -> every array with a leading B. names: fnmatch pattern(s), see
    select_names ("*" = everything but the attention probabilities). The arrays are copies
    in the weights' dtype, from one forward pass: its logits are exactly activations()["logits"].
    """
    tokens = np.asarray(tokens)
    wanted = select_names(activation_names(config), names)
    keep = set(wanted)
    single = tokens.ndim == 1
    captured = {}

    def record(name, value):
        if name not in keep:
            return
        if name == "wpe":  # (T, E) shared by the batch: repeat it so every name has the batch axis
            value = np.broadcast_to(value, (1 if single else tokens.shape[0],) + value.shape[-2:])
        captured[name] = np.array(value[0] if single else value)  # a copy: value may be reused

    forward(params, config, tokens, record=record)
    return {name: captured[name] for name in wanted}


# ---- dump files ---------------------------------------------------------------------------

def forward_order_key(name: str) -> tuple:
    """Sort key putting activation names in forward order for any n_layer; unknown names last."""
    if name in ("wte", "wpe"):
        return (0, 0, name == "wpe")
    m = re.fullmatch(r"h\.(\d+)(?:\.(.+))?", name)
    if m and (m.group(2) or "") in BLOCK_NAMES:
        return (1, int(m.group(1)), BLOCK_NAMES.index(m.group(2) or ""))
    if name in ("ln_f", "logits"):
        return (2, 0, name == "logits")
    return (3, 0, name)


def save_activations(path, tokens, acts: dict, metadata: dict | None = None) -> None:
    """Write tokens (int64 tensor "tokens") and the activations to a safetensors file.

    Metadata (all strings): format = "numpy_gpt2.activations", names = the activation names
    comma-separated in forward order, plus `metadata` (e.g. model, dtype, numpy_gpt2_version).
    """
    from safetensors.numpy import save_file

    if "tokens" in acts:
        raise ValueError("'tokens' is reserved for the token ids; it cannot be an activation name")
    tensors = {"tokens": np.ascontiguousarray(tokens, dtype=np.int64)}
    tensors.update({name: np.ascontiguousarray(a) for name, a in acts.items()})
    meta = {"format": DUMP_FORMAT, "names": ",".join(acts)}
    meta.update({k: str(v) for k, v in (metadata or {}).items()})
    save_file(tensors, str(path), metadata=meta)


def load_activations(path) -> tuple[np.ndarray | None, dict[str, np.ndarray], dict[str, str]]:
    """Read a dump: (tokens or None, {name: array} in forward order, metadata dict).

    Any safetensors file works (e.g. one written by a port in C or Rust): the order comes
    from metadata "names" when present, else from forward_order_key. Raises ValueError with
    a one-line message for unreadable files.
    """
    from safetensors import safe_open

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
    tokens = tensors.pop("tokens", None)
    listed = [n for n in metadata.get("names", "").split(",") if n in tensors]
    rest = sorted((n for n in tensors if n not in listed), key=forward_order_key)
    return tokens, {n: tensors[n] for n in listed + rest}, metadata


# ---- comparison ---------------------------------------------------------------------------

def _errors(ref: np.ndarray, cand: np.ndarray, atol: float, rtol: float) -> dict:
    """Element-wise errors of cand against ref (same shape). Pass iff every element has
    |cand - ref| <= atol + rtol * |ref| (numpy.isclose's rule); NaN never passes."""
    r, c = ref.astype(np.float64), cand.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        diff = np.abs(c - r)
        diff[c == r] = 0.0  # equal infinities
        diff[np.isnan(diff)] = np.inf
        ratio = diff / (atol + rtol * np.abs(r))  # > 1: outside tolerance
        rel = np.where(r != 0, diff / np.abs(r), 0.0)  # elements where ref is 0: see max abs
    if diff.size == 0:
        return {"max_abs": 0.0, "max_rel": 0.0, "index": (), "ref": None, "cand": None, "ok": True}
    worst = np.unravel_index(int(np.argmax(ratio)), ratio.shape)
    return {"max_abs": float(diff.max()), "max_rel": float(rel.max()),
            "index": tuple(int(i) for i in worst), "ref": float(r[worst]), "cand": float(c[worst]),
            "ok": bool(ratio[worst] <= 1.0)}


def _swap_last(shape):
    return tuple(shape[:-2]) + (shape[-1], shape[-2])


def compare_tensor(name: str, ref: np.ndarray, cand: np.ndarray, atol: float, rtol: float) -> dict:
    """One row of a comparison: {"name", "status", "ref_shape", "cand_shape", errors..., "note"}.

    status: "ok", "FAIL" (values out of tolerance), "SHAPE" (shape mismatch; the note says
    whether it is the reference transposed, or a reshape) — both FAIL and SHAPE are failures.
    """
    row = {"name": name, "ref_shape": tuple(ref.shape), "cand_shape": tuple(cand.shape), "note": ""}
    if cand.shape != ref.shape and cand.shape in ((1,) + ref.shape, ref.shape[1:]) \
            and cand.size == ref.size:  # an extra/missing batch axis of 1: compare anyway
        row["note"] = "batch axis of size 1 ignored; "
        cand = cand.reshape(ref.shape)
    if cand.shape == ref.shape:
        row.update(_errors(ref, cand, atol, rtol))
        row["status"] = "ok" if row["ok"] else "FAIL"
        if not row["ok"] and ref.ndim >= 2 and ref.shape[-1] == ref.shape[-2] \
                and _errors(ref, np.swapaxes(cand, -1, -2), atol, rtol)["ok"]:
            row["note"] += "values match the reference TRANSPOSED (last two axes swapped)"
        row["note"] = row["note"].rstrip("; ")
        return row
    row.update(status="SHAPE", ok=False, max_abs=None, max_rel=None, index=None, ref=None, cand=None)
    if ref.ndim >= 2 and cand.shape == _swap_last(ref.shape):
        e = _errors(ref, np.swapaxes(cand, -1, -2), atol, rtol)
        row["note"] = ("TRANSPOSED: shape is the reference's with the last two axes swapped; "
                       + ("transposed back it matches" if e["ok"] else
                          f"transposed back it still differs (max abs err {e['max_abs']:.3g})"))
    elif cand.size == ref.size:
        e = _errors(ref, cand.reshape(ref.shape), atol, rtol)
        row["note"] = (f"shape mismatch, same number of elements; reshaped to the reference's "
                       f"shape it {'matches' if e['ok'] else 'differs'}")
    else:
        row["note"] = f"shape mismatch: {cand.size} elements vs {ref.size}"
    return row


def compare_activations(reference: dict, candidate: dict, atol: float, rtol: float) -> list[dict]:
    """Compare two {name: array} dicts. Returns rows in the reference's order (see
    compare_tensor), then a row with status "missing" for each reference name the candidate
    lacks (in place), and "extra" rows for candidate names the reference lacks (at the end).
    Missing/extra names are reported, not failures: a port may dump only some tensors."""
    rows = []
    for name, ref in reference.items():
        if name in candidate:
            rows.append(compare_tensor(name, ref, candidate[name], atol, rtol))
        else:
            rows.append({"name": name, "status": "missing", "ok": True, "ref_shape": tuple(ref.shape),
                         "cand_shape": None, "note": "not in the candidate"})
    for name, cand in candidate.items():
        if name not in reference:
            rows.append({"name": name, "status": "extra", "ok": True, "ref_shape": None,
                         "cand_shape": tuple(cand.shape), "note": "not in the reference"})
    return rows


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
