"""What a video file's container really holds, read from its structure with the standard library.

A decoder that stops before the frame count a container declares is not proof of a damaged file: capture
software writes "dropped frame" placeholders into AVI files as zero-length video chunks, each with its own index
entry, so a real street-camera AVI declares 682 frames and holds 341 pictures, all of them decodable. What does
prove damage is structure: a file that ends inside data its own headers declare (bytes missing).

* **AVI** (RIFF, OpenDML ``AVIX`` extensions included): every ``movi`` list is walked chunk by chunk (8 bytes
  read per chunk); the first video stream's non-empty ``##dc``/``##db`` chunks are its pictures, the empty ones
  its placeholders; a ``movi`` list or a picture chunk that runs past the end of the file means the file was cut.
  A cut index (``idx1`` after the pictures) loses no picture and is not reported as cut.
* **MP4 / MOV**: the top-level boxes are walked; one that runs past the end of the file means the file was cut.
  Pictures are not counted (the sample tables hold no placeholders).

Anything else returns None: callers fall back to the frame count the decoder reports.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

# More chunks than this (over a day of 30 fps video with audio) and the walk gives up rather than take long.
MAX_CHUNKS = 5_000_000
_MP4_FIRST_BOXES = frozenset({b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"uuid"})


@dataclass(frozen=True)
class ContainerLayout:
    format: str  # "AVI" or "MP4"
    cut: bool  # the file ends inside picture data its structure declares
    pictures: int | None = None  # AVI: non-empty chunks of the first video stream
    empty_entries: int = 0  # AVI: zero-length chunks of that stream ("dropped frame" placeholders)


def probe_container(path: str | os.PathLike) -> ContainerLayout | None:
    """The layout of the video file at ``path``; None for an unknown container, an unreadable or odd file."""
    try:
        with Path(path).open("rb", buffering=0) as f:  # unbuffered: 8-byte reads, not 8 kB per chunk
            size = os.fstat(f.fileno()).st_size
            head = f.read(12)
            if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
                return _avi(f, size)
            if head[4:8] in _MP4_FIRST_BOXES:
                return _mp4(f, size)
    except (OSError, struct.error, ValueError):
        return None
    return None


class _Walk:
    """Counters of one AVI walk."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.chunks = 0
        self.video: bytes | None = None  # b"00" for stream 0, from the first 'vids' stream header
        self.pictures = 0
        self.empty = 0
        self.cut = False


def _avi(f: BinaryIO, size: int) -> ContainerLayout | None:
    walk = _Walk(size)
    pos = 0
    while pos + 12 <= size:  # RIFF 'AVI ' then any OpenDML RIFF 'AVIX' extensions
        f.seek(pos)
        fourcc, length, kind = struct.unpack("<4sI4s", f.read(12))
        if fourcc != b"RIFF" or kind not in (b"AVI ", b"AVIX"):
            break
        _walk_list(f, walk, pos + 12, min(pos + 8 + length, size), in_movi=False)
        if walk.chunks > MAX_CHUNKS:
            return None
        pos += 8 + length + (length & 1)
    if walk.video is None:
        return None
    return ContainerLayout("AVI", walk.cut, walk.pictures, walk.empty)


def _walk_list(f: BinaryIO, walk: _Walk, start: int, end: int, *, in_movi: bool) -> None:
    pos = start
    streams = 0
    while pos + 8 <= end and walk.chunks <= MAX_CHUNKS:
        walk.chunks += 1
        f.seek(pos)
        fourcc, length = struct.unpack("<4sI", f.read(8))
        chunk_end = pos + 8 + length
        if fourcc == b"LIST":
            f.seek(pos + 8)
            kind = f.read(4)
            movi = in_movi or kind == b"movi"
            if kind == b"movi" and chunk_end > walk.size:
                walk.cut = True
            if kind == b"strl":
                _read_stream_header(f, walk, pos + 12, min(chunk_end, end), streams)
                streams += 1
            else:
                _walk_list(f, walk, pos + 12, min(chunk_end, end), in_movi=movi)
        elif in_movi and walk.video is not None and fourcc[:2] == walk.video and fourcc[2:] in (b"dc", b"db"):
            if chunk_end > walk.size:
                walk.cut = True
            elif length == 0:
                walk.empty += 1
            else:
                walk.pictures += 1
        pos = chunk_end + (length & 1)


def _read_stream_header(f: BinaryIO, walk: _Walk, start: int, end: int, stream: int) -> None:
    f.seek(start)
    fourcc, length = struct.unpack("<4sI", f.read(8))
    if fourcc == b"strh" and length >= 4 and start + 12 <= end and f.read(4) == b"vids" and walk.video is None:
        walk.video = b"%02d" % stream


def _mp4(f: BinaryIO, size: int) -> ContainerLayout | None:
    pos = boxes = 0
    while pos + 8 <= size:
        boxes += 1
        if boxes > MAX_CHUNKS:
            return None
        f.seek(pos)
        length, _ = struct.unpack(">I4s", f.read(8))
        if length == 1:  # a 64-bit size follows
            (length,) = struct.unpack(">Q", f.read(8))
        elif length == 0:  # the last box, to the end of the file
            return ContainerLayout("MP4", cut=False)
        if length < 8:
            return None
        if pos + length > size:
            return ContainerLayout("MP4", cut=True)
        pos += length
    return ContainerLayout("MP4", cut=False)
