"""Exit codes and the one exception type every edgeae error is raised as.

The CLI turns an :class:`EdgeAEError` into one line on stderr and its exit code;
``--debug`` shows the traceback instead. :data:`EXIT_CODES` is the one table of exit codes (README, docs and
``edgeae --help`` quote it).
"""

from __future__ import annotations

import signal

OK = 0
USAGE = 2
BAD_DATA = 3
MODEL_REJECTED = 4
SOURCE_LOST = 5
HANGUP = 128 + signal.SIGHUP  # 129: SIGHUP (a closed terminal, `systemctl reload` of some units)
INTERRUPTED = 130  # Ctrl-C (SIGINT)
TERMINATED = 128 + signal.SIGTERM  # 143: SIGTERM (`systemctl stop`, `docker stop`, `kill`)

EXIT_CODES: dict[int, str] = {
    OK: "ok",
    USAGE: "usage: a bad option, an output that would destroy something",
    BAD_DATA: "bad or corrupt input data, or an output that could not be written (frames skipped are counted)",
    MODEL_REJECTED: "model rejected",
    SOURCE_LOST: "source lost (a camera or stream that never opened or did not come back)",
    HANGUP: "ended by SIGHUP; outputs finalised",
    INTERRUPTED: "interrupted (Ctrl-C); outputs finalised",
    TERMINATED: "ended by SIGTERM; outputs finalised",
}


class Stopped(KeyboardInterrupt):
    """Raised in the main thread by SIGTERM or SIGHUP so every Ctrl-C clean-up path runs for them too.

    ``exit_code`` is 128 + the signal number (143, 129).
    """

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.exit_code = 128 + signum


def stop_exit_code(exc: KeyboardInterrupt) -> int:
    """The exit code of an interruption: 143/129 for SIGTERM/SIGHUP, 130 for Ctrl-C."""
    code = getattr(exc, "exit_code", None)
    return code if isinstance(code, int) else INTERRUPTED


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


class FrameError(BadDataError):
    """One frame that cannot be processed (over the size cap, NaN/Inf outputs, a format the model cannot take).

    The frame loop counts it and goes on; it never ends a run (RELIABILITY 18, 34).
    """


class OutputError(BadDataError):
    """An output that could not be written (full disk, read-only folder, a name too long): exit 3, one line."""


def output_error(path: object, exc: OSError) -> OutputError:
    """``OutputError("PATH: cannot write (No space left on device)")`` from an OSError raised while writing."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    if isinstance(exc, (FileExistsError, NotADirectoryError)):
        import os

        parent = os.path.dirname(os.fspath(path)) or "."  # type: ignore[arg-type]
        while parent and not os.path.lexists(parent) and os.path.dirname(parent) != parent:
            parent = os.path.dirname(parent)
        if os.path.lexists(parent) and not os.path.isdir(parent):
            reason = f"{parent} is a file, not a folder"
    return OutputError(f"{path}: cannot write ({reason})")
