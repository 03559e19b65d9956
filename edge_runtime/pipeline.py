"""`edgeae run`: the live loop. Frames from a source -> the model's task -> window, MJPEG view, recording, events.

The source does the capturing in its own thread (newest frame wins on live sources; a bounded queue on files),
so capture overlaps inference; this loop only runs the model and the outputs. Every output is finalised on the
way out - normal end, Ctrl-C, or a lost source - so nothing already processed is lost.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge_runtime.errors import SourceLostError, UsageError
from edge_runtime.io import atomic_path
from edge_runtime.model import load_bundle
from edge_runtime.outputs import VideoSink
from edge_runtime.sources import open_source
from edge_runtime.stats import StageClock


@dataclass(frozen=True)
class RunOptions:
    model: str
    source: str
    show: bool = False
    serve: str | None = None
    token: str | None = None
    insecure: bool = False
    record: str | None = None
    events: str | None = None
    max_frames: int | None = None
    open_timeout: float = 5.0
    read_timeout: float = 5.0
    reconnects: int = 5
    precision: str = "fp32"
    device: str = "cpu"
    allow_fallback: bool = False
    threads: int | None = None
    annotate: bool = True


def gui_available() -> bool:
    """True when this OpenCV build has a GUI backend (opencv-python-headless has none)."""
    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GUI:"):
            return "NONE" not in line.upper()
    return False


def parse_host_port(spec: str) -> tuple[str, int]:
    host, sep, port = spec.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", spec
    host = host.strip("[]") or "127.0.0.1"
    try:
        p = int(port)
    except ValueError:
        raise UsageError(f"--serve {spec}: expected HOST:PORT or PORT") from None
    if not 0 <= p <= 65535:
        raise UsageError(f"--serve {spec}: port out of range")
    return host, p


class _Task:
    """Adapter: ``process(frame) -> (annotated BGR frame, event dict or None)``."""

    def __init__(self, opts: RunOptions, task: str):
        kw = dict(precision=opts.precision, device=opts.device, threads=opts.threads,
                  allow_fallback=opts.allow_fallback)  # fmt: skip
        self.task = task
        if task == "denoise":
            from edge_runtime.denoise import Denoiser

            self.den = Denoiser(opts.model, **kw)
        elif task == "anomaly":
            from edge_runtime.anomaly import AnomalyScorer, Hysteresis

            self.scorer = AnomalyScorer(opts.model, **kw)
            self.hyst = Hysteresis()
        elif task == "compress":
            from edge_runtime.codec import Decoder, Encoder

            self.enc = Encoder(opts.model, **kw)
            self.dec = Decoder(opts.model, **kw)
        else:  # pragma: no cover - load_bundle only accepts known tasks
            raise UsageError(f"{opts.model}: task {task!r} cannot run live")
        self.annotate = opts.annotate

    def providers(self) -> list[str]:
        runner = getattr(self, "den", None) or getattr(self, "scorer", None) or getattr(self, "enc", None)
        graph = getattr(runner, "graph", None)
        return list(graph.providers) if graph is not None else []

    def infer(self, frame: np.ndarray):
        if self.task == "denoise":
            return self.den.denoise(frame)
        if self.task == "anomaly":
            return self.scorer.score(frame)
        rec = self.enc.encode(frame)
        return rec, self.dec.decode(rec)

    def post(self, frame: np.ndarray, result, index: int, ts: float) -> tuple[np.ndarray, dict | None]:
        if self.task == "denoise":
            return result, None
        if self.task == "anomaly":
            from edge_runtime.anomaly import overlay

            smoothed, alarm, event = self.hyst.update(result.score, self.scorer.threshold)
            ev = {"frame": index, "time": round(ts, 4), "score": round(float(result.score), 4),
                  "smoothed": round(float(smoothed), 4), "above_threshold": bool(result.above),
                  "alarm": bool(alarm), "event": event,
                  "bbox": list(map(int, result.bbox)) if result.bbox is not None else None}  # fmt: skip
            img = overlay(frame, result.map, self.scorer.threshold) if self.annotate else frame
            return img, ev
        rec, decoded = result
        bpp = 8 * len(rec.payload) / (rec.height * rec.width)
        if self.annotate:
            decoded = (
                decoded.copy()
                if decoded.ndim == 3 and decoded.shape[2] == 3
                else cv2.cvtColor(decoded.reshape(decoded.shape[0], decoded.shape[1]), cv2.COLOR_GRAY2BGR)
            )
            cv2.putText(decoded, f"{bpp:.3f} bpp", (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 255, 0), 2)
        return decoded, {"frame": index, "time": round(ts, 4), "bytes": len(rec.payload), "bpp": round(bpp, 4)}


def run_pipeline(opts: RunOptions, on_frame=None) -> dict:
    """Run the live loop until the source ends, ``max_frames``, Ctrl-C or a lost source; returns statistics.

    ``stats["interrupted"]`` is True after Ctrl-C (the CLI exits 130); a lost source re-raises SourceLostError
    (exit 5) after the outputs are finalised. ``on_frame(n)`` is called after each processed frame (benchmarks use
    it to sample memory).
    """
    if opts.show and not gui_available():
        raise UsageError("--show: this OpenCV build has no GUI support (opencv-python-headless); use --serve")
    bundle = load_bundle(opts.model)
    task = _Task(opts, bundle.task)
    server = None
    if opts.serve:
        from edge_runtime.serve import ViewServer

        host, port = parse_host_port(opts.serve)
        server = ViewServer(host, port, token=opts.token, insecure=opts.insecure)
        server.start()
    clock = StageClock()
    recorder: VideoSink | None = None
    events_ctx = events_tmp = events_fh = None
    n = 0
    interrupted = False
    lost: SourceLostError | None = None
    t_start = time.perf_counter()
    src = open_source(opts.source, open_timeout=opts.open_timeout, read_timeout=opts.read_timeout,
                      stale_after=max(opts.read_timeout, 1.0), max_reconnects=opts.reconnects)  # fmt: skip
    try:
        if opts.record:
            recorder = VideoSink(opts.record, fps=src.fps or 25.0)
        if opts.events:
            events_ctx = atomic_path(opts.events)
            events_tmp = events_ctx.__enter__()
            events_fh = open(events_tmp, "w")
        it = iter(src)
        while opts.max_frames is None or n < opts.max_frames:
            t0 = time.perf_counter()
            frame = next(it, None)
            clock.add("capture", (time.perf_counter() - t0) * 1000)
            if frame is None:
                break
            with clock.stage("inference"):
                result = task.infer(frame.image)
            with clock.stage("postprocess"):
                annotated, event = task.post(frame.image, result, frame.index, frame.timestamp)
            with clock.stage("output"):
                if recorder is not None:
                    recorder.write(annotated)
                if server is not None:
                    server.publish(annotated)
                if events_fh is not None and event is not None:
                    events_fh.write(json.dumps(event) + "\n")
                if opts.show:
                    cv2.imshow("edgeae", annotated)
                    if cv2.waitKey(1) & 0xFF in (27, ord("q")):
                        break
            n += 1
            if on_frame is not None:
                on_frame(n)
    except KeyboardInterrupt:
        interrupted = True
    except SourceLostError as exc:
        lost = exc
    finally:
        src.close()
        if recorder is not None:
            recorder.close()
        if events_fh is not None:
            events_fh.flush()
            os.fsync(events_fh.fileno())
            events_fh.close()
            events_ctx.__exit__(None, None, None)
        if server is not None:
            server.stop()
        if opts.show:
            cv2.destroyAllWindows()
    elapsed = time.perf_counter() - t_start
    s = src.stats
    stats = {
        "model": str(opts.model), "task": bundle.task, "source": src.description,
        "frames_in": s.frames_read, "frames_processed": n, "frames_dropped": s.frames_dropped,
        "frames_bad": s.frames_bad, "reconnects": s.reconnects, "fps": n / elapsed if elapsed > 0 else 0.0,
        "elapsed_s": elapsed, "stages": clock.summary(), "interrupted": interrupted,
        "providers": task.providers(),
    }  # fmt: skip
    if opts.record:
        stats["record"] = str(Path(opts.record))
    if lost is not None:
        raise lost
    if s.frames_bad:
        stats["error"] = f"{opts.source}: {s.frames_bad} input(s) could not be read ({', '.join(s.bad_files[:3])})"
    elif s.truncated:
        stats["error"] = f"{opts.source}: video ended early after {s.frames_read} good frames"
    return stats
