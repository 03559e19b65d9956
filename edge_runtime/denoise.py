"""Denoising: full-resolution frames, large ones in overlapping tiles blended without seams."""

from __future__ import annotations

from typing import Any

import numpy as np

from edge_runtime.errors import ModelRejectedError
from edge_runtime.model import open_graph
from edge_runtime.task import Outcome, check_frame

# Frames larger than a tile are denoised in tiles, so the graph's own max side does not bound the frame; this
# does (the sources' cap on decoded images).
MAX_SIDE = 16384


def _ramp(n: int, overlap: int, at_start: bool, at_end: bool) -> np.ndarray:
    """1-D blending weights: linear ramps over the overlap where a neighbouring tile exists."""
    w = np.ones(n, np.float32)
    if overlap > 0:
        r = (np.arange(overlap, dtype=np.float32) + 0.5) / overlap
        if not at_start:
            w[:overlap] = np.minimum(w[:overlap], r)
        if not at_end:
            w[n - overlap :] = np.minimum(w[n - overlap :], r[::-1])
    return w


def tile_starts(size: int, tile: int, overlap: int, multiple: int) -> list[int]:
    """Start offsets of tiles of length ``tile`` covering ``size`` with at least ``overlap`` shared pixels."""
    if size <= tile:
        return [0]
    step = max(multiple, (tile - overlap) // multiple * multiple)
    starts = list(range(0, size - tile, step)) + [size - tile]
    return sorted(set(starts))


def denoise_tiled(run, frame: np.ndarray, tile: int, overlap: int = 32, multiple: int = 8) -> np.ndarray:
    """Denoise ``frame`` (H, W, C) uint8 with ``run(tile) -> tile`` on overlapping tiles, blended linearly.

    Each output pixel is a weighted mean of the tiles covering it, the weights ramping to zero towards a tile's
    inner edges, so tile borders (where a convolution sees padding) never show.
    """
    h, w = frame.shape[:2]
    tile = max(multiple, tile // multiple * multiple)
    if h <= tile and w <= tile:
        return run(frame)
    th, tw = min(tile, h), min(tile, w)
    ys, xs = tile_starts(h, th, overlap, multiple), tile_starts(w, tw, overlap, multiple)
    acc = np.zeros(frame.shape, np.float32)
    wsum = np.zeros(frame.shape[:2] + (1,) * (frame.ndim - 2), np.float32)
    for y in ys:
        wy = _ramp(th, overlap, y == 0, y + th >= h)
        for x in xs:
            wx = _ramp(tw, overlap, x == 0, x + tw >= w)
            out = run(np.ascontiguousarray(frame[y : y + th, x : x + tw]))
            weight = np.outer(wy, wx).reshape(th, tw, *([1] * (frame.ndim - 2)))
            acc[y : y + th, x : x + tw] += out.reshape(acc[y : y + th, x : x + tw].shape) * weight
            wsum[y : y + th, x : x + tw] += weight
    return np.clip(np.round(acc / wsum), 0, 255).astype(np.uint8)


class Denoiser:
    """A denoising bundle ready to run: ``denoise(frame (H, W, C) uint8 BGR/gray) -> same shape uint8``."""

    def __init__(self, model, precision: str = "fp32", device: str = "cpu", threads: int | None = None,
                 allow_fallback: bool = False, tile: int = 1024, overlap: int = 32):  # fmt: skip
        self.graph = open_graph(model, "denoise", precision, device=device, threads=threads,
                                allow_fallback=allow_fallback)  # fmt: skip
        if self.graph.info.metadata.get("edgeae.task") != "denoise":
            raise ModelRejectedError(f"{model}: not a denoising model")
        self.tile, self.overlap = tile, overlap
        self.multiple = self.graph.info.input_multiple

    def _run(self, frame: np.ndarray) -> np.ndarray:
        out = self.graph.run_frame(frame)["denoised"]
        return out.reshape(frame.shape) if out.size == frame.size else out

    def denoise(self, frame: np.ndarray) -> np.ndarray:
        return denoise_tiled(self._run, frame, self.tile, self.overlap, self.multiple)


class DenoiseTask:
    """The frame loop's denoise task: ``process(frame) -> Outcome(image=denoised)``; any size (tiled)."""

    kind = "denoise"

    def __init__(self, denoiser: Denoiser, max_side: int = MAX_SIDE):
        self.den = denoiser
        self.max_side = max_side

    def process(self, frame: Any) -> Outcome:
        image = check_frame(frame.image, self.max_side)
        return Outcome(image=self.den.denoise(image))

    def summary(self) -> dict[str, Any]:
        return {"providers": list(self.den.graph.providers)}
