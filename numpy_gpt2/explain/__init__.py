"""See GPT-2 think: one prompt through the model, every step shown with its equation, its
shapes and the prompt's real numbers, in one self-contained HTML page (no network, no
plotting package). It is for learners, next to docs/learn.md: the numbers come from the
library's own functions (walk.py gathers them), the page only shows them (page.py lays it out
from widgets.py's tables, heatmaps and charts; values.py writes the numbers; png.py draws).
Ports are debugged with numpy_gpt2.debug instead; the `numpy-gpt2 explain` command writes the
page (docs/explain.md).
"""

from __future__ import annotations

import numpy as np

from numpy_gpt2.config import GPT2Config
from numpy_gpt2.explain.page import render
from numpy_gpt2.explain.walk import walk


def explain_page(params: dict, config: GPT2Config, tokenizer, prompt: str, *, layer: int = 0,
                 head: int = 0, target: str | None = None, top_k: int | None = 40,
                 temperature: float = 0.8, top_p: float | None = 0.95, model: str = "(in memory)") -> str:
    """The HTML page (a str) explaining how the model reads `prompt`, in order: tokenization
    (tokenizer: a numpy_gpt2.bpe.Encoder, for its merges), embeddings, every layer (residual
    norms, LayerNorm scales, every head's attention pattern), layer `layer` / head `head` in
    detail (LN, q, k, v, scores, scaled, masked, softmax, z, the MLP), the output (logit lens,
    the next token under temperature / top_k / top_p, as generate filters them) and, with
    `target` (the text expected next), the loss, gradient norms and saliency.
    model: the name shown on the page. Raises ValueError naming a bad argument (an empty
    prompt, one longer than n_ctx, layer or head out of range, bad sampling settings)."""
    from numpy_gpt2 import __version__
    data = walk(params, config, tokenizer, prompt, layer=layer, head=head, target=target,
                top_k=top_k, temperature=temperature, top_p=top_p)
    meta = {"model": model, "dtype": str(np.asarray(params["wte"]["weight"]).dtype),
            "version": __version__, "prompt": prompt,
            "config": {k: getattr(config, k) for k in ("n_layer", "n_head", "n_embd", "vocab_size", "n_ctx")}}
    return render(data, meta)
