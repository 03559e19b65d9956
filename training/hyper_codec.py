"""Codec v2: mean-scale hyperprior with an integer hyper-synthesis and gain units for variable rate.

See docs/codec-v2.md for the design and its reasoning. In short:

* ``g_a`` / ``g_s``: plain convolutions with LeakyReLU (no GDN, no PixelShuffle, no ConvTranspose); the
  synthesis upsamples with nearest-neighbour Resize x2 followed by a 3x3 conv.
* gain units (Cui et al. 2021): one learned gain / inverse-gain vector per quality level scales the latents
  before rounding and after, so one model covers every rate; levels in between interpolate the gains.
* ``h_a`` (float, encoder only) -> ``z``, coded with the factorized prior of ``compress_model``.
* ``h_s`` maps ``round(z)`` to (a) an index into a fixed table of ``table_size`` log-spaced Gaussian scales and
  (b) a mean per latent. (a) is the only thing the decoder must reproduce bit for bit: ``h_s`` is built so
  that, after :func:`to_integer`, :class:`edge_runtime.intnet.IntHyperSynthesis` computes it with integers.
  Its hidden activations are clamped to ``[0, act_max * act_unit]`` (an integer ReLU with a ceiling once
  divided by ``act_unit``) and its index head outputs table-index units directly. (b) stays float: a mean
  only shifts the value added back after decoding, it does not change the coded symbols or their CDFs.
* Training learns with the integer path in mind: from ``qat_from`` (a fraction of the planned steps) the
  hidden activations and the index are rounded with straight-through gradients, as the integer network
  will round them; validation always uses the exact integer emulation (:func:`int_hyper_features`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from edge_runtime.intnet import IntConv, IntHyperSynthesis
from training import health
from training.compress_model import FactorizedPrior

# Quality levels of the one variable-rate model: lambda of R + lambda * 255^2 * MSE (CompressAI convention).
LEVEL_LAMBDAS = (0.0018, 0.0035, 0.0067, 0.013, 0.025, 0.0483)


@dataclass(frozen=True)
class HyperConfig:
    channels: int = 3
    n: int = 64  # transform width
    m: int = 128  # latent channels
    nz: int = 64  # hyper-latent channels
    nh: int = 64  # hyper-synthesis width
    lambdas: tuple[float, ...] = LEVEL_LAMBDAS
    table_size: int = 64
    scale_min: float = 0.11
    scale_max: float = 256.0
    act_unit: float = 1 / 16  # hidden activation = act_unit * integer in [0, act_max]
    act_max: int = 255
    weight_bits: int = 14  # integer weights |w| < 2**weight_bits (per output channel shift)
    mean: bool = True  # mean-scale (float means) or scale-only
    qat_from: float = 0.75  # fraction of the planned steps after which h_s rounds like the integer network
    multiple: int = 64  # y is 1/16 of the frame, z 1/4 of y

    def __post_init__(self):
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if len(self.lambdas) < 1 or any(lm <= 0 for lm in self.lambdas):
            raise ValueError("lambdas must be positive")
        if not 2 <= self.table_size <= 4096 or not 0 < self.scale_min < self.scale_max:
            raise ValueError("bad scale table")
        object.__setattr__(self, "lambdas", tuple(float(v) for v in self.lambdas))

    @property
    def log_step(self) -> float:
        return (math.log(self.scale_max) - math.log(self.scale_min)) / (self.table_size - 1)

    def scale_table(self) -> np.ndarray:
        """The fixed table of Gaussian scales, float64 (table_size,)."""
        return np.exp(math.log(self.scale_min) + self.log_step * np.arange(self.table_size))

    def to_json(self) -> str:
        return json.dumps({"task": "compress", "arch": "hyper", **asdict(self)})

    @classmethod
    def from_dict(cls, d: dict) -> HyperConfig:
        known = set(cls.__dataclass_fields__)
        kw = {k: v for k, v in d.items() if k in known}
        if "lambdas" in kw:
            kw["lambdas"] = tuple(kw["lambdas"])
        return cls(**kw)


def round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


def conv(cin: int, cout: int, k: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride, k // 2)


class Up2(nn.Module):
    """Nearest-neighbour x2 then a 3x3 conv (ONNX Resize + Conv: INT8-friendly, no DepthToSpace)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = conv(cin, cout, 3)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def act() -> nn.Module:
    return nn.LeakyReLU(0.1)


class HyperSynthesis(nn.Module):
    """round(z) -> (index units, means). Two conv3x3 + depth-to-space x2 layers with a bounded ReLU, then 1x1
    heads. Everything the index depends on maps 1:1 to :class:`IntHyperSynthesis`."""

    def __init__(self, cfg: HyperConfig):
        super().__init__()
        self.cfg = cfg
        self.l1 = conv(cfg.nz, 4 * cfg.nh, 3)
        self.l2 = conv(cfg.nh, 4 * cfg.nh, 3)
        self.idx = conv(cfg.nh, cfg.m, 1)
        self.mu = conv(cfg.nh, cfg.m, 1) if cfg.mean else None
        with torch.no_grad():  # start near scale 2 (index ~24 of 64) instead of the table's floor
            self.idx.bias.fill_(math.log(2.0 / cfg.scale_min) / cfg.log_step)
            self.idx.weight.mul_(4.0)

    def hidden(self, z_hat: torch.Tensor, qat: bool) -> torch.Tensor:
        top = self.cfg.act_max * self.cfg.act_unit
        a = z_hat
        for layer in (self.l1, self.l2):
            a = F.pixel_shuffle(layer(a), 2).clamp(0.0, top)
            if qat:
                a = round_ste(a / self.cfg.act_unit) * self.cfg.act_unit
        return a

    def forward(self, z_hat: torch.Tensor, qat: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        a = self.hidden(z_hat, qat)
        idx = self.idx(a).clamp(0.0, self.cfg.table_size - 1)
        if qat:
            idx = round_ste(idx)
        return idx, (self.mu(a) if self.mu is not None else None)


def _quantize_layer(w: torch.Tensor, b: torch.Tensor, w_scale: float, b_scale: float, bits: int):
    """Float conv (w, b) computing out = w*x + b, with x = int * in_unit and out wanted in out_unit, becomes
    integer (W, B, shift): out/out_unit ~= (W * int + B) / 2**shift. ``w_scale`` = in_unit / out_unit,
    ``b_scale`` = 1 / out_unit."""
    w = w.detach().cpu().double() * w_scale
    b = b.detach().cpu().double() * b_scale
    wmax = w.abs().flatten(1).amax(dim=1).clamp_min(1e-30)
    shift = torch.floor(torch.log2(((1 << bits) - 1) / wmax)).clamp(1, 30).to(torch.int64)
    mult = torch.pow(2.0, shift.double())
    wq = torch.round(w * mult.view(-1, 1, 1, 1)).to(torch.int64)
    bq = torch.round(b * mult).to(torch.int64)
    return wq.numpy(), bq.numpy(), shift.numpy()


def to_integer(h_s: HyperSynthesis) -> IntHyperSynthesis:
    """The index path of ``h_s`` as an integer network (the means head is not part of it)."""
    cfg, u = h_s.cfg, h_s.cfg.act_unit
    layers = []
    for i, layer in enumerate((h_s.l1, h_s.l2)):
        in_unit = 1.0 if i == 0 else u
        wq, bq, sh = _quantize_layer(layer.weight, layer.bias, in_unit / u, 1 / u, cfg.weight_bits)
        layers.append(IntConv(wq, bq, sh, 0, cfg.act_max, upsample=2))
    wq, bq, sh = _quantize_layer(h_s.idx.weight, h_s.idx.bias, u, 1.0, cfg.weight_bits)
    layers.append(IntConv(wq, bq, sh, 0, cfg.table_size - 1))
    return IntHyperSynthesis(layers)


def _int_conv_torch(layer: IntConv, x: torch.Tensor) -> torch.Tensor:
    """The training-side emulation of :func:`edge_runtime.intnet.conv_layer`: float64 im2col + matmul on
    integer values (exact below 2**52, as the numpy side), floor-shift, clamp. x: float64 (N, C, H, W)."""
    n, _, h, w = x.shape
    cout, _, k, _ = layer.weight.shape
    cols = F.unfold(x, k, padding=k // 2)  # (N, C*k*k, HW), (c, dy, dx) order
    wm = torch.from_numpy(layer.weight.reshape(cout, -1)).double().to(x.device)
    acc = torch.matmul(wm, cols)  # (N, cout, HW)
    shift = torch.from_numpy(layer.shift).view(1, -1, 1).to(x.device)
    bias = torch.from_numpy(layer.bias).double().view(1, -1, 1).to(x.device)
    acc = acc + bias + torch.pow(2.0, (shift - 1).double())
    out = torch.floor(acc / torch.pow(2.0, shift.double())).clamp(layer.lo, layer.hi).view(n, cout, h, w)
    return F.pixel_shuffle(out, 2) if layer.upsample == 2 else out


def int_hyper_features(net: IntHyperSynthesis, z_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(integer hidden activations of the last hidden layer, int64 indices) for integer-valued z_hat."""
    x = z_hat.detach().double().clamp(-net.input_max, net.input_max)
    for layer in net.layers[:-1]:
        x = _int_conv_torch(layer, x)
    idx = _int_conv_torch(net.layers[-1], x)
    return x, idx.to(torch.int64)


def gaussian_pmfs(cfg: HyperConfig, tail: float = 1e-9) -> list[tuple[np.ndarray, int]]:
    """For each entry of the scale table: (pmf float64 (K_i,), offset_i), the probability of the integers
    offset_i .. offset_i + K_i - 1 under N(0, scale_i) integrated over unit intervals, cut where the two tails
    hold less than ``tail`` (the rest is the coder's escape). Export turns these into integer tables; widths
    differ per table (3 symbols at the smallest scale, about 3,100 at 256)."""
    from math import erfc, sqrt

    out = []
    for s in cfg.scale_table():
        r = 0
        while erfc((r + 0.5) / (s * sqrt(2))) > tail:  # mass beyond +-(r + 0.5), both tails
            r += 1
        v = np.arange(-r, r + 1, dtype=np.float64)
        cdf = np.array([0.5 * erfc(-(u / (s * sqrt(2)))) for u in np.append(v - 0.5, r + 0.5)])
        out.append((np.diff(cdf), -r))
    return out


def gaussian_likelihood(v: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Mass of [v - 0.5, v + 0.5] under N(0, scale), evaluated on the tail side (CompressAI's form)."""
    v = v.abs()
    c = -1 / math.sqrt(2)
    upper = 0.5 * torch.erfc(c * (0.5 - v) / scale)
    lower = 0.5 * torch.erfc(c * (-0.5 - v) / scale)
    return (upper - lower).clamp_min(1e-9)


class HyperCodec(nn.Module):
    def __init__(self, cfg: HyperConfig):
        super().__init__()
        self.cfg = cfg
        c, n, m, nz = cfg.channels, cfg.n, cfg.m, cfg.nz
        self.g_a = nn.Sequential(
            conv(c, n, 5, 2), act(),
            conv(n, n, 5, 2), act(),
            conv(n, n, 5, 2), act(),
            conv(n, m, 5, 2),
        )  # fmt: skip
        self.g_s = nn.Sequential(
            Up2(m, n), act(),
            Up2(n, n), act(),
            Up2(n, n), act(),
            Up2(n, c),
        )  # fmt: skip
        self.h_a = nn.Sequential(
            conv(m, n, 3), act(),
            conv(n, n, 5, 2), act(),
            conv(n, nz, 5, 2),
        )  # fmt: skip
        self.h_s = HyperSynthesis(cfg)
        self.prior_z = FactorizedPrior(nz)
        lm = torch.tensor(cfg.lambdas, dtype=torch.float64)
        init = (0.5 * torch.log(lm / torch.exp(torch.log(lm).mean()))).float()  # step ~ lambda^-1/2
        self.log_gain = nn.Parameter(init[:, None].repeat(1, m))
        self.log_inv_gain = nn.Parameter(-init[:, None].repeat(1, m))
        self.register_buffer("scale_table", torch.tensor(cfg.scale_table(), dtype=torch.float32))
        self.qat = False  # set by the training task from the step; eval always uses the integer emulation

    @property
    def levels(self) -> int:
        return len(self.cfg.lambdas)

    def gains(self, level: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """level: float (N,) in [0, levels-1]; fractional levels interpolate log-gains linearly."""
        level = level.float().clamp(0, self.levels - 1)
        lo = level.floor().long().clamp(max=self.levels - 1)
        hi = (lo + 1).clamp(max=self.levels - 1)
        t = (level - lo.float())[:, None]
        g = (1 - t) * self.log_gain[lo] + t * self.log_gain[hi]
        ig = (1 - t) * self.log_inv_gain[lo] + t * self.log_inv_gain[hi]
        return g.exp()[:, :, None, None], ig.exp()[:, :, None, None]

    def lambdas_of(self, level: torch.Tensor) -> torch.Tensor:
        lm = torch.log(torch.tensor(self.cfg.lambdas, device=level.device))
        level = level.float().clamp(0, self.levels - 1)
        lo = level.floor().long().clamp(max=self.levels - 1)
        hi = (lo + 1).clamp(max=self.levels - 1)
        t = level - lo.float()
        return torch.exp((1 - t) * lm[lo] + t * lm[hi])

    def index_to_scale(self, idx: torch.Tensor) -> torch.Tensor:
        return torch.exp(math.log(self.cfg.scale_min) + self.cfg.log_step * idx)

    def entropy_params(self, z_hat: torch.Tensor, integer: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(scale index, means): float index (training) or the exact integer emulation's (``integer``)."""
        if not integer:
            return self.h_s(z_hat, qat=self.qat)
        net = to_integer(self.h_s)
        a_int, idx = int_hyper_features(net, z_hat)
        mu = None
        if self.h_s.mu is not None:
            mu = self.h_s.mu(a_int.to(z_hat.dtype) * self.cfg.act_unit)
        return idx.to(z_hat.dtype), mu

    def forward(self, x: torch.Tensor, level: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """level: float (N,) quality levels (default: the middle one)."""
        if level is None:
            level = torch.full((x.shape[0],), float(self.levels // 2), device=x.device)
        g, ig = self.gains(level)
        y = self.g_a(x) * g
        z = self.h_a(y)
        z_hat = round_ste(z) if self.training else torch.round(z)
        lik_z = self.prior_z.likelihood(z + torch.empty_like(z).uniform_(-0.5, 0.5) if self.training else z_hat)
        idx, mu = self.entropy_params(z_hat, integer=not self.training)
        if mu is None:
            mu = torch.zeros_like(y)
        scale = self.index_to_scale(idx)
        if self.training:
            lik_y = gaussian_likelihood(y - mu + torch.empty_like(y).uniform_(-0.5, 0.5), scale)
            y_hat = round_ste(y - mu) + mu
        else:
            sym = torch.round(y - mu)
            lik_y = gaussian_likelihood(sym, scale)
            y_hat = sym + mu
        x_hat = self.g_s(y_hat * ig)
        return {"x_hat": x_hat, "lik_y": lik_y, "lik_z": lik_z, "idx": idx, "y": y}


def rd_loss(x: torch.Tensor, out: dict, lmbda: torch.Tensor):
    """Per-sample R + lambda*255^2*D averaged over the batch; returns (loss, bpp (N,), mse (N,))."""
    n, _, h, w = x.shape
    bits = -(torch.log2(out["lik_y"]).flatten(1).sum(1) + torch.log2(out["lik_z"]).flatten(1).sum(1))
    bpp = bits / (h * w)
    mse = ((x - out["x_hat"]) ** 2).flatten(1).mean(1)
    return (bpp + lmbda * 255.0**2 * mse).mean(), bpp, mse


def macs_per_pixel(codec: HyperCodec, size: int = 256) -> dict[str, int]:
    """MACs per frame pixel of the encoder (g_a + h_a), the decoder's synthesis (g_s) and the hyper-synthesis
    (index and means heads; encoder and decoder both run it), from ``training.layers.count_macs``."""
    from training.layers import count_macs

    c = codec.cfg
    px = size * size
    enc = count_macs(nn.Sequential(codec.g_a, codec.h_a), torch.zeros(1, c.channels, size, size))
    dec = count_macs(codec.g_s, torch.zeros(1, c.m, size // 16, size // 16))
    hs = count_macs(codec.h_s, torch.zeros(1, c.nz, size // 64, size // 64))
    return {"encoder": round(enc / px), "decoder": round(dec / px), "hyper_synthesis": round(hs / px)}


# --- the training task ----------------------------------------------------------------------------------------


class HyperCompressTask:
    """``train.py``'s task interface for ``--task compress --arch hyper``: each patch of a batch gets a random
    quality level; validation runs the exact integer index path at the lowest, a middle and the highest level."""

    metric, higher_is_better = "rd_loss", False

    def __init__(self, cfg, device: torch.device, val_images: list[np.ndarray]):
        from training.data import center_crops

        self.cfg, self.device = cfg, device
        self.model_cfg = HyperConfig(channels=cfg.channels, n=cfg.width or 64)
        self.model = HyperCodec(self.model_cfg)
        self.val = center_crops(val_images, 256, self.model_cfg.multiple)
        self.gen = torch.Generator().manual_seed(cfg.seed + 7)
        k = self.model.levels
        self.val_levels = sorted({0, k // 2, k - 1})

    def set_step(self, step: int) -> None:
        self.model.qat = step >= self.model_cfg.qat_from * self.cfg.steps

    def loss(self, model: nn.Module, batch: np.ndarray) -> tuple[torch.Tensor, dict]:
        from training.train import to_tensor

        x = to_tensor(batch, self.device)
        level = torch.randint(0, self.model.levels, (len(batch),), generator=self.gen).to(self.device)
        out = model(x, level.float())
        loss, bpp, mse = rd_loss(x, out, self.model.lambdas_of(level.float()))
        psnr = float(10 * torch.log10(1 / mse.detach().mean().clamp_min(1e-10)))
        return loss, {"bpp": float(bpp.detach().mean()), "psnr": psnr, "qat": int(self.model.qat)}

    @torch.no_grad()
    def validate(self, model: nn.Module) -> dict:
        from training.metrics import psnr
        from training.train import from_tensor, to_tensor

        res: dict = {}
        losses, lat = [], []
        for q in self.val_levels:
            bpps, psnrs = [], []
            for img in self.val:
                x = to_tensor(img[None], self.device)
                level = torch.full((1,), float(q), device=self.device)
                out = model(x, level)
                out["x_hat"] = out["x_hat"].clamp(0, 1)
                loss, bpp, _ = rd_loss(x, out, self.model.lambdas_of(level))
                bpps.append(float(bpp[0]))
                psnrs.append(psnr(from_tensor(out["x_hat"]), img))
                losses.append(float(loss))
                if q == self.val_levels[-1]:
                    lat.append(model.g_a(x).mean(dim=(2, 3), keepdim=True))
            res[f"bpp_l{q}"] = float(np.mean(bpps)) if bpps else float("nan")
            res[f"psnr_l{q}"] = float(np.mean(psnrs)) if psnrs else float("nan")
        res["rd_loss"] = float(np.mean(losses)) if losses else float("nan")
        if len(lat) > 1:
            res.update(health.latent_health(torch.cat(lat)))
        return res
