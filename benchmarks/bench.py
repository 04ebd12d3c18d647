#!/usr/bin/env python
"""Benchmark numpy_gpt2 against transformers' GPT2LMHeadModel on the same checkpoint file.

    python benchmarks/bench.py                 # 124M-shaped checkpoint, full run (a few minutes)
    python benchmarks/bench.py --json          # one JSON object on stdout instead of the table
    python benchmarks/bench.py --smoke         # tiny config, seconds (CI)
    python benchmarks/bench.py --numpy-only    # skip PyTorch even when it is installed
    python benchmarks/bench.py --xl-dir /tmp/xl  # start-up: process start to first token, gpt2-xl shape
    python benchmarks/bench.py --train         # training rows instead (see benchmarks/bench_train.py)

What is measured (batch 1 unless said; float32 on both sides):
  prefill T      one forward over T prompt tokens into a fresh KV cache, logits for the last
                 position only (numpy: last_only=True; PyTorch: use_cache=True, logits_to_keep=1)
  prefill T, all logits   one forward over T tokens, logits for every position, no cache
                 (numpy: forward(params, config, tokens); PyTorch: use_cache=False): what
                 scoring a text or a training forward computes
  decode bB      a 16-token prompt then 128 new greedy tokens, with the KV cache; new tokens/s.
                 PyTorch side: a manual past_key_values loop (model(..., past_key_values=...),
                 argmax of the last logits), not model.generate, so no generate() overhead.
  load           from a warm page cache to the first logits (library import excluded)
  peak RSS       VmHWM of the process that ran all of the above, one process per side.
  generate b8, 6 rows stop early   numpy_gpt2 alone: generate() with finished rows dropped
                 from the batch (the default) against computed to the end (compact=False).
  8 prompts of lengths 2, 4, .., 16 (greedy, 128 new tokens each): numpy_gpt2.generate with
                 the list of prompts as one batch (left-padded inside, attention mask) against
                 the same prompts one by one, and transformers' generate() on the batch
                 left-padded with its attention_mask; new tokens/s.

The checkpoint has random weights but the exact layout of openai-community/gpt2's
model.safetensors (no prefix, mask buffers, unaligned data block); it is written once with
NumPy into --dir (default: a temporary directory) and reused when already there.
Both sides run in their own subprocess with the same OMP/OPENBLAS/MKL thread count (and
torch.set_num_threads); the repetitions of the two sides are interleaved so that machine
noise hits both alike; rows report medians and the ratio numpy_gpt2 / PyTorch.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np

import bench_limits
import bench_startup
import bench_train
from bench_common import (Worker, checkpoint_shapes, comparison_row, ensure_checkpoint,
                          import_numpy_gpt2, machine_info, model_part, numpy_info,
                          peak_rss_bytes, torch_blas, warm_page_cache, write_checkpoint)  # noqa: F401

numpy_gpt2 = import_numpy_gpt2()

FULL = dict(n_layer=12, n_head=12, n_embd=768, n_ctx=1024, vocab_size=50257,
            prefill=[128, 512, 1024], prefill_all=[128, 1024], prompt=16, new_tokens=128, batches=[1, 8], reps=3)
SMOKE = dict(n_layer=2, n_head=2, n_embd=64, n_ctx=128, vocab_size=512,
             prefill=[16, 64, 128], prefill_all=[16, 128], prompt=4, new_tokens=8, batches=[1, 2], reps=2)
# --quick: the rows the speed table quotes, fewer repetitions, no generate() rows (~4 min here)
QUICK = dict(FULL, prefill=[128, 1024], prefill_all=[], new_tokens=32, reps=2, extras=False)
# The small model of the competing-load row: 3.4M parameters (mostly wte), 64 wide, so its
# block matmuls are (rows, 64) @ (64, 256)-sized; scored like scripts/perplexity.py does.
SMALL = dict(n_layer=4, n_head=4, n_embd=64, n_ctx=256, vocab_size=50257, text=1024, window=256)
SMALL_SMOKE = dict(SMALL, n_ctx=64, vocab_size=512, text=128, window=64)


# ----------------------------------------------------------------------------------------
# Workers: one process per side, driven line by line over stdin/stdout (JSON).

def prompt_tokens(batch, T, vocab_size, seed=1):
    return np.random.default_rng(seed).integers(0, vocab_size - 1, size=(batch, T))


def ragged_prompts(tokens):
    """Rows of tokens (B, T) cut to B different lengths T/B, 2T/B, .., T (lists of ids)."""
    B, T = tokens.shape
    return [row[:max(1, T * (b + 1) // B)].tolist() for b, row in enumerate(tokens)]


class NumpySide:
    name = "numpy_gpt2"

    def __init__(self, directory):
        self.np_gpt2 = numpy_gpt2
        self.eos_for = {}  # decode_early_stop's calibration
        self.directory = directory

    def load(self):
        self.params, self.config = self.np_gpt2.load(self.directory)

    def prefill_all(self, tokens):
        return self.np_gpt2.forward(self.params, self.config, tokens)

    def prefill(self, tokens):
        cache = self.np_gpt2.new_kv_cache(self.config, tokens.shape[0], np.float32, max_len=tokens.shape[1])
        return self.np_gpt2.forward(self.params, self.config, tokens, kv_cache=cache, last_only=True)

    def decode(self, prompt, new_tokens):
        B, T = prompt.shape
        cache = self.np_gpt2.new_kv_cache(self.config, B, np.float32, max_len=T + new_tokens)
        logits = self.np_gpt2.forward(self.params, self.config, prompt, kv_cache=cache, last_only=True)
        out = []
        for step in range(new_tokens):
            token = logits[:, -1].argmax(axis=-1)[:, None]  # (B, 1) greedy
            out.append(token)
            if step + 1 < new_tokens:
                logits = self.np_gpt2.forward(self.params, self.config, token, kv_cache=cache, last_only=True)
        return np.concatenate(out, axis=1)

    def decode_early_stop(self, prompt, n_early, new_tokens, compact):
        """Greedy numpy_gpt2.generate() where the first n_early rows stop early; compact=False
        keeps computing finished rows. Returns (step at which they stop, rows that stopped).

        To make rows stop on purpose: the first n_early rows get the same prompt, and "eos" is
        the first token they generate after 1/8 of the steps that the other rows never
        generate (found by one untimed run without stopping, then remembered)."""
        prompt = prompt.copy()
        prompt[:n_early] = prompt[0]
        key = (prompt.tobytes(), n_early, new_tokens)
        if key not in self.eos_for:
            free = np.stack(list(self.np_gpt2.generate(self.params, self.config, prompt, new_tokens,
                                                       temperature=0, stop_at_eos=False)), axis=1)
            others = set(free[n_early:].ravel().tolist())  # stop after >= 1/8 of the steps
            self.eos_for[key] = next(((int(t), k + 1) for k, t in enumerate(free[0])
                                      if t not in others and k + 1 >= new_tokens // 8), (None, None))
        eos, step = self.eos_for[key]
        steps = list(self.np_gpt2.generate(self.params, self.config, prompt, new_tokens, temperature=0,
                                           eos_token_id=eos, stop_at_eos=eos is not None, compact=compact))
        return step, int(sum((np.stack(steps, axis=1) == eos).any(axis=1)))

    def ragged(self, prompts, new_tokens, batched):
        """Greedy generate() of prompts of different lengths: one batch, or one by one."""
        kw = dict(temperature=0, stop_at_eos=False)
        if batched:
            return list(self.np_gpt2.generate(self.params, self.config, prompts, new_tokens, **kw))
        return [list(self.np_gpt2.generate(self.params, self.config, p, new_tokens, **kw)) for p in prompts]

    def info(self):
        return numpy_info()


class TorchSide:
    name = "PyTorch"

    def __init__(self, directory, threads):
        import torch
        import transformers
        torch.set_num_threads(threads)
        self.torch, self.transformers, self.directory = torch, transformers, directory

    def load(self):
        self.model = self.transformers.GPT2LMHeadModel.from_pretrained(
            self.directory, dtype=self.torch.float32).eval()

    def prefill(self, tokens):
        with self.torch.inference_mode():
            out = self.model(input_ids=self.torch.from_numpy(tokens), use_cache=True, logits_to_keep=1)
            return out.logits.numpy()

    def prefill_all(self, tokens):
        with self.torch.inference_mode():
            return self.model(input_ids=self.torch.from_numpy(tokens), use_cache=False).logits.numpy()

    def decode(self, prompt, new_tokens):
        torch = self.torch
        with torch.inference_mode():
            out = self.model(input_ids=torch.from_numpy(prompt), use_cache=True, logits_to_keep=1)
            result = []
            for step in range(new_tokens):
                token = out.logits[:, -1].argmax(dim=-1, keepdim=True)
                result.append(token)
                if step + 1 < new_tokens:
                    out = self.model(input_ids=token, past_key_values=out.past_key_values,
                                     use_cache=True, logits_to_keep=1)
            return torch.cat(result, dim=1).numpy()

    def ragged(self, prompts, new_tokens, batched=True):
        """transformers' generate() on the prompts left-padded, with their attention mask."""
        torch, width = self.torch, max(len(p) for p in prompts)
        ids = torch.zeros((len(prompts), width), dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for b, p in enumerate(prompts):
            ids[b, width - len(p):], mask[b, width - len(p):] = torch.tensor(p), 1
        with torch.inference_mode():
            return self.model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=new_tokens,
                                       min_new_tokens=new_tokens, pad_token_id=0).numpy()

    def info(self):
        return {"torch": self.torch.__version__, "transformers": self.transformers.__version__,
                "torch_threads": self.torch.get_num_threads(),
                "attn_implementation": self.model.config._attn_implementation,
                **torch_blas(self.torch)}


def worker_argv(side, directory, threads):
    """The command line (after python) of this file's worker for one side."""
    return [os.path.abspath(__file__), "--worker", side, "--dir", directory, "--threads", str(threads)]


def side_limits(side_name, shapes, threads, min_time=0.15, nbytes=1 << 29):
    """This side's best SGEMM rate per (M, K, N) (GFLOP/s, its own BLAS and thread count)
    and, on the NumPy side, the streaming read bandwidth (GB/s) over nbytes."""
    shapes = [tuple(s) for s in shapes]
    if side_name == "numpy":
        return {"gemm": bench_limits.numpy_gemm(shapes, min_time),
                "bandwidth": bench_limits.numpy_bandwidth(nbytes, threads=threads)}
    import torch
    return {"gemm": bench_limits.torch_gemm(torch, shapes, min_time)}


def worker(side_name, directory, threads):
    """Load, report the load time to first logits, then answer timing requests until EOF."""
    if side_name == "numpy":
        numpy_gpt2.fast.threads.set_threads(threads)  # its own pool: as many threads as PyTorch's
    side = NumpySide(directory) if side_name == "numpy" else TorchSide(directory, threads)
    with open(os.path.join(directory, "config.json")) as f:
        vocab_size = json.load(f)["vocab_size"]
    start = time.perf_counter()
    side.load()
    side.prefill(prompt_tokens(1, 1, vocab_size))
    load_seconds = time.perf_counter() - start
    reply = {"load_seconds": load_seconds, "info": side.info()}
    print(json.dumps(reply), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "rss":
            reply = {"peak_rss": peak_rss_bytes()}
        elif request["op"] == "limits":
            reply = side_limits(side_name, request["shapes"], threads, request["min_time"], request["nbytes"])
        else:
            tokens = prompt_tokens(request["batch"], request["T"], vocab_size)
            start = time.perf_counter()
            stopped = None
            if request["op"] == "prefill":
                side.prefill(tokens)
            elif request["op"] == "ragged":
                side.ragged(ragged_prompts(tokens), request["new_tokens"], request["batched"])
            elif request["op"] == "prefill_all":
                side.prefill_all(tokens)
            elif request["op"] == "early_stop":
                stopped = side.decode_early_stop(tokens, request["n_early"], request["new_tokens"],
                                                 request["compact"])
            else:
                side.decode(tokens, request["new_tokens"])
            reply = {"seconds": time.perf_counter() - start, "stopped": stopped}
        print(json.dumps(reply), flush=True)


# ----------------------------------------------------------------------------------------
# The parent: interleave repetitions of the two sides, take medians, print.

def run(cfg, directory, threads, with_torch):
    sides = ["numpy"] + (["torch"] if with_torch else [])
    warm_page_cache(os.path.join(directory, "model.safetensors"))
    workers = {s: Worker(worker_argv(s, directory, threads), threads) for s in sides}
    load = {s: [workers[s].ready["load_seconds"]] for s in sides}
    model = model_part(cfg)
    rows = []
    # floor(limits): the machine's limit for the row's work (bench_limits), from limits measured
    # at the end (the bandwidth test's big array must not count in the peak RSS row)
    tasks = [("prefill", f"prefill T={T}", dict(op="prefill", batch=1, T=T), T,
              lambda lim, T=T: bench_limits.forward_floor(model, T, T, 0, 1, lim["gemm"], lim["bandwidth"]))
             for T in cfg["prefill"]]
    tasks += [("prefill", f"prefill T={T}, all logits", dict(op="prefill_all", batch=1, T=T), T,
               lambda lim, T=T: bench_limits.forward_floor(model, T, T, 0, T, lim["gemm"], lim["bandwidth"]))
              for T in cfg["prefill_all"]]
    # decode: the floor of the new tokens' steps (the prompt's forward left out)
    tasks += [("decode", f"decode b{B}", dict(op="decode", batch=B, T=cfg["prompt"], new_tokens=cfg["new_tokens"]),
               B * cfg["new_tokens"], lambda lim, B=B: cfg["new_tokens"] * bench_limits.forward_floor(
                   model, B, 1, cfg["prompt"], B, lim["gemm"], lim["bandwidth"], batch=B))
              for B in cfg["batches"]]
    floors = []
    for kind, label, request, n_tokens, floor in tasks:
        for s in sides:  # warm-up (first-touch allocations, BLAS thread start); decode: a short one
            workers[s].ask(**dict(request, new_tokens=min(8, request.get("new_tokens", 0))))
        seconds = {s: [] for s in sides}
        for _ in range(cfg["reps"]):
            for s in sides:
                seconds[s].append(workers[s].ask(**request)["seconds"])
        rows.append(comparison_row(label, "tokens/s" if kind == "prefill" else "new tokens/s",
                         {s: n_tokens / statistics.median(v) for s, v in seconds.items()}, higher=True))
        r = rows[-1]
        floors.append((r, floor, {name: statistics.median(seconds[s]) for s, name in
                                  (("numpy", "numpy_gpt2"), ("torch", "pytorch")) if s in seconds}))
        print(f"  {label}: numpy_gpt2 {r['numpy_gpt2']:.1f}, PyTorch {r['pytorch'] or 0:.1f}, "
              f"ratio {r.get('ratio', 0):.2f}", file=sys.stderr, flush=True)
    extras = cfg.get("extras", True)
    compaction = early_stop_rows(workers["numpy"], cfg) if extras else None
    ragged = ragged_rows(workers, cfg) if extras else None
    rss = {s: workers[s].ask(op="rss")["peak_rss"] / 2**20 for s in sides}
    limits = measure_limits(workers, model, cfg)
    for r, floor, medians in floors:
        r["floor_seconds"] = floor(limits)
        r["fraction"] = {name: r["floor_seconds"] / t for name, t in medians.items()}
        print(f"  {r['what']}: of the limit " + ", ".join(f"{k} {v:.0%}" for k, v in r["fraction"].items()),
              file=sys.stderr, flush=True)
    info = {s: workers[s].ready["info"] for s in sides}
    for w in workers.values():
        w.close()
    for _ in range(cfg["reps"] - 1 if extras else 0):  # more load samples: fresh processes, load and exit
        for s in sides:
            w = Worker(worker_argv(s, directory, threads), threads)
            load[s].append(w.ready["load_seconds"])
            w.close()
    rows.append(comparison_row("load to first logits", "s", {s: statistics.median(v) for s, v in load.items()},
                     higher=False))
    rows.append(comparison_row("peak RSS", "MiB", rss, higher=False))
    weight_bytes = 4 * sum(int(np.prod(shape)) for name, shape in checkpoint_shapes(**model_part(cfg)).items()
                           if not name.endswith(".attn.bias"))
    small = small_model_rows(cfg.get("small", SMALL), threads, cfg["reps"])
    return {"rows": rows, "compaction": compaction, "ragged": ragged, "info": info, "threads": threads,
            "weights_mib": weight_bytes / 2**20, "limits": limits, "small_model": small,
            "pytorch": with_torch, "machine": machine_info(), "model": model_part(cfg),
            "reps": cfg["reps"]}


def measure_limits(workers, model, cfg):
    """The machine's limits for this run's rows, measured by the workers themselves: the best
    SGEMM rate per matmul shape (the better of the two BLASes) and the read bandwidth."""
    rows = cfg["prefill"] + cfg["prefill_all"] + cfg["batches"]
    head_rows = [1] + cfg["prefill_all"] + cfg["batches"]
    shapes = bench_limits.forward_shapes(model, rows, head_rows, cfg["prefill"] + cfg["prefill_all"])
    smoke = cfg["n_embd"] < 128  # seconds, not precision
    measured = {s: w.ask(op="limits", shapes=shapes, min_time=0.01 if smoke else 0.15,
                         nbytes=1 << (26 if smoke else 29)) for s, w in workers.items()}
    limits = {"gemm": bench_limits.best_rates(*(m["gemm"] for m in measured.values())),
              "bandwidth": measured["numpy"]["bandwidth"],
              "gemm_by_side": {s: m["gemm"] for s, m in measured.items()}}
    print(f"  limits: read bandwidth {limits['bandwidth']:.1f} GB/s; SGEMM GFLOP/s "
          + ", ".join(f"{k} {v:.0f}" for k, v in limits["gemm"].items()), file=sys.stderr, flush=True)
    return limits


def small_model_rows(small, threads, reps):
    """A small model (SMALL) scoring a text (numpy_gpt2.perplexity) while another process keeps
    one core busy: seconds with 1 thread, with `threads` threads, and with the default (no
    setting at all), each in its own worker, interleaved; the default's time over the best."""
    import subprocess
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    settings = sorted({1, threads}) + ["default"]
    workers = {}
    try:
        for n in settings:
            env = {k: v for k, v in os.environ.items()
                   if k not in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMPY_GPT2_THREADS")}
            argv = [sys.executable, os.path.abspath(__file__), "--worker", "small", "--small", json.dumps(small),
                    "--threads", "0" if n == "default" else str(n)]
            workers[n] = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
            json.loads(workers[n].stdout.readline())  # built and warmed up
        seconds = {n: [] for n in settings}
        for _ in range(max(reps, 2)):
            for n in settings:
                workers[n].stdin.write("{}\n")
                workers[n].stdin.flush()
                seconds[n].append(json.loads(workers[n].stdout.readline())["seconds"])
    finally:
        spinner.kill()
        spinner.wait()
        for w in workers.values():
            w.stdin.close()
            w.wait()
    median = {str(n): statistics.median(v) for n, v in seconds.items()}
    best = min(v for k, v in median.items() if k != "default")
    result = {"what": "small model, perplexity, one core busy", "model": small, "seconds": median,
              "default_over_best": median["default"] / best}
    print(f"  {result['what']}: " + ", ".join(f"{k} threads {v:.2f} s" for k, v in median.items())
          + f"; default / best {result['default_over_best']:.2f}", file=sys.stderr, flush=True)
    return result


def small_worker(small, threads):
    """Build SMALL with init_params, then time numpy_gpt2.perplexity over a random text per
    request. threads 0: the library's defaults untouched."""
    from numpy_gpt2.generation.perplexity import perplexity
    from numpy_gpt2.initialization import init_params
    if threads:
        numpy_gpt2.fast.threads.set_threads(threads)
    config = numpy_gpt2.GPT2Config(n_layer=small["n_layer"], n_head=small["n_head"], n_embd=small["n_embd"],
                                   n_ctx=small["n_ctx"], vocab_size=small["vocab_size"])
    params = init_params(config, seed=0)
    text = np.random.default_rng(0).integers(0, small["vocab_size"], small["text"])
    perplexity(params, config, text, max_length=small["window"])
    print(json.dumps({"ready": True}), flush=True)
    for _ in sys.stdin:
        start = time.perf_counter()
        perplexity(params, config, text, max_length=small["window"])
        print(json.dumps({"seconds": time.perf_counter() - start}), flush=True)


def early_stop_rows(numpy_worker, cfg):
    """numpy_gpt2.generate on a batch of 8 where 6 rows stop early: finished rows dropped from
    the batch (compact=True, the default) against computed to the end (compact=False),
    interleaved in the same worker (see NumpySide.decode_early_stop)."""
    request = dict(op="early_stop", batch=8, n_early=6, T=cfg["prompt"], new_tokens=cfg["new_tokens"])
    seconds = {True: [], False: []}
    for rep in range(cfg["reps"] + 1):  # the first round (calibration, first touches) is not kept
        for compact in (True, False):
            reply = numpy_worker.ask(**request, compact=compact)
            if rep:
                seconds[compact].append(reply["seconds"])
    (step, stopped), on, off = reply["stopped"], statistics.median(seconds[True]), statistics.median(seconds[False])
    result = {"what": "generate b8, 6 rows stop early", "stop_step": step, "stopped": stopped,
              "new_tokens": cfg["new_tokens"], "seconds_compact": on, "seconds_no_compact": off,
              "speedup": off / on}
    print(f"  {result['what']} ({stopped} stopped at step {step} of {cfg['new_tokens']}): {on:.3f} s, "
          f"without compaction {off:.3f} s, speed-up {off / on:.2f}x", file=sys.stderr, flush=True)
    return result


def ragged_rows(workers, cfg):
    """8 prompts of different lengths: numpy_gpt2.generate on all of them as one batch, on
    each alone in turn, and (when measured) transformers' generate on the left-padded batch;
    the repetitions interleaved, the first round (first touches) not kept."""
    request = dict(op="ragged", batch=8, T=cfg["prompt"], new_tokens=cfg["new_tokens"])
    runs = [("numpy", True), ("numpy", False)] + [("torch", True)] * ("torch" in workers)
    seconds = {run: [] for run in runs}
    for rep in range(cfg["reps"] + 1):
        for side, batched in runs:
            reply = workers[side].ask(**request, batched=batched)
            if rep:
                seconds[side, batched].append(reply["seconds"])
    speed = {run: 8 * cfg["new_tokens"] / statistics.median(v) for run, v in seconds.items()}
    result = {"what": f"8 prompts of lengths {max(1, cfg['prompt'] // 8)}..{cfg['prompt']}", "new_tokens": cfg["new_tokens"],
              "batched": speed["numpy", True], "one_by_one": speed["numpy", False],
              "pytorch_batched": speed.get(("torch", True)), "speedup": speed["numpy", True] / speed["numpy", False]}
    print(f"  {result['what']}: batched {result['batched']:.1f}, one by one {result['one_by_one']:.1f} new "
          f"tokens/s (speed-up {result['speedup']:.2f}x); PyTorch batched {result['pytorch_batched'] or 0:.1f}",
          file=sys.stderr, flush=True)
    return result


def print_table(result):
    m = result["machine"]
    print(f"model {result['model']}  float32 weights {result['weights_mib']:.0f} MiB")
    print(f"machine: {m['cpu']}, {m['cpus']} CPUs, threads per side {result['threads']}, "
          f"Python {m['python']}, OPENBLAS_* env {m['openblas_env'] or 'unset'}")
    for side, info in result["info"].items():
        print(f"  {side}: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    if not result["pytorch"]:
        print("PyTorch/transformers not measured (not installed or --numpy-only): numpy_gpt2 alone.")
    lim = result["limits"]
    print(f"limits measured in this run: read bandwidth {lim['bandwidth']:.1f} GB/s; best SGEMM GFLOP/s "
          "per (M, K, N) (" + " / ".join(lim["gemm_by_side"]) + "): "
          + ", ".join(f"{k} {' / '.join(f'{g[k]:.0f}' for g in lim['gemm_by_side'].values())}" for k in lim["gemm"]))
    print(f"medians of {result['reps']} repetitions; ratio = numpy_gpt2 / PyTorch; "
          "% limit = the row's floor (matmuls at the best SGEMM rate, bytes at the read bandwidth) / its time")
    print(f"{'':26} {'unit':>13} {'numpy_gpt2':>11} {'PyTorch':>9} {'ratio':>7} {'% limit':>15}")
    for r in result["rows"]:
        fmt = "{:.3f}" if r["unit"] == "s" else "{:.1f}"
        torch_val = fmt.format(r["pytorch"]) if r["pytorch"] else "-"
        ratio = f"{r['ratio']:.2f}" if r.get("ratio") else "-"
        frac = " / ".join(f"{v:.0%}" for v in r.get("fraction", {}).values()) or "-"
        print(f"{r['what']:26} {r['unit']:>13} {fmt.format(r['numpy_gpt2']):>11} {torch_val:>9} {ratio:>7} {frac:>15}")
    c = result["compaction"]
    if c:
        print(f"{c['what']} (numpy_gpt2.generate, greedy, {c['stopped']} rows stopped at step {c['stop_step']} "
              f"of {c['new_tokens']}): finished rows dropped {c['seconds_compact']:.3f} s, computed to the end "
              f"{c['seconds_no_compact']:.3f} s, speed-up {c['speedup']:.2f}x")
    g = result["ragged"]
    if g:
        torch_part = f", PyTorch generate() left-padded {g['pytorch_batched']:.1f}" if g["pytorch_batched"] else ""
        print(f"{g['what']} (greedy, {g['new_tokens']} new tokens each): numpy_gpt2 as one batch {g['batched']:.1f}, "
              f"one by one {g['one_by_one']:.1f} new tokens/s, speed-up {g['speedup']:.2f}x{torch_part}")
    sm = result["small_model"]
    print(f"{sm['what']} ({sm['model']['n_layer']} layers x {sm['model']['n_embd']}, {sm['model']['text']} tokens, "
          f"windows of {sm['model']['window']}): " + ", ".join(f"{k} threads {v:.2f} s" for k, v in sm["seconds"].items())
          + f"; default / best {sm['default_over_best']:.2f}")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in m['load_avg_at_end'])}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", help="checkpoint directory (written once, reused); default: a temporary one")
    ap.add_argument("--threads", type=int, default=numpy_gpt2.fast.threads.cpu_count(),
                    help="threads per side (default: the CPUs this process may use)")
    ap.add_argument("--reps", type=int, help="repetitions per row (default 3; smoke 2)")
    ap.add_argument("--smoke", action="store_true", help="tiny config, runs in seconds (CI)")
    ap.add_argument("--numpy-only", action="store_true", help="do not measure PyTorch")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    ap.add_argument("--train", action="store_true", help="training rows instead: one optimizer step "
                    "(forward + backward + clip + AdamW), numpy_gpt2 vs PyTorch (benchmarks/bench_train.py)")
    ap.add_argument("--rows", help="with --train: comma-separated subset of shakespeare,124M-T64,124M-T1024")
    ap.add_argument("--xl-dir", metavar="DIR", help="start-up rows instead: process start to the first "
                    "token, gpt2-xl shape (6.4 GB, written once into DIR) and 124M (benchmarks/bench_startup.py)")
    ap.add_argument("--quick", action="store_true", help="the rows the speed table quotes, 2 repetitions, "
                    "no generate() rows (under 5 minutes on 2 quiet cores)")
    ap.add_argument("--worker", choices=["numpy", "torch", "small"], help=argparse.SUPPRESS)
    ap.add_argument("--small", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.xl_dir:
        with_torch = not args.numpy_only and all(importlib.util.find_spec(m) for m in ("torch", "transformers"))
        result = bench_startup.run_startup(args.xl_dir, args.threads, args.reps or 5, with_torch)
        return print(json.dumps(result, indent=1)) if args.json else bench_startup.print_startup_table(result)
    if args.train:
        return bench_train.main(args)
    if args.worker == "small":
        return small_worker(json.loads(args.small), args.threads)
    if args.worker:
        return worker(args.worker, args.dir, args.threads)
    cfg = dict(SMOKE if args.smoke else QUICK if args.quick else FULL)
    if args.smoke:
        cfg["small"] = SMALL_SMOKE
    if args.reps:
        cfg["reps"] = args.reps
    with_torch = not args.numpy_only and all(importlib.util.find_spec(m) for m in ("torch", "transformers"))
    with tempfile.TemporaryDirectory(prefix="numpy_gpt2_bench_") as tmp:
        directory = args.dir or tmp
        ensure_checkpoint(directory, cfg)
        result = run(cfg, directory, args.threads, with_torch)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print_table(result)


if __name__ == "__main__":
    main()
