"""Codec v2 (training/hyper_codec.py): shapes, learning, the integer index path, checkpoints and resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from safetensors.torch import load_file  # noqa: E402
from train_images import write_images  # noqa: E402

from edge_runtime.intnet import IntHyperSynthesis  # noqa: E402
from training.checkpoint import load_run  # noqa: E402
from training.hyper_codec import (  # noqa: E402
    HyperCodec,
    HyperConfig,
    gaussian_likelihood,
    gaussian_pmfs,
    int_hyper_features,
    macs_per_pixel,
    rd_loss,
    to_integer,
)
from training.train import TrainConfig, train  # noqa: E402

TINY = dict(n=8, m=8, nz=4, nh=8)


def tiny(**kw) -> HyperCodec:
    torch.manual_seed(kw.pop("seed", 0))
    return HyperCodec(HyperConfig(**{**TINY, **kw}))


def toy_images(n: int = 2, size: int = 64, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    low = torch.from_numpy(rng.random((n, 3, 4, 4))).float()
    return torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)


def spread(codec: HyperCodec, seed: int = 1) -> None:
    """Random h_s weights large enough that the indices use much of the table (an untrained net sits on one)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in (codec.h_s.l1, codec.h_s.l2, codec.h_s.idx):
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=g) * 0.6)
            layer.bias.copy_(torch.rand(layer.bias.shape, generator=g) * 4)
        codec.h_s.idx.bias.add_(20)


def test_shapes_and_ranges():
    codec = tiny()
    x = toy_images(2, 128)
    out = codec(x, torch.tensor([0.0, 5.0]))
    assert out["x_hat"].shape == x.shape
    assert out["lik_y"].shape == (2, 8, 8, 8) and out["lik_z"].shape == (2, 4, 2, 2)
    assert out["idx"].shape == (2, 8, 8, 8)
    assert float(out["idx"].detach().min()) >= 0 and float(out["idx"].detach().max()) <= 63
    assert ((out["lik_y"] > 0) & (out["lik_y"] <= 1)).all()
    codec.eval()
    with torch.no_grad():
        ev = codec(x, torch.tensor([0.0, 5.0]))
    assert torch.equal(ev["idx"], torch.round(ev["idx"]))  # the integer path's indices
    loss, bpp, mse = rd_loss(x, ev, codec.lambdas_of(torch.tensor([0.0, 5.0])))
    assert bpp.shape == (2,) and mse.shape == (2,) and torch.isfinite(loss)
    # fractional levels interpolate: gains strictly between their neighbours'
    g = [codec.gains(torch.tensor([v]))[0].flatten() for v in (1.0, 1.5, 2.0)]
    assert torch.all((g[1] > g[0]) & (g[1] < g[2]))
    macs = macs_per_pixel(HyperCodec(HyperConfig()))
    assert macs["encoder"] > 5000 and macs["decoder"] > 5000 and 0 < macs["hyper_synthesis"] < 2000


def test_rate_falls_with_training_on_a_toy_batch():
    codec = tiny()
    x = toy_images(2, 64)
    level = torch.tensor([0.0, 0.0])
    opt = torch.optim.Adam(codec.parameters(), lr=3e-3)
    bpps = []
    for _ in range(60):
        out = codec(x, level)
        loss, bpp, _ = rd_loss(x, out, codec.lambdas_of(level))
        opt.zero_grad()
        loss.backward()
        opt.step()
        bpps.append(float(bpp.detach().mean()))
    assert np.mean(bpps[-5:]) < 0.8 * np.mean(bpps[:5]), bpps


def test_numpy_integer_indices_match_the_training_emulation_exactly():
    codec = tiny()
    spread(codec)
    net = to_integer(codec.h_s)
    rng = np.random.default_rng(3)
    z = rng.integers(-12, 13, (2, 4, 3, 5)).astype(np.int64)
    z[0, 0, 0, 0] = 10**6  # out of range: clipped by both sides
    _, idx_t = int_hyper_features(net, torch.from_numpy(z).double())
    idx_np = net.indices(z)
    assert idx_np.dtype == np.int32 and idx_np.shape == (2, 8, 12, 20)
    assert np.array_equal(idx_np, idx_t.numpy())
    assert np.array_equal(idx_np, net.indices(z, exact="int64"))  # BLAS float64 == pure integer matmul
    assert np.array_equal(idx_np, net.indices(z))  # deterministic
    assert np.array_equal(idx_np[1], net.indices(z[1]))  # unbatched input, same answer
    assert len(np.unique(idx_np)) > 10  # the comparison covers many table entries


def test_integer_indices_are_close_to_the_float_path():
    codec = tiny()
    spread(codec)
    net = to_integer(codec.h_s)
    z = torch.from_numpy(np.random.default_rng(4).integers(-12, 13, (2, 4, 4, 4))).float()
    idx_int = torch.from_numpy(net.indices(z.numpy().astype(np.int64))).float()
    with torch.no_grad():
        idx_qat, _ = codec.h_s(z, qat=True)  # float path rounding like the integer net: identical but for
        idx_float, _ = codec.h_s(z, qat=False)  # weight quantization; without rounding within about one
    assert (idx_qat != idx_int).float().mean() < 0.01
    assert (idx_qat - idx_int).abs().max() <= 1
    assert (torch.round(idx_float) - idx_int).abs().float().mean() < 0.5


def test_integer_network_arrays_round_trip():
    codec = tiny()
    spread(codec)
    net = to_integer(codec.h_s)
    meta, arrays = net.to_arrays()
    back = IntHyperSynthesis.from_arrays(json.loads(json.dumps(meta)), {k: v.copy() for k, v in arrays.items()})
    z = np.random.default_rng(5).integers(-9, 10, (4, 2, 2))
    assert np.array_equal(back.indices(z), net.indices(z)) and back.table_size == 64 and back.upsampling == 4


def test_qat_starts_at_its_fraction_of_the_planned_steps(tmp_path):
    from training.hyper_codec import HyperCompressTask

    data = write_images(tmp_path / "imgs", n=2)
    cfg = TrainConfig(task="compress", arch="hyper", data=str(data), steps=100, width=8, crop=64, device="cpu")
    task = HyperCompressTask(cfg, torch.device("cpu"), [])
    task.set_step(74)
    assert not task.model.qat
    task.set_step(75)
    assert task.model.qat


def _cfg(out: Path, data: Path, **kw) -> TrainConfig:
    base = dict(task="compress", arch="hyper", data=str(data), out=str(out), steps=6, batch=2, crop=64, width=8,
                val_every=3, log_every=1, device="cpu", collapse="off", threads=1, val_images=2)  # fmt: skip
    return TrainConfig(**{**base, **kw})


class Interrupt(Exception):
    pass


def test_checkpoints_round_trip_and_resume_equals_one_go(tmp_path):
    data = write_images(tmp_path / "imgs", n=4)
    once, twice = tmp_path / "once", tmp_path / "twice"
    summary = train(_cfg(once, data), progress=False)
    assert summary["steps"] == 6 and "bpp_l0" in summary["final"] and "psnr_l5" in summary["final"]
    cfg = json.loads((once / "config.json").read_text())
    assert cfg["model"]["arch"] == "hyper" and cfg["train"]["arch"] == "hyper" and cfg["train"]["steps"] == 6
    model, _ = load_run(once, "last")
    assert isinstance(model, HyperCodec)
    saved = load_file(str(once / "last.safetensors"))
    assert (
        all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
        and saved.keys() == model.state_dict().keys()
    )

    def stop(step, loss):
        if step == 4:
            raise Interrupt
        return loss

    with pytest.raises(Interrupt):  # killed during step 5, after the checkpoint of step 3
        train(_cfg(twice, data), progress=False, loss_hook=stop)
    assert json.loads((twice / "state.json").read_text())["step"] == 3
    train(_cfg(twice, data), progress=False)
    a, b = load_file(str(once / "last.safetensors")), load_file(str(twice / "last.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_arch_is_checked():
    from edge_runtime.errors import UsageError

    with pytest.raises(UsageError):
        TrainConfig(task="denoise", arch="hyper")
    with pytest.raises(UsageError):
        TrainConfig(task="compress", arch="gdn")


def test_gaussian_pmfs_follow_the_scale_table_and_the_training_likelihood():
    cfg = HyperConfig()
    pmfs = gaussian_pmfs(cfg)
    assert len(pmfs) == cfg.table_size
    widths = [len(p) for p, _ in pmfs]
    assert widths == sorted(widths) and widths[0] <= 5 and widths[-1] < 4096
    for (p, off), s in zip(pmfs, cfg.scale_table(), strict=True):
        assert off == -(len(p) // 2) and 1 - 1e-9 <= p.sum() <= 1 and np.allclose(p, p[::-1])
        assert len(p) >= 2 * 5.5 * s  # the 1e-9 tails lie beyond about 6.1 sigma
    p, off = pmfs[30]
    v = torch.arange(off, off + len(p), dtype=torch.float64)
    lik = gaussian_likelihood(v, torch.tensor(cfg.scale_table()[30]))
    assert np.allclose(lik.numpy(), np.maximum(p, 1e-9), rtol=1e-6, atol=1e-12)
