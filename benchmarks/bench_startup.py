#!/usr/bin/env python
"""Start-up benchmark: process start to the first generated token, numpy_gpt2 vs transformers.

    python benchmarks/bench.py --xl-dir /tmp/xl            # gpt2-xl shape (6.4 GB) and gpt2 (124M)
    python benchmarks/bench.py --xl-dir /tmp/xl --reps 7 --json

--xl-dir DIR holds a 48-layer, 1600-wide checkpoint of random weights in the exact layout of
openai-community/gpt2-xl's model.safetensors (no prefix, mask buffers, unaligned data block;
6.4 GB), written once with NumPy and reused; the 124M-shaped one goes to DIR/gpt2-124m.
Each measurement is a fresh process (same OMP/OPENBLAS/MKL thread count on both sides) that
imports its library, loads the checkpoint and generates one greedy token after a 5-token
prompt:
  numpy_gpt2:   numpy_gpt2.load(dir), next(numpy_gpt2.generate(params, config, prompt, 1, temperature=0))
  transformers: GPT2LMHeadModel.from_pretrained(dir, dtype=float32), model.generate(prompt,
                max_new_tokens=1, do_sample=False) under torch.inference_mode
The two sides alternate (numpy, torch, numpy, torch, ...) so machine noise hits both alike; the
page cache is warmed before each shape. Reported: medians, and the spread (min..max).
  start -> token  from just before the process is spawned to the token (interpreter start,
                  imports, load, forward), the number a user waits for
  load            the load call alone (from_pretrained / load)
  load -> token   from the start of the load call to the token (imports excluded)
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

XL = dict(n_layer=48, n_head=25, n_embd=1600, n_ctx=1024, vocab_size=50257)
GPT2 = dict(n_layer=12, n_head=12, n_embd=768, n_ctx=1024, vocab_size=50257)
PROMPT = [464, 3616, 286, 1204, 318]  # "The meaning of life is"


def first_token(side: str, directory: str, threads: int) -> None:
    """Worker: import, load, one token; print the times (time.monotonic, system-wide) as JSON."""
    imported_at = time.monotonic()
    if side == "numpy":
        from bench_common import import_numpy_gpt2  # not at the top: the PyTorch worker's
        numpy_gpt2 = import_numpy_gpt2()            # timed start must not pay for it
        imported = time.monotonic()
        params, config = numpy_gpt2.load(directory)
        loaded = time.monotonic()
        token = next(numpy_gpt2.generate(params, config, PROMPT, 1, temperature=0))
        done, *check = finite_check_seconds(numpy_gpt2, params)
    else:
        import torch
        import transformers
        torch.set_num_threads(threads)
        imported = time.monotonic()
        model = transformers.GPT2LMHeadModel.from_pretrained(directory, dtype=torch.float32).eval()
        loaded = time.monotonic()
        with torch.inference_mode():
            ids = torch.tensor([PROMPT])
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=1,
                                 do_sample=False, pad_token_id=config_eos(directory))
        token = int(out[0, -1])
        done, check = time.monotonic(), None
    print(json.dumps({"python_started": imported_at, "imported": imported, "loaded": loaded,
                      "token_at": done, "token": token, "check": check}), flush=True)


def finite_check_seconds(numpy_gpt2, params):
    """(seconds, bytes) of load's NaN/inf check run alone, one thread, over the loaded weights
    (after the token, so it is not in the timings above). Inside load the same check runs on
    each chunk right after it is copied, while it is still in the CPU cache."""
    import numpy as np
    done = time.monotonic()
    flat = numpy_gpt2.flatten_params(params).values()
    start, n = time.monotonic(), numpy_gpt2.io.formats.tensor_copy.CHUNK_ELEMENTS
    for a in flat:
        a = a.reshape(-1)
        for i in range(0, a.size, n):
            numpy_gpt2.io.formats.tensor_copy._sum_is_finite(a[i:i + n])
    return done, time.monotonic() - start, sum(int(np.asarray(a).nbytes) for a in flat)


def config_eos(directory):
    with open(os.path.join(directory, "config.json")) as f:
        return json.load(f)["eos_token_id"]


def measure(side: str, directory: str, threads: int) -> dict:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    spawned = time.monotonic()
    out = subprocess.run([sys.executable, os.path.abspath(__file__), side, directory, str(threads)],
                         env=env, stdout=subprocess.PIPE, text=True, check=True).stdout
    t = json.loads(out.strip().splitlines()[-1])
    return {"start_to_token": t["token_at"] - spawned, "load": t["loaded"] - t["imported"],
            "load_to_token": t["token_at"] - t["imported"], "import": t["imported"] - spawned,
            "token": t["token"], "check_seconds": t["check"] and t["check"][0],
            "check_bytes": t["check"] and t["check"][1]}


def run_startup(xl_dir: str, threads: int, reps: int, with_torch: bool) -> dict:
    import bench_common  # the checkpoint writer and page-cache warmer (numpy: not in the workers)

    shapes = {"gpt2-xl shape (48 x 1600)": (xl_dir, XL),
              "gpt2 shape (124M)": (os.path.join(xl_dir, "gpt2-124m"), GPT2)}
    sides = ["numpy"] + (["torch"] if with_torch else [])
    result = {"threads": threads, "reps": reps, "machine": None, "shapes": {}}
    for label, (directory, cfg) in shapes.items():
        if bench_common.ensure_checkpoint(directory, dict(cfg)):
            print(f"  wrote {directory}", file=sys.stderr, flush=True)
        path = os.path.join(directory, "model.safetensors")
        start = time.monotonic()
        bench_common.warm_page_cache(path)
        warm = time.monotonic() - start
        runs = {s: [] for s in sides}
        for rep in range(reps):
            for s in sides:
                runs[s].append(measure(s, directory, threads))
                r = runs[s][-1]
                print(f"  {label} rep {rep + 1}/{reps} {s}: load {r['load']:.2f} s, "
                      f"token at {r['start_to_token']:.2f} s", file=sys.stderr, flush=True)
        result["shapes"][label] = {
            "file_bytes": os.path.getsize(path), "page_cache_warm_read_seconds": warm,
            "runs": runs,
            "median": {s: {k: statistics.median(r[k] for r in v) for k in
                           ("start_to_token", "load", "load_to_token", "import")}
                       for s, v in runs.items()},
            "same_token": len({r["token"] for v in runs.values() for r in v}) == 1}
    result["machine"] = bench_common.machine_info()
    return result


def print_startup_table(result: dict) -> None:
    m = result["machine"]
    print(f"machine: {m['cpu']}, {m['cpus']} CPUs, threads per side {result['threads']}; "
          f"medians of {result['reps']} fresh processes per side, interleaved (min..max)")
    print(f"{'':27} {'':15} {'numpy_gpt2':>19} {'PyTorch':>19} {'ratio':>6}")
    for label, r in result["shapes"].items():
        for k, what in [("load", "load"), ("load_to_token", "load -> token"),
                        ("start_to_token", "start -> token")]:
            cells = []
            for s in ("numpy", "torch"):
                if s not in r["runs"]:
                    cells.append(f"{'-':>19}")
                    continue
                v = [x[k] for x in r["runs"][s]]
                cells.append(f"{statistics.median(v):6.2f} ({min(v):.2f}..{max(v):.2f})".rjust(19))
            ratio = (f"{r['median']['numpy'][k] / r['median']['torch'][k]:6.2f}"
                     if "torch" in r["median"] else "     -")
            print(f"{label:27} {what:15} {cells[0]} {cells[1]} {ratio}")
        print(f"{'':27} file {r['file_bytes'] / 1e9:.2f} GB, warm-up read {r['page_cache_warm_read_seconds']:.1f} s, "
              f"same first token on both sides: {r['same_token']}")
        check = [x["check_seconds"] / x["check_bytes"] * 1e12 for x in r["runs"]["numpy"]]  # ms per GB
        load_ms_per_gb = r["median"]["numpy"]["load"] / r["runs"]["numpy"][0]["check_bytes"] * 1e12
        print(f"{'':27} NaN/inf check alone (1 thread, weights from memory): "
              f"{statistics.median(check):.0f} ms/GB, {statistics.median(check) / load_ms_per_gb:.0%} "
              f"of numpy_gpt2's load time ({load_ms_per_gb:.0f} ms/GB)")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in m['load_avg_at_end'])}")


if __name__ == "__main__":  # a worker process (the parent is benchmarks/bench.py --xl-dir)
    import argparse
    ap = argparse.ArgumentParser(description="One start-up measurement (a worker of "
                                 "benchmarks/bench.py --xl-dir, which runs the whole benchmark).")
    ap.add_argument("side", choices=["numpy", "torch"])
    ap.add_argument("directory", help="checkpoint directory")
    ap.add_argument("threads", type=int)
    a = ap.parse_args()
    first_token(a.side, a.directory, a.threads)
