"""Calibration of an anomaly bundle on normal frames of one scene, on the device, numpy only (`edgeae calibrate`).

See edge_runtime/anomaly.py for what the statistics are and how they score; this module fits them and writes
them into a bundle.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_runtime.anomaly import (
    COMBINE_MODES,
    DEFAULT_COMBINE,
    DEFAULT_WEIGHTS,
    Z_CLIP,
    AnomalyScorer,
    LocationStats,
    model_arch,
)
from edge_runtime.contract import DEVICE_THRESHOLD_FLOOR, STATS_NAME
from edge_runtime.errors import BadDataError, ModelRejectedError, UsageError, output_error
from edge_runtime.io import atomic_path, atomic_write_text, fsync_dir, umask
from edge_runtime.model import MANIFEST_NAME, Bundle, load_bundle
from edge_runtime.registration import FrameAligner

# Calibration needs at least this many frames: 8 to fit, 2 held out. Fewer than asked for but at least this
# many (a short video) still calibrates, and the summary says so.
MIN_CALIBRATION_FRAMES = 10
# The last 20 % of the calibration frames in time are held out: the statistics are fitted on the earlier 80 %, the
# score normalisation and the threshold on this block. A block of time, not interleaved frames: on a busy street
# every 5th frame of the same seconds is a near-copy of its neighbours and set a threshold every later frame
# exceeded (issue 16: all 40 frames after calibration alarmed).
HOLDOUT_FRACTION = 0.2
# A scene has contrast and changes: frames whose std (grey levels) stays under this are blank or black, and a run
# of frames that never differ by more than this mean absolute change (on a 64x36 copy) comes from a frozen camera.
MIN_SCENE_STD = 2.0
# The held-out block's normalised scores should not trend: quarter means further apart than this (units of the
# block's own spread) mean the scene was still changing when calibration stopped.
MAX_HELD_OUT_DRIFT = 2.0
MIN_FRAME_CHANGE = 0.05
# Threshold in normalised units: max(DEVICE_THRESHOLD_FLOOR, THRESHOLD_MARGIN * highest held-out normalised
# score). The floor is 4, not the 3 of `edgeae export`: edge_runtime.contract says why (a few held-out frames do
# not show the tail; measured false alarms 2.5 % at 3 std, 1.5 % at 4), and the Hysteresis (2 frames to raise an
# alarm) stops single false frames.
THRESHOLD_FLOOR = DEVICE_THRESHOLD_FLOOR  # the name callers and tests know
THRESHOLD_MARGIN = 1.1
# Per-location variances get this fraction of their mean over all locations added: a location that never
# changed on the calibration frames (a static, saturated patch) would otherwise call sensor noise a defect.
VARIANCE_FLOOR = 0.1
# With per-location statistics norm_std (in the unit scale of the combined map) is at least this: with few
# held-out frames their sample std can be tiny by chance and would make every later frame an outlier.
MIN_NORM_STD = 0.25
# The per-location medians and median absolute deviations are taken over at most this many fitted frames (evenly
# thinned beyond it; float16 copies of the features: about 24 MB at 640x360, 95 MB at 1280x720).
MAX_MEDIAN_FRAMES = 100
MAD_TO_STD = 1.4826  # the scaled MAD equals the standard deviation of a Gaussian
CALIBRATION_RULE = (
    "edgeae calibrate on the device: normal frames spread over time, the last 20 % of the span held out; "
    "statistics fitted on the earlier 80 % (per location: medians and scaled MADs of the features for a stream, "
    "Gaussians for still images; else the graph score's mean and std); per-location: norm_mean/norm_std from the "
    "held-out scores (a stream's: median and upper-half spread, each scored against the source frame before it, "
    "the motion term); "
    f"threshold = max({DEVICE_THRESHOLD_FLOOR}, 1.1 x the highest normalised held-out score)."
)


def _progress_fn(progress: Any, what: str) -> Callable[[int, int | None], None] | None:
    """``progress``: None/False (quiet), True (a line on stderr now and then) or a callable(done, total)."""
    if not progress:
        return None
    if callable(progress):
        return progress
    last = [0.0]

    def report(done: int, total: int | None) -> None:
        now = time.monotonic()
        if now - last[0] >= 2.0 or (total is not None and done >= total):
            last[0] = now
            print(f"{what}: {done}" + (f"/{total}" if total else "") + " frames", file=sys.stderr, flush=True)

    return report


# ------------------------------------------------------------------------------------------------------------
# Calibration


class _Moments:
    """Running sums for per-element mean and variance (float64; the arrays are small)."""

    def __init__(self) -> None:
        self.n = 0
        self.s1: np.ndarray | None = None
        self.s2: np.ndarray | None = None

    def add(self, x: np.ndarray) -> None:
        x = x.astype(np.float64)
        if self.s1 is None:
            self.s1, self.s2 = np.zeros_like(x), np.zeros_like(x)
        self.s1 += x
        self.s2 += x * x
        self.n += 1

    def mean_std(self, floor_axes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std, the variance raised by VARIANCE_FLOOR x its mean over ``floor_axes`` (the locations)."""
        assert self.s1 is not None and self.s2 is not None and self.n > 0
        mean = self.s1 / self.n
        var = np.maximum(self.s2 / self.n - mean * mean, 0.0) * (self.n / max(1, self.n - 1))
        floor = VARIANCE_FLOOR * var.mean(axis=floor_axes, keepdims=True) + 1e-12
        return mean.astype(np.float32), np.sqrt(var + floor).astype(np.float32)


def _unit_scale(values: np.ndarray) -> tuple[float, float]:
    """Offset and scale that bring ``values`` (normal held-out locations) to mean 0, std 1."""
    v = values.astype(np.float64).ravel()
    return float(v.mean()), float(max(v.std(), 1e-6))


@dataclass
class _Collected:
    """What one pass over the calibration frames leaves: running sums (the SSIM term, and the features' Gaussians
    for still images) and thinned float16 copies of the features (for a stream's medians) of everything but the
    held-out tail, the held-out tail's grids (a ring of the last frames, each with the analysis of the source frame
    before it), and checks of the frames themselves."""

    per_location: bool
    holdout: int
    fit_ssim: _Moments = field(default_factory=lambda: _Moments())
    fit_feat: _Moments = field(default_factory=lambda: _Moments())  # Gaussians, for frames that are not a stream
    fit_feats: list = field(default_factory=list)  # float16 (F, h, w), every ``fit_stride``-th fitted frame
    fit_stride: int = 1
    fitted: int = 0
    scores: list[float] = field(default_factory=list)
    tail: deque = field(default_factory=deque)  # (analysis, graph score, previous analysis or None)
    last: tuple[Any, Any] | None = None  # (image, analysis) of the frame analysed last
    size: tuple[int, int] | None = None
    reference: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    aligner: FrameAligner | None = None
    count: int = 0
    times: list[float] = field(default_factory=list)
    looks: list[tuple[float, float, float]] = field(default_factory=list)  # (mean, std, mean abs diff to previous)
    _thumb: np.ndarray | None = None

    def look(self, frame: np.ndarray) -> None:
        small = cv2.resize(frame, (64, 36), interpolation=cv2.INTER_AREA).astype(np.float32)
        diff = float(np.abs(small - self._thumb).mean()) if self._thumb is not None else float("inf")
        self._thumb = small
        self.looks.append((float(small.mean()), float(frame.std()), diff))


@dataclass(frozen=True)
class Paired:
    """A calibration frame with the source frame just before it (None at the start), as :func:`spread` gives
    them with ``previous=True``: the held-out frames are scored with the motion term, as a stream will be."""

    frame: Any
    previous: Any


def _frame_and_time(item: Any, position: int) -> tuple[np.ndarray, float]:
    """A calibration item: a :class:`~edge_runtime.sources.Frame` (its timestamp) or an image (its position)."""
    image = getattr(item, "image", item)
    if not isinstance(image, np.ndarray) or image.ndim not in (2, 3):
        raise BadDataError(f"calibration frame {position} is not an image array ({type(image).__name__})")
    return image, float(getattr(item, "timestamp", position))


def _fit(c: _Collected, a: Any) -> None:
    """A frame leaves the held-out ring: it belongs to the fitted part."""
    c.fit_ssim.add(a.ssim_grid)
    c.fit_feat.add(a.features)
    if c.fitted % c.fit_stride == 0:
        c.fit_feats.append(a.features.astype(np.float16))
        if len(c.fit_feats) > MAX_MEDIAN_FRAMES:  # thin evenly: keep every other copy, take half as many later
            c.fit_feats = c.fit_feats[::2]
            c.fit_stride *= 2
    c.fitted += 1


def _previous_analysis(c: _Collected, scorer: AnomalyScorer, previous: Any) -> Any:
    """The analysis of the source frame before a calibration frame (reused when it is the frame analysed last)."""
    if previous is None or not c.per_location:
        return None
    image, t = _frame_and_time(previous, -1)
    if c.last is not None and c.last[0] is image:
        return c.last[1]
    if c.size is None or (int(image.shape[0]), int(image.shape[1])) != c.size:
        return None
    a = scorer.analyse(image, c.aligner)
    a.amap, a.timestamp = a.amap[:0], t
    return a


def _add(c: _Collected, scorer: AnomalyScorer, image: np.ndarray, t: float, previous: Any = None) -> None:
    hw = (int(image.shape[0]), int(image.shape[1]))
    if c.size is None:
        c.size = hw
        if c.per_location:
            c.reference = FrameAligner.reference_of(image)
            c.aligner = FrameAligner(c.reference, hw) if c.reference.size else None
    elif c.per_location and hw != c.size:
        raise BadDataError(
            f"calibration frame {c.count} is {hw[1]}x{hw[0]}, the first was {c.size[1]}x{c.size[0]}: "
            "per-location statistics need frames of one size (use --global-only for mixed sizes)"
        )
    c.look(image)
    prev = _previous_analysis(c, scorer, previous)
    a = scorer.analyse(image, c.aligner)
    a.timestamp = t
    if c.per_location:
        a.amap = a.amap[:0]  # not needed again: keep only the grids
    c.last = (image, a)
    c.tail.append((a, a.graph_score, prev))
    if len(c.tail) > c.holdout:  # leaves the held-out tail: it belongs to the fitted part
        old, score, _ = c.tail.popleft()
        c.scores.append(score)
        if c.per_location:
            _fit(c, old)
    c.count += 1


def _collect(scorer: AnomalyScorer, frames: Iterable[Any], n: int, per_location: bool, report: Any) -> _Collected:
    c = _Collected(per_location, holdout=max(2, round(n * HOLDOUT_FRACTION)))
    for item in frames:
        if c.count >= n:
            break
        previous = item.previous if isinstance(item, Paired) else None
        image, t = _frame_and_time(item.frame if isinstance(item, Paired) else item, c.count)
        _add(c, scorer, image, t, previous)
        c.times.append(t)
        if report:
            report(c.count, n)
    if c.count < MIN_CALIBRATION_FRAMES:
        raise BadDataError(
            f"calibration got {c.count} frame(s) from the source, fewer than the {MIN_CALIBRATION_FRAMES} it needs"
        )
    # A short source: hold out the last 20 % of what came (the ring holds more), fit on the rest.
    keep = max(2, round(c.count * HOLDOUT_FRACTION))
    while len(c.tail) > keep:
        old, score, _ = c.tail.popleft()
        c.scores.append(score)
        if per_location:
            _fit(c, old)
    c.last = None
    _check_scene(c)
    return c


def _check_scene(c: _Collected) -> None:
    """A black or frozen camera is not a scene to learn (BadDataError, exit 3)."""
    means, stds, diffs = (np.array(v) for v in zip(*c.looks, strict=True))
    if float(stds.max()) < MIN_SCENE_STD:
        raise BadDataError(
            f"calibration frames are blank (brightness {means.mean():.1f}, contrast {stds.max():.2f}): the camera "
            "is covered, black or not delivering a picture; calibrate on the scene itself"
        )
    if float(diffs[1:].max()) < MIN_FRAME_CHANGE:
        raise BadDataError(
            f"all {c.count} calibration frames are the same picture (largest change {diffs[1:].max():.3f} grey "
            "levels): the camera looks frozen; calibrate on a live picture"
        )


def _fit_location_stats(scorer: AnomalyScorer, c: _Collected, weights: tuple[float, float],
                        combine: str) -> tuple[LocationStats, np.ndarray]:  # fmt: skip
    """Statistics from the fitted frames; their unit scales and the raw scores of the held-out tail, each scored
    against the source frame before it (the motion term) when the frames came :class:`Paired`."""
    assert c.size is not None
    s_mean, s_std = c.fit_ssim.mean_std((0, 1))
    # A stream (frames paired with the one before): robust statistics and the motion term. Unrelated images of a
    # fixed scene keep the Gaussians: on benchmarks/anomaly_bench.py (40 calibration images per scene, no time),
    # robust statistics with the stream's normalisation lost image AUROC (0.996 -> 0.988) and detections (92 -> 55
    # of 100).
    stream = any(prev is not None for _, _, prev in c.tail)
    f_mean, f_std = _median_mad(c.fit_feats) if stream else c.fit_feat.mean_std((1, 2))
    z_clip = Z_CLIP if stream else 0.0
    held = [a for a, _, _ in c.tail]
    provisional = LocationStats(c.size, s_mean, s_std, f_mean, f_std, np.array([[0.0, 1.0], [0.0, 1.0]]),
                                np.asarray(weights, np.float64), c.fitted, z_clip=z_clip)  # fmt: skip
    terms = [scorer._terms(a, provisional) for a in held]
    term_norm = np.array([_unit_scale(np.stack([t[0] for t in terms])), _unit_scale(np.stack([t[1] for t in terms]))])
    stats = LocationStats(c.size, s_mean, s_std, f_mean, f_std, term_norm, np.asarray(weights, np.float64),
                          c.fitted, scorer.model_sha256, combine, c.reference, z_clip, stream)  # fmt: skip
    raw = []
    for a, _, prev in c.tail:
        if prev is not None:
            scorer._terms(prev, stats)  # the previous frame's evidence, as the stream will have it
        raw.append(scorer.raw_map(a, stats, prev)[0])
    return stats, np.array(raw)  # out of sample


def _upper_scale(held_raw: np.ndarray) -> tuple[float, float]:
    """norm_mean and norm_std of the held-out raw scores: their median, and the spread of the half above it as a
    Gaussian's standard deviation (sqrt(2 x mean squared excess)), at least MIN_NORM_STD (unit-scale maps: the max
    of a window mean varies by a fraction of a unit between normal frames).

    False alarms come from the upper tail, so that is what the units measure. On a busy street the motion term
    makes the lower tail long (frames where passers-by explain most of the evidence): offline, on the features of
    benchmarks/street_bench.py's clip, the plain standard deviation of the held-out scores was 4.0 raw units
    against 1.5 for the upper half. For a symmetric spread both are the same."""
    median = float(np.median(held_raw))
    excess = np.maximum(held_raw.astype(np.float64) - median, 0.0)
    upper = math.sqrt(2.0 * float(np.mean(excess**2))) if len(held_raw) > 1 else 0.0
    return median, float(max(upper, MIN_NORM_STD))


def _median_mad(feats: list) -> tuple[np.ndarray, np.ndarray]:
    """Per-location, per-channel median and scaled median absolute deviation of the fitted frames' features
    (float16 copies), the variance raised by VARIANCE_FLOOR x its mean over the locations, as for the Gaussians:
    a location that never changed does not call sensor noise a defect. Robust where people pass: a location
    covered by someone in a third of the frames keeps the spread of its empty look (issue 16)."""
    assert feats
    n_ch = feats[0].shape[0]
    med = np.empty(feats[0].shape, np.float32)
    scale = np.empty(feats[0].shape, np.float32)
    for ch in range(n_ch):  # one channel at a time: (N, h, w) float32 at most
        x = np.stack([f[ch] for f in feats]).astype(np.float32)
        med[ch] = np.median(x, axis=0)
        scale[ch] = MAD_TO_STD * np.median(np.abs(x - med[ch]), axis=0)
    var = scale.astype(np.float64) ** 2
    floor = VARIANCE_FLOOR * var.mean(axis=(1, 2), keepdims=True) + 1e-12
    return med, np.sqrt(var + floor).astype(np.float32)


def _stability(held_norm: np.ndarray, threshold: float, c: _Collected) -> dict[str, Any]:
    """How the held-out tail scored, in quarters of its time; a warning when it reached the floor: the scene then
    changed more within the span than the fitted part saw, and a longer span would set a safer threshold."""
    parts = [q for q in np.array_split(held_norm, min(4, len(held_norm))) if q.size]
    quarters = [float(q.max()) for q in parts]
    drift = float(max(q.mean() for q in parts) - min(q.mean() for q in parts))
    span = c.times[-1] - c.times[0] if len(c.times) > 1 else 0.0
    out: dict[str, Any] = {"span_s": round(span, 3), "held_out_max_by_quarter": [round(q, 3) for q in quarters],
                           "held_out_median": round(float(np.median(held_norm)), 3),
                           "held_out_drift": round(drift, 3)}  # fmt: skip
    if float(held_norm.max()) >= DEVICE_THRESHOLD_FLOOR or drift >= MAX_HELD_OUT_DRIFT:
        out["warning"] = (
            f"the score still moved within the held-out part of the span (up to {held_norm.max():.1f}, drift "
            f"{drift:.1f} between its quarters): the scene varies more than a {span:.0f}-s span shows; calibrate "
            "over a longer span (--duration) so the threshold is set on the variation it will see"
        )
    return out


def fit_calibration(
    scorer: AnomalyScorer,
    frames: Iterable[Any],
    *,
    n: int,
    per_location: bool = True,
    weights: tuple[float, float] = DEFAULT_WEIGHTS,
    combine: str = DEFAULT_COMBINE,
    progress: Any = None,
) -> tuple[dict[str, float], LocationStats | None, dict]:
    """Fit calibration on up to ``n`` normal frames, in memory: ``(calibration, stats or None, summary)``.

    ``frames``: images ((H, W, 3) uint8 BGR) or :class:`~edge_runtime.sources.Frame` objects, in time order
    (:func:`spread` takes them spread over time from a source). The last 20 % of them in time are held out
    (:data:`HOLDOUT_FRACTION`): the statistics (per-location Gaussians, or for the generic score its mean and std)
    are fitted on the earlier 80 %, the score normalisation and the threshold on the held-out block, so the
    threshold is set on a stretch of time the statistics never saw. The threshold is
    ``max(4.0, 1.1 x the highest normalised held-out score)``. The scorer's own statistics are ignored, so a
    bundle calibrated at another resolution recalibrates. Memory: running sums plus the held-out block's grids.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < MIN_CALIBRATION_FRAMES:
        raise UsageError(f"calibration needs n >= {MIN_CALIBRATION_FRAMES} frames, got {n!r}")
    if combine not in COMBINE_MODES:
        raise UsageError(f"combine must be one of {', '.join(COMBINE_MODES)}, got {combine!r}")
    scorer = scorer.with_calibration({}, None)  # fit from scratch: any size, any earlier statistics
    c = _collect(scorer, frames, n, per_location, _progress_fn(progress, "calibrate"))
    stats: LocationStats | None = None
    if per_location:
        stats, held_raw = _fit_location_stats(scorer, c, weights, combine)
        if stats.motion:
            norm_mean, norm_std = _upper_scale(held_raw)
        else:
            norm_mean = float(held_raw.mean())
            # Unit-scale maps: the max of a window mean varies by a fraction of a unit between normal frames.
            norm_std = float(max(held_raw.std(ddof=1) if len(held_raw) > 1 else 0.0, MIN_NORM_STD))
        fit_normalised = np.array([], np.float64)
    else:
        fit = np.asarray(c.scores, np.float64)
        held_raw = np.array([s for _, s, _ in c.tail])
        norm_mean = float(fit.mean())
        norm_std = float(max(fit.std(ddof=1), 0.02 * abs(norm_mean), 1e-6))
        fit_normalised = (fit - norm_mean) / norm_std
    held_norm = (held_raw - norm_mean) / norm_std
    threshold = float(max(DEVICE_THRESHOLD_FLOOR, THRESHOLD_MARGIN * float(held_norm.max())))
    calibration = {"threshold": threshold, "norm_mean": norm_mean, "norm_std": norm_std}
    assert c.size is not None
    summary = {"frames": c.count, "frames_requested": n, "short": c.count < n, "frames_fit": c.count - len(c.tail),
               "frames_held_out": len(c.tail), "per_location": per_location, "frame_size": [c.size[1], c.size[0]],
               **calibration, "held_out_max_score": float(held_norm.max()),
               "calibration_frames_above_threshold": int((held_norm > threshold).sum()
                                                         + (fit_normalised > threshold).sum()),
               "stability": _stability(held_norm, threshold, c)}  # fmt: skip
    if stats is not None:
        summary["grid"] = [stats.grid[1], stats.grid[0]]  # width, height, like frame_size
        summary["feature_channels"] = int(stats.feat_mean.shape[0])
    return calibration, stats, summary


def spread(
    frames: Iterable[Any], n: int, *, every: float = 0.0, duration: float | None = None, previous: bool = False
) -> Iterator[Any]:
    """Frames of a source spread over time: one at least ``every`` seconds (source time: a video's position, a
    camera's capture clock) after the last one taken, until ``n`` were taken or ``duration`` seconds passed since
    the first. Frames in between are read and dropped. ``previous``: yield :class:`Paired` items, each frame with
    the source frame read just before it (a stream's previous frame, for the motion term)."""
    taken, first, last, before = 0, None, None, None
    for frame in frames:
        t = float(getattr(frame, "timestamp", taken))
        if first is None:
            first = t
        if duration is not None and t - first > duration:
            return
        # On a schedule (first + k x every), so a frame rate that is not a multiple of 1/every still gives n frames
        # over the span; never two frames closer than half a step (after a gap in a live source).
        if last is None or (t >= first + taken * every - 1e-9 and t - last >= every / 2):
            last = t
            taken += 1
            yield Paired(frame, before) if previous else frame
            if taken >= n:
                return
        before = frame


def calibrate(
    model: str | os.PathLike,
    frames: Iterable[Any],
    *,
    n: int,
    out: str | os.PathLike | None = None,
    per_location: bool | None = None,
    progress: Any = None,
    precision: str = "fp32",
    device: str = "cpu",
    threads: int | None = None,
    allow_fallback: bool = False,
) -> dict:
    """Fit the calibration of the anomaly bundle ``model`` on ``n`` normal frames and write it.

    ``out``: a new bundle folder (must not exist): the model's files, the new statistics and a manifest that
    records its parent's manifest SHA-256; ``model`` is left untouched. ``out=None`` rewrites ``model`` in place
    (the CLI asks for ``--in-place``). ``per_location`` None: per-location statistics for the fixed-camera model,
    a global normalisation for the inspection model (``model_config`` arch "inspect"). numpy only; see
    :func:`fit_calibration` for the rule. Fewer than ``n``
    frames (a short video) is accepted from :data:`MIN_CALIBRATION_FRAMES` on (the summary's ``short`` is true).

    In place: ``anomaly_stats.npz`` then ``manifest.json``, each to a temp file, fsynced and renamed, the manifest
    last; if the manifest cannot be replaced the previous statistics are put back. A new bundle is staged in a
    hidden folder and renamed into place when complete and verified. Returns a summary dict.
    """
    bundle = _load_for_calibration(model)
    if per_location is None:  # an inspection model scores parts that move: one global normalisation, any size
        per_location = model_arch(bundle) != "inspect"
    target = _check_out(bundle, out) if out is not None else None
    scorer = AnomalyScorer(_without_stats(bundle), precision=precision, device=device, threads=threads,
                           allow_fallback=allow_fallback)  # fmt: skip
    t0 = time.perf_counter()
    calibration, stats, summary = fit_calibration(scorer, frames, n=n, per_location=per_location, progress=progress)
    try:
        if target is None:
            _write_calibration(bundle, calibration, stats)
            load_bundle(bundle.root)  # the rewritten bundle verifies (every SHA-256) before we report success
        else:
            _write_new_bundle(bundle, target, calibration, stats)
    except OSError as exc:
        raise output_error(target or bundle.root, exc) from None
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    summary["model"] = str(target or bundle.root)
    if target is not None:
        summary["parent"] = str(bundle.root)
    return summary


def _load_for_calibration(model: str | os.PathLike) -> Bundle:
    """The bundle to calibrate; statistics it lists are not needed (they are replaced), so a missing or stale
    statistics file does not stop a recalibration."""
    bundle = load_bundle(model, skip=frozenset({STATS_NAME}))
    if bundle.task != "anomaly":
        raise ModelRejectedError(f"{bundle.root}: a {bundle.task} bundle, not an anomaly model")
    return bundle


def _without_stats(bundle: Bundle) -> Bundle:
    """The bundle as the scorer should see it while calibrating: without the statistics being replaced."""
    manifest = copy.deepcopy(bundle.manifest)
    manifest["files"].pop(STATS_NAME, None)
    return dataclasses.replace(bundle, manifest=manifest)


def _check_out(bundle: Bundle, out: str | os.PathLike) -> Path:
    target = Path(out)
    if os.path.lexists(target):
        same = target.resolve() == bundle.root.resolve()
        raise UsageError(f"{target}: " + ("is the bundle being calibrated; pass a new folder, or --in-place"
                                          if same else "exists; --out takes a new folder"))  # fmt: skip
    return target


def _write_new_bundle(bundle: Bundle, target: Path, calibration: dict[str, float], stats: LocationStats | None) -> None:
    """The parent's files (hard links where possible) plus new statistics and manifest, staged then renamed."""
    manifest = copy.deepcopy(bundle.manifest)
    manifest["files"].pop(STATS_NAME, None)
    parent_bytes = (bundle.root / MANIFEST_NAME).read_bytes()
    manifest["parent"] = {"manifest_sha256": hashlib.sha256(parent_bytes).hexdigest(), "path": str(bundle.root)}
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        os.chmod(stage, 0o777 & ~umask())
        for name in manifest["files"]:
            try:
                os.link(bundle.root / name, stage / name)
            except OSError:
                shutil.copy2(bundle.root / name, stage / name)
        staged = Bundle(root=stage, manifest=manifest, task=bundle.task, contract=bundle.contract,
                        calibration=bundle.calibration, _graphs=bundle._graphs)  # fmt: skip
        _write_calibration(staged, calibration, stats)
        load_bundle(stage)  # every SHA-256 verifies before the bundle appears
        os.rename(stage, target)
        fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def _write_calibration(bundle: Bundle, calibration: dict[str, float], stats: LocationStats | None) -> None:
    root = bundle.root
    manifest = copy.deepcopy(bundle.manifest)
    manifest["calibration"] = dict(calibration)
    if "calibration_rule" in manifest or stats is not None:
        # The export writes how it set its values; after this they are ours, so say how.
        manifest["calibration_rule"] = CALIBRATION_RULE + (" Per-location statistics: " + STATS_NAME + "."
                                                           if stats is not None else "")  # fmt: skip
    stats_path = root / STATS_NAME
    backup: Path | None = None
    if stats is not None:
        data = stats.to_bytes()
        manifest["files"][STATS_NAME] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        if os.path.lexists(stats_path):
            backup = _backup(stats_path)
        try:
            with atomic_path(stats_path) as tmp:
                tmp.write_bytes(data)
        except BaseException:
            _discard(backup)
            raise
    else:
        manifest["files"].pop(STATS_NAME, None)
    try:
        atomic_write_text(root / MANIFEST_NAME, json.dumps(manifest, indent=2) + "\n")
    except BaseException:
        if backup is not None:
            os.replace(backup, stats_path)  # the old manifest lists the old statistics: put them back
        elif stats is not None and STATS_NAME not in bundle.manifest.get("files", {}):
            _discard(stats_path)
        raise
    _discard(backup)
    if stats is None and STATS_NAME in bundle.manifest.get("files", {}):
        _discard(stats_path)


def _backup(path: Path) -> Path:
    """A hidden hard link (a copy where links are not supported) of ``path`` beside it."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".bak", dir=path.parent)
    os.close(fd)
    os.unlink(tmp)
    try:
        os.link(path, tmp)
    except OSError:
        shutil.copy2(path, tmp)
    return Path(tmp)


def _discard(path: Path | None) -> None:
    if path is not None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
