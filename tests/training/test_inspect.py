"""The inspection anomaly model: synthetic defects, the network and its graph, training defaults and errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402
from train_images import write_images  # noqa: E402

from edge_runtime.errors import BadDataError, UsageError  # noqa: E402
from training.cli import train as train_cmd  # noqa: E402
from training.inspect_model import InspectConfig, InspectFrameGraph, InspectNet, focal_loss, standardize  # noqa: E402
from training.synth import add_anomaly, synth_batch  # noqa: E402
from training.train import MIN_INSPECT_IMAGES, TrainConfig, option_defaults, train  # noqa: E402


@pytest.fixture(scope="module")
def normals(tmp_path_factory) -> Path:
    return write_images(tmp_path_factory.mktemp("inspect") / "good", n=MIN_INSPECT_IMAGES + 4, size=80)


def test_a_synthetic_defect_changes_its_mask_and_nothing_else():
    rng = np.random.default_rng(0)
    img = np.full((96, 96, 3), 128, np.uint8)
    donor = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    changed_anywhere = 0
    for _ in range(40):
        out, mask = add_anomaly(img, rng, donor)
        assert out.shape == img.shape and out.dtype == np.uint8 and mask.shape == (96, 96)
        assert set(np.unique(mask)) <= {0.0, 1.0}
        diff = np.abs(out.astype(int) - img).max(axis=2)
        # outside the mask (and the 1-px soft edge of a crack) the image is untouched
        far = cv2_dilate(mask) == 0
        assert diff[far].max(initial=0) == 0
        changed_anywhere += int(diff[mask > 0].max(initial=0) > 0)
    assert changed_anywhere >= 30  # nearly every defect is visible (a flat image hides only "smooth" ones)


def cv2_dilate(mask: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.dilate(mask, np.ones((5, 5), np.uint8))


def test_synth_batch_marks_about_half_and_varies_exposure():
    rng = np.random.default_rng(1)
    batch = np.full((64, 32, 32, 1), 100, np.uint8)
    images, masks = synth_batch(batch, rng)
    with_defect = (masks.reshape(64, -1).max(axis=1) > 0).sum()
    assert 16 <= with_defect <= 48
    means = images.reshape(64, -1).mean(axis=1)
    assert means.std() > 5  # gain and offset jitter: the model must not learn exposure


@pytest.mark.parametrize(("channels", "hw"), [(1, (64, 96)), (3, (80, 48))])
def test_graph_is_fully_convolutional_with_a_probability_map(channels, hw):
    net = InspectNet(InspectConfig(channels=channels, width=8)).eval()
    frame = torch.randint(0, 256, (2, *hw, channels), dtype=torch.uint8)
    amap, score, feat = InspectFrameGraph(net)(frame)
    assert amap.shape == (2, *hw) and score.shape == (2,) and feat.shape == (2, 32, hw[0] // 8, hw[1] // 8)
    amap = amap.detach()
    assert float(amap.min()) >= 0 and float(amap.max()) <= 1
    assert torch.all(score <= amap.amax(dim=(1, 2)) + 1e-6)  # a window mean never exceeds the map's maximum


def test_standardize_removes_exposure():
    x = torch.rand(2, 3, 32, 32) * 0.7
    assert torch.allclose(standardize(x), standardize(x + 0.2), atol=1e-5)  # an offset vanishes exactly
    assert torch.allclose(standardize(x), standardize(x * 0.8), atol=0.05)  # a gain nearly (the floor of 0.02)
    assert not torch.allclose(standardize(x), standardize(x.flip(-1)), atol=0.05)


def test_focal_loss_learns_a_pasted_square():
    """A few dozen steps on one fixed batch must cut the loss: the loss and the net can learn."""
    torch.manual_seed(0)
    net = InspectNet(InspectConfig(channels=1, width=8))
    x = torch.rand(4, 1, 64, 64) * 0.2 + 0.4
    target = torch.zeros(4, 1, 16, 16)
    x[:2, :, 16:32, 16:32] = 0.05
    target[:2, :, 4:8, 4:8] = 1
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    first = None
    for _ in range(60):
        loss = focal_loss(net(standardize(x))[0], target)
        first = first if first is not None else float(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < 0.3 * first


def test_defaults_depend_on_task_and_arch():
    assert TrainConfig(task="anomaly").arch == "inspect"
    assert TrainConfig(task="anomaly", arch="factorized").arch == "scene"  # runs written before the option
    assert TrainConfig(task="compress").arch == "factorized"
    with pytest.raises(UsageError, match="--arch for --task denoise"):
        TrainConfig(task="denoise", arch="hyper")
    with pytest.raises(UsageError, match="inspect, scene"):
        TrainConfig(task="anomaly", arch="hyper")
    inspect, scene = option_defaults("anomaly", None), option_defaults("anomaly", "scene")
    assert inspect["minutes"] <= 20 and inspect["crop"] == 256
    assert "minutes" not in scene and scene["crop"] == 96


def invoke(*args):
    return CliRunner().invoke(train_cmd, [str(a) for a in args])


def test_cli_trains_the_inspection_model_by_default(tmp_path, normals):
    out = tmp_path / "run"
    r = invoke("--task", "anomaly", "--data", normals, "--out", out, "--steps", 4, "--batch", 2, "--width", 8,
               "--val-every", 2, "--threads", 1, "--no-progress")  # fmt: skip
    assert r.exit_code == 0, r.output + repr(r.exception)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["arch"] == "inspect" and cfg["train"]["arch"] == "inspect"
    # the given --steps is the budget (no time cap); the crop shrank to the 80-px images (a multiple of 16)
    assert cfg["train"]["minutes"] is None and cfg["train"]["steps"] == 4 and cfg["crop_used"] == 80
    assert json.loads((out / "summary.json").read_text())["steps"] == 4
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert any(rec["kind"] == "val" and "image_auroc" in rec and "pixel_auroc" in rec for rec in log)
    # a resumed run keeps the architecture, and refuses another
    r = invoke("--out", out, "--resume", "--arch", "scene")
    assert isinstance(r.exception, UsageError) and "--arch" in str(r.exception)


def test_without_steps_the_run_gets_the_time_cap(tmp_path, normals):
    from training.cli import _resume_options  # noqa: F401  (the module the defaults live beside)

    seen = {}

    def fake_train(cfg, progress=True):
        seen["cfg"] = cfg
        return {}

    import training.train as tt

    orig = tt.train
    tt.train = fake_train
    try:
        r = invoke("--task", "anomaly", "--data", normals, "--out", tmp_path / "r")
    finally:
        tt.train = orig
    assert r.exit_code == 0, r.output + repr(r.exception)
    cfg = seen["cfg"]
    assert (cfg.minutes, cfg.crop, cfg.batch, cfg.arch) == (18.0, 256, 8, "inspect")


def test_too_few_normal_images_is_one_line_and_writes_nothing(tmp_path):
    few = write_images(tmp_path / "few", n=MIN_INSPECT_IMAGES - 1, size=80)
    out = tmp_path / "run"
    r = invoke("--task", "anomaly", "--data", few, "--out", out, "--steps", 2, "--no-progress")
    assert isinstance(r.exception, BadDataError) and r.exception.exit_code == 3
    msg = str(r.exception)
    assert (
        "\n" not in msg and f"needs at least {MIN_INSPECT_IMAGES}" in msg and f"{MIN_INSPECT_IMAGES - 1} normal" in msg
    )
    assert not out.exists() or not any(out.iterdir())


def test_images_under_64_px_are_refused(tmp_path):
    small = write_images(tmp_path / "small", n=MIN_INSPECT_IMAGES, size=48)
    with pytest.raises(BadDataError, match="smaller than 64"):
        train(TrainConfig(task="anomaly", data=str(small), out=str(tmp_path / "r"), steps=1, device="cpu"),
              progress=False)  # fmt: skip
