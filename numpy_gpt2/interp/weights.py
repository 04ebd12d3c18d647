"""Weight processing for interpretability: TransformerLens' folding and centring, as pure functions.

Each function takes a GPT-2 weight dict (numpy_gpt2.params layout) and returns a NEW one that
numpy_gpt2.forward runs, computing the same log-probabilities (TransformerLens,
weight_processing.py / HookedTransformer.load_and_process_state_dict; Elhage et al. 2021):

    fold_layer_norm         LayerNorm weight/bias moved into the next layer; LayerNorms become
                            "normalize only" (weight 1, bias 0); reading weights centred
    center_writing_weights  everything that writes to the residual stream has mean 0 over E
    center_unembed          the unembedding has mean 0 over the vocabulary (logits shift)
    fold_value_biases       the value bias moved into the attention output bias

Where the unembedding changes, the result has an untied `lm_head` ({"weight": (V, E),
"bias": (V,)}: folding ln_f's bias gives the unembedding a bias, which forward adds to the
logits). Nothing here changes the caller's arrays. See docs/interp.md.
"""

from __future__ import annotations

import numpy as np

from numpy_gpt2.params import flatten_params, nest_params


def _copy(params: dict) -> dict:
    """A deep copy of a weight dict (new arrays, same nesting)."""
    return nest_params({key: np.array(value) for key, value in flatten_params(params).items()})


def _check_flags(**flags):
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be True or False, got {value!r}")


def _check_params(params, config):
    if not isinstance(params, dict) or not all(k in params for k in ("wte", "wpe", "h", "ln_f")):
        raise ValueError("params must be a GPT-2 weight dict with wte, wpe, h and ln_f "
                         "(numpy_gpt2.load or init_params)")
    if len(params["h"]) != config.n_layer:
        raise ValueError(f"params has {len(params['h'])} blocks but config.n_layer is {config.n_layer}")


def _untie(params: dict) -> dict:
    """params (a copy already) with an explicit lm_head: wte's rows when the head was tied."""
    if "lm_head" not in params:
        params["lm_head"] = {"weight": np.array(params["wte"]["weight"])}
    return params


def unembedding_bias(params: dict):
    """The unembedding bias b_U (V,) of a processed weight dict, or None when it has none."""
    return params.get("lm_head", {}).get("bias")


def fold_layer_norm(params: dict, config, center_weights: bool = True) -> dict:
    """Fold each LayerNorm's weight w and bias b into the layer that reads it:

        W' = diag(w) W,  b' = b_layer + b W      (ln_1 -> c_attn, ln_2 -> mlp.c_fc, ln_f -> lm_head)

    leaving the LayerNorms with weight 1 and bias 0 (x -> (x - mean) / std). center_weights:
    also subtract from W' its mean over the input axis E, which changes nothing because a
    normalized vector has mean 0 (TransformerLens' fold_ln). The unembedding becomes an untied
    lm_head with a bias b_U = b_ln_f W_U (zeros for a model without biases).
    Same logits to rounding. Raises ValueError for bad arguments.
    """
    _check_params(params, config)
    _check_flags(center_weights=center_weights)
    new = _untie(_copy(params))

    def fold(ln, weight, bias):  # weight: (E, n_out), GPT-2's in-out layout
        w, b = ln["weight"], ln["bias"]
        bias = bias + b @ weight
        weight = weight * w[:, None]
        if center_weights:
            weight = weight - weight.mean(axis=0, keepdims=True)
        ln["weight"], ln["bias"] = np.ones_like(w), np.zeros_like(b)
        return weight, bias

    for block in new["h"]:
        c_attn, c_fc = block["attn"]["c_attn"], block["mlp"]["c_fc"]
        c_attn["weight"], c_attn["bias"] = fold(block["ln_1"], c_attn["weight"], c_attn["bias"])
        c_fc["weight"], c_fc["bias"] = fold(block["ln_2"], c_fc["weight"], c_fc["bias"])
    head = new["lm_head"]
    bias = head.get("bias", np.zeros(head["weight"].shape[0], head["weight"].dtype))
    W_U, b_U = fold(new["ln_f"], head["weight"].T, bias)
    head["weight"], head["bias"] = np.ascontiguousarray(W_U.T), b_U
    return new


def center_writing_weights(params: dict, config) -> dict:
    """Subtract from every weight and bias that writes to the residual stream its mean over
    the residual axis E: wte, wpe rows, attn.c_proj and mlp.c_proj (weight columns and bias).
    The residual stream at every point becomes its centred original (x - mean_E(x)), which
    every LayerNorm reads unchanged. wte's old rows stay the unembedding (an untied lm_head).
    Raises ValueError for bad arguments.
    """
    _check_params(params, config)
    new = _untie(_copy(params))

    def center(a):
        return a - a.mean(axis=-1, keepdims=True)

    new["wte"]["weight"] = center(new["wte"]["weight"])
    new["wpe"]["weight"] = center(new["wpe"]["weight"])
    for block in new["h"]:
        for proj in (block["attn"]["c_proj"], block["mlp"]["c_proj"]):
            proj["weight"], proj["bias"] = center(proj["weight"]), center(proj["bias"])
    return new


def center_unembed(params: dict, config) -> dict:
    """Subtract from the unembedding (and its bias, if any) the mean over the vocabulary, so
    every position's logits become logits - mean(logits): softmax, log-probs and the loss do
    not change. Returns an untied lm_head. Raises ValueError for bad arguments.
    """
    _check_params(params, config)
    new = _untie(_copy(params))
    head = new["lm_head"]
    head["weight"] = head["weight"] - head["weight"].mean(axis=0, keepdims=True)
    if "bias" in head:
        head["bias"] = head["bias"] - head["bias"].mean()
    return new


def fold_value_biases(params: dict, config) -> dict:
    """Move each layer's value bias b_V into the attention output bias:

        b_O' = b_O + b_V W_O,   b_V' = 0

    (attention weights sum to 1 over the keys, so b_V's contribution to every head's output is
    the constant b_V W_O). Each head's values v and outputs z shift by -b_V; the block
    outputs do not change. Raises ValueError for bad arguments.
    """
    _check_params(params, config)
    new = _copy(params)
    E = config.n_embd
    for block in new["h"]:
        c_attn, c_proj = block["attn"]["c_attn"], block["attn"]["c_proj"]
        b_V = c_attn["bias"][2 * E:]
        c_proj["bias"] = c_proj["bias"] + b_V @ c_proj["weight"]
        c_attn["bias"] = np.concatenate([c_attn["bias"][:2 * E], np.zeros_like(b_V)])
    return new


# process_weights' flags have the functions' names (TransformerLens' signature), so it calls them
# through these.
_STEPS = {"fold_ln": fold_layer_norm, "center_writing_weights": center_writing_weights,
          "center_unembed": center_unembed, "fold_value_biases": fold_value_biases}


def process_weights(params: dict, config, fold_ln: bool = True, center_writing_weights: bool = True,
                    center_unembed: bool = True, fold_value_biases: bool = True) -> dict:
    """TransformerLens' default processing (HookedTransformer.from_pretrained), in its order:
    fold_layer_norm, center_writing_weights, center_unembed, fold_value_biases, then (when
    centring) the attention output bias centred again. Returns a new weight dict computing
    the same log-probabilities (logits shifted by their mean with center_unembed).
    Raises ValueError for bad arguments (flags must be True or False).
    """
    _check_params(params, config)
    _check_flags(fold_ln=fold_ln, center_writing_weights=center_writing_weights,
                 center_unembed=center_unembed, fold_value_biases=fold_value_biases)
    flags = {"fold_ln": fold_ln, "center_writing_weights": center_writing_weights,
             "center_unembed": center_unembed, "fold_value_biases": fold_value_biases}
    new = params
    for step, wanted in flags.items():
        if wanted:
            new = _STEPS[step](new, config)
    if fold_value_biases and center_writing_weights:
        for block in new["h"]:
            bias = block["attn"]["c_proj"]["bias"]
            block["attn"]["c_proj"]["bias"] = bias - bias.mean()
    return new if new is not params else _copy(params)
