"""Batched inference across cameras (edge_runtime/batching.py): a batch gives each camera exactly what its own call
would, frames of other sizes are not batched, a camera that stops sending never holds the others up for longer than
the wait, a NaN frame is refused for its camera only, and ``batch = "auto"`` keeps what measures faster."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from mjpeg_server import MjpegServer

from edge_runtime import batching
from edge_runtime.batching import Batcher
from edge_runtime.cameras import load_config, run_cameras
from edge_runtime.errors import UsageError
from edge_runtime.session import NonFiniteOutput

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "anomaly"


class FakeGraph:
    """A graph stand-in: ``out`` = the feed + 1 as float32, ``score`` its mean; one call at a time (one core) costing
    ``cost`` s a call plus ``per_frame`` s a frame (``penalty`` times that in a batch); a frame whose first pixel is
    255 makes the call raise NonFiniteOutput."""

    device = "cpu"
    info = SimpleNamespace(path="fake")

    def __init__(self, cost: float = 0.0, per_frame: float = 0.0, penalty: float = 1.0):
        self.cost, self.per_frame, self.penalty = cost, per_frame, penalty
        self.lock = threading.Lock()
        self.batches: list[int] = []

    def prepare_frame(self, frame):
        return np.ascontiguousarray(frame), (0, 0)

    @staticmethod
    def finish_frame(outputs, size, pad):
        return {k: v[0] for k, v in outputs.items()}

    def run(self, feeds):
        x = feeds["frame"]
        with self.lock:
            time.sleep(self.cost + self.per_frame * len(x) * (self.penalty if len(x) > 1 else 1.0))
            self.batches.append(len(x))
        if (x[:, 0, 0, 0] == 255).any():
            raise NonFiniteOutput("fake: output holds NaN", "out")
        return {"out": x.astype(np.float32) + 1, "score": x.reshape(len(x), -1).mean(1)}

    def run_frame(self, frame):
        feed, pad = self.prepare_frame(frame)
        return self.finish_frame(self.run({"frame": feed[None]}), frame.shape[:2], pad)


def _frames(n: int, shape=(48, 64, 3), seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 250, shape, dtype=np.uint8) for _ in range(n)]


def _together(batcher: Batcher, frames: list[np.ndarray]) -> list:
    """Each frame from its own thread (a camera), all at once; the results (or exceptions) in order."""
    out: list = [None] * len(frames)

    def call(i: int) -> None:
        try:
            out[i] = batcher.graph_proxy.run_frame(frames[i])
        except Exception as exc:  # noqa: BLE001 - the test looks at it
            out[i] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(frames))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return out


def _batcher(graph, cameras: int, mode: str = "on", **kw) -> Batcher:
    b = Batcher(graph, mode, lanes=kw.pop("lanes", 1), **kw)
    for _ in range(cameras):
        b.join()
    b.start()
    return b


def test_a_batch_of_the_shipped_model_gives_each_camera_its_own_call_s_outputs():
    """models/anomaly takes N > 1 (frame [N,H,W,3]); one call of three cameras' frames == three calls of one."""
    from edge_runtime.anomaly import AnomalyScorer

    graph = AnomalyScorer(SHIPPED).graph
    frames = _frames(3, (50, 70, 3))  # padded to 64x80 and cropped back
    b = _batcher(graph, 3, wait_s=30.0)
    try:
        batched = _together(b, frames)
    finally:
        b.close()
    assert b.calls == {3: 1}  # really one call
    for frame, got in zip(frames, batched, strict=True):
        want = graph.run_frame(frame)
        assert sorted(got) == sorted(want) and got.pad == want.pad and got.padded == want.padded
        for name in want:
            assert got[name].shape == want[name].shape
            np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5)
    assert len({float(r["score"]) for r in batched}) == 3  # the frames differ, so a swapped slice would show


def test_frames_of_another_size_are_not_batched():
    graph = FakeGraph()
    frames = _frames(2, (48, 64, 3)) + _frames(1, (32, 64, 3), seed=1)
    b = _batcher(graph, 3, wait_s=0.3)
    try:
        got = _together(b, frames)
    finally:
        b.close()
    assert sorted(graph.batches) == [1, 2] and b.calls == {1: 1, 2: 1}
    for frame, out in zip(frames, got, strict=True):
        np.testing.assert_array_equal(out["out"], frame.astype(np.float32) + 1)


def test_only_other_sizes_means_one_call_per_frame():
    graph = FakeGraph()
    frames = [_frames(1, (16 * (i + 1), 64, 3), seed=i)[0] for i in range(3)]
    b = _batcher(graph, 3, wait_s=0.2)
    try:
        got = _together(b, frames)
    finally:
        b.close()
    assert graph.batches == [1, 1, 1]
    assert [o["out"].shape[:2] for o in got] == [(16, 64), (32, 64), (48, 64)]


def test_a_camera_that_stops_sending_holds_the_others_up_at_most_the_wait():
    graph = FakeGraph()
    b = _batcher(graph, 3, wait_s=0.1)  # three cameras; the third never sends (lost, reconnecting)
    try:
        t0 = time.perf_counter()
        for k in range(5):
            got = _together(b, _frames(2, seed=k))
            assert all(isinstance(g, dict) for g in got)
        stalled = time.perf_counter() - t0
        assert stalled < 5 * (0.1 + 0.5)  # each call waited for the third camera at most wait_s
        assert set(graph.batches) == {2}  # and the two that send are still batched together
        b.wait_s = 5.0
        b.leave()  # the third camera's loop ended: nobody waits for it any more
        t0 = time.perf_counter()
        for k in range(5):
            _together(b, _frames(2, seed=k))
        assert time.perf_counter() - t0 < 2.0  # 5 calls, none waiting 5 s
    finally:
        b.close()


def test_a_nan_frame_is_refused_for_its_camera_only():
    graph = FakeGraph()
    good, bad = _frames(2)
    bad[0, 0, 0] = 255
    b = _batcher(graph, 2, wait_s=30.0)
    try:
        ok, refused = _together(b, [good, bad])
    finally:
        b.close()
    np.testing.assert_array_equal(ok["out"], good.astype(np.float32) + 1)
    assert isinstance(refused, NonFiniteOutput)
    assert b.reruns == 1 and graph.batches == [2, 1, 1]


def _probe(graph: FakeGraph) -> tuple[Batcher, list[str]]:
    lines: list[str] = []
    b = Batcher(graph, "auto", lanes=1, wait_s=0.05, probe_frames=8, report=lines.append)
    for _ in range(4):
        b.join()
    b.start()
    done = threading.Event()

    def camera(seed: int) -> None:
        frames = _frames(3, seed=seed)
        k = 0
        while not done.is_set():
            b.graph_proxy.run_frame(frames[k % 3])
            k += 1

    threads = [threading.Thread(target=camera, args=(i,), daemon=True) for i in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while b.choice is None and time.monotonic() < deadline:
        time.sleep(0.05)
    done.set()
    for t in threads:
        t.join(timeout=10)
    b.close()
    return b, lines


def test_auto_batches_when_one_call_of_four_costs_what_one_frame_costs():
    b, lines = _probe(FakeGraph(cost=0.01))
    assert b.choice is not None and b.choice["mode"] == "on" and b.mode == "on"
    assert b.choice["batched_fps"] > 2 * b.choice["single_fps"]  # ~4x here: four frames for the price of one
    assert len(lines) == 1 and lines[0].startswith("edgeae: batch auto for fake") and lines[0].endswith("batched")


def test_auto_keeps_one_call_per_frame_when_batches_cost_more():
    b, lines = _probe(FakeGraph(per_frame=0.005, penalty=4.0))
    assert b.choice is not None and b.choice["mode"] == "off" and b.mode == "off"
    assert b.choice["single_fps"] > 1.5 * b.choice["batched_fps"]
    assert len(lines) == 1 and lines[0].endswith("one call per frame")


def test_auto_with_one_camera_a_lane_measures_nothing():
    lines: list[str] = []
    b = Batcher(FakeGraph(), "auto", lanes=2, report=lines.append)
    b.join()
    b.join()
    b.start()
    assert b.mode == "off" and b.batch_size() == 1 and not b._workers
    assert lines == ["edgeae: batch auto for fake (2 cameras, 2 lanes): nothing to batch (as many lanes as cameras): "
                     "one call per frame"]  # fmt: skip
    b.close()


# ------------------------------------------------------------------------------------------------------------
# Through `edgeae run --config`


def _videos(folder: Path, n: int, frames: int = 12) -> list[str]:
    paths = []
    for i in range(n):
        path = folder / f"cam{i}.avi"
        w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 15, (64, 48))
        for f in _frames(frames, seed=10 + i):
            w.write(f)
        w.release()
        paths.append(str(path))
    return paths


def _config(path: Path, model: Path, sources: list[str], batch: str, **top) -> Path:
    lines = [f"batch = {batch}", *(f"{k} = {json.dumps(v)}" for k, v in top.items()), "[defaults]",
             f"model = {json.dumps(str(model))}", "read_timeout = 1.0", "open_timeout = 2.0",
             "reconnects = 1"]  # fmt: skip
    for i, src in enumerate(sources):
        lines += ["[[camera]]", f'name = "cam{i}"', f"source = {json.dumps(src)}"]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_batched_run_writes_the_events_of_one_call_per_frame(make_bundle, tmp_path, monkeypatch):
    monkeypatch.setattr(batching, "default_lanes", lambda graph: 1)  # one lane: four cameras, batches of four
    monkeypatch.setattr(batching, "MAX_WAIT_S", 0.5)  # wait for every camera, so batches surely form
    bundle = make_bundle(("anomaly",))
    videos = _videos(tmp_path, 4)
    runs = {}
    for batch in ("true", "false"):
        ev = tmp_path / f"ev-{batch}.jsonl"
        summary = run_cameras(load_config(_config(tmp_path / f"{batch}.toml", bundle, videos, batch, events=str(ev))))
        assert summary["exit_code"] == 0, summary
        lines = [json.loads(x) for x in ev.read_text().splitlines()]
        runs[batch] = {(e["camera"], e["frame"]): e for e in lines if e["type"] == "frame"}
        runs[batch + "-summary"] = summary["batching"]
    assert len(runs["true"]) == len(runs["false"]) == 4 * 12 and runs["true"].keys() == runs["false"].keys()
    for key, want in runs["false"].items():
        got = runs["true"][key]
        assert got["raw"] == pytest.approx(want["raw"], rel=1e-4, abs=1e-6)
        assert (got["score"], got["alarm"], got["bbox"]) == (want["score"], want["alarm"], want["bbox"])
    (on,) = runs["true-summary"].values()
    assert on["mode"] == "on" and max(int(k) for k in on["calls"]) >= 2
    assert sum(int(k) * v for k, v in on["calls"].items()) == 4 * 12
    assert runs["false-summary"] == {}  # batch = false: no batcher at all


def test_a_camera_lost_mid_run_never_stops_the_batched_others(make_bundle, tmp_path, monkeypatch):
    monkeypatch.setattr(batching, "default_lanes", lambda graph: 1)
    bundle = make_bundle(("anomaly",))

    def frame(shade):
        return lambda k: np.full((48, 64, 3), (shade + 3 * k) % 250, np.uint8)

    servers = [MjpegServer(frame(40)), MjpegServer(frame(90)), MjpegServer(frame(150), per_connection=[8])]
    try:
        cfg = _config(tmp_path / "c.toml", bundle, [s.url for s in servers], "true")
        text = cfg.read_text().replace('name = "cam0"', 'name = "cam0"\nmax_frames = 40')
        cfg.write_text(text.replace('name = "cam1"', 'name = "cam1"\nmax_frames = 40'))
        summary = run_cameras(load_config(cfg))
    finally:
        for s in servers:
            s.stop()
    assert summary["exit_code"] == 0 and summary["cameras_lost"] == ["cam2"], summary
    assert [summary["cameras"][c]["frames_processed"] for c in ("cam0", "cam1")] == [40, 40]
    assert 0 < summary["cameras"]["cam2"]["frames_processed"] <= 8  # live: latest frame wins, some may be dropped
    (stats,) = summary["batching"].values()
    assert max(int(k) for k in stats["calls"]) >= 2  # batched while the three were alive


@pytest.mark.parametrize("value, mode", [('"auto"', "auto"), ("true", "on"), ("false", "off")])
def test_the_batch_key(tmp_path, value, mode):
    cfg = _config(tmp_path / "c.toml", tmp_path / "m", ["0"], value)
    assert load_config(cfg).batch == mode


def test_a_bad_batch_value_is_one_line_naming_the_key(tmp_path):
    cfg = _config(tmp_path / "c.toml", tmp_path / "m", ["0"], '"sometimes"')
    with pytest.raises(UsageError, match=r"c\.toml: batch must be \"auto\", true or false, got 'sometimes'"):
        load_config(cfg)
    cfg.write_text(cfg.read_text().replace('batch = "sometimes"\n', ""))
    assert load_config(cfg).batch == "auto"  # the default


def test_a_denoise_batch_gives_each_camera_its_own_call_s_image(make_bundle):
    from edge_runtime.denoise import Denoiser

    graph = Denoiser(make_bundle(("denoise",))).graph
    frames = _frames(3, (40, 56, 3))  # padded to the bundle's multiple and cropped back
    b = _batcher(graph, 3, wait_s=30.0)
    try:
        batched = _together(b, frames)
    finally:
        b.close()
    assert b.calls == {3: 1}
    for frame, got in zip(frames, batched, strict=True):
        want = graph.run_frame(frame)
        assert got["denoised"].shape == frame.shape
        np.testing.assert_array_equal(got["denoised"], want["denoised"])


def test_two_lanes_and_four_cameras_each_get_their_own_frames_back():
    graph = FakeGraph(per_frame=0.001)
    b = _batcher(graph, 4, lanes=2, wait_s=0.01)
    wrong: list[int] = []

    def camera(seed: int) -> None:
        for frame in _frames(30, (16, 16, 3), seed=seed):
            out = b.graph_proxy.run_frame(frame)
            if not np.array_equal(out["out"], frame.astype(np.float32) + 1):
                wrong.append(seed)

    threads = [threading.Thread(target=camera, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    b.close()
    assert not wrong and sum(graph.batches) == 4 * 30 and max(graph.batches) == 2  # two frames a call at most
