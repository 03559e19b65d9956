"""The report of a bench run: goals, tables and PNG plots made from the results dict of
:func:`benchmarks.run.run_bench`, written as results.json and README.md by :mod:`benchmarks.report`.

:func:`build_report` adds ``goals``, ``tables`` and ``plots`` to the results; :func:`write_outputs` writes it all.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from benchmarks.config import LATENCY_SIGMA
from benchmarks.goals import compute_goals


def write_outputs(results: dict[str, Any], out: str | os.PathLike) -> tuple[Path, Path]:
    """Goals, tables and plots into ``out``; then results.json and README.md (benchmarks.report.write_report)."""
    from benchmarks.report import write_report

    out_dir = Path(out)
    build_report(results, out_dir)
    return write_report(results, out_dir)


def write_partial(results: dict[str, Any], out: str | os.PathLike) -> None:
    """The report of a run that stopped on ``results["error"]``: the partial numbers and one Error table."""
    from benchmarks.report import write_report

    error = _table(
        "Error",
        ["error"],
        [[results.get("error")]],
        note="the run stopped; the numbers in results.json are partial",
    )
    write_report({**results, "tables": [error]}, out)


def build_report(results: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """Add ``goals``, ``tables`` and ``plots`` (PNG files written under ``out_dir``) to the results."""
    out_dir.mkdir(parents=True, exist_ok=True)
    results["goals"] = compute_goals(results)
    tables = [_goals_table(results), _peaks_table(results), _latency_table(results)]
    cuda_rows = [t for t in results.get("torch", []) if t["device"] == "cuda"]
    for rows, make in (
        (results.get("opencv"), _opencv_table),
        (results.get("int8_vs_fp32"), _int8_table),
        (results.get("torch"), _torch_table),
        (cuda_rows, _cuda_table),
        (results.get("openvino"), _openvino_table),
        (results.get("pipeline"), _pipeline_table),
    ):
        if rows:  # a table only for what was measured
            tables.append(make(rows))
    tables += _quality_tables(results.get("quality") or {})
    if results.get("skipped"):
        tables.append(_table("Not measured", ["what", "why"], [[s["what"], s["reason"]] for s in results["skipped"]]))
    results["tables"] = tables
    results["plots"] = _plots(results, out_dir)
    return results


def _table(
    title: str, columns: list[str], rows: list[list[Any]], formats: list[str | None] | None = None, note: str = ""
) -> dict[str, Any]:
    """One table as :mod:`benchmarks.report` reads it; ``formats`` and ``note`` only when given."""
    table: dict[str, Any] = {"title": title, "columns": columns, "rows": rows}
    if formats:
        table["formats"] = formats
    if note:
        table["note"] = note
    return table


# --------------------------------------------------------------------------------------------------------------
# Speed tables


def _goals_table(results: dict[str, Any]) -> dict[str, Any]:
    rows = [
        [
            g["goal"],
            g["model"] or "",
            g["measured"],
            g["target"],
            "—" if g["met"] is None else ("yes" if g["met"] else "NO"),
            g["note"],
        ]
        for g in results["goals"]
    ]
    return _table(
        "Goals",
        ["goal", "model", "measured", "target", "met", "how"],
        rows,
        [None, None, ".2f", None, None, None],
        f"all from this run, {results['config']['threads']} threads; ratios of p50 latencies measured back to back",
    )


def _peaks_table(results: dict[str, Any]) -> dict[str, Any]:
    pk = results.get("peaks") or {}
    gpu = [
        [f"CUDA FP32 matmul GFLOP/s (PyTorch, TF32 off), {pk.get('gpu')}", pk.get("cuda_fp32_gflops")],
        [f"CUDA FP16 matmul GFLOP/s (PyTorch), {pk.get('gpu')}", pk.get("cuda_fp16_gflops")],
    ]
    rows = [
        ["numpy FP32 matmul GFLOP/s", pk.get("numpy_fp32_gflops")],
        ["onnxruntime FP32 MatMul GFLOP/s", pk.get("ort_fp32_gflops")],
        ["onnxruntime u8s8 MatMulInteger GOP/s", pk.get("ort_int8_gops")],
        ["matrix size n", pk.get("n")],
        ["threads", pk.get("threads")],
        *(gpu if pk.get("gpu") else []),
    ]
    return _table(
        "Measured peaks (same run)" if pk else "Measured peaks: not measured (--no-latency)",
        ["what", "value"],
        rows,
        note="square n x n matmuls: close to the best case; conv layers reach less",
    )


def _stage(row: dict, name: str) -> float | None:
    st = row["stages"].get(name)
    return st["p50_ms"] if st else None


def _latency_table(results: dict[str, Any]) -> dict[str, Any]:
    from benchmarks.latency import STAGES

    keys = ("model", "graph", "device", "precision", "resolution", "batch")
    extra = [s for s in STAGES if s != "inference" and any(s in r["stages"] for r in results.get("latency", []))]
    rows = []
    for r in results.get("latency", []):
        inf = r["stages"]["inference"]
        fraction = None if r["peak_fraction"] is None else 100 * r["peak_fraction"]
        stages = [_stage(r, s) for s in extra] + [inf["p50_ms"], inf["p95_ms"], inf["p99_ms"]]
        rows.append([*(r[k] for k in keys), *stages, r["total"]["p50_ms"], r["fps"], r["gops"], fraction, inf["n"]])
    columns = [*keys, *extra, "inference p50", "inference p95", "inference p99", "total p50", "frames/s"]
    columns += ["GFLOP/s (GOP/s int8)", "% of peak", "n"]
    return _table(
        "Latency per stage (ms, p50 unless marked) and compute efficiency",
        columns,
        rows,
        note=f"{results['config']['threads']} onnxruntime threads; per call of `batch` frames; frames/s end to end "
        "from the mean; GFLOP/s = 2 x edgeae.macs_per_pixel x pixels x batch / inference p50; peak = onnxruntime "
        "MatMul (FP32, or u8s8 for INT8) measured in this run; on cuda the PyTorch matmul of the same precision; "
        "cuda inference includes the host-to-device and device-to-host copies of the uint8 frames",
    )


def _opencv_table(rows: list[dict]) -> dict[str, Any]:
    return _table(
        "OpenCV classical methods (single frame)",
        ["task", "method", "resolution", "p50 ms", "p95 ms", "n"],
        [
            [o["task"], o["method"], o["resolution"], o["timing"]["p50_ms"], o["timing"]["p95_ms"], o["timing"]["n"]]
            for o in rows
        ],
        note=f"fastNlMeans at sigma {LATENCY_SIGMA:g} with the h of benchmarks.baselines.nlm_h",
    )


def _int8_table(pairs: list[dict]) -> dict[str, Any]:
    rows = []
    for p in pairs:
        fp32, int8 = p["fp32"], p["int8"]
        rows.append([p["model"], p["graph"], p["resolution"], fp32["p50_ms"], int8["p50_ms"], p["speedup"], fp32["n"]])
    return _table(
        "INT8 vs FP32 onnxruntime (interleaved, same input)",
        ["model", "graph", "resolution", "FP32 p50 ms", "INT8 p50 ms", "speed-up", "n"],
        rows,
        note="inference (RuntimeGraph.run) only, batch 1; the two sessions alternate in blocks",
    )


def _torch_table(rows: list[dict]) -> dict[str, Any]:
    keys = ("model", "graph", "device", "precision", "resolution")
    return _table(
        "PyTorch eager vs onnxruntime (same model, threads and input)",
        [*keys, "PyTorch p50 ms", "onnxruntime FP32 p50 ms", "onnxruntime speed-up", "max |diff|"],
        [
            [*(t[k] for k in keys), t["timing"]["p50_ms"], t["ort_p50_ms"], t["ort_speedup"], t["max_abs_diff_vs_ort"]]
            for t in rows
        ],
        note="PyTorch runs the uint8-in/uint8-out wrapper the exporter traced, loaded from the checkpoint whose "
        "weights hash matches the bundle's run_id; max |diff| of outputs (uint8 levels for images)",
    )


def _cuda_table(gpu_rows: list[dict]) -> dict[str, Any]:
    rows = []
    for t in gpu_rows:
        ort = t.get("ort_cuda_p50_ms") or {}
        torch_ms = t["timing"]["p50_ms"]
        ratio = ort["fp16"] / torch_ms if ort.get("fp16") else None
        rows.append([t["model"], t["graph"], t["resolution"], torch_ms, ort.get("fp16"), ort.get("fp32"), ratio])
    columns = ["model", "graph", "resolution", "PyTorch FP16 CL p50 ms", "edgeae fp16 p50 ms", "edgeae fp32 p50 ms"]
    return _table(
        "CUDA: edgeae (uint8 in, uint8 out) vs PyTorch FP16 channels-last (model only)",
        [*columns, "fp16 / PyTorch"],
        rows,
        note="batch 1; PyTorch: the trained network on a float16 channels-last tensor already on the GPU (no "
        "pre/post-processing, no copies); edgeae: RuntimeGraph.run with I/O binding, uint8 host array in, host "
        "arrays out (copies, in-graph pre/post-processing and output checks included)",
    )


def _openvino_table(rows: list[dict]) -> dict[str, Any]:
    keys = ("model", "graph", "mode", "file", "resolution")
    return _table(
        "Native OpenVINO vs onnxruntime (same ONNX file and input)",
        [*keys, "OpenVINO p50 ms", "onnxruntime p50 ms"],
        [[*(o[k] for k in keys), o["timing"]["p50_ms"], o["ort_p50_ms"]] for o in rows],
    )


def _pipeline_table(rows: list[dict]) -> dict[str, Any]:
    keys = ("resolution", "frames", "pipeline_fps", "session_fps", "ratio")
    return _table(
        "edgeae run (full pipeline) vs bare session.run",
        ["model", "device", "video", "frames", "pipeline frames/s", "session.run frames/s", "ratio", "rounds"],
        [[p["model"], p.get("device", "cpu"), *(p[k] for k in keys), _rounds(p)] for p in rows],
        note="pipeline: edgeae run's loop (commands.run_task) on an MJPEG .avi, no outputs (capture thread, "
        "decode, conversion, padding, inference, post-processing, events); bare: session.run of the same "
        "sessions on the same frames already decoded and prepared. Interleaved: after a warm-up, rounds over the "
        "whole video alternate the two (order swapped each round); frames/s are steady-state medians, ratio the "
        "median of the rounds' ratios (the rounds column gives their range)",
    )


def _rounds(p: dict) -> str:
    if not p.get("rounds"):
        return ""
    if p.get("ratio_min") is None:
        return str(p["rounds"])
    return f"{p['rounds']} ({p['ratio_min']:.3f}-{p['ratio_max']:.3f})"


# --------------------------------------------------------------------------------------------------------------
# Quality tables


def _quality_tables(q: dict[str, Any]) -> list[dict[str, Any]]:
    tables = []
    if q.get("denoise"):
        tables += _denoise_tables(q["denoise"])
    if q.get("compress"):
        tables += _compress_tables(q["compress"])
    if q.get("anomaly"):
        tables.append(_anomaly_table(q["anomaly"]))
    return tables


def _denoise_tables(den: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for r in den["rows"]:
        who = [r["model"] or "", r["precision"] or ""]
        rows.append([r["set"], r["sigma"], r["method"], *who, r["images"], r["psnr"], r["ssim"], r["ms_per_image"]])
    tables = [
        _table(
            "Denoising quality",
            ["set", "sigma", "method", "model", "precision", "images", "PSNR dB", "SSIM", "ms/image"],
            rows,
            [None, "g", None, None, None, None, ".2f", ".4f", None],
            f"noise: {den['noise']}; images: {den['sources']}; BM3D on the first {den['bm3d']['images']} BSD68 "
            f"images at sigma {den['bm3d']['sigmas']}; CBM3D on the first {den.get('cbm3d', {}).get('images', 0)} "
            f"Set14 images at sigma {den.get('cbm3d', {}).get('sigmas', [])}; per-image PSNR/SSIM in results.json",
        )
    ]
    deltas = _precision_deltas(den["rows"])
    if deltas:
        columns = ["model", "set", "sigma", "precision", "ΔPSNR dB", "ΔSSIM"]
        formats = [None, None, "g", None, "+.3f", "+.4f"]
        tables.append(_table("Denoising: FP16 / INT8 minus FP32", columns, deltas, formats))
    return tables


def _precision_deltas(rows: list[dict]) -> list[list[Any]]:
    """PSNR and SSIM of each FP16/INT8 model row minus its FP32 row (same model, set and sigma)."""
    deltas = []
    for r in rows:
        if r["method"] != "model" or r["precision"] == "fp32":
            continue
        same = ("model", "set", "sigma")
        base = next(
            (
                x
                for x in rows
                if x["method"] == "model" and x["precision"] == "fp32" and all(x[k] == r[k] for k in same)
            ),
            None,
        )
        if base:
            deltas.append(
                [r["model"], r["set"], r["sigma"], r["precision"], r["psnr"] - base["psnr"], r["ssim"] - base["ssim"]]
            )
    return deltas


def _compress_tables(comp: dict[str, Any]) -> list[dict[str, Any]]:
    rows = [[m["model"], m["precision"], m["quality"], m["bpp"], m["psnr"], m["ms_ssim"]] for m in comp["per_model"]]
    for name in ("jpeg", "webp"):
        c = comp[name]
        rows += [
            [name.upper() if name == "jpeg" else "WebP", "", qv, b, p, s]
            for qv, b, p, s in zip(c["quality"], c["bpp"], c["psnr"], c["ms_ssim"], strict=True)
        ]
    bd_rows = []
    for name, d in comp["bd"].items():
        for ref, v in d.items():
            bd_rows.append([name, ref, v["bd_rate_psnr_pct"], v["bd_rate_msssim_pct"], v["bd_psnr_db"]])
    return [
        _table(
            f"Compression rate-distortion ({comp['source']}, {comp['images']} images)",
            ["codec", "precision", "quality", "bpp", "PSNR dB", "MS-SSIM"],
            rows,
            [None, None, None, ".4f", ".2f", ".4f"],
            f"means over the images; bpp {comp['bpp_from']}; PSNR and MS-SSIM over the three colour channels",
        ),
        _table(
            "Bjøntegaard deltas",
            ["codec", "against", "BD-rate % (PSNR)", "BD-rate % (MS-SSIM dB)", "BD-PSNR dB"],
            bd_rows,
            [None, None, "+.1f", "+.1f", "+.2f"],
            "negative BD-rate: fewer bits at equal quality; — where the curves do not overlap",
        ),
        _codec_speed_table(comp["speed_640x480"]),
    ]


def _codec_speed_table(speed: list[dict]) -> dict[str, Any]:
    keys = ("model", "precision", "psnr", "bpp", "encode_ms", "decode_ms")
    keys += ("jpeg_quality", "jpeg_psnr", "jpeg_encode_ms", "jpeg_decode_ms", "ratio")
    columns = ["model", "precision", "PSNR dB", "bpp", "encode ms", "decode ms", "JPEG q", "JPEG PSNR"]
    columns += ["JPEG enc ms", "JPEG dec ms", "ratio"]
    return _table(
        "Codec speed at 640x480 vs JPEG at matching PSNR",
        columns,
        [[s[k] for k in keys] for s in speed],
        note="medians; encode = frame to frame record (graph + entropy coding), decode = record to frame; JPEG q = "
        "lowest quality whose PSNR reaches the codec's",
    )


def _anomaly_table(ano: dict[str, Any]) -> dict[str, Any]:
    columns = ["model", "precision", "image AUROC (calibrated)", "pixel AUROC (calibrated)", "image AUROC (generic)"]
    columns += ["pixel AUROC (generic)", "seconds"]
    rows = []
    for r in ano["rows"]:
        loc, gen = r["mean"]["local"], r["mean"]["generic"]
        aurocs = [loc["image_auroc"], loc["pixel_auroc"], gen["image_auroc"], gen["pixel_auroc"]]
        rows.append([r["model"], r["precision"], *aurocs, r["seconds"]])
    return _table(
        "Anomaly detection (synthetic defects, benchmarks/anomaly_bench.py)",
        columns,
        rows,
        [None, None, ".3f", ".3f", ".3f", ".3f", None],
    )


# --------------------------------------------------------------------------------------------------------------
# Plots


def _plots(results: dict[str, Any], out_dir: Path) -> list[dict[str, str]]:
    from benchmarks import report as rp

    plots = []
    for device in dict.fromkeys(r["device"] for r in results.get("latency", [])):
        plots += _latency_plots(results, out_dir, device)
    comp = (results.get("quality") or {}).get("compress")
    if comp:
        rp.plot_rd(_rd_series(comp, "psnr"), out_dir / "rd_curve.png", title=f"Rate-distortion, {comp['source']}")
        plots.append({"title": "Rate-distortion (PSNR)", "path": "rd_curve.png"})
        rp.plot_rd(
            _rd_series(comp, "ms_ssim"),
            out_dir / "rd_curve_msssim.png",
            title=f"Rate-distortion (MS-SSIM), {comp['source']}",
            ylabel="MS-SSIM (RGB)",
        )
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


def _rd_series(comp: dict[str, Any], metric: str) -> dict[str, tuple[list[float], list[float]]]:
    """``{codec: (bpp, metric)}`` for edgeae's curves, JPEG and WebP; ``metric``: "psnr" or "ms_ssim"."""
    series = {n: (c["bpp"], c[metric]) for n, c in comp["curves"].items()}
    series["JPEG"] = (comp["jpeg"]["bpp"], comp["jpeg"][metric])
    series["WebP"] = (comp["webp"]["bpp"], comp["webp"][metric])
    return series


def _latency_plots(results: dict[str, Any], out_dir: Path, device: str) -> list[dict[str, str]]:
    """One latency-by-precision-and-resolution plot per model measured at several resolutions on ``device``."""
    from benchmarks import report as rp

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
