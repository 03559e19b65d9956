"""Learned image codec: GDN analysis/synthesis transforms and a factorized entropy model (Balle et al. 2017/2018).

Latents are rounded to integers in the encoder graph and coded with fixed integer CDF tables derived from the
factorized prior, so decoding is bit-exact on every machine. A hyperprior would code better, but its scales
come out of a float network on the decoding machine, and a last-bit difference there changes the CDF and
breaks the stream across architectures; the factorized prior has no such path.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from training.layers import GDN, Upsample2, frame_to_tensor, tensor_to_frame

# Quality level -> lambda of the loss R + lambda * 255^2 * MSE (the CompressAI convention).
LAMBDAS = {1: 0.0035, 2: 0.0067, 3: 0.013, 4: 0.025, 5: 0.0483}


@dataclass(frozen=True)
class CompressConfig:
    channels: int = 3
    n: int = 64  # transform width
    m: int = 128  # latent channels
    quality: int = 2
    multiple: int = 16  # four 2x downsamplings

    def __post_init__(self):
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if self.quality not in LAMBDAS:
            raise ValueError(f"quality must be one of {sorted(LAMBDAS)}, got {self.quality}")

    @property
    def lmbda(self) -> float:
        return LAMBDAS[self.quality]

    def to_json(self) -> str:
        return json.dumps({"task": "compress", **asdict(self)})


class Analysis(nn.Module):
    def __init__(self, c: int, n: int, m: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(c, n, 5, 2, 2), GDN(n),
            nn.Conv2d(n, n, 5, 2, 2), GDN(n),
            nn.Conv2d(n, n, 5, 2, 2), GDN(n),
            nn.Conv2d(n, m, 5, 2, 2),
        )  # fmt: skip

    def forward(self, x):
        return self.net(x)


class Synthesis(nn.Module):
    def __init__(self, c: int, n: int, m: int):
        super().__init__()
        self.net = nn.Sequential(
            Upsample2(m, n, 3), GDN(n, inverse=True),
            Upsample2(n, n, 3), GDN(n, inverse=True),
            Upsample2(n, n, 3), GDN(n, inverse=True),
            Upsample2(n, c, 3),
        )  # fmt: skip

    def forward(self, y):
        return self.net(y)


class FactorizedPrior(nn.Module):
    """Per-channel non-parametric density (Balle et al. 2018, appendix 6.1), filters (3, 3, 3)."""

    def __init__(self, channels: int, filters: tuple[int, ...] = (3, 3, 3), init_scale: float = 10.0):
        super().__init__()
        dims = (1, *filters, 1)
        scale = init_scale ** (1 / (len(filters) + 1))
        self.matrices = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.factors = nn.ParameterList()
        for i in range(len(filters) + 1):
            init = math.log(math.expm1(1 / scale / dims[i + 1]))
            self.matrices.append(nn.Parameter(torch.full((channels, dims[i + 1], dims[i]), init)))
            self.biases.append(nn.Parameter(torch.rand(channels, dims[i + 1], 1) - 0.5))
            if i < len(filters):
                self.factors.append(nn.Parameter(torch.zeros(channels, dims[i + 1], 1)))

    def logits_cdf(self, v: torch.Tensor) -> torch.Tensor:
        """v: (C, 1, K) values -> (C, 1, K) logits of the cumulative distribution."""
        x = v
        for i, mat in enumerate(self.matrices):
            x = torch.matmul(nn.functional.softplus(mat), x) + self.biases[i]
            if i < len(self.factors):
                x = x + torch.tanh(self.factors[i]) * torch.tanh(x)
        return x

    def likelihood(self, y: torch.Tensor) -> torch.Tensor:
        """Probability mass of the unit interval around each element of y (N, C, H, W)."""
        n, c, h, w = y.shape
        v = y.permute(1, 0, 2, 3).reshape(c, 1, -1)
        lower = self.logits_cdf(v - 0.5)
        upper = self.logits_cdf(v + 0.5)
        # Evaluate in the tail where the sigmoids are least saturated (as in the reference implementation).
        sign = -torch.sign(lower + upper).detach()
        p = torch.abs(torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower))
        return p.clamp_min(1e-9).reshape(c, n, h, w).permute(1, 0, 2, 3)

    @torch.no_grad()
    def integer_pmf(self, radius: int = 64, tail: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
        """Probability of each integer value per channel, trimmed to where the mass is.

        Returns (pmf (C, K) float64 over values offset[c] .. offset[c]+K-1, offset (C,) int32); values whose
        mass lies in the far tails are left to the coder's escape symbol.
        """
        c = self.matrices[0].shape[0]
        vals = torch.arange(-radius, radius + 1, dtype=torch.float32)
        v = vals.view(1, 1, -1).expand(c, 1, -1)
        lower = self.logits_cdf(v - 0.5)
        upper = self.logits_cdf(v + 0.5)
        sign = -torch.sign(lower + upper)
        p = torch.abs(torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower)).squeeze(1).double().numpy()
        cdf = np.cumsum(p, axis=1)
        lo = np.argmax(cdf > tail, axis=1)
        hi = (2 * radius) - np.argmax(cdf[:, ::-1] < cdf[:, -1:] - tail, axis=1) + 1
        width = int(max(1, (hi - lo).max()))
        pmf = np.zeros((c, width))
        for i in range(c):
            seg = p[i, lo[i] : lo[i] + width]
            pmf[i, : len(seg)] = seg
        return pmf, (lo - radius).astype(np.int32)


class Codec(nn.Module):
    def __init__(self, cfg: CompressConfig):
        super().__init__()
        self.cfg = cfg
        self.g_a = Analysis(cfg.channels, cfg.n, cfg.m)
        self.g_s = Synthesis(cfg.channels, cfg.n, cfg.m)
        self.prior = FactorizedPrior(cfg.m)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training/eval pass: returns (reconstruction, likelihoods of the latents)."""
        y = self.g_a(x)
        if self.training:
            # Rate on noisy latents (a differentiable proxy); the decoder sees rounded ones through a
            # straight-through estimator so it learns the integer latents it will get.
            lik = self.prior.likelihood(y + torch.empty_like(y).uniform_(-0.5, 0.5))
            y_hat = y + (torch.round(y) - y).detach()
        else:
            y_hat = torch.round(y)
            lik = self.prior.likelihood(y_hat)
        return self.g_s(y_hat), lik


def rd_loss(x, x_hat, lik, lmbda: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, bpp, mse) with loss = bpp + lambda * 255^2 * mse."""
    n, _, h, w = x.shape
    bpp = -torch.log2(lik).sum() / (n * h * w)
    mse = torch.mean((x - x_hat) ** 2)
    return bpp + lmbda * 255.0**2 * mse, bpp, mse


class EncoderGraph(nn.Module):
    """uint8 (N, H, W, C) frame -> int32 (N, M, H/16, W/16) latents, rounded in the graph."""

    def __init__(self, codec: Codec):
        super().__init__()
        self.g_a = codec.g_a

    def forward(self, frame):
        return torch.round(self.g_a(frame_to_tensor(frame))).to(torch.int32)


class DecoderGraph(nn.Module):
    """int32 (N, M, h, w) latents -> uint8 (N, 16h, 16w, C) frame."""

    def __init__(self, codec: Codec):
        super().__init__()
        self.g_s = codec.g_s

    def forward(self, latent):
        return tensor_to_frame(self.g_s(latent.to(torch.float32)))
