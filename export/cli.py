"""``edgeae export``: a training run -> a model bundle. Loaded lazily by edge_runtime.cli as ``export.cli:export``."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from edge_runtime.contract import DEFAULT_OPSET, EXPORT_MAX_OPSET, MIN_OPSET
from edge_runtime.errors import UsageError


def _command_line() -> str:
    """The command as typed: the program's name and the arguments after it (sys.argv)."""
    prog = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "edgeae"
    return " ".join(shlex.quote(a) for a in [prog, *sys.argv[1:]])


@click.command("export")
@click.argument("run_dir", type=click.Path(file_okay=False, dir_okay=True, exists=True))
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, dir_okay=True),
    help="Bundle directory to write (created; an existing bundle there is replaced only once the new one is complete).",
)
@click.option(
    "--int8",
    is_flag=True,
    help="Also write static INT8 (QDQ) graphs of the conv core, calibrated on real frames, where they pass "
    "the precision gate.",
)
@click.option(
    "--fp16",
    is_flag=True,
    help="Also write FP16 graphs (float16 inside, uint8/int32 I/O unchanged; meant for GPUs, slow on most "
    "CPUs) where they pass the gate.",
)
@click.option(
    "--calib",
    type=click.Path(exists=True),
    help="Image folder, image or video whose frames calibrate INT8 activation ranges "
    "(default: the training split of the run's own training data).",
)
@click.option(
    "--calib-method",
    type=click.Choice(["minmax", "entropy", "percentile"]),
    default="minmax",
    show_default=True,
    help="How activation ranges are chosen from the calibration frames.",
)
@click.option(
    "--opset",
    type=click.IntRange(MIN_OPSET, EXPORT_MAX_OPSET),
    default=DEFAULT_OPSET,
    show_default=True,
    help="ONNX opset of the written graphs.",
)
@click.option(
    "--force",
    is_flag=True,
    help='Write INT8/FP16 graphs even when they exceed the gate\'s budget (marked "gate": "forced" in manifest.json).',
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="onnxruntime CPU threads for the gate and the timing table [default: all cores].",
)
@click.option("--quiet", is_flag=True, help="Print nothing but errors.")
def export(run_dir, out_dir, int8, fp16, calib, calib_method, opset, force, threads, quiet):
    """Export training run RUN_DIR (config.json + best.safetensors) to a model bundle (docs/bundle.md).

    Always writes the FP32 graph(s) - denoise, anomaly, or encoder + decoder with entropy.json for compression -
    taking uint8 frames as OpenCV delivers them, with their metadata and manifest.json.

    With --int8/--fp16 each extra precision is measured against FP32 on the run's validation images (never used
    for calibration), for denoising also on every 8th image of the calibration source (held out of calibration),
    and written only within budget on each set: denoise PSNR drop <= 0.3 dB, compression rate increase at
    equal PSNR <= 3 %, anomaly image-AUROC drop <= 0.01 and held-out normal scores moved <= 0.15 sd. A table of
    the metric, its change and the milliseconds per 640x480 frame (onnxruntime CPU) is printed, and kept in
    manifest.json.

    Exit codes: 0 done (an INT8/FP16 graph refused by the gate is reported, not an error), 2 bad usage,
    3 unreadable data, 4 a run or graph that fails its checks.
    """
    from export.bundle import export_run

    if force and not (int8 or fp16):
        raise UsageError("--force only applies with --int8 or --fp16")
    path = export_run(run_dir, out_dir, fp16=fp16, int8=int8, calib=calib, calib_method=calib_method, opset=opset,
                      force=force, command=_command_line(), progress=not quiet, threads=threads)  # fmt: skip
    if not quiet:
        click.echo(str(path))


if __name__ == "__main__":  # pragma: no cover
    export()
