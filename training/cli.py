"""``edgeae train``: the click command around :func:`training.train.train` and :func:`training.report.write_report`.

The edgeae CLI (edge_runtime/cli.py) loads this module lazily as ``training.cli:train`` so that the edge
install never imports torch; errors are raised as :mod:`edge_runtime.errors` classes and mapped to exit codes
there.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import fields
from pathlib import Path

import click

from edge_runtime.errors import EdgeAEError, UsageError

# Options that define the model: a resumed run must keep them (its checkpoint would not load otherwise).
MODEL_OPTIONS = ("task", "channels", "width", "quality", "arch")

HELP = """Train a convolutional autoencoder for denoising, learned compression or anomaly scoring.

\b
  edgeae train --task denoise --data samples --out runs/dn --steps 2000
  edgeae train --task compress --data photos/ --out runs/q3 --quality 3 --minutes 30
  edgeae train --task anomaly --data good_parts/ --out runs/parts     # inspection, <= 20 min on 2 cores
  edgeae train --task anomaly --arch scene --data line.mp4 --out runs/line --device cuda   # fixed camera
  edgeae train --out runs/dn --resume --steps 4000      # continue (and extend) a run

--data is an image folder (searched recursively), one image, a video (every 10th frame) or "samples"
(scikit-image's photographs); several, joined by commas, are concatenated. Every 8th image by sorted name is
held out for validation and never trained on (OUT/split.json lists both sets and the unreadable files that
were skipped).

OUT receives config.json (model, options, MAC/pixel, parameters), best.safetensors (best validation
metric: PSNR for denoise, rate-distortion loss for compress, image AUROC for anomaly), last.safetensors and
optim.safetensors / state.json (for --resume), log.jsonl (loss, learning rate, gradient norm, throughput,
validation metrics, latent health), summary.json, and at the end a report: report.md with loss.png,
val.png and health.png. Nothing is pickled.

A non-finite loss rolls back to the last good checkpoint and halves the learning rate, at most 3 times;
then training stops. Collapsed latents (no variance, or every image on one point) give a warning, or stop
training with --collapse stop.

Multi-GPU and multi-node: launch the edgeae script with torchrun (DistributedDataParallel; NCCL on GPUs,
gloo on CPUs); --batch is per process and rank 0 writes OUT:

\b
  torchrun --nproc_per_node 4 "$(command -v edgeae)" train --task denoise --data D --out runs/dn
  torchrun --nnodes 2 --node_rank 0 --master_addr HOST --nproc_per_node 8 "$(command -v edgeae)" train ...

Exit status: 0 done, 2 bad options, 3 bad data or training stopped (diverged, collapsed).
"""


def _given(ctx: click.Context, name: str) -> bool:
    src = ctx.get_parameter_source(name)
    return src is not None and src.name not in ("DEFAULT", "DEFAULT_MAP")


def _has_checkpoint(out: Path) -> bool:
    return (out / "last.safetensors").is_file() and (out / "state.json").is_file()


def _resume_options(out: Path, given: dict) -> dict:
    """The options of the run in ``out`` (config.json), overridden by those given on the command line."""
    if not _has_checkpoint(out):
        raise UsageError(f"{out}: nothing to resume (needs last.safetensors and state.json); drop --resume to "
                         "start a new run in an empty folder")  # fmt: skip
    try:
        saved = json.loads((out / "config.json").read_text())["train"]
        if not isinstance(saved, dict):
            raise TypeError("train is not an object")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{out}/config.json: cannot resume, the run's options do not load ({exc})") from exc
    for key in MODEL_OPTIONS:
        if key in given and key in saved and given[key] != saved[key]:
            raise UsageError(f"{out} was trained with --{key} {saved[key]}; a resumed run must keep it "
                             f"(got --{key} {given[key]})")  # fmt: skip
    from training.train import TrainConfig

    known = {f.name for f in fields(TrainConfig)}
    return {**{k: v for k, v in saved.items() if k in known}, **given}


@click.command("train", help=HELP, short_help="Train a denoising, compression or anomaly autoencoder.")
@click.option(
    "--task",
    type=click.Choice(["denoise", "anomaly", "compress"]),
    default=None,
    help="What to train (required unless --resume, which keeps the run's task).",
)
@click.option(
    "--data",
    default="samples",
    show_default=True,
    metavar="PATH|samples",
    help="Image folder, image, video, 'samples' or 'textures'; comma-separated to combine.",
)
@click.option(
    "--out",
    "out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    metavar="OUT",
    help="Run folder, e.g. runs/NAME. Must not exist or be empty unless --resume.",
)
@click.option(
    "--steps",
    type=click.IntRange(min=1),
    default=None,
    help="Optimizer steps (the cosine schedule ends here). Default 2000; anomaly inspect: 100000, cut by the "
    "18-minute budget.",
)
@click.option(
    "--batch",
    type=click.IntRange(min=1),
    default=None,
    help="Patches per step (per process under torchrun). Default 16; anomaly inspect: 8.",
)
@click.option(
    "--crop",
    type=click.IntRange(min=16),
    default=None,
    help="Training patch side in pixels; images smaller than this are not trained on. Default 96; anomaly "
    "inspect: 256, or the smallest image's side.",
)
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Peak learning rate (AdamW, short warm-up, cosine decay). Default 1e-3; anomaly inspect: 2e-3.",
)
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="auto takes CUDA when PyTorch sees a GPU (bf16 autocast there).",
)
@click.option("--resume", is_flag=True,
              help="Continue the run in OUT from last.safetensors/state.json with its saved options; options "
                   "given here override them (e.g. a larger --steps), except the model's.")  # fmt: skip
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed of initialisation and sampling: the same seed gives the same weights on CPU.",
)
@click.option(
    "--quality",
    type=click.IntRange(1, 5),
    default=2,
    show_default=True,
    help="compress: rate-distortion trade-off, 1 (smallest files) to 5 (best quality).",
)
@click.option(
    "--arch",
    type=click.Choice(["factorized", "hyper", "inspect", "scene"]),
    default=None,
    help="compress: factorized (default) or hyper (integer hyperprior, one variable-rate model; --quality "
    "unused). anomaly: inspect (default; parts and surfaces whose position varies: a network that segments "
    "synthetic defects) or scene (a fixed camera: an autoencoder calibrated per location with edgeae calibrate).",
)
@click.option(
    "--channels",
    type=click.Choice(["1", "3"]),
    default="3",
    show_default=True,
    help="1 trains on gray, 3 on BGR colour (images are converted on load).",
)
@click.option("--width", type=click.IntRange(min=4), default=None,
              help="Model width (denoise/anomaly: channels at the first scale, default 32; compress: transform "
                   "width, default 64). Cost grows with its square.")  # fmt: skip
@click.option(
    "--minutes",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Time budget: the schedule runs on elapsed time and training ends when it is spent (anomaly inspect: "
    "18 unless given).",
)
@click.option(
    "--threads", type=click.IntRange(min=1), default=None, help="PyTorch CPU threads (default: PyTorch's choice)."
)
@click.option("--init", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Start from these weights (a run's best.safetensors): fine-tuning, not a resume.")  # fmt: skip
@click.option(
    "--collapse",
    type=click.Choice(["warn", "stop", "off"]),
    default="warn",
    show_default=True,
    help="What collapsed latents do: warn, stop training (exit 3), or nothing.",
)
@click.option(
    "--val-every",
    type=click.IntRange(min=1),
    default=250,
    show_default=True,
    help="Validate and checkpoint every this many steps.",
)
@click.option(
    "--log-every",
    type=click.IntRange(min=1),
    default=25,
    show_default=True,
    help="Write a training record to log.jsonl every this many steps.",
)
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show the progress bar.")
@click.pass_context
def train(ctx: click.Context, out: Path, resume: bool, progress: bool, **opts) -> None:
    from training.report import write_report
    from training.train import TrainConfig
    from training.train import train as run_training

    opts["channels"] = int(opts["channels"])
    given = {k: v for k, v in opts.items() if _given(ctx, k)}
    rank0 = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 checks and writes OUT
    if resume:
        params = _resume_options(out, given)
    else:
        if rank0 and out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise UsageError(f"{out} exists; pass --resume or choose another --out")
        if opts["task"] is None:
            raise UsageError("--task is required (denoise, anomaly or compress)")
        from training.train import option_defaults

        defaults = option_defaults(opts["task"], opts["arch"])
        params = {**opts, **{k: v for k, v in defaults.items() if opts.get(k) is None}}
        if "minutes" in defaults and "steps" in given and "minutes" not in given:
            params["minutes"] = None  # an explicit --steps is the budget; the time cap is for the default only
    params = {**params, "out": str(out)}
    cfg = TrainConfig(**params)
    try:
        summary = run_training(cfg, progress=progress)
    except (EdgeAEError, KeyboardInterrupt):
        # A run stopped by divergence, collapse or Ctrl-C still gets its report: it shows what happened.
        if rank0 and (out / "log.jsonl").is_file():
            with contextlib.suppress(Exception):
                write_report(out)
        raise
    if not summary:  # a torchrun worker other than rank 0: rank 0 reports
        return
    written = write_report(out)
    best = summary.get("best")
    best_txt = f"{summary['metric']} {best:.4g}" if isinstance(best, (int, float)) else "no finite metric"
    click.echo(f"{out}: {summary['steps']} steps in {summary['elapsed_s']:.0f} s, best {best_txt}")
    for w in summary.get("warnings", []):
        click.echo(f"warning: {w}", err=True)
    click.echo("wrote " + ", ".join(str(p) for p in [out / "best.safetensors", *written]))
