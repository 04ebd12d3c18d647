"""The worker threads for elementwise work split into pieces (the fast layers, the optimizer).

NumPy runs a ufunc on one core, but releases the GIL while it runs, so pieces of one array
handed to threads use every core.

How many: $NUMPY_GPT2_THREADS when set (scripts/train.py --threads sets it, with
OPENBLAS_NUM_THREADS for BLAS), else the CPUs this process may run on (its affinity mask,
os.sched_getaffinity: mpiexec -bind-to core, taskset, a Slurm allocation), not the machine's
core count, so a process pinned to one core does not run two busy threads on it.
"""

from __future__ import annotations

import concurrent.futures
import functools
import os


THREADS_ENV = "NUMPY_GPT2_THREADS"


def thread_count() -> int:
    """Worker threads to use: $NUMPY_GPT2_THREADS (an integer >= 1), else the CPUs this
    process may run on (see module doc). ValueError naming the variable when it is not a
    positive integer."""
    value = os.environ.get(THREADS_ENV)
    if value:
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"{THREADS_ENV}={value!r}: expected an integer >= 1")
        return int(value)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity masks (macOS, Windows)
        return os.cpu_count() or 1


@functools.lru_cache(maxsize=1)
def thread_pool():
    """The shared pool: thread_count() worker threads, made on first use."""
    return concurrent.futures.ThreadPoolExecutor(max_workers=thread_count())
