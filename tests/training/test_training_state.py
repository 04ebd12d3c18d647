"""numpy_gpt2.training.state without a subprocess: a run's files round trip (weights, AdamW
state, train_state.json, metrics, the batch sampler's RNG), damaged files are named, and a
save that fails says truly which step the directory holds (the new one once committed)."""

from __future__ import annotations

import errno
import json
import os

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import numpy_gpt2
from numpy_gpt2.initialization import init_params
from numpy_gpt2.training import state
from numpy_gpt2.training.step import train_step
from helpers.run_scripts import load_script


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    tok = tmp_path_factory.mktemp("tok")
    (tok / "vocab.json").write_text('{"!": 0}')
    (tok / "merges.txt").write_text("#version: 0.2\n")
    return str(tok)


def trained(steps: int, seed=0):
    config = numpy_gpt2.GPT2Config(n_layer=1, n_head=2, n_embd=8, n_ctx=8, vocab_size=16,
                                   bos_token_id=0, eos_token_id=0)
    params = init_params(config, seed=seed)
    opt = numpy_gpt2.adamw_init(params)
    x = np.arange(16).reshape(2, 8) % 16
    for _ in range(steps):
        train_step(params, config, opt, [(x, (x + 1) % 16)], 1e-2)
    return params, config, opt


def save(directory, tok, steps, rng=None, metrics=()):
    params, config, opt = trained(steps)
    rng = rng or np.random.default_rng([7, 1])
    info = {"settings": {"seed": 7}, "rng": state.rng_state(rng), "data_sha256": "0" * 64}
    state.save_run(str(directory), params, config, tok, opt, info, list(metrics))
    return params, opt, rng


def flat(tree):
    return numpy_gpt2.flatten_params(tree)


@settings(max_examples=8, deadline=None)
@given(steps=st.integers(0, 3), draws=st.integers(0, 5))
def test_a_save_round_trips_exactly(tmp_path_factory, tok, steps, draws):
    directory = tmp_path_factory.mktemp("run")
    rng = np.random.default_rng([7, 1])
    rng.integers(0, 100, size=draws)  # the sampler somewhere in its stream
    metrics = [{"kind": "train", "step": i + 1, "loss": 1.0 / (i + 1)} for i in range(steps)]
    metrics.append({"kind": "sample", "step": steps, "text": "caf\u00e9 \u2603"})
    params, opt, rng = save(directory, tok, steps, rng, metrics)
    loaded, _ = numpy_gpt2.load(str(directory), dtype=np.float32)
    saved_opt, info = state.load_training_state(str(directory), loaded)
    assert info["step"] == steps == saved_opt["step"]
    for key, value in flat(params).items():
        np.testing.assert_array_equal(flat(loaded)[key], value)
        np.testing.assert_array_equal(flat(saved_opt["m"])[key], flat(opt["m"])[key])
        np.testing.assert_array_equal(flat(saved_opt["v"])[key], flat(opt["v"])[key])
    restored = state.restore_rng(info, str(directory))
    assert restored.integers(0, 2**62, size=4).tolist() == rng.integers(0, 2**62, size=4).tolist()
    assert state.read_metrics(str(directory)) == metrics


def test_a_non_utf8_byte_in_metrics_is_named_with_the_file_and_line(tmp_path, tok):
    save(tmp_path, tok, 1, metrics=[{"kind": "train", "step": 1, "loss": 2.0}])
    path = tmp_path / state.METRICS_FILE
    path.write_bytes(path.read_bytes() + b'{"kind": "eval", "step": 1, "x": "\xff"}\n')
    with pytest.raises(ValueError, match=f"^{path}: line 2 is not a train.py metrics record$"):
        state.read_metrics(str(tmp_path))
    path.write_bytes(b'{"kind": "train", "step": "1"}\n')
    with pytest.raises(ValueError, match=f"^{path}: line 1 is not"):
        state.read_metrics(str(tmp_path))


@pytest.mark.parametrize("content, says", [
    (b"{", "cannot read"), (b"\xff\xfe", "cannot read"), (b"[]", "expected a JSON object"),
    (b'{"step": -1, "rng": {}, "settings": {}}', '"step" is -1 (an integer), expected an integer >= 0'),
    (b'{"step": 1, "settings": {}}', '"rng" is missing, expected an object')])
def test_a_damaged_train_state_is_named(tmp_path, content, says):
    (tmp_path / state.STATE_FILE).write_bytes(content)
    with pytest.raises(ValueError) as e:
        state.read_train_state(str(tmp_path))
    assert str(e.value).startswith(str(tmp_path / state.STATE_FILE) + ": ") and says in str(e.value)


def test_a_damaged_rng_state_is_named(tmp_path):
    with pytest.raises(ValueError, match=r'train_state.json: "rng" is not the state of a NumPy PCG64'):
        state.restore_rng({"rng": {"bit_generator": "MT19937"}}, str(tmp_path))


def test_mixed_saves_are_named(tmp_path, tok):
    save(tmp_path, tok, 1)
    info = json.loads((tmp_path / state.STATE_FILE).read_text())
    (tmp_path / state.STATE_FILE).write_text(json.dumps({**info, "step": 2}))
    params, _ = numpy_gpt2.load(str(tmp_path))
    with pytest.raises(ValueError, match="saved at step 1, but train_state.json says step 2"):
        state.load_training_state(str(tmp_path), params)


def test_a_failure_before_the_commit_leaves_the_previous_step(tmp_path, tok, monkeypatch):
    save(tmp_path, tok, 2)
    params, config, opt = trained(3)

    def full(path):
        raise OSError(errno.ENOSPC, "No space left on device")
    info = {"settings": {}, "rng": state.rng_state(np.random.default_rng(0))}
    real = state.checkpoint_writers
    monkeypatch.setattr(state, "checkpoint_writers",
                        lambda *a, **k: {**real(*a, **k), "model.safetensors": full})
    with pytest.raises(state.SaveError) as e:
        state.save_run(str(tmp_path), params, config, tok, opt, info, [])
    assert e.value.reason.endswith("out of disk space") and (e.value.step_on_disk, e.value.installed) == (2, True)


def test_an_error_at_the_first_rename_after_the_commit_says_the_new_step(tmp_path, tok, monkeypatch):
    """The commit (the rename to .save-X.commit) has happened: the directory's save IS step 3
    (the next lock installs it), whatever the error at installing says."""
    save(tmp_path, tok, 2)
    params, config, opt = trained(3)
    info = {"settings": {}, "rng": state.rng_state(np.random.default_rng(0))}

    def io_error(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")
    monkeypatch.setattr(os, "replace", io_error)  # every install rename fails
    with pytest.raises(state.SaveError) as e:
        state.save_run(str(tmp_path), params, config, tok, opt, info, [])
    assert (e.value.step_on_disk, e.value.installed) == (3, False)
    monkeypatch.undo()
    train = load_script("train")
    assert train.last_save("run", e.value.step_on_disk, e.value.installed) == (
        "the save of step 3 in run is committed; --resume run finishes installing it")
    assert train.last_save("run", 2) == "the last save in run (step 2) is intact"
    from numpy_gpt2.training.run import RunDirectory
    d = RunDirectory()
    d.lock(tmp_path)  # recovery installs the committed save
    d.release()
    assert state.read_train_state(str(tmp_path))["step"] == 3
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".save-")]
