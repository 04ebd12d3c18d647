"""The `numpy-gpt2` command: one subcommand per module of this package (docs/scripts.md).

    numpy-gpt2 SUBCOMMAND [ARGS ...]        (also: python -m numpy_gpt2 SUBCOMMAND ...)

The command line lives here and only here: each module parses its flags, calls the library,
and maps the library's errors to one line on stderr and an exit status (cli/common.py). The
library never knows about flags. scripts/<name>.py are shims that run the same modules.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys

from numpy_gpt2.cli import common, stopping

# subcommand -> one line of --help (the module numpy_gpt2.cli.<subcommand> runs it)
COMMANDS = {
    "generate": "sample text from a model, streamed (sampling, beam search, logprobs)",
    "perplexity": "cross-entropy and perplexity of a text file, with sliding windows",
    "train": "train or fine-tune a model; resume a run exactly; N processes with mpiexec",
    "prepare": "tokenize text files into uint16 token files for train --data DIR",
    "convert": "convert any checkpoint to a Hugging Face directory or an llm.c .bin",
    "dump": "save every activation (and gradient) of one input to a safetensors file",
    "compare": "name the first tensor where two dumps (or a dump and a live run) differ",
    "explain": "write one HTML page that walks a prompt through the model, step by step",
}


def run_script(name: str, argv=None, prog: str | None = None) -> int:
    """Run subcommand `name` with argv (default sys.argv[1:]); its exit status."""
    common.stop_quietly_during_imports()  # before numpy and the rest are imported
    argv = sys.argv[1:] if argv is None else list(argv)
    common.threads_from_argv(argv)
    watch = common.LibraryExitWatch(prog or f"{name}.py")
    try:
        return _run(name, argv, prog)
    finally:
        watch.disarm()


# Loading a command's libraries (Python, NumPy with OpenBLAS, safetensors, tiktoken,
# numpy_gpt2) takes 104-116 MB of address space (VmPeak after the import, OpenBLAS on one
# thread; AMD EPYC, Python 3.11, numpy 2.4). Just below that, NumPy's own module set-up or
# the interpreter can crash (SIGSEGV) when an allocation fails inside them (seen at 96 and
# 100 MB), before any line of ours: a limit under this floor is refused before loading.
MEMORY_FLOOR_MB = 128


def _memory_limit_mb() -> int | None:
    """The address-space limit (RLIMIT_AS, ulimit -v) in MB, None when there is none."""
    try:
        import resource
        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    except (ImportError, OSError, ValueError, AttributeError):
        return None
    return None if limit == resource.RLIM_INFINITY else limit >> 20


def _run(name, argv, prog) -> int:
    limit = _memory_limit_mb()
    if limit is not None and limit < MEMORY_FLOOR_MB:
        try:
            print(f"{prog or name + '.py'}: error: out of memory while starting: a memory limit "
                  f"of {limit} MB (ulimit -v) is below the {MEMORY_FLOOR_MB} MB that loading "
                  f"NumPy, OpenBLAS and numpy_gpt2 takes", file=sys.stderr)
        except (OSError, ValueError, AttributeError):  # stderr closed or full
            pass
        return common.EXIT_FAILURE
    held = None
    try:
        held = common.HeldLogs()  # (a library's own log lines while it loads)
        import hashlib  # noqa: F401 (now, held: it logs a traceback per hash it cannot load,
        # and tiktoken, huggingface_hub, ... would import it later, outside the hold)
        module = _import_command(name)
    except Exception as e:  # NumPy, OpenBLAS, ... could not load: one line, status 1
        if held is not None:
            held.release(None)
        if os.environ.get(common.TRACEBACK_ENV) == "1":
            raise
        try:
            print(f"{prog or name + '.py'}: error: {starting_failed(e)}", file=sys.stderr)
        except (OSError, ValueError, AttributeError):  # stderr closed or full
            pass
        return common.EXIT_FAILURE
    held.release(prog or f"{name}.py")
    status = module.main(argv, prog=prog)
    for signum in stopping.STOP_SIGNALS:  # decided and reported: Python's exit (which restores
        signal.signal(signum, signal.SIG_IGN)  # the default handlers) must not be killed now
    return status


class BlasThreadsFailed(Exception):
    """OpenBLAS could not start its threads while loading (it raised SIGINT itself)."""


def _import_command(name: str):
    """import numpy_gpt2.cli.<name> with SIGINT blocked while its libraries load. OpenBLAS
    answers a thread it cannot create (under a memory limit, with more threads than fit)
    by sending SIGINT to itself, which must not read as Ctrl-C: afterwards a pending SIGINT
    is taken with its sender; from this process it is BlasThreadsFailed, from anyone else
    (Ctrl-C meanwhile, a moment late) the quiet stop of the imports, status 130."""
    if not hasattr(signal, "sigtimedwait"):  # (not on Linux: no sender to tell apart)
        return importlib.import_module(f"numpy_gpt2.cli.{name}")
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        return importlib.import_module(f"numpy_gpt2.cli.{name}")
    finally:
        pending = signal.sigtimedwait({signal.SIGINT}, 0)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        if pending is not None and pending.si_pid == os.getpid():
            raise BlasThreadsFailed()
        if pending is not None:
            common._stop_now(signal.SIGINT, None)


def starting_failed(error: Exception) -> str:
    """Why a command's libraries could not load, in one line: a resource (memory: a C
    extension that cannot allocate may fail in any way, so under a memory limit that is the
    likely cause and is named), else a broken installation."""
    if isinstance(error, BlasThreadsFailed):
        asked = next((f" ({name}={os.environ[name]})" for name in common.BLAS_THREADS_ENV
                      if os.environ.get(name)), "")
        return (f"out of memory or threads while starting: OpenBLAS could not start its "
                f"threads{asked}; allow more memory (ulimit -v) or ask for fewer threads "
                f"({common.THREADS_ENV} or OPENBLAS_NUM_THREADS)")
    what = common.resource_problem(error)
    if what:
        return f"{what} while starting (loading its libraries)"
    detail = f"{type(error).__name__}: {common.one_line(error)}"
    limit = _memory_limit_mb()
    if limit is not None:
        return (f"out of memory while starting (loading its libraries under a memory limit of "
                f"{limit} MB, ulimit -v; {detail})")
    return (f"cannot load its libraries ({detail}); reinstall numpy_gpt2 and its requirements "
            f"(pip install numpy_gpt2)")


def usage() -> str:
    from numpy_gpt2 import __version__
    width = max(map(len, COMMANDS))
    lines = [f"usage: numpy-gpt2 SUBCOMMAND [ARGS ...]   (numpy_gpt2 {__version__})", "",
             "GPT-2 in plain NumPy. Subcommands (numpy-gpt2 SUBCOMMAND --help for each):"]
    lines += [f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    """The console entry point: dispatch to a subcommand. Exit status 2 for an unknown one."""
    common.stop_quietly_during_imports()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in COMMANDS:
        return run_script(argv[0], argv[1:], prog=f"numpy-gpt2 {argv[0]}")
    return common.entry("numpy-gpt2")(_own_flags)(argv, prog="numpy-gpt2")


def _own_flags(argv) -> int:
    """--help, --version, or an unknown subcommand (under common.entry: its streams and
    statuses, like every subcommand's)."""
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else common.EXIT_BAD_INPUT
    if argv[0] == "--version":
        from numpy_gpt2 import __version__
        print(f"numpy_gpt2 {__version__}")
        return 0
    raise common.UsageError(f"unknown subcommand {argv[0]!r}; choose from {', '.join(COMMANDS)} "
                            f"(see numpy-gpt2 --help)")
