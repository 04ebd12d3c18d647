"""Write numpy_gpt2's named activations for one prompt to a safetensors file.

    python scripts/dump.py --model gpt2 --prompt "Hello, my dog" --out acts.safetensors
    python scripts/dump.py --model path/to/ckpt --tokens 15496,11,616,3290 --out acts.safetensors \
        --dtype float64 --names 'h.0.*,logits'

The file holds "tokens" (int64, shape (T,)) and one tensor per activation name (shapes for a
single sequence, no batch axis), plus string metadata: format, names (forward order,
comma-separated), model, dtype, numpy_gpt2_version, config (JSON), prompt. Compare two such
files with scripts/compare.py. The format is described in the README ("Debugging a port").
Exit status: 0 written, 2 bad arguments or input (one-line message on stderr).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

import numpy_gpt2
from numpy_gpt2.activations import (activations, config_metadata, package_version,
                                    save_activations)


def parse_tokens(text: str) -> list[int]:
    """"15496, 11,616" -> [15496, 11, 616]."""
    try:
        tokens = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise ValueError(f"--tokens must be comma-separated integers, got {text!r}") from None
    if not tokens:
        raise ValueError("--tokens is empty")
    return tokens


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="checkpoint directory, .safetensors file "
                        "or hub name (gpt2, gpt2-medium, ..., owner/repo)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="text to tokenize with the GPT-2 tokenizer")
    source.add_argument("--tokens", help="token ids instead of a prompt, e.g. 15496,11,616")
    parser.add_argument("--out", required=True, help="output .safetensors path")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--names", default="*", help="fnmatch pattern(s), comma-separated "
                        "(default '*': all but the attention probabilities; add '*softmax' "
                        "for those)")
    args = parser.parse_args(argv)
    try:
        path = numpy_gpt2.resolve_model(args.model)
        params, config = numpy_gpt2.load(path, dtype=np.dtype(args.dtype))
        if args.prompt is not None:
            if not args.prompt:
                raise ValueError("--prompt is empty")
            tokens = numpy_gpt2.load_tokenizer(path).encode(args.prompt, allowed_special="all")
        else:
            tokens = parse_tokens(args.tokens)
        tokens = np.asarray(tokens, dtype=np.int64)
        acts = activations(params, config, tokens, args.names)
        metadata = {"model": args.model, "dtype": args.dtype, "numpy_gpt2_version": package_version(),
                    "config": config_metadata(config)}
        if args.prompt is not None:
            metadata["prompt"] = args.prompt
        save_activations(args.out, tokens, acts, metadata)
    except (ValueError, OSError, RuntimeError) as e:  # CheckpointError is a ValueError
        print(f"dump.py: error: {e}", file=sys.stderr)
        return 2
    size = os.path.getsize(args.out)
    print(f"wrote {len(acts)} activations ({next(iter(acts))} .. {list(acts)[-1]}) for "
          f"{len(tokens)} tokens to {args.out} ({size / 1e6:.1f} MB, {args.dtype})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
