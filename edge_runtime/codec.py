"""Learned image and video compression: frames to ``.eae`` streams and back (docs/bitstream.md, docs/bundle.md).

The core is pure: :meth:`Encoder.encode` takes a frame and returns a :class:`~edge_runtime.bitstream.FrameRecord`,
:meth:`Decoder.decode` takes a record and returns the frame, :func:`decode_stream` takes the bytes of a whole
stream.  :class:`CompressTask` and :class:`DecompressTask` are the frame loop's tasks; the files around them
(sources, sinks) are :mod:`edge_runtime.commands`'.

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

import json
import math
import os
import stat
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from . import bitstream
from .bitstream import FrameRecord, check_model_id, iter_frames, read_frame, read_header
from .entropy import EntropyTables, decode_latents, encode_latents, tables_from_json
from .errors import BadDataError, ModelRejectedError, UsageError
from .model import MANIFEST_NAME, MAX_MANIFEST_BYTES, PRECISIONS, Bundle, load_bundle, open_graph, read_model_bytes
from .session import RuntimeGraph
from .task import Outcome, as_bgr, check_frame

# The whole stream is read into memory; anything larger is refused before a byte is read.
MAX_STREAM_BYTES = 2 * 1024**3
# entropy.json: 128 channels x 65 entries is ~50 KB; the format's own caps (4096 x 4097) would be ~100 MB.
MAX_TABLES_BYTES = 64 * 1024 * 1024
LATENT_STRIDE = bitstream.LATENT_STRIDE
ENTROPY_FILE = "entropy.json"

DEFAULT_FPS = 25.0


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
    bundle = model if isinstance(model, Bundle) else load_bundle(model, hash_graphs=False)
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
        self.precision = self.graph.info.precision  # "auto" resolved
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
            bundle = load_bundle(select_compress_bundle(path, quality), hash_graphs=False)
        else:
            bundle = load_bundle(path, hash_graphs=False)
    bundle = _compress_bundle(bundle)
    if quality is not None and bundle_quality(bundle) != quality:
        raise UsageError(
            f"{bundle.root}: this bundle has quality {bundle_quality(bundle)}, not {quality}; pass a folder of "
            f"bundles to choose by quality"
        )
    return bundle


# ---------------------------------------------------------------------------------------------------------------
# Streams on disk and the frame loop's tasks


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


def resolve_compress_model(model: str | os.PathLike | Bundle, quality: int | None) -> Bundle:
    """The bundle ``compress`` uses: ``model`` itself, or the one of ``quality`` in a folder of bundles."""
    if quality is not None and (isinstance(quality, bool) or not isinstance(quality, int) or not 0 <= quality <= 255):
        raise UsageError(f"quality must be an integer in 0..255, got {quality!r}")
    return _resolve_compress_model(model, quality)


def decoder_for_stream(header: bitstream.StreamHeader, where: str, model: Any, models_dir: Any, **kw: Any) -> Decoder:
    """The decoder a stream names: ``model`` (checked against the stream's id), else found under ``models_dir``."""
    return _decoder_for(header, where, model, models_dir, **kw)


def _decoder_for(header: bitstream.StreamHeader, where: str, model: Any, models_dir: Any, **kw: Any) -> Decoder:
    if isinstance(model, Bundle):
        path = None
    elif model is not None:
        path = Path(model)
        if path.is_dir() and not os.path.lexists(path / MANIFEST_NAME):
            return Decoder(find_decoder_bundle(header.model_id, path), **kw)
    else:
        return Decoder(find_decoder_bundle(header.model_id, models_dir), **kw)
    bundle = _compress_bundle(model if path is None else load_bundle(path, hash_graphs=False))
    check_model_id(header, bundle_model_id(bundle), where)  # before the graph is even opened
    return Decoder(bundle, **kw)


def bits_per_pixel(record: FrameRecord) -> float:
    """Bits per pixel of one record in a stream, its framing included."""
    return 8.0 * (bitstream.RECORD_OVERHEAD + len(record.payload)) / (record.height * record.width)


class CompressTask:
    """The frame loop's compress task: ``process(frame) -> Outcome(record, event={bytes, bpp})``.

    With a ``decoder`` (``edgeae run`` on a codec bundle) the outcome also carries the decoded frame as its image,
    annotated with the bits per pixel when ``annotate``.
    """

    kind = "compress"

    def __init__(self, encoder: Encoder, decoder: Decoder | None = None, annotate: bool = False):
        self.enc, self.dec, self.annotate = encoder, decoder, annotate
        self.max_side = encoder.max_side
        self.pixels = 0
        self.bits = 0.0

    def process(self, frame: Any) -> Outcome:
        image = self.enc.prepare(check_frame(frame.image, self.max_side))
        height, width = image.shape[:2]
        latent = self.enc.latent(image)
        t0 = time.perf_counter()
        rec = self.enc.record(latent, height, width)
        entropy_ms = (time.perf_counter() - t0) * 1000
        bpp = bits_per_pixel(rec)
        self.pixels += height * width
        self.bits += bpp * height * width
        out = Outcome(record=rec, event={"bytes": len(rec.payload), "bpp": round(bpp, 4)},
                      stages={"entropy": entropy_ms})  # fmt: skip
        if self.dec is not None:
            decoded = self.dec.reconstruct(latent, height, width)
            out.image = decoded
            if self.annotate:
                view = as_bgr(decoded, copy=True)
                cv2.putText(view, f"{bpp:.3f} bpp", (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 255, 0), 2)
                out.view = view
        return out

    def summary(self) -> dict[str, Any]:
        return {"bpp_mean": round(self.bits / self.pixels, 5) if self.pixels else None,
                "providers": list(self.enc.graph.providers)}  # fmt: skip


class DecompressTask:
    """The frame loop's decompress task: a record (``frame.record``) -> ``Outcome(image=decoded frame)``."""

    kind = "decompress"

    def __init__(self, decoder: Decoder):
        self.dec = decoder

    def process(self, frame: Any) -> Outcome:
        t0 = time.perf_counter()
        latent = self.dec.latent(frame.record)
        entropy_ms = (time.perf_counter() - t0) * 1000
        image = self.dec.reconstruct(latent, int(frame.record.height), int(frame.record.width))
        return Outcome(image=image, stages={"entropy": entropy_ms})

    def summary(self) -> dict[str, Any]:
        return {"providers": list(self.dec.graph.providers)}
