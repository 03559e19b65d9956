"""Several cameras in one process (`edgeae run --config`): shared sessions, one log, one camera lost never stops
the others, stop signals end them all, and a config error names the camera and the key."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from mjpeg_server import MjpegServer

from edge_runtime import errors
from edge_runtime.cameras import load_config, run_cameras
from edge_runtime.cli import cli


def frame_of(shade: int):
    def make(k: int) -> np.ndarray:
        f = np.full((48, 64, 3), shade, np.uint8)
        cv2.putText(f, str(k % 100), (4, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (255, 255, 255), 2)
        return f

    return make


@pytest.fixture
def cams():
    servers = []

    def start(n: int, interval: float = 0.02) -> list[MjpegServer]:
        for i in range(n):
            servers.append(MjpegServer(frame_of(40 + 60 * i), interval=interval))
        return servers[-n:]

    yield start
    for s in servers:
        s.stop()


def write_config(path: Path, model: Path, urls: list[str], **top) -> Path:
    lines = [f"{k} = {json.dumps(v)}" for k, v in top.items()]
    lines += ["[defaults]", f"model = {json.dumps(str(model))}", "read_timeout = 1.0", "open_timeout = 2.0",
              "reconnects = 1"]  # fmt: skip
    for i, url in enumerate(urls):
        lines += ["[[camera]]", f'name = "cam{i}"', f"source = {json.dumps(url)}", "max_frames = 20"]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_three_cameras_share_one_session_and_one_log(make_bundle, cams, tmp_path):
    bundle = make_bundle(("anomaly",))
    servers = cams(3)
    ev = tmp_path / "ev.jsonl"
    cfg = load_config(write_config(tmp_path / "c.toml", bundle, [s.url for s in servers], events=str(ev)))
    summary = run_cameras(cfg)
    assert summary["exit_code"] == 0, summary
    assert {n: st["frames_processed"] for n, st in summary["cameras"].items()} == {"cam0": 20, "cam1": 20, "cam2": 20}
    lines = [json.loads(x) for x in ev.read_text().splitlines()]
    for cam in ("cam0", "cam1", "cam2"):
        mine = [e for e in lines if e.get("camera") == cam]
        assert mine[0]["type"] == "start" and mine[-1]["type"] == "end"
        assert len([e for e in mine if e["type"] == "frame"]) == 20
    assert all("camera" in e for e in lines)


def test_sessions_are_shared_between_cameras_of_one_model(make_bundle, tmp_path):
    from edge_runtime.cameras import CameraConfig, _Models

    bundle = make_bundle(("anomaly",))
    models = _Models()
    _, a = models.task(CameraConfig(name="a", source="x", model=str(bundle)))
    _, b = models.task(CameraConfig(name="b", source="y", model=str(bundle), threshold=9.0))
    assert a is not b and a.hyst is not b.hyst  # each camera its own alarm state
    assert a.scorer.graph is b.scorer.graph  # one onnxruntime session
    assert b.scorer.threshold == 9.0 and a.scorer.threshold != 9.0


def test_one_camera_lost_never_stops_the_others(make_bundle, cams, tmp_path):
    bundle = make_bundle(("denoise",))
    servers = cams(2)
    urls = [s.url for s in servers] + ["http://127.0.0.1:9/none.mjpg"]  # nothing listens there
    cfg = load_config(write_config(tmp_path / "c.toml", bundle, urls))
    summary = run_cameras(cfg)
    assert summary["exit_code"] == 0 and summary["cameras_lost"] == ["cam2"]
    assert summary["cameras"]["cam0"]["frames_processed"] == 20 and summary["cameras"]["cam1"]["frames_processed"] == 20


def test_every_camera_lost_is_exit_5(make_bundle, tmp_path):
    bundle = make_bundle(("denoise",))
    cfg = write_config(tmp_path / "c.toml", bundle, ["http://127.0.0.1:9/a.mjpg", "http://127.0.0.1:9/b.mjpg"])
    res = CliRunner().invoke(cli, ["run", "--config", str(cfg)])
    assert res.exit_code == errors.SOURCE_LOST and "every camera was lost" in res.stderr


@pytest.mark.parametrize(
    "body, message",
    [
        ('[[camera]]\nname = "a"\nsource = "0"\nmodel = "m"\ncolour = 3\n', "camera a: unknown key 'colour'"),
        (
            '[[camera]]\nname = "a"\nsource = "0"\nmodel = "m"\n[[camera]]\nname = "a"\nsource = "1"\nmodel = "m"\n',
            "camera name 'a' is used twice",
        ),
        ('[[camera]]\nname = "a b"\nsource = "0"\nmodel = "m"\n', "must match"),
        ('[[camera]]\nname = "a"\nmodel = "m"\n', "camera a: key 'source' is missing"),
        ('[mqtt]\nurl = "mqtt://x"\n[[camera]]\nname = "a"\nsource = "0"\nmodel = "m"\n', "'spool' are required"),
        ("title = 'x'\n", "unknown key 'title'"),
        ("[[camera\n", "not valid TOML"),
    ],
)
def test_config_errors_name_the_camera_and_the_key(tmp_path, body, message):
    path = tmp_path / "c.toml"
    path.write_text(body)
    res = CliRunner().invoke(cli, ["run", "--config", str(path)])
    assert res.exit_code == errors.USAGE and message in res.stderr and res.stderr.count("\n") == 1


def test_a_missing_model_or_bad_source_names_the_camera(make_bundle, tmp_path):
    cfg = write_config(tmp_path / "c.toml", tmp_path / "nope", ["0"])
    res = CliRunner().invoke(cli, ["run", "--config", str(cfg)])
    assert res.exit_code == errors.MODEL_REJECTED
    cfg = write_config(tmp_path / "d.toml", make_bundle(("denoise",)), [str(tmp_path / "missing.mp4")])
    res = CliRunner().invoke(cli, ["run", "--config", str(cfg)])
    assert res.exit_code == errors.BAD_DATA and "camera cam0" in res.stderr


def test_cameras_default_to_the_fastest_verified_path_like_edgeae_run(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[[camera]]\nname = "a"\nsource = "0"\nmodel = "m"\n[[camera]]\nname = "b"\nsource = "1"\n'
                    'model = "m"\nprecision = "fp32"\ndevice = "cpu"\n')  # fmt: skip
    a, b = load_config(path).cameras
    assert (a.device, a.precision) == ("auto", "auto")
    assert (b.device, b.precision) == ("cpu", "fp32")


def test_a_json_config_works_too(make_bundle, cams, tmp_path):
    servers = cams(1)
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"camera": [{"name": "j", "source": servers[0].url, "max_frames": 5,
                                            "model": str(make_bundle(("denoise",)))}]}))  # fmt: skip
    assert run_cameras(load_config(path))["cameras"]["j"]["frames_processed"] == 5


def test_sigterm_ends_every_camera_and_finalises_the_log(make_bundle, cams, tmp_path):
    bundle = make_bundle(("anomaly",))
    servers = cams(2)
    ev = tmp_path / "ev.jsonl"
    cfg = write_config(tmp_path / "c.toml", bundle, [s.url for s in servers], events=str(ev))
    cfg.write_text(cfg.read_text().replace("max_frames = 20", "max_frames = 100000"))
    proc = subprocess.Popen([sys.executable, "-m", "edge_runtime.cli", "run", "--config", str(cfg)],
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (not ev.exists() or ev.read_text().count('"type":"frame"') < 10):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == errors.TERMINATED, err
    lines = [json.loads(x) for x in ev.read_text().splitlines()]
    ends = {e["camera"]: e["status"] for e in lines if e["type"] == "end"}
    assert ends == {"cam0": "interrupted", "cam1": "interrupted"}


def test_events_of_every_camera_reach_a_real_broker(make_bundle, cams, tmp_path):
    """`run --config` with [mqtt]: a real Mosquitto on loopback, a subscriber counting per camera."""
    pytest.importorskip("paho.mqtt.client")  # the dev extra installs it; the device base install does not
    from mosquitto import Broker, Subscriber

    broker = Broker(tmp_path / "broker").start()
    sub = Subscriber(broker.url)
    try:
        servers = cams(2)
        cfg = write_config(tmp_path / "c.toml", make_bundle(("anomaly",)), [s.url for s in servers])
        cfg.write_text(cfg.read_text() + f'[mqtt]\nurl = "{broker.url}"\nspool = "{tmp_path / "spool"}"\n')
        summary = run_cameras(load_config(cfg))
        assert summary["exit_code"] == 0
        for cam in ("cam0", "cam1"):
            assert sub.wait_for(lambda cam=cam: len([e for e in sub.events(cam) if e["type"] == "frame"]) >= 20)
            frames = [e["frame"] for e in sub.events(cam) if e["type"] == "frame"]
            assert frames == sorted(frames) and len(set(frames)) == 20  # in order; QoS 1 may repeat, none lost
            assert all(e["camera"] == cam for e in sub.events(cam))
        assert {t for t, p, _ in sub.statuses() if p == "offline"} == {"edgeae/cam0/status", "edgeae/cam1/status"}
    finally:
        sub.close()
        broker.stop()


def test_view_page_status_and_metrics_show_every_camera(make_bundle, cams, tmp_path, capfd):
    import socket
    import threading
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    servers = cams(2)
    cfg_path = write_config(tmp_path / "c.toml", make_bundle(("anomaly",)), [s.url for s in servers],
                            serve=f"127.0.0.1:{port}")  # fmt: skip
    cfg_path.write_text(cfg_path.read_text().replace("max_frames = 20", "max_frames = 100000"))
    stop = threading.Event()
    runner = threading.Thread(target=lambda: run_cameras(load_config(cfg_path), stop=stop), daemon=True)
    runner.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        status = {}
        while time.monotonic() < deadline:
            try:
                status = json.loads(urllib.request.urlopen(base + "/status.json", timeout=2).read())
            except OSError:
                status = {}
            cams_seen = status.get("cameras", status)
            if (
                isinstance(cams_seen, (dict, list))
                and "score" in json.dumps(cams_seen)
                and "cam1" in json.dumps(cams_seen)
            ):
                break
            time.sleep(0.2)
        assert "cam0" in json.dumps(status) and "cam1" in json.dumps(status) and "score" in json.dumps(status)
        metrics = urllib.request.urlopen(base + "/metrics", timeout=2).read().decode()
        for cam in ("cam0", "cam1"):
            line = [x for x in metrics.splitlines() if x.startswith(f'edgeae_frames_processed_total{{camera="{cam}"')]
            assert line and float(line[0].split()[-1]) > 0
        assert 'edgeae_inference_latency_seconds{camera="cam0",quantile="0.5"}' in metrics
        assert "<img" in urllib.request.urlopen(base + "/", timeout=2).read().decode()
    finally:
        stop.set()
        runner.join(timeout=30)
    assert f"view page: http://127.0.0.1:{port}/" in capfd.readouterr().err
