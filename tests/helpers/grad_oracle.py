"""The gradient oracle: torch autograd through transformers' GPT-2 modules, with our weights.

Used by tests/test_layers_backward.py, tests/test_backward_model.py and
tests/test_finite_differences.py:

  * random_model(): random GPT-2 weights in memory (tests/checkpoints.py's scaling), as our
    nested params + GPT2Config and as the transformers config they were drawn for;
  * torch_model(): transformers.GPT2LMHeadModel (eager attention) holding the same weights;
  * torch_loss_and_grads(): loss = F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1),
    ignore_index) on the model's own logits with OUR targets (nothing shifted), .backward(),
    and every parameter's gradient under the checkpoint key ("wte.weight", "h.0.attn.c_attn.bias",
    "lm_head.weight" when untied), plus d loss / d activation for every activation name
    (module outputs kept with .retain_grad(), numpy_gpt2's names);
  * grad_error(): the error measure every gradient test asserts on.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
import transformers

from helpers.checkpoints import make_config, random_state_dict
from numpy_gpt2 import GPT2Config
from numpy_gpt2.params import nest_params
from helpers.oracle_activations import HF_BLOCK_MODULES

TORCH = {np.float32: torch.float32, np.float64: torch.float64}


def t(a):
    return torch.from_numpy(np.ascontiguousarray(a))


def grad_error(ours, ref, floor=0.0) -> float:
    """max |ours - ref| / max(max |ref|, floor)   (ref: the oracle).

    Relative to the largest entry of the whole tensor, not entry by entry: many true gradients
    are ~0 in places (e.g. the key bias of attention: adding a constant to every score of a
    row changes nothing, so its exact gradient is 0 and both sides hold only rounding noise
    there). floor: a gradient whose entries are all below it counts as zero (a query that
    sees one key gets dq = 0 exactly, torch returns rounding noise of ~1e-17)."""
    ref = ref.detach().numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref)
    assert ours.shape == ref.shape, f"shape {ours.shape} vs oracle {ref.shape}"
    err = float(np.max(np.abs(ours.astype(np.float64) - ref.astype(np.float64)), initial=0.0))
    top = max(float(np.max(np.abs(ref), initial=0.0)), floor)
    if top == 0.0:
        return 0.0 if err == 0.0 else float("inf")
    return err / top


def assert_grad_close(ours, ref, dtype, rtol, what="", floor=0.0) -> float:
    """ours has the dtype and the shape of ref, is finite, and
    max|ours - ref| <= rtol * max(max|ref|, floor). Returns that relative error (for the
    tables the tests print)."""
    assert isinstance(ours, np.ndarray), f"{what}: got {type(ours).__name__}, expected a numpy array"
    assert ours.dtype == dtype, f"{what}: dtype {ours.dtype}, expected {np.dtype(dtype)}"
    assert np.isfinite(ours).all(), f"{what}: not finite"
    err = grad_error(ours, ref, floor)
    assert err <= rtol, f"{what}: max|ours - oracle| / max|oracle| = {err:.3g} > {rtol:g} ({np.dtype(dtype)})"
    return err


def random_model(dtype=np.float64, seed=0, untied=False, scale=1.0, head_scale=1.0, **shape):
    """Random weights for a GPT-2 of `shape` (n_layer, n_head, n_embd, n_ctx, vocab_size).

    Returns (params, config, hf_config): our nested dict in `dtype`, our GPT2Config, and the
    transformers config the oracle is built from. untied: an lm_head.weight of its own (not
    a copy of wte) and tie_word_embeddings=False. head_scale multiplies wte (and lm_head): at
    full width, checkpoints.py's wte (std 1) gives logits of std ~sqrt(768) ~ 28 and a loss of
    hundreds of nats with one-hot softmaxes; head_scale=0.1 gives GPT-2-like logits (std ~3)
    and a loss near log(vocab), where the output softmax's gradient is not trivially 0/1."""
    hf_config = make_config(**shape, tie_word_embeddings=not untied)
    hf_config._attn_implementation = "eager"  # plain matmul-softmax-matmul, as test_layers
    sd = random_state_dict(hf_config, seed=seed, scale=scale)
    if untied:
        g = torch.Generator().manual_seed(seed + 1)
        sd["lm_head.weight"] = torch.randn(hf_config.vocab_size, hf_config.n_embd, generator=g) * scale
    for key in ("wte.weight", "lm_head.weight"):
        if key in sd:
            sd[key] = sd[key] * head_scale
    params = nest_params({k: v.numpy().astype(dtype) for k, v in sd.items()})
    config = GPT2Config(n_layer=hf_config.n_layer, n_head=hf_config.n_head, n_embd=hf_config.n_embd,
                        n_ctx=hf_config.n_positions, vocab_size=hf_config.vocab_size,
                        layer_norm_epsilon=hf_config.layer_norm_epsilon,
                        tie_word_embeddings=not untied)
    return params, config, hf_config


def flat_torch_state(params, prefix="transformer."):
    """Our nested params -> the state dict of GPT2LMHeadModel (torch tensors, shared memory)."""
    from numpy_gpt2 import flatten_params
    out = {}
    for key, value in flatten_params(params).items():
        out[key if key == "lm_head.weight" else prefix + key] = t(value)
    return out


def torch_model(params, hf_config, dtype):
    """transformers.GPT2LMHeadModel in `dtype` with our weights (tied or untied as hf_config),
    eval mode (dropout off)."""
    with torch.device("meta"):
        model = transformers.GPT2LMHeadModel(hf_config)
    model = model.to_empty(device="cpu").to(TORCH[dtype])
    state = flat_torch_state(params)
    if hf_config.tie_word_embeddings:
        state["lm_head.weight"] = state["transformer.wte.weight"]
    # the causal-mask buffers ("attn.bias") were on meta too: rebuild them
    n = hf_config.n_positions
    for block in model.transformer.h:
        block.attn.bias = torch.tril(torch.ones((n, n), dtype=torch.bool)).view(1, 1, n, n)
    missing, unexpected = model.load_state_dict({k: v.clone() for k, v in state.items()}, strict=False)
    assert not unexpected, unexpected
    assert all(k.endswith("attn.bias") or k.endswith("attn.masked_bias") for k in missing), missing
    if hf_config.tie_word_embeddings:
        model.tie_weights()
        assert model.lm_head.weight is model.transformer.wte.weight
    return model.eval()


def activation_modules(model) -> dict[str, torch.nn.Module]:
    """numpy_gpt2 activation name -> the HF module whose output it is (softmax and logits aside)."""
    tr = model.transformer
    modules = {"wte": tr.wte, "wpe": tr.wpe}
    for i, block in enumerate(tr.h):
        for ours, theirs in HF_BLOCK_MODULES.items():
            modules[f"h.{i}.{ours}" if ours else f"h.{i}"] = block.get_submodule(theirs) if theirs else block
    modules["ln_f"] = tr.ln_f
    return modules


def torch_loss_and_grads(model, tokens, targets, ignore_index=-100, activations=False):
    """The oracle: (loss, {checkpoint key: grad}, {activation name: d loss / d activation}).

    tokens, targets: (T,) or (B, T) ints. Activation gradients (only when activations=True)
    keep the batch axis, as torch has it ("wpe" is (1, T, E): its gradient is summed over the
    batch, because HF broadcasts one position embedding to every sequence)."""
    tokens = t(np.atleast_2d(np.asarray(tokens, dtype=np.int64)))
    targets = t(np.atleast_2d(np.asarray(targets, dtype=np.int64)))
    kept, hooks = {}, []
    if activations:
        def hook(name):
            def keep(module, inputs, output):
                out = output[0] if isinstance(output, tuple) else output
                out.retain_grad()
                kept[name] = out
            return keep
        hooks = [m.register_forward_hook(hook(n)) for n, m in activation_modules(model).items()]
    model.zero_grad(set_to_none=True)
    try:
        out = model(tokens, output_attentions=activations)
    finally:
        for h in hooks:
            h.remove()
    logits = out.logits
    if activations:
        logits.retain_grad()
        kept["logits"] = logits
        for i, probs in enumerate(out.attentions):
            probs.retain_grad()
            kept[f"h.{i}.attn.softmax"] = probs
    V = logits.shape[-1]
    loss = F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), ignore_index=ignore_index)
    loss.backward()
    grads = {}
    for name, p in model.named_parameters():
        key = name.removeprefix("transformer.")
        grads[key] = p.grad.numpy().copy()
    act_grads = {}
    for name, tensor in kept.items():
        assert tensor.grad is not None, f"oracle: no gradient reached {name}"
        act_grads[name] = tensor.grad.numpy().copy()
    return loss.item(), grads, act_grads
