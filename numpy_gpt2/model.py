"""The GPT-2 forward pass: token ids -> logits over the vocabulary."""

from __future__ import annotations

import functools

import numpy as np

from numpy_gpt2.checks import check_attention_mask, check_forward_tokens, check_position_ids
from numpy_gpt2.config import GPT2Config
from numpy_gpt2.finite import check_finite_logits
from numpy_gpt2.hooks import Hooks, prefixed, record_copy, recorder
from numpy_gpt2.layers import layer_norm, padding_bias, transformer_block
from numpy_gpt2.fast.forward import layer_norm_fast, matmul_fast, transformer_block_fast


def forward(params: dict, config: GPT2Config, tokens, *, attention_mask=None, position_ids=None,
            kv_cache: dict | None = None, last_only: bool = False, record=None,
            reference: bool = False, hooks=None) -> np.ndarray:
    """Logits for every position of GPT-2 (Radford et al. 2019; transformers' GPT2LMHeadModel):

        x      = wte[tokens] + wpe[positions]                  (B, T, E)
        x      = x + attn(ln_1(x));  x = x + mlp(ln_2(x))       in each block i = 0 .. L-1
        logits = ln_f(x) @ wte^T (+ lm_head's bias, if any)     (B, T, V)

    tokens: ints (T,) or (B, T), past + T <= n_ctx -> (T, V) or (B, T, V) in the weights' dtype.
    attention_mask (B, S) 0/1, position_ids (B, T), kv_cache (new_kv_cache), last_only (the last
    position's logits only), record(name, array) and hooks ({pattern: fn}: fn returns None to
    observe or an array that replaces the value) over the named points, reference (the readable
    layers instead of the fast ones, tested equal): docs/loading.md, docs/debugging.md.
    Raises ValueError for bad tokens, masks or positions, NonFiniteError (a ValueError) naming the
    first non-finite activation when the logits hold NaN or inf.
    """
    tokens = check_forward_tokens(tokens, config, kv_cache)
    past = 0 if kv_cache is None else kv_cache["length"]
    single = tokens.ndim == 1
    batch, T = (1 if single else tokens.shape[0]), tokens.shape[-1]
    mask = check_attention_mask(attention_mask, batch, past + T, single)
    positions = check_position_ids(position_ids, batch, T, single, config)
    if single:
        tokens = tokens[None]
    record = Hooks(hooks, observe=record, single=single) if hooks else recorder(record)
    B = tokens.shape[0]

    wte, wpe = params["wte"]["weight"], params["wpe"]["weight"]
    if positions is None and mask is not None:  # real tokens count; padding gets position 0
        positions = np.maximum(np.cumsum(mask, axis=1)[:, past:] - 1, 0)
    # (B, T, E), and (T, E) or (B, T, E)
    tok_emb, pos_emb = wte[tokens], wpe[past:past + T] if positions is None else wpe[positions]
    tok_emb = record("wte", tok_emb)
    if hooks and pos_emb.ndim == 2:  # hooks see every name with the tokens' batch axis
        pos_emb = np.broadcast_to(pos_emb, (B,) + pos_emb.shape)
    pos_emb = record("wpe", pos_emb)
    x = tok_emb + pos_emb  # a new array: the fast blocks update it in place
    key_bias = None if mask is None else padding_bias(mask, x.dtype)  # (B, S)
    # The work is shared out between numpy_gpt2.fast.threads' pool, single-threaded BLAS in each
    # thread (fast/forward.matmul_fast, run_head_groups): see docs/speed.md for why.
    for i, block in enumerate(params["h"]):
        kv = None if kv_cache is None else (kv_cache["keys"][i], kv_cache["values"][i], past)
        if reference:
            x = transformer_block(x, block, config.n_head, config.layer_norm_epsilon, kv=kv,
                                  record=prefixed(record, f"h.{i}."), key_bias=key_bias,
                                  **config.block_options(i))
        else:
            last = last_only and i == config.n_layer - 1  # only the last position needed here
            x = transformer_block_fast(x, block, config.n_head, config.layer_norm_epsilon, kv=kv,
                                       last_only=last, record=prefixed(record, f"h.{i}."),
                                       key_bias=key_bias, **config.block_options(i))
        # the next fast block updates x in place; the readable one makes a new array
        x = record(f"h.{i}", x) if reference else record_copy(record, f"h.{i}", x)
    if kv_cache is not None:
        kv_cache["length"] = past + T
    if last_only:
        x = x[:, -1:]
    norm = layer_norm if reference else layer_norm_fast
    x = norm(x, **params["ln_f"], eps=config.layer_norm_epsilon, record=prefixed(record, "ln_f."))
    x = record("ln_f", x)
    head = params["lm_head"]["weight"] if "lm_head" in params else wte  # tied: the usual case
    # One 2-D matmul over all B*T rows: (B, T, E) @ (E, V) would read the head (a third of
    # the weights) once per sequence.
    logits = matmul_fast(x.reshape(-1, x.shape[-1]), head.T).reshape(B, x.shape[1], head.shape[0])
    if "bias" in params.get("lm_head", {}):  # an unembedding bias (folded ln_f: numpy_gpt2.interp)
        logits += params["lm_head"]["bias"]
    logits = record("logits", logits)
    if single:
        logits, tokens = logits[0], tokens[0]
    # NaN or inf would otherwise flow on silently (argmax of NaN is token 0): one sum over the
    # logits here; on failure the error names the first non-finite activation.
    again = forward if mask is None and position_ids is None and not hooks else functools.partial(
        forward, attention_mask=attention_mask, position_ids=position_ids, hooks=hooks)
    check_finite_logits(logits, params, config, tokens, kv_cache=kv_cache, reference=reference,
                        forward=again)
    return logits


def new_kv_cache(config: GPT2Config, batch_size: int, dtype=np.float32, max_len: int | None = None):
    """Empty key/value cache for incremental decoding.

    Returns {"keys": [...], "values": [...], "length": 0} with one (B, H, max_len, D) array
    per layer in each list (max_len defaults to n_ctx). Preallocated once, so decoding
    writes into it instead of concatenating; untouched pages cost no memory.
    """
    max_len = config.n_ctx if max_len is None else max_len
    if not 1 <= max_len <= config.n_ctx:
        raise ValueError(f"max_len must be in 1..n_ctx={config.n_ctx}, got {max_len}")
    shape = (batch_size, config.n_head, max_len, config.head_size)
    return {"keys": [np.empty(shape, dtype) for _ in range(config.n_layer)],
            "values": [np.empty(shape, dtype) for _ in range(config.n_layer)],
            "length": 0}
