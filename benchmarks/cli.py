"""`edgeae bench`: latency, compute efficiency and quality of the model bundles, side by side with PyTorch eager,
native OpenVINO and OpenCV's classical methods, in one stamped run.

:func:`run_bench` does the work on a :class:`BenchConfig` and returns the results dict; :func:`build_report`
turns it into tables and plots; the click command ``bench`` only parses, calls them and prints.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from benchmarks.bench_report import build_report, write_outputs
from benchmarks.config import LATENCY_SIGMA, BenchConfig
from benchmarks.goals import compute_goals
from edge_runtime.errors import EdgeAEError, ModelRejectedError, UsageError

# Importable from here as before the split: the tests and benchmarks.gpu_check use them.
__all__ = ["BenchConfig", "Progress", "bench", "build_report", "compute_goals", "run_bench", "write_outputs"]

CUDA_MISSING = "CUDAExecutionProvider not available"
# A GPU runs a 640x480 frame ~50x faster than these 2 cores: a longer video keeps the first call (cuDNN's
# exhaustive kernel search) from dominating the pipeline-vs-session.run ratio.
GPU_PIPELINE_FACTOR = 5


class Progress:
    """One line per step on stderr with the elapsed time (through tqdm.write when tqdm is importable, so a bar
    and the lines do not garble each other)."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.t0 = time.perf_counter()
        self._write = print
        if importlib.util.find_spec("tqdm") is not None:
            from tqdm import tqdm

            self._write = tqdm.write

    def __call__(self, msg: str) -> None:
        if self.enabled:
            self._write(f"[{time.perf_counter() - self.t0:7.1f}s] {msg}", file=sys.stderr)


# --------------------------------------------------------------------------------------------------------------
# The run


def _devices(cfg: BenchConfig, skipped: list[dict[str, str]]) -> list[str]:
    """Devices to measure on: the requested ones (missing: ModelRejectedError unless allowed), or cpu plus every
    GPU provider present; an absent CUDA provider is recorded as skipped."""
    from benchmarks.latency import DEVICE_PROVIDER
    from edge_runtime.session import available_providers

    avail = available_providers()
    if cfg.devices:
        out = []
        for d in cfg.devices:
            prov = DEVICE_PROVIDER[d]
            if prov in avail:
                out.append(d)
                continue
            reason = f"{prov} not available (onnxruntime has {', '.join(avail)})"
            if not cfg.allow_missing_device:
                raise ModelRejectedError(f"--device {d}: {reason}; pass --allow-missing-device to skip it")
            skipped.append({"what": f"latency on {d}", "reason": reason})
        if not out:
            raise ModelRejectedError("none of the requested devices is available")
        return out
    out = ["cpu"]
    if DEVICE_PROVIDER["cuda"] in avail:
        out.append("cuda")
    else:
        skipped.append({"what": "latency on cuda (I/O binding) and PyTorch FP16 channels-last", "reason": CUDA_MISSING})
    return out


def _pixels(res: str) -> int:
    from benchmarks.latency import parse_resolution

    w, h = parse_resolution(res)
    return w * h


def _checkpoint_dirs(cfg: BenchConfig) -> list[Path]:
    if cfg.checkpoints:
        return [Path(p) for p in cfg.checkpoints]
    from benchmarks.data import repo_root

    models = Path(cfg.models)
    return [models / "checkpoints", repo_root() / "models" / "checkpoints", repo_root() / "runs"]


def run_bench(cfg: BenchConfig, progress: Progress | None = None) -> dict[str, Any]:
    """Measure everything ``cfg`` asks for; returns the results dict (see :func:`build_report` for the report).

    Checks come first, before anything is measured: every bundle verified and every graph opened at every
    precision (a graph whose inputs break the contract: ModelRejectedError, exit 4), requested devices present,
    and with ``quality`` the data folder holding every set needed (BadDataError, exit 3).
    """
    from benchmarks import latency as lat
    from benchmarks.data import find_data_dir, load_set
    from benchmarks.machine import stamp

    progress = progress or Progress(False)
    skipped: list[dict[str, str]] = []
    refs = lat.find_bundles(cfg.models, cfg.only or None)
    devices = _devices(cfg, skipped)
    benches = {r.name: lat.GraphBench(r, cfg.threads) for r in refs}
    for ref in refs:
        for g in ref.graphs:
            have = ref.bundle.precisions(g)
            for p in cfg.precisions:
                if p in have:
                    benches[ref.name].graph(g, p, devices[0])
                else:
                    skipped.append(
                        {
                            "what": f"{ref.name} {g} {p}",
                            "reason": f"no {p} graph in the bundle (present: {', '.join(have)}; the export's "
                            "precision gate decides)",
                        }
                    )
    data_dir = None
    if cfg.quality:
        data_dir = find_data_dir(cfg.data)
        needed = set()
        for ref in refs:
            if ref.task == "denoise":
                needed |= {"set14"} if ref.channels == 3 else {"bsd68_gray", "set12_gray"}
            elif ref.task == "compress":
                needed.add("set14")
        if data_dir is not None:
            for name in sorted(needed):
                load_set(name, data_dir)  # BadDataError now, not after an hour of measuring

    results: dict[str, Any] = {
        "title": "edgeae bench" + (" (quick)" if cfg.quick else ""),
        "complete": False,
        "config": {**asdict(cfg), "devices_measured": devices, "data_dir": str(data_dir) if data_dir else None},
        "stamp": stamp(cfg.threads),
        "skipped": skipped,
    }
    t_start = time.perf_counter()
    try:
        _measure_all(cfg, refs, benches, devices, data_dir, results, progress)
    except EdgeAEError as exc:
        from benchmarks.bench_report import write_partial

        results["error"] = str(exc)
        results["title"] += " — INCOMPLETE"
        write_partial(results, cfg.out)
        raise
    finally:
        for b in benches.values():
            b.close()
    results["elapsed_s"] = time.perf_counter() - t_start
    results["complete"] = True
    return results


def _primary(refs: Sequence[Any]) -> dict[str, str | None]:
    """name -> None for the first bundle of each architecture, else the name of that first bundle."""
    seen: dict[str, str] = {}
    out: dict[str, str | None] = {}
    for r in refs:
        arch = r.architecture()
        out[r.name] = seen.get(arch)
        seen.setdefault(arch, r.name)
    return out


def _measure_all(
    cfg: BenchConfig,
    refs: list,
    benches: dict,
    devices: list[str],
    data_dir: Path | None,
    results: dict[str, Any],
    progress: Progress,
) -> None:
    if cfg.latency:
        _measure_speed(cfg, refs, benches, devices, results, progress)
    else:
        results["skipped"].append(
            {"what": "latency, PyTorch, OpenVINO, OpenCV timing, pipeline", "reason": "--no-latency"}
        )
    if cfg.quality:
        results["quality"] = _quality(cfg, refs, data_dir, results["skipped"], progress)


def _measure_speed(
    cfg: BenchConfig, refs: list, benches: dict, devices: list[str], results: dict[str, Any], progress: Progress
) -> None:
    from benchmarks import latency as lat
    from benchmarks.peak import peaks

    skipped = results["skipped"]
    on_cpu = "cpu" in devices
    cpu_only = "CPU-side comparison; --device does not include cpu"
    if on_cpu:
        progress(f"peaks: matmul n={cfg.peak_n}, {cfg.threads} threads")
        results["peaks"] = peaks(cfg.threads, n=cfg.peak_n, repeat=3 if cfg.quick else 5)
    else:
        results["peaks"] = {}
        skipped.append({"what": "CPU matmul peaks", "reason": cpu_only})
    if "cuda" in devices:
        from benchmarks.peak import gpu_peaks

        progress("peaks: CUDA matmul (PyTorch)")
        gp = gpu_peaks(n=1024 if cfg.quick else 8192)
        if gp is None:
            skipped.append({"what": "CUDA matmul peaks", "reason": "PyTorch with CUDA is not available"})
        else:
            results["peaks"].update(gp)
    primary = _primary(refs)

    # ---- latency grid
    plan = []
    too_big: set[str] = set()
    for ref in refs:
        same_as = primary[ref.name]
        for device in devices:
            for p in cfg.precisions:
                for g in [g for g in ref.graphs if p in ref.bundle.precisions(g)]:
                    for res in cfg.resolutions:
                        for b in cfg.batches:
                            reduced = same_as is not None and not (res == lat.GOAL_RESOLUTION and b == 1)
                            w, h = lat.parse_resolution(res)
                            if b > 1 and b * w * h > cfg.max_batch_pixels:
                                too_big.add(f"batch {b} at {res}")
                            elif not reduced:
                                plan.append((ref, device, p, g, res, b))
        if same_as is not None:
            skipped.append(
                {
                    "what": f"{ref.name}: resolutions other than {lat.GOAL_RESOLUTION} batch 1",
                    "reason": f"same architecture (same graphs and MACs) as {same_as}, measured in full",
                }
            )
    for what in sorted(too_big):
        skipped.append(
            {
                "what": what,
                "reason": f"over --max-batch-pixels {cfg.max_batch_pixels} pixels per call (one frame of this size "
                "already keeps the cores busy)",
            }
        )
    if on_cpu and lat.GOAL_RESOLUTION not in cfg.resolutions:
        # the goals compare precisions and runtimes at 640x480: measure it even when not asked for in the grid
        for ref in refs:
            for p in [p for p in ("fp32", "int8") if p in cfg.precisions]:
                for g in [g for g in ref.graphs if p in ref.bundle.precisions(g)]:
                    plan.append((ref, "cpu", p, g, lat.GOAL_RESOLUTION, 1))
    rows = []
    for i, (ref, device, p, g, res, b) in enumerate(plan, 1):
        w, h = lat.parse_resolution(res)
        progress(f"latency {i}/{len(plan)}: {ref.name} {g} {device} {p} {res} batch {b}")
        m = benches[ref.name].measure(g, p, device, w, h, b, cfg.warmup, cfg.repeat, cfg.max_seconds)
        d = m.to_dict()
        if device == "cuda":
            pk = results["peaks"].get("cuda_fp16_gflops" if p == "fp16" else "cuda_fp32_gflops")
        else:
            pk = results["peaks"].get("ort_int8_gops" if p == "int8" else "ort_fp32_gflops")
        d["peak"] = pk
        d["peak_fraction"] = d["gops"] / pk if d["gops"] and pk else None
        rows.append(d)
    results["latency"] = rows

    # ---- OpenCV classical methods at the same resolutions
    tasks = {r.task for r in refs}
    ocv = []
    ocv_res = set(cfg.resolutions) if cfg.quick else set(cfg.resolutions) | {lat.GOAL_RESOLUTION}
    if not on_cpu:
        ocv_res = set()
        skipped.append(
            {"what": "OpenCV classical methods, INT8 vs FP32 on the CPU, native OpenVINO", "reason": cpu_only}
        )
    for res in sorted(ocv_res, key=lambda s: lat.parse_resolution(s)[0]):
        w, h = lat.parse_resolution(res)
        progress(f"opencv baselines at {res}")
        ocv += lat.opencv_latency(
            w, h, LATENCY_SIGMA, cfg.warmup, min(cfg.repeat, 5 if not cfg.quick else 2), cfg.max_seconds, tasks
        )
    results["opencv"] = ocv

    # ---- PyTorch eager and native OpenVINO on the same models and inputs
    results["int8_vs_fp32"] = _int8_pairs(cfg, refs, benches, progress) if on_cpu else []
    results["torch"] = _torch_side(cfg, refs, benches, devices, primary, skipped, progress)
    results["openvino"] = (
        _openvino_side(cfg, refs, benches, primary, results["stamp"], skipped, progress, rows) if on_cpu else []
    )

    # ---- `edgeae run` against bare session.run
    pipe = []
    for ref in refs:
        if primary[ref.name] is not None:
            continue
        mod = {"anomaly": "edge_runtime.anomaly", "compress": "edge_runtime.codec"}.get(ref.task)
        if mod and importlib.util.find_spec(mod) is None:
            skipped.append({"what": f"pipeline vs session.run for {ref.name}", "reason": f"{mod} is not installed"})
            continue
        for device in devices:
            progress(f"pipeline: edgeae run on a 640x480 video vs session.run, {ref.name} on {device}")
            frames = cfg.pipeline_frames * (GPU_PIPELINE_FACTOR if device != "cpu" else 1)
            pipe.append(lat.pipeline_vs_session(ref, cfg.threads, frames=frames, device=device))
    results["pipeline"] = pipe


def _ort_row(
    rows: list[dict],
    model: str,
    graph: str,
    device: str,
    precision: str,
    res: str,
    batch: int,
) -> dict | None:
    for r in rows:
        if (r["model"], r["graph"], r["device"], r["precision"], r["resolution"], r["batch"]) == (
            model,
            graph,
            device,
            precision,
            res,
            batch,
        ):
            return r
    return None


def _int8_pairs(cfg: BenchConfig, refs: list, benches: dict, progress: Progress) -> list[dict[str, Any]]:
    """INT8 against FP32 inference at the goal resolution, batch 1, interleaved (benchmarks.latency.interleaved)."""
    from benchmarks import latency as lat

    if not {"fp32", "int8"} <= set(cfg.precisions):
        return []
    w, h = lat.parse_resolution(lat.GOAL_RESOLUTION)
    out = []
    for ref in refs:
        for g in [g for g in ref.graphs if {"fp32", "int8"} <= set(ref.bundle.precisions(g))]:
            progress(f"int8 vs fp32 (interleaved): {ref.name} {g} {lat.GOAL_RESOLUTION}")
            name, feed = lat.graph_feed(benches[ref.name], g, w, h, 1)
            fns = {
                p: (lambda gr=benches[ref.name].graph(g, p, "cpu"), name=name, feed=feed: gr.run({name: feed}))
                for p in ("fp32", "int8")
            }
            t = lat.interleaved(fns, cfg.warmup, cfg.repeat, cfg.max_seconds)
            out.append(
                {
                    "model": ref.name,
                    "graph": g,
                    "resolution": lat.GOAL_RESOLUTION,
                    "batch": 1,
                    "threads": cfg.threads,
                    "fp32": t["fp32"].to_dict(),
                    "int8": t["int8"].to_dict(),
                    "speedup": t["fp32"].p50_ms / t["int8"].p50_ms,
                }
            )
    return out


def _torch_side(
    cfg: BenchConfig,
    refs: list,
    benches: dict,
    devices: list[str],
    primary: dict,
    skipped: list,
    progress: Progress,
) -> list[dict[str, Any]]:
    """PyTorch eager against onnxruntime, interleaved on the same input: on the CPU at the same threads; on
    CUDA the trained core in FP16 channels-last (model only, input already on the GPU) at every grid
    resolution against edgeae's uint8-in/uint8-out ``RuntimeGraph.run`` at FP16 and FP32."""
    from benchmarks import latency as lat
    from benchmarks import torch_baseline as tb

    if not cfg.torch:
        skipped.append({"what": "PyTorch eager", "reason": "--no-torch"})
        return []
    ok, why = tb.torch_available()
    if not ok:
        skipped.append({"what": "PyTorch eager", "reason": why})
        return []
    out = []
    search = _checkpoint_dirs(cfg)
    for ref in refs:
        if "fp32" not in ref.precisions():
            continue
        run_id = ref.bundle.contract.get("run_id", "")
        ckpt, why = tb.find_checkpoint(ref.name, str(run_id), search)
        if ckpt is None:
            skipped.append({"what": f"PyTorch eager for {ref.name}", "reason": why})
            continue
        resolutions = cfg.resolutions if primary[ref.name] is None and not cfg.quick else ()
        big = [r for r in resolutions if _pixels(r) > cfg.max_batch_pixels]
        if big and "cpu" in devices:
            skipped.append(
                {"what": f"PyTorch eager for {ref.name} at {', '.join(big)}", "reason": "over --max-batch-pixels"}
            )
        # on the GPU every resolution of the grid (the goal is stated at 1920x1080), on the CPU up to the cap;
        # a bundle of an architecture measured already: only where the grid measured it (the goal resolution)
        if primary[ref.name] is None:
            gpu_res = list(cfg.resolutions)
        else:
            gpu_res = [lat.GOAL_RESOLUTION] if lat.GOAL_RESOLUTION in cfg.resolutions else []
        resolutions = [r for r in resolutions if r not in big]
        resolutions = list(dict.fromkeys([*resolutions, lat.GOAL_RESOLUTION])) if "cpu" in devices else []
        for g in ref.graphs:
            module = tb.load_graph_module(ckpt, g)
            graph = benches[ref.name].graph(g, "fp32", "cpu")
            for res in resolutions:
                w, h = lat.parse_resolution(res)
                progress(f"pytorch eager vs onnxruntime: {ref.name} {g} {res} batch 1, {cfg.threads} threads")
                name, feed = lat.graph_feed(benches[ref.name], g, w, h, 1)
                with tb.torch_threads(cfg.threads):
                    call, outputs = tb.module_call(module, feed)
                    t = lat.interleaved(
                        {"torch": call, "ort": lambda graph=graph, name=name, feed=feed: graph.run({name: feed})},
                        cfg.warmup,
                        cfg.repeat,
                        cfg.max_seconds,
                    )
                    diff = tb.max_abs_diff(outputs(), list(graph.run({name: feed}).values()))
                out.append(
                    {
                        "model": ref.name,
                        "graph": g,
                        "device": "cpu",
                        "precision": "fp32",
                        "resolution": res,
                        "batch": 1,
                        "threads": cfg.threads,
                        "checkpoint": str(ckpt),
                        "timing": t["torch"].to_dict(),
                        "ort_timing": t["ort"].to_dict(),
                        "ort_p50_ms": t["ort"].p50_ms,
                        "ort_speedup": t["torch"].p50_ms / t["ort"].p50_ms,
                        "max_abs_diff_vs_ort": diff,
                    }
                )
            for res in gpu_res if "cuda" in devices else ():
                w, h = lat.parse_resolution(res)
                progress(f"pytorch fp16 channels-last vs onnxruntime on cuda (interleaved): {ref.name} {g} {res}")
                name, feed = lat.graph_feed(benches[ref.name], g, w, h, 1)
                call, reason = tb.gpu_fp16_call(module, feed)
                if call is None:
                    skipped.append({"what": f"PyTorch FP16 channels-last for {ref.name} {g}", "reason": reason})
                    break
                fns: dict[str, Any] = {"torch": call}
                for p in [p for p in ("fp16", "fp32") if p in ref.bundle.precisions(g) and p in cfg.precisions]:
                    gr = benches[ref.name].graph(g, p, "cuda")
                    fns[p] = lambda gr=gr, name=name, feed=feed: gr.run({name: feed})
                t = lat.interleaved(fns, max(cfg.warmup, 3), cfg.repeat, cfg.max_seconds)
                out.append(
                    {
                        "model": ref.name,
                        "graph": g,
                        "device": "cuda",
                        "precision": "fp16-channels-last",
                        "resolution": res,
                        "batch": 1,
                        "threads": None,
                        "checkpoint": str(ckpt),
                        "timing": t["torch"].to_dict(),
                        "ort_p50_ms": (t.get("fp16") or t.get("fp32")).p50_ms if len(t) > 1 else None,
                        "ort_cuda_p50_ms": {p: t[p].p50_ms for p in ("fp16", "fp32") if p in t},
                        "ort_speedup": None,
                        "max_abs_diff_vs_ort": None,
                    }
                )
    return out


def _openvino_side(
    cfg: BenchConfig,
    refs: list,
    benches: dict,
    primary: dict,
    st: dict,
    skipped: list,
    progress: Progress,
    ort_rows: list[dict],
) -> list[dict[str, Any]]:
    from benchmarks import latency as lat
    from benchmarks import openvino_baseline as ovb

    if not cfg.openvino:
        skipped.append({"what": "native OpenVINO", "reason": "disabled"})
        return []
    ok, why = ovb.openvino_available()
    if not ok:
        skipped.append({"what": "native OpenVINO (FP32, BF16, INT8)", "reason": why})
        return []
    bf16 = ovb.bf16_supported((st.get("cpu") or {}).get("flags"))
    if not bf16:
        skipped.append({"what": "OpenVINO BF16", "reason": "the CPU lists neither avx512_bf16 nor amx_bf16"})
    out = []
    for ref in refs:
        if primary[ref.name] is not None:
            continue
        for mode, (file_prec, hint) in ovb.MODES.items():
            if mode == "bf16" and not bf16:
                continue
            if file_prec not in ref.precisions() or file_prec not in cfg.precisions:
                continue
            for g in ref.graphs:
                path = ref.bundle.graph_path(g, file_prec)
                for res in cfg.resolutions:
                    w, h = lat.parse_resolution(res)
                    progress(f"openvino: {ref.name} {g} {mode} {res} batch 1")
                    name, feed = lat.graph_feed(benches[ref.name], g, w, h, 1)
                    timing, _ = ovb.time_openvino(
                        path, name, feed, hint, cfg.threads, cfg.warmup, cfg.repeat, cfg.max_seconds
                    )
                    ort = _ort_row(ort_rows, ref.name, g, "cpu", file_prec, res, 1)
                    ort_p50 = ort["stages"]["inference"]["p50_ms"] if ort else None
                    out.append(
                        {
                            "model": ref.name,
                            "graph": g,
                            "mode": mode,
                            "file": path.name,
                            "resolution": res,
                            "batch": 1,
                            "threads": cfg.threads,
                            "timing": timing.to_dict(),
                            "ort_p50_ms": ort_p50,
                        }
                    )
    return out


def _quality(cfg: BenchConfig, refs: list, data_dir: Path | None, skipped: list, progress: Progress) -> dict:
    from benchmarks import quality as q

    out: dict[str, Any] = {}
    den = [r for r in refs if r.task == "denoise"]
    if den:
        out["denoise"] = q.denoise_quality(
            den,
            data_dir,
            threads=cfg.threads,
            sigmas=cfg.sigmas,
            precisions=cfg.precisions,
            bm3d_images=cfg.bm3d_images,
            bm3d_sigmas=cfg.bm3d_sigmas,
            quick=cfg.quick,
            progress=progress,
        )
    comp = [r for r in refs if r.task == "compress"]
    if comp:
        out["compress"] = q.compress_quality(
            comp,
            data_dir,
            threads=cfg.threads,
            precisions=cfg.precisions,
            quick=cfg.quick,
            speed_repeat=3 if cfg.quick else 7,
            progress=progress,
        )
    ano = [r for r in refs if r.task == "anomaly"]
    if ano:
        if importlib.util.find_spec("benchmarks.anomaly_bench") is None:
            skipped.append({"what": "anomaly AUROC", "reason": "benchmarks.anomaly_bench is not available"})
        else:
            out["anomaly"] = q.anomaly_quality(
                ano, threads=cfg.threads, precisions=cfg.precisions, quick=cfg.quick, progress=progress
            )
    return out


# --------------------------------------------------------------------------------------------------------------
# The command


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
@click.option("--bm3d-sigmas", default=None, help="Noise levels BM3D runs at [default: 25].")
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
def bench(
    models,
    only,
    precisions,
    resolutions,
    batches,
    threads,
    repeat,
    max_batch_pixels,
    warmup,
    max_seconds,
    devices,
    allow_missing_device,
    quality,
    latency,
    data,
    bm3d_images,
    bm3d_sigmas,
    checkpoints,
    out,
    no_torch,
    no_openvino,
    quick,
    quiet,
):
    """Measure latency and quality of model bundles against PyTorch, OpenVINO and OpenCV, in one stamped run.

    \b
    Latency: warm-up, then p50/p95/p99 and throughput per stage (decode, preprocess, entropy coding,
    inference, postprocess, write) for each device, precision, resolution and batch size; achieved GFLOP/s
    (GOP/s for INT8) against matmul peaks measured in the same run. Side by side: PyTorch eager on the
    same checkpoint, native OpenVINO on the same ONNX files (when installed), OpenCV's classical methods,
    and the full `edgeae run` loop against bare session.run. --quality adds PSNR/SSIM against fastNlMeans
    and BM3D, codec rate-distortion against JPEG and WebP, and anomaly AUROC.

    \b
    Writes OUT/results.json, OUT/README.md (tables, goals) and PNG plots.
    Exit codes: 2 bad options, 3 missing or bad data, 4 a bundle or device rejected.
    """
    kw = dict(
        models=models,
        only=_csv(only) or (),
        precisions=_csv(precisions),
        resolutions=_csv(resolutions),
        batches=_ints(batches, "--batch"),
        threads=threads,
        repeat=repeat,
        warmup=warmup,
        max_batch_pixels=max_batch_pixels,
        max_seconds=max_seconds,
        devices=_csv(devices) or (),
        allow_missing_device=allow_missing_device,
        quality=quality,
        latency=latency,
        data=data,
        bm3d_images=bm3d_images,
        bm3d_sigmas=tuple(float(s) for s in _csv(bm3d_sigmas) or ()) or None,
        checkpoints=_csv(checkpoints) or (),
        out=out,
        torch=not no_torch,
        openvino=not no_openvino,
    )
    kw = {k: v for k, v in kw.items() if v is not None}
    cfg = BenchConfig.quick_defaults(**kw) if quick else BenchConfig(**kw)
    results = run_bench(cfg, Progress(not quiet))
    json_path, md_path = write_outputs(results, cfg.out)
    for g in results["goals"]:
        met = "—" if g["met"] is None else ("met" if g["met"] else "NOT met")
        val = "n/a" if g["measured"] is None else f"{g['measured']:.2f}"
        click.echo(f"{g['goal']:<62} {g['model'] or '':<15} {val:>8} {g['target']:<9} {met}")
    click.echo(f"wrote {json_path} and {md_path} ({results['elapsed_s']:.0f} s)")
