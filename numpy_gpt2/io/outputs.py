"""Where outputs go: the one rule every file or directory numpy_gpt2's commands write follows.

A file output (a dump, an llm.c file) is written atomically (numpy_gpt2.io.atomic) as a
regular file: an existing file of that name is replaced only when it is the same kind of
output (or empty), a symlink is followed and its target replaced (the link stays), and a
device, FIFO or socket is never replaced nor written (ValueError). A directory output (a converted checkpoint, prepared token files, a training run)
gets its files the same way, and never replaces a file it holds that the command did not
write. Missing parent directories are created when the output is written, and removed again
if it fails. An output inside one of the command's own inputs, or a directory output that
contains one, is refused; so are an empty path, a symlink loop, and a file output ending in
a path separator. Checked before any work; ValueErrors name the path (the command line adds
its flag). Inputs: numpy_gpt2.io.inputs. See docs/scripts.md.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import tempfile

_RESOURCE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.ENOMEM}
_SPECIAL = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
            (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"))


def _special(path) -> str | None:
    """What path is when it is a device, FIFO or socket (following symlinks); else None."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    return next((what for test, what in _SPECIAL if test(mode)), None)


def check_path_name(path, file: bool) -> None:
    """ValueError naming path when it is empty, a symlink loop (or a chain of symlinks too
    long to follow: ELOOP), or -- for a file output (file=True) -- ends in a path separator."""
    path = os.fspath(path)
    if not path:
        raise ValueError(f"'': an empty path; give a {'file' if file else 'directory'} name")
    try:
        os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ValueError(f"{path}: is a symlink loop (or a chain of symlinks too long to "
                             f"follow); give a file or directory name that resolves") from None
    if file and path.endswith(tuple(s for s in (os.sep, os.altsep) if s)):
        raise ValueError(f"{path}: ends with {path[-1]!r}: give a file name")


def _check_parents(real: str, path) -> None:
    """ValueError when the nearest existing ancestor of real is not a writable directory
    (missing ones are created at write time)."""
    d = os.path.dirname(real)
    while not os.path.lexists(d) and os.path.dirname(d) != d:
        d = os.path.dirname(d)
    if not os.path.isdir(d):
        raise ValueError(f"{path}: {d} is not a directory")
    if not os.access(d, os.W_OK | os.X_OK):
        raise ValueError(f"{path}: directory {d} is not writable")
    try:  # some directories hold no new entries whatever their mode says (/proc, /sys)
        os.rmdir(tempfile.mkdtemp(prefix=".numpy_gpt2-probe-", dir=d))
    except OSError as e:
        if e.errno not in _RESOURCE_ERRNOS:  # (a full disk is reported when writing, status 1)
            raise ValueError(f"{path}: cannot create anything in {d} ({e.strerror})") from None


def output_file(path, ours=None) -> str:
    """The path a file output is written to: path itself, or its symlink's final target.

    ValueError naming path when it (or its target) is a directory, a device, a FIFO or a
    socket, when its directory cannot be created or written, or when it is a non-empty
    file that ours(path) (given) does not recognise as this command's kind of output; also
    check_path_name's (empty, a symlink loop, a trailing path separator)."""
    check_path_name(path, file=True)
    real = os.path.realpath(path)
    if ours is not None and os.path.isfile(real) and os.path.getsize(real) and not ours(real):
        raise ValueError(f"{path}: already exists and was not written by this command (not "
                         f"its kind of file); remove it or choose another name")
    kind = _special(real)
    if kind:
        raise ValueError(f"{path}: is {kind}; only a regular file is written there (never a "
                         f"device, FIFO or socket): give a file name")
    if os.path.isdir(real):
        raise ValueError(f"{path}: is a directory; give a file name, e.g. "
                         f"{os.path.join(path, 'out')}")
    _check_parents(real, path)
    return real


def write_output_file(path, write, ours=None, on_commit=None) -> None:
    """write(tmp) -- which writes the whole file at the temporary path tmp -- committed onto
    `path` (a symlink's target) atomically: a complete new file or the old one, never half of
    one, with the usual permissions. output_file's checks first (its ValueErrors)."""
    from numpy_gpt2.io.atomic import write_files_atomically
    real = output_file(path, ours=ours)
    write_files_atomically(os.path.dirname(real), {os.path.basename(real): write}, on_commit)


def output_directory(path, names=(), ours=None) -> str:
    """The directory a directory output is written to (path; a symlink's target).

    names: the files the command writes there. ValueError naming path when it exists and is
    not a directory, when one of names there is a directory, device, FIFO or socket, or
    when some of names exist and ours(directory) is not True (they were not written by
    this command, e.g. a user's config.json); also when the directory cannot be created, and
    check_path_name's (empty, a symlink loop)."""
    check_path_name(path, file=False)
    real = os.path.realpath(path)
    if os.path.exists(real) and not os.path.isdir(real):
        raise ValueError(f"{path}: is {_special(real) or 'a file'}, not a directory")
    _check_parents(real, path)
    taken = [n for n in names if os.path.lexists(os.path.join(real, n))]
    for name in taken:
        target = os.path.join(real, name)
        kind = _special(target) or ("a directory" if os.path.isdir(target) else None)
        if kind:
            raise ValueError(f"{path}: {name} there is {kind}; it is never replaced")
    if taken and not (ours is not None and ours(real)):
        raise ValueError(f"{path}: already holds {', '.join(taken)}, which this command did not "
                         f"write and would replace; remove them or choose another directory")
    return real


def check_outside_inputs(out, inputs) -> None:
    """ValueError when the output out is one of inputs, inside an input directory, or a
    directory that contains an input (either way a later run would read the output as input,
    or write beside its own input)."""
    target = os.path.realpath(out)
    for item in inputs:
        source = os.path.realpath(item)
        inside = target == source or (os.path.isdir(source) and
                                      os.path.commonpath([target, source]) == source)
        if inside:
            raise ValueError(f"{out}: is inside the input {item}; a later run would read the "
                             f"output as input: write it elsewhere")
        if os.path.commonpath([target, source]) == target:
            raise ValueError(f"{out}: contains the input {item}; the output would be written "
                             f"beside it and read as input by a later run: write it elsewhere")


def safetensors_metadata(path) -> dict:
    """The string metadata of a safetensors file ({} when it has none or is not one): how a
    command recognises its own earlier output (e.g. {"format": "numpy_gpt2.activations"})."""
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if size > 1 << 26:  # not a safetensors header (or absurd)
                return {}
            metadata = json.loads(f.read(size)).get("__metadata__", {})
        return metadata if isinstance(metadata, dict) else {}
    except (OSError, ValueError, AttributeError):
        return {}
