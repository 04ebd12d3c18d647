"""What every command shares: one-line errors, exit statuses, signals, UTF-8 input.

Each command module (numpy_gpt2/cli/<name>.py) has a `main(argv) -> exit status` wrapped with
`@common.entry("<name>")`, which turns every way a run can end into an exit status and at most
one line on stderr (docs/scripts.md):
  0 done; 1 failure (the run could not finish: e.g. out of memory; stdout closed early,
  quietly); 2 bad input (UsageError, argparse's errors, unreadable or non-UTF-8 input);
  130 Ctrl-C (SIGINT); 143 SIGTERM; 129 SIGHUP (a command that asks: train).
One signal system serves every command (StopSignals, cli/stopping.py): train defers the signals
to finish its step and save first.
Before a command's module is loaded, cli/starting.py speaks for it (Ctrl-C or SIGTERM during
the imports end the command at once, quietly, with status 130 / 143; a library that cannot
load is one line, status 1).
The library never knows the command line: its ValueErrors name arguments (`max_new_tokens`),
and `flag_message` words them as the flags (`--max-new-tokens`).
Streams: standard output that is closed or cannot be written (a full disk, /dev/full, an I/O
error) stops a command with status 1 and one line (a reader that went away: quietly); standard
error that is closed or cannot be written never stops one (its lines are dropped). Resources:
out of memory, out of disk space, I/O errors and threads that cannot start, raised by any
library, are one line naming the resource (and the file), status 1 (`resource_problem`).
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import signal
import sys

from numpy_gpt2.cli.stopping import HANGUP, STOP_SIGNALS, HungUp, StopSignals, Terminated
from numpy_gpt2.errors import RESOURCE_ERRNOS, describe, not_utf8_text, resource_problem  # noqa: F401 (the commands use them as common.X)

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2
EXIT_SIGINT, EXIT_SIGTERM = 128 + signal.SIGINT, 128 + signal.SIGTERM  # the shell's 128 + N
TRACEBACK_ENV = "NUMPY_GPT2_TRACEBACK"  # =1: show the traceback of an unexpected error
_prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "numpy-gpt2"  # in messages


THREADS_ENV = "NUMPY_GPT2_THREADS"
BLAS_THREADS_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _check_threads_env() -> None:
    value = os.environ.get(THREADS_ENV)
    if value and not (value.isdigit() and int(value) >= 1):
        raise UsageError(f"{THREADS_ENV}={value!r} in the environment: expected an integer >= 1")


INT64_MIN, INT64_MAX = -2**63, 2**63 - 1


def add_threads_flag(parser) -> None:
    """--threads N: BLAS and worker threads (read by threads_from_argv before NumPy loads;
    here for --help and its check, check_threads)."""
    parser.add_argument("--threads", type=int, help="BLAS and worker threads (default: the CPUs "
                        "the process may use, or $NUMPY_GPT2_THREADS)")


def check_threads(args) -> None:
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads {args.threads} is invalid: expected an integer >= 1")


class UsageError(Exception):
    """Bad input from the user: reported in one line, exit status 2."""


def not_utf8(value: str) -> str | None:
    """None when value came from valid UTF-8; else where it did not ("byte 0xff at offset
    3"). Python turns undecodable bytes of arguments and paths into lone surrogates
    (surrogateescape), which are what this finds."""
    try:
        value.encode("utf-8")
        return None
    except UnicodeEncodeError as e:
        raw = value.encode("utf-8", "surrogateescape")
        offset = len(value[:e.start].encode("utf-8", "surrogateescape"))
        return f"byte 0x{raw[offset]:02x} at offset {offset}"


def decode_utf8(raw: bytes, what: str) -> str:
    """bytes read from stdin or a file -> text; UsageError naming `what` when not UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"{what}: {not_utf8_text(e)}; the scripts read UTF-8 only") from None


def read_text(path, flag: str | None = None) -> str:
    """A text file's contents (a regular file or a pipe: numpy_gpt2.io.inputs); UsageError
    naming the file (after its flag, e.g. "--prompts-file") when it is empty, a device or a
    socket, cannot be read or is not UTF-8."""
    from numpy_gpt2.io.inputs import check_text_input
    what = f"{flag} {path}" if flag else str(path or repr(path))
    try:
        check_text_input(path)
    except ValueError as e:
        raise UsageError(f"{flag} {e}" if flag else str(e)) from None
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise input_error(e, None if e.filename else what,  # (the file once, where it is known)
                          f"{what}: cannot read it ({e.strerror})") from None
    return decode_utf8(raw, what)


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (UsageError, exit status 2, not usage + message) and the
    UTF-8 rule for every argument value; named as the running command ("numpy-gpt2 train",
    or "train.py" run as a script)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("prog", _prog)
        super().__init__(*args, **kwargs)

    def error(self, message):
        raise UsageError(f"{message} (see --help)")

    def parse_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        for arg in args[:args.index("--")] if "--" in args else args:  # (after "--": text)
            # argparse drops the "--" of "--flag=--" and stores [] as the flag's value
            if isinstance(arg, str) and arg.startswith("--") and arg.endswith("=--"):
                raise UsageError(f"argument {arg[:-3]}: expected one value, got '--' (see --help)")
        parsed = super().parse_args(args, namespace)
        for action in self._actions:
            values = getattr(parsed, action.dest, None)
            name = "/".join(action.option_strings) or action.dest
            for value in values if isinstance(values, list) else [values]:
                if value == "" and action.dest in PATH_ARGUMENTS:  # ('' would mean ".")
                    shown = (action.option_strings[-1] if action.option_strings
                             else action.metavar or action.dest.upper())
                    raise UsageError(f"{shown} is empty: expected a "
                                     f"{_path_kind(action)} name")
                if isinstance(value, str) and action.dest in PATH_ARGUMENTS and _loops(value):
                    shown = f"{action.option_strings[-1]} " if action.option_strings else ""
                    raise UsageError(f"{shown}{value}: is a symlink loop (or a chain of "
                                     f"symlinks too long to follow)")
                # NumPy's integers (and the arrays sized by them) stop at int64
                if action.type is int and isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
                    raise UsageError(f"argument {name}: {value} is out of range (integers from "
                                     f"{INT64_MIN} to {INT64_MAX})")
                where = not_utf8(value) if isinstance(value, str) else None
                if where:
                    raise UsageError(f"argument {name}: not UTF-8 ({where}); the scripts take "
                                     f"UTF-8 text and paths only")
        return parsed


# Arguments that name a file or directory (an input or an output), in every command: what
# they name, or None where the command's help says it (an --out file or directory).
PATH_ARGUMENTS = {"out": None, "model": None, "init": None, "source": None, "resume": "directory",
                  "tokenizer": "directory", "data": "file", "file": "file", "prompts_file": "file",
                  "inputs": "file or directory", "reference": "file", "candidate": "file"}


def _path_kind(action) -> str:
    """"file", "directory" or "file or directory": what a path argument names."""
    if PATH_ARGUMENTS[action.dest]:
        return PATH_ARGUMENTS[action.dest]
    words = re.findall(r"[a-z]+", (action.help or "").lower())
    kinds = [k for k in ("file", "directory") if k in words]
    return " or ".join(kinds) or "file"


def _loops(path: str) -> bool:
    """path is a symlink loop, or leads through one (ELOOP)."""
    try:
        os.stat(path)
    except OSError as e:
        return e.errno == errno.ELOOP
    except ValueError:  # (a NUL byte: left to the command)
        return False
    return False


def flag_message(error, flags: dict | None = None) -> str:
    """A library ValueError's message worded for the command line: the argument it names
    first (`max_new_tokens`, `logit_bias[5]`) as its flag (`--max-new-tokens`, or flags[name]),
    and the Python-only ways of saying "off" (None) as the flag's (leave it out)."""
    message = str(error)
    match = re.match(r"[a-z_]+(?=[ :\[])", message)
    if not match:
        return message
    name = match.group(0)
    flag = (flags or {}).get(name, "--" + name.replace("_", "-"))
    rest = message[match.end():]
    if name == "seed" and rest.startswith(" must be"):  # the flag takes integers only
        return f"{flag} must be an integer >= 0, got {rest.rpartition(', got ')[2]}"
    # another argument the message names, as `name (value)`: its flag too
    rest = re.sub(r"\b([a-z]+(?:_[a-z]+)+)(?= \()", lambda m: (flags or {}).get(
        m.group(1), "--" + m.group(1).replace("_", "-")), rest)
    rest = rest.replace("(or None for no limit)", "(leave it out for no limit)")
    rest = re.sub(r"\(vocab_size\) or None, got", "(vocab_size), got", rest)
    return flag + rest


def resolve_model(value: str, flag: str = "--model") -> str:
    """numpy_gpt2.resolve_model(value), its advice (`model=PATH`) worded as the flag that
    gave the value (`--model PATH`, `--init PATH`; "" for a positional argument: `PATH`)."""
    import numpy_gpt2
    try:
        return numpy_gpt2.resolve_model(value)
    except ValueError as e:
        message = str(e).replace("model=PATH", f"{flag} PATH".strip())
        if not value and flag:  # ('' names nothing: the flag does)
            message = f"{flag} {message}"
        e.args = (message, *e.args[1:])
        raise


def check_output_file(path, ours=None, flag: str = "--out") -> None:
    """Before any work: UsageError naming the flag unless path can take this command's output
    file (numpy_gpt2.io.outputs.output_file: never a device, FIFO or socket, a directory, or
    a file of another kind)."""
    from numpy_gpt2.io.outputs import output_file
    try:
        output_file(path, ours=ours)
    except ValueError as e:
        raise UsageError(f"{flag} {e}") from None


def one_line(text) -> str:
    return " ".join(str(text).split())


class OutputError(Exception):
    """Standard output cannot be written (closed, a full disk, an I/O error): status 1, one
    line. Not an OSError, so that a command's `except OSError` (its input files) never takes
    it for bad input."""


class ResourceError(Exception):
    """Out of a resource (memory, disk space, threads) or an I/O error while `step`: status 1,
    one line."""


def input_error(error: BaseException, step: str | None = None, usage: str | None = None) -> Exception:
    """What to raise for an exception met while reading the input (a `except (ValueError,
    OSError, RuntimeError)`): a UsageError (bad input, status 2; its message `usage` when
    given), or a ResourceError (status 1) when a resource ran out (memory, disk space, an I/O
    error, a thread), which says nothing about the input."""
    if resource_problem(error):
        return ResourceError(f"{step + ': ' if step else ''}{describe(error)}")
    if usage is not None:
        return UsageError(usage)
    return UsageError(describe(error) if isinstance(error, OSError) else str(error))


_WRITTEN: list[str] = []  # outputs this run has committed (written whole)


def written(path) -> None:
    """Record that output path is committed (whole, in place): whatever stops the command
    after this, its last line says so (rather than leave the user to think it was not)."""
    _WRITTEN.append(str(path))


def _after_written() -> str:
    return f"; {', '.join(_WRITTEN)} was written (complete)" if _WRITTEN else ""


class _Stream:
    """sys.stdout or sys.stderr while a command runs. stdout: a write that fails (closed, full,
    I/O error) raises OutputError, a reader gone BrokenPipeError. stderr: a failing write is
    dropped (its lines are never worth stopping a command for)."""

    def __init__(self, stream, name):
        self._stream, self._name = stream, name

    def _do(self, method, *args):
        try:
            return getattr(self._stream, method)(*args)
        except BrokenPipeError:
            if self._name == "stderr":
                return None
            raise
        except (OSError, ValueError, AttributeError) as e:  # AttributeError: None (closed)
            if self._name == "stderr":
                return None
            reason = "it is closed" if self._stream is None or isinstance(e, ValueError) \
                else describe(e)
            raise OutputError(f"cannot write to standard output ({reason})") from None

    def write(self, text):
        result = self._do("write", text)
        return len(text) if result is None else result

    def flush(self):
        if self._stream is not None:  # closed: nothing was written, nothing to flush (tqdm
            self._do("flush")         # flushes stdout before drawing a bar on stderr)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _guard_streams():
    """Install _Stream over sys.stdout and sys.stderr; returns the originals to restore."""
    original = sys.stdout, sys.stderr
    stderr = sys.stderr
    if stderr is None:  # closed: its lines go nowhere
        stderr = open(os.devnull, "w")
    sys.stdout, sys.stderr = _Stream(sys.stdout, "stdout"), _Stream(stderr, "stderr")
    return original


def _quiet_stdout():
    """stdout's reader is gone (e.g. `| head`): send the rest, and Python's final flush, to
    /dev/null so that no 'Exception ignored ... BrokenPipeError' follows."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no descriptor (closed, a test's capture)
        pass


def entry(name: str, hangup: bool = True):
    """Decorator for a command's main(argv=None) -> exit status: runs it with SIGINT, SIGTERM
    and SIGHUP (a closed terminal; unless ignored at start: nohup) raising KeyboardInterrupt /
    Terminated / HungUp (StopSignals: so `finally` blocks clean up; main may defer them), and
    turns how it ended into the documented exit status and at most one line on stderr, after
    `prog` ("numpy-gpt2 NAME"; "NAME.py" for the scripts/NAME.py shim, the default)."""
    def wrap(main):
        def run(argv=None, prog=None) -> int:
            global _prog
            prog = _prog = prog or f"{name}.py"
            signals = StopSignals(STOP_SIGNALS + (HANGUP if hangup else ()))
            streams = _guard_streams()
            _WRITTEN.clear()
            try:
                try:
                    _check_threads_env()
                    status = main(argv)
                    sys.stdout.flush()  # a broken pipe shows here, not in Python's exit
                    return status
                except BaseException:
                    # How it ended is decided: a signal now (a second Ctrl-C, a burst of
                    # SIGTERMs) must not interrupt the report of it with a traceback.
                    for s in STOP_SIGNALS + (HANGUP if hangup else ()):
                        if s in signals.previous:  # (a SIGHUP nohup ignores stays ignored)
                            signal.signal(s, signal.SIG_IGN)
                    raise
            except UsageError as e:
                _say(prog, f"error: {one_line(e)}")
                return EXIT_BAD_INPUT
            except OutputError as e:
                _quiet_stdout()  # (Python's own last flush must not fail again)
                _say(prog, f"error: {e}{_after_written()}")
                return EXIT_FAILURE
            except ResourceError as e:
                _say(prog, f"error: {one_line(e)}")
                return EXIT_FAILURE
            except KeyboardInterrupt:
                _say(prog, f"interrupted (Ctrl-C){_after_written()}", newline=True)
                return EXIT_SIGINT
            except Terminated:
                _say(prog, f"terminated (SIGTERM){_after_written()}")
                return EXIT_SIGTERM
            except HungUp:
                _say(prog, f"hung up (SIGHUP){_after_written()}")
                return 128 + HungUp.signum
            except BrokenPipeError:
                _quiet_stdout()
                return EXIT_FAILURE
            except MemoryError:
                _say(prog, "error: out of memory; try a smaller model, input or batch")
                return EXIT_FAILURE
            except Exception as e:  # a bug: still one line (the traceback on request)
                if os.environ.get(TRACEBACK_ENV) == "1":
                    raise
                if resource_problem(e):  # from any library: not a bug
                    _say(prog, f"error: {describe(e)}")
                    return EXIT_FAILURE
                _say(prog, f"internal error: {type(e).__name__}: {one_line(e)} (a bug in "
                           f"numpy_gpt2: please report it with the command; {TRACEBACK_ENV}=1 "
                           f"shows the traceback)")
                return EXIT_FAILURE
            except BaseException as e:  # a command's own stop exception (e.g. train's Stopped)
                signum = getattr(e, "signum", None)
                if not isinstance(signum, int):
                    raise  # SystemExit (--help), ...
                _say(prog, f"stopped by {signal.Signals(signum).name}{_after_written()}")
                return 128 + signum
            finally:
                sys.stdout, sys.stderr = streams
                signals.restore()
        run.__doc__, run.__name__ = main.__doc__, main.__name__
        return run
    return wrap


def _say(prog, message, newline=False):
    """`prog: message` on stderr; nothing when stderr is closed or cannot be written (the exit
    status still tells). (print(file=None) would write to stdout.)"""
    if sys.stderr is None:
        return
    try:
        print(("\n" if newline else "") + f"{prog}: {message}", file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass
