"""Latency of model bundles, stage by stage, on onnxruntime; and the full `edgeae run` loop against bare session.run.

One measured *iteration* handles ``batch`` frames of one resolution through one graph, in the stages a device
pays for (only those that apply to the graph are timed):

=============  ==============================================================================================
decode         ``cv2.imdecode`` of each frame's JPEG (q90), as from a file, an MJPEG camera or a stream
preprocess     channel conversion (BGR to gray for gray models), reflection padding to ``input_multiple``,
               stacking into the ``(N, H, W, C)`` uint8 feed (the rest of preprocessing is inside the graph)
entropy        encoder: rANS coding of each frame's latents; decoder: rANS decoding (edge_runtime.entropy)
inference      :meth:`edge_runtime.session.RuntimeGraph.run` (feed checks + ``session.run``; I/O binding on
               GPUs)
postprocess    crop back to the frame size; anomaly: score normalisation and the heat-map overlay
write          the output as bytes: ``cv2.imencode`` JPEG q90 of the output frame (what a recorder or the
               MJPEG view does), or the ``.eae`` container for the encoder
=============  ==============================================================================================

Everything here is numpy, OpenCV and onnxruntime: no PyTorch.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from benchmarks.timing import StageTimer, Timing, summarize
from edge_runtime.errors import ModelRejectedError, UsageError
from edge_runtime.model import MANIFEST_NAME, Bundle, load_bundle, open_graph
from edge_runtime.session import RuntimeGraph

STAGES = ("decode", "preprocess", "entropy", "inference", "postprocess", "write")
RESOLUTIONS = ("256x256", "640x480", "1280x720", "1920x1080")
GOAL_RESOLUTION = "640x480"
TASK_GRAPHS = {"denoise": ("denoise",), "anomaly": ("anomaly",), "compress": ("encoder", "decoder")}
# onnxruntime device name (edge_runtime.session) -> the provider that must be listed for it.
DEVICE_PROVIDER = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
}
MIN_SAMPLES = 5


# --------------------------------------------------------------------------------------------------------------
# Bundles


@dataclass(frozen=True)
class BundleRef:
    """A verified bundle found under ``--models``: its folder name, task, graphs, precisions and channels."""

    name: str
    root: Path
    bundle: Bundle
    task: str
    graphs: tuple[str, ...]
    channels: int
    quality: str = ""

    def precisions(self) -> list[str]:
        """Precisions present for every graph of the bundle (a codec needs both halves), fp32 first."""
        sets = [self.bundle.precisions(g) for g in self.graphs]
        return [p for p in sets[0] if all(p in s for s in sets)]

    def architecture(self) -> str:
        """Same string for bundles whose graphs cost the same (compress-q1..q4 differ only in weights)."""
        cfg = self.bundle.contract.get("model_config", "")
        try:
            cfg_d = {k: v for k, v in json.loads(cfg).items() if k != "quality"} if cfg else {}
        except ValueError:
            cfg_d = {"raw": cfg}
        return json.dumps({"task": self.task, "channels": self.channels, "model": cfg_d}, sort_keys=True)


def find_bundles(models_dir: str | Path, only: Sequence[str] | None = None) -> list[BundleRef]:
    """Every bundle directly under ``models_dir`` (or ``models_dir`` itself if it is one), sorted by name.

    ``only``: folder names to keep; a name that is not there is a UsageError. Each bundle is fully verified
    (:func:`edge_runtime.model.load_bundle`): a damaged one raises ModelRejectedError (exit 4) before anything
    is measured. No bundle at all is a ModelRejectedError too.
    """
    root = Path(models_dir)
    if not root.is_dir():
        raise ModelRejectedError(f"{root}: models folder does not exist")
    if (root / MANIFEST_NAME).is_file():
        dirs = [root]
    else:
        dirs = sorted(p for p in root.iterdir() if p.is_dir() and (p / MANIFEST_NAME).is_file())
    if only:
        names = {p.name: p for p in dirs}
        missing = [n for n in only if n not in names]
        if missing:
            raise UsageError(
                f"--only: no bundle named {', '.join(missing)} in {root} (found: {', '.join(names) or 'none'})"
            )
        dirs = [names[n] for n in only]
    if not dirs:
        raise ModelRejectedError(f"{root}: no model bundles (folders with {MANIFEST_NAME}) to benchmark")
    refs = []
    for d in dirs:
        b = load_bundle(d)
        graphs = TASK_GRAPHS.get(b.task, ())
        missing_g = [g for g in graphs if g not in b.graphs()]
        if missing_g:
            raise ModelRejectedError(
                f"{d}: a {b.task} bundle needs graphs {', '.join(graphs)}; {', '.join(missing_g)} missing"
            )
        try:
            channels = int(b.contract.get("channels", 3))
        except (TypeError, ValueError):
            channels = 3
        refs.append(BundleRef(d.name, d, b, b.task, graphs, channels, str(b.contract.get("quality", ""))))
    return refs


def graph_macs_per_pixel(graph: RuntimeGraph) -> int | None:
    """``edgeae.macs_per_pixel`` of a graph (per input pixel; per output pixel for the decoder), None if absent."""
    value = graph.info.metadata.get("edgeae.macs_per_pixel", "")
    try:
        macs = int(value)
    except ValueError:
        return None
    return macs if macs > 0 else None


def achieved_gops(macs_per_pixel: int | None, pixels: int, batch: int, seconds: float) -> float | None:
    """Achieved GFLOP/s (GOP/s for INT8): ``2 * MACs`` per pixel (a MAC is a multiply and an add) over the time.

    pixels: pixels per frame the graph computes on (padded size); seconds: time of one batched call.
    """
    if not macs_per_pixel or seconds <= 0:
        return None
    return 2.0 * macs_per_pixel * pixels * batch / seconds / 1e9


# --------------------------------------------------------------------------------------------------------------
# Inputs


def parse_resolution(text: str) -> tuple[int, int]:
    """``"640x480"`` -> ``(640, 480)`` (width, height)."""
    try:
        w, h = (int(v) for v in text.lower().replace("×", "x").split("x"))
    except ValueError:
        raise UsageError(f"resolution {text!r}: expected WIDTHxHEIGHT, e.g. 640x480") from None
    if not (8 <= w <= 8192 and 8 <= h <= 8192):
        raise UsageError(f"resolution {text!r}: each side must be 8..8192")
    return w, h


_PHOTO_CACHE: dict[str, np.ndarray] = {}


def _photo() -> np.ndarray:
    """A natural BGR photograph (scikit-image's astronaut, or a synthetic scene without scikit-image)."""
    if "p" not in _PHOTO_CACHE:
        try:
            from skimage import data as skd

            img = cv2.cvtColor(np.ascontiguousarray(skd.astronaut()), cv2.COLOR_RGB2BGR)
        except ImportError:
            yy, xx = np.mgrid[0:512, 0:512]
            base = (127 + 60 * np.sin(xx / 23.0) * np.cos(yy / 31.0)).astype(np.float32)
            img = np.dstack([base, np.roll(base, 40, 0), 255 - base])
            img = np.clip(img + np.random.default_rng(0).normal(0, 8, img.shape), 0, 255).astype(np.uint8)
        _PHOTO_CACHE["p"] = img
    return _PHOTO_CACHE["p"]


def test_frames(width: int, height: int, count: int, noise_sigma: float = 0.0, seed: int = 0) -> list[np.ndarray]:
    """``count`` different (H, W, 3) uint8 BGR frames: crops of a photograph scaled to the size, optional noise."""
    photo = _photo()
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        scale = max(width / photo.shape[1], height / photo.shape[0]) * (1.0 + 0.1 * i)
        big = cv2.resize(photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
        y0 = (big.shape[0] - height) // 2
        x0 = (big.shape[1] - width) // 2
        frame = np.ascontiguousarray(big[y0 : y0 + height, x0 : x0 + width])
        if noise_sigma > 0:
            frame = np.clip(np.rint(frame + rng.normal(0, noise_sigma, frame.shape)), 0, 255).astype(np.uint8)
        out.append(frame)
    return out


def to_channels(frame: np.ndarray, channels: int) -> np.ndarray:
    """(H, W, 3) BGR -> (H, W, channels): gray through cv2 for 1 channel."""
    if channels == 1:
        return cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)[:, :, None]
    return frame


def pad_to(frame: np.ndarray, multiple: int) -> np.ndarray:
    """Reflection-pad (H, W, C) on the bottom and right to multiples of ``multiple`` (as RuntimeGraph.run_frame)."""
    h, w = frame.shape[:2]
    ph, pw = -h % multiple, -w % multiple
    if not (ph or pw):
        return frame
    out = cv2.copyMakeBorder(frame, 0, ph, 0, pw, cv2.BORDER_REFLECT_101)
    return out[:, :, None] if out.ndim == 2 else out


def make_feed(frames: Sequence[np.ndarray], channels: int, multiple: int) -> np.ndarray:
    """The (N, H', W', C) uint8 feed of a batch of BGR frames (converted, padded, stacked)."""
    return np.ascontiguousarray(np.stack([pad_to(to_channels(f, channels), multiple) for f in frames]))


def entropy_tables(bundle: Bundle) -> Any:
    """The integer CDF tables of a compression bundle (``entropy.json``, re-verified against the manifest)."""
    from edge_runtime.codec import load_tables

    return load_tables(bundle)


# --------------------------------------------------------------------------------------------------------------
# Measuring one configuration


@dataclass
class LatencyConfig:
    """One measured configuration: bundle x graph x device x precision x resolution x batch."""

    model: str
    graph: str
    device: str
    precision: str
    resolution: str
    batch: int
    threads: int


@dataclass
class Measurement:
    """What :func:`measure_graph` returns: per-stage timings, the iteration total, compute efficiency."""

    config: LatencyConfig
    stages: dict[str, Timing]
    total: Timing
    macs_per_pixel: int | None
    pixels: int
    gops: float | None
    providers: list[str] = field(default_factory=list)

    @property
    def fps(self) -> float:
        """Frames per second end to end (all stages), from the mean iteration time."""
        return self.config.batch * 1000.0 / self.total.mean_ms if self.total.mean_ms > 0 else math.inf

    @property
    def inference_fps(self) -> float:
        inf = self.stages["inference"]
        return self.config.batch * 1000.0 / inf.mean_ms if inf.mean_ms > 0 else math.inf

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.config.__dict__,
            "stages": {k: v.to_dict() for k, v in self.stages.items()},
            "total": self.total.to_dict(),
            "fps": self.fps,
            "inference_fps": self.inference_fps,
            "macs_per_pixel": self.macs_per_pixel,
            "pixels": self.pixels,
            "gops": self.gops,
            "providers": self.providers,
        }


def interleaved(fns: dict[str, Callable[[], object]], warmup: int, repeat: int, budget_s: float) -> dict[str, Timing]:
    """Time several functions against each other on a noisy machine: after ``warmup`` calls each, rounds of
    one untimed call (it absorbs the previous runtime's thread-pool tail) and a block of timed calls per
    function, so that slow drifts of the machine hit every function alike. ``n`` timed calls per function:
    ``repeat``, fewer (never under min(5, repeat)) when the warm-up's pace says ``budget_s`` would be exceeded.
    """
    t_each = 0.0
    for fn in fns.values():
        t_warm = 0.0
        for _ in range(max(1, warmup)):
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            t_warm += dt
            if budget_s > 0 and t_warm > budget_s / 4:
                break
        t_each += dt
    n = repeat
    if budget_s > 0 and t_each > 0:
        n = min(repeat, max(min(MIN_SAMPLES, repeat), int(budget_s / t_each)))
    rounds = 3 if n >= 6 else 1
    per_round = -(-n // rounds)
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            fn()
            for _ in range(per_round):
                t0 = time.perf_counter_ns()
                fn()
                samples[k].append((time.perf_counter_ns() - t0) / 1e6)
    return {k: summarize(v) for k, v in samples.items()}


def timed_loop(
    step: Callable[[StageTimer], None],
    warmup: int,
    repeat: int,
    budget_s: float,
) -> tuple[dict[str, Timing], Timing]:
    """Run ``step(timer)`` ``warmup`` times untimed, then time it ``n`` times: ``n = repeat`` unless that would
    take longer than ``budget_s`` by the warm-up's pace, but never fewer than min(5, repeat) samples.
    The warm-up stops after one call once it has used a quarter of ``budget_s`` (a 3-second call is warm after one).

    Returns the per-stage timings and the per-iteration total.
    """
    timer = StageTimer()
    t_last = t_warm = 0.0
    for _ in range(max(1, warmup)):
        t0 = time.perf_counter()
        step(timer)
        t_last = time.perf_counter() - t0
        t_warm += t_last
        if budget_s > 0 and t_warm > budget_s / 4:
            break
    timer.reset()
    n = repeat
    if budget_s > 0 and t_last > 0:
        n = min(repeat, max(min(MIN_SAMPLES, repeat), int(budget_s / t_last)))
    totals = []
    for _ in range(max(1, n)):
        t0 = time.perf_counter_ns()
        step(timer)
        totals.append((time.perf_counter_ns() - t0) / 1e6)
    return timer.results(), summarize(totals)


def _jpeg(frame: np.ndarray) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise RuntimeError("cv2.imencode JPEG failed")
    return buf


def _overlay(frame: np.ndarray, amap: np.ndarray) -> np.ndarray:
    heat = cv2.applyColorMap(np.clip(amap * 255.0 * 2.0, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
    base = frame if frame.ndim == 3 and frame.shape[2] == 3 else cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    return cv2.addWeighted(base, 0.6, heat, 0.4, 0.0)


class GraphBench:
    """A bundle opened for measurement: its graphs per precision and device, plus what the stages need."""

    def __init__(self, ref: BundleRef, threads: int):
        self.ref = ref
        self.threads = threads
        self._graphs: dict[tuple[str, str, str], RuntimeGraph] = {}
        self._tables = entropy_tables(ref.bundle) if ref.task == "compress" else None

    def graph(self, graph: str, precision: str, device: str = "cpu") -> RuntimeGraph:
        """The opened graph; a missing provider or a graph whose inputs break the contract: ModelRejectedError."""
        key = (graph, precision, device)
        if key not in self._graphs:
            self._graphs[key] = open_graph(self.ref.bundle, graph, precision, device=device, threads=self.threads)
        return self._graphs[key]

    def close(self) -> None:
        self._graphs.clear()

    def measure(
        self,
        graph_name: str,
        precision: str,
        device: str,
        width: int,
        height: int,
        batch: int,
        warmup: int,
        repeat: int,
        budget_s: float,
    ) -> Measurement:
        """Time one configuration, all stages (see the module docstring)."""
        graph = self.graph(graph_name, precision, device)
        frames = test_frames(width, height, batch, seed=batch)
        jpegs = [_jpeg(f) for f in frames]
        channels, multiple = self.ref.channels, graph.info.input_multiple
        step, pixels = self._step(graph_name, graph, frames, jpegs, channels, multiple, width, height)
        stages, total = timed_loop(step, warmup, repeat, budget_s)
        macs = graph_macs_per_pixel(graph)
        gops = achieved_gops(macs, pixels, batch, stages["inference"].p50_ms / 1000.0)
        cfg = LatencyConfig(self.ref.name, graph_name, device, precision, f"{width}x{height}", batch, self.threads)
        ordered = {s: stages[s] for s in STAGES if s in stages}
        return Measurement(cfg, ordered, total, macs, pixels, gops, list(graph.providers))

    def _step(
        self,
        graph_name: str,
        graph: RuntimeGraph,
        frames: list[np.ndarray],
        jpegs: list[np.ndarray],
        channels: int,
        multiple: int,
        width: int,
        height: int,
    ) -> tuple[Callable[[StageTimer], None], int]:
        flag = cv2.IMREAD_GRAYSCALE if channels == 1 else cv2.IMREAD_COLOR
        ph, pw = height + (-height % multiple), width + (-width % multiple)

        def decode_pre(t: StageTimer) -> np.ndarray:
            with t.stage("decode"):
                imgs = [cv2.imdecode(b, flag) for b in jpegs]
            with t.stage("preprocess"):
                batch = np.ascontiguousarray(
                    np.stack([pad_to(im if im.ndim == 3 else im[:, :, None], multiple) for im in imgs])
                )
            return batch

        if graph_name == "denoise":

            def step(t: StageTimer) -> None:
                x = decode_pre(t)
                with t.stage("inference"):
                    y = graph.run({"frame": x})["denoised"]
                with t.stage("postprocess"):
                    outs = [np.ascontiguousarray(y[i, :height, :width]) for i in range(len(y))]
                with t.stage("write"):
                    for o in outs:
                        _jpeg(o)

            return step, ph * pw

        if graph_name == "anomaly":
            mean, std = _anomaly_norm(self.ref.bundle, graph)

            def step(t: StageTimer) -> None:
                x = decode_pre(t)
                with t.stage("inference"):
                    out = graph.run({"frame": x})
                with t.stage("postprocess"):
                    scores = (out["score"].astype(np.float64) - mean) / std
                    views = [
                        _overlay(x[i, :height, :width], out["anomaly_map"][i, :height, :width]) for i in range(len(x))
                    ]
                    del scores
                with t.stage("write"):
                    for v in views:
                        _jpeg(v)

            return step, ph * pw

        from edge_runtime.bitstream import FrameRecord, pack_stream
        from edge_runtime.codec import bundle_model_id, bundle_quality
        from edge_runtime.entropy import decode_latents, encode_latents

        tables = self._tables
        if graph_name == "encoder":
            model_id, quality = bundle_model_id(self.ref.bundle), bundle_quality(self.ref.bundle)

            def step(t: StageTimer) -> None:
                x = decode_pre(t)
                with t.stage("inference"):
                    lat = graph.run({"frame": x})["latent"]
                with t.stage("entropy"):
                    payloads = [encode_latents(np.ascontiguousarray(lat[i]), tables) for i in range(len(lat))]
                with t.stage("write"):
                    recs = [FrameRecord(height, width, channels, tuple(lat.shape[1:]), p) for p in payloads]
                    pack_stream(model_id, quality, recs)

            return step, ph * pw

        # decoder: latents of these frames from the FP32 encoder on the same device, coded once beforehand.
        enc = self.graph("encoder", "fp32", graph.device)
        lat = enc.run({"frame": make_feed(frames, channels, multiple)})["latent"]
        shape = tuple(int(v) for v in lat.shape[1:])
        payloads = [encode_latents(np.ascontiguousarray(lat[i]), tables) for i in range(len(lat))]

        def step(t: StageTimer) -> None:
            with t.stage("entropy"):
                z = np.ascontiguousarray(np.stack([decode_latents(p, tables, shape) for p in payloads]))
            with t.stage("inference"):
                y = graph.run({"latent": z})["frame"]
            with t.stage("postprocess"):
                outs = [np.ascontiguousarray(y[i, :height, :width]) for i in range(len(y))]
            with t.stage("write"):
                for o in outs:
                    _jpeg(o)

        return step, ph * pw


def graph_feed(bench: GraphBench, graph: str, width: int, height: int, batch: int = 1) -> tuple[str, np.ndarray]:
    """``(input name, array)``: what a graph of ``bench`` takes for ``batch`` test frames of this size (seed
    ``batch``), as every comparison here feeds it: uint8 frames converted and padded, or for the decoder the
    int32 latents of the FP32 encoder on the CPU."""
    frames = test_frames(width, height, batch, seed=batch)
    first = bench.graph("encoder" if graph == "decoder" else graph, "fp32", "cpu")
    x = make_feed(frames, bench.ref.channels, first.info.input_multiple)
    if graph != "decoder":
        return "frame", x
    return "latent", first.run({"frame": x})["latent"]


def _anomaly_norm(bundle: Bundle, graph: RuntimeGraph) -> tuple[float, float]:
    cal = bundle.calibration or {}
    meta = graph.info.metadata

    def pick(key: str, default: float) -> float:
        for v in (cal.get(key), meta.get(f"edgeae.anomaly.{key}")):
            try:
                if v not in (None, ""):
                    return float(v)
            except (TypeError, ValueError):
                continue
        return default

    return pick("norm_mean", 0.0), max(pick("norm_std", 1.0), 1e-12)


# --------------------------------------------------------------------------------------------------------------
# Classical baselines at the same resolutions


def opencv_latency(
    width: int, height: int, sigma: float, warmup: int, repeat: int, budget_s: float, tasks: Iterable[str]
) -> list[dict[str, Any]]:
    """OpenCV's classical methods on a frame of this size: fastNlMeans (gray and colour) at noise ``sigma``, and
    JPEG q90 / WebP q75 encode + decode (``cv2.imencode``/``imdecode``). Single-call latency per frame."""
    from benchmarks import baselines as bl

    clean = test_frames(width, height, 1)[0]
    noisy = bl.add_noise(clean, sigma, np.random.default_rng(0))
    gray = cv2.cvtColor(noisy, cv2.COLOR_BGR2GRAY)
    tasks = set(tasks)
    jobs: list[tuple[str, str, Callable[[], object]]] = []
    if "denoise" in tasks:
        jobs += [
            ("denoise", "fastNlMeansDenoising (gray)", lambda: bl.opencv_denoise(gray, sigma)),
            ("denoise", "fastNlMeansDenoisingColored", lambda: bl.opencv_denoise(noisy, sigma)),
        ]
    if "compress" in tasks:
        for ext, flag, q, label in (
            (".jpg", cv2.IMWRITE_JPEG_QUALITY, 90, "JPEG q90"),
            (".webp", cv2.IMWRITE_WEBP_QUALITY, 75, "WebP q75"),
        ):

            def codec(ext=ext, flag=flag, q=q) -> None:
                ok, buf = cv2.imencode(ext, clean, [flag, q])
                cv2.imdecode(buf, cv2.IMREAD_COLOR)

            jobs.append(("compress", f"{label} encode+decode", codec))
    rows = []
    for task, name, fn in jobs:

        def step(t: StageTimer, fn: Callable[[], object] = fn) -> None:
            with t.stage("inference"):
                fn()

        stages, total = timed_loop(step, min(warmup, 1), repeat, budget_s)
        rows.append(
            {
                "task": task,
                "method": name,
                "resolution": f"{width}x{height}",
                "sigma": sigma,
                "timing": stages["inference"].to_dict(),
            }
        )
    return rows


# --------------------------------------------------------------------------------------------------------------
# `edgeae run` against bare session.run


def make_video(path: Path, width: int, height: int, frames: int, noise_sigma: float = 10.0) -> Path:
    """A (width x height) MJPEG .avi of ``frames`` frames: a camera panning over a photograph, with noise."""
    from edge_runtime.outputs import VideoSink

    sink = VideoSink(path, fps=25.0)
    rng = np.random.default_rng(1)
    photo = _photo()
    try:
        for i in range(frames):
            t = i / max(1, frames - 1)
            scale = max(width / photo.shape[1], height / photo.shape[0]) * 1.3
            m = np.array(
                [
                    [scale, 0, width / 2 - scale * photo.shape[1] * (0.4 + 0.2 * t)],
                    [0, scale, height / 2 - scale * photo.shape[0] * 0.5],
                ],
                np.float32,
            )
            f = cv2.warpAffine(photo, m, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
            if noise_sigma > 0:
                f = np.clip(np.rint(f + rng.normal(0, noise_sigma, f.shape)), 0, 255).astype(np.uint8)
            sink.write(f)
    except BaseException:
        sink.abort()
        raise
    sink.close()
    return path


def read_video(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    out = []
    try:
        while True:
            ok, f = cap.read()
            if not ok:
                break
            out.append(f)
    finally:
        cap.release()
    return out


def pipeline_vs_session(
    ref: BundleRef,
    threads: int,
    frames: int = 60,
    size: tuple[int, int] = (640, 480),
    workdir: Path | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Frames per second of the full ``edgeae run`` loop (:func:`edge_runtime.pipeline.run_pipeline`) on a
    ``size`` video file, against bare ``session.run`` of the same graphs on the same frames, already decoded
    and converted (FP32, same device and threads). Both start from a fresh session, first call included.
    On a GPU, plain ``session.run`` copies the numpy inputs up and the outputs back, as the pipeline does.

    Returns ``{"pipeline_fps", "session_fps", "ratio", "frames", ...}``; ``ratio`` = pipeline / bare.
    """
    from edge_runtime.commands import RunOptions, run_pipeline

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        video = make_video(Path(tmp) / "bench_640x480.avi", size[0], size[1], frames)
        decoded = read_video(video)
        if len(decoded) != frames:
            raise RuntimeError(f"{video}: wrote {frames} frames, read back {len(decoded)}")
        opts = RunOptions(
            model=str(ref.root), source=str(video), threads=threads, precision="fp32", device=device, max_frames=frames
        )
        stats = run_pipeline(opts)
    # bare session.run: fresh sessions, the graph's own input only (no conversion, padding or output handling).
    graphs = {g: open_graph(ref.bundle, g, "fp32", device=device, threads=threads) for g in ref.graphs}
    first = graphs[ref.graphs[0]]
    multiple = first.info.input_multiple
    feeds = [make_feed([f], ref.channels, multiple) for f in decoded]
    names = {g: [o.name for o in gr.info.outputs] for g, gr in graphs.items()}
    t0 = time.perf_counter()
    for x in feeds:
        out = graphs[ref.graphs[0]].session.run(names[ref.graphs[0]], {"frame": x})
        if ref.task == "compress":
            graphs["decoder"].session.run(names["decoder"], {"latent": out[0]})
    bare_s = time.perf_counter() - t0
    session_fps = len(feeds) / bare_s
    pipeline_fps = float(stats["fps"])
    return {
        "model": ref.name,
        "task": ref.task,
        "device": device,
        "frames": frames,
        "resolution": f"{size[0]}x{size[1]}",
        "threads": threads,
        "pipeline_fps": pipeline_fps,
        "session_fps": session_fps,
        "ratio": pipeline_fps / session_fps if session_fps > 0 else None,
        "pipeline_frames_processed": stats.get("frames_processed"),
        "pipeline_stages": stats.get("stages"),
    }
