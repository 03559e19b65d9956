"""Batched inference across cameras: the latest frames of several cameras in one onnxruntime call.

The graphs take a batch dimension (``frame`` is ``(N, H, W, C)``), so cameras that share a model and whose frames
have the same size can be run together. Whether that is faster depends on the machine: on a GPU one call of N
frames costs little more than one of a single frame; on a small CPU it can cost more per frame than N concurrent
single calls (BENCHMARKS.md, "Many cameras"). ``batch = "auto"`` measures both on the cameras' own frames for a few
seconds at the start and keeps the faster.

How a frame travels when batching is on: the camera's thread prepares the frame as :meth:`RuntimeGraph.run_frame`
does (channels, padding), hands the feed to the model's :class:`Batcher` and waits; one of the batcher's lanes
takes every waiting feed of the same shape (up to the batch size), waits at most :data:`MAX_WAIT_S` for stragglers,
runs one call and hands each camera its own slice, which the camera's thread crops and post-processes as before.
Alarm state, outputs and events stay per camera. A camera that stops sending frames (lost, reconnecting, ended)
delays the others by at most :data:`MAX_WAIT_S` per call; a frame whose output holds NaN or Inf is found by
re-running that batch one frame at a time, so only that camera's frame is refused.

Lanes: calls that may run at once, ``cores // intra-op threads`` on the CPU (one core per call with the default
threads, so two cores run two calls), one on a GPU. The batch size is the cameras over the lanes, rounded up.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_runtime.errors import EdgeAEError, FrameError

MAX_WAIT_S = 0.005  # longest a lane waits for more cameras' frames before it runs what it has
MAX_BATCH = 16
PROBE_PHASES = ("warm-on", "warm-off", "off", "on", "off", "on")  # batch = "auto": the measurement's schedule
MODES = ("auto", "on", "off")
_GPU = frozenset({"cuda", "tensorrt"})


def batch_mode(value: Any, where: str) -> str:
    """The config's ``batch`` (``"auto"``, ``true``, ``false``) as ``auto``/``on``/``off``; ValueError otherwise."""
    if value is True or value == "on":
        return "on"
    if value is False or value == "off":
        return "off"
    if value == "auto":
        return "auto"
    raise ValueError(f'{where}: batch must be "auto", true or false, got {value!r}')


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_lanes(graph: Any) -> int:
    """Calls that may run at once: one on a GPU; on the CPU as many as the cores hold at the session's threads."""
    if getattr(graph, "device", "cpu") in _GPU:
        return 1
    threads = graph.session.get_session_options().intra_op_num_threads or 1
    return max(1, cpu_cores() // threads)


@dataclass
class _Request:
    feed: np.ndarray  # (H', W', C) uint8, prepared (channels, padding)
    done: threading.Event = field(default_factory=threading.Event)
    outputs: dict[str, np.ndarray] | None = None  # batch-of-one outputs, as graph.run returns for feed[None]
    error: BaseException | None = None


@dataclass
class _Phase:
    mode: str
    frames: int = 0
    calls: int = 0
    t0: float = 0.0
    t1: float = 0.0


class Batcher:
    """One model's inference calls for the cameras that use it (see the module's docstring).

    ``graph``: the shared :class:`~edge_runtime.session.RuntimeGraph`. ``mode``: ``on`` (batched), ``off`` (each
    camera calls the session itself, as without a batcher) or ``auto`` (measure, then one of them). ``report``:
    where the one line of ``auto``'s choice goes (stderr by default). Use :meth:`join`/:meth:`leave` per camera
    and :attr:`graph_proxy` as the cameras' graph.
    """

    def __init__(self, graph: Any, mode: str = "auto", *, lanes: int | None = None, wait_s: float | None = None,
                 probe_frames: int | None = None, name: str = "",
                 report: Callable[[str], None] | None = None):  # fmt: skip
        if mode not in MODES:
            raise ValueError(f"batch mode must be one of {MODES}, got {mode!r}")
        self.graph = graph
        self.requested = mode
        self.mode = "on" if mode == "auto" else mode  # the probe's first phase batches
        self.lanes = lanes or default_lanes(graph)
        self.wait_s = MAX_WAIT_S if wait_s is None else wait_s
        self.name = name or str(getattr(graph.info, "path", "model"))
        self.report = report or (lambda line: print(line, file=sys.stderr, flush=True))
        self.cameras = 0
        self._probe_frames = probe_frames
        self._phases: list[_Phase] = [_Phase(m) for m in PROBE_PHASES] if mode == "auto" else []
        self._phase = 0
        self.choice: dict[str, Any] | None = None
        self.calls: dict[int, int] = {}  # batch size -> calls
        self.reruns = 0  # batches re-run one frame at a time to find a NaN/Inf frame
        self._pending: list[_Request] = []
        self._cond = threading.Condition()
        self._closed = False
        self._workers: list[threading.Thread] = []
        self.graph_proxy = BatchedGraph(graph, self)

    # -- cameras -------------------------------------------------------------------------------------------------

    def join(self) -> None:
        with self._cond:
            self.cameras += 1

    def leave(self) -> None:
        """A camera ended (or was lost): the lanes stop waiting for its frames."""
        with self._cond:
            self.cameras = max(0, self.cameras - 1)
            self._cond.notify_all()

    def start(self) -> None:
        """Start the lanes (threads). Call with stop signals blocked (they belong to the main thread)."""
        if self.requested == "off":
            return
        if self.requested == "auto" and math.ceil(self.cameras / self.lanes) < 2:
            self.mode, self._phases = "off", []  # one frame a call at most: nothing to batch, nothing to measure
            self.choice = {"mode": "off", "lanes": self.lanes}
            self.report(f"edgeae: batch auto for {self.name} ({self.cameras} cameras, {self.lanes} lanes): nothing "
                        "to batch (as many lanes as cameras): one call per frame")  # fmt: skip
            return
        for i in range(self.lanes):
            t = threading.Thread(target=self._lane, daemon=True, name=f"edgeae-batch-{i}")
            t.start()
            self._workers.append(t)

    def close(self) -> None:
        """Stop the lanes; a camera still waiting gets an error (its loop has been stopped already)."""
        with self._cond:
            self._closed = True
            for req in self._pending:
                req.error = EdgeAEError(f"{self.name}: inference stopped")
                req.done.set()
            self._pending.clear()
            self._cond.notify_all()
        for t in self._workers:
            t.join(timeout=10)

    def batch_size(self) -> int:
        """Frames per call now: the cameras over the lanes, rounded up; 1 when not batching."""
        if self.mode != "on":
            return 1
        return max(1, min(MAX_BATCH, math.ceil(self.cameras / self.lanes)))

    # -- a camera's call -----------------------------------------------------------------------------------------

    def run_frame(self, frame: np.ndarray) -> Any:
        """What :meth:`RuntimeGraph.run_frame` returns for ``frame``, computed in a batch when batching is on."""
        if self.mode == "off":
            t0 = time.perf_counter()
            out = self.graph.run_frame(frame)
            self._done(1, t0, "off")
            return out
        feed, pad = self.graph.prepare_frame(frame)
        req = _Request(feed)
        with self._cond:
            if self._closed:
                raise EdgeAEError(f"{self.name}: inference stopped")
            self._pending.append(req)
            self._cond.notify_all()
        req.done.wait()
        if req.error is not None:
            raise req.error
        return self.graph.finish_frame(req.outputs, frame.shape[:2], pad)

    # -- the lanes ---------------------------------------------------------------------------------------------

    def _take(self) -> list[_Request] | None:
        """The next batch: the oldest waiting feed and those of its shape, waiting up to ``wait_s`` for more."""
        with self._cond:
            while not self._pending and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            deadline = time.monotonic() + self.wait_s
            while True:
                shape = self._pending[0].feed.shape
                group = [r for r in self._pending if r.feed.shape == shape]
                want = self.batch_size()
                left = deadline - time.monotonic()
                if len(group) >= want or left <= 0 or self._closed:
                    break
                self._cond.wait(left)
                if not self._pending:  # another lane took them while this one waited
                    return []
            take = group[:want]
            self._pending = [r for r in self._pending if not any(r is t for t in take)]
            return take

    def _lane(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            if batch:
                t0 = time.perf_counter()
                self._run(batch)
                self._done(len(batch), t0, "on")

    def _run(self, batch: list[_Request]) -> None:
        try:
            if len(batch) == 1:
                outs = self.graph.run({"frame": batch[0].feed[None]})
                batch[0].outputs = outs
            else:
                outs = self.graph.run({"frame": np.stack([r.feed for r in batch])})
                if any(a.ndim == 0 or a.shape[0] != len(batch) for a in outs.values()):
                    raise FrameError("outputs without the batch dimension")  # re-run one at a time below
                for i, req in enumerate(batch):
                    req.outputs = {name: a[i : i + 1] for name, a in outs.items()}
        except FrameError as exc:
            if len(batch) == 1:
                batch[0].error = exc
            else:  # whose frame was it? each on its own
                with self._cond:
                    self.reruns += 1
                for req in batch:
                    self._run([req])
        except BaseException as exc:  # noqa: BLE001 - handed to every camera of the batch, raised in its thread
            for req in batch:
                req.error = exc
        finally:
            with self._cond:
                self.calls[len(batch)] = self.calls.get(len(batch), 0) + 1
            for req in batch:
                req.done.set()

    # -- batch = "auto" ----------------------------------------------------------------------------------------

    def _done(self, frames: int, t0: float, path: str) -> None:
        """Count a finished call towards the probe's current phase if it went the phase's way (``on``: a lane,
        ``off``: the camera's own call; a call that straddles a switch is left out); switch phases, decide at the
        end."""
        if self._phase >= len(self._phases):
            return
        now = time.perf_counter()
        with self._cond:
            if self._phase >= len(self._phases):
                return
            phase = self._phases[self._phase]
            if phase.mode.removeprefix("warm-") != path:
                return
            if phase.frames == 0:
                phase.t0 = t0
            phase.frames += frames
            phase.calls += 1
            phase.t1 = now
            target = self._probe_frames or max(8, 4 * self.cameras)
            if phase.frames < target:
                return
            self._phase += 1
            if self._phase < len(self._phases):
                self.mode = self._phases[self._phase].mode.removeprefix("warm-")
                return
            self._decide()

    def _decide(self) -> None:
        def rate(mode: str) -> tuple[float, float]:
            ps = [p for p in self._phases if p.mode == mode]
            frames, seconds = sum(p.frames for p in ps), sum(p.t1 - p.t0 for p in ps)
            return (frames / seconds if seconds > 0 else 0.0), frames / max(1, sum(p.calls for p in ps))

        (on, per_call), (off, _) = rate("on"), rate("off")
        self.mode = "on" if on > off else "off"
        self.choice = {"mode": self.mode, "batched_fps": round(on, 2), "single_fps": round(off, 2),
                       "frames_per_call": round(per_call, 2), "lanes": self.lanes}  # fmt: skip
        self._cond.notify_all()
        verdict = "batched" if self.mode == "on" else "one call per frame"
        self.report(f"edgeae: batch auto for {self.name} ({self.cameras} cameras, {self.lanes} lanes): batched "
                    f"{on:.1f} frames/s ({per_call:.1f} frames a call), one call per frame {off:.1f} frames/s: "
                    f"{verdict}")  # fmt: skip

    def summary(self) -> dict[str, Any]:
        with self._cond:
            return {"requested": self.requested, "mode": self.mode, "lanes": self.lanes,
                    "calls": {str(k): v for k, v in sorted(self.calls.items())}, "reruns": self.reruns,
                    **({"auto": self.choice} if self.choice else {})}  # fmt: skip


class BatchedGraph:
    """A :class:`~edge_runtime.session.RuntimeGraph` whose ``run_frame`` goes through a :class:`Batcher`;
    everything else is the shared graph's (info, providers, session)."""

    def __init__(self, graph: Any, batcher: Batcher):
        self._graph = graph
        self._batcher = batcher

    def __getattr__(self, name: str) -> Any:
        return getattr(self._graph, name)

    def run_frame(self, frame: np.ndarray) -> Any:
        return self._batcher.run_frame(frame)
