#!/usr/bin/env python3
"""Generate text with GPT-2 in NumPy, streamed to stdout as it is produced.

    python scripts/generate.py "The meaning of life is" --max-new-tokens 40 --top-k 40 --seed 1
    echo "Once upon a time" | python scripts/generate.py --model distilgpt2 --temperature 0
    python scripts/generate.py "Hello" --model path/to/checkpoint_dir --num-samples 3

stdout holds only text. One sample: the prompt, then each new token's text as soon as it is
complete UTF-8, then a newline. Several samples: each printed when the batch is done, after a
line "==== sample N ====" (N = 1, 2, ...), as prompt + text + newline (meanwhile a progress bar
on stderr). Generation of a sample stops at <|endoftext|> (not printed), after --max-new-tokens,
or when the context is full; a sample that stopped is no longer computed. Timing goes to
stderr. Bad input, and a model whose numbers turn NaN or infinite (numpy_gpt2.NonFiniteError),
exit with status 2 and a one-line message on stderr.

The prompt comes from the argument, else from stdin (one trailing newline removed); an empty
prompt starts from bos_token_id (<|endoftext|> for GPT-2), i.e. unconditional samples. The
text "<|endoftext|>" in a prompt is the special token. Ids the tokenizer cannot decode (a
padded vocabulary) are never sampled; a model whose eos_token_id is outside its vocabulary
cannot stop at <|endoftext|> (a note on stderr says so). The tokenizer: the checkpoint directory's vocab.json + merges.txt,
else $NUMPY_GPT2_TOKENIZER, else tiktoken's "gpt2" encoding.
"""

from __future__ import annotations

import _cli  # first: Ctrl-C during the imports, numpy_gpt2 from a checkout (scripts/_cli.py)

import sys
import time

import numpy as np
from tqdm import tqdm

import numpy_gpt2
from _cli import UsageError
from numpy_gpt2.checks import check_sampling_args
from numpy_gpt2.tokenizer import ENDOFTEXT, tokenizer_dir, undecodable_ids


def parse_args(argv):
    p = _cli.Parser(description="Generate text with GPT-2 in NumPy (streamed to stdout). Token ids "
                "the tokenizer cannot decode (a vocabulary padded past the tokenizer's, e.g. "
                "nanoGPT's 50304) are never sampled: their logits are set to -inf.")
    p.add_argument("prompt", nargs="?", help="prompt text (default: read from stdin)")
    p.add_argument("--model", default="gpt2",
                   help="checkpoint directory, .safetensors file, or hub name: gpt2, gpt2-medium, "
                        "gpt2-large, gpt2-xl, distilgpt2, owner/repo (default: gpt2)")
    p.add_argument("--max-new-tokens", type=int, default=50, help="default: 50")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy (default: 1.0)")
    p.add_argument("--top-k", type=int, default=None, help="sample from the k most likely tokens")
    p.add_argument("--top-p", type=float, default=None,
                   help="nucleus sampling: the smallest set with probability >= p, 0 < p <= 1")
    p.add_argument("--seed", type=int, default=None, help="random seed, for reproducible samples")
    p.add_argument("--num-samples", type=int, default=1, help="samples, generated as one batch")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    args = p.parse_args(argv)
    try:  # the same checks as generate(), worded with the flags
        check_sampling_args(args.max_new_tokens, args.temperature, args.top_k, args.top_p,
                            args.num_samples, seed=args.seed, cli=True)
    except ValueError as e:
        raise UsageError(str(e)) from None
    return args


def read_prompt(args) -> str:
    if args.prompt is not None:
        return args.prompt
    if sys.stdin is None:  # started with stdin closed (`<&-`)
        raise UsageError("no prompt: give it as an argument, or on stdin (stdin is closed)")
    if sys.stdin.isatty():
        print("reading the prompt from stdin (end with Ctrl-D)", file=sys.stderr)
    text = _cli.decode_utf8(sys.stdin.buffer.read(), "the prompt on stdin")
    return text[:-1] if text.endswith("\n") else text


def load_everything(model: str, dtype: str):
    """--model -> (params, config, tokenizer, description for stderr)."""
    try:
        path = numpy_gpt2.resolve_model(model)
        params, config = numpy_gpt2.load(path, dtype=np.dtype(dtype))
        tokenizer = numpy_gpt2.load_tokenizer(path)
    except (ValueError, OSError, RuntimeError) as e:  # CheckpointError is a ValueError
        raise UsageError(str(e)) from None
    source = tokenizer_dir(path) or 'tiktoken "gpt2"'
    n_params = sum(a.size for a in numpy_gpt2.flatten_params(params).values())
    return params, config, tokenizer, f"{path} ({n_params / 1e6:.1f}M parameters, {dtype}; tokenizer {source})"


def available_memory() -> int | None:
    """Bytes the kernel says can be allocated without swapping (MemAvailable), or None."""
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return None


def check_memory(config, n_prompt: int, args, itemsize: int) -> None:
    """UsageError, before any work, when one batch of --num-samples would need more memory
    than is available: per sample the KV cache (2 n_layer (T + new) n_embd), the prompt's
    forward pass (its widest activation, the MLP's 4 n_embd or the attention's n_head T per
    position, a few at a time) and the logits and probabilities (a few vocab_size rows)."""
    available = available_memory()
    if available is None:
        return
    steps = max(min(args.max_new_tokens, config.n_ctx - n_prompt + 1), 1)
    kv = 2 * config.n_layer * (n_prompt + steps) * config.n_embd
    prefill = 3 * n_prompt * max(4 * config.n_embd, config.n_head * n_prompt)
    per_sample = itemsize * (kv + prefill + 4 * config.vocab_size)
    if per_sample * args.num_samples > available:
        raise UsageError(
            f"--num-samples {args.num_samples} as one batch needs about "
            f"{per_sample * args.num_samples / 2**30:.1f} GiB of memory ({per_sample / 2**20:.2f} "
            f"MiB per sample: KV cache, activations, logits), more than the "
            f"{available / 2**30:.1f} GiB available; at most {available // per_sample} samples "
            f"fit: run it several times with fewer")


def timed(tokens, log):
    """Pass tokens through, logging (arrival time, token) for the speed report."""
    for token in tokens:
        log.append((time.perf_counter(), token))
        yield token


def until_eos(tokens, eos):
    """Pass tokens through up to, not including, eos."""
    for token in tokens:
        if token == eos:
            return
        yield token


def report(n_prompt, start, log, why_stopped):
    """Timing to stderr. The first token's time is the prompt's forward pass (prefill); every
    later token took one cached forward step of the whole batch."""
    if not log:
        print(f"generated nothing ({why_stopped})", file=sys.stderr)
        return
    times = [t for t, _ in log]
    prefill = times[0] - start
    print(f"prompt: {n_prompt} token{'s' * (n_prompt != 1)} in {prefill:.3f} s ({n_prompt / prefill:.1f} tokens/s)",
          file=sys.stderr)
    decode = times[-1] - times[0]
    rate = f"{(len(times) - 1) / decode:.1f} new tokens/s" if decode > 0 else "one step"
    print(f"generated: {len(times)} tokens in {times[-1] - start:.3f} s ({rate}); {why_stopped}",
          file=sys.stderr)


def run(args):
    prompt = read_prompt(args)
    t0 = time.perf_counter()
    params, config, tokenizer, what = load_everything(args.model, args.dtype)
    load_time = time.perf_counter() - t0

    ids = tokenizer.encode(prompt, allowed_special={ENDOFTEXT})
    if not ids and not config.has_token(config.bos_token_id):  # no start token to begin from
        raise UsageError(f"an empty prompt starts from bos_token_id={config.bos_token_id}, which "
                         f"is not in this model's vocabulary (vocab_size={config.vocab_size}): "
                         f"give a prompt")
    ids = ids or [config.bos_token_id]
    check_memory(config, len(ids), args, np.dtype(args.dtype).itemsize)
    try:
        tokens = numpy_gpt2.generate(params, config, ids, args.max_new_tokens, args.temperature,
                                     args.top_k, args.top_p, seed=args.seed,
                                     num_samples=args.num_samples, stop_at_eos=True,
                                     suppress_tokens=undecodable_ids(tokenizer, config.vocab_size))
    except ValueError as e:  # the prompt: too long for the context, or ids outside the vocabulary
        raise UsageError(str(e)) from None
    print(f"loaded {what} in {load_time:.2f} s", file=sys.stderr)
    eos = config.eos_token_id
    if not config.has_token(eos) or eos >= tokenizer.n_vocab:
        print(f"note: eos_token_id={eos} is not a token this model can produce (vocab_size="
              f"{config.vocab_size}, tokenizer {tokenizer.n_vocab}): generation cannot stop at "
              f"{ENDOFTEXT}, only at --max-new-tokens or a full context", file=sys.stderr)
    log, start = [], time.perf_counter()
    if args.num_samples == 1:
        sys.stdout.write(prompt)
        sys.stdout.flush()
        try:
            for piece in numpy_gpt2.stream_decode(tokenizer, until_eos(timed(tokens, log), eos)):
                sys.stdout.write(piece)
                sys.stdout.flush()
        except ValueError as e:  # NonFiniteError: the model's numbers are NaN or inf
            sys.stdout.write("\n")
            raise UsageError(str(e)) from None
        sys.stdout.write("\n")
        finished = int(bool(log) and log[-1][1] == eos)
    else:
        # The samples are printed when the batch is done: until then, a progress bar on stderr
        # (it may end early, when every sample has stopped at <|endoftext|>).
        total = min(args.max_new_tokens, config.n_ctx - len(ids) + 1)
        try:
            with tqdm(timed(tokens, log), total=total, unit="step", file=sys.stderr,
                      desc=f"{args.num_samples} samples", leave=False) as bar:
                steps = list(bar)
        except ValueError as e:  # NonFiniteError (the bar is erased first: one line remains)
            raise UsageError(str(e)) from None
        rows = np.stack(steps, axis=1) if steps else np.zeros((args.num_samples, 0), np.int64)
        for i, row in enumerate(rows):
            text = tokenizer.decode(list(until_eos(row.tolist(), eos)))
            sys.stdout.write(f"==== sample {i + 1} ====\n{prompt}{text}\n")
        sys.stdout.flush()
        finished = int((rows == eos).any(axis=1).sum())
    sys.stdout.flush()
    if finished == args.num_samples:
        why = f"stopped at {ENDOFTEXT}"
    elif len(log) < args.max_new_tokens:
        why = f"the context is full (n_ctx={config.n_ctx})"
    else:
        why = f"--max-new-tokens {args.max_new_tokens} reached"
    if 0 < finished < args.num_samples:
        why += f"; {finished} of {args.num_samples} samples stopped at {ENDOFTEXT}"
    report(len(ids), start, log, why)


@_cli.entry("generate.py")
def main(argv=None) -> int:
    # A terminal that cannot show some character gets "?" rather than a UnicodeEncodeError.
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="replace")
    # NaN or inf in the model raises NonFiniteError (one line on stderr): no NumPy warnings too.
    np.seterr(over="ignore", invalid="ignore", divide="ignore")
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
