#!/usr/bin/env python
"""Training rows of benchmarks/bench.py: one optimizer step, numpy_gpt2 against PyTorch.

    python benchmarks/bench.py --train              # the three rows below (124M T=1024: minutes)
    python benchmarks/bench.py --train --smoke      # tiny shapes, seconds (CI)
    python benchmarks/bench.py --train --rows shakespeare,124M-T64 --reps 5 --json

Each row times one optimizer step on a batch of random tokens: forward + backward + global
norm clipping (1.0) + AdamW (betas (0.9, 0.99), weight decay 0.1 on matrices), float32:
  numpy_gpt2   loss_and_grads, clip_grad_norm, adamw_update (numpy_gpt2.training.step.train_step)
  PyTorch      GPT2LMHeadModel (its default sdpa attention: PyTorch's fused kernel, faster and
               smaller than eager here; dropout 0, train mode), cross_entropy,
               backward, torch.nn.utils.clip_grad_norm_, torch.optim.AdamW (its default on
               CPU: the single-tensor loop, foreach=False; bench_optim.py times the others),
               zero_grad(set_to_none=True)
Rows: (a) the Tiny Shakespeare model (4 layers, 4 heads, 128 wide, B=12, T=64), (b) 124M-shaped
at B=4, T=64, (c) 124M-shaped at B=4, T=1024; all with GPT-2's 50257-token vocabulary.
Each row gets a fresh worker process per side (so peak RSS, VmHWM, is that row's), the same
thread count on both sides, one untimed warm-up step, then --reps timed steps interleaved
between the sides. Reported: medians in tokens/s (B*T per step) and the ratio numpy/PyTorch.
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import sys
import time

import numpy as np

import bench_limits
from bench_common import (Worker, comparison_row, import_numpy_gpt2, machine_info, numpy_info,
                          peak_rss_bytes, torch_blas)

GPT2_124M = dict(n_layer=12, n_head=12, n_embd=768, vocab_size=50257)
ROWS = {
    "shakespeare": dict(n_layer=4, n_head=4, n_embd=128, vocab_size=50257, batch=12, T=64),
    "124M-T64": dict(GPT2_124M, batch=4, T=64),
    "124M-T1024": dict(GPT2_124M, batch=4, T=1024),
}
SMOKE_ROWS = {"smoke": dict(n_layer=2, n_head=2, n_embd=64, vocab_size=512, batch=2, T=32)}
LR, BETAS, WEIGHT_DECAY, CLIP = 1e-4, (0.9, 0.99), 0.1, 1.0


def random_batch(cfg, seed):
    tokens = np.random.default_rng(seed).integers(0, cfg["vocab_size"], size=(cfg["batch"], cfg["T"] + 1))
    return tokens[:, :-1], tokens[:, 1:]


class NumpyTrainer:
    def __init__(self, cfg):
        numpy_gpt2 = import_numpy_gpt2()
        from numpy_gpt2.initialization import init_params
        from numpy_gpt2.training.step import train_step
        self.np_gpt2 = numpy_gpt2
        self.config = self.np_gpt2.GPT2Config(n_layer=cfg["n_layer"], n_head=cfg["n_head"],
                                              n_embd=cfg["n_embd"], n_ctx=cfg["T"],
                                              vocab_size=cfg["vocab_size"])
        self.params = init_params(self.config, seed=0)
        self.state = self.np_gpt2.adamw_init(self.params)
        self.train_step = train_step

    def step(self, x, y):
        return self.train_step(self.params, self.config, self.state, [(x, y)], LR, betas=BETAS,
                               weight_decay=WEIGHT_DECAY, grad_clip=CLIP)[0]

    def info(self):
        return numpy_info()


class TorchTrainer:
    def __init__(self, cfg, threads):
        import torch
        import transformers
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        config = transformers.GPT2Config(
            n_layer=cfg["n_layer"], n_head=cfg["n_head"], n_embd=cfg["n_embd"], n_positions=cfg["T"],
            n_ctx=cfg["T"], vocab_size=cfg["vocab_size"], activation_function="gelu_new",
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, attn_implementation="sdpa")
        self.torch, self.transformers = torch, transformers
        self.model = transformers.GPT2LMHeadModel(config).train()
        decay = [p for p in self.model.parameters() if p.ndim >= 2]
        other = [p for p in self.model.parameters() if p.ndim < 2]
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                                      {"params": other, "weight_decay": 0.0}], lr=LR, betas=BETAS)

    def step(self, x, y):
        torch = self.torch
        logits = self.model(torch.from_numpy(x)).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 torch.from_numpy(y).reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), CLIP)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    def info(self):
        return {"torch": self.torch.__version__, "transformers": self.transformers.__version__,
                "torch_threads": self.torch.get_num_threads(),
                "attn_implementation": self.model.config._attn_implementation,
                **torch_blas(self.torch)}


def worker(side_name, cfg, threads):
    """Build the model and optimizer, then answer {"op": "step"} / {"op": "rss"} until EOF."""
    if side_name == "numpy":
        import_numpy_gpt2().fast.threads.set_threads(threads)  # its own pool: as many threads as PyTorch's
    side = NumpyTrainer(cfg) if side_name == "numpy" else TorchTrainer(cfg, threads)
    print(json.dumps({"info": side.info()}), flush=True)
    for n, line in enumerate(sys.stdin):
        request = json.loads(line)
        if request["op"] == "rss":
            reply = {"peak_rss": peak_rss_bytes()}
        elif request["op"] == "limits":  # the machine's limits (bench_limits), this side's BLAS
            shapes = [tuple(sh) for sh in request["shapes"]]
            smoke = cfg["n_embd"] < 128  # seconds, not precision
            min_time, nbytes = (0.01, 1 << 26) if smoke else (0.15, 1 << 29)
            if side_name == "numpy":
                reply = {"gemm": bench_limits.numpy_gemm(shapes, min_time),
                         "bandwidth": bench_limits.numpy_bandwidth(nbytes, threads=threads)}
            else:
                reply = {"gemm": bench_limits.torch_gemm(side.torch, shapes, min_time)}
        else:
            x, y = random_batch(cfg, seed=n)
            start = time.perf_counter()
            loss = side.step(x, y)
            reply = {"seconds": time.perf_counter() - start, "loss": loss}
        print(json.dumps(reply), flush=True)


def worker_argv(side, cfg, threads):
    """The command line (after python) of this file's training worker for one side."""
    return [os.path.abspath(__file__), "--worker", side, "--config", json.dumps(cfg),
            "--threads", str(threads)]


def row_label(name, cfg):
    return f"train {name} B={cfg['batch']} T={cfg['T']}"


def run(rows, threads, reps, with_torch):
    sides = ["numpy"] + (["torch"] if with_torch else [])
    result_rows, info = [], {}
    for name, cfg in rows.items():
        workers = {s: Worker(worker_argv(s, cfg, threads), threads) for s in sides}
        for s in sides:
            info[s] = workers[s].ready["info"]
            workers[s].ask(op="step")  # warm-up: first touches, BLAS threads, allocator
        seconds = {s: [] for s in sides}
        for _ in range(reps):
            for s in sides:
                seconds[s].append(workers[s].ask(op="step")["seconds"])
        rss = {s: workers[s].ask(op="rss")["peak_rss"] / 2**20 for s in sides}
        shapes = bench_limits.train_shapes(cfg, cfg["batch"] * cfg["T"], cfg["T"])
        measured = {s: workers[s].ask(op="limits", shapes=shapes) for s in sides}
        for w in workers.values():
            w.close()
        rates = bench_limits.best_rates(*(m["gemm"] for m in measured.values()))
        floor = bench_limits.train_floor(cfg, cfg["batch"], cfg["T"], rates, measured["numpy"]["bandwidth"])
        tokens = cfg["batch"] * cfg["T"]
        label = row_label(name, cfg)
        speed = comparison_row(label, "tokens/s", {s: tokens / statistics.median(v) for s, v in seconds.items()},
                           higher=True)
        speed["floor_seconds"] = floor
        speed["fraction"] = {name_: floor / statistics.median(seconds[s]) for s, name_ in
                             (("numpy", "numpy_gpt2"), ("torch", "pytorch")) if s in seconds}
        speed["limits"] = {"bandwidth": measured["numpy"]["bandwidth"],
                           "gemm_by_side": {s: m["gemm"] for s, m in measured.items()}}
        memory = comparison_row(f"{label} peak RSS", "MiB", rss, higher=False)
        result_rows += [speed, memory]
        print(f"  {label}: numpy_gpt2 {speed['numpy_gpt2']:.0f} tok/s, PyTorch "
              f"{speed['pytorch'] or 0:.0f} tok/s, ratio {speed.get('ratio', 0):.2f}; peak RSS ratio "
              f"{memory.get('ratio', 0):.2f}; of the limit (floor {floor:.2f} s): "
              + ", ".join(f"{k} {v:.0%}" for k, v in speed["fraction"].items()), file=sys.stderr, flush=True)
    return {"rows": result_rows, "info": info, "threads": threads, "reps": reps, "pytorch": with_torch,
            "machine": machine_info(), "configs": rows}


def print_table(result):
    m = result["machine"]
    print("training: one optimizer step (forward + backward + clip + AdamW), float32, random tokens")
    print(f"machine: {m['cpu']}, {m['cpus']} CPUs, threads per side {result['threads']}, "
          f"Python {m['python']}")
    for side, info in result["info"].items():
        print(f"  {side}: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    print(f"medians of {result['reps']} steps after a warm-up step; ratio = numpy_gpt2 / PyTorch")
    print("% limit: the step's floor (its matmuls at the best SGEMM rate measured for each shape in this "
          "run, AdamW's and the norm's 8 passes over the parameters at the read bandwidth) / its time")
    print(f"{'':34} {'unit':>9} {'numpy_gpt2':>11} {'PyTorch':>9} {'ratio':>7} {'% limit':>13}")
    for r in result["rows"]:
        torch_val = f"{r['pytorch']:.1f}" if r["pytorch"] else "-"
        ratio = f"{r['ratio']:.2f}" if r.get("ratio") else "-"
        frac = " / ".join(f"{v:.0%}" for v in r.get("fraction", {}).values()) or "-"
        print(f"{r['what']:34} {r['unit']:>9} {r['numpy_gpt2']:>11.1f} {torch_val:>9} {ratio:>7} {frac:>13}")
        if "limits" in r:
            print(f"{'':34} read bandwidth {r['limits']['bandwidth']:.1f} GB/s")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in m['load_avg_at_end'])}")


def main(args):
    """Called by benchmarks/bench.py --train with its parsed arguments (rows, reps, threads, ...)."""
    rows = dict(SMOKE_ROWS if args.smoke else ROWS)
    if getattr(args, "rows", None):
        wanted = args.rows.split(",")
        unknown = [w for w in wanted if w not in rows]
        if unknown:
            sys.exit(f"bench.py: error: unknown --rows {','.join(unknown)}; choose from {','.join(rows)}")
        rows = {w: rows[w] for w in wanted}
    with_torch = not args.numpy_only and all(
        importlib.util.find_spec(m) for m in ("torch", "transformers"))
    result = run(rows, args.threads, args.reps or (2 if args.smoke else 3), with_torch)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print_table(result)
    return 0


if __name__ == "__main__":  # a worker process (the parent is benchmarks/bench.py --train)
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", choices=["numpy", "torch"], required=True)
    ap.add_argument("--config", required=True)
    ap.add_argument("--threads", type=int, required=True)
    a = ap.parse_args()
    worker(a.worker, json.loads(a.config), a.threads)
