"""The `numpy-gpt2` command: one subcommand per module of this package (docs/scripts.md).

    numpy-gpt2 SUBCOMMAND [ARGS ...]        (also: python -m numpy_gpt2 SUBCOMMAND ...)

The command line lives here and only here: each module parses its flags, calls the library,
and maps the library's errors to one line on stderr and an exit status. The library never
knows about flags. scripts/<name>.py are shims that run the same modules.

- one module per subcommand (COMMANDS below): generate, perplexity, train, prepare, convert,
  dump, compare, explain; generate_common and generate_batch (generate's shared pieces and
  its many-prompts batch), train_messages (train's output: its lines, stdout and stderr);
- starting: before and while a command's libraries load (signals, threads, memory limits);
- common: what every command shares once loaded (entry(): exit statuses and the one line,
  the parser, flag wording, input and resource errors, the standard streams);
- stopping: the stop signals (SIGINT, SIGTERM, SIGHUP) of a running command.
"""

from __future__ import annotations

import signal
import sys

from numpy_gpt2.cli import common, starting, stopping

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
    starting.stop_quietly_during_imports(prog or f"{name}.py")  # before numpy and the rest load
    argv = sys.argv[1:] if argv is None else list(argv)
    starting.threads_from_argv(argv)
    watch = starting.LibraryExitWatch(prog or f"{name}.py")
    try:
        return _run(name, argv, prog)
    finally:
        watch.disarm()


def _run(name, argv, prog) -> int:
    module = starting.load_command(name, prog or f"{name}.py")
    if isinstance(module, int):  # could not load: the status, its line said
        return module
    status = module.main(argv, prog=prog)
    for signum in stopping.STOP_SIGNALS + stopping.HANGUP:  # decided and reported: Python's exit
        if signal.getsignal(signum) != signal.SIG_IGN:  # (restoring the default handlers) must
            signal.signal(signum, signal.SIG_IGN)  # not be killed now
    return status


def usage() -> str:
    from numpy_gpt2 import __version__
    width = max(map(len, COMMANDS))
    lines = [f"usage: numpy-gpt2 SUBCOMMAND [ARGS ...]   (numpy_gpt2 {__version__})", "",
             "GPT-2 in plain NumPy. Subcommands (numpy-gpt2 SUBCOMMAND --help for each):"]
    lines += [f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    """The console entry point: dispatch to a subcommand. Exit status 2 for an unknown one."""
    starting.stop_quietly_during_imports()
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
    where = common.not_utf8(argv[0])
    if where:  # (its repr would show Python's surrogate escapes, not the user's bytes)
        raise common.UsageError(f"the subcommand is not UTF-8 ({where}); choose from "
                                f"{', '.join(COMMANDS)}")
    raise common.UsageError(f"unknown subcommand {argv[0]!r}; choose from {', '.join(COMMANDS)} "
                            f"(see numpy-gpt2 --help)")
