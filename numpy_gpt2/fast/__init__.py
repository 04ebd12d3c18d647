"""The fast twins of the reference layers, each tested equal to the readable code.

- forward: the inference forward pass (fused attention by query blocks, threads).
- training: the forward that saves what the backward pass needs, the backward pass itself,
  and the fused unembedding + cross-entropy.
- threads: the worker threads and the BLAS library's own threads.
"""
