"""Training health: latent statistics, collapse warning / stop, gradient clipping, rollback on non-finite loss."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from train_images import write_images  # noqa: E402

import training.train as tt  # noqa: E402
from edge_runtime.errors import BAD_DATA, BadDataError  # noqa: E402
from training import health  # noqa: E402
from training.train import TrainConfig, train  # noqa: E402


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """14 textures: the fixed split holds out two of them, so pooled latents have more than one row."""
    return write_images(tmp_path_factory.mktemp("data") / "imgs", n=14)


def cfg_for(out: Path, data: Path, task: str = "compress", **kw) -> TrainConfig:
    base = dict(task=task, data=str(data), out=str(out), steps=6, batch=2, crop=32, width=8, val_every=3,
                log_every=1, device="cpu", threads=1)  # fmt: skip
    if task == "anomaly":
        base["arch"] = "scene"  # the autoencoder; the inspection model has its own tests (test_inspect.py)
    return TrainConfig(**{**base, **kw})


def read_log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]


# --- latent_health on synthetic latents ----------------------------------------------------------------------


def test_latent_health_random_latents_are_healthy():
    z = torch.randn(16, 12, 4, 4, generator=torch.Generator().manual_seed(0))
    h = health.latent_health(z)
    assert set(h) == {"latent_var_total", "latent_var_max", "latent_active_channels", "latent_effective_rank"}
    assert h["latent_var_total"] == pytest.approx(12.0, rel=0.2)
    assert h["latent_active_channels"] == 12
    assert 4.0 < h["latent_effective_rank"] <= 12.0
    assert not health.is_collapsed(h)
    assert isinstance(h["latent_active_channels"], int)
    assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in h.values())


@pytest.mark.parametrize("value", [0.0, 3.5])
def test_latent_health_constant_latents_are_collapsed(value):
    h = health.latent_health(torch.full((8, 6, 3, 3), value))
    assert h == {"latent_var_total": 0.0, "latent_var_max": 0.0, "latent_active_channels": 0,
                 "latent_effective_rank": 0.0}  # fmt: skip
    assert health.is_collapsed(h)


def test_latent_health_every_image_on_one_point_is_collapsed():
    # spatial variation but the same pooled vector for every image: nothing tells the images apart
    pattern = torch.randn(1, 6, 4, 4, generator=torch.Generator().manual_seed(1))
    h = health.latent_health(pattern.repeat(8, 1, 1, 1))
    assert h["latent_var_total"] > 0.5 and h["latent_effective_rank"] == 0.0
    assert health.is_collapsed(h)


def test_latent_health_one_direction_has_rank_one():
    g = torch.Generator().manual_seed(2)
    direction = torch.randn(1, 8, 1, 1, generator=g)
    scale = torch.randn(10, 1, 1, 1, generator=g)
    h = health.latent_health(direction * scale)
    assert h["latent_effective_rank"] == pytest.approx(1.0, abs=1e-6)
    assert not health.is_collapsed(h)  # low rank is logged, not an error: only (almost) none is a collapse


def test_latent_health_counts_dead_channels_and_ignores_a_single_image():
    z = torch.randn(8, 5, 2, 2, generator=torch.Generator().manual_seed(3))
    z[:, 1:3] = 0.25
    assert health.latent_health(z)["latent_active_channels"] == 3
    single = health.latent_health(z[:1])
    assert single["latent_effective_rank"] == 0.0


# --- collapse during training --------------------------------------------------------------------------------


class _Zero(nn.Module):
    def forward(self, x):
        return x * 0.0


def _zero_encoder(monkeypatch, task: str) -> None:
    """Replace the task's model so its encoder output (the latents) is constant zero."""
    if task == "compress":

        class ZeroCodec(tt.Codec):
            def __init__(self, cfg):
                super().__init__(cfg)
                self.g_a = nn.Sequential(self.g_a, _Zero())

        monkeypatch.setattr(tt, "Codec", ZeroCodec)
    else:

        class ZeroAE(tt.AnomalyAE):
            def __init__(self, cfg):
                super().__init__(cfg)
                self.encoder = nn.Sequential(self.encoder, _Zero())

        monkeypatch.setattr(tt, "AnomalyAE", ZeroAE)


def test_healthy_codec_logs_latent_health_without_warning(tmp_path, images):
    run = tmp_path / "run"
    summary = train(cfg_for(run, images, collapse="stop"), progress=False)
    assert summary["warnings"] == []
    vals = [r for r in read_log(run) if r["kind"] == "val"]
    assert len(vals) == 2
    for r in vals:
        assert r["latent_var_total"] > 1e-6 and r["latent_effective_rank"] >= 0.5 and "warning" not in r
    assert len(json.loads((run / "split.json").read_text())["val"]) == 2


@pytest.mark.parametrize("task", ["compress", "anomaly"])
def test_collapsed_latents_warn(tmp_path, images, monkeypatch, task):
    _zero_encoder(monkeypatch, task)
    run = tmp_path / "run"
    summary = train(cfg_for(run, images, task), progress=False)  # collapse="warn" is the default
    assert summary["steps"] == 6
    assert len(summary["warnings"]) == 2
    assert all("latents collapsed" in w and "total variance 0" in w for w in summary["warnings"])
    vals = [r for r in read_log(run) if r["kind"] == "val"]
    assert [r["step"] for r in vals] == [3, 6]
    assert all(r["latent_var_total"] == 0 and r["latent_active_channels"] == 0 for r in vals)
    assert all(r["warning"].startswith("latents collapsed at step") for r in vals)


def test_collapsed_latents_stop_training_with_a_message(tmp_path, images, monkeypatch):
    _zero_encoder(monkeypatch, "anomaly")
    run = tmp_path / "run"
    with pytest.raises(BadDataError) as info:
        train(cfg_for(run, images, "anomaly", collapse="stop"), progress=False)
    msg = str(info.value)
    assert info.value.exit_code == BAD_DATA
    assert "training stopped" in msg and "latents collapsed at step 3" in msg and "--collapse" in msg
    assert str(run) in msg
    vals = [r for r in read_log(run) if r["kind"] == "val"]
    assert len(vals) == 1 and "warning" in vals[0]  # logged before stopping
    assert (run / "last.safetensors").is_file() and not (run / "summary.json").exists()


def test_collapse_check_off(tmp_path, images, monkeypatch):
    _zero_encoder(monkeypatch, "compress")
    summary = train(cfg_for(tmp_path / "run", images, collapse="off"), progress=False)
    assert summary["warnings"] == []
    assert summary["final"]["latent_var_total"] == 0  # still logged


# --- gradient norm logging and clipping ----------------------------------------------------------------------


def test_gradient_norm_is_logged_and_clipped(tmp_path, images, monkeypatch):
    real = torch.nn.utils.clip_grad_norm_
    calls = []

    def spy(params, max_norm, *a, **kw):
        params = list(params)
        norm = real(params, max_norm, *a, **kw)
        after = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
        calls.append((max_norm, float(norm), float(after)))
        return norm

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    run = tmp_path / "run"
    train(cfg_for(run, images, grad_clip=0.05, steps=4), progress=False)
    assert len(calls) == 4
    logged = [r["grad_norm"] for r in read_log(run) if r["kind"] == "train"]
    assert logged == pytest.approx([c[1] for c in calls])
    for max_norm, before, after in calls:
        assert max_norm == 0.05
        assert before > 0.05  # the codec's rate term gives large gradients at the start ...
        assert after == pytest.approx(0.05, rel=1e-3)  # ... which are clipped to the limit


# --- non-finite loss: rollback, halved learning rate, then a clear stop ------------------------------------


def _nan_at(*steps):
    def hook(step, loss):
        return loss * float("nan") if step in steps else loss

    return hook


def test_one_nan_rolls_back_and_halves_the_learning_rate(tmp_path, images):
    clean, faulty = tmp_path / "clean", tmp_path / "faulty"
    train(cfg_for(clean, images, "denoise", steps=8), progress=False)
    summary = train(cfg_for(faulty, images, "denoise", steps=8), progress=False, loss_hook=_nan_at(4))
    assert summary["steps"] == 8
    log = read_log(faulty)
    rollbacks = [r for r in log if r["kind"] == "rollback"]
    assert rollbacks == [{"step": 4, "kind": "rollback", "lr_scale": 0.5}]
    assert any("non-finite loss at step 4" in w and "halved" in w for w in summary["warnings"])
    state = json.loads((faulty / "state.json").read_text())
    assert state["rollbacks"] == 1 and state["lr_scale"] == 0.5
    lr_clean = {r["step"]: r["lr"] for r in read_log(clean) if r["kind"] == "train"}
    lr_fault = {r["step"]: r["lr"] for r in log if r["kind"] == "train"}
    assert 5 not in lr_fault  # the step with the NaN made no update and no train record
    for s in (1, 2, 3, 4):
        assert lr_fault[s] == lr_clean[s]
    for s in (6, 7, 8):
        assert lr_fault[s] == pytest.approx(0.5 * lr_clean[s])
    assert np.isfinite(summary["final"]["psnr"])


def test_rollback_restores_the_last_good_weights(tmp_path, images, monkeypatch):
    """The weights after a rollback are those of the last checkpoint (validation at step 3)."""
    restored = []
    real_load = nn.Module.load_state_dict

    def load_spy(self, state_dict, *a, **kw):
        restored.append({k: v.clone() for k, v in state_dict.items()})
        return real_load(self, state_dict, *a, **kw)

    monkeypatch.setattr(nn.Module, "load_state_dict", load_spy)
    run = tmp_path / "run"

    def hook(step, loss):
        if step == 3:  # right after the checkpoint of step 3
            from safetensors.torch import load_file

            hook.ckpt = load_file(str(run / "last.safetensors"))
        return loss * float("nan") if step == 5 else loss

    train(cfg_for(run, images, "denoise", steps=7), progress=False, loss_hook=hook)
    assert len(restored) == 1
    assert restored[0].keys() == hook.ckpt.keys()
    assert all(torch.equal(restored[0][k].cpu(), hook.ckpt[k]) for k in hook.ckpt)


def test_nan_every_step_stops_after_max_rollbacks(tmp_path, images):
    run = tmp_path / "run"
    with pytest.raises(BadDataError) as info:
        train(cfg_for(run, images, "denoise", max_rollbacks=3), progress=False, loss_hook=_nan_at(*range(100)))
    err = info.value
    assert err.exit_code == BAD_DATA == 3
    msg = str(err)
    assert "training diverged" in msg and "non-finite loss" in msg and "3 rollbacks" in msg and "--lr" in msg
    assert "\n" not in msg
    rollbacks = [r for r in read_log(run) if r["kind"] == "rollback"]
    assert [r["lr_scale"] for r in rollbacks] == [0.5, 0.25, 0.125]
    assert not (run / "summary.json").exists()


def test_max_rollbacks_zero_stops_at_the_first_nan(tmp_path, images):
    with pytest.raises(BadDataError, match="after 0 rollbacks"):
        train(cfg_for(tmp_path / "run", images, "denoise", max_rollbacks=0), progress=False,
              loss_hook=_nan_at(2))  # fmt: skip
