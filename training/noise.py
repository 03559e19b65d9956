"""Noise models for blind denoising, applied to float batches in [0, 1] on any device.

Each returns the noisy batch clipped and rounded to 8 bits, as a camera delivers it: the runtime only ever
sees uint8 frames, so the model trains on what it will see.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

MAX_SIGMA = 55.0


def quantize8(x: torch.Tensor) -> torch.Tensor:
    return torch.round(x.clamp(0.0, 1.0) * 255.0) / 255.0


def gaussian(
    clean: torch.Tensor, gen: torch.Generator, max_sigma: float = MAX_SIGMA
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image sigma uniform in [0, max_sigma] (8-bit units). Returns (noisy, sigma/255 per image)."""
    n = clean.shape[0]
    sigma = torch.rand(n, 1, 1, 1, generator=gen, device=clean.device) * (max_sigma / 255.0)
    noise = torch.randn(clean.shape, generator=gen, device=clean.device) * sigma
    return quantize8(clean + noise), sigma.view(n)


def poisson_gaussian(clean: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Sensor-like: signal-dependent shot noise (variance a*x) plus read noise (variance b).

    a in [0, 0.04], b up to (25/255)^2; approximated as Gaussian with variance a*x + b, which is what a raw
    sensor's heteroscedastic model gives after the camera's gain.
    """
    n = clean.shape[0]
    dev = clean.device
    a = torch.rand(n, 1, 1, 1, generator=gen, device=dev) * 0.04
    b = (torch.rand(n, 1, 1, 1, generator=gen, device=dev) * (25.0 / 255.0)) ** 2
    std = torch.sqrt(a * clean.clamp_min(0) + b)
    noisy = clean + torch.randn(clean.shape, generator=gen, device=dev) * std
    return quantize8(noisy), std.mean(dim=(1, 2, 3))


def jpeg_artefacts(clean_u8: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 (N, H, W, C) -> same, each image JPEG-compressed at a random quality in [10, 60]."""
    out = np.empty_like(clean_u8)
    for i, img in enumerate(clean_u8):
        q = int(rng.integers(10, 61))
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, q])
        if not ok:
            raise RuntimeError("cv2.imencode failed for a JPEG training sample")
        dec = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
        out[i] = dec.reshape(img.shape)
    return out


def add_noise(
    clean: torch.Tensor, gen: torch.Generator, mix: tuple[float, float] = (0.8, 0.2)
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix of Gaussian and Poisson-Gaussian per batch, by the probabilities in ``mix``."""
    u = torch.rand(1, generator=gen, device=clean.device).item()
    if u < mix[0]:
        return gaussian(clean, gen)
    return poisson_gaussian(clean, gen)
