"""What a text or data input may be: the one rule every command that reads a file applies.

A text input (generate's --prompts-file, perplexity's FILE, train --data FILE, prepare's
INPUTs) is a regular file or a pipe read once to its end (a FIFO, or process substitution's
/dev/fd/N). A character or block device (/dev/zero, /dev/full: endless) and a socket are
refused at once, as are an empty path and a symlink loop. check_text_input raises a
ValueError naming the path (the command line adds its flag). Outputs: numpy_gpt2.io.outputs.
See docs/scripts.md.
"""

from __future__ import annotations

import errno
import os
import stat

_REFUSED = ((stat.S_ISCHR, "is a device, not a text file"),
            (stat.S_ISBLK, "is a device, not a text file"),
            (stat.S_ISSOCK, "is a socket, not a text file"))


def check_text_input(path) -> None:
    """ValueError naming path when it is empty, a symlink loop, a device or a socket. A
    missing or unreadable file is left to the reader (its OSError says why)."""
    path = os.fspath(path)
    if not path:
        raise ValueError("'': an empty path; give a file name")
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ValueError(f"{path}: is a symlink loop (or a chain of symlinks too long to "
                             f"follow)") from None
        return
    for test, what in _REFUSED:
        if test(mode):
            raise ValueError(f"{path}: {what}")


def is_pipe(path) -> bool:
    """path is a FIFO or a pipe (/dev/fd/N of process substitution): it can be read only once."""
    try:
        return stat.S_ISFIFO(os.stat(path).st_mode)
    except OSError:
        return False
