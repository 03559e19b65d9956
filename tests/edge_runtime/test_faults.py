"""Faults on a real ``edgeae`` process: stop signals, kill -9, a full disk, write errors, bad frames in a run.

Each test drives the CLI as a user or systemd would (a subprocess, or click's runner where no process-level
behaviour is involved) on tiny bundles and clips made here.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from edge_runtime import errors
from edge_runtime.cli import cli

EDGEAE = [sys.executable, "-m", "edge_runtime.cli"]


def write_clip(path: Path, n: int, size=(64, 48), fourcc="FFV1") -> Path:
    w, h = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 25, (w, h))
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    for i in range(n):
        f = base.copy()
        cv2.rectangle(f, (i % w, 8), (i % w + 8, 20), (255, 255, 255), -1)
        writer.write(f)
    writer.release()
    return path


def lines_of(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def wait_for_frames(path: Path, n: int, proc: subprocess.Popen, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            count = sum(1 for line in path.read_text().splitlines() if '"type":"frame"' in line)
            if count >= n:
                return count
        if proc.poll() is not None:
            raise AssertionError(f"edgeae ended early: {proc.returncode} {proc.stderr.read()}")
        time.sleep(0.05)
    raise AssertionError(f"no {n} frame events within {timeout} s")


@pytest.fixture
def long_clip(tmp_path):
    return write_clip(tmp_path / "clip.mkv", 4000)


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129), (signal.SIGINT, 130)])
def test_stop_signals_end_a_run_like_ctrl_c(make_bundle, long_clip, tmp_path, sig, code):
    """What `systemctl stop` sends: the recording finalised, events and stats on disk, no temp files."""
    bundle = make_bundle(("anomaly",))
    out = tmp_path / "out"
    out.mkdir()
    ev, rec, st = out / "ev.jsonl", out / "rec.avi", out / "stats.json"
    proc = subprocess.Popen([*EDGEAE, "run", str(bundle), "--source", str(long_clip), "--record", str(rec),
                             "--events", str(ev), "--stats", str(st)], stderr=subprocess.PIPE, text=True)  # fmt: skip
    wait_for_frames(ev, 5, proc)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    assert stderr.count("Traceback") == 0
    events = lines_of(ev)
    assert events[0]["type"] == "start" and events[-1]["type"] == "end" and events[-1]["status"] == "interrupted"
    stats = json.loads(st.read_text())
    processed = stats["frames_processed"]
    assert stats["interrupted"] and stats["exit_code"] == code
    assert len([e for e in events if e["type"] == "frame"]) == processed
    cap = cv2.VideoCapture(str(rec))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == processed
    cap.release()
    assert hidden(out) == []


def test_kill_9_loses_at_most_the_last_second_of_events(make_bundle, long_clip, tmp_path):
    bundle = make_bundle(("anomaly",))
    ev = tmp_path / "ev.jsonl"
    proc = subprocess.Popen([*EDGEAE, "run", str(bundle), "--source", str(long_clip), "--events", str(ev)],
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    seen = wait_for_frames(ev, 20, proc)
    time.sleep(1.1)
    proc.kill()
    proc.wait(timeout=10)
    events = lines_of(ev)  # every line complete and parseable
    frames = [e for e in events if e["type"] == "frame"]
    assert events[0]["type"] == "start" and len(frames) >= seen
    assert [e["frame"] for e in frames] == list(range(len(frames)))


def _limited(limit_bytes: int):
    def setup():  # in the child: a file-size limit is a full disk to every write past it
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return setup


@pytest.mark.parametrize("command, output", [("denoise", "out.avi"), ("denoise", "out.mkv"), ("run", "rec.avi")])
def test_full_disk_under_a_video_output_is_exit_3_and_keeps_the_previous_file(make_bundle, tmp_path, command, output):
    clip = write_clip(tmp_path / "clip.mkv", 300, size=(96, 64))
    out = tmp_path / "res"
    out.mkdir()
    target = out / output
    target.write_bytes(b"previous")
    bundle = str(make_bundle(("denoise",)))
    argv = ([command, bundle, str(clip), "-o", str(target)] if command == "denoise"
            else [command, bundle, "--source", str(clip), "--record", str(target)])  # fmt: skip
    res = subprocess.run([*EDGEAE, *argv], capture_output=True, text=True, preexec_fn=_limited(60_000),
                         timeout=120)  # fmt: skip
    assert res.returncode == errors.BAD_DATA, res.stderr
    err_lines = [x for x in res.stderr.splitlines() if x.startswith("edgeae: error")]
    assert len(err_lines) == 1 and str(target) in err_lines[0] and "Traceback" not in res.stderr
    assert target.read_bytes() == b"previous"
    assert hidden(out) == []


def test_full_disk_under_compress_and_events_is_exit_3(make_bundle, tmp_path):
    clip = write_clip(tmp_path / "clip.mkv", 400, size=(96, 64))
    ev = tmp_path / "ev.jsonl"
    res = subprocess.run([*EDGEAE, "score", str(make_bundle(("anomaly",))), str(clip), "--events", str(ev)],
                         capture_output=True, text=True, preexec_fn=_limited(20_000), timeout=120)  # fmt: skip
    assert res.returncode == errors.BAD_DATA, res.stderr
    assert str(ev) in res.stderr and "Traceback" not in res.stderr
    lines = ev.read_text().splitlines()
    for line in lines[:-1]:  # what was written before the disk filled is intact
        json.loads(line)


@pytest.mark.parametrize(
    "args",
    [
        ["denoise", "{denoise}", "{img}", "-o", "{bad}/o.png"],
        ["denoise", "{denoise}", "{clip}", "-o", "{bad}/o.avi"],
        ["denoise", "{denoise}", "{img}", "-o", "{ok}", "--stats", "{bad}/s.json"],
        ["score", "{anomaly}", "{img}", "--events", "{bad}/ev.jsonl"],
        ["score", "{anomaly}", "{img}", "-o", "{bad}/o.png"],
        ["run", "{denoise}", "--source", "{clip}", "--record", "{bad}/r.avi"],
        ["run", "{anomaly}", "--source", "{clip}", "--events", "{bad}/e.jsonl"],
        ["run", "{anomaly}", "--source", "{clip}", "--stats", "{bad}/s.json"],
        ["denoise", "{denoise}", "{img}", "-o", "{long}.png"],
    ],
)
def test_write_errors_are_exit_3_one_line_in_every_command(make_bundle, tmp_path, args):
    img = tmp_path / "in.png"
    cv2.imwrite(str(img), np.full((32, 32, 3), 90, np.uint8))
    (tmp_path / "afile").write_text("a file, not a folder")
    names = {"denoise": make_bundle(("denoise",)), "anomaly": make_bundle(("anomaly",), name="ano"), "img": img,
             "clip": write_clip(tmp_path / "c.mkv", 5), "bad": tmp_path / "afile", "long": tmp_path / ("n" * 300),
             "ok": tmp_path / "ok.png"}  # fmt: skip
    argv = [a.format(**{k: str(v) for k, v in names.items()}) for a in args]
    res = CliRunner().invoke(cli, argv)
    assert res.exit_code == errors.BAD_DATA, res.output
    err_lines = [x for x in res.stderr.splitlines() if x.startswith("edgeae: error:")]
    assert len(err_lines) == 1 and "Traceback" not in res.stderr and "cannot write" in err_lines[0]


def test_output_equal_to_the_input_is_refused_and_the_input_kept(make_bundle, tmp_path):
    img = tmp_path / "in.png"
    cv2.imwrite(str(img), np.full((32, 32, 3), 90, np.uint8))
    before = img.read_bytes()
    for argv in (["denoise", str(make_bundle(("denoise",))), str(img), "-o", str(img)],
                 ["denoise", str(make_bundle(("denoise",))), str(tmp_path), "-o", str(img)]):  # fmt: skip
        res = CliRunner().invoke(cli, argv)
        assert res.exit_code == errors.USAGE and "is the input" in res.stderr
    assert img.read_bytes() == before


def test_fifo_and_dev_null_outputs_are_refused(make_bundle, tmp_path):
    img = tmp_path / "in.png"
    cv2.imwrite(str(img), np.full((32, 32, 3), 90, np.uint8))
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    for target in (fifo, Path("/dev/null")):
        res = CliRunner().invoke(cli, ["denoise", str(make_bundle(("denoise",))), str(img), "-o", str(target)])
        assert res.exit_code == errors.USAGE and "not a regular file" in res.stderr
    assert fifo.is_fifo()


def test_one_bad_frame_never_ends_a_run(make_bundle, tmp_path):
    """A frame over the model's max side and a corrupt image: counted, skipped, the run goes on."""
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(4):
        cv2.imwrite(str(folder / f"{i}.png"), np.full((32, 32, 3), 60 + i, np.uint8))
    cv2.imwrite(str(folder / "1b.png"), np.zeros((1, 8300, 3), np.uint8))  # over the test bundle's 8192
    (folder / "2b.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    bundle = make_bundle(("anomaly",))
    # `run` hands the model's limit to the source: the picture is dropped before it is converted.
    ev = tmp_path / "ev.jsonl"
    res = CliRunner().invoke(cli, ["run", str(bundle), "--source", str(folder), "--events", str(ev)])
    assert res.exit_code == errors.BAD_DATA and "4 frame(s) processed" in res.stderr
    assert "2 input(s) could not be read" in res.stderr and "1b.png" in res.stderr
    assert len([e for e in lines_of(ev) if e["type"] == "frame"]) == 4
    # `score` reads it and the task refuses it: an error line names it.
    ev2 = tmp_path / "ev2.jsonl"
    res = CliRunner().invoke(cli, ["score", str(bundle), str(folder), "--events", str(ev2)])
    assert res.exit_code == errors.BAD_DATA and "4 frame(s) processed" in res.stderr
    events = lines_of(ev2)
    assert len([e for e in events if e["type"] == "frame"]) == 4
    err, broken = [e for e in events if e["type"] == "error"]
    assert err["name"] == "1b.png" and "8192" in err["reason"]
    # the corrupt file never became a frame: its line has the name and the reason, no frame index
    assert broken["name"] == "2b.png" and "frame" not in broken and broken["reason"].startswith("skipped: ")
    run_errors = [e for e in lines_of(ev) if e["type"] == "error"]
    assert sorted(e["name"] for e in run_errors) == ["1b.png", "2b.png"]  # `run` drops both in the source


def test_nan_frames_are_counted_not_fatal_in_a_run(make_bundle, tmp_path):
    clip = write_clip(tmp_path / "c.mkv", 6)
    ev = tmp_path / "ev.jsonl"
    res = CliRunner().invoke(cli, ["run", str(make_bundle(("anomaly",), gain=float("nan"))), "--source", str(clip),
                                   "--events", str(ev)])  # fmt: skip
    assert res.exit_code == errors.BAD_DATA and "6 frame(s) skipped" in res.stderr
    assert len([e for e in lines_of(ev) if e["type"] == "error"]) == 6


def test_stats_are_written_when_the_source_is_lost(make_bundle, tmp_path):
    st = tmp_path / "stats.json"
    res = CliRunner().invoke(cli, ["run", str(make_bundle(("denoise",))), "--source", "rtsp://127.0.0.1:9/none",
                                   "--open-timeout", "0.3", "--read-timeout", "0.3", "--reconnects", "0",
                                   "--stats", str(st)])  # fmt: skip
    assert res.exit_code == errors.SOURCE_LOST
    stats = json.loads(st.read_text())
    assert stats["frames_processed"] == 0 and stats["source"].startswith("rtsp://")


def test_progress_is_one_summary_line_when_not_a_terminal(make_bundle, tmp_path):
    clip = write_clip(tmp_path / "c.mkv", 10)
    res = subprocess.run([*EDGEAE, "denoise", str(make_bundle(("denoise",))), str(clip), "-o",
                          str(tmp_path / "o.mkv")], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert res.returncode == 0, res.stderr
    auto, *lines = res.stderr.splitlines()  # first --device auto's choice, in one line
    assert auto.startswith("edgeae: device auto -> cpu fp32 (")
    assert len(lines) == 1 and "10/10" not in lines[0] and "10 frames in" in lines[0] and "frames/s" in lines[0]


def test_fallback_warning_is_one_line(make_bundle, tmp_path):
    img = tmp_path / "in.png"
    cv2.imwrite(str(img), np.dstack([np.full((32, 32), v, np.uint8) for v in (60, 90, 120)]))  # colour, not gray
    res = CliRunner().invoke(cli, ["denoise", str(make_bundle(("denoise",))), str(img), "-o", str(tmp_path / "o.png"),
                                   "--device", "cuda", "--allow-fallback"])  # fmt: skip
    assert res.exit_code == 0, res.output
    warning = [x for x in res.stderr.splitlines() if "warning" in x]
    assert len(warning) == 1 and warning[0].startswith("edgeae: warning:") and "warnings.warn" not in res.stderr
