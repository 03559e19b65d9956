"""Drawing an anomaly result on a frame: heat map, box, score and state, legible at any resolution.

OpenCV only; the scorer's numbers come in, an annotated (H, W, 3) uint8 BGR frame goes out.
"""

from __future__ import annotations

import cv2
import numpy as np


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
    if frame.ndim == 2 or frame.shape[2] == 1:
        img = cv2.cvtColor(frame.reshape(frame.shape[0], frame.shape[1]), cv2.COLOR_GRAY2BGR)
    elif frame.shape[2] == 4:
        img = cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    else:
        img = frame.copy()
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
    colour = (0, 0, 255) if (alarm or score > threshold) else (0, 200, 0)
    if bbox is not None:
        x, y, bw, bh = bbox
        cv2.rectangle(out, (x, y), (x + bw - 1, y + bh - 1), (0, 0, 255), 2)
    text = f"score {score:.2f} / {threshold:.2f}" + ("  ALARM" if alarm else "")
    scale = max(0.4, min(1.0, w / 640))
    cv2.putText(out, text, (8, int(24 * scale) + 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(out, text, (8, int(24 * scale) + 4), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)
    return out
