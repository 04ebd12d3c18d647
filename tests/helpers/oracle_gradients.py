"""Gradients from transformers' GPT2LMHeadModel and torch autograd (the oracle), under
numpy_gpt2's dump names.

The loss is computed from the model's logits exactly as the API promises:
    loss = F.cross_entropy(logits.view(-1, V), targets.view(-1), ignore_index=-100)
(not the model's own shifted loss, so nothing is shifted differently). Forward hooks on
the same modules as tests/oracle_activations.py (wte, wpe, each block's ln_1, attn.c_attn,
attn, ln_2, mlp.c_fc, mlp.act, mlp.c_proj, the block, ln_f; run_with_named_outputs) keep
each output and call retain_grad() on it, as on the softmax probabilities
(output_attentions=True) and the logits. After loss.backward(), each kept tensor's .grad
is dloss/d(that activation) and each parameter's .grad is dloss/d(weight) (the tied
wte/lm_head is one Parameter, so its .grad already sums the embedding's and the output
head's parts).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from numpy_gpt2.debug.capture import GRAD, activation_names, gradient_names, gradient_order_key, select_names
from numpy_gpt2.debug.dump_format import save_activations
from helpers.oracle_activations import run_with_named_outputs


def oracle_gradients(model, tokens, targets, names="*", ignore_index=-100):
    """(loss, {activation name: array}, {"grad.<name>": array}) for one sequence tokens (T,)
    and targets (T,), without the batch axis (numpy_gpt2.activations' convention).

    names: fnmatch pattern(s) over the activation names and the "grad.*" names (activation
    and parameter gradients), as numpy_gpt2.debug.capture.select_names reads them. Forward
    names come in forward order, gradient names in backward order (gradient_order_key)."""
    kept = {}

    def keep(name, out):
        out.retain_grad()  # autograd then keeps dloss/d(out) in out.grad
        kept[name] = out

    model.zero_grad(set_to_none=True)
    run_with_named_outputs(model, tokens, keep)
    logits = kept["logits"]
    target = torch.as_tensor(np.asarray(targets, dtype=np.int64))
    loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), target.view(-1),
                           ignore_index=ignore_index)
    loss.backward()

    params = {GRAD + name.removeprefix("transformer."): p.grad
              for name, p in model.named_parameters()}  # tied lm_head is listed once, as wte
    all_names = (activation_names(model.config) + gradient_names(model.config)
                 + sorted(params, key=gradient_order_key))
    acts, grads = {}, {}
    for name in select_names(all_names, names):
        if name in params:
            grads[name] = params[name].numpy().copy()
        elif name.startswith(GRAD):  # every capture has a batch axis of 1
            grads[name] = kept[name[len(GRAD):]].grad[0].numpy().copy()
        else:
            acts[name] = kept[name].detach()[0].numpy().copy()
    model.zero_grad(set_to_none=True)
    return float(loss.item()), acts, grads


def write_oracle_gradient_dump(path, model, tokens, targets, names="*", dtype="float32"):
    """A gradient dump of the oracle in the format of scripts/dump.py --grads."""
    loss, acts, grads = oracle_gradients(model, tokens, targets, names)
    save_activations(path, tokens, {**acts, **grads},
                     {"model": "transformers.GPT2LMHeadModel + torch autograd (oracle)",
                      "dtype": dtype}, targets=targets, loss=loss)
    return loss, acts, grads
