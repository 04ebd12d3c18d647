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

The training itself is numpy_gpt2.training (loop.py, run.py, settings.py, state.py): this
module is the command line around it, its flags, messages and exit statuses.
"""

from __future__ import annotations

from numpy_gpt2.cli import common, starting, stopping

import argparse
import contextlib
import math
import os
import re
import signal
import sys

from numpy_gpt2.checks import show
from numpy_gpt2.cli.common import UsageError, one_line
from numpy_gpt2.cli.train_messages import (keep_stderr, last_save, prog, report, resume_command, say,
                                           stopped_before)
from numpy_gpt2.io.atomic import DirectoryLocked
from numpy_gpt2.training import distributed, loop, settings as settings_lib
from numpy_gpt2.training.run import (RunDirectory, RunDirectoryError, RunFinished, open_run,
                                     same_directory)
from numpy_gpt2.training.settings import DEFAULT_BLOCK_SIZE, DEFAULTS
from numpy_gpt2.training import state
from numpy_gpt2.training.state import RUN_FILES, STATE_FILE, read_train_state

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
# Flags of one invocation, not settings of the run (never saved, free to change).
INVOCATION = ("out", "resume", "threads", "eval_only", "peak_flops")
# Setting (argument) names whose flag is not --name-with-dashes.
FLAGS = {"gradient_accumulation_steps": "--grad-accum", "resume_dir": "--resume"}


def parse_args(argv):
    p = common.Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = {**DEFAULTS, "grad_accum": DEFAULTS["gradient_accumulation_steps"],
         "block_size": f"{DEFAULT_BLOCK_SIZE}, or the --init checkpoint's n_ctx when smaller"}
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
    if args.eval_only and args.init is None and args.resume is None:
        raise UsageError("--eval-only needs --init CHECKPOINT (with --data) or --resume DIR: "
                         "the losses of a new, untrained model tell nothing")
    return args


# A setting's name inside a library message, where it stands for the setting: not inside a
# word, a path or a quoted JSON key, and followed by its value, "=", a list's comma, or a verb.
_NAME = re.compile(r"(?<![\w\"./-])({})(?![\w\"./-])(?=$|[=:,)]| [-0-9'\"]| or\b| is\b| cannot\b| to\b)"
                   .format("|".join(sorted([*settings_lib.NAMES, *FLAGS], key=len, reverse=True))))


def flags(message) -> str:
    """A library message worded for the command line: the settings it names as their flags
    (`min_lr 1.0 is invalid: expected a number in [0, lr=0.001]` -> `--min-lr 1.0 ... --lr=...`);
    a name opening the message is always one (common.flag_message's rule)."""
    message = str(message)
    opening = re.match(r"[a-z_0-9]+(?= )", message)
    start = 0
    if opening and opening.group(0) in (*settings_lib.NAMES, *FLAGS):
        start = opening.end()
        message = _flag(opening.group(0)) + message[start:]
        start = len(_flag(opening.group(0)))
    return message[:start] + _NAME.sub(lambda m: _flag(m.group(1)), message[start:])


def _flag(name: str) -> str:
    return FLAGS.get(name, "--" + name.replace("_", "-"))


# ----------------------------------------------------------------------------------------
# Checking the input, all before training starts.

def resolve_settings(args, dirs: RunDirectory):
    """(the run's settings: saved ones when resuming, overridden by the flags given; the
    directory to resume from or None; its train_state.json or None)."""
    for flag in ("data", "out", "init", "resume"):
        value = getattr(args, flag)
        if value is not None and not value.strip():
            raise UsageError(f"--{flag} is empty: expected a "
                             f"{'file' if flag == 'data' else 'directory'} name")
    given = {"gradient_accumulation_steps" if k == "grad_accum" else k: v
             for k, v in vars(args).items() if v is not None and k not in INVOCATION}
    if args.data is not None and not os.path.isdir(args.data):
        from numpy_gpt2.io.inputs import check_text_input
        try:  # a device (endless), a socket, a symlink loop: refused before any work
            check_text_input(args.data)
        except ValueError as e:
            raise UsageError(f"--data {e}") from None
    if args.resume is None:
        if args.data is None:
            raise UsageError("--data FILE is required (or --resume DIR to continue a run)")
        if args.out is None and not args.eval_only:
            raise UsageError("--out DIR is required")
        s = library(settings_lib.new_run, given)
        library(s.check)
        return s, None, None
    if not os.path.isdir(args.resume):
        what = "not a directory" if os.path.exists(args.resume) else "no such directory"
        raise UsageError(f"--resume {args.resume}: {what}; not a run saved by train.py")
    lock(dirs, args.resume, "--resume")  # and finish a save a crash interrupted, before reading
    try:
        info = read_train_state(args.resume)
    except ValueError as e:
        raise UsageError(f"--resume {args.resume}: {e}") from None
    state_path = os.path.join(args.resume, STATE_FILE)
    saved = library(settings_lib.from_saved, info["settings"], state_path)
    try:
        saved.check()
    except ValueError as e:
        raise UsageError(f"{state_path}: the saved settings are invalid: {flags(e)}") from None
    digest = info.get("data_sha256")
    if not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)):
        shown = "missing" if "data_sha256" not in info else show(digest)
        raise UsageError(f"{state_path}: \"data_sha256\" is {shown}, expected "
                         f"the data file's sha256 (64 hexadecimal digits)")
    s = library(settings_lib.resume, saved, given, info["step"], args.resume)
    library(s.check)
    return s, args.resume, info


def library(function, *args):
    """function(*args), its ValueError (a library's, naming arguments) as a UsageError worded
    with the flags."""
    try:
        return function(*args)
    except ValueError as e:
        raise UsageError(flags(e)) from None


def lock(dirs: RunDirectory, path, flag, create=False) -> None:
    """Lock (and with create, first make) a run directory; UsageError naming the flag."""
    held = stopping.StopSignals.active.held() if stopping.StopSignals.active else contextlib.nullcontext()
    try:
        with held:  # a signal now would leave a directory made but not locked (or not removed)
            dirs.create_and_lock(path) if create else dirs.lock(path)
    except DirectoryLocked:
        raise UsageError(f"{flag} {path}: another train.py is training in this directory right "
                         f"now (it holds the directory's lock); wait for it to end or stop it") from None
    except RunDirectoryError as e:
        raise UsageError(f"{flag} {path}: {e.reason}") from None


def check_out_dir(out: str, resuming: bool, dirs: RunDirectory) -> None:
    """Create out if needed and lock it (one step), finish interrupted saves; UsageError unless
    it can be written and holds no other run (unless resuming it)."""
    from numpy_gpt2.io.outputs import check_path_name
    try:
        check_path_name(out, file=False)  # (empty, a symlink loop)
    except ValueError as e:
        raise UsageError(f"--out {e}") from None
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"--out {out}: exists and is not a directory")
    lock(dirs, out, "--out", create=True)
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
        raise common.input_error(e, None if e.filename else f"--out {out}",
                                 f"--out {out}: cannot write there ({e.strerror})") from None


class Finished(Exception):
    """--resume of a run that has already done --max-iters steps."""


def prepare(args, dirs: RunDirectory, world=distributed.Solo()):
    """The Run (numpy_gpt2.training.run.open_run), every input checked. With several ranks,
    rank 0 alone locks and creates --out (its verdict reaches every rank through
    distributed.first_error)."""
    s, resume_dir, info = resolve_settings(args, dirs)
    if info is not None:  # the saved N ranks x m micro-batches, shared by this world's ranks
        s = s.replace(gradient_accumulation_steps=library(
            settings_lib.resumed_accumulation_steps, info, args.grad_accum, world.size))
    out = args.out or resume_dir
    try:
        init_path = None
        if resume_dir is None and s.init is not None:
            try:
                init_path = common.resolve_model(s.init, flag="--init")
            except ValueError as e:
                raise UsageError(str(e)) from None
            init_dir = init_path if os.path.isdir(init_path) else os.path.dirname(init_path) or "."
            if out is not None and same_directory(init_dir, out):
                raise UsageError(f"--init {s.init} and --out {out} are the same directory: "
                                 f"training would overwrite the checkpoint it starts from; "
                                 f"choose another --out")
        if dirs.owner and not args.eval_only:
            check_out_dir(out, resuming=resume_dir is not None and same_directory(out, resume_dir),
                          dirs=dirs)
        return open_run(s, out=None if args.eval_only else out, resume_dir=resume_dir, info=info,
                        init_path=init_path, world=world, peak_flops=args.peak_flops,
                        stop_if_finished=not args.eval_only)
    except RunFinished as e:
        raise Finished(f"the run in {e.directory} has finished: it is at step {e.step} of "
                       f"--max-iters {e.step}; to train it further, give a larger --max-iters, "
                       f"e.g. {resume_command(e.directory)} --max-iters {2 * max(1, e.step)}") from None
    except (ValueError, OSError, RuntimeError) as e:  # a checkpoint's or a file's, as they say it
        if type(e) is ValueError:
            raise UsageError(flags(e)) from None
        raise common.input_error(e) from None  # (out of memory or disk space: status 1, not 2)


# ----------------------------------------------------------------------------------------
# The command.

@common.entry("train", hangup=True)
def main(argv=None) -> int:
    signals = stopping.StopSignals.active
    stderr = sys.stderr
    keep_stderr()
    try:
        try:
            world = distributed.world()
        except RuntimeError as e:
            say(f"{prog()}: error: {one_line(e)}")
            return EXIT_BAD_INPUT
        except (KeyboardInterrupt, stopping.Terminated, stopping.HungUp) as e:
            say(stopped_before(stopping.signal_number(e)))
            return 128 + stopping.signal_number(e)
        if not world.is_root:  # rank 0 speaks for all; tracebacks still reach the real stderr
            sys.stdout = sys.stderr = open(os.devnull, "w")
        dirs = RunDirectory(owner=world.is_root)  # rank 0 alone locks, recovers and saves
        # A library that ends the process itself (OpenBLAS out of memory calls exit()) still
        # leaves no run directory this run created and saved nothing in.
        watch = starting.LibraryExitWatch.active
        if watch is not None:
            watch.cleanups.append(dirs.release)
        try:
            status, together = run_training(argv, world, signals, dirs)
        except (KeyboardInterrupt, stopping.Terminated, stopping.HungUp) as e:
            # a signal during a collective start-up check: this rank stops at once
            say(stopped_before(stopping.signal_number(e)))
            status, together = 128 + stopping.signal_number(e), False
        finally:
            with signals.held() if signals else contextlib.nullcontext():
                dirs.release()  # (a signal meanwhile: after the empty directories are gone)
            if watch is not None:
                watch.cleanups.remove(dirs.release)
        if together:  # every rank returns the same status; a rank stopped at once does not wait
            world.finish()  # for the others (the launcher ends the job when it exits)
        return status
    finally:
        if stderr is not None:  # (None: stderr was closed; print(file=None) would write to stdout)
            sys.stderr = stderr


def run_training(argv, world, signals, dirs: RunDirectory) -> tuple[int, bool]:
    """(exit status, whether every rank ends with it: False when a signal stopped this rank
    at once). Every start-up verdict (bad input, out of memory, a finished run) is agreed by
    all ranks; rank 0 says it."""
    error, finished, out_of_memory, run, args = None, None, False, None, None
    try:
        args = parse_args(argv)
        if world.size > 1 and args.resume and os.path.isdir(args.resume):
            lock(dirs, args.resume, "--resume")  # rank 0 finishes an interrupted save before any rank reads
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
        except (KeyboardInterrupt, stopping.Terminated, stopping.HungUp) as e:
            say(stopped_before(stopping.signal_number(e)))
            return 128 + stopping.signal_number(e), False
        error = world.first_error(error)  # bad input on any rank stops every rank
    if error is not None:
        say(f"{prog()}: error: {error}")
        return (EXIT_FAILED if world.any(out_of_memory) else EXIT_BAD_INPUT), True
    if finished is not None:  # every rank read the same train_state.json
        say(f"{prog()}: {finished}")
        return 0, True
    world.broadcast_params(run.params)  # after the check: every rank got here
    if args.eval_only:
        found = loop.losses(run)
        # Not report(): no run directory keeps these losses, so stdout that cannot be written
        # is a failure (common.OutputError: status 1, one line), as in every other command.
        print(f"train loss {found['train']:.4f}, val loss {found['val']:.4f}", flush=True)
        return 0, True
    return train(run, signals), True


def train(run, signals) -> int:
    """loop.train_run with the command's messages: 0 done, 128 + N after signal N (saved), 1 when
    the run failed (the last save whole)."""
    def announce(signum):
        say(f"\n{prog()}: {signal.Signals(signum).name}: saving at the end of this step "
            f"({'Ctrl-C' if signum == signal.SIGINT else 'the signal'} again to stop at once)")
    if signals is not None:
        signals.defer(announce)
    try:
        signum = loop.train_run(run, stop=lambda: signals.received if signals else 0,
                            say=lambda line: say(f"{prog()}: {line}"), report=report,
                            progress=sys.stderr)
    except loop.TrainingFailed as e:
        say(f"{prog()}: error at step {e.step}: {e.reason}; {last_save(run.out, e.saved_step, e.installed)}")
        return EXIT_FAILED
    except MemoryError as e:  # anywhere else in the loop (the progress bar, a message)
        say(f"{prog()}: error at step {run.step}: out of memory ({one_line(e) or 'MemoryError'}); "
            f"{last_save(run.out, run.saved_step, not state.commit_waiting(run.out))}")
        return EXIT_FAILED
    except (KeyboardInterrupt, stopping.Terminated, stopping.HungUp) as e:  # a second signal
        # the step on disk: run.saved_step is set at a save's commit (loop.save's on_commit)
        say(f"\n{prog()}: {signal.Signals(stopping.signal_number(e)).name}: stopped at once; "
            f"{last_save(run.out, run.saved_step, not state.commit_waiting(run.out))}")
        return 128 + stopping.signal_number(e)
    if signum:
        say(f"{prog()}: {signal.Signals(signum).name}: stopped at step {run.step}; saved to {run.out}; "
            f"continue with {resume_command(run.out)}")
        return 128 + signum
    return 0
