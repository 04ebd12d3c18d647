#!/usr/bin/env python
"""Accuracy of every checkpoint format and config variant numpy_gpt2.load reads, measured
against transformers' GPT2LMHeadModel (eager attention) in the same dtype.

    python benchmarks/format_accuracy.py              # the whole table (~10 s on one core)
    python benchmarks/format_accuracy.py -k nanoGPT   # the rows whose name contains the text

Each row writes a small random model (2 layers, 2 heads, 32 wide, vocabulary 100; the
config variants: 3 layers, 16 wide, vocabulary 37) the way the original tool does, with the
writers of tests/checkpoints.py and tests/format_files.py (transformers' save_pretrained,
also sharded and with safe_serialization=False; torch.save in the zip and the legacy
layout; nanoGPT's ckpt.pt dict; llm.c's header and parameter order), loads it with
numpy_gpt2.load in float32 and in float64, and prints max |Δlogit| against the oracle: for
Hugging Face files transformers' from_pretrained of the same directory; for nanoGPT and
llm.c files a GPT2LMHeadModel holding the same weights (activation "gelu" for nanoGPT, zero
biases for bias=False, the padded rows of the vocabulary). Config variant rows also give
the gradients' error against autograd: max over parameters of max|ours - autograd| /
max|autograd|, the worst of the readable and the fast layers. Needs torch and transformers
(requirements-test.txt); the tests' helpers are imported from tests/.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]  # this checkout's package and test helpers
try:
    import numpy as np
    import torch
    import transformers

    import numpy_gpt2
    from helpers.checkpoints import reference_model, write_checkpoint
    from helpers.format_files import (bf16_rounded, hf_model, llmc_bytes, logits, nanogpt_checkpoint,
                                      save_torch, small)
    from helpers.grad_oracle import TORCH, grad_error, torch_loss_and_grads, torch_model
    from numpy_gpt2.activation_functions import ACTIVATIONS
    from helpers.config_variants import TARGETS as VARIANT_TARGETS, TOKENS as VARIANT_TOKENS, variant_model
except ImportError as e:
    print(f"format_accuracy.py: {e} (this benchmark needs requirements-test.txt: torch, "
          f"transformers, pytest, hypothesis)", file=sys.stderr)
    sys.exit(2)

SHAPE = dict(n_layer=2, n_head=2, n_embd=32, n_ctx=64)
# A format row is (name, build): build(directory) writes the file and returns (the source to
# load, oracle(torch dtype) -> a GPT2LMHeadModel, the vocabulary size to compare).


# --- Hugging Face files: the oracle is transformers reading the same directory -------------

def hf_case(name, write):
    """A row whose file transformers reads: write(directory, model, config) returns the path
    load() is given."""
    def build(directory):
        config, sd = small(**SHAPE, vocab_size=100)
        source = write(directory, hf_model(config, sd), config)
        return source, lambda dtype: reference_model(directory, dtype), config.vocab_size
    return name, build


def torch_save(state_of, zip_layout, with_buffers=False):
    def write(directory, model, config):
        state = state_of(model)
        if with_buffers:  # the 2019 uploads: h.N.attn.bias / masked_bias in the file
            P = config.n_positions
            for i in range(config.n_layer):
                state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(P, P)).view(1, 1, P, P)
                state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
        save_torch(os.path.join(directory, "pytorch_model.bin"), state, zip_layout)
        config.save_pretrained(directory)
        return directory
    return write


def hand_written(layout, dtype, file=False):
    """tests/checkpoints.py's files: hub layout (no prefix, mask buffers, unaligned data),
    save_pretrained layout, or hub variants (masked_bias + an explicit lm_head.weight)."""
    def write(directory, model, config):
        write_checkpoint(directory, config, layout, dtype)
        return os.path.join(directory, "model.safetensors") if file else directory
    return write


def save_pretrained(load_from="", **options):
    """model.save_pretrained(directory, **options); load() is given the directory, or the file
    load_from inside it."""
    def write(directory, model, config):
        model.save_pretrained(directory, **options)
        return os.path.join(directory, load_from)
    return write


# --- nanoGPT and llm.c: the oracle is a GPT2LMHeadModel holding the same weights ------------

def weights_model(config, weights):
    return lambda dtype: hf_model(config, weights).to(dtype)


def nanogpt_case(name, vocab=100, bias=True, compiled=False, mask_buffers=False, pad_to=None,
                 zip_layout=True):
    def build(directory):
        config, sd = small(**SHAPE, vocab_size=vocab)
        ckpt = nanogpt_checkpoint(sd, config.n_head, config.n_positions, vocab, bias=bias,
                                  compiled=compiled, mask_buffers=mask_buffers, pad_to=pad_to)
        save_torch(os.path.join(directory, "ckpt.pt"), ckpt, zip_layout)
        config.activation_function = "gelu"  # nanoGPT's nn.GELU(): the exact erf form
        config.vocab_size = pad_to or vocab
        weights = {k: torch.zeros_like(v) if not bias and k.endswith(".bias") else v for k, v in sd.items()}
        if pad_to:
            weights["wte.weight"] = torch.cat([sd["wte.weight"], torch.zeros(pad_to - vocab, config.n_embd)])
        return os.path.join(directory, "ckpt.pt"), weights_model(config, weights), vocab
    return name, build


def llmc_case(name, dtype):
    def build(directory):
        config, sd = small(**SHAPE, vocab_size=100)
        path = os.path.join(directory, "model.bin")
        with open(path, "wb") as f:
            f.write(llmc_bytes(sd, config.n_head, 100, config.n_positions, dtype))
        weights = sd if dtype == "float32" else bf16_rounded(sd)
        return path, weights_model(config, weights), 100  # llm.c's zero rows 100..127: not compared
    return name, build


def format_cases():
    """Every format row, in the order of the table."""
    return [
        hf_case("safetensors dir, hub layout (buffers, unaligned) F32", hand_written("hub", torch.float32)),
        hf_case("safetensors dir, save_pretrained", save_pretrained(safe_serialization=True)),
        hf_case("safetensors file path, hub layout F32", hand_written("hub", torch.float32, file=True)),
        hf_case("safetensors, save_pretrained layout F16", hand_written("save_pretrained", torch.float16)),
        hf_case("safetensors, hub variant (lm_head, masked_bias) BF16", hand_written("variant", torch.bfloat16)),
        hf_case("sharded safetensors (save_pretrained max_shard_size=40KB)",
                save_pretrained(max_shard_size="40KB")),
        hf_case("sharded safetensors, loaded from the index file",
                save_pretrained(max_shard_size="40KB", load_from="model.safetensors.index.json")),
        hf_case("pytorch_model.bin (save_pretrained safe_serialization=False)",
                save_pretrained(safe_serialization=False)),
        hf_case("sharded pytorch_model.bin (safe_serialization=False, 40KB)",
                save_pretrained(safe_serialization=False, max_shard_size="40KB")),
        hf_case("pytorch_model.bin torch.save zip, GPT2LMHeadModel state dict",
                torch_save(lambda m: m.state_dict(), zip_layout=True)),
        hf_case("pytorch_model.bin torch.save legacy, GPT2LMHeadModel state dict",
                torch_save(lambda m: m.state_dict(), zip_layout=False)),
        hf_case("pytorch_model.bin legacy, no prefix + buffers (2019 uploads)",
                torch_save(lambda m: dict(m.transformer.state_dict()), zip_layout=False, with_buffers=True)),
        hf_case("pytorch_model.bin legacy F16",
                torch_save(lambda m: {k: v.half() for k, v in m.state_dict().items()}, zip_layout=False)),
        nanogpt_case("nanoGPT ckpt.pt (zip)"),
        nanogpt_case("nanoGPT ckpt.pt legacy, _orig_mod. + attn.bias buffers", compiled=True,
                     mask_buffers=True, zip_layout=False),
        nanogpt_case("nanoGPT ckpt.pt bias=False", bias=False),
        nanogpt_case("nanoGPT ckpt.pt char-level (vocab 65)", vocab=65),
        nanogpt_case("nanoGPT ckpt.pt GPT-2 vocab padded to 50304", vocab=50257, pad_to=50304),
        llmc_case("llm.c .bin float32 (v3)", "float32"),
        llmc_case("llm.c .bin bfloat16 (v5)", "bfloat16"),
    ]


# --- one row ---------------------------------------------------------------------------------

def logit_row(build, tokens):
    """(max |logit|, {dtype: max |Δlogit|}) over the first `vocab` columns."""
    diffs, top = {}, 0.0
    with tempfile.TemporaryDirectory() as directory:
        source, oracle, vocab = build(directory)
        for dtype in (np.float32, np.float64):
            params, config = numpy_gpt2.load(source, dtype, threads=1)
            ours = numpy_gpt2.forward(params, config, tokens)[..., :vocab]
            ref = logits(oracle(TORCH[dtype]), tokens)[..., :vocab]
            diffs[dtype] = float(np.abs(ours - ref).max())
            top = max(top, float(np.abs(ref).max()))
    return top, diffs


def variant_row(options):
    """A config variant saved by save_pretrained and loaded back: (max |logit|,
    {dtype: max |Δlogit|}, {dtype: gradient error}); both layer paths, the worst.
    reorder_and_upcast_attn: float32 only (transformers raises for it in a float64 model)."""
    diffs, grad_errors, top = {}, {}, 0.0
    _, config32, model32 = variant_model(np.float32, **options)
    with tempfile.TemporaryDirectory() as directory:
        model32.save_pretrained(directory)
        for dtype in (np.float32,) if options.get("reorder_and_upcast_attn") else (np.float32, np.float64):
            params, config = numpy_gpt2.load(directory, dtype, threads=1)
            assert config == config32, (config, config32)
            model = torch_model(params, model32.config, dtype)
            ref = logits(model, VARIANT_TOKENS)
            _, ref_grads, _ = torch_loss_and_grads(model, VARIANT_TOKENS, VARIANT_TARGETS)
            diffs[dtype] = grad_errors[dtype] = 0.0
            for reference in (True, False):
                ours = numpy_gpt2.forward(params, config, VARIANT_TOKENS, reference=reference)
                diffs[dtype] = max(diffs[dtype], float(np.abs(ours - ref).max()))
                _, grads = numpy_gpt2.loss_and_grads(params, config, VARIANT_TOKENS, VARIANT_TARGETS,
                                                     reference=reference)
                for key, g in numpy_gpt2.flatten_params(grads).items():
                    grad_errors[dtype] = max(grad_errors[dtype], grad_error(g, ref_grads[key], floor=1e-12))
            top = max(top, float(np.abs(ref).max()))
    return top, diffs, grad_errors


def show(errors, dtype):
    return f"{errors[dtype]:.1e}" if dtype in errors else "—"


VARIANTS = ([{"activation_function": name} for name in sorted(ACTIVATIONS)] + [
    {"n_inner": 24}, {"n_inner": 100}, {"scale_attn_weights": False},
    {"scale_attn_by_inverse_layer_idx": True}, {"reorder_and_upcast_attn": True},
    {"no_bias": True}, {"no_bias": True, "activation_function": "gelu"},
    {"n_inner": 40, "activation_function": "silu", "scale_attn_weights": False,
     "scale_attn_by_inverse_layer_idx": True},
])


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and status 2 (argparse prints its usage too)
        self.exit(2, f"format_accuracy.py: {message} (see --help)\n")


def main(argv=None) -> int:
    parser = Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-k", default="", metavar="TEXT", help="only the rows whose name contains TEXT")
    args = parser.parse_args(argv)
    tokens = np.random.default_rng(0).integers(0, 65, size=(2, 16))  # inside every vocabulary
    print("| format / variant | max \\|logit\\| | float32 max \\|Δlogit\\| | float64 max \\|Δlogit\\| "
          "| float32 grad error | float64 grad error |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, build in format_cases():
        if args.k in name:
            top, d = logit_row(build, tokens)
            print(f"| {name} | {top:.0f} | {d[np.float32]:.1e} | {d[np.float64]:.1e} | — | — |", flush=True)
    for options in VARIANTS:
        name = "config " + ", ".join(f"{k}={v}" for k, v in options.items())
        if args.k in name:
            top, d, g = variant_row(options)
            print(f"| {name} | {top:.0f} | {show(d, np.float32)} | {show(d, np.float64)} "
                  f"| {show(g, np.float32)} | {show(g, np.float64)} |", flush=True)
    return 0


if __name__ == "__main__":
    transformers.logging.set_verbosity_error()  # the table alone on stdout and stderr
    transformers.logging.disable_progress_bar()
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\nformat_accuracy.py: interrupted (Ctrl-C)", file=sys.stderr)
        sys.exit(130)
