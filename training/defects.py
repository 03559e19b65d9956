"""Synthetic defects for anomaly validation and training corruptions (numpy + OpenCV only).

Validation defects (``paste_defect``): cut-paste from another image, scratches, blobs and colour stains, each
with its pixel mask, so image- and pixel-level AUROC need no labelled data. Training corruptions
(``corrupt``) use a different family - irregular noise-textured and flat-filled regions - so the benchmark
does not test the exact shapes the model learned to remove.
"""

from __future__ import annotations

import cv2
import numpy as np

DEFECT_KINDS = ("cutpaste", "scratch", "blob", "stain")


def _random_polygon_mask(h: int, w: int, rng: np.random.Generator, min_frac=0.04, max_frac=0.15) -> np.ndarray:
    size = rng.uniform(min_frac, max_frac) * min(h, w) * 2
    cy, cx = rng.uniform(size / 2, h - size / 2), rng.uniform(size / 2, w - size / 2)
    n = int(rng.integers(5, 10))
    ang = np.sort(rng.uniform(0, 2 * np.pi, n))
    rad = rng.uniform(0.4, 1.0, n) * size / 2
    pts = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], 1).astype(np.int32)
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [pts], 1)
    return mask


def paste_defect(
    img: np.ndarray, rng: np.random.Generator, kind: str, donor: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """img uint8 (H, W, C) -> (defective copy, mask uint8 (H, W) with 1 on defect pixels)."""
    h, w, c = img.shape
    out = img.copy()
    if kind == "cutpaste":
        mask = _random_polygon_mask(h, w, rng)
        src = donor if donor is not None else img
        src = cv2.resize(src, (w, h)) if src.shape[:2] != (h, w) else src
        src = src.reshape(h, w, -1)[:, :, :c] if src.ndim == 3 else src[:, :, None]
        dy, dx = int(rng.integers(-h // 3, h // 3 + 1)), int(rng.integers(-w // 3, w // 3 + 1))
        shifted = np.roll(src, (dy, dx), axis=(0, 1))
        out[mask > 0] = shifted[mask > 0]
    elif kind == "scratch":
        mask = np.zeros((h, w), np.uint8)
        for _ in range(int(rng.integers(1, 3))):
            p0 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            length = rng.uniform(0.2, 0.5) * max(h, w)
            a = rng.uniform(0, np.pi)
            p1 = (int(p0[0] + length * np.cos(a)), int(p0[1] + length * np.sin(a)))
            cv2.line(mask, p0, p1, 1, int(rng.integers(2, 5)))
        val = rng.choice([rng.uniform(0, 60), rng.uniform(200, 255)])
        out[mask > 0] = np.uint8(val)
    elif kind == "blob":
        mask = _random_polygon_mask(h, w, rng)
        mean = img[mask > 0].mean(axis=0)
        shift = rng.choice([-1, 1]) * rng.uniform(40, 90)
        fill = np.clip(mean + shift, 0, 255)
        soft = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 2.0)[:, :, None]
        out = np.clip(img * (1 - soft) + fill * soft, 0, 255).astype(np.uint8)
        mask = (soft[:, :, 0] > 0.5).astype(np.uint8)
    elif kind == "stain":
        mask = _random_polygon_mask(h, w, rng, 0.06, 0.2)
        colour = rng.uniform(0, 255, c)
        alpha = rng.uniform(0.5, 0.8)
        soft = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 3.0)[:, :, None] * alpha
        out = np.clip(img * (1 - soft) + colour * soft, 0, 255).astype(np.uint8)
        mask = (soft[:, :, 0] > 0.25).astype(np.uint8)
    else:
        raise ValueError(f"unknown defect kind {kind!r} (choose from {', '.join(DEFECT_KINDS)})")
    return out, mask


def corrupt(batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Training corruption of uint8 (B, H, W, C): irregular low-frequency masks filled with noise or a flat tone."""
    out = batch.copy()
    b, h, w, c = batch.shape
    for i in range(b):
        if rng.random() < 0.5:
            continue  # half the batch stays clean: the model must also reproduce normal input
        low = rng.random((max(2, h // 16), max(2, w // 16))).astype(np.float32)
        low = cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC)
        mask = low > np.quantile(low, 1 - rng.uniform(0.03, 0.2))
        if rng.random() < 0.5:
            fill = rng.integers(0, 256, (h, w, c), dtype=np.uint8)
        else:
            fill = np.full((h, w, c), rng.integers(0, 256, c), dtype=np.uint8)
        out[i][mask] = fill[mask]
    return out
