"""The one frame loop: source -> task -> sinks. Every command (``denoise``, ``score``, ``compress``, ``decompress``,
``embed``, ``run``) is a call of :func:`run_loop` (:mod:`edge_runtime.commands` builds the parts).

What a frame's trouble does is decided here and nowhere else:

- a frame the task cannot take (:class:`~edge_runtime.errors.FrameError`: over the size cap, NaN/Inf outputs) is
  counted, written to the events as an ``error`` line, and skipped: one frame never ends a run;
- Ctrl-C, SIGTERM and SIGHUP end the run like its end: every sink is closed (finalised), the stats are kept,
  and the caller exits 130 / 143 / 129;
- a lost live source (:class:`~edge_runtime.errors.SourceLostError`) also finalises every sink, then exit 5;
- any other error (a write that failed, an option that does not fit) aborts every sink: no output is replaced.

The loop itself only runs the task and hands the outcome's fields to the sinks that asked for them (a
:class:`Route`); sinks never see a task. The source captures in its own thread, so capture overlaps inference.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edge_runtime.errors import FrameError, SourceLostError, Stopped, stop_exit_code
from edge_runtime.outputs import now_wall
from edge_runtime.progress import Progress
from edge_runtime.stats import StageClock
from edge_runtime.task import EVENTS_VERSION, Outcome, Task

MAX_REASONS = 5  # skipped frames named in the summary; the rest are counted


@dataclass
class Route:
    """Send ``Outcome.<field>`` (``image``, ``view``, ``event``, ``record``, ``vector``) to ``sink``.

    The ``event`` field routes whole event lines (``start``, ``frame``, ``alarm``, ``error``, ``end``).
    """

    sink: Any
    field: str
    stage: str = "output"


@dataclass
class LoopResult:
    frames: int = 0  # frames processed (outcomes produced)
    skipped: int = 0  # frames the task refused (FrameError)
    reasons: list[str] = field(default_factory=list)
    exit_code: int | None = None  # 130/143/129 when interrupted, else None
    lost: SourceLostError | None = None
    elapsed_s: float = 0.0
    clock: StageClock = field(default_factory=StageClock)
    latency: StageClock = field(default_factory=StageClock)  # "pipeline": a frame's task start to delivered

    @property
    def interrupted(self) -> bool:
        return self.exit_code is not None

    started: float = field(default_factory=time.perf_counter)

    def fps(self) -> float:
        return self.frames / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def fps_now(self) -> float:
        """Frames per second so far, while the loop runs."""
        elapsed = time.perf_counter() - self.started
        return self.frames / elapsed if elapsed > 0 else 0.0


def _event_base(kind: str, frame: Any) -> dict[str, Any]:
    line: dict[str, Any] = {"v": EVENTS_VERSION, "type": kind, "frame": int(frame.index),
                            "time": round(float(frame.timestamp), 4), "wall": now_wall()}  # fmt: skip
    if getattr(frame, "name", ""):
        line["name"] = frame.name
    return line


class _Events:
    """The event lines of one run, to every sink routed ``event``."""

    def __init__(self, routes: list[Route]):
        self.sinks = [r.sink for r in routes if r.field == "event"]

    def emit(self, line: dict[str, Any]) -> None:
        for sink in self.sinks:
            sink.write(line)


def _deliver(outcome: Outcome, frame: Any, routes: list[Route], events: _Events, clock: StageClock) -> None:
    with clock.stage("output"):
        if outcome.event is not None:
            events.emit({**_event_base("frame", frame), **outcome.event})
        for extra in outcome.extra:
            events.emit({**_event_base(extra.get("type", "frame"), frame), **extra})
        for route in routes:
            if route.field == "event":
                continue
            value = outcome.get(route.field)
            if value is not None:
                route.sink.write(value, int(frame.index), getattr(frame, "name", ""), float(frame.timestamp))


def _report_unreadable(source: Any, events: _Events, reported: int) -> int:
    """An ``error`` line (``name``, ``reason``; no frame index: it never became a frame) for each image the source
    skipped as unreadable since the last call; returns how many are reported now."""
    stats = getattr(source, "stats", None)
    bad = getattr(stats, "bad_files", None) or ()
    if len(bad) <= reported:  # the usual case, every frame: nothing new, nothing copied
        return reported
    last = str(getattr(stats, "last_error", "") or "")
    for name in list(bad[reported:]):
        reason = last[len(name) + 2 :] if last.startswith(f"{name}: ") else "could not be read"
        events.emit({"v": EVENTS_VERSION, "type": "error", "wall": now_wall(), "name": name,
                     "reason": f"skipped: {reason}"})  # fmt: skip
    return max(reported, len(bad))


def _iterate(source: Any, task: Task, routes: list[Route], res: LoopResult, events: _Events,
             max_frames: int | None, progress: Progress | None, on_frame: Callable[[int], None] | None,
             stop: threading.Event | None) -> None:  # fmt: skip
    clock = res.clock
    it = iter(source)
    unreadable = 0
    while max_frames is None or res.frames < max_frames:
        t0 = time.perf_counter()
        frame = None if stop is not None and stop.is_set() else next(it, None)
        clock.add("capture", (time.perf_counter() - t0) * 1000)
        unreadable = _report_unreadable(source, events, unreadable)
        if stop is not None and stop.is_set():
            # Another thread ended this loop (several cameras): it also closed the source, so a frame that never
            # comes does not keep the loop waiting.
            raise Stopped(getattr(stop, "signum", signal.SIGINT))
        if frame is None:
            break
        try:
            t1 = time.perf_counter()
            outcome = task.process(frame)
            _add_stages(clock, (time.perf_counter() - t1) * 1000, outcome.stages)
        except FrameError as exc:
            res.skipped += 1
            if len(res.reasons) < MAX_REASONS:
                res.reasons.append(f"{getattr(frame, 'name', '') or f'frame {frame.index}'}: {exc}")
            events.emit({**_event_base("error", frame), "reason": str(exc)})
            continue
        with _deferring_stops():
            _deliver(outcome, frame, routes, events, clock)
            res.frames += 1
        res.latency.add("pipeline", (time.perf_counter() - t1) * 1000)
        if progress is not None:
            progress.update(res.frames)
        if on_frame is not None:
            on_frame(res.frames)


def _add_stages(clock: StageClock, total_ms: float, parts: dict[str, float]) -> None:
    """``inference`` is the task's time less the parts it timed itself (entropy coding, post-processing)."""
    for name, ms in parts.items():
        clock.add(name, ms)
    clock.add("inference", max(0.0, total_ms - sum(parts.values())))


def _close_all(routes: list[Route]) -> None:
    """Close every sink (each finalises its output); the first failure is raised after all were tried."""
    first: BaseException | None = None
    for route in routes:
        try:
            route.sink.close()
        except BaseException as exc:  # noqa: BLE001 - re-raised below once every sink had its chance
            first = first or exc
    if first is not None:
        raise first


def _abort_all(routes: list[Route]) -> None:
    for route in routes:
        with contextlib.suppress(Exception):
            route.sink.abort()


def run_loop(source: Any, task: Task, routes: list[Route], *, start: dict[str, Any] | None = None,
             max_frames: int | None = None, progress: Progress | None = None,
             on_frame: Callable[[int], None] | None = None, keep_on_stop: bool = True,
             stop: threading.Event | None = None, result: LoopResult | None = None) -> LoopResult:  # fmt: skip
    """Run ``task`` on every frame of ``source`` into ``routes`` until the source ends, ``max_frames``, a stop
    signal or a lost source. Closes the source; closes (finalises) or, on an error, aborts every sink.

    ``start``: fields of the run's ``start`` event line (model, task, source). Returns the counts; a lost source
    is in ``result.lost`` (the caller raises it after reporting), an interruption in ``result.exit_code``.
    ``keep_on_stop``: on Ctrl-C/SIGTERM/SIGHUP, finalise the outputs (``edgeae run``: the recording so far) and
    return; False: abort them (file commands: the previous output stays as it was, RELIABILITY 17) and re-raise
    the interruption. Events are kept either way: they describe frames that were processed. ``stop``: an event
    another thread sets to end this loop like a stop signal (its ``signum`` attribute, if any, names the signal);
    signal handlers are only installed when the loop runs in the main thread. ``result``: the LoopResult to fill
    (a caller that reports while the loop runs, e.g. ``/metrics``, holds it).
    """
    res = result if result is not None else LoopResult()
    events = _Events(routes)
    t_start = time.perf_counter()
    interruption: KeyboardInterrupt | None = None
    try:
        with stop_signals():
            events.emit({"v": EVENTS_VERSION, "type": "start", "wall": now_wall(), **(start or {})})
            try:
                _iterate(source, task, routes, res, events, max_frames, progress, on_frame, stop)
            except KeyboardInterrupt as exc:
                res.exit_code, interruption = stop_exit_code(exc), exc
            except SourceLostError as exc:
                res.lost = exc
            res.elapsed_s = time.perf_counter() - t_start
            status = "source lost" if res.lost else "interrupted" if res.interrupted else "ok"
            with _ignoring_stops():
                events.emit({"v": EVENTS_VERSION, "type": "end", "wall": now_wall(), "status": status,
                             "frames": res.frames, "skipped": res.skipped})  # fmt: skip
                if interruption is not None and not keep_on_stop:
                    raise interruption
                _close_all(routes)
    except BaseException:
        _abort_all(routes)
        raise
    finally:
        source.close()
        if progress is not None:
            progress.finish()
    return res


# ---------------------------------------------------------------------------------------------------------------
# Stop signals: SIGTERM and SIGHUP end a run like Ctrl-C.

_stopping = threading.local()


def _raise_stop(signum: int, _frame: Any) -> None:
    if getattr(_stopping, "ignore", False) or getattr(_stopping, "raised", False):
        return  # finalising already: a second `systemctl stop` must not cut that short
    if getattr(_stopping, "defer", False):
        _stopping.pending = signum  # raised when the frame being delivered is complete
        return
    _stopping.raised = True
    raise Stopped(signum)


@contextlib.contextmanager
def _deferring_stops():
    """A frame's outputs are delivered whole: a stop signal during delivery takes effect right after it, so the
    events, the recording and the counts agree on which frames were processed."""
    _stopping.defer, _stopping.pending = True, None
    try:
        yield
    finally:
        _stopping.defer = False
    pending = _stopping.pending
    if pending is not None:
        _stopping.pending = None
        _stopping.raised = True
        raise Stopped(pending)


@contextlib.contextmanager
def stop_signals():
    """SIGINT/SIGTERM/SIGHUP raise :class:`~edge_runtime.errors.Stopped` (a KeyboardInterrupt) in the main thread while
    the block runs; the previous handlers come back after. Outside the main thread: a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _stopping.raised = False
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        previous[sig] = signal.signal(sig, _raise_stop)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def _ignoring_stops():
    old = getattr(_stopping, "ignore", False)
    _stopping.ignore = True
    try:
        yield
    finally:
        _stopping.ignore = old


def skipped_summary(res: LoopResult, source_stats: Any, where: str) -> str | None:
    """The one rule for what ends a file run with exit 3: frames that could not be read or were refused, or a
    video that really was truncated. None when every frame was processed."""
    problems = []
    bad = getattr(source_stats, "frames_bad", 0)
    if bad:
        names = list(getattr(source_stats, "bad_files", []))[:3]
        problems.append(f"{bad} input(s) could not be read" + (f" ({', '.join(names)})" if names else ""))
    if res.skipped:
        more = f" and {res.skipped - len(res.reasons)} more" if res.skipped > len(res.reasons) else ""
        problems.append(f"{res.skipped} frame(s) skipped: {'; '.join(res.reasons[:3])}{more}")
    if getattr(source_stats, "truncated", False):
        last = getattr(source_stats, "last_error", "") or "data missing before the end of the file"
        problems.append(f"the video is truncated ({last})")
    if not problems:
        return None
    done = f"{res.frames} frame(s) processed and written" if res.frames else "nothing written"
    return f"{where}: " + "; ".join(problems) + f"; {done}"
