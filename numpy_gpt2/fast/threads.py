"""The worker threads for work split into pieces (the fast layers, the optimizer), and the
BLAS library's own threads.

NumPy runs a ufunc on one core, but releases the GIL while it runs, so pieces of one array
handed to threads use every core.

How many: set_threads(n)'s n when set (the benchmarks match PyTorch's thread count; a
--threads option calls it), else $NUMPY_GPT2_THREADS when set (scripts/train.py --threads
sets it), else the CPUs this process may run on (its affinity mask, os.sched_getaffinity:
mpiexec -bind-to core, taskset, a Slurm allocation), not the machine's core count, so a
process pinned to one core does not run two busy threads on it. set_threads(n) and
$NUMPY_GPT2_THREADS set OpenBLAS's own thread count to n as well. See docs/speed.md
("Threads") for when to use fewer threads than cores.

Many small matmuls (attention: one per head and query block) are faster shared out between
the pool's threads with a single-threaded BLAS inside each than each one split by BLAS over
every core: BLAS's threads must meet at the end of every call, and on a busy machine each
meeting can wait for a time slice. blas_single_threaded() switches OpenBLAS (NumPy's usual
BLAS) to one thread for such a region, through its own openblas_set_num_threads (found in
the loaded library with ctypes); with another BLAS it reports that it cannot, and the callers
keep the plain path.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import functools
import itertools
import os
import threading

_count = None  # threads set by set_threads(), None: thread_count()


def cpu_count() -> int:
    """The CPUs this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


_local = threading.local()  # .count: this thread's override (blas_threads_only), else None


def threads() -> int:
    """Threads to share work between: 1 inside blas_threads_only() on this thread, else
    pool_threads()."""
    return getattr(_local, "count", None) or pool_threads()


def pool_threads() -> int:
    """The pool's size: set_threads(n)'s n, else thread_count() (blas_threads_only() does
    not change it: attention shares its heads out between the pool's threads even there)."""
    return _count or thread_count()


@contextlib.contextmanager
def blas_threads_only():
    """Within the block, on the calling thread, threads() is 1: the fast layers share no work
    with the pool, and matmuls run on BLAS's own threads (fast.forward.matmul_fast).

    For callers that want BLAS's own threads for their matmuls. model.forward used it until
    measured on a busy 2-core AMD EPYC, where BLAS's threads lost up to 10x to the pool's
    (they meet many times per call, each meeting waiting for a time slice); now nothing in
    the library does (docs/speed.md, "Threads").
    """
    before = getattr(_local, "count", None)
    _local.count = 1
    try:
        yield
    finally:
        _local.count = before


def set_threads(n: int | None) -> None:
    """Use n threads from now on, for the pool AND for BLAS's own threads (OpenBLAS: its
    thread count is set to n too, so set_threads(1) makes everything single-threaded);
    None: back to thread_count() for the pool and BLAS's count from before the first call.
    What a --threads command-line option should call. Raises ValueError unless n is a
    positive integer or None. The pool is made again on its next use."""
    global _count
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"threads must be a positive integer or None, got {n!r}")
    _count = n
    _pool.cache_clear()
    blas = _blas()
    if blas is not None:
        with _blas_lock:
            blas[1](n if n is not None else _blas_default())


THREADS_ENV = "NUMPY_GPT2_THREADS"


def thread_count() -> int:
    """Worker threads to use: $NUMPY_GPT2_THREADS (an integer >= 1), else the CPUs this
    process may run on (see module doc), no more than fit an address-space limit
    (threads_for_memory_limit). ValueError naming the variable when it is not a positive
    integer."""
    value = os.environ.get(THREADS_ENV)
    if value:
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"{THREADS_ENV}={value!r}: expected an integer >= 1")
        return int(value)
    return min(cpu_count(), threads_for_memory_limit() or cpu_count())


# Each thread that calls OpenBLAS gets its own work buffer from OpenBLAS (and its own
# stack): measured with the dump command on a 1-layer model under ulimit -v on a 2-core AMD
# EPYC: one thread ran from 160 MB, two needed about 400 MB; in between, a second thread's
# buffer could not be mapped and OpenBLAS's sgemm kernel crashed (SIGSEGV) in it, or OpenBLAS
# ended the process.
BLAS_BASE_MB, BLAS_MB_PER_THREAD = 200, 100


def address_space_limit_mb() -> int | None:
    """The process's address-space limit (RLIMIT_AS, ulimit -v) in MB; None when there is
    none (or no way to ask)."""
    try:
        import resource
        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    except (ImportError, OSError, ValueError, AttributeError):
        return None
    return None if limit == resource.RLIM_INFINITY else limit >> 20


def threads_for_memory_limit() -> int | None:
    """The threads that fit under the process's address-space limit (address_space_limit_mb):
    one per BLAS_MB_PER_THREAD beyond the first BLAS_BASE_MB, at least one; None when there
    is no limit."""
    limit = address_space_limit_mb()
    if limit is None:
        return None
    return max(1, (limit - BLAS_BASE_MB) // BLAS_MB_PER_THREAD)


@functools.lru_cache(maxsize=1)
def _pool(n):
    return concurrent.futures.ThreadPoolExecutor(max_workers=n)


def thread_pool():
    """The shared pool: pool_threads() worker threads, made on first use."""
    return _pool(pool_threads())


def run_shares(work, n):
    """work(0), ..., work(n - 1) at the same time, on the calling thread and up to n - 1 pool
    threads. Returns their results in order; the first exception raised is raised here,
    after all have finished.

    Shares are claimed, not assigned: each thread takes the next share nobody has started,
    the calling thread included, so a pool thread that the system does not run soon (another
    process keeping its core busy) is not waited for: the caller does its share too, and
    waits only for shares already under way. Which thread runs a share never changes its
    result (every caller's work is the same arithmetic on the same numbers)."""
    if n == 1:
        return [work(0)]
    results = [None] * n
    claim = itertools.count()  # next(claim) is atomic under the GIL

    def run():
        for i in iter(lambda: next(claim), None):
            if i >= n:
                return
            results[i] = work(i)

    helpers = [thread_pool().submit(run) for _ in range(n - 1)]
    try:
        run()
    finally:
        for h in helpers:
            h.cancel()  # not started yet: every share is taken, nothing left for it
        _wait_through_signals(helpers)
    for h in helpers:
        if not h.cancelled():
            h.result()  # a helper's exception
    return results


def _wait_through_signals(futures) -> None:
    """Wait until every future is done, even when an exception (a signal's KeyboardInterrupt)
    interrupts the wait: the shares under way must end before the caller moves on, which may
    put OpenBLAS's thread count back (blas_single_threaded) while a share is inside a BLAS call
    (seen: a process that hung at exit after a burst of signals). The first such exception is
    raised once everything has ended."""
    stop = None
    while True:
        try:
            concurrent.futures.wait(futures)
            break
        except BaseException as e:  # noqa: B902 (raised again below)
            stop = stop or e
    if stop is not None:
        raise stop


def claim_pieces(n_pieces, worker, context=contextlib.nullcontext):
    """[piece(0), ..., piece(n_pieces - 1)] computed by threads() threads, each made its own
    piece = worker() (so a thread's scratch buffers are made once) and claiming the next
    piece nobody has started until none is left: a thread the system runs less does less of
    the work, and pieces are claimed one at a time, not assigned in runs up front. Results in
    piece order, whichever thread computed each. Each thread runs its pieces inside
    `with context():` (e.g. the caller's np.errstate: NumPy's is per thread)."""
    results = [None] * n_pieces
    claim = itertools.count()  # next(claim) is atomic under the GIL

    def share(_):
        piece = worker()
        with context():
            for i in iter(lambda: next(claim), None):
                if i >= n_pieces:
                    return
                results[i] = piece(i)

    run_shares(share, max(1, min(threads(), n_pieces)))
    return results


def for_each_piece(work, n_pieces, min_pieces=2):
    """work(i) for i in range(n_pieces), shared out in contiguous runs between threads()
    threads (run_shares); on the calling thread alone when n_pieces < min_pieces."""
    n = min(threads(), n_pieces)
    if n_pieces < min_pieces or n == 1:
        for i in range(n_pieces):
            work(i)
        return

    def share(k):
        for i in range(k * n_pieces // n, (k + 1) * n_pieces // n):
            work(i)

    run_shares(share, n)


def _openblas_functions():
    """(get, set) of the loaded OpenBLAS's thread count, or None when none is found.

    NumPy's wheels bundle OpenBLAS as libscipy_openblas (symbols scipy_openblas_*64_);
    a system OpenBLAS has openblas_*. Found among the libraries this process has mapped."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line and "/" in line}
    except OSError:  # not Linux
        return None
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)  # already loaded: the same library, not a second copy
        except OSError:
            continue
        for prefix, suffix in (("scipy_", "64_"), ("", ""), ("", "64_")):
            get = getattr(lib, f"{prefix}openblas_get_num_threads{suffix}", None)
            put = getattr(lib, f"{prefix}openblas_set_num_threads{suffix}", None)
            if get is not None and put is not None:
                get.restype, get.argtypes = ctypes.c_int, []
                put.restype, put.argtypes = None, [ctypes.c_int]
                return get, put
    return None


@functools.lru_cache(maxsize=1)
def _blas():
    """The loaded OpenBLAS's (get, set), or None. On first sight, $NUMPY_GPT2_THREADS (when
    set) becomes BLAS's thread count too."""
    found = _openblas_functions()  # callers have imported NumPy, so its BLAS is mapped
    if found is not None:
        _blas_default.value = found[0]()
        if os.environ.get(THREADS_ENV) and _count is None:
            found[1](thread_count())
    return found


def _blas_default():
    """BLAS's own thread count as the process started (OPENBLAS_NUM_THREADS, else its CPUs)."""
    return _blas_default.value


_blas_default.value = 1


_blas_lock = threading.Lock()


def can_limit_blas() -> bool:
    """True when blas_single_threaded() can really make BLAS single-threaded."""
    return _blas() is not None


@contextlib.contextmanager
def blas_single_threaded():
    """Within the block, BLAS calls run on the calling thread alone (OpenBLAS: its thread
    count is set to 1 and restored after). Process-wide: OpenBLAS has one setting for all
    threads, so one region at a time holds it. A no-op when can_limit_blas() is False."""
    blas = _blas()
    if blas is None:
        yield
        return
    get, put = blas
    with _blas_lock:
        before = get()
        put(1)
        try:
            yield
        finally:
            put(before)
