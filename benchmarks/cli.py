"""`edgeae bench`: latency, compute efficiency and quality of the model bundles, side by side with PyTorch eager,
native OpenVINO and OpenCV's classical methods, in one stamped run.

:func:`run_bench` does the work on a :class:`BenchConfig` and returns the results dict; :func:`build_report`
turns it into tables and plots; the click command ``bench`` only parses, calls them and prints.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from benchmarks.config import LATENCY_SIGMA, BenchConfig
from benchmarks.goals import compute_goals
from edge_runtime.errors import EdgeAEError, ModelRejectedError, UsageError

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
        results["error"] = str(exc)
        results["title"] += " — INCOMPLETE"
        _write_partial(cfg, results)
        raise
    finally:
        for b in benches.values():
            b.close()
    results["elapsed_s"] = time.perf_counter() - t_start
    results["complete"] = True
    return results


def _write_partial(cfg: BenchConfig, results: dict[str, Any]) -> None:
    from benchmarks.report import write_report

    results = {
        **results,
        "tables": [
            {
                "title": "Error",
                "columns": ["error"],
                "rows": [[results.get("error")]],
                "note": "the run stopped; the numbers in results.json are partial",
            }
        ],
    }
    write_report(results, cfg.out)


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
# Report


def _stage(row: dict, name: str) -> float | None:
    st = row["stages"].get(name)
    return st["p50_ms"] if st else None


def build_report(results: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """Add ``goals``, ``tables`` and ``plots`` (PNG files written under ``out_dir``) to the results."""
    from benchmarks import report as rp
    from benchmarks.latency import STAGES

    out_dir.mkdir(parents=True, exist_ok=True)
    results["goals"] = compute_goals(results)
    tables: list[dict[str, Any]] = []
    plots: list[dict[str, str]] = []
    threads = results["config"]["threads"]
    tables.append(
        {
            "title": "Goals",
            "columns": ["goal", "model", "measured", "target", "met", "how"],
            "rows": [
                [
                    g["goal"],
                    g["model"] or "",
                    g["measured"],
                    g["target"],
                    "—" if g["met"] is None else ("yes" if g["met"] else "NO"),
                    g["note"],
                ]
                for g in results["goals"]
            ],
            "formats": [None, None, ".2f", None, None, None],
            "note": f"all from this run, {threads} threads; ratios of p50 latencies measured back to back",
        }
    )
    pk = results.get("peaks") or {}
    tables.append(
        {
            "title": "Measured peaks (same run)" if pk else "Measured peaks: not measured (--no-latency)",
            "columns": ["what", "value"],
            "rows": [
                ["numpy FP32 matmul GFLOP/s", pk.get("numpy_fp32_gflops")],
                ["onnxruntime FP32 MatMul GFLOP/s", pk.get("ort_fp32_gflops")],
                ["onnxruntime u8s8 MatMulInteger GOP/s", pk.get("ort_int8_gops")],
                ["matrix size n", pk.get("n")],
                ["threads", pk.get("threads")],
                *(
                    [
                        [f"CUDA FP32 matmul GFLOP/s (PyTorch, TF32 off), {pk.get('gpu')}", pk.get("cuda_fp32_gflops")],
                        [f"CUDA FP16 matmul GFLOP/s (PyTorch), {pk.get('gpu')}", pk.get("cuda_fp16_gflops")],
                    ]
                    if pk.get("gpu")
                    else []
                ),
            ],
            "note": "square n x n matmuls: close to the best case; conv layers reach less",
        }
    )
    stage_cols = [s for s in STAGES if any(s in r["stages"] for r in results.get("latency", []))]
    lat_rows = []
    for r in results.get("latency", []):
        inf = r["stages"]["inference"]
        lat_rows.append(
            [
                r["model"],
                r["graph"],
                r["device"],
                r["precision"],
                r["resolution"],
                r["batch"],
                *[_stage(r, s) for s in stage_cols if s != "inference"],
                inf["p50_ms"],
                inf["p95_ms"],
                inf["p99_ms"],
                r["total"]["p50_ms"],
                r["fps"],
                r["gops"],
                None if r["peak_fraction"] is None else 100 * r["peak_fraction"],
                inf["n"],
            ]
        )
    tables.append(
        {
            "title": "Latency per stage (ms, p50 unless marked) and compute efficiency",
            "columns": [
                "model",
                "graph",
                "device",
                "precision",
                "resolution",
                "batch",
                *[s for s in stage_cols if s != "inference"],
                "inference p50",
                "inference p95",
                "inference p99",
                "total p50",
                "frames/s",
                "GFLOP/s (GOP/s int8)",
                "% of peak",
                "n",
            ],
            "rows": lat_rows,
            "note": f"{threads} onnxruntime threads; per call of `batch` frames; frames/s end to end from the mean; "
            "GFLOP/s = 2 x edgeae.macs_per_pixel x pixels x batch / inference p50; peak = onnxruntime MatMul "
            "(FP32, or u8s8 for INT8) measured in this run; on cuda the PyTorch matmul of the same precision; "
            "cuda inference includes the host-to-device and device-to-host copies of the uint8 frames",
        }
    )
    if results.get("opencv"):
        tables.append(_opencv_table(results))
    if results.get("int8_vs_fp32"):
        tables.append(
            {
                "title": "INT8 vs FP32 onnxruntime (interleaved, same input)",
                "columns": ["model", "graph", "resolution", "FP32 p50 ms", "INT8 p50 ms", "speed-up", "n"],
                "rows": [
                    [
                        p["model"],
                        p["graph"],
                        p["resolution"],
                        p["fp32"]["p50_ms"],
                        p["int8"]["p50_ms"],
                        p["speedup"],
                        p["fp32"]["n"],
                    ]
                    for p in results["int8_vs_fp32"]
                ],
                "note": "inference (RuntimeGraph.run) only, batch 1; the two sessions alternate in blocks",
            }
        )
    if results.get("torch"):
        tables.append(
            {
                "title": "PyTorch eager vs onnxruntime (same model, threads and input)",
                "columns": [
                    "model",
                    "graph",
                    "device",
                    "precision",
                    "resolution",
                    "PyTorch p50 ms",
                    "onnxruntime FP32 p50 ms",
                    "onnxruntime speed-up",
                    "max |diff|",
                ],
                "rows": [
                    [
                        t["model"],
                        t["graph"],
                        t["device"],
                        t["precision"],
                        t["resolution"],
                        t["timing"]["p50_ms"],
                        t["ort_p50_ms"],
                        t["ort_speedup"],
                        t["max_abs_diff_vs_ort"],
                    ]
                    for t in results["torch"]
                ],
                "note": "PyTorch runs the uint8-in/uint8-out wrapper the exporter traced, loaded from the "
                "checkpoint whose weights hash matches the bundle's run_id; max |diff| of outputs "
                "(uint8 levels for images)",
            }
        )
    gpu_rows = [t for t in results.get("torch", []) if t["device"] == "cuda"]
    if gpu_rows:
        tables.append(
            {
                "title": "CUDA: edgeae (uint8 in, uint8 out) vs PyTorch FP16 channels-last (model only)",
                "columns": [
                    "model",
                    "graph",
                    "resolution",
                    "PyTorch FP16 CL p50 ms",
                    "edgeae fp16 p50 ms",
                    "edgeae fp32 p50 ms",
                    "fp16 / PyTorch",
                ],
                "rows": [
                    [
                        t["model"],
                        t["graph"],
                        t["resolution"],
                        t["timing"]["p50_ms"],
                        (t.get("ort_cuda_p50_ms") or {}).get("fp16"),
                        (t.get("ort_cuda_p50_ms") or {}).get("fp32"),
                        (t["ort_cuda_p50_ms"]["fp16"] / t["timing"]["p50_ms"])
                        if (t.get("ort_cuda_p50_ms") or {}).get("fp16")
                        else None,
                    ]
                    for t in gpu_rows
                ],
                "note": "batch 1; PyTorch: the trained network on a float16 channels-last tensor already on the "
                "GPU (no pre/post-processing, no copies); edgeae: RuntimeGraph.run with I/O binding, uint8 "
                "host array in, host arrays out (copies, in-graph pre/post-processing and output checks "
                "included)",
            }
        )
    if results.get("openvino"):
        tables.append(
            {
                "title": "Native OpenVINO vs onnxruntime (same ONNX file and input)",
                "columns": ["model", "graph", "mode", "file", "resolution", "OpenVINO p50 ms", "onnxruntime p50 ms"],
                "rows": [
                    [
                        o["model"],
                        o["graph"],
                        o["mode"],
                        o["file"],
                        o["resolution"],
                        o["timing"]["p50_ms"],
                        o["ort_p50_ms"],
                    ]
                    for o in results["openvino"]
                ],
            }
        )
    if results.get("pipeline"):
        tables.append(
            {
                "title": "edgeae run (full pipeline) vs bare session.run",
                "columns": [
                    "model",
                    "device",
                    "video",
                    "frames",
                    "pipeline frames/s",
                    "session.run frames/s",
                    "ratio",
                ],
                "rows": [
                    [
                        p["model"],
                        p.get("device", "cpu"),
                        p["resolution"],
                        p["frames"],
                        p["pipeline_fps"],
                        p["session_fps"],
                        p["ratio"],
                    ]
                    for p in results["pipeline"]
                ],
                "note": "pipeline: run_pipeline on an MJPEG .avi (capture thread, decode, conversion, padding, "
                "inference, outputs); bare: session.run on the same frames already decoded",
            }
        )
    _quality_tables(results, tables)
    if results.get("skipped"):
        tables.append(
            {
                "title": "Not measured",
                "columns": ["what", "why"],
                "rows": [[s["what"], s["reason"]] for s in results["skipped"]],
            }
        )
    plots += _plots(results, out_dir, rp)
    results["tables"] = tables
    results["plots"] = plots
    return results


def _opencv_table(results: dict[str, Any]) -> dict[str, Any]:
    return {
        "title": "OpenCV classical methods (single frame)",
        "columns": ["task", "method", "resolution", "p50 ms", "p95 ms", "n"],
        "rows": [
            [
                o["task"],
                o["method"],
                o["resolution"],
                o["timing"]["p50_ms"],
                o["timing"]["p95_ms"],
                o["timing"]["n"],
            ]
            for o in results.get("opencv", [])
        ],
        "note": f"fastNlMeans at sigma {LATENCY_SIGMA:g} with the h of benchmarks.baselines.nlm_h",
    }


def _quality_tables(results: dict[str, Any], tables: list[dict[str, Any]]) -> None:
    q = results.get("quality") or {}
    den = q.get("denoise")
    if den:
        tables.append(
            {
                "title": "Denoising quality",
                "columns": ["set", "sigma", "method", "model", "precision", "images", "PSNR dB", "SSIM", "ms/image"],
                "rows": [
                    [
                        r["set"],
                        r["sigma"],
                        r["method"],
                        r["model"] or "",
                        r["precision"] or "",
                        r["images"],
                        r["psnr"],
                        r["ssim"],
                        r["ms_per_image"],
                    ]
                    for r in den["rows"]
                ],
                "formats": [None, "g", None, None, None, None, ".2f", ".4f", None],
                "note": f"noise: {den['noise']}; images: {den['sources']}; BM3D on the first "
                f"{den['bm3d']['images']} BSD68 images at sigma {den['bm3d']['sigmas']}",
            }
        )
        deltas = []
        for r in den["rows"]:
            if r["method"] != "model" or r["precision"] == "fp32":
                continue
            base = next(
                (
                    x
                    for x in den["rows"]
                    if x["method"] == "model"
                    and x["precision"] == "fp32"
                    and x["model"] == r["model"]
                    and x["set"] == r["set"]
                    and x["sigma"] == r["sigma"]
                ),
                None,
            )
            if base:
                deltas.append(
                    [
                        r["model"],
                        r["set"],
                        r["sigma"],
                        r["precision"],
                        r["psnr"] - base["psnr"],
                        r["ssim"] - base["ssim"],
                    ]
                )
        if deltas:
            tables.append(
                {
                    "title": "Denoising: FP16 / INT8 minus FP32",
                    "columns": ["model", "set", "sigma", "precision", "ΔPSNR dB", "ΔSSIM"],
                    "rows": deltas,
                    "formats": [None, None, "g", None, "+.3f", "+.4f"],
                }
            )
    comp = q.get("compress")
    if comp:
        rows = [
            [m["model"], m["precision"], m["quality"], m["bpp"], m["psnr"], m["ms_ssim"]] for m in comp["per_model"]
        ]
        for name in ("jpeg", "webp"):
            c = comp[name]
            rows += [
                [name.upper() if name == "jpeg" else "WebP", "", qv, b, p, s]
                for qv, b, p, s in zip(c["quality"], c["bpp"], c["psnr"], c["ms_ssim"], strict=True)
            ]
        tables.append(
            {
                "title": f"Compression rate-distortion ({comp['source']}, {comp['images']} images)",
                "columns": ["codec", "precision", "quality", "bpp", "PSNR dB", "MS-SSIM"],
                "rows": rows,
                "formats": [None, None, None, ".4f", ".2f", ".4f"],
                "note": f"means over the images; bpp {comp['bpp_from']}; PSNR and MS-SSIM over the three "
                "colour channels",
            }
        )
        bd_rows = []
        for name, d in comp["bd"].items():
            for ref, v in d.items():
                bd_rows.append([name, ref, v["bd_rate_psnr_pct"], v["bd_rate_msssim_pct"], v["bd_psnr_db"]])
        tables.append(
            {
                "title": "Bjøntegaard deltas",
                "columns": ["codec", "against", "BD-rate % (PSNR)", "BD-rate % (MS-SSIM dB)", "BD-PSNR dB"],
                "rows": bd_rows,
                "formats": [None, None, "+.1f", "+.1f", "+.2f"],
                "note": "negative BD-rate: fewer bits at equal quality; — where the curves do not overlap",
            }
        )
        tables.append(
            {
                "title": "Codec speed at 640x480 vs JPEG at matching PSNR",
                "columns": [
                    "model",
                    "precision",
                    "PSNR dB",
                    "bpp",
                    "encode ms",
                    "decode ms",
                    "JPEG q",
                    "JPEG PSNR",
                    "JPEG enc ms",
                    "JPEG dec ms",
                    "ratio",
                ],
                "rows": [
                    [
                        s["model"],
                        s["precision"],
                        s["psnr"],
                        s["bpp"],
                        s["encode_ms"],
                        s["decode_ms"],
                        s["jpeg_quality"],
                        s["jpeg_psnr"],
                        s["jpeg_encode_ms"],
                        s["jpeg_decode_ms"],
                        s["ratio"],
                    ]
                    for s in comp["speed_640x480"]
                ],
                "note": "medians; encode = frame to frame record (graph + entropy coding), decode = record to "
                "frame; JPEG q = lowest quality whose PSNR reaches the codec's",
            }
        )
    ano = q.get("anomaly")
    if ano:
        tables.append(
            {
                "title": "Anomaly detection (synthetic defects, benchmarks/anomaly_bench.py)",
                "columns": [
                    "model",
                    "precision",
                    "image AUROC (calibrated)",
                    "pixel AUROC (calibrated)",
                    "image AUROC (generic)",
                    "pixel AUROC (generic)",
                    "seconds",
                ],
                "rows": [
                    [
                        r["model"],
                        r["precision"],
                        r["mean"]["local"]["image_auroc"],
                        r["mean"]["local"]["pixel_auroc"],
                        r["mean"]["generic"]["image_auroc"],
                        r["mean"]["generic"]["pixel_auroc"],
                        r["seconds"],
                    ]
                    for r in ano["rows"]
                ],
                "formats": [None, None, ".3f", ".3f", ".3f", ".3f", None],
            }
        )


def _latency_plots(results: dict[str, Any], out_dir: Path, rp: Any, device: str) -> list[dict[str, str]]:
    """One latency-by-precision-and-resolution plot per model measured at several resolutions on ``device``."""
    plots = []
    by_model: dict[str, list[dict]] = {}
    for r in results.get("latency", []):
        if r["device"] == device and r["batch"] == 1:
            by_model.setdefault(r["model"], []).append(r)
    for model, rows in by_model.items():
        per: dict[tuple[str, str], dict] = {}
        for r in rows:  # a codec's two graphs add up
            k = (r["resolution"], r["precision"])
            cur = per.setdefault(
                k, {"resolution": r["resolution"], "precision": r["precision"], "p50_ms": 0.0, "p95_ms": 0.0}
            )
            cur["p50_ms"] += r["stages"]["inference"]["p50_ms"]
            cur["p95_ms"] += r["stages"]["inference"]["p95_ms"]
        if len({k[0] for k in per}) < 2 and len(by_model) > 1 and model not in _full_models(results):
            continue
        suffix = "" if device == "cpu" else f"_{device}"
        path = out_dir / f"latency_{model}{suffix}.png"
        where = f"{results['config']['threads']} threads" if device == "cpu" else device
        rp.plot_latency(list(per.values()), path, title=f"{model}: inference latency, batch 1, {where}")
        plots.append({"title": f"Latency by precision and resolution: {model} ({device})", "path": path.name})
    return plots


def _plots(results: dict[str, Any], out_dir: Path, rp: Any) -> list[dict[str, str]]:
    plots = []
    for device in dict.fromkeys(r["device"] for r in results.get("latency", [])):
        plots += _latency_plots(results, out_dir, rp, device)
    comp = (results.get("quality") or {}).get("compress")
    if comp:
        curves = {n: (c["bpp"], c["psnr"]) for n, c in comp["curves"].items()}
        curves["JPEG"] = (comp["jpeg"]["bpp"], comp["jpeg"]["psnr"])
        curves["WebP"] = (comp["webp"]["bpp"], comp["webp"]["psnr"])
        rp.plot_rd(curves, out_dir / "rd_curve.png", title=f"Rate-distortion, {comp['source']}")
        plots.append({"title": "Rate-distortion (PSNR)", "path": "rd_curve.png"})
        _plot_msssim(comp, out_dir / "rd_curve_msssim.png", rp)
        plots.append({"title": "Rate-distortion (MS-SSIM)", "path": "rd_curve_msssim.png"})
    den = (results.get("quality") or {}).get("denoise")
    if den:
        pts = _speed_points(den["rows"])
        if pts:
            rp.plot_psnr_vs_speed(
                [p[:3] for p in pts], out_dir / "psnr_vs_speed.png", title=f"Denoising: PSNR vs time ({pts[0][3]})"
            )
            plots.append({"title": "Denoising: PSNR vs speed", "path": "psnr_vs_speed.png"})
    return plots


def _full_models(results: dict[str, Any]) -> set[str]:
    return {r["model"] for r in results.get("latency", []) if r["resolution"] != "640x480"}


def _speed_points(rows: list[dict]) -> list[tuple[str, float, float, str]]:
    """(name, ms, PSNR, set) at sigma 25 on the BM3D set when BM3D ran, else the first set."""
    at25 = [r for r in rows if float(r["sigma"]) == 25.0 and r["ms_per_image"]]
    if not at25:
        return []
    bm3d = next((r for r in at25 if r["method"] == "BM3D"), None)
    if bm3d:
        sel = [r for r in at25 if r["set"] == bm3d["set"] and r["method"] in ("BM3D", "model (BM3D images)")]
        sel += [r for r in at25 if r["set"] == bm3d["set"] and r["method"] == "fastNlMeans"]
    else:
        first = at25[0]["set"]
        sel = [r for r in at25 if r["set"] == first and r["method"] in ("model", "fastNlMeans")]
    pts = []
    for r in sel:
        name = r["method"] if r["model"] is None else f"{r['model']} {r['precision']}"
        pts.append((name, float(r["ms_per_image"]), float(r["psnr"]), f"{r['set']}, sigma 25"))
    return pts


def _plot_msssim(comp: dict[str, Any], path: Path, rp: Any) -> None:
    import numpy as np

    fig = rp._figure()
    ax = fig.add_subplot()
    series = {n: (c["bpp"], c["ms_ssim"]) for n, c in comp["curves"].items()}
    series["JPEG"] = (comp["jpeg"]["bpp"], comp["jpeg"]["ms_ssim"])
    series["WebP"] = (comp["webp"]["bpp"], comp["webp"]["ms_ssim"])
    for name, (bpp, ms) in series.items():
        order = np.argsort(np.asarray(bpp, float))
        ax.plot(np.asarray(bpp, float)[order], np.asarray(ms, float)[order], marker="o", ms=3, label=name)
    ax.set_xlabel("bits per pixel")
    ax.set_ylabel("MS-SSIM (RGB)")
    ax.set_title(f"Rate-distortion (MS-SSIM), {comp['source']}")
    ax.legend()
    ax.grid(alpha=0.3)
    rp._save(fig, path)


def write_outputs(results: dict[str, Any], out: str | os.PathLike) -> tuple[Path, Path]:
    """Goals, tables and plots into ``out``; then results.json and README.md (benchmarks.report.write_report)."""
    from benchmarks.report import write_report

    out_dir = Path(out)
    build_report(results, out_dir)
    return write_report(results, out_dir)


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
