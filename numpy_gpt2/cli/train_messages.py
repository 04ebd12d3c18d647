"""What `numpy-gpt2 train` prints, and where: its lines on stderr (say) and stdout (report),
which may go away during a run (a closed terminal, a pipe whose reader has gone, stderr
closed from the start) while the run goes on; every line starts with the command as the user
ran it (prog), and the advice names the same command (resume_command); what a run directory
truly holds after a failure (last_save). The command itself is cli/train.py.
"""

from __future__ import annotations

import os
import signal
import sys

from numpy_gpt2.cli import common


def say(message) -> None:
    """A line on stderr; a terminal that is gone (SIGHUP) must not stop the run."""
    try:
        print(message, file=sys.stderr, flush=True)
    except (OSError, ValueError, AttributeError):
        pass


def report(message) -> None:
    """A line on stdout (evaluations, the summary); if stdout is a pipe whose reader has gone
    (or a terminal that hung up: EIO), the run goes on and stdout goes to /dev/null."""
    try:
        print(message, flush=True)
    except (OSError, ValueError, common.OutputError):  # (closed, full: the run goes on)
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):  # (AttributeError: closed, no descriptor)
            pass


class Stderr:
    """sys.stderr for the run (messages and the progress bar): when writing fails (a closed
    pipe, a terminal that hung up: EPIO, EIO) it goes to /dev/null and the run goes on."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text):
        try:
            return self.stream.write(text)
        except (OSError, ValueError):
            self._lost()
            return len(text)

    def flush(self):
        try:
            self.stream.flush()
        except (OSError, ValueError):
            self._lost()

    def _lost(self):
        self.stream = open(os.devnull, "w")
        try:  # Python's own last writes to fd 2 (at exit) must not fail either
            os.dup2(self.stream.fileno(), 2)
        except OSError:
            pass

    def __getattr__(self, name):
        return getattr(self.stream, name)


def keep_stderr() -> None:
    """stderr closed at start (2>&-): /dev/null instead (fd 2 free would be taken by the first
    file opened, and a message meant for stderr would land in it)."""
    try:
        os.fstat(2)
    except OSError:
        fd = os.open(os.devnull, os.O_WRONLY)
        if fd != 2:
            os.dup2(fd, 2)
            os.close(fd)
        sys.stderr = open(2, "w", closefd=False)
    if sys.stderr is None:
        sys.stderr = open(2, "w", closefd=False)
    if not isinstance(sys.stderr, Stderr):
        sys.stderr = Stderr(sys.stderr)


def prog() -> str:
    """The command as the user ran it (`numpy-gpt2 train` or `train.py`): every line starts with it."""
    return common._prog


def resume_command(directory) -> str:
    """The command line that continues the run in directory, as the user runs this command."""
    command = "numpy-gpt2 train" if prog().startswith("numpy-gpt2") else "python scripts/train.py"
    return f"{command} --resume {directory}"


def stopped_before(signum) -> str:
    return f"\n{prog()}: {signal.Signals(signum).name} before training started; nothing saved"


def last_save(out, step, installed=True) -> str:
    """What the run directory holds after a failure, truly."""
    if step is None:
        return f"nothing was saved in {out}"
    if not installed:
        return (f"the save of step {step} in {out} is committed; --resume {out} finishes "
                f"installing it")
    return f"the last save in {out} (step {step}) is intact"
