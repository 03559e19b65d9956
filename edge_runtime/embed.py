"""Latent embeddings: one vector per frame from a model's encoder, nearest neighbours, and a 2-D map.

A frame's embedding is the encoder output average-pooled over space: the ``encoder`` graph's integer
``latent`` for compression bundles, the ``features`` output for anomaly bundles. ``grid=G`` pools a coarse
G×G grid of cells instead (adaptive average pooling, as PyTorch's ``adaptive_avg_pool2d``: cell i covers
rows ``floor(i*h/G)`` to ``ceil((i+1)*h/G)``) and concatenates the cells row by row, each cell its C channel
means, so the vector has ``C*G*G`` values. Before pooling, the grid is cropped to the cells that cover the
frame itself: the runtime pads frames to ``input_multiple`` by reflection, and those cells would count
mirrored content twice.

Files written by ``edgeae embed`` (:mod:`edge_runtime.embed_index`) (both atomically, the index after the vectors):

* ``OUT.npy``: float32 ``(N, D)``, one row per frame in source order;
* ``OUT.index.jsonl``: a header line ``{"format": "edgeae-embeddings", "model_id": ..., "grid": ...,
  "normalize": ..., "rows": N, "dim": D, "sha256": ...}`` then one line per row: ``{"row", "index", "name"}``
  for images (``name`` relative to the folder) or ``{"row", "index", "time"}`` for video frames (seconds).
  ``sha256`` is that of the float32 little-endian rows, so a vector file and an index from different runs
  are refused rather than mixed up.

``model_id`` names the network, not one file: the first 16 hex digits of the SHA-256 of the graph's FP32
file (from the manifest, else the file's ``edgeae.parent_sha256``, else the file itself), so FP32, FP16 and
INT8 builds of one model share it and embed into the same space. Both files are deterministic: the same
model, input and options give byte-identical output.

numpy, OpenCV and onnxruntime only; the map is drawn with OpenCV (no matplotlib on the device).
"""

from __future__ import annotations

import math
import os
import re
from typing import Any

import numpy as np

from edge_runtime.embed_index import INDEX_FORMAT, INDEX_VERSION, MAX_GRID
from edge_runtime.errors import BadDataError, ModelRejectedError, UsageError
from edge_runtime.model import Bundle, bundle_of, open_graph
from edge_runtime.task import Outcome, check_frame

# graph -> the output embedded; task -> the graph that holds it
EMBED_OUTPUTS = {"encoder": "latent", "anomaly": "features"}
GRAPH_OF_TASK = {"compress": "encoder", "anomaly": "anomaly"}
MODEL_ID_HEX = 16
_HEX64 = re.compile(r"[0-9a-f]{64}")


def _check_grid(grid: Any) -> int:
    if isinstance(grid, bool) or not isinstance(grid, (int, np.integer)) or not 1 <= grid <= MAX_GRID:
        raise UsageError(f"grid must be an integer from 1 to {MAX_GRID}, got {grid!r}")
    return int(grid)


def _cell_edges(size: int, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """Start (floor) and end (ceil) of each of ``grid`` cells over ``size`` positions (adaptive pooling)."""
    i = np.arange(grid, dtype=np.int64)
    return (i * size) // grid, -((-(i + 1) * size) // grid)


def pool_latent(latent: np.ndarray, grid: int = 1) -> np.ndarray:
    """Average-pool a ``(C, h, w)`` latent (float or integer) to a float32 vector of ``C*grid*grid`` values.

    ``grid=1``: the C channel means. ``grid=G``: G×G cells (adaptive average pooling; cells overlap by a row or
    column where h or w is not a multiple of G, and repeat where they are smaller than G), concatenated row by
    row, each cell its C channel means. Sums are taken in float64. BadDataError for anything but a non-empty
    3-D numeric array of finite values; UsageError for a grid outside 1..32.
    """
    grid = _check_grid(grid)
    arr = np.asarray(latent)
    if arr.ndim != 3 or 0 in arr.shape or arr.dtype.kind not in "iuf":
        raise BadDataError(f"expected a non-empty (C, h, w) numeric latent, got {arr.dtype} {list(arr.shape)}")
    x = arr.astype(np.float64, copy=False)
    channels, height, width = x.shape
    if grid == 1:
        pooled = x.mean(axis=(1, 2))
    else:
        # Integral image: every cell sum is four lookups, whatever the cell size.
        integral = np.zeros((channels, height + 1, width + 1), np.float64)
        integral[:, 1:, 1:] = x.cumsum(axis=1).cumsum(axis=2)
        r0, r1 = _cell_edges(height, grid)
        c0, c1 = _cell_edges(width, grid)
        rows_hi, rows_lo = integral[:, r1], integral[:, r0]
        sums = rows_hi[:, :, c1] - rows_lo[:, :, c1] - rows_hi[:, :, c0] + rows_lo[:, :, c0]
        area = ((r1 - r0)[:, None] * (c1 - c0)[None, :]).astype(np.float64)
        pooled = (sums / area).transpose(1, 2, 0).reshape(-1)  # (G, G, C): cells row by row
    if not np.isfinite(pooled).all():
        raise BadDataError("the latent holds NaN or Inf values")
    return pooled.astype(np.float32)


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows (or one vector) scaled to unit L2 norm, in float32; all-zero rows stay zero."""
    v = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(v, axis=-1, keepdims=True)
    return np.where(norms > 0, v / np.where(norms > 0, norms, 1.0), 0.0).astype(np.float32)


def _sha_of_fp32(bundle: Bundle | None, graph_name: str, metadata: dict[str, str], own_sha: str) -> str:
    if bundle is not None and "fp32" in bundle.precisions(graph_name):
        sha = str(bundle.entry(graph_name, "fp32")["sha256"]).lower()
        if _HEX64.fullmatch(sha):
            return sha
    parent = metadata.get("edgeae.parent_sha256", "").strip().lower()
    if _HEX64.fullmatch(parent):
        return parent
    return own_sha.lower()


class Embedder:
    """A compression or anomaly model ready to embed frames: ``embed(frame) -> (D,) float32``.

    ``model``: a bundle directory, its manifest.json, a loaded :class:`~edge_runtime.model.Bundle`, or one
    ``encoder``/``anomaly`` .onnx file. Compression bundles run their ``encoder`` graph (output ``latent``),
    anomaly bundles their ``anomaly`` graph (output ``features``); other models are refused with
    ModelRejectedError (4). Attributes: ``model_id`` (16 hex digits, see the module docstring), ``graph``
    (the RuntimeGraph), ``output`` (the output embedded), ``grid``, ``normalize``, ``dim`` (after the first
    frame).
    """

    def __init__(
        self,
        model: str | os.PathLike | Bundle,
        precision: str = "fp32",
        device: str = "cpu",
        threads: int | None = None,
        allow_fallback: bool = False,
        *,
        grid: int = 1,
        normalize: bool = False,
    ):
        self.grid = _check_grid(grid)
        self.normalize = bool(normalize)
        bundle = bundle_of(model)
        kw = dict(device=device, threads=threads, allow_fallback=allow_fallback)
        if bundle is not None:
            graph_name = GRAPH_OF_TASK.get(bundle.task)
            if graph_name is None:
                raise ModelRejectedError(
                    f"{bundle.root}: a {bundle.task} bundle has no encoder; embed takes a compression or anomaly model"
                )
            self.graph = open_graph(bundle, graph_name, precision, **kw)
        else:
            self.graph = open_graph(model, None, precision, **kw)
            graph_name = self.graph.info.graph
            if graph_name not in EMBED_OUTPUTS:
                raise ModelRejectedError(
                    f"{model}: a {graph_name} graph; embed takes an encoder or anomaly graph (or their bundle)"
                )
        self.output = EMBED_OUTPUTS[graph_name]
        info = self.graph.info
        if self.output not in {o.name for o in info.outputs}:
            raise ModelRejectedError(f"{info.path}: the {graph_name} graph has no {self.output} output")
        self.model = str(bundle.root if bundle is not None else model)
        self.task = str(info.metadata.get("edgeae.task", bundle.task if bundle is not None else ""))
        self.precision = info.precision
        self.model_id = _sha_of_fp32(bundle, graph_name, info.metadata, info.sha256)[:MODEL_ID_HEX]
        self.dim: int | None = None

    def latent(self, frame: np.ndarray) -> np.ndarray:
        """The output embedded, ``(C, h, w)``, cropped to the cells covering the frame (not its padding)."""
        out_all = self.graph.run_frame(frame)  # checks the frame before anything else
        out = out_all[self.output]
        if out.ndim != 3 or 0 in out.shape:
            raise ModelRejectedError(f"{self.graph.info.path}: {self.output} has shape {list(out.shape)}")
        height, width = frame.shape[:2]
        padded_h, padded_w = out_all.padded
        grid_h, grid_w = out.shape[1:]
        keep_h = min(grid_h, max(1, math.ceil(height * grid_h / padded_h)))
        keep_w = min(grid_w, max(1, math.ceil(width * grid_w / padded_w)))
        return out[:, :keep_h, :keep_w]

    def embed(self, frame: np.ndarray) -> np.ndarray:
        """One frame as OpenCV delivers it (BGR, BGRA or gray uint8) -> its (D,) float32 embedding."""
        vec = pool_latent(self.latent(frame), self.grid)
        if self.normalize:
            vec = l2_normalize(vec)
        if self.dim is None:
            self.dim = int(vec.shape[0])
        return vec

    def header(self) -> dict[str, Any]:
        """What the index's header line records about the model and options (rows/dim/sha256 added later)."""
        return {
            "format": INDEX_FORMAT,
            "version": INDEX_VERSION,
            "model_id": self.model_id,
            "model": self.model,
            "task": self.task,
            "graph": self.graph.info.graph,
            "output": self.output,
            "precision": self.precision,
            "grid": self.grid,
            "normalize": self.normalize,
        }


class EmbedTask:
    """The frame loop's embed task: ``process(frame) -> Outcome(vector=(D,) float32)``."""

    kind = "embed"

    def __init__(self, embedder: Embedder, keep_frames: bool = False):
        self.embedder = embedder
        self.max_side = embedder.graph.info.max_side
        self.keep_frames = keep_frames  # hand the input frame on as the outcome's image (the map's thumbnails)

    def process(self, frame: Any) -> Outcome:
        image = check_frame(frame.image, self.max_side)
        return Outcome(vector=self.embedder.embed(image), image=image if self.keep_frames else None)

    def summary(self) -> dict[str, Any]:
        return {"model_id": self.embedder.model_id, "precision": self.embedder.precision,
                "dim": self.embedder.dim, "providers": list(self.embedder.graph.providers)}  # fmt: skip
