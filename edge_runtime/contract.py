"""The bundle contract of docs/bundle.md in one place: what ``edgeae export`` writes and ``edge_runtime`` accepts.

The writer (``export/``) and the reader (:mod:`edge_runtime.model`) both import these names and keep no copy of
their own. Standard library only and nothing from ``edge_runtime``: a leaf that either side can import without
the other's dependencies.

Where the writer and the reader differ on purpose, the names say which is which:

* opsets: the exporter writes :data:`DEFAULT_OPSET` unless asked, at most :data:`EXPORT_MAX_OPSET`; the runtime
  accepts :data:`MIN_OPSET` to :data:`MAX_OPSET`;
* ``max_side``: the exporter writes :data:`EXPORT_MAX_SIDE`; the runtime accepts up to :data:`MAX_SIDE_LIMIT`;
* anomaly threshold floors: :data:`EXPORT_THRESHOLD_FLOOR` and :data:`DEVICE_THRESHOLD_FLOOR` are two rules for
  two different estimates (see there); the runtime accepts any threshold within :data:`METADATA_RANGES`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

# --------------------------------------------------------------------------------------------------------------
# Names and layout

SCHEMA_VERSION = 1  # manifest.json "schema_version" (a JSON integer) and edgeae.schema_version (the string "1")
BUNDLE_FORMAT = "edgeae-bundle"  # manifest.json "format"
MANIFEST_NAME = "manifest.json"
ENTROPY_NAME = "entropy.json"  # compress bundles: integer CDF tables (docs/bitstream.md)
STATS_NAME = "anomaly_stats.npz"  # anomaly bundles, optional: per-location statistics of `edgeae calibrate`
METADATA_PREFIX = "edgeae."  # every ONNX metadata_props key of the contract starts with this

TASKS = ("denoise", "anomaly", "compress")
GRAPHS = ("denoise", "anomaly", "encoder", "decoder")
GRAPHS_OF_TASK: dict[str, tuple[str, ...]] = {
    "denoise": ("denoise",),
    "anomaly": ("anomaly",),
    "compress": ("encoder", "decoder"),
}
PRECISIONS = ("fp32", "fp16", "int8")  # also the order Bundle.precisions() lists them in
# Metadata keys that differ between the files of one bundle; the manifest's "contract" holds every other key.
PER_FILE_KEYS = ("graph", "precision", "parent_sha256", "macs_per_pixel", "params")


def graph_file_name(graph: str, precision: str) -> str:
    """``GRAPH.PRECISION.onnx``, e.g. ``encoder.int8.onnx``: the name of a graph file inside a bundle."""
    return f"{graph}.{precision}.onnx"


# --------------------------------------------------------------------------------------------------------------
# Sizes the reader caps before reading

MAX_MODEL_BYTES = 512 * 1024 * 1024  # one ONNX file (the default models are under 2 MB)
# The manifest is a few kilobytes; a cap stops a hostile file from filling memory through json.loads.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
# anomaly_stats.npz: both the file and what its members inflate to (F x H/8 x W/8 float32 x 2 is a few MB for
# 1080p frames and 64 features; a 4096x4096 scene with 32 features is about 70 MB).
MAX_STATS_BYTES = 256 * 1024 * 1024
MAX_STATS_FEATURES = 4096  # feature channels F of the per-location statistics

# --------------------------------------------------------------------------------------------------------------
# Opsets
#
# Writer: torch's TorchScript ("legacy", dynamo=False) exporter, which edgeae uses for its clean symbolic
# dimensions, supports opsets up to 20 (torch 2.13: torch.onnx._constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET);
# above that it only warns "not supported" and writes anyway. The default models are opset 17, which every
# onnxruntime the runtime allows (>= 1.17, pyproject.toml) and every provider tried here runs.
# Reader: 17 (the oldest opset edgeae has tested; Reduce* changed at 18) to 23, the newest opset torch 2.13's
# exporters know (ONNX_MAX_OPSET), so a graph made by the dynamo exporter still loads. onnxruntime 1.32 loads up
# to 28; an older onnxruntime on a device that lacks an opset refuses the graph itself, which create_session
# reports as exit 4 too.
MIN_OPSET = 17
MAX_OPSET = 23  # the reader's newest
DEFAULT_OPSET = 17  # what `edgeae export` writes unless --opset says otherwise
EXPORT_MAX_OPSET = 20  # the newest `edgeae export --opset` offers
# Operator domains onnxruntime implements itself; anything else would be a custom op library.
ALLOWED_DOMAINS = frozenset({"", "ai.onnx", "com.microsoft", "ai.onnx.ml"})

# --------------------------------------------------------------------------------------------------------------
# Graph inputs and outputs: name -> (element type, rank)

GRAPH_IO: dict[str, dict[str, dict[str, tuple[str, int]]]] = {
    "denoise": {"inputs": {"frame": ("uint8", 4)}, "outputs": {"denoised": ("uint8", 4)}},
    "anomaly": {
        "inputs": {"frame": ("uint8", 4)},
        "outputs": {"anomaly_map": ("float32", 3), "score": ("float32", 1), "features": ("float32", 4)},
    },
    "encoder": {"inputs": {"frame": ("uint8", 4)}, "outputs": {"latent": ("int32", 4)}},
    "decoder": {"inputs": {"latent": ("int32", 4)}, "outputs": {"frame": ("uint8", 4)}},
}

# --------------------------------------------------------------------------------------------------------------
# Metadata

# Keys every edgeae graph carries; one missing means a file truncated at a field boundary or not made by edgeae.
REQUIRED_METADATA = (
    "edgeae.schema_version",
    "edgeae.task",
    "edgeae.graph",
    "edgeae.channels",
    "edgeae.input_multiple",
    "edgeae.max_side",
    "edgeae.precision",
)
# Text metadata the runtime reads, with a fixed vocabulary (edgeae.graph is not here: a caller may open a custom
# graph with its own I/O contract, and a bundle's manifest names the graph of each file).
METADATA_CHOICES: dict[str, tuple[str, ...]] = {
    "edgeae.task": TASKS,
    "edgeae.precision": PRECISIONS,
}

EXPORT_MAX_SIDE = 8192  # the edgeae.max_side `edgeae export` writes
MAX_SIDE_LIMIT = 16384  # the most any bundle may declare (also the .eae format's limit, bitstream.MAX_SIDE)
MAX_INPUT_MULTIPLE = 256  # padding a frame costs up to multiple - 1 rows and columns; real models use 8 to 64
LATENT_STRIDE = 16  # the encoder's downsampling, written by export; the .eae format needs exactly this
MAX_LATENT_STRIDE = 256
MAX_LATENT_CHANNELS = 1024  # also the .eae format's limit (bitstream.MAX_LATENT_CHANNELS)
LATENT_QUANTIZATION = "round"  # latents are rounded to integers inside the encoder graph
# norm_std is floored at this when it is fitted (export, `edgeae calibrate`); the reader refuses less: dividing
# by a smaller one makes every score an overflow.
NORM_STD_FLOOR = 1e-6
# Scores are in standard deviations of normal frames: anything beyond this is not a calibration but an error.
MAX_NORMALISED = 1e6


@dataclass(frozen=True)
class Range:
    """The values one numeric metadata key may take: ``kind`` int or float, ``low`` to ``high`` inclusive,
    or one of ``choices`` when given. Floats must be finite."""

    kind: type
    low: float
    high: float
    choices: tuple = ()

    def describe(self) -> str:
        """``1 or 3``, ``1..256``, ``1e-06..1e+06``: the allowed values, as error messages quote them."""
        if self.choices:
            return " or ".join(str(c) for c in self.choices)
        return f"{self.low:g}..{self.high:g}"

    def parse(self, value: Any) -> int | float:
        """The value as a number: a metadata string (``"8"``, ``"3.0"``) or a JSON number of the manifest.

        Raises ValueError with a one-line reason (not a number, not finite, out of range). Strings are parsed
        strictly: no ``1_000``, no ``0x10``, no spaces, no ``nan``; integers take digits only.
        """
        try:
            number = _number(value, self.kind)
        except ValueError as exc:
            raise ValueError(f"{exc} (allowed {self.describe()})") from None
        if isinstance(number, float) and not math.isfinite(number):
            raise ValueError(f"is not a finite number (allowed {self.describe()})")
        if self.choices and number not in self.choices:
            raise ValueError(f"is not allowed (allowed {self.describe()})")
        if not self.low <= number <= self.high:
            raise ValueError(f"is out of range (allowed {self.describe()})")
        return number


_INT_TEXT = re.compile(r"[0-9]{1,12}")
_FLOAT_TEXT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?")


def _number(value: Any, kind: type) -> int | float:
    if isinstance(value, bool):  # JSON true is not a number
        raise ValueError(f"is not {'an integer' if kind is int else 'a number'}")
    if kind is int:
        if isinstance(value, int):
            return value
        if isinstance(value, str) and _INT_TEXT.fullmatch(value):
            return int(value)
        raise ValueError("is not an integer")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value):
        return float(value)
    raise ValueError("is not a finite number")


# Every number the runtime computes with, and its allowed range. An empty string means "absent" (e.g.
# edgeae.quality of a denoise model); REQUIRED_METADATA says which keys must be present.
METADATA_RANGES: dict[str, Range] = {
    "edgeae.channels": Range(int, 1, 3, choices=(1, 3)),
    "edgeae.input_multiple": Range(int, 1, MAX_INPUT_MULTIPLE),
    "edgeae.max_side": Range(int, 1, MAX_SIDE_LIMIT),
    "edgeae.quality": Range(int, 0, 255),  # stored in every .eae stream header as one byte
    "edgeae.latent.channels": Range(int, 1, MAX_LATENT_CHANNELS),
    "edgeae.latent.stride": Range(int, 1, MAX_LATENT_STRIDE),
    "edgeae.anomaly.threshold": Range(float, 0.0, MAX_NORMALISED),
    "edgeae.anomaly.norm_mean": Range(float, -MAX_NORMALISED, MAX_NORMALISED),
    "edgeae.anomaly.norm_std": Range(float, NORM_STD_FLOOR, MAX_NORMALISED),
}
# The manifest's "calibration" block overrides the anomaly metadata (edgeae calibrate rewrites it): same ranges.
CALIBRATION_RANGES: dict[str, Range] = {
    key: METADATA_RANGES[f"edgeae.anomaly.{key}"] for key in ("threshold", "norm_mean", "norm_std")
}

# --------------------------------------------------------------------------------------------------------------
# Anomaly threshold floors, in normalised units (standard deviations of the scores of normal frames)
#
# Two writers estimate a threshold from normal frames, from different evidence, so each has its own floor:
#
# EXPORT_THRESHOLD_FLOOR: `edgeae export` (export.metadata.anomaly_calibration) on the training run's validation
#   images with the graph's own global score: threshold = max(3.0, 99th percentile of the normalised scores).
#   Generic images, a generic score: the percentile carries the tail, and 3 std is the textbook least.
# DEVICE_THRESHOLD_FLOOR: `edgeae calibrate` (edge_runtime.calibration.fit_calibration) on the device's own camera,
#   per location: threshold = max(4.0, 1.1 x the highest held-out normalised score). Only a few held-out frames
#   (2 of 10 at the least) do not show the tail, heavier than a Gaussian's; measured with the benchmark's camera
#   (benchmarks/anomaly_bench.py, 400 normal and 400 defective test frames): false alarms 2.5 % at 3, 1.5 % at 4,
#   1.0 % at 5; detected 95 %, 92 %, 90 %. It is also the threshold of a graph that carries none.
#
# The reader enforces neither floor: a threshold set by hand below it is the user's choice (METADATA_RANGES).
EXPORT_THRESHOLD_FLOOR = 3.0
DEVICE_THRESHOLD_FLOOR = 4.0
