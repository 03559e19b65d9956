"""What one `edgeae bench` run depends on: :class:`BenchConfig` (stored in results.json as ``config``) and its
defaults. Invalid combinations fail here, before anything is measured (UsageError, exit 2)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from edge_runtime.errors import UsageError

DEFAULT_PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_BATCHES = (1, 4)
QUICK_RESOLUTIONS = ("256x256",)
QUICK_BATCHES = (1, 2)
# Noise level of the inputs OpenCV's classical denoisers are timed on (and named in the report's note).
LATENCY_SIGMA = 25.0


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclass(frozen=True)
class BenchConfig:
    """Everything one bench run depends on (stored in results.json as ``config``)."""

    models: str = "models"
    only: tuple[str, ...] = ()
    precisions: tuple[str, ...] = DEFAULT_PRECISIONS
    resolutions: tuple[str, ...] = ("256x256", "640x480", "1280x720", "1920x1080")
    batches: tuple[int, ...] = DEFAULT_BATCHES
    threads: int = field(default_factory=_cores)
    repeat: int = 20
    warmup: int = 2
    max_seconds: float = 8.0  # per measured configuration; fewer samples (never < 5) when one call is slow
    # Batches above this many pixels per call (4 x 640x480 = 1.2 M) are not run: at 720p and 1080p one frame
    # already keeps the cores busy, and a 4-frame 1080p call takes tens of seconds on 2 cores.
    max_batch_pixels: int = 1_300_000
    devices: tuple[str, ...] = ()  # empty: cpu plus every GPU provider present (missing ones recorded as skipped)
    allow_missing_device: bool = False
    latency: bool = True
    quality: bool = False
    data: str | None = None
    bm3d_images: int = 68
    bm3d_sigmas: tuple[float, ...] = (25.0,)
    cbm3d_images: int = 14  # Set14 images CBM3D runs on (all 14: about 8 min on 2 cores)
    sigmas: tuple[float, ...] = (15.0, 25.0, 50.0)
    checkpoints: tuple[str, ...] = ()
    torch: bool = True
    openvino: bool = True
    pipeline_frames: int = 60
    peak_n: int = 2048
    out: str = "bench-out"
    quick: bool = False

    def __post_init__(self) -> None:
        from benchmarks.latency import parse_resolution

        bad = [p for p in self.precisions if p not in DEFAULT_PRECISIONS]
        if bad:
            raise UsageError(f"--precisions: unknown {', '.join(bad)} (use {', '.join(DEFAULT_PRECISIONS)})")
        if not self.precisions:
            raise UsageError("--precisions: give at least one")
        for r in self.resolutions:
            parse_resolution(r)
        if not self.batches or any(b < 1 or b > 64 for b in self.batches):
            raise UsageError("--batch: sizes must be 1..64")
        if self.threads < 1 or self.repeat < 1 or self.warmup < 0:
            raise UsageError("--threads and --repeat must be >= 1, --warmup >= 0")
        unknown = [d for d in self.devices if d not in ("cpu", "cuda", "openvino")]
        if unknown:
            raise UsageError(f"--device: unknown {', '.join(unknown)} (cpu, cuda, openvino)")

    @classmethod
    def quick_defaults(cls, **kw: Any) -> BenchConfig:
        """Seconds instead of minutes: one small resolution, batch 1 and 2, 1 warm-up, 3 samples, small peaks."""
        base = dict(
            max_batch_pixels=1 << 40,
            resolutions=QUICK_RESOLUTIONS,
            batches=QUICK_BATCHES,
            repeat=3,
            warmup=1,
            max_seconds=1.0,
            bm3d_images=1,
            cbm3d_images=1,
            pipeline_frames=8,
            peak_n=256,
            quick=True,
        )
        base.update({k: v for k, v in kw.items() if v is not None})
        return cls(**base)
