"""Denoising: full-resolution frames, large ones in overlapping tiles blended without seams."""

from __future__ import annotations

import time

import numpy as np

from edge_runtime.errors import BadDataError, ModelRejectedError
from edge_runtime.model import open_graph
from edge_runtime.outputs import FolderSink, VideoSink, output_kind, write_image
from edge_runtime.sources import open_source
from edge_runtime.stats import StageClock


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


def denoise_source(model, input_spec, output, *, tile: int = 1024, precision: str = "fp32", device: str = "cpu",
                   allow_fallback: bool = False, threads: int | None = None) -> dict:  # fmt: skip
    """Denoise every frame of ``input_spec`` (image, folder, glob, video) into ``output`` (image, folder, video).

    Returns statistics; ``stats["error"]`` is set (and the outputs of the good frames are kept) when corrupt
    images were skipped or a video ended early.
    """
    den = Denoiser(model, precision, device, threads, allow_fallback, tile)
    kind = output_kind(output)
    clock = StageClock()
    t0 = time.perf_counter()
    n = 0
    with open_source(input_spec) as src:
        sink = None
        if kind == "video":
            sink = VideoSink(output, fps=src.fps or 25.0)
        elif kind == "folder":
            sink = FolderSink(output)
        try:
            it = iter(src)
            while True:
                with clock.stage("capture"):
                    frame = next(it, None)
                if frame is None:
                    break
                with clock.stage("inference"):
                    out = den.denoise(frame.image)
                with clock.stage("output"):
                    if kind == "image":
                        if n > 0:
                            raise BadDataError(f"{output}: an image output takes one frame; use a folder or video")
                        write_image(output, out)
                    elif isinstance(sink, FolderSink):
                        sink.write(out, name=frame.name, index=frame.index)
                    else:
                        sink.write(out)
                n += 1
        except BaseException:
            if sink is not None:
                sink.abort()
            raise
        if sink is not None:
            sink.close()
        stats = src.stats
    elapsed = time.perf_counter() - t0
    result = {"frames_in": stats.frames_read, "frames_processed": n, "frames_bad": stats.frames_bad,
              "fps": n / elapsed if elapsed > 0 else 0.0, "stages": clock.summary(), "output": str(output)}  # fmt: skip
    if n == 0:
        raise BadDataError(f"{input_spec}: no frame could be read")
    if stats.frames_bad:
        result["error"] = (f"{input_spec}: {stats.frames_bad} input(s) could not be read "
                           f"({', '.join(stats.bad_files[:3])}); the other {n} were written to {output}")  # fmt: skip
    elif stats.truncated:
        result["error"] = f"{input_spec}: video ended early after {n} good frames; they were written to {output}"
    return result
