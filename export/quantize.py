"""Static INT8 quantization of the conv core (QDQ format) and a per-layer error ranking.

Recipe (onnxruntime.quantization): ``quant_pre_process`` on the FP32 graph (ONNX shape inference and
onnxruntime's basic graph optimisation; symbolic shape inference is skipped, it is meant for transformers and
gives up on the pixel-unshuffle reshapes), then ``quantize_static`` with QDQ, per-channel symmetric INT8 weights
and asymmetric UINT8 activations (U8S8). Measured on the development CPU (2 threads, denoise-gray, 640×480):
FP32 83 ms; U8S8 with Conv+Relu+Add+DepthToSpace quantized 33 ms; S8S8 69–72 ms (onnxruntime fused only 10 of 14
convolutions into QLinearConv and left the rest in float); U8S8 with only Conv quantized 57 ms (a Q/DQ pair
around every Relu), Conv+Relu 47 ms (float Add and DepthToSpace islands); reduce_range made no difference.

What is quantized: only the conv core (the trained network's node scope) and there only ``QUANT_OP_TYPES``;
the uint8 I/O glue (Cast, Div, Transpose, Clip, Mul, Round) and the anomaly map and score stay float32. Two
tensors get exact quantization parameters instead of calibrated ones: the normalised frame (k/255, scale 1/255,
zero point 0) and the decoder's integer latents (scale 1, so every latent in [-128, 127] is exact). A Conv whose
output is rounded (the encoder's last layer, whose Round makes the latents) stays float: rounding a value already
on an 8-bit grid would move latents. So does a Conv whose output leaves the graph (the anomaly features): they
are what the device fits its statistics on, and that layer costs next to nothing.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CALIB_METHODS = ("minmax", "entropy", "percentile")
QUANT_OP_TYPES = ("Conv", "Relu", "Add", "DepthToSpace")
_SHAPE_OPS = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity", "DepthToSpace", "SpaceToDepth"})


@dataclass(frozen=True)
class Int8Settings:
    method: str = "minmax"
    activation: str = "u8"  # u8: QUInt8 activations (fast on x86 CPUs) | s8: QInt8
    per_channel: bool = True
    reduce_range: bool = False
    op_types: tuple[str, ...] = QUANT_OP_TYPES

    def __post_init__(self):
        if self.method not in CALIB_METHODS:
            raise ValueError(f"calibration method {self.method!r} not one of {', '.join(CALIB_METHODS)}")
        if self.activation not in ("u8", "s8"):
            raise ValueError(f"activation type {self.activation!r} not u8 or s8")


class FrameReader:
    """A CalibrationDataReader over uint8 frames (H, W, C) or latents, fed one at a time with a batch axis."""

    def __init__(self, input_name: str, frames: Sequence[np.ndarray]):
        self.input_name = input_name
        self.frames = list(frames)
        self._pos = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._pos >= len(self.frames):
            return None
        x = self.frames[self._pos]
        self._pos += 1
        return {self.input_name: np.ascontiguousarray(x[None])}

    def rewind(self) -> None:
        self._pos = 0

    def __iter__(self):
        return self

    def __next__(self):
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item

    def __len__(self) -> int:
        return len(self.frames)


@contextlib.contextmanager
def quiet():
    """onnxruntime.quantization logs and prints per tensor; keep the export's own output readable."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def preprocess(fp32: bytes, workdir: Path) -> Path:
    """``quant_pre_process`` of an FP32 graph; returns the path of the pre-processed copy."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src, dst = workdir / "fp32.onnx", workdir / "pre.onnx"
    src.write_bytes(fp32)
    with quiet():
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
    return dst


@dataclass
class QuantPlan:
    """What one graph's quantization must respect (found on the pre-processed FP32 graph)."""

    input_name: str
    glue: list[str]  # nodes outside the conv core: never quantized
    always_float: list[str]  # Convs whose output is rounded (latents) or is a graph output (features)
    convs: list[str]  # Conv nodes of the core, in graph order
    frame_tensors: list[str] = field(default_factory=list)  # hold k/255 exactly
    latent_tensors: list[str] = field(default_factory=list)  # hold integers exactly
    # Conv -> the Relu/DepthToSpace nodes right after it: kept float with it, or they would be 8-bit islands
    # between float ops (measured: quantized DepthToSpace between float convs cost 0.25 dB in the codec).
    followers: dict[str, list[str]] = field(default_factory=dict)

    def float_nodes(self, convs: Iterable[str]) -> list[str]:
        out = []
        for c in convs:
            out += [c, *self.followers.get(c, [])]
        return out

    def overrides(self, activation: str) -> dict:
        u8 = activation == "u8"
        qtype = np.uint8 if u8 else np.int8
        out = {}
        for t in self.frame_tensors:
            # k/255, k in 0..255: exact on UINT8 with zero point 0; on INT8 the symmetric grid halves the steps.
            if u8:
                out[t] = [{"scale": np.array(1 / 255, np.float32), "zero_point": np.array(0, qtype)}]
        for t in self.latent_tensors:
            out[t] = [{"scale": np.array(1.0, np.float32), "zero_point": np.array(128 if u8 else 0, qtype)}]
        return out


def make_plan(pre_path: Path, core_prefixes: tuple[str, ...]) -> QuantPlan:
    import onnx

    model = onnx.load(str(pre_path))
    graph = model.graph
    input_name = graph.input[0].name
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    inits = {i.name for i in graph.initializer}
    glue = [n.name for n in graph.node if not n.name.startswith(core_prefixes)]
    convs = [n for n in graph.node if n.op_type == "Conv" and n.name.startswith(core_prefixes)]
    outputs = {o.name for o in graph.output}
    always_float = [
        n.name
        for n in convs
        if n.output[0] in outputs or any(c.op_type == "Round" for c in consumers.get(n.output[0], []))
    ]

    def origin(tensor: str) -> str | None:
        """Follow value-preserving ops back from a Conv input: 'frame' for Cast(uint8 input)/255, 'latent' for
        Cast(int input); None otherwise."""
        for _ in range(16):
            node = producer.get(tensor)
            if node is None:
                return None
            if node.op_type in _SHAPE_OPS:
                tensor = node.input[0]
                continue
            if node.op_type == "Cast" and node.input[0] == input_name:
                return "latent" if input_name == "latent" else None
            if node.op_type == "Div" and node.input[1] in inits:
                div = onnx.numpy_helper.to_array(next(i for i in graph.initializer if i.name == node.input[1]))
                src = producer.get(node.input[0])
                if div.size == 1 and float(div) == 255.0 and src is not None and src.op_type == "Cast":
                    up = src.input[0]
                    up_node = producer.get(up)
                    if up == input_name or (up_node is not None and up_node.op_type in _SHAPE_OPS):
                        return "frame"
            return None
        return None

    frame_t, latent_t = [], []
    for n in convs:
        kind = origin(n.input[0])
        if kind == "frame":
            frame_t.append(n.input[0])
        elif kind == "latent":
            latent_t.append(n.input[0])
    followers = {}
    for n in convs:
        chain, t = [], n.output[0]
        while len(consumers.get(t, [])) == 1 and consumers[t][0].op_type in ("Relu", "DepthToSpace"):
            chain.append(consumers[t][0].name)
            t = consumers[t][0].output[0]
        followers[n.name] = chain
    return QuantPlan(input_name, glue, always_float, [n.name for n in convs], frame_t, latent_t, followers)


def quantize(
    pre_path: Path,
    out_path: Path,
    frames: Sequence[np.ndarray],
    plan: QuantPlan,
    settings: Int8Settings,
    keep_float: Iterable[str] = (),
):
    """Quantize the pre-processed graph at ``pre_path``; returns the INT8 ModelProto (also left at out_path)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from export.onnx_export import prune_opsets

    method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[settings.method]
    act = QuantType.QUInt8 if settings.activation == "u8" else QuantType.QInt8
    exclude = sorted(set(plan.glue) | set(plan.float_nodes([*plan.always_float, *keep_float])))
    with quiet():
        quantize_static(
            str(pre_path),
            str(out_path),
            FrameReader(plan.input_name, frames),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(settings.op_types),
            per_channel=settings.per_channel,
            reduce_range=settings.reduce_range,
            activation_type=act,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=exclude,
            calibrate_method=method,
            extra_options={"TensorQuantOverrides": plan.overrides(settings.activation)},
        )
    model = onnx.load(str(out_path))
    if separate_glue_normalisation(model, plan):
        onnx.save(model, str(out_path))
    prune_opsets(model)
    return model


def separate_glue_normalisation(model, plan: QuantPlan) -> int:
    """Give float glue that reads the quantized normalised frame its own float normalisation, in place; returns
    how many glue inputs were rewired.

    onnxruntime's quantizer quantizes a tensor for all its consumers. The normalised frame (k/255) feeds the
    first Conv, and in the anomaly graph also the SSIM branch (AveragePool, Mul), which then reads
    DequantizeLinear's output. onnxruntime computes the same numbers either way, because the frame's grid is
    exact. OpenVINO does not (onnxruntime-openvino and native OpenVINO alike). It takes uint8 → Cast → Div for
    a dequantization, moves it after the pooling and averages in u8 steps. The SSIM variances went negative, and
    the anomaly map came out at -3659..4951 instead of 0.02..0.28.

    It did so even when the glue read the float tensor directly, and when it had its own copy of the chain
    (OpenVINO merges identical subgraphs). So the copy casts uint8 → int32 → float. That is exact, not taken for
    a dequantization, and not merged. With it, OpenVINO's anomaly map was within 7e-5 of onnxruntime's.
    """
    import onnx

    graph = model.graph
    exact = set(plan.frame_tensors)
    glue = set(plan.glue)
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    graph_inputs = {i.name for i in graph.input}
    moved = 0
    for q in [n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] in exact]:
        readers = [
            (node, dq.output[0])
            for dq in consumers.get(q.output[0], [])
            if dq.op_type == "DequantizeLinear"
            for node in consumers.get(dq.output[0], [])
            if node.name in glue
        ]
        if not readers:
            continue
        chain, tensor = [], q.input[0]  # from the normalised frame back to the graph input
        while tensor not in graph_inputs:
            node = producer.get(tensor)
            if node is None:
                break
            chain.append(node)
            tensor = node.input[0]
        if tensor not in graph_inputs:
            continue
        copies, prev, insert_at = [], tensor, list(graph.node).index(chain[0]) + 1
        for node in reversed(chain):
            out = f"{node.output[0]}_glue"
            if node.op_type == "Cast":
                mid = f"{out}_int32"
                copies.append(onnx.helper.make_node("Cast", [prev], [mid], name=f"{node.name}_glue_int32",
                                                    to=onnx.TensorProto.INT32))  # fmt: skip
                to = next(a.i for a in node.attribute if a.name == "to")
                copies.append(onnx.helper.make_node("Cast", [mid], [out], name=f"{node.name}_glue", to=to))
            else:
                copy = onnx.NodeProto()
                copy.CopyFrom(node)
                copy.name = f"{node.name}_glue"
                copy.input[0] = prev
                del copy.output[:]
                copy.output.append(out)
                copies.append(copy)
            prev = out
        for node, dq_out in readers:
            for k, name in enumerate(node.input):
                if name == dq_out:
                    node.input[k] = prev
                    moved += 1
        for k, copy in enumerate(copies):
            graph.node.insert(insert_at + k, copy)
    return moved


def qdq_conv_counts(model) -> tuple[int, int]:
    """(Conv nodes, Conv nodes whose data input and weight both come from DequantizeLinear)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]

    def dq(t: str) -> bool:
        p = producer.get(t)
        return p is not None and p.op_type == "DequantizeLinear"

    return len(convs), sum(1 for n in convs if dq(n.input[0]) and dq(n.input[1]))


# --------------------------------------------------------------------------------------------------------------
# Layer ranking (onnxruntime.quantization.qdq_loss_debug)


@dataclass
class LayerError:
    name: str  # Conv node name
    weight_sqnr_db: float  # weight vs dequantized weight
    input_sqnr_db: float  # the input's Q/DQ pair when the input comes from a float op (inf otherwise)
    act_sqnr_db: float  # this layer's output activation before vs after its Q/DQ pair
    model_sqnr_db: float  # FP32 model's activation vs the INT8 model's, at this layer's output (accumulated)
    sqnr_db: float  # weight, input and output noise combined: the ranking key (lower is worse)


def _combine_db(*sqnrs: float) -> float:
    noise = sum(10 ** (-s / 10) for s in sqnrs if math.isfinite(s))
    return math.inf if noise == 0 else -10 * math.log10(noise)


def rank_layers(pre_path: Path, qdq_path: Path, input_name: str, frames: Sequence[np.ndarray], workdir: Path):
    """Rank the quantized Conv layers by error, worst first; returns ``list[LayerError]``."""
    import onnx
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_signal_to_quantization_noice_ratio,
        compute_weight_error,
        create_activation_matching,
        create_weight_matching,
        modify_model_output_intermediate_tensors,
    )

    aug_f, aug_q = workdir / "float_aug.onnx", workdir / "qdq_aug.onnx"
    with quiet():
        modify_model_output_intermediate_tensors(str(pre_path), str(aug_f))
        modify_model_output_intermediate_tensors(str(qdq_path), str(aug_q))
        float_acts = collect_activations(str(aug_f), FrameReader(input_name, frames))
        qdq_acts = collect_activations(str(aug_q), FrameReader(input_name, frames))
        matching = create_activation_matching(qdq_acts, float_acts)
        w_err = compute_weight_error(create_weight_matching(str(pre_path), str(qdq_path)))

    pre = onnx.load(str(pre_path))
    relu_after = {}  # conv output -> the Relu output that follows it in the float graph
    for n in pre.graph.node:
        if n.op_type == "Relu":
            relu_after[n.input[0]] = n.output[0]
    relu_outputs = set(relu_after.values())
    qdq = onnx.load(str(qdq_path))
    producer = {o: n for n in qdq.graph.node for o in n.output}
    out = []
    for node in qdq.graph.node:
        if node.op_type != "Conv":
            continue
        wq = producer.get(node.input[1])
        if wq is None or wq.op_type != "DequantizeLinear":
            continue  # kept float
        # The weight's float name: DequantizeLinear(<w>_quantized) in the QDQ graph.
        wname = wq.input[0][: -len("_quantized")] if wq.input[0].endswith("_quantized") else wq.input[0]
        ws = float(w_err.get(wname, math.inf))
        tensor = node.output[0]
        match = matching.get(tensor, {})
        pre_q, post_q = match.get("pre_qdq"), match.get("post_qdq")
        a = x = math.inf
        if pre_q is not None and post_q is not None:
            # A Relu after the conv is folded into the Q/DQ pair (zero point at the bottom of the range): compare
            # with the rectified value, as the float graph computes it.
            # When the quantizer drops the Relu, the Conv writes straight to the Relu's output name.
            relu = tensor in relu_after or tensor in relu_outputs
            ref_local = [np.maximum(t, 0) for t in pre_q] if relu else pre_q
            a = compute_signal_to_quantization_noice_ratio(ref_local, post_q)
            fl = float_acts.get(relu_after.get(tensor, tensor))
            if fl is not None:
                x = compute_signal_to_quantization_noice_ratio(fl, post_q)
        # The input's Q/DQ pair: where the input comes from a float op (GDN, a kept-float layer), no other layer
        # accounts for its rounding.
        i = math.inf
        dq_in = producer.get(node.input[0])
        if dq_in is not None and dq_in.op_type == "DequantizeLinear":
            q_in = producer.get(dq_in.input[0])
            src = q_in.input[0] if q_in is not None and q_in.op_type == "QuantizeLinear" else None
            src_node = producer.get(src) if src else None
            if src and (src_node is None or src_node.op_type not in ("Conv", "DequantizeLinear")):
                m_in = matching.get(src, {})
                if m_in.get("pre_qdq") is not None and m_in.get("post_qdq") is not None:
                    pre_in = m_in["pre_qdq"]
                    if src in relu_after or src in relu_outputs:
                        pre_in = [np.maximum(t, 0) for t in pre_in]
                    i = compute_signal_to_quantization_noice_ratio(pre_in, m_in["post_qdq"])
        out.append(LayerError(node.name, ws, float(i), float(a), float(x), _combine_db(ws, float(i), float(a))))
    out.sort(key=lambda r: r.sqnr_db)
    return out


def format_ranking(layers: list[LayerError], limit: int | None = None) -> str:
    rows = [["rank", "layer", "SQNR dB", "weight", "input", "output", "vs FP32 model"]]
    for k, r in enumerate(layers[:limit] if limit else layers, 1):
        rows.append([str(k), r.name, f"{r.sqnr_db:.1f}", f"{r.weight_sqnr_db:.1f}", f"{r.input_sqnr_db:.1f}",
                     f"{r.act_sqnr_db:.1f}", f"{r.model_sqnr_db:.1f}"])  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in rows)
