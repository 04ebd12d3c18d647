"""Comparing two sets of named tensors (a reference run and a port's): which tensors differ,
by how much, where, and whether a shape mismatch is a transpose or a reshape.

A row per tensor (compare_tensor); scripts/compare.py prints them and names the FIRST
FAILURE in forward (then backward) order, which is where a port's bug is.
"""

from __future__ import annotations

import numpy as np

from numpy_gpt2.debug.capture import GRAD


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
