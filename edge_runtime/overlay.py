"""Drawing an anomaly result on a frame: heat map, box, score and state, legible at any resolution.

OpenCV only; the scorer's numbers come in, an annotated (H, W, 3) uint8 BGR frame goes out.
"""

from __future__ import annotations

import cv2
import numpy as np

from edge_runtime.task import as_bgr


def largest_region(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x, y, w, h) of the largest 8-connected region of a boolean (H, W) mask; None when it is empty."""
    if not mask.any():
        return None
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 1:
        return None
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, w, h = (int(v) for v in stats[best, :4])
    return x, y, w, h


def overlay(frame: np.ndarray, fmap: np.ndarray, threshold: float, *, score: float | None = None,
            bbox: tuple[int, int, int, int] | None = None, alarm: bool = False) -> np.ndarray:  # fmt: skip
    """(H, W, 3) uint8 BGR: the frame with a JET heat map blended where ``fmap`` is high, bbox and score drawn.

    ``fmap``: (H, W) in normalised units (:attr:`FrameScore.map`). The colour scale spans 0 to 2 x threshold;
    the blend fades in from half the threshold. ``bbox`` defaults to the largest region above the threshold;
    ``score`` to the map's maximum.
    """
    img = as_bgr(frame, copy=True)
    h, w = img.shape[:2]
    if fmap.shape != (h, w):
        fmap = cv2.resize(fmap.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    # OpenCV does the per-pixel work (colour index, blend): 2.7 ms against 11 ms for the same in float32 numpy
    # at 640x480 here, which mattered once inference ran on a GPU (BENCHMARKS.md, pipeline on CUDA).
    span = 2.0 * threshold if threshold > 0 else 1.0
    level = np.nan_to_num(fmap, nan=0.0).astype(np.float32, copy=False)
    heat = cv2.applyColorMap(cv2.convertScaleAbs(np.clip(level, 0.0, span), alpha=255.0 / span), cv2.COLORMAP_JET)
    low = 0.5 * threshold if threshold > 0 else 0.0
    alpha = np.clip((level - low) * (0.6 / max(threshold - low, 1e-6)), 0.0, 0.6).astype(np.float32)
    out = cv2.blendLinear(img, heat, 1.0 - alpha, alpha)
    if bbox is None:
        bbox = largest_region(fmap > threshold)
    if score is None:
        score = float(np.nanmax(fmap)) if fmap.size else 0.0
    state = "ALARM" if alarm else "above" if score > threshold else "normal"
    colour = (0, 0, 255) if state != "normal" else (0, 200, 0)
    if bbox is not None:
        x, y, bw, bh = bbox
        thick = max(2, round(min(h, w) / 240))
        cv2.rectangle(out, (x, y), (x + bw - 1, y + bh - 1), (0, 0, 255), thick)
    draw_label(out, f"{state}  score {score:.2f}  threshold {threshold:.2f}", colour,
               short=f"{state} {score:.1f}/{threshold:.1f}")  # fmt: skip
    return out


def draw_label(image: np.ndarray, text: str, colour: tuple[int, int, int], short: str = "") -> None:
    """``text`` at the top left on a dark box, sized to the frame (about 1/25 of its height) and measured with the
    thickness it is drawn with, so box and text agree at any resolution and on any OpenCV version. On a frame
    too narrow for ``text`` at a readable size (8 px), ``short`` is drawn instead."""
    h, w = image.shape[:2]
    font = cv2.FONT_HERSHEY_SIMPLEX
    scale = max(0.45, min(h / 25, w / 30) / 22)  # HERSHEY_SIMPLEX is ~22 px tall at scale 1
    for candidate in (text, short or text):
        fit = _fit(candidate, font, scale, w)
        if fit[4] >= MIN_TEXT_PX or candidate == (short or text):
            break
    text, scale, thickness, tw, th, base = candidate, *fit[:3], fit[4], fit[5]
    pad = max(2, th // 3)
    x0, y0 = 2, 2
    x1, y1 = min(w, x0 + tw + 2 * pad), min(h, y0 + th + base + 2 * pad)
    roi = image[y0:y1, x0:x1]
    roi[:] = (roi.astype(np.uint16) * 2 // 7).astype(np.uint8)  # darken to ~30 %: readable over any scene
    cv2.putText(image, text, (x0 + pad, y0 + pad + th), font, scale, colour, thickness, cv2.LINE_AA)


MIN_TEXT_PX = 9


def _fit(text: str, font: int, scale: float, width: int) -> tuple[float, int, int, int, int, int]:
    """(scale, thickness, text width, -, text height, baseline) with the box inside ``width``."""
    for _ in range(8):
        thickness = max(1, round(scale * 1.6))
        (tw, th), base = cv2.getTextSize(text, font, scale, thickness)
        pad = max(2, th // 3)
        if tw + 2 * pad + 4 <= width:
            break
        scale *= (width - 2 * pad - 6) / max(tw, 1)
    return scale, thickness, tw, 0, th, base
