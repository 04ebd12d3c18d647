"""`numpy-gpt2 generate` with many prompts (--prompts-file), --json or beam search
(--num-beams): every prompt and sample generated as one batch, then printed, as text under a
"==== prompt N, sample M ====" line or as one JSON object per completion (docs/generation.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
from tqdm import tqdm

import numpy_gpt2
from numpy_gpt2.cli import common
from numpy_gpt2.cli.common import UsageError
from numpy_gpt2.cli.generate_common import (check_after_loading, check_memory, eos_note,
                                            load_everything, processor_options, prompt_ids,
                                            read_prompt, room)


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
