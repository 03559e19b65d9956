"""The training report: loss / validation / health curves as PNG and report.md, one point per logged step."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("matplotlib")

from train_images import write_images  # noqa: E402

from training import report  # noqa: E402
from training.train import TrainConfig, train  # noqa: E402


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return write_images(tmp_path_factory.mktemp("data") / "imgs", grain=False)


def read_log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]


def decode_png(path: Path) -> np.ndarray:
    img = cv2.imread(str(path))
    assert img is not None, path
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert img.std() > 5  # not a blank canvas
    return img


@pytest.mark.parametrize("task", ["anomaly", "compress", "denoise"])
def test_report_after_training(tmp_path, images, task):
    run = tmp_path / "run"
    arch = "scene" if task == "anomaly" else None  # six images: below the inspection model's minimum
    cfg = TrainConfig(task=task, data=str(images), out=str(run), steps=7, batch=2, crop=32, width=8, val_every=3,
                      log_every=2, device="cpu", threads=1, collapse="off", arch=arch)  # fmt: skip
    summary = train(cfg, progress=False)
    written = report.write_report(run)
    names = [p.name for p in written]
    expected = ["loss.png", "val.png"] + (["health.png"] if task == "anomaly" else []) + ["report.md"]
    assert names == expected
    for p in written[:-1]:
        decode_png(p)

    log = read_log(run)
    n_train = len({r["step"] for r in log if r["kind"] == "train"})
    n_val = len({r["step"] for r in log if r["kind"] == "val"})
    assert n_train == 4 and n_val == 3  # steps 1, 2, 4, 6 / 3, 6, 7
    pts = report.curve_points
    assert pts["loss"] == pts["grad_norm"] == n_train
    val_curves = {k for k in pts if k.startswith("val:")}
    assert f"val:{summary['metric']}" in val_curves
    assert all(pts[k] == n_val for k in val_curves)
    if task == "anomaly":
        for k in ("latent_var_total", "latent_active_channels", "latent_effective_rank"):
            assert pts[f"health:{k}"] == n_val
        assert "val:latent_var_total" not in pts  # health numbers are not drawn as metrics

    md = (run / "report.md").read_text()
    assert f"# Training report: {run.name}" in md
    assert f"| task | {task} |" in md
    assert "| steps | 7 of 7 |" in md
    assert f"| MAC/pixel | {summary['macs_per_pixel']:,} |" in md
    assert f"| parameters | {summary['params']:,} |" in md
    assert f"best {summary['metric']}" in md
    assert "## Final validation" in md and f"| {summary['metric']} |" in md
    assert "## Warnings\n\nNone." in md and "## Rollbacks\n\nNone." in md
    assert "| images | 5 train, 1 validation, 0 skipped as unreadable |" in md
    for p in written[:-1]:
        assert f"]({p.name})" in md  # embedded by relative path


def _write_run(run: Path, records: list, summary: dict | None = None, torn: str | None = None) -> None:
    run.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r) for r in records]
    if torn:
        lines.append(torn)
    (run / "log.jsonl").write_text("\n".join(lines) + "\n")
    (run / "config.json").write_text(json.dumps({"task": "denoise", "macs_per_pixel": 1234, "params": 5678,
                                                 "model": {"task": "denoise", "width": 8},
                                                 "train": {"steps": 40, "data": "x", "batch": 2}}))  # fmt: skip
    if summary is not None:
        (run / "summary.json").write_text(json.dumps(summary))


def test_resumed_log_gives_one_point_per_step_and_marks_rollbacks_and_warnings(tmp_path):
    run = tmp_path / "run"
    t = lambda s, loss: {"step": s, "kind": "train", "loss": loss, "grad_norm": 1.0, "lr": 1e-3, "img_per_s": 50}  # noqa: E731
    v = lambda s, p, **kw: {"step": s, "kind": "val", "elapsed_s": s, "psnr": p, "latent_var_total": 0.1,  # noqa: E731
                            "latent_active_channels": 3, "latent_effective_rank": 2.0, **kw}  # fmt: skip
    records = [t(1, 1.0), t(10, 0.5), t(20, 0.4), v(20, 20.0), t(30, 0.3),  # killed at 30, checkpoint at 20
               t(30, 0.35), {"step": 33, "kind": "rollback", "lr_scale": 0.5}, t(40, float("nan")),
               v(40, 21.0, warning="latents collapsed at step 40: total variance 0, effective rank 0.00")]  # fmt: skip
    summary = {"task": "denoise", "steps": 40, "elapsed_s": 3725, "best": 21.0, "metric": "psnr",
               "final": {"psnr": 21.0}, "warnings": ["latents collapsed at step 40: ...", "non-finite loss at 33"],
               "macs_per_pixel": 1234, "params": 5678}  # fmt: skip
    _write_run(run, records, summary, torn='{"step": 41, "kind": "tra')
    written = report.write_report(run)
    assert [p.name for p in written] == ["loss.png", "val.png", "health.png", "report.md"]
    assert report.curve_points["loss"] == 5  # steps 1, 10, 20, 30, 40: the resumed step 30 replaces the first
    assert report.curve_points["val:psnr"] == 2
    assert report.curve_points["health:latent_effective_rank"] == 2
    md = (run / "report.md").read_text()
    assert "| time | 1h 02m 05s |" in md
    assert "best psnr | 21 at step 40" in md
    assert "1 non-finite loss(es) rolled back" in md and "final scale 0.5" in md and "step(s) 33" in md
    assert "- latents collapsed at step 40: ..." in md and "- non-finite loss at 33" in md
    assert "| throughput | 50 images/s" in md


def test_unfinished_run_is_reported_from_the_log(tmp_path):
    run = tmp_path / "run"
    _write_run(run, [{"step": 1, "kind": "train", "loss": 2.0, "grad_norm": 3.0, "lr": 1e-4},
                     {"step": 2, "kind": "val", "psnr": 12.0, "warning": "latents collapsed at step 2"}])  # fmt: skip
    written = report.write_report(run)
    assert [p.name for p in written] == ["loss.png", "val.png", "report.md"]
    md = written[-1].read_text()
    assert "did not finish" in md and "- latents collapsed at step 2" in md
    assert "| MAC/pixel | 1,234 |" in md and "| psnr | 12 |" in md


def test_empty_run_folder_gets_only_the_markdown(tmp_path):
    written = report.write_report(tmp_path)
    assert written == [tmp_path / "report.md"]
    assert "Nothing was logged yet." in written[0].read_text()
    assert report.curve_points == {}


def test_without_matplotlib_the_markdown_is_still_written(tmp_path, monkeypatch):
    _write_run(tmp_path / "run", [{"step": 1, "kind": "train", "loss": 2.0, "grad_norm": 3.0}])
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    written = report.write_report(tmp_path / "run")
    assert [p.name for p in written] == ["report.md"]
    assert "matplotlib is not installed" in written[0].read_text()


def test_cli_writes_the_report_of_a_stopped_run(tmp_path, images, monkeypatch):
    """A run stopped for collapsed latents (exit 3) still gets report.md showing why."""
    from click.testing import CliRunner
    from torch import nn

    import training.train as tt
    from edge_runtime.errors import BadDataError
    from training.cli import train as train_cmd

    class Zero(nn.Module):
        def forward(self, x):
            return x * 0.0

    class ZeroAE(tt.AnomalyAE):
        def __init__(self, cfg):
            super().__init__(cfg)
            self.encoder = nn.Sequential(self.encoder, Zero())

    monkeypatch.setattr(tt, "AnomalyAE", ZeroAE)
    out = tmp_path / "run"
    args = ["--task", "anomaly", "--arch", "scene", "--data", str(images), "--out", str(out), "--steps", "4",
            "--batch", "2", "--crop", "32", "--width", "8", "--device", "cpu", "--threads", "1", "--val-every", "2",
            "--collapse", "stop",
            "--no-progress"]  # fmt: skip
    r = CliRunner().invoke(train_cmd, args)
    assert isinstance(r.exception, BadDataError) and "latents collapsed" in str(r.exception)
    md = (out / "report.md").read_text()
    assert "did not finish" in md and "latents collapsed at step 2" in md
    assert (out / "health.png").is_file()
