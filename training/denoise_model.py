"""Blind denoiser: a small U-Net on a PixelUnshuffle(2) input, residual, about 23 k MAC per pixel.

Three scales (1/2, 1/4, 1/8) give a wide receptive field at a fixed cost per pixel: at each scale the width
doubles while the pixel count drops 4x, so every 3x3 conv costs the same ~2.3 k MAC per input pixel.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch
from torch import nn

from training.layers import Upsample2, conv3, frame_to_tensor, tensor_to_frame


@dataclass(frozen=True)
class DenoiseConfig:
    channels: int = 1  # 1 gray, 3 BGR
    width: int = 32  # channels at 1/2 scale; 2x and 4x that at 1/4 and 1/8
    depth: int = 2  # 3x3 convs per scale

    multiple: int = 8  # H and W must be multiples of this (three 2x downsamplings)

    def __post_init__(self):
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if self.width < 4 or self.depth < 1:
            raise ValueError("width must be >= 4 and depth >= 1")

    def to_json(self) -> str:
        return json.dumps({"task": "denoise", **asdict(self)})


def _stack(width: int, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [conv3(width, width), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class DenoiseUNet(nn.Module):
    """float (N, C, H, W) noisy in [0, 1] -> float (N, C, H, W) estimate of the clean image (not clipped)."""

    def __init__(self, cfg: DenoiseConfig):
        super().__init__()
        self.cfg = cfg
        c, w = cfg.channels, cfg.width
        self.head = nn.Sequential(conv3(4 * c, w), nn.ReLU(inplace=True))
        self.enc1 = _stack(w, cfg.depth - 1) if cfg.depth > 1 else nn.Identity()
        self.down1 = nn.Sequential(conv3(w, 2 * w, stride=2), nn.ReLU(inplace=True))
        self.enc2 = _stack(2 * w, cfg.depth)
        self.down2 = nn.Sequential(conv3(2 * w, 4 * w, stride=2), nn.ReLU(inplace=True))
        self.mid = _stack(4 * w, cfg.depth)
        self.up2 = Upsample2(4 * w, 2 * w)
        self.dec2 = _stack(2 * w, cfg.depth)
        self.up1 = Upsample2(2 * w, w)
        self.dec1 = _stack(w, cfg.depth - 1) if cfg.depth > 1 else nn.Identity()
        self.tail = conv3(w, 4 * c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s1 = self.enc1(self.head(nn.functional.pixel_unshuffle(x, 2)))
        s2 = self.enc2(self.down1(s1))
        y = self.mid(self.down2(s2))
        y = self.dec2(self.up2(y) + s2)
        y = self.dec1(self.up1(y) + s1)
        return x + nn.functional.pixel_shuffle(self.tail(y), 2)


class DenoiseFrameGraph(nn.Module):
    """Export wrapper: uint8 (N, H, W, C) frame -> uint8 (N, H, W, C) denoised, same channel order."""

    def __init__(self, net: DenoiseUNet):
        super().__init__()
        self.net = net

    def forward(self, frame: torch.Tensor) -> torch.Tensor:
        return tensor_to_frame(self.net(frame_to_tensor(frame)))
