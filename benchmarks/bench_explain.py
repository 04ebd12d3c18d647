#!/usr/bin/env python
"""The explain page's time and size for a model shaped like GPT-2 124M (random weights from
init_params: the numbers do not depend on the weights) and a 32-token prompt.

    python benchmarks/bench_explain.py                  # 12 layers, n_embd 768, 32 tokens
    python benchmarks/bench_explain.py --n-layer 2      # quicker

Prints the seconds of init_params (not part of the page), of explain_page without and with
--target (the gradients), and the page's size in MB. Medians of --reps runs.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

from bench_common import import_numpy_gpt2

WORDS = ("The quick brown fox jumps over the lazy dog and then it runs far away into the old dark "
         "forest where it sleeps until the morning comes back again to wake it up and send it home").split()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-layer", type=int, default=12)
    p.add_argument("--reps", type=int, default=1)
    args = p.parse_args()
    numpy_gpt2 = import_numpy_gpt2()
    from numpy_gpt2 import bpe
    import numpy as np
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}, "
          f"numpy {np.__version__}, numpy_gpt2 {numpy_gpt2.__version__}")
    config = numpy_gpt2.GPT2Config(n_layer=args.n_layer, n_head=12, n_embd=768)
    began = time.perf_counter()
    params = numpy_gpt2.init_params(config, seed=0)
    print(f"init_params: {time.perf_counter() - began:.1f} s")
    encoder = bpe.load()
    prompt = next(" ".join(WORDS[:k]) for k in range(len(WORDS) + 1)
                  if len(encoder.encode(" ".join(WORDS[:k]))) >= 32)
    assert len(encoder.encode(prompt)) == 32, prompt
    for target in (None, " the morning"):
        times = []
        for _ in range(args.reps):
            began = time.perf_counter()
            page = numpy_gpt2.explain_page(params, config, encoder, prompt, target=target)
            times.append(time.perf_counter() - began)
        print(f"explain_page, n_layer {args.n_layer}, 32 tokens, target {target!r}: "
              f"{statistics.median(times):.1f} s, {len(page.encode('utf-8')) / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
