#!/usr/bin/env python3
"""Time a data-parallel training step and the gradient Allreduce of a GPT-2-shaped model.

    mpiexec -n 2 -bind-to core python -m mpi4py benchmarks/bench_distributed.py --threads 1
    python benchmarks/bench_distributed.py --threads 2 --grad-accum 2     # the same step, one process

Every rank builds the model (default: 124M, n_layer=12 n_embd=768), runs --steps optimizer
steps of --grad-accum micro-batches of --batch-size x --block-size random tokens per rank
(the first is a warm-up, not timed), then times --reduces Allreduce(SUM) calls of the whole
flat gradient buffer. Rank 0 prints one line per measurement: the step time is the slowest
rank's, the Allreduce time the median.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

if __name__ == "__main__":  # --threads must reach OpenBLAS before NumPy loads it
    for i, a in enumerate(sys.argv[:-1]):
        if a == "--threads":
            for name in ("NUMPY_GPT2_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
                os.environ[name] = sys.argv[i + 1]

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import numpy_gpt2  # noqa: E402
from numpy_gpt2.training import distributed  # noqa: E402
from numpy_gpt2.initialization import init_params  # noqa: E402
from numpy_gpt2.training.step import train_step  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-layer", type=int, default=12)
    p.add_argument("--n-embd", type=int, default=768)
    p.add_argument("--n-head", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--block-size", type=int, default=1024)
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per rank per step")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--reduces", type=int, default=5)
    p.add_argument("--threads", type=int, help="BLAS threads per process (set before NumPy loads)")
    args = p.parse_args(argv)
    world = distributed.world()
    config = numpy_gpt2.GPT2Config(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd,
                                   n_ctx=args.block_size)
    params = init_params(config, seed=0)
    opt_state = numpy_gpt2.adamw_init(params)
    n_params = sum(a.size for a in numpy_gpt2.flatten_params(params).values())
    rng = np.random.default_rng(world.rank)
    times = []
    for _ in range(args.steps):
        batches = [(rng.integers(0, config.vocab_size, (args.batch_size, args.block_size)),) * 2
                   for _ in range(args.grad_accum)]
        world.barrier()
        t0 = time.perf_counter()
        train_step(params, config, opt_state, batches, 1e-4, accumulate=world.accumulate_grads)
        seconds = time.perf_counter() - t0
        times.append(max(world.comm.allgather(seconds)) if world.size > 1 else seconds)
    tokens = args.batch_size * args.block_size * args.grad_accum * world.size
    say = print if world.is_root else (lambda *a, **k: None)
    say(f"{world.size} rank(s) x {os.environ.get('OPENBLAS_NUM_THREADS', 'default')} BLAS thread(s), "
        f"{n_params / 1e6:.1f}M params, {tokens} tokens/step: step {min(times[1:] or times):.2f} s "
        f"(all: {', '.join(f'{t:.2f}' for t in times)}), {tokens / min(times[1:] or times):.0f} tokens/s")
    if world.size > 1:
        buffer = world.grad_views(params) and world.buffer
        reduce_times = []
        for _ in range(args.reduces):
            world.barrier()
            t0 = time.perf_counter()
            world.comm.Allreduce(world.MPI.IN_PLACE, buffer, op=world.MPI.SUM)
            reduce_times.append(time.perf_counter() - t0)
        gb = buffer.nbytes / 1e9
        say(f"Allreduce of {buffer.size:,} {buffer.dtype} ({gb:.3f} GB) on {world.size} ranks: median "
            f"{np.median(reduce_times):.3f} s (min {min(reduce_times):.3f}), "
            f"{2 * (world.size - 1) / world.size * gb / np.median(reduce_times):.2f} GB/s ring-equivalent")
    world.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
