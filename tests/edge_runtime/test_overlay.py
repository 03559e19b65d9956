"""The overlay a person reads on the live view: state, score and threshold legible at any size; the alarm box."""

from __future__ import annotations

import numpy as np
import pytest

from edge_runtime.overlay import draw_label, overlay


@pytest.mark.parametrize("size", [(96, 128), (360, 640), (720, 1280), (1080, 1920), (480, 200)])
def test_label_text_lies_inside_its_box_at_any_size(size):
    """The box is measured with the thickness the text is drawn with: no glyph outside it, none cut off."""
    h, w = size
    image = np.full((h, w, 3), 255, np.uint8)
    draw_label(image, "ALARM  score 12.34  threshold 4.00", (0, 0, 255), short="ALARM 12.3/4.0")
    dark = image.max(axis=2) < 255  # the box darkens every pixel it covers
    ys, xs = np.nonzero(dark)
    y0, y1, x0, x1 = ys.min(), ys.max(), xs.min(), xs.max()
    im = image.astype(np.int16)
    text = (im[:, :, 2] > im[:, :, 0] + 40) & (im[:, :, 2] > 120)  # the red glyphs
    ty, tx = np.nonzero(text)
    assert ty.size > 0
    assert ty.min() > y0 and ty.max() < y1 and tx.min() > x0 and tx.max() < x1
    assert (ty.max() - ty.min()) >= 7  # readable even on a small frame (the short form there)
    assert min(h, w) < 400 or (ty.max() - ty.min()) >= h / 40  # and it grows with the frame


def test_overlay_draws_state_box_and_threshold():
    frame = np.full((360, 640, 3), 128, np.uint8)
    fmap = np.zeros((360, 640), np.float32)
    fmap[100:160, 300:380] = 9.0
    alarm = overlay(frame, fmap, 4.0, score=9.0, bbox=(300, 100, 80, 60), alarm=True)
    calm = overlay(frame, np.zeros_like(fmap), 4.0, score=0.5, bbox=None, alarm=False)
    assert (alarm[100, 300:380] == (0, 0, 255)).all(axis=1).mean() > 0.9  # the box's top edge in red
    red = lambda im: int(((im[:, :, 2] > 200) & (im[:, :, 1] < 60) & (im[:, :, 0] < 60)).sum())  # noqa: E731
    green = lambda im: int(((im[:, :, 1] > 150) & (im[:, :, 2] < 60) & (im[:, :, 0] < 60)).sum())  # noqa: E731
    assert red(alarm[:40]) > 50 and green(calm[:40]) > 50 and red(calm) == 0
