"""Image sizes from headers (RELIABILITY 32): every accepted format, crafted edge cases, OpenCV's own limit."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_runtime.imagesize import ImageHeader, image_header

ROOT = Path(__file__).resolve().parents[2]
H, W = 37, 53


def picture(channels: int = 3) -> np.ndarray:
    img = (np.arange(H * W * 3) % 251).astype(np.uint8).reshape(H, W, 3)
    return img if channels == 3 else img[:, :, 0]


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares width x height and whose IDAT holds one compressed row: a cheap bomb."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))


@pytest.mark.parametrize(
    "ext, params, fmt",
    [
        (".png", [], "PNG"),
        (".jpg", [], "JPEG"),
        (".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1], "JPEG"),
        (".tif", [], "TIFF"),
        (".tiff", [cv2.IMWRITE_TIFF_COMPRESSION, 1], "TIFF"),
        (".webp", [cv2.IMWRITE_WEBP_QUALITY, 80], "WebP"),  # lossy: VP8
        (".webp", [cv2.IMWRITE_WEBP_QUALITY, 101], "WebP"),  # lossless: VP8L
        (".bmp", [], "BMP"),
    ],
)
@pytest.mark.parametrize("channels", [1, 3])
def test_sizes_of_files_opencv_writes(ext, params, fmt, channels):
    ok, buf = cv2.imencode(ext, picture(channels), params)
    assert ok
    assert image_header(buf.tobytes()) == ImageHeader(fmt, W, H)
    assert image_header(buf) == ImageHeader(fmt, W, H)  # a numpy buffer works as well


def test_jpeg_size_after_large_app_segments_and_fill_bytes():
    jpeg = cv2.imencode(".jpg", picture())[1].tobytes()
    exif = b"\xff\xe1" + struct.pack(">H", 60002) + b"Exif\0\0" + b"\xff\xc0" * 29997  # fake SOFs inside APP1
    crafted = jpeg[:2] + exif + b"\xff\xff\xff" + jpeg[2:]
    assert image_header(crafted) == ImageHeader("JPEG", W, H)
    assert cv2.imdecode(np.frombuffer(crafted, np.uint8), cv2.IMREAD_COLOR).shape == (H, W, 3)


def tiff(order: str, big: bool, width: int, height: int, kind: int) -> bytes:
    """A TIFF header and first IFD with ImageWidth and ImageLength only (classic or BigTIFF)."""
    bo = "<" if order == "II" else ">"
    code = {3: "H", 4: "I", 16: "Q"}[kind]
    slot = 8 if big else 4  # values this small sit in the entry, left-justified

    def entry(tag: int, value: int) -> bytes:
        return struct.pack(bo + ("HHQ" if big else "HHI"), tag, kind, 1) + struct.pack(bo + code, value).ljust(
            slot, b"\0"
        )

    if big:
        head = order.encode() + struct.pack(bo + "HHHQ", 43, 8, 0, 16) + struct.pack(bo + "Q", 2)
    else:
        head = order.encode() + struct.pack(bo + "HI", 42, 8) + struct.pack(bo + "H", 2)
    return head + entry(256, width) + entry(257, height) + b"\0" * slot


@pytest.mark.parametrize("order", ["II", "MM"])
@pytest.mark.parametrize("big, kind", [(False, 3), (False, 4), (True, 4), (True, 16)])
def test_tiff_byte_orders_field_types_and_bigtiff(order, big, kind):
    width, height = (300, 200) if kind == 3 else (70000, 90000)
    assert image_header(tiff(order, big, width, height, kind)) == ImageHeader("TIFF", width, height)


def test_webp_extended_canvas_and_bmp_variants():
    vp8x = b"RIFF" + struct.pack("<I", 22) + b"WEBPVP8X" + struct.pack("<I", 10) + b"\x10\0\0\0"
    vp8x += (29999).to_bytes(3, "little") + (19999).to_bytes(3, "little")
    assert image_header(vp8x) == ImageHeader("WebP", 30000, 20000)
    core = b"BM" + b"\0" * 12 + struct.pack("<IHHHH", 12, 640, 480, 1, 24)
    assert image_header(core) == ImageHeader("BMP", 640, 480)
    top_down = b"BM" + b"\0" * 12 + struct.pack("<Iii", 40, 30000, -30000)
    assert image_header(top_down) == ImageHeader("BMP", 30000, 30000)


def test_png_bomb_header_is_read():
    assert image_header(png_header_only(30000, 30000)) == ImageHeader("PNG", 30000, 30000)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR\0\0",  # cut inside IHDR
        b"\xff\xd8\xff\xe0\0\x10JFIF",  # JPEG cut before any SOF
        b"\xff\xd8\xff\xda\0\x08" + b"\0" * 10,  # a scan before any frame header
        b"\xff\xd8garbage",
        b"II*\0\xff\xff\xff\x7f",  # IFD offset past the end
        b"RIFF\0\0\0\0WEBPVP8 " + b"\0" * 20,  # VP8 without its start code
        b"BM" + b"\0" * 8,
        b"GIF89a\x10\0\x10\0",  # not a format edgeae accepts
        png_header_only(0, 10),  # zero sides decode to nothing
    ],
)
def test_unknown_cut_or_damaged_headers_are_none(data):
    assert image_header(data) is None


def test_opencv_refuses_images_over_the_pixel_cap_when_edge_runtime_loads_first():
    # OpenCV reads OPENCV_IO_MAX_IMAGE_PIXELS once, when it loads: edge_runtime.sources sets it before cv2.
    code = textwrap.dedent(
        f"""
        import os
        import edge_runtime.sources
        import cv2, numpy as np
        assert os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"] == str(edge_runtime.sources.MAX_IMAGE_PIXELS)
        data = np.frombuffer({png_header_only(8193, 8193)!r}, np.uint8)  # one pixel row over 64 MP, no data
        try:
            cv2.imdecode(data, cv2.IMREAD_COLOR)
        except cv2.error as exc:
            print("refused", "CV_IO_MAX_IMAGE_PIXELS" in str(exc))
        else:
            print("decoded")
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_IO_MAX_IMAGE_PIXELS"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["refused", "True"]
