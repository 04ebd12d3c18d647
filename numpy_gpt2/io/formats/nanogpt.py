"""nanoGPT's ckpt.pt (karpathy/nanoGPT train.py): a torch.save'd dict read by torch_bin.

The dict holds "model" (GPT.state_dict()), "model_args" (n_layer, n_head, n_embd,
block_size, bias, vocab_size, dropout), "optimizer", "iter_num", "best_val_loss", "config".
Differences from GPT-2's own checkpoints (nanoGPT model.py), undone here:
  * weights of nn.Linear are stored (out, in); GPT-2's Conv1D is (in, out): read transposed
    (a strided view: nothing is copied twice);
  * a "_orig_mod." prefix on every key when the model was torch.compile'd;
  * lm_head.weight is tied to transformer.wte.weight (the same storage);
  * bias=False: no biases in Linear and LayerNorm layers: the config says bias=False, and
    checkpoint.load gives the model zero biases, constants rather than parameters (the
    same function; training leaves them zero);
  * older torch versions saved the causal mask buffers attn.bias: dropped by the loader;
  * the MLP's GELU is nn.GELU(), the exact erf form: activation_function "gelu";
  * vocab_size is the padded size (50304 for GPT-2's 50257 tokens): loaded as it is.
"""

from __future__ import annotations

from numpy_gpt2.checks import is_int, show
from numpy_gpt2.config import GPT2Config
from numpy_gpt2.errors import CheckpointError
from numpy_gpt2.io.formats.tensor_copy import Stored

LINEAR_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight",
                  "mlp.c_proj.weight")
BIASES = ("ln_1.bias", "attn.c_attn.bias", "attn.c_proj.bias", "ln_2.bias", "mlp.c_fc.bias",
          "mlp.c_proj.bias")
GPT2_VOCAB = 50257


def is_nanogpt(obj) -> bool:
    return isinstance(obj, dict) and "model" in obj and "model_args" in obj


def transposed(t: Stored) -> Stored:
    """The (out, in) matrix t read as (in, out): same bytes, swapped strides."""
    strides = t.strides or (t.shape[1], 1)
    return Stored(t.path, t.dtype, t.shape[::-1], t.offset, strides[::-1])


def nanogpt_tensors(state: dict, model_args, path: str) -> tuple[dict, GPT2Config]:
    """nanoGPT's {key: Stored} and model_args -> ({GPT-2 key: Stored}, GPT2Config)."""
    config = nanogpt_config(model_args, path)
    if state and all(k.startswith("_orig_mod.") for k in state):
        state = {k[len("_orig_mod."):]: v for k, v in state.items()}
    out = {}
    for key, t in state.items():
        name = key.removeprefix("transformer.")
        if name.endswith(LINEAR_WEIGHTS):
            if len(t.shape) != 2:
                raise CheckpointError(f"{path}: {key} has shape {list(t.shape)}, expected a matrix")
            t = transposed(t)
        out[name] = t
    if not config.bias:  # the zero biases are checkpoint.load's
        zeros = [f"h.{i}.{b}" for i in range(config.n_layer) for b in BIASES] + ["ln_f.bias"]
        present = [k for k in zeros if k in out]
        if present:
            raise CheckpointError(f"{path}: model_args says bias=False but the model has "
                                  f"{present[0]}")
    return out, config


def nanogpt_config(model_args, path: str) -> GPT2Config:
    """GPT2Config from nanoGPT's model_args: exact-erf GELU, and bias as model_args' bias."""
    if not isinstance(model_args, dict):
        raise CheckpointError(f"{path}: model_args is {show(model_args)}, expected a dict")
    for key in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size"):
        if not is_int(model_args.get(key)):
            raise CheckpointError(f"{path}: model_args[{key!r}] is "
                                  f"{show(model_args.get(key))}, expected an integer")
    bias = model_args.get("bias", True)
    if not isinstance(bias, bool):
        raise CheckpointError(f"{path}: model_args['bias'] is {show(bias)}, expected true/false")
    vocab = model_args["vocab_size"]
    # GPT-2's <|endoftext|>; a character-level vocabulary (65 tokens) has no such token, and
    # an id outside [0, vocab_size) says so (GPT2Config.has_token), as transformers does.
    eos = GPT2_VOCAB - 1
    try:
        config = GPT2Config(n_layer=model_args["n_layer"], n_head=model_args["n_head"],
                            n_embd=model_args["n_embd"], n_ctx=model_args["block_size"],
                            vocab_size=vocab, activation_function="gelu", bos_token_id=eos,
                            eos_token_id=eos, bias=bias)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: model_args: {str(e).removeprefix('config: ')}") from None
    return config
