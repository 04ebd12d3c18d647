"""numpy_gpt2.training.settings without a subprocess: defaults, checks that name the argument,
train_state.json's settings round trip, the resume rules, block_size from the checkpoint; and
the command line's wording of the same messages as its flags (cli/train.py's `flags`)."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given, settings as hyp_settings, strategies as st

from numpy_gpt2.training import settings as S
from helpers.run_scripts import load_script

TRAIN = load_script("train")


def test_defaults_are_nanogpts_cpu_recipe_and_the_flags_help():
    s = S.TrainSettings()
    assert (s.n_layer, s.n_head, s.n_embd, s.batch_size, s.gradient_accumulation_steps) == (4, 4, 128, 12, 1)
    assert (s.max_iters, s.lr, s.min_lr, s.warmup_iters, s.lr_decay_iters) == (2000, 1e-3, 1e-4, 100, None)
    assert (s.weight_decay, s.beta1, s.beta2, s.grad_clip, s.eval_interval, s.eval_iters, s.seed) == \
        (0.1, 0.9, 0.99, 1.0, 250, 20, 1337)
    assert s.block_size is None and s.decay_iters == 2000
    s.replace(data="x").check()  # the defaults are valid


INVALID = [("lr", 0.0, "lr 0.0 is invalid: expected a number > 0"),
           ("lr", float("nan"), "lr nan is invalid: expected a finite number"),
           ("min_lr", 0.5, "min_lr 0.5 is invalid: expected a number in [0, lr=0.001]"),
           ("lr_decay_iters", 5, "lr_decay_iters 5 is invalid: expected an integer >= warmup_iters=100"),
           ("gradient_accumulation_steps", 0,
            "gradient_accumulation_steps 0 is invalid: expected an integer >= 1"),
           ("beta2", 1.0, "beta2 1.0 is invalid: expected a number in [0, 1)"),
           ("dropout", 1.0, "dropout 1.0 is invalid: expected a number in [0, 1)"),
           ("max_iters", -1, "max_iters -1 is invalid: expected an integer >= 0"),
           ("n_head", 3, "n_embd 128 is not divisible by n_head 3 (each head gets n_embd / n_head dimensions)")]


@pytest.mark.parametrize("name, value, message", INVALID, ids=[i[0] + str(i[1]) for i in INVALID])
def test_an_invalid_setting_is_a_value_error_naming_the_argument_never_a_flag(name, value, message):
    with pytest.raises(ValueError) as e:
        S.TrainSettings(data="x", **{name: value}).check()
    assert str(e.value) == message and "--" not in str(e.value)


# The command line's words for the same errors: exactly its messages before the library moved.
AS_FLAGS = {"lr 0.0 is invalid: expected a number > 0": "--lr 0.0 is invalid: expected a number > 0",
            "min_lr 0.5 is invalid: expected a number in [0, lr=0.001]":
                "--min-lr 0.5 is invalid: expected a number in [0, --lr=0.001]",
            "lr_decay_iters 5 is invalid: expected an integer >= warmup_iters=100":
                "--lr-decay-iters 5 is invalid: expected an integer >= --warmup-iters=100",
            "gradient_accumulation_steps 0 is invalid: expected an integer >= 1":
                "--grad-accum 0 is invalid: expected an integer >= 1",
            "n_embd 128 is not divisible by n_head 3 (each head gets n_embd / n_head dimensions)":
                "--n-embd 128 is not divisible by --n-head 3 (each head gets n_embd / n_head dimensions)",
            "n_layer, bias cannot be used with init: the model's shape":
                "--n-layer, --bias cannot be used with --init: the model's shape",
            "the train split has 5 tokens, fewer than block_size + 1 = 17 (one window)":
                "the train split has 5 tokens, fewer than block_size + 1 = 17 (one window)",
            'runs/x/train_state.json: "settings" "grad_accum" is missing, expected an integer':
                'runs/x/train_state.json: "settings" "grad_accum" is missing, expected an integer',
            "use smaller n_layer, n_embd, batch_size, block_size, gradient_accumulation_steps or eval_iters":
                "use smaller --n-layer, --n-embd, --batch-size, --block-size, --grad-accum or --eval-iters",
            "seed cannot change when resuming (the run in runs/max_iters has 1337)":
                "--seed cannot change when resuming (the run in runs/max_iters has 1337)"}


@pytest.mark.parametrize("library, cli", AS_FLAGS.items())
def test_the_command_line_words_the_names_as_its_flags(library, cli):
    assert TRAIN.flags(library) == cli


def test_new_run_refuses_a_model_shape_with_init_naming_the_arguments():
    with pytest.raises(ValueError, match=r"^n_layer, bias cannot be used with init: "):
        S.new_run({"data": "x", "init": "gpt2", "n_layer": 2, "bias": False})
    assert S.new_run({"data": "x", "lr": 3e-4}).lr == 3e-4


@hyp_settings(max_examples=40, deadline=None)
@given(st.builds(S.TrainSettings, data=st.text(min_size=1), init=st.none() | st.text(),
                 block_size=st.integers(1, 4096), max_iters=st.integers(0, 10**6),
                 lr=st.floats(1e-6, 1.0), gradient_accumulation_steps=st.integers(1, 64),
                 lr_decay_iters=st.none() | st.integers(0, 10**6), bias=st.booleans(),
                 dtype=st.sampled_from(["float32", "float64"]), dropout=st.floats(0, 0.99),
                 sample_prompt=st.text()))
def test_saved_settings_round_trip_through_train_state_json(s):
    saved = json.loads(json.dumps(s.to_json()))
    assert "grad_accum" in saved and "gradient_accumulation_steps" not in saved  # the file's names
    assert S.from_saved(saved, "train_state.json") == s


def test_saved_settings_of_older_runs_and_damaged_ones():
    saved = S.TrainSettings(data="d.txt", block_size=64).to_json()
    for newer in ("sample_every", "sample_prompt", "dropout", "bias"):
        del saved[newer]
    saved["lr"] = 1  # JSON 1 for 1.0
    old = S.from_saved(saved, "run/train_state.json")
    assert old.lr == 1.0 and isinstance(old.lr, float) and old.dropout == 0.0 and old.bias is True
    for key, value, expected in [("grad_accum", "2", "an integer"), ("beta1", None, "a number"),
                                 ("dtype", "float16", '"float32" or "float64"')]:
        with pytest.raises(ValueError, match=f'^run/train_state.json: "settings" "{key}" is .*, '
                                             f'expected {expected}'):
            S.from_saved({**saved, key: value}, "run/train_state.json")


def test_resume_takes_the_saved_settings_and_only_resumable_changes():
    saved = S.TrainSettings(data="d.txt", block_size=32, max_iters=10, seed=5)
    s = S.resume(saved, {"max_iters": 20, "lr": 5e-4, "gradient_accumulation_steps": 2,
                         "seed": 5, "data": "elsewhere/d.txt"}, step=10, where="run")
    assert (s.max_iters, s.lr, s.gradient_accumulation_steps, s.seed, s.block_size) == (20, 5e-4, 2, 5, 32)
    with pytest.raises(ValueError, match=r"^block_size cannot change when resuming \(the run in run has 32\)$"):
        S.resume(saved, {"block_size": 64}, step=3, where="run")
    with pytest.raises(ValueError, match=r"^bias cannot change when resuming \(the run in run has true\)$"):
        S.resume(saved, {"bias": False}, step=3, where="run")
    with pytest.raises(ValueError, match=r"^max_iters 4 is below the step the run in run has reached \(7\)$"):
        S.resume(saved, {"max_iters": 4}, step=7, where="run")
    assert set(S.RESUMABLE) < set(S.NAMES)


@pytest.mark.parametrize("n_ctx, given, expected", [(1024, None, 64), (16, None, 16), (16, 8, 8),
                                                    (64, 64, 64)])
def test_block_size_not_given_is_the_default_or_the_checkpoints_context(n_ctx, given, expected):
    s = S.resolve_block_size(S.TrainSettings(block_size=given), n_ctx)
    assert s.block_size == expected


def test_block_size_beyond_the_context_names_it():
    with pytest.raises(ValueError, match=r"^block_size 32 is larger than the checkpoint's context n_ctx=16$"):
        S.resolve_block_size(S.TrainSettings(block_size=32), 16)


def test_every_setting_is_saved_and_named_like_nanogpt():
    names = {f.name for f in dataclasses.fields(S.TrainSettings)}
    assert {"batch_size", "block_size", "max_iters", "lr", "min_lr", "warmup_iters", "lr_decay_iters",
            "weight_decay", "beta1", "beta2", "grad_clip", "eval_interval", "eval_iters",
            "gradient_accumulation_steps", "dropout", "seed"} <= names
    assert set(S.TrainSettings().to_json()) == (names - {"gradient_accumulation_steps"}) | {"grad_accum"}
