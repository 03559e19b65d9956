"""Learned image and video compression: frames to ``.eae`` streams and back (docs/bitstream.md, docs/bundle.md).

The core is pure: :meth:`Encoder.encode` takes a frame and returns a :class:`~edge_runtime.bitstream.FrameRecord`,
:meth:`Decoder.decode` takes a record and returns the frame, :func:`decode_stream` takes the bytes of a whole
stream.  :func:`compress` and :func:`decompress` add the file handling around them: sources, model look-up,
atomic output (a temp file or folder beside the target, renamed into place only when everything succeeded).

Model identity.  A stream names its decoder by ``model_id``, the first 8 bytes of the SHA-256 of the bundle's
**FP32** decoder file as listed in the manifest (the reference every other precision is derived from, see
``edgeae.parent_sha256``).  The latents are integers, so any precision of that decoder decodes the stream; an
INT8 encoder and an FP32 decoder of one bundle interoperate.  A bundle without an FP32 decoder is named by its
first decoder in the order fp32, fp16, int8.

Geometry.  The format fixes the latent stride at 16: a frame of H×W has a latent of ``ceil(H/16) × ceil(W/16)``.
The encoder pads the frame (reflection, bottom and right) to ``lcm(edgeae.input_multiple, 16)`` and crops the
latent back to that grid; the decoder pads the latent (edge) to the same multiple and crops the frame to H×W.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import shutil
import stat
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from . import bitstream
from .bitstream import FrameRecord, StreamWriter, check_model_id, iter_frames, read_frame, read_header
from .entropy import EntropyTables, decode_latents, encode_latents, tables_from_json
from .errors import BadDataError, ModelRejectedError, UsageError
from .io import atomic_path, atomic_write_bytes
from .model import MANIFEST_NAME, MAX_MANIFEST_BYTES, PRECISIONS, Bundle, load_bundle, open_graph, read_model_bytes
from .session import RuntimeGraph
from .sources import open_source
from .stats import StageClock

# The whole stream is read into memory; anything larger is refused before a byte is read.
MAX_STREAM_BYTES = 2 * 1024**3
# entropy.json: 128 channels x 65 entries is ~50 KB; the format's own caps (4096 x 4097) would be ~100 MB.
MAX_TABLES_BYTES = 64 * 1024 * 1024
LATENT_STRIDE = bitstream.LATENT_STRIDE
ENTROPY_FILE = "entropy.json"

IMAGE_OUTPUTS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})
# Extension -> FourCC that this OpenCV (FFMPEG backend) writes; .mkv gets FFV1, which is lossless.
VIDEO_OUTPUTS = {".mp4": "mp4v", ".avi": "MJPG", ".mkv": "FFV1"}
DEFAULT_FPS = 25.0
_PROGRESS_EVERY_S = 0.5


# ---------------------------------------------------------------------------------------------------------------
# Bundles: identity, quality, tables


def _decoder_sha256(manifest: dict) -> str | None:
    """SHA-256 (hex) of the decoder file that names the model: FP32 first, else fp16, else int8."""
    files = manifest.get("files")
    if not isinstance(files, dict):
        return None
    by_precision = {}
    for entry in files.values():
        if not isinstance(entry, dict) or entry.get("graph") != "decoder":
            continue
        precision, sha = entry.get("precision"), entry.get("sha256")
        if isinstance(precision, str) and isinstance(sha, str):
            by_precision.setdefault(precision, sha)
    for precision in PRECISIONS:
        sha = by_precision.get(precision)
        if sha is not None:
            return sha
    return None


def _id_of_manifest(manifest: dict) -> bytes | None:
    sha = _decoder_sha256(manifest)
    if sha is None:
        return None
    try:
        return bitstream.model_id_from_sha256(sha)
    except ValueError:
        return None


def bundle_model_id(bundle: Bundle) -> bytes:
    """The 8-byte id a stream made with this bundle carries (see the module docstring)."""
    mid = _id_of_manifest(bundle.manifest)
    if mid is None:
        raise ModelRejectedError(f"{bundle.root}: {MANIFEST_NAME} lists no decoder graph; streams need one to name")
    return mid


def _parse_quality(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, int) and 0 <= value <= 255:
        return value
    return None


def bundle_quality(bundle: Bundle) -> int:
    """The contract's ``quality`` (0..255), stored in every stream header."""
    raw = bundle.contract.get("quality")
    quality = _parse_quality(raw)
    if quality is None:
        raise ModelRejectedError(f"{bundle.root}: contract quality {raw!r} is not an integer in 0..255")
    return quality


def load_tables(bundle: Bundle) -> EntropyTables:
    """``entropy.json`` of the bundle, re-verified against the manifest's SHA-256 and strictly parsed."""
    data = bundle.read_verified(ENTROPY_FILE, max_bytes=MAX_TABLES_BYTES)
    where = bundle.root / ENTROPY_FILE
    try:
        raw = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ModelRejectedError(f"{where}: not valid JSON ({exc})") from None
    try:
        return tables_from_json(raw)
    except BadDataError as exc:
        raise ModelRejectedError(f"{where}: {exc}") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _compress_bundle(model: str | os.PathLike | Bundle) -> Bundle:
    bundle = model if isinstance(model, Bundle) else load_bundle(model)
    if bundle.task != "compress":
        raise ModelRejectedError(f"{bundle.root}: a {bundle.task} bundle; compression needs a compress bundle")
    return bundle


def _pad_multiple(graph: RuntimeGraph) -> int:
    """Frames are padded to this: a multiple of the model's input_multiple and of the format's stride 16."""
    stride = graph.info.meta_int("edgeae.latent.stride", LATENT_STRIDE)
    if stride != LATENT_STRIDE:
        raise ModelRejectedError(
            f"{graph.info.path}: latent stride {stride}; the .eae format (version {bitstream.VERSION}) needs "
            f"{LATENT_STRIDE}"
        )
    return math.lcm(graph.info.input_multiple, LATENT_STRIDE)


def _latent_channels(graph: RuntimeGraph, tables: EntropyTables, bundle: Bundle) -> int:
    declared = graph.info.meta_int("edgeae.latent.channels", tables.channels)
    if declared != tables.channels:
        raise ModelRejectedError(
            f"{bundle.root}: {ENTROPY_FILE} has {tables.channels} channels but {graph.info.path.name} declares "
            f"edgeae.latent.channels={declared}"
        )
    if not 1 <= declared <= bitstream.MAX_LATENT_CHANNELS:
        raise ModelRejectedError(
            f"{graph.info.path}: {declared} latent channels; the format allows 1..{bitstream.MAX_LATENT_CHANNELS}"
        )
    return declared


class _Codec:
    """What encoder and decoder share: the bundle, the checked graph, the tables, id, quality, geometry."""

    graph_name = ""

    def __init__(
        self,
        model: str | os.PathLike | Bundle,
        precision: str = "fp32",
        device: str = "cpu",
        threads: int | None = None,
        allow_fallback: bool = False,
    ):
        self.bundle = _compress_bundle(model)
        self.model_id = bundle_model_id(self.bundle)
        self.quality = bundle_quality(self.bundle)
        self.graph = open_graph(
            self.bundle, self.graph_name, precision, device=device, threads=threads, allow_fallback=allow_fallback
        )
        self.tables = load_tables(self.bundle)
        self.latent_channels = _latent_channels(self.graph, self.tables, self.bundle)
        self.multiple = _pad_multiple(self.graph)
        self.channels = self.graph.frame_channels()
        self.max_side = min(self.graph.info.max_side, bitstream.MAX_SIDE)
        self.precision = precision
        self._where = str(self.graph.info.path)

    def _check_sides(self, height: int, width: int, what: str) -> None:
        if not (1 <= height <= self.max_side and 1 <= width <= self.max_side):
            raise BadDataError(f"{what} {width}x{height}: the model takes 1..{self.max_side} pixels per side")


# ---------------------------------------------------------------------------------------------------------------
# Encoder and decoder (pure on arrays and bytes)


class Encoder(_Codec):
    """Frames to frame records: the bundle's encoder graph, then the entropy coder.

    ``model``: a compress bundle directory, its manifest.json, or a loaded :class:`~edge_runtime.model.Bundle`.
    Attributes: ``model_id`` (8 bytes), ``quality`` (int), ``channels`` (1 or 3, what the model codes),
    ``latent_channels`` (M), ``multiple`` (what frames are padded to). Errors: ModelRejectedError (4).
    """

    graph_name = "encoder"

    def prepare(self, frame: np.ndarray) -> np.ndarray:
        """frame: (H, W, 3) uint8 BGR, (H, W, 4) BGRA, (H, W) or (H, W, 1) gray -> (H, W, channels) uint8."""
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim not in (2, 3):
            got = f"{frame.dtype} {list(frame.shape)}" if isinstance(frame, np.ndarray) else type(frame).__name__
            raise BadDataError(f"{self._where}: expected a uint8 (H, W, C) frame, got {got}")
        if frame.ndim == 2:
            frame = frame[:, :, None]
        have, want = frame.shape[2], self.channels
        if have != want:
            code = {
                (3, 1): cv2.COLOR_BGR2GRAY,
                (4, 1): cv2.COLOR_BGRA2GRAY,
                (1, 3): cv2.COLOR_GRAY2BGR,
                (4, 3): cv2.COLOR_BGRA2BGR,
            }.get((have, want))
            if code is None:
                raise BadDataError(f"{self._where}: cannot turn a {have}-channel frame into {want} channels")
            frame = cv2.cvtColor(np.ascontiguousarray(frame), code)
            if frame.ndim == 2:
                frame = frame[:, :, None]
        return frame

    def latent(self, frame: np.ndarray) -> np.ndarray:
        """frame as in :meth:`prepare` -> (M, ceil(H/16), ceil(W/16)) int32, the encoder graph's rounded latent."""
        image = self.prepare(frame)
        height, width = image.shape[:2]
        self._check_sides(height, width, "frame")
        pad_h, pad_w = -height % self.multiple, -width % self.multiple
        if pad_h or pad_w:
            image = cv2.copyMakeBorder(image, 0, pad_h, 0, pad_w, cv2.BORDER_REFLECT_101)
            if image.ndim == 2:  # OpenCV drops a trailing channel axis of 1
                image = image[:, :, None]
        padded_h, padded_w = image.shape[:2]
        out = self.graph.run({"frame": np.ascontiguousarray(image)[None]})["latent"]
        grid = (padded_h // LATENT_STRIDE, padded_w // LATENT_STRIDE)
        if out.shape != (1, self.latent_channels, *grid):
            raise ModelRejectedError(
                f"{self._where}: for a {padded_w}x{padded_h} frame the encoder returned latent {list(out.shape)}, "
                f"expected [1,{self.latent_channels},{grid[0]},{grid[1]}] (stride {LATENT_STRIDE})"
            )
        lh, lw = -(-height // LATENT_STRIDE), -(-width // LATENT_STRIDE)
        return np.ascontiguousarray(out[0, :, :lh, :lw])

    def record(self, latent: np.ndarray, height: int, width: int) -> FrameRecord:
        """Entropy-code a latent from :meth:`latent` of an H×W frame into a record."""
        payload = encode_latents(latent, self.tables)
        return FrameRecord(height, width, self.channels, tuple(int(v) for v in latent.shape), payload)

    def encode(self, frame: np.ndarray) -> FrameRecord:
        """frame: (H, W, 3) uint8 BGR or gray -> one frame record (converted to gray if the model is 1-channel)."""
        image = self.prepare(frame)
        height, width = image.shape[:2]
        return self.record(self.latent(image), height, width)


class Decoder(_Codec):
    """Frame records to frames: the entropy decoder, then the bundle's decoder graph.

    Arguments and attributes as for :class:`Encoder`.
    """

    graph_name = "decoder"

    def latent(self, record: FrameRecord) -> np.ndarray:
        """Check a record against this model and entropy-decode it -> (M, h, w) int32.  BadDataError (3)."""
        try:
            height, width, channels = int(record.height), int(record.width), int(record.channels)
            m, lh, lw = (int(v) for v in record.latent_shape)
        except (TypeError, ValueError, AttributeError):
            raise BadDataError("not a frame record") from None
        self._check_sides(height, width, "stream frame")
        if channels != self.channels:
            raise BadDataError(f"stream frame has {channels} channels, the model decodes {self.channels}")
        if m != self.latent_channels:
            raise BadDataError(f"stream frame has {m} latent channels, the model has {self.latent_channels}")
        expected = (-(-height // LATENT_STRIDE), -(-width // LATENT_STRIDE))
        if (lh, lw) != expected:
            raise BadDataError(f"stream frame latent {lh}x{lw} does not match {height}x{width}")
        return decode_latents(record.payload, self.tables, (m, lh, lw))

    def reconstruct(self, latent: np.ndarray, height: int, width: int) -> np.ndarray:
        """latent: (M, h, w) int32 -> (height, width, C) uint8 (BGR or gray), the decoder graph's output cropped."""
        lat = np.asarray(latent, dtype=np.int32)
        step = self.multiple // LATENT_STRIDE
        pad_h, pad_w = -lat.shape[1] % step, -lat.shape[2] % step
        if pad_h or pad_w:
            lat = np.pad(lat, ((0, 0), (0, pad_h), (0, pad_w)), mode="edge")
        out = self.graph.run({"latent": np.ascontiguousarray(lat)[None]})["frame"]
        if out.ndim != 4 or out.shape[0] != 1 or out.shape[1] < height or out.shape[2] < width:
            raise ModelRejectedError(
                f"{self._where}: for latent {list(lat.shape)} the decoder returned frame {list(out.shape)}, "
                f"expected [1,>={height},>={width},{self.channels}]"
            )
        if out.shape[3] != self.channels:
            raise ModelRejectedError(
                f"{self._where}: decoder returned {out.shape[3]} channels, edgeae.channels is {self.channels}"
            )
        return np.ascontiguousarray(out[0, :height, :width])

    def decode(self, record: FrameRecord) -> np.ndarray:
        """record -> (H, W, C) uint8 frame (BGR, or gray with C = 1)."""
        return self.reconstruct(self.latent(record), int(record.height), int(record.width))


def encode_stream(encoder: Encoder, frames: Iterable[np.ndarray]) -> bytes:
    """Frames -> the bytes of a whole ``.eae`` stream, in memory (for small inputs and tests)."""
    return bitstream.pack_stream(encoder.model_id, encoder.quality, [encoder.encode(f) for f in frames])


def decode_stream(
    data: bytes | bytearray | memoryview, decoder: Decoder, frame: int | None = None, where: str = "stream"
) -> list[np.ndarray]:
    """The bytes of a whole stream -> its frames, (H, W, C) uint8 each; ``frame=i`` decodes frame i alone.

    Checks the header, the model id, then every record (or the one asked for) before decoding any of them.
    Any problem with the bytes is a BadDataError (3).
    """
    header = read_header(data)
    check_model_id(header, decoder.model_id, where)
    records = list(iter_frames(data)) if frame is None else [read_frame(data, frame)]
    return [decoder.decode(r) for r in records]


# ---------------------------------------------------------------------------------------------------------------
# Finding bundles


def _manifests(root: Path) -> Iterator[Path]:
    """manifest.json files under root, in sorted order; hidden folders skipped, symlinked folders not followed."""
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if MANIFEST_NAME in names:
            yield Path(folder) / MANIFEST_NAME


def _peek_manifest(path: Path) -> dict | None:
    """A manifest's JSON without verifying the bundle (load_bundle does that for the one chosen); None if bad."""
    try:
        data = read_model_bytes(path, None, max_bytes=MAX_MANIFEST_BYTES, what=MANIFEST_NAME)
        manifest = json.loads(data.decode("utf-8"))
    except (ModelRejectedError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _compress_manifests(root: Path) -> Iterator[tuple[Path, dict]]:
    for path in _manifests(root):
        manifest = _peek_manifest(path)
        if manifest is not None and manifest.get("task") == "compress":
            yield path.parent, manifest


def find_decoder_bundle(model_id: bytes, models_dir: str | os.PathLike) -> Path:
    """The first bundle (sorted path order) under ``models_dir`` whose decoder has this id.

    ModelRejectedError (4) when there is none: the stream may be fine, the model is missing.
    """
    root = Path(models_dir)
    if not root.is_dir():
        raise ModelRejectedError(f"no model for id {model_id.hex()} under {root} (no such folder)")
    seen = []
    for folder, manifest in _compress_manifests(root):
        mid = _id_of_manifest(manifest)
        if mid == bytes(model_id):
            return folder
        seen.append(f"{folder.name} ({mid.hex() if mid else 'no decoder'})")
    known = f"; compression bundles there: {', '.join(seen[:8])}" if seen else "; it holds no compression bundle"
    raise ModelRejectedError(f"no model for id {model_id.hex()} under {root}{known}")


def select_compress_bundle(models_dir: str | os.PathLike, quality: int | None = None) -> Path:
    """The compress bundle under ``models_dir`` of the given quality; by default the middle quality present
    (the lower middle for an even count: 2 of 1..4)."""
    root = Path(models_dir)
    found: dict[int, list[Path]] = {}
    for folder, manifest in _compress_manifests(root):
        contract = manifest.get("contract")
        q = _parse_quality(contract.get("quality")) if isinstance(contract, dict) else None
        if q is not None:
            found.setdefault(q, []).append(folder)
    if not found:
        raise ModelRejectedError(f"{root}: no compression bundle (manifest.json with task compress) under it")
    qualities = sorted(found)
    if quality is None:
        quality = qualities[(len(qualities) - 1) // 2]
    if quality not in found:
        raise UsageError(
            f"{root}: no compression bundle of quality {quality} (available: {', '.join(map(str, qualities))})"
        )
    if len(found[quality]) > 1:
        names = ", ".join(str(p) for p in found[quality])
        raise UsageError(f"{root}: several bundles have quality {quality} ({names}); pass one bundle")
    return found[quality][0]


def _resolve_compress_model(model: str | os.PathLike | Bundle, quality: int | None) -> Bundle:
    if isinstance(model, Bundle):
        bundle = model
    else:
        path = Path(model)
        if path.is_dir() and not os.path.lexists(path / MANIFEST_NAME):
            bundle = load_bundle(select_compress_bundle(path, quality))
        else:
            bundle = load_bundle(path)
    bundle = _compress_bundle(bundle)
    if quality is not None and bundle_quality(bundle) != quality:
        raise UsageError(
            f"{bundle.root}: this bundle has quality {bundle_quality(bundle)}, not {quality}; pass a folder of "
            f"bundles to choose by quality"
        )
    return bundle


# ---------------------------------------------------------------------------------------------------------------
# Files


class _Progress:
    """A throttled ``label: N frames`` line on stderr."""

    def __init__(self, enabled: bool, label: str):
        self.enabled = bool(enabled)
        self.label = label
        self._last = 0.0
        self._shown = False

    def update(self, count: int, total: int | None = None) -> None:
        now = time.monotonic()
        if self.enabled and now - self._last >= _PROGRESS_EVERY_S:
            self._last = now
            self._shown = True
            of = f"/{total}" if total else ""
            print(f"\r{self.label}: {count}{of} frames", end="", file=sys.stderr, flush=True)

    def done(self) -> None:
        if self._shown:
            print(file=sys.stderr, flush=True)


def _ms(seconds: float, frames: int) -> float:
    return round(1000.0 * seconds / max(frames, 1), 3)


def compress(
    model: str | os.PathLike | Bundle,
    input_spec: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    quality: int | None = None,
    precision: str = "fp32",
    device: str = "cpu",
    threads: int | None = None,
    allow_fallback: bool = False,
    progress: bool = True,
) -> dict:
    """Compress an image, a folder or glob of images, or a video file into one ``.eae`` stream.

    ``model``: a compress bundle, or a folder of bundles (e.g. ``models/``) from which ``quality`` picks one
    (default: the middle quality present).  Frames go in source order; the stream is written to a temp file beside
    ``output_path`` and renamed into place when complete, so an error, a full disk or Ctrl-C leaves nothing behind
    (and an existing ``output_path`` untouched).  Unreadable images (and frames the model refuses, e.g. over its
    max side) are skipped and a truncated video ends after its last good frame: the output is completed with the
    good frames, then BadDataError (3) reports the count, with the stats attached as ``err.stats``.
    Returns stats: frames, bytes, bpp, per-stage milliseconds per frame (read, inference, entropy, write), totals.
    """
    if quality is not None and (isinstance(quality, bool) or not isinstance(quality, int) or not 0 <= quality <= 255):
        raise UsageError(f"quality must be an integer in 0..255, got {quality!r}")
    output = Path(output_path)
    if output.is_dir():
        raise UsageError(f"{output}: is a folder; compress writes one .eae file")
    bundle = _resolve_compress_model(model, quality)
    encoder = Encoder(bundle, precision=precision, device=device, threads=threads, allow_fallback=allow_fallback)
    spent = {"read": 0.0, "inference": 0.0, "entropy": 0.0, "write": 0.0}
    clock = StageClock()  # per-frame samples for p50/p95/p99; ``spent`` keeps the totals
    pixels = 0
    bpp_sum = 0.0
    refused: list[str] = []
    bar = _Progress(progress, f"compress {output.name}")
    source = open_source(os.fspath(input_spec))
    try:
        if source.live:
            raise UsageError(f"{source.description}: compress takes images, folders and video files, not live sources")
        with StreamWriter(output, encoder.model_id, encoder.quality) as writer:
            frames = iter(source)
            while True:
                t0 = time.perf_counter()
                item = next(frames, None)
                t1 = time.perf_counter()
                spent["read"] += t1 - t0
                if item is None:
                    break
                height, width = item.image.shape[:2]
                try:
                    latent = encoder.latent(item.image)
                except BadDataError as exc:
                    refused.append(f"{item.name or f'frame {item.index}'} ({exc})")
                    continue
                t2 = time.perf_counter()
                rec = encoder.record(latent, height, width)
                t3 = time.perf_counter()
                writer.add(rec)
                t4 = time.perf_counter()
                spent["inference"] += t2 - t1
                spent["entropy"] += t3 - t2
                spent["write"] += t4 - t3
                clock.add("capture", (t1 - t0) * 1000)
                clock.add("inference", (t2 - t1) * 1000)
                clock.add("entropy", (t3 - t2) * 1000)
                clock.add("write", (t4 - t3) * 1000)
                pixels += height * width
                bpp_sum += 8.0 * (bitstream.RECORD_OVERHEAD + len(rec.payload)) / (height * width)
                bar.update(writer.frame_count)
            count = writer.frame_count
            if count == 0:
                raise BadDataError(_nothing_read(source, input_spec, refused))
            t0 = time.perf_counter()
            writer.close()
            spent["write"] += time.perf_counter() - t0
    except OSError as exc:  # a full disk, a read-only folder: the writer has removed its temp file
        raise BadDataError(f"{output}: cannot write ({exc.strerror or exc})") from exc
    finally:
        source.close()
        bar.done()
    total_bytes = output.stat().st_size
    stats = {
        "input": os.fspath(input_spec),
        "output": str(output),
        "model": str(bundle.root),
        "model_id": encoder.model_id.hex(),
        "quality": encoder.quality,
        "precision": precision,
        "channels": encoder.channels,
        "pad_multiple": encoder.multiple,  # frames are padded to this before the encoder graph
        "frames": count,
        "bytes": total_bytes,
        "bpp": round(8.0 * total_bytes / pixels, 5),
        "bpp_mean": round(bpp_sum / count, 5),
        "frames_bad": source.stats.frames_bad + len(refused),
        "bad_files": list(source.stats.bad_files),
        "refused": refused,
        "truncated": source.stats.truncated,
        "ms": {k: _ms(v, count) for k, v in spent.items()},
        "ms_total": {k: round(1000.0 * v, 3) for k, v in spent.items()},
        "stages": clock.summary(),
    }
    problems = []
    if source.stats.frames_bad:
        total = count + source.stats.frames_bad + len(refused)
        problems.append(f"{source.stats.frames_bad} of {total} images could not be read: {_bad_list(source)}")
    if refused:
        more = f" and {len(refused) - 3} more" if len(refused) > 3 else ""
        total = count + len(refused)
        problems.append(f"{len(refused)} of {total} frames refused by the model: {', '.join(refused[:3])}{more}")
    if source.stats.truncated:
        problems.append(f"{input_spec}: video truncated ({source.stats.last_error})")
    if problems:
        err = BadDataError("; ".join(problems) + f"; the {count} good frames were compressed to {output}")
        err.stats = stats  # type: ignore[attr-defined]
        raise err
    return stats


def _bad_list(source: Any) -> str:
    names = source.stats.bad_files
    text = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    if source.stats.last_error:
        text += f" (last: {source.stats.last_error})"
    return text


def _nothing_read(source: Any, spec: Any, refused: list[str]) -> str:
    if refused:
        return f"{spec}: every frame was refused, e.g. {refused[0]}; nothing written"
    if source.stats.frames_bad:
        return f"{spec}: none of {source.stats.frames_bad} images could be read: {_bad_list(source)}; nothing written"
    detail = f" ({source.stats.last_error})" if source.stats.last_error else ""
    return f"{spec}: no frame could be read{detail}; nothing written"


def read_stream_file(path: str | os.PathLike, max_bytes: int | None = None) -> bytes:
    """The bytes of a ``.eae`` file; refused (BadDataError) if not a regular file or over the cap, before reading."""
    path = Path(path)
    cap = MAX_STREAM_BYTES if max_bytes is None else max_bytes
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise BadDataError(f"{path}: no such file") from None
    except OSError as exc:
        raise BadDataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not stat.S_ISREG(st.st_mode):
        raise BadDataError(f"{path}: not a regular file")
    if st.st_size > cap:
        raise BadDataError(f"{path}: {st.st_size} bytes, over the {cap}-byte limit for a stream")
    try:
        with open(path, "rb") as fh:
            data = fh.read(cap + 1)
    except OSError as exc:
        raise BadDataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if len(data) > cap:
        raise BadDataError(f"{path}: grew past the {cap}-byte limit while being read")
    return data


def _output_kind(output: Path) -> str:
    ext = output.suffix.lower()
    if output.is_dir():
        return "folder"
    if ext in IMAGE_OUTPUTS:
        return "image"
    if ext in VIDEO_OUTPUTS:
        return "video"
    if ext == "":
        return "folder"
    known = ", ".join(sorted(IMAGE_OUTPUTS | set(VIDEO_OUTPUTS)))
    raise UsageError(f"{output}: unsupported output type {ext!r} (use {known}, or a folder)")


def _decoder_for(header: bitstream.StreamHeader, where: str, model: Any, models_dir: Any, **kw: Any) -> Decoder:
    if isinstance(model, Bundle):
        path = None
    elif model is not None:
        path = Path(model)
        if path.is_dir() and not os.path.lexists(path / MANIFEST_NAME):
            return Decoder(find_decoder_bundle(header.model_id, path), **kw)
    else:
        return Decoder(find_decoder_bundle(header.model_id, models_dir), **kw)
    bundle = _compress_bundle(model if path is None else load_bundle(path))
    check_model_id(header, bundle_model_id(bundle), where)  # before the graph is even opened
    return Decoder(bundle, **kw)


def _encode_image(ext: str, image: np.ndarray, where: Path) -> bytes:
    ok, buf = cv2.imencode(ext, image)
    if not ok:
        raise UsageError(f"{where}: OpenCV cannot write {ext} images")
    return buf.tobytes()


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


@contextlib.contextmanager
def _atomic_folder(target: Path) -> Iterator[Path]:
    """A temp folder beside ``target``; renamed to ``target`` on success, removed on any error."""
    target.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkdtemp: its 0700 would become the output folder's mode; os.mkdir honours the umask.
    while True:
        tmp = target.parent / f".{target.name}.{secrets.token_hex(6)}"
        try:
            tmp.mkdir()
            break
        except FileExistsError:
            continue
    try:
        yield tmp
        if target.is_dir():
            target.rmdir()  # empty (checked before decoding); a file appearing meanwhile makes this fail
        os.replace(tmp, target)
        with contextlib.suppress(OSError):
            fd = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def decompress(
    stream_path: str | os.PathLike,
    output: str | os.PathLike,
    *,
    model: str | os.PathLike | Bundle | None = None,
    models_dir: str | os.PathLike = "models",
    precision: str = "fp32",
    device: str = "cpu",
    threads: int | None = None,
    allow_fallback: bool = False,
    frame: int | None = None,
    fps: float = DEFAULT_FPS,
    progress: bool = True,
) -> dict:
    """Decode a ``.eae`` file to an image (.png/.jpg/.bmp/.webp/.tif), a folder of ``frame_000000.png`` ..., or a
    video (.mp4 mp4v, .avi MJPG, .mkv FFV1 lossless) at ``fps``.

    The decoder: ``model`` (a bundle; a stream made by another model is a BadDataError (3) naming both ids; a
    folder is searched like ``models_dir``), else the bundle under ``models_dir`` whose decoder id the stream names
    (none: ModelRejectedError (4)).  ``frame=i`` decodes frame i alone.  The whole stream (every record's CRC,
    also with ``frame``) is checked before any output exists, and the output appears only complete (a temp file
    or folder, then a rename): a bad stream leaves nothing behind.  Output kinds and frame counts that do not fit
    are UsageError (2).  Returns stats: frames, output, kind, per-stage milliseconds per frame.
    """
    t_start = time.perf_counter()
    video_size = None
    out = Path(output)
    kind = _output_kind(out)
    if kind == "folder" and out.is_dir() and any(out.iterdir()):
        raise UsageError(f"{out}: output folder exists and is not empty")
    where = str(stream_path)
    data = read_stream_file(stream_path)
    header = read_header(data)
    if frame is not None:
        if isinstance(frame, bool) or not isinstance(frame, (int, np.integer)):
            raise UsageError(f"frame must be an integer, got {frame!r}")
        if not 0 <= frame < header.frame_count:
            raise UsageError(f"{where}: frame {frame} out of range: the stream has {header.frame_count} frames")
        indices = [int(frame)]
    else:
        indices = list(range(header.frame_count))
    # Every record's CRC, even with frame=i: a damaged file is refused whole, before anything is decoded.
    all_sizes = [_sizes(r) for r in iter_frames(data)]
    records_sizes = [all_sizes[i] for i in indices]
    if not indices:
        raise BadDataError(f"{where}: the stream holds no frames; nothing to write")
    if kind == "image" and len(indices) > 1:
        raise UsageError(
            f"{where}: {len(indices)} frames do not fit one image; write a folder or a video, or pick a frame"
        )
    if kind == "video" and len({s[:2] for s in records_sizes}) > 1:
        raise UsageError(f"{where}: frames of different sizes cannot form a video; write a folder instead")
    if kind == "video" and not (isinstance(fps, (int, float)) and not isinstance(fps, bool) and 0 < fps <= 1000):
        raise UsageError(f"fps must be a number in (0, 1000], got {fps!r}")

    decoder = _decoder_for(
        header, where, model, models_dir, precision=precision, device=device, threads=threads,
        allow_fallback=allow_fallback,
    )  # fmt: skip
    check_model_id(header, decoder.model_id, where)
    for i, (height, width, channels) in zip(indices, records_sizes, strict=True):  # before any output exists
        try:
            decoder._check_sides(height, width, "stream frame")
            if channels != decoder.channels:
                raise BadDataError(f"stream frame has {channels} channels, the model decodes {decoder.channels}")
        except BadDataError as exc:
            raise BadDataError(f"{where}: frame {i}: {exc}") from None
    spent = {"entropy": 0.0, "inference": 0.0, "write": 0.0}
    clock = StageClock()
    bar = _Progress(progress, f"decompress {out.name}")

    def frames() -> Iterator[tuple[int, np.ndarray]]:
        records = iter_frames(data) if frame is None else (read_frame(data, i) for i in indices)
        for i in indices:
            t0 = time.perf_counter()
            rec = next(records)
            lat = decoder.latent(rec)
            t1 = time.perf_counter()
            image = decoder.reconstruct(lat, rec.height, rec.width)
            t2 = time.perf_counter()
            spent["entropy"] += t1 - t0
            spent["inference"] += t2 - t1
            clock.add("entropy", (t1 - t0) * 1000)
            clock.add("inference", (t2 - t1) * 1000)
            yield i, image

    try:
        if kind == "image":
            [(_, image)] = list(frames())
            t0 = time.perf_counter()
            atomic_write_bytes(out, _encode_image(out.suffix.lower(), image, out))
            spent["write"] += time.perf_counter() - t0
        elif kind == "folder":
            with _atomic_folder(out) as tmp:
                for n, (i, image) in enumerate(frames(), 1):
                    t0 = time.perf_counter()
                    _write_synced(tmp / f"frame_{i:06d}.png", _encode_image(".png", image, out))
                    spent["write"] += time.perf_counter() - t0
                    bar.update(n, len(indices))
        else:
            video_size = _write_video(out, frames(), records_sizes[0][:2], float(fps), spent, bar, len(indices))
    except OSError as exc:  # a full disk, a read-only folder: the temp output is already gone
        raise BadDataError(f"{out}: cannot write ({exc.strerror or exc})") from exc
    finally:
        bar.done()
    count = len(indices)
    return {
        "stream": where,
        "output": str(out),
        "kind": kind,
        "frames": count,
        "bytes_in": len(data),
        "model": str(decoder.bundle.root),
        "model_id": header.model_id.hex(),
        "quality": header.quality,
        "precision": precision,
        "video_size": video_size,
        "ms": {k: _ms(v, count) for k, v in spent.items()},
        "ms_total": {k: round(1000.0 * v, 3) for k, v in spent.items()},
        "stages": clock.summary(),
        "seconds": round(time.perf_counter() - t_start, 3),
    }


def _sizes(rec: FrameRecord) -> tuple[int, int, int]:
    return rec.height, rec.width, rec.channels


def _write_video(
    out: Path,
    frames: Iterator[tuple[int, np.ndarray]],
    size_hw: tuple[int, int],
    fps: float,
    spent: dict,
    bar: _Progress,
    total: int,
) -> tuple[int, int]:
    """Write BGR frames to a video; odd sides are padded to even by repeating the last row or column, because
    FFmpeg's 4:2:0 encoders (all three here) would silently drop it.  -> (width, height) written."""
    fourcc = VIDEO_OUTPUTS[out.suffix.lower()]
    height, width = size_hw
    pad_h, pad_w = height % 2, width % 2
    with atomic_path(out) as tmp:
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*fourcc), fps, (width + pad_w, height + pad_h))
        try:
            if not writer.isOpened():
                raise UsageError(f"{out}: OpenCV cannot write {fourcc} video here; write a folder of PNGs instead")
            for n, (_, image) in enumerate(frames, 1):
                t0 = time.perf_counter()
                if image.shape[2] == 1:
                    image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
                if pad_h or pad_w:
                    image = cv2.copyMakeBorder(image, 0, pad_h, 0, pad_w, cv2.BORDER_REPLICATE)
                writer.write(image)
                spent["write"] += time.perf_counter() - t0
                bar.update(n, total)
        finally:
            writer.release()
        if tmp.stat().st_size == 0:
            raise UsageError(f"{out}: OpenCV wrote an empty {fourcc} video")
    return width + pad_w, height + pad_h
