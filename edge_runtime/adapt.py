"""Slow, bounded re-calibration on a live camera (`edgeae run --adapt`): lighting through a day is not an alarm.

After each frame that scored below the threshold and is not part of an alarm, the per-location statistics move a
little towards it: an exponential moving average of the mean and the variance with a time constant of
``tau_s`` seconds of the source's own clock (a frame's weight is its time step over ``tau_s``). Frames above the
threshold never teach a location anything, so an object that appears is still caught; they still move the part
of the drift that the whole frame shares (light changing during an alarm).

Drift is capped in two parts, in units of the calibration's own standard deviation per location and channel:
light changes every location together, so the drift shared by the whole frame (its median over locations) may
go as far as ``max_global``; what one location drifts beyond that shared part is what a slowly arriving object
would teach, and it may go only ``max_local``. A step that would go further is clipped and counted
(``drift_capped``); a scene that keeps alarming stops adapting (``skipped``). numpy only; the bundle on disk is
never changed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from edge_runtime.anomaly import LocationStats

DEFAULT_TAU_S = 60.0  # a +-30 % lighting ramp over 10 minutes lags by 3 % of the range (0.3 x 60 s / 600 s)
DEFAULT_MAX_LOCAL = 3.0  # calibration standard deviations one location may drift beyond the whole frame's drift
DEFAULT_MAX_GLOBAL = 20.0  # ... and the whole frame's drift itself (lights going out for good is not learned)
MAX_SPREAD = 2.0  # the adapted standard deviation stays within 1-2x the calibration's
MAX_STEP = 0.05  # no single frame moves the statistics more than this fraction (a long gap in a live source)


class Adapter:
    """Updates a private copy of ``stats`` in place; ``scorer.stats`` should be that copy (:meth:`attach`)."""

    def __init__(self, stats: LocationStats, tau_s: float = DEFAULT_TAU_S, max_local: float = DEFAULT_MAX_LOCAL,
                 max_global: float = DEFAULT_MAX_GLOBAL):  # fmt: skip
        if not (tau_s > 0 and max_local > 0 and max_global > 0):
            raise ValueError("tau_s, max_local and max_global must be > 0")
        self.base = stats
        self.stats = dataclasses.replace(stats, feat_mean=stats.feat_mean.copy(), feat_std=stats.feat_std.copy(),
                                         ssim_mean=stats.ssim_mean.copy(), ssim_std=stats.ssim_std.copy())  # fmt: skip
        self._feat_var = stats.feat_std.astype(np.float64) ** 2
        self._ssim_var = stats.ssim_std.astype(np.float64) ** 2
        self.tau_s, self.max_local, self.max_global = float(tau_s), float(max_local), float(max_global)
        self.updates = self.skipped = self.drift_capped = 0
        self._last_t: float | None = None

    def attach(self, scorer: Any) -> Any:
        """A scorer that scores with the adapted statistics (the session shared)."""
        return scorer.with_calibration({}, self.stats)

    def _step(self, t: float) -> float:
        dt = 0.0 if self._last_t is None else max(0.0, t - self._last_t)
        self._last_t = t
        return min(MAX_STEP, dt / self.tau_s)

    def update(self, analysis: Any, timestamp: float, above: bool, alarm: bool) -> None:
        """Learn from one scored frame (its :class:`~edge_runtime.anomaly._Analysis`); an anomalous one moves only
        the shared part of the drift."""
        rate = self._step(float(timestamp))
        frozen = bool(above or alarm)
        self.skipped += int(frozen)
        if rate <= 0.0 or analysis.features.shape != self.stats.feat_mean.shape:
            return
        capped = self._ema(self.stats.feat_mean, self._feat_var, analysis.features, rate, self.base.feat_mean,
                           self.base.feat_std, frozen)  # fmt: skip
        self._ema(self.stats.ssim_mean[None], self._ssim_var[None], analysis.ssim_grid[None], rate,
                  self.base.ssim_mean[None], self.base.ssim_std[None], frozen)  # fmt: skip
        # Spread between the calibration's (a location never gets more certain than calibration made it) and
        # MAX_SPREAD times it (a drift the mean may not follow must not be absorbed by a wider spread instead).
        for var, base, out in ((self._feat_var, self.base.feat_std, self.stats.feat_std),
                               (self._ssim_var, self.base.ssim_std, self.stats.ssim_std)):  # fmt: skip
            out[...] = np.clip(np.sqrt(var), base, MAX_SPREAD * base)
        self.updates += 1
        self.drift_capped += int(capped)

    def _ema(self, mean: np.ndarray, var: np.ndarray, x: np.ndarray, rate: float, base: np.ndarray,
             std: np.ndarray, frozen: bool) -> bool:  # fmt: skip
        """One EMA step of ``mean`` (C, h, w) float32 and ``var`` float64, in place, then the two caps; True when
        a cap clipped. ``frozen``: only the shared drift moves; each location keeps its own part."""
        diff = x.astype(np.float64) - mean
        drift = (mean + rate * diff - base) / std  # in calibration standard deviations
        shared = np.median(drift, axis=(1, 2), keepdims=True)
        if frozen:
            old = (mean - base) / std
            local = old - np.median(old, axis=(1, 2), keepdims=True)
        else:
            var *= 1.0 - rate
            var += rate * (1.0 - rate) * diff * diff
            local = drift - shared
        shared_c = np.clip(shared, -self.max_global, self.max_global)
        local_c = np.clip(local, -self.max_local, self.max_local)
        clipped = bool((shared_c != shared).any() or (local_c != local).any())
        mean[...] = base + (shared_c + local_c) * std
        return clipped

    def summary(self) -> dict[str, Any]:
        drift = (self.stats.feat_mean - self.base.feat_mean) / self.base.feat_std
        shared = np.median(drift, axis=(1, 2), keepdims=True)
        return {"adapt_updates": self.updates, "adapt_skipped": self.skipped, "drift_capped": self.drift_capped,
                "drift_max_std": round(float(np.abs(drift).max()), 3),
                "drift_local_max_std": round(float(np.abs(drift - shared).max()), 3),
                "adapt_tau_s": self.tau_s}  # fmt: skip
