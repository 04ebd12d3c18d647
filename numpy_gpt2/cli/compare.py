"""Compare two activation (and gradient) dumps tensor by tensor and name the first one that differs.

    python scripts/compare.py REFERENCE CANDIDATE [--atol 1e-4] [--rtol 1e-4] [--names PATTERN]

REFERENCE and CANDIDATE are safetensors files (from scripts/dump.py, or written by a port:
"tokens" int64 (T,) plus one tensor per activation name; a gradient dump adds "targets",
"loss" and "grad.*" tensors), or .npz files holding the same. A file may instead hold a
TransformerLens cache under its hook names ("blocks.0.attn.hook_z", ...; a batch axis of 1
is dropped): it is compared under our names and layouts (numpy_gpt2.interp.names). Either
one may instead be the word `live`: a fresh numpy_gpt2 run on the other file's tokens (and
targets: loss_and_grads, for a gradient dump), capturing the names that file holds
(--model, default: the model in the other file's metadata; --dtype, default: its dtype).

A tensor passes when every element has |candidate - reference| <= atol + rtol * |reference|
(numpy.isclose's rule); for a gradient, atol is multiplied by the reference tensor's largest
|value| (gradients have no natural scale). The table lists the activations in forward order,
then the loss, then the gradients in BACKWARD order: the order the backward pass computes
them, each weight's gradient where its module's backward computes it (grad.logits,
grad.ln_f, grad.ln_f.weight, ..., grad.h.{L-1}.mlp.c_proj, grad.h.{L-1}.mlp.c_proj.weight,
..., grad.h.0.ln_1.bias, grad.wpe, grad.wte, grad.wpe.weight, grad.wte.weight), so the
first failure is the earliest wrong number in computation order. Each row: shape, max abs error, max relative error (over
elements where the reference is non-zero), the element furthest outside the tolerance
("worst at") with both values, and a status; shape mismatches and transposed tensors are
named. Missing and extra names are listed but do not fail. Different tokens, or different
targets when a loss or gradients are compared, are an error (the tensors are not comparable).
Exit status: 0 all compared tensors pass, 1 some tensor fails (the first is named),
2 bad arguments or unreadable input (one-line message on stderr).
"""

from __future__ import annotations

from numpy_gpt2.cli import common

import fnmatch
import sys

import numpy as np

import numpy_gpt2
from numpy_gpt2.cli.common import UsageError
from numpy_gpt2.debug.capture import (GRAD, activation_names, activations, gradient_names, gradients,
                                      parameter_gradient_names)
from numpy_gpt2.debug.compare import compare_activations
from numpy_gpt2.debug.dump_format import RESERVED, dump_order_key, load_dump
from numpy_gpt2.interp.names import from_transformer_lens, is_transformer_lens_name

DEFAULT_ATOL = 1e-4  # float32 vs float32: both round at ~6e-8 per op, in different orders
DEFAULT_RTOL = 1e-4
LIVE = "live"


def load_side(path):
    dump = load_npz(path) if str(path).endswith(".npz") else load_dump(path)
    acts = dump["tensors"]
    if any(is_transformer_lens_name(n) for n in acts):
        acts = ours_from_transformer_lens(acts)
    return {"path": path, "tokens": dump["tokens"], "targets": dump["targets"],
            "acts": {n: acts[n] for n in sorted(acts, key=dump_order_key)}, "meta": dump["metadata"]}


def load_npz(path) -> dict:
    """A dump stored as .npz (numpy.savez): load_dump's dict, without metadata."""
    try:
        with np.load(path, allow_pickle=False) as f:
            tensors = {name: f[name] for name in f.files}
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except Exception as e:  # zipfile and pickle errors: keep one line
        raise ValueError(f"{path}: cannot read as .npz ({type(e).__name__}: {e})") from None
    ints = {name: tensors.pop(name, None) for name in RESERVED}
    for name, a in ints.items():
        if a is not None and a.dtype.kind not in "iu":
            raise ValueError(f"{path}: {name!r} must hold integers, got {a.dtype}")
    return {"tokens": ints["tokens"], "targets": ints["targets"], "tensors": tensors, "metadata": {}}


PER_HEAD = ("q", "k", "v", "z", "result", "scores", "softmax")  # (H, T, X) for one sequence


def ours_from_transformer_lens(tensors: dict) -> dict:
    """A TransformerLens cache's tensors under our names and layouts; a leading batch axis of
    1 (run_with_cache without remove_batch_dim) dropped, as our dumps are of one sequence.
    Names TransformerLens has and we do not stay as they are (listed as extra)."""
    known = {n: a for n, a in tensors.items() if is_transformer_lens_name(n)}
    out = {n: a for n, a in tensors.items() if n not in known}
    for tl, a in known.items():
        try:
            converted = from_transformer_lens({tl: a})
        except ValueError:
            out[tl] = a
            continue
        (name, a), = converted.items()
        single_ndim = 3 if name.rsplit(".", 1)[-1] in PER_HEAD else 2
        out[name] = a[0] if a.ndim == single_ndim + 1 and a.shape[0] == 1 else a
    return out


def is_step_tensor(name: str) -> bool:
    """The loss and the gradients depend on the targets; activations do not."""
    return name == "loss" or name.startswith(GRAD)


def live_side(other: dict, model: str | None, dtype: str | None) -> dict:
    """numpy_gpt2 run on the tokens (and, for a gradient dump, the targets) of `other`
    (a loaded dump), capturing the names it holds."""
    if other["tokens"] is None:
        raise ValueError(f"{other['path']} has no 'tokens' tensor to run numpy_gpt2 on")
    model = model or other["meta"].get("model")
    if not model:
        raise ValueError(f"{other['path']} does not record its model (metadata 'model'); "
                         f"pass --model")
    if dtype is None:
        dtype = other["meta"].get("dtype")
        if dtype not in ("float32", "float64"):
            first = next(iter(other["acts"].values()), None)
            dtype = "float64" if first is not None and first.dtype == np.float64 else "float32"
    params, config = numpy_gpt2.load(common.resolve_model(model), dtype=np.dtype(dtype))
    tokens = other["tokens"].astype(np.int64).reshape(-1)
    known = set(activation_names(config, points=True))
    known_grads = set(gradient_names(config, points=True) + parameter_gradient_names(params, config))
    names = [n for n in other["acts"] if n in known]
    grad_names = [n for n in other["acts"] if n in known_grads]
    if not names and not grad_names and "loss" not in other["acts"]:
        raise ValueError(f"{other['path']} holds no numpy_gpt2 activation or gradient names "
                         f"(e.g. h.0.ln_1, logits, grad.logits)")
    acts = activations(params, config, tokens, names) if names else {}
    targets = None
    if grad_names or "loss" in other["acts"]:
        if other["targets"] is None:
            raise ValueError(f"{other['path']} holds gradients or a loss but no 'targets' "
                             f"tensor: a live run needs the targets of that step")
        targets = other["targets"].astype(np.int64).reshape(-1)
        if grad_names:
            loss, act_grads, param_grads = gradients(params, config, tokens, targets, grad_names)
            acts.update(act_grads)
            acts.update(param_grads)
        else:
            loss, _ = numpy_gpt2.loss_and_grads(params, config, tokens, targets)
        acts["loss"] = np.array(loss, dtype=np.float64)
    return {"path": "live numpy_gpt2 run", "tokens": other["tokens"], "targets": targets,
            "acts": {n: acts[n] for n in sorted(acts, key=dump_order_key)},
            "meta": {"model": model, "dtype": dtype}}


def check_same_input(ref: dict, cand: dict) -> list[str]:
    """Raise ValueError when the two sides ran on different tokens, or on different targets
    while loss or gradients are compared; returns notes about what could not be checked."""
    notes = []
    if ref["tokens"] is not None and cand["tokens"] is not None:
        # any integer dtype, (T,) or (1, T)
        if not np.array_equal(ref["tokens"].astype(np.int64).reshape(-1),
                              cand["tokens"].astype(np.int64).reshape(-1)):
            raise ValueError(f"the files hold different tokens (reference "
                             f"{_short(ref['tokens'])}, candidate {_short(cand['tokens'])}): "
                             f"their activations are not comparable")
    else:
        notes.append("note: only one side has a 'tokens' tensor; not checked they ran on "
                     "the same input")
    if not any(is_step_tensor(n) for n in set(ref["acts"]) & set(cand["acts"])):
        return notes
    r, c = ref["targets"], cand["targets"]
    if r is None or c is None:
        notes.append("note: only one side has a 'targets' tensor; not checked the loss and "
                     "gradients are of the same targets" if (r is None) != (c is None) else
                     "note: neither side has a 'targets' tensor; not checked the loss and "
                     "gradients are of the same targets")
        return notes
    r, c = r.astype(np.int64).reshape(-1), c.astype(np.int64).reshape(-1)
    if r.shape != c.shape:
        raise ValueError(f"the files hold different targets ({r.size} vs {c.size} ids): "
                         f"their loss and gradients are not comparable")
    if not np.array_equal(r, c):
        t = int(np.flatnonzero(r != c)[0])
        raise ValueError(f"the files hold different targets (first difference at position {t}: "
                         f"reference {r[t]}, candidate {c[t]}; reference {_short(r)}, "
                         f"candidate {_short(c)}): their loss and gradients are not comparable "
                         f"(use the same targets, e.g. dump.py --targets)")
    return notes


def describe(side: dict) -> str:
    meta, t = side["meta"], side["tokens"]
    bits = [meta[k] for k in ("model", "dtype") if meta.get(k)]
    bits.append(f"{t.size} tokens" if t is not None else "no tokens")
    return f"{side['path']} ({', '.join(bits)})"


def fmt_shape(shape) -> str:
    return "-" if shape is None else "(" + ",".join(str(s) for s in shape) + ")"


def fmt_num(x, spec=".2e") -> str:
    return "-" if x is None else format(x, spec)


def print_table(rows, out=None):
    out = out or sys.stdout  # (the one of the moment: the command's guarded stdout)
    header = ["name", "shape", "max abs err", "max rel err", "worst at", "reference",
              "candidate", "status"]
    lines = []
    for r in rows:
        status = r["status"] + (f": {r['note']}" if r.get("note") and r["status"] != "missing" else "")
        if r["status"] == "missing":
            status = "missing in candidate"
        elif r["status"] == "extra":
            status = "extra: not in reference"
        shape = r["ref_shape"] if r["ref_shape"] is not None else r["cand_shape"]
        if r["status"] == "SHAPE":
            shape_txt = f"{fmt_shape(r['ref_shape'])} vs {fmt_shape(r['cand_shape'])}"
        else:
            shape_txt = fmt_shape(shape)
        exact = r.get("max_abs") == 0  # no worst element to show
        lines.append([r["name"], shape_txt, fmt_num(r.get("max_abs")), fmt_num(r.get("max_rel")),
                      "-" if exact or r.get("index") is None else fmt_shape(r["index"]),
                      "-" if exact else fmt_num(r.get("ref"), ".6g"),
                      "-" if exact else fmt_num(r.get("cand"), ".6g"), status])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
    for line in [header] + lines:
        cells = [str(x).ljust(w) for x, w in zip(line[:-1], widths)] + [line[-1]]
        print("  ".join(cells).rstrip(), file=out)


def select(side: dict, patterns: str) -> None:
    """Keep the tensors of side whose names match the comma-separated fnmatch patterns;
    UsageError listing the names it holds when none match."""
    wanted = [p.strip() for p in patterns.split(",") if p.strip()]
    kept = {n: a for n, a in side["acts"].items() if any(fnmatch.fnmatchcase(n, p) for p in wanted)}
    if not kept:
        raise UsageError(f"--names {patterns!r} matches none of the {len(side['acts'])} tensors "
                         f"in {side['path']}: {_short(list(side['acts']), 12)}")
    side["acts"] = kept


@common.entry("compare")
def main(argv=None) -> int:
    parser = common.Parser(
        
        description="Compare two activation/gradient dumps (or one dump against a live "
                    "numpy_gpt2 run) and name the first tensor outside the tolerance: "
                    "activations in forward order, then the loss, then gradients in backward order.",
        epilog="Either file may be the word 'live': numpy_gpt2 run on the other file's tokens "
               "(and targets, for gradients). Exit status: 0 all compared tensors pass, 1 some "
               "tensor fails, 2 bad arguments or input.")
    parser.add_argument("reference", help="reference dump (.safetensors or .npz; our names or "
                                          "TransformerLens' hook names) or 'live'")
    parser.add_argument("candidate", help="candidate dump (.safetensors or .npz) or 'live'")
    parser.add_argument("--atol", type=float, default=DEFAULT_ATOL,
                        help=f"absolute tolerance (default {DEFAULT_ATOL:g}); for a gradient "
                             f"(grad.*) it is relative to the tensor's largest |reference|")
    parser.add_argument("--rtol", type=float, default=DEFAULT_RTOL,
                        help=f"relative tolerance (default {DEFAULT_RTOL:g}); pass pairs if "
                             f"|cand - ref| <= atol + rtol*|ref|")
    parser.add_argument("--names", help="compare only the names matching these fnmatch "
                                        "pattern(s), comma-separated (e.g. 'grad.h.1.*,loss')")
    parser.add_argument("--model", help="model for a 'live' side (default: the other file's "
                                        "metadata 'model')")
    parser.add_argument("--dtype", choices=["float32", "float64"],
                        help="dtype for a 'live' side (default: the other file's)")
    args = parser.parse_args(argv)
    if args.reference == LIVE and args.candidate == LIVE:
        parser.error("at most one of REFERENCE and CANDIDATE can be 'live'")
    if not (args.atol >= 0 and args.rtol >= 0):
        parser.error("--atol and --rtol must be >= 0")
    try:
        if args.reference == LIVE:
            cand = load_side(args.candidate)
            ref = live_side(cand, args.model, args.dtype)
        else:
            ref = load_side(args.reference)
            cand = (live_side(ref, args.model, args.dtype) if args.candidate == LIVE
                    else load_side(args.candidate))
        if args.names is not None:
            for side in (ref, cand):
                select(side, args.names)
        notes = check_same_input(ref, cand)
        if not set(ref["acts"]) & set(cand["acts"]):
            raise ValueError(f"no tensor names in common (reference: {_short(list(ref['acts']))}; "
                             f"candidate: {_short(list(cand['acts']))})")
    except (ValueError, OSError, RuntimeError) as e:  # CheckpointError is a ValueError
        raise common.input_error(e) from None

    rows = compare_activations(ref["acts"], cand["acts"], args.atol, args.rtol)
    print(f"reference: {describe(ref)}")
    print(f"candidate: {describe(cand)}")
    print(f"pass: |candidate - reference| <= atol + rtol*|reference|, atol={args.atol:g}, "
          f"rtol={args.rtol:g}")
    if any(n.startswith(GRAD) for n in ref["acts"]):
        print("gradients (grad.*): atol is relative to each tensor's largest |reference|: "
              "|candidate - reference| <= atol*max|reference| + rtol*|reference|")
    if "loss" in ref["acts"] and "loss" in cand["acts"]:
        r, c = (float(side["acts"]["loss"].reshape(-1)[0]) for side in (ref, cand))
        print(f"loss: reference {r:.8g}, candidate {c:.8g}" + ("" if r == c else
                                                              f" (difference {c - r:.3g})"))
    for note in notes:
        print(note)
    print()
    print_table(rows)
    print()
    compared = [r for r in rows if r["status"] not in ("missing", "extra")]
    failed = [r for r in compared if not r["ok"]]
    missing = [r["name"] for r in rows if r["status"] == "missing"]
    if missing:
        print(f"{len(missing)} reference tensor(s) missing from the candidate: {_short(missing)}")
    if failed:
        first = failed[0]
        if first["status"] == "SHAPE":
            why = (f"shape {fmt_shape(first['cand_shape'])}, expected "
                   f"{fmt_shape(first['ref_shape'])} ({first['note']})")
        else:
            why = (f"max abs err {first['max_abs']:.3g} at {fmt_shape(first['index'])}: "
                   f"reference {first['ref']:.6g}, candidate {first['cand']:.6g}")
            if first["note"]:
                why += f" ({first['note']})"
        print(f"FIRST FAILURE: {first['name']}: {why}")
        print(f"{len(failed)} of {len(compared)} compared tensors exceed the tolerance; "
              f"the tensors compared before {first['name']} pass")
        return 1
    print(f"OK: all {len(compared)} compared tensors within tolerance")
    return 0


def _short(items, n=6) -> str:
    items = [str(int(x)) if isinstance(x, np.integer) else str(x) for x in list(items)]
    return ", ".join(items[:n]) + (f", ... ({len(items)} in all)" if len(items) > n else "")
