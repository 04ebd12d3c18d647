"""The explain page's numbers as JSON and as text: to_json (what the page embeds, rounded to
SIGNIFICANT digits), fmt and cell_text (how a shown number is written), token_label, and
resolve (a data-src path into the JSON). Everything visible is formatted from these values."""

from __future__ import annotations

import math

import numpy as np

SIGNIFICANT = 7  # digits kept in the JSON (float32's precision)
SHOWN_ROWS = 4   # the last query rows of a (T, T) stage shown as numbers when T is large
WHOLE = 12       # a (T, T) stage with T <= WHOLE is shown whole as numbers


# ---- the JSON: what the page shows, machine-readable -----------------------------------------

GENERATOR = "numpy_gpt2 explain"  # in every page's <head>: the command replaces only its own pages


def to_json(value):
    """walk()'s dict as plain JSON values: arrays to lists, floats to SIGNIFICANT digits,
    -inf/inf/nan to the strings "-inf"/"inf"/"nan"; keys starting with "img" (arrays shown
    only as pictures) are left out."""
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items() if not k.startswith("img")}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_json(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return float(f"{v:.{SIGNIFICANT}g}") if math.isfinite(v) else str(v)
    return value


def fmt(v) -> str:
    """A JSON number as the page shows it: 4 significant digits; "-inf" as −∞."""
    if isinstance(v, str):
        return {"-inf": "−∞", "inf": "∞", "nan": "NaN"}.get(v, v)
    if isinstance(v, bool) or isinstance(v, int):
        return str(v)
    return f"{v:.4g}"


def token_label(text: str) -> str:
    """A token's text as a label: spaces as ␣, newlines as ↵, tabs as ⇥ (plain text, unescaped)."""
    return text.replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥").replace("\r", "␍")


def cell_text(v) -> str:
    return token_label(v) if isinstance(v, str) and v not in ("-inf", "inf", "nan") else fmt(v)


def resolve(data: dict, src: str):
    """The JSON value a table shows: "a.b.0.c" walks dicts and lists, "*" maps over a list,
    "p|q" stacks several values as rows."""
    def walk(value, parts):
        if not parts:
            return value
        head, rest = parts[0], parts[1:]
        if head == "*":
            return [walk(v, rest) for v in value]
        return walk(value[int(head)] if isinstance(value, list) else value[head], rest)
    values = [walk(data, part.split(".")) for part in src.split("|")]
    return values[0] if len(values) == 1 else values
