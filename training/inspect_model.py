"""Inspection anomaly model: a small segmentation network trained from scratch to find synthetic defects.

Why not reconstruction: on real surfaces a reconstruction autoencoder scores *below chance* (shared/FINDINGS.md:
defects smoother than normal texture reconstruct better). DRAEM (Zavrtanik et al. 2021) showed that a network
trained to *segment* synthetic anomalies pasted into normal images generalises to real defects without
pretrained weights. This is that idea cut to a device model: no reconstructive sub-network, one U-Net-like
discriminator of about 8 k MAC per pixel (DRAEM: hundreds of k), trained on defects made on the fly from the
normal images themselves (``training.synth``: low-frequency masks filled with foreign texture from other normal
images, darker or brighter regions, smoothed regions, noise texture, thin cracks and scratches).

Each image is standardised (per-channel mean, one standard deviation) before the network, so the score does
not track global brightness or contrast, the confound that makes trivial statistics look good on real sets.

Graph (``anomaly`` task, the same outputs as the fixed-camera model so every runtime path works):
uint8 (N, H, W, C) -> anomaly_map float (N, H, W) in [0, 1] (defect probability, bilinear from 1/4 scale),
score float (N,) = max over windows of ``score_window`` cells (1/4 scale, half overlap) of the mean probability,
features float (N, F, H/8, W/8) (the deepest activations, for `edgeae calibrate` on a fixed camera).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from training.layers import conv3, frame_to_tensor


@dataclass(frozen=True)
class InspectConfig:
    channels: int = 3
    width: int = 24
    score_window: int = 4  # cells of the 1/4-scale map (16 px)
    multiple: int = 16
    arch: str = "inspect"

    def __post_init__(self):
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if self.arch != "inspect":
            raise ValueError(f"arch must be 'inspect', got {self.arch!r}")

    def to_json(self) -> str:
        return json.dumps({"task": "anomaly", **asdict(self)})


def standardize(x: torch.Tensor) -> torch.Tensor:
    """Per image: subtract each channel's mean, divide by the image's standard deviation (floored)."""
    mean = x.mean(dim=(2, 3), keepdim=True)
    std = torch.sqrt(((x - mean) ** 2).mean(dim=(1, 2, 3), keepdim=True))
    return (x - mean) / (std + 0.02)


class InspectNet(nn.Module):
    """standardised float (N, C, H, W) -> (defect logits (N, 1, H/4, W/4), features (N, 4w, H/8, W/8))."""

    def __init__(self, cfg: InspectConfig):
        super().__init__()
        self.cfg = cfg
        c, w = cfg.channels, cfg.width
        r = nn.ReLU
        self.enc1 = nn.Sequential(conv3(c, w, 2), r(), conv3(w, w), r())
        self.enc2 = nn.Sequential(conv3(w, 2 * w, 2), r(), conv3(2 * w, 2 * w), r())
        self.enc3 = nn.Sequential(
            conv3(2 * w, 4 * w, 2), r(),
            nn.Conv2d(4 * w, 4 * w, 3, padding=2, dilation=2), r(),
            nn.Conv2d(4 * w, 4 * w, 3, padding=4, dilation=4), r(),
        )  # fmt: skip
        self.up = nn.Sequential(nn.Conv2d(4 * w, 8 * w, 1), nn.PixelShuffle(2))
        self.head = nn.Sequential(r(), conv3(2 * w, 2 * w), r(), nn.Conv2d(2 * w, 1, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        skip = self.enc2(self.enc1(x))
        feat = self.enc3(skip)
        return self.head(self.up(feat) + skip), feat


def image_score(prob: torch.Tensor, window: int) -> torch.Tensor:
    """(N, 1, h, w) probabilities -> (N,) max over windows (half overlap) of the mean: one pixel does not decide."""
    k = max(1, min(window, prob.shape[-2], prob.shape[-1]))
    return F.avg_pool2d(prob, k, stride=max(1, k // 2)).flatten(1).amax(dim=1)


class InspectFrameGraph(nn.Module):
    """uint8 (N, H, W, C) -> anomaly_map (N, H, W), score (N,), features (N, F, H/8, W/8)."""

    def __init__(self, net: InspectNet):
        super().__init__()
        self.net = net

    def forward(self, frame):
        x = standardize(frame_to_tensor(frame))
        logits, feat = self.net(x)
        prob = torch.sigmoid(logits)
        amap = F.interpolate(prob, scale_factor=4.0, mode="bilinear", align_corners=False)[:, 0]
        return amap, image_score(prob, self.net.cfg.score_window), feat


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Focal binary cross-entropy (Lin et al. 2017): the easy normal pixels, most of them, weigh little."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p = torch.sigmoid(logits)
    pt = p * target + (1 - p) * (1 - target)
    return ((1 - pt) ** gamma * bce).mean()


def anomaly_graph(model: nn.Module) -> nn.Module:
    """The exported frame graph of either anomaly model (fixed-camera autoencoder or inspection network)."""
    if isinstance(model, InspectNet):
        return InspectFrameGraph(model)
    from training.anomaly_model import AnomalyFrameGraph

    return AnomalyFrameGraph(model)
