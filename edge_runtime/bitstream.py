"""The versioned ``.eae`` container: a header, frame records, and a frame index at the end.

Layout (all integers little-endian; docs/bitstream.md has the byte-by-byte tables)::

    header   32 bytes   magic, version, flags, quality, model id, frame count, index offset, CRC32
    record   24 + n     one per frame: image and latent sizes, entropy payload of n bytes, CRC32
    ...
    index    12 * count (u64 offset, u32 length) of every record, in frame order

The header sits first but is completed last (frame count, index offset and CRC), so :class:`StreamWriter` can
write frames as they come and seek back once on close.  The header CRC covers the header's first 28 bytes and the
whole index; each record carries its own CRC, so one frame can be checked and decoded without reading the others.

Every reader here checks sizes against hard caps and against the bytes actually present before slicing or
allocating, and raises :class:`~edge_runtime.errors.BadDataError` with a one-line message for any violation.
"""

from __future__ import annotations

import operator
import os
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .errors import BadDataError
from .io import atomic_path

MAGIC = b"\x89EAE"  # high bit set: a 7-bit or text-mode transfer is caught at the first byte
VERSION = 1
MODEL_ID_BYTES = 8

MAX_SIDE = 16384
MAX_LATENT_CHANNELS = 1024
MAX_FRAMES = 1_000_000
MAX_LATENT_SYMBOLS = 1 << 28  # same cap as edge_runtime.entropy: 1 GiB of int32 latent per frame
MAX_PAYLOAD = (1 << 31) - 1
LATENT_STRIDE = 16

# magic, version, flags, quality, reserved, model id, frame count, index offset, header CRC
_HEADER = struct.Struct("<4sBBBB8sIQI")
_HEADER_CRC_AT = _HEADER.size - 4  # CRC covers header[:28] + index
# height, width, channels, flags, M, h, w, payload length
_RECORD = struct.Struct("<IIBBHHHI")
_CRC = struct.Struct("<I")
_INDEX_ENTRY = struct.Struct("<QI")
_INDEX_DTYPE = np.dtype([("offset", "<u8"), ("length", "<u4")])
RECORD_OVERHEAD = _RECORD.size + _CRC.size

assert _HEADER.size == 32 and _RECORD.size == 20 and _INDEX_ENTRY.size == _INDEX_DTYPE.itemsize == 12


@dataclass(frozen=True)
class FrameRecord:
    """One coded frame: the image size it decodes to, its latent shape (M, h, w) and the entropy payload."""

    height: int
    width: int
    channels: int
    latent_shape: tuple[int, int, int]
    payload: bytes


@dataclass(frozen=True)
class StreamHeader:
    """The container header.  ``model_id`` is the first 8 bytes of the decoder ONNX file's SHA-256."""

    model_id: bytes
    quality: int
    frame_count: int
    version: int = VERSION
    index_offset: int = 0


def model_id_from_sha256(digest: bytes | str) -> bytes:
    """First 8 bytes of a SHA-256 given as 32 raw bytes or 64 hex characters."""
    raw = bytes.fromhex(digest) if isinstance(digest, str) else bytes(digest)
    if len(raw) != 32:
        raise ValueError(f"expected a 32-byte SHA-256, got {len(raw)} bytes")
    return raw[:MODEL_ID_BYTES]


def check_model_id(header: StreamHeader, expected: bytes, where: str) -> None:
    """Raise BadDataError unless the stream was made for the decoder whose id is ``expected``.

    expected: the 8-byte model id (a full 32-byte SHA-256 is accepted and truncated).  where: names the file.
    """
    exp = bytes(expected)
    if len(exp) == 32:
        exp = exp[:MODEL_ID_BYTES]
    if len(exp) != MODEL_ID_BYTES:
        raise ValueError(f"expected model id must be {MODEL_ID_BYTES} bytes, got {len(exp)}")
    if header.model_id != exp:
        raise BadDataError(
            f"{where}: stream was made by model {header.model_id.hex()}, but the loaded decoder is {exp.hex()}"
        )


# ---------------------------------------------------------------------------------------------------------------
# Writing


def _record_problem(rec: FrameRecord) -> str | None:
    try:
        h, w, c = int(rec.height), int(rec.width), int(rec.channels)
        m, lh, lw = (int(v) for v in rec.latent_shape)
    except (TypeError, ValueError):
        return "frame sizes must be integers and latent_shape three integers"
    return _sizes_problem(h, w, c, m, lh, lw, len(rec.payload))


def _sizes_problem(h: int, w: int, c: int, m: int, lh: int, lw: int, n: int) -> str | None:
    if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE):
        return f"frame {w}x{h} outside 1..{MAX_SIDE} per side"
    if c not in (1, 3):
        return f"{c} image channels (must be 1 or 3)"
    if not 1 <= m <= MAX_LATENT_CHANNELS:
        return f"{m} latent channels outside 1..{MAX_LATENT_CHANNELS}"
    eh, ew = -(-h // LATENT_STRIDE), -(-w // LATENT_STRIDE)
    if (lh, lw) != (eh, ew):
        return f"latent {lh}x{lw} does not match a {h}x{w} frame (expected {eh}x{ew})"
    if m * lh * lw > MAX_LATENT_SYMBOLS:
        return f"latent {m}x{lh}x{lw} exceeds {MAX_LATENT_SYMBOLS} symbols"
    if n > MAX_PAYLOAD:
        return f"payload of {n} bytes exceeds {MAX_PAYLOAD}"
    return None


def _record_bytes(rec: FrameRecord) -> bytes:
    problem = _record_problem(rec)
    if problem:
        raise BadDataError(f"cannot store frame: {problem}")
    m, lh, lw = (int(v) for v in rec.latent_shape)
    payload = bytes(rec.payload)
    body = _RECORD.pack(int(rec.height), int(rec.width), int(rec.channels), 0, m, lh, lw, len(payload)) + payload
    return body + _CRC.pack(zlib.crc32(body))


def _check_header_args(model_id: bytes, quality: int) -> bytes:
    mid = bytes(model_id)
    if len(mid) != MODEL_ID_BYTES:
        raise ValueError(f"model id must be {MODEL_ID_BYTES} bytes, got {len(mid)}")
    if isinstance(quality, bool) or not isinstance(quality, int) or not 0 <= quality <= 255:
        raise ValueError(f"quality must be an int in 0..255, got {quality!r}")
    return mid


def _header_bytes(model_id: bytes, quality: int, count: int, index_offset: int, index: bytes) -> bytes:
    head = _HEADER.pack(MAGIC, VERSION, 0, quality, 0, model_id, count, index_offset, 0)[:_HEADER_CRC_AT]
    return head + _CRC.pack(zlib.crc32(index, zlib.crc32(head)))


def pack_stream(model_id: bytes, quality: int, frames: Sequence[FrameRecord]) -> bytes:
    """Serialise a whole stream in memory; byte-identical to what :class:`StreamWriter` writes for the same frames.

    model_id: 8 bytes.  quality: 0..255.  Invalid frames raise BadDataError, invalid arguments ValueError.
    """
    mid = _check_header_args(model_id, quality)
    if len(frames) > MAX_FRAMES:
        raise BadDataError(f"cannot store {len(frames)} frames (limit {MAX_FRAMES})")
    records = [_record_bytes(f) for f in frames]
    index = bytearray()
    off = _HEADER.size
    for r in records:
        index += _INDEX_ENTRY.pack(off, len(r))
        off += len(r)
    return _header_bytes(mid, quality, len(records), off, bytes(index)) + b"".join(records) + bytes(index)


class StreamWriter:
    """Write a ``.eae`` stream frame by frame to a temp file beside ``path``; :meth:`close` renames it into place.

    Use as a context manager: an exception inside the ``with`` block (or :meth:`abort`) removes the temp file and
    leaves any existing ``path`` untouched.  Only the 12-byte index entry of each frame is kept in memory.
    """

    def __init__(self, path: str | os.PathLike, model_id: bytes, quality: int):
        self._model_id = _check_header_args(model_id, quality)
        self._quality = quality
        self._index = bytearray()
        self._count = 0
        self._offset = _HEADER.size
        self._ctx = atomic_path(Path(path))
        tmp = self._ctx.__enter__()
        try:
            self._fh: BinaryIO | None = open(tmp, "wb")  # closed by close() or abort()
            self._fh.write(b"\0" * _HEADER.size)  # placeholder, completed on close
        except BaseException as err:
            self._ctx.__exit__(type(err), err, err.__traceback__)
            raise
        self.path = Path(path)

    @property
    def frame_count(self) -> int:
        return self._count

    def add(self, record: FrameRecord) -> None:
        """Append one frame.  A frame that breaks the format's limits raises BadDataError and is not written."""
        if self._fh is None:
            raise ValueError("StreamWriter is closed")
        if self._count >= MAX_FRAMES:
            raise BadDataError(f"cannot store more than {MAX_FRAMES} frames in one stream")
        data = _record_bytes(record)
        self._fh.write(data)
        self._index += _INDEX_ENTRY.pack(self._offset, len(data))
        self._offset += len(data)
        self._count += 1

    def close(self) -> None:
        """Write the index, complete the header and rename the file into place."""
        if self._fh is None:
            return
        fh, self._fh = self._fh, None
        try:
            index = bytes(self._index)
            fh.write(index)
            fh.seek(0)
            fh.write(_header_bytes(self._model_id, self._quality, self._count, self._offset, index))
            fh.close()
        except BaseException as err:
            fh.close()
            self._ctx.__exit__(type(err), err, err.__traceback__)
            raise
        self._ctx.__exit__(None, None, None)

    def abort(self) -> None:
        """Discard everything written so far; no file is left behind."""
        if self._fh is None:
            return
        fh, self._fh = self._fh, None
        fh.close()
        err = RuntimeError("stream aborted")
        self._ctx.__exit__(RuntimeError, err, None)  # atomic_path removes the temp file; does not re-raise

    def __enter__(self) -> StreamWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self) -> None:
        # A writer dropped without close() must not leave a temp file behind.
        if getattr(self, "_fh", None) is not None:
            self.abort()


# ---------------------------------------------------------------------------------------------------------------
# Reading


def _view(data: Any) -> memoryview:
    try:
        return memoryview(data).cast("B")
    except TypeError:
        raise BadDataError("stream is not a byte buffer") from None


def _parse_header(buf: memoryview) -> tuple[StreamHeader, np.ndarray]:
    """Validate the header and the index -> (header, index as a structured array of (offset, length))."""
    size = len(buf)
    if size < len(MAGIC) or bytes(buf[: len(MAGIC)]) != MAGIC:
        raise BadDataError("not an .eae stream (bad magic)")
    if size < _HEADER.size:
        raise BadDataError(f"truncated .eae stream: {size} bytes, the header alone is {_HEADER.size}")
    magic, version, flags, quality, reserved, model_id, count, index_offset, crc = _HEADER.unpack_from(buf)
    if version != VERSION or flags != 0 or reserved != 0:
        raise BadDataError(f"unsupported version {version} (flags {flags:#04x}, reserved {reserved:#04x}) in .eae")
    if count > MAX_FRAMES:
        raise BadDataError(f"corrupt .eae stream: {count} frames (limit {MAX_FRAMES})")
    index_len = count * _INDEX_ENTRY.size
    if index_offset < _HEADER.size or index_offset + index_len != size:
        if index_offset + index_len < size:
            raise BadDataError(f"corrupt .eae stream: {size - index_offset - index_len} trailing bytes")
        raise BadDataError(
            f"truncated or corrupt .eae stream: index at {index_offset} for {count} frames needs "
            f"{index_offset + index_len} bytes, have {size}"
        )
    index_bytes = buf[index_offset:size]
    if zlib.crc32(index_bytes, zlib.crc32(buf[:_HEADER_CRC_AT])) != crc:
        raise BadDataError("corrupt .eae stream: header CRC mismatch")
    index = np.frombuffer(index_bytes, dtype=_INDEX_DTYPE)
    offsets = index["offset"].astype(np.int64)
    lengths = index["length"].astype(np.int64)
    # Records must tile the file exactly from the header to the index: no gaps, no overlaps, nothing hidden.
    expected = np.concatenate([[_HEADER.size], _HEADER.size + np.cumsum(lengths)])
    if np.any(lengths < RECORD_OVERHEAD) or np.any(offsets != expected[:-1]) or expected[-1] != index_offset:
        raise BadDataError("corrupt .eae stream: frame index does not tile the file")
    header = StreamHeader(
        model_id=bytes(model_id), quality=quality, frame_count=count, version=version, index_offset=index_offset
    )
    return header, index


def read_header(data: bytes) -> StreamHeader:
    """Parse and verify the header and frame index of a whole stream (bytes, bytearray, memoryview or mmap)."""
    return _parse_header(_view(data))[0]


def _parse_record(buf: memoryview, offset: int, length: int, number: int) -> FrameRecord:
    rec = buf[offset : offset + length]
    if len(rec) != length or length < RECORD_OVERHEAD:
        raise BadDataError(f"corrupt .eae stream: frame {number} record truncated")
    h, w, c, flags, m, lh, lw, n = _RECORD.unpack_from(rec)
    if flags != 0:
        raise BadDataError(f"unsupported version: frame {number} has reserved flags {flags:#04x} set")
    if n != length - RECORD_OVERHEAD:
        raise BadDataError(f"corrupt .eae stream: frame {number} payload length {n} does not fit its record")
    (crc,) = _CRC.unpack_from(rec, length - _CRC.size)
    if zlib.crc32(rec[: length - _CRC.size]) != crc:
        raise BadDataError(f"corrupt .eae stream: frame {number} CRC mismatch")
    problem = _sizes_problem(h, w, c, m, lh, lw, n)
    if problem:
        raise BadDataError(f"corrupt .eae stream: frame {number}: {problem}")
    payload = bytes(rec[_RECORD.size : _RECORD.size + n])
    return FrameRecord(height=h, width=w, channels=c, latent_shape=(m, lh, lw), payload=payload)


def read_frame(data: bytes, index: int) -> FrameRecord:
    """Verify the header and index, then read and verify frame ``index`` only."""
    buf = _view(data)
    header, idx = _parse_header(buf)
    try:
        i = operator.index(index)
    except TypeError:
        raise BadDataError(f"frame index {index!r} is not an integer") from None
    if isinstance(index, bool) or not 0 <= i < header.frame_count:
        raise BadDataError(f"frame {index!r} out of range: the stream has {header.frame_count} frames")
    index = i
    return _parse_record(buf, int(idx["offset"][index]), int(idx["length"][index]), index)


def iter_frames(data: bytes) -> Iterator[FrameRecord]:
    """Yield every frame in order, verifying the header once and each record as it is reached."""
    buf = _view(data)
    _, idx = _parse_header(buf)
    for i, (off, length) in enumerate(idx.tolist()):
        yield _parse_record(buf, off, length, i)


def unpack_stream(data: bytes) -> tuple[StreamHeader, list[FrameRecord]]:
    """Parse and verify a whole stream -> (header, frames)."""
    buf = _view(data)
    header, idx = _parse_header(buf)
    frames = [_parse_record(buf, off, length, i) for i, (off, length) in enumerate(idx.tolist())]
    return header, frames
