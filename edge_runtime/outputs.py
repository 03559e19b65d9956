"""Frame sinks: an image file, a folder of images or a video, each written so a failure loses nothing.

Images are written to a temp file beside the target and renamed; a video is written to a temp file and renamed
on ``close()``; ``abort()`` removes the temp file and leaves any previous output untouched.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import cv2
import numpy as np

from edge_runtime.errors import BadDataError, UsageError
from edge_runtime.io import atomic_path

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
# .mkv is lossless (FFV1): the format to choose when the pixels matter (benchmarks, the demo input).
VIDEO_FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".avi": "MJPG", ".mkv": "FFV1", ".mov": "mp4v"}


def write_image(path: str | os.PathLike, image: np.ndarray) -> None:
    """Encode ``image`` (H, W, C) uint8 by the file's extension and write it atomically."""
    path = Path(path)
    ok, buf = cv2.imencode(path.suffix.lower() or ".png", image)
    if not ok:
        raise BadDataError(f"{path}: OpenCV could not encode an image of shape {image.shape}")
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.tobytes())


class VideoSink:
    """cv2.VideoWriter into a temp file, renamed over ``path`` on close()."""

    def __init__(self, path: str | os.PathLike, fps: float = 25.0):
        self.path = Path(path)
        ext = self.path.suffix.lower()
        if ext not in VIDEO_FOURCC:
            raise UsageError(f"{self.path}: unsupported video extension (use {', '.join(sorted(VIDEO_FOURCC))})")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=ext, dir=self.path.parent)
        os.close(fd)
        self.tmp = Path(tmp)
        self.fps = fps if fps and 1 <= fps <= 240 else 25.0
        self.writer: cv2.VideoWriter | None = None
        self.size: tuple[int, int] | None = None
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        if frame.ndim == 2 or frame.shape[2] == 1:
            frame = cv2.cvtColor(frame.reshape(frame.shape[0], frame.shape[1]), cv2.COLOR_GRAY2BGR)
        h, w = frame.shape[:2]
        if self.writer is None:
            fourcc = cv2.VideoWriter_fourcc(*VIDEO_FOURCC[self.path.suffix.lower()])
            self.writer = cv2.VideoWriter(str(self.tmp), fourcc, self.fps, (w, h))
            if not self.writer.isOpened():
                self.abort()
                raise BadDataError(f"{self.path}: OpenCV cannot write this video format here")
            self.size = (w, h)
        elif (w, h) != self.size:
            frame = cv2.resize(frame, self.size, interpolation=cv2.INTER_AREA)
        self.writer.write(np.ascontiguousarray(frame))
        self.frames += 1

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
            self.writer = None
        if self.frames == 0:
            self.abort()
            return
        with open(self.tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.release()
            self.writer = None
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()


class FolderSink:
    """One image per frame in a folder, each written atomically, named after the input or the frame index."""

    def __init__(self, path: str | os.PathLike, ext: str = ".png"):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.ext = ext
        self.frames = 0

    def write(self, frame: np.ndarray, name: str = "", index: int | None = None) -> None:
        stem = Path(name).stem if name else f"frame_{(index if index is not None else self.frames):06d}"
        # Keep sub-folder structure flat but unique: a/b.png -> a__b.png
        if name and Path(name).parent != Path("."):
            stem = "__".join(Path(name).with_suffix("").parts)
        write_image(self.path / f"{stem}{self.ext}", frame)
        self.frames += 1

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


def output_kind(output: str | os.PathLike, n_frames_hint: int | None = None) -> str:
    """ "image", "video" or "folder" by the output path's extension (a path without one is a folder)."""
    ext = Path(output).suffix.lower()
    if ext in IMAGE_EXTS:
        return "image"
    if ext in VIDEO_FOURCC:
        return "video"
    if ext:
        raise UsageError(f"{output}: unknown output extension {ext!r} (image, video or a folder)")
    return "folder"
