"""Pictures of what a model computes, as PNG files, with matplotlib (the optional [plot]
extra: pip install 'numpy_gpt2[plot]'): one layer's attention patterns, every head in a
grid, and the logit lens. They draw numbers the library computed (numpy_gpt2.activations,
numpy_gpt2.explain.walk); they compute nothing themselves. The training loss curve is drawn
by the train command (numpy_gpt2/cli/train.py, loss_curve_writer). The explain page
(numpy_gpt2.explain) shows the same things without matplotlib.
"""

from __future__ import annotations

import os

import numpy as np


def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("numpy_gpt2.plots needs matplotlib: pip install 'numpy_gpt2[plot]' "
                          "(or pip install matplotlib)") from None
    return plt


def _label(text: str) -> str:
    return text.replace(" ", "␣").replace("\n", "↵")


def attention_patterns(cache: dict, tokens, layer: int, path) -> None:
    """Draw every head of layer `layer` as a (query × key) heatmap, in a grid, into the PNG
    `path`. cache: {name: array} holding f"h.{layer}.attn.softmax" (H, T, T), as
    numpy_gpt2.activations(params, config, ids, f"h.{layer}.attn.softmax") returns it;
    tokens: the T token texts (labels). ValueError if the cache lacks that layer or the
    labels do not fit."""
    name = f"h.{layer}.attn.softmax"
    if name not in cache:
        raise ValueError(f"cache has no {name!r}: record it with numpy_gpt2.activations(..., "
                         f"names='{name}')")
    probs = np.asarray(cache[name])
    if probs.ndim != 3 or probs.shape[1:] != (len(tokens), len(tokens)):
        raise ValueError(f"tokens: {len(tokens)} labels for attention of shape {probs.shape} (H, T, T)")
    plt = _pyplot()
    H, T = probs.shape[0], probs.shape[1]
    cols = min(H, 4)
    rows = -(-H // cols)
    size = max(3.0, 0.22 * T)
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows + 0.4), squeeze=False)
    labels = [_label(t) for t in tokens]
    try:
        for h, ax in enumerate(axes.flat):
            if h >= H:
                ax.axis("off")
                continue
            ax.imshow(probs[h], cmap="Blues", vmin=0, vmax=1)
            ax.set_title(f"layer {layer}, head {h}", fontsize=9)
            ax.set_xticks(range(T), labels, rotation=90, fontsize=6)
            ax.set_yticks(range(T), labels, fontsize=6)
        fig.suptitle("attention: softmax(QKᵀ/√D + mask), query ↓ key →", fontsize=10)
        fig.tight_layout()
        fig.savefig(os.fspath(path), dpi=110)
    finally:
        plt.close(fig)


def logit_lens_heatmap(lens: dict, tokens, path) -> None:
    """Draw the logit lens into the PNG `path`: a row per residual stream (embeddings, then
    each block's output), a column per position, the colour the top token's probability and
    the token written in the cell. lens: numpy_gpt2.explain.walk(...)["lens"] ({"rows",
    "top", "prob", "texts"}); tokens: the T input token texts (column labels)."""
    prob = np.asarray(lens["prob"], dtype=np.float64)
    if prob.shape != (len(lens["rows"]), len(tokens)):
        raise ValueError(f"tokens: {len(tokens)} labels for a logit lens of shape {prob.shape}")
    plt = _pyplot()
    R, T = prob.shape
    fig, ax = plt.subplots(figsize=(max(6.0, 0.62 * T + 1.5), 0.42 * R + 1.6))
    try:
        image = ax.imshow(prob, cmap="Blues", vmin=0, vmax=1, aspect="auto")
        for r in range(R):
            for t in range(T):
                ax.text(t, r, _label(lens["texts"][r][t])[:8], ha="center", va="center", fontsize=6,
                        color="white" if prob[r, t] > 0.6 else "black")
        ax.set_xticks(range(T), [_label(t) for t in tokens], rotation=90, fontsize=7)
        ax.set_yticks(range(R), lens["rows"], fontsize=7)
        ax.set_xlabel("input position (the cell: the predicted next token)")
        fig.colorbar(image, ax=ax, fraction=0.025, label="probability")
        ax.set_title("logit lens: softmax(LN_f(x) W_eᵀ) after each block", fontsize=10)
        fig.tight_layout()
        fig.savefig(os.fspath(path), dpi=110)
    finally:
        plt.close(fig)
