"""Event clips (edge_runtime/clips.py): pre-roll from a bounded ring, post-roll, one clip per alarm episode, a
snapshot with the overlay, a folder that never exceeds its cap, and the recorder routed by the real frame loop.

Frames are tiny and made here; each carries its index as 12 black/white 8x8 blocks in its top row (they survive
JPEG and MJPG), read back from the clip to see which frames it holds.
"""

from __future__ import annotations

import json
import os
import re
import signal
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_runtime import clips as clips_mod
from edge_runtime.clips import ClipRecorder, ClipWarning
from edge_runtime.errors import OutputError, UsageError

H, W, BITS = 64, 96, 12


def make_frame(i: int, *, noise: np.random.Generator | None = None, shape: tuple[int, int] = (H, W)) -> np.ndarray:
    h, w = shape
    img = np.full((h, w, 3), 100, np.uint8) if noise is None else noise.integers(0, 256, (h, w, 3), np.uint8)
    img[:8] = 100
    for b in range(BITS):
        img[:8, 8 * b : 8 * b + 8] = 255 if (i >> b) & 1 else 0
    return img


def marker(img: np.ndarray) -> int:
    return sum(1 << b for b in range(BITS) if img[:8, 8 * b : 8 * b + 8].mean() > 128)


def read_clip(path: str | Path) -> list[int]:
    cap = cv2.VideoCapture(str(path))
    found = []
    while True:
        ok, img = cap.read()
        if not ok:
            break
        found.append(marker(img))
    cap.release()
    return found


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


class Feeder:
    """Drives a recorder as the loop does: a frame's event lines first, then its view frame."""

    def __init__(self, rec: ClipRecorder, fps: float = 10.0, **frame_kw):
        self.rec, self.fps, self.frame_kw = rec, fps, frame_kw
        self.ev, self.view = rec.events(), rec.frames()

    def feed(self, i: int, alarm: str | None = None, ts: float | None = None) -> None:
        ts = i / self.fps if ts is None else ts
        self.ev.write({"v": 1, "type": "frame", "frame": i, "time": ts, "score": 0.0})
        if alarm:
            self.ev.write({"v": 1, "type": "alarm", "frame": i, "time": round(ts, 4), "event": alarm})
        self.view.write(make_frame(i, **self.frame_kw), i, "", ts)

    def run(self, frames: range, alarms: dict[int, str]) -> None:
        for i in frames:
            self.feed(i, alarms.get(i))


@pytest.fixture
def lines():
    return []


def clip_lines(lines: list[dict]) -> list[dict]:
    return [x for x in lines if x["type"] == "clip"]


@pytest.mark.parametrize("ext", [".avi", ".mkv"])
def test_clip_reaches_pre_s_before_the_alarm_and_post_s_after_its_end(tmp_path, lines, ext):
    rec = ClipRecorder(tmp_path / "clips", "door", pre_s=1.0, post_s=0.5, ext=ext, emit=lines.append)
    Feeder(rec).run(range(60), {30: "start", 40: "end"})
    rec.close()
    (line,) = clip_lines(lines)
    assert read_clip(line["clip"]) == list(range(20, 46))  # 3.0 - 1.0 s ... 4.0 + 0.5 s, every frame once
    assert line["first_time"] == pytest.approx(2.0) and line["last_time"] == pytest.approx(4.5)
    assert line["frames"] == 26 and line["alarm_frame"] == 30 and line["ended"] == "post-roll"
    assert Path(line["clip"]).suffix == ext
    assert rec.stats()["clips"] == 1 and rec.stats()["clip_frames"] == 26


def test_pre_roll_reaches_back_on_an_irregular_clock(tmp_path, lines):
    rec = ClipRecorder(tmp_path, "cam", pre_s=2.0, post_s=0.0, emit=lines.append)
    rng = np.random.default_rng(3)
    stamps = np.cumsum(rng.uniform(0.03, 0.2, 120))
    f = Feeder(rec)
    for i, ts in enumerate(stamps):
        f.feed(i, {80: "start", 81: "end"}.get(i), ts=float(ts))
    rec.close()
    (line,) = clip_lines(lines)
    frames = read_clip(line["clip"])
    alarm_t = float(stamps[80])
    assert stamps[frames[0]] <= alarm_t - 2.0 < stamps[frames[0] + 1]  # far enough back, and no further
    assert frames == list(range(frames[0], 82)) or frames == list(range(frames[0], 83))


def test_an_alarm_again_within_the_post_roll_extends_the_same_clip(tmp_path, lines):
    rec = ClipRecorder(tmp_path, "cam", pre_s=0.5, post_s=1.0, emit=lines.append)
    Feeder(rec).run(range(80), {10: "start", 15: "end", 22: "start", 30: "end", 50: "start", 52: "end"})
    rec.close()
    first, second = clip_lines(lines)
    assert read_clip(first["clip"]) == list(range(5, 41))  # 15 + 10 frames of post-roll was cut by 22
    assert first["alarm_frame"] == 10 and first["frames"] == 36
    assert read_clip(second["clip"]) == list(range(45, 63)) and second["alarm_frame"] == 50


def test_an_alarm_that_starts_and_ends_on_one_frame_still_ends_its_clip(tmp_path, lines):
    rec = ClipRecorder(tmp_path, "cam", pre_s=0.0, post_s=0.3, emit=lines.append)
    f = Feeder(rec)
    f.run(range(10), {})
    f.ev.write({"v": 1, "type": "alarm", "frame": 10, "time": 1.0, "event": "start"})
    f.feed(10, "end")
    f.run(range(11, 30), {})
    assert rec.stats()["recording"] == 0
    rec.close()
    (line,) = clip_lines(lines)
    assert read_clip(line["clip"]) == list(range(10, 14)) and line["ended"] == "post-roll"
    cap = cv2.VideoCapture(line["clip"])
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(10.0, abs=0.01)  # the source's rate, from its timestamps
    cap.release()


def test_the_pre_roll_is_written_a_few_frames_at_a_time_not_in_one_burst(tmp_path, lines):
    rec = ClipRecorder(tmp_path, "cam", pre_s=3.0, post_s=1.0, emit=lines.append)
    f = Feeder(rec)
    f.run(range(50), {})
    f.feed(50, "start")
    s = rec.stats()
    assert s["backlog_frames"] == 31 - clips_mod.CATCH_UP  # 30 ring frames + the alarm frame, 3 of them written
    assert 0 < s["backlog_bytes"] <= s["ring_bytes"] + 10_000
    backlog = [s["backlog_frames"]]
    for i in range(51, 70):
        f.feed(i, "end" if i == 60 else None)
        backlog.append(rec.stats()["backlog_frames"])
    assert backlog == sorted(backlog, reverse=True) and backlog[-1] == 0  # it only shrinks, and empties
    rec.close()
    (line,) = clip_lines(lines)
    assert read_clip(line["clip"]) == list(range(20, 71)) or read_clip(line["clip"]) == list(range(20, 70))


def test_the_ring_is_bounded_by_bytes_and_by_seconds(tmp_path):
    rng = np.random.default_rng(0)
    rec = ClipRecorder(tmp_path, "cam", pre_s=1000.0, max_ring_bytes=2_000_000)
    f = Feeder(rec, noise=rng, shape=(240, 320))
    peak = 0
    for i in range(120):
        f.feed(i)
        peak = max(peak, rec.stats()["ring_bytes"])
    s = rec.stats()
    assert peak <= 2_000_000 and s["ring_evicted"] > 0 and 5 < s["ring_frames"] < 120
    rec.close()

    timed = ClipRecorder(tmp_path, "cam2", pre_s=1.0)
    f = Feeder(timed, fps=10.0)
    for i in range(100):
        f.feed(i)
        assert timed.stats()["ring_frames"] <= 11  # 1 s at 10 frames/s, plus the frame that reaches back 1 s
    assert timed.stats()["ring_evicted"] == 0 and timed.stats()["recording"] == 0
    assert list((tmp_path / "cam2").iterdir()) == []  # no alarm, nothing written


@pytest.mark.parametrize("ext", [".avi", ".mkv"])
def test_retention_keeps_the_folder_under_its_cap_deleting_the_oldest(tmp_path, lines, ext):
    folder = tmp_path / "clips"
    cap = 4_000_000
    rng = np.random.default_rng(1)
    rec = ClipRecorder(folder, "cam", pre_s=0.4, post_s=0.3, max_bytes=cap, max_clip_bytes=1_500_000, ext=ext,
                       emit=lines.append)  # fmt: skip
    f = Feeder(rec, noise=rng, shape=(120, 160))  # noise: ~60 KB a frame in either format
    alarms = {}
    for k in range(20):
        alarms[10 + 15 * k], alarms[13 + 15 * k] = "start", "end"
    peak = 0
    for i in range(320):
        f.feed(i, alarms.get(i))
        peak = max(peak, folder_bytes(folder))
    rec.close()
    peak = max(peak, folder_bytes(folder))
    made = [x for x in clip_lines(lines) if x["clip"]]
    assert len(made) == 20 and rec.stats()["dropped"] == 0
    assert peak <= cap, peak
    kept = [x for x in made if Path(x["clip"]).exists()]
    assert 2 <= len(kept) < 20 and kept == made[-len(kept) :]  # the newest survive, the oldest went first
    assert all(not Path(x["snapshot"]).exists() for x in made[: -len(kept)])
    assert rec.stats()["deleted"] >= 2 * (20 - len(kept))  # clip and snapshot
    assert all(read_clip(x["clip"]) == list(range(x["alarm_frame"] - 4, x["alarm_frame"] + 7)) for x in kept)


def test_cameras_sharing_a_folder_keep_it_under_the_cap_together(tmp_path):
    folder, cap = tmp_path / "clips", 3_000_000
    rng = np.random.default_rng(4)
    feeders = [Feeder(ClipRecorder(folder, name, pre_s=0.3, post_s=0.3, max_bytes=cap, max_clip_bytes=1_000_000),
                      noise=rng, shape=(120, 160)) for name in ("a", "b", "c")]  # fmt: skip
    peak = 0
    for i in range(160):
        for k, f in enumerate(feeders):  # three long alarms at once, each in several parts, their ends staggered
            f.feed(i, {5 + 4 * k: "start", 100 + 20 * k: "end"}.get(i))
        peak = max(peak, folder_bytes(folder))
    for f in feeders:
        f.rec.close()
    assert max(peak, folder_bytes(folder)) <= cap  # counting only the bytes of each other's open clips: 3.7 MB
    assert all(f.rec.stats()["clips"] >= 2 and f.rec.stats()["dropped"] == 0 for f in feeders)
    assert sum(f.rec.stats()["deleted"] for f in feeders) > 0


@pytest.mark.parametrize("ext", [".avi", ".mkv"])
def test_an_alarm_that_never_ends_is_split_into_parts_within_the_cap(tmp_path, lines, ext):
    folder = tmp_path / "clips"
    rng = np.random.default_rng(2)
    rec = ClipRecorder(folder, "cam", pre_s=0.3, post_s=0.3, max_bytes=3_000_000, max_clip_bytes=1_000_000, ext=ext,
                       emit=lines.append)  # fmt: skip
    f = Feeder(rec, noise=rng, shape=(120, 160))
    peak = 0
    for i in range(150):
        f.feed(i, "start" if i == 5 else None)
        peak = max(peak, folder_bytes(folder))
    rec.close()
    parts = clip_lines(lines)
    assert len(parts) >= 3 and [p["part"] for p in parts] == list(range(1, len(parts) + 1))
    assert {p["ended"] for p in parts[:-1]} == {"size"} and parts[-1]["ended"] == "close"
    assert max(peak, folder_bytes(folder)) <= 3_000_000
    kept = [p for p in parts if Path(p["clip"]).exists()]
    sizes = [Path(p["clip"]).stat().st_size for p in kept]
    assert max(sizes) <= 1_000_000 and min(sizes[:-1]) >= 500_000  # within the cap, not split needlessly small
    frames = [n for p in kept for n in read_clip(p["clip"])]
    assert frames == list(range(frames[0], 150))  # the parts join without a gap
    assert Path(parts[0]["snapshot"]).exists()  # the alarm's snapshot outlives its first part's rotation


def test_snapshot_is_the_alarm_frame_with_its_overlay_and_the_lines_carry_the_paths(tmp_path, lines):
    rec = ClipRecorder(tmp_path / "clips", "gate-1", pre_s=0.5, post_s=0.2, emit=lines.append)
    ev, view = rec.events(), rec.frames()
    for i in range(30):
        img = make_frame(i)
        if 12 <= i <= 14:
            cv2.rectangle(img, (40, 30), (80, 60), (0, 0, 255), -1)  # the overlay a task draws on an alarm
        if i == 12:
            ev.write({"v": 1, "type": "alarm", "frame": 12, "time": 1.2, "event": "start"})
        if i == 14:
            ev.write({"v": 1, "type": "alarm", "frame": 14, "time": 1.4, "event": "end"})
        view.write(img, i, "", i / 10)
        if i == 12:
            assert [x["type"] for x in lines] == ["snapshot"]  # as soon as it exists, before the clip ends
    rec.close()
    snap_line, clip_line = lines
    assert snap_line["snapshot"] == clip_line["snapshot"] and snap_line["frame"] == 12
    snap = cv2.imread(snap_line["snapshot"])
    assert snap is not None and marker(snap) == 12
    assert snap[45, 60].tolist() == pytest.approx([0, 0, 255], abs=12)
    name = r"\d{8}-\d{6}-12"
    assert re.fullmatch(rf".*/clips/gate-1/{name}\.avi", clip_line["clip"])
    assert Path(clip_line["snapshot"]).name == Path(clip_line["clip"]).with_suffix(".jpg").name
    for line in lines:
        assert {"v", "type", "frame", "time", "wall", "camera", "alarm_frame"} <= set(line)
        assert line["camera"] == "gate-1" and line["alarm_frame"] == 12
        json.dumps(line)
    assert rec.stats()["snapshots"] == 1


def test_close_during_an_alarm_finalises_a_readable_clip(tmp_path, lines):
    rec = ClipRecorder(tmp_path, "cam", pre_s=0.5, post_s=5.0, emit=lines.append)
    f = Feeder(rec)
    f.run(range(20), {10: "start"})
    ports = [rec.events(), rec.frames()]
    for port in ports:  # the loop closes every route: the second close is a no-op
        port.close()
    (line,) = clip_lines(lines)
    assert read_clip(line["clip"]) == list(range(5, 20)) and line["ended"] == "close"
    assert [p.name for p in (tmp_path / "cam").iterdir() if p.name.startswith(".")] == []
    f.feed(20, "start")  # after close: ignored
    assert len(clip_lines(lines)) == 1


def test_abort_leaves_nothing_of_the_open_clip(tmp_path, lines):
    rec = ClipRecorder(tmp_path, "cam", pre_s=0.5, post_s=0.2, emit=lines.append)
    f = Feeder(rec)
    f.run(range(20), {3: "start", 5: "end"})  # one finished clip: it stays
    f.run(range(20, 30), {25: "start"})
    before = sorted(p.name for p in (tmp_path / "cam").iterdir())
    assert any(p.startswith(".") for p in before)  # the open clip is staged
    rec.frames().abort()
    after = sorted(p.name for p in (tmp_path / "cam").iterdir())
    (done,) = clip_lines(lines)
    assert after == sorted([Path(done["clip"]).name, Path(done["snapshot"]).name])


def test_an_unusable_folder_at_start_is_exit_3_naming_the_camera(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError) as err:
        ClipRecorder(blocker / "clips", "door")
    assert err.value.exit_code == 3 and "camera door" in str(err.value) and str(blocker) in str(err.value)


@pytest.mark.parametrize("camera", ["", "../up", "a/b", ".hidden", "-x", "x" * 65, "sp ace"])
def test_unsafe_camera_names_are_refused(tmp_path, camera):
    with pytest.raises(UsageError):
        ClipRecorder(tmp_path, camera)
    assert list(tmp_path.iterdir()) == []


def test_a_clip_that_cannot_be_written_is_dropped_and_counted_and_the_camera_goes_on(tmp_path, lines):
    rec = ClipRecorder(tmp_path, "cam", pre_s=0.3, post_s=0.2, emit=lines.append)
    f = Feeder(rec)
    f.run(range(10), {})
    cam = tmp_path / "cam"
    cam.rmdir()
    cam.write_text("not a folder")  # what a vanished or unwritable folder looks like to the writer
    with pytest.warns(ClipWarning, match="camera cam: (snapshot|clip) dropped"):
        f.run(range(10, 20), {12: "start", 14: "end"})
    assert rec.stats()["dropped"] == 2  # the snapshot, then the clip
    assert [x["clip"] for x in clip_lines(lines)] == [None] and clip_lines(lines)[0]["error"]
    assert rec.stats()["ring_frames"] > 0  # the camera's frames still flow
    cam.unlink()
    cam.mkdir()
    f.run(range(20, 40), {25: "start", 27: "end"})  # the folder is back: the next alarm records
    rec.close()
    ok = [x for x in clip_lines(lines) if x["clip"]]
    assert len(ok) == 1 and read_clip(ok[0]["clip"]) == list(range(22, 30))


def test_a_short_read_back_on_finalise_drops_the_clip_and_leaves_no_temp(tmp_path, lines, monkeypatch):
    import edge_runtime.outputs as outputs

    rec = ClipRecorder(tmp_path, "cam", pre_s=0.3, post_s=0.2, emit=lines.append)
    monkeypatch.setattr(outputs, "count_video_frames", lambda path, limit: 0)  # a full disk: frames lost
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Feeder(rec).run(range(20), {5: "start", 6: "end"})
        rec.close()
    assert any(issubclass(w.category, ClipWarning) for w in caught)
    (line,) = clip_lines(lines)
    assert line["clip"] is None and "frames reached the file" in line["error"]
    assert [p for p in (tmp_path / "cam").iterdir() if p.suffix != ".jpg"] == []
    assert rec.stats()["dropped"] == 1 and rec.stats()["clips"] == 0


def test_start_removes_a_killed_runs_staged_clip_and_applies_the_cap(tmp_path):
    cam, other = tmp_path / "cam", tmp_path / "other"
    cam.mkdir()
    other.mkdir()
    (cam / ".20240101-000000-7.mkv.0123456789ab.mkv").write_bytes(b"x" * 1000)
    for k in range(5):
        clip = other / f"20240101-00000{k}-{k}.avi"
        clip.write_bytes(b"y" * 400_000)
        os.utime(clip, ns=(k * 10**9, k * 10**9))
    (other / "notes.txt").write_bytes(b"z" * 100)  # not a clip: counted, never deleted, even the oldest
    staged = ".20230101-000000-1.avi.ab12cd34ef56.avi"  # another camera's clip being written: it may grow
    (other / staged).write_bytes(b"s" * 100)
    for name in ("notes.txt", staged):
        os.utime(other / name, ns=(0, 0))
    rec = ClipRecorder(tmp_path, "cam", max_bytes=1_000_000)  # max_clip_bytes: 250_000
    s = rec.stats()
    # 5 x 400 KB + 100 + the staged clip counted as 250 KB: four clips go, the oldest first
    assert s["stale_removed"] == 1 and s["deleted"] == 4 and s["folder_bytes"] == 400_000 + 100 + 250_000
    assert sorted(p.name for p in other.iterdir()) == [staged, "20240101-000004-4.avi", "notes.txt"]
    assert list(cam.iterdir()) == []


@pytest.fixture
def video(tmp_path):
    """60 marked frames at 10 frames/s, FFV1 (lossless: the markers read back exactly)."""
    path = tmp_path / "in.mkv"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), 10, (W, H))
    for i in range(60):
        writer.write(make_frame(i))
    writer.release()
    return path


class AlarmTask:
    """A task whose alarm starts at frame 20 and ends at frame 30; its view draws a red overlay while it is on.
    ``stop_at``: raise SIGTERM's Stopped in that frame (``systemctl stop`` mid-alarm)."""

    kind = "fake"

    def __init__(self, stop_at: int | None = None):
        self.stop_at = stop_at

    def process(self, frame):
        from edge_runtime.errors import Stopped
        from edge_runtime.task import Outcome

        if frame.index == self.stop_at:
            raise Stopped(signal.SIGTERM)
        extra = {20: [{"type": "alarm", "event": "start", "smoothed": 9.0}],
                 30: [{"type": "alarm", "event": "end", "smoothed": 1.0}]}.get(frame.index, [])  # fmt: skip
        view = frame.image.copy()
        if 20 <= frame.index < 30:
            cv2.rectangle(view, (40, 30), (80, 60), (0, 0, 255), -1)
        return Outcome(image=frame.image, view=view, event={"score": 0.0}, extra=extra)

    def summary(self):
        return {}


def run_with_clips(tmp_path, video, task):
    from edge_runtime.outputs import EventsSink
    from edge_runtime.pipeline import Route, run_loop
    from edge_runtime.sources import open_source

    events = EventsSink(tmp_path / "events.jsonl")
    rec = ClipRecorder(tmp_path / "clips", "door", pre_s=1.0, post_s=0.5, emit=events.write)
    routes = [Route(rec.events(), "event"), Route(rec.frames(), "view"), Route(events, "event")]
    res = run_loop(open_source(str(video)), task, routes, start={"task": "fake"})
    got = [json.loads(x) for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    return res, rec, got


def test_routed_through_the_real_frame_loop(tmp_path, video):
    res, rec, got = run_with_clips(tmp_path, video, AlarmTask())
    assert res.frames == 60
    kinds = [x["type"] for x in got]
    assert kinds[0] == "start" and kinds[-1] == "end" and kinds.count("snapshot") == kinds.count("clip") == 1
    assert kinds.index("snapshot") < kinds.index("clip") < kinds.index("end")
    clip = next(x for x in got if x["type"] == "clip")
    alarm = next(x for x in got if x["type"] == "alarm" and x["event"] == "start")
    frames = read_clip(clip["clip"])
    assert frames == list(range(10, 36)) and clip["frames"] == 26 and clip["alarm_frame"] == alarm["frame"] == 20
    assert clip["first_time"] <= alarm["time"] - 1.0 + 1e-6  # the goal: >= pre_s before the alarm frame
    assert rec.stats()["clips"] == 1 and rec.stats()["dropped"] == 0
    snap = cv2.imread(clip["snapshot"])
    assert marker(snap) == 20 and snap[45, 60].tolist() == pytest.approx([0, 0, 255], abs=12)  # with the overlay


def test_sigterm_during_an_alarm_keeps_its_clip(tmp_path, video):
    res, rec, got = run_with_clips(tmp_path, video, AlarmTask(stop_at=25))
    assert res.exit_code == 143 and res.frames == 25
    (clip,) = [x for x in got if x["type"] == "clip"]
    assert read_clip(clip["clip"]) == list(range(10, 25)) and clip["ended"] == "close"
    assert [x["type"] for x in got][-2:] == ["clip", "end"]  # finalised at the run's end line, before it
    assert not [p for p in (tmp_path / "clips" / "door").iterdir() if p.name.startswith(".")]


def test_bad_options_are_usage_errors(tmp_path):
    for kw in ({"pre_s": -1}, {"max_bytes": 0}, {"max_ring_bytes": 0}, {"max_clip_bytes": 10, "max_bytes": 5},
               {"ext": ".mp4"}, {"fps": 0.5}):  # fmt: skip
        with pytest.raises(UsageError):
            ClipRecorder(tmp_path, "cam", **kw)
    assert clips_mod.CLIP_EXTS == (".avi", ".mkv")
