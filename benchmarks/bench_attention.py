#!/usr/bin/env python
"""One layer's causal attention at GPT-2 124M's shapes: numpy_gpt2's causal_attention_fast
against PyTorch's scaled_dot_product_attention(is_causal=True) in the same process, and
against the SGEMM rate of its products, with where its time goes.

    python benchmarks/bench_attention.py                 # T = 1024 and 128, 1 and 2 threads
    python benchmarks/bench_attention.py --T 512 --threads 2 --reps 40

q, k, v are views of one (1, T, 3 E) array, as causal_self_attention_fast makes them;
float32, batch 1, H = 12, D = 64. The two sides' repetitions are interleaved and the best
is reported (min of --reps: the machine is shared, and the best is the least disturbed):
on one thread in CPU time (time.thread_time: time slices taken by other processes do not
count), on more in wall time. GFLOP/s counts the causal half's products, 4 H T (T / 2) D;
the SGEMM rate is the best of NumPy's BLAS and PyTorch's at (64, 64) @ (64, T)
(bench_limits.measure_gemm). --parts adds, on one thread, the cumulative CPU time of each
step of the fused blocks as _attend_block runs them (docs/speed.md, "Attention").
"""

from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np

import bench_limits
from bench_common import import_numpy_gpt2

H, D = 12, 64


def views(T, seed=0):
    """q, k, v (1, H, T, D): strided views of one c_attn-shaped output."""
    from numpy_gpt2.layers import split_heads
    E = H * D
    qkv = np.random.default_rng(seed).standard_normal((1, T, 3 * E), dtype=np.float32)
    return tuple(split_heads(qkv[..., i * E:(i + 1) * E], H) for i in range(3))


def best_of(runs, reps, clock):
    """{name: best seconds} of the functions in runs, their repetitions interleaved."""
    best = {name: math.inf for name in runs}
    for run in runs.values():
        run()  # warm-up
    for _ in range(reps):
        for name, run in runs.items():
            start = clock()
            run()
            best[name] = min(best[name], clock() - start)
    return best


def parts(fast, q, k, v, reps):
    """({step: cumulative best CPU seconds}, the (T, H, D) output of the last, complete run):
    the fused blocks' steps as _attend_block runs them, one thread, the code's head groups."""
    T = q.shape[2]
    q, k, v, scale = q[0], k[0], v[0], 1.0 / math.sqrt(D)
    out = np.empty((T, H, D), np.float32)
    steps = ["q k^T", "+ mask", "+ max", "- max", "exp", "+ sum", "@ v", "/ sum"]

    def upto(last):
        for t0 in range(0, T, fast.QUERY_BLOCK):
            t1 = min(t0 + fast.QUERY_BLOCK, T)
            n = t1 - t0
            g = min(H, max(1, fast.GROUP_SCORES // (n * t1)))
            for h0 in range(0, H, g):
                hs = slice(h0, min(h0 + g, H))
                s = np.matmul(q[hs, t0:t1] * scale, np.swapaxes(k[hs, :t1], -1, -2))
                if last >= 1:
                    s[..., t1 - n:] += fast._future_mask(n, s.dtype)
                if last >= 2:
                    top = np.maximum.reduce(s, axis=-1, keepdims=True)
                if last >= 3:
                    s -= top
                if last >= 4:
                    np.exp(s, out=s)
                if last >= 5:
                    sums = np.add.reduce(s, axis=-1, keepdims=True)
                if last >= 6:
                    o = np.swapaxes(out[t0:t1, hs], 0, 1)
                    np.matmul(s, v[hs, :t1], out=o)
                if last >= 7:
                    o /= sums

    best = best_of({name: (lambda i=i: upto(i)) for i, name in enumerate(steps)}, reps, time.thread_time)
    return best, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--T", type=int, nargs="+", default=[1024, 128])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--parts", action="store_true", help="time each step of the fused blocks (one thread)")
    args = p.parse_args()
    numpy_gpt2 = import_numpy_gpt2()
    fast = numpy_gpt2.fast.forward
    from numpy_gpt2.fast.threads import set_threads
    import torch
    sdpa = torch.nn.functional.scaled_dot_product_attention
    print(f"{os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}, numpy {np.__version__}, torch {torch.__version__}")
    for n in args.threads:
        set_threads(n)
        torch.set_num_threads(n)
        clock = time.thread_time if n == 1 else time.perf_counter
        for T in args.T:
            q, k, v = views(T)
            tq, tk, tv = (torch.from_numpy(np.ascontiguousarray(a)) for a in (q, k, v))
            with torch.inference_mode():
                best = best_of({"numpy_gpt2": lambda: fast.causal_attention_fast(q, k, v),
                                "torch sdpa": lambda: sdpa(tq, tk, tv, is_causal=True)}, args.reps, clock)
            shape = [(bench_limits.QUERY_BLOCK, D, T)]
            rates = {"OpenBLAS": bench_limits.numpy_gemm(shape), "torch": bench_limits.torch_gemm(torch, shape)}
            sgemm = max(r[bench_limits.key(shape[0])] for r in rates.values())
            flops = 4 * H * T * (T / 2) * D
            cells = [f"{name} {s * 1e3:.2f} ms = {flops / s / 1e9:.1f} GFLOP/s ({flops / s / 1e9 / sgemm:.0%} of SGEMM)"
                     for name, s in best.items()]
            print(f"threads {n} ({'CPU' if n == 1 else 'wall'} time), T={T}: " + ", ".join(cells)
                  + f"; SGEMM (64, 64) @ (64, {T}) " + " / ".join(f"{b} {r[bench_limits.key(shape[0])]:.1f}"
                                                          for b, r in rates.items())
                  + f" GFLOP/s; PyTorch / numpy_gpt2 {best['torch sdpa'] / best['numpy_gpt2']:.2f}")
    if args.parts:
        set_threads(1)
        for T in args.T:
            cumulative, _ = parts(fast, *views(T), args.reps)
            previous, cells = 0.0, []
            for name, s in cumulative.items():
                cells.append(f"{name} {(s - previous) * 1e3:.2f}")
                previous = s
            print(f"parts, one thread, CPU ms, T={T} (total {previous * 1e3:.2f}): " + ", ".join(cells))


if __name__ == "__main__":
    main()
