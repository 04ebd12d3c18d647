"""The GPT-2 backward pass: the loss of a batch and the gradient of every parameter.

    loss, grads = loss_and_grads(params, config, tokens, targets)

is forward (numpy_gpt2/model.py), cross-entropy (numpy_gpt2/loss.py), then the chain rule
back through the model, one layer at a time (numpy_gpt2/layers_backward.py):

    logits -> ln_f -> h.{L-1} -> ... -> h.0 -> wte[tokens] + wpe[positions]

`grads` has exactly the structure and key names of `params`. For a model without biases
(config.bias False, nanoGPT's bias=False) the bias tensors are constants, not parameters:
their gradients are zeros and record_grad does not see them.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from numpy_gpt2.checks import check_mirrors_params, check_targets, is_int, show
from numpy_gpt2.config import GPT2Config
from numpy_gpt2.dropout import apply as apply_dropout
from numpy_gpt2.errors import NonFiniteError
from numpy_gpt2.finite import all_finite, check_finite_logits
from numpy_gpt2.hooks import is_weight_name, no_record, prefixed, record_weights, wants
from numpy_gpt2.layers import layer_norm, transformer_block
from numpy_gpt2.layers_backward import (embedding_backward, layer_norm_backward, lm_head_backward,
                                        position_embedding_backward, record_layer_norm_inner, transformer_block_backward)
from numpy_gpt2.fast.training import (layer_norm_backward_fast, lm_head_cross_entropy_fast, record_layer_norm_inner_fast,
                                      transformer_block_backward_fast, transformer_block_saving_fast)
from numpy_gpt2.fast.forward import normalize
from numpy_gpt2.loss import cross_entropy_backward, masked_cross_entropy
from numpy_gpt2.model import forward
from numpy_gpt2.params import flatten_params, frozen_keys, nest_params


def loss_and_grads(params: dict, config: GPT2Config, tokens, targets, ignore_index: int = -100, *,
                   reference: bool = False, record=None, record_grad=None, grads: dict | None = None,
                   dropout=None, num_items_in_batch: int | None = None, check_grads: bool = True):
    """The mean cross-entropy of the targets and its gradient for every parameter.

    tokens: ints (T,) or (B, T); targets: the same shape, targets[..., t] the token that should
        follow position t; ignore_index targets are not scored.
    Returns (loss, grads): the mean over the kept targets (torch's cross_entropy(...,
        ignore_index=-100)) as a float, and a dict mirroring params (zero biases when config.bias
        is False: they are constants). num_items_in_batch: divide by the kept targets of a whole
        step instead (gradient accumulation, docs/training.md). grads: a dict to add into.
    record / record_grad(name, array): the activations and dloss/d(activation or weight) in
        backward order; dropout: a numpy_gpt2.dropout.Dropout; reference: the readable layers and
        their backward twins (same numbers to rounding). More: docs/debugging.md, docs/learn.md.
    Raises ValueError for bad tokens or targets, before any work; NonFiniteError when the loss
    is not finite, or a gradient (check_grads=False: not checked here, one pass over them
    less, for a caller that checks them later: train_step, through the gradient norm).
    """
    given = np.asarray(tokens)  # as the caller gave them: error messages use this shape
    tokens, targets = check_targets(tokens, targets, config, ignore_index,
                                    allow_none_kept=num_items_in_batch is not None)
    if num_items_in_batch is not None:
        check_num_items(num_items_in_batch, int(np.count_nonzero(targets != ignore_index)))
    into = None if grads is None else check_mirrors_params(grads, params, "grads= (the accumulator)")
    if dropout is not None and dropout.p == 0:
        dropout = None  # exactly the path without dropout
    if reference and dropout is not None:
        raise ValueError("dropout= runs on the fast path only (reference=False)")
    run = (partial(_loss_and_grads_reference, num_items=num_items_in_batch) if reference else
           partial(_loss_and_grads_fast, dropout=dropout, num_items=num_items_in_batch))
    frozen = set(frozen_keys(params, config))
    if frozen and record_grad is not None:
        record_grad = _skipping(record_grad, frozen)
    loss, new = run(params, config, tokens, targets, ignore_index,
                    record or no_record, record_grad or no_record)
    if frozen:  # the constants' gradients: exactly zero, whatever the pass computed for them
        new = nest_params({key: np.zeros_like(g) if key in frozen else g
                           for key, g in flatten_params(new).items()})
    check_finite_logits(np.float64(loss), params, config, given, forward=forward, reference=reference,
                        what="loss")
    if check_grads:
        check_finite_grads(new)
    if into is None:
        return loss, new
    for key, g in flatten_params(new).items():
        into[key] += g
    return loss, grads


def _skipping(record_grad, names):
    """record_grad, not called for the given names (the constants of a model without biases)."""
    def see(name, value):
        if name not in names:
            record_grad(name, value)
    see.wants = lambda name: wants(record_grad, name)  # the finer points too, when it asks for them
    return see


def check_finite_grads(grads: dict) -> None:
    """Raise NonFiniteError naming the parameters whose gradient holds NaN or inf (with a
    finite loss this is an overflow in the backward pass: float64 shows whether it is the
    float32 range). One sum per tensor."""
    bad = [key for key, g in flatten_params(grads).items() if not all_finite(g)]
    if bad:
        raise NonFiniteError(f"non-finite gradients (the loss is finite) for {', '.join(bad[:5])}"
                             f"{f' and {len(bad) - 5} more' if len(bad) > 5 else ''}")


def check_num_items(num_items_in_batch, kept: int) -> None:
    """ValueError unless num_items_in_batch is an integer >= 1 and >= kept (this batch's kept
    targets: the step's count includes them)."""
    if not is_int(num_items_in_batch) or num_items_in_batch < max(kept, 1):
        raise ValueError(f"num_items_in_batch must be an integer >= {max(kept, 1)} (the kept "
                         f"targets of every micro-batch of the step, this batch's {kept} "
                         f"included), got {show(num_items_in_batch)}")


def _loss_and_grads_reference(params, config, tokens, targets, ignore_index, record, record_grad,
                              num_items=None):
    """The readable path: keep each block's input, then go back block by block."""
    eps, n_head = config.layer_norm_epsilon, config.n_head
    wte, wpe = params["wte"]["weight"], params["wpe"]["weight"]
    head = params["lm_head"]["weight"] if "lm_head" in params else wte
    T = tokens.shape[1]

    x = wte[tokens] + wpe[:T]  # (B, T, E)
    record("wte", wte[tokens])
    record("wpe", wpe[:T])
    inputs = []  # the input of each block: all its backward needs
    for i, block in enumerate(params["h"]):
        inputs.append(x)
        x = transformer_block(x, block, n_head, eps, record=prefixed(record, f"h.{i}."),
                              **config.block_options(i))
        record(f"h.{i}", x)
    h = layer_norm(x, **params["ln_f"], eps=eps)
    record("ln_f", h)
    logits = h @ head.T  # (B, T, V)
    record("logits", logits)
    loss = masked_cross_entropy(logits, targets, ignore_index, num_items)

    dlogits = cross_entropy_backward(logits, targets, ignore_index, num_items)
    record_grad("logits", dlogits)
    dh, dhead = lm_head_backward(dlogits, h, head)
    if head is not wte:
        record_grad("lm_head.weight", dhead)
    record_grad("ln_f", dh)
    record_layer_norm_inner(prefixed(record_grad, "ln_f."), dh, x, params["ln_f"]["weight"], eps)
    dx, dln_f = layer_norm_backward(dh, x, params["ln_f"]["weight"], eps)
    record_weights(record_grad, "ln_f", dln_f)
    dblocks = [None] * config.n_layer
    for i in reversed(range(config.n_layer)):
        record_grad(f"h.{i}", dx)
        dx, dblocks[i] = transformer_block_backward(dx, inputs[i], params["h"][i], n_head, eps,
                                                    record=prefixed(record_grad, f"h.{i}."),
                                                    **config.block_options(i))
    record_grad("wpe", dx)
    record_grad("wte", dx)
    return loss, _assemble(params, config, tokens, dx, dhead, dln_f, dblocks, record_grad)


def _assemble(params, config, tokens, dx0, dhead, dln_f, dblocks, record_grad):
    """The gradient dict, shaped like params, from the pieces of the backward pass (the
    embeddings' gradients are computed here: wpe's, then wte's, both passed to record_grad)."""
    tied = "lm_head" not in params  # then wte is the embedding AND the output head
    dwpe = record_weights(record_grad, "wpe", {"weight": position_embedding_backward(dx0, config.n_ctx)})
    dwte = record_weights(record_grad, "wte", {"weight": embedding_backward(
        dx0, tokens, config.vocab_size, dwte=dhead if tied else None)})
    grads = {"wte": dwte, "wpe": dwpe, "h": dblocks, "ln_f": dln_f}
    if not tied:
        grads["lm_head"] = {"weight": dhead}
    return {key: grads[key] for key in params}  # the params' key order too


def _loss_and_grads_fast(params, config, tokens, targets, ignore_index, record, record_grad, dropout=None,
                         num_items=None):
    """The fast path: each block keeps what its backward needs (10 E numbers per position,
    see fast.training.transformer_block_saving_fast); the output head and the loss run fused, in
    chunks of rows. Everything is 2-D (N = B*T rows) inside."""
    eps, n_head = config.layer_norm_epsilon, config.n_head
    wte, wpe = params["wte"]["weight"], params["wpe"]["weight"]
    head = params["lm_head"]["weight"] if "lm_head" in params else wte
    B, T = tokens.shape
    E = wte.shape[1]
    record, record_grad = _batched(record, B, T), _batched(record_grad, B, T)

    x = wte[tokens] + wpe[:T]  # (B, T, E)
    record("wte", wte[tokens])
    record("wpe", wpe[:T])
    m_embd = apply_dropout(dropout, (0,), x)
    saved = []
    for i, block in enumerate(params["h"]):
        x, kept = transformer_block_saving_fast(x, block, n_head, eps, record=prefixed(record, f"h.{i}."),
                                                dropout=dropout, layer=i, **config.block_options(i))
        saved.append(kept)
        record(f"h.{i}", x)
    x = x.reshape(B * T, E)
    xhat, std = normalize(x, eps)
    h = xhat * params["ln_f"]["weight"] + params["ln_f"]["bias"]
    record("ln_f", h)
    loss, dh, dhead = lm_head_cross_entropy_fast(h, head, targets.reshape(-1), ignore_index,
                                                 record=record, record_grad=record_grad,
                                                 num_items_in_batch=num_items)
    if head is not wte:
        record_grad("lm_head.weight", dhead)
    record_grad("ln_f", dh)
    record_layer_norm_inner_fast(prefixed(record_grad, "ln_f."), dh, xhat, std, params["ln_f"]["weight"])
    dx, dln_f = layer_norm_backward_fast(dh, xhat, std, params["ln_f"]["weight"])
    record_weights(record_grad, "ln_f", dln_f)
    del x, xhat, h, dh
    dblocks = [None] * config.n_layer
    for i in reversed(range(config.n_layer)):
        record_grad(f"h.{i}", dx)
        dx, dblocks[i] = transformer_block_backward_fast(dx, saved.pop(), params["h"][i], n_head, eps,
                                                         record=prefixed(record_grad, f"h.{i}."),
                                                         **config.block_options(i))
    dx = dx.reshape(B, T, E)
    if m_embd is not None:
        dx *= m_embd
    record_grad("wpe", dx)
    record_grad("wte", dx)
    return loss, _assemble(params, config, tokens, dx, dhead, dln_f, dblocks, record_grad)


def _batched(record, B, T):
    """record, seeing (B, T, ...) copies of the fast path's (B*T, ...) row arrays (the fast
    path updates some of them in place right after recording)."""
    if record is no_record:
        return no_record

    def see(name, a):
        rows = a.ndim == 2 and a.shape[0] == B * T and not is_weight_name(name)
        a = a.reshape(B, T, *a.shape[1:]) if rows else a
        record(name, np.array(a))
    see.wants = lambda name: wants(record, name)
    return see
