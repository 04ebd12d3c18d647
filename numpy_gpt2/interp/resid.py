"""Reading the residual stream from a cache of named activations: decompositions, the logit lens,
logit attributions (TransformerLens' ActivationCache methods, as pure functions).

A cache is the {name: array} dict of numpy_gpt2.activations (or of forward's hooks): arrays
(..., T, E) with or without a batch axis. These functions read it and never modify it. A
"stack" is an array (n_components, ..., T, E) with its labels. Residual-stream points are read
under their names (h.{i}.resid_pre, h.{i}.resid_mid, h.{i}.ln_1.scale, ...) when the cache has
them and otherwise derived from the basic ones (wte + wpe, h.{i}.attn, h.{i}.mlp.c_proj, h.{i}),
so activations(params, config, tokens) is enough. See docs/interp.md.
"""

from __future__ import annotations

import numpy as np

from numpy_gpt2.checks import is_int


def _need(cache, name):
    if name not in cache:
        hint = "'*,*softmax'" if name.endswith("softmax") else "'*' (the default)"
        raise ValueError(f"cache has no {name!r}: make the cache with numpy_gpt2.activations(params, "
                         f"config, tokens, names={hint})")
    return cache[name]


def _check_cache(cache):
    if not isinstance(cache, dict):
        raise ValueError(f"cache must be a dict {{name: array}} (numpy_gpt2.activations), "
                         f"got {type(cache).__name__}")


def check_layer(layer, config, name="layer", allow_none=True, top=None):
    """layer as an int in [0, top] (top defaults to n_layer; None -> top when allowed)."""
    top = config.n_layer if top is None else top
    if layer is None and allow_none:
        return top
    if not is_int(layer) or not 0 <= layer <= top:
        raise ValueError(f"{name} must be an integer in 0..{top}"
                         f"{' or None' if allow_none else ''}, got {layer!r}")
    return int(layer)


def check_bool(value, name):
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


def attn_out(cache, layer):
    """Block `layer`'s attention output (after c_proj, with its bias)."""
    return _need(cache, f"h.{layer}.attn")


def mlp_out(cache, layer):
    """Block `layer`'s MLP output (after c_proj, with its bias)."""
    for name in (f"h.{layer}.mlp.c_proj", f"h.{layer}.mlp"):
        if name in cache:
            return cache[name]
    return _need(cache, f"h.{layer}.mlp.c_proj")


def resid_pre(cache, config, layer):
    """The residual stream entering block `layer` (layer = n_layer: the final one, after
    the last block)."""
    if layer == config.n_layer:
        return _need(cache, f"h.{layer - 1}")
    if f"h.{layer}.resid_pre" in cache:
        return cache[f"h.{layer}.resid_pre"]
    return _need(cache, "wte") + _need(cache, "wpe") if layer == 0 else _need(cache, f"h.{layer - 1}")


def resid_mid(cache, config, layer):
    """The residual stream between block `layer`'s attention and its MLP."""
    if f"h.{layer}.resid_mid" in cache:
        return cache[f"h.{layer}.resid_mid"]
    return resid_pre(cache, config, layer) + attn_out(cache, layer)


def ln_scale(cache, config, layer, mlp_input=False):
    """sqrt(var + eps) (..., T, 1) of the LayerNorm reading the residual stream at `layer`
    (ln_1, ln_2 with mlp_input, ln_f at layer = n_layer): TransformerLens' hook_scale."""
    if layer == config.n_layer:
        name, x = "ln_f.scale", lambda: resid_pre(cache, config, layer)
    elif mlp_input:
        name, x = f"h.{layer}.ln_2.scale", lambda: resid_mid(cache, config, layer)
    else:
        name, x = f"h.{layer}.ln_1.scale", lambda: resid_pre(cache, config, layer)
    if name in cache:
        return cache[name]
    return _std(x(), config.layer_norm_epsilon)


def _std(x, eps):
    centered = x - x.mean(axis=-1, keepdims=True)
    return np.sqrt((centered * centered).mean(axis=-1, keepdims=True) + eps)


def decompose_resid(cache, config, layer=None):
    """The residual stream entering block `layer` (None: after the last block) as its sum of
    parts: (labels, stack), labels ["embed", "pos_embed", "0_attn_out", "0_mlp_out", ...,
    f"{layer-1}_mlp_out"], stack (n_components, ..., T, E), summing to that residual stream
    (TransformerLens' ActivationCache.decompose_resid). Raises ValueError for a bad layer or a
    cache without the names it needs.
    """
    _check_cache(cache)
    layer = check_layer(layer, config)
    labels, parts = ["embed", "pos_embed"], [_need(cache, "wte"), _need(cache, "wpe")]
    for i in range(layer):
        labels += [f"{i}_attn_out", f"{i}_mlp_out"]
        parts += [attn_out(cache, i), mlp_out(cache, i)]
    shape = np.broadcast_shapes(*(p.shape for p in parts))
    return labels, np.stack([np.broadcast_to(p, shape) for p in parts])


def accumulated_resid(cache, config, layer=None, incl_mid=False):
    """The residual stream at each block's input up to block `layer` (None: also after the last
    block): (labels, stack), labels ["0_pre", "0_mid", "1_pre", ..., "final_post"] ("_mid"
    between attention and MLP with incl_mid, for the blocks before `layer`), stack
    (n_points, ..., T, E) (TransformerLens' ActivationCache.accumulated_resid).
    Raises ValueError for bad arguments.
    """
    _check_cache(cache)
    layer = check_layer(layer, config)
    check_bool(incl_mid, "incl_mid")
    labels, parts = [], []
    for i in range(layer + 1):
        if i == config.n_layer:
            labels.append("final_post")
            parts.append(resid_pre(cache, config, i))
            continue
        labels.append(f"{i}_pre")
        parts.append(resid_pre(cache, config, i))
        if incl_mid and i < layer:
            labels.append(f"{i}_mid")
            parts.append(resid_mid(cache, config, i))
    return labels, np.stack(parts)


def apply_ln_to_stack(stack, cache, config, layer=None, recompute=False, mlp_input=False):
    """The LayerNorm reading the residual stream at `layer` (ln_1; ln_2 with mlp_input; None or
    n_layer: ln_f) applied to each component of a stack (n, ..., T, E), WITHOUT its weight and
    bias (as TransformerLens does: fold them first, numpy_gpt2.interp.process_weights):

        recompute=False: (x - mean_E x) / scale    scale: the cached LayerNorm's sqrt(var + eps)
                         of the whole residual stream, so the components still sum to it
        recompute=True:  each component normalized with its own mean and variance (the logit
                         lens: each partial residual stream read as if it were the final one)

    Returns a new array of the stack's shape. Raises ValueError for bad arguments.
    """
    _check_cache(cache)
    layer = check_layer(layer, config)
    check_bool(recompute, "recompute")
    check_bool(mlp_input, "mlp_input")
    stack = np.asarray(stack)
    if stack.ndim < 3 or stack.shape[-1] != config.n_embd:
        raise ValueError(f"stack must be (n_components, ..., T, n_embd={config.n_embd}), "
                         f"got shape {stack.shape}")
    if recompute:
        centered = stack - stack.mean(axis=-1, keepdims=True)
        return centered / np.sqrt((centered * centered).mean(axis=-1, keepdims=True)
                                  + config.layer_norm_epsilon)
    return (stack - stack.mean(axis=-1, keepdims=True)) / ln_scale(cache, config, layer, mlp_input)


def unembed(params, x):
    """x (..., E) @ W_U (+ b_U when the weights have an unembedding bias) -> (..., V)."""
    head = params["lm_head"] if "lm_head" in params else params["wte"]
    logits = x @ head["weight"].T
    return logits + head["bias"] if "bias" in head else logits


def logit_lens(cache, params, config, recompute=True):
    """The logit lens (nostalgebraist 2020): the residual stream before every block and after
    the last (accumulated_resid's points), each read by ln_f (with its weight and bias) and the
    unembedding: (n_layer + 1, ..., T, V) logits. The last row is the model's logits.
    recompute=True normalizes each point with its own statistics (the lens as the literature
    uses it); False divides by the final LayerNorm's cached scale. Raises ValueError for bad
    arguments.
    """
    check_bool(recompute, "recompute")
    _, stack = accumulated_resid(cache, config)
    normed = apply_ln_to_stack(stack, cache, config, recompute=recompute)
    return unembed(params, normed * params["ln_f"]["weight"] + params["ln_f"]["bias"])


def _token_directions(params, config, tokens, name):
    tokens = np.asarray(tokens)
    if tokens.dtype.kind not in "iu" or (tokens.size and not (
            0 <= tokens.min() and tokens.max() < config.vocab_size)):
        raise ValueError(f"{name} must be token ids in [0, {config.vocab_size}), got {tokens!r}")
    head = params["lm_head"] if "lm_head" in params else params["wte"]
    return head["weight"][tokens]  # (..., E): the rows of W_U^T


def logit_attrs(params, config, stack, tokens, incorrect_tokens=None, cache=None):
    """Each component's direct contribution to the logit of `tokens` (minus that of
    `incorrect_tokens`): (n_components, ...) = (ln_f(stack) * W_U[:, tokens]).sum(-1)
    (TransformerLens' ActivationCache.logit_attrs). With a cache the stack is first centred
    and divided by ln_f's cached scale (apply_ln_to_stack); without one it is taken as
    normalized already. tokens: ids broadcastable against stack.shape[1:-1] (e.g. (T,) for a
    stack (n, T, E)). With folded LayerNorms (process_weights) the attributions of
    decompose_resid's stack plus the unembedding bias sum to the logit. ln_f's weight and bias
    are not applied. Raises ValueError for bad arguments.
    """
    stack = np.asarray(stack)
    if stack.ndim < 2 or stack.shape[-1] != config.n_embd:
        raise ValueError(f"stack must be (n_components, ..., n_embd={config.n_embd}), "
                         f"got shape {stack.shape}")
    directions = _token_directions(params, config, tokens, "tokens")
    if incorrect_tokens is not None:
        wrong = _token_directions(params, config, incorrect_tokens, "incorrect_tokens")
        if wrong.shape != directions.shape:
            raise ValueError(f"incorrect_tokens must have the shape of tokens "
                             f"{np.shape(tokens)}, got {np.shape(incorrect_tokens)}")
        directions = directions - wrong
    if cache is not None:
        stack = apply_ln_to_stack(stack, cache, config)
    return (stack * directions).sum(axis=-1)
