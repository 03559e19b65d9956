"""Sinks: every write checked, outputs published on success only, outputs that would destroy something refused."""

from __future__ import annotations

import json
import os
import stat

import cv2
import numpy as np
import pytest

from edge_runtime import errors
from edge_runtime.outputs import (
    EventsSink,
    FolderSink,
    ImageSink,
    VideoSink,
    ViewSink,
    check_output,
    count_video_frames,
)


def frames(n, h=48, w=64):
    out = []
    for i in range(n):
        f = np.full((h, w, 3), 30, np.uint8)
        cv2.rectangle(f, (i * 3 % w, 8), (i * 3 % w + 8, 20), (255, 255, 255), -1)
        out.append(f)
    return out


def test_output_that_is_the_input_is_refused(tmp_path):
    src = tmp_path / "in.png"
    src.write_bytes(b"mine")
    link = tmp_path / "hard.png"
    os.link(src, link)
    for path in (src, link):
        with pytest.raises(errors.UsageError, match="is the input") as err:
            check_output(path, "file", [src])
        assert err.value.exit_code == errors.USAGE
    assert src.read_bytes() == b"mine"


def test_devices_fifos_and_folders_are_not_replaced(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for path in (fifo, "/dev/null"):
        with pytest.raises(errors.UsageError, match="not a regular file"):
            check_output(path, "file")
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and stat.S_ISCHR(os.stat("/dev/null").st_mode)
    with pytest.raises(errors.UsageError, match="is a folder"):
        check_output(tmp_path, "file")
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(errors.UsageError, match="not a folder"):
        check_output(tmp_path / "f.txt", "folder")


def test_image_sink_writes_on_close_only_and_takes_one_frame(tmp_path):
    out = tmp_path / "o.png"
    out.write_bytes(b"previous")
    sink = ImageSink(out)
    sink.write(frames(1)[0])
    assert out.read_bytes() == b"previous"  # nothing replaced before the run succeeded
    with pytest.raises(errors.UsageError, match="one frame"):
        sink.write(frames(1)[0])
    sink.abort()
    assert out.read_bytes() == b"previous"
    sink = ImageSink(out)
    sink.write(frames(1)[0])
    sink.close()
    assert cv2.imread(str(out)).shape == (48, 64, 3)


def test_folder_sink_stages_and_merges_on_success(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    (out / "a.png").write_bytes(b"previous")
    sink = FolderSink(out)
    sink.write(frames(1)[0], 0, "a.png")
    sink.write(frames(1)[0], 1, "sub/b.png")
    assert (out / "a.png").read_bytes() == b"previous" and sorted(os.listdir(out)) == ["a.png", "keep.txt"]
    sink.abort()
    assert sorted(os.listdir(out)) == ["a.png", "keep.txt"] and (out / "a.png").read_bytes() == b"previous"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    sink = FolderSink(out)
    sink.write(frames(1)[0], 0, "a.png")
    sink.write(frames(1)[0], 7, "")
    sink.close()
    assert sorted(os.listdir(out)) == ["a.png", "frame_000007.png", "keep.txt"]
    assert cv2.imread(str(out / "a.png")) is not None
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_video_sink_verifies_frames_and_pads_odd_sides(tmp_path):
    out = tmp_path / "v.avi"
    sink = VideoSink(out, fps=10)
    for f in frames(7, h=47, w=63):
        sink.write(f)
    sink.close()
    assert count_video_frames(out, 100) == 7
    cap = cv2.VideoCapture(str(out))
    ok, first = cap.read()
    cap.release()
    assert ok and first.shape == (48, 64, 3)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o666 & ~umask  # like an image, not mkstemp's 0600


def test_video_sink_that_loses_frames_fails_and_keeps_the_previous_file(tmp_path, monkeypatch):
    """cv2.VideoWriter ignores write errors; the frame count read back on close catches them."""
    out = tmp_path / "v.avi"
    out.write_bytes(b"previous")
    sink = VideoSink(out, fps=10)
    sink.write(frames(1)[0])
    real = sink.writer
    dropped = {"n": 0}

    class Lossy:  # what a full disk looks like to the caller: write() returns, nothing reaches the file
        def write(self, frame):
            dropped["n"] += 1

        def release(self):
            real.release()

    sink.writer = Lossy()
    for f in frames(5):
        sink.write(f)
    with pytest.raises(errors.OutputError, match=r"only 1 of 6 frames reached the file") as err:
        sink.close()
    assert err.value.exit_code == errors.BAD_DATA and dropped["n"] == 5
    assert out.read_bytes() == b"previous"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_events_are_appended_and_flushed_line_by_line(tmp_path):
    path = tmp_path / "ev.jsonl"
    path.write_text('{"old": 1}\n')
    sink = EventsSink(path, fsync_every=0.05)
    sink.write({"type": "frame", "frame": 0, "score": np.float32(1.5)})
    # On disk (in the OS) before close: a killed process loses nothing already written.
    assert [json.loads(x) for x in path.read_text().splitlines()] == [
        {"old": 1},
        {"type": "frame", "frame": 0, "score": 1.5},
    ]
    sink.close()
    assert len(path.read_text().splitlines()) == 2


def test_write_errors_name_the_path(tmp_path):
    parent_is_file = tmp_path / "file"
    parent_is_file.write_text("x")
    for make in (lambda: EventsSink(parent_is_file / "ev.jsonl"), lambda: FolderSink(parent_is_file / "d")):
        with pytest.raises(errors.OutputError, match="cannot write") as err:
            sink = make()
            sink.write(frames(1)[0], 0, "a.png")
        assert err.value.exit_code == errors.BAD_DATA and str(parent_is_file) in str(err.value)


def test_view_sink_turns_gray_frames_to_bgr():
    got = []

    class Server:  # the sink's only collaborator: what it publishes
        def publish(self, frame):
            got.append(frame)

        def stop(self):
            pass

    sink = ViewSink(Server())
    sink.write(np.zeros((8, 10), np.uint8))
    sink.write(np.zeros((8, 10, 1), np.uint8))
    assert [g.shape for g in got] == [(8, 10, 3), (8, 10, 3)]
