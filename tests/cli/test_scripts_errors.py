"""The scripts' one-line errors, case by case (the hostile matrix is test_scripts_hostile.py):
the UTF-8 rule for every text argument of every script, stdin, and text files; perplexity
above 709.78 nats; token ids beyond int64; a batch too large for memory; --seed -1;
compare --names that match nothing; dump files' permissions and an interrupted dump; Ctrl-C
in perplexity.py; the exit statuses of scripts/_cli.py.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import signal
import stat
from unittest import mock

import numpy as np
import pytest

import numpy_gpt2
from helpers.run_scripts import (BASE, StrPath, cached_tokenizer, in_process, load_script,  # noqa: F401
                                 make_world, parser_of, script_names, uses_cli,
                                 with_value)

from numpy_gpt2.cli import common as _cli, stopping  # noqa: E402


@pytest.fixture(scope="module")
def world(tmp_path_factory, tokenizer_dir):
    return make_world(tmp_path_factory.mktemp("errors"), tokenizer_dir)


def one_error_line(run, name):
    lines = [ln for ln in run.err.splitlines() if ln.strip()]
    assert "Traceback" not in run.err and lines, run.err
    assert lines[-1].startswith(f"{name}.py: error: "), run.err
    return lines[-1]


# ---- one rule for bytes that are not UTF-8 ---------------------------------------------------

NOT_UTF8 = "caf\udce9"  # what Python makes of the argument bytes b"caf\xe9" (surrogateescape)


@pytest.mark.parametrize("name", [n for n in script_names() if uses_cli(n)])
def test_every_text_argument_of_every_script_must_be_utf8(name, world, tmp_path):
    """Each argument that takes text (flags and positionals, found in the script's parser) gets
    bytes that are not UTF-8: status 2, one line naming that argument and the byte."""
    parser = parser_of(name)
    text_actions = [a for a in parser._actions if a.nargs != 0 and a.type is None and not a.choices
                    and a.help != argparse.SUPPRESS]
    assert text_actions
    for action in text_actions:
        argv = with_value(BASE[name](world, StrPath(tmp_path)), action, NOT_UTF8, parser)
        run = in_process(name, argv, tmp_path)
        line = one_error_line(run, name)
        assert run.status == 2, (action.dest, run.err)
        flag = "/".join(action.option_strings) or action.dest
        assert line == (f"{name}.py: error: argument {flag}: not UTF-8 (byte 0xe9 at offset 3); "
                        f"the scripts take UTF-8 text and paths only"), line


def test_a_prompt_on_stdin_must_be_utf8(world, tmp_path, cached_tokenizer):
    stdin = io.TextIOWrapper(io.BytesIO(b"caf\xe9 au lait\n"))
    with mock.patch("sys.stdin", stdin):
        run = in_process("generate", ["--model", world.ckpt, "--max-new-tokens", "1"], tmp_path)
    assert run.status == 2
    assert one_error_line(run, "generate") == (
        "generate.py: error: the prompt on stdin: not UTF-8 text (invalid continuation byte: "
        "byte 0xe9 at offset 3); the scripts read UTF-8 only")


def test_stdin_closed_is_one_line(world, tmp_path):
    with mock.patch("sys.stdin", None):  # what Python makes of a closed fd 0
        run = in_process("generate", ["--model", world.ckpt], tmp_path)
    assert run.status == 2 and "stdin is closed" in one_error_line(run, "generate")


@pytest.mark.parametrize("name, argv", [
    ("perplexity", ["--model", "{ckpt}", "{file}"]),
    ("train", ["--data", "{file}", "--out", "{tmp}/run"]),
])
def test_text_files_must_be_utf8(name, argv, world, tmp_path, cached_tokenizer):
    path = tmp_path / "latin1.txt"
    path.write_bytes(("x" * 200 + "caf").encode() + b"\xe9 au lait\n")
    argv = [a.format(ckpt=world.ckpt, file=path, tmp=tmp_path) for a in argv]
    run = in_process(name, argv, tmp_path)
    assert run.status == 2
    line = one_error_line(run, name)
    assert f"{path}: not UTF-8 text" in line and "203" in line, line


def test_dump_blames_a_non_utf8_prompt_not_the_output_file(world, tmp_path):
    run = in_process("dump", ["--model", world.ckpt, "--prompt", NOT_UTF8, "--out",
                              tmp_path / "d.safetensors"], tmp_path)
    assert run.status == 2
    line = one_error_line(run, "dump")
    assert "argument --prompt: not UTF-8" in line and "d.safetensors" not in line
    assert os.listdir(tmp_path) == []


# ---- numbers out of range --------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_perplexity_above_709_nats_is_inf_not_an_overflow(dtype, tokenizer_dir, tmp_path,
                                                          cached_tokenizer):
    """A model so sure of the wrong tokens that exp(cross-entropy) exceeds the largest float:
    the cross-entropy is printed, the perplexity is inf (math.exp would raise OverflowError)."""
    config = numpy_gpt2.GPT2Config(n_layer=1, n_head=1, n_embd=8, n_ctx=64)
    params = numpy_gpt2.init_params(config, seed=0)
    params["ln_f"]["weight"] = params["ln_f"]["weight"] * np.float32(1e5)  # logits ~ 1e4
    numpy_gpt2.save_checkpoint(tmp_path / "ckpt", params, config, tokenizer_dir)
    (tmp_path / "t.txt").write_text("The tower is 324 metres tall, about as tall as a building.")
    run = in_process("perplexity", ["--model", tmp_path / "ckpt", tmp_path / "t.txt",
                                    "--dtype", dtype], tmp_path)
    assert run.status == 0, run.err
    ce = float(run.out.split("cross-entropy: ")[1].split()[0])
    assert ce > math.log(np.finfo(np.float64).max) and "perplexity: inf\n" in run.out, run.out
    p, c = numpy_gpt2.load(tmp_path / "ckpt")
    tokens = numpy_gpt2.load_tokenizer(tmp_path / "ckpt").encode("The tower is 324 metres tall")
    assert numpy_gpt2.perplexity(p, c, tokens)["perplexity"] == math.inf


@pytest.mark.parametrize("ids", ["99999999999999999999999", "5,-99999999999999999999999",
                                 str(2**63), "1," + "9" * 4000])
def test_dump_token_ids_beyond_int64_are_named(ids, world, tmp_path):
    run = in_process("dump", ["--model", world.ckpt, "--tokens", ids, "--out",
                              tmp_path / "d.safetensors"], tmp_path)
    assert run.status == 2
    line = one_error_line(run, "dump")
    assert "--tokens" in line and "not a token id" in line, line
    assert os.listdir(tmp_path) == []


def test_a_batch_too_large_for_memory_is_refused_with_what_it_needs(world, tmp_path, monkeypatch):
    from numpy_gpt2.cli import generate_common
    generate = load_script("generate")
    # the same answer on every machine (check_memory lives in generate_common)
    monkeypatch.setattr(generate_common, "available_memory", lambda: 8 * 2**30)
    run = in_process("generate", ["Hello", "--model", world.ckpt, "--num-samples", "200000"],
                     tmp_path, module=generate)
    assert run.status == 2
    line = one_error_line(run, "generate")
    assert line.startswith("generate.py: error: --num-samples 200000 as one batch needs about ")
    needed = float(line.split("needs about ")[1].split()[0])
    fit = int(line.split("at most ")[1].split()[0])
    assert needed > 8 and 0 < fit < 200000, line
    # The estimate errs on the safe side of what generating `fit` samples really takes:
    # logits and probabilities alone are 2 x 4 bytes x vocabulary per sample.
    assert needed * 2**30 / 200000 >= 8 * 50257, line
    run = in_process("generate", ["Hello", "--model", world.ckpt, "--num-samples", "2",
                                  "--max-new-tokens", "2"], tmp_path, module=generate)
    assert run.status == 0, run.err


def test_a_negative_seed_names_the_flag(world, tmp_path):
    run = in_process("generate", ["Hello", "--model", world.ckpt, "--seed=-1"], tmp_path)
    assert run.status == 2
    line = one_error_line(run, "generate")
    assert line.startswith("generate.py: error: --seed must be ") and line.endswith("got -1"), line


# ---- compare.py --names ----------------------------------------------------------------------

def test_compare_names_that_match_nothing_list_the_names_there_are(world, tmp_path):
    run = in_process("compare", [world.acts, world.acts, "--names", "nosuch"], tmp_path)
    assert run.status == 2
    line = one_error_line(run, "compare")
    assert "--names 'nosuch' matches none of the" in line and str(world.acts) in line
    assert "h.0.ln_1" in line and "logits" in line, line


# ---- dump files: permissions, nothing partial ------------------------------------------------

@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_dump_files_get_the_usual_permissions(umask, world, tmp_path):
    old = os.umask(umask)
    try:
        run = in_process("dump", ["--model", world.ckpt, "--tokens", "1,2", "--out",
                                  tmp_path / "d.safetensors"], tmp_path)
    finally:
        os.umask(old)
    assert run.status == 0, run.err
    assert stat.S_IMODE(os.stat(tmp_path / "d.safetensors").st_mode) == 0o666 & ~umask
    assert os.listdir(tmp_path) == ["d.safetensors"]


@pytest.mark.parametrize("stop, status", [(KeyboardInterrupt, 130), (stopping.Terminated, 143),
                                          (OSError(28, "No space left on device"), 1)])
def test_an_interrupted_or_failed_dump_leaves_no_file(stop, status, world, tmp_path):
    """The writer is stopped after writing part of its file: no dump, no temporary file, the
    status of the stop and one line."""
    from safetensors.numpy import save_file

    def half_then_stop(tensors, path, metadata=None):
        save_file(tensors, path, metadata=metadata)
        with open(path, "r+b") as f:
            f.truncate(100)
        raise stop

    with mock.patch("safetensors.numpy.save_file", half_then_stop):
        run = in_process("dump", ["--model", world.ckpt, "--tokens", "1,2", "--out",
                                  tmp_path / "d.safetensors"], tmp_path)
    assert run.status == status, run.err
    assert os.listdir(tmp_path) == []
    lines = [ln for ln in run.err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in run.err, run.err
    if status == 1:  # a resource, named with the file (docs/scripts.md)
        assert lines[0].endswith("d.safetensors: out of disk space"), lines[0]
        assert ".tmp" not in lines[0]


def test_ctrl_c_in_perplexity_is_one_line_and_130(world, tmp_path, cached_tokenizer):
    def interrupted(*args, progress=None, **kwargs):
        progress(10, 100)  # the bar is drawn, then Ctrl-C
        raise KeyboardInterrupt

    with mock.patch.object(numpy_gpt2, "perplexity", interrupted):
        run = in_process("perplexity", ["--model", world.ckpt, world.text], tmp_path)
    assert run.status == 130 and run.out == ""
    shown = [ln.rsplit("\r", 1)[-1] for ln in run.err.split("\n")]
    assert [ln for ln in shown if ln.strip()] == ["perplexity.py: interrupted (Ctrl-C)"], run.err


# ---- numpy_gpt2/cli/common.py: how a run ends --------------------------------------------------------

@pytest.mark.parametrize("raised, status, line", [
    (None, 0, None),
    (_cli.UsageError("bad\n  input"), 2, "x.py: error: bad input"),
    (KeyboardInterrupt(), 130, "x.py: interrupted (Ctrl-C)"),
    (stopping.Terminated(), 143, "x.py: terminated (SIGTERM)"),
    (MemoryError(), 1, "x.py: error: out of memory; try a smaller model, input or batch"),
    (BrokenPipeError(), 1, None),
    (_cli.OutputError("cannot write to standard output (out of disk space)"), 1,
     "x.py: error: cannot write to standard output (out of disk space)"),
    (OSError(28, "No space left on device", "f.bin"), 1, "x.py: error: f.bin: out of disk space"),
    (RuntimeError("can't start new thread"), 1,
     "x.py: error: out of memory or threads (cannot start a thread)"),
    (ZeroDivisionError("x"), 1, "x.py: internal error: ZeroDivisionError: x (a bug in numpy_gpt2: "
                                "please report it with the command; NUMPY_GPT2_TRACEBACK=1 shows "
                                "the traceback)"),
])
def test_entry_turns_every_ending_into_a_status_and_at_most_one_line(raised, status, line, capsys):
    @_cli.entry("x")
    def main(argv=None):
        if raised is not None:
            raise raised
        return 0

    assert main([]) == status
    out, err = capsys.readouterr()
    assert out == "" and [ln for ln in err.splitlines() if ln] == ([line] if line else [])


def test_the_traceback_of_a_bug_on_request(monkeypatch):
    monkeypatch.setenv(_cli.TRACEBACK_ENV, "1")

    @_cli.entry("x")
    def main(argv=None):
        raise ZeroDivisionError("x")

    with pytest.raises(ZeroDivisionError):
        main([])


# ---- the hub's advice names the flag the user typed -----------------------------------------

@pytest.mark.parametrize("name, argv, flag", [
    ("generate", ["--model", "{hub}", "Hi"], "--model PATH"),
    ("perplexity", ["--model", "{hub}", "{text}"], "--model PATH"),
    ("dump", ["--model", "{hub}", "--prompt", "Hi", "--out", "{out}/a.safetensors"], "--model PATH"),
    ("explain", ["Hi", "--model", "{hub}", "--out", "{out}/walk.html"], "--model PATH"),
    ("convert", ["{hub}", "{out}/hf", "--to", "hf"], "instead: PATH,"),
    ("train", ["--init", "{hub}", "--data", "{text}", "--out", "{out}/run",
               "--max-iters", "1"], "--init PATH"),
])
def test_a_model_not_found_offline_names_the_flag_that_gave_it(name, argv, flag, world, tmp_path,
                                                             monkeypatch, capsys):
    from helpers.run_scripts import run_script
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    hub = "someone/not-a-cached-gpt2"
    argv = [a.format(hub=hub, text=world.text, out=tmp_path) for a in argv]
    status, out, err = run_script(name, argv, capsys)
    assert status == 2 and "Traceback" not in err, err
    assert err.count("\n") == 1 and f"{hub}: not a local path" in err, err
    assert flag in err and "model=PATH" not in err, err


# ---- once a signal has stopped a command, the rest of a burst is ignored ---------------------

@pytest.mark.parametrize("deferred", [False, True])
def test_signals_after_the_one_that_stops_are_ignored_while_unwinding(deferred):
    signals = stopping.StopSignals(stopping.STOP_SIGNALS)
    announced = []
    try:
        if deferred:  # train: the first is recorded and announced, the second stops at once
            signals.defer(announced.append)
            signals.handle(signal.SIGINT, None)
            assert signals.received == signal.SIGINT and announced == [signal.SIGINT]
        cleaned = []
        with pytest.raises(KeyboardInterrupt):
            try:
                signals.handle(signal.SIGINT, None)  # the one that stops
            finally:  # the unwinding (remove a new --out, a staging directory), not cut short
                signals.handle(signal.SIGTERM, None)
                signals.handle(signal.SIGINT, None)
                cleaned.append(True)
        assert cleaned == [True]
        with signals.held():  # (held blocks during the unwinding raise nothing either)
            signals.handle(signal.SIGTERM, None)
    finally:
        signals.restore()


def test_a_held_block_raises_its_signal_once_at_its_end():
    signals = stopping.StopSignals(stopping.STOP_SIGNALS)
    try:
        with pytest.raises(stopping.Terminated):
            with signals.held():
                signals.handle(signal.SIGTERM, None)
                signals.handle(signal.SIGINT, None)  # a burst inside: recorded, not raised
        signals.handle(signal.SIGINT, None)  # after that: stopping, ignored
    finally:
        signals.restore()


@pytest.mark.parametrize("argv, line", [
    (["--prompt", "word " * 200], "dump.py: error: --prompt: sequence of 201 positions is longer than the context (n_ctx=128)"),
    (["--tokens=-1"], "dump.py: error: --tokens: token id -1 at index (0,) is outside [0, 50257) (vocab_size)"),
    (["--tokens", "5,6", "--grads", "--targets=-7,5"], "dump.py: error: --targets: target id -7 at index (0,) is outside"),
])
def test_dump_names_the_flag_that_gave_the_ids(argv, line, world, tmp_path):
    from helpers.run_scripts import in_process
    r = in_process("dump", ["--model", world.ckpt, "--out", tmp_path / "d.safetensors", *argv], tmp_path)
    assert r.status == 2 and r.err.count("\n") == 1 and r.err.startswith(line), r.err
