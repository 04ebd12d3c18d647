"""Crash safety of training runs: a save is one atomic commit whatever moment a process dies
at (fault injection at every filesystem operation of a save and of its recovery; >= 50
random kill -9 of a run that saves every step), no debris, one metrics record per step and
evaluation, the run directory's lock, SIGTERM/SIGHUP, diverging runs, and one-line errors for
damaged runs, a full disk and misused flags.

Times (2 shared cores): the kill -9 loop ~30-50 s (NUMPY_GPT2_KILLS sets its count, default
50), the rest ~40 s.
"""

from __future__ import annotations

import copy
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import numpy_gpt2
import numpy_gpt2.training.state as train_module
from numpy_gpt2.io import atomic
from numpy_gpt2.training import data
from numpy_gpt2.initialization import init_params
from numpy_gpt2.training import loop
from numpy_gpt2.training.state import RUN_FILES as SAVED_FILES, load_training_state, save_run
from numpy_gpt2.training.step import train_step
from helpers.run_scripts import load_script, run_script
from helpers import REPO_ROOT

ROOT = REPO_ROOT
TRAIN = os.path.join(ROOT, "scripts", "train.py")
KILL_LOOP = os.path.join(ROOT, "tests", "helpers", "kill_loop.py")
TEXT = ("First Citizen: Before we proceed any further, hear me speak. All: Speak, speak. "
        "First Citizen: You are all resolved rather to die than to famish? All: Resolved. "
        "resolved. First Citizen: First, you know Caius Marcius is chief enemy to the people.\n") * 12
TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16",
        "--batch-size", "2", "--eval-iters", "1", "--seed", "3"]
SCRIPT = load_script("train")
RUN_FILES = sorted(SAVED_FILES)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "text.txt"
    path.write_text(TEXT, encoding="utf-8")
    return str(path)


@pytest.fixture
def tokenizer_env(tokenizer_dir, monkeypatch):
    monkeypatch.setenv("NUMPY_GPT2_TOKENIZER", tokenizer_dir)


def train_cli(capsys, *args):
    return run_script("train", [str(a) for a in args], capsys)


def content(path):
    """A file's bytes; for a .safetensors file its parsed header (the safetensors library
    writes the metadata in a random order) and its data bytes."""
    raw = path.read_bytes()
    if path.suffix != ".safetensors" or len(raw) < 8:
        return raw
    n = int.from_bytes(raw[:8], "little")
    try:
        return json.loads(raw[8:8 + n]), raw[8 + n:]
    except ValueError:  # a damaged header: as bytes
        return raw


def files(directory) -> dict:
    """The directory's files (not its subdirectories, e.g. best/, train.py's best checkpoint)."""
    return {name: content(directory / name) for name in sorted(os.listdir(directory))
            if (directory / name).is_file()}


def metrics(directory, timing=False):
    """The metrics records; without tokens_per_s and mfu (timings) unless timing."""
    records = [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines()]
    return records if timing else [{k: v for k, v in m.items() if k not in ("tokens_per_s", "mfu")}
                                   for m in records]


def assert_whole_save(directory):
    """The run directory holds a save's files and no debris: no staging or committed save,
    no temporary file (any hidden entry would be one)."""
    names = os.listdir(directory)
    assert set(RUN_FILES) <= set(names) and not [n for n in names if n.startswith(".")], sorted(names)


def assert_same_run(ours, theirs):
    """Two finished runs hold the same files, every byte equal (weights, optimizer state,
    train_state.json with the RNG, the plot), and the same metrics but for the timings."""
    assert_whole_save(ours)
    a, b = files(ours), files(theirs)
    for name in RUN_FILES:
        if name != "metrics.jsonl":
            assert a[name] == b[name], f"{ours}/{name} differs from {theirs}/{name}"
    assert metrics(ours) == metrics(theirs)


def last_line(err):
    return [line for line in re.split(r"[\r\n]", err) if line.strip()][-1]


# ----------------------------------------------------------------------------------------
# Fault injection: crash at every filesystem operation of a save (and of its recovery)

MUTATING = ("mkdir", "chmod", "fsync", "rename", "replace", "rmdir", "remove", "unlink")
CRASHED = 77  # the status of a child that crashed where it was told to


class Ops:
    """Counts the filesystem operations that change the disk (or its durability) and the
    file writers of write_files_atomically; at operation number `crash_at` the process dies
    on the spot (os._exit: no cleanup, no finally, like kill -9), before doing it, or with
    `half` after writing half of the file when the operation is a writer. fsync is counted
    (a crash point) but not done: a process crash keeps what was written either way (the
    order of the fsyncs, which matters for power loss, is checked on the list of names)."""

    def __init__(self, crash_at=None, half=False):
        self.names, self.crash_at, self.half = [], crash_at, half

    def tick(self, name):
        if len(self.names) == self.crash_at and not (self.half and name.startswith("write")):
            os._exit(CRASHED)
        self.names.append(name)

    def install(self, mp):
        for name in MUTATING:
            real = getattr(os, name)
            if name == "fsync":
                real = lambda fd: None  # noqa: E731
            mp.setattr(os, name, lambda *a, _real=real, _name=name, **k: (self.tick(_name), _real(*a, **k))[1])
        real_write = atomic.write_files_atomically

        def counted(directory, writers, on_commit=None):
            return real_write(directory, {name: self.writer(name, w) for name, w in writers.items()},
                              on_commit)
        mp.setattr(train_module, "write_files_atomically", counted)

    def writer(self, name, write):
        def counted(path):
            crash_here = self.half and len(self.names) == self.crash_at
            self.tick(f"write {name}")
            write(path)
            if crash_here:  # died halfway through writing this file
                with open(path, "rb+") as f:
                    f.truncate(os.path.getsize(path) // 2)
                os._exit(CRASHED)
        return counted


def in_child(action, crash_at=None, half=False) -> int:
    """Run action() in a forked child with Ops(crash_at, half) installed; its exit status."""
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            with pytest.MonkeyPatch.context() as mp:
                Ops(crash_at, half).install(mp)
                action()
            code = 0
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def count_ops(action) -> list[str]:
    ops = Ops()
    with pytest.MonkeyPatch.context() as mp:
        ops.install(mp)
        action()
    return ops.names


@pytest.fixture(scope="module")
def two_states(tmp_path_factory):
    """A small run's state at step 1 (A) and, after one more optimizer step, at step 2 (B),
    as train.py holds them in memory; saved by train.py's own save_run."""
    config = numpy_gpt2.GPT2Config(n_layer=1, n_head=2, n_embd=8, n_ctx=8, vocab_size=64,
                                   bos_token_id=0, eos_token_id=0)
    params = init_params(config, seed=0)
    state = numpy_gpt2.adamw_init(params)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 64, size=200)

    def step(run_metrics):
        x, y = data.get_batch(tokens, 8, 2, rng)
        loss, norm = train_step(params, config, state, [(x, y)], 1e-2)
        run_metrics.append({"kind": "train", "step": state["step"], "loss": loss, "lr": 1e-2,
                            "grad_norm": norm, "tokens_per_s": 1.0})
        run_metrics.append({"kind": "eval", "step": state["step"], "train_loss": loss, "val_loss": loss})

    tokenizer_dir = tmp_path_factory.mktemp("tokenizer")  # files copied into each save
    (tokenizer_dir / "vocab.json").write_text('{"!": 0}')
    (tokenizer_dir / "merges.txt").write_text("#version: 0.2\n")

    def snapshot(run_metrics):
        return dict(settings={"seed": 0}, rng=np.random.default_rng(state["step"]),
                    data_sha256="0" * 64, metrics=list(run_metrics), config=config,
                    params=copy.deepcopy(params), tok_dir=tokenizer_dir, saved_step=None,
                    opt_state=copy.deepcopy(state))
    history = []
    step(history)
    a = snapshot(history)
    step(history)
    return a, snapshot(history)


def save(run, directory):
    info = {"settings": run["settings"], "rng": run["rng"].bit_generator.state,
            "data_sha256": run["data_sha256"], "numpy_gpt2": "train.py", "world_size": 1}
    return lambda: save_run(str(directory), run["params"], run["config"], run["tok_dir"],
                            run["opt_state"], info, run["metrics"], loop.loss_curve_writer(run["metrics"]))


def recover(directory):
    return lambda: atomic.recover(str(directory), names=SAVED_FILES)


@pytest.fixture
def plots_drawn_once(monkeypatch, tmp_path):
    """loss_curve.png drawn once per metrics list, then copied (100 ms less per crash point)."""
    real, drawn = loop.loss_curve_writer, {}

    def writer(run_metrics):
        key = json.dumps(run_metrics)
        if key not in drawn:
            path = tmp_path / f"plot{len(drawn)}.png"
            real(run_metrics)(str(path))
            drawn[key] = path.read_bytes()
        return lambda path: open(path, "wb").write(drawn[key])
    monkeypatch.setattr(loop, "loss_curve_writer", writer)


@pytest.mark.parametrize("first_save", [False, True], ids=["over-a-save", "first-save"])
def test_a_crash_at_any_filesystem_operation_of_a_save_leaves_one_whole_save(two_states, tmp_path, first_save,
                                                                             plots_drawn_once):
    """Save B over A (or into an empty directory), crashing before each filesystem operation
    in turn, and in the middle of each file write: at every point, readers see A's or B's
    model whole, and after recover() (what train.py does at start) the directory holds
    exactly A's files or exactly B's, byte for byte, with no debris: before the one rename
    that commits, A; from it on, B. A crash while recovering is recovered in turn."""
    a, b = two_states
    clean = {}
    for name, run in (("A", a), ("B", b)):
        clean[name] = tmp_path / f"clean{name}"
        save(run, clean[name])()
    expected = {"A": files(clean["A"]), "B": files(clean["B"]), None: {}}
    before = None if first_save else "A"
    base = tmp_path / "base"
    base.mkdir()
    if not first_save:
        save(a, base)()
    scratch = tmp_path / "count"
    shutil.copytree(base, scratch)
    ops = count_ops(save(b, scratch))
    assert files(scratch) == expected["B"]
    commit = ops.index("rename")  # the one os.rename: staging -> committed
    writes = [i for i, op in enumerate(ops) if op.startswith("write")]
    assert len(writes) == len(RUN_FILES) and ops.count("replace") == len(RUN_FILES)
    # Durability order: each file fsynced after it is written, the staging directory before
    # the commit, the run directory after the commit and after the installing renames.
    assert all(ops[i + 1:i + 3] == ["chmod", "fsync"] for i in writes) and writes[-1] < commit
    assert ops[commit - 1] == "fsync" and ops[commit + 1] == "fsync"
    assert ops[commit + 2:] == ["replace"] * len(RUN_FILES) + ["fsync", "rmdir"]
    points = [(n, False) for n in range(len(ops))] + [(n, True) for n in writes]
    recovery_points = 0
    for n, half in points:
        directory = tmp_path / f"crash{n}{'h' if half else ''}"
        shutil.copytree(base, directory)
        assert in_child(save(b, directory), crash_at=n, half=half) == CRASHED, (n, ops[n])
        # Readers (load, generate.py) never see a half-written or mixed model.
        top = {name for name in os.listdir(directory) if not name.startswith(".")}
        if "model.safetensors" in top:
            model = content(directory / "model.safetensors")
            assert model in (expected["B"]["model.safetensors"], expected.get(before, {}).get("model.safetensors"))
            assert content(directory / "config.json") == expected["B"]["config.json"]
        want = "B" if n > commit else before
        if any(name.endswith(".commit") for name in os.listdir(directory)):
            # Committed, not installed completely: crash the recovery at each of its operations.
            steps = count_ops(recover(shutil.copytree(directory, tmp_path / f"rc{n}{half}")))
            for m in range(len(steps)):
                again = shutil.copytree(directory, tmp_path / f"r{n}{half}-{m}")
                assert in_child(recover(again), crash_at=m) == CRASHED
                recover(again)()
                assert files(again) == expected["B"], (n, m, steps[m])
                recovery_points += 1
        recover(directory)()
        assert files(directory) == expected[want], f"crash before operation {n} ({ops[n]}, half={half})"
        if want is not None:  # and the state resumes
            params, _ = numpy_gpt2.load(directory)
            assert load_training_state(str(directory), params)[0]["step"] == (1 if want == "A" else 2)
    print(f"{len(ops)} operations per save ({ops.count('fsync')} fsyncs, {len(writes)} writes); "
          f"{len(points)} crash points, {recovery_points} crash points inside recoveries")
    assert recovery_points > 0


def test_an_error_in_a_save_discards_it_and_a_locked_save_is_left_alone(two_states, tmp_path):
    """A writer's exception (a full disk) removes the staging directory and propagates; a
    staging directory that a live process holds locked is not touched by recover()."""
    a, b = two_states
    directory = tmp_path / "run"
    save(a, directory)()
    before = files(directory)

    def full(path):
        raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(OSError, match="No space left"):
        atomic.write_files_atomically(str(directory), {"model.safetensors": full})
    assert files(directory) == before
    live = directory / ".save-live.new"
    live.mkdir()
    fd = atomic.lock_directory(str(live))
    try:
        pid = os.fork()  # another process: flock locks are per open file
        if pid == 0:
            os._exit(0 if atomic._try_lock(str(live)) is None else 1)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    finally:
        os.close(fd)
    # Unlocked now (its writer "died"): debris, removed by the next recover().
    (directory / ".model.safetensors.abc_1234.tmp").write_bytes(b"old per-file temporary")
    atomic.recover(str(directory), names=SAVED_FILES)
    assert files(directory) == before


def test_saving_works_where_the_filesystem_has_no_flock(tmp_path, monkeypatch):
    """Some network filesystems answer flock with ENOLCK: nothing is locked there, but
    saves and lock_directory still work (docs/runs.md says to keep to one writer)."""
    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")
    monkeypatch.setattr(atomic.fcntl, "flock", no_locks)
    os.close(atomic.lock_directory(str(tmp_path)))
    atomic.write_files_atomically(str(tmp_path), {"a.txt": lambda path: open(path, "w").write("one")})
    assert os.listdir(tmp_path) == ["a.txt"] and (tmp_path / "a.txt").read_text() == "one"


# ----------------------------------------------------------------------------------------
# kill -9, again and again

def test_random_kill_9_during_a_run_that_saves_every_step(tokenizer_dir, text_file, tmp_path):
    """>= 50 SIGKILLs (NUMPY_GPT2_KILLS) at random moments of runs that evaluate and save
    after every step: every attempt after a kill resumes (or starts afresh while nothing was
    saved), no debris builds up, and every run ends with the weights, optimizer state,
    RNG state, plot and metrics (one record per step and evaluation) of an uninterrupted
    run, bit for bit."""
    kills = int(os.environ.get("NUMPY_GPT2_KILLS", "50"))
    env = dict(os.environ, NUMPY_GPT2_TOKENIZER=tokenizer_dir, OMP_NUM_THREADS="1",
               OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    result = subprocess.run([sys.executable, KILL_LOOP, str(tmp_path), text_file, str(kills), "13"],
                            env=env, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    summary = json.loads(result.stdout.splitlines()[-1])
    print(summary)
    assert summary["kills"] >= kills
    assert summary["max_pending_saves"] <= 1  # debris never builds up
    reference = tmp_path / "reference"
    steps = summary["steps"]
    expected = [("eval", 0)] + [(kind, s) for s in range(1, steps + 1) for kind in ("train", "eval")]
    assert [(m["kind"], m["step"]) for m in metrics(reference)] == expected
    for run in summary["runs"]:
        assert_same_run(tmp_path / os.path.basename(run), reference)


# ----------------------------------------------------------------------------------------
# The lock, signals, Ctrl-C while starting

def start_training(out, text_file, tokenizer_dir, *extra):
    env = dict(os.environ, NUMPY_GPT2_TOKENIZER=tokenizer_dir, OMP_NUM_THREADS="1",
               OPENBLAS_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, TRAIN, "--data", text_file, "--out", str(out), *TINY,
                             "--max-iters", "100000", "--eval-interval", "100000", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def wait_for_steps(proc, timeout=120) -> bytes:
    """stderr until the progress bar shows a finished step."""
    err, deadline = b"", time.time() + timeout
    os.set_blocking(proc.stderr.fileno(), False)
    while not re.search(rb"\| *[1-9]\d*/100000", err):
        assert time.time() < deadline and proc.poll() is None, err.decode()
        time.sleep(0.1)
        err += proc.stderr.read() or b""
    return err


def test_a_second_trainer_is_refused_and_a_killed_ones_lock_is_gone(tokenizer_env, tokenizer_dir, text_file,
                                                                     tmp_path, capsys):
    out = tmp_path / "run"
    proc = start_training(out, text_file, tokenizer_dir)
    try:
        wait_for_steps(proc)
        for args in (["--resume", out], ["--data", text_file, "--out", out, *TINY]):
            code, _, err = train_cli(capsys, *args)
            assert code == 2, err
            assert err.count("\n") == 1 and "another train.py is training in this directory" in err
    finally:
        proc.kill()
        proc.wait()
    code, stdout, err = train_cli(capsys, "--resume", out, "--max-iters", 3)
    assert code == 0, err
    assert "done: step 3" in stdout


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_save_and_exit_128_plus_signal(text_file, tmp_path, tokenizer_dir, signum):
    out = tmp_path / "run"
    proc = start_training(out, text_file, tokenizer_dir)
    err = wait_for_steps(proc)
    proc.send_signal(signum)
    _, rest = proc.communicate(timeout=120)
    err = (err + rest).decode()
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err
    step = json.loads((out / "train_state.json").read_text())["step"]
    name = signal.Signals(signum).name
    assert step >= 1 and f"{name}: stopped at step {step}; saved to {out}" in last_line(err)
    assert [(m["kind"], m["step"]) for m in metrics(out)] == \
        [("eval", 0)] + [("train", s) for s in range(1, step + 1)]


def test_ctrl_c_while_train_py_starts_gives_one_line(tmp_path, text_file, tokenizer_dir):
    """SIGINT at moments spread over the first 0.6 s (imports, loading, the first steps):
    never a traceback; status 130, and no --out directory when nothing was saved."""
    env = dict(os.environ, NUMPY_GPT2_TOKENIZER=tokenizer_dir, OMP_NUM_THREADS="1")
    for i, delay in enumerate(np.linspace(0.2, 0.7, 6)):
        out = tmp_path / f"run{i}" / "out"
        proc = subprocess.Popen([sys.executable, TRAIN, "--data", text_file, "--out", str(out), *TINY,
                                 "--max-iters", "3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        err = err.decode()
        assert "Traceback" not in err, (delay, err)
        assert proc.returncode in (130, 0), (delay, err)  # 0: it had already finished
        if not (out / "train_state.json").exists():
            assert not (tmp_path / f"run{i}" / "out").exists(), (delay, os.listdir(out))


# ----------------------------------------------------------------------------------------
# Diverging runs; --init X --out X

@pytest.mark.parametrize("lr", ["1e6", "1e39"])
def test_a_diverging_run_stops_with_one_line_and_saves_nothing_non_finite(tokenizer_env, text_file, tmp_path,
                                                                           capsys, lr):
    out = tmp_path / "run"
    code, _, err = train_cli(capsys, "--data", text_file, "--out", out, *TINY, "--lr", lr, "--min-lr", 0,
                             "--warmup-iters", 0, "--max-iters", 50, "--eval-interval", 1)
    assert code == 1, err
    assert "Traceback" not in err
    line = last_line(err)
    assert re.match(r"train\.py: error at step \d+: ", line) and "intact" in line, line
    step = json.loads((out / "train_state.json").read_text())["step"]
    assert f"the last save in {out} (step {step}) is intact" in line
    params, _ = numpy_gpt2.load(out)  # load() refuses NaN/inf weights
    state, _ = load_training_state(str(out), params)  # and this NaN/inf moments
    assert_whole_save(out)


@pytest.mark.filterwarnings("ignore:overflow encountered")  # the point of the test
def test_update_that_overflows_is_caught_and_never_saved(tmp_path, tokenizer_dir):
    """lr 1e39 in float32: the AdamW step itself overflows every weight; train_step says so,
    and save_training_state refuses to write such weights."""
    config = numpy_gpt2.GPT2Config(n_layer=1, n_head=2, n_embd=8, n_ctx=8, vocab_size=64,
                                   bos_token_id=0, eos_token_id=0)
    params = init_params(config, seed=0)
    state = numpy_gpt2.adamw_init(params)
    x = np.arange(16).reshape(2, 8) % 64
    with pytest.raises(FloatingPointError, match="made weights non-finite"):
        train_step(params, config, state, [(x, (x + 1) % 64)], 1e39)
    with pytest.raises(FloatingPointError, match="not saving step 1: non-finite weights"):
        train_module.save_training_state(tmp_path, params, config, tokenizer_dir, state, {})
    assert os.listdir(tmp_path) == []


def test_init_and_out_the_same_directory_is_refused(tokenizer_env, tokenizer_dir, text_file, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    config = numpy_gpt2.GPT2Config(n_layer=1, n_head=2, n_embd=16, n_ctx=16)
    numpy_gpt2.save_checkpoint(ckpt, init_params(config), config, tokenizer_dir)
    before = files(ckpt)
    (tmp_path / "link").symlink_to(ckpt)
    for init, out in [(ckpt, ckpt), (ckpt / "model.safetensors", ckpt), (ckpt, tmp_path / "link"),
                      (tmp_path / "link", f"{tmp_path}/x/../ckpt")]:
        code, _, err = train_cli(capsys, "--data", text_file, "--init", init, "--out", out,
                                 "--block-size", 16, "--batch-size", 2, "--max-iters", 1)
        assert code == 2, err
        assert err.count("\n") == 1 and "are the same directory" in err, err
        assert files(ckpt) == before


# ----------------------------------------------------------------------------------------
# Damaged runs, a full disk, finished runs, failed starts

@pytest.fixture(scope="module")
def four_steps(tmp_path_factory, text_file, tokenizer_dir):
    """An uninterrupted 4-step run, evaluated (and saved) every 2 steps."""
    out = tmp_path_factory.mktemp("run4")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NUMPY_GPT2_TOKENIZER", tokenizer_dir)
        assert SCRIPT.main([str(a) for a in ["--data", text_file, "--out", out, *TINY,
                                              "--max-iters", 4, "--eval-interval", 2]]) == 0
    return out


def resume_fails(capsys, directory, *extra):
    code, _, err = train_cli(capsys, "--resume", directory, *extra)
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("train.py: error: ") and "Traceback" not in err, err
    return err


WRONG = [None, "x", 1.5, True, [], {}, -1]


def test_a_damaged_train_state_json_gives_one_line_naming_the_key(tokenizer_env, four_steps, tmp_path, capsys):
    """Every field of train_state.json (every setting included) replaced by values of wrong
    types; the file as a list, not JSON, empty; a key missing."""
    run = tmp_path / "run"
    shutil.copytree(four_steps, run)
    path = run / "train_state.json"
    good = json.loads(path.read_text())
    cases = []
    for key in ("step", "rng", "settings", "data_sha256"):
        cases += [({**good, key: v}, f'"{key}"') for v in WRONG]
        cases.append(({k: v for k, v in good.items() if k != key}, f'"{key}" is missing'))
    for key, value in good["settings"].items():
        for v in WRONG:
            ok = ((v is None and key in ("init", "lr_decay_iters"))
                  or (v == "x" and key in ("init", "data", "sample_prompt"))
                  or (v == 1.5 and key in ("lr", "weight_decay", "grad_clip")))  # valid values
            if not ok and not (type(v) is type(value) and v == value):
                cases.append(({**good, "settings": {**good["settings"], key: v}}, key))
    checked = 0
    for state, message in cases:
        path.write_text(json.dumps(state))
        err = resume_fails(capsys, run, "--max-iters", 6)
        if '"rng"' in message and isinstance(state.get("rng"), dict):
            message = '"rng" is not the state of a NumPy PCG64 generator'
        named = message in err or f'"{message}"' in err or f"--{message.replace('_', '-')} " in err
        assert named and "train_state.json" in err, (state, err)
        checked += 1
    for text, message in [("[1, 2]", "expected a JSON object, got list"), ("{", "cannot read"),
                          ("", "cannot read"), ("\xff", "cannot read")]:
        path.write_text(text, encoding="latin-1")
        assert message in resume_fails(capsys, run, "--max-iters", 6)
        checked += 1
    path.write_text(json.dumps({**good, "step": 3}))
    assert "the directory mixes two saves" in resume_fails(capsys, run, "--max-iters", 6)
    assert checked > 100


@pytest.mark.parametrize("name, cut", [("optimizer.safetensors", 0.5), ("optimizer.safetensors", 0.0),
                                       ("model.safetensors", 0.5), ("metrics.jsonl", 0.5)])
def test_resuming_a_truncated_file_gives_one_line_naming_it(tokenizer_env, four_steps, tmp_path, capsys, name, cut):
    run = tmp_path / "run"
    shutil.copytree(four_steps, run)
    data = (run / name).read_bytes()
    (run / name).write_bytes(data[:int(len(data) * cut) - (7 if name == "metrics.jsonl" else 0)])
    assert name in resume_fails(capsys, run, "--max-iters", 6)


def test_a_full_disk_during_a_save_stops_with_one_line_and_the_last_save_resumes(
        tokenizer_env, four_steps, text_file, tmp_path, capsys, monkeypatch):
    """The optimizer file of the save at step 4 hits ENOSPC: status 1, one line saying the
    save of step 2 is intact; the directory holds exactly that save; --resume then ends where
    the uninterrupted run ends, bit for bit."""
    import safetensors.numpy
    real = safetensors.numpy.save_file

    def save_file(tensors, path, metadata=None):
        if metadata.get("step") == "4" and "m.wte.weight" in tensors:
            with open(path, "wb") as f:
                f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, path, metadata=metadata)
    monkeypatch.setattr(safetensors.numpy, "save_file", save_file)
    out = tmp_path / "run"
    code, _, err = train_cli(capsys, "--data", text_file, "--out", out, *TINY, "--max-iters", 4,
                             "--eval-interval", 2)
    assert code == 1 and "Traceback" not in err, err
    assert last_line(err) == (f"train.py: error at step 4: saving to {out} failed: {out}/optimizer.safetensors: "
                              f"out of disk space; the last save in {out} (step 2) is intact")
    assert_whole_save(out)
    assert json.loads((out / "train_state.json").read_text())["step"] == 2
    monkeypatch.undo()
    code, _, err = train_cli(capsys, "--resume", out)
    assert code == 0, err
    assert_same_run(out, four_steps)


def test_resuming_a_finished_run_says_how_to_go_on(tokenizer_env, four_steps, capsys):
    before = files(four_steps)
    code, stdout, err = train_cli(capsys, "--resume", four_steps)
    assert code == 0 and stdout == ""
    assert err == (f"train.py: the run in {four_steps} has finished: it is at step 4 of --max-iters 4; "
                   f"to train it further, give a larger --max-iters, e.g. python scripts/train.py --resume {four_steps} "
                   f"--max-iters 8\n")
    err = resume_fails(capsys, four_steps, "--max-iters", 3)
    assert "--max-iters 3 is below the step the run" in err
    assert files(four_steps) == before


def test_a_start_interrupted_or_crashed_earlier_is_cleaned_up(tokenizer_env, four_steps, tmp_path, capsys):
    """Debris of killed saves (staging directories, committed saves not installed, the old
    per-file temporaries) is finished or removed when train.py starts; a failed start leaves
    no --out directory (nor the parents it made)."""
    run = tmp_path / "run"
    shutil.copytree(four_steps, run)
    (run / ".save-dead.new").mkdir()
    (run / ".save-dead.new" / "0-model.safetensors").write_bytes(b"half")
    (run / ".optimizer.safetensors.k2j4_x0a.tmp").write_bytes(b"old debris")
    code, _, err = train_cli(capsys, "--resume", run, "--max-iters", 6)
    assert code == 0, err
    assert_whole_save(run)
    for args in (["--data", tmp_path / "missing.txt"], ["--data", four_steps / "config.json", "--lr", "-1"],
                 ["--data", four_steps / "vocab.json", "--block-size", "100000"]):
        code, _, err = train_cli(capsys, *TINY, "--out", tmp_path / "new" / "a" / "b", *args)
        assert code == 2, err
        assert not (tmp_path / "new").exists()
