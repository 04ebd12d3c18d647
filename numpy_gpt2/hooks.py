"""Hook points: how the layers let a caller see, and change, their intermediate values.

The layers pass every named intermediate value through a `record` argument that returns
the value the computation continues from:

    a = record("ln_1", layer_norm(x, ...))
    x = x + record("attn", causal_self_attention(a, ...))

so the equations read as they are written. The default, `no_record`, returns its value and
records nothing. Two kinds of record exist:
  * an observer, a user's callback `record(name, array)` (its return value is ignored),
    wrapped by `recorder`: it sees the module outputs (numpy_gpt2.debug.capture.activation_names);
  * `Hooks`, forward's hooks= ({pattern: fn}): fn(name, array) returns None (observe) or an
    array of the same shape and dtype that REPLACES the value. It sees every hook point
    (the finer ones too: FINE_POINTS) that its patterns match.
`wants(record, name)` tells a layer whether anyone looks at a point, so work that only a
hook needs (per-head outputs, the (H, T, S) scores) is done only then. TransformerLens calls
the same places "hook points" (numpy_gpt2.interp.names maps the names).
"""

from __future__ import annotations

import fnmatch

import numpy as np

# The last name part of the hook points that only Hooks (and observers asking for them, see
# wants) see: finer than the checkpoint's module outputs, for interpretability.
FINE_POINTS = frozenset({"resid_pre", "scale", "normalized", "q", "k", "v", "scores", "z",
                         "result", "resid_mid"})


def no_record(name, value):
    """The default hook: records nothing and returns value (the fast path checks for it by
    identity, `record is no_record`, to skip work that only recording needs)."""
    return value


def is_fine_point(name: str) -> bool:
    """A hook point finer than a module output ("h.0.attn.z", "ln_f.scale")."""
    return name.rsplit(".", 1)[-1] in FINE_POINTS


def wants(record, name: str) -> bool:
    """Whether record looks at the point `name` (after any prefix): never for no_record;
    record.wants(name) when it says; else (a plain observer) the module outputs only."""
    if record is no_record:
        return False
    ask = getattr(record, "wants", None)
    return ask(name) if ask is not None else not is_fine_point(name)


def recorder(record=None):
    """A hook that calls record(name, value) and returns value, so recording can wrap an
    expression. record: None (-> no_record), a user's callback (its return value is
    ignored), or a hook already (returned as it is)."""
    if record is None or record is no_record or getattr(record, "returns_value", False):
        return record or no_record
    return _Observer(record)


class _Observer:
    """recorder's hook around an observer: calls it, returns the value; wants() as it says."""
    returns_value = True

    def __init__(self, see):
        self.see = see

    def __call__(self, name, value):
        if wants(self.see, name):
            self.see(name, value)
        return value

    def wants(self, name):
        return wants(self.see, name)


class _Prefixed:
    """record with names prefixed ("h.3." + name); wants() asks record about the full name."""
    returns_value = True

    def __init__(self, record, prefix):
        self.record, self.prefix = recorder(record), prefix

    def __call__(self, name, value):
        return self.record(self.prefix + name, value)

    def wants(self, name):
        return wants(self.record, self.prefix + name)


def prefixed(record, prefix):
    """record as a hook, with names prefixed; stays no_record when nothing records."""
    return no_record if record is no_record else _Prefixed(record, prefix)


class Hooks:
    """forward's hooks= as one record hook: Hooks(hooks, observe=None, single=False).

    hooks: {pattern: fn} (or a list of (pattern, fn) pairs), patterns hook point names or
        fnmatch globs ("h.*.attn.z"); every fn whose pattern matches a point is called, in
        the given order, as fn(name, array) -> None (observe) or the replacement, an
        np.ndarray of the array's shape and dtype (anything else: ValueError naming the
        hook and the point). The computation continues from a copy of the returned array
        (the forward pass writes into some of its arrays), so returning the argument, edited
        in place or not, works too; edits in place without returning it may be lost.
    observe: an optional plain observer record(name, array) called after the hooks with the
        value the computation continues from (so a cache holds the hooked run's values).
    single: the forward pass has a batch axis the hooks do not see (one sequence of
        tokens (T,)): fn sees value[0] and returns that shape.
    """
    returns_value = True

    def __init__(self, hooks=None, observe=None, single=False):
        items = list(hooks.items()) if isinstance(hooks, dict) else list(hooks or [])
        for item in items:
            if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)
                    and callable(item[1])):
                raise ValueError(f"hooks must map name patterns (str) to functions fn(name, array), "
                                 f"got {item!r}")
        self.items, self.observe, self.single = items, observe, single
        self._memo = {}

    def matching(self, name: str) -> list:
        """The functions whose pattern matches `name`, in order."""
        fns = self._memo.get(name)
        if fns is None:
            fns = self._memo[name] = [fn for pattern, fn in self.items
                                      if fnmatch.fnmatchcase(name, pattern)]
        return fns

    def replaces(self, name: str) -> bool:
        """Whether a user's hook (which may return a replacement) sees `name`."""
        return bool(self.matching(name))

    def wants(self, name: str) -> bool:
        return self.replaces(name) or (self.observe is not None and wants(self.observe, name))

    def __call__(self, name, value):
        for fn in self.matching(name):
            shown = value[0] if self.single else value
            new = fn(name, shown)
            if new is not None:  # its argument too: it may have been edited in place
                value = check_replacement(fn, name, new, shown)
                if self.single:
                    value = value[None]
        if self.observe is not None and wants(self.observe, name):
            self.observe(name, value)
        return value


def check_replacement(fn, name, new, old):
    """A copy of hook fn's replacement `new` for the point `name`, after checking that it is
    an array of old's shape and dtype."""
    label = getattr(fn, "__name__", repr(fn))
    if not isinstance(new, np.ndarray):
        raise ValueError(f"hook {label} at {name!r} returned {type(new).__name__}; expected None "
                         f"or an np.ndarray of shape {old.shape} and dtype {old.dtype}")
    if new.shape != old.shape or new.dtype != old.dtype:
        raise ValueError(f"hook {label} at {name!r} returned an array of shape {new.shape} and "
                         f"dtype {new.dtype}; expected shape {old.shape} and dtype {old.dtype}")
    return np.array(new)  # our own: the fast path updates some arrays in place


def record_copy(record, name, value):
    """record(name, a copy of value) for an array the caller goes on updating in place (so
    what an observer saw stays as it was); returns value itself, or a hook's replacement."""
    if not wants(record, name):
        return value
    copy = value.copy()
    seen = record(name, copy)
    return value if seen is copy else seen


def changed(record, name, compute):
    """For points the fast path fuses away (the scores, probabilities and per-head results):
    call record on value = compute() only when someone wants it, and say whether a hook
    changed it: (seen, is_changed). A hook that returns its argument untouched, or None,
    changes nothing (so the fused, faster arithmetic goes on, bit for bit)."""
    if not wants(record, name):
        return None, False
    value = compute()
    if not (isinstance(record, (Hooks, _Prefixed)) and _replaces(record, name)):
        record(name, value)
        return value, False
    before = value.copy()
    seen = record(name, value)
    return seen, not np.array_equal(seen, before, equal_nan=True)


def _replaces(record, name):
    while isinstance(record, _Prefixed):
        record, name = record.record, record.prefix + name
    return isinstance(record, Hooks) and record.replaces(name)


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
