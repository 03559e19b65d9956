"""Anomaly autoencoder: reconstructs normal content, scores structural (SSIM) error, exposes features.

Scoring by raw squared error rewards smooth surfaces (a smooth defect reconstructs *better* than normal
texture; shared/FINDINGS.md measured AUROC below chance that way), so the in-graph map is local SSIM error,
which compares structure and contrast, not intensity alone. The bottleneck features leave the graph too: the
runtime fits a Gaussian per feature location on a scene's normal frames (`edgeae calibrate`, numpy only), which
adapts a generic model to a fixed camera without PyTorch.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch
from torch import nn

from training.layers import Upsample2, conv3, frame_to_tensor


@dataclass(frozen=True)
class AnomalyConfig:
    channels: int = 3
    width: int = 32
    features: int = 32  # bottleneck channels at 1/8 scale
    ssim_window: int = 7
    score_window: int = 16  # per-image score = max over windows of this size of the mean map
    multiple: int = 16

    def __post_init__(self):
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if self.ssim_window % 2 == 0:
            raise ValueError("ssim_window must be odd")

    def to_json(self) -> str:
        return json.dumps({"task": "anomaly", **asdict(self)})


class AnomalyAE(nn.Module):
    """float (N, C, H, W) in [0, 1] -> (reconstruction (N, C, H, W), features (N, F, H/8, W/8))."""

    def __init__(self, cfg: AnomalyConfig):
        super().__init__()
        self.cfg = cfg
        c, w, f = cfg.channels, cfg.width, cfg.features
        r = nn.ReLU
        self.encoder = nn.Sequential(
            conv3(c, w, 2), r(), conv3(w, w), r(),
            conv3(w, 2 * w, 2), r(), conv3(2 * w, 2 * w), r(),
            conv3(2 * w, 2 * w, 2), r(), nn.Conv2d(2 * w, f, 1),
        )  # fmt: skip
        self.decoder = nn.Sequential(
            conv3(f, 2 * w), r(), Upsample2(2 * w, 2 * w, 3), r(), conv3(2 * w, 2 * w), r(),
            Upsample2(2 * w, w, 3), r(), conv3(w, w), r(),
            Upsample2(w, c, 3),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feat = self.encoder(x)
        return torch.sigmoid(self.decoder(feat)), feat


def ssim_map(a: torch.Tensor, b: torch.Tensor, window: int = 7) -> torch.Tensor:
    """Local SSIM with a box window, per channel: (N, C, H, W) in [0, 1] -> (N, C, H, W)."""
    pool = nn.functional.avg_pool2d
    pad = window // 2
    kw = dict(kernel_size=window, stride=1, padding=pad, count_include_pad=False)
    mu_a, mu_b = pool(a, **kw), pool(b, **kw)
    var_a = pool(a * a, **kw) - mu_a * mu_a
    var_b = pool(b * b, **kw) - mu_b * mu_b
    cov = pool(a * b, **kw) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))


def anomaly_map(x: torch.Tensor, recon: torch.Tensor, window: int = 7) -> torch.Tensor:
    """(N, C, H, W) input and reconstruction -> (N, H, W) structural error in [0, 1]."""
    return ((1.0 - ssim_map(x, recon, window)) * 0.5).mean(dim=1)


def image_score(amap: torch.Tensor, window: int = 16) -> torch.Tensor:
    """(N, H, W) map -> (N,) max over windows of the local mean: one bright pixel does not decide."""
    pooled = nn.functional.avg_pool2d(amap.unsqueeze(1), window, stride=window // 2)
    return pooled.flatten(1).amax(dim=1)


class AnomalyFrameGraph(nn.Module):
    """uint8 (N, H, W, C) -> anomaly_map float (N, H, W), score float (N,), features float (N, F, H/8, W/8)."""

    def __init__(self, net: AnomalyAE):
        super().__init__()
        self.net = net

    def forward(self, frame):
        x = frame_to_tensor(frame)
        recon, feat = self.net(x)
        amap = anomaly_map(x, recon, self.net.cfg.ssim_window)
        return amap, image_score(amap, self.net.cfg.score_window), feat
