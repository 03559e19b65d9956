"""What a task is to the frame loop: ``process(frame) -> Outcome``, and nothing else.

A task (denoise, anomaly score, compress, decompress, embed) turns one frame into an :class:`Outcome`; it never
opens a source or a file. The loop (:mod:`edge_runtime.pipeline`) hands each field of the outcome to the sinks
that asked for it. A frame the task cannot take raises :class:`~edge_runtime.errors.FrameError`; the loop counts
it and goes on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import cv2
import numpy as np

from edge_runtime.errors import FrameError

EVENTS_VERSION = 1  # the "v" of every event line; docs/events.md


@dataclass
class Outcome:
    """One processed frame.

    image: the output frame for file outputs ((H, W, C) uint8: denoised, decoded, or the anomaly overlay);
    view: the annotated frame for the live view and recordings (None: same as ``image``);
    event: task fields of this frame's ``frame`` event line (None: the task writes no frame events);
    extra: further event lines, each with its own ``type`` (an alarm starting or ending);
    record: a :class:`~edge_runtime.bitstream.FrameRecord` for the ``.eae`` sink;
    vector: an embedding (D,) float32;
    stages: milliseconds of parts of the task's work it timed itself (``entropy``, ``postprocess``); the loop
    counts the rest of its time as ``inference``.
    """

    image: np.ndarray | None = None
    view: np.ndarray | None = None
    event: dict[str, Any] | None = None
    extra: list[dict[str, Any]] = field(default_factory=list)
    record: Any = None
    vector: np.ndarray | None = None
    stages: dict[str, float] = field(default_factory=dict)

    def get(self, name: str) -> Any:
        if name == "view":
            return self.view if self.view is not None else self.image
        return getattr(self, name)


class Task(Protocol):
    """The one shape every task has. ``kind`` names it in events and stats."""

    kind: str

    def process(self, frame: Any) -> Outcome: ...

    def summary(self) -> dict[str, Any]: ...


def check_frame(image: Any, max_side: int, channels: tuple[int, ...] = (1, 3, 4)) -> np.ndarray:
    """``image`` if it is a uint8 (H, W[, C]) frame a model can take, else FrameError (the frame is skipped).

    Checked before any buffer of the frame's size is made: a camera that sends one 12000x12000 picture costs a
    skipped frame, not the run.
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim not in (2, 3):
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise FrameError(f"not a uint8 image frame ({got})")
    h, w = image.shape[:2]
    if h == 0 or w == 0:
        raise FrameError(f"empty frame {w}x{h}")
    if h > max_side or w > max_side:
        raise FrameError(f"frame {w}x{h} is over the model's limit of {max_side} pixels per side")
    if image.ndim == 3 and image.shape[2] not in channels:
        raise FrameError(f"frame has {image.shape[2]} channels; expected {' or '.join(map(str, channels))}")
    return image


def as_bgr(frame: np.ndarray, copy: bool = False) -> np.ndarray:
    """(H, W, 3) uint8 BGR from a gray (H, W) / (H, W, 1), BGRA or BGR frame (a BGR frame itself unless ``copy``)."""
    if frame.ndim == 2 or frame.shape[2] == 1:
        return cv2.cvtColor(frame.reshape(frame.shape[0], frame.shape[1]), cv2.COLOR_GRAY2BGR)
    if frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    return frame.copy() if copy else frame
