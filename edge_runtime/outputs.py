"""Sinks: where the frame loop's results go. One interface for all: ``write(value, index, name)``, ``close()``,
``abort()``.

What every sink promises (RELIABILITY 17, 28, 31, 35):

- its path is checked before the run (:func:`check_output`): an output that is the input (same inode), that
  exists and is not a regular file (a FIFO, ``/dev/null``, a folder where a file is expected) is refused;
- files are staged (a hidden temp file or folder beside the target) and published by ``close()`` only, so a run
  that fails never replaces a previous output, and ``abort()`` leaves nothing behind;
- every write is checked: an ``OSError`` becomes :class:`~edge_runtime.errors.OutputError` (exit 3) naming the
  path, and a video is read back on ``close()`` because ``cv2.VideoWriter`` ignores write errors;
- events are a log: appended to the final file, flushed at each line and fsynced at most a second later, so a
  ``kill -9`` loses at most the last second (:class:`EventsSink`).

Sinks know nothing of tasks: the loop hands each one the value it asked for (an image, an event, a record, a
vector) with the frame's index, name and timestamp.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import stat
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_runtime.errors import BadDataError, OutputError, UsageError, output_error
from edge_runtime.io import atomic_path, fsync_dir, umask
from edge_runtime.task import as_bgr

IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
# The one table of video outputs. .mkv is lossless (FFV1): the format to choose when the pixels matter.
VIDEO_FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "FFV1"}
EVENTS_FSYNC_S = 1.0  # an event is on disk at most this long after it was written


def output_kind(output: str | os.PathLike) -> str:
    """``"image"``, ``"video"`` or ``"folder"`` by the path's extension (an existing folder, or no extension:
    a folder); an unknown extension is a UsageError."""
    path = Path(output)
    ext = path.suffix.lower()
    try:
        is_dir = stat.S_ISDIR(os.stat(path).st_mode)
    except OSError:  # missing, or a name the system refuses (too long): the write will say so
        is_dir = False
    if is_dir:
        return "folder"
    if ext in IMAGE_EXTS:
        return "image"
    if ext in VIDEO_FOURCC:
        return "video"
    if ext:
        known = ", ".join(sorted(IMAGE_EXTS | set(VIDEO_FOURCC)))
        raise UsageError(f"{output}: unknown output extension {ext!r} (use {known}, or a folder)")
    return "folder"


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_output(output: str | os.PathLike, kind: str, inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """Refuse an output that would destroy something, before anything runs (UsageError, exit 2).

    ``kind``: "file" (one file: image, video, stream, events, stats) or "folder". ``inputs``: paths the run
    reads (a file, or a folder and its files); an output that is one of them (same inode) is refused.
    """
    path = Path(output)
    for src in inputs:
        if _same_file(path, Path(src)):
            raise UsageError(f"{path}: is the input; write the output somewhere else")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return path
    except OSError as exc:
        raise output_error(path, exc) from None
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        raise UsageError(f"{path}: exists and is not a regular file (a device, FIFO or socket); refusing to replace it")
    if kind == "folder":
        if not stat.S_ISDIR(st.st_mode):
            raise UsageError(f"{path}: exists and is not a folder")
    elif stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{path}: is a folder; expected a file name")
    return path


def encode_image(path: Path, image: np.ndarray) -> bytes:
    """``image`` (H, W, C) uint8 encoded by ``path``'s extension (PNG when it has none)."""
    ok, buf = cv2.imencode(path.suffix.lower() or ".png", image)
    if not ok:
        raise BadDataError(f"{path}: OpenCV could not encode an image of shape {image.shape}")
    return buf.tobytes()


def write_image(path: str | os.PathLike, image: np.ndarray) -> None:
    """Encode ``image`` (H, W, C) uint8 by the file's extension and write it atomically (OSError -> exit 3)."""
    path = Path(path)
    data = encode_image(path, image)
    try:
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
    except OSError as exc:
        raise output_error(path, exc) from None


class ImageSink:
    """One image file: the frame is kept and written atomically on close(); a second frame is a usage error."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.image: np.ndarray | None = None
        self.frames = 0

    def write(self, image: np.ndarray, index: int = 0, name: str = "", timestamp: float = 0.0) -> None:
        if self.image is not None:
            raise UsageError(f"{self.path}: an image output takes one frame; write a folder or a video")
        self.image = image
        self.frames = 1

    def close(self) -> None:
        if self.image is not None:
            write_image(self.path, self.image)

    def abort(self) -> None:
        self.image = None


def frame_file_name(index: int, name: str, ext: str) -> str:
    """``a/b.png`` -> ``a__b.png`` (flat but unique), or ``frame_000012.png`` for frames without a name."""
    if not name:
        return f"frame_{index:06d}{ext}"
    parts = Path(name).with_suffix("").parts
    return "__".join(parts) + ext


class FolderSink:
    """One image per frame, staged in a hidden folder beside the target and moved into it on close().

    A run that fails leaves the target as it was; files of the same name in an existing folder are replaced on
    success only.
    """

    def __init__(self, path: str | os.PathLike, ext: str = ".png"):
        self.path = Path(path)
        self.ext = ext
        self.frames = 0
        self.stage: Path | None = None

    def _stage(self) -> Path:
        if self.stage is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                while True:
                    tmp = self.path.parent / f".{self.path.name}.{secrets.token_hex(6)}"
                    try:
                        tmp.mkdir()  # honours the umask (tempfile.mkdtemp would make it 0700)
                        break
                    except FileExistsError:
                        continue
            except OSError as exc:
                raise output_error(self.path, exc) from None
            self.stage = tmp
        return self.stage

    def write(self, image: np.ndarray, index: int = 0, name: str = "", timestamp: float = 0.0) -> None:
        target = self._stage() / frame_file_name(index, name, self.ext)
        data = encode_image(target, image)
        try:
            with open(target, "wb") as fh:
                fh.write(data)
        except OSError as exc:
            raise output_error(self.path / target.name, exc) from None
        self.frames += 1

    def close(self) -> None:
        if self.stage is None:
            return
        try:
            for entry in os.scandir(self.stage):
                with open(entry.path, "rb") as fh:
                    os.fsync(fh.fileno())
            if not os.path.lexists(self.path):
                os.replace(self.stage, self.path)
            else:
                for entry in os.scandir(self.stage):
                    os.replace(entry.path, self.path / entry.name)
                self.stage.rmdir()
            fsync_dir(self.path)
            fsync_dir(self.path.parent)
        except OSError as exc:
            self.abort()
            raise output_error(self.path, exc) from None
        self.stage = None

    def abort(self) -> None:
        if self.stage is not None:
            shutil.rmtree(self.stage, ignore_errors=True)
            self.stage = None


def count_video_frames(path: str | os.PathLike, limit: int) -> int:
    """Frames a decoder finds in ``path``: the container's count when it has one, else counted by grabbing
    (at most ``limit + 1``)."""
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            return 0
        n = 0
        while n <= limit and cap.grab():
            n += 1
        return n
    finally:
        cap.release()


class VideoSink:
    """cv2.VideoWriter into a hidden temp file, verified and renamed over ``path`` on close().

    Odd sides are padded by repeating the last row or column (FFmpeg's 4:2:0 encoders would drop them); frames
    of another size than the first are resized to it. ``close()`` reads the file back: fewer frames than were
    written (a full disk: ``cv2.VideoWriter`` reports nothing) is an OutputError, and the previous file stays.
    """

    def __init__(self, path: str | os.PathLike, fps: float = 25.0):
        self.path = Path(path)
        ext = self.path.suffix.lower()
        if ext not in VIDEO_FOURCC:
            raise UsageError(f"{self.path}: unsupported video extension (use {', '.join(sorted(VIDEO_FOURCC))})")
        self.fps = fps if fps and 1 <= fps <= 240 else 25.0
        self.tmp: Path | None = None
        self.writer: Any = None
        self.size: tuple[int, int] | None = None  # (w, h) as given
        self.pad = (0, 0)
        self.frames = 0

    def _open(self, w: int, h: int) -> None:
        ext = self.path.suffix.lower()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.parent / f".{self.path.name}.{secrets.token_hex(6)}{ext}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 & ~umask())
            os.close(fd)
        except OSError as exc:
            raise output_error(self.path, exc) from None
        self.tmp = tmp
        self.pad = (h % 2, w % 2)
        fourcc = cv2.VideoWriter_fourcc(*VIDEO_FOURCC[ext])
        self.writer = cv2.VideoWriter(str(tmp), fourcc, self.fps, (w + self.pad[1], h + self.pad[0]))
        if not self.writer.isOpened():
            self.abort()
            raise OutputError(f"{self.path}: OpenCV cannot write {VIDEO_FOURCC[ext]} video here; write a folder")
        self.size = (w, h)

    def write(self, image: np.ndarray, index: int = 0, name: str = "", timestamp: float = 0.0) -> None:
        frame = as_bgr(image)
        h, w = frame.shape[:2]
        if self.writer is None:
            self._open(w, h)
        elif (w, h) != self.size:
            frame = cv2.resize(frame, self.size, interpolation=cv2.INTER_AREA)
        if any(self.pad):
            frame = cv2.copyMakeBorder(frame, 0, self.pad[0], 0, self.pad[1], cv2.BORDER_REPLICATE)
        self.writer.write(np.ascontiguousarray(frame))
        self.frames += 1

    def close(self) -> None:
        if self.writer is None:
            return
        self.writer.release()
        self.writer = None
        assert self.tmp is not None
        found = count_video_frames(self.tmp, self.frames)
        if found < self.frames:
            self.abort()
            raise OutputError(
                f"{self.path}: only {found} of {self.frames} frames reached the file (disk full?); "
                "the previous file is unchanged"
            )
        try:
            with open(self.tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(self.tmp, self.path)
            fsync_dir(self.path.parent)
        except OSError as exc:
            self.abort()
            raise output_error(self.path, exc) from None
        self.tmp = None

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.release()
            self.writer = None
        if self.tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                self.tmp.unlink()
            self.tmp = None


class StreamSink:
    """Frame records into one ``.eae`` file (:class:`edge_runtime.bitstream.StreamWriter`: staged, renamed)."""

    def __init__(self, path: str | os.PathLike, model_id: bytes, quality: int):
        from edge_runtime.bitstream import StreamWriter

        self.path = Path(path)
        try:
            self.writer = StreamWriter(self.path, model_id, quality)
        except OSError as exc:
            raise output_error(self.path, exc) from None
        self.frames = 0

    def write(self, record: Any, index: int = 0, name: str = "", timestamp: float = 0.0) -> None:
        try:
            self.writer.add(record)
        except OSError as exc:
            self.writer.abort()
            raise output_error(self.path, exc) from None
        self.frames += 1

    def close(self) -> None:
        if self.frames == 0:
            self.writer.abort()
            return
        try:
            self.writer.close()
        except OSError as exc:
            raise output_error(self.path, exc) from None

    def abort(self) -> None:
        self.writer.abort()


class EventsSink:
    """Events as JSON lines appended to ``path`` (a log: earlier runs are kept, each run starts with a ``start``
    line). Each line is flushed to the OS when written (a killed process loses nothing) and fsynced at most
    :data:`EVENTS_FSYNC_S` later by a small timer thread (a power cut loses at most that)."""

    def __init__(self, path: str | os.PathLike, fsync_every: float = EVENTS_FSYNC_S):
        self.path = Path(path)
        self.fsync_every = fsync_every
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - held open for the run
        except OSError as exc:
            raise output_error(self.path, exc) from None
        self.frames = 0
        self._dirty = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._timer = threading.Thread(target=self._sync_loop, name="edgeae-events-fsync", daemon=True)
        self._timer.start()

    def write(self, event: dict, index: int = 0, name: str = "", timestamp: float = 0.0) -> None:
        line = json.dumps(event, separators=(",", ":"), default=_json_default) + "\n"
        with self._lock:
            try:
                self.fh.write(line)
                self.fh.flush()
            except OSError as exc:
                raise output_error(self.path, exc) from None
            self._dirty = True
        self.frames += 1

    def _sync(self) -> None:
        with self._lock:
            if self._dirty and not self.fh.closed:
                os.fsync(self.fh.fileno())
                self._dirty = False

    def _sync_loop(self) -> None:
        while not self._stop.wait(self.fsync_every):
            with contextlib.suppress(OSError, ValueError):
                self._sync()

    def close(self) -> None:
        self._stop.set()
        self._timer.join(timeout=2.0)
        try:
            self._sync()
        except OSError as exc:
            raise output_error(self.path, exc) from None
        finally:
            with contextlib.suppress(OSError):
                self.fh.close()

    def abort(self) -> None:
        # Events already written are kept: they describe frames that were processed.
        with contextlib.suppress(OSError):
            self.close()


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_json(path: str | os.PathLike, data: dict) -> None:
    """``data`` as indented JSON, written atomically (OSError -> OutputError, exit 3)."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(data, indent=2, default=_json_default) + "\n", encoding="utf-8")
    except OSError as exc:
        raise output_error(path, exc) from None


class ViewSink:
    """Annotated frames to the MJPEG view server (``edgeae run --serve``); gray frames become BGR.

    ``camera``: the stream's name when one server shows several cameras; ``owner``: close() stops the server (one
    camera) or leaves it to whoever started it (several)."""

    def __init__(self, server: Any, camera: str | None = None, owner: bool = True):
        self.server, self.camera, self.owner = server, camera, owner
        self.frames = 0

    def write(self, image: np.ndarray, index: int = 0, name: str = "", timestamp: float = 0.0) -> None:
        if self.camera is None:
            self.server.publish(as_bgr(image))
        else:
            self.server.publish(as_bgr(image), camera=self.camera)
        self.frames += 1

    def close(self) -> None:
        if self.owner:
            self.server.stop()

    def abort(self) -> None:
        self.close()


class StatusSink:
    """A camera's state for the view page and ``/metrics``: each ``frame`` event line's score, threshold and alarm
    go to ``server.set_status`` (route it on "event")."""

    def __init__(self, server: Any, camera: str = "default"):
        self.server, self.camera = server, camera
        self.frames = 0
        server.set_status(camera)  # listed on the page before its first frame

    def write(self, line: dict, index: int = 0, name: str = "", timestamp: float = 0.0) -> None:
        if line.get("type") == "frame":
            self.frames += 1
            fields = {k: line[k] for k in ("score", "threshold", "alarm", "bpp") if k in line}
            if fields:
                self.server.set_status(self.camera, **fields)

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


def loop_metrics(result: Any, source: Any, task: Any) -> dict[str, Any]:
    """What ``/metrics`` shows of one running loop (edge_runtime.metrics.CAMERA_METRICS keys)."""
    stages = result.clock.summary()
    s = source.stats
    pipeline = result.latency.summary().get("pipeline")  # measured per frame, not a sum of stage percentiles
    out = {"fps": result.fps_now(), "frames_processed": result.frames, "frames_dropped": s.frames_dropped,
           "reconnects": s.reconnects, "alarms": getattr(task, "counts", {}).get("alarms", 0)}  # fmt: skip
    if "inference" in stages:
        out["inference"] = stages["inference"]
    if pipeline:
        out["pipeline"] = pipeline
    return out


class WindowSink:
    """An OpenCV window (``--show``; needs a GUI build). Esc or q ends the run like Ctrl-C."""

    def __init__(self, title: str = "edgeae"):
        self.title = title
        self.frames = 0

    def write(self, image: np.ndarray, index: int = 0, name: str = "", timestamp: float = 0.0) -> None:
        cv2.imshow(self.title, image)
        self.frames += 1
        if cv2.waitKey(1) & 0xFF in (27, ord("q")):
            raise KeyboardInterrupt

    def close(self) -> None:
        with contextlib.suppress(cv2.error):
            cv2.destroyAllWindows()

    def abort(self) -> None:
        self.close()


def now_wall() -> float:
    """Wall-clock seconds since the epoch, rounded to milliseconds, for event lines."""
    return round(time.time(), 3)


class EmbeddingsSink:
    """Vectors into ``OUT.npy`` (float32 (N, D)) and ``OUT.index.jsonl`` (:mod:`edge_runtime.embed_index`), both
    written atomically on close(), the index after the vectors; with ``plot`` a PCA map with thumbnails.

    ``header``: what the index's header line records about the model (the embedder's ``header()``). Thumbnails
    need the frames: the loop routes the input frame's ``view`` to :meth:`add_thumbnail` when ``plot`` is set.
    """

    def __init__(self, path: str | os.PathLike, header: dict, *, plot: str | os.PathLike | None = None,
                 thumbnails: int = 200, title: str = ""):  # fmt: skip
        from edge_runtime import embed_index as ei

        self.ei = ei
        self.path = ei.check_out_path(path)
        self.plot = ei.check_plot_path(plot) if plot is not None else None
        self.header = dict(header)
        self.keeper = ei.ThumbnailKeeper(thumbnails) if self.plot is not None else None
        self.title = title
        self.vectors: list[np.ndarray] = []
        self.entries: list[dict] = []
        self.frames = 0
        self.explained: list[float] | None = None

    def write(self, vector: np.ndarray, index: int = 0, name: str = "", timestamp: float = 0.0) -> None:
        self.entries.append(self.ei.row_entry(len(self.vectors), index, name, timestamp))
        self.vectors.append(vector)
        self.frames += 1

    def thumbnails(self) -> _Thumbnails:
        """A sink for the input frames (route it after this one): the map's thumbnails."""
        return _Thumbnails(self)

    def close(self) -> None:
        if not self.vectors:
            return
        ei = self.ei
        matrix = np.stack(self.vectors).astype(np.float32)
        header = {**self.header, "rows": len(matrix), "dim": int(matrix.shape[1]), "sha256": ei.matrix_sha256(matrix)}
        lines = [json.dumps(header, sort_keys=True)] + [json.dumps(e, sort_keys=True) for e in self.entries]
        try:
            with atomic_path(self.path) as tmp, open(tmp, "wb") as fh:
                np.save(fh, matrix, allow_pickle=False)
            with atomic_path(ei.index_path(self.path)) as tmp:
                tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
            if self.plot is not None:
                points, ratio = ei.pca(matrix)
                ei.plot_map(points, self.keeper.as_list(len(matrix)) if self.keeper else None, self.plot,
                            title=f"{self.title}: {len(matrix)} frames",
                            axis_labels=(f"PC1 ({ratio[0]:.0%} of variance)", f"PC2 ({ratio[1]:.0%})"))  # fmt: skip
                self.explained = [float(r) for r in ratio]
        except OSError as exc:
            raise output_error(self.path, exc) from None

    def abort(self) -> None:
        self.vectors, self.entries = [], []


class _Thumbnails:
    def __init__(self, owner: EmbeddingsSink):
        self.owner = owner

    def write(self, image: np.ndarray, index: int = 0, name: str = "", timestamp: float = 0.0) -> None:
        if self.owner.keeper is not None:
            self.owner.keeper.add(len(self.owner.vectors) - 1, image)

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass
