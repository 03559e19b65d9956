"""The ``edgeae.*`` metadata_props of an exported graph (docs/bundle.md) and the values derived for them.

Every value is a string. Keys written for every graph::

    edgeae.schema_version  edgeae.task  edgeae.graph  edgeae.channel_order  edgeae.channels
    edgeae.input_multiple  edgeae.max_side  edgeae.precision  edgeae.quality  edgeae.parent_sha256
    edgeae.run_id  edgeae.model_config  edgeae.macs_per_pixel  edgeae.params

plus ``edgeae.latent.{channels,stride,quantization}`` for the encoder and decoder and
``edgeae.anomaly.{threshold,norm_mean,norm_std}`` for the anomaly graph.

``edgeae.parent_sha256``: an FP16 or INT8 file carries the SHA-256 of the FP32 file it was derived from. A file
cannot carry its own hash, so the FP32 file carries the SHA-256 of the weights it was exported from (the run's
``best.safetensors``); both chains end at the training run, which ``edgeae.run_id`` names as
``RUN_DIR_NAME@<first 16 hex digits of the weights' SHA-256>``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

# Names, keys and values the runtime accepts: edge_runtime.contract, shared with the reader.
from edge_runtime.contract import (
    EXPORT_MAX_SIDE,
    EXPORT_THRESHOLD_FLOOR,
    LATENT_QUANTIZATION,
    LATENT_STRIDE,
    METADATA_PREFIX,
    NORM_STD_FLOOR,
    PER_FILE_KEYS,
    SCHEMA_VERSION,
)

# Anomaly threshold rule (see anomaly_calibration): max(EXPORT_THRESHOLD_FLOOR, this percentile).
THRESHOLD_PERCENTILE = 99.0


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run_identity(run_dir: str | Path, weights: str = "best.safetensors") -> tuple[str, str]:
    """``(run_id, weights_sha256)`` of a training run: run_id is ``NAME@<16 hex of the weights' SHA-256>``."""
    run = Path(run_dir).resolve()
    digest = sha256_file(run / weights)
    return f"{run.name}@{digest[:16]}", digest


def anomaly_calibration(raw_scores: Sequence[float] | np.ndarray) -> dict[str, float]:
    """Normalisation and threshold from raw image scores of normal frames.

    Rule: ``norm_mean`` and ``norm_std`` are the mean and sample standard deviation (ddof=1, floored at 1e-6)
    of the raw scores; ``threshold`` (normalised units) is ``max(3.0, 99th percentile of the normalised
    scores)``, so at most about 1 % of normal frames of this kind are flagged and never a score within three
    standard deviations of the mean (:data:`~edge_runtime.contract.EXPORT_THRESHOLD_FLOOR`). ``edgeae calibrate``
    refits all three on the device's own frames, with a floor of 4.0 (the contract says why the two differ).
    """
    s = np.asarray(raw_scores, dtype=np.float64).ravel()
    if s.size < 2 or not np.all(np.isfinite(s)):
        raise ValueError(f"anomaly calibration needs at least 2 finite scores, got {s.size}")
    mean = float(s.mean())
    std = max(float(s.std(ddof=1)), NORM_STD_FLOOR)
    z = (s - mean) / std
    threshold = max(EXPORT_THRESHOLD_FLOOR, float(np.percentile(z, THRESHOLD_PERCENTILE)))
    return {"threshold": round(threshold, 6), "norm_mean": mean, "norm_std": std}


def _fmt_float(v: float) -> str:
    if not math.isfinite(v):
        raise ValueError(f"metadata value {v} is not finite")
    return repr(float(v))


def graph_metadata(
    *,
    task: str,
    graph: str,
    precision: str,
    model_cfg: dict[str, Any],
    run_id: str,
    parent_sha256: str,
    macs_per_pixel: int,
    params: int,
    calibration: dict[str, float] | None = None,
) -> dict[str, str]:
    """The full ``edgeae.*`` metadata of one graph file (keys with the prefix, values strings)."""
    channels = int(model_cfg["channels"])
    meta = {
        "schema_version": str(SCHEMA_VERSION),
        "task": task,
        "graph": graph,
        "channel_order": "BGR" if channels == 3 else "GRAY",
        "channels": str(channels),
        "input_multiple": str(int(model_cfg["multiple"])),
        "max_side": str(EXPORT_MAX_SIDE),
        "precision": precision,
        "quality": str(model_cfg["quality"]) if task == "compress" else "",
        "parent_sha256": parent_sha256,
        "run_id": run_id,
        "model_config": json.dumps(model_cfg, sort_keys=True),
        "macs_per_pixel": str(int(macs_per_pixel)),
        "params": str(int(params)),
    }
    if task == "compress":
        meta["latent.channels"] = str(int(model_cfg["m"]))
        meta["latent.stride"] = str(LATENT_STRIDE)
        meta["latent.quantization"] = LATENT_QUANTIZATION
    if task == "anomaly":
        if calibration is None:
            raise ValueError("the anomaly graph needs its calibration (threshold, norm_mean, norm_std)")
        for key in ("threshold", "norm_mean", "norm_std"):
            meta[f"anomaly.{key}"] = _fmt_float(calibration[key])
    return {METADATA_PREFIX + k: v for k, v in meta.items()}


def set_metadata(model: Any, meta: dict[str, str]) -> None:
    """Replace the ``edgeae.*`` entries of an onnx ModelProto's metadata_props with ``meta`` (others kept)."""
    keep = [(p.key, p.value) for p in model.metadata_props if not p.key.startswith(METADATA_PREFIX)]
    del model.metadata_props[:]
    for key, value in [*keep, *sorted(meta.items())]:
        if not isinstance(value, str):
            raise TypeError(f"metadata {key} must be a string, got {type(value).__name__}")
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def get_metadata(model: Any) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def contract(meta: dict[str, str]) -> dict[str, str]:
    """The manifest's ``contract``: the metadata shared by every file of the bundle, without the prefix."""
    return {
        k.removeprefix(METADATA_PREFIX): v
        for k, v in meta.items()
        if k.startswith(METADATA_PREFIX) and k.removeprefix(METADATA_PREFIX) not in PER_FILE_KEYS
    }
