"""`edgeae calibrate`: frames spread over time, a held-out block of time, never in place unless asked, any size."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from edge_runtime import errors
from edge_runtime.anomaly import STATS_NAME, AnomalyScorer, LocationStats
from edge_runtime.calibration import calibrate, fit_calibration, spread
from edge_runtime.cli import cli
from edge_runtime.model import load_bundle

H, W = 96, 128


def scene(size=(H, W), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    tex = cv2.GaussianBlur(rng.normal(0, 1, (*size, 3)).astype(np.float32), (0, 0), 4)
    tex = (tex - tex.min()) / (tex.max() - tex.min())
    return (40 + 160 * tex).astype(np.uint8)


def frames(count, size=(H, W), seed=1, gain=1.0):
    base = scene(size).astype(np.float32)
    rng = np.random.default_rng(seed)
    return [np.clip(np.round(base * gain * rng.uniform(0.98, 1.02) + rng.normal(0, 3, base.shape)), 0, 255)
            .astype(np.uint8) for _ in range(count)]  # fmt: skip


def write_clip(path: Path, images, fps=10) -> Path:
    h, w = images[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), fps, (w, h))
    for im in images:
        writer.write(im)
    writer.release()
    return path


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir())}


@pytest.fixture
def bundle(make_bundle) -> Path:
    return make_bundle(("anomaly",), name="model")


def test_spread_takes_frames_by_time_not_by_count():
    items = [SimpleNamespace(timestamp=i * 0.1, image=None, index=i) for i in range(100)]  # 10 s at 10 fps
    taken = [f.index for f in spread(iter(items), 5, every=2.0)]
    assert taken == [0, 20, 40, 60, 80]
    assert [f.index for f in spread(iter(items), 50, every=1.0, duration=3.0)] == [0, 10, 20, 30]


def test_normalisation_and_threshold_come_from_the_last_block_of_time(bundle):
    """The last 20 % in time are held out: the units scores are measured in come from a stretch of time the
    statistics never saw. Interleaved hold-out (every 5th frame) would fit the late change into the statistics."""
    scorer = AnomalyScorer(bundle)
    bright = frames(1, seed=9, gain=1.25)[0]
    cal, stats, s1 = fit_calibration(scorer, iter(frames(50)), n=50)
    assert scorer.with_calibration(cal, stats).score(bright).above  # never seen: anomalous
    late = frames(40) + frames(10, seed=2, gain=1.25)  # brighter for the last fifth of the span
    cal, stats, _ = fit_calibration(scorer, iter(late), n=50)
    assert not scorer.with_calibration(cal, stats).score(bright).above  # the held-out block set the units
    assert s1["frames_fit"] == 40 and s1["frames_held_out"] == 10
    assert "warning" not in s1["stability"] and len(s1["stability"]["held_out_max_by_quarter"]) == 4


def test_a_scene_still_changing_at_the_end_of_the_span_gets_a_warning(bundle):
    ramp = [f for i in range(10) for f in frames(1, seed=10 + i, gain=1.0 + 0.04 * i)]  # brightening
    _, _, summary = fit_calibration(AnomalyScorer(bundle), iter(frames(40) + ramp), n=50)
    assert "longer span" in summary["stability"]["warning"] and summary["stability"]["held_out_drift"] >= 2


def test_calibrate_out_writes_a_new_bundle_and_leaves_the_model(bundle, tmp_path):
    before = snapshot(bundle)
    clip = write_clip(tmp_path / "normal.mkv", frames(30))
    res = CliRunner().invoke(cli, ["calibrate", str(bundle), "--source", str(clip), "--out", str(tmp_path / "cam0"),
                                   "--frames", "20"])  # fmt: skip
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert snapshot(bundle) == before
    new = load_bundle(tmp_path / "cam0")
    parent_sha = hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest()
    assert new.manifest["parent"]["manifest_sha256"] == parent_sha
    assert STATS_NAME in new.manifest["files"] and AnomalyScorer(new).stats is not None
    assert summary["frame_size"] == [W, H] and summary["grid"][0] > summary["grid"][1]  # both width, height
    assert summary["frames"] == 20 and summary["every_s"] == pytest.approx(3.0 / 20)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("case", ["exists", "is-input", "neither"])
def test_calibrate_out_is_checked_before_anything_runs(bundle, tmp_path, case):
    clip = write_clip(tmp_path / "normal.mkv", frames(12))
    (tmp_path / "exists").mkdir()
    args = {"exists": ["--out", str(tmp_path / "exists")], "is-input": ["--out", str(bundle)], "neither": []}[case]
    before = snapshot(bundle)
    res = CliRunner().invoke(cli, ["calibrate", str(bundle), "--source", str(clip), *args])
    assert res.exit_code == errors.USAGE and res.stderr.count("\n") == 1
    assert snapshot(bundle) == before


def test_recalibrating_at_another_size_just_works(bundle, tmp_path):
    first = calibrate(bundle, iter(frames(20)), n=20, out=tmp_path / "big")
    assert first["frame_size"] == [W, H]
    small = calibrate(tmp_path / "big", iter(frames(20, size=(48, 64))), n=20, out=tmp_path / "small")
    assert small["frame_size"] == [64, 48]
    assert AnomalyScorer(tmp_path / "small").stats.frame_size == (48, 64)
    # and in place, on the bundle whose statistics are of the other size
    calibrate(tmp_path / "big", iter(frames(20, size=(48, 64))), n=20)
    assert AnomalyScorer(tmp_path / "big").stats.frame_size == (48, 64)


def test_a_missing_statistics_file_names_the_fix_and_calibrate_recovers(bundle, tmp_path):
    calibrate(bundle, iter(frames(20)), n=20)
    (bundle / STATS_NAME).unlink()
    with pytest.raises(errors.ModelRejectedError, match="recalibrate: edgeae calibrate"):
        AnomalyScorer(bundle)
    calibrate(bundle, iter(frames(20)), n=20, out=tmp_path / "fixed")
    assert AnomalyScorer(tmp_path / "fixed").stats is not None


def test_a_source_shorter_than_the_span_calibrates_on_what_there_is(bundle, tmp_path):
    clip = write_clip(tmp_path / "short.mkv", frames(14))
    res = CliRunner().invoke(cli, ["calibrate", str(bundle), "--source", str(clip), "--out", str(tmp_path / "o"),
                                   "--frames", "100", "--every", "0"])  # fmt: skip
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["short"] and summary["frames"] == 14 and summary["stability"]["span_s"] == pytest.approx(1.3)
    clip = write_clip(tmp_path / "tiny.mkv", frames(6))
    res = CliRunner().invoke(cli, ["calibrate", str(bundle), "--source", str(clip), "--out", str(tmp_path / "p")])
    assert res.exit_code == errors.BAD_DATA and "fewer than the 10" in res.stderr
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("kind", ["black", "frozen"])
def test_a_black_or_frozen_camera_is_not_a_scene(bundle, tmp_path, kind):
    images = [np.zeros((H, W, 3), np.uint8)] * 20 if kind == "black" else [frames(1)[0]] * 20
    before = snapshot(bundle)
    with pytest.raises(errors.BadDataError, match="blank" if kind == "black" else "frozen"):
        calibrate(bundle, iter(images), n=20)
    assert snapshot(bundle) == before


def test_score_help_says_what_it_prints():
    res = CliRunner().invoke(cli, ["score", "--help"])
    assert "one line per frame" not in res.output.split("--events")[0] and "summary line" in res.output


def _ramp_clip(path: Path, n: int, fps: float, gains, squares=()) -> Path:
    base = scene().astype(np.float32)
    rng = np.random.default_rng(5)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), fps, (W, H))
    for i in range(n):
        f = np.clip(np.round(base * gains[i] + rng.normal(0, 3, base.shape)), 0, 255).astype(np.uint8)
        if i in squares:
            f[30:60, 40:80] = 255
        writer.write(f)
    writer.release()
    return path


def test_adapt_follows_a_lighting_ramp_and_still_catches_an_object(bundle, tmp_path):
    """+30 % light over 10 minutes (a frame every 2 s): alarms all along without --adapt, none with it, and an
    object pasted late is still caught."""
    from edge_runtime.commands import RunOptions, run_pipeline

    calibrate(bundle, iter(frames(30)), n=30)
    n = 300
    gains = np.linspace(1.0, 1.3, n)
    objects = set(range(280, 290))
    clip = _ramp_clip(tmp_path / "ramp.mkv", n, 0.5, gains, squares=objects)

    def alarms(adapt: bool) -> tuple[list[int], dict]:
        ev = tmp_path / f"ev-{adapt}.jsonl"
        stats = run_pipeline(RunOptions(model=str(bundle), source=str(clip), events=str(ev), adapt=adapt))
        lines = [json.loads(x) for x in ev.read_text().splitlines() if '"type":"frame"' in x]
        return [e["frame"] for e in lines if e["alarm"]], stats

    fixed, _ = alarms(False)
    adapted, stats = alarms(True)
    around = set(range(280, 293))  # the object's frames and the hysteresis' 3 frames to end its alarm
    assert len([f for f in fixed if f not in around]) > 50  # the ramp alone alarms without adaptation
    assert [f for f in adapted if f not in around] == []  # with it: no false alarm over the ramp
    assert len([f for f in adapted if f in objects]) >= 8  # the object is still caught
    assert stats["adapt_updates"] > 250 and stats["adapt_skipped"] >= 8 and stats["drift_max_std"] > 0


def test_adapt_caps_drift_on_a_scene_that_keeps_changing(bundle, tmp_path):
    """Lights going out over 80 minutes: followed up to the cap, then capped and counted; once the frames alarm,
    adaptation stops (counted too) instead of learning the dark as normal."""
    from edge_runtime.commands import RunOptions, run_pipeline

    calibrate(bundle, iter(frames(30)), n=30)
    clip = _ramp_clip(tmp_path / "dark.mkv", 1000, 0.2, np.linspace(1.0, 0.05, 1000))
    stats = run_pipeline(RunOptions(model=str(bundle), source=str(clip), adapt=True))
    assert stats["drift_capped"] > 0 and stats["adapt_skipped"] > 0 and stats["alarms"] >= 1
    assert stats["drift_max_std"] <= 20.0 + 3.0 + 1e-3 and stats["drift_local_max_std"] <= 3.0 + 1e-3


def test_adapt_needs_a_calibrated_anomaly_model(bundle, make_bundle, tmp_path):
    clip = write_clip(tmp_path / "c.mkv", frames(3))
    for model in (bundle, make_bundle(("denoise",), name="den")):
        res = CliRunner().invoke(cli, ["run", str(model), "--source", str(clip), "--adapt"])
        assert res.exit_code == errors.USAGE and "--adapt" in res.stderr


# ------------------------------------------------------------------------------------ busy scenes (issue 16)


def test_spread_with_previous_pairs_each_frame_with_the_source_frame_before_it():
    items = [SimpleNamespace(timestamp=i * 0.1, image=None, index=i) for i in range(100)]
    pairs = list(spread(iter(items), 4, every=2.0, previous=True))
    assert [p.frame.index for p in pairs] == [0, 20, 40, 60]
    assert [None if p.previous is None else p.previous.index for p in pairs] == [None, 19, 39, 59]


def _patch(rng: np.random.Generator, size: int = 24) -> np.ndarray:
    """A textured patch unlike the scene (every pixel its own grey level): its cells change when it moves."""
    return rng.integers(0, 256, (size, size, 1), dtype=np.uint8).repeat(3, axis=2)


def _walk(base: list[np.ndarray], patch: np.ndarray, start_x: int, step: int) -> list[np.ndarray]:
    """``patch`` pasted into each frame at y 36, moving ``step`` px to the right per frame."""
    out = []
    for k, f in enumerate(base):
        x = (start_x + k * step) % (W - patch.shape[1])
        g = f.copy()
        g[36 : 36 + patch.shape[0], x : x + patch.shape[1]] = patch
        out.append(g)
    return out


def _stream(images, fps=10.0):
    return [SimpleNamespace(index=i, timestamp=i / fps, image=im) for i, im in enumerate(images)]


def test_on_a_busy_scene_what_moves_is_normal_and_what_stays_or_appears_is_not(bundle, tmp_path):
    """The motion term (issue 16): calibrated on a stream in which a textured patch keeps walking across, the
    walker itself is not an alarm in later frames, but the same kind of patch standing still is, from the first
    frame it appears on. The same statistics without the previous frame (a folder's images are scored alone) call
    the walker an alarm: the term is what makes it normal. Unpaired calibration frames keep the Gaussians."""
    rng = np.random.default_rng(5)
    walker = _patch(rng)
    calib = _walk(frames(60, seed=3), walker, 0, 3)
    paired = calibrate(bundle, spread(iter(_stream(calib)), 60, previous=True), n=60, out=tmp_path / "paired")
    unpaired = calibrate(bundle, iter(calib), n=60, out=tmp_path / "unpaired")
    assert paired["per_location"] and unpaired["per_location"]
    test_walk = _walk(frames(12, seed=4), walker, 10, 3)
    still = frames(12, seed=6)
    box = _patch(rng, 20)
    for g in still[4:]:
        g[60:80, 90:110] = box  # appears in frame 4 and stays

    def scores(root, images, previous=True):
        scorer = AnomalyScorer(root)
        prev, out = None, []
        for k, im in enumerate(images):
            a = scorer.analyse(im)
            a.timestamp = k / 10.0
            out.append(scorer.finish(a, prev if previous else None).score)
            prev = a
        return np.array(out), scorer.threshold, scorer.stats

    walk_scores, thr, stats = scores(tmp_path / "paired", test_walk)
    assert stats.motion and stats.z_clip > 0
    assert (walk_scores[1:] < thr).all(), walk_scores  # the first frame has no previous frame to compare with
    alone, _, _ = scores(tmp_path / "paired", test_walk, previous=False)
    assert (alone > thr).all(), alone
    still_scores, thr, _ = scores(tmp_path / "paired", still)
    assert (still_scores[:4] < thr).all() and (still_scores[4:] > thr).all(), (still_scores, thr)
    _, _, gaussian = scores(tmp_path / "unpaired", still)
    assert not gaussian.motion and gaussian.z_clip == 0


def test_statistics_files_of_version_1_still_score_and_version_2_round_trips(bundle, tmp_path):
    cal, stats, _ = fit_calibration(AnomalyScorer(bundle), spread(iter(_stream(frames(20))), 20, previous=True), n=20)
    assert stats is not None and stats.z_clip > 0
    again = LocationStats.from_bytes(stats.to_bytes(), "s.npz")
    assert again.z_clip == stats.z_clip and again.motion == stats.motion
    old = LocationStats(stats.frame_size, stats.ssim_mean, stats.ssim_std, stats.feat_mean, stats.feat_std,
                        stats.term_norm, stats.weights, stats.frames)  # fmt: skip
    data = old.to_bytes()
    with np.load(io.BytesIO(data)) as z:
        assert int(z["version"][0]) == 1 and "z_clip" not in z.files  # old readers read what they know
    back = LocationStats.from_bytes(data, "s.npz")
    assert back.z_clip == 0 and not back.motion
    bad = dict(np.load(io.BytesIO(stats.to_bytes())))
    bad["version"] = np.array([3], np.int64)
    buf = io.BytesIO()
    np.savez(buf, **bad)
    with pytest.raises(errors.ModelRejectedError, match=r"statistics version \[3\] \(this edgeae knows 1 and 2\)"):
        LocationStats.from_bytes(buf.getvalue(), "s.npz")
