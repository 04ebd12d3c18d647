#!/usr/bin/env python
"""Benchmark numpy_gpt2 against transformers' GPT2LMHeadModel on the same checkpoint file.

    python scripts/bench.py                 # 124M-shaped checkpoint, full run (a few minutes)
    python scripts/bench.py --json          # one JSON object on stdout instead of the table
    python scripts/bench.py --smoke         # tiny config, seconds (CI)
    python scripts/bench.py --numpy-only    # skip PyTorch even when it is installed
    python scripts/bench.py --xl-dir /tmp/xl  # start-up: process start to first token, gpt2-xl shape
    python scripts/bench.py --train         # training rows instead (see scripts/bench_train.py)

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
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

try:
    import numpy_gpt2
except ImportError:  # not pip-installed: use the package next to this script
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import numpy_gpt2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FULL = dict(n_layer=12, n_head=12, n_embd=768, n_ctx=1024, vocab_size=50257,
            prefill=[128, 512, 1024], prefill_all=[128, 1024], prompt=16, new_tokens=128, batches=[1, 8], reps=3)
SMOKE = dict(n_layer=2, n_head=2, n_embd=64, n_ctx=128, vocab_size=512,
             prefill=[16, 64, 128], prefill_all=[16, 128], prompt=4, new_tokens=8, batches=[1, 2], reps=2)


# ----------------------------------------------------------------------------------------
# The checkpoint: hub layout, written with NumPy one tensor at a time.

def checkpoint_shapes(n_layer, n_head, n_embd, n_ctx, vocab_size):
    """Tensor name -> shape, in the hub file's order (with the h.N.attn.bias mask buffers)."""
    E, P = n_embd, n_ctx
    shapes = {"wte.weight": (vocab_size, E), "wpe.weight": (P, E)}
    for i in range(n_layer):
        p = f"h.{i}."
        shapes.update({
            p + "ln_1.weight": (E,), p + "ln_1.bias": (E,), p + "attn.bias": (1, 1, P, P),
            p + "attn.c_attn.weight": (E, 3 * E), p + "attn.c_attn.bias": (3 * E,),
            p + "attn.c_proj.weight": (E, E), p + "attn.c_proj.bias": (E,),
            p + "ln_2.weight": (E,), p + "ln_2.bias": (E,),
            p + "mlp.c_fc.weight": (E, 4 * E), p + "mlp.c_fc.bias": (4 * E,),
            p + "mlp.c_proj.weight": (4 * E, E), p + "mlp.c_proj.bias": (E,),
        })
    shapes["ln_f.weight"] = (E,)
    shapes["ln_f.bias"] = (E,)
    return shapes


def random_tensor(name, shape, rng):
    """GPT-2-like initial values: N(0, 0.02) weights, LayerNorm gains near 1, causal mask buffers."""
    if name.endswith(".attn.bias"):
        return np.tril(np.ones(shape[-2:], np.float32)).reshape(shape)
    if ".ln_" in name or name.startswith("ln_f"):
        base = 1.0 if name.endswith("weight") else 0.0
        return (base + 0.05 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
    return (0.02 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)


def write_checkpoint(directory, cfg, seed=0):
    """model.safetensors (hub layout: unpadded header, so the data block is unaligned) + config.json."""
    os.makedirs(directory, exist_ok=True)
    shapes = checkpoint_shapes(cfg["n_layer"], cfg["n_head"], cfg["n_embd"], cfg["n_ctx"], cfg["vocab_size"])
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in shapes.items():
        nbytes = 4 * int(np.prod(shape))
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    head = json.dumps(header, separators=(",", ":")).encode()
    rng = np.random.default_rng(seed)
    path = os.path.join(directory, "model.safetensors")
    with open(path + ".tmp", "wb") as f:
        f.write(len(head).to_bytes(8, "little"))
        f.write(head)
        for name, shape in shapes.items():  # one tensor in memory at a time
            f.write(random_tensor(name, shape, rng).astype("<f4").tobytes())
    os.replace(path + ".tmp", path)
    config = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
              "n_layer": cfg["n_layer"], "n_head": cfg["n_head"], "n_embd": cfg["n_embd"],
              "n_ctx": cfg["n_ctx"], "n_positions": cfg["n_ctx"], "vocab_size": cfg["vocab_size"],
              "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
              "bos_token_id": cfg["vocab_size"] - 1, "eos_token_id": cfg["vocab_size"] - 1,
              "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
              "tie_word_embeddings": True}
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(directory, "bench-config.json"), "w") as f:
        json.dump(_model_part(cfg), f)


def _model_part(cfg):
    return {k: cfg[k] for k in ("n_layer", "n_head", "n_embd", "n_ctx", "vocab_size")}


def ensure_checkpoint(directory, cfg):
    """Write the checkpoint unless `directory` already holds one for the same config."""
    marker = os.path.join(directory, "bench-config.json")
    if os.path.isfile(marker) and os.path.isfile(os.path.join(directory, "model.safetensors")):
        with open(marker) as f:
            if json.load(f) == _model_part(cfg):
                return False
    write_checkpoint(directory, cfg)
    return True


def warm_page_cache(path):
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


# ----------------------------------------------------------------------------------------
# Workers: one process per side, driven line by line over stdin/stdout (JSON).

def peak_rss_bytes():
    """Peak resident set size of this process (VmHWM), bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def prompt_tokens(batch, T, vocab_size, seed=1):
    return np.random.default_rng(seed).integers(0, vocab_size - 1, size=(batch, T))


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

    def info(self):
        info = {"numpy": np.__version__}
        try:
            blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
            info["blas"] = f"{blas.get('name')} {blas.get('version')}"
        except Exception:  # show_config's format is not a stable API
            pass
        info["blas kernel"] = blas_kernel()
        return info


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

    def info(self):
        return {"torch": self.torch.__version__, "transformers": self.transformers.__version__,
                "torch_threads": self.torch.get_num_threads(),
                "attn_implementation": self.model.config._attn_implementation,
                **torch_blas(self.torch)}


def blas_kernel():
    """The BLAS NumPy loaded, as threadpoolctl sees it: "openblas 0.3.31 SkylakeX, pthreads, 2
    threads" (the kernel OpenBLAS picked for this CPU), or why it cannot be told."""
    try:
        import threadpoolctl
    except ImportError:
        return "unknown (pip install threadpoolctl to see it)"
    found = [f"{i.get('internal_api')} {i.get('version')} {i.get('architecture', '')}, "
             f"{i.get('threading_layer')}, {i.get('num_threads')} threads"
             for i in threadpoolctl.threadpool_info() if i.get("user_api") == "blas"]
    return "; ".join(found) or "none found"


def torch_blas(torch):
    """PyTorch's BLAS (from its build configuration) and the CPU kernels it dispatches to."""
    config = torch.__config__.show()
    blas = next((part.split("=", 1)[1] for part in config.replace("\n", ",").split(",")
                 if part.strip().startswith("BLAS_INFO=")), "unknown")
    return {"blas": blas, "cpu capability": torch.backends.cpu.get_cpu_capability()}


def worker(side_name, directory, threads):
    """Load, report the load time to first logits, then answer timing requests until EOF."""
    if side_name == "numpy":
        numpy_gpt2.threads.set_threads(threads)  # its own pool: as many threads as PyTorch's
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
        else:
            tokens = prompt_tokens(request["batch"], request["T"], vocab_size)
            start = time.perf_counter()
            stopped = None
            if request["op"] == "prefill":
                side.prefill(tokens)
            elif request["op"] == "prefill_all":
                side.prefill_all(tokens)
            elif request["op"] == "early_stop":
                stopped = side.decode_early_stop(tokens, request["n_early"], request["new_tokens"],
                                                 request["compact"])
            else:
                side.decode(tokens, request["new_tokens"])
            reply = {"seconds": time.perf_counter() - start, "stopped": stopped}
        print(json.dumps(reply), flush=True)


class Worker:
    """The parent's handle on one worker process."""

    def __init__(self, side, directory, threads):
        env = dict(os.environ)
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(threads)  # same thread count for both sides, set before the BLAS loads
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", side, "--dir", directory,
             "--threads", str(threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.ready = self._read()

    def _read(self):
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"benchmark worker exited with code {self.proc.wait()}")
        return json.loads(line)

    def ask(self, **request):
        time.sleep(0.05)  # let the other side's idle BLAS/OpenMP threads stop spinning
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


# ----------------------------------------------------------------------------------------
# The parent: interleave repetitions of the two sides, take medians, print.

def run(cfg, directory, threads, with_torch):
    sides = ["numpy"] + (["torch"] if with_torch else [])
    warm_page_cache(os.path.join(directory, "model.safetensors"))
    workers = {s: Worker(s, directory, threads) for s in sides}
    load = {s: [workers[s].ready["load_seconds"]] for s in sides}
    rows = []
    tasks = [("prefill", f"prefill T={T}", dict(op="prefill", batch=1, T=T), T) for T in cfg["prefill"]]
    tasks += [("prefill", f"prefill T={T}, all logits", dict(op="prefill_all", batch=1, T=T), T)
              for T in cfg["prefill_all"]]
    tasks += [("decode", f"decode b{B}", dict(op="decode", batch=B, T=cfg["prompt"],
                                               new_tokens=cfg["new_tokens"]), B * cfg["new_tokens"])
              for B in cfg["batches"]]
    for kind, label, request, n_tokens in tasks:
        for s in sides:  # warm-up (first-touch allocations, BLAS thread start); decode: a short one
            workers[s].ask(**dict(request, new_tokens=min(8, request.get("new_tokens", 0))))
        seconds = {s: [] for s in sides}
        for _ in range(cfg["reps"]):
            for s in sides:
                seconds[s].append(workers[s].ask(**request)["seconds"])
        rows.append(_row(label, "tokens/s" if kind == "prefill" else "new tokens/s",
                         {s: n_tokens / statistics.median(v) for s, v in seconds.items()}, higher=True))
        r = rows[-1]  # progress on stderr, for people watching a long run
        print(f"  {label}: numpy_gpt2 {r['numpy_gpt2']:.1f}, PyTorch {r['pytorch'] or 0:.1f}, "
              f"ratio {r.get('ratio', 0):.2f}", file=sys.stderr, flush=True)
    compaction = early_stop_rows(workers["numpy"], cfg)
    rss = {s: workers[s].ask(op="rss")["peak_rss"] / 2**20 for s in sides}
    info = {s: workers[s].ready["info"] for s in sides}
    for w in workers.values():
        w.close()
    for _ in range(cfg["reps"] - 1):  # more load samples: fresh processes, load and exit
        for s in sides:
            w = Worker(s, directory, threads)
            load[s].append(w.ready["load_seconds"])
            w.close()
    rows.append(_row("load to first logits", "s", {s: statistics.median(v) for s, v in load.items()},
                     higher=False))
    rows.append(_row("peak RSS", "MiB", rss, higher=False))
    weight_bytes = 4 * sum(int(np.prod(shape)) for name, shape in checkpoint_shapes(**_model_part(cfg)).items()
                           if not name.endswith(".attn.bias"))
    return {"rows": rows, "compaction": compaction, "info": info, "threads": threads,
            "weights_mib": weight_bytes / 2**20,
            "pytorch": with_torch, "machine": machine_info(), "model": _model_part(cfg),
            "reps": cfg["reps"]}


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


def _row(label, unit, values, higher):
    row = {"what": label, "unit": unit, "numpy_gpt2": values["numpy"], "pytorch": values.get("torch")}
    if row["pytorch"]:
        # Ratio numpy_gpt2 / PyTorch: for speeds > 1 means numpy_gpt2 is faster; for
        # seconds and bytes < 1 means numpy_gpt2 is better.
        row["ratio"] = row["numpy_gpt2"] / row["pytorch"]
    row["higher_is_better"] = higher
    return row


def machine_info():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    env = {k: v for k, v in os.environ.items() if k.startswith("OPENBLAS_") and k != "OPENBLAS_NUM_THREADS"}
    return {"cpu": cpu, "cpus": numpy_gpt2.threads.cpu_count(), "python": platform.python_version(),
            "openblas_env": env, "load_avg_at_end": os.getloadavg()}


def print_table(result):
    m = result["machine"]
    print(f"model {result['model']}  float32 weights {result['weights_mib']:.0f} MiB")
    print(f"machine: {m['cpu']}, {m['cpus']} CPUs, threads per side {result['threads']}, "
          f"Python {m['python']}, OPENBLAS_* env {m['openblas_env'] or 'unset'}")
    for side, info in result["info"].items():
        print(f"  {side}: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    if not result["pytorch"]:
        print("PyTorch/transformers not measured (not installed or --numpy-only): numpy_gpt2 alone.")
    print(f"medians of {result['reps']} repetitions; ratio = numpy_gpt2 / PyTorch")
    print(f"{'':22} {'unit':>13} {'numpy_gpt2':>11} {'PyTorch':>9} {'ratio':>7}")
    for r in result["rows"]:
        fmt = "{:.3f}" if r["unit"] == "s" else "{:.1f}"
        torch_val = fmt.format(r["pytorch"]) if r["pytorch"] else "-"
        ratio = f"{r['ratio']:.2f}" if r.get("ratio") else "-"
        print(f"{r['what']:22} {r['unit']:>13} {fmt.format(r['numpy_gpt2']):>11} {torch_val:>9} {ratio:>7}")
    c = result["compaction"]
    print(f"{c['what']} (numpy_gpt2.generate, greedy, {c['stopped']} rows stopped at step {c['stop_step']} "
          f"of {c['new_tokens']}): finished rows dropped {c['seconds_compact']:.3f} s, computed to the end "
          f"{c['seconds_no_compact']:.3f} s, speed-up {c['speedup']:.2f}x")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in m['load_avg_at_end'])}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", help="checkpoint directory (written once, reused); default: a temporary one")
    ap.add_argument("--threads", type=int, default=numpy_gpt2.threads.cpu_count(),
                    help="threads per side (default: the CPUs this process may use)")
    ap.add_argument("--reps", type=int, help="repetitions per row (default 3; smoke 2)")
    ap.add_argument("--smoke", action="store_true", help="tiny config, runs in seconds (CI)")
    ap.add_argument("--numpy-only", action="store_true", help="do not measure PyTorch")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    ap.add_argument("--train", action="store_true", help="training rows instead: one optimizer step "
                    "(forward + backward + clip + AdamW), numpy_gpt2 vs PyTorch (scripts/bench_train.py)")
    ap.add_argument("--rows", help="with --train: comma-separated subset of shakespeare,124M-T64,124M-T1024")
    ap.add_argument("--xl-dir", metavar="DIR", help="start-up rows instead: process start to the first "
                    "token, gpt2-xl shape (6.4 GB, written once into DIR) and 124M (scripts/bench_startup.py)")
    ap.add_argument("--worker", choices=["numpy", "torch"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.xl_dir:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import bench_startup
        with_torch = not args.numpy_only and all(importlib.util.find_spec(m) for m in ("torch", "transformers"))
        result = bench_startup.run_startup(args.xl_dir, args.threads, args.reps or 5, with_torch)
        return print(json.dumps(result, indent=1)) if args.json else bench_startup.print_startup_table(result)
    if args.train:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import bench_train
        return bench_train.main(args)
    if args.worker:
        return worker(args.worker, args.dir, args.threads)
    cfg = dict(SMOKE if args.smoke else FULL)
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
