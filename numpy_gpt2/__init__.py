"""GPT-2 in plain NumPy: load the original checkpoints, compute the same logits as PyTorch."""

from .checkpoint import flatten_params, load
from .config import GPT2Config
from .errors import CheckpointError
from .model import forward, new_kv_cache

__all__ = ["CheckpointError", "GPT2Config", "flatten_params", "forward", "load", "new_kv_cache"]
