"""Building blocks shared by the three models, chosen to run fast in INT8 on onnxruntime.

Upsampling is Conv + PixelShuffle (DepthToSpace), never ConvTranspose: on the development CPU a naive static
INT8 QDQ pass made a ConvTranspose(k4, s2) decoder 0.8x the FP32 speed and a Conv + PixelShuffle one 1.6x
(shared/FINDINGS.md).
"""

from __future__ import annotations

import torch
from torch import nn


def conv3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1)


class Upsample2(nn.Module):
    """x2 upsampling: 1x1 (or 3x3) conv to 4*cout channels, then PixelShuffle."""

    def __init__(self, cin: int, cout: int, kernel: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout * 4, kernel, padding=kernel // 2)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.conv(x))


class GDN(nn.Module):
    """Generalized divisive normalization (Balle et al. 2016): y = x / sqrt(beta + gamma @ x^2).

    ``inverse=True`` gives IGDN (multiply instead of divide) for the synthesis transform. beta and gamma are
    kept non-negative by squaring a parameter, with a floor so the square root never sees zero.
    """

    def __init__(self, channels: int, inverse: bool = False, beta_min: float = 1e-6, gamma_init: float = 0.1):
        super().__init__()
        self.inverse = inverse
        self.beta_min = beta_min
        self.beta = nn.Parameter(torch.ones(channels))
        self.gamma = nn.Parameter(torch.eye(channels) * gamma_init**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        beta = self.beta**2 + self.beta_min
        gamma = (self.gamma**2).view(c, c, 1, 1)
        norm = torch.sqrt(nn.functional.conv2d(x * x, gamma, beta))
        return x * norm if self.inverse else x / norm


def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of every Conv2d and Linear for one forward pass on ``example``."""
    total = 0

    def conv_hook(mod: nn.Conv2d, _inp, out):
        nonlocal total
        kh, kw = mod.kernel_size
        total += out.numel() * (mod.in_channels // mod.groups) * kh * kw

    def linear_hook(mod: nn.Linear, _inp, out):
        nonlocal total
        total += out.numel() * mod.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return total


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def frame_to_tensor(frame: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, C) as OpenCV delivers it -> float (N, C, H, W) in [0, 1], channel order unchanged.

    The one preprocessing implementation: the exported graphs call this, so the runtime never converts.
    """
    return frame.permute(0, 3, 1, 2).to(torch.float32) / 255.0


def tensor_to_frame(x: torch.Tensor) -> torch.Tensor:
    """float (N, C, H, W) in [0, 1] -> uint8 (N, H, W, C), rounded half to even and clipped."""
    return torch.round(x.clamp(0.0, 1.0) * 255.0).to(torch.uint8).permute(0, 2, 3, 1)
