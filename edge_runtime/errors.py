"""Exit codes and the one exception type every edgeae error is raised as.

The CLI turns an :class:`EdgeAEError` into one line on stderr and its exit code;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

OK = 0
USAGE = 2
BAD_DATA = 3
MODEL_REJECTED = 4
SOURCE_LOST = 5
INTERRUPTED = 130


class EdgeAEError(Exception):
    """An error the user can act on: ``str(err)`` is one line naming the file or source and the reason."""

    exit_code = BAD_DATA

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(EdgeAEError):
    exit_code = USAGE


class BadDataError(EdgeAEError):
    """Bad or corrupt input data (images, videos, bitstreams): exit 3."""

    exit_code = BAD_DATA


class ModelRejectedError(EdgeAEError):
    """A model file or bundle that fails a check before or after parsing: exit 4."""

    exit_code = MODEL_REJECTED


class SourceLostError(EdgeAEError):
    """A live source that never opened or was lost after the last reconnect attempt: exit 5."""

    exit_code = SOURCE_LOST
