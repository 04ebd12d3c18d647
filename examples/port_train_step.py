"""One GPT-2 training step on one screen: forward, cross-entropy and a backward pass by hand.

A "port" of what numpy_gpt2.loss_and_grads computes, in plain NumPy, written from the
equations in docs/learn.md. It saves the loss and every gradient (of each activation and each
weight) under its dump name, so that scripts/compare.py can check it against numpy_gpt2's
gradient dump (see docs/debugging.md):

    python scripts/dump.py --model tiny-gpt2 --prompt "Hello, my dog is cute" --grads --out ref.safetensors
    python examples/port_train_step.py --model tiny-gpt2 --ref ref.safetensors --out port.safetensors
    python scripts/compare.py ref.safetensors port.safetensors --names 'loss,grad.*'

With --bug, its LayerNorm backward treats the mean and the variance as constants (a classic
mistake), and compare.py's FIRST FAILURE names grad.h.{L-1}, the input of ln_f: the first
LayerNorm the backward pass meets.
"""
import argparse
import os
import sys
import math

import numpy as np

try:
    from numpy_gpt2 import load, load_dump, resolve_model, save_activations
except ImportError:  # run from a checkout without `pip install -e .`
    import os, sys
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.realpath(__file__)), os.pardir))
    from numpy_gpt2 import load, load_dump, resolve_model, save_activations

C = math.sqrt(2 / math.pi)


def gelu(x):
    return 0.5 * x * (1 + np.tanh(C * (x + 0.044715 * x**3)))


def gelu_back(d, x):  # the exact derivative of the tanh form
    t = np.tanh(C * (x + 0.044715 * x**3))
    return d * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * C * (1 + 3 * 0.044715 * x * x))


def ln(x, p, eps=1e-5):
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps) * p["weight"] + p["bias"]


def dense(x, p):
    return x @ p["weight"] + p["bias"]


def train_step(tokens, targets, params, n_head, bug=False):
    """(loss, {dump name without "grad.": dloss/d(that)}) for one sequence (T,)."""
    g = {}  # g[name] = dloss/d(name): activations and weights

    def ln_back(d, x, p, name, eps=1e-5):
        rstd = 1 / np.sqrt(x.var(-1, keepdims=True) + eps)
        xhat = (x - x.mean(-1, keepdims=True)) * rstd
        g[name + ".weight"], g[name + ".bias"] = (d * xhat).sum(0), d.sum(0)
        dh = d * p["weight"]
        if bug:  # BUG: leaves out "- mean(dh) - xhat * mean(dh * xhat)", the paths through mean and var
            return dh * rstd
        return (dh - dh.mean(-1, keepdims=True) - xhat * (dh * xhat).mean(-1, keepdims=True)) * rstd

    def dense_back(d, x, p, name):
        g[name + ".weight"], g[name + ".bias"] = x.T @ d, d.sum(0)
        return d @ p["weight"].T

    T, H, L = len(tokens), n_head, len(params["h"])
    E = params["wte"]["weight"].shape[1]
    wte, keep = params["wte"]["weight"], targets != -100
    x, saved = wte[tokens] + params["wpe"]["weight"][:T], []
    for b in params["h"]:  # forward, keeping what the backward needs
        x0, h1 = x, ln(x, b["ln_1"])
        q, k, v = (a.reshape(T, H, -1).transpose(1, 0, 2) for a in np.split(dense(h1, b["attn"]["c_attn"]), 3, -1))
        s = q @ k.transpose(0, 2, 1) / math.sqrt(E // H) + np.triu(np.full((T, T), -np.inf), 1)
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        y = (p @ v).transpose(1, 0, 2).reshape(T, E)
        x = x1 = x + dense(y, b["attn"]["c_proj"])
        h2 = ln(x, b["ln_2"])
        f = dense(h2, b["mlp"]["c_fc"])
        x = x + dense(gelu(f), b["mlp"]["c_proj"])
        saved.append((x0, h1, q, k, v, p, y, x1, h2, f))
    hf = ln(x, params["ln_f"])
    z = hf @ wte.T
    probs = np.exp(z - z.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    loss = -np.log(probs[keep, targets[keep]]).mean()  # mean cross-entropy of the kept targets
    probs[keep, targets[keep]] -= 1  # backward: dloss/dz = (softmax - onehot) / N
    d = g["logits"] = probs * keep[:, None] / keep.sum()
    g["wte.weight"] = d.T @ hf  # the tied head's part of wte's gradient
    g["ln_f"] = d @ wte
    d = g[f"h.{L-1}"] = ln_back(g["ln_f"], x, params["ln_f"], "ln_f")
    for i in reversed(range(L)):
        b, (x0, h1, q, k, v, p, y, x1, h2, f), n = params["h"][i], saved[i], f"h.{i}."
        g[n + "mlp.c_proj"] = d
        g[n + "mlp.gelu"] = dense_back(d, gelu(f), b["mlp"]["c_proj"], n + "mlp.c_proj")
        g[n + "mlp.c_fc"] = gelu_back(g[n + "mlp.gelu"], f)
        g[n + "ln_2"] = dense_back(g[n + "mlp.c_fc"], h2, b["mlp"]["c_fc"], n + "mlp.c_fc")
        d = g[n + "attn"] = d + ln_back(g[n + "ln_2"], x1, b["ln_2"], n + "ln_2")
        dy = dense_back(d, y, b["attn"]["c_proj"], n + "attn.c_proj").reshape(T, H, -1).transpose(1, 0, 2)
        dp = dy @ v.transpose(0, 2, 1)
        ds = p * (dp - (dp * p).sum(-1, keepdims=True)) / math.sqrt(E // H)
        dqkv = [ds @ k, ds.transpose(0, 2, 1) @ q, p.transpose(0, 2, 1) @ dy]
        g[n + "attn.c_attn"] = np.concatenate([a.transpose(1, 0, 2).reshape(T, E) for a in dqkv], -1)
        g[n + "ln_1"] = dense_back(g[n + "attn.c_attn"], h1, b["attn"]["c_attn"], n + "attn.c_attn")
        d = g[f"h.{i-1}" if i else "wte"] = d + ln_back(g[n + "ln_1"], x0, b["ln_1"], n + "ln_1")
    g["wpe"], g["wpe.weight"] = d, np.zeros_like(params["wpe"]["weight"])
    g["wpe.weight"][:T] = d
    np.add.at(g["wte.weight"], tokens, d)  # the embedding's part: a scatter-add over the tokens
    return loss, g


def fail(error):
    print(f"{os.path.basename(sys.argv[0])}: error: {' '.join(str(error).split())}", file=sys.stderr)
    sys.exit(2)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny-gpt2", help="checkpoint directory, file or hub name")
    p.add_argument("--ref", default="ref.safetensors", help="a gradient dump whose tokens and targets to use")
    p.add_argument("--out", default="port.safetensors", help="where to write this port's dump")
    p.add_argument("--bug", action="store_true", help="LayerNorm backward without its mean terms")
    args = p.parse_args()
    try:  # a missing or unreadable file, or a model that cannot load: one line, exit status 2
        ref = load_dump(args.ref)  # the same tokens and targets as the reference
        tokens, targets = ref["tokens"], ref["targets"]
        if targets is None:
            raise ValueError(f"--ref {args.ref}: no targets: not a gradient dump (make one with "
                             f"scripts/dump.py --grads)")
        params, config = load(resolve_model(args.model))
    except (OSError, ValueError) as e:
        fail(e)
    loss, g = train_step(tokens, targets, params, config.n_head, bug=args.bug)
    save_activations(args.out, tokens, {"grad." + n: a.astype(np.float32) for n, a in g.items()},
                     {"model": "my-port", "dtype": "float32"}, targets=targets, loss=loss)


if __name__ == "__main__":
    main()
