"""numpy_gpt2.training.run's RunDirectory without a subprocess: creating and locking a run
directory is one step no other process (here: thread; flock locks belong to each open file,
so two threads contend like two processes) can undo; locking recovers interrupted saves in
the run directory and in its best/; a start that fails leaves nothing behind."""

from __future__ import annotations

import errno
import json
import os
import threading

import pytest

import numpy_gpt2
from numpy_gpt2.initialization import init_params
from numpy_gpt2.io import atomic
from numpy_gpt2.training import run as run_lib
from numpy_gpt2.training import state
from numpy_gpt2.training.run import DirectoryLocked, RunDirectory


def locked_by_someone(path) -> bool:
    try:
        os.close(atomic.lock_directory(path))
        return False
    except DirectoryLocked:
        return True


def test_a_trainer_delayed_between_creating_and_locking_never_removes_the_winners_directory(
        tmp_path, monkeypatch):
    """A creates out, then is delayed; B finds out, locks it and starts; A's lock fails and A
    ends: out must still be B's (before, A removed the directory it had created)."""
    out = str(tmp_path / "runs" / "out")
    created, b_locked = threading.Event(), threading.Event()
    real_lock = run_lib.lock_directory
    real_mkdir = os.mkdir

    def lock(path):
        if threading.current_thread().name == "A":
            created.set()
            b_locked.wait(10)  # the delay
        return real_lock(path)

    def mkdir(path, *args, **kwargs):
        if threading.current_thread().name == "B":
            created.wait(10)  # B starts once A has made the directory
        return real_mkdir(path, *args, **kwargs)
    monkeypatch.setattr(run_lib, "lock_directory", lock)
    monkeypatch.setattr(os, "mkdir", mkdir)
    dirs = {"A": RunDirectory(), "B": RunDirectory()}
    errors = {}

    def start(name):
        try:
            dirs[name].create_and_lock(out)
        except DirectoryLocked as e:
            errors[name] = e
        finally:
            if name == "B":
                b_locked.set()
            else:
                dirs[name].release()  # A's start failed: it cleans up what it may

    threads = [threading.Thread(target=start, args=(n,), name=n) for n in "AB"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert set(errors) == {"A"}  # exactly one holds the lock
    assert os.path.isdir(out) and locked_by_someone(out)
    fd = next(iter(dirs["B"].locks.values()))
    assert os.path.samestat(os.fstat(fd), os.stat(out))  # B's lock is on the directory named out
    assert dirs["A"].created == [] and dirs["B"].created == []  # B found it; A never held it
    dirs["B"].release()
    assert os.path.isdir(out) and not locked_by_someone(out)


@pytest.mark.parametrize("rounds", [20])
def test_two_trainers_racing_for_a_missing_directory_one_wins_and_it_stays(tmp_path, rounds):
    """Both create and lock at once, the loser releases at once (a failed start): the winner
    always holds the lock on the directory out names, however the two interleave."""
    for i in range(rounds):
        out = str(tmp_path / f"r{i}" / "out")
        barrier, results = threading.Barrier(2), {}

        def start(name):
            d = RunDirectory()
            barrier.wait()
            try:
                d.create_and_lock(out)
                results[name] = d
            except DirectoryLocked:
                d.release()
                results[name] = None

        threads = [threading.Thread(target=start, args=(n,)) for n in "AB"]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        winners = [d for d in results.values() if d is not None]
        assert len(winners) == 1
        fd = next(iter(winners[0].locks.values()))
        assert os.path.samestat(os.fstat(fd), os.stat(out))
        winners[0].release()  # still empty: removed when the winner created it; when the
        # loser made it and lost the lock, it stays (empty: the loser never removes it under
        # the winner, which is the point)
        assert not os.path.exists(out) or os.listdir(out) == []


def test_release_removes_only_the_empty_directories_it_created(tmp_path):
    d = RunDirectory()
    d.create_and_lock(tmp_path / "a" / "b" / "out")
    assert d.created == [str(tmp_path / "a" / "b" / "out"), str(tmp_path / "a" / "b"), str(tmp_path / "a")]
    d.release()
    assert os.listdir(tmp_path) == []
    d = RunDirectory()
    d.create_and_lock(tmp_path / "a" / "out")
    (tmp_path / "a" / "out" / "model.safetensors").write_bytes(b"saved")
    d.release()
    assert os.listdir(tmp_path / "a" / "out") == ["model.safetensors"]
    existing = tmp_path / "existing"
    existing.mkdir()
    d = RunDirectory()
    d.create_and_lock(existing)
    assert d.created == []
    d.release()
    assert existing.is_dir()


def test_a_locked_directory_is_refused_and_errors_name_the_path(tmp_path):
    first = RunDirectory()
    first.create_and_lock(tmp_path / "out")
    with pytest.raises(DirectoryLocked):
        RunDirectory().create_and_lock(tmp_path / "out")
    with pytest.raises(DirectoryLocked):
        RunDirectory().lock(tmp_path / "out")
    first.release()
    (tmp_path / "file").write_text("x")
    with pytest.raises(run_lib.RunDirectoryError) as e:
        RunDirectory().create_and_lock(tmp_path / "file" / "out")
    assert e.value.reason == "cannot create the directory (Not a directory)"
    assert str(e.value).startswith(str(tmp_path / "file" / "out") + ": ")


def committed_but_not_installed(directory, files: dict):
    """What a kill right after the commit rename leaves: .save-X.commit holding the new files."""
    directory.mkdir(parents=True, exist_ok=True)
    committed = directory / ".save-abcd1234.commit"
    committed.mkdir()
    for i, (name, text) in enumerate(files.items()):
        (committed / f"{i}-{name}").write_text(text)


def test_locking_recovers_the_run_directory_and_its_best(tmp_path):
    out = tmp_path / "out"
    committed_but_not_installed(out, {"metrics.jsonl": "new\n", "train_state.json": "{}"})
    committed_but_not_installed(out / "best", {"model.safetensors": "w", "best.json": '{"step": 3}'})
    (out / "best" / ".save-zzzz0000.new").mkdir()  # staged, never committed
    d = RunDirectory()
    d.lock(out)
    assert sorted(os.listdir(out)) == ["best", "metrics.jsonl", "train_state.json"]
    assert sorted(os.listdir(out / "best")) == ["best.json", "model.safetensors"]
    assert json.loads((out / "best" / "best.json").read_text()) == {"step": 3}
    d.release()


@pytest.fixture
def tiny(tmp_path):
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "vocab.json").write_text('{"!": 0}')
    (tok / "merges.txt").write_text("#version: 0.2\n")
    config = numpy_gpt2.GPT2Config(n_layer=1, n_head=2, n_embd=8, n_ctx=8, vocab_size=16,
                                   bos_token_id=0, eos_token_id=0)
    return init_params(config, seed=0), config, str(tok)


def test_a_failed_best_checkpoint_leaves_no_best_directory(tmp_path, tiny, monkeypatch):
    params, config, tok = tiny

    def full(path):
        raise OSError(errno.ENOSPC, "No space left on device")
    real = state.checkpoint_writers
    monkeypatch.setattr(state, "checkpoint_writers",
                        lambda *a, **k: {**real(*a, **k), "model.safetensors": full})
    with pytest.raises(OSError, match="No space left"):
        state.save_best(str(tmp_path), params, config, tok, step=0, val_loss=1.0)
    assert os.listdir(tmp_path) == ["tok"]


def test_a_failed_start_of_train_leaves_no_out_directory(tmp_path, monkeypatch, capsys):
    """train on a full disk: the best checkpoint at step 0 cannot be written; exit 1, and the
    --out directory it created is gone again (before, an empty best/ kept it)."""
    tokenizer = os.environ.get("NUMPY_GPT2_TOKENIZER")
    if not tokenizer or not os.path.isfile(os.path.join(tokenizer, "vocab.json")):
        pytest.skip("NUMPY_GPT2_TOKENIZER is not set")
    from helpers.run_scripts import load_script
    (tmp_path / "text.txt").write_text("the king and the queen spoke to all. " * 60)

    def full(directory, writers):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(state, "write_files_atomically", full)
    code = load_script("train").main([
        "--data", str(tmp_path / "text.txt"), "--out", str(tmp_path / "runs" / "out"),
        "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16",
        "--batch-size", "2", "--eval-iters", "1", "--max-iters", "2"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert ("error at step 0: saving the best checkpoint to " in err and "out of disk space; "
            "nothing was saved in " in err)
    assert os.listdir(tmp_path) == ["text.txt"]
