"""A training run's files: what is saved, in one place, and how each is read back checked.

A run directory holds, all written as ONE atomic commit (numpy_gpt2.io.atomic; a crash at any
moment leaves the previous save or the new one, whole), all at the same step:

    model.safetensors, config.json, vocab.json, merges.txt   the model (Hugging Face layout)
    optimizer.safetensors     AdamW's m and v ("m.<key>", "v.<key>"), in the params' dtype
    metrics.jsonl             one JSON record per step, evaluation and sample
    loss_curve.png            the losses so far (plot.py; when matplotlib is installed)
    train_state.json          step, the batch sampler's RNG state, the settings, the data's sha256
and best/, the checkpoint of the lowest val loss so far, a commit of its own (save_best).
The step is also stored in both .safetensors headers, so a mixed-up directory is detected.
Nothing non-finite is ever saved. Readers raise ValueError naming the file (and the key or
line); the directory itself (lock, recovery) is run.py's. Layout: docs/runs.md.
"""

from __future__ import annotations

import glob
import json
import math
import os

import numpy as np

from numpy_gpt2.errors import describe

from numpy_gpt2.checks import is_int, show
from numpy_gpt2.finite import all_finite, non_finite_weights
from numpy_gpt2.io import atomic
from numpy_gpt2.io.atomic import write_files_atomically
from numpy_gpt2.io.checkpoint import checkpoint_writers
from numpy_gpt2.io.formats.safetensors import read_safetensors_header
from numpy_gpt2.params import flatten_params, nest_params

STATE_FILE = "train_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"
METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss_curve.png"
# Every file a save writes (recover() also deletes temporary files of earlier versions' saves).
RUN_FILES = ("config.json", "vocab.json", "merges.txt", "model.safetensors", OPTIMIZER_FILE,
             METRICS_FILE, PLOT_FILE, STATE_FILE)
BEST_DIR = "best"
BEST_FILE = "best.json"
BEST_FILES = ("config.json", "vocab.json", "merges.txt", "model.safetensors", BEST_FILE)
METRIC_KINDS = ("train", "eval", "sample")


# ----------------------------------------------------------------------------------------
# The model and the optimizer (train_state.json with them).

def save_training_state(directory, params: dict, config, tokenizer_dir, opt_state: dict,
                        info: dict, extra_files=None, on_commit=None) -> None:
    """Write the model checkpoint, the optimizer state and train_state.json (info: a JSON-able
    dict, e.g. {"rng": ..., "settings": ...}; the step is taken from opt_state) into
    directory as one atomic commit (see module doc). extra_files: {name: write(path)} saved
    in the same commit (before train_state.json); on_commit(): called right after the commit
    (write_files_atomically's). Raises FloatingPointError, before writing
    anything, when a weight or moment is not finite; OSError (e.g. ENOSPC) from the writes,
    the previous save then being intact."""
    step = int(opt_state["step"])
    for what, tree in (("weights", params), ("AdamW m", opt_state["m"]), ("AdamW v", opt_state["v"])):
        bad = non_finite_weights(tree)
        if bad:
            raise FloatingPointError(f"not saving step {step}: non-finite {what} "
                                     f"({', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''})")
    meta = {"step": str(step)}
    flat_m, flat_v = flatten_params(opt_state["m"]), flatten_params(opt_state["v"])
    moments = {**{f"m.{k}": np.ascontiguousarray(v) for k, v in flat_m.items()},
               **{f"v.{k}": np.ascontiguousarray(v) for k, v in flat_v.items()}}

    def write_optimizer(path):
        from safetensors.numpy import save_file
        save_file(moments, path, metadata=meta)

    def write_state(path):
        with open(path, "w", encoding="utf-8") as f:
            json.dump({**info, "step": step}, f, indent=1)
            f.write("\n")

    writers = checkpoint_writers(params, config, tokenizer_dir, metadata=meta)
    writers[OPTIMIZER_FILE] = write_optimizer
    writers.update(extra_files or {})
    writers[STATE_FILE] = write_state  # last: installed last
    write_files_atomically(directory, writers, on_commit)


def read_train_state(directory) -> dict:
    """train_state.json of the run in directory, checked: a JSON object whose "step" is an
    integer >= 0 and whose "rng" and "settings" are objects (what the caller keeps in
    "settings" is the caller's to check). ValueError naming the file and the key otherwise."""
    path = os.path.join(os.fspath(directory), STATE_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{directory}: no {STATE_FILE}; not a training run saved by "
                         f"numpy_gpt2's training") from None
    except (OSError, ValueError, RecursionError) as e:  # unreadable, not UTF-8, not JSON
        raise ValueError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from None
    if not isinstance(info, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(info).__name__}")
    expected = {"step": "an integer >= 0", "rng": "an object", "settings": "an object"}
    for key, what in expected.items():
        value = info.get(key)
        ok = is_int(value) and value >= 0 if key == "step" else isinstance(value, dict)
        if not ok:
            got = "missing" if key not in info else show(value)
            raise ValueError(f"{path}: \"{key}\" is {got}, expected {what}")
    return info


def _read_moments(path) -> tuple[dict, str | None]:
    """({key: array}, the "step" in the header's metadata) of optimizer.safetensors; the
    header is checked first (a truncated file is named as such). ValueError otherwise."""
    from safetensors import safe_open

    try:
        read_safetensors_header(path)  # CheckpointError (a ValueError) naming what is wrong
        with safe_open(path, framework="np") as f:
            step = (f.metadata() or {}).get("step")
            return {k: f.get_tensor(k) for k in f.keys()}, step
    except FileNotFoundError:
        raise ValueError(f"{path}: missing; the optimizer state of the run is needed to resume") from None
    except ValueError:
        raise
    except Exception as e:  # safetensors' own errors (SafetensorError is a bare Exception)
        raise ValueError(f"{path}: cannot read the optimizer state ({e})") from None


def _model_step(path) -> str | None:
    """The "step" in model.safetensors' header metadata (None when absent)."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="np") as f:
            return (f.metadata() or {}).get("step")
    except Exception as e:  # SafetensorError, OSError
        raise ValueError(f"{path}: cannot read ({e})") from None


def load_training_state(directory, params: dict) -> tuple[dict, dict]:
    """(opt_state, info) saved by save_training_state in directory, for these params (the
    weights loaded from the same directory). ValueError, naming the file, when something is
    missing, truncated, malformed or not finite, or the files disagree about the step or with
    the params' keys/shapes/dtype."""
    info = read_train_state(directory)
    step = str(info["step"])
    model_path = os.path.join(directory, "model.safetensors")
    opt_path = os.path.join(directory, OPTIMIZER_FILE)
    moments, opt_step = _read_moments(opt_path)
    for path, saved in ((model_path, _model_step(model_path)), (opt_path, opt_step)):
        if saved != step:
            raise ValueError(f"{path}: saved at step {saved}, but {STATE_FILE} says step {step}; "
                             f"the directory mixes two saves")
    flat_p = flatten_params(params)
    state = {"step": info["step"]}
    for which in ("m", "v"):
        flat = {}
        for key, p in flat_p.items():
            a = moments.get(f"{which}.{key}")
            if a is None or a.shape != p.shape or a.dtype != p.dtype:
                got = "missing" if a is None else f"{a.dtype} {list(a.shape)}"
                raise ValueError(f"{opt_path}: {which}.{key} is {got}, expected {p.dtype} "
                                 f"{list(p.shape)}")
            if not all_finite(a):
                raise ValueError(f"{opt_path}: {which}.{key} holds NaN or inf")
            flat[key] = a if a.flags.writeable else a.copy()
        state[which] = nest_params(flat)
    return state, info


# ----------------------------------------------------------------------------------------
# The batch sampler's RNG and the metrics.

def rng_state(rng: np.random.Generator) -> dict:
    """The generator's state as train_state.json's "rng" (JSON-able)."""
    return rng.bit_generator.state


def restore_rng(info: dict, directory) -> np.random.Generator:
    """The batch sampler as saved: a PCG64 generator in the state train_state.json holds;
    ValueError naming the file otherwise."""
    rng = np.random.default_rng()
    try:
        rng.bit_generator.state = info["rng"]
    except (TypeError, ValueError, KeyError, OverflowError):
        raise ValueError(f"{os.path.join(directory, STATE_FILE)}: \"rng\" is not the state of a "
                         f"NumPy PCG64 generator") from None
    return rng


def read_metrics(directory) -> list[dict]:
    """metrics.jsonl of the run in directory ([] when there is none): ValueError naming the
    file and the line that is not a record (not UTF-8, not JSON, no "kind" or integer "step")."""
    path = os.path.join(directory, METRICS_FILE)
    try:
        with open(path, "rb") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return []
    except OSError as e:
        raise ValueError(f"{path}: cannot read ({e.strerror})") from None
    metrics = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line.decode("utf-8"))
            if not (isinstance(record, dict) and is_int(record.get("step"))
                    and record.get("kind") in METRIC_KINDS):
                raise ValueError
        except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError too
            raise ValueError(f"{path}: line {number} is not a train.py metrics record") from None
        metrics.append(record)
    return metrics


def resumed_metrics(directory, step: int) -> list[dict]:
    """The metrics of the run saved in directory at step, to resume it: the records up to step
    (later ones, of steps after the save, are dropped). metrics.jsonl is part of every save,
    so ValueError naming it when it is missing, is not JSON lines of records, or lacks some
    step's training record (1 to step): resuming would lose the history silently."""
    path = os.path.join(directory, METRICS_FILE)
    if not os.path.isfile(path):
        raise ValueError(f"{path}: missing; every save of a run holds its metrics (one record "
                         f"per step so far), so the run directory is damaged")
    metrics = [m for m in read_metrics(directory) if m["step"] <= step]
    steps = [m["step"] for m in metrics if m["kind"] == "train"]
    if steps != list(range(1, step + 1)):
        raise ValueError(f"{path}: the training records of steps 1 to {step} are not all there "
                         f"(the file is damaged: lines were removed or reordered)")
    return metrics


def metrics_writer(metrics: list[dict]):
    """write(path) of metrics.jsonl: one JSON line per record."""
    text = "".join(json.dumps(m) + "\n" for m in metrics)

    def write(path):
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    return write


# ----------------------------------------------------------------------------------------
# One save of everything, and the best checkpoint.

class SaveError(Exception):
    """A save failed (a full disk, the tokenizer files gone, a non-finite weight). reason: one
    line. step_on_disk: the step the directory holds now (the new one when the failure came
    after the commit: then the save exists, and recovery finishes installing it), or None
    when the directory holds no save. installed: False when a committed save still waits
    for recovery (run.py's RunDirectory.lock, or the next save)."""

    def __init__(self, reason: str, step_on_disk: int | None, installed: bool = True):
        super().__init__(reason)
        self.reason, self.step_on_disk, self.installed = reason, step_on_disk, installed


def _reason(e: BaseException) -> str:
    return describe(e)  # "out of disk space", ... or the error's own message; never empty


def commit_waiting(directory) -> bool:
    """Whether a committed save waits in directory/.save-*.commit for its files to be installed
    (by recovery: atomic.recover)."""
    pattern = os.path.join(glob.escape(os.fspath(directory)), atomic.STAGING_PREFIX + "*" + atomic.COMMITTED)
    return bool(glob.glob(pattern))


def holds_save(directory) -> bool:
    """Whether directory holds a save of a run (installed, or committed and waiting)."""
    return os.path.exists(os.path.join(directory, STATE_FILE)) or commit_waiting(directory)


def _step_on_disk(directory, step: int) -> tuple[int | None, bool]:
    """(the step of the save the directory holds, whether it is installed) after a failed save
    of step: a committed save waiting in .save-*.commit is that step's (we hold the lock)."""
    if commit_waiting(directory):
        return step, False
    try:
        return read_train_state(directory)["step"], True
    except ValueError:
        return None, True


def save_run(directory, params: dict, config, tokenizer_dir, opt_state: dict, info: dict,
             metrics: list[dict], plot=None, on_commit=None) -> None:
    """One atomic commit of everything: model, optimizer, metrics.jsonl, loss_curve.png
    (plot: its write(path), or None for no plot) and train_state.json (info: "rng",
    "settings", "data_sha256", ...), all at opt_state's step. on_commit(): called right after
    the commit (from then on the directory holds this step). SaveError on failure, saying
    which step the directory holds then."""
    extra = {METRICS_FILE: metrics_writer(metrics)}
    if plot is not None:
        extra[PLOT_FILE] = plot
    try:
        save_training_state(directory, params, config, tokenizer_dir, opt_state, info,
                            extra_files=extra, on_commit=on_commit)
    except (OSError, ValueError, FloatingPointError, MemoryError) as e:
        raise SaveError(_reason(e), *_step_on_disk(directory, int(opt_state["step"]))) from e


def best_so_far(directory) -> float:
    """The val loss of the checkpoint in directory/best/ (inf when there is none)."""
    try:
        with open(os.path.join(directory, BEST_DIR, BEST_FILE), encoding="utf-8") as f:
            return float(json.load(f)["val_loss"])
    except (OSError, ValueError, KeyError, TypeError):
        return math.inf


def save_best(directory, params: dict, config, tokenizer_dir, step: int, val_loss: float) -> None:
    """Write directory/best/: the weights as a Hugging Face checkpoint plus best.json (step,
    val loss), one atomic commit of its own. A best/ this call created is removed again when
    the write fails (nothing is left behind). OSError/ValueError/MemoryError propagate."""
    best = os.path.join(directory, BEST_DIR)
    existed = os.path.isdir(best)
    writers = checkpoint_writers(params, config, tokenizer_dir, metadata={"step": str(step)})
    text = json.dumps({"step": step, "val_loss": val_loss}) + "\n"

    def write_info(path):
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    writers[BEST_FILE] = write_info
    try:
        write_files_atomically(best, writers)
    except BaseException:
        if not existed:
            try:
                os.rmdir(best)
            except OSError:  # not empty (a committed save waits there) or gone
                pass
        raise
