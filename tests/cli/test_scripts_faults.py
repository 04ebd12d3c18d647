"""Every command under each KIND of fault, as processes (docs/scripts.md, "Exit statuses"):
standard output closed, full (/dev/full) or a pipe whose reader has gone; standard error
closed or full; outputs that are devices, FIFOs, sockets, symlinks, missing directories, a
user's files, or inside the input; resource errors (a full filesystem, RLIMIT_AS) from any
library; bursts of signals during start-up; integer flags beyond int64.
Commands come from run_scripts.BASE (one per command), so a new command is covered by adding
it there. Asserted every time: a documented status, no traceback or "internal error", and the
one-line message of the kind.
"""

from __future__ import annotations

import errno
import os
import random
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from unittest import mock

import pytest

from helpers.run_scripts import (BASE, SCRIPTS, StrPath, cached_tokenizer, in_process,  # noqa: F401
                                 make_world, script_names)
from helpers.hostile import STATUSES, _handler_installed, check_run

from numpy_gpt2.cli.starting import MEMORY_FLOOR_MB

NAMES = script_names()
# The command's file or directory outputs: flag or positional index in BASE's argv.
OUTPUTS = {"dump": "--out", "convert": 1, "prepare": "--out", "train": "--out"}


@pytest.fixture(scope="module")
def world(tmp_path_factory, tokenizer_dir):
    return make_world(tmp_path_factory.mktemp("faults"), tokenizer_dir)


def command(name, world, out, **replace):
    argv = [str(a) for a in BASE[name](world, StrPath(out))]
    if name == "prepare":  # enough documents for both splits
        argv[0] = str(world.documents)
    return argv


def start(name, argv, cwd, shell_redirect="", env=None, preexec_fn=None):
    """`python scripts/NAME.py ARGV REDIRECTS` started in a shell (stderr: a pipe unless
    redirected)."""
    script = os.path.join(SCRIPTS, f"{name}.py")
    return subprocess.Popen(["sh", "-c", f'"$@" {shell_redirect}', "sh", sys.executable, script, *argv],
                            cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
                            stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=preexec_fn,
                            stdout=None if ">" in shell_redirect else subprocess.DEVNULL)


def finish(proc, timeout=180):
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err.decode(errors="replace")


def run(name, argv, cwd, shell_redirect="", env=None, preexec_fn=None):
    """(status, stderr) of `python scripts/NAME.py ARGV REDIRECTS` in a shell."""
    return finish(start(name, argv, cwd, shell_redirect, env, preexec_fn))


# ---- 1. standard streams -------------------------------------------------------------------

STREAMS = {"stdout closed": ">&-", "stdout full": "> /dev/full"}  # case -> shell redirection


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("case", list(STREAMS))
def test_closed_or_full_streams(case, world, tmp_path):
    """stdout closed or full: status 1 and one line saying so (never 'internal error'); a file
    output is complete and the line says so."""
    procs = []
    for name in NAMES:  # all at once
        out = tmp_path / name
        out.mkdir()
        procs.append((name, out, start(name, command(name, world, out), out, STREAMS[case])))
    for name, out, proc in procs:
        status, err = finish(proc)
        check_run(name, status, err, out, f"{name}.py, {case}")
        if name == "train":  # the run is its output; its stdout lines are in metrics.jsonl
            assert status == 0, (name, err)
        else:
            lines = [ln.rsplit("\r", 1)[-1] for ln in err.splitlines()]
            last = [ln for ln in lines if ln.strip()][-1]
            reason = "it is closed" if "closed" in case else "out of disk space"
            assert status == 1 and last.startswith(
                f"{name}.py: error: cannot write to standard output ({reason})"), (name, err)
            if name in OUTPUTS:
                assert "was written (complete)" in last, last


class _Full:
    """A stream on a full disk."""
    def write(self, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def flush(self):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("stderr", [None, _Full()], ids=["stderr closed", "stderr full"])
def test_closed_or_full_stderr_never_stops_a_command(stderr, world, tmp_path, cached_tokenizer):
    """(In-process: sys.stderr None is what Python makes of a closed descriptor 2.) Every
    command, progress bars and all, runs to status 0."""
    for name in NAMES:
        out = tmp_path / name
        out.mkdir()
        with mock.patch("sys.stderr", stderr), mock.patch("contextlib.redirect_stderr"):
            r = in_process(name, command(name, world, out), out, budget=120)
        assert r.status == 0, (name, r.out)


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_a_pipe_whose_reader_exits_mid_run(stream, world, tmp_path):
    """stdout `| head -c 1`: quiet, status 0 or 1 (head may win the race). stderr into such a
    pipe: the command goes on and ends as it would (0)."""
    redirect = "| head -c 1 >/dev/null" if stream == "stdout" else "2>&1 >/dev/null | head -c 1 >/dev/null"
    procs = []
    for name in NAMES:
        out = tmp_path / name
        out.mkdir()
        script = os.path.join(SCRIPTS, f"{name}.py")
        shell = f'"$@" 2>"{out}/err" {redirect}' if stream == "stdout" else f'"$@" {redirect}'
        procs.append((name, out, subprocess.Popen(
            ["bash", "-c", shell + "; exit ${PIPESTATUS[0]}", "bash", sys.executable, script,
             *command(name, world, out)], cwd=out, stdin=subprocess.DEVNULL,
            env=dict(os.environ, OMP_NUM_THREADS="1"))))
    for name, out, proc in procs:
        status = proc.wait(timeout=180)
        if stream == "stdout":
            with open(out / "err", encoding="utf-8", errors="replace") as f:
                err = f.read()
            assert status in (0, 1), (name, status, err)
            assert "Traceback" not in err and "error" not in err, (name, err)
        else:
            assert status == 0, (name, status)


# ---- 2. where outputs go -------------------------------------------------------------------

def with_output(name, argv, path):
    where = OUTPUTS[name]
    argv = list(argv)
    if isinstance(where, int):
        slots = [i for i, a in enumerate(argv) if not a.startswith("-")
                 and (i == 0 or not argv[i - 1].startswith("--"))]
        argv[slots[where]] = str(path)
    else:
        argv[argv.index(where) + 1] = str(path)
    return argv


def special_files(d):
    """{kind: path} of a FIFO, a socket and (as root) a character device, made in d."""
    made = {}
    os.mkfifo(d / "fifo")
    made["FIFO"] = d / "fifo"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(d / "sock"))
    made["socket"] = d / "sock"
    if os.geteuid() == 0:  # a copy of /dev/null (never the real device: a bug would replace it)
        os.mknod(d / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        made["character device"] = d / "null"
    return made, sock


@pytest.mark.parametrize("name", sorted(OUTPUTS))
def test_devices_fifos_and_sockets_are_never_replaced(name, world, tmp_path, cached_tokenizer):
    made, sock = special_files(tmp_path)
    try:
        for kind, path in made.items():
            before = os.stat(path)
            for target in (path, tmp_path / f"link-to-{path.name}"):
                if target != path:
                    os.symlink(path, target)
                argv = with_output(name, command(name, world, tmp_path), target)
                r = in_process(name, argv, tmp_path, budget=60)
                check_run(name, r.status, r.err, tmp_path, f"{name} --out {kind}")
                assert r.status == 2, (name, kind, r.err)
                after = os.stat(path)
                assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino), (name, kind)
    finally:
        sock.close()


@pytest.mark.parametrize("name", ["dump", "convert"])
def test_a_symlinked_output_file_writes_its_target(name, world, tmp_path, cached_tokenizer):
    target, link = tmp_path / "target", tmp_path / "link"
    os.symlink(target, link)
    argv = with_output(name, command(name, world, tmp_path), link)
    r = in_process(name, argv, tmp_path, budget=60)
    assert r.status == 0, r.err
    assert os.path.islink(link) and os.path.isfile(target) and os.path.getsize(target) > 0


@pytest.mark.parametrize("name", sorted(OUTPUTS))
def test_missing_parents_are_created_and_removed_when_the_command_fails(name, world, tmp_path,
                                                                          cached_tokenizer):
    deep = tmp_path / "a" / "b" / ("run" if name in ("train", "prepare", "convert") else "d.st")
    argv = with_output(name, command(name, world, tmp_path), deep)
    if name == "convert":
        argv = [a if a != "llmc" else "hf" for a in argv]
    r = in_process(name, argv, tmp_path, budget=120)
    assert r.status == 0 and os.path.exists(deep), (name, r.err)
    # the same command failing while it writes (a full disk): no new directory is left
    failing = tmp_path / "x" / "y" / deep.name

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    with mock.patch("numpy_gpt2.io.atomic._fsync_file", full), \
            mock.patch("numpy_gpt2.io.token_files.write_tokens", full), \
            mock.patch("numpy_gpt2.training.data.write_tokens", full):  # (prepare writes through it)
        r = in_process(name, with_output(name, argv, failing), tmp_path, budget=120)
    assert r.status == 1 and "out of disk space" in r.err, (name, r.err)
    assert not os.path.exists(tmp_path / "x"), (name, os.listdir(tmp_path / "x"))


def test_no_command_replaces_a_file_it_did_not_write(world, tmp_path, cached_tokenizer):
    """convert --to hf into a directory with a user's config.json; prepare into one with a
    user's train.bin: refused, the files untouched. prepare's own output is replaced."""
    for name, argv_out, own in (("convert", "hf", "config.json"), ("prepare", "prep", "train.bin")):
        d = tmp_path / argv_out
        d.mkdir()
        (d / own).write_text("mine")
        argv = with_output(name, command(name, world, tmp_path), d)
        if name == "convert":
            argv = [a if a != "llmc" else "hf" for a in argv]
        r = in_process(name, argv, tmp_path, budget=60)
        assert r.status == 2 and "did not write" in r.err, (name, r.err)
        assert (d / own).read_text() == "mine"
    os.remove(tmp_path / "prep" / "train.bin")
    argv = with_output("prepare", command("prepare", world, tmp_path), tmp_path / "prep")
    assert in_process("prepare", argv, tmp_path, budget=60).status == 0
    assert in_process("prepare", argv, tmp_path, budget=60).status == 0  # its own: replaced


def test_prepare_refuses_an_output_inside_its_input(world, tmp_path, cached_tokenizer):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.txt").write_text(open(world.documents).read())
    r = in_process("prepare", [tmp_path / "corpus", "--out", tmp_path / "corpus" / "tokens"], tmp_path)
    assert r.status == 2 and "inside the input" in r.err, r.err
    assert os.listdir(tmp_path / "corpus") == ["a.txt"]


# ---- 3. resources --------------------------------------------------------------------------

def test_a_full_disk_inside_the_safetensors_library_names_the_file(world, tmp_path):
    """The safetensors library reports ENOSPC as SafetensorError (not an OSError)."""
    from safetensors import SafetensorError

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    out = tmp_path / "d.safetensors"
    with mock.patch("safetensors.numpy.save_file", full):
        r = in_process("dump", ["--model", world.ckpt, "--tokens", "5,6", "--out", out], tmp_path)
    assert r.status == 1, r.err
    assert r.err.strip().splitlines()[-1] == f"dump.py: error: {out}: out of disk space", r.err
    assert os.listdir(tmp_path) == []


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 4 kB tmpfs (root only), unmounted after the test."""
    d = tmp_path / "tmpfs"
    d.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs",
                                             str(d)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield StrPath(d)
    subprocess.run(["umount", str(d)], check=False)


def test_every_output_on_a_full_filesystem(world, small_tmpfs, tmp_path):
    """Each command writing into a full filesystem: status 1, one line naming the file and
    'out of disk space', nothing left there (no empty directory either)."""
    for name in sorted(OUTPUTS):
        target = small_tmpfs / "new" / ("out" if name != "dump" else "d.st")
        argv = with_output(name, command(name, world, tmp_path), target)
        if name == "convert":
            argv = [a if a != "llmc" else "hf" for a in argv]
        if name == "prepare":  # more than a page of tokens
            argv = [str(world.long)] * 3 + argv
        status, err = run(name, argv, tmp_path)
        check_run(name, status, err, small_tmpfs, f"{name} on a full disk")
        assert status == 1 and "out of disk space" in err and "internal error" not in err, (name, err)
        if name != "train":  # (train's run directory: its own rules, see docs/runs.md)
            assert os.listdir(small_tmpfs) == [], (name, os.listdir(small_tmpfs))
        subprocess.run(["rm", "-rf", *[os.path.join(small_tmpfs, f) for f in os.listdir(small_tmpfs)]])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS as Linux counts it")
@pytest.mark.parametrize("megabytes", [40, 100, 127, 130, 150, 170, 200, 260])
def test_little_memory_is_one_line_from_the_first_import_on(megabytes, world, tmp_path):
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (megabytes << 20, megabytes << 20))
    for name in ("convert", "generate", "dump"):
        out = tmp_path / f"{name}{megabytes}"
        out.mkdir()
        status, err = run(name, command(name, world, out), out, preexec_fn=limit,
                          env={"OMP_NUM_THREADS": ""})  # (OpenBLAS's own thread count)
        if status == 0:
            continue  # enough after all
        assert "Traceback" not in err and "internal error" not in err, (name, megabytes, err)
        # (when OpenBLAS ends the process itself, after its own line, ours follows)
        last = [ln.rsplit("\r", 1)[-1] for ln in err.splitlines() if ln.strip()][-1]
        assert status == 1 and last.startswith(f"{name}.py: error: out of memory"), (name, megabytes, err)
        if megabytes < MEMORY_FLOOR_MB:  # refused before loading anything: exactly one line
            assert err == (f"{name}.py: error: out of memory while starting: a memory limit of "
                           f"{megabytes} MB (ulimit -v) is below the {MEMORY_FLOOR_MB} MB that "
                           f"loading NumPy, OpenBLAS and numpy_gpt2 takes\n"), err


@pytest.mark.parametrize("limit_mb, cpus, expected", [
    (None, 2, 2), (None, 8, 8), (160, 2, 1), (299, 2, 1), (300, 2, 1), (400, 2, 2), (400, 8, 2), (500, 8, 3),
    (10_000, 8, 8)])
def test_the_pool_has_no_more_threads_than_fit_under_a_memory_limit(limit_mb, cpus, expected,
                                                                      monkeypatch):
    # each thread that calls OpenBLAS maps its own buffer: a second one that does not fit
    # crashed OpenBLAS's sgemm kernel (SIGSEGV) at 160-280 MB before the pool followed the limit
    import resource

    from numpy_gpt2.fast import threads
    monkeypatch.delenv(threads.THREADS_ENV, raising=False)
    monkeypatch.setattr(threads, "cpu_count", lambda: cpus)
    infinity = resource.RLIM_INFINITY
    monkeypatch.setattr(resource, "getrlimit", lambda which: (
        infinity if limit_mb is None else limit_mb << 20, infinity))
    assert threads.thread_count() == expected
    monkeypatch.setenv(threads.THREADS_ENV, "5")  # asked for: as asked
    assert threads.thread_count() == 5


IMPORT_SENDS_SIGINT = """
import importlib, os, signal, subprocess, sys
real = importlib.import_module
def fake(name, *a):
    if name.startswith("numpy_gpt2.cli."):
        if sys.argv[1] == "self":  # as OpenBLAS does when it cannot create a thread
            signal.raise_signal(signal.SIGINT)
        else:  # Ctrl-C from someone else while the libraries load
            subprocess.run(["kill", "-INT", str(os.getpid())], check=True)
    return real(name, *a)
importlib.import_module = fake
from numpy_gpt2.cli import run_script
sys.exit(run_script("dump", ["--help"]))
"""


@pytest.mark.skipif(not hasattr(signal, "sigtimedwait"), reason="no sender to tell apart")
@pytest.mark.parametrize("sender", ["self", "other"])
def test_a_sigint_openblas_sends_itself_while_loading_is_not_ctrl_c(sender, tmp_path):
    done = subprocess.run([sys.executable, "-c", IMPORT_SENDS_SIGINT, sender], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OPENBLAS_NUM_THREADS": "64"})
    if sender == "self":
        assert done.returncode == 1, done.stderr
        assert done.stderr == ("dump.py: error: out of memory or threads while starting: OpenBLAS "
                               "could not start its threads (OPENBLAS_NUM_THREADS=64); allow more "
                               "memory (ulimit -v) or ask for fewer threads (NUMPY_GPT2_THREADS "
                               "or OPENBLAS_NUM_THREADS)\n")
    else:
        # (the quiet stop of the imports names the command as it was run)
        assert done.returncode == 130 and done.stderr.strip() == "dump.py: interrupted (Ctrl-C)", \
            (done.returncode, done.stderr)


BREAK_HASHES = ("import sys\n"
                "for m in ('_hashlib', '_md5', '_sha1', '_sha256', '_sha2', '_sha512', '_sha3', '_blake2'):\n"
                "    sys.modules[m] = None\n")  # as a low memory limit does: no hash can load


def test_a_library_logging_while_it_loads_is_not_printed_before_the_one_line(tmp_path):
    # Under a memory limit hashlib logs a traceback per hash it cannot load (ERROR:root:...),
    # then `random` cannot import: the same without a limit, by breaking the hash modules.
    code = BREAK_HASHES + ("from numpy_gpt2.cli import run_script\n"
                           "sys.exit(run_script('dump', ['--help']))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert done.returncode == 1, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("dump.py: error: cannot load its libraries (ImportError:")


def test_held_library_logs_are_one_line_warnings_when_loading_succeeds(capsys):
    import logging

    from numpy_gpt2.cli import starting

    held = starting.HeldLogs()
    try:
        raise ValueError("unsupported hash type md5")
    except ValueError:
        logging.exception("code for hash %s was not found.", "md5")
    logging.getLogger("quiet").info("not a warning")
    held.release("dump.py")
    assert capsys.readouterr().err == ("dump.py: warning: while starting: code for hash md5 "
                                       "was not found. (ValueError: unsupported hash type md5)\n")
    assert held.hold not in logging.getLogger().handlers  # released: logging is the user's again
    held = starting.HeldLogs()
    logging.error("dropped")
    held.release(None)
    assert capsys.readouterr().err == ""


def test_resource_errors_from_libraries_are_not_bugs():
    from numpy_gpt2.cli import common

    cases = [(MemoryError(), "out of memory"),
             (OSError(errno.ENOSPC, "No space left on device", "/x"), "/x: out of disk space"),
             (RuntimeError("can't start new thread"), "out of memory or threads (cannot start a thread)"),
             (ImportError("libopenblas.so: failed to map segment from shared object"), "out of memory"),
             (OSError(errno.EIO, "Input/output error", "/y"), "/y: an I/O error")]
    for error, words in cases:
        assert common.describe(error) == words
        assert isinstance(common.input_error(error), common.ResourceError)
    assert isinstance(common.input_error(OSError(errno.ENOENT, "No such file", "/z")), common.UsageError)


# ---- 4. signals during start-up ------------------------------------------------------------

@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads /proc")
def test_bursts_of_signals_during_start_up(world, tmp_path):
    """Each command gets 2-3 SIGTERM or SIGINT quickly, at a random instant in the first
    second after its script's first line (what runs before is Python's own start): status 0 or 128 + the first signal, one line, no traceback, no output left
    behind unless whole, no empty directory."""
    seed = random.randrange(2**32)  # (in every failure's message: rerun with it)
    rng = random.Random(seed)
    for trial in range(3):
        procs = []
        for name in NAMES:
            out = tmp_path / f"{name}-{trial}"
            out.mkdir()
            argv = command(name, world, out)
            proc = subprocess.Popen([sys.executable, os.path.join(SCRIPTS, f"{name}.py"), *argv],
                                    cwd=out, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, env=dict(os.environ, OMP_NUM_THREADS="1"))
            procs.append((name, out, proc, rng.choice([signal.SIGINT, signal.SIGTERM]),
                          rng.uniform(0.05, 1.0), rng.randint(2, 3)))
        due = {}  # pid -> when: `delay` after the script's first line set its handlers
        pending, deadline = list(procs), time.monotonic() + 60
        while pending and time.monotonic() < deadline:
            for p in list(pending):
                name, out, proc, signum, delay, count = p
                if proc.pid not in due and _handler_installed(proc.pid):
                    due[proc.pid] = time.monotonic() + delay
                if proc.poll() is not None:
                    pending.remove(p)
                elif proc.pid in due and time.monotonic() >= due[proc.pid]:
                    for _ in range(count):
                        proc.send_signal(signum)
                        time.sleep(0.003)
                    pending.remove(p)
            time.sleep(0.002)
        for name, out, proc, signum, delay, count in procs:
            _, err = proc.communicate(timeout=120)
            err = err.decode(errors="replace")
            what = f"{name}.py, {count} x {signal.Signals(signum).name} at {delay:.2f} s (seed {seed})"
            check_run(name, proc.returncode, err, out, what)
            assert proc.returncode in (0, 128 + signum), (what, proc.returncode, err)
            empty = [d for d, dirs, files in os.walk(out) if not dirs and not files and d != str(out)]
            assert not empty, (what, empty)  # (the rest of a burst never cuts the unwinding short)


# ---- 5. flags ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_every_integer_flag_beyond_int64_is_one_line(name, world, tmp_path):
    from helpers.run_scripts import parser_of, with_value

    parser = parser_of(name)
    for action in [a for a in parser._actions if a.type is int]:
        for value in ("9223372036854775808", "-9223372036854775809"):
            argv = with_value(command(name, world, tmp_path), action, value, parser)
            r = in_process(name, argv, tmp_path)
            assert r.status == 2 and "out of range" in r.err, (name, action.dest, r.err)


@pytest.mark.parametrize("flag", ["--temperature=0.5", "--temperature=1", "--top-k=5",
                                  "--top-p=0.9", "--seed=1", "--min-p=0.1"])
def test_beams_refuse_every_sampling_flag(flag, world, tmp_path):
    r = in_process("generate", ["Hi", "--model", world.ckpt, "--num-beams", "2", flag], tmp_path)
    assert r.status == 2 and "does not apply to beam search" in r.err, r.err


def test_convert_llmc_vocab_size_keeps_trained_rows_and_refuses_tokenizer(world, tmp_path):
    out = tmp_path / "m.bin"
    r = in_process("convert", [world.ckpt, out, "--to", "llmc", "--vocab-size", "10"], tmp_path)
    assert r.status == 2 and "--vocab-size 10 is smaller than the model's vocabulary" in r.err, r.err
    r = in_process("convert", [world.ckpt, out, "--to", "llmc", "--tokenizer", world.ckpt], tmp_path)
    assert r.status == 2 and "--tokenizer is for --to hf" in r.err, r.err
    assert not os.path.exists(out)


@pytest.mark.parametrize("name", ["generate", "perplexity"])
def test_threads_flag(name, world, tmp_path):
    r = in_process(name, BASE[name](world, StrPath(tmp_path)) + ["--threads", "0"], tmp_path)
    assert r.status == 2 and "--threads 0" in r.err
    r = in_process(name, BASE[name](world, StrPath(tmp_path)) + ["--threads", "1"], tmp_path)
    assert r.status == 0, r.err


@pytest.mark.parametrize("name, env", [("generate", {}), ("perplexity", {}), ("train", {}),
                                       ("dump", {"NUMPY_GPT2_THREADS": "1"})])
def test_threads_as_a_process_from_the_command_line_or_the_environment(name, env, world, tmp_path):
    # (the flag and the variable are read before NumPy loads, outside the in-process runs)
    argv = command(name, world, tmp_path) + ([] if env else ["--threads", "1"])
    status, err = run(name, argv, tmp_path, env=env)
    assert status == 0 and "Traceback" not in err, err


def test_threads_from_argv_sets_the_blas_variables_before_numpy_loads(monkeypatch):
    from numpy_gpt2.cli import common, starting
    for name in (common.THREADS_ENV, *common.BLAS_THREADS_ENV):
        monkeypatch.delenv(name, raising=False)
    starting.threads_from_argv(["Hi", "--threads", "3"])
    assert all(os.environ[n] == "3" for n in (common.THREADS_ENV, *common.BLAS_THREADS_ENV))
    for name in common.BLAS_THREADS_ENV:
        monkeypatch.delenv(name)
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")  # already set: it wins
    starting.threads_from_argv(["Hi"])
    assert os.environ["OPENBLAS_NUM_THREADS"] == "2" and os.environ["OMP_NUM_THREADS"] == "3"


@pytest.mark.parametrize("example, extra", [("port_forward", []), ("port_train_step", [])])
def test_examples_one_line_for_a_bad_ref(example, extra, world, tmp_path):
    script = os.path.join(os.path.dirname(SCRIPTS), "examples", f"{example}.py")
    for ref in (tmp_path / "missing.safetensors", world.acts):
        if example == "port_forward" and ref == world.acts:
            continue  # activations are all port_forward needs
        proc = subprocess.run([sys.executable, script, "--model", world.ckpt, "--ref", ref,
                               "--out", tmp_path / "p.st"], capture_output=True, text=True, cwd=tmp_path)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.parametrize("name", ["dump", "convert", "prepare", "explain"])
@pytest.mark.parametrize("stop, status", [(KeyboardInterrupt, 130), ("Terminated", 143)])
def test_a_signal_after_the_commit_says_the_output_is_complete(name, stop, status, world, tmp_path,
                                                               cached_tokenizer):
    """Ctrl-C or SIGTERM right after the output was committed: the status of the signal, and
    the line says the output was written whole (it is)."""
    from numpy_gpt2.cli import common, stopping

    stop = stopping.Terminated if stop == "Terminated" else stop
    record = common.written

    def written_then_stopped(path):
        record(path)
        raise stop
    argv = command(name, world, tmp_path)
    with mock.patch.object(common, "written", written_then_stopped):
        r = in_process(name, argv, tmp_path, budget=60)
    assert r.status == status, r.err
    last = [ln.rsplit("\r", 1)[-1] for ln in r.err.splitlines() if ln.strip()][-1]
    assert last.endswith("was written (complete)"), last
    if name == "dump":
        import numpy_gpt2
        numpy_gpt2.load_dump(tmp_path / "d.safetensors")  # whole


def test_a_commands_own_stop_exception_is_its_signal(capsys):
    """A BaseException carrying `signum` (train's Stopped, raised by a second signal) that
    escapes a command: 128 + signum and one line, never a traceback."""
    from numpy_gpt2.cli import common

    class Stopped(BaseException):
        def __init__(self, signum):
            super().__init__(signum)
            self.signum = signum

    @common.entry("x")
    def main(argv=None):
        raise Stopped(signal.SIGTERM)

    assert main([]) == 143
    assert capsys.readouterr().err == "x.py: stopped by SIGTERM\n"


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_the_numpy_gpt2_command_itself(tmp_path):
    """`python -m numpy_gpt2` --help / --version / an unknown subcommand: the same rules."""
    def shell(args, redirect=""):
        proc = subprocess.run(["sh", "-c", f'"$@" {redirect}', "sh", sys.executable, "-m", "numpy_gpt2",
                               *args], capture_output=True, text=True, cwd=tmp_path)
        return proc.returncode, proc.stdout, proc.stderr
    status, out, err = shell(["--version"])
    assert status == 0 and out.startswith("numpy_gpt2 ") and err == ""
    from numpy_gpt2.cli import COMMANDS
    assert shell(["bogus"])[0::2] == (2, "numpy-gpt2: error: unknown subcommand 'bogus'; choose from "
                                         f"{', '.join(COMMANDS)} (see numpy-gpt2 --help)\n")
    status, _, err = shell([], "\"$(printf 'caf\\351')\"")  # the bytes c a f 0xe9
    assert (status, err) == (2, "numpy-gpt2: error: the subcommand is not UTF-8 (byte 0xe9 at "
                                f"offset 3); choose from {', '.join(COMMANDS)}\n"), err
    assert shell(["--help"], "> /dev/full")[0::2] == (
        1, "numpy-gpt2: error: cannot write to standard output (out of disk space)\n")
    assert shell(["--version"], ">&-")[0::2] == (
        1, "numpy-gpt2: error: cannot write to standard output (it is closed)\n")


@pytest.mark.parametrize("name", ["dump", "convert"])
def test_a_file_output_replaces_only_its_own_kind(name, world, tmp_path, cached_tokenizer):
    """A user's file (or another command's) at the output's name is refused and untouched; the
    command's own earlier output is replaced."""
    mine = tmp_path / "mine"
    for content in (b"notes", open(world.acts, "rb").read() if name == "convert" else b"\x00" * 64):
        mine.write_bytes(content)
        r = in_process(name, with_output(name, command(name, world, tmp_path), mine), tmp_path)
        assert r.status == 2 and "was not written by this command" in r.err, r.err
        assert mine.read_bytes() == content
    own = tmp_path / "own"
    argv = with_output(name, command(name, world, tmp_path), own)
    assert in_process(name, argv, tmp_path, budget=60).status == 0
    assert in_process(name, argv, tmp_path, budget=60).status == 0  # its own: replaced


# A resource that runs out while a command loads its input, raised by whichever library:
# status 1 and the resource named, never bad input (2) or a bug, for every command.
LOADS = {"generate": (None, "load"), "perplexity": (None, "load"), "dump": (None, "load"),
         "explain": (None, "load"), "convert": (None, "load"), "train": (None, "load_tokenizer"),
         "prepare": (None, "load_tokenizer"), "compare": ("load_dump", None)}
RUNNING_OUT = [(MemoryError(), "out of memory"),
               (RuntimeError("can't start new thread"), "out of memory or threads"),
               (OSError(errno.ENOSPC, "No space left on device", "/data/x"), "out of disk space"),
               (OSError(errno.EIO, "Input/output error", "/data/x"), "an I/O error")]


@pytest.mark.parametrize("name", NAMES)
def test_a_resource_running_out_while_loading_is_status_1_for_every_command(name, world, tmp_path,
                                                                           monkeypatch):
    import numpy_gpt2
    from helpers.run_scripts import load_script
    assert set(LOADS) == set(NAMES), "a new command: name what it loads in LOADS"
    own, shared = LOADS[name]
    for error, words in RUNNING_OUT:
        def fail(*args, **kwargs):
            raise error
        module = load_script(name)
        with monkeypatch.context() as patch:
            patch.setattr(*(module, own) if own else (numpy_gpt2, shared), fail)
            out = tmp_path / f"{type(error).__name__}{getattr(error, 'errno', '')}"
            out.mkdir()
            r = in_process(name, command(name, world, out), out, module=module)
        check_run(name, r.status, r.err, out, f"{name}.py, {error!r}")
        last = [ln for ln in r.err.splitlines() if ln.strip()][-1]
        assert r.status == 1 and last.startswith(f"{name}.py: error") and words in last, (error, r.err)


@pytest.mark.parametrize("nohup", [False, True])
def test_sighup_mid_write_is_129_with_nothing_left_or_ignored_under_nohup(nohup, world, tmp_path):
    """A closed terminal (SIGHUP) while dump writes a large file: status 129, one line, no
    staging or temporary file, no parent it created; under nohup the dump finishes."""
    out = tmp_path / "sub" / "d.safetensors"
    argv = ["--model", world.ckpt, "--tokens", ",".join(["5"] * 100), "--grads", "--out", out]
    proc = subprocess.Popen([sys.executable, os.path.join(SCRIPTS, "dump.py"), *map(str, argv)],
                            cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=dict(os.environ, OMP_NUM_THREADS="1"),
                            preexec_fn=(lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
                            if nohup else None)
    deadline = time.monotonic() + 30
    while not _handler_installed(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.002)
    time.sleep(0.3)
    proc.send_signal(signal.SIGHUP)
    status, err = finish(proc)
    if nohup:
        assert status == 0, err
        return
    check_run("dump", status, err, tmp_path, "dump.py, SIGHUP")
    if status == 129:
        assert err.strip().splitlines()[-1].startswith("dump.py: hung up (SIGHUP)"), err
        assert not (tmp_path / "sub").exists() or not os.listdir(tmp_path / "sub"), \
            os.listdir(tmp_path / "sub")
    else:  # (finished before the signal: the file is whole)
        assert status == 0, err


@pytest.mark.parametrize("name", ["dump", "convert"])
def test_sighup_in_the_middle_of_writing_removes_the_partial_output(name, world, tmp_path):
    """SIGHUP arriving while the output's bytes are being written (in-process, exactly
    there): status 129, one line, nothing of the output and no staging directory left."""
    from helpers.run_scripts import load_script
    from numpy_gpt2.io import atomic

    module = load_script(name)
    real = atomic._fsync_file

    def hang_up_after_writing(path):  # the file is written, not yet committed
        os.kill(os.getpid(), signal.SIGHUP)
        real(path)
    out = tmp_path / "sub"
    out.mkdir()
    with mock.patch.object(atomic, "_fsync_file", hang_up_after_writing):
        r = in_process(name, command(name, world, out / "made"), out, module=module)
    assert r.status == 129 and r.err.strip().splitlines()[-1] == f"{name}.py: hung up (SIGHUP)", r.err
    assert os.listdir(out) == [], os.listdir(out)  # (made/ was created for the output: removed)


def test_a_failed_start_with_stderr_closed_writes_nothing_to_stdout(tmp_path):
    """Libraries that cannot load while stderr is closed (2>&-): status 1, and the line that
    had nowhere to go is not printed to stdout instead (print(file=None) would)."""
    code = BREAK_HASHES + ("sys.stderr = None\n"  # what Python makes of a closed fd 2
                           "from numpy_gpt2.cli import run_script\n"
                           "sys.exit(run_script('dump', ['--help']))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert done.returncode == 1 and done.stdout == "", (done.stdout, done.stderr)
