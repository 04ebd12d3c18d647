#!/usr/bin/env python
"""numpy_gpt2.bpe (plain Python, the readable reference) against tiktoken (Rust, what the rest of
numpy_gpt2 uses): GPT-2 tokens per second on Tiny Shakespeare. Runs in about 20 s.

    python benchmarks/bench_bpe.py                       # $NUMPY_GPT2_DATA/tinyshakespeare.txt
    python benchmarks/bench_bpe.py --text some.txt --reps 5

Rows (the whole text as one string, "<|endoftext|>" as plain text: tiktoken's encode_ordinary):
  encode, cold cache   bpe: a new Encoder each time, so every distinct piece goes through the
                       merge loop once (what a first call costs); tiktoken has no such cache
  encode, warm cache   bpe: the same text again on that Encoder (every piece cached: only the
                       regex split and dict look-ups are left)
  decode               all the ids back to text
Both tokenizers read the same vocab.json + merges.txt ($NUMPY_GPT2_TOKENIZER); the ids are
checked equal. Medians of --reps runs, the two sides interleaved; ratio = tiktoken / bpe.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from bench_common import import_numpy_gpt2, machine_info


def timed(fn):
    began = time.perf_counter()
    out = fn()
    return time.perf_counter() - began, out


def measure(text: str, tokenizer_dir: str, reps: int) -> dict[str, tuple[float, float, int]]:
    """{row: (bpe tokens/s, tiktoken tokens/s, tokens)}, medians over reps."""
    numpy_gpt2 = import_numpy_gpt2()
    from numpy_gpt2 import bpe
    fast = numpy_gpt2.load_tokenizer(tokenizer_dir)
    times = {row: ([], []) for row in ("encode, cold cache", "encode, warm cache", "decode")}
    for _ in range(reps):
        encoder = bpe.load(tokenizer_dir)
        seconds, ids = timed(lambda: encoder.encode(text))
        times["encode, cold cache"][0].append(seconds)
        seconds, again = timed(lambda: encoder.encode(text))
        times["encode, warm cache"][0].append(seconds)
        seconds, expected = timed(lambda: fast.encode_ordinary(text))
        times["encode, cold cache"][1].append(seconds)
        times["encode, warm cache"][1].append(seconds)
        if not ids == again == expected:
            raise SystemExit("bench_bpe: numpy_gpt2.bpe and tiktoken disagree on this text")
        seconds, decoded = timed(lambda: encoder.decode(ids))
        times["decode"][0].append(seconds)
        seconds, expected = timed(lambda: fast.decode(ids))
        times["decode"][1].append(seconds)
        assert decoded == expected
    return {row: (len(ids) / statistics.median(a), len(ids) / statistics.median(b), len(ids))
            for row, (a, b) in times.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--text", default=os.path.join(os.environ.get("NUMPY_GPT2_DATA", "."), "tinyshakespeare.txt"),
                        help="UTF-8 text file to encode (default: $NUMPY_GPT2_DATA/tinyshakespeare.txt)")
    parser.add_argument("--tokenizer", default=os.environ.get("NUMPY_GPT2_TOKENIZER"),
                        help="directory with vocab.json + merges.txt (default: $NUMPY_GPT2_TOKENIZER)")
    parser.add_argument("--reps", type=int, default=5, help="repetitions, median reported (default 5)")
    args = parser.parse_args(argv)
    if not args.tokenizer:
        parser.error("no tokenizer files: pass --tokenizer DIR or set NUMPY_GPT2_TOKENIZER")
    with open(args.text, encoding="utf-8") as f:
        text = f.read()
    rows = measure(text, args.tokenizer, args.reps)
    info = machine_info()
    print(f"{os.path.basename(args.text)}: {len(text):,} characters, {next(iter(rows.values()))[2]:,} tokens; "
          f"{info['cpu']}, Python {info['python']}, median of {args.reps}")
    print(f"{'':20} {'bpe tokens/s':>14} {'tiktoken tokens/s':>18} {'tiktoken / bpe':>15}")
    for row, (slow, fast, _) in rows.items():
        print(f"{row:20} {slow:14,.0f} {fast:18,.0f} {fast / slow:14.1f}x")
    return rows


if __name__ == "__main__":
    main()
