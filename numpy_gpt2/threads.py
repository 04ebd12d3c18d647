"""The worker threads for elementwise work split into pieces (the fast layers, the optimizer).

NumPy runs a ufunc on one core, but releases the GIL while it runs, so pieces of one array
handed to threads use every core.
"""

from __future__ import annotations

import concurrent.futures
import functools
import os


@functools.lru_cache(maxsize=1)
def thread_pool():
    """The shared pool: one worker thread per core, made on first use."""
    return concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1)
