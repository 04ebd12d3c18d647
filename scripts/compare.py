"""Compare two activation dumps tensor by tensor and name the first one that differs.

    python scripts/compare.py REFERENCE CANDIDATE [--atol 1e-4] [--rtol 1e-4] [--names PATTERN]

REFERENCE and CANDIDATE are safetensors files (from scripts/dump.py, or written by a port:
"tokens" int64 (T,) plus one tensor per activation name). Either one may instead be the word
`live`: a fresh numpy_gpt2 run on the other file's tokens, capturing the names that file
holds (--model, default: the model in the other file's metadata; --dtype, default: its dtype).

A tensor passes when every element has |candidate - reference| <= atol + rtol * |reference|
(numpy.isclose's rule). The table lists, in forward order, each tensor's shape, max abs error,
max relative error (over elements where the reference is non-zero), the element furthest
outside the tolerance ("worst at") with both values, and a status; shape mismatches and
transposed tensors are named. Missing and extra names are listed but do not fail.
Exit status: 0 all compared tensors pass, 1 some tensor fails (the first is named),
2 bad arguments or unreadable input (one-line message on stderr).
"""

from __future__ import annotations

import argparse
import fnmatch
import sys

import numpy as np

import numpy_gpt2
from numpy_gpt2.activations import (activation_names, activations, compare_activations,
                                    load_activations)

DEFAULT_ATOL = 1e-4  # float32 vs float32: both round at ~6e-8 per op, in different orders
DEFAULT_RTOL = 1e-4
LIVE = "live"


def load_side(path):
    tokens, acts, meta = load_activations(path)
    return {"path": path, "tokens": tokens, "acts": acts, "meta": meta}


def live_side(other: dict, model: str | None, dtype: str | None) -> dict:
    """numpy_gpt2 run on the tokens of `other` (a loaded dump), capturing the names it holds."""
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
    params, config = numpy_gpt2.load(numpy_gpt2.resolve_model(model), dtype=np.dtype(dtype))
    known = set(activation_names(config))
    names = [n for n in other["acts"] if n in known]
    if not names:
        raise ValueError(f"{other['path']} holds no numpy_gpt2 activation names "
                         f"(e.g. h.0.ln_1, logits)")
    acts = activations(params, config, other["tokens"].astype(np.int64).reshape(-1), names)
    return {"path": "live numpy_gpt2 run", "tokens": other["tokens"],
            "acts": acts, "meta": {"model": model, "dtype": dtype}}


def describe(side: dict) -> str:
    meta, t = side["meta"], side["tokens"]
    bits = [meta[k] for k in ("model", "dtype") if meta.get(k)]
    bits.append(f"{t.size} tokens" if t is not None else "no tokens")
    return f"{side['path']} ({', '.join(bits)})"


def fmt_shape(shape) -> str:
    return "-" if shape is None else "(" + ",".join(str(s) for s in shape) + ")"


def fmt_num(x, spec=".2e") -> str:
    return "-" if x is None else format(x, spec)


def print_table(rows, out=sys.stdout):
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="Compare two activation dumps (or one dump against a live numpy_gpt2 run) "
                    "and name the first tensor outside the tolerance.",
        epilog="Either file may be the word 'live': numpy_gpt2 run on the other file's tokens. "
               "Exit status: 0 all compared tensors pass, 1 some tensor fails, 2 bad arguments "
               "or input.")
    parser.add_argument("reference", help="reference dump (.safetensors) or 'live'")
    parser.add_argument("candidate", help="candidate dump (.safetensors) or 'live'")
    parser.add_argument("--atol", type=float, default=DEFAULT_ATOL,
                        help=f"absolute tolerance (default {DEFAULT_ATOL:g})")
    parser.add_argument("--rtol", type=float, default=DEFAULT_RTOL,
                        help=f"relative tolerance (default {DEFAULT_RTOL:g}); pass pairs if "
                             f"|cand - ref| <= atol + rtol*|ref|")
    parser.add_argument("--names", help="compare only the names matching these fnmatch "
                                        "pattern(s), comma-separated")
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
        if args.names:
            patterns = [p.strip() for p in args.names.split(",") if p.strip()]
            for side in (ref, cand):
                side["acts"] = {n: a for n, a in side["acts"].items()
                                if any(fnmatch.fnmatchcase(n, p) for p in patterns)}
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
        if not set(ref["acts"]) & set(cand["acts"]):
            raise ValueError(f"no tensor names in common (reference: {_short(list(ref['acts']))}; "
                             f"candidate: {_short(list(cand['acts']))})")
    except (ValueError, OSError, RuntimeError) as e:  # CheckpointError is a ValueError
        print(f"compare.py: error: {e}", file=sys.stderr)
        return 2

    rows = compare_activations(ref["acts"], cand["acts"], args.atol, args.rtol)
    print(f"reference: {describe(ref)}")
    print(f"candidate: {describe(cand)}")
    print(f"pass: |candidate - reference| <= atol + rtol*|reference|, atol={args.atol:g}, "
          f"rtol={args.rtol:g}")
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


if __name__ == "__main__":
    sys.exit(main())
