"""Every script in scripts/ under hostile conditions: one line, never a traceback.

The scripts are found by a glob (tests/run_scripts.py) and their flags are read from their own
argparse parsers (_cli.Parser), so a new script or flag is covered without changing this file
(a new script needs only a command that runs in BASE). For each, hypothesis picks:
- in-process (fast): one flag or positional argument replaced by a hostile value: for every
  numeric flag huge, negative, zero, NaN and non-numeric values; for every other text flag
  and positional argument an empty string, a directory, a missing file, a read-only place, a
  binary file and bytes that are not UTF-8. A run that goes on for long gets SIGTERM.
- as processes (only what needs one): stdin closed and /dev/null; stdout a closed pipe;
  SIGINT and SIGTERM at random moments from the script's first line on (during its imports
  and later).
The matrix runs every script that is on the shared helper scripts/_cli.py; each script not on
it is a failure of test_every_script_uses_the_shared_helper.
Each KIND of fault for every command (standard streams closed, full or broken; outputs that
are devices, symlinks, missing directories or a user's files; resources running out in any
library; bursts of signals; integers beyond int64) is in test_scripts_faults.py.
Asserted every time: the exit status is one docs/scripts.md lists for that script; stderr
has no traceback, no "internal error" and (status 2) ends with one `NAME.py: error:` line;
no temporary or partial file is left behind.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

import numpy_gpt2
from helpers.run_scripts import (BASE, SCRIPTS, StrPath, cached_tokenizer, in_process,  # noqa: F401
                                 make_world, parser_of, script_names, uses_cli, with_value)
from helpers import REPO_ROOT
from helpers.hostile import OUTPUTS, STATUSES, _handler_installed, check_run  # noqa: F401

ROOT = REPO_ROOT
NAMES = script_names()
# The scripts that run on the shared helper scripts/_cli.py (its parser, signals, statuses); the
# hostile matrix runs those. A script not on it fails test_every_script_uses_the_shared_helper.
CLI_NAMES = [n for n in NAMES if uses_cli(n)]
NOT_YET = {}  # name -> reason, for a script not yet on _cli (strict xfail: none today)


@pytest.fixture(scope="module")
def world(tmp_path_factory, tokenizer_dir):
    return make_world(tmp_path_factory.mktemp("hostile"), tokenizer_dir)


# A longer command for each script, for the signal tests.
LONG = {
    "generate": lambda w, out: ["Hello", "--model", w.ckpt, "--max-new-tokens", "120"],
    "perplexity": lambda w, out: ["--model", w.ckpt, w.long, "--stride", "8"],
    "dump": lambda w, out: ["--model", w.ckpt, "--tokens", ",".join(["5"] * 100), "--grads",
                            "--out", out / "d.safetensors"],
    "compare": lambda w, out: [w.grads, "live", "--model", w.ckpt],
    "prepare": lambda w, out: [w.documents, w.long, "--out", out / "tokens", "--workers", "1"],
    "convert": lambda w, out: [w.ckpt, out / "hf", "--to", "hf", "--dtype", "bfloat16"],
    "explain": lambda w, out: [" ".join(["Hello, world."] * 30), "--model", w.ckpt, "--out", out / "walk.html",
                               "--target", " And again", "--dtype", "float64"],
    "train": lambda w, out: BASE["train"](w, out)[:-6] + ["--max-iters", "200", "--eval-interval",
                                                          "50", "--eval-iters", "1"],
}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xfail(reason=NOT_YET[n], strict=True))
                                  if n in NOT_YET else n for n in NAMES])
def test_every_script_uses_the_shared_helper(name):
    assert uses_cli(name), f"{name}.py: import _cli first, parse with _cli.Parser, wrap main in _cli.entry"


def test_every_script_has_commands_and_documented_statuses():
    assert NAMES and set(NAMES) <= set(BASE) and set(NAMES) <= set(LONG), \
        f"add commands for {sorted(set(NAMES) - set(BASE) - set(LONG))} to BASE and LONG"
    assert set(NAMES) <= set(STATUSES), "list every script's exit statuses in docs/scripts.md"


# ---- the checks every run must pass --------------------------------------------------------

# ---- in-process runs ------------------------------------------------------------------------

def numeric_values(kind):
    """Hostile values for an int or float flag, as the strings a user types."""
    huge = st.one_of(st.integers(10**15, 10**30).map(str),
                     st.sampled_from(["1e308", "inf", "9" * 40, "-inf"]))
    negative = st.one_of(st.integers(-10**30, -1).map(str),
                         st.floats(-1e30, -1e-9).map(repr))
    zero = st.sampled_from(["0", "0.0", "-0", "0e0"])
    nan = st.sampled_from(["nan", "NaN", "-nan"])
    non_numeric = st.sampled_from(["abc", "", " ", "1,5", "0x10", "1e", "½", "--"])
    return st.one_of(huge, negative, zero, nan, non_numeric)


def text_values(w):
    """Hostile values for a path or text argument."""
    return st.sampled_from(["", str(w.dir / "empty_dir"), str(w.dir / "missing" / "nothing"),
                            str(w.dir / "readonly_dir" / "x"), "/proc/numpy_gpt2_readonly/x",
                            str(w.acts), "\udcff\udcfe not UTF-8", "-"])


def hostile_arguments(parser, w):
    """(description, argv transform) strategy: one flag or positional given a hostile value."""
    choices = []
    for action in parser._actions:
        if action.nargs == 0 or action.choices or action.help == argparse.SUPPRESS:
            continue  # switches; choices are argparse's own check
        if action.type in (int, float):
            values = numeric_values(action.type)
        elif action.type is None:
            values = text_values(w)
        else:
            continue
        choices.append(st.tuples(st.just(action), values))
    return st.one_of(choices)


@pytest.mark.parametrize("name", CLI_NAMES)
@settings(max_examples=25)
@given(data=st.data())
def test_hostile_arguments_in_process(name, data, world, cached_tokenizer):
    parser = parser_of(name)
    action, value = data.draw(hostile_arguments(parser, world), label="flag, value")
    with tempfile.TemporaryDirectory(dir=world.dir) as out:
        argv = with_value(BASE[name](world, StrPath(out)), action, value, parser)
        run = in_process(name, argv, out)
        check_run(name, run.status, run.err, out, f"{name}.py {argv}")


def test_base_commands_run(world, cached_tokenizer, tmp_path):
    """The commands the hostile values go into work as they are (else the test proves little)."""
    for name in NAMES:
        out = tmp_path / name
        out.mkdir()
        run = in_process(name, BASE[name](world, out), out, budget=120)
        assert run.status == 0, (name, run.err)


# ---- as processes: stdin, stdout, signals ---------------------------------------------------

def start(name, argv, cwd, **popen):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.Popen([sys.executable, os.path.join(SCRIPTS, f"{name}.py"), *map(str, argv)],
                            cwd=cwd, env=dict(env, OMP_NUM_THREADS="1"), stderr=subprocess.PIPE,
                            **popen)


def finish(proc, timeout=120):
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err.decode(errors="replace")


def test_stdin_closed_or_empty_and_stdout_a_closed_pipe(world, tmp_path):
    """All at once (in parallel): each script with stdin closed (`<&-`), stdin /dev/null, and
    stdout a pipe whose reader is gone."""
    runs = []
    for name in CLI_NAMES:
        for case in ("stdin closed", "stdin /dev/null", "stdout closed pipe"):
            out = tmp_path / f"{name}-{case.replace(' ', '-').replace('/', '')}"
            out.mkdir()
            argv = [str(a) for a in BASE[name](world, out)]
            if name == "generate" and case.startswith("stdin"):
                argv = argv[1:]  # the prompt from stdin
            if case == "stdin closed":
                proc = subprocess.Popen(
                    ["sh", "-c", 'exec "$@" <&-', "sh", sys.executable,
                     os.path.join(SCRIPTS, f"{name}.py"), *argv], cwd=out,
                    env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE)
            elif case == "stdin /dev/null":
                proc = start(name, argv, out, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
            else:
                read, write = os.pipe()
                os.close(read)
                proc = start(name, argv, out, stdin=subprocess.DEVNULL, stdout=write)
                os.close(write)
            runs.append((name, case, out, proc))
    for name, case, out, proc in runs:
        status, err = finish(proc)
        check_run(name, status, err, out, f"{name}.py, {case}")
        if case == "stdout closed pipe":
            assert status in (0, 1) and err.count("error") == 0, (name, err)
        elif name == "generate" and case == "stdin closed":
            assert status == 2 and "stdin is closed" in err, err
        else:
            assert status == 0, (name, case, err)


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads /proc/PID/status")
@settings(max_examples=2, phases=[Phase.explicit, Phase.reuse, Phase.generate])  # no shrinking:
@given(moments=st.lists(st.tuples(st.sampled_from([signal.SIGINT, signal.SIGTERM, signal.SIGHUP]),
                                  st.one_of(st.floats(0, 0.3), st.floats(0.3, 3.0))),
                        min_size=len(CLI_NAMES), max_size=len(CLI_NAMES)))
def test_signals_at_random_moments(world, moments):
    """Each script (in parallel) gets SIGINT, SIGTERM or SIGHUP at a random moment after its
    first line ran: in its first 0.3 s (imports) or later (loading, working, writing)."""
    runs = []
    with tempfile.TemporaryDirectory(dir=world.dir) as tmp:
        for name, (signum, delay) in zip(CLI_NAMES, moments):
            out = StrPath(tmp) / name
            os.mkdir(out)
            proc = start(name, LONG[name](world, out), out, stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL)
            runs.append((name, signum, delay, out, proc, [None]))
        deadline = time.monotonic() + 60
        pending = list(runs)
        while pending and time.monotonic() < deadline:  # install time, then the delay
            for run in list(pending):
                name, signum, delay, out, proc, due = run
                if due[0] is None and _handler_installed(proc.pid):
                    due[0] = time.monotonic() + delay
                if proc.poll() is not None:
                    pending.remove(run)
                elif due[0] is not None and time.monotonic() >= due[0]:
                    proc.send_signal(signum)
                    pending.remove(run)
            time.sleep(0.002)
        for name, signum, delay, out, proc, due in runs:
            status, err = finish(proc)
            what = f"{name}.py, {signal.Signals(signum).name} {delay:.3f} s after its first line"
            assert due[0] is not None, f"{what}: never installed its handler (import _cli first)"
            check_run(name, status, err, out, what)
            assert status in (0, 128 + signum), f"{what}: exit {status}\n{err}"
