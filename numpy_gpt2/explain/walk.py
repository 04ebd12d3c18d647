"""The numbers of the explain page: one forward (and, with a target, one backward) pass of a
prompt, gathered into one JSON-able dict, section by section. Every number comes from the
library's own functions (numpy_gpt2.activations and .gradients, layers.layer_norm and
.softmax, the sampling filters, layers_backward); the few values that the forward pass does
not record yet (one head's q, k, v, its score stages, the LayerNorm statistics) are
recomputed here from the recorded ones, and tests/explain/test_explain.py checks that they rebuild
the recorded values. The HTML is numpy_gpt2.explain.page's job; this module knows no HTML.
"""

from __future__ import annotations

import numpy as np

from numpy_gpt2.checks import is_int
from numpy_gpt2.config import GPT2Config
from numpy_gpt2.debug.capture import IGNORE_INDEX, activations, gradient_names, gradients
from numpy_gpt2.generation.checks import check_sampling_args
from numpy_gpt2.generation.sampling import (apply_temperature, softmax, top_k_filter,
                                            top_p_filter)
from numpy_gpt2 import layers
from numpy_gpt2.layers import causal_mask, layer_norm
from numpy_gpt2.layers_backward import layer_norm_backward, transformer_block_backward

ROW_DIMS = 8        # the labelled rows of a big (T, E) tensor show its first 8 dimensions
TOP_NEURONS = 5     # the MLP's most active neurons shown per position
SHOWN_TOKENS = 10   # tokens in the output tables


def token_text(tokenizer, token: int) -> str:
    """One token's text (its bytes as UTF-8; a partial character as U+FFFD)."""
    return tokenizer.decode([int(token)])


def check_explain_args(config: GPT2Config, n_tokens: int, layer, head, temperature, top_k, top_p,
                       n_target: int = 0) -> None:
    """ValueError naming the first bad argument: an empty prompt, a prompt (plus target)
    longer than n_ctx, layer/head outside the model, bad sampling settings."""
    if n_tokens == 0:
        raise ValueError("prompt is empty: give some text to explain")
    if n_tokens + max(n_target - 1, 0) > config.n_ctx:
        extra = f" plus {n_target - 1} target tokens" if n_target > 1 else ""
        raise ValueError(f"prompt is {n_tokens} tokens{extra}, longer than the model's context "
                         f"of {config.n_ctx} tokens (n_ctx)")
    if not is_int(layer) or not 0 <= layer < config.n_layer:
        raise ValueError(f"layer must be an integer in 0..{config.n_layer - 1} (n_layer "
                         f"{config.n_layer}), got {layer!r}")
    if not is_int(head) or not 0 <= head < config.n_head:
        raise ValueError(f"head must be an integer in 0..{config.n_head - 1} (n_head "
                         f"{config.n_head}), got {head!r}")
    check_sampling_args(0, temperature, top_k, top_p)


def layer_norm_stats(x, eps):
    """The per-position statistics of LayerNorm(x) = (x - mean) / sqrt(var + eps) * w + b:
    x (T, E) -> mean (T,), biased var (T,), scale 1 / sqrt(var + eps) (T,)."""
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=-1)
    var = ((x - mean[:, None]) ** 2).mean(axis=-1)
    return mean, var, 1.0 / np.sqrt(var + eps)


def head_stages(c_attn_out, n_head: int, head: int, scale: float):
    """One head's attention, stage by stage, from the recorded [q | k | v] = ln_1(x) W + b
    (h.{i}.attn.c_attn, (T, 3E)); D = E / n_head:

        q, k, v  (T, D)   columns head*D .. (head+1)*D of each third
        scores   = q k^T               (T, T)
        scaled   = scores * scale      (scale = 1/sqrt(D) for GPT-2)
        masked   = scaled, -inf where key > query (the causal mask)
        probs    = softmax(masked)     (rows sum to 1; = h.{i}.attn.softmax[head])
        z        = probs v             (T, D)
    """
    T, E3 = c_attn_out.shape
    E = E3 // 3
    D = E // n_head
    q, k, v = (c_attn_out[:, part * E + head * D: part * E + (head + 1) * D] for part in range(3))
    scores = q @ k.T
    scaled = scores * scale
    masked = np.where(causal_mask(T, T), scaled, -np.inf)
    probs = layers.softmax(masked)
    return {"q": q, "k": k, "v": v, "scores": scores, "scaled": scaled, "masked": masked,
            "probs": probs, "z": probs @ v}


def logit_lens(params, config, residuals):
    """The logit lens (nostalgebraist 2020): each residual stream read through the final
    LayerNorm and the output head, as if the model ended there.
    residuals: [(T, E)] -> per residual (top token (T,), its probability (T,))."""
    head = params["lm_head"]["weight"] if "lm_head" in params else params["wte"]["weight"]
    out = []
    for x in residuals:
        logits = layer_norm(x, **params["ln_f"], eps=config.layer_norm_epsilon) @ head.T
        top = logits.argmax(axis=-1)
        # the top token's softmax probability, 1 / sum(exp(logits - max)), without the (T, V) softmax
        shifted = logits.astype(np.float64) - logits[np.arange(len(top)), top][:, None]
        out.append((top, 1.0 / np.exp(shifted).sum(axis=-1)))
    return out


def logit_gradient(params, config, block_inputs, final, position: int, token: int):
    """d logits[position, token] / d x0, x0 = wte[tokens] + wpe[positions] (T, E): the chain
    rule back from one logit through ln_f and every block (layers_backward's readable
    functions). block_inputs: the input (T, E) of each block; final: the last block's output."""
    head = params["lm_head"]["weight"] if "lm_head" in params else params["wte"]["weight"]
    dh = np.zeros((1,) + final.shape, dtype=final.dtype)
    dh[0, position] = head[token]  # d logit / d ln_f output = the token's row of the head
    dx, _ = layer_norm_backward(dh, final[None], params["ln_f"]["weight"], config.layer_norm_epsilon)
    for i in reversed(range(config.n_layer)):
        dx, _ = transformer_block_backward(dx, block_inputs[i][None], params["h"][i], config.n_head,
                                           config.layer_norm_epsilon, **config.block_options(i))
    return dx[0]


def sampling_table(logits, temperature, top_k, top_p, shown: int = SHOWN_TOKENS):
    """The last position's next-token distribution, then after each of generate's filters
    (temperature, top-k, top-p, in that order): the `shown` most likely tokens' probabilities
    at every stage, and how many tokens each stage keeps. temperature 0 is greedy."""
    base = apply_temperature(logits, 1.0)
    stages = [("softmax(logits)", base)]
    if temperature == 0:
        greedy = np.full_like(base, -np.inf)
        greedy[np.argmax(base)] = 0.0
        stages.append(("temperature 0 (greedy: argmax)", greedy))
    else:
        x = apply_temperature(logits, temperature)
        stages.append((f"temperature {temperature:g}", x))
        if top_k is not None:
            x = top_k_filter(x, top_k)
            stages.append((f"top-k {top_k}", x))
        if top_p is not None and top_p < 1.0:
            x = top_p_filter(x, top_p)
            stages.append((f"top-p {top_p:g}", x))
    order = np.argsort(-base, kind="stable")[:shown]
    out = []
    for name, x in stages:
        p = softmax(x)
        out.append({"stage": name, "probs": p[order], "kept": int(np.isfinite(x).sum())})
    return order, out


def walk(params: dict, config: GPT2Config, tokenizer, prompt: str, *, layer: int = 0, head: int = 0,
         target: str | None = None, top_k=40, temperature=0.8, top_p=0.95) -> dict:
    """All the numbers of the page for `prompt` (see explain_page): a dict of NumPy arrays,
    lists and numbers, keyed by section. tokenizer: a numpy_gpt2.bpe.Encoder (its explain()
    shows the merges). ValueError for bad arguments (check_explain_args), before any work."""
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a str, got {type(prompt).__name__}")
    pieces = tokenizer.explain(prompt, allowed_special="all")  # as generate and dump: <|endoftext|> is 50256
    ids = [i for p in pieces for i in p["ids"]]
    target_ids = tokenizer.encode(target, allowed_special="all") if target else []
    if target is not None and not target_ids:
        raise ValueError("target is empty: give the text you expect after the prompt")
    check_explain_args(config, len(ids), layer, head, temperature, top_k, top_p, len(target_ids))
    tokens = np.asarray(ids, dtype=np.int64)
    T, L, H, eps = len(ids), config.n_layer, config.n_head, config.layer_norm_epsilon
    acts = activations(params, config, tokens, "*,*softmax")
    d = {"tokens": {"ids": ids, "texts": [token_text(tokenizer, i) for i in ids],
                    "pieces": [{"text": p["text"], "symbols": p["symbols"], "ids": p["ids"],
                                "steps": [{"pair": list(s["pair"]), "rank": s["rank"],
                                           "symbols": s["symbols"]} for s in p["steps"]]}
                               for p in pieces]}}
    x0 = acts["wte"] + acts["wpe"]
    d["embeddings"] = {name: {"rows": a[:, :ROW_DIMS], "norm": np.linalg.norm(a, axis=-1), "img": a}
                       for name, a in (("wte", acts["wte"]), ("wpe", acts["wpe"]), ("sum", x0))}

    inputs = [x0] + [acts[f"h.{i}"] for i in range(L - 1)]
    blocks = []
    for i in range(L):
        mean, var, scale = layer_norm_stats(inputs[i], eps)
        mid = inputs[i] + acts[f"h.{i}.attn"]
        probs = acts[f"h.{i}.attn.softmax"]  # (H, T, T)
        entropy = -(np.where(probs > 0, probs * np.log(np.where(probs > 0, probs, 1)), 0)).sum(-1)
        blocks.append({
            "ln_1": {"mean": mean, "var": var, "scale": scale},
            "resid_norm": {"in": np.linalg.norm(inputs[i], axis=-1), "mid": np.linalg.norm(mid, axis=-1),
                           "out": np.linalg.norm(acts[f"h.{i}"], axis=-1)},
            "img_attn": probs, "attn_entropy": entropy.mean(axis=-1),
            "attn_norm": np.linalg.norm(acts[f"h.{i}.attn"], axis=-1),
            "mlp_norm": np.linalg.norm(acts[f"h.{i}.mlp.c_proj"], axis=-1),
        })
    d["layers"] = blocks

    # the chosen layer and head, in detail
    i = layer
    st = head_stages(acts[f"h.{i}.attn.c_attn"], H, head, config.attention_scale(i))
    D = config.n_embd // H
    w_o = params["h"][i]["attn"]["c_proj"]["weight"][head * D:(head + 1) * D]  # (D, E)
    contribution = st["z"] @ w_o
    pre, post = acts[f"h.{i}.mlp.c_fc"], acts[f"h.{i}.mlp.gelu"]
    top = np.argsort(-post, axis=-1, kind="stable")[:, :TOP_NEURONS]
    d["detail"] = {
        "layer": i, "head": head, "D": D, "scale": float(config.attention_scale(i)),
        "x_rows": inputs[i][:, :ROW_DIMS], "ln_1_rows": acts[f"h.{i}.ln_1"][:, :ROW_DIMS],
        "ln_1": blocks[i]["ln_1"], "img_ln_1": acts[f"h.{i}.ln_1"],
        **{k: st[k] for k in ("q", "k", "v", "scores", "scaled", "masked", "probs", "z")},
        "contribution_norm": np.linalg.norm(contribution, axis=-1),
        "attn_rows": acts[f"h.{i}.attn"][:, :ROW_DIMS],
        "mlp": {"neurons": top, "pre": np.take_along_axis(pre, top, axis=-1),
                "post": np.take_along_axis(post, top, axis=-1),
                "active": (post > 0).mean(axis=-1), "img_pre": pre, "img_post": post},
    }

    # the output: logit lens, the last position's distribution and the sampling filters
    residuals = [x0] + [acts[f"h.{i}"] for i in range(L)]
    lens = logit_lens(params, config, residuals)
    d["lens"] = {"rows": ["embeddings"] + [f"h.{i}" for i in range(L)],
                 "top": np.array([t for t, _ in lens]), "prob": np.array([p for _, p in lens]),
                 "texts": [[token_text(tokenizer, t) for t in row] for row, _ in lens]}
    last = acts["logits"][-1]
    order, stages = sampling_table(last, temperature, top_k, top_p)
    d["output"] = {"ids": order, "texts": [token_text(tokenizer, t) for t in order],
                   "logits": last[order], "stages": stages,
                   "settings": {"temperature": temperature, "top_k": top_k, "top_p": top_p}}

    if target_ids:
        d["target"] = target_section(params, config, tokenizer, tokens, target, target_ids,
                                     inputs, acts[f"h.{L - 1}"])
    return d


def target_section(params, config, tokenizer, tokens, target, target_ids, block_inputs, final):
    """The loss of the target tokens after the prompt, the gradient's norm at every named
    point, and two saliency rows over the prompt's tokens: |d loss / d x0[t]| (from the
    library's gradients) and |d logit[T-1, first target] / d x0[t]| (logit_gradient)."""
    T = len(tokens)
    seq = np.concatenate([tokens, np.asarray(target_ids[:-1], dtype=np.int64)])
    targets = np.full(seq.shape, IGNORE_INDEX, dtype=np.int64)
    targets[T - 1:] = target_ids  # position T-1 predicts the first target token, and so on
    names = [n for n in gradient_names(config) if not n.endswith(".softmax")]
    loss, grads, _ = gradients(params, config, seq, targets, names)
    g_logit = logit_gradient(params, config, block_inputs, final, T - 1, target_ids[0])
    x0 = block_inputs[0]
    return {"text": target, "ids": list(target_ids), "texts": [token_text(tokenizer, t) for t in target_ids],
            "loss": float(loss), "grad_names": names,
            "grad_norms": np.array([np.linalg.norm(grads[n]) for n in names]),
            "saliency_loss": np.linalg.norm(grads["grad.wte"][:T], axis=-1),
            "saliency_logit": np.linalg.norm(g_logit, axis=-1),
            "grad_x_input": (g_logit * x0).sum(axis=-1)}
