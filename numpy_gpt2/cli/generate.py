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
import json
import sys
import time

import numpy as np
from tqdm import tqdm

import numpy_gpt2
from numpy_gpt2.cli.common import UsageError
from numpy_gpt2.generation.checks import (check_beam_args, check_generation_args, check_processor_args,
                                          check_sampling_args)
from numpy_gpt2.io.tokenizer import ENDOFTEXT, tokenizer_dir, undecodable_ids
from numpy_gpt2.training.memory import available_memory, memory_needed


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
# What both ways share: the prompt's ids, end of text, the room left in the context.

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


# ----------------------------------------------------------------------------------------
# Many prompts (--prompts-file, --json, beams): one batch, one JSON line per completion.

def read_prompts_file(path) -> list[str]:
    """--prompts-file: one prompt per non-empty line; .jsonl: a JSON string or {"prompt": str} per line."""
    lines = common.read_text(path, "--prompts-file").splitlines()
    prompts = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if not path.endswith(".jsonl"):
            prompts.append(line)
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise UsageError(f"--prompts-file {path} line {number}: not JSON ({e.msg})") from None
        item = item.get("prompt") if isinstance(item, dict) else item
        if not isinstance(item, str):
            raise UsageError(f"--prompts-file {path} line {number}: expected a JSON string or an "
                             f"object with a \"prompt\" string")
        prompts.append(item)
    if not prompts:
        raise UsageError(f"--prompts-file {path} holds no prompts")
    return prompts


def finish_reason(n_tokens, ended_on_eos, max_new_tokens):
    if ended_on_eos:
        return "eos"
    return "length" if n_tokens == max_new_tokens else "context"


def logprob_entries(tokenizer, tokens, info):
    """--logprobs: one JSON-ready dict per generated token."""
    return [{"token": int(t), "text": tokenizer.decode([int(t)]), "logprob": float(info["logprob"][i]),
             "processed_logprob": float(info["processed_logprob"][i]),
             "top": [{"id": int(j), "text": tokenizer.decode([int(j)]), "logprob": float(lp)}
                     for j, lp in zip(info["top_ids"][i], info["top_logprobs"][i])]}
            for i, t in enumerate(tokens)]


def sampled_completions(args, params, config, tokenizer, ids):
    """Every prompt x --num-samples as one batch -> completion dicts, prompt-major."""
    steps = numpy_gpt2.generate(params, config, ids, args.max_new_tokens, args.temperature, args.top_k,
                                args.top_p, seed=args.seed, num_samples=args.num_samples,
                                logprobs=args.logprobs, context=args.context,
                                **processor_options(args, tokenizer, config))
    total = max(room(args, config, len(p)) for p in ids)
    with tqdm(steps, total=total, unit="step", file=sys.stderr, leave=False,
              desc=f"{len(ids) * args.num_samples} rows") as bar:
        steps = list(bar)
    pairs = [s if args.logprobs is not None else (s, None) for s in steps]
    width = len(ids) * args.num_samples
    rows = np.stack([t for t, _ in pairs], axis=1) if pairs else np.zeros((width, 0), np.int64)
    eos = config.eos_token_id
    for r, row in enumerate(rows):
        n_prompt = len(ids[r // args.num_samples])
        limit = min(len(row), room(args, config, n_prompt))  # later steps are padding
        n = next((i for i, t in enumerate(row[:limit]) if t == eos), limit)
        item = {"prompt_index": r // args.num_samples, "sample": r % args.num_samples,
                "tokens": row[:n].tolist(), "finish_reason": finish_reason(n, n < limit, args.max_new_tokens)}
        if args.logprobs is not None:
            info = {k: np.stack([i[k][r] for _, i in pairs[:n]]) if n else np.zeros((0, args.logprobs))
                    for k in pairs[0][1]}
            item["logprobs"] = logprob_entries(tokenizer, row[:n], info)
        yield item


def beam_completions(args, params, config, tokenizer, ids):
    """Beam search, one prompt after the other -> completion dicts, best beam first (never an
    id the tokenizer cannot decode: a padded vocabulary's)."""
    eos = config.eos_token_id
    banned = processor_options(args, tokenizer, config)["suppress_tokens"]
    for p, prompt in enumerate(ids):
        beams = numpy_gpt2.beam_search(params, config, prompt, args.max_new_tokens, args.num_beams,
                                       length_penalty=args.length_penalty, early_stopping=args.early_stopping,
                                       num_return_sequences=args.num_samples,
                                       no_repeat_ngram_size=args.no_repeat_ngram_size or 0,
                                       suppress_tokens=banned)
        for b, (tokens, score) in enumerate(beams):
            ended = len(tokens) > 0 and tokens[-1] == eos
            tokens = tokens[:-1] if ended else tokens
            yield {"prompt_index": p, "beam": b, "score": score, "tokens": tokens.tolist(),
                   "finish_reason": finish_reason(len(tokens), ended, args.max_new_tokens)}


def label(item, n_prompts, num_samples):
    """The text-mode header of a completion."""
    parts = [f"prompt {item['prompt_index'] + 1}"] if n_prompts > 1 else []
    if "beam" in item:
        parts.append(f"beam {item['beam'] + 1} (score {item['score']:.4f})")
    elif num_samples > 1:
        parts.append(f"sample {item['sample'] + 1}")
    return f"==== {', '.join(parts) or 'completion'} ===="


def run_batch(args):
    """--prompts-file, --json or --num-beams: generate everything, then print it."""
    prompts = read_prompts_file(args.prompts_file) if args.prompts_file is not None else [read_prompt(args)]
    t0 = time.perf_counter()
    params, config, tokenizer, what = load_everything(args.model, args.dtype)
    check_after_loading(args, config)
    ids = [prompt_ids(tokenizer, config, p) for p in prompts]
    batch = argparse.Namespace(**dict(vars(args), num_samples=args.num_samples * len(ids)))
    check_memory(config, max(len(p) for p in ids), batch, np.dtype(args.dtype).itemsize)
    too_long = [i + 1 for i, p in enumerate(ids) if args.context == "stop" and len(p) > config.n_ctx]
    if too_long:
        raise UsageError(f"prompt {too_long[0]}: {len(ids[too_long[0] - 1])} tokens is longer than the "
                         f"context (n_ctx={config.n_ctx}; --context slide keeps its last n_ctx tokens)")
    print(f"loaded {what} in {time.perf_counter() - t0:.2f} s", file=sys.stderr)
    eos_note(config, tokenizer)
    start = time.perf_counter()
    try:
        items = list(beam_completions(args, params, config, tokenizer, ids) if args.num_beams > 1
                     else sampled_completions(args, params, config, tokenizer, ids))
    except ValueError as e:  # a prompt too long for the context; NonFiniteError
        raise UsageError(str(e)) from None
    seconds = time.perf_counter() - start
    for item in items:
        prompt, text = prompts[item["prompt_index"]], tokenizer.decode(item["tokens"])
        if args.json:
            print(json.dumps({**item, "prompt": prompt, "text": text}, ensure_ascii=False, allow_nan=False))
        else:
            sys.stdout.write(f"{label(item, len(prompts), args.num_samples)}\n{prompt}{text}\n")
    sys.stdout.flush()
    n_new = sum(len(item["tokens"]) for item in items)
    print(f"generated: {n_new} tokens in {len(items)} completion{'s' * (len(items) != 1)} in "
          f"{seconds:.3f} s ({n_new / max(seconds, 1e-9):.1f} tokens/s)", file=sys.stderr)


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
