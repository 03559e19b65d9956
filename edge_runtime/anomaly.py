"""Anomaly scoring on the device: per-frame scores, heat maps, alarms, and calibration on a fixed camera.

The anomaly graph (docs/bundle.md) gives a structural error map (local SSIM error of the autoencoder's
reconstruction), an image score and the bottleneck features. The generic model trained on natural images
reaches only about 0.65 image AUROC on synthetic defects with that score alone (benchmarks/anomaly_bench.py),
and raw reconstruction error is worse than chance on real factory images (shared/FINDINGS.md). A fixed camera
changes the problem: every location sees the same thing frame after frame. :func:`calibrate` therefore fits,
on normal frames of the scene and with numpy only:

1. a reference: each frame is registered to the first calibration frame by phase correlation
   (:class:`FrameAligner`), because a fixed camera still vibrates and at 1/8 resolution half a cell of shift
   changes every feature of a textured surface;
2. per location of the feature grid (1/8 resolution), a Gaussian of the SSIM error averaged to the grid,
   ``z_s = (s - mean) / std``, and per feature channel a centre and spread whose distance is
   ``d = mean_c min(((f_c - centre_c) / spread_c) ** 2, clip)`` (mean, not sum, over channels: only the scale
   differs, and the next step removes scale). Calibrated on a stream: the median and scaled median absolute
   deviation (people who cross a location in a third of the frames do not widen it) and a clip of 25 (one channel
   far out cannot outvote the others; statistics version 2). On still images: a diagonal Gaussian, no clip (the
   measurements below; version 1, which older bundles hold and which scores as it always did);
3. offsets and scales that bring both terms to mean 0, std 1 on held-out normal frames;
4. on streams (video, cameras), the motion term: evidence that moved since the previous frame is normal, what
   stays or has just appeared is not (:meth:`AnomalyScorer._motion`; a busy street, issue 16). Calibration on a
   stream scores its held-out frames the same way; a folder's images are scored alone.

The combined map is ``w_s * z_s + w_d * d`` in those units (or their maximum). The frame's raw score is the
maximum of its means over the graph's score window (16 px), as the graph's own score is; the map handed out is
those window means upsampled with ``cv2.INTER_LINEAR``. Measured on benchmarks/anomaly_bench.py with the default
model (5 scenes, 40 calibration and 40 test frames each, mean of seeds 0-2; false alarms are normal test frames
above the threshold, of 300; detected: defective ones, of 300):

==========================================  =====  =====  ============  ========
combined map                                image  pixel  false alarms  detected
==========================================  =====  =====  ============  ========
generic SSIM score, no calibration          0.62   0.65   -             -
per location, max(z_s, d), no registration  0.860  0.893  3             122
registered, z_s only                        0.728  0.696  5             70
registered, d only  (chosen)                0.996  0.996  6             289
registered, z_s + d                         0.995  0.995  6             282
registered, max(z_s, d)                     0.995  0.996  11            288
==========================================  =====  =====  ============  ========

Registration is what makes per-location statistics work here. The feature term carries the signal; the SSIM
term alone is weak on these defects and adding it did not help: the sum lost 0.001 image AUROC and 7
detections, the maximum brought 5 more false alarms (the SSIM term's tail). So the default weights are (0, 1).
The structural term may still matter on real surfaces where a defect changes texture more than content
(FINDINGS.md); it stays fitted and can be weighted in (:data:`DEFAULT_WEIGHTS`).

Without per-location statistics the graph's own score and map are used (the generic model).

Units: ``FrameScore.score = (raw - norm_mean) / norm_std`` and the map is in the same units, so the threshold
applies to both; the calibration block of manifest.json overrides the ONNX metadata.
"""

from __future__ import annotations

import copy
import functools
import io
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from edge_runtime.contract import (
    DEVICE_THRESHOLD_FLOOR,
    MAX_SIDE_LIMIT,
    MAX_STATS_BYTES,
    MAX_STATS_FEATURES,
    STATS_NAME,
)
from edge_runtime.errors import FrameError, ModelRejectedError, UsageError
from edge_runtime.model import Bundle, bundle_of, open_graph
from edge_runtime.npcheck import NpyError, grid_layout, load_npz, npz_headers
from edge_runtime.overlay import largest_region, overlay
from edge_runtime.registration import ALIGN_MAX_SIDE, MIN_ALIGN_SIDE, FrameAligner
from edge_runtime.session import NonFiniteOutput
from edge_runtime.task import Outcome, check_frame

STATS_VERSION = 2  # 2: robust statistics (z_clip) and the motion term; files of version 1 still score as before
KNOWN_STATS_VERSIONS = (1, 2)
# Members of a statistics file: the four arrays on the feature grid, and the small ones (the reference image at
# most ALIGN_MAX_SIDE x ALIGN_MAX_SIDE float64 is the largest); any other member is capped like those, never loaded.
_STATS_GRID, _STATS_STACKED = ("ssim_mean", "ssim_std"), ("feat_mean", "feat_std")
_STATS_SMALL = (
    "version",
    "frame_size",
    "term_norm",
    "weights",
    "frames",
    "model_sha256",
    "combine",
    "reference",
    "z_clip",
    "motion",
)
# How the two terms, each in unit scale on held-out normal frames, make the combined map: measured best is the
# feature term alone (see the module doc). The SSIM statistics are still fitted and stored (they are cheap), so
# fit_calibration(weights=..., combine="max") can bring the structural term in without a new file format.
DEFAULT_WEIGHTS = (0.0, 1.0)
DEFAULT_COMBINE = "sum"
COMBINE_MODES = ("max", "sum")
# The bbox outlines evidence above max(threshold, this fraction of its peak): a strong defect's box is not
# inflated by the noisy cells next to it that happen to be above the threshold.
BBOX_PEAK_FRACTION = 0.1
SCORE_WINDOW = 16  # pixels; the graph's score window unless its model_config says otherwise
# Robust per-location statistics (edgeae calibrate from version 2 of the statistics file): each channel's squared
# z-score is clipped at this before the mean over channels, so one channel far out cannot outvote the others and
# the spread of a location is its median absolute deviation, not inflated by the people who pass (issue 16).
Z_CLIP = 25.0
# The motion term (streams only): frames further apart than this in source time are not compared.
MOTION_MAX_GAP_S = 2.0
_MOTION_CHANGE_CELLS = 3  # dilation of the frame-to-frame change (grid cells): a mover's change covers its body
_MOTION_PREVIOUS_CELLS = 7  # dilation of the previous frame's evidence: how far (cells) a mover may have come


# ------------------------------------------------------------------------------------------------------------
# Results


INSPECT_MAP_STRIDE = 4  # the inspection graph's map is computed at 1/4 scale; its score_window counts those cells


def window_max(amap: np.ndarray, window: int) -> float:
    """The largest mean of ``amap`` (H, W) over ``window`` x ``window`` windows at a stride of half a window, the
    last row and column of windows flush with the edges: the inspection graph's score, taken on the frame's own
    pixels. The graph's ``score`` also covers the padding added to reach the input multiple (mirrored content the
    model may flag; on ELPV mono cells, 300 px padded to 304, image AUROC 0.796 with the graph's score, 0.800 with
    this), so the runtime and the export's threshold both use this instead."""
    h, w = amap.shape
    k = max(1, min(int(window), h, w))
    step = max(1, k // 2)
    ys = np.unique(np.append(np.arange(0, h - k + 1, step), h - k))
    xs = np.unique(np.append(np.arange(0, w - k + 1, step), w - k))
    table = cv2.integral(np.ascontiguousarray(amap, dtype=np.float32))  # (H+1, W+1) float64
    sums = table[ys + k][:, xs + k] - table[ys][:, xs + k] - table[ys + k][:, xs] + table[ys][:, xs]
    return float(sums.max() / (k * k))


def model_arch(bundle: Bundle) -> str:
    """The anomaly model's architecture from the bundle's ``model_config``: "inspect" (segmentation of defects,
    parts whose position varies) or "scene" (the fixed-camera autoencoder; also bundles from before the field)."""
    return _config_arch(bundle.contract.get("model_config"))


def _config_arch(text: str | None) -> str:
    try:
        cfg = json.loads(text or "{}")
    except ValueError:
        return "scene"
    return "inspect" if isinstance(cfg, dict) and cfg.get("arch") == "inspect" else "scene"


@dataclass(frozen=True)
class FrameScore:
    """The result of scoring one frame.

    raw: the score before normalisation (graph score, or the combined per-location score when calibrated).
    score: ``(raw - norm_mean) / norm_std``; compared with ``threshold``.
    above: ``score > threshold``.
    map: (H, W) float32 in the same normalised units as ``score``.
    bbox: (x, y, w, h) of the largest connected region of ``map > threshold``, or None when not ``above``.
    shift: (dx, dy) the frame was moved by to register it to the calibration reference (per-location only).
    """

    raw: float
    score: float
    threshold: float
    above: bool
    map: np.ndarray
    bbox: tuple[int, int, int, int] | None
    shift: tuple[float, float] | None = None  # (dx, dy) px the frame was registered by, when it was


@dataclass(frozen=True)
class LocationStats:
    """Per-location statistics of normal frames of one scene (``anomaly_stats.npz``).

    frame_size: (H, W) the statistics were fitted on; grid: (h, w) of the feature output (padded frame / stride).
    ssim_mean, ssim_std: (h, w) of the SSIM error map averaged to the grid.
    feat_mean, feat_std: (F, h, w) of the features.
    term_norm: (2, 2) offset and scale bringing (z_s, d) to unit scale on held-out normal frames.
    weights: (2,) weights of the two terms; combine: "max" (of the weighted terms) or "sum".
    reference: (h, w) float32 gray image the frames are registered to (first calibration frame, long side at
        most 512 px); empty (0, 0) when frames are not registered (frames under 32 px).
    z_clip: > 0: feat_mean/feat_std are per-location medians and scaled median absolute deviations and each
        channel's squared z-score is clipped at this (robust statistics, version 2); 0: Gaussian (version 1).
    motion: score streams with the motion term (:meth:`AnomalyScorer.raw_map`): evidence that moved since the
        previous frame is normal.
    """

    frame_size: tuple[int, int]
    ssim_mean: np.ndarray
    ssim_std: np.ndarray
    feat_mean: np.ndarray
    feat_std: np.ndarray
    term_norm: np.ndarray
    weights: np.ndarray
    frames: int
    model_sha256: str = ""
    combine: str = "max"
    reference: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    z_clip: float = 0.0
    motion: bool = False

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.ssim_mean.shape)  # type: ignore[return-value]

    def to_bytes(self) -> bytes:
        """The statistics as an ``.npz`` of plain arrays (no pickled objects)."""
        buf = io.BytesIO()
        robust = {"z_clip": np.array([self.z_clip], np.float64), "motion": np.array([int(self.motion)], np.int64)}
        np.savez(
            buf,
            version=np.array([STATS_VERSION if self.z_clip > 0 or self.motion else 1], np.int64),
            frame_size=np.array(self.frame_size, np.int64),
            ssim_mean=self.ssim_mean.astype(np.float32),
            ssim_std=self.ssim_std.astype(np.float32),
            feat_mean=self.feat_mean.astype(np.float32),
            feat_std=self.feat_std.astype(np.float32),
            term_norm=np.asarray(self.term_norm, np.float64),
            weights=np.asarray(self.weights, np.float64),
            frames=np.array([self.frames], np.int64),
            model_sha256=np.array(self.model_sha256),
            combine=np.array(self.combine),
            reference=np.asarray(self.reference, np.float32),
            **(robust if self.z_clip > 0 or self.motion else {}),
        )
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> LocationStats:
        """Parse and shape-check an ``.npz``; ModelRejectedError (4) on anything unexpected.

        Nothing is loaded before every member's .npy header and the zip's declared sizes are checked
        (:mod:`edge_runtime.npcheck`): the grid (h, w) of ``ssim_*`` and the channels F of ``feat_*`` fix the size
        of every array, the other members are small, and the whole may not inflate past MAX_STATS_BYTES; so a
        small file that declares gigabytes allocates nothing (RELIABILITY 32).
        """
        try:
            headers = npz_headers(data, max_members=32, max_bytes=MAX_STATS_BYTES)
        except NpyError as exc:
            raise ModelRejectedError(f"{where}: not a readable statistics file ({exc})") from None
        try:
            grid_layout(headers, _STATS_GRID, _STATS_STACKED, max_side=MAX_SIDE_LIMIT, max_channels=MAX_STATS_FEATURES,
                        max_other_bytes=ALIGN_MAX_SIDE * ALIGN_MAX_SIDE * 8)  # fmt: skip
            arrays = load_npz(data, [k for k in (*_STATS_GRID, *_STATS_STACKED, *_STATS_SMALL) if k in headers])
        except NpyError as exc:
            raise ModelRejectedError(f"{where}: statistics file {exc}") from None
        required = ("version", "frame_size", "ssim_mean", "ssim_std", "feat_mean", "feat_std", "term_norm", "weights")
        missing = [k for k in required if k not in arrays]
        if missing:
            raise ModelRejectedError(f"{where}: statistics file lacks {', '.join(missing)}")
        version = arrays["version"]
        if version.shape != (1,) or version.dtype.kind not in "iu" or int(version[0]) not in KNOWN_STATS_VERSIONS:
            raise ModelRejectedError(f"{where}: statistics version {version.tolist()} (this edgeae knows 1 and 2)")
        for key in required[1:]:
            if arrays[key].dtype.kind not in "iuf":
                raise ModelRejectedError(f"{where}: statistics array {key} has dtype {arrays[key].dtype}")
            if not np.isfinite(arrays[key]).all():
                raise ModelRejectedError(f"{where}: statistics array {key} holds NaN or Inf")
        size = arrays["frame_size"]
        s_mean, s_std = arrays["ssim_mean"], arrays["ssim_std"]
        f_mean, f_std = arrays["feat_mean"], arrays["feat_std"]
        ok = size.shape == (2,) and (size > 0).all() and arrays["term_norm"].shape == (2, 2)
        if not (ok and arrays["weights"].shape == (2,)):
            shapes = ", ".join(f"{k} {list(arrays[k].shape)}" for k in required[1:])
            raise ModelRejectedError(f"{where}: statistics arrays have inconsistent shapes ({shapes})")
        if (s_std <= 0).any() or (f_std <= 0).any() or (arrays["term_norm"][:, 1] <= 0).any():
            raise ModelRejectedError(f"{where}: statistics hold a zero or negative standard deviation")
        combine = arrays.get("combine", np.array("max"))
        if combine.dtype.kind != "U" or combine.shape != () or str(combine) not in COMBINE_MODES:
            raise ModelRejectedError(f"{where}: statistics combine mode {combine!r} (expected max or sum)")
        reference = arrays.get("reference", np.zeros((0, 0), np.float32))
        ref_ok = (
            reference.ndim == 2
            and reference.dtype.kind == "f"
            and reference.shape[0] <= size[0]
            and reference.shape[1] <= size[1]
            and (reference.size == 0 or min(reference.shape) >= MIN_ALIGN_SIDE // 2)
            and bool(np.isfinite(reference).all())
        )
        if not ref_ok:
            raise ModelRejectedError(f"{where}: statistics reference image {list(reference.shape)} does not fit")
        z_clip, motion = arrays.get("z_clip", np.zeros(1)), arrays.get("motion", np.zeros(1, np.int64))
        robust_ok = z_clip.shape == (1,) and z_clip.dtype.kind == "f" and motion.shape == (1,)
        if not (robust_ok and motion.dtype.kind in "iu" and np.isfinite(z_clip).all() and 0 <= z_clip[0] <= 1e6):
            raise ModelRejectedError(f"{where}: statistics z_clip {z_clip.tolist()} / motion {motion.tolist()} invalid")
        if int(version[0]) == 1 and (z_clip[0] > 0 or motion[0]):
            raise ModelRejectedError(f"{where}: statistics version 1 with version-2 members (z_clip, motion)")
        sha = arrays.get("model_sha256")
        frames = arrays.get("frames")
        return cls(
            frame_size=(int(size[0]), int(size[1])),
            ssim_mean=s_mean.astype(np.float32),
            ssim_std=s_std.astype(np.float32),
            feat_mean=f_mean.astype(np.float32),
            feat_std=f_std.astype(np.float32),
            term_norm=arrays["term_norm"].astype(np.float64),
            weights=arrays["weights"].astype(np.float64),
            frames=int(frames.reshape(-1)[0]) if frames is not None and frames.size else 0,
            model_sha256=str(sha) if sha is not None and sha.dtype.kind == "U" else "",
            combine=str(combine),
            reference=reference.astype(np.float32),
            z_clip=float(z_clip[0]),
            motion=bool(motion[0]),
        )


# ------------------------------------------------------------------------------------------------------------
# Small numpy/OpenCV helpers


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def _window_kernel(cells: float) -> np.ndarray:
    """A centred 1-D mean filter about ``cells`` grid cells wide (an even width is centred with a [.5, .5] tap).
    Cached per width (it was rebuilt every frame); the array is shared, never modified."""
    return _kernel_of_width(max(1, int(round(cells))))


@functools.lru_cache(maxsize=64)
def _kernel_of_width(k: int) -> np.ndarray:
    kernel = np.ones(k, np.float64) / k
    if k % 2 == 0:
        kernel = np.convolve(kernel, [0.5, 0.5])
    return kernel.astype(np.float32)


def _smooth(grid: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    if kernel.size == 1:
        return grid
    return cv2.sepFilter2D(grid, cv2.CV_32F, kernel, kernel, borderType=cv2.BORDER_REFLECT)


def _feature_distance(diff: np.ndarray, stats: LocationStats) -> np.ndarray:
    """Mean over channels of the squared ``diff / feat_std`` (F, h, w) -> (h, w) float32, each channel's term
    clipped at ``stats.z_clip`` when the statistics are robust."""
    z = diff / stats.feat_std
    z *= z
    if stats.z_clip > 0:
        np.minimum(z, stats.z_clip, out=z)
    return (z.sum(axis=0) / z.shape[0]).astype(np.float32)


def _finite(array: np.ndarray) -> bool:
    with np.errstate(invalid="ignore", over="ignore"):
        return bool(np.isfinite(np.sum(array, dtype=np.float64)))


# ------------------------------------------------------------------------------------------------------------
# Scorer


@dataclass
class _Analysis:
    """Graph outputs of one frame, brought to the feature grid."""

    height: int
    width: int
    amap: np.ndarray  # (H, W) SSIM error
    graph_score: float
    ssim_grid: np.ndarray  # (h, w)
    features: np.ndarray  # (F, h, w)
    padded: tuple[int, int]
    shift: tuple[float, float] | None = None
    timestamp: float | None = None  # source time (streams): the motion term compares frames close in time
    dist: np.ndarray | None = None  # (h, w) feature term, cached by AnomalyScorer._terms for the next frame


class AnomalyScorer:
    """An anomaly bundle ready to score frames: ``score(frame (H, W, 3|1) uint8 BGR/gray) -> FrameScore``.

    Calibration (threshold, norm_mean, norm_std) comes from the manifest's ``calibration`` block, else the ONNX
    metadata; per-location statistics from ``anomaly_stats.npz`` when the manifest lists one (its SHA-256 is
    re-checked as it is read). ``model``: a bundle directory, its manifest.json, a :class:`Bundle`, or a single
    ``.onnx`` file (metadata calibration only).
    """

    def __init__(self, model: Any, precision: str = "fp32", device: str = "cpu", threads: int | None = None,
                 allow_fallback: bool = False):  # fmt: skip
        self.bundle: Bundle | None = bundle_of(model)
        if self.bundle is not None and self.bundle.task != "anomaly":
            raise ModelRejectedError(f"{self.bundle.root}: a {self.bundle.task} bundle, not an anomaly model")
        self.where = str(self.bundle.root if self.bundle is not None else model)
        self.graph = open_graph(self.bundle if self.bundle is not None else model, "anomaly", precision,
                                device=device, threads=threads, allow_fallback=allow_fallback)  # fmt: skip
        meta = self.graph.info.metadata
        if meta.get("edgeae.task") != "anomaly":
            raise ModelRejectedError(f"{self.where}: not an anomaly model (edgeae.task={meta.get('edgeae.task')!r})")
        self.calibration = self._read_calibration(meta)
        self.score_window = self._score_window(meta)
        # the inspection model's raw score is taken on the frame's own pixels (window_max), not the graph's
        self.inspect = _config_arch(meta.get("edgeae.model_config")) == "inspect"
        self.model_sha256 = self._model_sha()
        self.stats: LocationStats | None = None
        if self.bundle is not None and STATS_NAME in self.bundle.manifest.get("files", {}):
            data = self.bundle.read_verified(STATS_NAME, max_bytes=MAX_STATS_BYTES)
            self.stats = LocationStats.from_bytes(data, f"{self.bundle.root / STATS_NAME}")
            if self.stats.model_sha256 and self.model_sha256 and self.stats.model_sha256 != self.model_sha256:
                raise ModelRejectedError(
                    f"{self.bundle.root / STATS_NAME}: fitted for another model file "
                    f"({self.stats.model_sha256[:12]}..., this bundle's FP32 graph is {self.model_sha256[:12]}...); "
                    "recalibrate with `edgeae calibrate`"
                )
        self.aligner = self._make_aligner(self.stats)

    # -- configuration -----------------------------------------------------------------------------------------

    def _read_calibration(self, meta: dict[str, str]) -> dict[str, float]:
        values: dict[str, float] = {}
        for key in ("threshold", "norm_mean", "norm_std"):
            text = meta.get(f"edgeae.anomaly.{key}", "")
            if text != "":
                try:
                    values[key] = float(text)
                except ValueError:
                    raise ModelRejectedError(
                        f"{self.where}: metadata edgeae.anomaly.{key}={text!r} is not a number"
                    ) from None
        if self.bundle is not None:
            for key in ("threshold", "norm_mean", "norm_std"):
                if key in self.bundle.calibration:
                    values[key] = float(self.bundle.calibration[key])
        values.setdefault("threshold", DEVICE_THRESHOLD_FLOOR)
        values.setdefault("norm_mean", 0.0)
        values.setdefault("norm_std", 1.0)
        for key, value in values.items():
            if not math.isfinite(value):
                raise ModelRejectedError(f"{self.where}: anomaly {key} is {value}")
        if values["norm_std"] <= 0:
            raise ModelRejectedError(f"{self.where}: anomaly norm_std must be > 0, got {values['norm_std']}")
        return values

    @staticmethod
    def _score_window(meta: dict[str, str]) -> int:
        """The score window in pixels: the model's ``score_window`` (map cells for the inspection model)."""
        try:
            cfg = json.loads(meta.get("edgeae.model_config") or "{}")
            window = int(cfg.get("score_window", SCORE_WINDOW)) if isinstance(cfg, dict) else SCORE_WINDOW
            if isinstance(cfg, dict) and cfg.get("arch") == "inspect":
                window *= INSPECT_MAP_STRIDE
        except (ValueError, TypeError):
            window = SCORE_WINDOW
        return window if 1 <= window <= 1024 else SCORE_WINDOW

    def _model_sha(self) -> str:
        """The FP32 graph's SHA-256 (statistics fitted at one precision serve the others of the same bundle)."""
        if self.bundle is not None and "fp32" in self.bundle.precisions("anomaly"):
            return str(self.bundle.entry("anomaly", "fp32")["sha256"])
        return self.graph.info.sha256

    @property
    def threshold(self) -> float:
        return self.calibration["threshold"]

    @property
    def norm_mean(self) -> float:
        return self.calibration["norm_mean"]

    @property
    def norm_std(self) -> float:
        return self.calibration["norm_std"]

    def with_calibration(self, calibration: dict[str, float], stats: LocationStats | None) -> AnomalyScorer:
        """A shallow copy using other calibration values and statistics (nothing written; the session shared)."""
        other = copy.copy(self)
        other.calibration = {**self.calibration, **{k: float(v) for k, v in calibration.items()}}
        other.stats = stats
        other.aligner = self._make_aligner(stats)
        return other

    @staticmethod
    def _make_aligner(stats: LocationStats | None) -> FrameAligner | None:
        if stats is None or stats.reference.size == 0:
            return None
        return FrameAligner(stats.reference, stats.frame_size)

    # -- scoring ------------------------------------------------------------------------------------------------

    def analyse(self, frame: np.ndarray, aligner: FrameAligner | None | str = "default") -> _Analysis:
        """Register the frame (per-location statistics only) and run the graph on it.

        ``aligner``: "default" uses the statistics' reference; None runs the frame as it is. NonFiniteOutput
        (a BadDataError) when an output holds NaN or Inf.
        """
        if isinstance(aligner, str):
            aligner = self.aligner
        shift = None
        valid = isinstance(frame, np.ndarray) and frame.dtype == np.uint8 and frame.ndim in (2, 3) and frame.size
        if aligner is not None and valid:  # anything else is refused by run_frame with the expected format
            if self.stats is not None and frame.shape[:2] != self.stats.frame_size:
                self._size_error(frame.shape[0], frame.shape[1], self.stats.frame_size)
            frame, shift = aligner.align(frame)
        out = self.graph.run_frame(frame)
        amap = np.asarray(out["anomaly_map"], np.float32)
        feats = np.asarray(out["features"], np.float32)
        if amap.ndim != 2 or feats.ndim != 3:
            raise ModelRejectedError(
                f"{self.where}: anomaly graph returned anomaly_map {list(amap.shape)}, features {list(feats.shape)}"
            )
        height, width = amap.shape
        ph, pw = out.padded  # the size the graph ran at (run_frame's padding, not recomputed here)
        fh, fw = feats.shape[1:]
        grid = amap
        if (ph, pw) != (height, width):
            grid = cv2.copyMakeBorder(amap, 0, ph - height, 0, pw - width, cv2.BORDER_REFLECT_101)
        if (fh, fw) != (ph, pw):
            grid = cv2.resize(grid, (fw, fh), interpolation=cv2.INTER_AREA)
        return _Analysis(height, width, amap, float(out["score"]), grid, feats, (ph, pw), shift)

    def _size_error(self, height: int, width: int, size: tuple[int, int]) -> None:
        raise FrameError(
            f"{self.where}: frame is {width}x{height} but the per-location statistics were fitted on "
            f"{size[1]}x{size[0]} frames; recalibrate for this size (edgeae calibrate) or feed frames of the "
            "calibrated size"
        )

    def _terms(self, a: _Analysis, stats: LocationStats) -> tuple[np.ndarray, np.ndarray]:
        """Per-location SSIM z-score and feature Mahalanobis distance, both (h, w), before unit scaling."""
        if (a.height, a.width) != stats.frame_size:
            self._size_error(a.height, a.width, stats.frame_size)
        if a.features.shape != stats.feat_mean.shape:
            raise ModelRejectedError(
                f"{self.where}: features {list(a.features.shape)} do not match the statistics "
                f"{list(stats.feat_mean.shape)}; recalibrate with `edgeae calibrate`"
            )
        z_s = (a.ssim_grid - stats.ssim_mean) / stats.ssim_std
        dist = _feature_distance(a.features - stats.feat_mean, stats)
        a.dist = dist
        return z_s.astype(np.float32), dist

    def _motion(self, a: _Analysis, prev: _Analysis | None, stats: LocationStats) -> np.ndarray | None:
        """How much of this frame's feature evidence moving things explain, (h, w) in the feature term's units, or
        None (no usable previous frame).

        A fixed camera on a busy scene sees people and cars at every place they pass, and a location's statistics
        cannot tell them from a box left on the pavement (issue 16: every frame alarmed). What tells them apart is
        time: a mover changes the cells it covers from one frame to the next (``change``), and it was already
        nearby in the previous frame (``before``: that frame's evidence, dilated by how far a mover comes in a
        frame). The evidence explained is the smaller of the two: a left object does not change (``change`` low),
        and one that just appeared was not there before (``before`` low), so both stay anomalous from their first
        frame. Measured on the features of benchmarks/street_bench.py's clip (robust statistics fitted on its 200
        calibration frames, the 400 test frames scored offline): per-frame AUROC 0.70 without the term, 0.94 with
        ``change`` alone (it misses every object's first frame), 0.98 with both; the CLI protocol's numbers are in
        BENCHMARKS.md ("Busy scene"). A person who stops walking becomes, like a left object, an alarm.
        """
        if prev is None or prev.features.shape != a.features.shape or prev.dist is None:
            return None
        if a.timestamp is not None and prev.timestamp is not None and not 0 < a.timestamp - prev.timestamp <= \
                MOTION_MAX_GAP_S:  # fmt: skip
            return None
        change = _feature_distance(a.features - prev.features, stats)
        change = cv2.dilate(change, np.ones((_MOTION_CHANGE_CELLS,) * 2, np.uint8))
        before = cv2.dilate(prev.dist, np.ones((_MOTION_PREVIOUS_CELLS,) * 2, np.uint8))
        return np.minimum(change, before)

    def _combined_grid(self, a: _Analysis, stats: LocationStats, prev: _Analysis | None = None) -> np.ndarray:
        z_s, dist = self._terms(a, stats)
        moved = self._motion(a, prev, stats) if stats.motion else None
        if moved is not None:
            dist = dist - moved
        (off_s, scale_s), (off_d, scale_d) = stats.term_norm
        w_s, w_d = stats.weights
        t_s, t_d = w_s * (z_s - off_s) / scale_s, w_d * (dist - off_d) / scale_d
        if stats.combine == "sum":
            return (t_s + t_d).astype(np.float32)
        return np.maximum(t_s, t_d).astype(np.float32)

    def _grid_kernel(self, a: _Analysis) -> np.ndarray:
        stride = a.padded[0] / a.features.shape[1]
        return _window_kernel(self.score_window / stride)

    def raw_map(self, a: _Analysis, stats: LocationStats | None,
                prev: _Analysis | None = None) -> tuple[float, np.ndarray, np.ndarray]:  # fmt: skip
        """(raw score, window map, detail map) of an analysed frame, before normalisation; maps (H, W) float32.

        ``prev``: the previous frame of the same stream, analysed and scored (statistics with ``motion``: what
        moved since is discounted, :meth:`_motion`); None for an image on its own.

        The window map is the evidence averaged over the graph's score window (16 px), and the raw score its
        maximum (exactly the graph's own score definition), so one hot cell does not decide a frame. The detail
        map is the evidence itself, used to keep the bbox tight (the window map grows every region by half a
        window).
        """
        if stats is None:
            windowed = _smooth(a.amap, _window_kernel(self.score_window))
            raw = window_max(a.amap, self.score_window) if self.inspect else a.graph_score
            return raw, windowed, a.amap
        grid = self._combined_grid(a, stats, prev)
        ph, pw = a.padded
        fh, fw = grid.shape
        if a.shift is not None:
            # Registration fills a band of up to |shift| px at two edges with reflected content: no evidence there
            # either way (measured: the commonest false alarm without this). Cells centred in it get the median.
            dx, dy = a.shift
            cy = (np.arange(fh) + 0.5) * ph / fh - 0.5
            cx = (np.arange(fw) + 0.5) * pw / fw - 0.5
            bad_y = (cy < -dy) | (cy >= a.height - dy)
            bad_x = (cx < -dx) | (cx >= a.width - dx)
            if bad_y.any() or bad_x.any():
                grid = grid.copy()
                fill = float(np.median(grid))
                grid[bad_y, :] = fill
                grid[:, bad_x] = fill
        windowed = _smooth(grid, self._grid_kernel(a))
        valid_h, valid_w = max(1, math.ceil(a.height * fh / ph)), max(1, math.ceil(a.width * fw / pw))
        raw = float(windowed[:valid_h, :valid_w].max())  # cells that are all padding do not count

        def up(g: np.ndarray) -> np.ndarray:
            return np.ascontiguousarray(cv2.resize(g, (pw, ph), interpolation=cv2.INTER_LINEAR)[: a.height, : a.width])

        return raw, up(windowed), up(grid)

    def finish(self, a: _Analysis, prev: _Analysis | None = None) -> FrameScore:
        """The FrameScore of an analysed frame (see :meth:`score`); ``prev`` as for :meth:`raw_map`."""
        raw, wmap, detail = self.raw_map(a, self.stats, prev)
        mean, std = self.norm_mean, self.norm_std
        score = (raw - mean) / std
        fmap = ((wmap - mean) / std).astype(np.float32)
        if not (math.isfinite(score) and _finite(fmap) and _finite(detail)):
            raise NonFiniteOutput(f"{self.where}: the anomaly map holds NaN or Inf; frame not scored", "anomaly_map")
        thr = self.threshold
        above = bool(score > thr)
        bbox = None
        if above:
            # Above the threshold in the window map (where the score comes from) and in the evidence itself:
            # the first drops isolated noisy cells, the second the half-window margin around a defect.
            evidence = (detail - mean) / std
            level = max(thr, BBOX_PEAK_FRACTION * float(evidence.max()))
            bbox = largest_region((fmap > thr) & (evidence > level)) or largest_region(fmap > thr)
        return FrameScore(raw=float(raw), score=float(score), threshold=thr, above=above, map=fmap, bbox=bbox,
                          shift=a.shift)  # fmt: skip

    def score(self, frame: np.ndarray) -> FrameScore:
        """Score one frame ``(H, W, 3)`` BGR or ``(H, W)``/``(H, W, 1)`` gray uint8.

        NaN or Inf anywhere (graph outputs, or the map after normalisation) raises NonFiniteOutput, a
        BadDataError: the frame is flagged, never scored (RELIABILITY case 18). A frame of another size than the
        per-location statistics were fitted on raises BadDataError.
        """
        return self.finish(self.analyse(frame))


# ------------------------------------------------------------------------------------------------------------
# Hysteresis


class Hysteresis:
    """Alarms from a stream of normalised scores: EMA smoothing, ``on_frames`` to raise, ``off_frames`` to clear.

    ``update(score, threshold) -> (smoothed, alarm, event)``; event is "start", "end" or None. Scores are
    clipped to ``2 * threshold`` (when the threshold is positive) before smoothing, so that one frame scoring
    1000 cannot hold the smoothed score above the threshold for the frames after it: one noisy frame never
    raises an alarm with ``on_frames >= 2``.
    """

    def __init__(self, alpha: float = 0.5, on_frames: int = 2, off_frames: int = 3):
        if not 0 < alpha <= 1:
            raise UsageError(f"alpha must be in (0, 1], got {alpha!r}")
        if on_frames < 1 or off_frames < 1:
            raise UsageError("on_frames and off_frames must be >= 1")
        self.alpha, self.on_frames, self.off_frames = alpha, int(on_frames), int(off_frames)
        self.reset()

    def reset(self) -> None:
        self.smoothed: float | None = None
        self.alarm = False
        self._above = 0
        self._below = 0

    def update(self, score: float, threshold: float) -> tuple[float, bool, str | None]:
        score = float(score)
        if threshold > 0:
            score = min(score, 2.0 * threshold)
        if self.smoothed is None:
            self.smoothed = score
        else:
            self.smoothed = self.alpha * score + (1.0 - self.alpha) * self.smoothed
        event = None
        if self.smoothed > threshold:
            self._above += 1
            self._below = 0
            if not self.alarm and self._above >= self.on_frames:
                self.alarm, event = True, "start"
        else:
            self._below += 1
            self._above = 0
            if self.alarm and self._below >= self.off_frames:
                self.alarm, event = False, "end"
        return self.smoothed, self.alarm, event


# ------------------------------------------------------------------------------------------------------------
# The frame loop's task


class ScoreTask:
    """The frame loop's anomaly task: ``process(frame) -> Outcome(event=score fields, image=overlay)``.

    ``smooth``: temporal smoothing with hysteresis (:class:`Hysteresis`) decides the alarm - for streams (video,
    cameras); without it (a folder of unrelated images) each frame's alarm is its own score above the threshold.
    ``annotate``: draw the overlay (only when an output or the live view wants it: it costs milliseconds).
    """

    kind = "anomaly"

    def __init__(self, scorer: AnomalyScorer, *, smooth: bool = True, annotate: bool = False,
                 hysteresis: Hysteresis | None = None, adapter: Any = None):  # fmt: skip
        self.adapter = adapter  # edge_runtime.adapt.Adapter: slow re-calibration from normal frames (run --adapt)
        self.scorer = adapter.attach(scorer) if adapter is not None else scorer
        self.hyst = (hysteresis or Hysteresis()) if smooth else None
        self.annotate = annotate
        self.counts = {"frames": 0, "anomalous_frames": 0, "alarms": 0}
        self.max_score = -math.inf
        self.max_side = scorer.graph.info.max_side
        self._previous: _Analysis | None = None  # streams only (smooth): the last scored frame's analysis

    def process(self, frame: Any) -> Outcome:
        image = check_frame(frame.image, self.max_side)
        analysis = self.scorer.analyse(image)
        analysis.timestamp = float(frame.timestamp)
        t0 = time.perf_counter()
        # A stream's previous frame feeds the motion term; a folder's images are unrelated and scored alone.
        result = self.scorer.finish(analysis, self._previous)
        if self.hyst is not None:
            self._previous = analysis
        thr = self.scorer.threshold
        if self.hyst is not None:
            smoothed, alarm, change = self.hyst.update(result.score, thr)
        else:
            smoothed, alarm, change = result.score, result.above, None
        if self.adapter is not None:
            self.adapter.update(analysis, float(frame.timestamp), result.above, bool(alarm))
        self.counts["frames"] += 1
        self.counts["anomalous_frames"] += int(result.above)
        self.counts["alarms"] += int(change == "start" or (self.hyst is None and result.above))
        self.max_score = max(self.max_score, result.score)
        event = {"score": round(result.score, 4), "raw": round(result.raw, 6), "smoothed": round(smoothed, 4),
                 "threshold": round(thr, 4), "above_threshold": result.above, "alarm": bool(alarm),
                 "bbox": list(result.bbox) if result.bbox is not None else None,
                 "shift": list(result.shift) if result.shift is not None else None}  # fmt: skip
        extra = [{"type": "alarm", "event": change, "smoothed": round(smoothed, 4)}] if change else []
        out = Outcome(event=event, extra=extra)
        if self.annotate:
            out.image = overlay(image, result.map, thr, score=result.score, bbox=result.bbox, alarm=bool(alarm))
        out.stages["postprocess"] = (time.perf_counter() - t0) * 1000
        return out

    def summary(self) -> dict[str, Any]:
        return {**self.counts, "alarm_active_at_end": bool(self.hyst.alarm) if self.hyst else False,
                "threshold": self.scorer.threshold, "per_location": self.scorer.stats is not None,
                "max_score": self.max_score if self.counts["frames"] else None,
                "providers": list(self.scorer.graph.providers),
                **(self.adapter.summary() if self.adapter is not None else {})}  # fmt: skip
