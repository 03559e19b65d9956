"""Model bundles for tests: ONNX bytes plus a manifest.json that edge_runtime accepts, and static QDQ INT8.

On the test path through ``pythonpath = ["tests"]`` (pyproject.toml): ``from bundle_files import write_bundle``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np


def add_file(root: Path, name: str, data: bytes, **fields: str) -> dict:
    """Write ``root/name`` and return its manifest entry: SHA-256, size and ``fields`` (graph, precision)."""
    (root / name).write_bytes(data)
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), **fields}


def write_manifest(
    root: Path, task: str, files: dict[str, dict], contract: dict, calibration: dict | None = None, name: str = ""
) -> Path:
    """manifest.json listing ``files`` (entries from :func:`add_file`); ``contract`` keys may carry the
    ``edgeae.`` metadata prefix (dropped). Returns ``root``."""
    manifest = {
        "format": "edgeae-bundle",
        "schema_version": 1,
        "task": task,
        "name": name or root.name,
        "files": files,
        "contract": {k.removeprefix("edgeae."): v for k, v in contract.items()},
        "calibration": calibration or {},
        "versions": {"edgeae": "0.1.0"},
        "command": "tests",
        "created": "2026-01-01T00:00:00Z",
    }
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return root


def write_bundle(
    root: Path,
    task: str,
    files: dict[tuple[str, str], bytes],
    contract: dict,
    extra: dict[str, bytes] | None = None,
    calibration: dict | None = None,
) -> Path:
    """``GRAPH.PRECISION.onnx`` for each (graph, precision) of ``files`` and any ``extra`` files, with their
    manifest. Returns ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    listed = {
        f"{g}.{p}.onnx": add_file(root, f"{g}.{p}.onnx", data, graph=g, precision=p) for (g, p), data in files.items()
    }
    listed.update({name: add_file(root, name, data) for name, data in (extra or {}).items()})
    return write_manifest(root, task, listed, contract, calibration)


def qdq_int8(fp32: bytes, input_name: str, feeds: Iterable[np.ndarray], tmp: Path, tag: str = "q") -> bytes:
    """Static QDQ INT8 (onnxruntime.quantization: U8 activations, per-channel S8 weights) of the Conv and
    ConvTranspose layers, calibrated on ``feeds``; the metadata kept, with ``edgeae.precision`` int8."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    it = iter(feeds)

    class Reader:
        def get_next(self):
            x = next(it, None)
            return None if x is None else {input_name: x}

    src, dst = tmp / f"{tag}_in.onnx", tmp / f"{tag}_q.onnx"
    src.write_bytes(fp32)
    quantize_static(
        str(src),
        str(dst),
        Reader(),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["Conv", "ConvTranspose"],
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
    )
    model = onnx.load(str(dst))
    props = {p.key: p.value for p in model.metadata_props}
    props["edgeae.precision"] = "int8"
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    return model.SerializeToString()
