"""Image sizes from file headers, before any decoder allocates a pixel: PNG, JPEG, TIFF, WebP, BMP.

Standard library only. A decoder allocates the whole picture from the size a header declares, so a 2.6 MB PNG
that declares 30000x30000 costs gigabytes before any check on the decoded array can run; reading the declared
size first costs a few bytes. :func:`image_header` returns ``None`` for anything it does not recognise or that
is damaged, and callers refuse such files: every format edgeae accepts (``IMAGE_EXTENSIONS``) is covered here.

Layouts, all documented by their formats: PNG ``IHDR`` is the first chunk (big-endian width, height); JPEG
carries the size in its first SOF segment (precision, height, width, big-endian), reached by hopping over the
marker segments before it; TIFF keeps ImageWidth (256) and ImageLength (257) in its first IFD (II/MM byte order,
classic and BigTIFF); WebP is a RIFF file whose first chunk is ``VP8 `` (14-bit sides after the start code
``9d 01 2a``), ``VP8L`` (14-bit sides minus one after the signature byte ``2f``) or ``VP8X`` (24-bit canvas
sides minus one); BMP has a BITMAPCOREHEADER (16-bit sides) or a larger info header (32-bit signed sides,
negative height for top-down rows).
"""

from __future__ import annotations

import os
import struct
import sys
from typing import NamedTuple

# The caps every frame of the runtime is held to (a caller may lower the side, e.g. to a model's limit).
MAX_IMAGE_SIDE = 16384
# 64 megapixels: 192 MB as BGR, what one frame may cost. A 16384-pixel side is fine on a narrow strip.
MAX_IMAGE_PIXELS = 8192 * 8192
# OpenCV reads this once, when the library loads (measured on OpenCV 5.1: setting it after ``import cv2`` has no
# effect), and then refuses in imread/imdecode any image whose header declares more pixels.
OPENCV_PIXELS_ENV = "OPENCV_IO_MAX_IMAGE_PIXELS"

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# SOF0-3, 5-7, 9-11, 13-15: every frame type; C4 (DHT), C8 (JPG) and CC (DAC) share the range but are not frames.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers without a length field: TEM, RST0-7, SOI.
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})
_TIFF_WIDTH, _TIFF_LENGTH = 256, 257
# TIFF field types that can hold a size: SHORT, LONG, LONG8.
_TIFF_TYPES = {3: ("H", 2), 4: ("I", 4), 16: ("Q", 8)}
_MAX_TIFF_ENTRIES = 4096


class ImageHeader(NamedTuple):
    format: str  # "PNG", "JPEG", "TIFF", "WebP" or "BMP"
    width: int
    height: int


def image_header(data: bytes | bytearray | memoryview) -> ImageHeader | None:
    """The format and size ``data`` (the file's bytes, or at least its header) declares; None when unknown.

    A size of zero is returned as None too: no decoder can produce a picture from it.
    """
    view = memoryview(data).cast("B")
    for reader in (_png, _jpeg, _tiff, _webp, _bmp):
        try:
            header = reader(view)
        except (struct.error, IndexError, ValueError):
            header = None  # a header cut short or malformed
        if header is not None:
            return header if header.width > 0 and header.height > 0 else None
    return None


def limit_opencv_decoders(max_pixels: int = MAX_IMAGE_PIXELS) -> bool:
    """Ask OpenCV to refuse images over ``max_pixels``; True when it will, i.e. cv2 is not loaded yet.

    A value already in the environment (the user's own) is kept. Standard library only, so that a package's
    ``__init__`` or a CLI's ``main`` can call it before anything loads cv2.
    """
    os.environ.setdefault(OPENCV_PIXELS_ENV, str(int(max_pixels)))
    return "cv2" not in sys.modules


def _png(view: memoryview) -> ImageHeader | None:
    if bytes(view[:8]) != _PNG_MAGIC or bytes(view[12:16]) != b"IHDR":
        return None
    width, height = struct.unpack_from(">II", view, 16)
    return ImageHeader("PNG", width, height)


def _jpeg(view: memoryview) -> ImageHeader | None:
    if bytes(view[:2]) != b"\xff\xd8":
        return None
    pos, end = 2, len(view)
    while pos < end:
        if view[pos] != 0xFF:
            return None  # garbage between segments: a damaged file
        while pos < end and view[pos] == 0xFF:  # fill bytes
            pos += 1
        marker = view[pos]
        pos += 1
        if marker in _JPEG_STANDALONE:
            continue
        if marker in (0xD9, 0xDA):  # EOI or start of scan before any frame header
            return None
        (length,) = struct.unpack_from(">H", view, pos)
        if length < 2:
            return None
        if marker in _JPEG_SOF:
            height, width = struct.unpack_from(">HH", view, pos + 3)
            return ImageHeader("JPEG", width, height)
        pos += length
    return None


def _tiff(view: memoryview) -> ImageHeader | None:
    order = bytes(view[:2])
    if order not in (b"II", b"MM"):
        return None
    bo = "<" if order == b"II" else ">"
    (version,) = struct.unpack_from(bo + "H", view, 2)
    if version == 42:
        (ifd,) = struct.unpack_from(bo + "I", view, 4)
        count_fmt, entry_fmt, entry_size, value_at = "H", "HHI", 12, 8
    elif version == 43:  # BigTIFF
        (ifd,) = struct.unpack_from(bo + "Q", view, 8)
        count_fmt, entry_fmt, entry_size, value_at = "Q", "HHQ", 20, 12
    else:
        return None
    (count,) = struct.unpack_from(bo + count_fmt, view, ifd)
    if count > _MAX_TIFF_ENTRIES:
        return None
    first = ifd + struct.calcsize(bo + count_fmt)
    sizes: dict[int, int] = {}
    for i in range(count):
        at = first + i * entry_size
        tag, kind, n = struct.unpack_from(bo + entry_fmt, view, at)
        if tag in (_TIFF_WIDTH, _TIFF_LENGTH) and kind in _TIFF_TYPES and n >= 1:
            code, _ = _TIFF_TYPES[kind]
            (sizes[tag],) = struct.unpack_from(bo + code, view, at + value_at)  # small values sit in the entry
    if _TIFF_WIDTH not in sizes or _TIFF_LENGTH not in sizes:
        return None
    return ImageHeader("TIFF", sizes[_TIFF_WIDTH], sizes[_TIFF_LENGTH])


def _webp(view: memoryview) -> ImageHeader | None:
    if bytes(view[:4]) != b"RIFF" or bytes(view[8:12]) != b"WEBP":
        return None
    chunk = bytes(view[12:16])
    if chunk == b"VP8 ":
        if bytes(view[23:26]) != b"\x9d\x01\x2a":
            return None
        width, height = struct.unpack_from("<HH", view, 26)
        return ImageHeader("WebP", width & 0x3FFF, height & 0x3FFF)
    if chunk == b"VP8L":
        if view[20] != 0x2F:
            return None
        (bits,) = struct.unpack_from("<I", view, 21)
        return ImageHeader("WebP", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if chunk == b"VP8X":
        if len(view) < 30:
            return None
        width = int.from_bytes(view[24:27], "little") + 1
        height = int.from_bytes(view[27:30], "little") + 1
        return ImageHeader("WebP", width, height)
    return None


def _bmp(view: memoryview) -> ImageHeader | None:
    if bytes(view[:2]) != b"BM":
        return None
    (info_size,) = struct.unpack_from("<I", view, 14)
    if info_size == 12:  # OS/2 BITMAPCOREHEADER
        width, height = struct.unpack_from("<HH", view, 18)
    elif 16 <= info_size <= 4096:
        width, height = struct.unpack_from("<ii", view, 18)
    else:
        return None
    return ImageHeader("BMP", abs(width), abs(height))
