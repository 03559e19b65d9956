"""Event clips and snapshots: from ``pre_s`` before an alarm to ``post_s`` after it, in a folder with a size cap.

One :class:`ClipRecorder` per camera, routed twice, before the events file: at the run's ``end`` line it finalises
the open clip, and its ``clip`` line then goes to the file before that ``end`` (``close()`` does it too, later)::

    rec = ClipRecorder("clips", "door", pre_s=5, post_s=5, emit=events_sink.write)
    routes = [Route(rec.events(), "event"), Route(rec.frames(), "view"), Route(events_sink, "event"), ...]

- **Pre-roll**: every view frame is kept as JPEG in a ring bounded by ``pre_s`` of the source's clock and by
  ``max_ring_bytes``. An alarm start opens a clip at the newest ring frame ``pre_s`` or more before the alarm frame.
  It is not written in one burst (5 s at 15 frames/s is ~0.7 s of work on 2 cores, and a live source would drop
  frames meanwhile): it goes into a backlog, and each frame that follows writes :data:`CATCH_UP` of it. The backlog
  shares the ring's bytes and only shrinks; finalising writes what is left.
- **Post-roll**: frames up to ``post_s`` after the alarm's end; an alarm again within it extends the same clip.
- **Files**: ``{folder}/{camera}/{YYYYmmdd-HHMMSS}-{frame}.avi`` (UTC wall time, alarm frame), MJPG through
  :class:`~edge_runtime.outputs.VideoSink` (staged, read back, renamed), and ``{same}.jpg``, the alarm frame with
  its overlay, written atomically. ``ext=".mkv"`` (FFV1, lossless) is offered, not the default: at 640x480 it took
  ~54 ms and ~90-390 KB a frame against MJPG's ~7 ms and ~14 KB, and the pre-roll is JPEG anyway.
- **Lines** to ``emit``: ``snapshot`` as soon as the snapshot exists, ``clip`` when a clip is final; keys of
  docs/events.md (``v``, ``type``, ``frame``, ``time``, ``wall``) plus ``camera``, ``alarm_frame``, ``part``,
  ``clip``, ``snapshot``, ``first_time``, ``last_time``, ``frames``, ``ended`` (post-roll, size, close).
- **Retention**: the files in the camera folders of ``folder`` never exceed ``max_bytes``. Before a clip opens the
  oldest published clips and snapshots (modification time) are deleted until ``max_clip_bytes`` is free, and a clip
  about to outgrow that is finalised and goes on as the next ``part``, so an endless alarm cannot fill the disk.
  Never deleted: the clip being written and its alarm's snapshot, staged (``.*``) and other files (counted) --
  except this camera's staged clips left by a killed run, removed at start. Cameras may share a folder: another
  camera's clip being written counts as the full ``max_clip_bytes`` (give them all the same one).
- ``close()`` finalises the open clip (SIGTERM keeps it); ``abort()`` removes its staged file and its snapshot.

Errors: a folder that cannot be made or written at start is an OutputError naming the camera (exit 3): the
configuration is wrong, and it says so before the camera runs. Later, a clip or snapshot that cannot be written (a
full disk, the folder gone, a short read-back, no room under the cap) is **dropped**: staged file removed, counted
in ``dropped``, a ``clip`` line with ``"clip": null`` and the ``error``, a :class:`ClipWarning` at most every
:data:`WARN_EVERY_S`. The run goes on: clips are evidence around alarms, and stopping the camera would lose the
alarms themselves (events, MQTT); an events file on the same full disk still ends the run with exit 3.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import statistics
import time
import warnings
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_runtime.errors import EdgeAEError, OutputError, UsageError, output_error
from edge_runtime.io import atomic_path
from edge_runtime.outputs import VideoSink, now_wall
from edge_runtime.task import EVENTS_VERSION, as_bgr

MB = 1024 * 1024
CLIP_EXTS = (".avi", ".mkv")  # MJPG (the default), FFV1 (lossless, ~8x slower, ~15x bigger: module docstring)
CATCH_UP = 3  # backlog frames written per incoming frame: 5 s of pre-roll is written within the next 2.5 s
WARN_EVERY_S = 10.0  # a dropped clip warns at most this often (each warning carries the running count)
# Bytes a muxer may hold back from the file while writing, measured with OpenCV's FFmpeg: AVI writes in 256 KiB
# steps, MKV a 5 MiB cluster at a time (then its own 256 KiB buffer).
MUXER_HOLD = {".avi": 512 * 1024, ".mkv": 5 * MB + 512 * 1024}
DEFAULT_FPS = 25.0  # a clip's rate when neither ``fps`` nor the ring's timestamps tell it
_SAFE_CAMERA = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_PUBLISHED = re.compile(r"(\d{8}-\d{6})-(\d+)(?:-(\d+))?\.(?:mkv|avi|jpg)")
_STAGED = re.compile(r"\.\d{8}-\d{6}-\d+(?:-\d+)?\.(?:mkv|avi|jpg)\..+")
_EPS = 1e-9  # 3.0 - 1.0 vs 2.0 in floats: a frame exactly pre_s back counts as that far back

Item = tuple[float, int, bytes]  # (timestamp, frame index, JPEG)


class ClipWarning(UserWarning):
    """A clip or snapshot dropped because it could not be written; the run goes on."""


class FrameRing:
    """The last ``seconds`` of frames as JPEG bytes (plus the newest one at least ``seconds`` older than the newest
    frame, so a clip cut from it reaches back that far), at most ``max_bytes`` of them: the oldest go first.
    Timestamps going backwards (a source restarted) empty it."""

    def __init__(self, seconds: float, max_bytes: int):
        self.seconds, self.max_bytes = seconds, max_bytes
        self.items: deque[Item] = deque()
        self.gaps: deque[float] = deque(maxlen=32)  # the last intervals between frames, for the clip's rate
        self.bytes = 0
        self.evicted = 0  # frames pushed out by the byte cap (the pre-roll is then shorter than ``seconds``)

    def push(self, timestamp: float, index: int, data: bytes) -> None:
        if self.items and timestamp < self.items[-1][0]:
            self.items.clear()
            self.bytes = 0
        elif self.items and timestamp > self.items[-1][0]:
            self.gaps.append(timestamp - self.items[-1][0])
        self.items.append((timestamp, index, data))
        self.bytes += len(data)
        while len(self.items) > 1 and self.items[1][0] <= timestamp - self.seconds + _EPS:
            self.bytes -= len(self.items.popleft()[2])
        while self.bytes > self.max_bytes and self.items:
            self.bytes -= len(self.items.popleft()[2])
            self.evicted += 1

    def since(self, t: float) -> list[Item]:
        """The frames from the newest one at or before ``t`` on (from the oldest when none is that old)."""
        items = list(self.items)
        first = 0
        while first + 1 < len(items) and items[first + 1][0] <= t + _EPS:
            first += 1
        return items[first:]

    def fps(self) -> float | None:
        """Frames per second of the source's clock (median of the last intervals), None when unknown."""
        return 1.0 / statistics.median(self.gaps) if self.gaps else None


@dataclass
class _Clip:
    sink: VideoSink
    snapshot: Path | None
    alarm: tuple[int, float, int]  # the alarm's frame and time, the part
    cap: int  # bytes this part may take, snapshot included
    hold: int  # MUXER_HOLD of its format
    end_time: float | None = None  # the alarm's end while in post-roll; None while it is on
    first_time: float | None = None
    last_time: float = 0.0
    size: int = 0  # staged file + snapshot, as last measured
    file_bytes: int = 0  # the staged file's size when it last grew
    flushed: int = 0  # frames surely in the file then (muxers hold back a cluster or a buffer)
    per_frame: float = 0.0  # bytes per frame, high side, from the file's growth


class ClipRecorder:
    """One camera's event clips (module docstring). Route :meth:`events` on "event", :meth:`frames` on "view"."""

    def __init__(self, folder: str | os.PathLike, camera: str = "cam", *, pre_s: float = 5.0, post_s: float = 5.0,
                 fps: float | None = None, max_bytes: int = 500 * MB, max_ring_bytes: int = 64 * MB,
                 max_clip_bytes: int | None = None, ext: str = ".avi", jpeg_quality: int = 90,
                 emit: Callable[[dict], Any] | None = None):  # fmt: skip
        if not isinstance(camera, str) or not _SAFE_CAMERA.fullmatch(camera):
            raise UsageError(f"camera {camera!r}: clips need a camera name of letters, digits, '.', '_', '-' "
                             "(at most 64, not starting with '.' or '-')")  # fmt: skip
        max_clip_bytes = max_bytes // 4 if max_clip_bytes is None else max_clip_bytes
        if not (pre_s >= 0 and post_s >= 0 and max_ring_bytes > 0 and 0 < max_clip_bytes <= max_bytes):
            raise UsageError(f"camera {camera}: clips need pre_s, post_s >= 0, max_ring_bytes > 0 and "
                             "0 < max_clip_bytes <= max_bytes")  # fmt: skip
        if ext not in CLIP_EXTS or (fps is not None and not 1 <= fps <= 240):
            raise UsageError(f"camera {camera}: clips: ext must be one of {CLIP_EXTS}, fps within 1..240")
        self.folder, self.camera, self.emit = Path(folder), camera, emit
        self.dir = self.folder / camera
        self.pre_s, self.post_s, self.fps, self.ext = float(pre_s), float(post_s), fps, ext
        self.max_bytes, self.max_clip_bytes = int(max_bytes), int(max_clip_bytes)
        self.jpeg = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)]
        self.ring = FrameRing(self.pre_s, int(max_ring_bytes))
        self.clip: _Clip | None = None
        self.pending: tuple[int, float] | None = None  # an alarm start (frame, time) waiting for its frame
        self.pending_end: float | None = None  # an alarm end in the same frame's lines as a pending start
        self.backlog: deque[Item] = deque()  # frames due in the open clip, oldest first
        self.keep: Path | None = None  # the alarm's snapshot while its clip is split into a new part
        self.closed = False
        self.counts = {"clips": 0, "clip_frames": 0, "snapshots": 0, "deleted": 0, "deleted_bytes": 0,
                       "dropped": 0, "stale_removed": 0, "folder_bytes": 0}  # fmt: skip
        self.last_error = ""
        self._last_warn = 0.0
        self._prepare()
        self.retain(self.max_bytes)

    def _prepare(self) -> None:
        """Make the camera's folder, prove it writable, remove this camera's staged files of a killed run."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            probe = self.dir / f".probe.{secrets.token_hex(6)}"
            probe.write_bytes(b"")
            probe.unlink()
            with os.scandir(self.dir) as entries:
                for entry in entries:
                    if _STAGED.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                        os.unlink(entry.path)
                        self.counts["stale_removed"] += 1
        except OSError as exc:
            raise OutputError(f"camera {self.camera}: clips folder {output_error(self.dir, exc)}") from None

    # --- the two ports ----------------------------------------------------------------------------------------
    def events(self) -> _Port:
        """The sink to route on ``"event"``: whole event lines (it acts on ``alarm`` start/end)."""
        return _Port(self, self.on_event)

    def frames(self) -> _Port:
        """The sink to route on ``"view"``: the annotated frames, (H, W[, C]) uint8 BGR/gray/BGRA."""
        return _Port(self, self.on_frame)

    def on_event(self, line: dict, index: int = 0, name: str = "", timestamp: float = 0.0) -> None:
        if line.get("type") == "end":  # the run is over: the clip line goes before the events' last line
            self.close()
        if line.get("type") != "alarm" or self.closed:
            return
        stamp = float(line.get("time", timestamp))
        if line.get("event") == "start":
            self.pending, self.pending_end = (int(line.get("frame", index)), stamp), None
        elif line.get("event") == "end" and self.pending is not None:
            self.pending_end = stamp
        elif line.get("event") == "end" and self.clip is not None:
            self.clip.end_time = stamp

    def on_frame(self, image: np.ndarray, index: int = 0, name: str = "", timestamp: float = 0.0) -> None:
        if self.closed or image.size == 0:
            return
        frame, ts, index = as_bgr(image), float(timestamp), int(index)
        data = _jpeg(frame, self.jpeg)
        clip = self.clip
        if clip is not None and clip.end_time is not None and ts > clip.end_time + self.post_s:
            self._finalise("post-roll")
        if self.pending is not None:
            alarm, end, self.pending, self.pending_end = self.pending, self.pending_end, None, None
            if self.clip is None:
                self._start(frame, index, ts, alarm)
            if self.clip is not None:  # a new alarm within the post-roll: the same clip goes on
                self.clip.end_time = end
        if self.clip is not None and self.backlog:
            self.backlog.append((ts, index, data))
            self._drain(CATCH_UP)
        elif self.clip is not None:
            self._write(frame, index, ts)  # caught up: the frame itself, not its JPEG
        self.ring.push(ts, index, data)

    # --- one clip -----------------------------------------------------------------------------------------
    def _start(self, frame: np.ndarray, index: int, ts: float, alarm: tuple[int, float]) -> None:
        """Open a clip for ``alarm`` at ``frame``: the snapshot now, the pre-roll into the backlog."""
        if not self._open((*alarm, 1), name_frame=alarm[0], snapshot=True):
            return
        clip = self.clip
        assert clip is not None and clip.snapshot is not None
        try:
            with atomic_path(clip.snapshot) as tmp:
                tmp.write_bytes(_jpeg(frame, self.jpeg))
        except OSError as exc:
            self._note_dropped(str(output_error(clip.snapshot, exc)), what="snapshot")
            clip.snapshot = None
        else:
            self.counts["snapshots"] += 1
            clip.size = _size(clip.snapshot)
            self._emit_line("snapshot", clip.alarm, {"snapshot": str(clip.snapshot), "frame": index,
                                                     "time": round(ts, 4)})  # fmt: skip
        self.backlog = deque(self.ring.since(ts - self.pre_s) if self.pre_s > _EPS else ())  # 0: from this frame

    def _drain(self, n: int | None = None) -> None:
        """Write up to ``n`` (None: all) backlog frames into the open clip."""
        done = 0
        while self.backlog and self.clip is not None and (n is None or done < n):
            stamp, idx, data = self.backlog.popleft()
            pic = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            if pic is not None:
                self._write(pic, idx, stamp)
            done += 1

    def _open(self, alarm: tuple[int, float, int], *, name_frame: int, snapshot: bool) -> bool:
        """A new staged clip with room made for it; False (the clip dropped) when there is no room."""
        free = self.max_bytes - self.retain(self.max_bytes - self.max_clip_bytes)
        if free < self.max_clip_bytes // 4:
            self._drop_line(alarm, f"{self.folder}: clip folder full ({self.max_bytes - free} of {self.max_bytes} "
                                   "bytes in files it may not delete)")  # fmt: skip
            return False
        stem = f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{name_frame}"
        path, n = self.dir / f"{stem}{self.ext}", 0
        while path.exists() or path.with_suffix(".jpg").exists():
            n += 1
            path = self.dir / f"{stem}-{n}{self.ext}"
        fps = min(max(self.fps or self.ring.fps() or DEFAULT_FPS, 1.0), 240.0)
        shot = path.with_suffix(".jpg") if snapshot else None
        self.clip = _Clip(VideoSink(path, fps=fps), shot, alarm, min(self.max_clip_bytes, free), MUXER_HOLD[self.ext])
        return True

    def _write(self, frame: np.ndarray, index: int, ts: float) -> None:
        clip = self.clip
        assert clip is not None
        if clip.sink.frames and _projected(clip, frame) > clip.cap:  # the next part
            old, self.keep = clip, clip.snapshot  # the alarm's snapshot is not the oldest file to delete
            self._finalise("size", drain=False)
            frame_no, stamp, part = old.alarm
            opened = self._open((frame_no, stamp, part + 1), name_frame=index, snapshot=False)
            self.keep = None
            if not opened:
                return
            clip = self.clip
            assert clip is not None
            clip.end_time, clip.snapshot = old.end_time, old.snapshot
        try:
            clip.sink.write(frame, index, "", ts)
            size = _size(clip.sink.tmp)
        except (OSError, EdgeAEError) as exc:
            self._drop(str(exc))
            return
        if size > clip.file_bytes:
            clip.file_bytes, clip.flushed = size, clip.sink.frames - 1
            if clip.flushed:
                clip.per_frame = max(clip.per_frame, 1.5 * size / clip.flushed)
        clip.size = clip.file_bytes + _size(clip.snapshot)
        clip.first_time = ts if clip.first_time is None else clip.first_time
        clip.last_time = ts

    def _finalise(self, ended: str, drain: bool = True) -> None:
        if drain:
            self._drain()
        clip, self.clip = self.clip, None
        if clip is None:
            return
        try:
            clip.sink.close()
        except (OSError, EdgeAEError) as exc:  # the sink removed its staged file
            self._drop_line(clip.alarm, str(exc), clip.snapshot)
            return
        if clip.sink.frames == 0:
            return
        self.counts["clips"] += 1
        self.counts["clip_frames"] += clip.sink.frames
        self._emit_line("clip", clip.alarm, {"clip": str(clip.sink.path), "snapshot": _existing(clip.snapshot),
                                             "first_time": round(clip.first_time or 0.0, 4),
                                             "last_time": round(clip.last_time, 4), "frames": clip.sink.frames,
                                             "ended": ended})  # fmt: skip
        self.retain(self.max_bytes)

    def _drop(self, reason: str) -> None:
        clip, self.clip = self.clip, None
        if clip is not None:
            clip.sink.abort()
            self._drop_line(clip.alarm, reason, clip.snapshot)

    def _drop_line(self, alarm: tuple[int, float, int], reason: str, snapshot: Path | None = None) -> None:
        self.backlog.clear()
        self._note_dropped(reason, what="clip")
        fields = {"clip": None, "snapshot": _existing(snapshot), "error": reason, "frames": 0}
        self._emit_line("clip", alarm, fields)

    def _note_dropped(self, reason: str, what: str) -> None:
        self.counts["dropped"] += 1
        self.last_error = reason
        now = time.monotonic()
        if self._last_warn == 0.0 or now - self._last_warn >= WARN_EVERY_S:
            self._last_warn = now
            warnings.warn(f"camera {self.camera}: {what} dropped ({reason}); {self.counts['dropped']} dropped so "
                          "far, the camera goes on", ClipWarning, stacklevel=2)  # fmt: skip

    def _emit_line(self, kind: str, alarm: tuple[int, float, int], fields: dict) -> None:
        if self.emit is not None:
            frame, stamp, part = alarm
            self.emit({"v": EVENTS_VERSION, "type": kind, "frame": frame, "time": round(stamp, 4), "wall": now_wall(),
                       "camera": self.camera, "alarm_frame": frame, "part": part, **fields})  # fmt: skip

    # --- retention ----------------------------------------------------------------------------------------
    def _scan(self) -> tuple[int, list[tuple[tuple, str, int]]]:
        """Bytes of every file in the camera folders of ``folder`` (another camera's clip being written counted as
        the ``max_clip_bytes`` it may grow to), and the deletable files, oldest first, as ``(age, path, size)``:
        published clips and snapshots, not those of the clip being written."""
        clip = self.clip
        keep = {str(p) for p in (self.keep, *((clip.sink.path, clip.snapshot) if clip else ())) if p is not None}
        total, deletable = 0, []
        with contextlib.suppress(OSError), os.scandir(self.folder) as cams:
            for cam in cams:
                if not cam.is_dir(follow_symlinks=False):
                    continue
                with contextlib.suppress(OSError), os.scandir(cam.path) as entries:
                    for entry in entries:
                        with contextlib.suppress(OSError):
                            st = entry.stat(follow_symlinks=False)
                            if entry.is_file(follow_symlinks=False):
                                staged = _STAGED.fullmatch(entry.name) and not entry.name.endswith(".jpg")
                                total += max(st.st_size, self.max_clip_bytes) if staged else st.st_size
                                m = _PUBLISHED.fullmatch(entry.name)
                                if m and entry.path not in keep:  # same mtime (a clock tick): by name and frame
                                    when = (st.st_mtime_ns, m[1], int(m[2]), int(m[3] or 0))
                                    deletable.append((when, entry.path, st.st_size))
        return total, sorted(deletable)

    def retain(self, target: int) -> int:
        """Delete the oldest published clips and snapshots until the folder holds at most ``target`` bytes;
        returns the bytes it holds then (more than ``target`` only when nothing deletable is left)."""
        total, deletable = self._scan()
        for _age, path, size in deletable:
            if total <= target:
                break
            try:
                os.unlink(path)
            except FileNotFoundError:  # another camera's recorder took it
                total -= size
                continue
            except OSError:
                continue
            total -= size
            self.counts["deleted"] += 1
            self.counts["deleted_bytes"] += size
        self.counts["folder_bytes"] = total
        return total

    # --- the sink contract ----------------------------------------------------------------------------------
    def close(self) -> None:
        """Finalise the open clip: write the backlog, close, verify, publish (idempotent: both ports call it)."""
        if not self.closed:
            self.closed, self.pending = True, None
            self._finalise("close")

    def abort(self) -> None:
        """Remove the open clip's staged file and, for a first part, its snapshot; finalised clips stay."""
        self.closed, self.pending = True, None
        self.backlog.clear()
        clip, self.clip = self.clip, None
        if clip is not None:
            clip.sink.abort()
            if clip.alarm[2] == 1 and clip.snapshot is not None:
                with contextlib.suppress(OSError):
                    clip.snapshot.unlink()

    def stats(self) -> dict[str, int]:
        """Counts (clips, clip_frames, snapshots, deleted, deleted_bytes, dropped, stale_removed, folder_bytes as
        last scanned) and the memory held now (ring and backlog frames and bytes)."""
        backlog = sum(len(item[2]) for item in self.backlog)
        return {**self.counts, "ring_frames": len(self.ring.items), "ring_bytes": self.ring.bytes,
                "ring_evicted": self.ring.evicted, "backlog_frames": len(self.backlog), "backlog_bytes": backlog,
                "recording": int(self.clip is not None)}  # fmt: skip


class _Port:
    """One of the recorder's two sinks; closing or aborting either closes or aborts the recorder."""

    def __init__(self, recorder: ClipRecorder, handle: Callable[..., None]):
        self.recorder, self.handle, self.frames = recorder, handle, 0

    def write(self, value: Any, index: int = 0, name: str = "", timestamp: float = 0.0) -> None:
        self.handle(value, index, name, timestamp)
        self.frames += 1

    def close(self) -> None:
        self.recorder.close()

    def abort(self) -> None:
        self.recorder.abort()


def _projected(clip: _Clip, frame: np.ndarray) -> int:
    """The most the part may take once ``frame`` is written and the file closed: what the file holds, what the
    muxer may still hold back (the frames since the file last grew at the high estimate of a frame, at most
    ``clip.hold``), the frame, and the container's trailer (index, cues). Before the file first grows a frame is
    estimated at 1.25x its raw size (FFV1 on noise takes ~1.1x)."""
    per = clip.per_frame or 1.25 * frame.size + 1024
    held = min((clip.sink.frames - clip.flushed + 1) * per, clip.hold)
    return clip.size + int(held + per) + 4096 + 64 * (clip.sink.frames + 1)


def _jpeg(frame: np.ndarray, params: list[int]) -> bytes:
    ok, buf = cv2.imencode(".jpg", frame, params)
    if not ok:
        raise OSError(f"OpenCV could not encode a JPEG of shape {frame.shape}")
    return buf.tobytes()


def _size(path: Path | None) -> int:
    try:
        return os.stat(path).st_size if path is not None else 0
    except FileNotFoundError:
        return 0


def _existing(path: Path | None) -> str | None:
    return str(path) if path is not None and path.exists() else None
