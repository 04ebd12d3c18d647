"""The explain page's building blocks: tables whose cells name their JSON source, heatmaps as
PNG data: URIs, SVG line and bar charts, and the page's CSS and JavaScript. No numbers are
computed here; they come from numpy_gpt2.explain.values."""

from __future__ import annotations

import html
import math

import numpy as np

from numpy_gpt2.explain.png import data_uri, signed_range
from numpy_gpt2.explain.values import cell_text, fmt, resolve, to_json

# ---- building blocks -------------------------------------------------------------------------

esc = html.escape


def _as_rows(value):
    if not isinstance(value, list):  # one number
        return [[value]]
    return [value] if not value or not isinstance(value[0], list) else value


def table(data, src, row_labels=None, col_labels=None, rows=None, cols=None, shade=None, titles=None,
          caption=""):
    """A table of the JSON value at `src` (a matrix, or one row), its cells formatted from
    it. rows: the first row shown (negative: the last -rows); cols: the number of columns
    shown. shade: "prob" (0..1) or "signed": cell backgrounds. titles: a src whose values
    become the cells' tooltips (also checked by the tests)."""
    matrix = _as_rows(resolve(data, src))
    start = 0 if rows is None else (rows if rows >= 0 else len(matrix) + rows)
    matrix = [r[:cols] if cols else r for r in matrix[start:]]
    tips = None if titles is None else [r[:cols] if cols else r for r in _as_rows(resolve(data, titles))[start:]]
    if row_labels is not None:
        row_labels = list(row_labels)[start:]
    attrs = f' data-src="{esc(src)}"' + (f' data-rows="{rows}"' if rows is not None else "") + \
        (f' data-cols="{cols}"' if cols else "") + (f' data-titles="{esc(titles)}"' if titles else "")
    scale = signed_range([v for r in matrix for v in r if not isinstance(v, str)] or [0]) \
        if shade == "signed" else None
    out = [f'<div class="scroll"><table class="num"{attrs}>']
    if caption:
        out.append(f"<caption>{caption}</caption>")
    if col_labels is not None:
        out.append("<tr>" + ("<th></th>" if row_labels is not None else "") +
                   "".join(f"<th>{esc(str(c))}</th>" for c in list(col_labels)[:len(matrix[0])]) + "</tr>")
    for r, row in enumerate(matrix):
        cells = []
        for c, v in enumerate(row):
            style = ""
            weight = tips[r][c] if tips is not None else v
            if shade == "prob" and not isinstance(weight, str):
                style = f' style="background:{_shade_prob(weight)}"'
            elif shade == "signed" and not isinstance(v, str):
                style = f' style="background:{_shade_signed(v / scale)}"'
            title = f' title="{esc(fmt(tips[r][c]))}"' if tips is not None else ""
            cells.append(f"<td{style}{title}>{esc(cell_text(v))}</td>")
        label = f"<th>{esc(str(row_labels[r]))}</th>" if row_labels is not None else ""
        out.append(f"<tr>{label}{''.join(cells)}</tr>")
    out.append("</table></div>")
    return "".join(out)


def _shade_prob(p: float) -> str:
    p = min(max(p, 0.0), 1.0)
    return f"rgba(33,113,181,{0.75 * p:.3f})"


def _shade_signed(t: float) -> str:
    t = min(max(t, -1.0), 1.0)
    return f"rgba(178,24,43,{0.6 * t:.3f})" if t >= 0 else f"rgba(33,102,172,{-0.6 * t:.3f})"


def heatmap(a, kind="signed", row_labels=None, col_labels=None, width=760, cell_h=13, title="",
            image_id=None):
    """A 2-D array as an inline SVG: the PNG picture (one pixel per value, scaled), token
    labels on the rows (and columns, when given), the colour scale's range in the title."""
    a = np.asarray(a)
    H, W = a.shape
    cw = min(22.0, width / W)
    ch = cell_h if col_labels is None else cw
    left = 0 if row_labels is None else 110
    top = 0 if col_labels is None else 90
    w, h = left + W * cw, top + H * ch
    parts = [f'<svg class="heat" width="{w:.0f}" height="{h:.0f}" viewBox="0 0 {w:.1f} {h:.1f}">']
    if title:
        parts.append(f"<title>{esc(title)}</title>")
    parts.append(f'<image {f"id={chr(34)}{image_id}{chr(34)} " if image_id else ""}class="px" x="{left}" y="{top}" '
                 f'width="{W * cw:.1f}" height="{H * ch:.1f}" preserveAspectRatio="none" '
                 f'href="{data_uri(a, kind)}"/>')
    font = min(11.0, max(ch, cw) * 0.9)
    for r, label in enumerate(row_labels or []):
        parts.append(f'<text x="{left - 4}" y="{top + (r + 0.75) * ch:.1f}" text-anchor="end" '
                     f'font-size="{font:.1f}">{esc(str(label)[:16])}</text>')
    for c, label in enumerate(col_labels or []):
        x = left + (c + 0.7) * cw
        parts.append(f'<text x="{x:.1f}" y="{top - 4}" transform="rotate(-60 {x:.1f} {top - 4})" '
                     f'font-size="{font:.1f}">{esc(str(label)[:16])}</text>')
    parts.append("</svg>")
    return "".join(parts)


def scale_note(a, kind="signed"):
    if kind == "prob":
        return '<span class="note">white 0 → blue 1</span>'
    return f'<span class="note">blue −{fmt(to_json(signed_range(a)))} · white 0 · red +{fmt(to_json(signed_range(a)))}</span>'


def lines_chart(series, labels, width=760, height=220, title=""):
    """Line chart: series (n_lines, n_points) of non-negative values, x labels; the mean in bold."""
    s = np.asarray(series, dtype=np.float64)
    n = s.shape[1]
    top = float(s.max()) or 1.0
    left, bottom = 50, 40
    sx = (width - left - 10) / max(n - 1, 1)

    def xy(i, v):
        return f"{left + i * sx:.1f},{height - bottom - v / top * (height - bottom - 10):.1f}"
    out = [f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}"><title>{esc(title)}</title>']
    out.append(f'<line x1="{left}" y1="{height - bottom}" x2="{width - 10}" y2="{height - bottom}" stroke="#888"/>')
    for frac in (0, 0.5, 1):
        y = height - bottom - frac * (height - bottom - 10)
        out.append(f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end" font-size="10">{fmt(to_json(frac * top))}</text>')
    for line in s:
        out.append(f'<polyline fill="none" stroke="#6baed6" stroke-opacity="0.45" points="'
                   f'{" ".join(xy(i, v) for i, v in enumerate(line))}"/>')
    out.append(f'<polyline fill="none" stroke="#08306b" stroke-width="2.5" points="'
               f'{" ".join(xy(i, v) for i, v in enumerate(s.mean(axis=0)))}"/>')
    step = max(1, n // 16)
    for i in range(0, n, step):
        x, y = left + i * sx, height - bottom + 12
        out.append(f'<text x="{x:.1f}" y="{y}" font-size="9" transform="rotate(30 {x:.1f} {y})">{esc(labels[i])}</text>')
    out.append("</svg>")
    return "".join(out)


def bars(values, labels, width=760, height=200, log=True, title="", groups=None):
    """Vertical bars (log scale by default), one per value, labelled; groups: a group label
    per bar (drawn once per run of equal labels, e.g. the layer)."""
    v = np.asarray(values, dtype=np.float64)
    n = len(v)
    left, bottom = 50, 60
    bw = (width - left - 10) / max(n, 1)
    pos = v[v > 0]
    lo = math.log10(pos.min()) - 0.5 if log and pos.size else 0.0
    hi = math.log10(pos.max()) if log and pos.size else float(v.max() or 1.0)
    span = (hi - lo) or 1.0
    out = [f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}"><title>{esc(title)}</title>']
    for i, value in enumerate(v):
        frac = ((math.log10(value) - lo) / span if value > 0 else 0.0) if log else value / span
        bh = max(frac, 0.0) * (height - bottom - 10)
        x = left + i * bw
        out.append(f'<rect x="{x:.1f}" y="{height - bottom - bh:.1f}" width="{max(bw - 1, 0.5):.1f}" '
                   f'height="{bh:.1f}" fill="#2171b5"><title>{esc(labels[i])}: {fmt(to_json(value))}</title></rect>')
    if groups is not None:
        start = 0
        for i in range(1, n + 1):
            if i == n or groups[i] != groups[start]:
                x = left + (start + i) / 2 * bw
                out.append(f'<text x="{x:.1f}" y="{height - bottom + 14}" font-size="10" '
                           f'text-anchor="middle">{esc(groups[start])}</text>')
                start = i
    if log:
        for e in range(math.ceil(lo), math.floor(hi) + 1):
            y = height - bottom - (e - lo) / span * (height - bottom - 10)
            out.append(f'<text x="{left - 4}" y="{y + 3:.1f}" font-size="9" text-anchor="end">1e{e}</text>'
                       f'<line x1="{left}" x2="{width - 10}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
    out.append("</svg>")
    return "".join(out)


CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1100px;padding:0 18px 60px;color:#222}
h1{font-size:24px;margin:18px 0 4px} h2{font-size:19px;margin:34px 0 6px;border-bottom:1px solid #ccc}
h3{font-size:15px;margin:20px 0 4px} .meta{color:#555} .note{color:#666;font-size:12px}
.eq{font-family:"Cambria Math",Georgia,serif;background:#f4f6f9;padding:6px 10px;border-left:3px solid #2171b5;margin:6px 0;white-space:pre-wrap}
.shape{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;color:#444}
code{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12.5px;background:#f2f2f2;padding:0 3px}
.scroll{overflow-x:auto;max-width:100%;margin:4px 0}
table.num{border-collapse:collapse;font:11px ui-monospace,Menlo,Consolas,monospace}
table.num td,table.num th{border:1px solid #e2e2e2;padding:1px 4px;text-align:right;white-space:nowrap}
table.num th{background:#fafafa;font-weight:normal;color:#444} caption{text-align:left;color:#555;font:12px system-ui,sans-serif}
.piece{display:inline-block;border:1px solid #ccd;border-radius:4px;margin:3px;padding:3px 6px;vertical-align:top;font:12px ui-monospace,Menlo,monospace}
.piece b{color:#08306b} .step{color:#555}
svg.heat{max-width:100%;height:auto;display:block;margin:4px 0} svg text{font-family:ui-monospace,Menlo,monospace;fill:#333}
.px{image-rendering:pixelated}
.grid{display:grid;gap:2px;align-items:center} .grid img{width:100%;image-rendering:pixelated;border:1px solid #ddd;cursor:pointer}
.grid .lab{font-size:11px;color:#555;text-align:right;padding-right:4px}
.pair{display:flex;flex-wrap:wrap;gap:18px}
nav a{margin-right:12px}
"""

SCRIPT = """
function showHead(l, h) {
  var t = document.getElementById('att-' + l + '-' + h);
  document.getElementById('att-big').setAttribute('href', t.getAttribute('src'));
  document.getElementById('att-big-title').textContent = 'layer ' + l + ', head ' + h + ' (click any square above)';
}
"""
