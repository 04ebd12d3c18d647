"""alarm(seconds): a test that would hang fails with TimeoutError instead."""

import contextlib
import signal


@contextlib.contextmanager
def alarm(seconds):
    """Fail (TimeoutError) instead of hanging."""
    def ring(signum, frame):
        raise TimeoutError(f"load() took more than {seconds} s")
    old = signal.signal(signal.SIGALRM, ring)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
