"""Regenerate the pictures and the sample page of docs/learn.md, from a model trained here.

    python examples/learn_pictures.py

1. Trains a small GPT-2 (4 layers, 4 heads, n_embd 128: the train command's defaults) for 500
   steps on Tiny Shakespeare ($NUMPY_GPT2_DATA/tinyshakespeare.txt), unless --model names a
   trained checkpoint (or --run already holds one from an earlier call): 26 minutes on a
   busy 2-core machine, about 5 on a quiet one (validation loss about 5.4).
2. Writes, for one Shakespeare prompt: docs/learn_attention.png (layer 0's heads,
   numpy_gpt2.plots.attention_patterns), docs/learn_attention_last.png (the last layer's),
   docs/learn_logit_lens.png (numpy_gpt2.plots.logit_lens_heatmap) and docs/sample_walk.html
   (the explain page, numpy_gpt2.explain_page, with a target).

Needs matplotlib (pip install 'numpy_gpt2[plot]'). --out DIR writes the four files elsewhere.
"""
import argparse
import os
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.realpath(__file__))
try:
    import numpy_gpt2
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, os.path.join(HERE, os.pardir))
    import numpy_gpt2
from numpy_gpt2 import bpe, plots  # noqa: E402
from numpy_gpt2.explain.walk import walk  # noqa: E402

PROMPT = "ROMEO:\nBut soft, what light through yonder window breaks? It is the east, and Juliet is the"
TARGET = " sun"


def train(run: str, max_iters: int) -> None:
    data = os.path.join(os.environ.get("NUMPY_GPT2_DATA", "."), "tinyshakespeare.txt")
    if not os.path.isfile(data):
        sys.exit(f"learn_pictures.py: no {data}; set NUMPY_GPT2_DATA to the directory holding "
                 f"tinyshakespeare.txt, or pass --model")
    subprocess.run([sys.executable, "-m", "numpy_gpt2", "train", "--data", data, "--out", run,
                    "--max-iters", str(max_iters), "--warmup-iters", str(min(50, max_iters)),
                    "--eval-interval", str(max(max_iters // 2, 1)), "--eval-iters", "5"], check=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="a trained checkpoint to draw (default: train one into --run)")
    p.add_argument("--run", default="learn-shakespeare", help="where to train (default: learn-shakespeare)")
    p.add_argument("--max-iters", type=int, default=500, help="training steps (default: 500)")
    p.add_argument("--out", default=os.path.join(HERE, os.pardir, "docs"), help="default: docs/")
    args = p.parse_args()
    model = args.model or args.run
    if args.model is None and not os.path.isfile(os.path.join(args.run, "model.safetensors")):
        train(args.run, args.max_iters)
    params, config = numpy_gpt2.load(model)
    encoder = bpe.load(model)
    ids = encoder.encode(PROMPT)
    texts = [encoder.decode([i]) for i in ids]
    os.makedirs(args.out, exist_ok=True)
    last = config.n_layer - 1
    cache = numpy_gpt2.activations(params, config, np.array(ids), f"h.0.attn.softmax,h.{last}.attn.softmax")
    plots.attention_patterns(cache, texts, 0, os.path.join(args.out, "learn_attention.png"))
    plots.attention_patterns(cache, texts, last, os.path.join(args.out, "learn_attention_last.png"))
    lens = walk(params, config, encoder, PROMPT)["lens"]
    plots.logit_lens_heatmap(lens, texts, os.path.join(args.out, "learn_logit_lens.png"))
    page = numpy_gpt2.explain_page(params, config, encoder, PROMPT, layer=last, head=0, target=TARGET,
                                   model="Tiny Shakespeare, 4 layers (examples/learn_pictures.py)")
    with open(os.path.join(args.out, "sample_walk.html"), "w", encoding="utf-8") as f:
        f.write(page)
    print(f"wrote learn_attention.png, learn_attention_last.png, learn_logit_lens.png and "
          f"sample_walk.html ({len(page.encode()) / 1e6:.2f} MB) to {args.out}")


if __name__ == "__main__":
    main()
