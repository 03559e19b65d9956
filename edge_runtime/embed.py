"""Latent embeddings: one vector per frame from a model's encoder, nearest neighbours, and a 2-D map.

A frame's embedding is the encoder output average-pooled over space: the ``encoder`` graph's integer
``latent`` for compression bundles, the ``features`` output for anomaly bundles. ``grid=G`` pools a coarse
G×G grid of cells instead (adaptive average pooling, as PyTorch's ``adaptive_avg_pool2d``: cell i covers
rows ``floor(i*h/G)`` to ``ceil((i+1)*h/G)``) and concatenates the cells row by row, each cell its C channel
means, so the vector has ``C*G*G`` values. Before pooling, the grid is cropped to the cells that cover the
frame itself: the runtime pads frames to ``input_multiple`` by reflection, and those cells would count
mirrored content twice.

Files written by :func:`embed_source` (both atomically, the index after the vectors):

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

import hashlib
import json
import math
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
import cv2
import numpy as np

from edge_runtime.cli import runtime_options
from edge_runtime.errors import BadDataError, ModelRejectedError, UsageError
from edge_runtime.io import atomic_path, atomic_write_bytes, atomic_write_text
from edge_runtime.model import MANIFEST_NAME, Bundle, load_bundle, open_graph
from edge_runtime.sources import IMAGE_EXTENSIONS, open_source

INDEX_FORMAT = "edgeae-embeddings"
INDEX_VERSION = 1
# graph -> the output embedded; task -> the graph that holds it
EMBED_OUTPUTS = {"encoder": "latent", "anomaly": "features"}
GRAPH_OF_TASK = {"compress": "encoder", "anomaly": "anomaly"}
MAX_GRID = 32
MODEL_ID_HEX = 16
# Thumbnails kept for the map: beyond this, every other one is dropped (deterministic, evenly spread).
DEFAULT_THUMBNAILS = 200
THUMB_SIDE = 48
PLOT_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp"})
# The index holds one short JSON line per row; anything far beyond that is not an index.
MAX_INDEX_LINE = 64 * 1024
_HEX64 = re.compile(r"[0-9a-f]{64}")


# --------------------------------------------------------------------------------------------------------------
# Pure functions


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


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise UsageError(f"k must be an integer >= 1, got {k!r}")
    return int(k)


def _check_matrix(matrix: Any, where: str = "embeddings") -> np.ndarray:
    m = np.asarray(matrix)
    if m.ndim != 2 or 0 in m.shape or m.dtype.kind != "f":
        raise BadDataError(f"{where}: expected a non-empty 2-D float array, got {m.dtype} {list(m.shape)}")
    return m


def cosine_knn(matrix: np.ndarray, query_vec: np.ndarray, k: int, *, exclude: int | None = None) -> list:
    """The ``k`` rows of ``matrix`` (N, D) most similar to ``query_vec`` (D,) by cosine similarity.

    Returns ``[(row, similarity), ...]``, most similar first; equal similarities in row order. A row or query
    of norm zero has similarity 0 to everything. ``exclude``: a row left out (the query row itself). Fewer
    than ``k`` results when the matrix has fewer rows. UsageError for k < 1; BadDataError when the query's
    length is not D.
    """
    k = _check_k(k)
    m = _check_matrix(matrix)
    q = np.asarray(query_vec, dtype=np.float64).reshape(-1)
    if q.shape[0] != m.shape[1]:
        raise BadDataError(f"query vector has {q.shape[0]} values, the embeddings {m.shape[1]}")
    qn = float(np.linalg.norm(q))
    sims = np.zeros(m.shape[0], np.float64)
    if qn > 0:
        step = 65536  # float64 copies of a bounded number of rows at a time
        for start in range(0, m.shape[0], step):
            block = m[start : start + step].astype(np.float64)
            norms = np.linalg.norm(block, axis=1)
            dots = block @ (q / qn)
            sims[start : start + step] = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), 0.0)
    rows = np.arange(m.shape[0])
    order = np.lexsort((rows, -sims))
    if exclude is not None:
        order = order[order != exclude]
    return [(int(r), float(sims[r])) for r in order[:k]]


def _pca(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 2) coordinates on the first two principal axes and the fraction of variance each explains."""
    x = _check_matrix(matrix).astype(np.float64)
    x = x - x.mean(axis=0)
    points = np.zeros((x.shape[0], 2), np.float64)
    ratio = np.zeros(2, np.float64)
    total = float((x * x).sum())
    if x.shape[0] < 2 or total <= 0:
        return points, ratio
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    n = min(2, s.shape[0])
    # SVD's signs are arbitrary: make each axis's largest loading positive, so runs give the same picture.
    signs = np.sign(vt[np.arange(n), np.abs(vt[:n]).argmax(axis=1)])
    signs[signs == 0] = 1.0
    points[:, :n] = (x @ vt[:n].T) * signs
    ratio[:n] = s[:n] ** 2 / total
    return points, ratio


def pca_2d(matrix: np.ndarray) -> np.ndarray:
    """Project the rows of ``matrix`` (N, D) onto their first two principal axes (numpy SVD): (N, 2) float64.

    Centred, not scaled; each axis oriented so its largest loading is positive (deterministic). Axes beyond
    the data's rank (one row, D = 1, all rows equal) are zero.
    """
    return _pca(matrix)[0]


def _order_colors(n: int) -> np.ndarray:
    """(n, 3) BGR colours from the first row to the last (OpenCV's viridis)."""
    ramp = np.linspace(0, 255, max(n, 1)).round().astype(np.uint8).reshape(-1, 1)
    return cv2.applyColorMap(ramp, cv2.COLORMAP_VIRIDIS).reshape(-1, 3)[:n]


def _thumb(image: np.ndarray, side: int = THUMB_SIDE) -> np.ndarray:
    """A BGR thumbnail whose longer side is ``side`` pixels."""
    img = image
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    elif img.shape[2] == 1:
        img = cv2.cvtColor(img[:, :, 0], cv2.COLOR_GRAY2BGR)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    h, w = img.shape[:2]
    scale = side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


def _check_plot_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.suffix.lower() not in PLOT_EXTENSIONS:
        raise UsageError(f"{path}: the map is an image; use one of {', '.join(sorted(PLOT_EXTENSIONS))}")
    return path


def plot_map(
    points: np.ndarray,
    thumbnails: Sequence[np.ndarray | None] | None,
    path: str | os.PathLike,
    *,
    size: int = 1024,
    title: str = "",
    axis_labels: tuple[str, str] = ("PC1", "PC2"),
) -> Path:
    """Draw 2-D ``points`` (N, 2) with thumbnails onto a white ``size``×``size`` canvas; write it atomically.

    Every point is a dot coloured by its row (viridis: dark purple first, yellow last), so time order shows in
    a video's map. ``thumbnails[i]`` (an image, or None) is drawn centred on point i with a border of that
    colour, in row order. The image type follows ``path``'s extension (.png, .jpg, .bmp, .webp).
    """
    path = _check_plot_path(path)
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2 or pts.shape[0] == 0 or not np.isfinite(pts).all():
        raise BadDataError(f"expected (N, 2) finite points, got {list(pts.shape)}")
    if thumbnails is not None and len(thumbnails) != len(pts):
        raise UsageError(f"{len(thumbnails)} thumbnails for {len(pts)} points")
    size = max(256, int(size))
    margin_l, margin_r, margin_t, margin_b = 60, 40, 50, 70
    canvas = np.full((size, size, 3), 255, np.uint8)
    x0, x1, y0, y1 = margin_l, size - margin_r, margin_t, size - margin_b
    pad = THUMB_SIDE // 2 + 2
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    u = np.where(hi - lo > 0, (pts - lo) / span, 0.5)
    px = np.round(x0 + pad + u[:, 0] * (x1 - x0 - 2 * pad)).astype(int)
    py = np.round(y1 - pad - u[:, 1] * (y1 - y0 - 2 * pad)).astype(int)  # y up
    cv2.rectangle(canvas, (x0, y0), (x1, y1), (200, 200, 200), 1)
    colors = _order_colors(len(pts))
    for i in range(len(pts)):
        cv2.circle(canvas, (int(px[i]), int(py[i])), 3, tuple(int(c) for c in colors[i]), -1, cv2.LINE_AA)
    for i, thumb in enumerate(thumbnails or ()):
        if thumb is None:
            continue
        t = _thumb(thumb)
        th, tw = t.shape[:2]
        top = min(max(int(py[i]) - th // 2, 0), size - th)
        left = min(max(int(px[i]) - tw // 2, 0), size - tw)
        canvas[top : top + th, left : left + tw] = t
        cv2.rectangle(canvas, (left - 1, top - 1), (left + tw, top + th), tuple(int(c) for c in colors[i]), 1)
    font, black = cv2.FONT_HERSHEY_SIMPLEX, (40, 40, 40)
    if title:
        cv2.putText(canvas, title[:90], (x0, 32), font, 0.55, black, 1, cv2.LINE_AA)
    cv2.putText(canvas, axis_labels[0], ((x0 + x1) // 2 - 40, y1 + 28), font, 0.5, black, 1, cv2.LINE_AA)
    label = np.full((24, 200, 3), 255, np.uint8)
    cv2.putText(label, axis_labels[1], (4, 17), font, 0.5, black, 1, cv2.LINE_AA)
    label = cv2.rotate(label, cv2.ROTATE_90_COUNTERCLOCKWISE)  # 200 x 24, reads bottom to top
    top = max(0, (y0 + y1) // 2 - 100)
    canvas[top : top + 200, 20:44] = np.minimum(canvas[top : top + 200, 20:44], label)
    # Colour bar: first row -> last row.
    bar = np.repeat(_order_colors(x1 - x0 - 160)[None], 10, axis=0)
    canvas[size - 26 : size - 16, x0 + 80 : x0 + 80 + bar.shape[1]] = bar
    cv2.putText(canvas, "first", (x0 + 30, size - 17), font, 0.4, black, 1, cv2.LINE_AA)
    cv2.putText(canvas, "last", (x0 + 86 + bar.shape[1], size - 17), font, 0.4, black, 1, cv2.LINE_AA)
    ok, buf = cv2.imencode(path.suffix.lower(), canvas)
    if not ok:
        raise BadDataError(f"{path}: OpenCV could not encode the map")
    atomic_write_bytes(path, buf.tobytes())
    return path


class ThumbnailKeeper:
    """Keeps at most ``cap`` thumbnails of a stream of unknown length, evenly spread and deterministic.

    Rows that are multiples of a stride are kept; when more than ``cap`` are held the stride doubles and every
    other one is dropped. Memory stays at ``cap`` small images for any number of frames.
    """

    def __init__(self, cap: int = DEFAULT_THUMBNAILS):
        self.cap = max(0, int(cap))
        self.stride = 1
        self.kept: dict[int, np.ndarray] = {}

    def add(self, row: int, image: np.ndarray) -> None:
        if self.cap == 0 or row % self.stride:
            return
        self.kept[row] = _thumb(image)
        while len(self.kept) > self.cap:
            self.stride *= 2
            self.kept = {r: t for r, t in self.kept.items() if r % self.stride == 0}

    def as_list(self, n: int) -> list[np.ndarray | None]:
        return [self.kept.get(i) for i in range(n)]


# --------------------------------------------------------------------------------------------------------------
# The model


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
        bundle: Bundle | None = None
        if isinstance(model, Bundle):
            bundle = model
        else:
            path = Path(model)
            if path.is_dir() or path.name == MANIFEST_NAME:
                bundle = load_bundle(path)
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
        out = self.graph.run_frame(frame)[self.output]  # checks the frame before anything else
        if out.ndim != 3 or 0 in out.shape:
            raise ModelRejectedError(f"{self.graph.info.path}: {self.output} has shape {list(out.shape)}")
        height, width = frame.shape[:2]
        multiple = self.graph.info.input_multiple
        padded_h, padded_w = height + (-height % multiple), width + (-width % multiple)
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


# --------------------------------------------------------------------------------------------------------------
# Files


def index_path(out_npy: str | os.PathLike) -> Path:
    """``OUT.npy`` -> ``OUT.index.jsonl``."""
    path = Path(out_npy)
    return path.with_name(path.name[:-4] + ".index.jsonl") if path.name.lower().endswith(".npy") else path


def _check_out_path(out_npy: str | os.PathLike) -> Path:
    path = Path(out_npy)
    if path.suffix.lower() != ".npy" or path.name.lower() == ".npy":
        raise UsageError(f"{path}: the embeddings are written as OUT.npy (name it with a .npy extension)")
    return path


def matrix_sha256(matrix: np.ndarray) -> str:
    """SHA-256 of the rows as float32 little-endian, C order (what the index header records)."""
    return hashlib.sha256(np.ascontiguousarray(matrix, dtype="<f4").data).hexdigest()


def _row_entry(row: int, frame: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"row": row, "index": int(frame.index)}
    if frame.name:
        entry["name"] = frame.name
    else:
        entry["time"] = round(float(frame.timestamp), 6)
    return entry


def embed_source(
    model: str | os.PathLike | Bundle,
    input_spec: str | os.PathLike,
    out_npy: str | os.PathLike,
    *,
    grid: int = 1,
    normalize: bool = False,
    plot: str | os.PathLike | None = None,
    precision: str = "fp32",
    device: str = "cpu",
    threads: int | None = None,
    allow_fallback: bool = False,
    max_frames: int | None = None,
    thumbnails: int = DEFAULT_THUMBNAILS,
) -> dict[str, Any]:
    """Embed every frame of ``input_spec`` (image, folder, glob, video, camera) into ``out_npy`` and its index.

    Writes ``OUT.npy`` (float32 (N, D)) and ``OUT.index.jsonl`` atomically, and with ``plot`` a PCA map with
    up to ``thumbnails`` thumbnails. Returns statistics; ``stats["error"]`` is set (the good frames are still
    written) when corrupt images were skipped or a video ended early. BadDataError (3) when no frame could be
    read; UsageError (2) for a bad output name, grid or plot type.
    """
    out = _check_out_path(out_npy)
    plot_path = _check_plot_path(plot) if plot is not None else None
    if max_frames is not None and (isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames < 1):
        raise UsageError(f"max_frames must be an integer >= 1, got {max_frames!r}")
    embedder = Embedder(model, precision, device, threads, allow_fallback, grid=grid, normalize=normalize)
    keeper = ThumbnailKeeper(thumbnails) if plot_path is not None else None
    vectors: list[np.ndarray] = []
    entries: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    with open_source(input_spec) as src:
        for frame in src:
            vectors.append(embedder.embed(frame.image))
            entries.append(_row_entry(len(entries), frame))
            if keeper is not None:
                keeper.add(len(entries) - 1, frame.image)
            if max_frames is not None and len(vectors) >= max_frames:
                break
        stats = src.stats
        description = src.description
    elapsed = time.perf_counter() - t0
    n = len(vectors)
    if n == 0:
        bad = f" ({', '.join(stats.bad_files[:3])})" if stats.bad_files else ""
        raise BadDataError(f"{input_spec}: no frame could be read{bad}; nothing written")
    matrix = np.stack(vectors).astype(np.float32)
    header = {**embedder.header(), "rows": n, "dim": int(matrix.shape[1]), "sha256": matrix_sha256(matrix),
              "source": description}  # fmt: skip
    with atomic_path(out) as tmp, open(tmp, "wb") as fh:
        np.save(fh, matrix, allow_pickle=False)
    lines = [json.dumps(header, sort_keys=True)] + [json.dumps(e, sort_keys=True) for e in entries]
    atomic_write_text(index_path(out), "\n".join(lines) + "\n")
    result: dict[str, Any] = {
        "frames": n,
        "frames_bad": stats.frames_bad,
        "dim": int(matrix.shape[1]),
        "model_id": embedder.model_id,
        "precision": embedder.precision,
        "fps": n / elapsed if elapsed > 0 else 0.0,
        "output": str(out),
        "index": str(index_path(out)),
    }
    if plot_path is not None:
        points, ratio = _pca(matrix)
        name = Path(str(input_spec)).name or str(input_spec)
        plot_map(points, keeper.as_list(n) if keeper else None, plot_path,
                 title=f"{name}: {n} frames, model {embedder.model_id}, {embedder.output} grid {embedder.grid}",
                 axis_labels=(f"PC1 ({ratio[0]:.0%} of variance)", f"PC2 ({ratio[1]:.0%})"))  # fmt: skip
        result["plot"] = str(plot_path)
        result["explained_variance"] = [float(r) for r in ratio]
    if stats.frames_bad:
        result["error"] = (f"{input_spec}: {stats.frames_bad} input(s) could not be read "
                           f"({', '.join(stats.bad_files[:3])}); the other {n} were embedded into {out}")  # fmt: skip
    elif stats.truncated:
        result["error"] = f"{input_spec}: video ended early after {n} good frames; they were embedded into {out}"
    return result


def _read_npy(path: Path) -> np.ndarray:
    """The (N, D) float32 matrix of an embed output; its header is checked against the file's size and a cap
    (:func:`edge_runtime.npcheck.read_npy`) before anything is allocated: BadDataError (3) otherwise."""
    from edge_runtime.npcheck import NpyError, read_npy

    try:
        matrix = read_npy(path)
    except FileNotFoundError:
        raise BadDataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise BadDataError(f"{path}: is a directory, not a .npy file") from None
    except OSError as exc:
        raise BadDataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except NpyError as exc:
        raise BadDataError(f"{path}: not a valid .npy file ({exc})") from None
    if matrix.dtype != np.float32 or matrix.ndim != 2 or 0 in matrix.shape:
        raise BadDataError(f"{path}: expected float32 (N, D) embeddings, got {matrix.dtype} {list(matrix.shape)}")
    if not np.isfinite(matrix).all():
        raise BadDataError(f"{path}: embeddings hold NaN or Inf")
    return matrix


def _json_line(text: str, where: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise BadDataError(f"{where}: not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise BadDataError(f"{where}: expected a JSON object")
    return value


def load_embeddings(out_npy: str | os.PathLike) -> tuple[np.ndarray, dict, list[dict]]:
    """``(matrix (N, D) float32, header, entries)`` of an ``embed`` output, checked against each other.

    BadDataError (3) when either file is missing or corrupt, the array is not float32 2-D, or the index does
    not describe this array (row count, width, SHA-256).
    """
    npy = Path(out_npy)
    matrix = _read_npy(npy)
    idx = index_path(npy)
    if idx == npy:
        raise BadDataError(f"{npy}: expected OUT.npy with its OUT.index.jsonl beside it")
    try:
        with open(idx, "rb") as fh:
            raw = fh.read(len(matrix) * MAX_INDEX_LINE + MAX_INDEX_LINE + 1)
    except FileNotFoundError:
        raise BadDataError(f"{idx}: no such file (embed writes it beside {npy.name})") from None
    except OSError as exc:
        raise BadDataError(f"{idx}: cannot read ({exc.strerror or exc})") from None
    try:
        lines = raw.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise BadDataError(f"{idx}: not UTF-8 text") from None
    if not lines:
        raise BadDataError(f"{idx}: empty")
    header = _json_line(lines[0], f"{idx}:1")
    if header.get("format") != INDEX_FORMAT or header.get("version") != INDEX_VERSION:
        raise BadDataError(f"{idx}: not an edgeae embeddings index (version {INDEX_VERSION})")
    grid, normalize, model_id = header.get("grid"), header.get("normalize"), header.get("model_id")
    if (
        isinstance(grid, bool)
        or not isinstance(grid, int)
        or not 1 <= grid <= MAX_GRID
        or not isinstance(normalize, bool)
        or not isinstance(model_id, str)
    ):
        raise BadDataError(f"{idx}: header lacks a valid grid, normalize or model_id")
    rows, dim = matrix.shape
    if header.get("rows") != rows or header.get("dim") != dim or len(lines) - 1 != rows:
        raise BadDataError(
            f"{idx}: describes {header.get('rows')} rows of {header.get('dim')} values in {len(lines) - 1} lines, "
            f"but {npy.name} holds {rows} of {dim}: the two files are not from the same run"
        )
    if header.get("sha256") != matrix_sha256(matrix):
        raise BadDataError(f"{idx}: SHA-256 does not match {npy.name}: the two files are not from the same run")
    entries = []
    for i, line in enumerate(lines[1:]):
        entry = _json_line(line, f"{idx}:{i + 2}")
        if entry.get("row") != i:
            raise BadDataError(f"{idx}:{i + 2}: expected row {i}, got {entry.get('row')!r}")
        entries.append(entry)
    return matrix, header, entries


def describe_entry(entry: dict) -> str:
    """``frame.png`` for images, ``frame 12 at 0.480 s`` for video frames."""
    if "name" in entry:
        return str(entry["name"])
    text = f"frame {entry.get('index')}"
    if isinstance(entry.get("time"), (int, float)):
        text += f" at {float(entry['time']):.3f} s"
    return text


def _parse_row(query: str) -> int | None:
    text = query.strip()
    if re.fullmatch(r"[+-]?\d+", text) and not os.path.lexists(query):
        return int(text)
    return None


def _check_query_image(path: Path) -> None:
    if not os.path.lexists(path):
        raise BadDataError(f"{path}: no such file")
    if not path.is_file() or path.suffix.lower() not in IMAGE_EXTENSIONS:
        raise UsageError(f"--query {path}: expected an image file or a row number")


def _query_image(path: Path, embedder: Embedder) -> np.ndarray:
    _check_query_image(path)
    with open_source(path) as src:
        frame = next(iter(src), None)
        if frame is None:
            raise BadDataError(f"{path}: {src.stats.last_error or 'could not be read'}")
    return embedder.embed(frame.image)


def similar_frames(
    out_npy: str | os.PathLike,
    query: str | int,
    k: int = 5,
    *,
    model: str | os.PathLike | None = None,
    precision: str = "fp32",
    device: str = "cpu",
    threads: int | None = None,
    allow_fallback: bool = False,
) -> dict[str, Any]:
    """The ``k`` rows of an embed output closest to ``query`` (a row number, or an image embedded with ``model``).

    Returns ``{"query": {...}, "neighbours": [{"rank", "row", "similarity", **index entry}, ...]}``; a row
    query leaves the row itself out. UsageError (2): k < 1, row out of range, an image query without
    ``model``; ModelRejectedError (4): ``model`` is not the model the embeddings were made with (its id
    differs); BadDataError (3): missing or corrupt files.
    """
    k = _check_k(k)
    matrix, header, entries = load_embeddings(out_npy)
    row = query if isinstance(query, int) and not isinstance(query, bool) else _parse_row(str(query))
    if row is not None:
        if not 0 <= row < len(matrix):
            raise UsageError(f"--query row {row} is out of range: {out_npy} holds rows 0 to {len(matrix) - 1}")
        hits = cosine_knn(matrix, matrix[row], k, exclude=row)
        query_info: dict[str, Any] = {"row": row, **{k_: v for k_, v in entries[row].items() if k_ != "row"}}
    else:
        _check_query_image(Path(str(query)))
        if model is None:
            raise UsageError("--query is an image: pass --model, the model the embeddings were made with")
        embedder = Embedder(model, precision, device, threads, allow_fallback, grid=header["grid"],
                            normalize=header["normalize"])  # fmt: skip
        if embedder.model_id != header.get("model_id"):
            raise ModelRejectedError(
                f"{model}: model id {embedder.model_id}, but {out_npy} was made with model {header.get('model_id')}"
                " (vectors of different models are not comparable)"
            )
        hits = cosine_knn(matrix, _query_image(Path(str(query)), embedder), k)
        query_info = {"image": str(query)}
    neighbours = [{"rank": i + 1, "row": r, "similarity": s, **{k_: v for k_, v in entries[r].items() if k_ != "row"}}
                  for i, (r, s) in enumerate(hits)]  # fmt: skip
    return {"query": query_info, "neighbours": neighbours}


# --------------------------------------------------------------------------------------------------------------
# Commands (registered lazily by edge_runtime.cli)


@click.command("embed")
@click.argument("model", type=click.Path())
@click.argument("input", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(),
              help="OUT.npy: float32 (frames x dims); OUT.index.jsonl goes beside it; both atomic.")  # fmt: skip
@click.option("--grid", type=click.IntRange(1, MAX_GRID), default=1, show_default=True,
              help="Pool a GxG grid of cells (C*G*G values) instead of one global average (C values).")  # fmt: skip
@click.option("--normalize", is_flag=True, help="Scale every vector to unit L2 norm.")
@click.option("--plot", type=click.Path(), default=None,
              help="Also draw a 2-D PCA map of the frames with thumbnails (.png or .jpg).")  # fmt: skip
@click.option("--thumbnails", type=click.IntRange(0, 5000), default=DEFAULT_THUMBNAILS, show_default=True,
              help="Most thumbnails drawn on the map (evenly spread over the frames; the rest are dots).")  # fmt: skip
@click.option("--max-frames", type=click.IntRange(1), default=None, help="Stop after this many frames.")
@runtime_options
def embed(model, input, output, grid, normalize, plot, thumbnails, max_frames, precision, device, allow_fallback,
          threads):  # fmt: skip
    """Embed every frame of INPUT as one vector from MODEL's encoder: a compact summary for search and maps.

    MODEL is a compression bundle (its encoder's latent) or an anomaly bundle (its features). INPUT is an
    image, a folder, a glob (quoted), a video or a camera (with --max-frames). Each frame's latent is averaged
    over space (or over a coarse --grid), giving one float32 row of OUT.npy; OUT.index.jsonl maps each row to
    its file name, or frame index and time, after a header naming the model. Corrupt images are skipped and
    counted; the run then exits 3 after writing the others. Find neighbours with `edgeae similar`.
    """
    stats = embed_source(model, input, output, grid=grid, normalize=normalize, plot=plot, precision=precision,
                         device=device, threads=threads, allow_fallback=allow_fallback, max_frames=max_frames,
                         thumbnails=thumbnails)  # fmt: skip
    click.echo(json.dumps({k: v for k, v in stats.items() if not isinstance(v, (list, dict))}, default=float))
    if stats.get("error"):
        raise BadDataError(stats["error"])


@click.command("similar")
@click.argument("embeddings", type=click.Path())
@click.option("--query", required=True, metavar="IMAGE|ROW",
              help="A row of EMBEDDINGS (0-based) or an image file, embedded with --model.")  # fmt: skip
@click.option("-k", "--k", "k", type=int, default=5, show_default=True, help="How many neighbours to print.")
@click.option("--model", type=click.Path(), default=None,
              help="The model EMBEDDINGS were made with; needed when --query is an image (checked by id).")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per neighbour instead of a table.")
@runtime_options
def similar(embeddings, query, k, model, as_json, precision, device, allow_fallback, threads):
    """Print the frames of EMBEDDINGS (an OUT.npy of `edgeae embed`) closest to a query, by cosine similarity.

    The query is a row number (the row itself is left out) or an image, which is embedded with --model the
    same way (grid and normalisation come from OUT.index.jsonl). A model other than the one the embeddings
    were made with is refused (exit 4); a row out of range or k < 1 exits 2; missing or corrupt files exit 3.
    """
    result = similar_frames(embeddings, query, k, model=model, precision=precision, device=device,
                            threads=threads, allow_fallback=allow_fallback)  # fmt: skip
    if as_json:
        for hit in result["neighbours"]:
            click.echo(json.dumps(hit, sort_keys=True))
        return
    q = result["query"]
    click.echo(f"query: {q['image']}" if "image" in q else f"query: row {q['row']} ({describe_entry(q)})")
    for hit in result["neighbours"]:
        click.echo(f"{hit['rank']:>3}  row {hit['row']:>6}  cos {hit['similarity']:+.4f}  {describe_entry(hit)}")
