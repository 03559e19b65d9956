"""Training health: latent collapse detection and the numbers logged for it."""

from __future__ import annotations

import numpy as np
import torch


def latent_health(latents: torch.Tensor) -> dict[str, float]:
    """latents (N, C, H, W) on validation batches -> per-channel variance summary and effective rank.

    Pooled latents (spatial mean per channel) form an N x C matrix; its effective rank (exp of the entropy of
    the normalised singular values, Roy & Vetterli 2007) is ~1 when every image maps to the same direction.
    """
    z = latents.detach().float().cpu()
    per_channel_var = z.var(dim=(0, 2, 3), unbiased=False)
    pooled = z.mean(dim=(2, 3))
    pooled = pooled - pooled.mean(dim=0, keepdim=True)
    # Identical pooled vectors leave only float rounding after centring (not exact zeros): the "rank" of that
    # noise means nothing, so spread below a relative tolerance of the latents' magnitude counts as none.
    scale = float(z.abs().max()) if z.numel() else 0.0
    if pooled.shape[0] < 2 or float(pooled.abs().max()) <= 1e-5 * scale:
        erank = 0.0
    else:
        s = torch.linalg.svdvals(pooled.double())
        p = s / s.sum()
        p = p[p > 0]
        erank = float(torch.exp(-(p * p.log()).sum()))
    return {
        "latent_var_total": float(per_channel_var.sum()),
        "latent_var_max": float(per_channel_var.max()),
        "latent_active_channels": int((per_channel_var > 1e-4).sum()),
        "latent_effective_rank": erank,
    }


def is_collapsed(h: dict[str, float], min_total_var: float = 1e-6, min_rank: float = 0.5) -> bool:
    """Collapsed when the latents carry (almost) no variance, or every image pools to one point."""
    return h["latent_var_total"] < min_total_var or h["latent_effective_rank"] < min_rank


def finite(x: float) -> bool:
    return bool(np.isfinite(x))
