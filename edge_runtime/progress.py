"""Progress of long commands on stderr, without a dependency: frames done, frames/s, ETA.

On a terminal a line is redrawn at most twice a second (``\\r``); otherwise (a log, a pipe, systemd's journal)
nothing is printed while running and one summary line at the end, so logs are not flooded.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

REDRAW_S = 0.5


def _clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """``update(done)`` after each unit of work; ``finish()`` once at the end (idempotent).

    ``total``: how many units are expected (None when unknown: a live source, a video without a frame count);
    ``enabled``: False prints nothing at all (library use, tests).
    """

    def __init__(self, label: str, total: int | None = None, *, enabled: bool = True, unit: str = "frames",
                 stream: TextIO | None = None):  # fmt: skip
        self.label = label
        self.total = total if total and total > 0 else None
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = bool(enabled)
        self.live = self.enabled and _isatty(self.stream)
        self.done = 0
        self._t0 = time.monotonic()
        self._last = 0.0
        self._drawn = False
        self._finished = False

    def rate(self) -> float:
        elapsed = time.monotonic() - self._t0
        return self.done / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        """``denoise clip.mp4: 120/200 frames  8.3 frames/s  ETA 0:10`` (no ETA without a total)."""
        rate = self.rate()
        of = f"/{self.total}" if self.total else ""
        text = f"{self.label}: {self.done}{of} {self.unit}  {rate:.1f} {self.unit}/s"
        if self.total and rate > 0 and self.done < self.total:
            text += f"  ETA {_clock((self.total - self.done) / rate)}"
        return text

    def update(self, done: int) -> None:
        self.done = done
        if not self.live:
            return
        now = time.monotonic()
        if now - self._last >= REDRAW_S:
            self._last = now
            self._drawn = True
            print("\r" + self.line() + "\x1b[K", end="", file=self.stream, flush=True)

    def finish(self) -> None:
        if self._finished or not self.enabled:
            return
        self._finished = True
        elapsed = time.monotonic() - self._t0
        summary = f"{self.label}: {self.done} {self.unit} in {elapsed:.1f} s ({self.rate():.1f} {self.unit}/s)"
        prefix = "\r" if self._drawn else ""
        print(prefix + summary + ("\x1b[K" if self._drawn else ""), file=self.stream, flush=True)


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
