"""The three models: fully convolutional, residual denoiser, cost budget (MAC/pixel), parameters, no ConvTranspose.

Parameter counts of the default configurations (documented here; a change to an architecture must update them
and models/README.md):

=========================  ========  ==========  ================================
model                      channels  parameters  MAC/pixel at 256x256
=========================  ========  ==========  ================================
DenoiseUNet (width 32)     1         597,412     22,336
DenoiseUNet (width 32)     3         602,028     23,488
AnomalyAE (width 32)       1         391,396     18,536
AnomalyAE (width 32)       3         394,284     19,256
Codec (n 64, m 128)        1         1,034,884   encoder 9,200 / decoder 13,248
Codec (n 64, m 128)        3         1,042,700   encoder 10,000 / decoder 14,400
=========================  ========  ==========  ================================
"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from training.anomaly_model import AnomalyAE, AnomalyConfig  # noqa: E402
from training.checkpoint import build_model  # noqa: E402
from training.compress_model import LAMBDAS, Codec, CompressConfig  # noqa: E402
from training.denoise_model import DenoiseConfig, DenoiseUNet  # noqa: E402
from training.layers import count_macs, count_params  # noqa: E402

MAC_BUDGET = 25_000  # per pixel, each graph that runs on the edge
PARAMS = {
    ("denoise", 1): 597_412,
    ("denoise", 3): 602_028,
    ("anomaly", 1): 391_396,
    ("anomaly", 3): 394_284,
    ("compress", 1): 1_034_884,
    ("compress", 3): 1_042_700,
}


def default_model(task: str, channels: int) -> nn.Module:
    torch.manual_seed(0)
    if task == "denoise":
        return DenoiseUNet(DenoiseConfig(channels=channels)).eval()
    if task == "anomaly":
        return AnomalyAE(AnomalyConfig(channels=channels)).eval()
    return Codec(CompressConfig(channels=channels)).eval()


def per_pixel(model: nn.Module, example: torch.Tensor, pixels: int) -> float:
    return count_macs(model, example) / pixels


SHAPES = [(1, 1), (2, 3), (5, 1), (3, 4)]  # in units of the model's multiple


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("hw", SHAPES)
def test_denoiser_is_fully_convolutional(channels, hw):
    net = DenoiseUNet(DenoiseConfig(channels=channels, width=8)).eval()
    m = net.cfg.multiple
    x = torch.rand(2, channels, hw[0] * m, hw[1] * m)
    with torch.no_grad():
        y = net(x)
    assert y.shape == x.shape and torch.isfinite(y).all()


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("hw", SHAPES)
def test_anomaly_ae_is_fully_convolutional(channels, hw):
    net = AnomalyAE(AnomalyConfig(channels=channels, width=8, features=8)).eval()
    m = net.cfg.multiple
    x = torch.rand(2, channels, hw[0] * m, hw[1] * m)
    with torch.no_grad():
        recon, feat = net(x)
    assert recon.shape == x.shape
    assert feat.shape == (2, 8, x.shape[2] // 8, x.shape[3] // 8)
    assert recon.min() >= 0 and recon.max() <= 1  # sigmoid output, like the images


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("hw", SHAPES)
def test_codec_is_fully_convolutional(channels, hw):
    net = Codec(CompressConfig(channels=channels, n=8, m=8)).eval()
    m = net.cfg.multiple
    x = torch.rand(2, channels, hw[0] * m, hw[1] * m)
    with torch.no_grad():
        y = net.g_a(x)
        x_hat, lik = net(x)
    assert y.shape == (2, 8, hw[0], hw[1])
    assert x_hat.shape == x.shape
    assert lik.shape == y.shape and (lik > 0).all() and (lik <= 1).all()
    assert net.g_s(torch.round(y)).shape == x.shape


def test_codec_rounds_latents_in_eval_and_adds_noise_in_training():
    net = Codec(CompressConfig(n=8, m=8))
    x = torch.rand(1, 3, 32, 32)
    net.eval()
    with torch.no_grad():
        a, _ = net(x)
        b, _ = net(x)
        y = net.g_a(x)
        assert torch.equal(a, b) and torch.equal(a, net.g_s(torch.round(y)))
    net.train()
    x_hat, lik = net(x)
    x_hat.sum().backward()  # straight-through: the analysis transform gets a gradient
    assert net.g_a.net[0].weight.grad is not None and net.g_a.net[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("channels", [1, 3])
def test_denoiser_is_residual(channels):
    """output = input + a learned correction: with the last conv at zero the network is exactly the identity."""
    net = DenoiseUNet(DenoiseConfig(channels=channels, width=8)).eval()
    x = torch.rand(1, channels, 32, 48)
    with torch.no_grad():
        correction = net(x) - x
        assert correction.abs().max() < 0.5  # near identity already at initialisation
        net.tail.weight.zero_()
        net.tail.bias.zero_()
        assert torch.equal(net(x), x)


@pytest.mark.parametrize("task", ["denoise", "anomaly"])
@pytest.mark.parametrize("channels", [1, 3])
def test_default_models_fit_the_mac_budget(task, channels):
    model = default_model(task, channels)
    macs = per_pixel(model, torch.zeros(1, channels, 256, 256), 256 * 256)
    assert 5_000 < macs <= MAC_BUDGET


@pytest.mark.parametrize("channels", [1, 3])
def test_default_codec_encoder_and_decoder_each_fit_the_mac_budget(channels):
    codec = default_model("compress", channels)
    enc = per_pixel(codec.g_a, torch.zeros(1, channels, 256, 256), 256 * 256)
    dec = per_pixel(codec.g_s, torch.zeros(1, codec.cfg.m, 16, 16), 256 * 256)  # per output pixel
    assert 5_000 < enc <= MAC_BUDGET and 5_000 < dec <= MAC_BUDGET
    # the whole pass (what config.json records for a compress run) is their sum
    assert per_pixel(codec, torch.zeros(1, channels, 256, 256), 256 * 256) == pytest.approx(enc + dec)


def test_mac_count_scales_with_pixels_not_shape():
    net = DenoiseUNet(DenoiseConfig(width=8))
    a = per_pixel(net, torch.zeros(1, 1, 64, 64), 64 * 64)
    b = per_pixel(net, torch.zeros(1, 1, 32, 128), 32 * 128)
    assert a == b


@pytest.mark.parametrize("key", sorted(PARAMS))
def test_documented_parameter_counts(key):
    task, channels = key
    assert count_params(default_model(task, channels)) == PARAMS[key]


def test_quality_levels_share_one_architecture():
    counts = {count_params(Codec(CompressConfig(quality=q, n=8, m=8))) for q in LAMBDAS}
    assert len(counts) == 1


@pytest.mark.parametrize("task", ["denoise", "anomaly", "compress"])
def test_no_conv_transpose_anywhere(task):
    for channels in (1, 3):
        model = default_model(task, channels)
        bad = [n for n, m in model.named_modules() if isinstance(m, (nn.ConvTranspose1d, nn.ConvTranspose2d,
                                                                      nn.ConvTranspose3d))]  # fmt: skip
        assert bad == []


def test_no_conv_transpose_in_the_source():
    root = Path(__file__).resolve().parents[2]
    for py in sorted((root / "training").glob("*.py")):
        text = py.read_text()
        assert "nn.ConvTranspose" not in text and "conv_transpose" not in text, py


@pytest.mark.parametrize(
    "task,cfg",
    [("denoise", DenoiseConfig(channels=3, width=8)), ("anomaly", AnomalyConfig(width=8)),
     ("compress", CompressConfig(n=8, m=8, quality=4))],
)  # fmt: skip
def test_config_json_round_trip_rebuilds_the_model(task, cfg):
    import json

    model = build_model(task, json.loads(cfg.to_json()))
    assert model.cfg == cfg
