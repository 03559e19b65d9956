"""Frames from cameras, streams, video files and images, behind one small protocol.

``open_source(spec)`` returns a :class:`Source`; iterating it yields :class:`Frame` objects whose ``image`` is
always ``(H, W, 3) uint8 BGR``, C-contiguous. Three families sit behind it:

* **Live** (camera index, ``rtsp://``/``rtsps://``/``http://``/``https://`` URL): a capture thread reads
  continuously into a one-slot buffer, newest frame wins. Timeouts are enforced here with monotonic deadlines,
  never left to the backend, because a blocking ``read()`` inside OpenCV cannot be interrupted: a stuck capture
  thread is abandoned (it is a daemon and releases its capture if the call ever returns) and a new one started.
  A lost frame is never replaced by a blank one; the iterator just yields nothing until a real new frame comes.
* **Video file**: a reader thread decodes into a bounded queue so decoding overlaps inference; every frame is
  delivered in order. A truncated file ends after its last good frame with ``stats.truncated`` set; "truncated"
  means data missing (see :mod:`edge_runtime.container`), not fewer frames than an index that counts
  "dropped frame" placeholders.
* **Images** (file, directory, glob): corrupt files are counted, named in ``stats.bad_files`` and skipped; sizes
  are checked on the header before decoding (:mod:`edge_runtime.images`).

Every source drops a frame over ``max_side`` or ``MAX_IMAGE_PIXELS`` (counted in ``stats.frames_bad``, the
reason in ``stats.last_error``) instead of delivering it.
"""

from __future__ import annotations

import contextlib
import glob as globmod
import itertools
import math
import os
import re
import stat
import threading
import time
import urllib.parse
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty, Full, Queue
from typing import Any

from edge_runtime.container import ContainerLayout, probe_container
from edge_runtime.errors import BadDataError, SourceLostError, UsageError
from edge_runtime.images import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE, load_image, size_problem, to_bgr8

# isort: split
# cv2 after edge_runtime.images, which sets OpenCV's decoder pixel limit: OpenCV reads it once, when it loads.
import cv2
import numpy as np

VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mjpg", ".mjpeg", ".mpg", ".mpeg", ".ts", ".wmv", ".flv"}
)
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
URL_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://")

# A container's frame count is an estimate for some formats (duration x fps); allow this much slack before
# calling a video truncated.
TRUNCATION_SLACK_FRAMES = 2
# Every wait is sliced this fine so that close() from another thread and Ctrl-C in the main thread are seen.
_WAIT_SLICE = 0.1
# How long close() waits for a capture/reader thread to finish releasing its capture before giving up on it.
_CLOSE_JOIN = 0.5

CaptureFactory = Callable[[Any], Any]


@dataclass(frozen=True)
class Frame:
    """One frame as delivered by a source.

    index: 0-based position in the source's own sequence: the frame number for video files, the position in the
        sorted file list for images, the capture sequence number for live sources. Gaps mean frames that were
        not delivered (live drops, skipped bad images).
    timestamp: seconds; the video position for files, ``time.monotonic()`` at capture for live sources, the
        index for images.
    image: (H, W, 3) uint8 BGR, C-contiguous.
    name: file name for images (relative to the folder or glob root), "" otherwise.
    """

    index: int
    timestamp: float
    image: np.ndarray
    name: str = ""


@dataclass
class SourceStats:
    """Counters a caller reports at the end of a run. Updated by the source's threads; read them after iterating."""

    frames_read: int = 0  # good frames the source produced (live: distinct frames captured, dropped ones included)
    frames_delivered: int = 0  # frames yielded to the consumer
    frames_dropped: int = 0  # live: overwritten in the one-slot buffer before the consumer took them
    frames_repeated: int = 0  # live: identical to the previous frame, not delivered again
    frames_bad: int = 0  # images skipped as corrupt/unreadable/too large; frames of an unusable format
    bad_files: list[str] = field(default_factory=list)
    reconnects: int = 0  # reconnect attempts started after a loss
    open_failures: int = 0  # attempts that failed to open or did not open in time
    no_frame_events: int = 0  # read timeouts: opened, but no frame for read_timeout
    stale_events: int = 0  # the same frame for stale_after
    truncated: bool = False  # video: data missing (cut short, fewer pictures than it holds) or nothing decodable
    frames_expected: int | None = None  # video: frame count the container claims, when it claims one
    last_error: str = ""
    pictures_in_file: int | None = None  # video (AVI): pictures the file holds, dropped-frame placeholders not counted
    frames_empty: int = 0  # video (AVI): empty "dropped frame" entries, counted in frames_expected but no picture
    note: str = ""  # not an error: e.g. what was read from a file whose frame count includes placeholders


class Source:
    """Base of every source: iterate for frames, close when done (or use it as a context manager)."""

    live: bool = False
    description: str = ""
    fps: float = 0.0  # as claimed by the container/backend; 0.0 when unknown

    def __init__(self) -> None:
        self.stats = SourceStats()

    def __iter__(self) -> Iterator[Frame]:
        raise NotImplementedError

    def close(self) -> None:
        """Stop background threads and release the capture; returns within about a second."""

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.description!r}>"


def open_source(
    spec: str | int | os.PathLike,
    *,
    open_timeout: float = 5.0,
    read_timeout: float = 5.0,
    stale_after: float = 5.0,
    max_reconnects: int = 5,
    backoff_initial: float = 0.5,
    backoff_max: float = 8.0,
    queue_size: int = 8,
    capture_factory: CaptureFactory | None = None,
    max_side: int = MAX_IMAGE_SIDE,
) -> Source:
    """Open a camera, stream URL, video file, image file, image folder (recursive) or glob pattern.

    Cameras are an index (``0``, ``"0"``) or a device path (``/dev/video0``). ``capture_factory(spec)``
    returns an object with ``isOpened() read() release() get(prop)`` like ``cv2.VideoCapture``; it receives an
    ``int`` for camera indexes and a ``str`` otherwise. Live sources start capturing in the background at once;
    errors in opening them surface while iterating (SourceLostError, exit 5). Missing paths, unsupported files
    and videos that do not open raise BadDataError (exit 3) here; bad options and negative camera indexes raise
    UsageError (exit 2). A frame or image with a side over ``max_side`` (the model's limit, say) or more than
    ``MAX_IMAGE_PIXELS`` pixels is not delivered: it is counted in ``stats.frames_bad`` with the reason.
    """
    _check_positive(open_timeout=open_timeout, read_timeout=read_timeout, stale_after=stale_after)
    _check_int("max_reconnects", max_reconnects, 0)
    if not (backoff_initial >= 0 and backoff_max >= backoff_initial):
        raise UsageError(f"backoff must satisfy 0 <= initial <= max, got {backoff_initial!r}, {backoff_max!r}")
    _check_int("queue_size", queue_size, 1)
    _check_int("max_side", max_side, 1)

    live_kw = dict(
        open_timeout=open_timeout,
        read_timeout=read_timeout,
        stale_after=stale_after,
        max_reconnects=max_reconnects,
        backoff_initial=backoff_initial,
        backoff_max=backoff_max,
        max_side=max_side,
    )
    factory = capture_factory or _default_capture_factory(open_timeout, read_timeout)

    if isinstance(spec, bool):
        raise UsageError(f"source {spec!r}: not a camera index, URL or path")
    if isinstance(spec, int):
        return _camera(spec, factory, live_kw)
    spec = os.fspath(spec)
    if not isinstance(spec, str):
        raise UsageError(f"source {spec!r}: not a camera index, URL or path")
    if re.fullmatch(r"\s*-?\d+\s*", spec):  # "-1" too: a mistyped camera, not a missing file
        return _camera(int(spec.strip()), factory, live_kw)
    lowered = spec.lower()
    if lowered.startswith(URL_SCHEMES):
        return LiveSource(spec, redact_url(spec), factory, **live_kw)
    if re.match(r"^[a-z][a-z0-9+.-]*://", lowered):
        raise BadDataError(f"{redact_url(spec)}: unsupported URL scheme (use rtsp, rtsps, http or https)")

    path = Path(spec)
    with contextlib.suppress(OSError):
        if stat.S_ISCHR(path.stat().st_mode):  # /dev/video0 and friends: a camera by device path
            return LiveSource(spec, f"camera {spec}", factory, **live_kw)
    if path.is_dir():
        files = _walk_images(path)
        if not files:
            raise BadDataError(f"{spec}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) in this folder")
        return ImageSource(files, path, spec, max_side=max_side)
    if path.exists():
        ext = path.suffix.lower()
        if ext in VIDEO_EXTENSIONS:
            return VideoFileSource(spec, factory, queue_size=queue_size, max_side=max_side)
        if ext in IMAGE_EXTENSIONS:
            return ImageSource([path], path.parent, spec, max_side=max_side)
        raise BadDataError(f"{spec}: unsupported file type {ext or '(no extension)'!r}")
    if globmod.has_magic(spec):
        files = _glob_images(spec)
        if not files:
            raise BadDataError(f"{spec}: no image files match this pattern")
        return ImageSource(files, _glob_root(spec), spec, max_side=max_side)
    raise BadDataError(f"{spec}: no such file or directory")


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***``, so that messages and logs never carry credentials."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{parts.username or ''}:***@{host}"
    with contextlib.suppress(ValueError):
        if parts.port is not None:
            netloc += f":{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


# --------------------------------------------------------------------------------------------------- live


class LiveSource(Source):
    """A camera or a stream: newest frame wins, reconnect with capped exponential backoff, SourceLostError at last.

    Attempt accounting: the first open and every reconnect is an attempt; an attempt fails when it does not
    open within ``open_timeout``, delivers no frame for ``read_timeout``, or only the same frame for
    ``stale_after``. After ``max_reconnects`` consecutive failed reconnects SourceLostError is raised from the
    iterator. A delivered new frame resets the count.

    A frame over the size caps is dropped and counted. When it is the first frame of a connection the attempt
    fails and the source reconnects: OpenCV's FFmpeg backend sizes its output by the first frame and scales every
    later frame to that size (measured with an MJPEG stream), so after an oversized first frame every frame would
    be oversized (and cost seconds and gigabytes each); an oversized frame later in a stream arrives scaled down.
    A capture that then only sends oversized frames runs into the read timeout, as if it sent nothing.
    """

    live = True

    def __init__(
        self,
        spec: Any,
        description: str,
        factory: CaptureFactory,
        *,
        open_timeout: float,
        read_timeout: float,
        stale_after: float,
        max_reconnects: int,
        backoff_initial: float,
        backoff_max: float,
        max_side: int = MAX_IMAGE_SIDE,
    ) -> None:
        super().__init__()
        self.description = description
        self._max_side = min(max_side, MAX_IMAGE_SIDE)
        self._spec = spec
        self._factory = factory
        self._open_timeout = open_timeout
        self._read_timeout = read_timeout
        self._stale_after = stale_after
        self._max_reconnects = max_reconnects
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max

        self._cond = threading.Condition()
        # Every capture thread carries the generation it was started for; bumping it abandons that thread,
        # whose late results are then ignored. Guarded by _cond, like everything below.
        self._gen = 0
        self._state = "idle"  # opening | running | failed | idle
        self._failure = ""
        self._attempt_t0 = 0.0
        self._last_any = 0.0  # monotonic time of the last frame of any kind (read timeout)
        self._last_new = 0.0  # ... of the last frame that differed from the one before (staleness)
        self._last_sig: tuple | None = None
        self._slot: tuple[int, float, np.ndarray] | None = None
        self._seq = 0
        self._failures = 0
        self._closed = False
        self._lost: SourceLostError | None = None
        self._thread: threading.Thread | None = None
        with self._cond:
            self._start_attempt()

    def __iter__(self) -> Iterator[Frame]:
        while True:
            frame = self._next_frame()
            if frame is None:
                return
            yield frame

    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._gen += 1
            self._slot = None
            self._cond.notify_all()
            thread = self._thread
        # A thread stuck in read() is left behind: it releases its capture itself if the call ever returns.
        if thread is not None and thread is not threading.current_thread():
            thread.join(_CLOSE_JOIN)

    # Called with _cond held.
    def _start_attempt(self) -> None:
        self._gen += 1
        self._state = "opening"
        self._failure = ""
        now = time.monotonic()
        self._attempt_t0 = self._last_any = self._last_new = now
        self._thread = threading.Thread(
            target=self._capture_loop, args=(self._gen,), name=f"edgeae-capture-{self._gen}", daemon=True
        )
        self._thread.start()

    def _next_frame(self) -> Frame | None:
        with self._cond:
            while True:
                if self._closed:
                    return None
                if self._lost is not None:
                    raise self._lost
                if self._slot is not None:
                    index, stamp, image = self._slot
                    self._slot = None
                    self._failures = 0
                    self.stats.frames_delivered += 1
                    return Frame(index, stamp, image, "")
                reason = self._check_attempt(time.monotonic())
                if reason is None:
                    self._cond.wait(_WAIT_SLICE)
                else:
                    self._lose(reason)

    def _check_attempt(self, now: float) -> str | None:
        if self._state == "failed":
            return self._failure
        if self._state == "opening" and now - self._attempt_t0 >= self._open_timeout:
            self.stats.open_failures += 1
            return f"did not open within {self._open_timeout:g} s"
        if self._state == "running":
            if now - self._last_any >= self._read_timeout:
                self.stats.no_frame_events += 1
                return f"no frame for {self._read_timeout:g} s"
            if now - self._last_new >= self._stale_after:
                self.stats.stale_events += 1
                return f"the same frame repeated for {self._stale_after:g} s"
        return None

    def _lose(self, reason: str) -> None:
        self._gen += 1  # abandon the current capture thread
        self._state = "idle"
        self._failures += 1
        self.stats.last_error = reason
        if self._failures > self._max_reconnects:
            self._lost = SourceLostError(
                f"{self.description}: {reason}; gave up after {self._max_reconnects} reconnect attempt(s)"
            )
            raise self._lost
        delay = min(self._backoff_initial * 2 ** (self._failures - 1), self._backoff_max)
        deadline = time.monotonic() + delay
        while not self._closed:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._cond.wait(min(left, _WAIT_SLICE))
        if self._closed:
            return
        self.stats.reconnects += 1
        self._start_attempt()

    def _fail(self, gen: int, reason: str, *, kind: str) -> None:
        with self._cond:
            if gen != self._gen:
                return
            if kind == "open":
                self.stats.open_failures += 1
            elif kind == "oversize":
                self.stats.frames_bad += 1
            elif kind == "timeout":
                self.stats.no_frame_events += 1
            self._state = "failed"
            self._failure = reason
            self._cond.notify_all()

    def _capture_loop(self, gen: int) -> None:
        cap = None
        try:
            try:
                cap = self._factory(self._spec)
                opened = bool(cap.isOpened())
            except Exception as exc:  # backends raise cv2.error and worse for odd devices and URLs
                self._fail(gen, f"could not open ({_one_line(exc)})", kind="open")
                return
            if not opened:
                self._fail(gen, "could not open (no such device, unreachable, or refused)", kind="open")
                return
            with self._cond:
                if gen != self._gen:
                    return
                self._state = "running"
                self._last_any = self._last_new = time.monotonic()
            self._read_loop(gen, cap)
        finally:
            if cap is not None:
                with contextlib.suppress(Exception):
                    cap.release()

    def _read_loop(self, gen: int, cap: Any) -> None:
        good = 0  # frames of this connection within the caps
        while True:
            with self._cond:
                if gen != self._gen:
                    return
            called = time.monotonic()
            try:
                ok, raw = cap.read()
            except Exception as exc:
                self._fail(gen, f"read failed ({_one_line(exc)})", kind="read")
                return
            now = time.monotonic()
            if not ok or raw is None:
                if now - called >= 0.9 * self._read_timeout:
                    # The backend's own read timeout fired (FFmpeg honours ours): the same event as our deadline.
                    self._fail(gen, f"no frame for {self._read_timeout:g} s", kind="timeout")
                else:
                    self._fail(gen, "the source stopped delivering frames", kind="read")
                return
            problem = _frame_problem(raw, self._max_side)  # before to_bgr8, which may copy a huge frame
            image = None if problem else to_bgr8(raw)
            if problem and not good:
                self._fail(gen, f"oversized first frame: {problem}", kind="oversize")
                return
            if problem:
                with self._cond:
                    self.stats.frames_bad += 1
                    self.stats.last_error = f"frame dropped: {problem}"
                continue  # not a frame for the read timeout: a capture sending only these is reconnected
            good += image is not None
            sig = None if image is None else (image.shape, zlib.crc32(image))
            with self._cond:
                if gen != self._gen:
                    return
                self._last_any = now
                if image is None:
                    self.stats.frames_bad += 1
                    continue
                if sig == self._last_sig:
                    self.stats.frames_repeated += 1
                    continue
                self._last_sig = sig
                self._last_new = now
                self.stats.frames_read += 1
                if self._slot is not None:
                    self.stats.frames_dropped += 1
                self._slot = (self._seq, now, image)
                self._seq += 1
                self._cond.notify_all()


def _camera(index: int, factory: CaptureFactory, live_kw: dict) -> LiveSource:
    if index < 0:
        raise UsageError(f"camera {index}: a camera index must be 0 or more (for a file of that name, write ./{index})")
    return LiveSource(index, f"camera {index}", factory, **live_kw)


# --------------------------------------------------------------------------------------------------- video file

_END = object()


class VideoFileSource(Source):
    """Every frame of a video file, in order; a reader thread decodes ahead into a bounded queue."""

    live = False

    def __init__(
        self, path: str, factory: CaptureFactory, *, queue_size: int = 8, max_side: int = MAX_IMAGE_SIDE
    ) -> None:
        super().__init__()
        self.description = path
        self._max_side = min(max_side, MAX_IMAGE_SIDE)
        try:
            cap = factory(path)
            opened = bool(cap.isOpened())
        except Exception as exc:
            raise BadDataError(f"{path}: cannot open as video ({_one_line(exc)})") from None
        if not opened:
            with contextlib.suppress(Exception):
                cap.release()
            raise BadDataError(f"{path}: cannot open as video (not a video, damaged header, or unsupported codec)")
        self.fps = _finite_positive(_get(cap, cv2.CAP_PROP_FPS))
        claimed = _finite_positive(_get(cap, cv2.CAP_PROP_FRAME_COUNT))
        self.stats.frames_expected = int(round(claimed)) if claimed > 0 else None
        self._cap = cap
        self._queue: Queue = Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._reader, name="edgeae-video-reader", daemon=True)
        self._thread.start()

    def __iter__(self) -> Iterator[Frame]:
        while not self._stop.is_set():
            try:
                item = self._queue.get(timeout=_WAIT_SLICE)
            except Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    break
                continue
            if item is _END:
                break
            self.stats.frames_delivered += 1
            yield item
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(_CLOSE_JOIN * 2)
        # Free decoded frames held for a consumer that is gone.
        with contextlib.suppress(Empty):
            while True:
                self._queue.get_nowait()

    def _put(self, item: object) -> bool:
        # Blocks while the queue is full (files lose no frames) but notices close() within a slice.
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_WAIT_SLICE)
                return True
            except Full:
                continue
        return False

    def _put_frame(self, frame: Frame) -> bool:
        self.stats.frames_read += 1  # counts good frames only: a withheld suspect frame is not one
        return self._put(frame)

    def _reader(self) -> None:
        # One decoded frame is held back until the next one decodes: FFmpeg decodes a packet cut off by truncation
        # partially and returns it as a good frame (measured: 3 of 6 cut points of an MJPG AVI gave a last frame
        # with garbage), so in a truncated file the last decoded frame is suspect and withheld.
        cap = self._cap
        decoded = 0
        held: Frame | None = None
        prev_stamp: float | None = None
        damaged = False
        try:
            while not self._stop.is_set():
                try:
                    ok, raw = cap.read()
                except cv2.error as exc:  # a damaged packet can surface as an exception instead of ok=False
                    self.stats.last_error = f"decode failed at frame {decoded} ({_one_line(exc)})"
                    damaged = True
                    break
                if not ok or raw is None:
                    break
                image = to_bgr8(raw)
                if image is None:
                    self.stats.frames_bad += 1
                    self.stats.last_error = f"frame {decoded} has an unusable pixel format {raw.dtype} {raw.shape}"
                    damaged = True
                    break
                stamp = _video_timestamp(_get(cap, cv2.CAP_PROP_POS_MSEC), decoded, self.fps, prev_stamp)
                prev_stamp = stamp
                decoded += 1
                problem = _frame_problem(image, self._max_side)
                if problem:  # skipped, not the end: the frames after it are still delivered
                    self.stats.frames_bad += 1
                    self.stats.last_error = f"frame {decoded - 1} dropped: {problem}"
                    continue
                if held is not None and not self._put_frame(held):
                    return
                held = Frame(decoded - 1, stamp, image, "")
            else:
                return  # closed early: no verdict on truncation
            self._finish(decoded, held, damaged)
        except BaseException as exc:  # a bug, not bad data: hand it to the consumer instead of dying silently
            self._error = exc
        finally:
            with contextlib.suppress(Exception):
                cap.release()
            self._put(_END)

    def _finish(self, decoded: int, held: Frame | None, damaged: bool) -> None:
        """The verdict at the end of the file: deliver the held frame, or withhold it from a truncated file."""
        layout = probe_container(self.description)
        if layout is not None:
            self.stats.pictures_in_file = layout.pictures
            self.stats.frames_empty = layout.empty_entries
        reason = "" if damaged else _truncation(decoded, self.stats.frames_expected, layout)
        if damaged or reason:
            self.stats.truncated = True
            if reason:
                self.stats.last_error = reason
            if held is not None:
                self.stats.last_error += f"; frame {held.index} withheld as possibly incomplete"
            return
        if layout is not None and layout.empty_entries:
            self.stats.note = (
                f"{self.stats.frames_expected or '?'} frames declared, {layout.empty_entries} of them empty "
                f"dropped-frame entries; {decoded} of {layout.pictures} pictures read"
            )
        if held is not None:
            self._put_frame(held)


def _truncation(decoded: int, expected: int | None, layout: ContainerLayout | None) -> str:
    """Why a video file that decoded ``decoded`` frames is truncated, or "" when nothing is missing.

    The container's structure decides where it can (a file cut inside its picture data; AVI: fewer pictures
    decoded than its chunks hold, placeholders not counted); otherwise the frame count the container declares.
    """
    if decoded == 0:
        return f"ended after 0 of {expected or '?'} frames (nothing decodable)"
    if layout is not None and layout.cut:
        return f"ended after {decoded} of {expected or '?'} frames: the file is cut short inside its picture data"
    want = layout.pictures if layout is not None and layout.pictures is not None else expected
    if want is not None and want - decoded > TRUNCATION_SLACK_FRAMES:
        return f"ended after {decoded} of {want} frames"
    return ""


def _video_timestamp(pos_msec: float, index: int, fps: float, prev: float | None) -> float:
    # Some containers report no or a stuck position; fall back to index/fps, and keep timestamps increasing.
    if math.isfinite(pos_msec) and pos_msec >= 0 and (prev is None or pos_msec / 1000.0 > prev):
        return pos_msec / 1000.0
    if fps > 0 and (prev is None or index / fps > prev):
        return index / fps
    return 0.0 if prev is None else prev + 1e-3


# --------------------------------------------------------------------------------------------------- images


class ImageSource(Source):
    """Images from a list of files; unreadable, corrupt or oversized ones are counted and skipped."""

    live = False

    def __init__(self, files: list[Path], root: Path, description: str, *, max_side: int = MAX_IMAGE_SIDE) -> None:
        super().__init__()
        self.description = description
        self.files = files
        self._root = root
        self._max_side = max_side
        self._closed = False

    def __iter__(self) -> Iterator[Frame]:
        for index, path in enumerate(self.files):
            if self._closed:
                return
            name = self._name(path)
            image, reason = _read_image(path, self._max_side)
            if image is None:
                self.stats.frames_bad += 1
                self.stats.bad_files.append(name)
                self.stats.last_error = f"{name}: {reason}"
                continue
            self.stats.frames_read += 1
            self.stats.frames_delivered += 1
            yield Frame(index, float(index), image, name)

    def close(self) -> None:
        self._closed = True

    def _name(self, path: Path) -> str:
        try:
            return path.relative_to(self._root).as_posix()
        except ValueError:
            return path.name


def _read_image(path: Path, max_side: int = MAX_IMAGE_SIDE) -> tuple[np.ndarray | None, str]:
    # The caps are looked up here, at call time, so that tests can lower them on this module.
    return load_image(
        path, max_bytes=MAX_IMAGE_BYTES, max_side=min(max_side, MAX_IMAGE_SIDE), max_pixels=MAX_IMAGE_PIXELS
    )


def _natural_key(text: str) -> list:
    # frame_2 before frame_10: image sequences are numbered without padding more often than with.
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text)]


def _walk_images(root: Path) -> list[Path]:
    found: list[Path] = []
    for folder, dirs, names in os.walk(root):
        # Hidden folders and files (.thumbnails, macOS ._ resource forks) are never frames.
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in names:
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                found.append(Path(folder) / name)
    return sorted(found, key=lambda p: _natural_key(p.relative_to(root).as_posix()))


def _glob_images(pattern: str) -> list[Path]:
    paths = [Path(p) for p in globmod.glob(pattern, recursive=True)]
    return sorted(
        (p for p in paths if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()),
        key=lambda p: _natural_key(p.as_posix()),
    )


def _glob_root(pattern: str) -> Path:
    # Names of globbed images are relative to the folder before the first wildcard, so that a/x.png and
    # b/x.png stay distinct.
    fixed = list(itertools.takewhile(lambda part: not globmod.has_magic(part), Path(pattern).parts[:-1]))
    return Path(*fixed) if fixed else Path(".")


# --------------------------------------------------------------------------------------------------- helpers


def _default_capture_factory(open_timeout: float, read_timeout: float) -> CaptureFactory:
    def factory(spec: Any) -> Any:
        if isinstance(spec, int) or spec.startswith("/dev/"):
            cap = cv2.VideoCapture(spec)  # any backend: V4L2 on Linux (FFMPEG here lacks libavdevice)
            # Backends that do not know the property just return False; the capture thread's deadline rules.
            with contextlib.suppress(cv2.error):
                cap.set(cv2.CAP_PROP_READ_TIMEOUT_MSEC, read_timeout * 1000.0)
            return cap
        if spec.lower().startswith(URL_SCHEMES):
            # FFMPEG honours both (measured with http://); our own deadlines still apply on top.
            params = [
                cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
                max(1, int(open_timeout * 1000)),
                cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                max(1, int(read_timeout * 1000)),
            ]
            return cv2.VideoCapture(spec, cv2.CAP_FFMPEG, params)
        # Files go to FFMPEG directly, so that no other backend reinterprets a name like img_%02d.png.
        return cv2.VideoCapture(spec, cv2.CAP_FFMPEG)

    return factory


def _frame_problem(image: Any, max_side: int) -> str:
    if not isinstance(image, np.ndarray) or image.ndim not in (2, 3):
        return ""  # not a frame at all: to_bgr8 says so
    return size_problem(image.shape[1], image.shape[0], max_side=max_side, max_pixels=MAX_IMAGE_PIXELS)


def _get(cap: Any, prop: int) -> float:
    try:
        return float(cap.get(prop))
    except Exception:
        return -1.0


def _finite_positive(value: float) -> float:
    # OpenCV reports "unknown" as -1, 0 or -2**63 depending on backend and container.
    return value if math.isfinite(value) and 0 < value < 1e12 else 0.0


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:200] or type(exc).__name__


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UsageError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise UsageError(f"{name} must be a number > 0, got {value!r}")
