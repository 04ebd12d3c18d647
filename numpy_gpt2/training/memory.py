"""How much memory a run of the model needs, estimated before anything is allocated: one
estimator for training (train) and for generation (generate), so that the commands can refuse
a run that cannot fit with one line instead of being killed by the kernel halfway.

The estimate is a lower bound in exact Python integers (any setting value, however absurd),
counted in the model's numbers (itemsize bytes each) from its shape (GPT2Config). What is done
with it (an error, a smaller batch) is the caller's.
"""

from __future__ import annotations

import os


def n_parameters(config) -> int:
    """GPT-2's parameter count from its shape: wte, wpe, n_layer blocks, the final LayerNorm."""
    E, L = config.n_embd, config.n_layer
    return config.vocab_size * E + config.n_ctx * E + L * (12 * E * E + 13 * E) + 2 * E


def memory_needed(config, itemsize: int, *, batch: int, tokens: int, training: bool = False,
                  new_tokens: int = 0, micro_batches: int = 1, eval_batches: int = 0) -> dict:
    """{what: bytes} a step needs beyond the loaded weights, for batch sequences of tokens.

    training: the gradients and AdamW's m and v (3 x parameters; with the weights 4), one
    micro-batch's logits and per-layer activations (batch x tokens x (4 n_embd n_layer +
    vocab)), and the int64 inputs and targets of the step's micro_batches and of eval_batches.
    Generation (new_tokens more per sequence): the KV cache (2 n_layer (tokens + new_tokens)
    n_embd per sequence), the prompt's forward pass (its widest activation, the MLP's 4 n_embd or
    the attention's n_head x tokens per position, a few at a time) and a few vocab_size rows
    of logits and probabilities. Shapes: docs/speed.md.
    """
    E, L, V = config.n_embd, config.n_layer, config.vocab_size
    if training:
        return {"weights, gradients and AdamW state": 4 * n_parameters(config) * itemsize,
                "activations": batch * tokens * (4 * E * L + V) * itemsize,
                "batches": batch * tokens * (micro_batches + eval_batches) * 16}
    kv = 2 * L * (tokens + new_tokens) * E
    prefill = 3 * tokens * max(4 * E, config.n_head * tokens)
    return {"KV cache": batch * kv * itemsize,
            "activations, logits": batch * (prefill + 4 * V) * itemsize}


def physical_memory() -> int | None:
    """Bytes of RAM of this machine (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def available_memory() -> int | None:
    """Bytes the kernel says can be allocated without swapping (MemAvailable), or None."""
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return None
