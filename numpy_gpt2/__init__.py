"""GPT-2 in plain NumPy: load the original checkpoints, compute the same logits as PyTorch.

The top level is the reference a learner reads, in this order: config, params, errors, hooks,
layers (one equation each), model (forward), loss, layers_backward, backward (loss_and_grads),
activation_functions, dropout, initialization, finite, checks. The subpackages hold the rest:
fast/ (fast twins of the layers, tested equal), io/ (files: checkpoints, tokenizer, hub),
generation/ (sampling, beams, perplexity), training/ (AdamW, the step, the training loop),
debug/ (named activations and gradients, dump files, compare), interp/ (hooks' names, weight
processing, the residual stream, heads, patching: TransformerLens' toolkit), explain/ (the
explain page), cli/ (the `numpy-gpt2` command); bpe.py (the tokenizer, readable) and plots.py.

The public API below is loaded on first use (`numpy_gpt2.forward` imports numpy_gpt2.model
then), so `import numpy_gpt2` and the command's start-up stay quick.
"""

import importlib as _importlib  # (private: dir(numpy_gpt2) lists the API and the modules)

__version__ = "0.2.0"

# public name -> the module that defines it
_API = {
    "GPT2Config": "numpy_gpt2.config",
    "CheckpointError": "numpy_gpt2.errors", "NonFiniteError": "numpy_gpt2.errors",
    "flatten_params": "numpy_gpt2.params",
    "forward": "numpy_gpt2.model", "new_kv_cache": "numpy_gpt2.model",
    "cross_entropy": "numpy_gpt2.loss", "log_softmax": "numpy_gpt2.loss", "token_nll": "numpy_gpt2.loss",
    "loss_and_grads": "numpy_gpt2.backward",
    "init_params": "numpy_gpt2.initialization",
    "load": "numpy_gpt2.io.checkpoint", "save_checkpoint": "numpy_gpt2.io.checkpoint",
    "resolve_model": "numpy_gpt2.io.hub",
    "load_tokenizer": "numpy_gpt2.io.tokenizer", "stream_decode": "numpy_gpt2.io.tokenizer",
    "generate": "numpy_gpt2.generation.sampling",
    "beam_search": "numpy_gpt2.generation.beams",
    "perplexity": "numpy_gpt2.generation.perplexity", "sliding_windows": "numpy_gpt2.generation.perplexity",
    "adamw_init": "numpy_gpt2.training.optim", "adamw_update": "numpy_gpt2.training.optim",
    "clip_grad_norm": "numpy_gpt2.training.optim", "get_lr": "numpy_gpt2.training.optim",
    "TrainSettings": "numpy_gpt2.training.settings", "train": "numpy_gpt2.training.loop",
    "activation_names": "numpy_gpt2.debug.capture", "activations": "numpy_gpt2.debug.capture",
    "gradient_names": "numpy_gpt2.debug.capture", "gradients": "numpy_gpt2.debug.capture",
    "next_token_targets": "numpy_gpt2.debug.capture",
    "compare_activations": "numpy_gpt2.debug.compare",
    "load_activations": "numpy_gpt2.debug.dump_format", "load_dump": "numpy_gpt2.debug.dump_format",
    "save_activations": "numpy_gpt2.debug.dump_format",
    "explain_page": "numpy_gpt2.explain",
}
__all__ = list(_API)


def __getattr__(name: str):
    module = _API.get(name)
    if module is None:
        try:  # a submodule or subpackage: numpy_gpt2.layers, numpy_gpt2.io
            return _importlib.import_module(f"numpy_gpt2.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"numpy_gpt2.{name}":
                raise
        raise AttributeError(f"module 'numpy_gpt2' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
