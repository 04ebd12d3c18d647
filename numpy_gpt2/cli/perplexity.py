"""Token-level cross-entropy and perplexity of a text file, with sliding windows.

    python scripts/perplexity.py --model gpt2 FILE [--stride 512] [--max-length 1024] [--dtype float32]

The text is tokenized with the GPT-2 tokenizer ("<|endoftext|>" in the text counts as the
separator token 50256, the same rule as train.py and prepare.py) and scored with numpy_gpt2.perplexity: windows of --max-length tokens (default
n_ctx) every --stride tokens (default half the window); each token after the first is scored
once, with the context its window gives it. Progress (a tqdm bar: tokens scored, tokens/s) goes
to stderr, the result to stdout. Exit status: 0 done, 2 bad arguments or input, or a model whose
numbers turn NaN or infinite (numpy_gpt2.NonFiniteError), with a one-line message.
"""

from __future__ import annotations

from numpy_gpt2.cli import common

import sys
import time

import numpy as np
from tqdm import tqdm

import numpy_gpt2
from numpy_gpt2.cli.common import UsageError
from numpy_gpt2.training.data import encode


def progress_bar():
    """(show, close): show(done, total) for numpy_gpt2.perplexity moves a tqdm bar on stderr
    (tokens scored, tokens/s); close(error) ends it, erasing it after an error so that the
    error is the only line left. The bar is drawn from the first scored window on, so an error
    found before (bad settings, NaN in the first window) never draws it."""
    start, bars = time.time(), []

    def show(done, total):
        if not bars:
            bars.append(tqdm(total=total, unit="tok", file=sys.stderr, desc="scoring", smoothing=0))
            bars[0].start_t = bars[0].last_print_t = start  # the rate counts the first window too
        bars[0].update(done - bars[0].n)

    def close(error=False):
        for bar in bars:
            bar.leave = not error
            bar.close()

    return show, close


def check_windows(args, n_ctx: int) -> None:
    """--max-length and --stride against the model's context, worded as the flags (the
    library's own checks name its arguments)."""
    max_length = n_ctx if args.max_length is None else args.max_length
    if not 2 <= max_length <= n_ctx:
        raise UsageError(f"--max-length must be in 2..{n_ctx} (the model's context, n_ctx), "
                         f"got {args.max_length}")
    if args.stride is not None and not 1 <= args.stride <= max_length:
        why = "; a longer stride would skip the tokens between windows" if args.stride > 1 else ""
        raise UsageError(f"--stride must be in 1..{max_length} (the window, --max-length), got "
                         f"{args.stride}{why}")


@common.entry("perplexity")
def main(argv=None) -> int:
    parser = common.Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gpt2", help="checkpoint directory, .safetensors file "
                        "or hub name (default gpt2)")
    parser.add_argument("file", help="UTF-8 text file to score")
    parser.add_argument("--max-length", type=int, help="window length in tokens (default and "
                        "at most the model's n_ctx)")
    parser.add_argument("--stride", type=int, help="tokens between window starts (default half "
                        "the window; at most the window)")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    common.add_threads_flag(parser)
    args = parser.parse_args(argv)
    common.check_threads(args)
    # NaN or inf in the model raises NonFiniteError (one line, below): no NumPy warnings too.
    np.seterr(over="ignore", invalid="ignore", divide="ignore")
    try:
        text = common.read_text(args.file)
        if not text:
            raise ValueError(f"{args.file}: the file is empty; nothing to score")
        path = common.resolve_model(args.model)
        params, config = numpy_gpt2.load(path, dtype=np.dtype(args.dtype))
        check_windows(args, config.n_ctx)  # before tokenizing a long text
        tokens = encode(numpy_gpt2.load_tokenizer(path), text)  # train.py's rule for <|endoftext|>
        if len(tokens) < 2:
            raise ValueError(f"{args.file}: the text is {len(tokens)} token long; perplexity "
                             f"needs at least 2 tokens (one to predict from, one to predict)")
        start = time.perf_counter()
        show, close = progress_bar()
        try:
            result = numpy_gpt2.perplexity(params, config, tokens, max_length=args.max_length,
                                           stride=args.stride, progress=show)
        except BaseException:
            close(error=True)  # the error is the only line left
            raise
        close()
        seconds = time.perf_counter() - start
    except (ValueError, OSError, RuntimeError) as e:  # CheckpointError, NonFiniteError: ValueErrors
        raise common.input_error(e) from None
    print(f"model: {args.model} ({args.dtype})  file: {args.file}")
    windows = f"{result['n_windows']} window" + ("s" if result["n_windows"] != 1 else "")
    print(f"tokens: {len(tokens)} in the text, {result['n_scored']} scored in {windows} "
          f"(max length {result['max_length']}, stride {result['stride']})")
    print(f"cross-entropy: {result['cross_entropy']:.4f} nats/token "
          f"({result['cross_entropy'] / np.log(2):.4f} bits/token)")
    print(f"perplexity: {result['perplexity']:.4f}")
    print(f"time: {seconds:.1f} s ({result['n_scored'] / max(seconds, 1e-9):,.0f} tokens/s)")
    return 0
