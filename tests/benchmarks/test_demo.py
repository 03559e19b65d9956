"""`edgeae demo` runs every task end to end on the committed default models (small frames, few of them)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.demo import run_demo

MODELS = Path(__file__).resolve().parents[2] / "models"


@pytest.mark.slow
def test_demo_runs_every_task_on_the_default_models(tmp_path):
    res = run_demo(tmp_path / "demo", MODELS, frames=8, precision="int8", threads=2, size=(192, 144))
    tasks = res["summary"]["tasks"]
    assert set(tasks) == {"denoise", "compress", "anomaly"}
    # Real models on real photographs: the numbers mean something, so bound them where a broken model fails.
    assert tasks["denoise"]["psnr_gain_db"] > 3.0  # sigma 15 noise on photographs
    assert 0.05 < tasks["compress"]["bpp"] < 4.0 and tasks["compress"]["psnr_db"] > 24.0
    assert tasks["anomaly"]["image_auroc"] > 0.7
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert summary["tasks"].keys() == tasks.keys()
    for name in ("input.mkv", "denoised.mkv", "video.eae", "decoded.mkv", "anomaly_overlay.mkv", "events.jsonl"):
        assert (tmp_path / "demo" / name).stat().st_size > 0
