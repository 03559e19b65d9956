"""A protobuf walker for ONNX ModelProto bytes, without the ``onnx`` package (which the device does not have).

One pass over the serialized model finds what :mod:`edge_runtime.model` checks before onnxruntime parses a byte:
``metadata_props``, ``opset_import``, the operator domains of every node, and any tensor that refers to external
data, anywhere it can hide (initializers, sparse initializers, tensors in node attributes, subgraphs, training
graphs, functions). Bytes that are not a well-formed ModelProto are a :class:`ModelRejectedError` (exit 4).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from .errors import ModelRejectedError

# Protobuf wire format: just enough of ModelProto to check it.
# Field numbers are from onnx/onnx.proto3 (IR version 10/11).

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
# Nesting of graphs inside attributes inside graphs...; real models use a handful of levels, and protobuf
# (onnx, onnxruntime) refuses deeper messages anyway.
_MAX_DEPTH = 100  # protobuf's own default recursion limit

# ModelProto
_M_IR_VERSION, _M_GRAPH, _M_OPSET, _M_METADATA, _M_TRAINING, _M_FUNCTIONS = 1, 7, 8, 14, 20, 25
# GraphProto
_G_NODE, _G_INITIALIZER, _G_SPARSE_INITIALIZER = 1, 5, 15
# NodeProto
_N_ATTRIBUTE, _N_DOMAIN = 5, 7
# AttributeProto
_A_T, _A_G, _A_TENSORS, _A_GRAPHS, _A_SPARSE_TENSOR, _A_SPARSE_TENSORS = 5, 6, 10, 11, 22, 23
# TensorProto
_T_NAME, _T_EXTERNAL_DATA, _T_DATA_LOCATION = 8, 13, 14
_DATA_LOCATION_EXTERNAL = 1
# SparseTensorProto
_S_VALUES, _S_INDICES = 1, 2
# TrainingInfoProto
_TI_INITIALIZATION, _TI_ALGORITHM = 1, 2
# FunctionProto
_F_NODE = 7
# StringStringEntryProto / OperatorSetIdProto
_KV_KEY, _KV_VALUE = 1, 2
_OP_DOMAIN, _OP_VERSION = 1, 2


class _Corrupt(Exception):
    """Raised inside the walker; turned into one ModelRejectedError at the boundary."""


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    end = len(buf)
    while True:
        if pos >= end:
            raise _Corrupt("varint runs past the end")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise _Corrupt("varint longer than 10 bytes")


def _fields(buf: memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """Yield (field number, wire type, value) of one message; LEN values are zero-copy views."""
    pos = 0
    end = len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _Corrupt("field number 0")
        if wire == _VARINT:
            value, pos = _varint(buf, pos)
            yield number, wire, value
        elif wire == _LEN:
            length, pos = _varint(buf, pos)
            if length > end - pos:
                raise _Corrupt("length runs past the end")
            yield number, wire, buf[pos : pos + length]
            pos += length
        elif wire == _I64:
            if pos + 8 > end:
                raise _Corrupt("fixed64 runs past the end")
            yield number, wire, int.from_bytes(buf[pos : pos + 8], "little")
            pos += 8
        elif wire == _I32:
            if pos + 4 > end:
                raise _Corrupt("fixed32 runs past the end")
            yield number, wire, int.from_bytes(buf[pos : pos + 4], "little")
            pos += 4
        else:
            # Groups (3, 4) are not used by onnx.proto; 6 and 7 do not exist.
            raise _Corrupt(f"wire type {wire}")


def _expect_len(wire: int, value: int | memoryview, what: str) -> memoryview:
    if wire != _LEN:
        raise _Corrupt(f"{what} is not length-delimited")
    assert isinstance(value, memoryview)
    return value


def _text(value: memoryview, what: str) -> str:
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        raise _Corrupt(f"{what} is not UTF-8") from None


@dataclass
class ModelScan:
    """What one walk over a ModelProto found."""

    metadata: dict[str, str] = field(default_factory=dict)
    opsets: dict[str, int] = field(default_factory=dict)
    node_domains: set[str] = field(default_factory=set)
    external: list[str] = field(default_factory=list)  # names of tensors that reference external data
    has_graph: bool = False
    ir_version: int | None = None


def scan(model_bytes: bytes, where: str) -> ModelScan:
    """Walk a serialized ModelProto once; ModelRejectedError for anything that is not a well-formed one."""
    if not model_bytes:
        raise ModelRejectedError(f"{where}: not an ONNX model (empty)")
    try:
        return _scan_model(memoryview(model_bytes))
    except _Corrupt as exc:
        raise ModelRejectedError(f"{where}: not an ONNX model (truncated or corrupt protobuf: {exc})") from None


def _scan_model(buf: memoryview) -> ModelScan:
    found = ModelScan()
    # An explicit stack instead of recursion: a hostile file cannot exhaust Python's recursion limit.
    stack: list[tuple[str, memoryview, int]] = []
    for number, wire, value in _fields(buf):
        if number == _M_IR_VERSION:
            if wire != _VARINT:
                raise _Corrupt("ir_version is not a varint")
            found.ir_version = int(value)
        elif number == _M_GRAPH:
            found.has_graph = True
            stack.append(("graph", _expect_len(wire, value, "graph"), 0))
        elif number == _M_OPSET:
            domain, version = _opset(_expect_len(wire, value, "opset_import"))
            if domain in found.opsets:
                raise _Corrupt(f"opset_import lists domain {domain!r} twice")
            found.opsets[domain] = version
        elif number == _M_METADATA:
            key, val = _key_value(_expect_len(wire, value, "metadata_props"))
            found.metadata[key] = val
        elif number == _M_TRAINING:
            stack.append(("training", _expect_len(wire, value, "training_info"), 0))
        elif number == _M_FUNCTIONS:
            stack.append(("function", _expect_len(wire, value, "functions"), 0))
    while stack:
        kind, msg, depth = stack.pop()
        if depth > _MAX_DEPTH:
            raise _Corrupt("subgraphs nested too deeply")
        _walk(kind, msg, depth, stack, found)
    if not found.has_graph or found.ir_version is None:
        raise _Corrupt("no graph or no IR version")
    return found


def _walk(kind: str, msg: memoryview, depth: int, stack: list, found: ModelScan) -> None:
    """Check one message of the given kind, pushing the messages it contains that can hold tensors."""
    if kind == "tensor":
        _check_tensor(msg, found)
        return
    for number, wire, value in _fields(msg):
        if kind == "graph":
            if number == _G_NODE:
                stack.append(("node", _expect_len(wire, value, "node"), depth + 1))
            elif number == _G_INITIALIZER:
                stack.append(("tensor", _expect_len(wire, value, "initializer"), depth + 1))
            elif number == _G_SPARSE_INITIALIZER:
                stack.append(("sparse", _expect_len(wire, value, "sparse_initializer"), depth + 1))
        elif kind == "node":
            if number == _N_ATTRIBUTE:
                stack.append(("attribute", _expect_len(wire, value, "attribute"), depth + 1))
            elif number == _N_DOMAIN:
                found.node_domains.add(_text(_expect_len(wire, value, "node domain"), "node domain"))
        elif kind == "attribute":
            if number in (_A_T, _A_TENSORS):
                stack.append(("tensor", _expect_len(wire, value, "attribute tensor"), depth + 1))
            elif number in (_A_G, _A_GRAPHS):
                stack.append(("graph", _expect_len(wire, value, "attribute graph"), depth + 1))
            elif number in (_A_SPARSE_TENSOR, _A_SPARSE_TENSORS):
                stack.append(("sparse", _expect_len(wire, value, "attribute sparse tensor"), depth + 1))
        elif kind == "sparse":
            if number in (_S_VALUES, _S_INDICES):
                stack.append(("tensor", _expect_len(wire, value, "sparse tensor part"), depth + 1))
        elif kind == "training":
            if number in (_TI_INITIALIZATION, _TI_ALGORITHM):
                stack.append(("graph", _expect_len(wire, value, "training graph"), depth + 1))
        elif kind == "function":
            if number == _F_NODE:
                stack.append(("node", _expect_len(wire, value, "function node"), depth + 1))


def _check_tensor(msg: memoryview, found: ModelScan) -> None:
    """A TensorProto refers to external data if it has any external_data entry or data_location EXTERNAL."""
    name = "?"
    external = False
    for number, wire, value in _fields(msg):
        if number == _T_EXTERNAL_DATA:
            external = True
        elif number == _T_DATA_LOCATION and wire == _VARINT and value == _DATA_LOCATION_EXTERNAL:
            external = True
        elif number == _T_NAME and wire == _LEN:
            assert isinstance(value, memoryview)
            name = bytes(value).decode("utf-8", "replace")
    if external:
        found.external.append(name)


def _key_value(msg: memoryview) -> tuple[str, str]:
    key = val = ""
    for number, wire, value in _fields(msg):
        if number == _KV_KEY:
            key = _text(_expect_len(wire, value, "metadata key"), "metadata key")
        elif number == _KV_VALUE:
            val = _text(_expect_len(wire, value, "metadata value"), "metadata value")
    return key, val


def _opset(msg: memoryview) -> tuple[str, int]:
    domain = ""
    version = 0
    for number, wire, value in _fields(msg):
        if number == _OP_DOMAIN:
            domain = _text(_expect_len(wire, value, "opset domain"), "opset domain")
        elif number == _OP_VERSION:
            if wire != _VARINT:
                raise _Corrupt("opset version is not a varint")
            assert isinstance(value, int)
            version = value
    return domain, version


def check_no_external_data(model_bytes: bytes, where: str) -> None:
    """Refuse any tensor whose data lives outside the model bytes (case 5); the target is never opened.

    ``model_bytes``: a serialized ModelProto. ModelRejectedError also for bytes that are not one.
    """
    check_external(scan(model_bytes, where), where)


def check_external(found: ModelScan, where: str) -> None:
    """Refuse a model whose scan found tensors with external data (case 5)."""
    if found.external:
        names = ", ".join(found.external[:3]) + (" ..." if len(found.external) > 3 else "")
        raise ModelRejectedError(
            f"{where}: refers to external data for tensor(s) {names}; edgeae loads self-contained models only"
        )


def read_metadata(model_bytes: bytes, where: str = "model") -> dict[str, str]:
    """The ModelProto's ``metadata_props`` as a dict of strings, read without the onnx package."""
    return dict(scan(model_bytes, where).metadata)


def read_opsets(model_bytes: bytes, where: str = "model") -> dict[str, int]:
    """The ModelProto's ``opset_import`` as ``{domain: version}`` (``""`` is the default ai.onnx domain)."""
    return dict(scan(model_bytes, where).opsets)
