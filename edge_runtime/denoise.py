"""Denoising: full-resolution frames, large ones in overlapping tiles blended without seams.

Frames whose colour does not match the model are converted, with a one-line note (a warning) on the first one and
a count in the stats: a colour frame to a gray model is denoised as its luma (BGR→GRAY; the output is gray); a gray
frame (one channel, or three equal channels, as a gray image file decodes) to a colour model is denoised as three
equal channels (the output is a 3-channel image).
"""

from __future__ import annotations

import warnings
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


def frame_colour_channels(frame: np.ndarray) -> int:
    """1 for a gray frame ((H, W), (H, W, 1), or BGR/BGRA whose three colour channels are equal), else 3.

    A coarse grid of rows is compared first, so a colour frame costs almost nothing; only a frame that looks gray
    there is compared whole.
    """
    if frame.ndim == 2 or frame.shape[2] == 1:
        return 1
    b, g, r = frame[..., 0], frame[..., 1], frame[..., 2]
    for rows in (slice(None, None, 16), slice(None)):
        if not (np.array_equal(b[rows], g[rows]) and np.array_equal(g[rows], r[rows])):
            return 3
    return 1


class DenoiseTask:
    """The frame loop's denoise task: ``process(frame) -> Outcome(image=denoised)``; any size (tiled).

    A frame whose colour differs from the model's (see the module docstring) is converted; the first one warns
    once, and ``summary()`` counts them in ``frames_converted``.
    """

    kind = "denoise"

    def __init__(self, denoiser: Denoiser, max_side: int = MAX_SIDE):
        self.den = denoiser
        self.max_side = max_side
        self.channels = denoiser.graph.frame_channels()
        self.converted = 0

    def process(self, frame: Any) -> Outcome:
        image = check_frame(frame.image, self.max_side)
        have = frame_colour_channels(image)
        if have != self.channels:
            if not self.converted:
                where = getattr(frame, "name", "") or f"frame {getattr(frame, 'index', 0)}"
                warnings.warn(conversion_note(have, self.channels, where), stacklevel=2)
            self.converted += 1
        return Outcome(image=self.den.denoise(image))

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"providers": list(self.den.graph.providers)}
        if self.converted:
            out["frames_converted"] = self.converted
            out["conversion"] = conversion_note(1 if self.channels == 3 else 3, self.channels)
        return out


def conversion_note(have: int, want: int, where: str = "") -> str:
    """The one-line note for a frame of ``have`` colour channels given to a model of ``want``."""
    first = f" (first: {where})" if where else ""
    if want == 1:
        return (f"the model is gray (1 channel) and a frame is colour (3 channels){first}: colour frames are "
                "converted to gray (BGR->GRAY) and denoised as gray")  # fmt: skip
    return (f"the model is colour (3 channels) and a frame is gray (1 channel){first}: gray frames are denoised as "
            "three equal channels")  # fmt: skip
