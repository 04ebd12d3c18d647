"""Run a scripts/*.py command-line tool in-process (fast, and monkeypatches apply to it)."""

from __future__ import annotations

import argparse
import contextlib
import glob
import importlib.util
import io
import os
import signal
import sys
from types import SimpleNamespace
from unittest import mock

import pytest
from helpers import REPO_ROOT

ROOT = REPO_ROOT
SCRIPTS = os.path.join(ROOT, "scripts")  # the shims: python scripts/<name>.py
CLI = os.path.join(ROOT, "numpy_gpt2", "cli")  # the commands themselves


def script_names() -> list[str]:
    """Every subcommand (numpy_gpt2/cli/<name>.py; not common.py or __init__.py)."""
    from numpy_gpt2.cli import COMMANDS
    return sorted(COMMANDS)


def uses_cli(name: str) -> bool:
    """numpy_gpt2/cli/<name>.py runs on the shared numpy_gpt2/cli/common.py (entry, Parser)."""
    with open(os.path.join(CLI, f"{name}.py"), encoding="utf-8") as f:
        source = f.read()
    return "@common.entry(" in source and "common.Parser(" in source


def load_script(name: str):
    """A fresh copy of the module numpy_gpt2.cli.<name> (its main(argv) -> exit status), so
    that a test's monkeypatches stay with it."""
    spec = importlib.util.spec_from_file_location(f"cli_{name}", os.path.join(CLI, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(name: str, argv, capsys) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of scripts/<name>.py with arguments argv."""
    capsys.readouterr()  # drop earlier output
    try:
        status = load_script(name).main([str(a) for a in argv])
    except SystemExit as e:  # argparse usage errors exit 2
        status = e.code
    out, err = capsys.readouterr()
    return status, out, err


TEXT = ("First Citizen: Before we proceed any further, hear me speak. All: Speak, speak. "
        "First Citizen: You are all resolved rather to die than to famish? All: Resolved. ") * 6
BUDGET_S = 3.0  # an in-process run still going after this gets SIGTERM (exit 143)


class StrPath(str):
    """A str path that joins with / (the scripts' argv are strings)."""

    def __truediv__(self, other):
        return StrPath(os.path.join(self, other))


def make_world(d, tokenizer_dir):
    """In directory d: a tiny checkpoint (GPT-2's vocabulary), a text file, two dumps, and
    hostile places (an empty directory, a read-only one)."""
    import numpy_gpt2

    d = StrPath(d)
    config = numpy_gpt2.GPT2Config(n_layer=1, n_head=1, n_embd=8, n_ctx=128)
    numpy_gpt2.save_checkpoint(d / "ckpt", numpy_gpt2.init_params(config, seed=0), config,
                               tokenizer_dir)
    documents = "<|endoftext|>".join(f"Document {i}. {TEXT[:200]}" for i in range(40))
    for name, text in (("text.txt", TEXT), ("long.txt", TEXT * 8), ("documents.txt", documents)):
        with open(d / name, "w", encoding="utf-8") as f:
            f.write(text)
    for name, extra in (("acts", []), ("grads", ["--grads"])):
        assert in_process("dump", ["--model", d / "ckpt", "--tokens", "5,6,7,8", "--out",
                                   d / f"{name}.safetensors", *extra], d).status == 0
    os.mkdir(d / "empty_dir")
    os.mkdir(d / "readonly_dir", mode=0o555)
    import matplotlib  # noqa: F401  (train.py's plot: imported once, not inside a budget)
    return SimpleNamespace(dir=d, ckpt=d / "ckpt", text=d / "text.txt", long=d / "long.txt",
                           documents=d / "documents.txt",
                           acts=d / "acts.safetensors", grads=d / "grads.safetensors")


class _OverBudget(BaseException):
    pass


def _over_budget(signum, frame):
    raise _OverBudget


def in_process(name, argv, cwd, module=None, budget=BUDGET_S):
    """Run scripts/<name>.py's main (or module's, a load_script(name) the caller patched) in
    this process, in `cwd`; a run longer than `budget` seconds gets SIGTERM (the script must
    handle it: _OverBudget escaping means it did not)."""
    out, err = io.StringIO(), io.StringIO()
    previous = {s: signal.signal(s, h) for s, h in ((signal.SIGTERM, _over_budget),
                                                     (signal.SIGALRM, _send_sigterm))}
    try:
        with contextlib.chdir(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            signal.setitimer(signal.ITIMER_REAL, budget)
            try:
                status = (module or load_script(name)).main([str(a) for a in argv])
            except SystemExit as e:  # --help
                status = e.code
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    return SimpleNamespace(status=status, out=out.getvalue(), err=err.getvalue())


def _send_sigterm(signum, frame):
    os.kill(os.getpid(), signal.SIGTERM)


@pytest.fixture(scope="module")
def cached_tokenizer():
    """Building the tokenizer takes ~1 s: once per path for the module using this fixture
    (the tokenizer's own tests are in test_tokenizer.py)."""
    import numpy_gpt2

    cache, load = {}, numpy_gpt2.load_tokenizer

    def cached(source=None):
        key = str(source)
        if key not in cache:
            cache[key] = load(source)
        return cache[key]
    with mock.patch.object(numpy_gpt2, "load_tokenizer", cached):
        yield


# A command that runs (status 0) for each script (w: make_world's; out: a fresh directory).
BASE = {
    "generate": lambda w, out: ["Hello", "--model", w.ckpt, "--max-new-tokens", "3", "--seed", "1"],
    "perplexity": lambda w, out: ["--model", w.ckpt, w.text],
    "dump": lambda w, out: ["--model", w.ckpt, "--tokens", "5,6,7,8", "--out", out / "d.safetensors"],
    "compare": lambda w, out: [w.acts, w.acts],
    "prepare": lambda w, out: [w.documents, "--out", out / "tokens"],
    "convert": lambda w, out: [w.ckpt, out / "llmc.bin", "--to", "llmc"],
    "explain": lambda w, out: ["Hello, world", "--model", w.ckpt, "--out", out / "walk.html", "--target", " again"],
    "train": lambda w, out: ["--data", w.text, "--out", out / "run", "--n-layer", "1", "--n-head", "1",
                             "--n-embd", "8", "--block-size", "8", "--batch-size", "2",
                             "--max-iters", "2", "--eval-interval", "2", "--eval-iters", "1"],
}


class _ParserFound(BaseException):
    pass


def parser_of(name) -> argparse.ArgumentParser:
    """The script's own parser, caught as it starts to parse."""
    found = []

    def catch(self, args=None, namespace=None):
        found.append(self)
        raise _ParserFound

    from numpy_gpt2.cli import common

    with mock.patch.object(common.Parser, "parse_args", catch), contextlib.suppress(_ParserFound):
        load_script(name).main([])
    assert found, f"{name}.py does not parse its arguments with common.Parser"
    return found[0]


def with_value(argv, action, value, parser):
    """argv with action's value replaced: a flag appended as --flag=value (the last wins; flags
    it excludes, in a mutually exclusive group, dropped), a positional put in its place."""
    argv = [str(a) for a in argv]
    if action.option_strings:
        for group in parser._mutually_exclusive_groups:
            if action in group._group_actions:
                rivals = {f for a in group._group_actions if a is not action for f in a.option_strings}
                while rivals & set(argv):
                    i = argv.index(next(iter(rivals & set(argv))))
                    del argv[i:i + 2]
        return argv + [f"{action.option_strings[-1]}={value}"]
    positionals = [a for a in parser._actions if not a.option_strings and a.nargs != 0]
    slots = [i for i, a in enumerate(argv) if not a.startswith("-")
             and (i == 0 or not argv[i - 1].startswith("--") or "=" in argv[i - 1])]
    argv[slots[positionals.index(action)]] = value
    return argv
