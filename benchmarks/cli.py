"""`edgeae bench`: latency, compute efficiency and quality of the model bundles, side by side with PyTorch eager,
native OpenVINO and OpenCV's classical methods, in one stamped run.

The click command ``bench`` only parses its options into a :class:`~benchmarks.config.BenchConfig`, calls
:func:`benchmarks.run.run_bench` (the measurements) and :func:`benchmarks.bench_report.write_outputs` (goals,
tables, plots, results.json, README.md), and prints the goals.
"""

from __future__ import annotations

from typing import Any

import click

from benchmarks.bench_report import build_report, write_outputs
from benchmarks.config import BenchConfig
from benchmarks.goals import compute_goals
from benchmarks.run import Progress, run_bench
from edge_runtime.errors import UsageError

# The library API of a bench run, importable from here as before the split (benchmarks.gpu_check uses it).
__all__ = ["BenchConfig", "Progress", "bench", "build_report", "compute_goals", "run_bench", "write_outputs"]


def _csv(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    return tuple(p.strip() for p in text.split(",") if p.strip())


def _ints(text: str | None, what: str) -> tuple[int, ...] | None:
    parts = _csv(text)
    if parts is None:
        return None
    try:
        return tuple(int(p) for p in parts)
    except ValueError:
        raise UsageError(f"{what}: expected comma-separated integers, got {text!r}") from None


@click.command("bench", context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--models",
    "models",
    default="models",
    show_default=True,
    type=click.Path(),
    help="Folder of model bundles (or one bundle).",
)
@click.option("--only", default=None, help="Comma-separated bundle names to measure (default: all under --models).")
@click.option("--precisions", default=None, help="Comma-separated precisions [default: fp32,fp16,int8, those present].")
@click.option(
    "--resolutions",
    default=None,
    help="Comma-separated WxH [default: 256x256,640x480,1280x720,1920x1080; --quick: 256x256].",
)
@click.option("--batch", "batches", default=None, help="Comma-separated batch sizes [default: 1,4; --quick: 1,2].")
@click.option(
    "--threads",
    type=click.IntRange(1, 256),
    default=None,
    help="Intra-op threads for onnxruntime, PyTorch and OpenVINO alike [default: usable cores].",
)
@click.option(
    "--repeat",
    type=click.IntRange(1),
    default=None,
    help="Timed calls per configuration (fewer, never under 5, when --max-seconds would be exceeded) "
    "[default: 20; --quick: 3].",
)
@click.option(
    "--max-batch-pixels",
    type=click.IntRange(1),
    default=None,
    help="Skip batches larger than this many pixels per call, and PyTorch above it [default: 1300000].",
)
@click.option("--warmup", type=click.IntRange(0), default=None, help="Untimed calls first [default: 2; --quick: 1].")
@click.option(
    "--max-seconds",
    type=click.FloatRange(0),
    default=None,
    help="Time budget per configuration [default: 8; --quick: 1].",
)
@click.option(
    "--device",
    "devices",
    default=None,
    help="Comma-separated onnxruntime devices (cpu, cuda, openvino). Default: cpu plus every GPU provider "
    "present; a requested device that is missing is an error (exit 4).",
)
@click.option("--allow-missing-device", is_flag=True, help="Skip (and record) requested devices that are missing.")
@click.option("--quality", is_flag=True, help="Also measure task quality: denoising, compression RD, anomaly AUROC.")
@click.option(
    "--latency/--no-latency",
    default=True,
    show_default=True,
    help="Measure speed (latency grid, PyTorch, OpenVINO, OpenCV, pipeline); --no-latency --quality: quality only.",
)
@click.option(
    "--data",
    type=click.Path(),
    default=None,
    help="Benchmark image folder (bsd68_gray, set12_gray, set14) [default: ../shared/data if present, "
    "else scikit-image's photographs].",
)
@click.option(
    "--bm3d-images",
    type=click.IntRange(0),
    default=None,
    help="BSD68 images BM3D runs on (about 11 s each on 2 cores) [default: 68; --quick: 1].",
)
@click.option(
    "--cbm3d-images",
    type=click.IntRange(0),
    default=None,
    help="Set14 images CBM3D (colour BM3D) runs on (about 54 s per 768x512 image on 2 cores) [default: 14; "
    "--quick: 1].",
)
@click.option("--bm3d-sigmas", default=None, help="Noise levels BM3D and CBM3D run at [default: 25].")
@click.option(
    "--checkpoints",
    default=None,
    help="Comma-separated folders holding NAME/{config.json,best.safetensors} for PyTorch "
    "[default: MODELS/checkpoints, then runs/].",
)
@click.option(
    "--out",
    default="bench-out",
    show_default=True,
    type=click.Path(),
    help="Output folder: results.json, README.md, PNG plots.",
)
@click.option("--no-torch", is_flag=True, help="Skip the PyTorch eager comparison.")
@click.option("--no-openvino", is_flag=True, help="Skip native OpenVINO even when installed.")
@click.option("--quick", is_flag=True, help="A small subset in seconds (smoke test).")
@click.option("--quiet", is_flag=True, help="No progress lines.")
def bench(quick: bool, quiet: bool, **options: Any) -> None:
    """Measure latency and quality of model bundles against PyTorch, OpenVINO and OpenCV, in one stamped run.

    \b
    Latency: warm-up, then p50/p95/p99 and throughput per stage (decode, preprocess, entropy coding,
    inference, postprocess, write) for each device, precision, resolution and batch size; achieved GFLOP/s
    (GOP/s for INT8) against matmul peaks measured in the same run. Side by side: PyTorch eager on the
    same checkpoint, native OpenVINO on the same ONNX files (when installed), OpenCV's classical methods,
    and the full `edgeae run` loop against bare session.run. --quality adds PSNR/SSIM against fastNlMeans
    and (C)BM3D, codec rate-distortion against JPEG and WebP, and anomaly AUROC.

    \b
    Writes OUT/results.json, OUT/README.md (tables, goals) and PNG plots.
    Exit codes: 2 bad options, 3 missing or bad data, 4 a bundle or device rejected.
    """
    cfg = _config(quick, **options)
    results = run_bench(cfg, Progress(not quiet))
    json_path, md_path = write_outputs(results, cfg.out)
    for g in results["goals"]:
        met = "—" if g["met"] is None else ("met" if g["met"] else "NOT met")
        val = "n/a" if g["measured"] is None else f"{g['measured']:.2f}"
        click.echo(f"{g['goal']:<62} {g['model'] or '':<15} {val:>8} {g['target']:<9} {met}")
    click.echo(f"wrote {json_path} and {md_path} ({results['elapsed_s']:.0f} s)")


def _config(
    quick: bool,
    *,
    only: str | None,
    precisions: str | None,
    resolutions: str | None,
    batches: str | None,
    devices: str | None,
    bm3d_sigmas: str | None,
    checkpoints: str | None,
    no_torch: bool,
    no_openvino: bool,
    **rest: Any,
) -> BenchConfig:
    """The options as given on the command line -> BenchConfig; an option not given (None) keeps the default
    (of a quick run with ``--quick``)."""
    kw = dict(
        rest,
        only=_csv(only) or (),
        precisions=_csv(precisions),
        resolutions=_csv(resolutions),
        batches=_ints(batches, "--batch"),
        devices=_csv(devices) or (),
        bm3d_sigmas=tuple(float(s) for s in _csv(bm3d_sigmas) or ()) or None,
        checkpoints=_csv(checkpoints) or (),
        torch=not no_torch,
        openvino=not no_openvino,
    )
    kw = {k: v for k, v in kw.items() if v is not None}
    return BenchConfig.quick_defaults(**kw) if quick else BenchConfig(**kw)
