"""The inspection anomaly model through the product: train -> export (FP32 + INT8 gate) -> score -> calibrate.

A few training steps on tiny textures: nothing here measures detection quality (benchmarks/inspect_bench.py
does, on real defects); it checks that the bundle carries the model's contract and every device path runs it.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402
from train_images import texture  # noqa: E402

from edge_runtime.cli import cli  # noqa: E402
from edge_runtime.model import load_bundle, open_graph  # noqa: E402
from export.bundle import ExportOptions, export_run  # noqa: E402

FAST = ExportOptions(calib_frames=4, calib_size=64, val_images=3, val_size=64, debug_frames=2, timing_size=(64, 64),
                     timing_runs=1, timing_rounds=1)  # fmt: skip


@pytest.fixture(scope="module")
def inspect_bundle(tmp_path_factory) -> tuple[Path, Path]:
    from training.train import TrainConfig, train

    root = tmp_path_factory.mktemp("inspect")
    rng = np.random.default_rng(0)
    good = root / "good"
    good.mkdir()
    for i in range(24):
        assert cv2.imwrite(str(good / f"g{i:02d}.png"), texture(rng, 80, 1))
    run = root / "run"
    train(TrainConfig(task="anomaly", data=str(good), out=str(run), steps=12, batch=4, crop=64, width=8, channels=1,
                      val_every=6, device="cpu", threads=1), progress=False)  # fmt: skip
    bundle = export_run(run, root / "bundle", int8=True, progress=False, options=FAST, threads=1)
    return Path(bundle), run


def _mixed_folder(root: Path) -> Path:
    """Images of three sizes, one colour (the gray model converts it), one unreadable file."""
    rng = np.random.default_rng(5)
    folder = root / "mixed"
    folder.mkdir()
    for i, (h, w) in enumerate([(80, 80), (96, 144), (200, 120), (64, 64)]):
        assert cv2.imwrite(str(folder / f"m{i}.png"), texture(rng, max(h, w), 1)[:h, :w])
    assert cv2.imwrite(str(folder / "colour.png"), texture(rng, 90, 3))
    (folder / "broken.png").write_bytes(b"not a png")
    return folder


def test_bundle_records_the_architecture_and_matches_pytorch(inspect_bundle):
    from training.checkpoint import load_run
    from training.inspect_model import InspectFrameGraph

    bundle_dir, run = inspect_bundle
    bundle = load_bundle(bundle_dir)
    assert json.loads(bundle.contract["model_config"])["arch"] == "inspect"
    cal = bundle.calibration or {}
    graph = open_graph(bundle_dir, "anomaly")
    meta_threshold = float(graph.info.metadata["edgeae.anomaly.threshold"])
    assert meta_threshold >= 3.0 and cal.get("threshold", meta_threshold) == pytest.approx(meta_threshold)
    model, _ = load_run(run)
    frames = np.stack([texture(np.random.default_rng(k), 96, 1)[:, :80] for k in range(2)])
    with torch.no_grad():
        ref = InspectFrameGraph(model)(torch.from_numpy(frames))
    got = graph.run({"frame": frames})
    for name, r in zip(("anomaly_map", "score", "features"), ref, strict=True):
        assert got[name].shape == tuple(r.shape)
        assert np.abs(got[name] - r.numpy()).max() <= 1e-4, name


def test_score_a_folder_of_mixed_sizes_with_events(inspect_bundle, tmp_path):
    bundle_dir, _ = inspect_bundle
    folder = _mixed_folder(tmp_path)
    events = tmp_path / "ev.jsonl"
    res = CliRunner().invoke(cli, ["score", str(bundle_dir), str(folder), "--events", str(events),
                                   "--device", "cpu", "--precision", "fp32"])  # fmt: skip
    # the unreadable file is named and ends the command with exit 3 (bad input), after every other image
    assert res.exit_code == 3 and "1 input(s) could not be read (broken.png)" in res.output, res.output
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    frames = [ln for ln in lines if ln["type"] == "frame"]
    assert sorted(f["name"] for f in frames) == ["colour.png", "m0.png", "m1.png", "m2.png", "m3.png"]
    assert lines[-1]["type"] == "end" and lines[-1]["frames"] == 5
    errors = [ln for ln in lines if ln["type"] == "error"]
    assert [(e["name"], "frame" in e) for e in errors] == [("broken.png", False)] and "skipped" in errors[0]["reason"]
    threshold = lines[0]["threshold"]
    for f in frames:
        assert f["threshold"] == threshold and f["above_threshold"] == (f["score"] > threshold)


def test_calibrate_an_inspection_bundle_on_mixed_sizes(inspect_bundle, tmp_path):
    bundle_dir, _ = inspect_bundle
    folder = tmp_path / "normals"
    folder.mkdir()
    rng = np.random.default_rng(9)
    for i in range(12):
        side = (64, 80, 96)[i % 3]
        assert cv2.imwrite(str(folder / f"n{i:02d}.png"), texture(rng, side, 1))
    out = tmp_path / "recal"
    res = CliRunner().invoke(cli, ["calibrate", str(bundle_dir), "--source", str(folder), "--out", str(out),
                                   "--frames", "12", "--device", "cpu", "--precision", "fp32"])  # fmt: skip
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output.strip().splitlines()[-1])
    assert summary["per_location"] is False and summary["frames"] == 12
    assert load_bundle(out).calibration["threshold"] == pytest.approx(summary["threshold"])
    assert not (out / "anomaly_stats.npz").exists()


def test_int8_is_written_only_within_the_gate(inspect_bundle):
    bundle_dir, _ = inspect_bundle
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    rows = [r for r in manifest["metrics"]["rows"] if r["precision"] == "int8"]
    assert len(rows) == 1
    row = rows[0]
    written = "anomaly.int8.onnx" in manifest["files"]
    assert written == row["written"] == (row["status"] == "pass")
    if written:
        assert row["delta"] <= row["budget"] == 0.01  # the image-AUROC drop measured on held-out images
        assert manifest["files"]["anomaly.int8.onnx"]["gate"] == "pass"


def test_gate_tiles_validation_images_smaller_than_its_tile():
    """64-px validation images (the gate's tile is 128): tiles of the image's size, not a crash."""
    from edge_runtime.errors import BadDataError
    from export.gate import AnomalyEval

    rng = np.random.default_rng(2)
    ev = AnomalyEval([texture(rng, 64, 1) for _ in range(3)], {"model": {"multiple": 16}}, threads=1)
    assert {f.shape[:2] for f in ev.frames} == {(64, 64)} and set(ev.labels) == {0, 1}
    with pytest.raises(BadDataError, match="no validation image"):
        AnomalyEval([texture(rng, 8, 1)], {"model": {"multiple": 16}}, threads=1)


def test_run_on_a_video_scores_every_frame(inspect_bundle, tmp_path):
    """`edgeae run` on a video: the inspection bundle goes through the stream path (smoothing, alarms)."""
    bundle_dir, _ = inspect_bundle
    rng = np.random.default_rng(4)
    clip = tmp_path / "line.mkv"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"FFV1"), 10, (96, 80))
    for _ in range(8):
        writer.write(cv2.cvtColor(texture(rng, 96, 1)[:80], cv2.COLOR_GRAY2BGR))
    writer.release()
    events = tmp_path / "ev.jsonl"
    res = CliRunner().invoke(cli, ["run", str(bundle_dir), "--source", str(clip), "--events", str(events),
                                   "--device", "cpu", "--precision", "fp32"])  # fmt: skip
    assert res.exit_code == 0, res.output
    frames = [json.loads(line) for line in events.read_text().splitlines() if '"type":"frame"' in line]
    assert [f["frame"] for f in frames] == list(range(8))
    assert all(np.isfinite(f["score"]) and isinstance(f["alarm"], bool) for f in frames)


def test_training_on_a_folder_without_images_is_one_line(tmp_path):
    from edge_runtime.errors import BadDataError
    from training.train import TrainConfig, train

    (tmp_path / "empty").mkdir()
    with pytest.raises(BadDataError, match="no images found") as err:
        train(TrainConfig(task="anomaly", data=str(tmp_path / "empty"), out=str(tmp_path / "r"), steps=1),
              progress=False)  # fmt: skip
    assert "\n" not in str(err.value)


def test_window_max_is_the_largest_window_mean_inside_the_frame():
    from edge_runtime.anomaly import window_max

    rng = np.random.default_rng(7)
    amap = rng.random((37, 45)).astype(np.float32)
    k, step = 8, 4
    brute = max(
        float(amap[y : y + k, x : x + k].mean())
        for y in sorted({*range(0, 37 - k + 1, step), 37 - k})
        for x in sorted({*range(0, 45 - k + 1, step), 45 - k})
    )
    assert window_max(amap, k) == pytest.approx(brute, rel=1e-6)
    hot = np.zeros((37, 45), np.float32)
    hot[-8:, -8:] = 1.0  # flush with the bottom-right corner, off the stride grid: still found whole
    assert window_max(hot, 8) == pytest.approx(1.0)
    assert window_max(np.full((5, 3), 0.25, np.float32), 16) == pytest.approx(0.25)  # window larger than the map


def test_runtime_score_ignores_the_padding_and_matches_the_graph_without_it(inspect_bundle):
    from edge_runtime.anomaly import AnomalyScorer, window_max

    bundle_dir, _ = inspect_bundle
    scorer = AnomalyScorer(bundle_dir)
    assert scorer.inspect and scorer.score_window == 16
    rng = np.random.default_rng(11)
    even = texture(rng, 96, 1)[:80]  # a multiple of 16: nothing padded
    a = scorer.analyse(even)
    raw, _, _ = scorer.raw_map(a, None)
    assert raw == pytest.approx(a.graph_score, abs=0.02)  # the same definition, up to the map's upsampling
    odd = texture(rng, 90, 1)  # padded to 96 for the graph
    a = scorer.analyse(odd)
    raw, _, _ = scorer.raw_map(a, None)
    assert a.amap.shape == (90, 90) and raw == window_max(a.amap, 16)


def test_anomaly_gate_refuses_moved_normal_scores_even_at_equal_auroc():
    """The AUROC on synthetic defects can hold while every score moves: real, subtle defects then rank worse."""
    from export.gate import AnomalyEval, Budget

    ref = {"image_auroc": 0.9, "normal_scores": [0.0, 1.0, 2.0, 3.0]}  # std 1.118
    same = {"image_auroc": 0.9, "normal_scores": [0.05, 1.05, 1.95, 3.0]}
    moved = {"image_auroc": 0.9, "normal_scores": [0.5, 1.5, 2.5, 3.5]}
    compare = AnomalyEval.compare
    assert compare(None, ref, same, Budget()) == (0.0, True) and same["score_shift_sd"] == pytest.approx(
        0.0335, abs=1e-3
    )
    assert compare(None, ref, moved, Budget()) == (0.0, False) and moved["score_shift_sd"] == pytest.approx(
        0.4472, abs=1e-3
    )
    assert compare(None, ref, moved, Budget(score_shift=0.5))[1] is True
    worse = {"image_auroc": 0.88, "normal_scores": ref["normal_scores"]}
    assert compare(None, ref, worse, Budget()) == (pytest.approx(0.02), False)
