"""GPT-2's forward pass on one screen, written from the papers in plain NumPy.

Which forward this is: the first of four. This one is the whole model in the fewest lines,
for someone writing a port (C, Rust, JAX, CUDA); numpy_gpt2/layers.py is the reference, one
function per equation, that the library tests against PyTorch; numpy_gpt2/fast/forward.py is
what inference runs, the same equations arranged for speed; numpy_gpt2/fast/training.py is
the forward of training, which keeps what the backward pass needs. All four agree.

It computes token and position embeddings, n_layer pre-LayerNorm blocks (causal multi-head
attention, then a GELU MLP, each added to the residual stream), a final LayerNorm and the
tied output head, keeping every intermediate under its dump name, so that `numpy-gpt2
compare` can check it against numpy_gpt2's own dump (see docs/debugging.md):

    numpy-gpt2 dump --model tiny-gpt2 --prompt "Hello, my dog is cute" --out ref.safetensors
    python examples/port_forward.py --model tiny-gpt2 --ref ref.safetensors --out port.safetensors
    numpy-gpt2 compare ref.safetensors port.safetensors        # OK: all ... within tolerance

With --bug it makes the classic porting mistake: the exact erf GELU instead of GPT-2's tanh
approximation, and compare's FIRST FAILURE names h.0.mlp.gelu.
"""
import argparse
import os
import sys
import math

import numpy as np

try:
    from numpy_gpt2 import load, load_activations, resolve_model, save_activations
except ImportError:  # run from a checkout without `pip install -e .`
    import os, sys
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.realpath(__file__)), os.pardir))
    from numpy_gpt2 import load, load_activations, resolve_model, save_activations


def gelu(x):  # GPT-2's GELU: the tanh approximation (Hendrycks and Gimpel 2016)
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def gelu_erf(x):  # the exact GELU (BERT's): the bug --bug plants
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def layer_norm(x, p, eps=1e-5):  # (x - mean) / sqrt(var + eps) * gain + bias, over features
    m = x.mean(-1, keepdims=True)
    v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / np.sqrt(v + eps) * p["weight"] + p["bias"]


def linear(x, p):  # GPT-2 stores weights (in, out): y = x W + b
    return x @ p["weight"] + p["bias"]


def gpt2(tokens, params, n_head, act=gelu):
    """{dump name: activation} for one sequence of token ids (T,); acts["logits"] is (T, V)."""
    T, H = len(tokens), n_head
    acts = {"wte": params["wte"]["weight"][tokens], "wpe": params["wpe"]["weight"][:T]}
    x = acts["wte"] + acts["wpe"]
    for i, b in enumerate(params["h"]):
        h = acts[f"h.{i}.ln_1"] = layer_norm(x, b["ln_1"])
        qkv = acts[f"h.{i}.attn.c_attn"] = linear(h, b["attn"]["c_attn"])  # [q | k | v]
        q, k, v = (a.reshape(T, H, -1).transpose(1, 0, 2) for a in np.split(qkv, 3, axis=-1))
        s = q @ k.transpose(0, 2, 1) / math.sqrt(q.shape[-1])           # (H, T, T) scores
        s = s + np.triu(np.full((T, T), -np.inf), 1)                   # causal: no future keys
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)                                  # softmax over keys
        a = acts[f"h.{i}.attn"] = linear((p @ v).transpose(1, 0, 2).reshape(T, -1), b["attn"]["c_proj"])
        x = x + a
        h = acts[f"h.{i}.ln_2"] = layer_norm(x, b["ln_2"])
        f = acts[f"h.{i}.mlp.c_fc"] = linear(h, b["mlp"]["c_fc"])
        g = acts[f"h.{i}.mlp.gelu"] = act(f)
        m = acts[f"h.{i}.mlp.c_proj"] = linear(g, b["mlp"]["c_proj"])
        x = acts[f"h.{i}"] = x + m
    acts["ln_f"] = layer_norm(x, params["ln_f"])
    acts["logits"] = acts["ln_f"] @ params["wte"]["weight"].T           # the tied output head
    return acts


def fail(error):
    print(f"{os.path.basename(sys.argv[0])}: error: {' '.join(str(error).split())}", file=sys.stderr)
    sys.exit(2)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny-gpt2", help="checkpoint directory, file or hub name")
    p.add_argument("--ref", default="ref.safetensors", help="a dump whose tokens to run")
    p.add_argument("--out", default="port.safetensors", help="where to write this port's dump")
    p.add_argument("--bug", action="store_true", help="use the exact erf GELU (a porting bug)")
    args = p.parse_args()
    try:  # a missing or unreadable file, or a model that cannot load: one line, exit status 2
        tokens, _, _ = load_activations(args.ref)  # the same input as the reference
        params, config = load(resolve_model(args.model))
    except (OSError, ValueError) as e:
        fail(e)
    acts = gpt2(tokens, params, config.n_head, act=gelu_erf if args.bug else gelu)
    save_activations(args.out, tokens, {n: a.astype(np.float32) for n, a in acts.items()},
                     {"model": "my-port", "dtype": "float32"})


if __name__ == "__main__":
    main()
