"""Faults at a training run's saves, in process: a first save that fails (a full disk, a file
too large, out of memory, a second signal) leaves no new --out behind; a failed save leaves no
staging directory even when out of file descriptors; save errors name the file written, not
the one copied; the step a "stopped at once" reports is the one on disk; --eval-only whose
stdout cannot be written fails; every line names the command as it was run; a resumed run
needs its metrics.jsonl. docs/runs.md describes the promises. (~15 s)
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import resource
import shutil
import signal
import sys

import pytest

import numpy_gpt2.training.loop as loop_module
import numpy_gpt2.training.state as state_module
from numpy_gpt2.io import atomic
from helpers.run_scripts import TEXT, load_script

TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16",
        "--batch-size", "2", "--eval-iters", "1", "--seed", "3"]
PROGRESS = re.compile(r"^\s*train:\s+\d+%")  # tqdm's progress bar (its desc is "train")


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "text.txt"
    path.write_text(TEXT * 4, encoding="utf-8")
    return str(path)


@pytest.fixture(autouse=True)
def tokenizer_env(tokenizer_dir, monkeypatch):
    monkeypatch.setenv("NUMPY_GPT2_TOKENIZER", tokenizer_dir)


def train(capsys, *args, prog=None):
    """(status, stdout, stderr) of the train command run in process as `prog`."""
    capsys.readouterr()
    status = load_script("train").main([str(a) for a in args], prog=prog)
    out, err = capsys.readouterr()
    return status, out, err


def lines(err) -> list[str]:
    """stderr's lines, without the progress bar's."""
    return [line for line in re.split(r"[\r\n]", err) if line.strip() and not PROGRESS.match(line)]


def tree(directory) -> list[str]:
    """Every path under directory (hidden ones too), relative."""
    found = []
    for root, dirs, names in os.walk(directory):
        found += [os.path.relpath(os.path.join(root, n), directory) for n in dirs + names]
    return sorted(found)


def signals_at(n_calls, count=2):
    """A wrapper for a function that sends this process `count` SIGINTs at its n_calls-th call
    (the first one asks to stop after saving, the second stops at once)."""
    calls = []

    def wrap(real):
        def wrapped(*args, **kwargs):
            calls.append(1)
            if len(calls) == n_calls:
                for _ in range(count):
                    os.kill(os.getpid(), signal.SIGINT)
            return real(*args, **kwargs)
        return wrapped
    return wrap


# ----------------------------------------------------------------------------------------
# A first save that fails leaves no new --out (docs/runs.md, "a start that fails")

@pytest.mark.parametrize("existing", [False, True], ids=["new-out", "existing-out"])
def test_a_full_disk_at_the_first_save_leaves_no_new_out(text_file, tmp_path, capsys, monkeypatch, existing):
    """best/ is written (5 files), then the run's save hits ENOSPC: a new --out and the
    parents train made are removed; an existing --out is left as it was (empty)."""
    import safetensors.numpy
    real = safetensors.numpy.save_file

    def save_file(tensors, path, metadata=None):
        if "m.wte.weight" in tensors:  # the optimizer file: only the run's save has it
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, path, metadata=metadata)
    monkeypatch.setattr(safetensors.numpy, "save_file", save_file)
    out = tmp_path / "a" / "c"
    if existing:
        out.mkdir(parents=True)
    status, _, err = train(capsys, "--data", text_file, "--out", out, *TINY, "--max-iters", 2)
    assert status == 1, err
    assert lines(err)[-1] == (f"train.py: error at step 0: saving to {out} failed: "
                              f"{out}/optimizer.safetensors: out of disk space; nothing was saved in {out}")
    if existing:
        assert tree(tmp_path) == ["a", "a/c"]
    else:
        assert tree(tmp_path) == []


def test_a_file_too_large_names_the_file_written_and_leaves_nothing(text_file, tmp_path, capsys):
    """ulimit -f: copying the tokenizer's vocab.json into best/ fails with EFBIG; the message
    names best/vocab.json (the destination), not the tokenizer file it copies from."""
    out = tmp_path / "f" / "a" / "c"
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))  # (Python ignores SIGXFSZ)
    try:
        status, _, err = train(capsys, "--data", text_file, "--out", out, *TINY, "--max-iters", 2)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert status == 1, err
    assert lines(err)[-1] == (f"train.py: error at step 0: saving the best checkpoint to {out}/best "
                              f"failed: {out}/best/vocab.json: the file is too large for the "
                              f"filesystem; nothing was saved in {out}")
    assert tree(tmp_path) == []


def test_a_second_signal_during_the_first_save_leaves_no_new_out(text_file, tmp_path, capsys, monkeypatch):
    """Two SIGINTs while the run's first save stages its files (best/ already written): status
    130, "nothing was saved", and no --out."""
    monkeypatch.setattr(state_module, "metrics_writer", signals_at(1)(state_module.metrics_writer))
    out = tmp_path / "run"
    status, _, err = train(capsys, "--data", text_file, "--out", out, *TINY, "--eval-interval", 1,
                           "--max-iters", 100)
    assert status == 130, err
    assert lines(err)[-1] == f"train.py: SIGINT: stopped at once; nothing was saved in {out}"
    assert tree(tmp_path) == []


def test_out_of_memory_at_the_first_save_says_what_was_saved_and_leaves_no_new_out(
        text_file, tmp_path, capsys, monkeypatch):
    def no_memory(metrics):
        raise MemoryError
    monkeypatch.setattr(loop_module, "loss_curve_writer", no_memory)
    out = tmp_path / "o" / "run"
    status, _, err = train(capsys, "--data", text_file, "--out", out, *TINY, "--eval-interval", 2,
                           "--max-iters", 4)
    assert status == 1, err
    assert lines(err)[-1] == (f"train.py: error at step 0: saving to {out} failed: out of memory "
                              f"(MemoryError); nothing was saved in {out}")
    assert tree(tmp_path) == []


def test_out_of_memory_after_a_save_says_the_save_is_intact(text_file, tmp_path, capsys, monkeypatch):
    """A MemoryError anywhere in the loop (here drawing the batches of step 3) is one line
    naming the last save, which stays."""
    real, calls = loop_module.draw_batches, []

    def draw_batches(run):
        calls.append(1)
        if len(calls) == 3:
            raise MemoryError("cannot allocate")
        return real(run)
    monkeypatch.setattr(loop_module, "draw_batches", draw_batches)
    out = tmp_path / "run"
    status, _, err = train(capsys, "--data", text_file, "--out", out, *TINY, "--eval-interval", 2,
                           "--max-iters", 4)
    assert status == 1, err
    assert lines(err)[-1] == (f"train.py: error at step 2: out of memory (cannot allocate); "
                              f"the last save in {out} (step 2) is intact")
    assert json.loads((out / "train_state.json").read_text())["step"] == 2


LIBRARY_EXIT = """
import ctypes, sys
import numpy_gpt2.training.loop as loop
def gone(metrics):  # as OpenBLAS does when it cannot allocate: the C library's exit()
    ctypes.CDLL(None).exit(1)
loop.loss_curve_writer = gone
from numpy_gpt2.cli import run_script
sys.exit(run_script("train", sys.argv[1:], prog="numpy-gpt2 train"))
"""


def test_a_library_that_ends_the_process_at_the_first_save_leaves_no_new_out(text_file, tmp_path,
                                                                             tokenizer_dir):
    """OpenBLAS out of memory calls exit() itself (ulimit -v 204800): the run directory it
    created, best/ included, is removed from the C exit handler, after the one line."""
    import subprocess

    from helpers import REPO_ROOT

    out = tmp_path / "o" / "run"
    env = dict(os.environ, NUMPY_GPT2_TOKENIZER=tokenizer_dir, OPENBLAS_NUM_THREADS="1",
               PYTHONPATH=REPO_ROOT)
    done = subprocess.run([sys.executable, "-c", LIBRARY_EXIT, "--data", text_file, "--out", str(out),
                           *TINY, "--max-iters", "2"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1, done.stderr
    # (after the progress bar, on its line: the library ended the process mid-line)
    assert done.stderr.endswith("numpy-gpt2 train: error: out of memory (a library gave up "
                                "allocating memory and ended the process)\n"), done.stderr
    assert tree(tmp_path) == []


# ----------------------------------------------------------------------------------------
# A failed save leaves no staging directory; its error names the file written

def test_a_save_out_of_file_descriptors_leaves_no_staging_directory(tmp_path):
    """The second file's writer runs out of descriptors (EMFILE) and keeps them all: the
    staging directory and the file staged before are still removed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    opened = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 64
    held = []

    def first(path):
        with open(path, "w") as f:
            f.write("one")

    def exhausting(path):
        try:
            while True:
                held.append(os.open(os.devnull, os.O_RDONLY))
        except OSError as e:
            assert e.errno == errno.EMFILE
        open(path, "w")  # EMFILE: the staging file cannot even be created

    resource.setrlimit(resource.RLIMIT_NOFILE, (opened + 16, hard))
    try:
        with pytest.raises(OSError) as raised:
            atomic.write_files_atomically(tmp_path / "d", {"a.txt": first, "b.txt": exhausting})
        left = tree(tmp_path)
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert raised.value.errno == errno.EMFILE and raised.value.filename == str(tmp_path / "d" / "b.txt")
    assert left == []


def test_a_copy_that_fails_writing_names_the_destination(tmp_path):
    source = tmp_path / "source.bin"
    source.write_bytes(os.urandom(256 * 1024))
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        with pytest.raises(OSError) as raised:
            atomic.write_files_atomically(tmp_path / "d", {"copy.bin": lambda p: shutil.copyfile(source, p)})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert raised.value.errno == errno.EFBIG
    assert raised.value.filename == str(tmp_path / "d" / "copy.bin")
    assert tree(tmp_path) == ["source.bin"]
    # a copy whose source is missing still names the source
    with pytest.raises(FileNotFoundError) as raised:
        atomic.write_files_atomically(tmp_path / "d", {"copy.bin": lambda p: shutil.copyfile(tmp_path / "no", p)})
    assert raised.value.filename == str(tmp_path / "no")


# ----------------------------------------------------------------------------------------
# "stopped at once" reports the step on disk

def test_a_second_signal_after_a_commit_reports_the_committed_step(text_file, tmp_path, capsys, monkeypatch):
    """Two SIGINTs as the run's save of step 1 starts installing (after its commit): the
    message names step 1, the step train_state.json holds."""
    out = tmp_path / "run"
    real, installs = atomic._install, []

    def install(committed, directory):
        if os.path.realpath(directory) == os.path.realpath(out):
            installs.append(1)
            if len(installs) == 2:  # the save of step 1 (step 0's was the first)
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGINT)
        return real(committed, directory)
    monkeypatch.setattr(atomic, "_install", install)
    status, _, err = train(capsys, "--data", text_file, "--out", out, *TINY, "--eval-interval", 1,
                           "--max-iters", 100)
    assert status == 130, err
    on_disk = json.loads((out / "train_state.json").read_text())["step"]
    assert on_disk == 1
    assert lines(err)[-1] == f"train.py: SIGINT: stopped at once; the last save in {out} (step 1) is intact"
    assert not [name for name in os.listdir(out) if name.startswith(".save-")]


# ----------------------------------------------------------------------------------------
# --eval-only: stdout is its only output

class Full(io.TextIOBase):
    """A stdout on a full disk (>/dev/full)."""

    def write(self, text):
        raise OSError(errno.ENOSPC, "No space left on device")

    def writable(self):
        return True


@pytest.mark.parametrize("stdout", ["full", "closed"])
def test_eval_only_whose_stdout_cannot_be_written_fails_with_one_line(text_file, tmp_path, capsys,
                                                                      monkeypatch, stdout):
    import numpy_gpt2

    config = numpy_gpt2.GPT2Config(n_layer=1, n_head=1, n_embd=8, n_ctx=32)
    ckpt = tmp_path / "ckpt"
    numpy_gpt2.save_checkpoint(ckpt, numpy_gpt2.init_params(config, seed=0), config,
                               os.environ["NUMPY_GPT2_TOKENIZER"])
    capsys.readouterr()
    err = io.StringIO()
    monkeypatch.setattr(sys, "stdout", Full() if stdout == "full" else None)
    monkeypatch.setattr(sys, "stderr", err)
    status = load_script("train").main(["--init", str(ckpt), "--data", text_file, "--eval-only",
                                        "--block-size", "16", "--batch-size", "2", "--eval-iters", "1"])
    monkeypatch.undo()
    said = lines(err.getvalue())
    assert status == 1 and len(said) == 1, said
    assert said[0].startswith("train.py: error: cannot write to standard output"), said


# ----------------------------------------------------------------------------------------
# Every line names the command as it was run

@pytest.mark.parametrize("prog, resume", [("numpy-gpt2 train", "numpy-gpt2 train --resume"),
                                          (None, "python scripts/train.py --resume")])
def test_every_line_and_the_advice_name_the_command_as_run(text_file, tmp_path, capsys, monkeypatch,
                                                           prog, resume):
    name = prog or "train.py"
    monkeypatch.setattr(state_module, "metrics_writer", signals_at(2, count=1)(state_module.metrics_writer))
    out = tmp_path / "run"
    status, _, err = train(capsys, "--data", text_file, "--out", out, *TINY, "--eval-interval", 1,
                           "--max-iters", 100, prog=prog)
    assert status == 130, err
    said = lines(err)
    assert said and all(line.startswith(f"{name}: ") for line in said), said
    assert said[-1] == f"{name}: SIGINT: stopped at step 2; saved to {out}; continue with {resume} {out}"
    monkeypatch.undo()
    status, _, err = train(capsys, "--resume", out, "--max-iters", 2, prog=prog)
    assert status == 0, err
    assert lines(err) == [f"{name}: the run in {out} has finished: it is at step 2 of --max-iters 2; "
                          f"to train it further, give a larger --max-iters, e.g. {resume} {out} --max-iters 4"]
    status, _, err = train(capsys, "--resume", out, "--max-iters", 0, prog=prog)
    assert status == 2 and lines(err)[0].startswith(f"{name}: error: "), err


# ----------------------------------------------------------------------------------------
# metrics.jsonl is part of a saved run

@pytest.fixture(scope="module")
def saved_run(tmp_path_factory, text_file, tokenizer_dir):
    out = tmp_path_factory.mktemp("saved") / "run"
    status = load_script("train").main(["--data", text_file, "--out", str(out), *TINY,
                                        "--eval-interval", "2", "--max-iters", "2"])
    assert status == 0
    return out


@pytest.mark.parametrize("damage", ["missing", "not-json", "a-step-removed"])
def test_resuming_without_the_whole_metrics_history_is_refused(saved_run, tmp_path, capsys, damage):
    run = tmp_path / "run"
    shutil.copytree(saved_run, run)
    path = run / "metrics.jsonl"
    if damage == "missing":
        path.unlink()
    elif damage == "not-json":
        path.write_text(path.read_text() + "not json\n")
    else:
        records = [json.loads(line) for line in path.read_text().splitlines()]
        kept = [json.dumps(r) for r in records if (r["kind"], r["step"]) != ("train", 1)]
        path.write_text("".join(line + "\n" for line in kept))
    before = tree(run)
    status, _, err = train(capsys, "--resume", run, "--max-iters", 4)
    assert status == 2, err
    said = lines(err)
    assert len(said) == 1 and said[0].startswith(f"train.py: error: {path}: "), said
    assert tree(run) == before


def test_resuming_drops_the_records_after_the_saved_step(saved_run, tmp_path, capsys):
    """Records of steps after the save (a run killed after logging them) are dropped, as
    before."""
    run = tmp_path / "run"
    shutil.copytree(saved_run, run)
    path = run / "metrics.jsonl"
    path.write_text(path.read_text() + json.dumps({"kind": "train", "step": 3, "loss": 1.0}) + "\n")
    status, _, err = train(capsys, "--resume", run, "--max-iters", 3)
    assert status == 0, err
    steps = [json.loads(line)["step"] for line in path.read_text().splitlines()
             if json.loads(line)["kind"] == "train"]
    assert steps == [1, 2, 3]


@pytest.mark.parametrize("error, reason", [
    (ModuleNotFoundError("No module named 'matplotlib'"), "matplotlib is not installed"),
    (ImportError("libfreetype.so.6: failed to map segment from shared object"),
     "matplotlib could not be loaded (out of memory)"),
])
def test_why_there_is_no_loss_curve(error, reason, monkeypatch):
    """Under a memory limit matplotlib can be installed yet fail to load: the run says so,
    not that it is missing."""
    import builtins

    from numpy_gpt2.training import plot
    real = builtins.__import__

    def fail_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise error
        return real(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", fail_matplotlib)
    assert plot.loss_curve_writer([]) is None
    monkeypatch.setattr(builtins, "__import__", real)
    assert plot.no_plot_reason() == reason
