"""Generating and scoring text with a loaded model.

- sampling: generate() (greedy, temperature, top-k, top-p, the logits processors, batches).
- processors: transformers' logits processors and warpers (repetition penalty, ...).
- beams: beam_search().
- perplexity: perplexity() of a token sequence with sliding windows.
- checks: the argument checks of the above (one ValueError naming the argument).
"""
