"""Saving several files into a directory as ONE atomic commit, recovering after a crash, and
locking a directory against a second writer.

A save (write_files_atomically) is a small write-ahead journal, so that whatever moment a
process is killed at, the directory holds either the previous save or the new one, whole:

    1. stage    DIR/.save-XXXX.new/ gets every new file, each written completely and fsynced,
                then the staging directory itself is fsynced.  The previous save is untouched.
    2. commit   one rename: .save-XXXX.new -> .save-XXXX.commit, then DIR is fsynced.  This
                rename is THE switch: before it the save does not exist, after it it does.
    3. install  each committed file is renamed over its old name in DIR (in the order the
                files were given), DIR is fsynced, the empty .commit directory removed.

recover(DIR) finishes step 3 for a committed save that a crash interrupted (renames are
idempotent: a file already moved is simply no longer there), and deletes a staging directory
that never committed (a crash in step 1). Every save calls it first, so crashes leave no
debris for longer than until the next save; scripts/train.py also calls it at start, under
the run directory's lock, before it reads the run.

The pattern is the classic one of write-ahead logs (a record is durable once its commit is;
recovery replays committed work and drops the rest): here the "log" is the staging
directory, and a POSIX rename within one filesystem is the atomic commit.

While a process stages or installs a save it holds an flock on its staging directory, so
recover() in another process never touches a save that is still being written. flock locks
belong to the open file: the kernel drops them when the process dies, even by kill -9, so a
crashed writer's lock never blocks anyone. (POSIX only: without fcntl, e.g. on Windows,
nothing is locked.)
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None

STAGING_PREFIX = ".save-"
STAGING, COMMITTED = ".new", ".commit"
# Temporary files of the earlier per-file scheme: .<name>.<8 random characters>.tmp
_OLD_TEMP = re.compile(r"\.(.+)\.[a-z0-9_]{8}\.tmp")


class DirectoryLocked(Exception):
    """Another process holds the lock on this directory (see lock_directory)."""


def fsync_directory(path) -> None:
    """Make the directory's entries (files created, renamed, removed in it) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:  # some filesystems cannot fsync a directory: nothing more to do there
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _fsync_file(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _try_lock(path) -> int | None:
    """An open descriptor of path holding an exclusive flock on it, or None when another
    open file (another process) holds one. Without fcntl, or on a filesystem that has no
    flock: always a descriptor (nothing is locked there)."""
    fd = os.open(path, os.O_RDONLY)
    if fcntl is None:
        return fd
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL):
            return fd  # a filesystem without flock (some network ones): saving still works
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        raise
    return fd


def lock_directory(path) -> int:
    """Lock the directory path against other processes: returns an open descriptor holding an
    exclusive flock on the directory itself (no lock file: nothing is left behind). Keep it
    open while you write; closing it, or the process ending in any way, releases the lock.
    Raises DirectoryLocked when another process holds it, OSError when path cannot be opened."""
    fd = _try_lock(path)
    if fd is None:
        raise DirectoryLocked(f"{path} is locked by another process")
    return fd


def _install(committed: str, directory: str) -> None:
    """Step 3: rename every file of the committed save onto its name in directory."""
    entries = []
    for entry in os.listdir(committed):
        index, _, name = entry.partition("-")
        entries.append((int(index) if index.isdigit() else 0, entry, name or entry))
    for _, entry, name in sorted(entries):
        os.replace(os.path.join(committed, entry), os.path.join(directory, name))
    fsync_directory(directory)
    os.rmdir(committed)  # if this is lost in a crash, the next recover() removes it


def recover(directory, names=()) -> None:
    """Finish or discard saves in directory that a crash interrupted (see module doc): a
    committed save is installed, an uncommitted staging directory deleted; saves that another
    live process is writing are left alone. names: file names whose temporary files from the
    earlier per-file scheme (.<name>.XXXXXXXX.tmp) are deleted too. A directory that does not
    exist has nothing to recover."""
    directory = os.fspath(directory)
    try:
        entries = sorted(os.listdir(directory))
    except FileNotFoundError:
        return
    for entry in entries:
        path = os.path.join(directory, entry)
        old_temp = _OLD_TEMP.fullmatch(entry)
        if old_temp and old_temp.group(1) in names:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
            continue
        if not (entry.startswith(STAGING_PREFIX) and entry.endswith((STAGING, COMMITTED))
                and os.path.isdir(path) and not os.path.islink(path)):
            continue
        try:
            fd = _try_lock(path)
        except FileNotFoundError:  # finished by its writer meanwhile
            continue
        if fd is None:  # a live process is writing it
            continue
        try:
            if entry.endswith(COMMITTED):
                _install(path, directory)
            else:
                shutil.rmtree(path)
        finally:
            os.close(fd)


def make_directories(directory) -> list[str]:
    """Create directory and its missing parents (like mkdir -p); returns the ones created,
    deepest first, for remove_directories. A symlink (also a dangling one) is followed: its
    target is created and the link stays."""
    missing, d = [], os.path.realpath(directory)
    top = d
    while not os.path.exists(d) and os.path.dirname(d) != d:
        missing.append(d)
        d = os.path.dirname(d)
    os.makedirs(top, exist_ok=True)
    return missing


_OS_ERROR_IN_TEXT = re.compile(r"os error (\d+)")  # Rust's io::Error (the safetensors library)


def _naming(error: BaseException, temp: str, path: str) -> BaseException:
    """A writer's failure as an OSError naming the file being saved (not its temporary name,
    nor nothing): also the safetensors library's SafetensorError, which reports a full disk
    only in its text ("... (os error 28)"). Errors about other files (e.g. a file to copy) are
    left as they are."""
    if isinstance(error, OSError) and error.errno is not None:
        # shutil.copyfile names its source first and the file it writes second: an error
        # writing (a full disk, a file too large) is about the destination
        if error.filename not in (None, temp) and getattr(error, "filename2", None) != temp:
            return error  # about another file (e.g. one to copy that is missing)
    return library_os_error(error, path) or error


def library_os_error(error: BaseException, path) -> OSError | None:
    """error as an OSError (errno, message, path) about path: an OSError itself, or another
    library's error that reports one only in its text, as the safetensors library's
    SafetensorError does ("... (os error 28)"); None when there is none."""
    if isinstance(error, OSError) and error.errno is not None:
        return OSError(error.errno, error.strerror or os.strerror(error.errno), os.fspath(path))
    match = _OS_ERROR_IN_TEXT.search(str(error)) if type(error).__name__ == "SafetensorError" else None
    if match:
        number = int(match.group(1))
        return OSError(number, os.strerror(number), os.fspath(path))
    return None


def write_files_atomically(directory, writers: dict, on_commit=None) -> None:
    """Write several files into directory as one atomic commit (see module doc).

    writers: {file name: write(path)}; each writer must write its complete file at the path
    it is given (a temporary path). directory is created if needed. After a crash at any
    moment, directory holds either all the old files or all the new ones (once recover() or
    the next save has run); readers never see a half-written file.
    If a writer raises (a full disk: OSError ENOSPC; Ctrl-C: KeyboardInterrupt), nothing of
    the new save remains, the old files are untouched, and the exception propagates.
    Raises IsADirectoryError, before writing, when a name is taken by a directory. A writer's
    I/O error (also one the safetensors library reports as SafetensorError) is raised as an
    OSError naming the file's own path in directory. Directories created for the save (directory
    and missing parents) are removed again when it fails before its commit. on_commit(): called
    right after the commit (the new save exists from then on, whatever happens next).
    """
    directory = os.fspath(directory)
    made = make_directories(directory)
    try:
        _write_files(directory, writers, on_commit)
    except BaseException:
        remove_directories(made)  # (a save that committed is in the deepest: it stays)
        raise


def remove_directories(made) -> None:
    """Remove the directories make_directories created, deepest first, while they are empty."""
    for d in made:
        try:
            os.rmdir(d)
        except OSError:
            break


def _write_files(directory, writers: dict, on_commit) -> None:
    recover(directory, names=tuple(writers))
    for name in writers:
        if os.path.isdir(os.path.join(directory, name)):
            raise IsADirectoryError(f"{os.path.join(directory, name)} is a directory; cannot save "
                                    f"a file there")
    umask = os.umask(0)
    os.umask(umask)
    staging = tempfile.mkdtemp(prefix=STAGING_PREFIX, suffix=STAGING, dir=directory)
    committed = fd = None
    try:  # (from the line after mkdtemp: a signal while locking still removes the staging)
        fd = _try_lock(staging)  # ours alone: it was just created with a random name
        for index, (name, write) in enumerate(writers.items()):
            path = os.path.join(staging, f"{index}-{name}")
            try:
                write(path)
            except Exception as e:
                named = _naming(e, path, os.path.join(directory, name))
                if named is e:
                    raise
                raise named from e
            # the usual permissions (0644 under umask 022), whatever the writer made (the
            # safetensors library creates its files 0600)
            os.chmod(path, 0o666 & ~umask)
            _fsync_file(path)
        fsync_directory(staging)
        target = staging[:-len(STAGING)] + COMMITTED
        os.rename(staging, target)  # the commit
        committed = target
        if on_commit is not None:
            on_commit()
        fsync_directory(directory)
        _install(committed, directory)
    except BaseException:
        if fd is not None:  # first: removing needs descriptors, and we may be out of them
            os.close(fd)
            fd = None
        if committed is None:  # not committed: remove what was staged (also after a late signal)
            _remove_staging(staging, [f"{i}-{name}" for i, name in enumerate(writers)])
        else:  # committed: the new save is the save; finish installing it if we can
            with contextlib.suppress(OSError):
                _install(committed, directory)
        raise
    finally:
        if fd is not None:
            os.close(fd)


def _remove_staging(staging, entries) -> None:
    """Remove a staging directory that did not commit. shutil.rmtree opens descriptors; when
    there are none left (EMFILE: the very error that may have failed the save), the staged
    files are removed by name, which needs none. What still fails is left to recover()."""
    try:
        shutil.rmtree(staging)
        return
    except FileNotFoundError:
        return
    except OSError:
        pass
    for entry in entries:
        with contextlib.suppress(OSError):
            os.remove(os.path.join(staging, entry))
    with contextlib.suppress(OSError):
        os.rmdir(staging)
