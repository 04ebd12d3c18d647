"""Write one self-contained HTML page that walks a prompt through GPT-2, step by step.

    numpy-gpt2 explain "The quick brown fox" --model gpt2 --out walk.html
    numpy-gpt2 explain "The capital of France is" --model gpt2 --out walk.html \\
        --target " Paris" --layer 5 --head 1 --temperature 0.7 --top-k 20 --top-p 0.9

The page (numpy_gpt2.explain.explain_page) shows, with each equation, the shapes and this
prompt's real numbers: the tokenization (every byte-pair merge), the embeddings, every layer
(residual norms, LayerNorm scales, every head's attention pattern), --layer/--head in detail
(LayerNorm, q, k, v, scores, scaled, masked, softmax, z, the MLP), the output (logit lens, the
next token before and after --temperature, --top-k, --top-p) and, with --target (the text you
expect next), the loss, the gradient's norm at every named point and a saliency row. It needs
no network when opened: CSS, pictures and a few lines of JavaScript are inside the file. It is
written atomically (an interrupted run leaves the previous file, or none).
Exit status: 0 written, 2 bad arguments or input (one line on stderr; nothing written).
"""

from __future__ import annotations

from numpy_gpt2.cli import common

import os
import re
import sys
import time

import numpy as np

import numpy_gpt2
from numpy_gpt2.cli.common import UsageError
from numpy_gpt2.explain.values import GENERATOR
from numpy_gpt2.io.outputs import write_output_file

FLAGS = {"prompt": "PROMPT"}  # the library's argument names that are not --flags here
ARGUMENTS = re.compile(r"(prompt|target|layer|head|temperature|top_k|top_p)\b")  # explain_page's


def worded(error) -> str:
    """An error as one line: worded with the flags when it names one of explain_page's
    arguments, else as it is (a file's or a checkpoint's message: "cannot read ..." is no flag)."""
    return common.flag_message(error, FLAGS) if ARGUMENTS.match(str(error)) else str(error)


def is_page(path) -> bool:
    """path holds a page this command wrote (its <head> names the generator)."""
    try:
        with open(path, "rb") as f:
            return f'<meta name="generator" content="{GENERATOR}">'.encode() in f.read(4096)
    except OSError:
        return False


def write_page(path: str, text: str, on_commit=None) -> None:
    """text into `path` (a symlink's target) atomically: a complete new file or the old one,
    never half of one (numpy_gpt2.io.outputs: where outputs go)."""
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    write_output_file(path, write, ours=is_page, on_commit=on_commit)


def load_bpe(path):
    """numpy_gpt2.bpe's Encoder from the checkpoint's vocab.json + merges.txt (or
    $NUMPY_GPT2_TOKENIZER's): the page shows its merges."""
    from numpy_gpt2 import bpe
    from numpy_gpt2.io.tokenizer import TOKENIZER_ENV, tokenizer_dir
    directory = tokenizer_dir(path)
    if directory is None:
        raise ValueError(f"--model {path}: no vocab.json and merges.txt beside the checkpoint; "
                         f"set {TOKENIZER_ENV} to a directory holding GPT-2's")
    return bpe.load(directory)


@common.entry("explain")
def main(argv=None) -> int:
    parser = common.Parser(description=__doc__.split("\n\n")[0],
                           epilog="Exit status: 0 written, 2 bad arguments or input.")
    parser.add_argument("prompt", metavar="PROMPT", help="the text to explain")
    parser.add_argument("--model", default="gpt2", help="checkpoint directory, .safetensors file "
                        "or hub name (default: gpt2)")
    parser.add_argument("--out", required=True, help="the HTML file to write, e.g. walk.html")
    parser.add_argument("--target", help="the text you expect after the prompt: adds the loss, "
                        "gradient norms and saliency")
    parser.add_argument("--layer", type=int, default=0, help="the layer shown in detail (default: 0)")
    parser.add_argument("--head", type=int, default=0, help="the head shown in detail (default: 0)")
    parser.add_argument("--temperature", type=float, default=0.8,
                        help="the sampling settings whose effect is shown (default: 0.8; 0 = greedy)")
    parser.add_argument("--top-k", type=int, default=40, help="default: 40 (0 = off)")
    parser.add_argument("--top-p", type=float, default=0.95, help="default: 0.95 (1 = off)")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.top_k < 0:
        raise UsageError(f"--top-k must be an integer >= 0 (0 = off), got {args.top_k}")
    if not 0 < args.top_p <= 1:  # (here the default is 0.95: leaving it out is no way to turn it off)
        raise UsageError(f"--top-p must be in (0, 1] (1 = off), got {args.top_p}")
    start = time.time()
    try:
        common.check_output_file(args.out, ours=is_page)  # before any work
        path = common.resolve_model(args.model)
        params, config = numpy_gpt2.load(path, dtype=np.dtype(args.dtype))
        tokenizer = load_bpe(path)
        page = numpy_gpt2.explain_page(params, config, tokenizer, args.prompt, layer=args.layer,
                                       head=args.head, target=args.target, top_k=args.top_k or None,
                                       temperature=args.temperature, top_p=args.top_p, model=args.model)
        write_page(args.out, page, on_commit=lambda: common.written(args.out))
    except (ValueError, OSError, RuntimeError) as e:  # CheckpointError is a ValueError
        raise common.input_error(e, usage=worded(e)) from None
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e6:.2f} MB): {args.model}, {args.dtype}, "
          f"layer {args.layer} head {args.head} in detail, {time.time() - start:.1f} s")
    return 0
