"""GPT-2 in plain NumPy: load the original checkpoints, compute the same logits as PyTorch."""

from .activations import activation_names, activations, gradient_names, gradients, next_token_targets
from .backward import loss_and_grads
from .beams import beam_search
from .checkpoint import load, save_checkpoint
from .comparison import compare_activations
from .config import GPT2Config
from .dump_format import load_activations, load_dump, save_activations
from .errors import CheckpointError, NonFiniteError
from .evaluate import perplexity, sliding_windows
from .hub import resolve_model
from .initialization import init_params
from .loss import cross_entropy, log_softmax, token_nll
from .model import forward, new_kv_cache
from .optim import adamw_init, adamw_update, clip_grad_norm, get_lr
from .params import flatten_params
from .sampling import generate
from .tokenizer import load_tokenizer, stream_decode

__all__ = ["loss_and_grads", "beam_search", "activation_names", "activations", "compare_activations", "cross_entropy", "load_activations",
           "log_softmax", "perplexity", "save_activations", "sliding_windows", "token_nll",
           "CheckpointError", "NonFiniteError", "GPT2Config", "flatten_params", "forward", "generate", "load", "load_tokenizer",
           "new_kv_cache", "resolve_model", "stream_decode",
           "gradient_names", "gradients", "load_dump", "next_token_targets",
           "adamw_init", "adamw_update", "clip_grad_norm", "get_lr", "init_params", "save_checkpoint"]
