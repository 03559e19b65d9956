"""Image files and bytes to frames, with the size caps checked on the header before anything is decoded.

:func:`read_image` is the one call for reading a single image anywhere in the runtime: it refuses a file over
``MAX_IMAGE_BYTES``, then a header (see :mod:`edge_runtime.imagesize`) declaring a side over ``max_side`` or
more than ``max_pixels`` pixels, all before ``cv2.imdecode`` allocates the picture. OpenCV's own limit
(``OPENCV_IO_MAX_IMAGE_PIXELS``) is a second line, set here; it holds only where nothing loaded cv2 before this
module (OpenCV reads it once): entry points should call ``imagesize.limit_opencv_decoders()`` first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edge_runtime.imagesize import MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE, image_header, limit_opencv_decoders

# Images above this are counted as bad before a byte is read: a folder of camera dumps should not be able to
# exhaust an edge device's memory with one stray file.
MAX_IMAGE_BYTES = 256 * 1024 * 1024

limit_opencv_decoders()  # must run before cv2 loads: OpenCV reads the limit once

import cv2  # noqa: E402 - after the limit above, which OpenCV reads when it loads
import numpy as np  # noqa: E402

from edge_runtime.errors import BadDataError  # noqa: E402


def size_problem(width: int, height: int, *, max_side: int = MAX_IMAGE_SIDE, max_pixels: int = MAX_IMAGE_PIXELS) -> str:
    """Why a ``width`` x ``height`` picture is refused, or "" when it is within both caps."""
    if max(width, height) > max_side:
        return f"{width}x{height} is over the {max_side} pixel side limit"
    if width * height > max_pixels:
        return f"{width}x{height} ({width * height / 1e6:.1f} MP) is over the {max_pixels / 1e6:.1f} MP limit"
    return ""


def to_bgr8(image: Any) -> np.ndarray | None:
    """Any OpenCV frame as (H, W, 3) uint8 BGR, C-contiguous; None when it cannot be one.

    Gray becomes three equal channels, alpha is dropped, 16-bit keeps its high byte (as ``IMREAD_COLOR`` does).
    """
    if not isinstance(image, np.ndarray) or image.size == 0 or image.ndim not in (2, 3):
        return None
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        return None
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    elif image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    elif image.shape[2] != 3:
        return None
    return np.ascontiguousarray(image)


def decode_image(
    data: bytes | np.ndarray, *, max_side: int = MAX_IMAGE_SIDE, max_pixels: int = MAX_IMAGE_PIXELS
) -> tuple[np.ndarray | None, str]:
    """Encoded image bytes to ((H, W, 3) uint8 BGR, "") or (None, reason); the caps are checked on the header."""
    buf = np.frombuffer(data, np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else data
    header = image_header(buf)
    if header is None:
        return None, "not a PNG, JPEG, TIFF, WebP or BMP image (unrecognised or damaged header)"
    problem = size_problem(header.width, header.height, max_side=max_side, max_pixels=max_pixels)
    if problem:
        return None, f"{problem} (as its {header.format} header declares; not decoded)"
    try:
        raw = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    except cv2.error as exc:  # OpenCV's own size limit, or a decoder that gave up
        return None, f"cannot decode ({_one_line(exc)})"
    if raw is None:
        return None, "not a decodable image"
    problem = size_problem(raw.shape[1], raw.shape[0], max_side=max_side, max_pixels=max_pixels)
    if problem:  # a decoder that disagrees with its header: the decoded size is what counts
        return None, problem
    image = to_bgr8(raw)
    if image is None:
        return None, f"unsupported pixel format {raw.dtype} {raw.shape}"
    return image, ""


def load_image(
    path: str | Path,
    *,
    max_bytes: int = MAX_IMAGE_BYTES,
    max_side: int = MAX_IMAGE_SIDE,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> tuple[np.ndarray | None, str]:
    """An image file to ((H, W, 3) uint8 BGR, "") or (None, reason); for loops that count bad files and go on."""
    try:
        size = Path(path).stat().st_size
        if size == 0:
            return None, "empty file"
        if size > max_bytes:
            return None, f"{size} bytes is over the {max_bytes} byte limit"
        data = np.fromfile(path, np.uint8)  # not cv2.imread: this works with non-ASCII paths everywhere
    except OSError as exc:
        return None, f"cannot read ({exc.strerror or exc})"
    return decode_image(data, max_side=max_side, max_pixels=max_pixels)


def read_image(path: str | Path, *, max_side: int = MAX_IMAGE_SIDE, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """One image file as (H, W, 3) uint8 BGR; BadDataError (exit 3) naming the file and the reason otherwise."""
    image, reason = load_image(path, max_side=max_side, max_pixels=max_pixels)
    if image is None:
        raise BadDataError(f"{path}: {reason}")
    return image


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:200] or type(exc).__name__
