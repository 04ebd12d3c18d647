"""A test checkpoint whose greedy continuations are varied enough to be a real test.

With checkpoints.random_state_dict as is, the residual stream is dominated by the current
token's embedding, and logits = ln_f(x) @ wte.T then favour repeating it: greedy decoding
collapses to one token repeated. Scaling the position embeddings up makes the next token depend
on the position and the context (seed 1, x4: ~20 distinct tokens in 100 greedy steps, top-2
logit margins >= 0.003, far above float32 rounding), so comparing token ids with transformers
checks the whole decoding loop.
"""

from __future__ import annotations

import os
import shutil

from helpers.checkpoints import checkpoint_tensors, make_config, random_state_dict, write_safetensors


def write_generation_checkpoint(directory, n_ctx=128, vocab_size=97, n_embd=32, n_layer=2,
                                n_head=2, seed=1, wpe_scale=4.0, tokenizer_dir=None):
    """Write model.safetensors (hub layout) + config.json (+ the tokenizer files when
    tokenizer_dir is given) into directory; returns the transformers config."""
    config = make_config(n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_ctx=n_ctx,
                         vocab_size=vocab_size)
    sd = random_state_dict(config, seed=seed)
    sd["wpe.weight"] = sd["wpe.weight"] * wpe_scale
    os.makedirs(directory, exist_ok=True)
    write_safetensors(os.path.join(directory, "model.safetensors"),
                      checkpoint_tensors(sd, config, "hub"), metadata={"format": "pt"}, align=False)
    config.save_pretrained(directory)
    if tokenizer_dir is not None:
        for name in ("vocab.json", "merges.txt"):
            shutil.copy(os.path.join(tokenizer_dir, name), directory)
    return config
