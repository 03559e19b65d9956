"""Tiny edgeae graphs and bundles built with ``onnx.helper`` for edge_runtime tests.

Fixtures:

* ``make_model(graph="denoise", **kw) -> onnx.ModelProto`` — a graph honouring the I/O contract of
  docs/bundle.md, with ``metadata_props`` filled in (see :func:`build_model` for the keywords);
* ``make_bundle(graphs=("denoise",), **kw) -> Path`` — a bundle directory under ``tmp_path`` with
  ``manifest.json`` (see :func:`write_bundle`);
* ``rewrite_manifest(root, **changes)`` / ``refresh_manifest(root)`` helpers for tampering tests.

onnx is imported inside the builders, not at import time, so this conftest loads where only the edge
dependencies are installed (tests that build models then skip through ``pytest.importorskip``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bundle_files import add_file, write_manifest

TASK_OF_GRAPH = {"denoise": "denoise", "anomaly": "anomaly", "encoder": "compress", "decoder": "compress"}


def default_metadata(graph: str, channels: int, precision: str, input_multiple: int) -> dict[str, str]:
    """The ``metadata_props`` of docs/bundle.md for a graph (all values strings)."""
    meta = {
        "edgeae.schema_version": "1",
        "edgeae.task": TASK_OF_GRAPH[graph],
        "edgeae.graph": graph,
        "edgeae.channel_order": "BGR" if channels == 3 else "GRAY",
        "edgeae.channels": str(channels),
        "edgeae.input_multiple": str(input_multiple),
        "edgeae.max_side": "8192",
        "edgeae.precision": precision,
        "edgeae.quality": "",
        "edgeae.run_id": "test",
        "edgeae.model_config": json.dumps({"kind": "tiny-test"}),
    }
    if graph == "anomaly":
        meta.update(
            {"edgeae.anomaly.threshold": "3.0", "edgeae.anomaly.norm_mean": "0", "edgeae.anomaly.norm_std": "1"}
        )
    if graph in ("encoder", "decoder"):
        meta.update({"edgeae.latent.channels": str(channels), "edgeae.latent.stride": "1", "edgeae.quality": "2"})
    return meta


def build_model(
    graph: str = "denoise",
    *,
    channels: int | str = 3,
    precision: str = "fp32",
    input_multiple: int = 8,
    metadata: dict[str, str | None] | None = None,
    opset: int = 17,
    extra_opsets: dict[str, int] | None = None,
    gain: float = 1.0,
    input_dtype: str | None = None,
    input_name: str | None = None,
    ir_version: int = 10,
):
    """A tiny graph with the contract of ``graph``; ``metadata`` entries update the defaults (None deletes).

    * denoise: ``frame`` uint8 (N,H,W,C) → Cast → Mul(gain) → Cast → ``denoised`` uint8 (N,H,W,C)
      (gain 1.0: output equals input; uint8 Cast wraps, so keep gain*255 < 256 for exact tests);
    * anomaly: ``anomaly_map`` = mean over channels × gain (N,H,W), ``score`` = max of the map (N),
      ``features`` = the frame as float NCHW (N,C,H,W); gain NaN makes every float output NaN;
    * encoder: ``latent`` int32 (N,C,H,W) = the frame transposed (latent.stride 1);
    * decoder: ``latent`` int32 (N,C,h,w) → ``frame`` uint8 (N,h,w,C).

    ``channels`` may be a string to make the channel dimension dynamic; ``input_dtype`` and ``input_name``
    override the contract's input (uint8 ``frame``, or int32 ``latent`` for the decoder) to build wrong models.
    """
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    types = {"uint8": TensorProto.UINT8, "float32": TensorProto.FLOAT, "int32": TensorProto.INT32}
    c_dim = channels
    meta_channels = 3 if isinstance(channels, str) else channels
    gain_init = numpy_helper.from_array(np.array(gain, dtype=np.float32), "gain")
    nodes: list = []
    inits = [gain_init] if graph in ("denoise", "anomaly") else []
    vi = helper.make_tensor_value_info
    in_type = types[input_dtype or ("int32" if graph == "decoder" else "uint8")]
    if graph == "denoise":
        name = input_name or "frame"
        inputs = [vi(name, in_type, ["N", "H", "W", c_dim])]
        nodes += [
            helper.make_node("Cast", [name], ["f"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["f", "gain"], ["g"]),
            helper.make_node("Cast", ["g"], ["denoised"], to=TensorProto.UINT8),
        ]
        outputs = [vi("denoised", TensorProto.UINT8, ["N", "H", "W", c_dim])]
    elif graph == "anomaly":
        name = input_name or "frame"
        inputs = [vi(name, in_type, ["N", "H", "W", c_dim])]
        if opset >= 18:  # Reduce* take their axes as an input from opset 18 on
            inits += [
                numpy_helper.from_array(np.array([3], dtype=np.int64), "axis_c"),
                numpy_helper.from_array(np.array([1, 2], dtype=np.int64), "axes_hw"),
            ]
            reduce_mean = helper.make_node("ReduceMean", ["g", "axis_c"], ["anomaly_map"], keepdims=0)
            reduce_max = helper.make_node("ReduceMax", ["anomaly_map", "axes_hw"], ["score"], keepdims=0)
        else:
            reduce_mean = helper.make_node("ReduceMean", ["g"], ["anomaly_map"], axes=[3], keepdims=0)
            reduce_max = helper.make_node("ReduceMax", ["anomaly_map"], ["score"], axes=[1, 2], keepdims=0)
        nodes += [
            helper.make_node("Cast", [name], ["f"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["f", "gain"], ["g"]),
            reduce_mean,
            reduce_max,
            helper.make_node("Transpose", ["g"], ["features"], perm=[0, 3, 1, 2]),
        ]
        outputs = [
            vi("anomaly_map", TensorProto.FLOAT, ["N", "H", "W"]),
            vi("score", TensorProto.FLOAT, ["N"]),
            vi("features", TensorProto.FLOAT, ["N", c_dim, "H", "W"]),
        ]
    elif graph == "encoder":
        name = input_name or "frame"
        inputs = [vi(name, in_type, ["N", "H", "W", c_dim])]
        nodes += [
            helper.make_node("Transpose", [name], ["t"], perm=[0, 3, 1, 2]),
            helper.make_node("Cast", ["t"], ["latent"], to=TensorProto.INT32),
        ]
        outputs = [vi("latent", TensorProto.INT32, ["N", c_dim, "h", "w"])]
    elif graph == "decoder":
        name = input_name or "latent"
        inputs = [vi(name, in_type, ["N", c_dim, "h", "w"])]
        nodes += [
            helper.make_node("Transpose", [name], ["t"], perm=[0, 2, 3, 1]),
            helper.make_node("Cast", ["t"], ["frame"], to=TensorProto.UINT8),
        ]
        outputs = [vi("frame", TensorProto.UINT8, ["N", "h", "w", c_dim])]
    else:
        raise ValueError(graph)
    g = helper.make_graph(nodes, f"tiny_{graph}", inputs, outputs, inits)
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in (extra_opsets or {}).items()]
    model = helper.make_model(g, opset_imports=opsets, producer_name="edgeae-tests")
    model.ir_version = ir_version
    meta: dict[str, str | None] = dict(default_metadata(graph, meta_channels, precision, input_multiple))
    meta.update(metadata or {})
    helper.set_model_props(model, {k: v for k, v in meta.items() if v is not None})
    assert isinstance(model, onnx.ModelProto)
    return model


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def refresh_manifest(root: Path) -> dict:
    """Recompute ``sha256`` and ``bytes`` of every listed file (after a test edited one on purpose)."""
    manifest = json.loads((root / "manifest.json").read_text())
    for name, entry in manifest["files"].items():
        if (root / name).is_file():
            entry["sha256"] = sha256_file(root / name)
            entry["bytes"] = (root / name).stat().st_size
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def rewrite_manifest(root: Path, edit: Callable[[dict], Any] | None = None, **changes: Any) -> dict:
    """Apply ``changes`` (top-level keys) and ``edit(manifest)`` to a bundle's manifest.json, in place."""
    manifest = json.loads((root / "manifest.json").read_text())
    manifest.update(changes)
    if edit is not None:
        edit(manifest)
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def write_bundle(
    root: Path,
    graphs: Iterable[str] = ("denoise",),
    precisions: Iterable[str] = ("fp32",),
    *,
    task: str | None = None,
    models: dict[tuple[str, str], Any] | None = None,
    extra_files: dict[str, bytes] | None = None,
    calibration: dict | None = None,
    **model_kw: Any,
) -> Path:
    """Write ``GRAPH.PRECISION.onnx`` files and a manifest.json into ``root``; return ``root``.

    ``models`` maps (graph, precision) to a ready ModelProto (or raw bytes) instead of :func:`build_model`;
    ``model_kw`` go to :func:`build_model`; ``extra_files`` are listed without graph/precision.
    """
    root.mkdir(parents=True, exist_ok=True)
    graphs = list(graphs)
    files: dict[str, dict] = {}
    for graph in graphs:
        for precision in precisions:
            model = (models or {}).get((graph, precision))
            if model is None:
                model = build_model(graph, precision=precision, **model_kw)
            data = model if isinstance(model, bytes) else model.SerializeToString()
            name = f"{graph}.{precision}.onnx"
            files[name] = add_file(root, name, data, graph=graph, precision=precision)
    for name, data in (extra_files or {}).items():
        files[name] = add_file(root, name, data)
    first = build_model(graphs[0], **model_kw) if graphs else None
    contract = {p.key: p.value for p in first.metadata_props} if first is not None else {}
    task = task or TASK_OF_GRAPH[graphs[0]]
    return write_manifest(root, task, files, contract, calibration, name="tiny-test")


@pytest.fixture
def make_model() -> Callable[..., Any]:
    """Factory: ``make_model(graph="denoise", **kw) -> onnx.ModelProto`` (see :func:`build_model`)."""
    return build_model


@pytest.fixture
def make_bundle(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``make_bundle(graphs=("denoise",), precisions=("fp32",), name="bundle", **kw) -> Path``."""

    def factory(
        graphs: Iterable[str] = ("denoise",), precisions: Iterable[str] = ("fp32",), *, name: str = "bundle", **kw: Any
    ) -> Path:
        return write_bundle(tmp_path / name, graphs, precisions, **kw)

    return factory


@pytest.fixture(scope="session")
def tiny_model_bytes() -> bytes:
    """A serialized denoise graph (BGR, fp32), built once; session-scoped so hypothesis tests can use it."""
    return build_model().SerializeToString()


@pytest.fixture(name="refresh_manifest")
def refresh_manifest_fixture() -> Callable[[Path], dict]:
    """:func:`refresh_manifest` as a fixture, so test modules need not import this conftest."""
    return refresh_manifest


@pytest.fixture(name="rewrite_manifest")
def rewrite_manifest_fixture() -> Callable[..., dict]:
    """:func:`rewrite_manifest` as a fixture."""
    return rewrite_manifest


@pytest.fixture
def write_model(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``write_model(model_or_bytes, name="model.onnx") -> Path`` of a single file under tmp_path."""

    def factory(model: Any, name: str = "model.onnx") -> Path:
        path = tmp_path / name
        path.write_bytes(model if isinstance(model, bytes) else model.SerializeToString())
        return path

    return factory
