"""Synthetic anomalies for training the inspection model (numpy + OpenCV only), with their pixel masks.

Each defect is a mask and a fill. Masks: low-frequency noise thresholded at a random level (irregular blobs
of random size, like Perlin-noise masks in DRAEM) or thin polylines (cracks, scratches). Fills: texture from
another normal image (rotated, blended 30-100 %), a darker or brighter copy, a smoothed copy, a noise texture
of the image's mean, or a darker (rarely brighter) line. None of them needs data from outside the user's normal
images. The validation defects of ``training.defects.paste_defect`` are a different family (pasted polygons,
straight scratches of flat tone, colour stains), so validation does not test the shapes the model was taught.
"""

from __future__ import annotations

import cv2
import numpy as np

FILLS = ("foreign", "shade", "smooth", "noise", "crack")


def blob_mask(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """float32 (h, w) in {0, 1}: a thresholded low-frequency noise field (one or several irregular blobs)."""
    cell = int(2 ** rng.integers(3, 7))  # 8-64 px noise cells
    grid = rng.random((max(2, h // cell + 2), max(2, w // cell + 2))).astype(np.float32)
    field = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    field = cv2.GaussianBlur(field, (0, 0), 1.5)
    level = np.quantile(field, rng.uniform(0.85, 0.99))
    return (field > level).astype(np.float32)


def crack_mask(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """float32 (h, w): one or two thin polylines, nearly straight, 20-120 % of the image side long."""
    mask = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(1, 3))):
        p = np.array([rng.uniform(0, w), rng.uniform(0, h)])
        angle = rng.uniform(0, 2 * np.pi)
        length = rng.uniform(0.2, 1.2) * max(h, w)
        parts = int(rng.integers(1, 4))
        pts = [p.copy()]
        for _ in range(parts):
            angle += rng.normal(0, 0.25)
            p = p + length / parts * np.array([np.cos(angle), np.sin(angle)])
            pts.append(p.copy())
        cv2.polylines(mask, [np.array(pts, np.int32)], False, 1, int(rng.integers(1, 3)))
    return mask.astype(np.float32)


def _fill(x: np.ndarray, kind: str, rng: np.random.Generator, donor: np.ndarray) -> np.ndarray:
    """float32 (h, w, c) image -> the float32 fill of a defect of ``kind``."""
    h, w, c = x.shape
    if kind == "foreign":
        d = np.rot90(donor, int(rng.integers(4))).astype(np.float32)
        d = cv2.resize(d, (w, h)) if d.shape[:2] != (h, w) else d
        d = d.reshape(h, w, -1)[:, :, :c]
        beta = rng.uniform(0.3, 1.0)
        return beta * d + (1 - beta) * x
    if kind == "shade":
        gain = rng.uniform(0.15, 0.75) if rng.random() < 0.7 else rng.uniform(1.3, 2.0)
        return x * gain
    if kind == "smooth":
        return cv2.GaussianBlur(x, (0, 0), rng.uniform(2, 6)).reshape(h, w, c)
    if kind == "noise":
        n = cv2.GaussianBlur(rng.uniform(0, 255, (h, w)).astype(np.float32), (0, 0), rng.uniform(0.5, 3))
        n = (n - n.mean()) / (n.std() + 1e-6) * rng.uniform(10, 50)
        return n[:, :, None] + x.mean(axis=(0, 1))
    if kind == "crack":
        return x * (rng.uniform(0.3, 0.8) if rng.random() < 0.85 else rng.uniform(1.2, 1.6))
    raise ValueError(f"unknown fill {kind!r}")


def add_anomaly(img: np.ndarray, rng: np.random.Generator, donor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (h, w, c) -> (uint8 image with one synthetic defect, float32 (h, w) mask, 1 on the defect)."""
    h, w, _ = img.shape
    kind = FILLS[int(rng.choice(len(FILLS), p=(0.2, 0.2, 0.15, 0.15, 0.3)))]
    mask = crack_mask(h, w, rng) if kind == "crack" else blob_mask(h, w, rng)
    if mask.sum() < 4:
        return img, np.zeros((h, w), np.float32)
    x = img.astype(np.float32)
    soft = cv2.GaussianBlur(mask, (0, 0), 0.7) if kind == "crack" else mask
    out = x * (1 - soft[:, :, None]) + _fill(x, kind, rng, donor) * soft[:, :, None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), mask


def synth_batch(batch: np.ndarray, rng: np.random.Generator, share: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (B, h, w, c) normal crops -> (images, float32 masks (B, h, w)).

    Every crop first gets a random gain and offset (the model must not care about exposure); then ``share`` of
    them get one defect, with texture taken from another crop of the batch where the fill needs it.
    """
    b, h, w, c = batch.shape
    gain = rng.uniform(0.8, 1.2, (b, 1, 1, 1))
    offset = rng.uniform(-20, 20, (b, 1, 1, 1))
    out = np.clip(np.rint(batch * gain + offset), 0, 255).astype(np.uint8)
    masks = np.zeros((b, h, w), np.float32)
    for i in range(b):
        if rng.random() < share:
            donor = out[(i + 1 + int(rng.integers(max(1, b - 1)))) % b]
            out[i], masks[i] = add_anomaly(out[i], rng, donor)
    return out, masks
