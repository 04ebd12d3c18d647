"""The GPT-2 forward pass: token ids -> logits over the vocabulary."""

from __future__ import annotations

import numpy as np

from .config import GPT2Config
from .finite import check_finite_logits
from .layers import (_ignore, layer_norm, layer_norm_fast, prefixed, transformer_block,
                     transformer_block_fast)


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


def check_tokens(tokens, config: GPT2Config, past: int = 0, capacity: int | None = None,
                 what: str = "tokens") -> np.ndarray:
    """Validate token ids: integers in [0, vocab_size), shape (T,) or (B, T), T >= 1, past + T <= n_ctx.

    Returns them as an array; raises ValueError naming what is wrong. what: how messages name
    the argument (generate passes "prompt tokens").
    """
    try:
        tokens = np.asarray(tokens)
    except ValueError:  # NumPy refuses ragged nesting, e.g. [[1, 2], [3]]
        lengths = [len(row) if hasattr(row, "__len__") else "a number" for row in tokens]
        raise ValueError(f"{what} must be one sequence (T,) or a batch (B, T) of equally long "
                         f"sequences, got rows of lengths {lengths}") from None
    if tokens.ndim not in (1, 2):
        raise ValueError(f"{what} must have shape (T,) or (B, T), got shape {tokens.shape}")
    if tokens.shape[-1] == 0 or tokens.size == 0:  # before the dtype: [] is a float array
        raise ValueError(f"{what} must hold at least one position, got shape {tokens.shape} "
                         f"(to start a text from nothing: [{config.eos_token_id}], <|endoftext|>)")
    if tokens.dtype.kind not in "iu":
        raise ValueError(f"{what} must be integers, got dtype {tokens.dtype}")
    bad = (tokens < 0) | (tokens >= config.vocab_size)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{what}: token id {int(tokens[where])} at index {where} is outside "
                         f"[0, {config.vocab_size}) (vocab_size)")
    limit = config.n_ctx if capacity is None else capacity
    if past + tokens.shape[-1] > limit:
        length = f"{past} cached + {tokens.shape[-1]} new" if past else f"{tokens.shape[-1]}"
        raise ValueError(f"{what}: sequence of {length} positions is longer than the context "
                         f"(n_ctx={config.n_ctx}{'' if capacity is None else f', cache holds {capacity}'})")
    return tokens


def forward(params: dict, config: GPT2Config, tokens, *, kv_cache: dict | None = None,
            last_only: bool = False, record=None, reference: bool = False) -> np.ndarray:
    """Logits for every position: ln_f(blocks(wte[tokens] + wpe[positions])) @ wte.T.

    tokens: int array (T,) or (B, T). Returns (T, V) or (B, T, V) in the weights' dtype.
    kv_cache: from new_kv_cache(); positions continue from kv_cache["length"], the new
        keys/values are appended and the length advanced. (B must match the cache.)
    last_only: compute logits for the last position only -> (1, V) or (B, 1, V);
        the output head is a third of GPT-2 124M's weights, so generation skips the rest
        (and the last block, once its keys/values are cached, skips the other positions).
    record: optional callable(name, array) that sees every named activation
        ("wte", "wpe", "h.3.ln_1", "h.3.attn.c_attn", ..., "ln_f", "logits");
        see numpy_gpt2.activations. Recording does not change the computation: the logits
        are the same bits with or without it. Arrays may be reused after the call returns
        (copy what you keep). With last_only, the last block records the last position only.
    reference: run the readable layers (layers.transformer_block: the equations as written)
        instead of the fast ones (layers.transformer_block_fast: same math, arranged for
        speed, tested equal to rounding). For learners and tests.
    Raises ValueError for bad tokens, and NonFiniteError (a ValueError) when the logits hold
    NaN or inf, naming the first named activation that did (see numpy_gpt2.finite).
    """
    past = 0 if kv_cache is None else kv_cache["length"]
    capacity = None if kv_cache is None else kv_cache["keys"][0].shape[2]
    tokens = check_tokens(tokens, config, past, capacity)
    single = tokens.ndim == 1
    if single:
        tokens = tokens[None]
    if kv_cache is not None and kv_cache["keys"][0].shape[0] != tokens.shape[0]:
        raise ValueError(f"batch of {tokens.shape[0]} sequences but the kv_cache was made for "
                         f"{kv_cache['keys'][0].shape[0]}")
    record = record or _ignore
    B, T = tokens.shape

    wte, wpe = params["wte"]["weight"], params["wpe"]["weight"]
    tok_emb, pos_emb = wte[tokens], wpe[past:past + T]  # (B, T, E), (T, E)
    record("wte", tok_emb)
    record("wpe", pos_emb)
    x = tok_emb + pos_emb  # a new array: the fast blocks update it in place
    for i, block in enumerate(params["h"]):
        kv = None if kv_cache is None else (kv_cache["keys"][i], kv_cache["values"][i], past)
        if reference:
            x = transformer_block(x, block, config.n_head, config.layer_norm_epsilon, kv=kv,
                                  record=prefixed(record, f"h.{i}."))
        else:
            last = last_only and i == config.n_layer - 1  # only the last position needed here
            x = transformer_block_fast(x, block, config.n_head, config.layer_norm_epsilon, kv=kv,
                                       last_only=last, record=prefixed(record, f"h.{i}."))
        if record is not _ignore:
            record(f"h.{i}", x.copy() if not reference else x)  # the next block updates x in place
    if kv_cache is not None:
        kv_cache["length"] = past + T
    if last_only:
        x = x[:, -1:]
    norm = layer_norm if reference else layer_norm_fast
    x = norm(x, **params["ln_f"], eps=config.layer_norm_epsilon)
    record("ln_f", x)
    head = params["lm_head"]["weight"] if "lm_head" in params else wte  # tied: the usual case
    # One 2-D matmul over all B*T rows: (B, T, E) @ (E, V) would read the head (a third of
    # the weights) once per sequence.
    logits = (x.reshape(-1, x.shape[-1]) @ head.T).reshape(B, x.shape[1], head.shape[0])
    record("logits", logits)
    if single:
        logits, tokens = logits[0], tokens[0]
    # NaN or inf would otherwise flow on silently (argmax of NaN is token 0): one sum over the
    # logits here; on failure the error names the first non-finite activation.
    check_finite_logits(logits, params, config, tokens, kv_cache=kv_cache, reference=reference)
    return logits
