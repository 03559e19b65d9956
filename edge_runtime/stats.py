"""Per-stage latency statistics for runs: p50/p95/p99 and frames per second."""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager

import numpy as np

STAGES = ("capture", "preprocess", "inference", "postprocess", "output")


class StageClock:
    """Collects wall-clock samples per named stage, in milliseconds.

    Samples are kept in a bounded ring per stage (``keep`` newest) so a 10,000-frame run uses constant memory.
    """

    def __init__(self, keep: int = 20000):
        self.keep = keep
        self._samples: dict[str, list[float]] = defaultdict(list)
        self._counts: dict[str, int] = defaultdict(int)

    @contextmanager
    def stage(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, (time.perf_counter() - t0) * 1000.0)

    def add(self, name: str, ms: float) -> None:
        buf = self._samples[name]
        n = self._counts[name]
        if len(buf) < self.keep:
            buf.append(ms)
        else:
            buf[n % self.keep] = ms
        self._counts[name] = n + 1

    def summary(self) -> dict[str, dict[str, float]]:
        out = {}
        for name, buf in self._samples.items():
            a = np.asarray(buf, dtype=np.float64)
            out[name] = {
                "n": self._counts[name],
                "p50_ms": float(np.percentile(a, 50)),
                "p95_ms": float(np.percentile(a, 95)),
                "p99_ms": float(np.percentile(a, 99)),
                "mean_ms": float(a.mean()),
            }
        return out


def format_stats(stats: dict) -> str:
    """A small table of the run's counters and per-stage latency, for the terminal."""
    lines = []
    counters = [k for k in ("frames_in", "frames_processed", "frames_dropped", "frames_bad", "reconnects", "fps")
                if k in stats]  # fmt: skip
    if counters:
        lines.append("  ".join(f"{k}={stats[k]:.1f}" if isinstance(stats[k], float) else f"{k}={stats[k]}"
                               for k in counters))  # fmt: skip
    stages = stats.get("stages") or {}
    if stages:
        lines.append(f"{'stage':<12} {'n':>7} {'p50 ms':>9} {'p95 ms':>9} {'p99 ms':>9}")
        order = [s for s in STAGES if s in stages] + [s for s in stages if s not in STAGES]
        for name in order:
            st = stages[name]
            lines.append(f"{name:<12} {st['n']:>7} {st['p50_ms']:>9.2f} {st['p95_ms']:>9.2f} {st['p99_ms']:>9.2f}")
    return "\n".join(lines)
