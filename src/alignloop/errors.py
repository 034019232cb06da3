"""Errors a user can act on.

Every stage raises `AlignloopError` (or a subclass) for bad input. The CLI prints
its message as one line and exits non-zero, with no traceback: the message must
name the problem (the file, the key, the value) on its own.
"""


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
