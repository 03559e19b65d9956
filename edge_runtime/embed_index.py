"""The files of ``edgeae embed`` and what reads them: ``OUT.npy`` (float32 (N, D)), ``OUT.index.jsonl`` (a header
naming the model and options, then one line per row), the nearest-neighbour search over them and the 2-D map.

A format leaf: numpy and OpenCV, nothing of the tasks; the sink that writes these files is
:class:`edge_runtime.outputs.EmbeddingsSink`. See :mod:`edge_runtime.embed` for what a vector is.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_runtime.errors import BadDataError, UsageError
from edge_runtime.io import atomic_write_bytes

INDEX_FORMAT = "edgeae-embeddings"
INDEX_VERSION = 1
MAX_GRID = 32
# Thumbnails kept for the map: beyond this, every other one is dropped (deterministic, evenly spread).
DEFAULT_THUMBNAILS = 200
THUMB_SIDE = 48
PLOT_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp"})
# The index holds one short JSON line per row; anything far beyond that is not an index.
MAX_INDEX_LINE = 64 * 1024


def check_k(k: Any) -> int:
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
    k = check_k(k)
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


def pca(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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
    return pca(matrix)[0]


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


def check_plot_path(path: str | os.PathLike) -> Path:
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
    path = check_plot_path(path)
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


def index_path(out_npy: str | os.PathLike) -> Path:
    """``OUT.npy`` -> ``OUT.index.jsonl``."""
    path = Path(out_npy)
    return path.with_name(path.name[:-4] + ".index.jsonl") if path.name.lower().endswith(".npy") else path


def check_out_path(out_npy: str | os.PathLike) -> Path:
    path = Path(out_npy)
    if path.suffix.lower() != ".npy" or path.name.lower() == ".npy":
        raise UsageError(f"{path}: the embeddings are written as OUT.npy (name it with a .npy extension)")
    return path


def matrix_sha256(matrix: np.ndarray) -> str:
    """SHA-256 of the rows as float32 little-endian, C order (what the index header records)."""
    return hashlib.sha256(np.ascontiguousarray(matrix, dtype="<f4").data).hexdigest()


def row_entry(row: int, index: int, name: str, timestamp: float) -> dict[str, Any]:
    """One index line: ``{"row", "index", "name"}`` for images, ``{"row", "index", "time"}`` for video frames."""
    entry: dict[str, Any] = {"row": row, "index": int(index)}
    if name:
        entry["name"] = name
    else:
        entry["time"] = round(float(timestamp), 6)
    return entry


def read_npy(path: Path) -> np.ndarray:
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
    matrix = read_npy(npy)
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
