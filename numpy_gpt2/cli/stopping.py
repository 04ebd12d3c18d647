"""The stop signals of a running command: one system for every command (cli/common.py's entry()
installs it). Before entry() takes over, starting.stop_quietly_during_imports ends the process
at once instead."""

from __future__ import annotations

import contextlib
import signal

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Terminated(BaseException):
    """SIGTERM arrived (raised in the main thread, like KeyboardInterrupt for Ctrl-C)."""


# ----------------------------------------------------------------------------------------
# Stop signals: one system for every command (entry() installs it). SIGINT, SIGTERM (and
# SIGHUP for a command that asks for it) raise an exception in the main thread at once; a
# command that can stop at a safe point (train: the end of a step, then a save) defers them:
# the first is only recorded, a second raises.

HANGUP = (signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ()


class HungUp(BaseException):
    """SIGHUP arrived: the terminal or SSH session is gone (like Terminated, for SIGHUP)."""
    signum = int(HANGUP[0]) if HANGUP else 1


def stop_exception(signum: int) -> BaseException:
    """The exception a stop signal raises: KeyboardInterrupt, Terminated or HungUp."""
    return {signal.SIGINT: KeyboardInterrupt, signal.SIGTERM: Terminated}.get(signum, HungUp)()


def signal_number(stop: BaseException) -> int:
    """The signal behind a stop exception (KeyboardInterrupt: SIGINT)."""
    if isinstance(stop, KeyboardInterrupt):
        return int(signal.SIGINT)
    return int(signal.SIGTERM) if isinstance(stop, Terminated) else HungUp.signum


class StopSignals:
    """Handlers for the stop signals of one command run; restore() puts the previous ones back.
    A SIGHUP that was ignored when the command started (nohup) stays ignored. After
    defer(announce), the first signal sets `received` (its number) and calls announce(signum)
    instead of raising; the command checks `received` at its safe point; a second signal
    raises at once. Once a signal has raised, the command is stopping: later signals (the rest
    of a burst, a second Ctrl-C) are ignored, so that the unwinding (removing what a failed
    start created, a staging directory) is never cut short; only SIGKILL cuts it. From a
    thread other than the main one nothing is installed."""

    active = None  # the StopSignals of the command running now (entry's)

    def __init__(self, signums):
        self.received, self.announce, self.previous, self.holding = None, None, {}, False
        self.restoring = self.stopping = False
        for signum in signums:
            try:
                current = signal.getsignal(signum)
                if signum in HANGUP and current == signal.SIG_IGN:
                    continue  # nohup: the user asked to survive the hang-up
                self.previous[signum] = signal.signal(signum, self.handle)
            except (ValueError, OSError):  # not the main thread: leave the defaults
                pass
        self.outer, StopSignals.active = StopSignals.active, self

    def handles(self, signum) -> bool:
        return signum in self.previous

    def defer(self, announce=None) -> None:
        """From now on the first signal is recorded (and announced), not raised."""
        self.announce = announce or (lambda signum: None)

    @contextlib.contextmanager
    def held(self):
        """Signals during the block are recorded, not raised (a burst too); the first is raised
        when the block ends, so that what it does (create and lock a directory, release it)
        is never left half done."""
        if self.holding:
            yield
            return
        self.holding, before = True, self.received
        try:
            yield
        finally:
            self.holding = False
            if self.received is not None and self.received != before and self.announce is None:
                signum, self.received = self.received, None
                self.stopping = True
                raise stop_exception(signum)

    def handle(self, signum, frame):
        if self.restoring or self.stopping:  # the ending is decided: the unwinding runs whole
            return
        if self.holding:
            self.received = self.received or signum
            return
        if self.announce is not None and self.received is None:
            self.received = signum
            self.announce(signum)
            return
        self.stopping = True
        raise stop_exception(signum)

    def restore(self) -> None:
        self.restoring = True  # how the run ended is decided: a signal now changes nothing
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous = {}
        StopSignals.active = self.outer
