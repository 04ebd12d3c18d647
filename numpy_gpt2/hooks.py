"""The record(name, array) hook: how the layers let a caller see their intermediate values.

The layers take a `record` argument and pass every named intermediate value through it:

    x = x + record("attn", causal_self_attention(record("ln_1", layer_norm(x, ...)), ...))

so the hook is an identity that returns its value: the equations read as they are written,
and recording changes no number. The default, `no_record`, records nothing. A user's
callback `record(name, array)` (its return value is ignored; see numpy_gpt2.activations for
the names) becomes such a hook through `recorder`; `prefixed` adds a name prefix ("h.3.").
TransformerLens calls the same places "hook points".
"""

from __future__ import annotations


def no_record(name, value):
    """The default hook: records nothing and returns value (the fast path checks for it by
    identity, `record is no_record`, to skip work that only recording needs)."""
    return value


def recorder(record=None):
    """A hook that calls record(name, value) and returns value, so recording can wrap an
    expression. record: None (-> no_record), a user's callback (its return value is
    ignored), or a hook already (returned as it is)."""
    if record is None or record is no_record or getattr(record, "returns_value", False):
        return record or no_record

    def hook(name, value):
        record(name, value)
        return value
    hook.returns_value = True
    return hook


def prefixed(record, prefix):
    """record as a hook, with names prefixed; stays no_record when nothing records."""
    return no_record if record is no_record else recorder(lambda name, value: record(prefix + name, value))


def record_weights(record, module, grads: dict) -> dict:
    """Pass a module's weight gradients {"weight": ..., "bias": ...} through record as
    "<module>.weight", "<module>.bias", where the backward pass computes them: record_grad
    then sees every gradient, activations' and weights', in the order they are produced
    (activations.gradient_order_key is derived from it). Returns grads."""
    for key, g in grads.items():
        record(f"{module}.{key}", g)
    return grads


def is_weight_name(name: str) -> bool:
    """A weight's checkpoint key ("h.0.ln_1.weight"), not an activation name ("h.0.ln_1")."""
    return name.endswith((".weight", ".bias"))

