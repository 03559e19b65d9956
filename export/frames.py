"""Frames for calibration and for the precision gate, kept apart.

* Calibration (INT8 activation ranges): ``--calib PATH`` (an image folder, an image or a video, read with
  OpenCV through :func:`training.data.load_dataset`), or by default the *training* split of the data the run was
  trained on (``cfg["train"]["data"]``, split as the run's ``split.json`` records). Random crops of a fixed size
  (256, cut to a multiple of ``input_multiple``), seeded.
* Validation (the gate's metric, the anomaly calibration): the run's *validation* split, which was never trained
  on and is never used for calibration. When the run's data cannot be found and ``--calib`` is given, the
  calibration set is split the way training splits data (every 8th image by name is validation).
* Held out of calibration (``hold_out=True``; the denoise gate's second image set): every 8th image of the
  calibration source (by position, at least one when there are two or more) is kept out of the calibration crops,
  so the gate also measures on images of the calibration source that did not set any activation range. With the
  default source (the run's training split) these are training images the quantizer never saw; with ``--calib``
  they are the user's own kind of images.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_runtime.errors import BadDataError

CALIB_SIZE = 256
CALIB_FRAMES = 32
VAL_SIZE = 256
VAL_IMAGES = 16
NOISE_SIGMA_MAX = 55.0  # training.noise.MAX_SIGMA


@dataclass
class FrameSets:
    """uint8 (H, W, C) images: ``calib`` for activation ranges, ``val`` for the gate; and where they came from."""

    calib: list[np.ndarray]
    val: list[np.ndarray]
    calib_source: str
    val_source: str
    held_out: list[np.ndarray] = field(default_factory=list)
    held_out_source: str = ""


def _resolve_spec(spec: str, run_dir: Path) -> str:
    """A data spec from config.json: comma-separated parts, each ``samples``/``textures`` or a path that may be
    relative to the working directory the run was trained from (tried: cwd, then the run's ancestors)."""
    parts = []
    for part in str(spec).split(","):
        if not part or part in ("samples", "textures") or Path(part).is_absolute() or Path(part).exists():
            parts.append(part)
            continue
        for base in Path(run_dir).resolve().parents:
            if (base / part).exists():
                parts.append(str(base / part))
                break
        else:
            parts.append(part)
    return ",".join(parts)


def _by_names(images: list[np.ndarray], names: list[str], wanted: list[str]) -> list[np.ndarray]:
    index = {n: i for i, n in enumerate(names)}
    return [images[index[n]] for n in wanted if n in index]


def run_splits(run_dir: str | Path, cfg: dict) -> tuple[list[np.ndarray], list[np.ndarray], str]:
    """(train images, validation images, spec) of the data a run was trained on; BadDataError if unreadable."""
    from training.data import load_dataset, split

    run_dir = Path(run_dir)
    spec = _resolve_spec(cfg["train"]["data"], run_dir)
    channels = int(cfg["model"]["channels"])
    ds = load_dataset(spec, channels)
    split_path = run_dir / "split.json"
    if split_path.is_file():
        rec = json.loads(split_path.read_text())
        train = _by_names(ds.images, ds.names, rec.get("train", []))
        val = _by_names(ds.images, ds.names, rec.get("val", []))
        if train and val:
            return train, val, spec
    tr, va = split(ds)
    return tr.images, va.images, spec


def add_noise(frames: list[np.ndarray], seed: int, sigma_max: float | None = None) -> list[np.ndarray]:
    """Each frame plus Gaussian noise of a sigma uniform in [0, sigma_max] (8-bit units), clipped and rounded."""
    rng = np.random.default_rng(seed + 7)
    top = NOISE_SIGMA_MAX if sigma_max is None else sigma_max
    out = []
    for f in frames:
        sigma = rng.uniform(0, top)
        out.append(np.clip(np.round(f + rng.normal(0, sigma, f.shape)), 0, 255).astype(np.uint8))
    return out


def random_crops(images: list[np.ndarray], count: int, size: int, multiple: int, seed: int) -> list[np.ndarray]:
    """``count`` crops of one size, ``size`` cut to ``multiple`` (onnxruntime's histogram calibrators need equal
    shapes); when no image is that large, the largest size every crop can share from the largest images."""
    rng = np.random.default_rng(seed)
    side = size // multiple * multiple
    usable = [im for im in images if min(im.shape[:2]) >= side]
    if not usable:
        side = max(min(im.shape[:2]) for im in images) // multiple * multiple
        usable = [im for im in images if min(im.shape[:2]) >= side]
    if side < multiple:
        raise BadDataError(f"no image is at least {multiple} pixels on each side")
    out = []
    for k in range(count):
        im = usable[k % len(usable)] if k < len(usable) else usable[int(rng.integers(len(usable)))]
        y = int(rng.integers(0, im.shape[0] - side + 1))
        x = int(rng.integers(0, im.shape[1] - side + 1))
        out.append(np.ascontiguousarray(im[y : y + side, x : x + side]))
    return out


def hold_out(images: list[np.ndarray], every: int = 8) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(kept, held out): every ``every``-th image by position is held out, at least one of two or more images."""
    held_idx = {k for k in range(len(images)) if k % every == every // 2}
    if not held_idx and len(images) > 1:
        held_idx = {len(images) - 1}
    return [im for k, im in enumerate(images) if k not in held_idx], [images[k] for k in sorted(held_idx)]


def _load_calib(calib: str, channels: int, count: int):
    """An image folder/file through load_dataset; a video is read only as far as needed (every 10th frame)."""
    from training.data import VIDEO_EXTS, load_dataset, video_frames

    path = Path(calib)
    if path.is_file() and path.suffix.lower() in VIDEO_EXTS:
        return video_frames(path, 10, channels, max_frames=max(2 * count, 64))
    return load_dataset(calib, channels)


def frame_sets(
    run_dir: str | Path,
    cfg: dict,
    calib: str | None = None,
    *,
    calib_frames: int = CALIB_FRAMES,
    calib_size: int = CALIB_SIZE,
    val_images: int = VAL_IMAGES,
    seed: int = 0,
    hold_out_calib: bool = False,
) -> FrameSets:
    """Calibration and validation images for a run (see the module docstring for which is which)."""
    from training.data import split

    channels = int(cfg["model"]["channels"])
    multiple = int(cfg["model"]["multiple"])
    try:
        train, val, spec = run_splits(run_dir, cfg)
        run_error = None
    except BadDataError as exc:
        train, val, spec, run_error = [], [], cfg["train"]["data"], exc
    if calib is not None:
        ds = _load_calib(calib, channels, calib_frames)
        if val:
            calib_images, calib_source = ds.images, f"{calib} (all {len(ds)} images/frames)"
        else:
            tr, va = split(ds)
            calib_images, val = tr.images, va.images
            calib_source = f"{calib} (training split, {len(tr)} images/frames)"
            spec = f"{calib} (validation split: the run's data {cfg['train']['data']!r} was not found)"
    else:
        if run_error is not None:
            raise BadDataError(
                f"the run's training data {cfg['train']['data']!r} cannot be read ({run_error}); "
                "pass --calib PATH (an image folder or a video)"
            ) from run_error
        calib_images, calib_source = train, f"{spec} (training split, {len(train)} images)"
    if not calib_images or not val:
        raise BadDataError("no images for calibration or validation; pass --calib PATH with more images")
    held: list[np.ndarray] = []
    held_source = ""
    if hold_out_calib:
        calib_images, held = hold_out(calib_images)
        held_source = (f"{calib_source.split(' (')[0]} (held out of calibration: every 8th image, "
                       f"{min(len(held), val_images)} of {len(held)})")  # fmt: skip
        calib_source += f", {len(held)} of them held out of calibration for the gate"
    crops = random_crops(calib_images, calib_frames, calib_size, multiple, seed)
    if cfg["task"] == "denoise" and calib is None:
        # A denoiser sees noisy frames; its training images are clean. Calibrating on clean crops sets activation
        # ranges far too narrow (measured: 1.2 dB PSNR lost on denoise-gray), so add the training noise.
        crops = add_noise(crops, seed)
        calib_source += f", Gaussian noise sigma uniform in [0, {NOISE_SIGMA_MAX:g}]"
    val_source = f"{spec} (validation split, {min(len(val), val_images)} of {len(val)} images)"
    return FrameSets(calib=crops, val=val[:val_images], calib_source=calib_source, val_source=val_source,
                     held_out=held[:val_images], held_out_source=held_source)  # fmt: skip
