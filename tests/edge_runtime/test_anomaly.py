"""Anomaly scoring, calibration, hysteresis and scoring a source, on the tiny anomaly graph of conftest.py.

The tiny graph's ``anomaly_map`` is the mean over channels of the frame (0-255), its ``score`` the map's
maximum and its ``features`` the frame itself (N, C, H, W), so every expected value here can be worked out by
hand, and per-location statistics fitted on a textured scene flag a pasted bright square.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_runtime.anomaly import STATS_NAME, AnomalyScorer, Hysteresis, LocationStats
from edge_runtime.calibration import THRESHOLD_FLOOR, calibrate
from edge_runtime.commands import score_source
from edge_runtime.errors import BadDataError, ModelRejectedError, OutputError
from edge_runtime.model import load_bundle
from edge_runtime.overlay import overlay
from edge_runtime.registration import FrameAligner
from edge_runtime.session import NonFiniteOutput

H, W = 128, 128
SQUARE = (48, 40, 32, 32)  # x, y, w, h of the pasted bright square


def scene(seed: int = 0, size: tuple[int, int] = (H, W)) -> np.ndarray:
    """A smooth random texture, (H, W, 3) uint8 BGR, values about 40-200: something to register on."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(0, 1, (*size, 3)).astype(np.float32)
    tex = cv2.GaussianBlur(noise, (0, 0), 4)
    tex = (tex - tex.min()) / (tex.max() - tex.min())
    return (40 + 160 * tex).astype(np.uint8)


def normal_frames(count: int, seed: int = 1, size: tuple[int, int] = (H, W)) -> list[np.ndarray]:
    """The scene through a noisy camera: sensor noise sigma 3 and brightness within 3 %."""
    base = scene(0, size).astype(np.float32)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        f = base * rng.uniform(0.97, 1.03) + rng.normal(0, 3, base.shape)
        out.append(np.clip(np.round(f), 0, 255).astype(np.uint8))
    return out


def with_square(frame: np.ndarray) -> np.ndarray:
    x, y, w, h = SQUARE
    out = frame.copy()
    out[y : y + h, x : x + w] = 255
    return out


def iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    ix = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    iy = max(0, min(ay + ah, by + bh) - max(ay, by))
    inter = ix * iy
    return inter / (aw * ah + bw * bh - inter)


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir())}


@pytest.fixture
def anomaly_bundle(make_bundle):
    """Factory: an anomaly bundle of the tiny graph (keywords go to conftest.write_bundle)."""

    def factory(**kw) -> Path:
        return make_bundle(("anomaly",), **kw)

    return factory


@pytest.fixture
def calibrated(anomaly_bundle) -> tuple[Path, dict]:
    root = anomaly_bundle(name="calibrated")
    summary = calibrate(root, iter(normal_frames(25)), n=25)
    return root, summary


# ------------------------------------------------------------------------------------------------ scorer


def test_scorer_outputs_use_metadata_normalisation(anomaly_bundle):
    root = anomaly_bundle(metadata={"edgeae.anomaly.norm_mean": "10", "edgeae.anomaly.norm_std": "2"})
    scorer = AnomalyScorer(root)
    assert scorer.stats is None
    res = scorer.score(np.full((40, 56, 3), 30, np.uint8))
    assert res.raw == pytest.approx(30.0)
    assert res.score == pytest.approx(10.0)  # (30 - 10) / 2
    assert res.map.shape == (40, 56) and res.map.dtype == np.float32
    assert np.allclose(res.map, 10.0)
    assert res.threshold == 3.0 and res.above
    assert res.bbox == (0, 0, 56, 40)
    gray = scorer.score(np.full((40, 56), 12, np.uint8))  # gray frames are accepted
    assert gray.score == pytest.approx(1.0) and not gray.above and gray.bbox is None


def test_manifest_calibration_overrides_metadata(anomaly_bundle):
    root = anomaly_bundle(calibration={"threshold": 12.0, "norm_mean": 6.0, "norm_std": 2.0})
    scorer = AnomalyScorer(root)
    assert (scorer.threshold, scorer.norm_mean, scorer.norm_std) == (12.0, 6.0, 2.0)
    res = scorer.score(np.full((32, 32, 3), 30, np.uint8))
    assert res.score == pytest.approx(12.0)  # (30 - 6) / 2, not (30 - 0) / 1 from the metadata
    assert not res.above  # 12 is not above 12; the metadata's 3.0 would have flagged it


def test_nan_output_is_flagged_not_scored(anomaly_bundle):
    root = anomaly_bundle(gain=float("nan"))
    with pytest.raises(NonFiniteOutput) as err:
        AnomalyScorer(root).score(np.full((32, 32, 3), 30, np.uint8))
    assert isinstance(err.value, BadDataError)


def test_non_anomaly_bundle_is_refused(make_bundle):
    with pytest.raises(ModelRejectedError, match="not an anomaly model"):
        AnomalyScorer(make_bundle(("denoise",)))


# ------------------------------------------------------------------------------------------------ calibration


def test_calibrate_writes_stats_and_manifest(calibrated):
    root, summary = calibrated
    manifest = json.loads((root / "manifest.json").read_text())
    assert set(manifest["calibration"]) == {"threshold", "norm_mean", "norm_std"}
    assert manifest["calibration"]["threshold"] == pytest.approx(summary["threshold"])
    assert summary["threshold"] >= THRESHOLD_FLOOR
    assert summary["frames"] == 25 and summary["frames_held_out"] == 5 and summary["frames_fit"] == 20
    assert summary["calibration_frames_above_threshold"] == 0
    entry = manifest["files"][STATS_NAME]
    data = (root / STATS_NAME).read_bytes()
    assert entry["bytes"] == len(data)
    assert not [p.name for p in root.iterdir() if p.name.startswith(".")]  # no temp or backup files
    bundle = load_bundle(root)  # verifies every SHA-256, the new file's included
    assert bundle.calibration["threshold"] == pytest.approx(summary["threshold"])
    with np.load(root / STATS_NAME, allow_pickle=False) as npz:
        assert npz["feat_mean"].shape == (3, H, W)  # the tiny graph's features are the frame itself
        assert tuple(npz["frame_size"]) == (H, W)
    # The bundle's verification covers the statistics: one changed byte is refused.
    tampered = bytearray(data)
    tampered[len(tampered) // 2] ^= 0xFF
    (root / STATS_NAME).write_bytes(bytes(tampered))
    with pytest.raises(ModelRejectedError, match="SHA-256"):
        load_bundle(root)


def test_calibrated_model_flags_a_bright_square_and_boxes_it(calibrated):
    root, summary = calibrated
    scorer = AnomalyScorer(root)
    assert scorer.stats is not None and scorer.aligner is not None
    for frame in normal_frames(6, seed=99):
        res = scorer.score(frame)
        assert not res.above, res.score
        assert res.score < summary["threshold"]
    res = scorer.score(with_square(normal_frames(1, seed=7)[0]))
    assert res.above
    assert res.score > 10 * summary["threshold"]
    assert res.bbox is not None and iou(res.bbox, SQUARE) > 0.5, res.bbox
    x, y, w, h = SQUARE
    inside = res.map[y : y + h, x : x + w].mean()
    assert inside > summary["threshold"] > np.median(res.map)


def test_generic_score_misses_what_per_location_catches(anomaly_bundle):
    # The tiny graph's map is the intensity: a dark blob on a bright scene lowers it, so only the per-location
    # statistics (two-sided in the features) see it. Guards against the calibrated path silently not being used.
    root = anomaly_bundle()
    frames = normal_frames(20)
    calibrate(root, iter(frames), n=20)
    dark = normal_frames(1, seed=5)[0].copy()
    dark[40:72, 48:80] = 0
    calibrated = AnomalyScorer(root)
    generic = calibrated.with_calibration({}, None)
    assert calibrated.score(dark).above
    assert generic.score(dark).raw <= generic.score(frames[0]).raw + 10


def test_calibrate_interrupted_leaves_previous_bundle(calibrated, monkeypatch):
    root, _ = calibrated
    before = snapshot(root)
    real_replace = os.replace

    def failing_replace(src, dst, *a, **kw):
        if str(dst).endswith("manifest.json"):
            raise OSError(28, "No space left on device")
        return real_replace(src, dst, *a, **kw)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OutputError, match="No space") as err:  # one line naming the bundle, exit 3
        calibrate(root, iter(normal_frames(15, seed=3)), n=15)
    assert err.value.exit_code == 3 and str(root) in str(err.value)
    monkeypatch.setattr(os, "replace", real_replace)
    assert snapshot(root) == before  # same files, same bytes, no temp or backup left behind
    load_bundle(root)
    assert AnomalyScorer(root).stats is not None


def test_first_calibration_interrupted_leaves_no_stats(anomaly_bundle, monkeypatch):
    root = anomaly_bundle()
    before = snapshot(root)
    real_replace = os.replace

    def interrupted_replace(src, dst, *a, **kw):
        if str(dst).endswith("manifest.json"):
            raise KeyboardInterrupt  # Ctrl-C between the statistics and the manifest
        return real_replace(src, dst, *a, **kw)

    monkeypatch.setattr(os, "replace", interrupted_replace)
    with pytest.raises(KeyboardInterrupt):
        calibrate(root, iter(normal_frames(12)), n=12)
    monkeypatch.setattr(os, "replace", real_replace)
    assert snapshot(root) == before
    assert AnomalyScorer(root).stats is None


def test_global_only_calibration_removes_old_stats(calibrated):
    root, _ = calibrated
    summary = calibrate(root, iter(normal_frames(10, seed=4)), n=10, per_location=False)
    assert summary["per_location"] is False
    manifest = json.loads((root / "manifest.json").read_text())
    assert STATS_NAME not in manifest["files"] and not (root / STATS_NAME).exists()
    scorer = AnomalyScorer(root)
    assert scorer.stats is None and scorer.threshold == pytest.approx(summary["threshold"])
    # Mixed sizes are fine without per-location statistics.
    calibrate(root, iter(normal_frames(6) + normal_frames(6, size=(64, 96))), n=12, per_location=False)


def test_per_location_stats_refuse_another_frame_size(calibrated):
    root, _ = calibrated
    scorer = AnomalyScorer(root)
    with pytest.raises(BadDataError, match=r"frame is 128x96 .* fitted on 128x128"):
        scorer.score(normal_frames(1, size=(96, 128))[0])


def test_calibrate_refuses_mixed_sizes_and_too_few_frames(anomaly_bundle):
    root = anomaly_bundle()
    before = snapshot(root)
    with pytest.raises(BadDataError, match="one size"):
        calibrate(root, iter(normal_frames(5) + normal_frames(10, size=(64, 64))), n=15)
    with pytest.raises(BadDataError, match="got 6 frame"):
        calibrate(root, iter(normal_frames(6)), n=20)
    assert snapshot(root) == before
    summary = calibrate(root, iter(normal_frames(12)), n=20)  # short, but above the minimum of 10
    assert summary["short"] and summary["frames"] == 12


def test_inconsistent_stats_file_is_rejected(anomaly_bundle, rewrite_manifest, refresh_manifest):
    root = anomaly_bundle()
    calibrate(root, iter(normal_frames(10)), n=10)
    stats = AnomalyScorer(root).stats
    bad = LocationStats(
        stats.frame_size, stats.ssim_mean, stats.ssim_std, stats.feat_mean[:, :-1], stats.feat_std,
        stats.term_norm, stats.weights, stats.frames, stats.model_sha256, stats.combine, stats.reference,
    )  # fmt: skip
    (root / STATS_NAME).write_bytes(bad.to_bytes())
    refresh_manifest(root)
    with pytest.raises(ModelRejectedError, match="inconsistent shapes"):
        AnomalyScorer(root)
    (root / STATS_NAME).write_bytes(b"PK\x03\x04 not really a zip")
    refresh_manifest(root)
    with pytest.raises(ModelRejectedError, match="not a readable statistics file"):
        AnomalyScorer(root)


# ------------------------------------------------------------------------------------------------ registration


def test_aligner_recovers_a_subpixel_shift():
    ref = scene(3, (160, 160))
    aligner = FrameAligner(FrameAligner.reference_of(ref), (160, 160))
    m = np.float32([[1, 0, 2.5], [0, 1, -1.5]])  # content moves right 2.5, up 1.5
    moved = cv2.warpAffine(ref, m, (160, 160), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    dx, dy = aligner.estimate(moved)
    assert dx == pytest.approx(2.5, abs=0.3) and dy == pytest.approx(-1.5, abs=0.3)
    back, _ = aligner.align(moved)
    inner = (slice(10, -10), slice(10, -10))
    err_before = np.abs(moved[inner].astype(int) - ref[inner]).mean()
    err_after = np.abs(back[inner].astype(int) - ref[inner]).mean()
    assert err_after < err_before / 3
    assert aligner.estimate(np.full((160, 160, 3), 90, np.uint8)) == (0.0, 0.0)  # nothing to register on


# ------------------------------------------------------------------------------------------------ hysteresis


def test_hysteresis_single_spike_never_alarms():
    h = Hysteresis(alpha=0.5, on_frames=2, off_frames=3)
    results = [h.update(s, 4.0) for s in [0, 0, 1000, 0, 0, 0, 0]]
    assert not any(alarm for _, alarm, _ in results)
    assert all(event is None for _, _, event in results)


def test_hysteresis_sustained_run_raises_then_clears_after_off_frames():
    h = Hysteresis(alpha=0.5, on_frames=2, off_frames=3)
    scores = [0, 10, 10, 10, 10, 0, 0, 0, 0, 0]
    results = [h.update(s, 4.0) for s in scores]
    smoothed = [round(s, 3) for s, _, _ in results]
    # 10 is clipped to 2 x threshold = 8 before smoothing: 0, 4, 6, 7, 7.5, then halving.
    assert smoothed == [0, 4.0, 6.0, 7.0, 7.5, 3.75, 1.875, 0.938, 0.469, 0.234]
    events = {i: e for i, (_, _, e) in enumerate(results) if e}
    assert events == {3: "start", 7: "end"}  # 2 smoothed above (4.0 is not above 4), then 3 below
    assert [a for _, a, _ in results] == [False, False, False, True, True, True, True, False, False, False]


# ------------------------------------------------------------------------------------------------ overlay


def test_overlay_blends_heat_and_draws_the_box():
    frame = np.zeros((64, 80, 3), np.uint8)
    fmap = np.zeros((64, 80), np.float32)
    fmap[20:40, 30:50] = 10.0
    out = overlay(frame, fmap, 4.0)
    assert out.shape == (64, 80, 3) and out.dtype == np.uint8
    assert out[30, 40, 2] > 60 and out[30, 40, 0] == 0  # hot (red end of JET) where the map is high
    assert out[60, 5].sum() == 0  # untouched where it is low (and away from the text)
    assert tuple(out[20, 30]) == (0, 0, 255)  # the box's top-left corner, red
    gray = overlay(np.zeros((64, 80), np.uint8), fmap, 4.0)
    assert gray.shape == (64, 80, 3)


# ------------------------------------------------------------------------------------------------ score_source


def write_folder(folder: Path, frames: list[np.ndarray], corrupt: set[int] = frozenset()) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames):
        path = folder / f"frame_{i:03d}.png"
        if i in corrupt:
            path.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
        else:
            cv2.imwrite(str(path), frame)


def test_score_source_skips_a_corrupt_image_and_writes_the_rest(calibrated, tmp_path):
    root, _ = calibrated
    frames = normal_frames(5, seed=11)
    frames[3] = with_square(frames[3])
    write_folder(tmp_path / "in", frames, corrupt={2})
    out, events = tmp_path / "overlays", tmp_path / "events.jsonl"
    with pytest.raises(BadDataError, match=r"1 input\(s\) could not be read \(frame_002.png\)") as err:
        score_source(root, str(tmp_path / "in"), str(out), events_path=str(events))
    stats = err.value.stats
    assert stats["frames"] == 4 and stats["frames_bad"] == 1 and stats["anomalous_frames"] == 1
    assert set(stats["stages"]) >= {"capture", "inference", "postprocess", "output"}
    written = sorted(p.name for p in out.iterdir())
    assert written == ["frame_000.png", "frame_001.png", "frame_003.png", "frame_004.png"]
    assert cv2.imread(str(out / "frame_003.png")).shape == (H, W, 3)
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    frame_lines = [e for e in lines if e["type"] == "frame"]
    assert [e["frame"] for e in frame_lines] == [0, 1, 3, 4]
    for e in frame_lines:
        assert {"frame", "time", "score", "smoothed", "above_threshold", "alarm", "bbox", "threshold"} <= set(e)
    assert [e["above_threshold"] for e in frame_lines] == [False, False, True, False]
    assert frame_lines[2]["bbox"] is not None and iou(tuple(frame_lines[2]["bbox"]), SQUARE) > 0.5
    # A folder of images: each image's alarm is its own (no smoothing across unrelated images).
    assert [e["alarm"] for e in frame_lines] == [False, False, True, False]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_score_source_alarm_events_and_video_output(calibrated, tmp_path):
    root, _ = calibrated
    frames = normal_frames(3, seed=12) + [with_square(f) for f in normal_frames(4, seed=13)] + normal_frames(4)
    clip = tmp_path / "in.mkv"  # a stream: alarms are smoothed with hysteresis
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"FFV1"), 10, (W, H))
    for f in frames:
        writer.write(f)
    writer.release()
    video, events = tmp_path / "out.avi", tmp_path / "ev.jsonl"
    stats = score_source(root, str(clip), str(video), events_path=str(events))
    assert stats["frames"] == 11 and stats["alarms"] == 1 and stats["anomalous_frames"] == 4
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    assert [e["type"] for e in lines][0] == "start" and lines[-1]["type"] == "end" and lines[-1]["frames"] == 11
    assert all(e["v"] == 1 for e in lines)
    assert len([e for e in lines if e["type"] == "frame"]) == 11
    alarm_events = [(e["event"], e["frame"]) for e in lines if e["type"] == "alarm"]
    assert alarm_events == [("start", 4), ("end", 9)]
    cap = cv2.VideoCapture(str(video))
    assert cap.isOpened() and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 11
    cap.release()


def test_a_folder_of_images_is_scored_image_by_image(calibrated, tmp_path):
    """No smoothing across unrelated images: each image's alarm is its own score against the threshold."""
    root, _ = calibrated
    frames = normal_frames(3, seed=12) + [with_square(normal_frames(1, seed=13)[0])] + normal_frames(3)
    write_folder(tmp_path / "in", frames)
    events = tmp_path / "ev.jsonl"
    stats = score_source(root, str(tmp_path / "in"), events_path=str(events))
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    frame_lines = [e for e in lines if e["type"] == "frame"]
    assert [e["alarm"] for e in frame_lines] == [False, False, False, True, False, False, False]
    assert all(e["smoothed"] == e["score"] for e in frame_lines)
    assert stats["alarms"] == 1 and not [e for e in lines if e["type"] == "alarm"]


def test_score_source_flags_nan_frames(anomaly_bundle, tmp_path):
    root = anomaly_bundle(gain=float("nan"))
    write_folder(tmp_path / "in", normal_frames(2))
    events = tmp_path / "ev.jsonl"
    with pytest.raises(BadDataError, match=r"2 frame\(s\) skipped: .*NaN or Inf") as err:
        score_source(root, str(tmp_path / "in"), events_path=str(events))
    assert err.value.stats["frames_error"] == 2 and err.value.stats["frames"] == 0
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    errors_ = [e for e in lines if e["type"] == "error"]
    assert len(errors_) == 2 and all("NaN" in e["reason"] for e in errors_)
    assert not [e for e in lines if e["type"] == "frame"]
