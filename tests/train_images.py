"""Tiny image folders for the training tests (on the test path through ``pythonpath = ["tests"]``)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def texture(rng: np.random.Generator, size: int = 64, channels: int = 3, grain: bool = True) -> np.ndarray:
    """A smooth random texture, uint8 (size, size, channels); ``grain`` adds fine noise of +-20 levels."""
    low = rng.integers(0, 256, (8, 8, channels), dtype=np.uint8)
    img = cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC).reshape(size, size, channels)
    if not grain:
        return img
    return np.clip(img.astype(np.int16) + rng.integers(-20, 21, img.shape), 0, 255).astype(np.uint8)


def write_images(folder: Path, n: int = 6, size: int = 64, seed: int = 0, grain: bool = True) -> Path:
    """``n`` textures as ``folder/imgNN.png`` (created if missing); returns ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        assert cv2.imwrite(str(folder / f"img{i:02d}.png"), texture(rng, size, grain=grain))
    return folder
