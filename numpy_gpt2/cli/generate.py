"""Generate text with GPT-2 in NumPy, streamed to stdout as it is produced.

    python scripts/generate.py "The meaning of life is" --max-new-tokens 40 --top-k 40 --seed 1
    echo "Once upon a time" | python scripts/generate.py --model distilgpt2 --temperature 0
    python scripts/generate.py "Hello" --model path/to/checkpoint_dir --num-samples 3
    python scripts/generate.py --prompts-file prompts.txt --temperature 0 --json
    python scripts/generate.py "The" --repetition-penalty 1.3 --no-repeat-ngram-size 3
    python scripts/generate.py "The" --num-beams 4 --num-samples 2 --length-penalty 1.2

stdout holds only text. One sample: the prompt, then each new token's text as soon as it is
complete UTF-8, then a newline. Several samples: each printed when the batch is done, after a
line "==== sample N ====" (N = 1, 2, ...), as prompt + text + newline (meanwhile a progress bar
on stderr). Generation of a sample stops at <|endoftext|> (not printed), after --max-new-tokens,
or when the context is full; a sample that stopped is no longer computed. Timing goes to
stderr. Bad input, and a model whose numbers turn NaN or infinite (numpy_gpt2.NonFiniteError),
exit with status 2 and a one-line message on stderr.

--prompts-file FILE: one prompt per line (empty lines skipped), or, for a FILE ending in .jsonl,
one JSON string or {"prompt": ...} object per line; all of them (times --num-samples) run as
one batch, and each is printed when the batch is done after "==== prompt N ====" (or
"==== prompt N, sample M ===="). --json: instead of text, one JSON object per line and per
prompt and sample: {"prompt_index", "sample", "prompt", "text", "tokens", "finish_reason"
("eos", "length" or "context")}, with "logprobs" when --logprobs K is given (--logprobs
implies --json). --num-beams N > 1: beam search (deterministic; --num-samples beams are
printed, best first, with their scores); only --no-repeat-ngram-size, --length-penalty and
--early-stopping apply to it.

The prompt comes from the argument, else from stdin (one trailing newline removed); an empty
prompt starts from bos_token_id (<|endoftext|> for GPT-2), i.e. unconditional samples. The
text "<|endoftext|>" in a prompt is the special token. Ids the tokenizer cannot decode (a
padded vocabulary) are never sampled; a model whose eos_token_id is outside its vocabulary
cannot stop at <|endoftext|> (a note on stderr says so). The tokenizer: the checkpoint directory's vocab.json + merges.txt,
else $NUMPY_GPT2_TOKENIZER, else tiktoken's "gpt2" encoding.
"""

from __future__ import annotations

from numpy_gpt2.cli import common

import argparse
import sys
import time

import numpy as np
from tqdm import tqdm

import numpy_gpt2
from numpy_gpt2.cli.common import UsageError
from numpy_gpt2.cli.generate_batch import run_batch
from numpy_gpt2.cli.generate_common import (check_after_loading, check_memory, eos_note,
                                            load_everything, processor_options, prompt_ids,
                                            read_prompt, room)
from numpy_gpt2.generation.checks import check_processor_args, check_sampling_args
from numpy_gpt2.io.tokenizer import ENDOFTEXT


# ----------------------------------------------------------------------------------------
# The flags (transformers' generate() names), and their checks before any work.

def parse_args(argv):
    p = common.Parser(description="Generate text with GPT-2 in NumPy (streamed to stdout). Token ids "
                "the tokenizer cannot decode (a vocabulary padded past the tokenizer's, e.g. "
                "nanoGPT's 50304) are never sampled: their logits are set to -inf.")
    p.add_argument("prompt", nargs="?", help="prompt text (default: read from stdin)")
    p.add_argument("--model", default="gpt2",
                   help="checkpoint directory, .safetensors file, or hub name: gpt2, gpt2-medium, "
                        "gpt2-large, gpt2-xl, distilgpt2, owner/repo (default: gpt2)")
    p.add_argument("--max-new-tokens", type=int, default=50, help="default: 50")
    p.add_argument("--temperature", type=float, default=None, help="0 = greedy (default: 1.0)")
    p.add_argument("--top-k", type=int, default=None, help="sample from the k most likely tokens")
    p.add_argument("--top-p", type=float, default=None,
                   help="nucleus sampling: the smallest set with probability >= p, 0 < p <= 1")
    p.add_argument("--seed", type=int, default=None, help="random seed, for reproducible samples")
    p.add_argument("--num-samples", type=int, default=1, help="samples, generated as one batch")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    common.add_threads_flag(p)
    add_generation_flags(p)
    args = p.parse_args(argv)
    common.check_threads(args)
    try:  # the same checks as generate(), worded with the flags
        check_flag_combinations(args)  # (before the default temperature is filled in)
        if args.temperature is None:
            args.temperature = 1.0
        check_sampling_args(args.max_new_tokens, args.temperature, args.top_k, args.top_p,
                            args.num_samples, seed=args.seed)
        check_processor_args(None, **processor_options(args))  # ids' upper bound: after loading
    except ValueError as e:
        raise UsageError(common.flag_message(e)) from None
    return args


def token_ids(text):
    """--suppress-tokens 1,2,3 -> [1, 2, 3]."""
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected token ids separated by commas, got {text!r}") from None


def bias_entry(text):
    """--logit-bias ID:BIAS -> (ID, BIAS); BIAS a number or -inf."""
    token, _, bias = text.partition(":")
    try:
        return int(token), float(bias)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected TOKEN_ID:BIAS (e.g. 50256:-inf), got {text!r}") from None


def early_stopping_value(text):
    values = {"true": True, "false": False, "never": "never"}
    if text.lower() not in values:
        raise argparse.ArgumentTypeError(f"expected true, false or never, got {text!r}")
    return values[text.lower()]


def add_generation_flags(p):
    """The logits processors (transformers' names), beam search, batches of prompts, output."""
    p.add_argument("--prompts-file", metavar="FILE",
                   help="one prompt per line (or a .jsonl file of strings or {\"prompt\": ...}), run as one batch")
    p.add_argument("--json", action="store_true", help="print one JSON object per completion")
    p.add_argument("--repetition-penalty", type=float, help="CTRL penalty on seen tokens, > 0 (1 = off)")
    p.add_argument("--frequency-penalty", type=float, help="subtract F x count of each generated token")
    p.add_argument("--presence-penalty", type=float, help="subtract F from every generated token")
    p.add_argument("--no-repeat-ngram-size", type=int, help="never repeat an n-gram of this size")
    p.add_argument("--min-new-tokens", type=int, help="no <|endoftext|> before this many tokens")
    p.add_argument("--min-p", type=float, help="keep tokens with p >= min_p x the top p, in [0, 1]")
    p.add_argument("--typical-p", type=float, help="locally typical sampling mass, in (0, 1]")
    p.add_argument("--logit-bias", type=bias_entry, action="append", metavar="ID:BIAS",
                   help="add BIAS to token ID's logit (-inf bans it); repeatable")
    p.add_argument("--suppress-tokens", type=token_ids, metavar="IDS", help="comma-separated ids never generated")
    p.add_argument("--num-beams", type=int, default=1, help="beam search with N beams (default: 1, no beam search)")
    p.add_argument("--length-penalty", type=float, default=1.0, help="beam search: score / length^L (default: 1.0)")
    p.add_argument("--early-stopping", type=early_stopping_value, default=False,
                   help="beam search: true, false or never (default: false)")
    p.add_argument("--logprobs", type=int, help="report the K most likely tokens at each step (implies --json)")
    p.add_argument("--context", choices=["stop", "slide"], default="stop",
                   help="at n_ctx tokens: stop (default) or slide the window on (slower)")


def check_flag_combinations(args):
    """Beam search takes only its own flags; a prompt and a prompts file exclude each other."""
    if args.prompts_file is not None and args.prompt is not None:
        raise UsageError("give either a prompt or --prompts-file, not both")  # (no argument name to map)
    if args.logprobs is not None:
        args.json = True
    if args.num_beams < 1:
        raise ValueError(f"--num-beams must be an integer >= 1, got {args.num_beams}")
    if args.num_beams == 1:
        return
    unsupported = [flag for flag, value, off in [
        ("--temperature", args.temperature, None), ("--top-k", args.top_k, None),
        ("--top-p", args.top_p, None), ("--seed", args.seed, None),
        ("--logprobs", args.logprobs, None), ("--context", args.context, "stop")]
        + [("--" + k.replace("_", "-"), v, None) for k, v in processor_options(args).items()
           if k != "no_repeat_ngram_size"] if value != off]
    if unsupported:
        raise ValueError(f"{unsupported[0]} does not apply to beam search (--num-beams {args.num_beams})")


# ----------------------------------------------------------------------------------------
# One prompt, its text streamed to stdout as it is sampled.

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
    if args.prompts_file is not None or args.json or args.num_beams > 1:
        return run_batch(args)
    prompt = read_prompt(args)
    t0 = time.perf_counter()
    params, config, tokenizer, what = load_everything(args.model, args.dtype)
    load_time = time.perf_counter() - t0

    ids = prompt_ids(tokenizer, config, prompt)
    check_memory(config, len(ids), args, np.dtype(args.dtype).itemsize)
    try:
        check_after_loading(args, config)
        tokens = numpy_gpt2.generate(params, config, ids, args.max_new_tokens, args.temperature,
                                     args.top_k, args.top_p, seed=args.seed,
                                     num_samples=args.num_samples, stop_at_eos=True,
                                     context=args.context, **processor_options(args, tokenizer, config))
    except ValueError as e:  # the prompt: too long for the context, or ids outside the vocabulary
        raise UsageError(str(e)) from None
    print(f"loaded {what} in {load_time:.2f} s", file=sys.stderr)
    eos = config.eos_token_id
    eos_note(config, tokenizer)
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
        total = room(args, config, len(ids))
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


# ----------------------------------------------------------------------------------------
# The command.

@common.entry("generate")
def main(argv=None) -> int:
    # A terminal that cannot show some character gets "?" rather than a UnicodeEncodeError.
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="replace")
    # NaN or inf in the model raises NonFiniteError (one line on stderr): no NumPy warnings too.
    np.seterr(over="ignore", invalid="ignore", divide="ignore")
    run(parse_args(argv))
    return 0
