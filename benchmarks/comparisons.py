"""Side-by-side comparisons of a bench run, each on the same input as edgeae's own graph: INT8 against FP32
onnxruntime, PyTorch eager on the same checkpoint (CPU, and FP16 channels-last on CUDA), and native OpenVINO on
the same ONNX files. Called by :mod:`benchmarks.run`; each returns its rows and records what it skipped."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.config import BenchConfig


def int8_pairs(cfg: BenchConfig, refs: list, benches: dict, progress: Callable[[str], None]) -> list[dict[str, Any]]:
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


# --------------------------------------------------------------------------------------------------------------
# PyTorch eager


def torch_side(
    cfg: BenchConfig,
    refs: list,
    benches: dict,
    devices: list[str],
    primary: dict,
    skipped: list,
    progress: Callable[[str], None],
) -> list[dict[str, Any]]:
    """PyTorch eager against onnxruntime, interleaved on the same input: on the CPU at the same threads; on
    CUDA the trained core in FP16 channels-last (model only, input already on the GPU) at every grid
    resolution against edgeae's uint8-in/uint8-out ``RuntimeGraph.run`` at FP16 and FP32."""
    from benchmarks import torch_baseline as tb

    off = {"what": "PyTorch eager", "reason": "--no-torch"}
    if _switched_off(cfg.torch, off, tb.torch_available, "PyTorch eager", skipped):
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
        cpu_res, gpu_res = _torch_resolutions(cfg, ref.name, devices, primary, skipped)
        bench = benches[ref.name]
        for g in ref.graphs:
            module = tb.load_graph_module(ckpt, g)
            graph = bench.graph(g, "fp32", "cpu")
            for res in cpu_res:
                out.append(_torch_cpu_row(cfg, ref.name, bench, g, module, graph, res, str(ckpt), progress))
            out += _torch_cuda_rows(cfg, ref, bench, g, module, gpu_res, str(ckpt), skipped, progress)
    return out


def _torch_resolutions(
    cfg: BenchConfig, name: str, devices: list[str], primary: dict, skipped: list
) -> tuple[list[str], list[str]]:
    """Resolutions PyTorch runs at: ``(on the CPU, on CUDA)``, empty for a device not measured."""
    from benchmarks import latency as lat

    resolutions = cfg.resolutions if primary[name] is None and not cfg.quick else ()
    big = [r for r in resolutions if _pixels(r) > cfg.max_batch_pixels]
    if big and "cpu" in devices:
        skipped.append({"what": f"PyTorch eager for {name} at {', '.join(big)}", "reason": "over --max-batch-pixels"})
    # on the GPU every resolution of the grid (the goal is stated at 1920x1080), on the CPU up to the cap;
    # a bundle of an architecture measured already: only where the grid measured it (the goal resolution)
    if primary[name] is None:
        gpu_res = list(cfg.resolutions)
    else:
        gpu_res = [lat.GOAL_RESOLUTION] if lat.GOAL_RESOLUTION in cfg.resolutions else []
    resolutions = [r for r in resolutions if r not in big]
    cpu_res = list(dict.fromkeys([*resolutions, lat.GOAL_RESOLUTION])) if "cpu" in devices else []
    return cpu_res, gpu_res if "cuda" in devices else []


def _torch_cpu_row(
    cfg: BenchConfig,
    model: str,
    bench: Any,
    g: str,
    module: Any,
    graph: Any,
    res: str,
    ckpt: str,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """PyTorch eager against onnxruntime FP32 on the CPU, same threads and input, interleaved; outputs compared."""
    from benchmarks import latency as lat
    from benchmarks import torch_baseline as tb

    w, h = lat.parse_resolution(res)
    progress(f"pytorch eager vs onnxruntime: {model} {g} {res} batch 1, {cfg.threads} threads")
    name, feed = lat.graph_feed(bench, g, w, h, 1)
    with tb.torch_threads(cfg.threads):
        call, outputs = tb.module_call(module, feed)
        t = lat.interleaved(
            {"torch": call, "ort": lambda: graph.run({name: feed})},
            cfg.warmup,
            cfg.repeat,
            cfg.max_seconds,
        )
        diff = tb.max_abs_diff(outputs(), list(graph.run({name: feed}).values()))
    return {
        "model": model,
        "graph": g,
        "device": "cpu",
        "precision": "fp32",
        "resolution": res,
        "batch": 1,
        "threads": cfg.threads,
        "checkpoint": ckpt,
        "timing": t["torch"].to_dict(),
        "ort_timing": t["ort"].to_dict(),
        "ort_p50_ms": t["ort"].p50_ms,
        "ort_speedup": t["torch"].p50_ms / t["ort"].p50_ms,
        "max_abs_diff_vs_ort": diff,
    }


def _torch_cuda_rows(
    cfg: BenchConfig,
    ref: Any,
    bench: Any,
    g: str,
    module: Any,
    resolutions: list[str],
    ckpt: str,
    skipped: list,
    progress: Callable[[str], None],
) -> list[dict[str, Any]]:
    """PyTorch FP16 channels-last on CUDA against edgeae's FP16 and FP32 graphs, interleaved, per resolution;
    none further once PyTorch cannot run the module on the GPU (recorded in ``skipped``)."""
    from benchmarks import latency as lat
    from benchmarks import torch_baseline as tb

    out = []
    for res in resolutions:
        w, h = lat.parse_resolution(res)
        progress(f"pytorch fp16 channels-last vs onnxruntime on cuda (interleaved): {ref.name} {g} {res}")
        name, feed = lat.graph_feed(bench, g, w, h, 1)
        call, reason = tb.gpu_fp16_call(module, feed)
        if call is None:
            skipped.append({"what": f"PyTorch FP16 channels-last for {ref.name} {g}", "reason": reason})
            break
        fns: dict[str, Any] = {"torch": call}
        for p in [p for p in ("fp16", "fp32") if p in ref.bundle.precisions(g) and p in cfg.precisions]:
            gr = bench.graph(g, p, "cuda")
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
                "checkpoint": ckpt,
                "timing": t["torch"].to_dict(),
                "ort_p50_ms": (t.get("fp16") or t.get("fp32")).p50_ms if len(t) > 1 else None,
                "ort_cuda_p50_ms": {p: t[p].p50_ms for p in ("fp16", "fp32") if p in t},
                "ort_speedup": None,
                "max_abs_diff_vs_ort": None,
            }
        )
    return out


def _switched_off(
    enabled: bool, off: dict[str, str], available: Callable[[], tuple[bool, str]], what: str, skipped: list
) -> bool:
    """True, with the reason recorded in ``skipped``, when a comparison is switched off (``off``: its entry) or
    its runtime is missing (``available()`` returns ``(ok, why)``)."""
    if not enabled:
        skipped.append(off)
        return True
    ok, why = available()
    if not ok:
        skipped.append({"what": what, "reason": why})
    return not ok


def _checkpoint_dirs(cfg: BenchConfig) -> list[Path]:
    if cfg.checkpoints:
        return [Path(p) for p in cfg.checkpoints]
    from benchmarks.data import repo_root

    models = Path(cfg.models)
    return [models / "checkpoints", repo_root() / "models" / "checkpoints", repo_root() / "runs"]


def _pixels(res: str) -> int:
    from benchmarks.latency import parse_resolution

    w, h = parse_resolution(res)
    return w * h


# --------------------------------------------------------------------------------------------------------------
# Native OpenVINO


def openvino_side(
    cfg: BenchConfig,
    refs: list,
    benches: dict,
    primary: dict,
    st: dict,
    skipped: list,
    progress: Callable[[str], None],
    ort_rows: list[dict],
) -> list[dict[str, Any]]:
    """Native OpenVINO (FP32, BF16 where the CPU has it, INT8) on the same ONNX files and inputs, batch 1, next to
    the onnxruntime latency row of the same graph, precision and resolution."""
    from benchmarks import latency as lat
    from benchmarks import openvino_baseline as ovb

    off = {"what": "native OpenVINO", "reason": "disabled"}
    if _switched_off(cfg.openvino, off, ovb.openvino_available, "native OpenVINO (FP32, BF16, INT8)", skipped):
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
                            "ort_p50_ms": ort["stages"]["inference"]["p50_ms"] if ort else None,
                        }
                    )
    return out


def _ort_row(
    rows: list[dict], model: str, graph: str, device: str, precision: str, res: str, batch: int
) -> dict | None:
    """The onnxruntime latency row of that cell of the grid, or None where it was not measured."""
    key = (model, graph, device, precision, res, batch)
    return next(
        (r for r in rows if (r["model"], r["graph"], r["device"], r["precision"], r["resolution"], r["batch"]) == key),
        None,
    )
