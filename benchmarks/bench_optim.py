#!/usr/bin/env python3
"""Time the optimizer's memory-bound passes over a GPT-2-shaped model's parameters, against
PyTorch's on the same shapes, in one process, interleaved, with the streaming bandwidth.

    python benchmarks/bench_optim.py                    # 124M shapes, 2 threads, 7 rounds
    python benchmarks/bench_optim.py --step 1000        # a late step (1 - beta2^t rounds to 1)
    python benchmarks/bench_optim.py --smoke            # seconds (tests/meta/test_bench_optim.py)

Each round times, one after the other: numpy_gpt2's adamw_update (with clipping's
grad_scale, what train_step runs), grad_norm and the weights' finite check
(finite.non_finite_weights, which train_step no longer runs: adamw_update checks each chunk);
torch.optim.AdamW with foreach=False, foreach=True and fused=True (two parameter groups,
decay on matrices, as nanoGPT) and torch.nn.utils.clip_grad_norm_; and the streaming read
bandwidth (bench_limits.numpy_bandwidth). Printed: the best (min) and median time of each,
the bytes it must move over that time (AdamW: p, g, m, v read, p, m, v written, 28 bytes per
float32 parameter; the norm and the check: 4 bytes read) and that rate as a fraction of the
best bandwidth measured in the run. float32, random values.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

if __name__ == "__main__":  # --threads must reach OpenBLAS before NumPy loads it
    for i, a in enumerate(sys.argv[:-1]):
        if a == "--threads":
            for name in ("NUMPY_GPT2_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
                os.environ[name] = sys.argv[i + 1]

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from bench_common import checkpoint_shapes, import_numpy_gpt2  # noqa: E402
from bench_limits import numpy_bandwidth  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-layer", type=int, default=12)
    p.add_argument("--n-embd", type=int, default=768)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--step", type=int, default=1, help="the AdamW step timed first (bias corrections)")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--smoke", action="store_true", help="one layer of n_embd 64, one round, a small bandwidth array")
    args = p.parse_args(argv)
    if args.smoke:
        args.n_layer, args.n_embd, args.rounds = 1, 64, 1
    bandwidth_bytes = 1 << 24 if args.smoke else 1 << 29
    numpy_gpt2 = import_numpy_gpt2()
    from numpy_gpt2.finite import non_finite_weights
    from numpy_gpt2.training import optim
    numpy_gpt2.fast.threads.set_threads(args.threads)

    shapes = {k: s for k, s in checkpoint_shapes(args.n_layer, args.n_embd // 64, args.n_embd, 1024,
                                                  50257).items() if not k.endswith(".attn.bias")}
    rng = np.random.default_rng(0)
    flat_p = {k: 0.02 * rng.standard_normal(s, dtype=np.float32) for k, s in shapes.items()}
    flat_g = {k: 0.01 * rng.standard_normal(s, dtype=np.float32) for k, s in shapes.items()}
    n = sum(a.size for a in flat_p.values())
    params, grads = numpy_gpt2.params.nest_params(flat_p), numpy_gpt2.params.nest_params(flat_g)
    state = optim.adamw_init(params)
    state["step"] = args.step - 1
    runs = {"numpy_gpt2 adamw_update": (28, lambda: optim.adamw_update(params, grads, state, 1e-4, grad_scale=0.5)),
            "numpy_gpt2 grad_norm": (4, lambda: optim.grad_norm(grads)),
            "numpy_gpt2 non_finite_weights": (4, lambda: non_finite_weights(params))}
    if not args.no_torch:
        runs.update(torch_runs(flat_p, flat_g, args))
    times = {name: [] for name in runs}
    bandwidth = []
    for _ in range(args.rounds + 1):  # the first round warms up (page faults, torch's state)
        for name, (_, run) in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
        bandwidth.append(numpy_bandwidth(bandwidth_bytes, threads=args.threads))
    best = max(bandwidth[1:])
    print(f"{n / 1e6:.1f}M float32 parameters, {args.threads} threads, {args.rounds} rounds; streaming read "
          f"bandwidth {min(bandwidth[1:]):.1f}-{best:.1f} GB/s; load average {os.getloadavg()[0]:.1f}")
    print(f"{'pass':34s} {'min ms':>8s} {'median':>8s} {'GB/s':>6s} {'of bw':>6s}")
    for name, (bytes_per, _) in runs.items():
        t = times[name][1:]
        rate = bytes_per * n / min(t) / 1e9
        print(f"{name:34s} {min(t) * 1e3:8.1f} {statistics.median(t) * 1e3:8.1f} {rate:6.1f} {rate / best:6.0%}")
    return 0


def torch_runs(flat_p, flat_g, args):
    import torch
    torch.set_num_threads(args.threads)
    tensors = [torch.from_numpy(a.copy()).requires_grad_() for a in flat_p.values()]
    for t, g in zip(tensors, flat_g.values()):
        t.grad = torch.from_numpy(g.copy())

    def adamw(**kind):
        groups = [{"params": [t for t in tensors if t.ndim >= 2], "weight_decay": 0.1},
                  {"params": [t for t in tensors if t.ndim < 2], "weight_decay": 0.0}]
        opt = torch.optim.AdamW(groups, lr=1e-4, betas=(0.9, 0.95), **kind)
        for t in tensors:  # the same step count as ours
            opt.state[t] = {"step": torch.tensor(float(args.step - 1)), "exp_avg": torch.zeros_like(t),
                            "exp_avg_sq": torch.zeros_like(t)}
        return opt.step

    runs = {f"torch AdamW {name}": (28, adamw(**kind)) for name, kind in
            [("foreach=False", {"foreach": False}), ("foreach=True", {"foreach": True}),
             ("fused=True", {"fused": True})]}
    runs["torch clip_grad_norm_"] = (4, lambda: torch.nn.utils.clip_grad_norm_(tensors, 1e9))
    return runs


if __name__ == "__main__":
    sys.exit(main())
