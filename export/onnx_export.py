"""PyTorch -> ONNX for the graphs of docs/bundle.md, their checks, and the FP16 conversion.

Each graph takes the frame as OpenCV delivers it (uint8 NHWC) and does its own pre- and post-processing; the
trained network sits inside under one module scope (``/net/...``, ``/g_a/...``, ``/g_s/...`` in the node
names the exporter writes). That scope is the *conv core*: FP16 and INT8 change only the core and leave the
uint8 I/O glue (Cast, Div, Transpose, Clip, Mul, Round) and the anomaly map and score in float32.

The legacy TorchScript exporter is used (``dynamo=False``): it gives clean symbolic dimensions here.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from edge_runtime.contract import DEFAULT_OPSET, EXPORT_MAX_OPSET, MIN_OPSET
from edge_runtime.errors import ModelRejectedError

ONNX_SIZE_LIMIT = 2**31 - 1  # protobuf's limit; edgeae never writes external data

_FRAME_AXES = {0: "N", 1: "H", 2: "W"}


@dataclass
class GraphSpec:
    """One graph to export: the wrapper module, an example input and the names of docs/bundle.md."""

    graph: str
    module: nn.Module
    example: torch.Tensor
    input_names: list[str]
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, str]]
    # Node-name prefixes of the trained network inside the wrapper: everything else is I/O glue.
    core_prefixes: tuple[str, ...] = ()
    macs_per_pixel: int = 0  # multiply-accumulates of the core per frame pixel (output pixel for the decoder)
    params: int = 0
    extra: dict = field(default_factory=dict)


def _core_prefixes(wrapper: nn.Module) -> tuple[str, ...]:
    return tuple(f"/{name}/" for name, _ in wrapper.named_children())


def graph_specs(model: nn.Module, cfg: dict) -> list[GraphSpec]:
    """The graphs of a trained model (``training.checkpoint.load_run``), with MACs and parameter counts."""
    from training.compress_model import DecoderGraph, EncoderGraph
    from training.denoise_model import DenoiseFrameGraph
    from training.inspect_model import anomaly_graph
    from training.layers import count_macs, count_params

    task, mcfg = cfg["task"], cfg["model"]
    c = int(mcfg["channels"])
    frame = torch.zeros(1, 64, 64, c, dtype=torch.uint8)
    probe = torch.zeros(1, c, 256, 256)
    specs: list[GraphSpec] = []
    if task == "denoise":
        wrapper = DenoiseFrameGraph(model)
        specs.append(GraphSpec("denoise", wrapper, frame, ["frame"], ["denoised"],
                               {"frame": _FRAME_AXES, "denoised": _FRAME_AXES}, _core_prefixes(wrapper),
                               count_macs(model, probe) // (256 * 256), count_params(model)))  # fmt: skip
    elif task == "anomaly":
        wrapper = anomaly_graph(model)
        axes = {"frame": _FRAME_AXES, "anomaly_map": _FRAME_AXES, "score": {0: "N"},
                "features": {0: "N", 2: "h", 3: "w"}}  # fmt: skip
        specs.append(GraphSpec("anomaly", wrapper, frame, ["frame"], ["anomaly_map", "score", "features"], axes,
                               _core_prefixes(wrapper), count_macs(model, probe) // (256 * 256),
                               count_params(model)))  # fmt: skip
    elif task == "compress":
        enc, dec = EncoderGraph(model), DecoderGraph(model)
        latent_axes = {0: "N", 2: "h", 3: "w"}
        m = int(mcfg["m"])
        specs.append(GraphSpec("encoder", enc, frame, ["frame"], ["latent"],
                               {"frame": _FRAME_AXES, "latent": latent_axes}, _core_prefixes(enc),
                               count_macs(model.g_a, probe) // (256 * 256), count_params(model.g_a)))  # fmt: skip
        specs.append(GraphSpec("decoder", dec, torch.zeros(1, m, 4, 4, dtype=torch.int32), ["latent"], ["frame"],
                               {"latent": latent_axes, "frame": _FRAME_AXES}, _core_prefixes(dec),
                               count_macs(model.g_s, torch.zeros(1, m, 16, 16)) // (256 * 256),
                               count_params(model.g_s)))  # fmt: skip
    else:
        raise ModelRejectedError(f"unknown task {task!r} in the run's config.json")
    return specs


@contextlib.contextmanager
def _quiet():
    """The legacy exporter warns about its own deprecation and about traced shape arithmetic; neither matters."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with contextlib.redirect_stdout(io.StringIO()):
            yield


def torch_to_onnx(
    module: nn.Module,
    example: torch.Tensor,
    input_names: list[str],
    output_names: list[str],
    dynamic_axes: dict,
    opset: int = DEFAULT_OPSET,
):
    """Export ``module`` and return the onnx ModelProto (no external data, constants folded).

    ``opset``: :data:`~edge_runtime.contract.MIN_OPSET` to :data:`~edge_runtime.contract.EXPORT_MAX_OPSET`, the
    range the TorchScript exporter supports (above it, it only warns, and that warning is silenced here).
    """
    import onnx

    if not MIN_OPSET <= opset <= EXPORT_MAX_OPSET:
        raise ModelRejectedError(f"opset {opset} outside {MIN_OPSET}..{EXPORT_MAX_OPSET}")
    module.eval()
    fd, tmp = tempfile.mkstemp(suffix=".onnx")
    os.close(fd)
    try:
        with _quiet(), torch.no_grad():
            torch.onnx.export(
                module,
                (example,),
                tmp,
                input_names=input_names,
                output_names=output_names,
                opset_version=opset,
                dynamo=False,
                dynamic_axes=dynamic_axes,
                do_constant_folding=True,
            )
        model = onnx.load(tmp, load_external_data=False)
    finally:
        Path(tmp).unlink(missing_ok=True)
    model.producer_name = "edgeae"
    return model


def export_graph(spec: GraphSpec, opset: int = DEFAULT_OPSET):
    """The FP32 ModelProto of one graph (constants folded, dead nodes removed; metadata not yet set)."""
    model = torch_to_onnx(spec.module, spec.example, spec.input_names, spec.output_names, spec.dynamic_axes, opset)
    return simplify(model)


# Ops never folded even when every input is constant (none appear in edgeae graphs; a guard for the future).
_NO_FOLD = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial"})
_FOLD_MAX_ELEMENTS = 1 << 24


def _static_dims(value_info) -> list[int | None] | None:
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]


def simplify(model):
    """Fold constant subgraphs into initializers and drop dead nodes, in place; returns ``model``.

    The exporter leaves parameter arithmetic in the graph (GDN's ``beta**2 + beta_min`` and ``gamma**2``
    reshaped by ``x.shape[1]``): folded here, every Conv weight is an initializer, which the INT8 quantizer
    needs and which FP16 stores at half precision once instead of recomputing per frame. ``Shape`` followed by
    ``Gather`` folds when the gathered dimensions are static (channels), never the dynamic N, H, W.
    """
    import numpy as np
    import onnx
    from onnx import numpy_helper
    from onnx.reference import ReferenceEvaluator

    graph = model.graph
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    dims = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        d = _static_dims(vi)
        if d is not None:
            dims[vi.name] = d
    const = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    partial_shapes: dict[str, list[int | None]] = {}
    kept = []
    for node in graph.node:
        ins = [i for i in node.input if i]
        if node.op_type == "Shape" and ins and ins[0] in dims and not node.attribute:
            d = dims[ins[0]]
            if all(v is not None for v in d):
                const[node.output[0]] = np.array(d, dtype=np.int64)
                continue
            partial_shapes[node.output[0]] = d
            kept.append(node)
            continue
        if node.op_type == "Gather" and len(ins) == 2 and ins[0] in partial_shapes and ins[1] in const:
            d = partial_shapes[ins[0]]
            idx = const[ins[1]]
            picked = [d[int(i)] for i in np.ravel(idx)]
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            if axis == 0 and all(v is not None for v in picked):
                const[node.output[0]] = np.array(picked, dtype=np.int64).reshape(idx.shape)
                continue
        if node.op_type not in _NO_FOLD and node.domain in ("", "ai.onnx") and all(i in const for i in ins):
            try:
                outs = ReferenceEvaluator(node).run(None, {i: const[i] for i in ins})
            except Exception:  # an op the reference evaluator lacks: leave it to onnxruntime
                outs = None
            if outs is not None and all(np.asarray(o).size <= _FOLD_MAX_ELEMENTS for o in outs):
                for name, value in zip(node.output, outs, strict=True):
                    const[name] = np.asarray(value)
                continue
        kept.append(node)

    # Drop nodes whose outputs nobody reads (the Shape/Gather chains that fed folded subgraphs).
    graph_outputs = {o.name for o in graph.output}
    while True:
        used = {i for n in kept for i in n.input} | graph_outputs
        alive = [n for n in kept if any(o in used for o in n.output)]
        if len(alive) == len(kept):
            break
        kept = alive
    used = {i for n in kept for i in n.input} | graph_outputs
    del graph.node[:]
    graph.node.extend(kept)
    old = {i.name: i for i in graph.initializer}
    del graph.initializer[:]
    for name in sorted(n for n in const if n in used):
        graph.initializer.append(old[name] if name in old else numpy_helper.from_array(const[name], name))
    inputs = {i.name for i in graph.input}
    keep_vi = [vi for vi in graph.value_info if vi.name in used or vi.name in graph_outputs]
    del graph.value_info[:]
    graph.value_info.extend(vi for vi in keep_vi if vi.name not in const or vi.name in inputs)
    prune_opsets(model)
    return model


def prune_opsets(model) -> None:
    """Keep only the opset imports the nodes use (onnxruntime's tools add a dozen custom domains edgeae refuses)."""
    used = {n.domain or "" for n in model.graph.node} | {""}
    keep = [(o.domain, o.version) for o in model.opset_import if (o.domain or "") in used]
    del model.opset_import[:]
    for domain, version in keep:
        entry = model.opset_import.add()
        entry.domain, entry.version = domain, version


def topo_sort(model) -> None:
    """Reorder the graph's nodes topologically, in place (the FP16 converter appends its Casts at the end)."""
    graph = model.graph
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        progressed = False
        rest = []
        for node in pending:
            if all(i in ready for i in node.input):
                ordered.append(node)
                ready.update(node.output)
                progressed = True
            else:
                rest.append(node)
        if not progressed:
            raise ModelRejectedError(f"graph has a cycle or a missing input at node {rest[0].name!r}")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def core_nodes(model, prefixes: tuple[str, ...]) -> list[str]:
    """Names of the nodes of the conv core (the trained network's scope)."""
    return [n.name for n in model.graph.node if n.name.startswith(prefixes)]


def glue_nodes(model, prefixes: tuple[str, ...]) -> list[str]:
    """Names of the nodes outside the conv core: uint8 I/O conversion, anomaly map and score."""
    return [n.name for n in model.graph.node if not n.name.startswith(prefixes)]


def check_model(model, where: str = "exported graph") -> None:
    """``onnx.checker`` with ``full_check`` and strict, type-checked shape inference; ModelRejectedError if not."""
    import onnx

    try:
        onnx.checker.check_model(model, full_check=True)
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelRejectedError(f"{where}: fails the ONNX checks: {first}") from exc


def model_bytes(model) -> bytes:
    """Serialize without external data; refuse anything protobuf cannot hold in one file."""
    for init in model.graph.initializer:
        if init.external_data or init.data_location == 1:
            raise ModelRejectedError(f"initializer {init.name} refers to external data")
    data = model.SerializeToString()
    if len(data) > ONNX_SIZE_LIMIT:
        raise ModelRejectedError(f"graph is {len(data)} bytes, over the 2 GB a single ONNX file can hold")
    return data


def write_model(model, path: str | Path) -> bytes:
    """Check, serialize and write ``model`` to ``path`` (fsync'd); returns the bytes written."""
    check_model(model, str(path))
    data = model_bytes(model)
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return data


def to_fp16(model, keep_float: list[str]):
    """FP16 copy of ``model``: the conv core in float16, the nodes named in ``keep_float`` (the I/O glue) and the
    graph inputs and outputs unchanged. onnxruntime's converter inserts the Casts at the boundaries."""
    import copy

    from onnxruntime.transformers.float16 import convert_float_to_float16

    with _quiet():
        out = convert_float_to_float16(
            copy.deepcopy(model), keep_io_types=True, node_block_list=list(keep_float), disable_shape_infer=False
        )
    drop_cast_round_trips(out)
    topo_sort(out)
    prune_opsets(out)
    return out


def drop_cast_round_trips(model) -> int:
    """Remove float32 -> float16 -> float32 Cast pairs, in place; returns how many were bypassed.

    The converter gives every tensor between two blocked (float32) nodes such a pair, which rounds the glue's
    intermediate values to float16: measured on the anomaly graph, the SSIM map (variances as E[x^2] - mu^2)
    came out up to 4.6 instead of at most 1. Reading the float32 tensor directly is exact and cheaper.
    """
    import onnx

    FLOAT, FLOAT16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    graph = model.graph
    inferred = onnx.shape_inference.infer_shapes(model)
    elem = {v.name: v.type.tensor_type.elem_type for v in [*inferred.graph.value_info, *inferred.graph.input]}
    elem.update({i.name: i.data_type for i in graph.initializer})

    def cast_to(node) -> int | None:
        return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None

    producer = {o: n for n in graph.node for o in n.output}
    outputs = {o.name for o in graph.output}
    rename: dict[str, str] = {}
    dropped = []
    identities = 0
    for node in graph.node:
        if cast_to(node) != FLOAT:
            continue
        up = producer.get(node.input[0])
        if up is None or cast_to(up) != FLOAT16 or elem.get(up.input[0]) != FLOAT:
            continue
        if node.output[0] in outputs:
            # A graph output keeps its name: the float32 Cast becomes an Identity of the float32 tensor.
            node.op_type = "Identity"
            node.input[0] = up.input[0]
            del node.attribute[:]
            identities += 1
            continue
        rename[node.output[0]] = up.input[0]
        dropped.append(node)
    if not dropped and not identities:
        return 0
    keep = [n for n in graph.node if all(n is not d for d in dropped)]
    for n in keep:
        for k, name in enumerate(n.input):
            if name in rename:
                n.input[k] = rename[name]
    # The float16 Casts whose only readers were the dropped ones go too.
    used = {i for n in keep for i in n.input} | outputs
    keep = [n for n in keep if any(o in used for o in n.output)]
    del graph.node[:]
    graph.node.extend(keep)
    return len(dropped) + identities
