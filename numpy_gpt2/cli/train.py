"""Train GPT-2 in NumPy on a text file, from scratch or from a checkpoint (fine-tuning).

    python scripts/train.py --data input.txt --out out-shakespeare            # from scratch
    python scripts/train.py --data input.txt --out out-ft --init gpt2 --lr 3e-5
    python scripts/train.py --resume out-shakespeare --max-iters 4000         # continue a run

Data: the first 90% of the file's characters train, the last 10% validate; both are tokenized
with GPT-2's BPE (the text "<|endoftext|>" is the separator token 50256). Or --data DIR: a
directory of token files (DIR/train.bin, DIR/val.bin: uint16 ids in nanoGPT's format, as
scripts/prepare.py writes them, or llm.c's), read through a memory map, so of any size. Each
optimizer step uses --grad-accum micro-batches of --batch-size random windows of --block-size tokens (AdamW, global-norm clipping, linear warmup then cosine decay
from --lr to --min-lr). Every --eval-interval steps (and at the end) the mean loss over fixed
--eval-iters batches of each split is printed, and the run is saved in --out: a Hugging Face
GPT-2 checkpoint (model.safetensors, config.json, vocab.json, merges.txt) that
generate.py --model, perplexity.py --model, numpy_gpt2.load and transformers read, plus the
optimizer state and train_state.json (for --resume), metrics.jsonl and loss_curve.png.
Every save is one atomic commit (a crash at any moment leaves the previous save or the new one,
whole), the run directory is locked against a second train.py, and Ctrl-C, SIGTERM and SIGHUP
save the run at the end of the current step and exit with status 128 + the signal (130 for
Ctrl-C). Bad input exits with status 2 and one line before any training; a run that diverges
or cannot save exits with status 1 and one line (see docs/runs.md). Under mpiexec, N ranks
train data-parallel (docs/distributed.md): every decision that ends the run is collective.
"""

from __future__ import annotations

from numpy_gpt2.cli import common

import argparse
import hashlib
import json
import math
import os
import re
import signal
import sys
import time
import warnings


import numpy as np

import numpy_gpt2

from numpy_gpt2.training import data as gpt2_data
from numpy_gpt2.training import distributed
from numpy_gpt2.io.atomic import DirectoryLocked, lock_directory, recover, write_files_atomically
from numpy_gpt2.checks import is_int, show
from numpy_gpt2.training.dropout import Dropout
from numpy_gpt2.errors import NonFiniteError
from numpy_gpt2.initialization import init_params
from numpy_gpt2.training.optim import get_lr
from numpy_gpt2.params import frozen_keys
from numpy_gpt2.io.token_files import max_token
from numpy_gpt2.io.tokenizer import TOKENIZER_ENV, TOKENIZER_FILES, tokenizer_dir
from numpy_gpt2.training.step import (OPTIMIZER_FILE, STATE_FILE, load_training_state,
                                   read_train_state, save_training_state, train_step)
from numpy_gpt2.cli.common import UsageError, one_line

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss_curve.png"
# Every file a save writes (recover() also deletes temporary files of earlier versions' saves).
RUN_FILES = ("config.json", "vocab.json", "merges.txt", "model.safetensors", OPTIMIZER_FILE,
             METRICS_FILE, PLOT_FILE, STATE_FILE)

# Defaults: nanoGPT's CPU Shakespeare recipe with GPT-2's BPE (see the README).
DEFAULTS = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, grad_accum=1,
                max_iters=2000, lr=1e-3, min_lr=1e-4, warmup_iters=100, lr_decay_iters=None,
                weight_decay=0.1, beta1=0.9, beta2=0.99, grad_clip=1.0, eval_interval=250,
                eval_iters=20, seed=1337, dtype="float32", init=None, data=None, sample_every=0,
                sample_prompt="\n", dropout=0.0, bias=True)
MODEL_FLAGS = ("n_layer", "n_head", "n_embd", "bias")
# Settings a resumed run may change (the rest would make it a different run).
RESUMABLE = ("max_iters", "lr", "min_lr", "warmup_iters", "lr_decay_iters", "weight_decay", "beta1",
             "beta2", "grad_clip", "eval_interval", "eval_iters", "batch_size", "grad_accum",
             "sample_every", "sample_prompt", "dropout")
# Flags of one invocation, not settings of the run (never saved, free to change).
INVOCATION = ("out", "resume", "threads", "eval_only", "peak_flops")
SAMPLE_TOKENS = 48  # new tokens per --sample-every sample


def parse_args(argv):
    p = common.Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    p.add_argument("--bias", type=str.lower, choices=["true", "false"], default=None,
                   help="false: a new model without biases in its Linear and LayerNorm layers "
                        "(nanoGPT's bias=False; the checkpoint decides with --init or --resume; "
                        "default: true)")
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
    if args.bias is not None:
        args.bias = args.bias == "true"
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
    need(s["seed"] >= 0, "seed", "an integer >= 0")
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


# Types of the settings saved in train_state.json (checked when resuming: a hand-edited or
# damaged file must give one line naming the key, not a traceback).
INT_SETTINGS = ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "grad_accum",
                "max_iters", "warmup_iters", "eval_interval", "eval_iters", "seed")
FLOAT_SETTINGS = ("lr", "min_lr", "weight_decay", "beta1", "beta2", "grad_clip")


def check_saved_settings(saved: dict, path: str) -> dict:
    """The settings of a train_state.json, each of the type train.py saves; UsageError naming
    the file and key otherwise. Ints saved for float settings are accepted (JSON 1 == 1.0)."""
    def bad(key, expected):
        shown = "missing" if key not in saved else show(saved[key])
        return UsageError(f"{path}: \"settings\" \"{key}\" is {shown}, expected {expected}")
    for key in INT_SETTINGS:
        if not is_int(saved.get(key)):
            raise bad(key, "an integer")
    for key in FLOAT_SETTINGS:
        if not (is_int(saved.get(key)) or isinstance(saved.get(key), float)):
            raise bad(key, "a number")
    if not (saved.get("lr_decay_iters", 0) is None or is_int(saved.get("lr_decay_iters"))):
        raise bad("lr_decay_iters", "an integer or null")
    if saved.get("dtype") not in ("float32", "float64"):
        raise bad("dtype", '"float32" or "float64"')
    if not isinstance(saved.get("data"), str) or not saved["data"]:
        raise bad("data", "the data file's path")
    if not (saved.get("init") is None or isinstance(saved.get("init"), str)):
        raise bad("init", "a checkpoint path or null")
    # Settings newer than some saved runs: checked when present, defaults otherwise.
    if not is_int(saved.get("sample_every", 0)) or saved.get("sample_every", 0) < 0:
        raise bad("sample_every", "an integer >= 0")
    if not isinstance(saved.get("sample_prompt", ""), str):
        raise bad("sample_prompt", "a string")
    if not (is_int(saved.get("dropout", 0)) or isinstance(saved.get("dropout"), float)):
        raise bad("dropout", "a number")
    if not isinstance(saved.get("bias", True), bool):
        raise bad("bias", "true or false")
    return {**DEFAULTS, **{k: saved[k] for k in DEFAULTS if k in saved},
            **{k: float(saved[k]) for k in FLOAT_SETTINGS},
            "dropout": float(saved.get("dropout", 0.0)), "lr_decay_iters": saved.get("lr_decay_iters")}


def find_tokenizer_files(source) -> str:
    """A directory holding GPT-2's vocab.json + merges.txt, to use and to copy into every save:
    the --init checkpoint's own (or the resumed run's), else $NUMPY_GPT2_TOKENIZER's, else the
    two files downloaded (once, then cached) from the hub's openai-community/gpt2."""
    try:
        directory = tokenizer_dir(source)
    except FileNotFoundError as e:
        raise UsageError(str(e)) from None
    if directory is not None:
        return directory
    try:
        from huggingface_hub import snapshot_download
        return snapshot_download("openai-community/gpt2", allow_patterns=list(TOKENIZER_FILES))
    except Exception:  # offline, no cache, hub down, huggingface_hub missing
        raise UsageError(f"GPT-2's {' and '.join(TOKENIZER_FILES)} are needed (train.py copies "
                         f"them into every save) and could not be fetched from the Hugging Face "
                         f"hub (offline?): to work offline, set {TOKENIZER_ENV} to a directory "
                         f"holding them, or --init from a checkpoint directory that has them") from None


def file_sha256(path) -> str:
    """sha256 of the --data file, or of a token directory's train.bin then val.bin, read in
    chunks (a token file can be larger than memory)."""
    digest = hashlib.sha256()
    files = [os.path.join(path, f"{n}.bin") for n in ("train", "val")] if os.path.isdir(path) else [path]
    for name in files:
        with open(name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def same_directory(a, b) -> bool:
    """Whether two paths name the same directory (symlinks, '..' and hard links resolved)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one does not exist (yet)
        return os.path.realpath(a) == os.path.realpath(b)


class RunDirs:
    """The directories this run reads and writes: each is locked (flock on the directory: a
    second train.py gets UsageError; the kernel drops the lock when this process ends, even
    by kill -9) and cleared of interrupted saves (numpy_gpt2.io.atomic.recover) before use. An
    --out directory this run created is removed again if it ends without a save in it.
    With several MPI ranks only rank 0 (owner=True) locks, recovers, creates and saves: the
    other ranks' lock attempts would find rank 0's lock."""

    def __init__(self, owner=True):
        self.owner = owner
        self.locks = {}  # realpath -> descriptor
        self.created = []  # directories this run made, innermost first

    def lock(self, path, flag) -> None:
        key = os.path.realpath(path)
        if key in self.locks or not self.owner:
            return
        try:
            self.locks[key] = lock_directory(path)
        except DirectoryLocked:
            raise UsageError(f"{flag} {path}: another train.py is training in this directory right "
                             f"now (it holds the directory's lock); wait for it to end or stop it") from None
        except OSError as e:
            raise UsageError(f"{flag} {path}: cannot open the directory ({e.strerror})") from None
        try:
            recover(path, names=RUN_FILES)
        except OSError as e:
            raise UsageError(f"{flag} {path}: cannot finish an interrupted save there "
                             f"({e.strerror})") from None

    def create(self, out) -> None:
        """Make out (and missing parents), remembering which were new."""
        if not self.owner:
            return
        missing, d = [], os.path.abspath(out)
        while not os.path.exists(d):
            missing.append(d)
            d = os.path.dirname(d)
        try:
            os.makedirs(out, exist_ok=True)
        except OSError as e:
            raise UsageError(f"--out {out}: cannot create the directory ({e.strerror})") from None
        self.created = missing

    def release(self) -> None:
        """Remove the directories this run created if they are still empty, then unlock."""
        for d in self.created:
            try:
                os.rmdir(d)
            except OSError:  # not empty: a save is in it
                break
        for fd in self.locks.values():
            os.close(fd)
        self.locks.clear()


def check_out_dir(out: str, resuming: bool, dirs: RunDirs) -> None:
    """Create out if needed, lock it, finish interrupted saves; UsageError unless it can be
    written and holds no other run (unless resuming it)."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"--out {out}: exists and is not a directory")
    dirs.create(out)
    dirs.lock(out, "--out")
    if not resuming and os.path.isfile(os.path.join(out, STATE_FILE)):
        raise UsageError(f"--out {out}: already holds a training run ({STATE_FILE}); continue it "
                         f"with --resume {out}, or choose another --out")
    if not resuming:  # e.g. a downloaded or converted checkpoint: a save would overwrite it
        taken = [name for name in RUN_FILES if os.path.exists(os.path.join(out, name))]
        if taken:
            raise UsageError(f"--out {out}: already holds {', '.join(taken)}, which a save would "
                             f"overwrite; choose a new or empty directory")
    import tempfile
    try:  # an empty staging directory: if killed right here, recover() deletes it later
        os.rmdir(tempfile.mkdtemp(prefix=".save-", suffix=".new", dir=out))
    except OSError as e:
        raise UsageError(f"--out {out}: cannot write there ({e.strerror})") from None


def resolve_settings(args, dirs: RunDirs) -> tuple[dict, str | None, dict | None]:
    """The run's settings (saved ones when resuming, overridden by the flags given), the
    directory to resume from (or None) and its train_state.json (or None)."""
    for flag in ("data", "out", "init", "resume"):
        value = getattr(args, flag)
        if value is not None and not value.strip():
            raise UsageError(f"--{flag} is empty: expected a "
                             f"{'file' if flag == 'data' else 'directory'} name")
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
                                 f"shape (and whether it has biases) comes from the checkpoint")
        return {**DEFAULTS, **given}, None, None
    if not os.path.isdir(args.resume):
        what = "not a directory" if os.path.exists(args.resume) else "no such directory"
        raise UsageError(f"--resume {args.resume}: {what}; not a run saved by train.py")
    dirs.lock(args.resume, "--resume")  # and finish a save a crash interrupted, before reading
    try:
        info = read_train_state(args.resume)
    except ValueError as e:
        raise UsageError(f"--resume {args.resume}: {e}") from None
    state_path = os.path.join(args.resume, STATE_FILE)
    saved = check_saved_settings(info["settings"], state_path)
    try:
        check_settings(saved)
    except UsageError as e:
        raise UsageError(f"{state_path}: the saved settings are invalid: {e}") from None
    digest = info.get("data_sha256")
    if not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)):
        shown = "missing" if "data_sha256" not in info else show(digest)
        raise UsageError(f"{state_path}: \"data_sha256\" is {shown}, expected "
                         f"the data file's sha256 (64 hexadecimal digits)")
    for k, v in given.items():
        if k == "data":
            continue  # checked against the saved file's hash once read
        if k not in RESUMABLE and v != saved.get(k):
            value = saved.get(k)
            shown = str(value).lower() if isinstance(value, bool) else repr(value)  # as the flag
            raise UsageError(f"--{k.replace('_', '-')} cannot change when resuming (the run in "
                             f"{args.resume} has {shown})")
    s = {**saved, **given}
    if info["step"] > s["max_iters"]:
        raise UsageError(f"--max-iters {s['max_iters']} is below the step the run in "
                         f"{args.resume} has reached ({info['step']})")
    return s, args.resume, info


class Finished(Exception):
    """--resume of a run that has already done --max-iters steps."""


def prepare(args, dirs: RunDirs, world=distributed.Solo()) -> dict:
    """Everything training needs, every input checked: the settings, data splits, tokenizer
    directory, params, optimizer state, RNG, and the eval batches. With several ranks, rank 0
    alone locks and creates --out and reads the data's vocabulary and hash (its verdict
    reaches every rank through distributed.first_error)."""
    s, resume_dir, info = resolve_settings(args, dirs)
    check_settings(s)
    if info is not None:  # the saved N ranks x m micro-batches, shared by this world's ranks
        s["grad_accum"] = resumed_grad_accum(info, args.grad_accum, world.size)
    out = args.out or resume_dir
    dtype = np.dtype(s["dtype"])
    try:
        init_path = None
        if resume_dir is None and s["init"] is not None:
            init_path = numpy_gpt2.resolve_model(s["init"])
            init_dir = init_path if os.path.isdir(init_path) else os.path.dirname(init_path) or "."
            if out is not None and same_directory(init_dir, out):
                raise UsageError(f"--init {s['init']} and --out {out} are the same directory: "
                                 f"training would overwrite the checkpoint it starts from; "
                                 f"choose another --out")
        if dirs.owner and not args.eval_only:
            check_out_dir(out, resuming=resume_dir is not None and same_directory(out, resume_dir),
                          dirs=dirs)
        if resume_dir is not None:
            params, config = numpy_gpt2.load(resume_dir, dtype=dtype)
            tok_dir = find_tokenizer_files(resume_dir)
            if config.bias != s["bias"]:  # the run's own files disagree: never change the model
                say = {True: "with biases", False: "without biases"}
                raise UsageError(f"--resume {resume_dir}: the run trains a model "
                                 f"{say[s['bias']]} ({STATE_FILE}: \"bias\": "
                                 f"{str(s['bias']).lower()}), but its config.json describes one "
                                 f"{say[config.bias]}; restore config.json "
                                 f"({'with' if not s['bias'] else 'without'} \"bias\": false)")
        elif init_path is not None:
            params, config = numpy_gpt2.load(init_path, dtype=dtype)
            tok_dir = find_tokenizer_files(init_path)
        else:
            config = numpy_gpt2.GPT2Config(n_layer=s["n_layer"], n_head=s["n_head"],
                                           n_embd=s["n_embd"], n_ctx=s["block_size"],
                                           bias=s["bias"])
            tok_dir = find_tokenizer_files(None)
            params = None  # drawn after the data checks (a 124M init takes seconds)
        s["bias"] = config.bias  # the checkpoint's, with --init or --resume (saved as such)
        if s["block_size"] > config.n_ctx:
            raise UsageError(f"--block-size {s['block_size']} is larger than the checkpoint's "
                             f"context n_ctx={config.n_ctx}")
        check_memory(config, s, dtype)
        tokenizer = numpy_gpt2.load_tokenizer(tok_dir)
        data_path = os.path.abspath(s["data"])
        splits = gpt2_data.load_data(data_path, tokenizer)
        for name, tokens in splits.items():
            gpt2_data.check_split_length(tokens, s["block_size"], name)
            # One pass over the data (a token file may be huge): by rank 0 alone.
            top = max_token(tokens) if world.is_root else 0
            if top >= config.vocab_size:
                raise UsageError(f"--data {data_path}: the {name} split's token ids reach {top}, "
                                 f"beyond the model's vocab_size={config.vocab_size}")
        digest = file_sha256(data_path) if world.is_root else None
        if resume_dir is not None:
            if world.is_root and info["data_sha256"] != digest:
                raise UsageError(f"--data {data_path}: not the file the run in {resume_dir} was "
                                 f"trained on (sha256 differs)")
            opt_state, info = load_training_state(resume_dir, params)
            if info["step"] == s["max_iters"] and not args.eval_only:
                raise Finished(f"the run in {resume_dir} has finished: it is at step {info['step']} "
                               f"of --max-iters {s['max_iters']}; to train it further, give a larger "
                               f"--max-iters, e.g. train.py --resume {resume_dir} --max-iters "
                               f"{2 * max(1, info['step'])}")
            rng = restore_rng(info, resume_dir)
            # The metrics were saved in the same commit as the state: exactly its steps.
            metrics = [m for m in read_metrics(resume_dir) if m["step"] <= opt_state["step"]]
        else:
            if params is None:
                params = init_params(config, seed=s["seed"], dtype=dtype)
            opt_state = numpy_gpt2.adamw_init(params)
            rng = np.random.default_rng([s["seed"], 1])  # the batch sampler's own stream
            metrics = []
    except (ValueError, OSError, RuntimeError) as e:  # CheckpointError is a ValueError
        raise common.input_error(e) from None
    evals = {name: gpt2_data.eval_batches(tokens, s["block_size"], s["batch_size"], s["eval_iters"],
                                          seed=[s["seed"], 2 + i])
             for i, (name, tokens) in enumerate(splits.items())}
    s = {**s, "data": data_path}
    return dict(settings=s, out=out, config=config, params=params, opt_state=opt_state, rng=rng,
                splits=splits, evals=evals, tok_dir=tok_dir, data_sha256=digest, metrics=metrics,
                world=world, tokenizer=tokenizer, peak_flops=args.peak_flops,
                best=best_so_far(out) if out else math.inf,
                saved_step=opt_state["step"] if resume_dir is not None and same_directory(out, resume_dir)
                else None)


def physical_memory() -> int | None:
    """Bytes of RAM of this machine (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_memory(config, s, dtype) -> None:
    """UsageError when the run cannot fit in this machine's RAM, before anything is allocated.

    A lower bound (Python ints: exact for any flag value): the weights, their gradients and
    AdamW's m and v (4 x parameters x bytes per number), one micro-batch's logits and per-layer
    activations (batch x block x (4 n_embd n_layer + vocab) numbers), and the token ids of the
    step's --grad-accum micro-batches and of the 2 x --eval-iters evaluation batches (int64
    inputs and targets)."""
    total = physical_memory()
    if total is None:
        return
    E, L, V = config.n_embd, config.n_layer, config.vocab_size
    n_params = V * E + config.n_ctx * E + L * (12 * E * E + 13 * E) + 2 * E
    tokens = s["batch_size"] * s["block_size"]
    parts = {"weights, gradients and AdamW state": 4 * n_params * dtype.itemsize,
             "activations": tokens * (4 * E * L + V) * dtype.itemsize,
             "batches": tokens * (s["grad_accum"] + 2 * s["eval_iters"]) * 16}
    need = sum(parts.values())
    if need > total:
        gib = lambda n: f"{n / 2**30:,.1f} GiB"  # noqa: E731
        raise UsageError(f"this run needs at least {gib(need)} of memory ("
                         + ", ".join(f"{what} {gib(n)}" for what, n in parts.items())
                         + f") and this machine has {gib(total)}: use smaller --n-layer, --n-embd, "
                           f"--batch-size, --block-size, --grad-accum or --eval-iters")


def restore_rng(info, directory) -> np.random.Generator:
    """The batch sampler as saved: a PCG64 generator in the state train_state.json holds."""
    rng = np.random.default_rng()
    try:
        rng.bit_generator.state = info["rng"]
    except (TypeError, ValueError, KeyError, OverflowError):
        raise UsageError(f"{os.path.join(directory, STATE_FILE)}: \"rng\" is not the state of a "
                         f"NumPy PCG64 generator") from None
    return rng


# ----------------------------------------------------------------------------------------
# Outputs: metrics, the loss curve, checkpoints.

def read_metrics(directory) -> list[dict]:
    path = os.path.join(directory, METRICS_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return []
    metrics = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
            if not (isinstance(record, dict) and isinstance(record.get("step"), int)
                    and record.get("kind") in ("train", "eval", "sample")):
                raise ValueError
        except ValueError:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise ValueError(f"{path}: line {number} is not a train.py metrics record") from None
        metrics.append(record)
    return metrics


def loss_curve_writer(metrics):
    """write(path) drawing loss_curve.png: training loss per step and the evaluated train/val
    losses; None when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    train = [(m["step"], m["loss"]) for m in metrics if m["kind"] == "train"]
    evals = [m for m in metrics if m["kind"] == "eval"]

    def write(path):
        fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
        try:
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
            if train or evals:
                ax.legend()
            fig.subplots_adjust(left=0.11, right=0.98, bottom=0.13, top=0.97)  # tight_layout: 1.5x slower
            fig.savefig(path, format="png")
        finally:
            plt.close(fig)
    return write


def save_run(run) -> None:
    """One atomic commit of everything: model, optimizer, train_state.json, metrics.jsonl and
    loss_curve.png, all at the same step."""
    s = run["settings"]
    info = {"settings": s, "rng": run["rng"].bit_generator.state, "data_sha256": run["data_sha256"],
            "numpy_gpt2": "train.py", "world_size": run["world"].size if "world" in run else 1}
    text = "".join(json.dumps(m) + "\n" for m in run["metrics"])

    def write_metrics(path):
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    extra = {METRICS_FILE: write_metrics}
    plot = loss_curve_writer(run["metrics"])
    if plot is not None:
        extra[PLOT_FILE] = plot
    save_training_state(run["out"], run["params"], run["config"], run["tok_dir"], run["opt_state"],
                        info, extra_files=extra)
    run["saved_step"] = run["opt_state"]["step"]
    if plot is None and not run.get("said_no_plot"):
        run["said_no_plot"] = True
        say("train.py: matplotlib is not installed, so no loss_curve.png (install it with "
            "pip install 'numpy_gpt2[plot]' or pip install matplotlib); training goes on")


# ----------------------------------------------------------------------------------------
# Signals and messages.

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP")
                     if hasattr(signal, name))


class Stopped(BaseException):
    """A stop signal that cannot wait for the end of the step (before training starts, or a
    second one). A BaseException, like KeyboardInterrupt: `except Exception` lets it through
    and an unfinished save is discarded on its way out."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


class StopSignals:
    """SIGINT (Ctrl-C), SIGTERM and SIGHUP (what terminals and batch schedulers send). Before
    training (defer=False) one stops train.py at once. During training the first sets
    `received` and the loop saves at the end of the current step, then exits with 128 + its
    number; a second stops at once (the last save is whole: saves are atomic)."""

    def __init__(self):
        self.received = None
        self.defer = False
        self.previous = {}
        for signum in STOP_SIGNALS:
            try:
                self.previous[signum] = signal.signal(signum, self.handle)
            except (ValueError, OSError):  # not the main thread: leave the defaults
                pass

    def handle(self, signum, frame):
        if self.defer and self.received is None:
            self.received = signum
            say(f"\ntrain.py: {signal.Signals(signum).name}: saving at the end of this step "
                f"({'Ctrl-C' if signum == signal.SIGINT else 'the signal'} again to stop at once)")
            return
        raise Stopped(signum)

    def restore(self):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


def say(message) -> None:
    """A line on stderr; a terminal that is gone (SIGHUP) must not stop the run."""
    try:
        print(message, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def report(message) -> None:
    """A line on stdout (evaluations, the summary); if stdout is a pipe whose reader has gone,
    the run goes on and stdout goes to /dev/null."""
    try:
        print(message, flush=True)
    except (BrokenPipeError, ValueError, common.OutputError):  # (closed, full: the run goes on)
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):  # (AttributeError: closed, no descriptor)
            pass


# ----------------------------------------------------------------------------------------
# The loop.

def n_parameters(params, config) -> int:
    """The number of parameters (not the constant zero biases of a model without biases)."""
    frozen = set(frozen_keys(params, config))
    return sum(p.size for key, p in numpy_gpt2.flatten_params(params).items() if key not in frozen)


def train(run, signals: StopSignals) -> int:
    from tqdm import tqdm

    s, params, config, opt_state = run["settings"], run["params"], run["config"], run["opt_state"]
    decay_iters = s["lr_decay_iters"] if s["lr_decay_iters"] is not None else s["max_iters"]
    start_step = step = opt_state["step"]
    world = run["world"]
    tokens_per_step = s["batch_size"] * s["block_size"] * s["grad_accum"] * world.size
    out = run["out"]
    say(f"train.py: {'resuming at step ' + str(step) + ', ' if step else ''}"
        f"{n_parameters(params, config):,} parameters "
        f"(n_layer={config.n_layer}, n_head={config.n_head}, n_embd={config.n_embd}, "
        f"n_ctx={config.n_ctx}{'' if config.bias else ', no biases'}), {s['dtype']}; {len(run['splits']['train']):,} train / "
        f"{len(run['splits']['val']):,} val tokens; {tokens_per_step:,} tokens per step"
        f"{f' on {world.size} ranks' if world.size > 1 else ''}; saving to {out}")
    bar = tqdm(total=s["max_iters"], initial=step, desc="train", unit="step", file=sys.stderr,
               dynamic_ncols=True, smoothing=0.1)
    began = time.perf_counter()

    def failed(what):
        bar.close()
        last = run["saved_step"]
        say(f"train.py: error at step {step}: {one_line(what)}; "
            + (f"the last save in {out} (step {last}) is intact" if last is not None
               else f"nothing was saved in {out}"))
        return EXIT_FAILED

    def alone():
        # A failure this rank may meet alone (out of memory, inside a collective): the other
        # ranks cannot learn it, so with several ranks it aborts them all (distributed's
        # excepthook); one process reports it in one line.
        if world.size > 1:
            raise
    signals.defer = True
    try:
        with warnings.catch_warnings():  # overflow is detected and reported as one line
            warnings.filterwarnings("ignore", category=RuntimeWarning,
                                    message="(overflow|invalid value|divide by zero) encountered")
            while True:
                evaluated = any(m["kind"] == "eval" and m["step"] == step for m in run["metrics"][-1:])
                due = (step % s["eval_interval"] == 0 or step == s["max_iters"]) and not evaluated
                if due:
                    try:
                        losses = {name: world.evaluate(params, config, batches)
                                  for name, batches in run["evals"].items()}
                    except (FloatingPointError, NonFiniteError) as e:
                        alone()
                        return failed(f"evaluation: {e}")
                    except MemoryError as e:
                        alone()
                        return failed(f"out of memory while evaluating ({one_line(e) or 'MemoryError'})")
                    record = eval_record(run, step, losses)
                    run["metrics"].append(record)
                    bar.clear()
                    report(eval_line(record))
                    bar.refresh()
                    error = keep_best(run, record)
                    if error is not None:
                        return failed(f"saving the best checkpoint to {os.path.join(out, BEST_DIR)} "
                                      f"failed: {error}")
                # A signal on any rank stops every rank (the largest signal number wins).
                stop = world.max(signals.received or 0)
                # Save after every evaluation (step 0 included), at the end, and on a signal.
                if run["saved_step"] != step and (due or step == s["max_iters"] or stop):
                    error = save_run_collectively(run)
                    if error is not None:  # e.g. a full disk, or the tokenizer files to copy gone
                        return failed(f"saving to {out} failed: {error}")
                if stop:
                    bar.close()
                    say(f"train.py: {signal.Signals(stop).name}: stopped at step {step}; saved to {out}; "
                        f"continue with python scripts/train.py --resume {out}")
                    return 128 + stop
                if step >= s["max_iters"]:
                    break
                lr = get_lr(step, s["lr"], s["min_lr"], s["warmup_iters"], decay_iters)
                # Every rank draws the N*m micro-batches one process with --grad-accum N*m
                # would, and reads its own share of them.
                count = s["grad_accum"] * world.size
                keep = world.share(range(count))
                batches = gpt2_data.micro_batches(run["splits"]["train"], s["block_size"], s["batch_size"],
                                                  count, run["rng"], keep=keep)
                if s.get("dropout"):  # one mask seed per micro-batch, from the run's RNG (after the batches)
                    seeds = run["rng"].integers(0, 2**63, size=count)
                    batches = [(x, y, Dropout(s["dropout"], int(seeds[i]))) for (x, y), i in zip(batches, keep)]
                t0 = time.perf_counter()
                try:
                    # a non-finite loss or gradient on any rank is non-finite on all (reduced)
                    loss, norm = train_step(params, config, opt_state, batches, lr,
                                            betas=(s["beta1"], s["beta2"]),
                                            weight_decay=s["weight_decay"], grad_clip=s["grad_clip"],
                                            accumulate=world.accumulate_grads)
                except (FloatingPointError, NonFiniteError) as e:
                    return failed(f"the run diverged: {e}")
                except MemoryError as e:
                    alone()
                    return failed(f"out of memory ({one_line(e) or 'MemoryError'})")
                seconds = time.perf_counter() - t0
                step += 1
                run["metrics"].append({"kind": "train", "step": step, "loss": loss, "lr": lr,
                                       "grad_norm": norm, "tokens_per_s": tokens_per_step / seconds})
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}",
                                tok_s=f"{tokens_per_step / seconds:,.0f}", refresh=False)
                bar.update(1)
                run["interval"] = [a + b for a, b in zip(run.get("interval", (0.0, 0)), (seconds, tokens_per_step))]
                if s.get("sample_every") and step % s["sample_every"] == 0 and world.is_root:
                    line = sample_line(run, step)
                    bar.clear()
                    report(line)
                    bar.refresh()
    finally:
        bar.close()
    wall = time.perf_counter() - began
    last = [m for m in run["metrics"] if m["kind"] == "eval"][-1]
    report(f"done: step {step}, train loss {last['train_loss']:.4f}, val loss {last['val_loss']:.4f}, "
           f"{wall:.0f} s for {step - start_step} steps; checkpoint in {out}")
    return 0


@common.entry("train")
def main(argv=None) -> int:
    signals = StopSignals()
    try:
        world = distributed.world()
    except RuntimeError as e:
        say(f"train.py: error: {one_line(e)}")
        return EXIT_BAD_INPUT
    except Stopped as e:
        say(f"\ntrain.py: {signal.Signals(e.signum).name} before training started; nothing saved")
        signals.restore()
        return 128 + e.signum
    if not world.is_root:  # rank 0 speaks for all; tracebacks still reach the real stderr
        sys.stdout = sys.stderr = open(os.devnull, "w")
    dirs = RunDirs(owner=world.is_root)  # rank 0 alone locks, recovers and saves
    try:
        status, together = run_training(argv, world, signals, dirs)
    except Stopped as e:  # a signal during a collective start-up check: this rank stops at once
        say(f"\ntrain.py: {signal.Signals(e.signum).name} before training started; nothing saved")
        status, together = 128 + e.signum, False
    finally:
        dirs.release()
        signals.restore()
    if together:  # every rank returns the same status; a rank stopped at once does not wait
        world.finish()  # for the others (the launcher ends the job when it exits)
    return status


def run_training(argv, world, signals: StopSignals, dirs: RunDirs) -> tuple[int, bool]:
    """(exit status, whether every rank ends with it: False when a signal stopped this rank
    at once). Every start-up verdict (bad input, out of memory, a finished run) is agreed by
    all ranks; rank 0 says it."""
    error, finished, out_of_memory, run, args = None, None, False, None, None
    try:
        args = parse_args(argv)
        if world.size > 1 and args.resume and os.path.isdir(args.resume):
            dirs.lock(args.resume, "--resume")  # rank 0 finishes an interrupted save before any rank reads
    except UsageError as e:
        error = one_line(e)
    if world.size > 1:
        error = world.first_error(error)
    if error is None:
        try:
            run = prepare(args, dirs, world)
        except UsageError as e:
            error = one_line(e)
        except Finished as e:
            finished = one_line(e)
        except MemoryError as e:
            error, out_of_memory = f"out of memory while loading ({one_line(e) or 'MemoryError'})", True
        except Stopped as e:
            say(f"\ntrain.py: {signal.Signals(e.signum).name} before training started; nothing saved")
            return 128 + e.signum, False
        error = world.first_error(error)  # bad input on any rank stops every rank
    if error is not None:
        say(f"train.py: error: {error}")
        return (EXIT_FAILED if world.any(out_of_memory) else EXIT_BAD_INPUT), True
    if finished is not None:  # every rank read the same train_state.json
        say(f"train.py: {finished}")
        return 0, True
    world.broadcast_params(run["params"])  # after the check: every rank got here
    if args.eval_only:
        return eval_only(run), True
    try:
        return train(run, signals), True
    except Stopped as e:  # a second signal
        last = run["saved_step"]
        say(f"\ntrain.py: {signal.Signals(e.signum).name}: stopped at once; "
            + (f"the last save in {run['out']} (step {last}) is intact" if last is not None
               else f"nothing was saved in {run['out']}"))
        return 128 + e.signum, False


# ----------------------------------------------------------------------------------------
# Several ranks (numpy_gpt2.training.distributed): saving, resuming with another world size.

def save_run_collectively(run) -> str | None:
    """Every rank checks the weights are the same on all; rank 0 alone saves (save_run); all
    wait for the save to end (a rank never runs ahead of a save it may need to resume from).
    Returns None, or on every rank the one-line reason the save failed (e.g. a full disk)."""
    world = run["world"]
    try:
        world.check_same_params(run["params"])  # raises on every rank alike
    except RuntimeError as e:
        return str(e)
    error = None
    if world.is_root:
        try:
            save_run(run)
        except (OSError, ValueError, FloatingPointError, MemoryError) as e:
            error = common.describe(e)  # (the resource, the file; never empty)
    error = world.first_error(error)  # also the barrier after the save
    if error is None:
        run["saved_step"] = run["opt_state"]["step"]
    return error


def resumed_grad_accum(info: dict, given, world_size: int) -> int:
    """--grad-accum for a run (saved with train_state.json's info) resumed on world_size
    ranks: the one given, else the saved N*m micro-batches per step shared by the new rank
    count (m' = N*m / N'). UsageError when N' does not divide N*m."""
    if given is not None:
        return given
    saved_world, saved = info.get("world_size", 1), info["settings"]["grad_accum"]
    if not is_int(saved_world) or saved_world < 1:
        raise UsageError(f"{STATE_FILE}: \"world_size\" is {show(saved_world)}, expected an integer >= 1")
    if (saved_world * saved) % world_size:
        raise UsageError(f"the run was saved with {saved_world} rank(s) x --grad-accum {saved} = "
                         f"{saved_world * saved} micro-batches per step, which {world_size} ranks "
                         f"cannot share equally; give --grad-accum to change the batch")
    return saved_world * saved // world_size


# ----------------------------------------------------------------------------------------
# Trainer extras: throughput and MFU per evaluation, the best checkpoint, samples, --eval-only.

BEST_DIR = "best"
BEST_FILE = "best.json"


def eval_record(run, step, losses) -> dict:
    """The metrics record of an evaluation: the losses, and the training tokens/s since the
    previous evaluation with its model FLOPs utilisation (numpy_gpt2.training.mfu; null before any
    step of this process)."""
    from numpy_gpt2.training.mfu import flops_per_token, measure_peak_flops, mfu

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
    except (OSError, ValueError, KeyError, TypeError):
        return math.inf


def keep_best(run, record) -> str | None:
    """A val loss lower than any before: rank 0 writes the weights to out/best/ as a Hugging
    Face checkpoint (plus best.json: step and val loss), all files one atomic commit of their
    own (numpy_gpt2.io.atomic; outside the run's save). Returns None, or on every rank the
    one-line reason writing failed."""
    from numpy_gpt2.io.checkpoint import checkpoint_writers

    if not record["val_loss"] < run["best"]:
        return None
    run["best"] = record["val_loss"]
    error = None
    if run["world"].is_root:
        writers = checkpoint_writers(run["params"], run["config"], run["tok_dir"],
                                     metadata={"step": str(record["step"])})
        info = json.dumps({"step": record["step"], "val_loss": record["val_loss"]}) + "\n"

        def write_info(path):
            with open(path, "w", encoding="utf-8") as f:
                f.write(info)
        writers[BEST_FILE] = write_info
        try:
            write_files_atomically(os.path.join(run["out"], BEST_DIR), writers)
        except (OSError, ValueError, MemoryError) as e:
            error = common.describe(e)  # (the resource, the file; never empty)
    return run["world"].first_error(error)  # also the barrier after the write


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
    report(f"train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
    return 0
