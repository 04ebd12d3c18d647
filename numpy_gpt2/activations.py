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

Gradients, for ports of training code (see `gradients`): "grad.<activation name>" is
dloss/d(that activation), same shape, listed in BACKWARD order (grad.logits, grad.ln_f,
grad.h.{L-1}, grad.h.{L-1}.mlp.c_proj, ..., grad.h.0.ln_1, grad.wpe, grad.wte), and
"grad.<checkpoint key>" is dloss/d(that weight) (grad.h.3.attn.c_attn.weight, grad.wte.weight),
also in backward order. The loss is the mean cross-entropy of `targets` (numpy_gpt2.loss_and_grads).
A dump file holds activations in forward order, then "loss", then the gradients.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import re

import numpy as np

from .backward import loss_and_grads
from .checkpoint import flatten_params
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


# ---- gradients ----------------------------------------------------------------------------

GRAD = "grad."  # prefix of gradient names: "grad.h.0.ln_1", "grad.h.0.attn.c_attn.weight"
IGNORE_INDEX = -100  # a target that is not scored (torch's cross_entropy default)

# The weights of block i in the order the backward pass finishes their gradients: it walks
# the block from its output back to its input (weight before bias inside a module).
BLOCK_PARAMS_BACKWARD = ("mlp.c_proj", "mlp.c_fc", "ln_2", "attn.c_proj", "attn.c_attn", "ln_1")


def gradient_names(config: GPT2Config, softmax: bool = True) -> list[str]:
    """"grad.<activation name>" for every activation, in BACKWARD order: the forward order
    reversed, from grad.logits back to grad.wpe, grad.wte (softmax=False leaves out the
    gradients of the (H, T, T) attention probabilities)."""
    return [GRAD + name for name in reversed(activation_names(config, softmax))]


def parameter_gradient_names(params: dict) -> list[str]:
    """"grad.<checkpoint key>" for every weight in `params`, in backward order (see
    gradient_order_key): lm_head (untied only), ln_f, blocks L-1 .. 0, wpe, wte last."""
    return sorted((GRAD + key for key in flatten_params(params)), key=gradient_order_key)


def gradient_order_key(name: str) -> tuple:
    """Sort key putting "grad.*" names in backward order for any n_layer: first the
    activation gradients (grad.logits, grad.ln_f, grad.h.{L-1}, ..., grad.h.0.ln_1,
    grad.wpe, grad.wte), then the parameter gradients in the order the backward pass
    finishes them: grad.lm_head.weight (untied head), grad.ln_f.*, then blocks L-1 .. 0
    (each: mlp.c_proj, mlp.c_fc, ln_2, attn.c_proj, attn.c_attn, ln_1; weight, bias),
    grad.wpe.weight, and grad.wte.weight LAST: with a tied head it sums the output head's
    part (computed first) and the embedding's (computed last). Unknown names sort last."""
    if not name.startswith(GRAD):
        return (2,)
    key = name[len(GRAD):]
    forward = forward_order_key(key)
    if forward[0] < 3:  # an activation: the forward order reversed
        return (0,) + tuple(-int(k) for k in forward)
    output_end, input_end = ["lm_head.weight", "ln_f.weight", "ln_f.bias"], ["wpe.weight", "wte.weight"]
    if key in output_end:
        return (1, 0, output_end.index(key))
    m = re.fullmatch(r"h\.(\d+)\.(.+)\.(weight|bias)", key)
    if m and m.group(2) in BLOCK_PARAMS_BACKWARD:
        return (1, 1, -int(m.group(1)), BLOCK_PARAMS_BACKWARD.index(m.group(2)),
                m.group(3) == "bias")
    if key in input_end:
        return (1, 2, input_end.index(key))
    return (2,)


def next_token_targets(tokens, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """The default training targets of a sequence: the next token of each position.

    targets[..., t] = tokens[..., t + 1]; the last position has no next token, so its
    target is ignore_index (not scored). tokens (T,) or (B, T) -> int64 of the same shape.
    """
    tokens = np.asarray(tokens)
    targets = np.full(tokens.shape, ignore_index, dtype=np.int64)
    targets[..., :-1] = tokens[..., 1:]
    return targets


def gradients(params: dict, config: GPT2Config, tokens, targets, names="*",
              ignore_index: int = IGNORE_INDEX, *, reference: bool = False
              ) -> tuple[float, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """One forward and backward pass of the mean cross-entropy of `targets`
    (numpy_gpt2.loss_and_grads), returned as dump tensors:

        (loss, {"grad.<activation>": dloss/d(activation)} in backward order,
               {"grad.<checkpoint key>": dloss/d(weight)} in backward order)

    tokens (T,) -> activation gradients without a batch axis (shapes of `activations`);
    (B, T) -> with a leading B. targets: same shape, targets[..., t] the token that should
    follow position t (see next_token_targets), ignore_index not scored. Weight gradients
    have the weights' shapes. names: fnmatch pattern(s) over the "grad.*" names, as in
    select_names ("*" = all but grad.h.{i}.attn.softmax; "grad.h.0.*" = block 0's
    activation and weight gradients). reference=True runs the readable backward functions.
    """
    tokens = np.asarray(tokens)
    act_names = gradient_names(config)
    wanted = select_names(act_names + parameter_gradient_names(params), names)
    keep = set(wanted)
    single = tokens.ndim == 1
    captured = {}

    def record_grad(name, value):  # value: (B, T, ...) always
        if GRAD + name in keep:
            captured[GRAD + name] = np.array(value[0] if single else value)  # may be reused

    wanted_acts = keep.intersection(act_names)
    loss, grads = loss_and_grads(params, config, tokens, targets, ignore_index,
                                 reference=reference, record_grad=record_grad if wanted_acts else None)
    flat = flatten_params(grads)
    act_grads = {n: captured[n] for n in wanted if n in wanted_acts}
    param_grads = {n: flat[n[len(GRAD):]] for n in wanted if n not in wanted_acts}
    return loss, act_grads, param_grads


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


def dump_order_key(name: str) -> tuple:
    """Sort key for every tensor name of a dump: the activations in forward order, then
    "loss", then the gradients in backward order (gradient_order_key); unknown names last."""
    if forward_order_key(name)[0] < 3:
        return (0, forward_order_key(name))
    if name == "loss":
        return (1,)
    if gradient_order_key(name)[0] < 2:
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


# ---- comparison ---------------------------------------------------------------------------

def _errors(ref: np.ndarray, cand: np.ndarray, atol: float, rtol: float) -> dict:
    """Element-wise errors of cand against ref (same shape). Pass iff every element has
    |cand - ref| <= atol + rtol * |ref| (numpy.isclose's rule); NaN never passes."""
    r, c = np.atleast_1d(ref.astype(np.float64)), np.atleast_1d(cand.astype(np.float64))  # 0-d: loss
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
            "index": tuple(int(i) for i in worst)[:ref.ndim], "ref": float(r[worst]), "cand": float(c[worst]),
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


def gradient_atol(ref: np.ndarray, atol: float) -> float:
    """The absolute tolerance for a gradient tensor: atol times the reference tensor's
    largest |value| (atol itself when the reference is all zeros).

    Gradients have no natural unit: they shrink with the number of scored targets (the loss
    is a mean) and differ by orders of magnitude between tensors, so one absolute tolerance
    would pass every element of a small, wrong gradient. Rounding errors are relative to the
    tensor's scale (a sum of terms as large as its largest elements), and so is this."""
    scale = float(np.abs(ref).max(initial=0.0)) if ref.size else 0.0
    return atol * scale if np.isfinite(scale) and scale > 0 else atol


def compare_activations(reference: dict, candidate: dict, atol: float, rtol: float) -> list[dict]:
    """Compare two {name: array} dicts. Returns rows in the reference's order (see
    compare_tensor), then a row with status "missing" for each reference name the candidate
    lacks (in place), and "extra" rows for candidate names the reference lacks (at the end).
    Missing/extra names are reported, not failures: a port may dump only some tensors.
    Gradients ("grad.*") pass when |cand - ref| <= gradient_atol(ref, atol) + rtol * |ref|."""
    rows = []
    for name, ref in reference.items():
        if name in candidate:
            tol = gradient_atol(ref, atol) if name.startswith(GRAD) else atol
            rows.append(compare_tensor(name, ref, candidate[name], tol, rtol))
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
