"""Prometheus text exposition (format 0.0.4) for the view server's ``/metrics``. Standard library only.

The frame loop hands the view server a provider, ``fn() -> {camera: {key: value}}``; :func:`camera_families` turns
that into metric families with the names in :data:`CAMERA_METRICS`, and :func:`render` writes them out. The
names, types and labels are listed in ``docs/view.md``.

Latency percentiles are gauges with a ``quantile`` label, in seconds (the caller gives milliseconds, as the
frame loop's stage clock measures them), not a summary: the frame loop keeps a recent window of samples, not a
running sum and count since start, so there is nothing honest to put in ``_sum`` and ``_count``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
TYPES = ("counter", "gauge", "summary", "histogram", "untyped")


@dataclass(frozen=True)
class Spec:
    """One key of the provider's per-camera dict and the metric it becomes."""

    key: str
    name: str
    type: str
    help: str
    quantiles: bool = False  # the value is a dict {"p50_ms", "p95_ms", "p99_ms"} -> a gauge per quantile


# key in the provider's dict -> metric. Keys the server does not know are ignored; values that are not numbers
# (or, for counters, negative or not finite) leave their sample out rather than the scrape failing.
CAMERA_METRICS: tuple[Spec, ...] = (
    Spec("fps", "edgeae_frames_per_second", "gauge", "Frames processed per second over the recent window."),
    Spec("frames_processed", "edgeae_frames_processed_total", "counter", "Frames processed since start."),
    Spec(
        "frames_dropped",
        "edgeae_frames_dropped_total",
        "counter",
        "Frames dropped before processing (a live source keeps only the newest frame).",
    ),  # fmt: skip
    Spec("reconnects", "edgeae_reconnects_total", "counter", "Source reconnects since start."),
    Spec("queue_depth", "edgeae_queue_depth", "gauge", "Frames waiting to be processed."),
    Spec("alarms", "edgeae_alarms_total", "counter", "Alarms started since start."),
    Spec(
        "inference",
        "edgeae_inference_latency_seconds",
        "gauge",
        "Model inference latency percentiles over the recent window.",
        quantiles=True,
    ),  # fmt: skip
    Spec(
        "pipeline",
        "edgeae_pipeline_latency_seconds",
        "gauge",
        "Whole-frame latency percentiles (capture to outputs) over the recent window.",
        quantiles=True,
    ),  # fmt: skip
)
# The provider's percentile keys (the stage clock's summary) and the quantile label each becomes.
QUANTILES: tuple[tuple[str, str], ...] = (("p50_ms", "0.5"), ("p95_ms", "0.95"), ("p99_ms", "0.99"))

# From the camera's status (ViewServer.set_status), when the field is there.
STATUS_METRICS: tuple[Spec, ...] = (
    Spec("score", "edgeae_score", "gauge", "The latest frame's anomaly score."),
    Spec("threshold", "edgeae_threshold", "gauge", "The alarm threshold on the score."),
    Spec("alarm", "edgeae_alarm_active", "gauge", "1 while the camera is alarming, else 0."),
)


@dataclass
class Family:
    """A metric family: its ``# HELP`` / ``# TYPE`` lines and samples ``(labels, value)``."""

    name: str
    type: str
    help: str
    samples: list[tuple[dict[str, str], float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not NAME_RE.fullmatch(self.name):
            raise ValueError(f"bad metric name {self.name!r}")
        if self.type not in TYPES:
            raise ValueError(f"bad metric type {self.type!r}")
        if self.type == "counter" and not self.name.endswith("_total"):
            raise ValueError(f"a counter's name ends with _total: {self.name!r}")

    def add(self, value: Any, **labels: str) -> None:
        """Add a sample; a value that is not a number (or, for a counter, negative or not finite) is left out."""
        number = as_number(value)
        if number is None:
            return
        if self.type == "counter" and (not math.isfinite(number) or number < 0):
            return
        for key in labels:
            if not LABEL_RE.fullmatch(key) or key.startswith("__"):
                raise ValueError(f"bad label name {key!r}")
        self.samples.append((labels, number))


def as_number(value: Any) -> float | None:
    """bool -> 0/1, int/float -> float; anything else (None, str, dict) -> None."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    return None


def escape_label_value(value: str) -> str:
    """Backslash, double quote and line feed escaped, as the text format requires inside ``"..."``."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    """Backslash and line feed escaped (a HELP line is one line)."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def render(families: Iterable[Family]) -> str:
    """The exposition text: every family's HELP and TYPE, then its samples; families without samples are skipped."""
    lines: list[str] = []
    for fam in families:
        if not fam.samples:
            continue
        lines.append(f"# HELP {fam.name} {escape_help(fam.help)}")
        lines.append(f"# TYPE {fam.name} {fam.type}")
        for labels, value in fam.samples:
            if labels:
                inner = ",".join(f'{k}="{escape_label_value(str(v))}"' for k, v in labels.items())
                lines.append(f"{fam.name}{{{inner}}} {format_value(value)}")
            else:
                lines.append(f"{fam.name} {format_value(value)}")
    return "\n".join(lines) + "\n" if lines else ""


def camera_families(
    provided: Mapping[str, Mapping[str, Any]], statuses: Mapping[str, Mapping[str, Any]]
) -> list[Family]:
    """The per-camera families from the provider's dict and the cameras' status fields, in a fixed order."""
    families: list[Family] = []
    for spec in CAMERA_METRICS:
        fam = Family(spec.name, spec.type, spec.help)
        for camera, values in provided.items():
            if not isinstance(values, Mapping) or spec.key not in values:
                continue
            value = values[spec.key]
            if not spec.quantiles:
                fam.add(value, camera=str(camera))
            elif isinstance(value, Mapping):
                for key, quantile in QUANTILES:
                    ms = as_number(value.get(key))
                    if ms is not None:
                        fam.add(ms / 1000.0, camera=str(camera), quantile=quantile)
        families.append(fam)
    for spec in STATUS_METRICS:
        fam = Family(spec.name, spec.type, spec.help)
        for camera, status in statuses.items():
            if spec.key in status:
                fam.add(status[spec.key], camera=str(camera))
        families.append(fam)
    return families


def view_families(
    cameras: Iterable[tuple[str, int, int]], viewers_dropped: int, uptime_s: float, metrics_errors: int
) -> list[Family]:
    """The view server's own families: ``cameras`` is ``(name, frames published, viewers now)`` per camera."""
    frames = Family("edgeae_view_frames_published_total", "counter", "Frames published to the view server.")
    viewers = Family("edgeae_view_viewers", "gauge", "Viewers of the camera's stream now.")
    for name, published, watching in cameras:
        frames.add(published, camera=name)
        viewers.add(watching, camera=name)
    dropped = Family("edgeae_view_viewers_dropped_total", "counter", "Viewers dropped for not taking frames.")
    dropped.add(viewers_dropped)
    uptime = Family("edgeae_view_uptime_seconds", "gauge", "Seconds since the view server started.")
    uptime.add(uptime_s)
    errors = Family("edgeae_view_metrics_errors_total", "counter", "Scrapes whose metrics function failed.")
    errors.add(metrics_errors)
    return [frames, viewers, dropped, uptime, errors]
