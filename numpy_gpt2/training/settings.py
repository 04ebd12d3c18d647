"""The settings of a training run: one typed record (TrainSettings), its defaults, its checks,
the JSON it is saved as in train_state.json, and the rules for resuming a saved run.

The names are nanoGPT's and llm.c's (batch_size, block_size, max_iters, lr, min_lr,
warmup_iters, lr_decay_iters, gradient_accumulation_steps, ...). Errors are ValueErrors that
name the setting (`lr 0.0 is invalid: expected a number > 0`); the command line words them as
its flags (numpy_gpt2/cli/train.py). What a run does with the settings is loop.py's;
where it keeps them, run.py and state.py. See docs/training.md for each setting.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from numpy_gpt2.checks import is_int, show

DEFAULT_BLOCK_SIZE = 64  # or the --init checkpoint's n_ctx when that is smaller


@dataclass
class TrainSettings:
    """Every setting of a run (saved in train_state.json; docs/training.md). Defaults:
    nanoGPT's CPU Shakespeare recipe with GPT-2's BPE. block_size None: DEFAULT_BLOCK_SIZE, or
    the init checkpoint's n_ctx when smaller (resolve_block_size). lr_decay_iters None:
    max_iters. n_layer/n_head/n_embd/bias shape a new model; with init the checkpoint's."""
    data: str | None = None
    init: str | None = None
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    bias: bool = True
    block_size: int | None = None
    batch_size: int = 12
    gradient_accumulation_steps: int = 1
    max_iters: int = 2000
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_iters: int = 100
    lr_decay_iters: int | None = None
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    eval_interval: int = 250
    eval_iters: int = 20
    seed: int = 1337
    dtype: str = "float32"
    dropout: float = 0.0
    sample_every: int = 0
    sample_prompt: str = "\n"

    def check(self) -> None:
        """ValueError naming the first invalid setting and what was expected."""
        check_settings(dataclasses.asdict(self))

    @property
    def decay_iters(self) -> int:
        """The step where the cosine decay reaches min_lr."""
        return self.lr_decay_iters if self.lr_decay_iters is not None else self.max_iters

    def replace(self, **changes) -> "TrainSettings":
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict:
        """The settings as train_state.json's "settings" object (its historic key names)."""
        return {SAVED_NAMES.get(k, k): v for k, v in dataclasses.asdict(self).items()}


NAMES = tuple(f.name for f in dataclasses.fields(TrainSettings))
DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainSettings)}
MODEL_SETTINGS = ("n_layer", "n_head", "n_embd", "bias")  # a new model's shape
# Settings a resumed run may change (the rest would make it a different run).
RESUMABLE = ("max_iters", "lr", "min_lr", "warmup_iters", "lr_decay_iters", "weight_decay", "beta1",
             "beta2", "grad_clip", "eval_interval", "eval_iters", "batch_size",
             "gradient_accumulation_steps", "sample_every", "sample_prompt", "dropout")
# train_state.json keeps the names it was first written with (runs saved then still resume).
SAVED_NAMES = {"gradient_accumulation_steps": "grad_accum"}
_FROM_SAVED = {v: k for k, v in SAVED_NAMES.items()}
INT_SETTINGS = ("n_layer", "n_head", "n_embd", "block_size", "batch_size",
                "gradient_accumulation_steps", "max_iters", "warmup_iters", "eval_interval",
                "eval_iters", "seed")
FLOAT_SETTINGS = ("lr", "min_lr", "weight_decay", "beta1", "beta2", "grad_clip")


def check_settings(s: dict) -> None:
    """ValueError naming the first invalid setting of s (TrainSettings' names; a setting
    that is None, e.g. block_size before resolve_block_size, is not checked)."""
    def need(ok, name, what):
        if not ok:
            raise ValueError(f"{name} {s[name]!r} is invalid: expected {what}")
    for k, v in s.items():
        if isinstance(v, float):
            need(math.isfinite(v), k, "a finite number")
    for name in ("n_layer", "n_head", "n_embd", "block_size", "batch_size",
                 "gradient_accumulation_steps", "eval_interval", "eval_iters"):
        if s.get(name) is not None:
            need(s[name] >= 1, name, "an integer >= 1")
    need(s["max_iters"] >= 0, "max_iters", "an integer >= 0")
    need(s["seed"] >= 0, "seed", "an integer >= 0")
    need(s["lr"] > 0, "lr", "a number > 0")
    need(0 <= s["min_lr"] <= s["lr"], "min_lr", f"a number in [0, lr={s['lr']}]")
    need(s["warmup_iters"] >= 0, "warmup_iters", "an integer >= 0")
    if s["lr_decay_iters"] is not None:
        need(s["lr_decay_iters"] >= s["warmup_iters"], "lr_decay_iters",
             f"an integer >= warmup_iters={s['warmup_iters']}")
    need(s["weight_decay"] >= 0, "weight_decay", "a number >= 0")
    need(0 <= s["beta1"] < 1, "beta1", "a number in [0, 1)")
    need(0 <= s["beta2"] < 1, "beta2", "a number in [0, 1)")
    need(s["grad_clip"] >= 0, "grad_clip", "a number >= 0 (0: no clipping)")
    need(0 <= s.get("dropout", 0.0) < 1, "dropout", "a number in [0, 1)")
    if s["init"] is None and s["n_embd"] % s["n_head"]:
        raise ValueError(f"n_embd {s['n_embd']} is not divisible by n_head {s['n_head']} "
                         f"(each head gets n_embd / n_head dimensions)")


def new_run(given: dict) -> TrainSettings:
    """The settings of a new run: the defaults, overridden by given ({name: value}).
    ValueError when a model-shape setting is given with init (the checkpoint decides)."""
    if given.get("init") is not None:
        clash = [k for k in MODEL_SETTINGS if k in given]
        if clash:
            raise ValueError(f"{', '.join(clash)} cannot be used with init: the model's "
                             f"shape (and whether it has biases) comes from the checkpoint")
    return TrainSettings(**given)


def from_saved(saved: dict, path) -> TrainSettings:
    """train_state.json's "settings" object -> TrainSettings, each value of the type a run
    saves; ValueError naming the file and the key otherwise. Ints saved for float settings are
    accepted (JSON 1 == 1.0); settings newer than the file get their defaults."""
    def bad(key, expected):
        shown = "missing" if key not in saved else show(saved[key])
        return ValueError(f"{path}: \"settings\" \"{key}\" is {shown}, expected {expected}")
    for name in INT_SETTINGS:
        key = SAVED_NAMES.get(name, name)
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
    if not is_int(saved.get("sample_every", 0)) or saved.get("sample_every", 0) < 0:
        raise bad("sample_every", "an integer >= 0")
    if not isinstance(saved.get("sample_prompt", ""), str):
        raise bad("sample_prompt", "a string")
    if not (is_int(saved.get("dropout", 0)) or isinstance(saved.get("dropout"), float)):
        raise bad("dropout", "a number")
    if not isinstance(saved.get("bias", True), bool):
        raise bad("bias", "true or false")
    values = {_FROM_SAVED.get(k, k): v for k, v in saved.items() if _FROM_SAVED.get(k, k) in NAMES}
    values.update({k: float(values[k]) for k in FLOAT_SETTINGS},
                  dropout=float(values.get("dropout", 0.0)),
                  lr_decay_iters=values.get("lr_decay_iters"))
    return TrainSettings(**values)


def resume(saved: TrainSettings, given: dict, step: int, where) -> TrainSettings:
    """The settings of a resumed run: the saved ones (already checked by from_saved), with
    given ({name: value}) overriding the RESUMABLE ones; ValueError when a setting that would
    make it another run is given a different value, or max_iters is below the step reached.
    `where` names the run in messages (its directory). data is checked by its hash instead."""
    for k, v in given.items():
        if k != "data" and k not in RESUMABLE and v != getattr(saved, k):
            value = getattr(saved, k)
            shown = str(value).lower() if isinstance(value, bool) else repr(value)
            raise ValueError(f"{k} cannot change when resuming (the run in {where} has {shown})")
    s = saved.replace(**given)
    if step > s.max_iters:
        raise ValueError(f"max_iters {s.max_iters} is below the step the run in {where} has "
                         f"reached ({step})")
    return s


def resolve_block_size(s: TrainSettings, n_ctx: int) -> TrainSettings:
    """block_size None -> DEFAULT_BLOCK_SIZE, or n_ctx when smaller; ValueError when the
    block_size is larger than the model's context n_ctx."""
    if s.block_size is None:
        return s.replace(block_size=min(DEFAULT_BLOCK_SIZE, n_ctx))
    if s.block_size > n_ctx:
        raise ValueError(f"block_size {s.block_size} is larger than the checkpoint's context "
                         f"n_ctx={n_ctx}")
    return s


def resumed_accumulation_steps(info: dict, given, world_size: int) -> int:
    """gradient_accumulation_steps of a run (saved with train_state.json's info) resumed on
    world_size ranks: the one given, else the saved N*m micro-batches per step shared by the
    new rank count (m' = N*m / N'). ValueError when N' does not divide N*m."""
    from numpy_gpt2.training.state import STATE_FILE

    if given is not None:
        return given
    saved_world, saved = info.get("world_size", 1), info["settings"]["grad_accum"]
    if not is_int(saved_world) or saved_world < 1:
        raise ValueError(f"{STATE_FILE}: \"world_size\" is {show(saved_world)}, expected an "
                         f"integer >= 1")
    if (saved_world * saved) % world_size:
        raise ValueError(f"the run was saved with {saved_world} rank(s) x "
                         f"gradient_accumulation_steps {saved} = {saved_world * saved} "
                         f"micro-batches per step, which {world_size} ranks cannot share "
                         f"equally; give gradient_accumulation_steps to change the batch")
    return saved_world * saved // world_size
