"""Latency of model bundles, stage by stage, on onnxruntime; and the full `edgeae run` loop against bare session.run.

One measured *iteration* handles ``batch`` frames of one resolution through one graph, in the stages a device
pays for (only those that apply to the graph are timed). Every stage but ``decode`` runs the runtime's own code
(``edge_runtime``), never a copy of it: what is timed is what ``edgeae run`` and the file commands execute.

=============  ==============================================================================================
decode         ``cv2.imdecode`` of each frame's JPEG (q90) to (H, W, 3) BGR, as the runtime's sources deliver a
               frame from a file, an MJPEG camera or a stream (gray models too: conversion is preprocessing)
preprocess     :meth:`edge_runtime.session.RuntimeGraph.prepare_frame` per frame (channel conversion, reflection
               padding to ``input_multiple``); a batch stacks the prepared frames into the ``(N, H', W', C)``
               uint8 feed (batch 1: the batch axis is a view, as ``run_frame`` adds it)
inference      :meth:`edge_runtime.session.RuntimeGraph.run` (feed and output checks + ``session.run``; I/O binding
               on GPUs), one call for the batch
postprocess    what the runtime's task does with one frame's share of the outputs: denoise:
               :meth:`~edge_runtime.session.RuntimeGraph.finish_frame` (crop); anomaly: the whole
               :class:`edge_runtime.anomaly.ScoreTask` ``process`` after its graph call (crop, the scorer's grid,
               normalisation, window map and box, hysteresis, the event fields, :func:`edge_runtime.overlay.overlay`;
               with a registration reference also ``FrameAligner.align``, which the runtime runs before the
               graph); decoder: :meth:`edge_runtime.codec.Decoder.reconstruct` after its graph call (checks, crop)
entropy        encoder: :class:`edge_runtime.codec.CompressTask` ``process`` after the graph call (the latent's checks
               and crop in ``Encoder.latent``, rANS coding in ``Encoder.record``, bits per pixel); decoder:
               :meth:`edge_runtime.codec.Decoder.latent` (record checks, rANS decoding)
write          the output frame through the runtime's MJPEG view (``ViewSink`` -> ``ViewServer.publish``: gray to
               BGR, JPEG q80; a server that is never started, so no socket), or for the encoder the ``.eae``
               stream bytes of the frames' records (:func:`edge_runtime.bitstream.pack_stream`)
=============  ==============================================================================================

The runtime runs one frame per graph call; a batch here is one call on stacked frames, and the task code after
it runs per frame on that frame's slice of the outputs (:class:`_Replay` answers the task's graph call from the
batch's outputs, so the graph does not run twice).

Everything here is numpy, OpenCV and onnxruntime: no PyTorch.
"""

from __future__ import annotations

import copy
import json
import math
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
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


def stack_feed(graph: RuntimeGraph, frames: Sequence[np.ndarray]) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """``(feed, pads)``: the ``(N, H', W', C)`` uint8 feed of ``frames`` for ``graph`` and each frame's padding.

    frames: (H, W, 3) uint8 BGR (or what :meth:`RuntimeGraph.prepare_frame` takes), all of one size. Each goes
    through the runtime's own preprocessing, ``prepare_frame`` (channel conversion, reflection padding to
    ``edgeae.input_multiple``); one frame gets its batch axis as a view, as ``run_frame`` does, more are stacked.
    pads: ``(bottom, right)`` per frame, for :meth:`RuntimeGraph.finish_frame`.
    """
    prepared = [graph.prepare_frame(f) for f in frames]
    pads = [pad for _, pad in prepared]
    if len(prepared) == 1:
        return prepared[0][0][None], pads
    return np.stack([x for x, _ in prepared]), pads


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
    """JPEG q90 bytes of a test frame: the input the ``decode`` stage starts from (not a runtime stage)."""
    ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise RuntimeError("cv2.imencode JPEG failed")
    return buf


class _Replay:
    """Stands in for a :class:`RuntimeGraph` whose batched call already ran (timed as ``inference``), so that the
    runtime's own task code can do its per-frame work around that call without running the graph again.

    :meth:`load` takes the batch's outputs and each frame's padding; :meth:`select` picks a frame. Then
    ``run(feeds)`` answers as :meth:`RuntimeGraph.run` would for that frame alone (its slice of every output),
    and ``run_frame(frame)`` as :meth:`RuntimeGraph.run_frame` would (that slice through
    :meth:`RuntimeGraph.finish_frame`, which crops it to ``frame``'s size).
    """

    def __init__(self, graph: RuntimeGraph):
        self.info, self.providers, self.device = graph.info, graph.providers, graph.device
        self._outputs: dict[str, np.ndarray] = {}
        self._pads: list[tuple[int, int]] = []
        self._index = 0

    def load(self, outputs: dict[str, np.ndarray], pads: list[tuple[int, int]]) -> None:
        self._outputs, self._pads = outputs, pads

    def select(self, index: int) -> None:
        self._index = index

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        i = self._index
        return {name: array[i : i + 1] for name, array in self._outputs.items()}

    def run_frame(self, frame: np.ndarray) -> dict[str, np.ndarray]:
        return RuntimeGraph.finish_frame(self.run({}), frame.shape[:2], self._pads[self._index])


def _replaying(part: Any, graph: RuntimeGraph) -> tuple[Any, _Replay]:
    """A shallow copy of a runtime object (scorer, encoder, decoder) whose graph is a :class:`_Replay` of ``graph``."""
    replay = _Replay(graph)
    twin = copy.copy(part)
    twin.graph = replay
    return twin, replay


def _view_sink() -> Any:
    """The runtime's MJPEG view output on a server that is never started: ``write`` encodes, nothing is sent."""
    from edge_runtime.outputs import ViewSink
    from edge_runtime.serve import ViewServer

    return ViewSink(ViewServer())


def _after_graph(
    graph_name: str, part: Any
) -> tuple[_Replay, str, Callable[[int, np.ndarray], Any], Callable[[list[Any]], None]]:
    """``(replay, stage, process, write)``: what the runtime does with frame ``i`` (``im``, as decoded) after its
    graph call, ``process(i, im)``, answered by ``replay`` from the batch's outputs and timed as ``stage``; and
    ``write(results)``, the iteration's output. See the module docstring for each graph."""
    from edge_runtime.sources import Frame

    twin, replay = _replaying(part, part.graph)
    sink = _view_sink()

    def view(images: list[np.ndarray]) -> None:
        for image in images:
            sink.write(image)

    if graph_name == "denoise":
        return replay, "postprocess", lambda i, im: replay.run_frame(im)["denoised"], view
    if graph_name == "anomaly":
        from edge_runtime.anomaly import ScoreTask

        score = ScoreTask(twin, smooth=True, annotate=True)
        return replay, "postprocess", lambda i, im: score.process(Frame(i, float(i), im)).image, view

    from edge_runtime.bitstream import pack_stream
    from edge_runtime.codec import CompressTask

    graph = part.graph
    if part.multiple != graph.info.input_multiple:
        raise ModelRejectedError(
            f"{graph.info.path}: the encoder pads frames to {part.multiple}, prepare_frame to input_multiple "
            f"{graph.info.input_multiple}; this benchmark feeds the encoder prepare_frame's frames"
        )
    code = CompressTask(twin)

    def stream(records: list[Any]) -> None:
        pack_stream(part.model_id, part.quality, records)

    return replay, "entropy", lambda i, im: code.process(Frame(i, float(i), im)).record, stream


class GraphBench:
    """A bundle opened for measurement, one session per graph, precision and device.

    :meth:`part` is the runtime object that runs a graph in the commands (:class:`~edge_runtime.denoise.Denoiser`,
    :class:`~edge_runtime.anomaly.AnomalyScorer`, :class:`~edge_runtime.codec.Encoder` /
    :class:`~edge_runtime.codec.Decoder`), what the latency steps time; :meth:`graph` the checked graph alone,
    what the graph-level comparisons feed (any graph that keeps the bundle contract, also one the task objects
    would refuse, such as a codec with another latent stride). Once the part exists, its graph is the graph.
    """

    def __init__(self, ref: BundleRef, threads: int):
        self.ref = ref
        self.threads = threads
        self._graphs: dict[tuple[str, str, str], RuntimeGraph] = {}
        self._parts: dict[tuple[str, str, str], Any] = {}

    def part(self, graph: str, precision: str, device: str = "cpu") -> Any:
        """The runtime object for one graph, made once; ModelRejectedError where the runtime would refuse it."""
        key = (graph, precision, device)
        if key not in self._parts:
            from edge_runtime.anomaly import AnomalyScorer
            from edge_runtime.codec import Decoder, Encoder
            from edge_runtime.denoise import Denoiser

            kinds = {"denoise": Denoiser, "anomaly": AnomalyScorer, "encoder": Encoder, "decoder": Decoder}
            if graph not in kinds:
                raise UsageError(f"{self.ref.name}: no runtime task runs a graph named {graph!r}")
            self._parts[key] = kinds[graph](self.ref.bundle, precision, device, self.threads)
            self._graphs.pop(key, None)  # its session replaces the one opened alone
        return self._parts[key]

    def graph(self, graph: str, precision: str, device: str = "cpu") -> RuntimeGraph:
        """The opened graph; a missing provider or a graph whose inputs break the contract: ModelRejectedError."""
        key = (graph, precision, device)
        if key in self._parts:
            return self._parts[key].graph
        if key not in self._graphs:
            self._graphs[key] = open_graph(self.ref.bundle, graph, precision, device=device, threads=self.threads)
        return self._graphs[key]

    def close(self) -> None:
        self._graphs.clear()
        self._parts.clear()

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
        graph = self.part(graph_name, precision, device).graph
        frames = test_frames(width, height, batch, seed=batch)
        step, pixels = self._step(graph_name, precision, device, frames)
        stages, total = timed_loop(step, warmup, repeat, budget_s)
        macs = graph_macs_per_pixel(graph)
        gops = achieved_gops(macs, pixels, batch, stages["inference"].p50_ms / 1000.0)
        cfg = LatencyConfig(self.ref.name, graph_name, device, precision, f"{width}x{height}", batch, self.threads)
        ordered = {s: stages[s] for s in STAGES if s in stages}
        return Measurement(cfg, ordered, total, macs, pixels, gops, list(graph.providers))

    def _step(
        self, graph_name: str, precision: str, device: str, frames: list[np.ndarray]
    ) -> tuple[Callable[[StageTimer], None], int]:
        """The measured iteration for ``frames`` and the pixels per frame the graph computes on (padded size)."""
        part = self.part(graph_name, precision, device)
        if graph_name == "decoder":
            return self._decoder_step(part, device, frames)
        graph = part.graph
        jpegs = [_jpeg(f) for f in frames]
        padded = graph.prepare_frame(frames[0])[0].shape[:2]
        replay, post, process, write = _after_graph(graph_name, part)

        def step(t: StageTimer) -> None:
            with t.stage("decode"):
                imgs = [cv2.imdecode(b, cv2.IMREAD_COLOR) for b in jpegs]
            with t.stage("preprocess"):
                x, pads = stack_feed(graph, imgs)
            with t.stage("inference"):
                replay.load(graph.run({"frame": x}), pads)
            with t.stage(post):
                outs = []
                for i, im in enumerate(imgs):
                    replay.select(i)
                    outs.append(process(i, im))
            with t.stage("write"):
                write(outs)

        return step, padded[0] * padded[1]

    def _decoder_step(
        self, dec: Any, device: str, frames: list[np.ndarray]
    ) -> tuple[Callable[[StageTimer], None], int]:
        """Records of these frames from the FP32 encoder on the same device (the runtime's Encoder.encode, coded
        once beforehand), decoded by the runtime's Decoder: ``latent`` (entropy), the graph, ``reconstruct``."""
        enc = self.part("encoder", "fp32", device)
        records = [enc.encode(f) for f in frames]
        graph = dec.graph
        twin, replay = _replaying(dec, graph)
        sink = _view_sink()

        def step(t: StageTimer) -> None:
            with t.stage("entropy"):
                latents = [dec.latent(r) for r in records]
                z = latents[0][None] if len(latents) == 1 else np.stack(latents)
            with t.stage("inference"):
                replay.load(graph.run({"latent": z}), [])
            with t.stage("postprocess"):
                outs = []
                for i, r in enumerate(records):
                    replay.select(i)
                    outs.append(twin.reconstruct(latents[i], int(r.height), int(r.width)))
            with t.stage("write"):
                for o in outs:
                    sink.write(o)

        padded = enc.graph.prepare_frame(frames[0])[0].shape[:2]  # the decoder's output before the crop
        return step, padded[0] * padded[1]


def graph_feed(bench: GraphBench, graph: str, width: int, height: int, batch: int = 1) -> tuple[str, np.ndarray]:
    """``(input name, array)``: what a graph of ``bench`` takes for ``batch`` test frames of this size (seed
    ``batch``), as every comparison here feeds it: uint8 frames through the runtime's ``prepare_frame``
    (:func:`stack_feed`), or for the decoder the int32 latents the FP32 encoder on the CPU makes of them."""
    frames = test_frames(width, height, batch, seed=batch)
    first = bench.graph("encoder" if graph == "decoder" else graph, "fp32", "cpu")
    x, _ = stack_feed(first, frames)
    if graph != "decoder":
        return "frame", x
    return "latent", first.run({"frame": x})["latent"]


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


def task_graphs(task: Any) -> list[RuntimeGraph]:
    """The graphs an ``edgeae run`` task (:func:`edge_runtime.commands.build_task`) calls per frame, in order:
    the denoiser's, the scorer's, or the encoder's then the decoder's."""
    if hasattr(task, "den"):
        return [task.den.graph]
    if hasattr(task, "scorer"):
        return [task.scorer.graph]
    return [task.enc.graph] + ([task.dec.graph] if getattr(task, "dec", None) is not None else [])


def _read_frames(path: Path) -> list[np.ndarray]:
    """Every frame of a video as the runtime's source delivers it ((H, W, 3) uint8 BGR)."""
    from edge_runtime.sources import open_source

    with open_source(str(path)) as src:
        return [f.image for f in src]


def _steady_fps(ends: Sequence[float]) -> float:
    """Frames per second between the end of the first frame and the end of the last: the loop's steady state,
    without what a run pays once (opening the video, starting the capture thread, the first decode)."""
    span = ends[-1] - ends[0]
    return (len(ends) - 1) / span if len(ends) > 1 and span > 0 else 0.0


def pipeline_vs_session(
    ref: BundleRef,
    threads: int,
    frames: int = 60,
    size: tuple[int, int] = (640, 480),
    workdir: Path | None = None,
    device: str = "cpu",
    rounds: int = 5,
) -> dict[str, Any]:
    """Frames per second of the full ``edgeae run`` loop against bare ``session.run`` of the same graphs, interleaved.

    The loop: :func:`edge_runtime.commands.run_task` (``run_pipeline`` after loading the bundle) on a ``size``
    MJPEG video of ``frames`` frames, no outputs (FP32, ``device``, ``threads``): the capture thread decoding,
    the task (conversion, padding, inference, post-processing; an anomaly task draws its overlay, as ``edgeae
    run`` does by default), events and progress. Bare: ``session.run`` of the task's own sessions on the same
    frames, decoded by the runtime's source and prepared (``prepare_frame``) beforehand; a codec runs its encoder
    then its decoder on the latent. On a GPU, plain ``session.run`` copies inputs up and outputs back, as the
    loop's I/O binding does.

    Design, for a noisy shared machine: one task is built (its sessions shared by both sides); after one warm-up of
    each, ``rounds`` rounds run the loop and the bare pass over the whole video (``frames`` frames each: short
    rounds, many of them, so that a slow spell of the machine hits both sides of a round), the order alternating
    each round. Each side's throughput is its steady state (:func:`_steady_fps`); ``ratio`` is the median of the
    per-round ratios (loop / bare), ``pipeline_fps`` and ``session_fps`` the medians of each side.
    ``pipeline_run_fps``: the loop's own figure (``stats["fps"]``: all frames over the whole run, start-up
    included), median over rounds. In the result ``frames`` counts every frame each side ran after the warm-up
    (``frames * rounds``), ``frames_per_round`` the video's length.
    """
    from edge_runtime.commands import RunOptions, build_task, run_task

    if frames < 2 or rounds < 1:
        raise UsageError(f"pipeline_vs_session needs frames >= 2 and rounds >= 1, got {frames} and {rounds}")
    opts = RunOptions(
        model=str(ref.root), source="", threads=threads, precision="fp32", device=device, max_frames=frames
    )
    task = build_task(ref.bundle, opts)
    graphs = task_graphs(task)
    names = [[o.name for o in g.info.outputs] for g in graphs]
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        video = make_video(Path(tmp) / f"bench_{size[0]}x{size[1]}.avi", size[0], size[1], frames)
        decoded = _read_frames(video)
        if len(decoded) != frames:
            raise RuntimeError(f"{video}: wrote {frames} frames, read back {len(decoded)}")
        feeds = [stack_feed(graphs[0], [f])[0] for f in decoded]
        opts = replace(opts, source=str(video))

        def loop(n: int) -> tuple[float, dict[str, Any]]:
            ends: list[float] = []
            stats = run_task(
                replace(opts, max_frames=n), ref.bundle, task, on_frame=lambda _: ends.append(time.perf_counter())
            )
            if len(ends) != n:
                raise RuntimeError(f"{video}: edgeae run processed {len(ends)} of {n} frames ({stats.get('error')})")
            return _steady_fps(ends), stats

        def bare(n: int) -> float:
            ends = []
            for x in feeds[:n]:
                out = graphs[0].session.run(names[0], {"frame": x})
                if len(graphs) > 1:
                    graphs[1].session.run(names[1], {"latent": out[0]})
                ends.append(time.perf_counter())
            return _steady_fps(ends)

        warm = min(frames, 10)
        loop(warm)
        bare(warm)
        per_round = []
        for r in range(rounds):
            if r % 2:
                b = bare(frames)
                p, stats = loop(frames)
            else:
                p, stats = loop(frames)
                b = bare(frames)
            per_round.append(
                {
                    "pipeline_fps": p,
                    "session_fps": b,
                    "ratio": p / b if b > 0 else None,
                    "pipeline_run_fps": float(stats["fps"]),
                }
            )
    ratios = [r["ratio"] for r in per_round if r["ratio"] is not None]
    return {
        "model": ref.name,
        "task": ref.task,
        "device": device,
        "frames": frames * rounds,
        "frames_per_round": frames,
        "rounds": rounds,
        "resolution": f"{size[0]}x{size[1]}",
        "threads": threads,
        "pipeline_fps": float(np.median([r["pipeline_fps"] for r in per_round])),
        "session_fps": float(np.median([r["session_fps"] for r in per_round])),
        "ratio": float(np.median(ratios)) if ratios else None,
        "ratio_min": min(ratios) if ratios else None,
        "ratio_max": max(ratios) if ratios else None,
        "pipeline_run_fps": float(np.median([r["pipeline_run_fps"] for r in per_round])),
        "per_round": per_round,
        "pipeline_frames_processed": stats.get("frames_processed"),
        "pipeline_stages": stats.get("stages"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.latency``: only the `edgeae run` vs bare session.run comparison, one JSON line per
    bundle on stdout (what ``edgeae bench`` runs as its pipeline section, without the rest of the bench)."""
    import argparse

    from benchmarks.machine import stamp

    ap = argparse.ArgumentParser(prog="python -m benchmarks.latency", description=main.__doc__)
    ap.add_argument("--models", default="models", help="folder of bundles, or one bundle [models]")
    ap.add_argument("--only", default="", help="comma-separated bundle names [all]")
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads [usable cores, as edgeae bench]")
    ap.add_argument("--frames", type=int, default=10, help="frames of the 640x480 video, run once per round [10]")
    ap.add_argument("--rounds", type=int, default=6, help="interleaved rounds [6, as edgeae bench]")
    ap.add_argument("--device", default="cpu", help="onnxruntime device [cpu]")
    args = ap.parse_args(argv)
    if args.threads is None:
        from benchmarks.config import BenchConfig

        args.threads = BenchConfig().threads
    only = [n for n in args.only.split(",") if n]
    print(json.dumps({"stamp": stamp(args.threads)}), flush=True)
    for ref in find_bundles(args.models, only or None):
        row = pipeline_vs_session(ref, args.threads, args.frames, device=args.device, rounds=args.rounds)
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
