"""Benchmark images: the public test sets in ``../shared/data`` when present, scikit-image photos otherwise.

Gray images are ``(H, W) uint8``; colour images are ``(H, W, 3) uint8`` in BGR order (OpenCV's).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import cv2
import numpy as np

from edge_runtime.errors import BadDataError, UsageError

# name -> (folder, imread flag). Set14 holds a few gray images; IMREAD_COLOR makes them 3-channel so that a set
# has one shape convention.
SETS: dict[str, tuple[str, int]] = {
    "bsd68_gray": ("bsd68_gray", cv2.IMREAD_GRAYSCALE),
    "set12_gray": ("set12_gray", cv2.IMREAD_GRAYSCALE),
    "train400_gray": ("train400_gray", cv2.IMREAD_GRAYSCALE),
    "set14": ("set14", cv2.IMREAD_COLOR),
    "live1_color": ("live1_color", cv2.IMREAD_COLOR),
}
_IMAGE_SUFFIXES = {".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff", ".ppm", ".pgm"}

# Bundled with scikit-image (no download). Colour photos are RGB there and converted to BGR here.
_SKIMAGE_GRAY = ("camera", "moon", "coins", "clock", "brick", "gravel")
_SKIMAGE_COLOR = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")


def repo_root() -> Path:
    """The project checkout this file lives in (``benchmarks/..``)."""
    return Path(__file__).resolve().parents[1]


def find_data_dir(explicit: str | Path | None) -> Path | None:
    """The benchmark data folder: ``explicit`` (a ``--data`` option) if given, else ``<repo>/../shared/data``
    if it exists, else None (callers fall back to :func:`skimage_photos`).

    An explicit path that is not a folder raises :class:`BadDataError` rather than silently falling back.
    """
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_dir():
            raise BadDataError(f"{path}: data folder does not exist")
        return path
    default = repo_root().parent / "shared" / "data"
    return default if default.is_dir() else None


def load_set(name: str, data_dir: str | Path | None) -> list[tuple[str, np.ndarray]]:
    """Load every image of a named set, sorted by file name: ``[(stem, image), ...]``.

    name: one of :data:`SETS` (``bsd68_gray``, ``set12_gray``, ``train400_gray``: ``(H, W) uint8``;
    ``set14``, ``live1_color``: ``(H, W, 3) uint8`` BGR).
    Raises :class:`BadDataError` if the folder is missing, holds no images or an image cannot be decoded.
    """
    if name not in SETS:
        raise UsageError(f"unknown image set {name!r}; known: {', '.join(SETS)}")
    if data_dir is None:
        raise BadDataError(f"{name}: no data folder; pass --data or create ../shared/data next to the checkout")
    folder_name, flag = SETS[name]
    folder = Path(data_dir) / folder_name
    if not folder.is_dir():
        raise BadDataError(f"{folder}: folder for image set {name!r} does not exist")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise BadDataError(f"{folder}: no images for set {name!r}")
    images = []
    for path in files:
        # imdecode on bytes instead of imread: imread returns None for non-ASCII paths on some platforms.
        img = cv2.imdecode(np.fromfile(path, dtype=np.uint8), flag)
        if img is None:
            raise BadDataError(f"{path}: cannot decode image")
        images.append((path.stem, img))
    return images


def skimage_photos(gray: bool) -> list[tuple[str, np.ndarray]]:
    """scikit-image's bundled photos, the fallback when the public sets are absent.

    gray=True: ``(H, W) uint8`` (native gray photos, then the colour ones converted to gray);
    gray=False: ``(H, W, 3) uint8`` BGR, colour photos only (a gray photo copied into three channels would
    flatter colour methods). Raises :class:`UsageError` if scikit-image is not installed.
    """
    try:
        data = importlib.import_module("skimage.data")
    except ImportError as err:
        raise UsageError(
            "scikit-image is not installed; install the benchmark extras: pip install 'edgeae[bench]'"
        ) from err
    out = []
    if gray:
        out += [(n, np.ascontiguousarray(getattr(data, n)(), dtype=np.uint8)) for n in _SKIMAGE_GRAY]
    for n in _SKIMAGE_COLOR:
        bgr = cv2.cvtColor(np.ascontiguousarray(getattr(data, n)(), dtype=np.uint8), cv2.COLOR_RGB2BGR)
        out.append((n, cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY) if gray else bgr))
    return out
