"""What each command does, as one call of the frame loop: open the source, build the task and the sinks, run
:func:`edge_runtime.pipeline.run_loop`, report.

The functions here are what the CLI, the benchmarks and the demo call; each returns a stats dict and raises an
:class:`~edge_runtime.errors.EdgeAEError` (its exit code) after the outputs were finalised when frames were
skipped (:func:`edge_runtime.pipeline.skipped_summary`).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_runtime.errors import BadDataError, UsageError
from edge_runtime.outputs import (
    EventsSink,
    FolderSink,
    ImageSink,
    StatusSink,
    StreamSink,
    VideoSink,
    ViewSink,
    WindowSink,
    check_output,
    loop_metrics,
    output_kind,
    write_json,
)
from edge_runtime.pipeline import LoopResult, Route, run_loop, skipped_summary
from edge_runtime.progress import Progress
from edge_runtime.sources import ImageSource, open_source


def _inputs(spec: Any, src: Any = None) -> list[Any]:
    """Paths a run reads, for the same-inode check of its outputs: the input itself and, for a folder or glob,
    its image files."""
    paths: list[Any] = []
    if isinstance(spec, (str, os.PathLike)) and os.path.exists(spec):
        paths.append(spec)
    paths.extend(getattr(src, "files", []) or [])
    return paths


def frame_sink(output: str | os.PathLike, fps: float, inputs: list[Any]) -> Any:
    """The sink for a frame output by its extension: an image, a video or a folder (checked first)."""
    kind = output_kind(output)
    check_output(output, "folder" if kind == "folder" else "file", inputs)
    if kind == "image":
        return ImageSink(output)
    if kind == "video":
        return VideoSink(output, fps=fps or 25.0)
    return FolderSink(output)


def events_sink(path: str | os.PathLike, inputs: list[Any]) -> EventsSink:
    check_output(path, "file", inputs)
    return EventsSink(path)


def _total(src: Any) -> int | None:
    files = getattr(src, "files", None)
    if files:
        return len(files)
    return getattr(src.stats, "frames_expected", None)


def _progress(label: str, src: Any, enabled: bool) -> Progress:
    return Progress(label, _total(src), enabled=enabled)


def _base_stats(res: LoopResult, src: Any) -> dict[str, Any]:
    s = src.stats
    return {"frames_in": s.frames_read, "frames_processed": res.frames, "frames_skipped": res.skipped,
            "frames_bad": s.frames_bad + res.skipped, "bad_files": list(s.bad_files),
            "frames_dropped": s.frames_dropped, "reconnects": s.reconnects, "truncated": bool(s.truncated),
            "frames_expected": s.frames_expected, "fps": res.fps(), "elapsed_s": res.elapsed_s,
            "stages": res.clock.summary(), "interrupted": res.interrupted, "exit_code": res.exit_code,
            "note": getattr(s, "note", "")}  # fmt: skip


def _finish(res: LoopResult, src: Any, stats: dict[str, Any], where: str) -> dict[str, Any]:
    """Raise what the run must report (after its outputs were finalised), else return the stats.

    An interruption is re-raised as KeyboardInterrupt by the caller (the CLI maps it to 130/143/129); a lost
    source is raised (exit 5); frames skipped or unreadable, or a truncated video: BadDataError (3) with the
    stats attached as ``err.stats``."""
    if res.lost is not None:
        res.lost.stats = stats  # type: ignore[attr-defined]
        raise res.lost
    if res.interrupted:
        return stats
    if src.live and res.frames:
        return stats  # a live run reports its skipped frames in the stats; it never fails on them
    problem = skipped_summary(res, src.stats, where)
    if problem is None and res.frames == 0:
        problem = f"{where}: no frame could be read; nothing written"
    if problem is not None:
        stats["error"] = problem
        err = BadDataError(problem)
        err.stats = stats  # type: ignore[attr-defined]
        raise err
    return stats


def _runtime_kw(precision: str, device: str, threads: int | None, allow_fallback: bool) -> dict[str, Any]:
    return {"precision": precision, "device": device, "threads": threads, "allow_fallback": allow_fallback}


# ---------------------------------------------------------------------------------------------------------------
# denoise


def denoise_source(model: Any, input_spec: Any, output: Any, *, tile: int = 1024, precision: str = "fp32",
                   device: str = "cpu", allow_fallback: bool = False, threads: int | None = None,
                   progress: bool = False) -> dict:  # fmt: skip
    """Denoise every frame of ``input_spec`` (image, folder, glob, video) into ``output`` (image, folder, video).

    Returns statistics. Unreadable images and refused frames are skipped and counted; the outputs of the good
    frames are written, then BadDataError (exit 3) says how many (``err.stats`` holds the stats).
    """
    from edge_runtime.denoise import Denoiser, DenoiseTask

    task = DenoiseTask(Denoiser(model, precision, device, threads, allow_fallback, tile))
    src = open_source(input_spec)
    try:
        sink = frame_sink(output, src.fps, _inputs(input_spec, src))
    except BaseException:
        src.close()
        raise
    bar = _progress(f"denoise {Path(str(output)).name}", src, progress)
    start = {"task": "denoise", "model": str(model), "source": src.description}
    res = run_loop(src, task, [Route(sink, "image")], progress=bar, start=start, keep_on_stop=False)
    stats = {**_base_stats(res, src), "output": str(output), **task.summary()}
    return _finish(res, src, stats, str(input_spec))


# ---------------------------------------------------------------------------------------------------------------
# score


def score_source(model: Any, input_spec: Any, output: Any = None, *, events_path: Any = None,
                 precision: str = "fp32", device: str = "cpu", threads: int | None = None,
                 allow_fallback: bool = False, progress: Any = None, hysteresis: Any = None) -> dict:  # fmt: skip
    """Score every frame of ``input_spec`` (image, folder, glob, video, camera, URL) for anomalies.

    ``output``: overlays as a video, a folder of images or one image. ``events_path``: the events log
    (docs/events.md). Streams (video, cameras) are smoothed with hysteresis; a folder of images is scored image by
    image. Skipped frames: outputs written, then BadDataError (3) with the count (``err.stats``).
    """
    from edge_runtime.anomaly import AnomalyScorer, ScoreTask

    scorer = AnomalyScorer(model, **_runtime_kw(precision, device, threads, allow_fallback))
    src = open_source(input_spec)
    try:
        inputs = _inputs(input_spec, src)
        routes = [Route(frame_sink(output, src.fps, inputs), "image")] if output is not None else []
        if events_path is not None:
            routes.append(Route(events_sink(events_path, inputs), "event"))
    except BaseException:
        src.close()
        raise
    task = ScoreTask(scorer, smooth=not isinstance(src, ImageSource), annotate=output is not None,
                     hysteresis=hysteresis)  # fmt: skip
    start = {"task": "anomaly", "model": str(model), "source": src.description, "threshold": scorer.threshold}
    res = run_loop(src, task, routes, progress=_progress("score", src, bool(progress)), start=start,
                   keep_on_stop=False)  # fmt: skip
    stats = {**_base_stats(res, src), **task.summary(), "output": str(output) if output is not None else None,
             "events": str(events_path) if events_path is not None else None}  # fmt: skip
    stats["frames_error"] = res.skipped
    return _finish(res, src, stats, str(input_spec))


# ---------------------------------------------------------------------------------------------------------------
# compress / decompress


def compress(model: Any, input_spec: Any, output_path: Any, *, quality: int | None = None, precision: str = "fp32",
             device: str = "cpu", threads: int | None = None, allow_fallback: bool = False,
             progress: bool = True) -> dict:  # fmt: skip
    """Compress an image, a folder or glob of images, or a video file into one ``.eae`` stream (staged, renamed
    into place when complete; an existing file is replaced only then). Skipped frames: the stream holds the good
    ones, then BadDataError (3) with the count."""
    from edge_runtime.codec import CompressTask, Encoder, resolve_compress_model

    bundle = resolve_compress_model(model, quality)
    encoder = Encoder(bundle, **_runtime_kw(precision, device, threads, allow_fallback))
    src = open_source(os.fspath(input_spec))
    try:
        if src.live:
            raise UsageError(f"{src.description}: compress takes images, folders and video files, not live sources")
        check_output(output_path, "file", _inputs(input_spec, src))
        sink = StreamSink(output_path, encoder.model_id, encoder.quality)
    except BaseException:
        src.close()
        raise
    task = CompressTask(encoder)
    bar = _progress(f"compress {Path(output_path).name}", src, progress)
    start = {"task": "compress", "model": str(bundle.root), "source": src.description}
    res = run_loop(src, task, [Route(sink, "record")], progress=bar, start=start, keep_on_stop=False)
    stats = {**_base_stats(res, src), "input": os.fspath(input_spec), "output": str(output_path),
             "model": str(bundle.root), "model_id": encoder.model_id.hex(), "quality": encoder.quality,
             "precision": encoder.precision, "channels": encoder.channels, "pad_multiple": encoder.multiple,
             "frames": res.frames, **task.summary()}  # fmt: skip
    if res.frames and not res.interrupted and os.path.exists(output_path):
        stats["bytes"] = os.stat(output_path).st_size
        stats["bpp"] = round(8.0 * stats["bytes"] / task.pixels, 5)
    stats["ms"] = {k: round(v["mean_ms"], 3) for k, v in stats["stages"].items()}
    return _finish(res, src, stats, os.fspath(input_spec))


@dataclass(frozen=True)
class _DecodePlan:
    data: bytes
    header: Any
    indices: list[int]
    sizes: list[tuple[int, int, int]]


def _plan_decode(stream_path: Any, frame: int | None, kind: str) -> _DecodePlan:
    """Read and check the whole stream (every record's CRC) and what to decode, before any output exists."""
    from edge_runtime.bitstream import iter_frames, read_header
    from edge_runtime.codec import read_stream_file

    where = str(stream_path)
    data = read_stream_file(stream_path)
    header = read_header(data)
    if frame is not None:
        if isinstance(frame, bool) or not isinstance(frame, int):
            raise UsageError(f"frame must be an integer, got {frame!r}")
        if not 0 <= frame < header.frame_count:
            raise UsageError(f"{where}: frame {frame} out of range: the stream has {header.frame_count} frames")
        indices = [int(frame)]
    else:
        indices = list(range(header.frame_count))
    all_sizes = [(r.height, r.width, r.channels) for r in iter_frames(data)]
    if not indices:
        raise BadDataError(f"{where}: the stream holds no frames; nothing to write")
    sizes = [all_sizes[i] for i in indices]
    if kind == "image" and len(indices) > 1:
        raise UsageError(f"{where}: {len(indices)} frames do not fit one image; write a folder or a video, "
                         "or pick a frame")  # fmt: skip
    if kind == "video" and len({s[:2] for s in sizes}) > 1:
        raise UsageError(f"{where}: frames of different sizes cannot form a video; write a folder instead")
    return _DecodePlan(data, header, indices, sizes)


def decompress(stream_path: Any, output: Any, *, model: Any = None, models_dir: Any = "models",
               precision: str = "fp32", device: str = "cpu", threads: int | None = None,
               allow_fallback: bool = False, frame: int | None = None, fps: float = 25.0,
               progress: bool = True) -> dict:  # fmt: skip
    """Decode a ``.eae`` file to an image, a folder of ``frame_000000.png`` ... or a video at ``fps``.

    The whole stream is checked before any output exists, and the output appears only complete: a bad stream
    leaves nothing behind. See docs/bitstream.md.
    """
    from edge_runtime.bitstream import check_model_id
    from edge_runtime.codec import DecompressTask, decoder_for_stream
    from edge_runtime.streamsource import StreamSource

    kind = output_kind(output)
    check_output(output, "folder" if kind == "folder" else "file", [stream_path])
    if kind == "video" and not (isinstance(fps, (int, float)) and not isinstance(fps, bool) and 0 < fps <= 1000):
        raise UsageError(f"fps must be a number in (0, 1000], got {fps!r}")
    plan = _plan_decode(stream_path, frame, kind)
    where = str(stream_path)
    decoder = decoder_for_stream(plan.header, where, model, models_dir,
                                 **_runtime_kw(precision, device, threads, allow_fallback))  # fmt: skip
    check_model_id(plan.header, decoder.model_id, where)
    for i, (height, width, channels) in zip(plan.indices, plan.sizes, strict=True):  # before any output exists
        try:
            decoder._check_sides(height, width, "stream frame")
            if channels != decoder.channels:
                raise BadDataError(f"stream frame has {channels} channels, the model decodes {decoder.channels}")
        except BadDataError as exc:
            raise BadDataError(f"{where}: frame {i}: {exc}") from None
    src = StreamSource(plan.data, plan.indices, where, fps=float(fps))
    sink = frame_sink(output, float(fps), [stream_path])
    res = run_loop(src, DecompressTask(decoder), [Route(sink, "image")], keep_on_stop=False,
                   progress=Progress(f"decompress {Path(str(output)).name}", len(plan.indices), enabled=progress),
                   start={"task": "decompress", "model": str(decoder.bundle.root), "source": where})  # fmt: skip
    video_size = None
    if kind == "video":
        h, w = plan.sizes[0][:2]
        video_size = (w + w % 2, h + h % 2)
    stats = {**_base_stats(res, src), "stream": where, "output": str(output), "kind": kind, "frames": res.frames,
             "bytes_in": len(plan.data), "model": str(decoder.bundle.root), "model_id": plan.header.model_id.hex(),
             "quality": plan.header.quality, "precision": decoder.precision, "video_size": video_size}  # fmt: skip
    stats["ms"] = {k: round(v["mean_ms"], 3) for k, v in stats["stages"].items()}
    return _finish(res, src, stats, where)


# ---------------------------------------------------------------------------------------------------------------
# run: the live loop with a window, the MJPEG view, a recording and events


@dataclass(frozen=True)
class RunOptions:
    model: str
    source: str
    show: bool = False
    serve: str | None = None
    token: str | None = None
    insecure: bool = False
    record: str | None = None
    events: str | None = None
    stats: str | None = None
    max_frames: int | None = None
    open_timeout: float = 5.0
    read_timeout: float = 5.0
    reconnects: int = 5
    precision: str = "fp32"
    device: str = "cpu"
    allow_fallback: bool = False
    threads: int | None = None
    annotate: bool = True
    adapt: bool = False
    clips: str | None = None  # a folder: event clips with pre-roll and snapshots (edge_runtime.clips)
    pre_roll: float = 5.0
    post_roll: float = 5.0
    clips_max_mb: float = 500.0


def gui_available() -> bool:
    """True when this OpenCV build has a GUI backend (opencv-python-headless has none)."""
    import cv2

    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GUI:"):
            return "NONE" not in line.upper()
    return False


def parse_host_port(spec: str) -> tuple[str, int]:
    host, sep, port = spec.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", spec
    host = host.strip("[]") or "127.0.0.1"
    try:
        p = int(port)
    except ValueError:
        raise UsageError(f"--serve {spec}: expected HOST:PORT or PORT") from None
    if not 0 <= p <= 65535:
        raise UsageError(f"--serve {spec}: port out of range")
    return host, p


def build_task(bundle: Any, opts: RunOptions, *, smooth: bool = True) -> Any:
    """The task of a bundle for ``edgeae run`` (anything a live view can show)."""
    kw = _runtime_kw(opts.precision, opts.device, opts.threads, opts.allow_fallback)
    if opts.adapt and bundle.task != "anomaly":
        raise UsageError(f"{opts.model}: --adapt is for anomaly models; this is a {bundle.task} model")
    if bundle.task == "denoise":
        from edge_runtime.denoise import Denoiser, DenoiseTask

        return DenoiseTask(Denoiser(bundle, **kw))
    if bundle.task == "anomaly":
        from edge_runtime.anomaly import AnomalyScorer, ScoreTask

        scorer = AnomalyScorer(bundle, **kw)
        adapter = None
        if opts.adapt:
            from edge_runtime.adapt import Adapter

            if scorer.stats is None:
                raise UsageError(f"{opts.model}: --adapt needs a model calibrated on this camera (edgeae calibrate)")
            adapter = Adapter(scorer.stats)
        # The overlay costs ~5 % of a frame's time: drawn only when something shows or records it.
        shown = bool(opts.record or opts.serve or opts.show or opts.clips)
        return ScoreTask(scorer, smooth=smooth, annotate=opts.annotate and shown, adapter=adapter)
    if bundle.task == "compress":
        from edge_runtime.codec import CompressTask, Decoder, Encoder

        return CompressTask(Encoder(bundle, **kw), Decoder(bundle, **kw), annotate=opts.annotate)
    raise UsageError(f"{opts.model}: task {bundle.task!r} cannot run live")  # pragma: no cover


def _run_routes(opts: RunOptions, src: Any) -> list[Route]:
    inputs = _inputs(opts.source, src)
    for path in (opts.record, opts.events, opts.stats):
        if path:
            check_output(path, "file", inputs)
    routes: list[Route] = []
    try:
        if opts.record:
            routes.append(Route(VideoSink(opts.record, fps=src.fps or 25.0), "view"))
        events = EventsSink(opts.events) if opts.events else None
        if opts.clips:
            routes.extend(clip_routes(opts.clips, "default", opts, emit=events.write if events else None))
        if events is not None:  # after the clip recorder: its last line comes before the log closes
            routes.append(Route(events, "event"))
        if opts.serve:
            from edge_runtime.serve import ViewServer

            host, port = parse_host_port(opts.serve)
            server = ViewServer(host, port, token=opts.token, insecure=opts.insecure)
            server.start()
            for url in server.urls():
                print(f"edgeae: view page: {url}", file=sys.stderr, flush=True)
            routes.append(Route(ViewSink(server), "view"))
            routes.append(Route(StatusSink(server), "event"))
        if opts.show:
            routes.append(Route(WindowSink(), "view"))
    except BaseException:
        for r in routes:
            r.sink.abort()
        raise
    return routes


def clip_routes(folder: str, camera: str, opts: Any, emit: Any = None) -> list[Route]:
    """The routes of one camera's event clips (:class:`edge_runtime.clips.ClipRecorder`): alarms in, frames in."""
    from edge_runtime.clips import ClipRecorder

    rec = ClipRecorder(folder, camera, pre_s=opts.pre_roll, post_s=opts.post_roll,
                       max_bytes=int(opts.clips_max_mb * 1024 * 1024), emit=emit)  # fmt: skip
    return [Route(rec.events(), "event"), Route(rec.frames(), "view")]


def run_pipeline(opts: RunOptions, on_frame: Any = None) -> dict:
    """``edgeae run``: until the source ends, ``max_frames``, Ctrl-C/SIGTERM/SIGHUP or a lost source.

    Every output is finalised on each of those ends. ``stats["interrupted"]`` is True after a stop signal
    (``stats["exit_code"]``: 130/143/129); a lost source raises SourceLostError (exit 5) after the outputs and
    ``opts.stats`` were written. ``on_frame(n)`` is called after each processed frame.
    """
    from edge_runtime.model import load_bundle

    if opts.show and not gui_available():
        raise UsageError("--show: this OpenCV build has no GUI support (opencv-python-headless); use --serve")
    bundle = load_bundle(opts.model, hash_graphs=False)  # each graph the task opens is hashed as it is read
    return run_task(opts, bundle, build_task(bundle, opts), on_frame)


def run_task(opts: RunOptions, bundle: Any, task: Any, on_frame: Any = None) -> dict:
    """:func:`run_pipeline` with the bundle loaded and its task built already (:func:`build_task`): a caller that
    runs several times keeps the task's warm sessions (``benchmarks.latency.pipeline_vs_session`` alternates
    ``edgeae run`` with bare ``session.run`` on the same sessions). ``opts.model`` only names the model here."""
    # The model's limit goes to the source, so a camera that sends one huge picture costs a dropped frame before
    # it is converted (RELIABILITY 34); files keep the default cap and the task reports a frame it cannot take.
    src = open_source(opts.source, open_timeout=opts.open_timeout, read_timeout=opts.read_timeout,
                      stale_after=max(opts.read_timeout, 1.0), max_reconnects=opts.reconnects,
                      max_side=task.max_side)  # fmt: skip
    try:
        routes = _run_routes(opts, src)
    except BaseException:
        src.close()
        raise
    if hasattr(task, "hyst") and isinstance(src, ImageSource):
        task.hyst = None  # a folder of unrelated images: no smoothing across them
    start = {"task": bundle.task, "model": str(opts.model), "source": src.description}
    res = LoopResult()
    for route in routes:
        if isinstance(route.sink, ViewSink):
            route.sink.server.set_metrics(lambda: {"default": loop_metrics(res, src, task)})
    res = run_loop(src, task, routes, max_frames=opts.max_frames, on_frame=on_frame, start=start, result=res,
                   progress=Progress("run", None, enabled=sys.stderr.isatty()))  # fmt: skip
    stats = {"model": str(opts.model), "task": bundle.task, "source": src.description, **_base_stats(res, src),
             **task.summary()}  # fmt: skip
    if opts.record:
        stats["record"] = str(Path(opts.record))
    try:
        return _finish(res, src, stats, str(opts.source))
    finally:  # also when the source was lost or frames were skipped: the stats say what happened
        if opts.stats:
            write_json(opts.stats, stats)


# ---------------------------------------------------------------------------------------------------------------
# embed / similar


def embed_source(model: Any, input_spec: Any, out_npy: Any, *, grid: int = 1, normalize: bool = False,
                 plot: Any = None, precision: str = "fp32", device: str = "cpu", threads: int | None = None,
                 allow_fallback: bool = False, max_frames: int | None = None, thumbnails: int = 200,
                 progress: bool = False) -> dict[str, Any]:  # fmt: skip
    """Embed every frame of ``input_spec`` (image, folder, glob, video, camera) into ``out_npy`` and its index.

    Writes ``OUT.npy`` (float32 (N, D)) and ``OUT.index.jsonl`` atomically, and with ``plot`` a PCA map with up
    to ``thumbnails`` thumbnails (:class:`~edge_runtime.outputs.EmbeddingsSink`). Unreadable images are skipped
    and counted: the others are written, then BadDataError (3) with the count. UsageError (2) for a bad output
    name, grid or plot type.
    """
    from edge_runtime.embed import Embedder, EmbedTask
    from edge_runtime.outputs import EmbeddingsSink

    if max_frames is not None and (isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames < 1):
        raise UsageError(f"max_frames must be an integer >= 1, got {max_frames!r}")
    embedder = Embedder(model, precision, device, threads, allow_fallback, grid=grid, normalize=normalize)
    name = Path(str(input_spec)).name or str(input_spec)
    title = f"{name}: model {embedder.model_id}, {embedder.output} grid {embedder.grid}"
    sink = EmbeddingsSink(out_npy, {}, plot=plot, thumbnails=thumbnails, title=title)
    src = open_source(input_spec)
    try:
        for path in (sink.path, sink.plot):
            if path is not None:
                check_output(path, "file", _inputs(input_spec, src))
        sink.header = {**embedder.header(), "source": src.description}
    except BaseException:
        src.close()
        raise
    routes = [Route(sink, "vector")] + ([Route(sink.thumbnails(), "image")] if plot is not None else [])
    task = EmbedTask(embedder, keep_frames=plot is not None)
    res = run_loop(src, task, routes, max_frames=max_frames, keep_on_stop=False,
                   progress=_progress(f"embed {Path(str(out_npy)).name}", src, progress),
                   start={"task": "embed", "model": str(model), "source": src.description})  # fmt: skip
    from edge_runtime.embed_index import index_path

    stats = {**_base_stats(res, src), **task.summary(), "frames": res.frames, "output": str(sink.path),
             "index": str(index_path(sink.path))}  # fmt: skip
    if sink.plot is not None:
        stats["plot"] = str(sink.plot)
        stats["explained_variance"] = sink.explained
    return _finish(res, src, stats, str(input_spec))


def _parse_row(query: str) -> int | None:
    text = query.strip()
    if text.lstrip("+-").isdigit() and not os.path.lexists(query):
        return int(text)
    return None


def _query_vector(path: Path, embedder: Any) -> Any:
    """The embedding of one query image (read with the sources' header checks)."""
    from edge_runtime.sources import IMAGE_EXTENSIONS

    if not os.path.lexists(path):
        raise BadDataError(f"{path}: no such file")
    if not path.is_file() or path.suffix.lower() not in IMAGE_EXTENSIONS:
        raise UsageError(f"--query {path}: expected an image file or a row number")
    with open_source(path) as src:
        frame = next(iter(src), None)
        if frame is None:
            raise BadDataError(f"{path}: {src.stats.last_error or 'could not be read'}")
    return embedder.embed(frame.image)


def similar_frames(out_npy: Any, query: Any, k: int = 5, *, model: Any = None, precision: str = "fp32",
                   device: str = "cpu", threads: int | None = None,
                   allow_fallback: bool = False) -> dict[str, Any]:  # fmt: skip
    """The ``k`` rows of an embed output closest to ``query`` (a row number, or an image embedded with ``model``).

    Returns ``{"query": {...}, "neighbours": [{"rank", "row", "similarity", **index entry}, ...]}``; a row
    query leaves the row itself out. UsageError (2): k < 1, row out of range, an image query without
    ``model``; ModelRejectedError (4): ``model`` is not the model the embeddings were made with (its id
    differs); BadDataError (3): missing or corrupt files.
    """
    from edge_runtime.embed import Embedder
    from edge_runtime.embed_index import check_k, cosine_knn, load_embeddings
    from edge_runtime.errors import ModelRejectedError

    k = check_k(k)
    matrix, header, entries = load_embeddings(out_npy)
    row = query if isinstance(query, int) and not isinstance(query, bool) else _parse_row(str(query))
    if row is not None:
        if not 0 <= row < len(matrix):
            raise UsageError(f"--query row {row} is out of range: {out_npy} holds rows 0 to {len(matrix) - 1}")
        hits = cosine_knn(matrix, matrix[row], k, exclude=row)
        query_info: dict[str, Any] = {"row": row, **{k_: v for k_, v in entries[row].items() if k_ != "row"}}
    else:
        path = Path(str(query))
        if not os.path.lexists(path):
            raise BadDataError(f"{path}: no such file")
        if model is None:
            raise UsageError("--query is an image: pass --model, the model the embeddings were made with")
        embedder = Embedder(model, precision, device, threads, allow_fallback, grid=header["grid"],
                            normalize=header["normalize"])  # fmt: skip
        if embedder.model_id != header.get("model_id"):
            raise ModelRejectedError(
                f"{model}: model id {embedder.model_id}, but {out_npy} was made with model {header.get('model_id')}"
                " (vectors of different models are not comparable)"
            )
        hits = cosine_knn(matrix, _query_vector(path, embedder), k)
        query_info = {"image": str(query)}
    neighbours = [{"rank": i + 1, "row": r, "similarity": s, **{k_: v for k_, v in entries[r].items() if k_ != "row"}}
                  for i, (r, s) in enumerate(hits)]  # fmt: skip
    return {"query": query_info, "neighbours": neighbours}


# ---------------------------------------------------------------------------------------------------------------
# calibrate

LIVE_CALIBRATION_S = 60.0  # a camera's default span: minutes are better on a busy scene (--duration)


def calibration_span(src: Any, n: int, duration: float | None, every: float | None) -> tuple[float, float | None]:
    """``(every, duration)`` in the source's seconds: a video file's whole length by default, 60 s of a live
    source, all images of a folder; ``every`` defaults to the span divided by ``n``."""
    if duration is None and not src.live and src.fps and src.stats.frames_expected:
        span = src.stats.frames_expected / src.fps
    elif duration is None and src.live:
        span = LIVE_CALIBRATION_S
    else:
        span = duration
    if every is None:
        every = span / n if span else 0.0
        if isinstance(src, ImageSource):
            every = max(1.0, len(src.files) / n) if len(src.files) > n else 0.0  # image timestamps are indexes
    return float(every), duration if duration is not None else (span if src.live else None)


def calibrate_source(model: Any, source: Any, *, n: int, out: Any = None, duration: float | None = None,
                     every: float | None = None, per_location: bool | None = None, precision: str = "fp32",
                     device: str = "cpu", threads: int | None = None, allow_fallback: bool = False,
                     progress: bool = False) -> dict[str, Any]:  # fmt: skip
    """`edgeae calibrate`: ``n`` frames of ``source`` spread over its span -> :func:`edge_runtime.calibration.calibrate`
    into ``out`` (a new bundle) or, with ``out=None``, ``model`` itself. A source that ends early calibrates on
    what it gave (at least 10 frames; the summary says how many and over how long)."""
    from edge_runtime.calibration import calibrate, spread
    from edge_runtime.pipeline import stop_signals

    if out is not None:
        check_output(out, "folder", [model])
        if os.path.lexists(out):
            raise UsageError(f"{out}: exists; --out takes a new folder")
    bar = Progress("calibrate", n, enabled=progress)
    with stop_signals(), open_source(source) as src:
        step, span = calibration_span(src, n, duration, every)
        # a stream's frames come with the frame before each (the motion term); a folder's images are unrelated
        frames = spread(iter(src), n, every=step, duration=span, previous=not isinstance(src, ImageSource))
        try:
            summary = calibrate(model, frames, n=n, out=out, per_location=per_location,
                                progress=lambda done, total: bar.update(done), precision=precision, device=device,
                                threads=threads, allow_fallback=allow_fallback)  # fmt: skip
        finally:
            bar.finish()
        summary["source"] = src.description
        summary["every_s"] = round(step, 3)
    return summary
