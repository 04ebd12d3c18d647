#!/usr/bin/env python3
"""Train GPT-2 in NumPy on a text file, from scratch or from a checkpoint (fine-tuning).

    python scripts/train.py --data input.txt --out out-shakespeare            # from scratch
    python scripts/train.py --data input.txt --out out-ft --init gpt2 --lr 3e-5
    python scripts/train.py --resume out-shakespeare --max-iters 4000         # continue a run

Data: the first 90% of the file's characters train, the last 10% validate; both are tokenized
with GPT-2's BPE (the text "<|endoftext|>" is the separator token 50256). Or --data DIR: a
directory of token files (DIR/train.bin, DIR/val.bin: uint16 ids in nanoGPT's format, as
scripts/prepare.py writes them, or llm.c's), read through a memory map, so of any size. Each optimizer step uses --grad-accum micro-batches of --batch-size random
windows of --block-size tokens (AdamW, global-norm clipping, linear warmup then cosine decay
from --lr to --min-lr). Every --eval-interval steps (and at the end) the mean loss over fixed
--eval-iters batches of each split is printed, and the run is saved in --out: a Hugging Face
GPT-2 checkpoint (model.safetensors, config.json, vocab.json, merges.txt) that
generate.py --model, perplexity.py --model, numpy_gpt2.load and transformers read, plus the
optimizer state and train_state.json (for --resume), metrics.jsonl and loss_curve.png.
Saves are atomic. Ctrl-C saves the run at the end of the current step and exits (status 130).
Bad input exits with status 2 and a one-line message before any training.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import signal
import sys
import time


def _threads_from_argv(argv) -> None:
    """--threads N (or the CPUs this process may use) into the BLAS and thread-pool variables,
    before NumPy loads OpenBLAS (which reads them once)."""
    for i, a in enumerate(argv):
        value = a.split("=", 1)[1] if a.startswith("--threads=") else \
            argv[i + 1] if a == "--threads" and i + 1 < len(argv) else None
        if value is not None and value.isdigit() and int(value) >= 1:
            for name in ("NUMPY_GPT2_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
                os.environ[name] = value


if __name__ == "__main__":
    _threads_from_argv(sys.argv[1:])

try:
    import numpy_gpt2
except ImportError:  # not pip-installed: use the package next to this script
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import numpy_gpt2

import numpy as np

from numpy_gpt2 import data as gpt2_data
from numpy_gpt2 import distributed
from numpy_gpt2.checkpoint import write_files_atomically
from numpy_gpt2.dropout import Dropout
from numpy_gpt2.initialization import init_params
from numpy_gpt2.optim import get_lr
from numpy_gpt2.token_files import max_token
from numpy_gpt2.tokenizer import TOKENIZER_ENV, TOKENIZER_FILES, tokenizer_dir
from numpy_gpt2.train_step import STATE_FILE, load_training_state, save_training_state, train_step

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss_curve.png"

# Defaults: nanoGPT's CPU Shakespeare recipe with GPT-2's BPE (see the README).
DEFAULTS = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, grad_accum=1,
                max_iters=2000, lr=1e-3, min_lr=1e-4, warmup_iters=100, lr_decay_iters=None,
                weight_decay=0.1, beta1=0.9, beta2=0.99, grad_clip=1.0, eval_interval=250,
                eval_iters=20, seed=1337, dtype="float32", init=None, data=None, sample_every=0,
                sample_prompt="\n", dropout=0.0)
MODEL_FLAGS = ("n_layer", "n_head", "n_embd")
# Settings a resumed run may change (the rest would make it a different run).
RESUMABLE = ("max_iters", "lr", "min_lr", "warmup_iters", "lr_decay_iters", "weight_decay", "beta1",
             "beta2", "grad_clip", "eval_interval", "eval_iters", "batch_size", "grad_accum",
             "sample_every", "sample_prompt", "dropout")
# Flags of one invocation, not settings of the run (never saved, free to change).
INVOCATION = ("out", "resume", "threads", "eval_only", "peak_flops")
SAMPLE_TOKENS = 48  # new tokens per --sample-every sample


class UsageError(Exception):
    """Bad input from the user: reported in one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors: one line, not usage + message
        raise UsageError(f"{message} (see --help)")


def parse_args(argv):
    p = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = DEFAULTS
    p.add_argument("--data", help="UTF-8 text file (first 90%% of characters train, last 10%% "
                   "validate), or a directory holding train.bin and val.bin (uint16 tokens, "
                   "nanoGPT's or llm.c's format, e.g. written by scripts/prepare.py)")
    p.add_argument("--out", help="output directory: checkpoint, metrics, loss curve "
                                 "(default with --resume: the resumed directory)")
    p.add_argument("--init", help="fine-tune from this checkpoint: a directory, .safetensors file "
                                  "or hub name (default: a new model, GPT-2 initialisation)")
    p.add_argument("--resume", metavar="DIR", help="continue the run saved in DIR exactly; flags "
                   "given with it (e.g. a larger --max-iters) override the saved ones")
    for flag, kind, what in [
            ("n-layer", int, "transformer blocks (new model)"), ("n-head", int, "attention heads (new model)"),
            ("n-embd", int, "width (new model)"),
            ("block-size", int, "tokens per training window (<= the checkpoint's n_ctx)"),
            ("batch-size", int, "windows per micro-batch"),
            ("grad-accum", int, "micro-batches per optimizer step"),
            ("max-iters", int, "optimizer steps in total"), ("lr", float, "peak learning rate"),
            ("min-lr", float, "final learning rate of the cosine decay"),
            ("warmup-iters", int, "steps of linear warmup"),
            ("lr-decay-iters", int, "step where the cosine decay reaches --min-lr (default: --max-iters)"),
            ("weight-decay", float, "AdamW decoupled weight decay (matrices and embeddings only)"),
            ("beta1", float, "AdamW beta1"), ("beta2", float, "AdamW beta2"),
            ("grad-clip", float, "clip gradients to this global L2 norm (0: no clipping)"),
            ("eval-interval", int, "evaluate and save every this many steps"),
            ("eval-iters", int, "batches per split in each evaluation (fixed batches)"),
            ("seed", int, "seed of the initialisation and of the batch sampler"),
            ("dropout", float, "dropout probability on the embeddings, attention probabilities and "
                               "residual branches (GPT-2's and nanoGPT's places)")]:
        default = d[flag.replace("-", "_")]
        p.add_argument(f"--{flag}", type=kind, default=None,
                       help=what if default is None else f"{what} (default: {default})")
    p.add_argument("--dtype", choices=["float32", "float64"], default=None, help="default: float32")
    p.add_argument("--threads", type=int, help="BLAS and worker threads per process (default: the "
                   "CPUs the process may use, os.sched_getaffinity; not a setting of the run)")
    p.add_argument("--sample-every", type=int, help="print and log a short sample every this many "
                   "steps (default: 0, never); its randomness is its own, so training is unchanged")
    p.add_argument("--sample-prompt", help="the samples' prompt (default: a newline)")
    p.add_argument("--eval-only", action="store_true", default=None, help="print the train and val "
                   "loss of the --init checkpoint (or the --resume run) on --data and exit; writes nothing")
    p.add_argument("--peak-flops", type=float, help="peak FLOP/s of one process, for the MFU in eval "
                   "lines and metrics (default: measured at start with a matrix multiply)")
    args = p.parse_args(argv)
    if args.sample_every is not None and args.sample_every < 0:
        raise UsageError(f"--sample-every {args.sample_every} is invalid: expected an integer >= 0")
    if args.peak_flops is not None and not (math.isfinite(args.peak_flops) and args.peak_flops > 0):
        raise UsageError(f"--peak-flops {args.peak_flops} is invalid: expected a number > 0")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads {args.threads} is invalid: expected an integer >= 1")
    return args


# ----------------------------------------------------------------------------------------
# Checking the input, all before training starts.

def check_settings(s: dict) -> None:
    """UsageError naming the first invalid hyperparameter."""
    def need(ok, flag, what):
        if not ok:
            raise UsageError(f"--{flag} {s[flag.replace('-', '_')]!r} is invalid: expected {what}")
    finite = {k: v for k, v in s.items() if isinstance(v, float)}
    for k, v in finite.items():
        need(math.isfinite(v), k.replace("_", "-"), "a finite number")
    for flag in ("n-layer", "n-head", "n-embd", "block-size", "batch-size", "grad-accum",
                 "eval-interval", "eval-iters"):
        if s.get(flag.replace("-", "_")) is not None:
            need(s[flag.replace("-", "_")] >= 1, flag, "an integer >= 1")
    need(s["max_iters"] >= 0, "max-iters", "an integer >= 0")
    need(s["lr"] > 0, "lr", "a number > 0")
    need(0 <= s["min_lr"] <= s["lr"], "min-lr", f"a number in [0, --lr={s['lr']}]")
    need(s["warmup_iters"] >= 0, "warmup-iters", "an integer >= 0")
    if s["lr_decay_iters"] is not None:
        need(s["lr_decay_iters"] >= s["warmup_iters"], "lr-decay-iters",
             f"an integer >= --warmup-iters={s['warmup_iters']}")
    need(s["weight_decay"] >= 0, "weight-decay", "a number >= 0")
    need(0 <= s["beta1"] < 1, "beta1", "a number in [0, 1)")
    need(0 <= s["beta2"] < 1, "beta2", "a number in [0, 1)")
    need(s["grad_clip"] >= 0, "grad-clip", "a number >= 0 (0: no clipping)")
    need(0 <= s.get("dropout", 0.0) < 1, "dropout", "a number in [0, 1)")
    if s["init"] is None and s["n_embd"] % s["n_head"]:
        raise UsageError(f"--n-embd {s['n_embd']} is not divisible by --n-head {s['n_head']} "
                         f"(each head gets n_embd / n_head dimensions)")


def check_out_dir(out: str, resuming: bool) -> None:
    """UsageError unless out can be created and written (and holds no other run)."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"--out {out}: exists and is not a directory")
    if not resuming and os.path.isfile(os.path.join(out, STATE_FILE)):
        raise UsageError(f"--out {out}: already holds a training run ({STATE_FILE}); continue it "
                         f"with --resume {out}, or choose another --out")
    try:
        os.makedirs(out, exist_ok=True)
        probe = os.path.join(out, f".write-test-{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise UsageError(f"--out {out}: cannot write there ({e.strerror})") from None


def find_tokenizer_files(source) -> str:
    """A directory holding GPT-2's vocab.json + merges.txt, to use and to copy into the
    checkpoint: the --init checkpoint's own, else $NUMPY_GPT2_TOKENIZER's, else the two files
    downloaded (once, then cached) from the hub's openai-community/gpt2."""
    try:
        directory = tokenizer_dir(source)
    except FileNotFoundError as e:
        raise UsageError(str(e)) from None
    if directory is not None:
        return directory
    try:
        from huggingface_hub import snapshot_download
        return snapshot_download("openai-community/gpt2", allow_patterns=list(TOKENIZER_FILES))
    except Exception as e:  # offline, no cache, hub down
        raise UsageError(f"GPT-2 tokenizer files not found: set {TOKENIZER_ENV} to a directory "
                         f"holding {' and '.join(TOKENIZER_FILES)} ({type(e).__name__} when "
                         f"fetching them from the hub)") from None


def data_sha256(path) -> str:
    """sha256 of the --data file, or of a token directory's train.bin then val.bin, read in
    chunks (a token file can be larger than memory)."""
    digest = hashlib.sha256()
    files = [os.path.join(path, f"{n}.bin") for n in ("train", "val")] if os.path.isdir(path) else [path]
    for name in files:
        with open(name, "rb") as f:
            while chunk := f.read(1 << 24):
                digest.update(chunk)
    return digest.hexdigest()


def resolve_settings(args) -> tuple[dict, str | None]:
    """The run's settings (saved ones when resuming, overridden by the flags given) and the
    directory to resume from (or None)."""
    given = {k: v for k, v in vars(args).items() if v is not None and k not in INVOCATION}
    if args.resume is None:
        if args.data is None:
            raise UsageError("--data FILE is required (or --resume DIR to continue a run)")
        if args.out is None and not args.eval_only:
            raise UsageError("--out DIR is required")
        if args.init is not None:
            clash = [f"--{k.replace('_', '-')}" for k in MODEL_FLAGS if k in given]
            if clash:
                raise UsageError(f"{', '.join(clash)} cannot be used with --init: the model's "
                                 f"shape comes from the checkpoint")
        return {**DEFAULTS, **given}, None
    try:
        with open(os.path.join(args.resume, STATE_FILE), encoding="utf-8") as f:
            saved = json.load(f)["settings"]
    except (OSError, ValueError, KeyError) as e:
        raise UsageError(f"--resume {args.resume}: no readable {STATE_FILE} "
                         f"({getattr(e, 'strerror', None) or e}); not a run saved by train.py") from None
    for k, v in given.items():
        if k == "data":
            continue  # checked against the saved file's hash once read
        if k not in RESUMABLE and v != saved.get(k):
            raise UsageError(f"--{k.replace('_', '-')} cannot change when resuming (the run in "
                             f"{args.resume} has {saved.get(k)!r})")
    return {**saved, **given}, args.resume


def prepare(args, world=distributed.Solo()) -> dict:
    """Everything training needs, every input checked: the settings, data splits, tokenizer
    directory, params, optimizer state, RNG, and the eval batches. With several ranks, only
    rank 0 creates and probes --out."""
    s, resume_dir = resolve_settings(args)
    check_settings(s)
    out = args.out or resume_dir
    if world.is_root and not args.eval_only:
        check_out_dir(out, resuming=resume_dir is not None and os.path.abspath(out) == os.path.abspath(resume_dir))
    dtype = np.dtype(s["dtype"])
    try:
        if resume_dir is not None:
            params, config = numpy_gpt2.load(resume_dir, dtype=dtype)
            tok_dir = find_tokenizer_files(resume_dir)
        elif s["init"] is not None:
            path = numpy_gpt2.resolve_model(s["init"])
            params, config = numpy_gpt2.load(path, dtype=dtype)
            tok_dir = find_tokenizer_files(path)
        else:
            config = numpy_gpt2.GPT2Config(n_layer=s["n_layer"], n_head=s["n_head"],
                                           n_embd=s["n_embd"], n_ctx=s["block_size"])
            tok_dir = find_tokenizer_files(None)
            params = None  # drawn after the data checks (a 124M init takes seconds)
        if s["block_size"] > config.n_ctx:
            raise UsageError(f"--block-size {s['block_size']} is larger than the checkpoint's "
                             f"context n_ctx={config.n_ctx}")
        tokenizer = numpy_gpt2.load_tokenizer(tok_dir)
        data_path = os.path.abspath(s["data"])
        splits = gpt2_data.load_data(data_path, tokenizer)
        for name, tokens in splits.items():
            gpt2_data.check_split_length(tokens, s["block_size"], name)
            # One pass over the data (a token file may be huge): by rank 0 alone, whose
            # verdict every rank gets (distributed.first_error).
            top = max_token(tokens) if world.is_root else 0
            if top >= config.vocab_size:
                raise UsageError(f"--data {data_path}: the {name} split's token ids reach {top}, "
                                 f"beyond the model's vocab_size={config.vocab_size}")
        digest = data_sha256(data_path) if world.is_root else None
        if resume_dir is not None:
            opt_state, info = load_training_state(resume_dir, params)
            s["grad_accum"] = resumed_grad_accum(info, args.grad_accum, world.size)
            if world.is_root and info.get("data_sha256") != digest:
                raise UsageError(f"--data {data_path}: not the file the run in {resume_dir} was "
                                 f"trained on (sha256 differs)")
            rng = np.random.default_rng()
            rng.bit_generator.state = info["rng"]
            # Records after the save (a run killed without saving) are dropped.
            metrics = [m for m in read_metrics(resume_dir) if m["step"] <= opt_state["step"]]
        else:
            if params is None:
                params = init_params(config, seed=s["seed"], dtype=dtype)
            opt_state = numpy_gpt2.adamw_init(params)
            rng = np.random.default_rng([s["seed"], 1])  # the batch sampler's own stream
            metrics = []
    except (ValueError, OSError, RuntimeError) as e:  # CheckpointError is a ValueError
        raise UsageError(str(e)) from None
    evals = {name: gpt2_data.eval_batches(tokens, s["block_size"], s["batch_size"], s["eval_iters"],
                                          seed=[s["seed"], 2 + i])
             for i, (name, tokens) in enumerate(splits.items())}
    s = {**s, "data": data_path}
    return dict(settings=s, out=out, config=config, params=params, opt_state=opt_state, rng=rng,
                splits=splits, evals=evals, tok_dir=tok_dir, data_sha256=digest, metrics=metrics,
                world=world, tokenizer=tokenizer, peak_flops=args.peak_flops,
                best=best_so_far(out) if out else math.inf)


# ----------------------------------------------------------------------------------------
# Outputs: metrics, the loss curve, checkpoints.

def read_metrics(directory) -> list[dict]:
    try:
        with open(os.path.join(directory, METRICS_FILE), encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


def write_text_atomically(directory, name, text):
    def write(path):
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    write_files_atomically(directory, {name: write})


def plot_loss_curve(directory, metrics) -> bool:
    """loss_curve.png: training loss per step and the evaluated train/val losses. False
    (after saying how to get it, once) when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    train = [(m["step"], m["loss"]) for m in metrics if m["kind"] == "train"]
    evals = [m for m in metrics if m["kind"] == "eval"]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    if train:
        steps, losses = zip(*train)
        ax.plot(steps, losses, color="tab:blue", alpha=0.3, linewidth=0.8, label="train (batch)")
    if evals:
        ax.plot([m["step"] for m in evals], [m["train_loss"] for m in evals], "o-",
                color="tab:blue", markersize=3, label="train (eval)")
        ax.plot([m["step"] for m in evals], [m["val_loss"] for m in evals], "o-",
                color="tab:orange", markersize=3, label="val (eval)")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    write_files_atomically(directory, {PLOT_FILE: lambda path: fig.savefig(path, format="png")})
    plt.close(fig)
    return True


def save_run(run) -> None:
    s = run["settings"]
    info = {"settings": s, "rng": run["rng"].bit_generator.state, "data_sha256": run["data_sha256"],
            "numpy_gpt2": "train.py", "world_size": run["world"].size}
    save_training_state(run["out"], run["params"], run["config"], run["tok_dir"], run["opt_state"], info)
    write_text_atomically(run["out"], METRICS_FILE,
                          "".join(json.dumps(m) + "\n" for m in run["metrics"]))
    if not plot_loss_curve(run["out"], run["metrics"]) and not run.get("said_no_plot"):
        run["said_no_plot"] = True
        print("train.py: matplotlib is not installed, so no loss_curve.png (install it with "
              "pip install 'numpy_gpt2[plot]' or pip install matplotlib); training goes on",
              file=sys.stderr)


# ----------------------------------------------------------------------------------------
# The loop.

class Interrupt:
    """Ctrl-C (SIGINT) sets a flag; the loop saves at the end of the current step and stops,
    so the saved run resumes exactly (a step is never saved half done)."""

    def __init__(self):
        self.requested = False
        self.previous = signal.signal(signal.SIGINT, self.handle)

    def handle(self, signum, frame):
        if self.requested:  # a second Ctrl-C: stop now (saves are atomic, the last one is whole)
            raise KeyboardInterrupt
        self.requested = True
        print("\ntrain.py: Ctrl-C: saving at the end of this step (Ctrl-C again to quit now)",
              file=sys.stderr, flush=True)

    def restore(self):
        signal.signal(signal.SIGINT, self.previous)


def train(run) -> int:
    from tqdm import tqdm

    s, params, config, opt_state = run["settings"], run["params"], run["config"], run["opt_state"]
    decay_iters = s["lr_decay_iters"] if s["lr_decay_iters"] is not None else s["max_iters"]
    start_step = step = opt_state["step"]
    world = run["world"]
    tokens_per_step = s["batch_size"] * s["block_size"] * s["grad_accum"] * world.size
    out = run["out"]
    print(f"train.py: {'resuming at step ' + str(step) + ', ' if step else ''}"
          f"{sum(p.size for p in numpy_gpt2.flatten_params(params).values()):,} parameters "
          f"(n_layer={config.n_layer}, n_head={config.n_head}, n_embd={config.n_embd}, "
          f"n_ctx={config.n_ctx}), {s['dtype']}; {len(run['splits']['train']):,} train / "
          f"{len(run['splits']['val']):,} val tokens; {tokens_per_step:,} tokens per step"
          f"{f' on {world.size} ranks' if world.size > 1 else ''}; "
          f"saving to {out}", file=sys.stderr, flush=True)
    interrupt = Interrupt()
    stop_on_sigterm(interrupt)
    bar = tqdm(total=s["max_iters"], initial=step, desc="train", unit="step", file=sys.stderr,
               dynamic_ncols=True, smoothing=0.1)
    began = time.perf_counter()
    try:
        while True:
            evaluated = any(m["kind"] == "eval" and m["step"] == step for m in run["metrics"][-1:])
            if (step % s["eval_interval"] == 0 or step == s["max_iters"]) and not evaluated:
                losses = {name: world.evaluate(params, config, batches) for name, batches in run["evals"].items()}
                record = eval_record(run, step, losses)
                run["metrics"].append(record)
                bar.write(eval_line(record), file=sys.stdout)
                sys.stdout.flush()
                keep_best(run, record)
                if step > start_step or step == s["max_iters"]:
                    save_run_collectively(run)
            if step >= s["max_iters"]:
                break
            if world.any(interrupt.requested):
                save_run_collectively(run)
                bar.close()
                print(f"train.py: interrupted at step {step}; saved to {out}; continue with "
                      f"python scripts/train.py --resume {out}", file=sys.stderr)
                return EXIT_INTERRUPTED
            lr = get_lr(step, s["lr"], s["min_lr"], s["warmup_iters"], decay_iters)
            # Every rank draws the N*m micro-batches one process with --grad-accum N*m would,
            # and reads its own share of them.
            count = s["grad_accum"] * world.size
            keep = world.share(range(count))
            batches = gpt2_data.micro_batches(run["splits"]["train"], s["block_size"], s["batch_size"],
                                              count, run["rng"], keep=keep)
            if s.get("dropout"):  # one mask seed per micro-batch, from the run's RNG (after the batches)
                seeds = run["rng"].integers(0, 2**63, size=count)
                batches = [(x, y, Dropout(s["dropout"], int(seeds[i]))) for (x, y), i in zip(batches, keep)]
            t0 = time.perf_counter()
            try:
                loss, norm = train_step(params, config, opt_state, batches, lr,
                                        betas=(s["beta1"], s["beta2"]),
                                        weight_decay=s["weight_decay"], grad_clip=s["grad_clip"],
                                        accumulate=world.accumulate_grads)
            except FloatingPointError as e:
                bar.close()
                print(f"train.py: error at step {step}: {e}; the last save in {out} is intact",
                      file=sys.stderr)
                return 1
            seconds = time.perf_counter() - t0
            step += 1
            run["metrics"].append({"kind": "train", "step": step, "loss": loss, "lr": lr,
                                   "grad_norm": norm, "tokens_per_s": tokens_per_step / seconds})
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}",
                            tok_s=f"{tokens_per_step / seconds:,.0f}", refresh=False)
            bar.update(1)
            run["interval"] = [a + b for a, b in zip(run.get("interval", (0.0, 0)), (seconds, tokens_per_step))]
            if s.get("sample_every") and step % s["sample_every"] == 0 and world.is_root:
                bar.write(sample_line(run, step), file=sys.stdout)
                sys.stdout.flush()
    finally:
        interrupt.restore()
        bar.close()
    wall = time.perf_counter() - began
    last = [m for m in run["metrics"] if m["kind"] == "eval"][-1]
    print(f"done: step {step}, train loss {last['train_loss']:.4f}, val loss {last['val_loss']:.4f}, "
          f"{wall:.0f} s for {step - start_step} steps; checkpoint in {out}")
    return 0


def main(argv=None) -> int:
    try:
        world = distributed.world()
    except RuntimeError as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if not world.is_root:  # rank 0 speaks for all; tracebacks still reach the real stderr
        sys.stdout = sys.stderr = open(os.devnull, "w")
    status = run_training(argv, world)  # an exception escaping it aborts every rank
    world.finish()  # every rank returns the same status
    return status


def run_training(argv, world) -> int:
    error, run, args = None, None, None
    try:
        args = parse_args(argv)
        run = prepare(args, world)
    except UsageError as e:
        error = " ".join(str(e).split())  # one line, whatever the underlying error said
    except KeyboardInterrupt:
        print("\ntrain.py: interrupted before training started; nothing saved", file=sys.stderr)
        return EXIT_INTERRUPTED
    error = world.first_error(error)  # bad input on any rank stops every rank
    if error is not None:
        print(f"train.py: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    world.broadcast_params(run["params"])  # after the check: every rank got here
    if args.eval_only:
        return eval_only(run)
    try:
        return train(run)
    except KeyboardInterrupt:  # a second Ctrl-C
        print("\ntrain.py: interrupted; the last save is intact", file=sys.stderr)
        return EXIT_INTERRUPTED


# ----------------------------------------------------------------------------------------
# Several ranks (numpy_gpt2.distributed): saving, resuming with another world size, SIGTERM.

# ----------------------------------------------------------------------------------------
# Trainer extras: throughput and MFU per evaluation, the best checkpoint, samples, --eval-only.

BEST_DIR = "best"
BEST_FILE = "best.json"


def eval_record(run, step, losses) -> dict:
    """The metrics record of an evaluation: the losses, and the training tokens/s since the
    previous evaluation with its model FLOPs utilisation (numpy_gpt2.mfu; null before any
    step of this process)."""
    from numpy_gpt2.mfu import flops_per_token, measure_peak_flops, mfu

    record = {"kind": "eval", "step": step, "train_loss": losses["train"], "val_loss": losses["val"]}
    seconds, tokens = run.pop("interval", (0.0, 0))
    if seconds > 0:
        if run["peak_flops"] is None:
            run["peak_flops"] = measure_peak_flops(run["settings"]["dtype"])
        rate = tokens / seconds
        per_token = flops_per_token(run["params"], run["config"], run["settings"]["block_size"])
        record.update(tokens_per_s=rate, mfu=mfu(per_token, rate, run["peak_flops"], run["world"].size))
    return record


def eval_line(record) -> str:
    line = f"step {record['step']}: train loss {record['train_loss']:.4f}, val loss {record['val_loss']:.4f}"
    if "mfu" in record:
        line += f", {record['tokens_per_s']:,.0f} tokens/s, MFU {100 * record['mfu']:.2f}%"
    return line


def best_so_far(out) -> float:
    """The val loss of the checkpoint in out/best/ (inf when there is none)."""
    try:
        with open(os.path.join(out, BEST_DIR, BEST_FILE), encoding="utf-8") as f:
            return float(json.load(f)["val_loss"])
    except (OSError, ValueError, KeyError):
        return math.inf


def keep_best(run, record) -> None:
    """A val loss lower than any before: rank 0 writes the weights to out/best/ as a Hugging
    Face checkpoint (plus best.json: step and val loss), all files atomically together."""
    from numpy_gpt2.checkpoint import checkpoint_writers

    if not record["val_loss"] < run["best"]:
        return
    run["best"] = record["val_loss"]
    if run["world"].is_root:
        writers = checkpoint_writers(run["params"], run["config"], run["tok_dir"],
                                     metadata={"step": str(record["step"])})
        info = json.dumps({"step": record["step"], "val_loss": record["val_loss"]}) + "\n"
        writers[BEST_FILE] = lambda path: open(path, "w", encoding="utf-8").write(info)
        write_files_atomically(os.path.join(run["out"], BEST_DIR), writers)
    run["world"].barrier()


def sample_line(run, step) -> str:
    """A short sample from --sample-prompt, logged in the metrics ({"kind": "sample"}). Its
    randomness comes from its own generator (seeded by the run's seed and the step), and
    generation only reads the weights, so training goes on exactly as without samples."""
    s, tokenizer = run["settings"], run["tokenizer"]
    prompt = gpt2_data.encode(tokenizer, s["sample_prompt"]).tolist() or [tokenizer.eot_token]
    prompt = prompt[-(run["config"].n_ctx - 1):]
    new = list(numpy_gpt2.generate(run["params"], run["config"], prompt, SAMPLE_TOKENS, top_k=200,
                                   seed=[s["seed"], 3, step]))
    text = tokenizer.decode(prompt + new)
    run["metrics"].append({"kind": "sample", "step": step, "text": text})
    return f"sample at step {step}: {text!r}"


def eval_only(run) -> int:
    """--eval-only: the losses of the loaded weights on the run's fixed evaluation batches;
    nothing is written."""
    losses = {name: run["world"].evaluate(run["params"], run["config"], batches)
              for name, batches in run["evals"].items()}
    print(f"train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
    return 0


def save_run_collectively(run) -> None:
    """Every rank checks the weights are the same on all; rank 0 alone saves; all wait for
    the save to finish (a rank never runs ahead of a save it may need to resume from)."""
    world = run["world"]
    world.check_same_params(run["params"])
    if world.is_root:
        save_run(run)
    world.barrier()


def resumed_grad_accum(info: dict, given, world_size: int) -> int:
    """--grad-accum for a run (saved with train_state.json's info) resumed on world_size
    ranks: the one given, else the saved N*m micro-batches per step shared by the new rank
    count (m' = N*m / N'). UsageError when N' does not divide N*m."""
    if given is not None:
        return given
    saved_world, saved = info.get("world_size", 1), info["settings"]["grad_accum"]
    if (saved_world * saved) % world_size:
        raise UsageError(f"the run was saved with {saved_world} rank(s) x --grad-accum {saved} = "
                         f"{saved_world * saved} micro-batches per step, which {world_size} ranks "
                         f"cannot share equally; give --grad-accum to change the batch")
    return saved_world * saved // world_size


def stop_on_sigterm(interrupt) -> None:
    """SIGTERM (a scheduler ending the job, mpiexec forwarding a stop) saves and stops like
    Ctrl-C."""
    signal.signal(signal.SIGTERM, interrupt.handle)


if __name__ == "__main__":
    sys.exit(main())
