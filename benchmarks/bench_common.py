"""What the benchmarks share: the checkpoint writer, the worker-process handle, peak RSS,
machine information and the row format. Imported by bench.py, bench_startup.py and
bench_train.py (imports point one way: bench.py -> bench_startup.py, bench_train.py -> this).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def import_numpy_gpt2():
    """numpy_gpt2: the installed package, else the one in this checkout (next to benchmarks/).
    A function, not an import at the top: the PyTorch workers must not pay for it."""
    try:
        import numpy_gpt2
    except ImportError:  # not pip-installed
        sys.path.insert(0, ROOT)
        import numpy_gpt2
    import numpy_gpt2.fast.forward  # noqa: F401
    import numpy_gpt2.fast.threads  # noqa: F401  (the public API loads lazily; the benchmarks
    import numpy_gpt2.io.formats.tensor_copy  # noqa: F401  also use these modules by their full names)
    return numpy_gpt2

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
        json.dump(model_part(cfg), f)


def model_part(cfg):
    return {k: cfg[k] for k in ("n_layer", "n_head", "n_embd", "n_ctx", "vocab_size")}


def ensure_checkpoint(directory, cfg):
    """Write the checkpoint unless `directory` already holds one for the same config."""
    marker = os.path.join(directory, "bench-config.json")
    if os.path.isfile(marker) and os.path.isfile(os.path.join(directory, "model.safetensors")):
        with open(marker) as f:
            if json.load(f) == model_part(cfg):
                return False
    write_checkpoint(directory, cfg)
    return True


def warm_page_cache(path):
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass



def peak_rss_bytes():
    """Peak resident set size of this process (VmHWM), bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Worker:
    """The parent's handle on one worker process: `argv` after the Python executable, run with
    the same BLAS/OpenMP thread count on both sides; it answers one JSON line per request."""

    def __init__(self, argv, threads):
        env = dict(os.environ)
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(threads)  # same thread count for both sides, set before the BLAS loads
        self.proc = subprocess.Popen([sys.executable, *argv], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)
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


def numpy_info():
    """The numpy_gpt2 side's library versions."""
    info = {"numpy": np.__version__}
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        info["blas"] = f"{blas.get('name')} {blas.get('version')}"
    except Exception:  # show_config's format is not a stable API
        pass
    info["blas kernel"] = blas_kernel()
    return info


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
    import re
    found = re.search(r"BLAS_INFO=(\w+)", config)  # "Build settings: BLAS_INFO=mkl, ..."
    blas = found.group(1) if found else "unknown"
    return {"blas": blas, "cpu capability": torch.backends.cpu.get_cpu_capability()}


def comparison_row(label, unit, values, higher):
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
    return {"cpu": cpu, "cpus": import_numpy_gpt2().fast.threads.cpu_count(), "python": platform.python_version(),
            "openblas_env": env, "load_avg_at_end": os.getloadavg()}

