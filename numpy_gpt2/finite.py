"""NaN and infinity: notice them in the logits cheaply, and say where they started.

One NaN or inf in a weight (or a float32 overflow) spreads through everything computed after
it, so the logits end up NaN and argmax or sampling would quietly return token 0 forever.
forward() therefore checks its logits before returning them. The check is one sum over the
logits (NaN and inf survive a sum), about 0.4% of a 1024-token forward pass. Only when it fails
is the forward pass run a second time with record= (see numpy_gpt2.activations), stopping at
the first named activation, in forward order, that holds a non-finite value: that is where to
look (everything computed before it was finite).

    check_finite_logits(logits, params, config, tokens, forward=forward)   # after logits = forward(...)

This module sits below model.py: model.forward passes itself in (forward=) for the second run.
"""

from __future__ import annotations

import numpy as np

from numpy_gpt2.errors import NonFiniteError
from numpy_gpt2.params import flatten_params


def all_finite(x) -> bool:
    """True when every element of x is finite (neither NaN nor +-inf).

    A sum passes NaN and inf through, costs one pass and needs no temporary, where
    np.isfinite(x).all() would first make a boolean array as large as x (51 MB for the logits
    of 1024 tokens). A sum can also overflow when every element is finite but huge, so a
    non-finite sum is confirmed element by element.
    """
    x = np.asarray(x)
    if x.dtype.kind not in "fc":  # integers and booleans are always finite
        return True
    with np.errstate(over="ignore", invalid="ignore"):
        total = x.sum()
    return bool(np.isfinite(total)) or bool(np.isfinite(x).all())


def _kind(value) -> str:
    """'nan', 'inf' or '-inf' for one non-finite number."""
    return "nan" if np.isnan(value) else ("inf" if value > 0 else "-inf")


def _where(name: str, index: tuple, single: bool, past: int) -> str:
    """Words for an index into a recorded activation.

    forward() records every activation with a batch axis, (B, T, ...), except "wpe" (T, E),
    and the attention probabilities are (B, H, T, S); positions count from the cache's start.
    """
    if name == "wpe":
        return f"position {past + index[0]}, feature {index[1]}"
    seq = "" if single else f"sequence {index[0]}, "
    if name.endswith("attn.softmax"):
        b, h, t, s = index
        return f"{seq}head {h}, query position {past + t}, key position {s}"
    return f"{seq}position {past + index[1]}, feature {index[2]}"


def first_non_finite(params: dict, config, tokens, *, forward, kv_cache=None, past: int = 0,
                     reference: bool = False):
    """Run the forward pass recording activations and stop at the first non-finite one.

    forward: numpy_gpt2.model.forward (passed in: model.py imports this module).

    tokens: (T,) or (B, T) ids. kv_cache: a cache whose first `past` positions hold the keys
    and values of earlier tokens (it is used from that state: positions past.. past+T-1 are
    written again with what the same computation wrote there before), or None.
    Returns None when every activation is finite, else a dict: name (e.g. "h.1.mlp.c_fc"),
    index (into the recorded array, batch axis included), shape, value (the first non-finite
    number there, in C order).
    """
    found = {}

    class Found(Exception):
        pass

    def record(name, value):
        if not all_finite(value):
            index = tuple(int(i) for i in np.argwhere(~np.isfinite(value))[0])
            found.update(name=name, index=index, shape=value.shape, value=float(value[index]))
            raise Found  # nothing after it matters: it inherits the NaN

    cache = None if kv_cache is None else dict(kv_cache, length=past)
    try:
        with np.errstate(all="ignore"):
            forward(params, config, tokens, kv_cache=cache, record=record, reference=reference)
    except Found:
        return found
    return None


def non_finite_weights(params: dict) -> list[str]:
    """Checkpoint keys of the weights holding NaN or inf, each with how many: ["h.1.mlp.c_fc.weight (1 of 8192 values)", ...]."""
    return [f"{key} ({int((~np.isfinite(a)).sum())} of {a.size} values)"
            for key, a in flatten_params(params).items() if not all_finite(a)]


def check_finite_logits(logits, params: dict, config, tokens, *, forward, kv_cache=None,
                        reference: bool = False, what: str = "logits") -> None:
    """Raise NonFiniteError when `logits` holds NaN or inf, naming where that started.

    logits: the output of forward(params, config, tokens, kv_cache=kv_cache,
        reference=reference), any shape; or any value computed from it (a loss: what="loss").
    tokens: the token ids given to that call, (T,) or (B, T).
    forward: numpy_gpt2.model.forward, run again to find where the values stopped being finite.
    kv_cache: the cache that call used, as it is AFTER the call ("length" already counts
        tokens), or None.
    reference: whether that call ran the readable layers.
    what: the word the message uses for `logits`.

    Returns None when everything is finite, after one sum over `logits`. Otherwise the forward
    pass runs again with record= and the message names the first non-finite activation in
    forward order, its position, and the weights and cached keys/values that are not finite
    (docs/loading.md shows an example).
    """
    if all_finite(logits):
        return
    values = np.asarray(logits)
    bad = values[~np.isfinite(values)] if values.dtype.kind in "fc" else values
    head = f"non-finite {what} ({', '.join(sorted({_kind(v) for v in bad.ravel()[:1000]}))})"
    tokens = np.asarray(tokens)
    T = tokens.shape[-1]
    past = 0 if kv_cache is None else kv_cache["length"] - T
    found = first_non_finite(params, config, tokens, forward=forward, kv_cache=kv_cache, past=past,
                             reference=reference)
    if found is None:
        parts = [f"{head}, although every activation of the forward pass, logits included, "
                 f"is finite when computed again"]
    else:
        single = tokens.ndim == 1
        where = _where(found["name"], found["index"], single, past)
        if single and found["name"] != "wpe":  # shown as numpy_gpt2.activations shows it
            found["index"], found["shape"] = found["index"][1:], found["shape"][1:]
        parts = [f"{head}: the first activation holding a non-finite value, in forward order, "
                 f"is {found['name']} ({_kind(found['value'])} at {where}; index "
                 f"{found['index']} of shape {found['shape']}); everything before it is finite"]
    weights = non_finite_weights(params)
    if weights:
        more = f" and {len(weights) - 5} more" if len(weights) > 5 else ""
        parts.append(f"non-finite weights: {', '.join(weights[:5])}{more}")
    elif found is not None:
        parts.append("every weight is finite, so the values overflowed (try dtype=np.float64 "
                     "to see whether the float32 range is the problem)")
    if kv_cache is not None and past > 0:
        layers = [i for i in range(config.n_layer)
                  if not (all_finite(kv_cache["keys"][i][:, :, :past])
                          and all_finite(kv_cache["values"][i][:, :, :past]))]
        if layers:
            parts.append(f"the kv cache already held non-finite keys/values from earlier calls "
                         f"(layers {', '.join(map(str, layers))}): the first call that made "
                         f"them raised this error too")
    raise NonFiniteError("; ".join(parts))
