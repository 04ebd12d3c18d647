"""What `numpy-gpt2 generate`'s two ways of running share (one prompt streamed, in
cli/generate.py; many prompts as one batch, in cli/generate_batch.py): the prompt and the
model loaded, the checks that need the model, the memory one batch needs, the prompt's ids,
the processor flags as numpy_gpt2.generate's options, and the room left in the context.
"""

from __future__ import annotations

import sys

import numpy as np

import numpy_gpt2
from numpy_gpt2.cli import common
from numpy_gpt2.cli.common import UsageError
from numpy_gpt2.generation.checks import check_beam_args, check_generation_args, check_processor_args
from numpy_gpt2.io.tokenizer import ENDOFTEXT, tokenizer_dir, undecodable_ids
from numpy_gpt2.training.memory import available_memory, memory_needed


def processor_options(args, tokenizer=None, config=None) -> dict:
    """The processor flags as numpy_gpt2.generate keyword arguments; given the tokenizer and
    config, suppress_tokens adds the ids the tokenizer cannot decode (a padded vocabulary)."""
    suppress = list(args.suppress_tokens or [])
    if tokenizer is not None:
        suppress += list(undecodable_ids(tokenizer, config.vocab_size))
    return dict(repetition_penalty=args.repetition_penalty, frequency_penalty=args.frequency_penalty,
                presence_penalty=args.presence_penalty, no_repeat_ngram_size=args.no_repeat_ngram_size,
                min_new_tokens=args.min_new_tokens, min_p=args.min_p, typical_p=args.typical_p,
                logit_bias=None if args.logit_bias is None else dict(args.logit_bias),
                suppress_tokens=suppress or None)



def read_prompt(args) -> str:
    if args.prompt is not None:
        return args.prompt
    if sys.stdin is None:  # started with stdin closed (`<&-`)
        raise UsageError("no prompt: give it as an argument, or on stdin (stdin is closed)")
    if sys.stdin.isatty():
        print("reading the prompt from stdin (end with Ctrl-D)", file=sys.stderr)
    text = common.decode_utf8(sys.stdin.buffer.read(), "the prompt on stdin")
    return text[:-1] if text.endswith("\n") else text



def load_everything(model: str, dtype: str):
    """--model -> (params, config, tokenizer, description for stderr)."""
    try:
        path = common.resolve_model(model)
        params, config = numpy_gpt2.load(path, dtype=np.dtype(dtype))
        tokenizer = numpy_gpt2.load_tokenizer(path)
    except (ValueError, OSError, RuntimeError) as e:  # CheckpointError is a ValueError
        raise common.input_error(e) from None
    source = tokenizer_dir(path) or 'tiktoken "gpt2"'
    n_params = sum(a.size for a in numpy_gpt2.flatten_params(params).values())
    return params, config, tokenizer, f"{path} ({n_params / 1e6:.1f}M parameters, {dtype}; tokenizer {source})"



def check_memory(config, n_prompt: int, args, itemsize: int) -> None:
    """UsageError, before any work, when one batch of --num-samples would need more memory
    than is available (numpy_gpt2.training.memory.memory_needed, per sample)."""
    available = available_memory()
    if available is None:
        return
    steps = max(min(args.max_new_tokens, config.n_ctx - n_prompt + 1), 1)
    per_sample = sum(memory_needed(config, itemsize, batch=1, tokens=n_prompt,
                                   new_tokens=steps).values())
    if per_sample * args.num_samples > available:
        raise UsageError(
            f"--num-samples {args.num_samples} as one batch needs about "
            f"{per_sample * args.num_samples / 2**30:.1f} GiB of memory ({per_sample / 2**20:.2f} "
            f"MiB per sample: KV cache, activations, logits), more than the "
            f"{available / 2**30:.1f} GiB available; at most {available // per_sample} samples "
            f"fit: run it several times with fewer")



def prompt_ids(tokenizer, config, prompt):
    """The prompt's token ids; an empty prompt starts from bos_token_id."""
    ids = tokenizer.encode(prompt, allowed_special={ENDOFTEXT})
    if not ids and not config.has_token(config.bos_token_id):  # no start token to begin from
        raise UsageError(f"an empty prompt starts from bos_token_id={config.bos_token_id}, which "
                         f"is not in this model's vocabulary (vocab_size={config.vocab_size}): "
                         f"give a prompt")
    return ids or [config.bos_token_id]



def eos_note(config, tokenizer):
    """A note on stderr when the model cannot produce its eos token (it never stops at it)."""
    eos = config.eos_token_id
    if not config.has_token(eos) or eos >= tokenizer.n_vocab:
        print(f"note: eos_token_id={eos} is not a token this model can produce (vocab_size="
              f"{config.vocab_size}, tokenizer {tokenizer.n_vocab}): generation cannot stop at "
              f"{ENDOFTEXT}, only at --max-new-tokens or a full context", file=sys.stderr)



def check_after_loading(args, config):
    """The checks that need the model (token ids against its vocabulary), worded with the flags."""
    # (the library ignores suppressed ids outside the vocabulary, as transformers does; ids
    # the user typed there are a mistake, as for --logit-bias)
    bad = next((t for t in args.suppress_tokens or () if not 0 <= t < config.vocab_size), None)
    if bad is not None:
        raise UsageError(f"--suppress-tokens: token id {bad} is not in [0, {config.vocab_size}) "
                         f"(the model's vocabulary)")
    try:
        check_processor_args(config.vocab_size, **processor_options(args))
        check_generation_args(config, args.logprobs, args.context)
        if args.num_beams > 1:
            check_beam_args(config, args.max_new_tokens, args.num_beams, args.length_penalty,
                            args.early_stopping, args.num_samples, args.no_repeat_ngram_size or 0,
                            None)
    except ValueError as e:
        raise UsageError(common.flag_message(e, {"num_return_sequences": "--num-samples"})) from None



def room(args, config, n_prompt):
    """How many tokens a prompt of n_prompt tokens can get."""
    if args.context == "slide":
        return args.max_new_tokens
    return max(0, min(args.max_new_tokens, config.n_ctx - n_prompt + 1))
