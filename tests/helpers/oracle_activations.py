"""The named activations of transformers' GPT2LMHeadModel (the oracle), under numpy_gpt2's names.

Forward hooks on the HF modules give every intermediate: wte / wpe (embeddings), each
block's ln_1, attn.c_attn, attn (GPT2Attention's output, after c_proj), ln_2, mlp.c_fc,
mlp.act (= our mlp.gelu), mlp.c_proj, the block itself, and ln_f; output_attentions=True
(eager attention) gives the softmax probabilities. Used to check numpy_gpt2.activations and
to write an oracle dump file for scripts/compare.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from numpy_gpt2.debug.capture import activation_names, select_names
from numpy_gpt2.debug.dump_format import save_activations

# our name inside block i -> the HF submodule path inside model.transformer.h[i]
HF_BLOCK_MODULES = {"ln_1": "ln_1", "attn.c_attn": "attn.c_attn", "attn": "attn", "ln_2": "ln_2",
                    "mlp.c_fc": "mlp.c_fc", "mlp.gelu": "mlp.act", "mlp.c_proj": "mlp.c_proj",
                    "": ""}


def run_with_named_outputs(model, tokens, keep) -> None:
    """Run the HF model on one sequence tokens (T,), calling keep(our name, output tensor)
    for every named activation: forward hooks on the modules, then each layer's softmax
    probabilities (output_attentions=True) and the logits."""

    def hook(name):
        def save(module, inputs, output):
            keep(name, output[0] if isinstance(output, tuple) else output)  # attn/block: tuples
        return save

    tr = model.transformer
    hooks = [tr.wte.register_forward_hook(hook("wte")), tr.wpe.register_forward_hook(hook("wpe"))]
    for i, block in enumerate(tr.h):
        for ours, theirs in HF_BLOCK_MODULES.items():
            module = block.get_submodule(theirs) if theirs else block
            hooks.append(module.register_forward_hook(hook(f"h.{i}.{ours}" if ours else f"h.{i}")))
    hooks.append(tr.ln_f.register_forward_hook(hook("ln_f")))
    try:
        out = model(torch.as_tensor(np.asarray(tokens, dtype=np.int64))[None],
                    output_attentions=True)
    finally:
        for h in hooks:
            h.remove()
    for i, probs in enumerate(out.attentions):
        keep(f"h.{i}.attn.softmax", probs)
    keep("logits", out.logits)


def oracle_activations(model, tokens, names="*") -> dict[str, np.ndarray]:
    """{name: array} from the HF model for one sequence tokens (T,), in forward order,
    without the batch axis (same convention as numpy_gpt2.activations)."""
    captured = {}
    with torch.no_grad():
        run_with_named_outputs(model, tokens, lambda name, out: captured.__setitem__(
            name, out.numpy().copy()))
    # every capture has a batch axis of 1 (wpe too: HF looks up position_ids of shape (1, T));
    # activation_names only reads n_layer, which the HF config has too
    return {name: captured[name][0] for name in select_names(activation_names(model.config), names)}


def write_oracle_dump(path, model, tokens, names="*", dtype="float32") -> dict[str, np.ndarray]:
    """A dump file of the oracle's activations in the format of scripts/dump.py."""
    acts = oracle_activations(model, tokens, names)
    save_activations(path, tokens, acts, {"model": "transformers.GPT2LMHeadModel (oracle)",
                                          "dtype": dtype})
    return acts


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny oracle models run ~10x faster on one thread when other processes share the
    cores (torch's worker threads otherwise wait for CPU time on every op). Import this
    fixture into a test module to use it there; the thread count is restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
