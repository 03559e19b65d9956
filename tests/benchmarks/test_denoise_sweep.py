"""benchmarks.denoise_sweep: per-image scores for every method and σ, the reference on its subset, the plot."""

from __future__ import annotations

import json

import cv2
import numpy as np

from benchmarks import denoise_sweep as ds
from benchmarks.quality import noisy_image


def _images(n: int, color: bool) -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        small = rng.integers(0, 256, (8, 8, 3) if color else (8, 8), dtype=np.uint8)
        out.append((f"im{i}", cv2.resize(small, (48, 40), interpolation=cv2.INTER_CUBIC)))
    return out


def test_sweep_scores_every_image_and_the_reference_on_its_subset(tmp_path):
    sets = {"gray": _images(3, False), "colour": _images(2, True)}
    seen = []

    def blur(nz, sigma):
        seen.append((nz.shape, sigma))
        return cv2.GaussianBlur(nz, (0, 0), 1.0)

    saved = []
    res = ds.sweep(sets, {n: {"blur": blur} for n in sets}, {n: lambda nz, s: nz for n in sets}, sigmas=[0.0, 25.0],
                   ref_images=1, save=lambda r: saved.append(json.dumps(r, allow_nan=False)))  # fmt: skip
    cell = res["sets"]["gray"]["sigma"]["25"]
    assert [len(cell[m]) for m in ("noisy", "blur", "reference")] == [3, 3, 1]
    # The noise is benchmarks.quality's: the reference (identity here) scores exactly the noisy input.
    assert cell["reference"][0] == cell["noisy"][0]
    clean = sets["gray"][0][1]
    assert abs(cell["noisy"][0]["psnr"] - ds.bl.psnr(clean, noisy_image(clean, 25.0, 0))) < 1e-3
    assert res["sets"]["gray"]["sigma"]["0"]["noisy"][0]["psnr"] is None  # exact: no infinity in the JSON
    rows = {(r["set"], r["sigma"], r["method"]): r for r in res["summary"]}
    assert rows[("gray", 25.0, "blur (ref images)")]["images"] == 1 and rows[("gray", 25.0, "blur")]["images"] == 3
    assert rows[("gray", 0.0, "reference")]["psnr"] is None
    assert len(saved) >= 2 and len(seen) == 2 * (3 + 2)
    ds.plot(res, tmp_path / "p.png", {})
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| blur |" in ds.format_summary(res)
