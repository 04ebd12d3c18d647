"""Write numpy_gpt2's named activations (and, with --grads, gradients) for one input to a safetensors file.

    python scripts/dump.py --model gpt2 --prompt "Hello, my dog" --out acts.safetensors
    python scripts/dump.py --model path/to/ckpt --tokens 15496,11,616,3290 --out acts.safetensors \
        --dtype float64 --names 'h.0.*,logits'
    python scripts/dump.py --model gpt2 --prompt "Hello, my dog" --grads --out grads.safetensors

The file holds "tokens" (int64, shape (T,)) and one tensor per activation name (shapes for a
single sequence, no batch axis), plus string metadata: format, names (comma-separated, in the
file's order), model, dtype, numpy_gpt2_version, config (JSON), prompt.

--grads adds one training step's gradients: "targets" (int64, (T,)), "loss" (float64 scalar,
the mean cross-entropy of the targets; also metadata "loss"), "grad.<activation name>"
(dloss/d(activation), the activation's shape) and "grad.<checkpoint key>" (dloss/d(weight),
e.g. grad.h.0.attn.c_attn.weight, grad.wte.weight), listed in backward order: as the backward
pass computes them, grad.logits first, grad.wte.weight last. The targets default to the next token of each position,
targets[t] = tokens[t + 1], and the last position, which has no next token, gets -100
(ignored: not scored, no gradient from it); metadata "targets" says "next tokens" or "given".
--targets gives them instead (T comma-separated ids, -100 for a position not scored).

--names selects by the stored names: 'h.0.*' block 0's activations, 'grad.h.0.*' the
gradients of block 0's activations and weights, '*h.0.*' both, 'grad.*.weight' every
weight gradient; '*' (default) everything but the (H, T, T) attention probabilities and their
gradients, which only a pattern spelling out 'softmax' selects ('*softmax'). targets and
loss are always written with --grads.

Compare two such files with scripts/compare.py. The format is described in the README
("Debugging a port", "Gradients").
Exit status: 0 written, 2 bad arguments or input, or an unwritable --out (one-line message
on stderr); docs/scripts.md lists them all.
"""

from __future__ import annotations

from numpy_gpt2.cli import common

import os
import re
import sys

import numpy as np

import numpy_gpt2
from numpy_gpt2.debug.capture import (GRAD, IGNORE_INDEX, activation_names, activations, gradient_names,
                                      gradients, next_token_targets, parameter_gradient_names,
                                      select_names)
from numpy_gpt2.io.outputs import safetensors_metadata, write_output_file
from numpy_gpt2.debug.dump_format import DUMP_FORMAT, config_metadata, dump_order_key, package_version, save_activations


def parse_ids(text: str, option: str) -> list[int]:
    """"15496, 11,616" -> [15496, 11, 616]."""
    try:
        ids = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise ValueError(f"{option} must be comma-separated integers, got {text!r}") from None
    if not ids:
        raise ValueError(f"{option} is empty")
    too_large = [i for i in ids if not -2**63 <= i < 2**63]
    if too_large:  # NumPy's int64 cannot hold it; smaller ones get the vocabulary check
        raise ValueError(f"{option}: {too_large[0]} is not a token id (ids are 0 .. vocab_size - 1)")
    return ids


def attach_negative_ids(argv: list[str]) -> list[str]:
    """"--targets -100,5" -> "--targets=-100,5": argparse would read "-100,5" as an option."""
    out, rest = [], list(argv)
    while rest:
        arg = rest.pop(0)
        if arg in ("--targets", "--tokens") and rest and re.fullmatch(r"-\d[\d,\s-]*", rest[0]):
            arg = f"{arg}={rest.pop(0)}"
        out.append(arg)
    return out


def choose_targets(args, tokens: np.ndarray) -> np.ndarray:
    if args.targets is None:
        if len(tokens) < 2:
            raise ValueError("a single token has no next token to predict: give at least two "
                             "tokens, or --targets")
        return next_token_targets(tokens)
    targets = np.asarray(parse_ids(args.targets, "--targets"), dtype=np.int64)
    if targets.shape != tokens.shape:
        raise ValueError(f"--targets has {len(targets)} ids for {len(tokens)} tokens; give "
                         f"one per token ({IGNORE_INDEX} for a position not scored)")
    return targets


def is_dump(path) -> bool:
    """path holds a dump (its safetensors metadata says so): dump may replace it."""
    return safetensors_metadata(path).get("format") == DUMP_FORMAT


def write_dump(path, tokens, tensors, metadata, targets, loss, on_commit=None) -> None:
    """save_activations into a temporary file next to `path` (a symlink's target), renamed
    onto it when complete (an interrupted or failed write leaves nothing), with the usual
    permissions (numpy_gpt2.io.outputs: where outputs go)."""
    def write(tmp):
        save_activations(tmp, tokens, tensors, metadata, targets=targets, loss=loss)
    write_output_file(path, write, ours=is_dump, on_commit=on_commit)


def worded(error, args) -> str | None:
    """A library ValueError about the input ids (`tokens: ...`, `targets: ...`) worded with the
    flag that gave them (--prompt or --tokens, --targets); None for any other error."""
    if isinstance(error, ValueError) and re.match(r"(tokens|targets)(?=[ :\[])", str(error)):
        given = "--prompt" if args.prompt is not None else "--tokens"
        return common.flag_message(error, {"tokens": given, "targets": "--targets"})
    if isinstance(error, ValueError) and str(error).startswith("target id "):
        return f"--targets: {error}"
    return None


@common.entry("dump")
def main(argv=None) -> int:
    parser = common.Parser(description=__doc__.split("\n\n")[0],
                     epilog="Exit status: 0 written, 2 bad arguments or input.")
    parser.add_argument("--model", required=True, help="checkpoint directory, .safetensors file "
                        "or hub name (gpt2, gpt2-medium, ..., owner/repo)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="text to tokenize with the GPT-2 tokenizer")
    source.add_argument("--tokens", help="token ids instead of a prompt, e.g. 15496,11,616")
    parser.add_argument("--out", required=True, help="output .safetensors path")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--names", default="*", help="fnmatch pattern(s) over the stored names, "
                        "comma-separated (default '*': all but the attention probabilities; "
                        "add '*softmax' for those). With --grads: 'grad.h.0.*' selects block "
                        "0's gradients, '*h.0.*' its activations and gradients")
    parser.add_argument("--grads", action="store_true", help="also write the targets, the "
                        "loss and the gradient of every activation and weight")
    parser.add_argument("--targets", help="with --grads: the target ids, one per token, "
                        f"{IGNORE_INDEX} = not scored (default: the next token; the last "
                        f"position {IGNORE_INDEX})")
    args = parser.parse_args(attach_negative_ids(sys.argv[1:] if argv is None else argv))
    if args.targets is not None and not args.grads:
        parser.error("--targets is used only with --grads")
    if not args.grads and any(p.strip().startswith("grad") for p in args.names.split(",")):
        parser.error(f"--names {args.names!r}: gradient names need --grads")
    loss = targets = None
    try:
        common.check_output_file(args.out, ours=is_dump)  # before any work
        path = common.resolve_model(args.model)
        params, config = numpy_gpt2.load(path, dtype=np.dtype(args.dtype))
        if args.prompt is not None:
            if not args.prompt:
                raise ValueError("--prompt is empty")
            tokens = numpy_gpt2.load_tokenizer(path).encode(args.prompt, allowed_special="all")
        else:
            tokens = parse_ids(args.tokens, "--tokens")
        tokens = np.asarray(tokens, dtype=np.int64)
        names = activation_names(config)
        if args.grads:
            targets = choose_targets(args, tokens)
            # "loss" may be named in --names (e.g. 'loss,grad.*'); it is always written
            names += ["loss"] + gradient_names(config) + parameter_gradient_names(params, config)
        names = select_names(names, args.names)
        forward_names = [n for n in names if not n.startswith(GRAD) and n != "loss"]
        grad_names = [n for n in names if n.startswith(GRAD)]
        tensors = activations(params, config, tokens, forward_names) if forward_names else {}
        if grad_names:
            loss, act_grads, param_grads = gradients(params, config, tokens, targets, grad_names)
            tensors.update(act_grads)
            tensors.update(param_grads)
        elif args.grads:  # only activations selected: the file still gets the step's loss
            loss, _ = numpy_gpt2.loss_and_grads(params, config, tokens, targets)
        metadata = {"model": args.model, "dtype": args.dtype, "numpy_gpt2_version": package_version(),
                    "config": config_metadata(config)}
        if args.prompt is not None:
            metadata["prompt"] = args.prompt
        if args.grads:
            metadata.update(targets="given" if args.targets else "next tokens",
                            ignore_index=str(IGNORE_INDEX))
        tensors = {n: tensors[n] for n in sorted(tensors, key=dump_order_key)}  # backward order
        write_dump(args.out, tokens, tensors, metadata, targets, loss,
                   on_commit=lambda: common.written(args.out))
    except (ValueError, OSError, RuntimeError) as e:  # CheckpointError is a ValueError
        raise common.input_error(e, usage=worded(e, args)) from None
    size = os.path.getsize(args.out)
    what = (f"{len(tensors)} tensors" + (f" (loss {loss:.6g})" if loss is not None else "")
            if args.grads else f"{len(tensors)} activations")
    print(f"wrote {what} ({next(iter(tensors))} .. {list(tensors)[-1]}) for "
          f"{len(tokens)} tokens to {args.out} ({size / 1e6:.1f} MB, {args.dtype})")
    return 0
