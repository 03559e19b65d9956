"""Loading model bundles and ONNX files: every check runs before onnxruntime parses a byte.

Order of checks for one graph (docs/bundle.md, RELIABILITY.md cases 1-7):

1. the path exists, is a regular file, not a symlink, not empty, under :data:`MAX_MODEL_BYTES` (``os.stat``,
   before reading);
2. the bytes read match the manifest's SHA-256 (bundles only);
3. a small protobuf walker (:mod:`edge_runtime.onnx_proto`, no ``onnx`` package) checks the bytes are a
   ModelProto, refuses any external-data reference anywhere (initializers, sparse initializers, tensors in node
   attributes, subgraphs, functions), reads ``metadata_props`` and ``opset_import``, and refuses custom op
   domains and opsets outside :data:`~edge_runtime.contract.MIN_OPSET`..:data:`~edge_runtime.contract.MAX_OPSET`;
4. ``edgeae.schema_version`` must be ``"1"``, and every metadata number the runtime computes with must lie in
   its range (:data:`edge_runtime.contract.METADATA_RANGES`: ``input_multiple`` 1..256, ``max_side``
   1..16384, ...), checked here before anything is sized from it (RELIABILITY 32); a bundle's manifest
   ``contract`` and ``calibration`` blocks get the same checks in :func:`load_bundle`;
5. the session is created from the bytes already checked, so the file cannot change between check and use;
6. input and output names, element types and ranks are compared with the graph's contract.

Every failure is a :class:`~edge_runtime.errors.ModelRejectedError` (exit 4) with a one-line message.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

# The contract's names stay importable from here (edge_runtime.model.GRAPH_IO, ...), as callers used them.
from .contract import (
    ALLOWED_DOMAINS,
    BUNDLE_FORMAT,
    CALIBRATION_RANGES,
    GRAPH_IO,
    GRAPHS,
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    MAX_MODEL_BYTES,
    MAX_OPSET,
    METADATA_CHOICES,
    METADATA_PREFIX,
    METADATA_RANGES,
    MIN_OPSET,
    PRECISIONS,
    REQUIRED_METADATA,
    SCHEMA_VERSION,
    STATS_NAME,
    TASKS,
)
from .errors import ModelRejectedError, UsageError
from .onnx_proto import check_external, check_no_external_data, read_metadata, read_opsets, scan

if TYPE_CHECKING:
    from .session import RuntimeGraph

__all__ = [
    "ALLOWED_DOMAINS",
    "BUNDLE_FORMAT",
    "GRAPHS",
    "GRAPH_IO",
    "MANIFEST_NAME",
    "MAX_MANIFEST_BYTES",
    "MAX_MODEL_BYTES",
    "MAX_OPSET",
    "MIN_OPSET",
    "PRECISIONS",
    "REQUIRED_METADATA",
    "SCHEMA_VERSION",
    "TASKS",
    "Bundle",
    "GraphInfo",
    "IOSpec",
    "check_io",
    "check_metadata",
    "check_no_external_data",
    "check_opsets",
    "check_schema",
    "load_bundle",
    "open_graph",
    "read_metadata",
    "read_model_bytes",
    "read_opsets",
]

_ORT_TYPES = {
    "tensor(uint8)": np.dtype(np.uint8),
    "tensor(int8)": np.dtype(np.int8),
    "tensor(uint16)": np.dtype(np.uint16),
    "tensor(int16)": np.dtype(np.int16),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(float)": np.dtype(np.float32),
    "tensor(double)": np.dtype(np.float64),
    "tensor(bool)": np.dtype(np.bool_),
}


@dataclass(frozen=True)
class IOSpec:
    """One graph input or output as onnxruntime reports it.

    ``shape`` holds ints for fixed dimensions and strings (the symbolic name, or ``"?"``) for dynamic ones.
    ``dtype`` is ``np.dtype("O")`` for element types numpy has no equal for (bfloat16, strings).
    """

    name: str
    dtype: np.dtype
    shape: tuple

    def describe(self) -> str:
        """``uint8 [N,H,W,3]`` — the form used in expected-vs-actual messages."""
        return f"{self.dtype} [{','.join(str(d) for d in self.shape)}]"


@dataclass(frozen=True)
class GraphInfo:
    """What was checked about one loaded graph; ``metadata`` is the ONNX ``metadata_props`` (all strings)."""

    path: Path
    graph: str
    precision: str
    metadata: dict[str, str]
    inputs: list[IOSpec]
    outputs: list[IOSpec]
    sha256: str

    def meta_int(self, key: str, default: int) -> int:
        """An integer metadata value (validated when the graph was opened), or ``default`` when absent."""
        value = self.metadata.get(key, "")
        return int(value) if value != "" else default

    @property
    def channels(self) -> int:
        return self.meta_int("edgeae.channels", 3)

    @property
    def input_multiple(self) -> int:
        return self.meta_int("edgeae.input_multiple", 1)

    @property
    def max_side(self) -> int:
        return self.meta_int("edgeae.max_side", 8192)


@dataclass(frozen=True)
class Bundle:
    """A verified bundle directory: every file the manifest lists exists with the listed size and SHA-256."""

    root: Path
    manifest: dict
    task: str
    contract: dict
    calibration: dict
    # (graph, precision) -> file name; filled by load_bundle.
    _graphs: dict = field(default_factory=dict, repr=False, compare=False)

    def _where(self) -> str:
        return str(self.root)

    def precisions(self, graph: str) -> list[str]:
        """Precisions present for ``graph``, in the order fp32, fp16, int8."""
        present = {p for g, p in self._graphs if g == graph}
        return [p for p in PRECISIONS if p in present]

    def graphs(self) -> list[str]:
        """Graph names present in the bundle, in the order of :data:`GRAPHS`."""
        present = {g for g, _ in self._graphs}
        return [g for g in GRAPHS if g in present]

    def entry(self, graph: str, precision: str = "fp32") -> dict:
        """The manifest entry (``sha256``, ``bytes``, ``graph``, ``precision``) of one graph file."""
        name = self._graphs.get((graph, precision))
        if name is None:
            present = self.precisions(graph)
            if present:
                raise ModelRejectedError(
                    f"{self._where()}: no {graph} graph at precision {precision} (present: {', '.join(present)})"
                )
            raise ModelRejectedError(
                f"{self._where()}: no {graph} graph in this bundle (graphs: {', '.join(self.graphs()) or 'none'})"
            )
        return {"name": name, **self.manifest["files"][name]}

    def graph_path(self, graph: str, precision: str = "fp32") -> Path:
        """Path of ``GRAPH.PRECISION.onnx``; ModelRejectedError listing the precisions present when absent."""
        return self.root / self.entry(graph, precision)["name"]

    def file_path(self, name: str) -> Path:
        """Path of another listed file (``entropy.json``, ``anomaly_stats.npz``); ModelRejectedError if unlisted.

        The file was verified by :func:`load_bundle`; read it with :func:`read_verified` to re-check its hash.
        """
        if name not in self.manifest["files"]:
            raise ModelRejectedError(f"{self._where()}: {name} is not listed in {MANIFEST_NAME}")
        return self.root / name

    def read_verified(self, name: str, max_bytes: int | None = None) -> bytes:
        """The bytes of a listed file, re-checked against the manifest's SHA-256 as they are read."""
        path = self.file_path(name)
        return read_model_bytes(path, self.manifest["files"][name]["sha256"], max_bytes=max_bytes)


# --------------------------------------------------------------------------------------------------------------
# Files


def _lstat_regular(path: Path, what: str) -> os.stat_result:
    """``os.lstat`` the path and refuse anything but a regular file (cases 1 and 5: no dirs, FIFOs, symlinks)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise ModelRejectedError(f"{path}: {what} does not exist") from None
    except OSError as exc:
        raise ModelRejectedError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    if stat.S_ISLNK(st.st_mode):
        raise ModelRejectedError(f"{path}: {what} is a symlink; bundles hold plain files only")
    if stat.S_ISDIR(st.st_mode):
        raise ModelRejectedError(f"{path}: {what} is a directory, not a file")
    if not stat.S_ISREG(st.st_mode):
        # Opening a FIFO or a device could block or never end.
        raise ModelRejectedError(f"{path}: {what} is not a regular file")
    return st


def read_model_bytes(
    path: str | os.PathLike, expected_sha256: str | None, *, max_bytes: int | None = None, what: str = "model file"
) -> bytes:
    """Read a whole model file after checking it with ``os.stat``; verify its SHA-256 when one is expected.

    The size cap is checked before a byte is read (case 3) and again on the open descriptor, and the read stops
    at the size seen, so a file that grows in between cannot make this read more than the cap.
    """
    path = Path(path)
    cap = MAX_MODEL_BYTES if max_bytes is None else max_bytes
    st = _lstat_regular(path, what)
    if st.st_size == 0:
        raise ModelRejectedError(f"{path}: {what} is empty")
    if st.st_size > cap:
        raise ModelRejectedError(f"{path}: {what} is {st.st_size} bytes, over the {cap}-byte cap")
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise ModelRejectedError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    try:
        fst = os.fstat(fd)
        # The path may have been swapped between lstat and open.
        if not stat.S_ISREG(fst.st_mode) or (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
            raise ModelRejectedError(f"{path}: {what} changed while it was being opened")
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read(cap + 1)
    except OSError as exc:
        raise ModelRejectedError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    finally:
        os.close(fd)
    if len(data) > cap:
        raise ModelRejectedError(f"{path}: {what} grew past the {cap}-byte cap while being read")
    if not data:
        raise ModelRejectedError(f"{path}: {what} is empty")
    if expected_sha256 is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected_sha256.lower():
            raise ModelRejectedError(
                f"{path}: SHA-256 mismatch (manifest {expected_sha256[:12]}..., file {actual[:12]}...)"
            )
    return data


def _check_plain_name(name: Any, where: str) -> str:
    """A manifest file name must name a file directly inside the bundle (case 5)."""
    if not isinstance(name, str) or not name:
        raise ModelRejectedError(f"{where}: file name {name!r} is not a plain file name")
    bad = (
        "/" in name
        or "\\" in name
        or "\x00" in name
        or name in (".", "..")
        or name.startswith(".")  # hidden files and anything beginning with "..": nothing legitimate needs them
        or os.path.isabs(name)
        or (len(name) > 1 and name[1] == ":")  # a Windows drive letter
    )
    if bad:
        raise ModelRejectedError(f"{where}: file name {name!r} is not a plain file name inside the bundle")
    return name


def _json_no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            # json.loads keeps the last duplicate silently; a tampered manifest could hide an entry that way.
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse_manifest(data: bytes, where: str) -> dict:
    try:
        manifest = json.loads(
            data.decode("utf-8"), object_pairs_hook=_json_no_duplicates, parse_constant=_reject_constant
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ModelRejectedError(f"{where}: {MANIFEST_NAME} is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise ModelRejectedError(f"{where}: {MANIFEST_NAME} must hold a JSON object")
    return manifest


def _check_schema_version(value: Any, where: str) -> None:
    # bool is an int in Python; `true` is not a schema version.
    if isinstance(value, bool) or not isinstance(value, int) or value != SCHEMA_VERSION:
        raise ModelRejectedError(f"{where}: unknown schema version {value} (this edgeae knows {SCHEMA_VERSION})")


def load_bundle(path: str | os.PathLike, skip: frozenset[str] = frozenset(), *, hash_graphs: bool = True) -> Bundle:
    """Open and verify a bundle: a directory holding ``manifest.json``, or the ``manifest.json`` path itself.

    Every listed file is checked (plain name, regular file, size within the cap and equal to ``bytes``, SHA-256
    equal to ``sha256``) before anything is parsed. Raises ModelRejectedError (exit 4) on any failure. ``skip``:
    listed files the caller is about to replace (``edgeae calibrate``: the statistics), left unverified.
    ``hash_graphs=False``: graph files get every check but the SHA-256, because the caller opens the graphs it
    needs with :func:`open_graph`, which hashes the bytes it reads (so a run hashes each graph it uses once, and
    the check is on the very bytes onnxruntime gets).
    """
    path = Path(path)
    try:
        st = os.stat(path)  # follows symlinks: a `models/current -> models/v3` link to a bundle is fine
    except FileNotFoundError:
        raise ModelRejectedError(f"{path}: model path does not exist") from None
    except OSError as exc:
        raise ModelRejectedError(f"{path}: cannot read model path ({exc.strerror or exc})") from None
    if stat.S_ISDIR(st.st_mode):
        root = path
    elif path.name == MANIFEST_NAME:
        root = path.parent
    else:
        raise ModelRejectedError(f"{path}: not a bundle directory or {MANIFEST_NAME}")
    where = str(root)
    if not os.access(root, os.R_OK | os.X_OK):
        raise ModelRejectedError(f"{where}: bundle directory is not readable")
    manifest_path = root / MANIFEST_NAME
    if not os.path.lexists(manifest_path):
        raise ModelRejectedError(f"{where}: no {MANIFEST_NAME} (not an edgeae bundle)")
    raw = read_model_bytes(manifest_path, None, max_bytes=MAX_MANIFEST_BYTES, what=MANIFEST_NAME)
    manifest = _parse_manifest(raw, where)

    if manifest.get("format") != BUNDLE_FORMAT:
        raise ModelRejectedError(
            f"{where}: {MANIFEST_NAME} format is {manifest.get('format')!r}, expected {BUNDLE_FORMAT!r}"
        )
    _check_schema_version(manifest.get("schema_version"), where)
    task = manifest.get("task")
    if task not in TASKS:
        raise ModelRejectedError(f"{where}: unknown task {task!r} (expected one of {', '.join(TASKS)})")
    contract = manifest.get("contract", {})
    calibration = manifest.get("calibration", {})
    if not isinstance(contract, dict) or not isinstance(calibration, dict):
        raise ModelRejectedError(f"{where}: {MANIFEST_NAME} contract and calibration must be JSON objects")
    _check_calibration(calibration, where)
    check_metadata(contract, where, prefix=METADATA_PREFIX, what=f"{MANIFEST_NAME} contract")

    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise ModelRejectedError(f"{where}: {MANIFEST_NAME} lists no files")
    graphs: dict[tuple[str, str], str] = {}
    for name, entry in files.items():
        _check_plain_name(name, where)
        if name in skip:  # the caller replaces this file (calibrate: the statistics); it is not verified here
            continue
        if name == STATS_NAME and not os.path.lexists(root / name):
            raise ModelRejectedError(
                f"{root / name}: the anomaly statistics {MANIFEST_NAME} lists are missing; restore the file, or "
                f"recalibrate: edgeae calibrate {root} --source SOURCE --out NEW_BUNDLE"
            )
        graphs_key = _check_entry(root, name, entry, where, hash_graphs)
        if graphs_key is not None:
            if graphs_key in graphs:
                raise ModelRejectedError(
                    f"{where}: {name} and {graphs[graphs_key]} are both the {graphs_key[0]} graph at {graphs_key[1]}"
                )
            graphs[graphs_key] = name
    if not graphs:
        raise ModelRejectedError(f"{where}: {MANIFEST_NAME} lists no ONNX graph")
    return Bundle(root=root, manifest=manifest, task=task, contract=contract, calibration=calibration, _graphs=graphs)


def _check_entry(root: Path, name: str, entry: Any, where: str, hash_graphs: bool = True) -> tuple[str, str] | None:
    """Verify one listed file; return its (graph, precision) when it is a graph file."""
    if not isinstance(entry, dict):
        raise ModelRejectedError(f"{where}: manifest entry for {name} must be an object")
    sha = entry.get("sha256")
    size = entry.get("bytes")
    if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdefABCDEF" for c in sha):
        raise ModelRejectedError(f"{where}: manifest entry for {name} has no valid sha256")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ModelRejectedError(f"{where}: manifest entry for {name} has no valid byte count")
    path = root / name
    st = _lstat_regular(path, "bundle file")
    if st.st_size != size:
        raise ModelRejectedError(f"{path}: size is {st.st_size} bytes, the manifest says {size}")
    # Hash while reading, in chunks: entropy tables and statistics need not be held whole here.
    if hash_graphs or (entry.get("graph") is None and not name.endswith(".onnx")):
        _hash_file(path, st, sha)

    graph, precision = entry.get("graph"), entry.get("precision")
    if graph is None and precision is None:
        if name.endswith(".onnx"):
            raise ModelRejectedError(f"{where}: manifest entry for {name} does not say which graph it is")
        return None
    if graph not in GRAPHS:
        raise ModelRejectedError(f"{where}: {name}: unknown graph {graph!r} (expected one of {', '.join(GRAPHS)})")
    if precision not in PRECISIONS:
        raise ModelRejectedError(
            f"{where}: {name}: unknown precision {precision!r} (expected one of {', '.join(PRECISIONS)})"
        )
    return graph, precision


def _hash_file(path: Path, st: os.stat_result, expected: str) -> None:
    if st.st_size > MAX_MODEL_BYTES:
        raise ModelRejectedError(f"{path}: {st.st_size} bytes, over the {MAX_MODEL_BYTES}-byte cap")
    h = hashlib.sha256()
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
        with os.fdopen(fd, "rb") as fh:
            remaining = st.st_size + 1  # one byte more than expected shows a file that grew
            while remaining > 0:
                chunk = fh.read(min(1 << 20, remaining))
                if not chunk:
                    break
                h.update(chunk)
                remaining -= len(chunk)
    except OSError as exc:
        raise ModelRejectedError(f"{path}: cannot read bundle file ({exc.strerror or exc})") from None
    actual = h.hexdigest()
    if actual != expected.lower():
        raise ModelRejectedError(f"{path}: SHA-256 mismatch (manifest {expected[:12]}..., file {actual[:12]}...)")


# --------------------------------------------------------------------------------------------------------------
# What a graph declares: opsets and metadata (the walker that reads them is edge_runtime.onnx_proto)


def check_opsets(opsets: dict[str, int], where: str, node_domains: set[str] | frozenset[str] = frozenset()) -> None:
    """Refuse custom op domains and ai.onnx opsets outside [MIN_OPSET, MAX_OPSET] (case 7)."""
    for domain in sorted(set(opsets) | set(node_domains)):
        if domain not in ALLOWED_DOMAINS:
            raise ModelRejectedError(
                f"{where}: uses custom operator domain {domain!r}; edgeae runs standard ONNX operators only"
            )
    versions = {opsets[d] for d in ("", "ai.onnx") if d in opsets}
    if not versions:
        raise ModelRejectedError(f"{where}: imports no ai.onnx opset")
    for version in versions:
        if not MIN_OPSET <= version <= MAX_OPSET:
            raise ModelRejectedError(
                f"{where}: unsupported ai.onnx opset {version} (this edgeae supports {MIN_OPSET} to {MAX_OPSET})"
            )


def check_schema(metadata: dict[str, str], where: str) -> None:
    """``edgeae.schema_version`` must be ``"1"``, the keys of :data:`REQUIRED_METADATA` present and every value the
    runtime computes with within its range (:func:`check_metadata`)."""
    version = metadata.get("edgeae.schema_version")
    if version is None:
        raise ModelRejectedError(f"{where}: not an edgeae model (no edgeae.schema_version in its metadata)")
    if version.strip() != str(SCHEMA_VERSION):
        raise ModelRejectedError(f"{where}: unknown schema version {version} (this edgeae knows {SCHEMA_VERSION})")
    missing = [key for key in REQUIRED_METADATA if key not in metadata]
    if missing:
        raise ModelRejectedError(
            f"{where}: metadata lacks {', '.join(missing)} (truncated, or not made by edgeae export)"
        )
    check_metadata(metadata, where)


def check_metadata(
    values: dict[str, Any], where: str, *, prefix: str = "", what: str = "metadata"
) -> dict[str, int | float]:
    """Range-check the contract's numbers (:data:`~edge_runtime.contract.METADATA_RANGES`) and vocabularies.

    ``values``: ONNX metadata (strings, keys with the ``edgeae.`` prefix), or the manifest's ``contract`` block
    with ``prefix="edgeae."`` (keys without it; JSON numbers allowed). An empty string counts as absent. Returns
    the parsed numbers by full key. ModelRejectedError (4) naming the key, the value and the allowed range, e.g.
    ``metadata edgeae.input_multiple='60000' is out of range (allowed 1..256)`` (RELIABILITY 32).
    """
    numbers: dict[str, int | float] = {}
    for name, value in values.items():
        key = prefix + name
        if value == "":
            continue
        allowed = METADATA_RANGES.get(key)
        if allowed is not None:
            try:
                numbers[key] = allowed.parse(value)
            except ValueError as exc:
                raise ModelRejectedError(f"{where}: {what} {name}={value!r} {exc}") from None
        elif key in METADATA_CHOICES and value not in METADATA_CHOICES[key]:
            choices = ", ".join(METADATA_CHOICES[key])
            raise ModelRejectedError(f"{where}: {what} {name}={value!r} is not allowed (allowed {choices})")
    multiple, max_side = numbers.get("edgeae.input_multiple"), numbers.get("edgeae.max_side")
    if multiple is not None and max_side is not None and multiple > max_side:
        raise ModelRejectedError(f"{where}: {what} edgeae.input_multiple={multiple} is over edgeae.max_side={max_side}")
    return numbers


def _check_calibration(calibration: dict, where: str) -> None:
    """The manifest's calibration block overrides the anomaly metadata: finite numbers, in the same ranges."""
    for key, value in calibration.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ModelRejectedError(f"{where}: calibration value {key}={value!r} is not a finite number")
        allowed = CALIBRATION_RANGES.get(key)
        if allowed is not None:
            try:
                allowed.parse(value)
            except ValueError as exc:
                raise ModelRejectedError(f"{where}: {MANIFEST_NAME} calibration {key}={value!r} {exc}") from None


# --------------------------------------------------------------------------------------------------------------
# Opening a graph


def _io_specs(args: list) -> list[IOSpec]:
    specs = []
    for arg in args:
        shape = tuple(d if isinstance(d, int) else (d or "?") for d in (arg.shape or []))
        specs.append(IOSpec(name=arg.name, dtype=_ORT_TYPES.get(arg.type, np.dtype("O")), shape=shape))
    return specs


def check_io(info: GraphInfo, expected: dict | None = None) -> None:
    """Compare the graph's inputs and outputs with its contract (case 6): names, element types, ranks.

    ``expected`` defaults to :data:`GRAPH_IO` ``[info.graph]``: ``{"inputs": {name: (dtype, rank)}, "outputs": ...}``.
    A fixed channel dimension of a ``frame`` input must equal ``edgeae.channels``.
    """
    where = str(info.path)
    contract = expected if expected is not None else GRAPH_IO.get(info.graph)
    if contract is None:
        raise ModelRejectedError(f"{where}: unknown graph {info.graph!r}")
    for side, specs in (("inputs", info.inputs), ("outputs", info.outputs)):
        want = contract.get(side, {})
        got_names = [s.name for s in specs]
        if sorted(got_names) != sorted(want):
            raise ModelRejectedError(
                f"{where}: expected {side} [{', '.join(sorted(want))}], got [{', '.join(got_names)}]"
            )
        for spec in specs:
            dtype, rank = want[spec.name]
            if spec.dtype != np.dtype(dtype) or len(spec.shape) != rank:
                dims = ",".join(["?"] * rank)
                raise ModelRejectedError(
                    f"{where}: {side[:-1]} {spec.name}: expected {np.dtype(dtype)} [{dims}], got {spec.describe()}"
                )
    for spec in info.inputs:
        if spec.name == "frame" and len(spec.shape) == 4 and isinstance(spec.shape[3], int):
            if "edgeae.channels" in info.metadata and spec.shape[3] != info.channels:
                raise ModelRejectedError(
                    f"{where}: input frame has {spec.shape[3]} channels but edgeae.channels is {info.channels}"
                )


def _check_metadata_matches(metadata: dict[str, str], where: str, **want: str | None) -> None:
    for key, value in want.items():
        if value is None:
            continue
        got = metadata.get(f"edgeae.{key}")
        if got is not None and got != value:
            raise ModelRejectedError(f"{where}: metadata edgeae.{key} is {got!r}, expected {value!r}")


def bundle_of(model: str | os.PathLike | Bundle) -> Bundle | None:
    """``model`` as a loaded bundle: itself, the bundle of a folder or a ``manifest.json`` (loaded and verified
    here, once), or None for a single ``.onnx`` file."""
    if isinstance(model, Bundle):
        return model
    path = Path(model)
    if path.is_dir() or path.name == MANIFEST_NAME:
        return load_bundle(path, hash_graphs=False)  # the graph opened next is hashed as it is read
    return None


def _graph_bytes(
    path_or_bundle: str | os.PathLike | Bundle, graph: str | None, precision: str
) -> tuple[Bundle | None, str | None, Path, bytes]:
    """``(bundle or None, graph, path, bytes)`` of the graph file to open, read and hashed once (cases 1-4)."""
    bundle = bundle_of(path_or_bundle)
    if bundle is None:
        model_path = Path(path_or_bundle)  # type: ignore[arg-type]
        return None, graph, model_path, read_model_bytes(model_path, None)
    if graph is None:
        present = bundle.graphs()
        if len(present) != 1:
            raise UsageError(f"{bundle.root}: bundle holds graphs {', '.join(present)}; name one")
        graph = present[0]
    entry = bundle.entry(graph, precision)
    model_path = bundle.root / entry["name"]
    return bundle, graph, model_path, read_model_bytes(model_path, entry["sha256"])


def open_graph(
    path_or_bundle: str | os.PathLike | Bundle,
    graph: str | None = None,
    precision: str = "fp32",
    *,
    device: str = "cpu",
    allow_fallback: bool = False,
    threads: int | None = None,
    expected: dict | None = None,
    provider_options: dict | None = None,
) -> RuntimeGraph:
    """Check and open one graph of a bundle (directory or manifest path) or a single ``.onnx`` file.

    ``graph`` may be None when the bundle (or the file's ``edgeae.graph`` metadata) has only one graph.
    A single file gets every check except the manifest's SHA-256. The session is created from the bytes that
    were checked. ``device``: cpu, cuda, tensorrt, openvino, openvino-bf16, coreml, xnnpack (see
    :func:`edge_runtime.session.resolve_device`) or auto: the fastest provider and precision that reproduces
    the FP32 CPU reference, measured and cached (:mod:`edge_runtime.autodevice`; ``allow_fallback`` does not
    apply). ``precision`` ``"auto"``: chosen with the device under auto, fp32 under an explicit device.
    Raises ModelRejectedError (4) or UsageError (2).
    """
    from .session import RuntimeGraph, create_session

    if device == "auto":
        from .autodevice import open_auto

        return open_auto(path_or_bundle, graph, precision, threads=threads, expected=expected,
                         provider_options=provider_options)  # fmt: skip
    if precision == "auto":
        precision = "fp32"  # an explicit device runs the graph it ran before auto existed
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r} (expected one of {', '.join(PRECISIONS)})")
    bundle, graph, model_path, model_bytes = _graph_bytes(path_or_bundle, graph, precision)
    where = str(model_path)
    found = scan(model_bytes, where)
    check_external(found, where)
    check_opsets(found.opsets, where, found.node_domains)
    metadata = dict(found.metadata)
    check_schema(metadata, where)

    if bundle is None:
        file_graph = metadata.get("edgeae.graph")
        if graph is None:
            graph = file_graph
        if graph not in GRAPHS and expected is None:
            raise ModelRejectedError(f"{where}: metadata edgeae.graph is {file_graph!r}, not one of {GRAPHS}")
        precision = metadata.get("edgeae.precision", precision)
    _check_metadata_matches(
        metadata,
        where,
        graph=graph,
        precision=precision,
        task=bundle.task if bundle is not None else None,
    )
    assert graph is not None

    session = create_session(
        model_bytes,
        device,
        allow_fallback=allow_fallback,
        threads=threads,
        provider_options=provider_options,
        where=where,
    )
    info = GraphInfo(
        path=model_path,
        graph=graph,
        precision=precision,
        metadata=metadata,
        inputs=_io_specs(session.get_inputs()),
        outputs=_io_specs(session.get_outputs()),
        sha256=hashlib.sha256(model_bytes).hexdigest(),
    )
    check_io(info, expected)
    return RuntimeGraph(info, session, device=device)
