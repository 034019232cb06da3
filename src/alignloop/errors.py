"""Errors a user can act on.

Every stage raises `AlignloopError` (or a subclass) for bad input. The CLI prints
its message as one line and exits non-zero, with no traceback: the message must
name the problem (the file, the key, the value) on its own.
"""

import errno
import shutil


class AlignloopError(Exception):
    """A problem with the user's input or environment, reported as one line."""

    exit_code = 2


class ConfigError(AlignloopError):
    """An unknown configuration key, a wrong type or an invalid value."""


class DataError(AlignloopError):
    """A missing, empty, corrupt or wrongly formatted data file."""


class CheckpointError(AlignloopError):
    """A checkpoint that is missing or cannot be loaded."""


class TrainingError(AlignloopError):
    """Training diverged (NaN or inf loss) or cannot continue."""


class DiskFullError(AlignloopError):
    """The disk (or quota) filled up while a file was being written."""


# What the libraries that write our files say when the disk is full: Python and the tokenizers and
# safetensors libraries (Rust) name the OS error; SQLite says "database or disk is full".
_DISK_FULL_WORDS = ("no space left on device", "os error 28", "disk quota exceeded", "os error 122",
                    "database or disk is full")
# torch.save's C++ writer reports a short write only as a broken stream; it counts as disk full
# when the file system has (almost) nothing left.
_SHORT_WRITE_WORDS = ("basic_ios::clear", "unexpected pos", "file write failed", "pytorchstreamwriter failed")
NEARLY_FULL_BYTES = 1 << 20


def is_disk_full(exc: BaseException, folder: "str | None" = None) -> bool:
    """Whether `exc` means the disk filled up (with `folder`: a short write there with no room left)."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc).lower()
    if any(words in text for words in _DISK_FULL_WORDS):
        return True
    if folder is not None and any(words in text for words in _SHORT_WRITE_WORDS):
        try:
            return shutil.disk_usage(folder).free < NEARLY_FULL_BYTES
        except OSError:
            return False
    return False


def disk_full_error(path: object) -> DiskFullError:
    """The one-line error for a write of `path` that found the disk full."""
    return DiskFullError(f"no space left on device while writing {path}; free some space and rerun")
