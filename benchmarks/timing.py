"""Latency measurement: warm-up, raw samples with ``perf_counter_ns``, percentiles from the samples.

Machines here are shared and noisy; compare ratios within one run, and read p50 before the mean.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Timing:
    """Summary of n latency samples, in milliseconds.

    Percentiles use numpy's default linear interpolation. ``throughput_per_s`` is calls per second when calls
    run back to back, ``1000 / mean_ms`` (the mean, not the median, because total time is what throughput pays).
    """

    n: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    throughput_per_s: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(samples_ms: Sequence[float] | np.ndarray) -> Timing:
    """Summarise raw latency samples (milliseconds, any order) into a :class:`Timing`."""
    s = np.asarray(samples_ms, dtype=np.float64).ravel()
    if s.size == 0:
        raise ValueError("summarize needs at least one sample")
    p50, p95, p99 = np.percentile(s, [50, 95, 99])
    mean = float(s.mean())
    return Timing(
        n=int(s.size),
        p50_ms=float(p50),
        p95_ms=float(p95),
        p99_ms=float(p99),
        mean_ms=mean,
        min_ms=float(s.min()),
        throughput_per_s=1000.0 / mean if mean > 0 else float("inf"),
    )


def measure(fn: Callable[[], object], *, warmup: int = 3, repeat: int = 30, min_time: float = 0.0) -> Timing:
    """Time ``fn()``: ``warmup`` untimed calls, then at least ``repeat`` timed calls, continuing until
    ``min_time`` seconds of timed calls have passed (so fast functions still gather a stable sample).

    Each call is timed on its own, so the percentiles see every outlier instead of a loop average.
    """
    if repeat < 1:
        raise ValueError("repeat must be >= 1")
    for _ in range(warmup):
        fn()
    samples_ns: list[int] = []
    budget_ns = int(min_time * 1e9)
    total_ns = 0
    while len(samples_ns) < repeat or total_ns < budget_ns:
        t0 = time.perf_counter_ns()
        fn()
        dt = time.perf_counter_ns() - t0
        samples_ns.append(dt)
        total_ns += dt
    return summarize(np.asarray(samples_ns, dtype=np.float64) / 1e6)


class StageTimer:
    """Collects per-stage latency samples inside a loop.

    >>> st = StageTimer()
    >>> for frame in frames:                      # doctest: +SKIP
    ...     with st.stage("preprocess"):
    ...         x = prep(frame)
    ...     with st.stage("inference"):
    ...         y = run(x)
    >>> st.results()["inference"].p50_ms          # doctest: +SKIP

    Stages keep the order in which they first ran. Call :meth:`reset` to drop warm-up samples.
    """

    def __init__(self) -> None:
        self._samples_ns: dict[str, list[int]] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter_ns()
        try:
            yield
        finally:
            # A stage that raised is still recorded: its time was spent.
            self._samples_ns.setdefault(name, []).append(time.perf_counter_ns() - t0)

    def samples_ms(self, name: str) -> list[float]:
        """Raw samples of one stage, in milliseconds."""
        return [ns / 1e6 for ns in self._samples_ns[name]]

    def reset(self) -> None:
        self._samples_ns.clear()

    def results(self) -> dict[str, Timing]:
        """``{stage: Timing}`` for every stage that ran at least once."""
        return {name: summarize(np.asarray(ns, dtype=np.float64) / 1e6) for name, ns in self._samples_ns.items()}
