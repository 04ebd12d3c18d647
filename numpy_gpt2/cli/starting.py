"""Starting a command: what runs before and while its libraries (NumPy with OpenBLAS,
safetensors, tiktoken, the rest of numpy_gpt2) load, where nothing of a command's own is
running yet to turn a failure into its line.

`stop_quietly_during_imports()` runs first (numpy_gpt2.cli's `main` and `run_script`): a
Ctrl-C or SIGTERM then ends the command at once, quietly (nothing is written yet), and a
closed standard stream's descriptor gets /dev/null. `threads_from_argv` puts --threads (or a
memory limit's share) into the BLAS variables before OpenBLAS reads them. `load_command`
imports the subcommand's module: under a memory limit too small to load anything it refuses
at once; a library that cannot load, logs while loading, or (OpenBLAS) signals itself is one
line and status 1. Once loaded, the command's `@common.entry` takes over (cli/common.py).
"""

from __future__ import annotations

import importlib
import os
import signal

from numpy_gpt2.cli import common
from numpy_gpt2.cli.stopping import HANGUP, STOP_SIGNALS


def _stop_now(signum, frame):
    """During the imports nothing is written yet: end at once (no KeyboardInterrupt
    traceback out of whichever module was being imported)."""
    what = {signal.SIGINT: "\n{}: interrupted (Ctrl-C)", signal.SIGTERM: "{}: terminated (SIGTERM)"
            }.get(signum, "{}: hung up (SIGHUP)")
    try:  # (after the terminal's ^C, a new line)
        os.write(2, (what.format(common._prog) + "\n").encode())
    finally:
        os._exit(128 + signum)


def stop_quietly_during_imports(prog: str | None = None) -> None:
    """SIGINT / SIGTERM / SIGHUP end the process at once, quietly, until a command's entry()
    takes over (its main then cleans up in `finally` blocks); a SIGHUP ignored when the
    command started (nohup) stays ignored. Also: a closed standard stream's
    descriptor (0, 1, 2) gets /dev/null, so that no file the command opens later takes its
    number (and receives what is printed); Python's sys.stdin/out/err stay None, as closed."""
    if prog:
        common._prog = prog  # (the line _stop_now writes names the command as it was run)
    for signum in STOP_SIGNALS + HANGUP:
        if signum in HANGUP and signal.getsignal(signum) == signal.SIG_IGN:
            continue  # nohup
        signal.signal(signum, _stop_now)
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            try:
                opened = os.open(os.devnull, os.O_RDWR)
                if opened != fd:  # (a lower one was free: cannot happen in order 0, 1, 2)
                    os.dup2(opened, fd)
                    os.close(opened)
            except OSError:
                pass


class LibraryExitWatch:
    """While armed: a C library that ends the process itself with exit() (OpenBLAS does when it
    cannot allocate its buffers, after its own line) gets our line added, naming the resource,
    from a handler in the C library's exit list (glibc's __cxa_atexit). disarm() removes the
    handler again (__cxa_finalize) while Python still runs: after Python's own exit it must
    not run. Where there is no such C function, nothing is watched. A command can add
    cleanups to `active.cleanups` (e.g. train's: remove the run directory it created and has
    saved nothing in): they run in that handler, after the line."""

    active = None  # the armed watch of the command running now

    def __init__(self, prog: str):
        self.prog, self.armed, self.handle, self.cleanups = prog, True, None, []
        LibraryExitWatch.active = self
        try:
            import ctypes
            libc = ctypes.CDLL(None)
            self._finalize = getattr(libc, "__cxa_finalize")  # (getattr: no name mangling)
            self._finalize.argtypes = [ctypes.c_void_p]
            register = getattr(libc, "__cxa_atexit")
            register.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
            self._hook = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(self._exiting)
            self._token = ctypes.create_string_buffer(1)  # our "DSO handle": any unique address
            if register(ctypes.cast(self._hook, ctypes.c_void_p), None,
                        ctypes.addressof(self._token)) == 0:
                self.handle = ctypes.addressof(self._token)
        except (OSError, AttributeError, ImportError, MemoryError, TypeError):
            pass

    def _exiting(self, _):
        if self.armed:
            try:
                os.write(2, f"{self.prog}: error: out of memory (a library gave up allocating "
                            f"memory and ended the process)\n".encode())
            except OSError:
                pass
            for cleanup in list(self.cleanups):
                try:
                    cleanup()
                except BaseException:  # (the process is ending: nothing else to do)
                    pass

    def disarm(self) -> None:
        self.armed = False
        if LibraryExitWatch.active is self:
            LibraryExitWatch.active = None
        if self.handle is not None:
            self._finalize(self.handle)  # runs (disarmed) and removes our handler
            self.handle = None


class HeldLogs:
    """While a command's libraries load: log records that a library sends to Python's root
    logger are held, not printed. Under a memory limit the standard library's hashlib logs a
    traceback for every hash it cannot load (`ERROR:root:code for hash md5 was not found.`,
    seen at `ulimit -v 102400`), before the import that fails is reported in our one line.
    If loading fails, the records are dropped (the one line names the cause); if it succeeds,
    each held warning or error is one line on stderr (`PROG: warning: while starting: ...`)."""

    def __init__(self):
        import logging  # (hashlib imports it anyway; about 5 ms)

        class Hold(logging.Handler):
            def emit(handler, record):
                handler.records.append(record)

        self.root, self.hold = logging.getLogger(), Hold(logging.WARNING)
        self.hold.records = []
        self.root.addHandler(self.hold)  # (a root logger with a handler: no basicConfig())

    def release(self, prog: str | None) -> None:
        """Stop holding; with prog, print the held records as one-line warnings."""
        self.root.removeHandler(self.hold)
        for record in self.hold.records if prog else ():
            why = record.exc_info[1] if record.exc_info else None
            because = f" ({type(why).__name__}: {common.one_line(why)})" if why is not None else ""
            common._say(prog, f"warning: while starting: {common.one_line(record.getMessage())}"
                              f"{because}")
        self.hold.records = []


def threads_from_argv(argv) -> None:
    """--threads N into the BLAS and thread-pool variables, before NumPy loads OpenBLAS
    (which reads them once). Without --threads, $NUMPY_GPT2_THREADS does the same (the BLAS
    variables already set win)."""
    for i, a in enumerate(argv):
        value = a.split("=", 1)[1] if a.startswith("--threads=") else \
            argv[i + 1] if a == "--threads" and i + 1 < len(argv) else None
        if value is not None and value.isdigit() and int(value) >= 1:
            for name in (common.THREADS_ENV, *common.BLAS_THREADS_ENV):
                os.environ[name] = value
            return
    value = os.environ.get(common.THREADS_ENV, "")
    if value.isdigit() and int(value) >= 1:
        for name in common.BLAS_THREADS_ENV:
            os.environ.setdefault(name, value)
    elif "OPENBLAS_NUM_THREADS" not in os.environ:
        _blas_threads_for_memory_limit()


def _blas_threads_for_memory_limit() -> None:
    """Under an address-space limit (ulimit -v), no more OpenBLAS threads than fit: each
    reserves a buffer, and OpenBLAS answers a thread it cannot create by sending itself
    SIGINT (see _import_command). The pool's threads follow the same limit
    (fast.threads.thread_count)."""
    from numpy_gpt2.fast.threads import cpu_count, threads_for_memory_limit
    fit = threads_for_memory_limit()
    if fit is not None and fit < cpu_count():
        os.environ["OPENBLAS_NUM_THREADS"] = str(fit)


# Loading a command's libraries (Python, NumPy with OpenBLAS, safetensors, tiktoken,
# numpy_gpt2) takes 104-116 MB of address space (VmPeak after the import, OpenBLAS on one
# thread; AMD EPYC, Python 3.11, numpy 2.4). Just below that, NumPy's own module set-up or
# the interpreter can crash (SIGSEGV) when an allocation fails inside them (seen at 96 and
# 100 MB), before any line of ours: a limit under this floor is refused before loading.
MEMORY_FLOOR_MB = 128


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
            _stop_now(signal.SIGINT, None)


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
    limit = memory_limit_mb()
    if limit is not None:
        return (f"out of memory while starting (loading its libraries under a memory limit of "
                f"{limit} MB, ulimit -v; {detail})")
    return (f"cannot load its libraries ({detail}); reinstall numpy_gpt2 and its requirements "
            f"(pip install numpy_gpt2)")


def memory_limit_mb() -> int | None:
    """The address-space limit (ulimit -v) in MB, None when there is none."""
    from numpy_gpt2.fast.threads import address_space_limit_mb  # (no NumPy: stdlib only)
    return address_space_limit_mb()


def load_command(name: str, prog: str):
    """The module numpy_gpt2.cli.<name>, or the exit status (1) when it cannot load, after
    one line on stderr: a memory limit under MEMORY_FLOOR_MB, a library that could not load
    (starting_failed says why). A library's log lines while loading are held (HeldLogs)."""
    limit = memory_limit_mb()
    if limit is not None and limit < MEMORY_FLOOR_MB:
        common._say(prog, f"error: out of memory while starting: a memory limit of {limit} MB "
                          f"(ulimit -v) is below the {MEMORY_FLOOR_MB} MB that loading NumPy, "
                          f"OpenBLAS and numpy_gpt2 takes")
        return common.EXIT_FAILURE
    held = None
    try:
        held = HeldLogs()  # (a library's own log lines while it loads)
        import hashlib  # noqa: F401 (now, held: it logs a traceback per hash it cannot load,
        # and tiktoken, huggingface_hub, ... would import it later, outside the hold)
        module = _import_command(name)
    except Exception as e:  # NumPy, OpenBLAS, ... could not load: one line, status 1
        if held is not None:
            held.release(None)
        if os.environ.get(common.TRACEBACK_ENV) == "1":
            raise
        common._say(prog, f"error: {starting_failed(e)}")
        return common.EXIT_FAILURE
    held.release(prog)
    return module

