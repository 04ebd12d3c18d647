"""Looking at the numbers: for debugging a port, and for diffing two runs.

- capture: activations() and gradients() by name ("h.0.attn.softmax", "grad.wte.weight").
- dump_format: saving and loading those dicts as safetensors dump files.
- compare: compare_activations(), the first tensor where two dumps differ.
"""
