"""The `edgeae` command line: one click group, thin commands, heavy imports inside them.

Errors reach the user as one line and an exit code (0 ok, 2 usage, 3 bad data, 4 model rejected, 5 source lost,
130 interrupted); `edgeae --debug ...` shows the traceback instead. Commands that need PyTorch (train, export)
and the benchmark/demo commands live in other packages and are loaded by name only when invoked, so the
edge install (numpy, onnxruntime, OpenCV, click) never imports them.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
import warnings
from typing import Any

import click

from edge_runtime import errors

# name -> (module, attribute, one-line help shown by `edgeae --help` without importing the module)
LAZY_COMMANDS: dict[str, tuple[str, str, str]] = {
    "train": ("training.cli", "train", "Train a denoising, compression or anomaly autoencoder (needs edgeae[train])."),
    "export": (
        "export.cli",
        "export",
        "Export a training run to an ONNX model bundle: FP32, FP16, INT8 (edgeae[train]).",
    ),
    "bench": ("benchmarks.cli", "bench", "Measure latency and quality against PyTorch, OpenCV and other runtimes."),
    "demo": ("benchmarks.demo", "demo", "Run every task on a synthetic camera video with the default models."),
}
TORCH_SIDE = {"torch", "onnx", "onnxscript", "safetensors", "onnxruntime.quantization"}
DEVICES = ["auto", "cpu", "cuda", "tensorrt", "openvino", "openvino-bf16", "coreml", "xnnpack"]
PRECISIONS = ["fp32", "fp16", "int8"]


class EdgeAEGroup(click.Group):
    """A click group that loads some commands lazily and turns edgeae errors into exit codes."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(LAZY_COMMANDS))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in LAZY_COMMANDS:
            module, attr, _ = LAZY_COMMANDS[name]
            try:
                return getattr(importlib.import_module(module), attr)
            except ModuleNotFoundError as exc:
                if _is_torch_side(exc):
                    return _missing_extra_command(name, exc)
                raise
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            if name in LAZY_COMMANDS:
                rows.append((name, LAZY_COMMANDS[name][2]))
            else:
                cmd = super().get_command(ctx, name)
                rows.append((name, cmd.get_short_help_str(80) if cmd else ""))
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        from edge_runtime.pipeline import stop_signals

        debug = bool(ctx.params.get("debug") or os.environ.get("EDGEAE_DEBUG"))
        try:
            with stop_signals(), warnings.catch_warnings():
                warnings.showwarning = _one_line_warning
                return super().invoke(ctx)
        except errors.EdgeAEError as exc:
            if debug:
                raise
            click.echo(f"edgeae: error: {_one_line(exc)}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt as exc:
            if debug:
                raise
            code = errors.stop_exit_code(exc)
            click.echo(f"edgeae: {'interrupted' if code == errors.INTERRUPTED else 'stopped by ' + str(exc)}",
                       err=True)  # fmt: skip
            ctx.exit(code)
        except OSError as exc:
            # A write that no sink turned into an OutputError yet: still one line and exit 3, naming the path.
            if debug:
                raise
            where = exc.filename or "output"
            click.echo(f"edgeae: error: {where}: {exc.strerror or exc}", err=True)
            ctx.exit(errors.BAD_DATA)
        except ModuleNotFoundError as exc:
            if debug or not _is_torch_side(exc):
                raise
            click.echo(f"edgeae: error: this command needs {exc.name}: install edgeae[train]", err=True)
            ctx.exit(errors.USAGE)


def _is_torch_side(exc: ModuleNotFoundError) -> bool:
    name = (exc.name or "").split(".")[0]
    return name in {n.split(".")[0] for n in TORCH_SIDE} or name in {"skimage", "matplotlib", "tqdm", "bm3d"}


def _one_line_warning(message: Any, category: Any, filename: str, lineno: int, file: Any = None,
                      line: Any = None) -> None:  # fmt: skip
    """Warnings as ``edgeae: warning: ...`` on one line, without Python's source line."""
    click.echo(f"edgeae: warning: {' '.join(str(message).split())}", err=True)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())


def _missing_extra_command(name: str, exc: ModuleNotFoundError) -> click.Command:
    extra = "train" if name in ("train", "export") else "bench"

    @click.command(name, context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
                   help=f"{LAZY_COMMANDS[name][2]} Not available: {exc.name} is not installed.")  # fmt: skip
    def missing() -> None:
        click.echo(f"edgeae {name}: needs {exc.name}: install edgeae[{extra}]", err=True)
        sys.exit(errors.USAGE)

    return missing


def runtime_options(f):
    """--precision/--device/--allow-fallback/--threads, shared by every command that runs a model."""
    f = click.option("--threads", type=click.IntRange(1, 256), default=None,
                     help="onnxruntime intra-op threads (default: cores - 1, one left for decoding).")(f)  # fmt: skip
    f = click.option("--allow-fallback", is_flag=True,
                     help="Run on the CPU with a warning when the requested device is unavailable "
                          "(default: refuse, exit 4).")(f)  # fmt: skip
    f = click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True,
                     help="onnxruntime execution provider. auto: try every provider installed with the bundle's "
                          "graphs, keep those whose output matches the FP32 CPU graph within the bundle's gate, run "
                          "the fastest; measured once per bundle and machine, cached, said on stderr (table: "
                          "edgeae doctor MODEL). openvino-bf16: OpenVINO with BF16 inference, for CPUs with "
                          "AVX512_BF16 or AMX.")(f)  # fmt: skip
    f = click.option("--precision", type=click.Choice(["auto", *PRECISIONS]), default="auto", show_default=True,
                     help="Which graph of the bundle to run (int8: CPUs, fp16: GPUs). auto: chosen with "
                          "--device auto among the graphs the export gate passed; fp32 with an explicit --device. "
                          "A precision named under --device auto limits the choice to it.")(f)  # fmt: skip
    return f


def _print_stats(stats: dict, stats_path: str | None) -> None:
    """The run's counters and per-stage latency table; the whole stats as JSON to ``stats_path``. A run that was
    stopped by a signal ends with its exit code (130/143/129) after this."""
    from edge_runtime.stats import format_stats

    click.echo(format_stats(stats))
    if stats_path:
        from edge_runtime.outputs import write_json

        write_json(stats_path, stats)
    if stats.get("interrupted"):
        raise _Interrupted(stats.get("exit_code") or errors.INTERRUPTED)


def _print_summary(stats: dict) -> None:
    """One JSON line of the scalar stats (what scripts parse); a stopped run then exits with its code."""
    click.echo(json.dumps({k: v for k, v in stats.items() if not isinstance(v, (list, dict))}, default=float))
    if stats.get("interrupted"):
        raise _Interrupted(stats.get("exit_code") or errors.INTERRUPTED)


class _Interrupted(KeyboardInterrupt):
    """A run that ended on a stop signal after finalising its outputs: exit with that signal's code."""

    def __init__(self, exit_code: int):
        super().__init__("stopped")
        self.exit_code = exit_code


@contextlib.contextmanager
def _reporting(stats_path: str | None, summary: bool = False):
    """Print what a run did (its stats attached to the error) before its one-line error."""
    try:
        yield
    except errors.EdgeAEError as exc:
        stats = getattr(exc, "stats", None)
        if isinstance(stats, dict):
            if summary:
                click.echo(json.dumps({k: v for k, v in stats.items() if not isinstance(v, (list, dict))},
                                      default=float))  # fmt: skip
            else:
                from edge_runtime.stats import format_stats

                click.echo(format_stats(stats))
                if stats_path:
                    from edge_runtime.outputs import write_json

                    write_json(stats_path, stats)
        raise


@click.group(cls=EdgeAEGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.version_option(package_name="edgeae", message="edgeae %(version)s")
def cli(debug: bool) -> None:
    """edgeae: convolutional autoencoders on edge devices.

    \b
    Workstation:  edgeae train -> edgeae export        (needs edgeae[train])
    Device:       edgeae denoise | score | calibrate | compress | decompress | run | doctor
    Measure:      edgeae bench, edgeae demo

    Exit codes: 0 ok, 2 usage, 3 bad or corrupt input data or an output that could not be written, 4 model
    rejected, 5 source lost, 130 interrupted (Ctrl-C), 143 SIGTERM, 129 SIGHUP (outputs finalised).
    """


@cli.command()
@click.argument("model", type=click.Path())
@click.argument("input", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(),
              help="Output image, folder or video (by extension); written atomically.")  # fmt: skip
@click.option("--tile", type=click.IntRange(64, 16384), default=1024, show_default=True,
              help="Frames larger than this are denoised in overlapping tiles, blended without seams.")  # fmt: skip
@click.option("--stats", "stats_path", type=click.Path(), default=None, help="Write timing statistics as JSON.")
@runtime_options
def denoise(model, input, output, tile, stats_path, precision, device, allow_fallback, threads):
    """Denoise images, a folder of images or a video with a denoising MODEL bundle, at full resolution.

    INPUT is an image, a folder, a glob (quoted) or a video. Corrupt images are skipped and counted; the run
    then exits 3 after writing the others. Frames whose colour differs from the model's are converted, not
    refused: colour frames to a gray model are denoised as gray (BGR->GRAY, gray output), gray frames to a
    colour model as three equal channels; the first one prints a one-line warning naming both channel counts,
    and the stats count them (frames_converted).
    """
    from edge_runtime.commands import denoise_source

    with _reporting(stats_path):
        stats = denoise_source(model, input, output, tile=tile, precision=precision, device=device,
                               allow_fallback=allow_fallback, threads=threads, progress=True)  # fmt: skip
    _print_stats(stats, stats_path)


@cli.command()
@click.argument("model", type=click.Path())
@click.argument("input", type=click.Path())
@click.option("-o", "--output", type=click.Path(), default=None,
              help="Heat-map overlay video (.mp4/.avi) or folder of images.")  # fmt: skip
@click.option("--events", type=click.Path(), default=None, help="Per-frame scores and alarms as JSONL.")
@runtime_options
def score(model, input, output, events, precision, device, allow_fallback, threads):
    """Score frames of INPUT for anomalies with an anomaly MODEL bundle.

    Prints one summary line (JSON: frames, anomalous frames, alarms, threshold, max score); --events writes one
    line per frame (docs/events.md). On a video or a camera, alarms use temporal smoothing with hysteresis so
    one noisy frame does not raise one; the images of a folder are scored each on its own. Calibrate the model
    on the scene first (`edgeae calibrate`).
    """
    from edge_runtime.commands import score_source

    with _reporting(None, summary=True):
        stats = score_source(model, input, output, events_path=events, precision=precision, device=device,
                             threads=threads, allow_fallback=allow_fallback, progress=True)  # fmt: skip
    _print_summary(stats)


@cli.command()
@click.argument("model", type=click.Path())
@click.option("--source", required=True, help="Normal frames: camera index, video, URL, image folder or glob.")
@click.option("--out", type=click.Path(), default=None,
              help="Write the calibrated model as this new bundle folder (MODEL stays as it is).")  # fmt: skip
@click.option("--in-place", is_flag=True, help="Rewrite MODEL itself instead (atomically).")
@click.option("--frames", "n", type=click.IntRange(10, 100000), default=100, show_default=True,
              help="How many normal frames to fit on, spread over the span.")  # fmt: skip
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Seconds of the source to spread the frames over (default: a whole video file; 60 s of a "
                   "camera or stream).")  # fmt: skip
@click.option("--every", type=click.FloatRange(min=0), default=None,
              help="Seconds between the frames taken (default: the span divided by --frames).")  # fmt: skip
@click.option("--per-location/--global-only", default=None,
              help="Also fit a Gaussian per feature location (adapts a generic model to a fixed camera). Default: "
                   "per location for the fixed-camera model, global only for an inspection model (any image "
                   "size).")  # fmt: skip
@runtime_options
def calibrate(model, source, out, in_place, n, duration, every, per_location, precision, device, allow_fallback,
              threads):  # fmt: skip
    """Fit the anomaly threshold and score normalisation of MODEL on normal frames of one scene, on the device.

    The frames are spread over time (a busy scene needs minutes, not seconds): the statistics are fitted on the
    first 80 % of the span and the threshold is set on the last 20 %, a stretch of time they never saw. The
    summary (JSON) reports the held-out scores by quarter and warns when the span is too short for the variation
    seen. numpy only (no PyTorch). --out writes a new bundle; --in-place rewrites MODEL atomically. A black or
    frozen camera is refused (exit 3).
    """
    from edge_runtime.commands import calibrate_source

    if (out is None) == (not in_place):
        raise errors.UsageError("calibrate: pass --out NEW_BUNDLE (MODEL stays as it is) or --in-place")
    summary = calibrate_source(model, source, n=n, out=out, duration=duration, every=every,
                               per_location=per_location, precision=precision, device=device, threads=threads,
                               allow_fallback=allow_fallback, progress=True)  # fmt: skip
    warning = summary.get("stability", {}).get("warning")
    if warning:
        click.echo(f"edgeae: warning: {warning}", err=True)
    click.echo(json.dumps(summary, default=float))


@cli.command()
@click.argument("model", type=click.Path())
@click.argument("input", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(), help="The .eae file to write (atomically).")
@click.option("--quality", type=int, default=None,
              help="Quality level: picks the bundle of that level when MODEL is a folder of bundles.")  # fmt: skip
@runtime_options
def compress(model, input, output, quality, precision, device, allow_fallback, threads):
    """Compress an image, a folder of images or a video with a learned codec into one .eae file.

    The stream names its decoder by a prefix of the decoder file's SHA-256; see docs/bitstream.md.
    """
    from edge_runtime.commands import compress as run_compress

    with _reporting(None, summary=True):
        stats = run_compress(model, input, output, quality=quality, precision=precision, device=device,
                             threads=threads, allow_fallback=allow_fallback, progress=True)  # fmt: skip
    _print_summary(stats)


@cli.command()
@click.argument("stream", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(),
              help="Image (one frame), folder of PNGs, or video (.mp4/.avi, .mkv lossless), by extension.")  # fmt: skip
@click.option("--model", type=click.Path(), default=None, help="The decoder bundle (default: look it up by id).")
@click.option("--models-dir", type=click.Path(), default="models", show_default=True,
              help="Where to look for the bundle whose decoder matches the stream's model id.")  # fmt: skip
@click.option("--frame", type=click.IntRange(0), default=None, help="Decode only this frame (by index).")
@runtime_options
def decompress(stream, output, model, models_dir, frame, precision, device, allow_fallback, threads):
    """Decode an .eae STREAM back to images or video.

    Any damage to the stream (truncation, a flipped bit, trailing bytes, another model's stream) is refused
    with exit 3 and leaves no output behind.
    """
    from edge_runtime.commands import decompress as run_decompress

    with _reporting(None, summary=True):
        stats = run_decompress(stream, output, model=model, models_dir=models_dir, precision=precision,
                               device=device, threads=threads, allow_fallback=allow_fallback, frame=frame,
                               progress=True)  # fmt: skip
    _print_summary(stats)


@cli.command()
@click.argument("model", type=click.Path(), required=False)
@click.option("--config", "config_path", type=click.Path(), default=None,
              help="Several cameras from a TOML (or JSON) file instead of MODEL and --source "
                   "(docs/cameras.md).")  # fmt: skip
@click.option("--source", default=None,
              help="Camera index (0), video file, rtsp:// or http:// URL, image, folder or glob.")  # fmt: skip
@click.option("--show", is_flag=True, help="Show the annotated frames in an OpenCV window (needs GUI support).")
@click.option("--serve", default=None, metavar="HOST:PORT",
              help="Stream annotated frames as MJPEG over HTTP (binds 127.0.0.1 unless told otherwise).")  # fmt: skip
@click.option("--token", envvar="EDGEAE_TOKEN", default=None,
              help="Access token for --serve (or EDGEAE_TOKEN); required on non-loopback addresses.")  # fmt: skip
@click.option("--insecure", is_flag=True, help="Allow --serve on a non-loopback address without a token.")
@click.option("--record", type=click.Path(), default=None, help="Record the annotated frames to a video file.")
@click.option("--events", type=click.Path(), default=None, help="Anomaly events as JSONL (anomaly models).")
@click.option("--stats", "stats_path", type=click.Path(), default=None, help="Write run statistics as JSON.")
@click.option("--max-frames", type=click.IntRange(1), default=None, help="Stop after this many frames.")
@click.option("--clips", type=click.Path(), default=None,
              help="Anomaly models: a clip of each alarm (from --pre-roll seconds before it to --post-roll after) "
                   "and a snapshot into this folder, the oldest deleted past --clips-max-mb.")  # fmt: skip
@click.option("--pre-roll", type=click.FloatRange(0, 120), default=5.0, show_default=True,
              help="Seconds of a clip before its alarm.")  # fmt: skip
@click.option("--post-roll", type=click.FloatRange(0, 600), default=5.0, show_default=True,
              help="Seconds of a clip after its alarm ends.")  # fmt: skip
@click.option("--clips-max-mb", type=click.FloatRange(1), default=500.0, show_default=True,
              help="Size cap of the clips folder.")  # fmt: skip
@click.option("--adapt", is_flag=True,
              help="Anomaly models: slowly re-calibrate on frames that are not alarming (lighting through a day), "
                   "with a cap on drift; the bundle on disk is not changed.")  # fmt: skip
@click.option("--open-timeout", type=float, default=5.0, show_default=True, help="Seconds to open a live source.")
@click.option("--read-timeout", type=float, default=5.0, show_default=True,
              help="Seconds without a new frame before a live source counts as lost and is reopened.")  # fmt: skip
@click.option("--reconnects", type=click.IntRange(0), default=5, show_default=True,
              help="Reconnect attempts (capped exponential backoff) before giving up with exit 5.")  # fmt: skip
@runtime_options
def run(model, config_path, source, show, serve, token, insecure, record, events, stats_path, max_frames, clips,
        pre_roll, post_roll, clips_max_mb, adapt, open_timeout, read_timeout, reconnects, precision, device,
        allow_fallback, threads):  # fmt: skip
    """The live loop: frames from SOURCE -> MODEL -> window, MJPEG view, recording, events.

    Live sources drop old frames (newest wins) and reconnect with backoff; files are processed frame by frame
    in order. Ctrl-C stops promptly, flushes the outputs and exits 130. At the end: frames in, processed and
    dropped, per-stage latency p50/p95/p99 and frames per second.
    """
    from edge_runtime.commands import RunOptions, run_pipeline

    if config_path is not None:
        if model or source:
            raise errors.UsageError("run --config: the cameras come from the file; drop MODEL and --source")
        _run_config(config_path)
        return
    if not model or not source:
        raise errors.UsageError("run: pass MODEL and --source SOURCE (or --config FILE for several cameras)")
    opts = RunOptions(model=model, source=source, show=show, serve=serve, token=token, insecure=insecure,
                      record=record, events=events, stats=stats_path, max_frames=max_frames, adapt=adapt,
                      clips=clips, pre_roll=pre_roll, post_roll=post_roll, clips_max_mb=clips_max_mb,
                      open_timeout=open_timeout, read_timeout=read_timeout, reconnects=reconnects,
                      precision=precision, device=device, allow_fallback=allow_fallback, threads=threads)  # fmt: skip
    with _reporting(None):
        stats = run_pipeline(opts)
    _print_stats(stats, None)


@cli.command("embed")
@click.argument("model", type=click.Path())
@click.argument("input", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(),
              help="OUT.npy: float32 (frames x dims); OUT.index.jsonl goes beside it; both atomic.")  # fmt: skip
@click.option("--grid", type=click.IntRange(1, 32), default=1, show_default=True,
              help="Pool a GxG grid of cells (C*G*G values) instead of one global average (C values).")  # fmt: skip
@click.option("--normalize", is_flag=True, help="Scale every vector to unit L2 norm.")
@click.option("--plot", type=click.Path(), default=None,
              help="Also draw a 2-D PCA map of the frames with thumbnails (.png or .jpg).")  # fmt: skip
@click.option("--thumbnails", type=click.IntRange(0, 5000), default=200, show_default=True,
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
    from edge_runtime.commands import embed_source

    with _reporting(None, summary=True):
        stats = embed_source(model, input, output, grid=grid, normalize=normalize, plot=plot, precision=precision,
                             device=device, threads=threads, allow_fallback=allow_fallback, max_frames=max_frames,
                             thumbnails=thumbnails, progress=True)  # fmt: skip
    _print_summary(stats)


@cli.command("similar")
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
    from edge_runtime.commands import similar_frames
    from edge_runtime.embed_index import describe_entry

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


@cli.command("doctor")
@click.argument("model", type=click.Path(), required=False)
@click.option("--precision", type=click.Choice(["auto", *PRECISIONS]), default="auto", show_default=True,
              help="Measure only the graphs of this precision (as --precision does under --device auto).")  # fmt: skip
@click.option("--threads", type=click.IntRange(1, 256), default=None,
              help="onnxruntime intra-op threads (default: cores - 1, as the runtime commands).")  # fmt: skip
def doctor(model, precision, threads):
    """Show the execution providers onnxruntime offers here and, for a MODEL bundle, what --device auto measures.

    For each graph of MODEL: every candidate (provider x precision) with its ms/frame, its largest difference from
    the FP32 graph on the CPU provider, the tolerance (from the bundle's precision gate) and whether it passed or
    why it was skipped; then the choice, which replaces the cached one.
    """
    from edge_runtime.autodevice import doctor as report

    click.echo(report(model, precision=precision, threads=threads))


def _run_config(path: str) -> None:
    from edge_runtime.cameras import load_config, run_cameras

    summary = run_cameras(load_config(path))
    for name, st in summary["cameras"].items():
        fps = st.get("fps")
        line = f"{name}: {st.get('frames_processed', 0)} frames" + (f", {fps:.1f} frames/s" if fps else "")
        click.echo(line + (f", {st['error']}" if st.get("error") else "") + (", lost" if st.get("lost") else ""))
    code = summary["exit_code"]
    if summary.get("error"):
        raise errors.EdgeAEError(summary["error"], code)
    if code == errors.SOURCE_LOST:
        raise errors.SourceLostError(f"{path}: every camera was lost ({', '.join(summary['cameras_lost'])})")
    if code:
        raise _Interrupted(code)


def main() -> None:
    # FFmpeg and OpenCV print decoder chatter ("overread 8", stream timeouts) that would bury the one-line errors.
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    cli(prog_name="edgeae")


if __name__ == "__main__":
    main()
