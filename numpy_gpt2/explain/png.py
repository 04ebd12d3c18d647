"""Arrays as small PNG pictures for the explain page: two colour maps and a PNG writer in
the standard library (zlib), so the page embeds its heatmaps as data: URIs and needs no
plotting package. One array element is one pixel; the page scales them up.
"""

from __future__ import annotations

import base64
import struct
import zlib

import numpy as np

# white -> dark blue, for values in [0, 1] (probabilities) and other non-negative values
SEQUENTIAL = np.array([[255, 255, 255], [198, 219, 239], [107, 174, 214], [33, 113, 181], [8, 48, 107]],
                      dtype=np.float64)
# blue -> white -> red, for signed values scaled to [-1, 1]
DIVERGING = np.array([[33, 102, 172], [146, 197, 222], [247, 247, 247], [244, 165, 130], [178, 24, 43]],
                     dtype=np.float64)
MASKED = (200, 200, 200)  # -inf (a masked attention score): grey


def _interpolate(anchors, t):
    """t in [0, 1] (any shape) -> RGB floats, piecewise linear between the anchor colours."""
    pos = np.clip(t, 0.0, 1.0) * (len(anchors) - 1)
    low = np.minimum(pos.astype(int), len(anchors) - 2)
    frac = (pos - low)[..., None]
    return anchors[low] * (1 - frac) + anchors[low + 1] * frac


def signed_range(a) -> float:
    """The colour scale of a signed array: its largest |finite value| (1 when all are 0)."""
    a = np.asarray(a, dtype=np.float64)
    finite = np.abs(a[np.isfinite(a)])
    top = float(finite.max()) if finite.size else 0.0
    return top if top > 0 else 1.0


def colors(a, kind: str = "signed", vmax: float | None = None) -> np.ndarray:
    """(H, W) array -> (H, W, 3) uint8. kind "prob": [0, 1] white to blue (values above 1
    clip); "positive": [0, vmax] white to blue; "signed": [-vmax, vmax] blue-white-red
    (vmax defaults to the largest |value|). -inf is grey."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"a: expected a 2-D array, got shape {a.shape}")
    finite = np.isfinite(a)
    x = np.where(finite, a, 0.0)
    if kind == "prob":
        rgb = _interpolate(SEQUENTIAL, x)
    elif kind == "positive":
        rgb = _interpolate(SEQUENTIAL, x / (vmax or signed_range(a)))
    elif kind == "signed":
        rgb = _interpolate(DIVERGING, 0.5 + 0.5 * x / (vmax or signed_range(a)))
    else:
        raise ValueError(f"kind must be 'prob', 'positive' or 'signed', got {kind!r}")
    rgb[~finite] = MASKED
    return np.rint(rgb).astype(np.uint8)


def png_bytes(rgb) -> bytes:
    """(H, W, 3) uint8 -> a PNG file (8-bit RGB, no filtering, zlib level 9)."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    h, w, _ = rgb.shape

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = b"".join(b"\x00" + rgb[row].tobytes() for row in range(h))  # filter type 0 per row
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def data_uri(a, kind: str = "signed", vmax: float | None = None) -> str:
    """A 2-D array as a data:image/png;base64 URI (colors, then png_bytes)."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(colors(a, kind, vmax))).decode("ascii")
