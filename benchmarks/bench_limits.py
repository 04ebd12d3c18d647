"""The machine's limits, measured in the benchmark's own run, and each row's share of them.

A row's floor is the time the machine cannot beat for that row's work:
  * FLOP-bound rows (prefill, training): every matmul at the best SGEMM rate measured for
    its shape (best of NumPy's BLAS and PyTorch's, each in its own worker with the row's
    thread count), plus the bytes that must be streamed (a decode step's weights, AdamW's
    p, g, m, v) at the streaming read bandwidth;
  * memory-bound rows (decode): the weights read per step at the streaming read bandwidth
    (or the matmuls' time at the SGEMM rate, when that is longer: a batch of 8 rows).
A side's fraction of the limit is floor / its time: 1.0 would be a program that only ran
its matmuls at the best rate and streamed its bytes at full speed. Imported by bench.py and
bench_train.py; the workers call measure_gemm / measure_bandwidth, the parent the rest.
"""

from __future__ import annotations

import time

import numpy as np

QUERY_BLOCK = 64  # numpy_gpt2.fast.forward.QUERY_BLOCK: attention's matmuls are (64, D) @ (D, S)


def _best_seconds(run, min_time, max_reps=50):
    run()  # warm-up: first touches, BLAS threads starting
    best, spent, reps = float("inf"), 0.0, 0
    while (spent < min_time or reps < 3) and reps < max_reps:
        start = time.perf_counter()
        run()
        seconds = time.perf_counter() - start
        best, spent, reps = min(best, seconds), spent + seconds, reps + 1
    return best


def measure_gemm(shapes, matmul, empty, min_time=0.15):
    """Best GFLOP/s of matmul(a, b) for each (M, K, N) in shapes; a, b from empty((r, c)).
    For the attention shapes (M, D, S) with M = QUERY_BLOCK: the (M, D) @ (D, S) products."""
    rates = {}
    for M, K, N in shapes:
        a, b = empty((M, K)), empty((K, N))
        seconds = _best_seconds(lambda: matmul(a, b), min_time)
        rates[f"{M}x{K}x{N}"] = 2 * M * K * N / seconds / 1e9
    return rates


def numpy_gemm(shapes, min_time=0.15):
    """NumPy's BLAS, the better of two arrangements per shape: one call on BLAS's own threads,
    and the columns shared out between threads running single-threaded BLAS
    (numpy_gpt2.fast.forward.matmul_fast, what the library does)."""
    from bench_common import import_numpy_gpt2
    matmul_fast = import_numpy_gpt2().fast.forward.matmul_fast
    rng = np.random.default_rng(0)
    empty = lambda s: rng.standard_normal(s, dtype=np.float32)  # noqa: E731
    plain = measure_gemm(shapes, np.matmul, empty, min_time / 2)
    shared = measure_gemm(shapes, matmul_fast, empty, min_time / 2)
    return {k: max(plain[k], shared[k]) for k in plain}


def torch_gemm(torch, shapes, min_time=0.15):
    return measure_gemm(shapes, torch.mm, lambda s: torch.randn(*s, dtype=torch.float32), min_time)


def numpy_bandwidth(nbytes=1 << 29, threads=1):
    """Streaming read bandwidth, GB/s: the best of a few sums over a float32 array of nbytes
    (far larger than any cache), split between `threads` threads (ufuncs release the GIL)."""
    import concurrent.futures
    a = np.ones(nbytes // 4, dtype=np.float32)
    parts = np.array_split(a, threads)
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        seconds = _best_seconds(lambda: list(pool.map(np.add.reduce, parts)), 0.5, max_reps=8)
    return a.nbytes / seconds / 1e9


def block_shapes(n_embd, rows):
    """(M, K, N) of a GPT-2 block's four matmuls for `rows` rows: c_attn, attn.c_proj, c_fc, mlp.c_proj."""
    E = n_embd
    return [(rows, E, 3 * E), (rows, E, E), (rows, E, 4 * E), (rows, 4 * E, E)]


def key(shape):
    return "x".join(map(str, shape))


def best_rates(*sides):
    """Per shape, the best rate any side measured (the machine's limit with the BLASes it has)."""
    out = {}
    for rates in sides:
        for k, r in (rates or {}).items():
            out[k] = max(out.get(k, 0.0), r)
    return out


def matmul_seconds(shapes_counts, rates):
    """Seconds for count x matmul of each (M, K, N) at rates[key] GFLOP/s."""
    return sum(n * 2 * M * K * N / (rates[key((M, K, N))] * 1e9) for (M, K, N), n in shapes_counts)


def forward_floor(model, rows, T, past, head_rows, rates, bandwidth, batch=1):
    """Floor of one inference forward: the block matmuls over `rows` rows, attention's
    products for T queries (batch sequences) after `past` cached positions at the rate of
    (QUERY_BLOCK, D) @ (D, S), and the output head over head_rows rows; each step reads
    every weight at least once, so the floor is never below weight bytes / bandwidth."""
    L, E, H, V = model["n_layer"], model["n_embd"], model["n_head"], model["vocab_size"]
    flops_time = matmul_seconds([(s, L) for s in block_shapes(E, rows)] + [((head_rows, E, V), 1)], rates)
    if T > 1:
        S = past + T
        attn_flops = 4 * batch * H * T * (past + T / 2) * (E // H) * L
        flops_time += attn_flops / (rates[key((QUERY_BLOCK, E // H, S))] * 1e9)
    weight_bytes = 4 * (L * 12 * E * E + V * E)
    return max(flops_time, weight_bytes / (bandwidth * 1e9))


def forward_shapes(model, rows_list, head_rows_list, attention_S):
    """Every (M, K, N) forward_floor needs for these rows / head rows / key lengths."""
    E, H, V = model["n_embd"], model["n_head"], model["vocab_size"]
    shapes = {s for rows in rows_list for s in block_shapes(E, rows)}
    shapes |= {(r, E, V) for r in head_rows_list}
    shapes |= {(QUERY_BLOCK, E // H, S) for S in attention_S}
    return sorted(shapes)


def train_shapes(model, rows, T):
    """Matmul shapes of one training step over `rows` = B*T rows: forward (x W), backward
    (dout W^T: the same (M, N, K) flops, x^T dout: (K, M, N)), the head's three products
    over chunks of <= 1024 rows, and attention's products."""
    E, V, H = model["n_embd"], model["vocab_size"], model["n_head"]
    chunk = min(rows, 1024)
    shapes = []
    for M, K, N in block_shapes(E, rows):
        shapes += [(M, K, N), (M, N, K), (K, M, N)]
    shapes += [(chunk, E, V), (chunk, V, E), (E, chunk, V)]
    shapes += [(QUERY_BLOCK, E // H, T)]
    return sorted(set(shapes))


def train_floor(model, batch, T, rates, bandwidth):
    """Floor of one optimizer step: forward + backward matmuls (3x the forward's, each at its
    shape's best rate), attention's products (forward 2, backward 5 per (query, key) pair of
    the causal half: 7 x 2 D flops), and AdamW's 7 passes (p, g, m, v read; p, m, v written)
    plus the gradient norm's one over the parameters at the streaming bandwidth."""
    L, E, V, H = model["n_layer"], model["n_embd"], model["vocab_size"], model["n_head"]
    rows = batch * T
    chunk = min(rows, 1024)
    counts = []
    for M, K, N in block_shapes(E, rows):
        counts += [((M, K, N), L), ((M, N, K), L), ((K, M, N), L)]
    n_chunks = -(-rows // chunk)
    counts += [((chunk, E, V), n_chunks), ((chunk, V, E), n_chunks), ((E, chunk, V), n_chunks)]
    seconds = matmul_seconds(counts, rates)
    attn_flops = 7 * 2 * batch * H * T * (T / 2) * (E // H) * L
    seconds += attn_flops / (rates[key((QUERY_BLOCK, E // H, T))] * 1e9)
    n_params = L * 12 * E * E + V * E + T * E
    seconds += 8 * 4 * n_params / (bandwidth * 1e9)
    return seconds
