"""Training data: image folders, videos and scikit-image's photographs, as uint8 arrays in memory.

Images are kept as OpenCV delivers them (BGR or gray, uint8), the same layout the exported graphs take, so
training and the runtime share one convention. The validation split is fixed by name (every k-th file in
sorted order), written to the run folder, and never trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from edge_runtime.errors import BadDataError

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_EXTS = {".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v"}
MAX_IMAGE_BYTES = 256 * 1024 * 1024

# scikit-image ships these with the package (no download); textures grass/brick/gravel are kept for anomaly.
SKIMAGE_COLOR = ["astronaut", "cat", "chelsea", "coffee", "hubble_deep_field", "immunohistochemistry", "rocket",
                 "retina", "colorwheel"]  # fmt: skip
SKIMAGE_GRAY = ["camera", "coins", "moon", "page", "text", "clock"]
SKIMAGE_TEXTURES = ["grass", "brick", "gravel"]


@dataclass
class Dataset:
    """Named uint8 images, each (H, W, C) with C = channels (BGR order when 3)."""

    names: list[str]
    images: list[np.ndarray]
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)


def to_channels(img: np.ndarray, channels: int) -> np.ndarray:
    """uint8 gray (H, W) / (H, W, 1) or BGR (H, W, 3) -> (H, W, channels)."""
    if img.ndim == 2:
        img = img[:, :, None]
    if img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    if channels == 1 and img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)[:, :, None]
    elif channels == 3 and img.shape[2] == 1:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    return np.ascontiguousarray(img)


def read_image(path: Path) -> np.ndarray | None:
    """Decode an image file to uint8 (H, W, C) BGR/gray, or None when it is unreadable or too large."""
    try:
        if path.stat().st_size > MAX_IMAGE_BYTES:
            return None
        buf = np.fromfile(str(path), dtype=np.uint8)
    except OSError:
        return None
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if buf.size else None
    if img is None:
        return None
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    if img.dtype != np.uint8:
        return None
    return img


def skimage_images(channels: int, textures: bool = False) -> Dataset:
    try:
        import skimage.data as skd
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise BadDataError("samples: scikit-image is not installed (install edgeae[train])") from exc
    names = SKIMAGE_TEXTURES if textures else (SKIMAGE_COLOR + SKIMAGE_GRAY)
    ds = Dataset([], [])
    for name in names:
        img = getattr(skd, name)()
        if img.ndim == 3:
            img = cv2.cvtColor(img[:, :, :3], cv2.COLOR_RGB2BGR)
        ds.names.append(f"skimage:{name}")
        ds.images.append(to_channels(img, channels))
    return ds


def video_frames(path: Path, stride: int, channels: int, max_frames: int = 10_000) -> Dataset:
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise BadDataError(f"{path}: video does not open")
    ds = Dataset([], [])
    i = 0
    try:
        while len(ds) < max_frames:
            ok, frame = cap.read()
            if not ok:
                break
            if i % stride == 0:
                ds.names.append(f"{path.name}#{i}")
                ds.images.append(to_channels(frame, channels))
            i += 1
    finally:
        cap.release()
    if not ds.images:
        raise BadDataError(f"{path}: no frame could be decoded")
    return ds


def load_dataset(spec: str | Path, channels: int, *, video_stride: int = 10) -> Dataset:
    """Load ``spec``: "samples" (scikit-image photos), "textures", an image folder (recursive), an image or a video;
    several specs joined by commas are concatenated.

    Raises BadDataError for a missing path, an empty folder or a video that does not open; unreadable images
    in a folder are skipped and listed in ``Dataset.skipped``.
    """
    if "," in str(spec):
        parts = [load_dataset(p, channels, video_stride=video_stride) for p in str(spec).split(",") if p]
        return Dataset(
            [n for d in parts for n in d.names],
            [im for d in parts for im in d.images],
            [s for d in parts for s in d.skipped],
        )
    if str(spec) == "samples":
        return skimage_images(channels)
    if str(spec) == "textures":
        return skimage_images(channels, textures=True)
    path = Path(spec)
    if not path.exists():
        raise BadDataError(f"{path}: no such file or directory")
    if path.is_file() and path.suffix.lower() in VIDEO_EXTS:
        return video_frames(path, video_stride, channels)
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTS) if path.is_dir() else [path]
    if not files:
        raise BadDataError(f"{path}: no images found (looked for {', '.join(sorted(IMAGE_EXTS))})")
    ds = Dataset([], [])
    for f in files:
        img = read_image(f)
        if img is None:
            ds.skipped.append(str(f))
            continue
        ds.names.append(str(f.relative_to(path)) if path.is_dir() else f.name)
        ds.images.append(to_channels(img, channels))
    if not ds.images:
        raise BadDataError(f"{path}: none of {len(files)} images could be read")
    return ds


def split(ds: Dataset, every: int = 8) -> tuple[Dataset, Dataset]:
    """Fixed split by sorted name: every ``every``-th image is validation (at least one each when possible)."""
    order = sorted(range(len(ds)), key=lambda i: ds.names[i])
    val_idx = {i for k, i in enumerate(order) if k % every == every // 2}
    if not val_idx and len(ds) > 1:
        val_idx = {order[-1]}
    train = Dataset([ds.names[i] for i in order if i not in val_idx], [ds.images[i] for i in order if i not in val_idx])
    val = Dataset([ds.names[i] for i in order if i in val_idx], [ds.images[i] for i in order if i in val_idx])
    if len(train) == 0:  # a single image: train and validate on different crops of it
        train = val
    return train, val


class PatchSampler:
    """Random crops with flips from in-memory images: uint8 (B, crop, crop, C)."""

    def __init__(self, images: Sequence[np.ndarray], crop: int, seed: int):
        usable = [im for im in images if im.shape[0] >= crop and im.shape[1] >= crop]
        if not usable:
            sizes = sorted({f"{im.shape[1]}x{im.shape[0]}" for im in images})[:5]
            raise BadDataError(f"crop {crop} is larger than every image (sizes: {', '.join(sizes)})")
        self.images = usable
        self.crop = crop
        self.rng = np.random.default_rng(seed)
        # Sample images by area so large photographs contribute more patches than thumbnails.
        area = np.array([im.shape[0] * im.shape[1] for im in usable], dtype=np.float64)
        self.p = area / area.sum()

    def sample(self, batch: int) -> np.ndarray:
        c = self.crop
        idx = self.rng.choice(len(self.images), size=batch, p=self.p)
        out = np.empty((batch, c, c, self.images[0].shape[2]), dtype=np.uint8)
        for k, i in enumerate(idx):
            im = self.images[i]
            y = self.rng.integers(0, im.shape[0] - c + 1)
            x = self.rng.integers(0, im.shape[1] - c + 1)
            patch = im[y : y + c, x : x + c]
            if self.rng.random() < 0.5:
                patch = patch[:, ::-1]
            if self.rng.random() < 0.5:
                patch = patch[::-1]
            if self.rng.random() < 0.5:
                patch = patch.transpose(1, 0, 2)
            out[k] = patch
        return out


def center_crops(images: Sequence[np.ndarray], size: int, multiple: int) -> list[np.ndarray]:
    """Deterministic validation crops: the centre size x size (or the whole image cut to the multiple)."""
    out = []
    for im in images:
        h = min(size, im.shape[0]) // multiple * multiple
        w = min(size, im.shape[1]) // multiple * multiple
        if h == 0 or w == 0:
            continue
        y, x = (im.shape[0] - h) // 2, (im.shape[1] - w) // 2
        out.append(np.ascontiguousarray(im[y : y + h, x : x + w]))
    return out
