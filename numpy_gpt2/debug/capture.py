"""Named intermediate activations and their gradients: the names, and capturing them.

For people porting GPT-2 to another language: run the same tokens through numpy_gpt2 and
through the port, and the first tensor that differs says where the port goes wrong. The
file both sides write is numpy_gpt2.debug.dump_format; numpy_gpt2.debug.compare compares two sets.

Names follow the checkpoint's module names, in forward order (T tokens, E = n_embd,
H = n_head, V = vocab_size; shapes for one sequence of token ids of shape (T,)):

    wte              (T, E)      token embeddings wte[tokens]
    wpe              (T, E)      position embeddings wpe[0..T-1]
    h.{i}.ln_1       (T, E)      block i: LayerNorm before attention
    h.{i}.attn.c_attn (T, 3E)    [q | k | v] = ln_1 @ W + b
    h.{i}.attn.softmax (H, T, T) attention probabilities (query, key); only when asked for
    h.{i}.attn       (T, E)      attention output, after c_proj
    h.{i}.ln_2       (T, E)      LayerNorm before the MLP
    h.{i}.mlp.c_fc   (T, 4E)     MLP up-projection
    h.{i}.mlp.gelu   (T, 4E)     after the tanh GELU
    h.{i}.mlp.c_proj (T, E)      MLP output
    h.{i}            (T, E)      block output (the residual stream)
    ln_f             (T, E)      final LayerNorm
    logits           (T, V)

A batch of token ids (B, T) gives the same names with a leading batch axis B on every array
(wpe included, repeated over the batch).

Finer hook points, for interpretability (activation_names(config, points=True); D = E // H,
per-head arrays head axis first; TransformerLens' names in numpy_gpt2.interp.names):

    h.{i}.resid_pre        (T, E)     the block's input (the residual stream)
    h.{i}.ln_1.scale       (T, 1)     sqrt(var + eps) of ln_1
    h.{i}.ln_1.normalized  (T, E)     (x - mean) / scale, before ln_1's gain and bias
    h.{i}.attn.q, .k, .v   (H, T, D)  queries, keys, values of the heads
    h.{i}.attn.scores      (H, T, T)  q k^T * scale, -inf where masked (the softmax's input)
    h.{i}.attn.z           (H, T, D)  softmax @ v, the heads' outputs
    h.{i}.attn.result      (H, T, E)  z_h @ W_O[h], each head's part of attn (minus c_proj's bias)
    h.{i}.resid_mid        (T, E)     resid_pre + attn
    h.{i}.ln_2.scale, ln_2.normalized, ln_f.scale, ln_f.normalized   as for ln_1

The (H, T, T) and (H, T, E) arrays (softmax, scores, result) and the finer points are
selected only by a pattern that spells out their last name part (select_names).

The forward pass itself only calls `record(name, array)` at each of these points; the
default `record` does nothing, so nothing is copied or kept unless you ask.

Gradients, for ports of training code (see `gradients`): "grad.<activation name>" is
dloss/d(that activation), same shape, and "grad.<checkpoint key>" is dloss/d(that weight)
(grad.h.3.attn.c_attn.weight, grad.wte.weight). Their BACKWARD order is the order in which
the backward pass computes them, read off the pass itself (backward_pass_order,
gradient_order_key): grad.logits, grad.ln_f, grad.ln_f.weight, ..., grad.h.{L-1},
grad.h.{L-1}.mlp.c_proj, grad.h.{L-1}.mlp.c_proj.weight, ..., grad.h.0.ln_1.bias, grad.wpe,
grad.wte, grad.wpe.weight, grad.wte.weight. The loss is the mean cross-entropy of `targets`
(numpy_gpt2.loss_and_grads).
"""

from __future__ import annotations

import fnmatch
import functools
import re

import numpy as np

from numpy_gpt2.backward import loss_and_grads
from numpy_gpt2.config import GPT2Config
from numpy_gpt2.hooks import FINE_POINTS, is_fine_point
from numpy_gpt2.initialization import init_params
from numpy_gpt2.model import forward, new_kv_cache
from numpy_gpt2.params import flatten_params, frozen_keys

# Every hook point inside block i, in forward order ("h.{i}." + name; "" is the block output),
# and those that are module outputs (what `dump` writes and ports compare).
BLOCK_POINTS = ("resid_pre", "ln_1.scale", "ln_1.normalized", "ln_1", "attn.c_attn", "attn.q",
                "attn.k", "attn.v", "attn.scores", "attn.softmax", "attn.z", "attn.result", "attn",
                "resid_mid", "ln_2.scale", "ln_2.normalized", "ln_2", "mlp.c_fc", "mlp.gelu",
                "mlp.c_proj", "")
BLOCK_NAMES = tuple(n for n in BLOCK_POINTS if not is_fine_point(n))
FINAL_POINTS = ("ln_f.scale", "ln_f.normalized", "ln_f", "logits")
LARGE = ("softmax", "scores", "result")  # (H, T, T) and (H, T, E) per block


def activation_names(config: GPT2Config, softmax: bool = True, points: bool = False) -> list[str]:
    """Every activation name of a model, in forward order: the module outputs, or with
    points=True every hook point (numpy_gpt2.hooks.FINE_POINTS too). softmax=False leaves
    out the large per-head arrays (attn.softmax; attn.scores and attn.result)."""
    def keep(n):
        return (points or not is_fine_point(n)) and (softmax or n.rsplit(".", 1)[-1] not in LARGE)
    names = ["wte", "wpe"]
    for i in range(config.n_layer):
        names += [f"h.{i}.{n}" if n else f"h.{i}" for n in BLOCK_POINTS if keep(n)]
    return names + [n for n in FINAL_POINTS if keep(n)]


def _spelled_out(name: str) -> bool:
    """Points a wildcard alone does not select: the large ones and the finer ones."""
    last = name.rsplit(".", 1)[-1]
    return last in LARGE or last in FINE_POINTS


def select_names(all_names: list[str], patterns="*") -> list[str]:
    """The names matching any of the fnmatch `patterns`, kept in the order of `all_names`.

    patterns: one string (comma-separated patterns allowed, e.g. "h.0.*,logits") or a list.
    The attention probabilities ("h.{i}.attn.softmax", (H, T, T) each: large) are selected
    only by a pattern that spells out "softmax", e.g. "*softmax" or "h.3.attn.softmax";
    plain "*" leaves them out. The same holds for the other large arrays (scores, result)
    and the finer hook points: "*resid_pre", "h.*.attn.z", "*.scale". A pattern that
    matches nothing is an error (likely a typo).
    """
    if isinstance(patterns, str):
        patterns = patterns.split(",")
    patterns = [p.strip() for p in patterns if p.strip()]
    if not patterns:
        raise ValueError("no activation name patterns given (e.g. '*', 'h.0.*', 'logits')")
    chosen = set()
    for pattern in patterns:
        hits = [n for n in all_names if fnmatch.fnmatchcase(n, pattern)
                and (not _spelled_out(n) or n.rsplit(".", 1)[-1] in pattern)]
        if not hits:
            raise ValueError(f"activation name pattern {pattern!r} matches no name; names are "
                             f"{all_names[0]}, {all_names[1]}, h.0.ln_1, ..., {all_names[-1]} "
                             f"(see numpy_gpt2.activation_names; the finer points and the large "
                             f"ones need their last part spelled out: '*resid_pre', 'h.*.attn.z')")
        chosen.update(hits)
    return [n for n in all_names if n in chosen]


def activations(params: dict, config: GPT2Config, tokens, names="*", *, hooks=None,
                generate: int = 0, **sampling) -> dict[str, np.ndarray]:
    """Run the forward pass and return the named activations {name: array}, in forward order.

    tokens: int array (T,) -> arrays without a batch axis (see the module docstring for
    shapes); (B, T) -> every array with a leading B. names: fnmatch pattern(s) over every
    hook point, see select_names ("*" = the module outputs but the attention probabilities).
    The arrays are copies in the weights' dtype, from one forward pass: its logits are
    exactly activations()["logits"].
    hooks: as forward's ({pattern: fn}); the arrays are those of the hooked run.
    generate: first generate this many tokens after the prompt (numpy_gpt2.generate with
    **sampling and hooks; T + generate <= n_ctx), then return the activations over prompt +
    generated tokens as generation computes them: the prompt, then one token at a time
    through the kv cache, joined along the positions (scores padded with -inf, softmax
    with 0 on the keys a step did not have yet). They equal one forward pass over the whole
    sequence to rounding. Hooks run in both passes (generating, then capturing).
    """
    tokens = np.asarray(tokens)
    wanted = select_names(activation_names(config, points=True), names)
    if generate:
        return _activations_generating(params, config, tokens, wanted, hooks, generate, sampling)
    if sampling:
        raise ValueError(f"sampling options ({', '.join(sampling)}) need generate > 0")
    capture = _Capture(wanted, tokens.ndim == 1, 1 if tokens.ndim == 1 else tokens.shape[0])
    forward(params, config, tokens, record=capture, hooks=hooks)
    return {name: capture.arrays[name] for name in wanted}


class _Capture:
    """forward's record: copies of the wanted activations, without the batch axis for one
    sequence (single); wpe repeated over the batch."""

    def __init__(self, wanted, single, batch):
        self.keep, self.single, self.batch, self.arrays = set(wanted), single, batch, {}

    def wants(self, name):
        return name in self.keep

    def __call__(self, name, value):
        if name not in self.keep:
            return
        if name == "wpe":  # (T, E) when shared by the batch: repeat it so every name has the batch axis
            value = np.broadcast_to(value, (self.batch,) + value.shape[-2:])
        self.arrays[name] = np.array(value[0] if self.single else value)  # a copy: value may be reused


def _activations_generating(params, config, prompt, wanted, hooks, n, sampling):
    """activations(generate=n): generate, then the prompt and each new token through the kv
    cache, every step's arrays joined along the positions."""
    from numpy_gpt2.generation.sampling import generate as generate_tokens  # it imports model too

    if prompt.ndim not in (1, 2) or prompt.shape[-1] + n > config.n_ctx:
        raise ValueError(f"activations(generate={n}) needs tokens (T,) or (B, T) with T + generate "
                         f"<= n_ctx={config.n_ctx}, got shape {prompt.shape}")
    made = list(generate_tokens(params, config, prompt, n, hooks=hooks, **sampling))
    new = np.array(made, dtype=np.int64).T  # (steps,) or (B, steps)
    batch = prompt if prompt.ndim == 2 else prompt[None]
    new = new.reshape(batch.shape[0], -1)
    cache = new_kv_cache(config, batch.shape[0], params["wte"]["weight"].dtype,
                         max_len=batch.shape[1] + new.shape[1])
    steps = []
    for piece in [batch] + [new[:, j:j + 1] for j in range(new.shape[1])]:
        capture = _Capture(wanted, False, batch.shape[0])
        forward(params, config, piece, kv_cache=cache, record=capture, hooks=hooks)
        steps.append(capture.arrays)
    S = cache["length"]
    joined = {}
    for name in wanted:
        parts = [step[name] for step in steps]
        last = name.rsplit(".", 1)[-1]
        if last in ("scores", "softmax"):  # keys: pad every step's rows to all S positions
            fill = -np.inf if last == "scores" else 0
            parts = [np.pad(p, [(0, 0)] * (p.ndim - 1) + [(0, S - p.shape[-1])], constant_values=fill)
                     for p in parts]
        joined[name] = np.concatenate(parts, axis=-2)
        if prompt.ndim == 1:
            joined[name] = joined[name][0]
    return joined


def forward_order_key(name: str) -> tuple:
    """Sort key putting activation names in forward order for any n_layer; unknown names last."""
    if name in ("wte", "wpe"):
        return (0, 0, name == "wpe")
    m = re.fullmatch(r"h\.(\d+)(?:\.(.+))?", name)
    if m and (m.group(2) or "") in BLOCK_POINTS:
        return (1, int(m.group(1)), BLOCK_POINTS.index(m.group(2) or ""))
    if name in FINAL_POINTS:
        return (2, 0, FINAL_POINTS.index(name))
    return (3, 0, name)


# ---- gradients ----------------------------------------------------------------------------

GRAD = "grad."  # prefix of gradient names: "grad.h.0.ln_1", "grad.h.0.attn.c_attn.weight"
IGNORE_INDEX = -100  # a target that is not scored (torch's cross_entropy default)


def gradient_names(config: GPT2Config, softmax: bool = True, points: bool = False) -> list[str]:
    """"grad.<activation name>" for every activation, in BACKWARD order: the forward order
    reversed, from grad.logits back to grad.wpe, grad.wte (softmax=False leaves out the
    gradients of the large per-head arrays; points=True: of every hook point)."""
    return [GRAD + name for name in reversed(activation_names(config, softmax, points))]


def parameter_gradient_names(params: dict, config: GPT2Config | None = None) -> list[str]:
    """"grad.<checkpoint key>" for every weight in `params`, in the order the backward pass
    computes them (see gradient_order_key): lm_head (untied only), ln_f, blocks L-1 .. 0,
    wpe, wte last. Given the config of a model without biases (config.bias False), not the
    biases: they are constants, not parameters (params.frozen_keys)."""
    frozen = set(frozen_keys(params, config)) if config is not None else set()
    return sorted((GRAD + key for key in flatten_params(params) if key not in frozen),
                  key=gradient_order_key)


@functools.lru_cache(maxsize=1)
def backward_pass_order() -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """The order in which the backward pass produces every gradient, read off the pass itself:
    loss_and_grads' record_grad sees each activation's and each weight's gradient as it is
    computed. Run once, on a tiny 2-layer model with an untied head (every name occurs), and
    split into (before the blocks, one block with "h.{i}." removed, after the blocks); the
    two blocks must agree, so the order holds for any n_layer."""
    config = GPT2Config(n_layer=2, n_head=1, n_embd=4, n_ctx=2, vocab_size=3,
                        tie_word_embeddings=False)
    params = init_params(config)
    seen = []

    def see(name, _):
        seen.append(name)
    see.wants = lambda name: True  # every point, the finer ones too
    loss_and_grads(params, config, [[0, 1]], [[1, 2]], record_grad=see)
    blocks = [i for i, name in enumerate(seen) if name.startswith("h.")]
    before, after = tuple(seen[:blocks[0]]), tuple(seen[blocks[-1] + 1:])
    block = [[re.sub(r"^h\.\d+\.?", "", n) for n in seen if n.startswith(f"h.{i}.") or n == f"h.{i}"]
             for i in (1, 0)]
    if block[0] != block[1] or seen[blocks[0]:blocks[-1] + 1] != [
            f"h.{i}.{n}".rstrip(".") for i in (1, 0) for n in block[0]]:
        raise AssertionError(f"the backward pass's blocks do not repeat one order: {seen}")
    return before, tuple(block[0]), after


def gradient_order_key(name: str) -> tuple:
    """Sort key putting "grad.*" names, activations' and weights' mixed, in the order the
    backward pass produces them, for any n_layer (backward_pass_order): grad.logits,
    grad.lm_head.weight (untied head), grad.ln_f, grad.ln_f.weight, grad.ln_f.bias, then
    blocks L-1 .. 0, each from its output back to its input with every module's weight
    gradients between the gradients of its output and of its input (grad.h.{i},
    grad.h.{i}.mlp.c_proj, grad.h.{i}.mlp.c_proj.weight, .bias, grad.h.{i}.mlp.gelu, ...,
    grad.h.{i}.ln_1, grad.h.{i}.ln_1.weight, .bias), then grad.wpe, grad.wte,
    grad.wpe.weight and grad.wte.weight LAST (with a tied head it sums the output head's
    part, computed first, and the embedding's). So the first wrong gradient in this order
    is the earliest wrong number a port computed. Unknown names sort last."""
    before, block, after = backward_pass_order()
    key = name[len(GRAD):] if name.startswith(GRAD) else None
    m = re.fullmatch(r"h\.(\d+)(?:\.(.+))?", key or "")
    if key in before:
        return (0, before.index(key))
    if m and (m.group(2) or "") in block:
        return (1, -int(m.group(1)), block.index(m.group(2) or ""))
    if key in after:
        return (2, after.index(key))
    return (3,)


def next_token_targets(tokens, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """The default training targets of a sequence: the next token of each position.

    targets[..., t] = tokens[..., t + 1]; the last position has no next token, so its
    target is ignore_index (not scored). tokens (T,) or (B, T) -> int64 of the same shape.
    """
    tokens = np.asarray(tokens)
    targets = np.full(tokens.shape, ignore_index, dtype=np.int64)
    targets[..., :-1] = tokens[..., 1:]
    return targets


def gradients(params: dict, config: GPT2Config, tokens, targets, names="*",
              ignore_index: int = IGNORE_INDEX, *, reference: bool = False
              ) -> tuple[float, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """One forward and backward pass of the mean cross-entropy of `targets`
    (numpy_gpt2.loss_and_grads), returned as dump tensors:

        (loss, {"grad.<activation>": dloss/d(activation)} in backward order,
               {"grad.<checkpoint key>": dloss/d(weight)} in backward order)

    tokens (T,) -> activation gradients without a batch axis (shapes of `activations`);
    (B, T) -> with a leading B. targets: same shape, targets[..., t] the token that should
    follow position t (see next_token_targets), ignore_index not scored. Weight gradients
    have the weights' shapes (none for the biases of a model without biases, config.bias
    False: they are not parameters). names: fnmatch pattern(s) over the "grad.*" names, as in
    select_names ("*" = all but grad.h.{i}.attn.softmax; "grad.h.0.*" = block 0's
    activation and weight gradients; the finer points as in select_names: "grad.*resid_pre",
    "grad.h.*.attn.z"). reference=True runs the readable backward functions.
    """
    tokens = np.asarray(tokens)
    act_names = gradient_names(config, points=True)
    wanted = select_names(act_names + parameter_gradient_names(params, config), names)
    keep = set(wanted)
    single = tokens.ndim == 1
    captured = {}

    wanted_acts = keep.intersection(act_names)

    def record_grad(name, value):  # value: (B, T, ...) always (weights' come from grads below)
        if GRAD + name in wanted_acts:
            captured[GRAD + name] = np.array(value[0] if single else value)  # may be reused
    record_grad.wants = lambda name: GRAD + name in wanted_acts

    loss, grads = loss_and_grads(params, config, tokens, targets, ignore_index,
                                 reference=reference, record_grad=record_grad if wanted_acts else None)
    flat = flatten_params(grads)
    act_grads = {n: captured[n] for n in wanted if n in wanted_acts}
    param_grads = {n: flat[n[len(GRAD):]] for n in wanted if n not in wanted_acts}
    return loss, act_grads, param_grads
