"""Calibration of an anomaly bundle on normal frames of one scene, on the device, numpy only (`edgeae calibrate`).

See edge_runtime/anomaly.py for what the statistics are and how they score; this module fits them and writes
them into a bundle.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.anomaly import (
    COMBINE_MODES,
    DEFAULT_COMBINE,
    DEFAULT_WEIGHTS,
    AnomalyScorer,
    LocationStats,
    _Analysis,
)
from edge_runtime.contract import DEVICE_THRESHOLD_FLOOR, STATS_NAME
from edge_runtime.errors import BadDataError, ModelRejectedError, UsageError
from edge_runtime.io import atomic_path, atomic_write_text
from edge_runtime.model import MANIFEST_NAME, Bundle, load_bundle
from edge_runtime.registration import FrameAligner

# Calibration needs at least this many frames: 8 to fit, 2 held out. Fewer than asked for but at least this
# many (a short video) still calibrates, and the summary says so.
MIN_CALIBRATION_FRAMES = 10
# Every HOLDOUT_EVERY-th frame (20 %) is held out: the statistics are fitted on the others, the score
# normalisation and the threshold on these. Interleaved rather than the last 20 %: a scene drifts (daylight),
# and the threshold should see the same conditions the statistics saw.
HOLDOUT_EVERY = 5
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
CALIBRATION_RULE = (
    "edgeae calibrate on the device: every 5th normal frame held out; statistics (per-location Gaussians, or the "
    "graph score's mean and std) fitted on the others; per-location: norm_mean/norm_std from the held-out scores; "
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


def fit_calibration(
    scorer: AnomalyScorer,
    frames: Iterable[np.ndarray],
    *,
    n: int,
    per_location: bool = True,
    weights: tuple[float, float] = DEFAULT_WEIGHTS,
    combine: str = DEFAULT_COMBINE,
    progress: Any = None,
) -> tuple[dict[str, float], LocationStats | None, dict]:
    """Fit calibration on up to ``n`` normal frames, in memory: ``(calibration, stats or None, summary)``.

    Every 5th frame is held out (:data:`HOLDOUT_EVERY`). Statistics (per-location Gaussians, or for the generic
    score its mean and std) are fitted on the other 80 %; with per-location statistics the fitted frames would
    score in-sample (too low), so the score normalisation is then fitted on the held-out frames. The threshold is
    ``max(4.0, 1.1 x the highest normalised held-out score)``: out-of-sample normal frames stay below it with a
    10 % margin, and 4 standard deviations is the least it can be. Memory: running sums plus the held-out frames'
    grids (F+1 floats per 8x8 pixels: about 4 MB per 1080p frame).

    With per-location statistics every frame is first registered to the first one (:class:`FrameAligner`),
    which becomes the reference stored with the statistics.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < MIN_CALIBRATION_FRAMES:
        raise UsageError(f"calibration needs n >= {MIN_CALIBRATION_FRAMES} frames, got {n!r}")
    if combine not in COMBINE_MODES:
        raise UsageError(f"combine must be one of {', '.join(COMBINE_MODES)}, got {combine!r}")
    report = _progress_fn(progress, "calibrate")
    fit_ssim, fit_feat = _Moments(), _Moments()
    fit_scores: list[float] = []
    held_scores: list[float] = []
    held: list[_Analysis] = []  # per-location only: the held-out frames' grids
    size: tuple[int, int] | None = None
    reference = np.zeros((0, 0), np.float32)
    aligner: FrameAligner | None = None
    count = 0
    for frame in frames:
        if count >= n:
            break
        if not isinstance(frame, np.ndarray) or frame.ndim not in (2, 3):
            raise BadDataError(f"calibration frame {count} is not an image array ({type(frame).__name__})")
        hw = (int(frame.shape[0]), int(frame.shape[1]))
        if size is None:
            size = hw
            if per_location:
                reference = FrameAligner.reference_of(frame)
                aligner = FrameAligner(reference, size) if reference.size else None
        elif per_location and hw != size:
            raise BadDataError(
                f"calibration frame {count} is {hw[1]}x{hw[0]}, the first was {size[1]}x{size[0]}: "
                "per-location statistics need frames of one size (use --global-only for mixed sizes)"
            )
        a = scorer.analyse(frame, aligner)
        if count % HOLDOUT_EVERY == HOLDOUT_EVERY - 1:
            held_scores.append(a.graph_score)
            if per_location:
                a.amap = a.amap[:0]  # not needed again: keep only the grids
                held.append(a)
        else:
            fit_scores.append(a.graph_score)
            if per_location:
                fit_ssim.add(a.ssim_grid)
                fit_feat.add(a.features)
        count += 1
        if report:
            report(count, n)
    if count < MIN_CALIBRATION_FRAMES:
        raise BadDataError(
            f"calibration got {count} frame(s) from the source, fewer than the {MIN_CALIBRATION_FRAMES} it needs"
        )
    assert size is not None

    stats: LocationStats | None = None
    if per_location:
        s_mean, s_std = fit_ssim.mean_std((0, 1))
        f_mean, f_std = fit_feat.mean_std((1, 2))
        provisional = LocationStats(size, s_mean, s_std, f_mean, f_std, np.array([[0.0, 1.0], [0.0, 1.0]]),
                                    np.asarray(weights, np.float64), fit_feat.n)  # fmt: skip
        terms = [scorer._terms(a, provisional) for a in held]
        term_norm = np.array(
            [_unit_scale(np.stack([t[0] for t in terms])), _unit_scale(np.stack([t[1] for t in terms]))]
        )
        stats = LocationStats(size, s_mean, s_std, f_mean, f_std, term_norm, np.asarray(weights, np.float64),
                              fit_feat.n, scorer.model_sha256, combine, reference)  # fmt: skip
        held_raw = np.array([scorer.raw_map(a, stats)[0] for a in held])  # out of sample
        norm_mean = float(held_raw.mean())
        # Unit-scale maps: the max of a window mean varies by a fraction of a unit between normal frames.
        norm_std = float(max(held_raw.std(ddof=1) if len(held_raw) > 1 else 0.0, MIN_NORM_STD))
        fit_normalised = np.array([], np.float64)
    else:
        fit = np.asarray(fit_scores, np.float64)
        held_raw = np.array(held_scores)
        norm_mean = float(fit.mean())
        norm_std = float(max(fit.std(ddof=1), 0.02 * abs(norm_mean), 1e-6))
        fit_normalised = (fit - norm_mean) / norm_std
    held_norm = (held_raw - norm_mean) / norm_std
    threshold = float(max(DEVICE_THRESHOLD_FLOOR, THRESHOLD_MARGIN * float(held_norm.max())))
    calibration = {"threshold": threshold, "norm_mean": norm_mean, "norm_std": norm_std}
    flagged = int((held_norm > threshold).sum() + (fit_normalised > threshold).sum())
    summary = {
        "frames": count,
        "frames_requested": n,
        "short": count < n,
        "frames_fit": count - len(held_scores),
        "frames_held_out": len(held_scores),
        "per_location": per_location,
        "frame_size": [size[1], size[0]],
        **calibration,
        "held_out_max_score": float(held_norm.max()),
        "calibration_frames_above_threshold": flagged,
    }
    if stats is not None:
        summary["grid"] = list(stats.grid)
        summary["feature_channels"] = int(stats.feat_mean.shape[0])
    return calibration, stats, summary


def calibrate(
    model: str | os.PathLike,
    frames: Iterable[np.ndarray],
    *,
    n: int,
    per_location: bool = True,
    progress: Any = None,
    precision: str = "fp32",
    device: str = "cpu",
    threads: int | None = None,
    allow_fallback: bool = False,
) -> dict:
    """Fit the bundle's calibration on ``n`` normal frames ((H, W, 3) uint8 BGR) and write it into the bundle.

    numpy only. See :func:`fit_calibration` for the rule. Fewer than ``n`` frames (a short video) is accepted
    when there are at least :data:`MIN_CALIBRATION_FRAMES` (the summary's ``short`` is then true); fewer is a
    BadDataError (exit 3). With ``per_location`` all frames must have one size (BadDataError otherwise).

    Writing: ``anomaly_stats.npz`` then ``manifest.json`` (calibration block, the statistics file listed with
    SHA-256 and size), each to a temp file, fsynced and renamed, the manifest last. If the manifest cannot be
    replaced, the previous statistics file is put back, so an interrupted calibration leaves the previous
    model as it was. (A power cut between the two renames would leave a bundle whose statistics fail their
    SHA-256 check: refused with a clear error, never used silently.) Without ``per_location`` a previous
    statistics file is unlisted and removed. Returns a summary dict.
    """
    bundle = load_bundle(model)
    if bundle.task != "anomaly":
        raise ModelRejectedError(f"{bundle.root}: a {bundle.task} bundle, not an anomaly model")
    scorer = AnomalyScorer(bundle, precision=precision, device=device, threads=threads,
                           allow_fallback=allow_fallback)  # fmt: skip
    t0 = time.perf_counter()
    calibration, stats, summary = fit_calibration(scorer, frames, n=n, per_location=per_location, progress=progress)
    _write_calibration(bundle, calibration, stats)
    load_bundle(bundle.root)  # the rewritten bundle verifies (every SHA-256) before we report success
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    summary["model"] = str(bundle.root)
    return summary


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
