"""The exception types (a checkpoint or config that cannot be used as given, non-finite
numbers), and how a resource running out is told apart from bad input, from any library."""

import errno
import re


class CheckpointError(ValueError):
    """A checkpoint file, its keys, shapes, dtypes or its config are not what GPT-2 needs.

    The message names the file and the offending key, shape or dtype, and what was expected.
    """


class NonFiniteError(ValueError):
    """The logits (or the loss) hold NaN or infinity.

    The message names the first named activation, in forward order (wte, wpe, h.0.ln_1,
    h.0.attn.c_attn, ...; see numpy_gpt2.activations), where a non-finite value appeared, the
    sequence and position there, and any weights that are not finite. A ValueError, so the
    scripts report it in one line and exit with status 2.
    """


# Errors of resources (not of the input, not bugs): errno -> the words for them.
RESOURCE_ERRNOS = {errno.ENOSPC: "out of disk space", errno.EDQUOT: "over the disk quota",
                   errno.EFBIG: "the file is too large for the filesystem",
                   errno.EIO: "an I/O error", errno.ENOMEM: "out of memory",
                   errno.EMFILE: "too many open files", errno.ENFILE: "too many open files",
                   errno.EAGAIN: "out of memory or processes (cannot start a thread)"}
# The same when another library reports them only in its message (safetensors' Rust errors,
# threads, shared libraries that cannot be mapped).
_RESOURCE_WORDS = [(re.compile(p, re.I), what) for p, what in (
    (r"os error (\d+)", None),  # Rust's io::Error, e.g. SafetensorError
    (r"no space left on device", "out of disk space"),
    (r"cannot allocate memory|out of memory|memory allocation|failed to map segment|"
     r"mmap failed|std::bad_alloc", "out of memory"),
    (r"can't start new thread|cannot start new thread|thread creation failed|"
     r"pthread_create failed", "out of memory or threads (cannot start a thread)"))]


def resource_problem(error: BaseException) -> str | None:
    """"out of memory", "out of disk space", ... when error (or the error it came from) is a
    resource running out or an I/O error, from any library; else None."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, MemoryError):
            return "out of memory"
        if isinstance(error, OSError) and error.errno in RESOURCE_ERRNOS:
            return RESOURCE_ERRNOS[error.errno]
        if isinstance(error, (RuntimeError, ImportError, OSError)) or \
                type(error).__name__ == "SafetensorError":
            text = str(error)
            for pattern, what in _RESOURCE_WORDS:
                match = pattern.search(text)
                if match and what is None:
                    what = RESOURCE_ERRNOS.get(int(match.group(1)))
                if match and what:
                    return what
        error = error.__cause__ or error.__context__
    return None


def describe(error: BaseException) -> str:
    """One line for an error: the resource when it is one (with the file it names), else its
    message (never empty: the exception's name then)."""
    what = resource_problem(error)
    filename = getattr(error, "filename", None)
    if what:
        return f"{filename}: {what}" if filename else what
    text = " ".join(str(getattr(error, "strerror", None) or error).split())
    if isinstance(error, OSError) and error.strerror and filename:
        text = f"{filename}: {error.strerror}"
    return text or type(error).__name__


def not_utf8_text(error: UnicodeDecodeError, offset: int = 0) -> str:
    """The words every reader of text uses for bytes that are not UTF-8: "not UTF-8 text
    (invalid continuation byte: byte 0xe9 at offset 3)". offset: where error.object starts in
    the file (a reader that decodes it in pieces)."""
    bad = error.object[error.start] if error.start < len(error.object) else None
    byte = f"byte 0x{bad:02x}" if bad is not None else "the bytes"
    return f"not UTF-8 text ({error.reason}: {byte} at offset {offset + error.start})"
