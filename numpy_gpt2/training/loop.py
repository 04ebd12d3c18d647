"""The training loop, as functions a program can call: train(settings, out) trains a new model
(or fine-tunes one) as the train command does; train_run(run) takes a prepared Run (run.py:
model, AdamW state, data, settings) from its step to settings.max_iters, evaluating and
saving every eval_interval steps, like nanoGPT's train.py, which it follows step by step:

    every eval_interval steps (and at the end): evaluate on fixed batches, log, keep the best
    checkpoint, save the run (one atomic commit: state.save_run)
    every step: lr from the schedule (warmup + cosine), draw the micro-batches, one optimizer
    step (step.train_step: accumulate, clip, AdamW), log

Stopping: stop() is asked after every evaluation check; a signal number it returns (on any
rank) saves the run and ends train() returning that number. What cannot go on (a diverged
run, a failed save, out of memory) raises TrainingFailed, after which the run directory holds
its last save, whole. Under MPI every rank calls train() and every decision is collective.
The command line around it (flags, messages, exit statuses) is numpy_gpt2/cli/train.py;
docs/training.md and docs/runs.md describe both.
"""

from __future__ import annotations

import os
import sys
import time
import warnings

import numpy_gpt2
from numpy_gpt2.errors import NonFiniteError
from numpy_gpt2.params import frozen_keys
from numpy_gpt2.training import data as gpt2_data
from numpy_gpt2.training import state
from numpy_gpt2.dropout import Dropout
from numpy_gpt2.training.optim import get_lr
from numpy_gpt2.training.plot import loss_curve_writer, no_plot_reason
from numpy_gpt2.training.run import Run, RunDirectory, open_run
from numpy_gpt2.training.settings import TrainSettings
from numpy_gpt2.training.step import train_step

SAMPLE_TOKENS = 48  # new tokens per sample_every sample


class TrainingFailed(Exception):
    """The run cannot go on (diverged, a save failed, out of memory). step: where it stopped;
    saved_step: the step of the save its directory holds (None: nothing saved); installed:
    False when that save is committed but its files wait for recovery (the next lock)."""

    def __init__(self, reason: str, step: int, saved_step: int | None, installed: bool = True):
        super().__init__(reason)
        self.reason, self.step, self.saved_step, self.installed = reason, step, saved_step, installed


def _one_line(e) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def train(settings: TrainSettings, out=None, *, say=_stderr, report=print) -> Run:
    """Train a new model (or fine-tune settings.init's checkpoint) as the train command does,
    from Python; returns the Run (run.params, run.config, run.metrics). out: the run directory,
    created and locked as the command's --out (None: nothing is saved). Raises ValueError
    (CheckpointError included) naming the setting or file that is wrong, before any training;
    DirectoryLocked when another process trains in out; TrainingFailed."""
    settings.check()
    directory = RunDirectory()
    try:
        if out is not None:
            directory.create_and_lock(out)
            taken = [name for name in state.RUN_FILES if os.path.exists(os.path.join(out, name))]
            if taken:
                raise ValueError(f"out {out}: already holds {', '.join(taken)}")
        run = open_run(settings, out=None if out is None else os.fspath(out))
        train_run(run, say=say, report=report)
        return run
    finally:
        directory.release()


def train_run(run: Run, *, stop=lambda: 0, say=_stderr, report=print, progress=None) -> int:
    """Train run from its step to run.settings.max_iters (module doc). Returns 0 when done,
    or the signal number stop() returned (the run saved at that step). Raises TrainingFailed.
    say(line): notes for the user (stderr); report(line): evaluations, samples, the summary
    (stdout); progress: a stream for the progress bar (None: sys.stderr)."""
    from tqdm import tqdm

    s, world, out = run.settings, run.world, run.out
    start_step = step = run.step
    say(f"{'resuming at step ' + str(step) + ', ' if step else ''}{describe(run)}; saving to {out}")
    bar = tqdm(total=s.max_iters, initial=step, desc="train", unit="step",
               file=progress or sys.stderr, dynamic_ncols=True, smoothing=0.1)
    began = time.perf_counter()

    def failed(what) -> TrainingFailed:
        return TrainingFailed(_one_line(what), step, run.saved_step, getattr(what, "installed", True))

    try:
        with warnings.catch_warnings():  # overflow is detected and reported as one line
            warnings.filterwarnings("ignore", category=RuntimeWarning,
                                    message="(overflow|invalid value|divide by zero) encountered")
            while True:
                # ------------------------------------------------------------------------
                # Evaluate, keep the best checkpoint, save (and stop on a signal)
                evaluated = any(m["kind"] == "eval" and m["step"] == step for m in run.metrics[-1:])
                due = (step % s.eval_interval == 0 or step == s.max_iters) and not evaluated
                if due:
                    try:
                        record = evaluate(run)
                    except (FloatingPointError, NonFiniteError) as e:
                        if world.size > 1:  # (distributed's excepthook aborts every rank)
                            raise
                        raise failed(f"evaluation: {e}") from None
                    except MemoryError as e:
                        if world.size > 1:
                            raise
                        raise failed(f"out of memory while evaluating ({_one_line(e)})") from None
                    run.metrics.append(record)
                    bar.clear()
                    report(eval_line(record))
                    bar.refresh()
                    error = keep_best(run, record)
                    if error is not None:
                        raise failed(f"saving the best checkpoint to "
                                     f"{os.path.join(out, state.BEST_DIR)} failed: {error}")
                signum = world.max(stop() or 0)  # a signal on any rank stops every rank
                if run.out and run.saved_step != step and (due or step == s.max_iters or signum):
                    error = save_collectively(run, say)
                    if error is not None:  # e.g. a full disk, or the tokenizer files gone
                        what = TrainingFailed(f"saving to {out} failed: {error.reason}", step,
                                              error.step_on_disk, error.installed)
                        run.saved_step = error.step_on_disk
                        raise what
                if signum:
                    return signum
                if step >= s.max_iters:
                    break

                # ------------------------------------------------------------------------
                # One optimizer step
                lr = get_lr(step, s.lr, s.min_lr, s.warmup_iters, s.decay_iters)
                batches = draw_batches(run)
                t0 = time.perf_counter()
                try:  # a non-finite loss or gradient on any rank is non-finite on all (reduced)
                    loss, norm = train_step(run.params, run.config, run.opt_state, batches, lr,
                                            betas=(s.beta1, s.beta2), weight_decay=s.weight_decay,
                                            grad_clip=s.grad_clip, accumulate=world.accumulate_grads)
                except (FloatingPointError, NonFiniteError) as e:
                    raise failed(f"the run diverged: {e}") from None
                except MemoryError as e:
                    if world.size > 1:
                        raise
                    raise failed(f"out of memory ({_one_line(e)})") from None
                seconds = time.perf_counter() - t0
                step += 1

                # ------------------------------------------------------------------------
                # Log: metrics, progress bar, a sample now and then
                rate = run.tokens_per_step / seconds
                run.metrics.append({"kind": "train", "step": step, "loss": loss, "lr": lr,
                                    "grad_norm": norm, "tokens_per_s": rate})
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{rate:,.0f}", refresh=False)
                bar.update(1)
                run.interval = (run.interval[0] + seconds, run.interval[1] + run.tokens_per_step)
                if s.sample_every and step % s.sample_every == 0 and world.is_root:
                    line = sample_line(run, step)
                    bar.clear()
                    report(line)
                    bar.refresh()
    finally:
        bar.close()
    wall = time.perf_counter() - began
    last = [m for m in run.metrics if m["kind"] == "eval"][-1]
    report(f"done: step {step}, train loss {last['train_loss']:.4f}, val loss {last['val_loss']:.4f}, "
           f"{wall:.0f} s for {step - start_step} steps" + (f"; checkpoint in {out}" if out else ""))
    return 0


# ----------------------------------------------------------------------------------------
# The pieces of the loop.

def n_parameters(params, config) -> int:
    """The number of parameters (not the constant zero biases of a model without biases)."""
    frozen = set(frozen_keys(params, config))
    return sum(p.size for key, p in numpy_gpt2.flatten_params(params).items() if key not in frozen)


def describe(run: Run) -> str:
    """The model, the data and the batch in one line (the loop's first)."""
    c, s, world = run.config, run.settings, run.world
    return (f"{n_parameters(run.params, c):,} parameters (n_layer={c.n_layer}, n_head={c.n_head}, "
            f"n_embd={c.n_embd}, n_ctx={c.n_ctx}{'' if c.bias else ', no biases'}), {s.dtype}; "
            f"{len(run.splits['train']):,} train / {len(run.splits['val']):,} val tokens; "
            f"{run.tokens_per_step:,} tokens per step{f' on {world.size} ranks' if world.size > 1 else ''}")


def draw_batches(run: Run) -> list:
    """This rank's micro-batches of the step: every rank draws the N*m micro-batches one process
    with gradient_accumulation_steps N*m would, and keeps its own share; with dropout, one mask
    seed per micro-batch from the run's RNG (after the batches)."""
    s, world = run.settings, run.world
    count = s.gradient_accumulation_steps * world.size
    keep = world.share(range(count))
    batches = gpt2_data.micro_batches(run.splits["train"], s.block_size, s.batch_size, count,
                                      run.rng, keep=keep)
    if s.dropout:
        seeds = run.rng.integers(0, 2**63, size=count)
        batches = [(x, y, Dropout(s.dropout, int(seeds[i]))) for (x, y), i in zip(batches, keep)]
    return batches


def losses(run: Run) -> dict:
    """{"train": loss, "val": loss}: the mean loss on each split's fixed evaluation batches."""
    return {name: run.world.evaluate(run.params, run.config, batches)
            for name, batches in run.evals.items()}


def evaluate(run: Run) -> dict:
    """The metrics record of an evaluation at the run's step: the losses, and the training
    tokens/s since the previous evaluation with its model FLOPs utilisation (training.mfu;
    absent before any step of this process)."""
    from numpy_gpt2.training.mfu import flops_per_token, measure_peak_flops, mfu

    found = losses(run)
    record = {"kind": "eval", "step": run.step, "train_loss": found["train"], "val_loss": found["val"]}
    (seconds, tokens), run.interval = run.interval, (0.0, 0)
    if seconds > 0:
        if run.peak_flops is None:
            run.peak_flops = measure_peak_flops(run.settings.dtype)
        rate = tokens / seconds
        per_token = flops_per_token(run.params, run.config, run.settings.block_size)
        record.update(tokens_per_s=rate, mfu=mfu(per_token, rate, run.peak_flops, run.world.size))
    return record


def eval_line(record) -> str:
    line = f"step {record['step']}: train loss {record['train_loss']:.4f}, val loss {record['val_loss']:.4f}"
    if "mfu" in record:
        line += f", {record['tokens_per_s']:,.0f} tokens/s, MFU {100 * record['mfu']:.2f}%"
    return line


def keep_best(run: Run, record) -> str | None:
    """A val loss lower than any before: rank 0 writes the weights to out/best/
    (state.save_best). Returns None, or on every rank the one-line reason writing failed."""
    if not record["val_loss"] < run.best:
        return None
    run.best = record["val_loss"]
    error = None
    if run.world.is_root and run.out is not None:
        try:
            state.save_best(run.out, run.params, run.config, run.tokenizer_dir, record["step"],
                            record["val_loss"])
        except (OSError, ValueError, MemoryError) as e:
            error = state._reason(e)
    return run.world.first_error(error)  # also the barrier after the write


def save(run: Run, say=_stderr) -> None:
    """Save the run in run.out (state.save_run: one atomic commit); state.SaveError (also for
    running out of memory while preparing it). run.saved_step is set at the commit itself,
    so that a signal arriving before the save returns still reports the step on disk."""
    def committed():
        run.saved_step, run.installed = run.step, False
    try:
        plot = loss_curve_writer(run.metrics)
    except MemoryError as e:
        raise state.SaveError(f"out of memory ({_one_line(e)})", run.saved_step, run.installed) from e
    state.save_run(run.out, run.params, run.config, run.tokenizer_dir, run.opt_state,
                   run.state_info(), run.metrics, plot, on_commit=committed)
    run.saved_step, run.installed = run.step, True
    if plot is None and not run.said_no_plot:
        run.said_no_plot = True
        say(f"{no_plot_reason()}, so no loss_curve.png (install it with "
            "pip install 'numpy_gpt2[plot]' or pip install matplotlib); training goes on")


def save_collectively(run: Run, say=_stderr) -> state.SaveError | None:
    """Every rank checks the weights are the same on all; rank 0 alone saves; all wait for the
    save to end (a rank never runs ahead of a save it may need to resume from). None, or on
    every rank the SaveError (its reason agreed by all ranks)."""
    world = run.world
    try:
        world.check_same_params(run.params)  # raises on every rank alike
    except RuntimeError as e:
        return state.SaveError(str(e), run.saved_step)
    error = None
    if world.is_root:
        try:
            save(run, say)
        except state.SaveError as e:
            error = e
    reason = world.first_error(error.reason if error else None)  # also the barrier after the save
    if reason is None:
        run.saved_step = run.step
        return None
    return error or state.SaveError(reason, run.saved_step)


def sample_line(run: Run, step: int) -> str:
    """A short sample from sample_prompt, logged in the metrics ({"kind": "sample"}). Its
    randomness comes from its own generator (seeded by the run's seed and the step), and
    generation only reads the weights, so training goes on exactly as without samples."""
    s, tokenizer = run.settings, run.tokenizer
    prompt = gpt2_data.encode(tokenizer, s.sample_prompt).tolist() or [tokenizer.eot_token]
    prompt = prompt[-(run.config.n_ctx - 1):]
    new = list(numpy_gpt2.generate(run.params, run.config, prompt, SAMPLE_TOKENS, top_k=200,
                                   seed=[s.seed, 3, step]))
    text = tokenizer.decode(prompt + new)
    run.metrics.append({"kind": "sample", "step": step, "text": text})
    return f"sample at step {step}: {text!r}"
