"""`edgeae run`: the live loop on files, outputs finalised on every exit, CLI guards."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from edge_runtime import errors
from edge_runtime.cli import cli
from edge_runtime.commands import RunOptions, gui_available, parse_host_port, run_pipeline


@pytest.fixture
def video(tmp_path):
    path = tmp_path / "in.mkv"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), 10, (64, 48))
    for i in range(12):
        f = np.full((48, 64, 3), 40, np.uint8)
        cv2.rectangle(f, (i * 4, 10), (i * 4 + 10, 20), (255, 255, 255), -1)
        w.write(f)
    w.release()
    return path


def _count(path):
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    return n


def test_run_processes_every_file_frame_and_reports_stages(make_bundle, video, tmp_path):
    rec = tmp_path / "rec.avi"
    stats = run_pipeline(RunOptions(model=str(make_bundle(("denoise",))), source=str(video), record=str(rec)))
    assert stats["frames_processed"] == 12 and stats["frames_dropped"] == 0
    for stage in ("capture", "inference", "output"):
        assert stats["stages"][stage]["n"] == 12 or (stage == "capture" and stats["stages"][stage]["n"] == 13)
        assert {"p50_ms", "p95_ms", "p99_ms"} <= set(stats["stages"][stage])
    assert _count(rec) == 12 and stats["fps"] > 0


def test_ctrl_c_flushes_the_recording_and_exits_130(make_bundle, video, tmp_path, monkeypatch):
    from edge_runtime.denoise import DenoiseTask

    calls = {"n": 0}
    real = DenoiseTask.process

    def process(self, frame):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return real(self, frame)

    monkeypatch.setattr(DenoiseTask, "process", process)
    rec = tmp_path / "rec.avi"
    stats_path = tmp_path / "stats.json"
    res = CliRunner().invoke(cli, ["run", str(make_bundle(("denoise",))), "--source", str(video), "--record",
                                   str(rec), "--stats", str(stats_path)])  # fmt: skip
    assert res.exit_code == errors.INTERRUPTED
    assert _count(rec) == 5  # the five frames before Ctrl-C are in a finalised, readable file
    assert json.loads(stats_path.read_text())["frames_processed"] == 5
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".rec")]


def test_show_without_gui_is_a_usage_error(make_bundle, video):
    if gui_available():
        pytest.skip("this OpenCV has a GUI backend")  # headless wheels (CI) never do
    res = CliRunner().invoke(cli, ["run", str(make_bundle(("denoise",))), "--source", str(video), "--show"])
    assert res.exit_code == errors.USAGE and "no GUI support" in res.stderr


def test_serve_on_all_interfaces_without_token_refuses_to_start(make_bundle, video):
    res = CliRunner().invoke(cli, ["run", str(make_bundle(("denoise",))), "--source", str(video),
                                   "--serve", "0.0.0.0:0"], env={"EDGEAE_TOKEN": ""})  # fmt: skip
    assert res.exit_code == errors.USAGE
    auto, error = res.stderr.splitlines()  # the model loads first: --device auto's choice, then the error
    assert auto.startswith("edgeae: device auto -> cpu fp32") and "access token" in error


def test_source_that_never_opens_is_exit_5(make_bundle):
    res = CliRunner().invoke(cli, ["run", str(make_bundle(("denoise",))), "--source", "rtsp://127.0.0.1:9/none",
                                   "--open-timeout", "0.3", "--read-timeout", "0.3", "--reconnects", "1"])  # fmt: skip
    assert res.exit_code == errors.SOURCE_LOST, res.output


def test_parse_host_port():
    assert parse_host_port("8080") == ("127.0.0.1", 8080)
    assert parse_host_port("0.0.0.0:90") == ("0.0.0.0", 90)
    with pytest.raises(errors.UsageError):
        parse_host_port("host:http")


def test_live_view_shows_the_alarm_and_the_scorers_box(make_bundle, tmp_path, monkeypatch):
    """The overlay of `run` is drawn with the hysteresis alarm and the scorer's bbox (it used to get neither)."""
    from edge_runtime import anomaly

    clip = tmp_path / "c.mkv"
    w = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"FFV1"), 10, (64, 48))
    for i in range(10):
        f = np.full((48, 64, 3), 20, np.uint8)
        if 3 <= i < 8:  # a bright block: the tiny anomaly graph's map is the frame's mean brightness
            cv2.rectangle(f, (8, 8), (56, 40), (255, 255, 255), -1)
        w.write(f)
    w.release()
    calls = []
    real = anomaly.overlay

    def spy(frame, fmap, threshold, **kw):
        calls.append(kw)
        return real(frame, fmap, threshold, **kw)

    monkeypatch.setattr(anomaly, "overlay", spy)
    ev = tmp_path / "ev.jsonl"
    bundle = make_bundle(("anomaly",), metadata={"edgeae.anomaly.threshold": "100"})
    rec = tmp_path / "r.avi"
    stats = run_pipeline(RunOptions(model=str(bundle), source=str(clip), events=str(ev), record=str(rec)))
    frames = [json.loads(x) for x in ev.read_text().splitlines() if '"type":"frame"' in x]
    assert stats["frames_processed"] == 10 and len(calls) == 10
    assert [c["alarm"] for c in calls] == [f["alarm"] for f in frames] and any(f["alarm"] for f in frames)
    assert [c["bbox"] for c in calls] == [tuple(f["bbox"]) if f["bbox"] else None for f in frames]


def test_a_run_reads_and_hashes_each_graph_it_uses_once(make_bundle, video, monkeypatch):
    """The bundle is loaded once and each graph hashed once, as its bytes are read for onnxruntime (it used to be
    loaded and hashed three times per run: pipeline, scorer, open_graph)."""
    from edge_runtime import model

    loads, hashed = [], []
    real_load, real_hash, real_read = model.load_bundle, model._hash_file, model.read_model_bytes
    monkeypatch.setattr(model, "load_bundle", lambda *a, **k: loads.append(a[0]) or real_load(*a, **k))
    monkeypatch.setattr(model, "_hash_file", lambda p, st, sha: hashed.append(p.name) or real_hash(p, st, sha))

    def read(path, sha, **kw):
        if sha is not None:
            hashed.append(Path(path).name)
        return real_read(path, sha, **kw)

    monkeypatch.setattr(model, "read_model_bytes", read)
    import edge_runtime.commands as commands

    monkeypatch.setattr(commands, "load_bundle", model.load_bundle, raising=False)
    bundle = make_bundle(("anomaly",), precisions=("fp32", "fp16"))
    run_pipeline(RunOptions(model=str(bundle), source=str(video)))
    assert len(loads) == 1
    assert sorted(hashed) == ["anomaly.fp32.onnx"]  # the fp16 file is never read, the fp32 one once


def test_run_clips_an_alarm_with_its_pre_roll(make_bundle, tmp_path):
    clip = tmp_path / "c.mkv"
    w = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"FFV1"), 10, (64, 48))
    for i in range(60):
        f = np.full((48, 64, 3), 20, np.uint8)
        if 30 <= i < 40:
            cv2.rectangle(f, (8, 8), (56, 40), (255, 255, 255), -1)
        w.write(f)
    w.release()
    ev, clips = tmp_path / "ev.jsonl", tmp_path / "clips"
    bundle = make_bundle(("anomaly",), metadata={"edgeae.anomaly.threshold": "100"})
    res = CliRunner().invoke(cli, ["run", str(bundle), "--source", str(clip), "--events", str(ev), "--clips",
                                   str(clips), "--pre-roll", "2", "--post-roll", "1"])  # fmt: skip
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in ev.read_text().splitlines()]
    (start,) = [e for e in lines if e["type"] == "alarm" and e["event"] == "start"]
    (made,) = [e for e in lines if e["type"] == "clip"]
    assert lines[-1]["type"] == "end" and Path(made["clip"]).is_file() and Path(made["snapshot"]).is_file()
    assert made["first_time"] <= start["time"] - 2.0 + 1e-6  # the pre-roll reaches 2 s back
    cap = cv2.VideoCapture(made["clip"])
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == made["frames"] >= 20
    cap.release()
