"""The orchestration of one `edgeae bench` run: checks first, then which measurements run in which order and on
which device. :func:`run_bench` returns the results dict; goals and report are made from it elsewhere
(:mod:`benchmarks.goals`, :mod:`benchmarks.bench_report`).

Order of a run: every bundle verified and every graph opened, the devices and the data checked; then matmul peaks,
the latency grid, OpenCV's classical methods, the side-by-side comparisons (:mod:`benchmarks.comparisons`), the
full ``edgeae run`` loop against bare session.run, and with ``quality`` the task metrics.
"""

from __future__ import annotations

import importlib.util
import itertools
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks.config import LATENCY_SIGMA, BenchConfig
from edge_runtime.errors import EdgeAEError, ModelRejectedError

CUDA_MISSING = "CUDAExecutionProvider not available"
CPU_ONLY = "CPU-side comparison; --device does not include cpu"
# A GPU runs a 640x480 frame ~50x faster than these 2 cores: more frames keep each round of the
# pipeline-vs-session.run comparison (50 frames instead of 10) long enough that the scheduler's hiccups average out.
GPU_PIPELINE_FACTOR = 5
# `edgeae run` alternates with bare session.run in rounds over a short video (the median ratio is reported): the
# frames of a run (pipeline_frames) are split into this many rounds, short enough that the load of a shared
# machine changes little within one.
PIPELINE_ROUNDS = 6
PIPELINE_ROUNDS_QUICK = 2


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


def run_bench(cfg: BenchConfig, progress: Progress | None = None) -> dict[str, Any]:
    """Measure everything ``cfg`` asks for; returns the results dict (see
    :func:`benchmarks.bench_report.build_report` for the report).

    Checks come first, before anything is measured: every bundle verified and every graph opened at every
    precision (a graph whose inputs break the contract: ModelRejectedError, exit 4), requested devices present,
    and with ``quality`` the data folder holding every set needed (BadDataError, exit 3).
    """
    from benchmarks import latency as lat
    from benchmarks.machine import stamp

    progress = progress or Progress(False)
    skipped: list[dict[str, str]] = []
    refs = lat.find_bundles(cfg.models, cfg.only or None)
    devices = _devices(cfg, skipped)
    benches = {r.name: lat.GraphBench(r, cfg.threads) for r in refs}
    _open_graphs(cfg, refs, benches, devices[0], skipped)
    data_dir = _check_data(cfg, refs)

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


# --------------------------------------------------------------------------------------------------------------
# Checks


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


def _open_graphs(cfg: BenchConfig, refs: list, benches: dict, device: str, skipped: list[dict[str, str]]) -> None:
    """Open every graph at every requested precision the bundle has (a graph that breaks the contract:
    ModelRejectedError now); record the precisions a bundle lacks."""
    for ref in refs:
        for g in ref.graphs:
            have = ref.bundle.precisions(g)
            for p in cfg.precisions:
                if p in have:
                    benches[ref.name].graph(g, p, device)
                else:
                    skipped.append(
                        {
                            "what": f"{ref.name} {g} {p}",
                            "reason": f"no {p} graph in the bundle (present: {', '.join(have)}; the export's "
                            "precision gate decides)",
                        }
                    )


def _check_data(cfg: BenchConfig, refs: list) -> Path | None:
    """With ``quality``: the data folder, every set the bundles need loaded once (BadDataError now, not after an
    hour of measuring); None without ``quality`` or when no folder is found (scikit-image's photographs)."""
    from benchmarks.data import find_data_dir, load_set

    if not cfg.quality:
        return None
    data_dir = find_data_dir(cfg.data)
    needed = set()
    for ref in refs:
        if ref.task == "denoise":
            needed |= {"set14"} if ref.channels == 3 else {"bsd68_gray", "set12_gray"}
        elif ref.task == "compress":
            needed.add("set14")
    if data_dir is not None:
        for name in sorted(needed):
            load_set(name, data_dir)
    return data_dir


def _primary(refs: Sequence[Any]) -> dict[str, str | None]:
    """name -> None for the first bundle of each architecture, else the name of that first bundle."""
    seen: dict[str, str] = {}
    out: dict[str, str | None] = {}
    for r in refs:
        arch = r.architecture()
        out[r.name] = seen.get(arch)
        seen.setdefault(arch, r.name)
    return out


# --------------------------------------------------------------------------------------------------------------
# The measurements, in order


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
    from benchmarks import comparisons as cmp

    skipped = results["skipped"]
    on_cpu = "cpu" in devices
    results["peaks"] = _peaks(cfg, devices, skipped, progress)
    primary = _primary(refs)
    plan = _latency_plan(cfg, refs, devices, primary, skipped)
    results["latency"] = _measure_latency(cfg, plan, benches, results["peaks"], progress)
    results["opencv"] = _opencv(cfg, refs, on_cpu, skipped, progress)
    # PyTorch eager and native OpenVINO on the same models and inputs
    results["int8_vs_fp32"] = cmp.int8_pairs(cfg, refs, benches, progress) if on_cpu else []
    results["torch"] = cmp.torch_side(cfg, refs, benches, devices, primary, skipped, progress)
    results["openvino"] = (
        cmp.openvino_side(cfg, refs, benches, primary, results["stamp"], skipped, progress, results["latency"])
        if on_cpu
        else []
    )
    results["pipeline"] = _pipeline(cfg, refs, devices, primary, skipped, progress)


def _peaks(cfg: BenchConfig, devices: list[str], skipped: list, progress: Progress) -> dict[str, Any]:
    """Matmul peaks in this run: onnxruntime and numpy on the CPU, PyTorch on CUDA; the latency rows' yardstick."""
    from benchmarks.peak import peaks

    out: dict[str, Any] = {}
    if "cpu" in devices:
        progress(f"peaks: matmul n={cfg.peak_n}, {cfg.threads} threads")
        out = peaks(cfg.threads, n=cfg.peak_n, repeat=3 if cfg.quick else 5)
    else:
        skipped.append({"what": "CPU matmul peaks", "reason": CPU_ONLY})
    if "cuda" in devices:
        from benchmarks.peak import gpu_peaks

        progress("peaks: CUDA matmul (PyTorch)")
        gp = gpu_peaks(n=1024 if cfg.quick else 8192)
        if gp is None:
            skipped.append({"what": "CUDA matmul peaks", "reason": "PyTorch with CUDA is not available"})
        else:
            out.update(gp)
    return out


def _latency_plan(cfg: BenchConfig, refs: list, devices: list[str], primary: dict, skipped: list) -> list[tuple]:
    """``(ref, device, precision, graph, resolution, batch)`` for each cell of the latency grid, in the order
    measured; what is left out (a repeated architecture, batches over the pixel cap) is recorded in ``skipped``."""
    from benchmarks import latency as lat

    plan = []
    too_big: set[str] = set()
    for ref in refs:
        same_as = primary[ref.name]
        for device, p in itertools.product(devices, cfg.precisions):
            graphs = [g for g in ref.graphs if p in ref.bundle.precisions(g)]
            for g, res, b in itertools.product(graphs, cfg.resolutions, cfg.batches):
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
    if "cpu" in devices and lat.GOAL_RESOLUTION not in cfg.resolutions:
        # the goals compare precisions and runtimes at 640x480: measure it even when not asked for in the grid
        for ref in refs:
            for p in [p for p in ("fp32", "int8") if p in cfg.precisions]:
                for g in [g for g in ref.graphs if p in ref.bundle.precisions(g)]:
                    plan.append((ref, "cpu", p, g, lat.GOAL_RESOLUTION, 1))
    return plan


def _measure_latency(
    cfg: BenchConfig, plan: list[tuple], benches: dict, peaks: dict[str, Any], progress: Progress
) -> list[dict[str, Any]]:
    """One row per cell of ``plan``: per-stage timings plus the achieved fraction of the matching peak."""
    from benchmarks import latency as lat

    rows = []
    for i, (ref, device, p, g, res, b) in enumerate(plan, 1):
        w, h = lat.parse_resolution(res)
        progress(f"latency {i}/{len(plan)}: {ref.name} {g} {device} {p} {res} batch {b}")
        m = benches[ref.name].measure(g, p, device, w, h, b, cfg.warmup, cfg.repeat, cfg.max_seconds)
        d = m.to_dict()
        if device == "cuda":
            pk = peaks.get("cuda_fp16_gflops" if p == "fp16" else "cuda_fp32_gflops")
        else:
            pk = peaks.get("ort_int8_gops" if p == "int8" else "ort_fp32_gflops")
        d["peak"] = pk
        d["peak_fraction"] = d["gops"] / pk if d["gops"] and pk else None
        rows.append(d)
    return rows


def _opencv(cfg: BenchConfig, refs: list, on_cpu: bool, skipped: list, progress: Progress) -> list[dict[str, Any]]:
    """OpenCV's classical methods for the tasks present, at the grid's resolutions (and the goal resolution)."""
    from benchmarks import latency as lat

    if not on_cpu:
        skipped.append(
            {"what": "OpenCV classical methods, INT8 vs FP32 on the CPU, native OpenVINO", "reason": CPU_ONLY}
        )
        return []
    tasks = {r.task for r in refs}
    ocv = []
    ocv_res = set(cfg.resolutions) if cfg.quick else set(cfg.resolutions) | {lat.GOAL_RESOLUTION}
    for res in sorted(ocv_res, key=lambda s: lat.parse_resolution(s)[0]):
        w, h = lat.parse_resolution(res)
        progress(f"opencv baselines at {res}")
        ocv += lat.opencv_latency(
            w, h, LATENCY_SIGMA, cfg.warmup, min(cfg.repeat, 5 if not cfg.quick else 2), cfg.max_seconds, tasks
        )
    return ocv


def _pipeline(
    cfg: BenchConfig, refs: list, devices: list[str], primary: dict, skipped: list, progress: Progress
) -> list[dict[str, Any]]:
    """`edgeae run` against bare session.run, once per architecture and device, interleaved in rounds."""
    from benchmarks import latency as lat

    rounds = PIPELINE_ROUNDS_QUICK if cfg.quick else PIPELINE_ROUNDS
    pipe = []
    for ref in refs:
        if primary[ref.name] is not None:
            continue
        mod = {"anomaly": "edge_runtime.anomaly", "compress": "edge_runtime.codec"}.get(ref.task)
        if mod and importlib.util.find_spec(mod) is None:
            skipped.append({"what": f"pipeline vs session.run for {ref.name}", "reason": f"{mod} is not installed"})
            continue
        for device in devices:
            progress(f"pipeline: edgeae run on a 640x480 video vs session.run, {ref.name} on {device}, {rounds} rounds")
            frames = cfg.pipeline_frames * (GPU_PIPELINE_FACTOR if device != "cpu" else 1)
            per_round = max(2, frames // rounds)
            pipe.append(lat.pipeline_vs_session(ref, cfg.threads, frames=per_round, device=device, rounds=rounds))
    return pipe


def _quality(cfg: BenchConfig, refs: list, data_dir: Path | None, skipped: list, progress: Progress) -> dict:
    """Task metrics per task present: denoising PSNR/SSIM, compression rate-distortion, anomaly AUROC."""
    from benchmarks import quality as q

    common = dict(threads=cfg.threads, precisions=cfg.precisions, quick=cfg.quick, progress=progress)
    out: dict[str, Any] = {}
    den = [r for r in refs if r.task == "denoise"]
    if den:
        out["denoise"] = q.denoise_quality(
            den,
            data_dir,
            sigmas=cfg.sigmas,
            bm3d_images=cfg.bm3d_images,
            bm3d_sigmas=cfg.bm3d_sigmas,
            cbm3d_images=cfg.cbm3d_images,
            **common,
        )
    comp = [r for r in refs if r.task == "compress"]
    if comp:
        out["compress"] = q.compress_quality(comp, data_dir, speed_repeat=3 if cfg.quick else 7, **common)
    ano = [r for r in refs if r.task == "anomaly"]
    if ano:
        if importlib.util.find_spec("benchmarks.anomaly_bench") is None:
            skipped.append({"what": "anomaly AUROC", "reason": "benchmarks.anomaly_bench is not available"})
        else:
            out["anomaly"] = q.anomaly_quality(ano, **common)
    return out
