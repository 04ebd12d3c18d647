"""Token-level cross-entropy and perplexity of a text file, with sliding windows.

    python scripts/perplexity.py --model gpt2 FILE [--stride 512] [--max-length 1024] [--dtype float32]

The text is tokenized with the GPT-2 tokenizer ("<|endoftext|>" in the text counts as the
special token) and scored with numpy_gpt2.perplexity: windows of --max-length tokens (default
n_ctx) every --stride tokens (default half the window); each token after the first is scored
once, with the context its window gives it. Progress (tokens scored, tokens/s) goes to stderr,
the result to stdout. Exit status: 0 done, 2 bad arguments or input (one-line message).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import numpy_gpt2


def progress_bar(out=sys.stderr, width=30):
    """A callable(done, total) drawing `[#####.....] done/total tokens  N tok/s` on one line."""
    start = time.perf_counter()

    def show(done, total):
        rate = done / max(time.perf_counter() - start, 1e-9)
        filled = int(width * done / total)
        out.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} tokens  "
                  f"{rate:,.0f} tok/s")
        if done == total:
            out.write("\n")
        out.flush()

    return show


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gpt2", help="checkpoint directory, .safetensors file "
                        "or hub name (default gpt2)")
    parser.add_argument("file", help="UTF-8 text file to score")
    parser.add_argument("--max-length", type=int, help="window length in tokens (default and "
                        "at most the model's n_ctx)")
    parser.add_argument("--stride", type=int, help="tokens between window starts (default half "
                        "the window; at most the window)")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    args = parser.parse_args(argv)
    try:
        try:
            with open(args.file, encoding="utf-8") as f:
                text = f.read()
        except UnicodeDecodeError as e:
            raise ValueError(f"{args.file}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        if not text:
            raise ValueError(f"{args.file}: the file is empty; nothing to score")
        path = numpy_gpt2.resolve_model(args.model)
        params, config = numpy_gpt2.load(path, dtype=np.dtype(args.dtype))
        tokens = np.asarray(numpy_gpt2.load_tokenizer(path).encode(text, allowed_special="all"),
                            dtype=np.int64)
        if len(tokens) < 2:
            raise ValueError(f"{args.file}: the text is {len(tokens)} token long; perplexity "
                             f"needs at least 2 tokens (one to predict from, one to predict)")
        start = time.perf_counter()
        result = numpy_gpt2.perplexity(params, config, tokens, max_length=args.max_length,
                                       stride=args.stride, progress=progress_bar())
        seconds = time.perf_counter() - start
    except (ValueError, OSError, RuntimeError) as e:  # CheckpointError is a ValueError
        print(f"perplexity.py: error: {e}", file=sys.stderr)
        return 2
    print(f"model: {args.model} ({args.dtype})  file: {args.file}")
    windows = f"{result['n_windows']} window" + ("s" if result["n_windows"] != 1 else "")
    print(f"tokens: {len(tokens)} in the text, {result['n_scored']} scored in {windows} "
          f"(max length {result['max_length']}, stride {result['stride']})")
    print(f"cross-entropy: {result['cross_entropy']:.4f} nats/token "
          f"({result['cross_entropy'] / np.log(2):.4f} bits/token)")
    print(f"perplexity: {result['perplexity']:.4f}")
    print(f"time: {seconds:.1f} s ({result['n_scored'] / max(seconds, 1e-9):,.0f} tokens/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
