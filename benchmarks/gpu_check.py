"""The CUDA check: run on a machine with an NVIDIA GPU and onnxruntime-gpu (see docs/gpu.md).

    python -m benchmarks.gpu_check --models models --checkpoints models/checkpoints --out gpu-out

Sections, each written to ``OUT/gpu_check.json`` as soon as it finishes (a run cut short keeps what it had):

``env``       the GPU, onnxruntime's providers, versions.
``tests``     ``pytest -m gpu`` (the tests that need the CUDA provider; skipped elsewhere).
``parity``    CUDA against CPU on the real bundles, with the runtime's defaults and with TF32 on: denoised
              frames (goal: within 1 grey level), anomaly scores (goal: within 1e-3 relative), codec latents
              and the images decoded from one bitstream (goal: identical).
``variants``  CUDA provider options and I/O paths against PyTorch on one model: the runtime's path (uint8 host
              array in, host arrays out) and the same session with input and outputs left on the GPU, at
              640x480 and 1920x1080; what the runtime's CUDA defaults are chosen from.
``bench``     ``edgeae bench --device cuda`` (latency per stage, precision, resolution and batch, PyTorch FP16
              channels-last, the `edgeae run` pipeline on CUDA), written to ``OUT/bench-cuda``.

The exit status is 0 only when every section ran and every parity goal held for the runtime's defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

PARITY_SIZE = (640, 480)
VARIANT_SIZES = ((640, 480), (1920, 1080))


def _save(out: Path, results: dict[str, Any]) -> None:
    tmp = out / "gpu_check.json.tmp"
    tmp.write_text(json.dumps(results, indent=2, default=str))
    os.replace(tmp, out / "gpu_check.json")


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------------------


def env_section() -> dict[str, Any]:
    import onnxruntime as ort

    from benchmarks.machine import stamp

    out: dict[str, Any] = {"stamp": stamp(os.cpu_count() or 1), "providers": ort.get_available_providers()}
    try:
        import torch

        out["torch"] = torch.__version__
        out["torch_cuda"] = torch.cuda.is_available()
        out["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        out["torch"] = None
    return out


def tests_section(out: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider", "tests"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    (out / "gpu_tests.log").write_text(proc.stdout + proc.stderr)
    return {
        "command": " ".join(cmd[1:]),
        "returncode": proc.returncode,
        "seconds": time.perf_counter() - t0,
        "tail": (proc.stdout + proc.stderr)[-3000:],
    }


def _diff(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    d = np.abs(a.astype(np.int64) - b.astype(np.int64)) if a.dtype.kind in "iu" else np.abs(a - b)
    return {"max_abs": float(d.max()), "differing": int((d != 0).sum()), "of": int(d.size)}


def parity_section(models: Path) -> dict[str, Any]:
    """CUDA vs CPU on every bundle under ``models`` with the defaults (TF32 off) and TF32 on."""
    from benchmarks import latency as lat
    from edge_runtime.anomaly import AnomalyScorer
    from edge_runtime.bitstream import pack_stream
    from edge_runtime.codec import Decoder, Encoder, decode_stream
    from edge_runtime.model import open_graph
    from edge_runtime.session import cuda_options

    w, h = PARITY_SIZE
    clean = lat.test_frames(w, h, 3, seed=3)
    noisy = lat.test_frames(w, h, 3, noise_sigma=25.0, seed=4)
    threads = os.cpu_count() or 1
    rows: list[dict[str, Any]] = []
    for ref in lat.find_bundles(models):
        for variant, opts in (("default", None), ("tf32", cuda_options(tf32=True))):
            precs = ["fp32", "fp16"] if variant == "default" else ["fp32"]
            for prec in [p for p in precs if p in ref.precisions()]:
                row: dict[str, Any] = {"model": ref.name, "task": ref.task, "precision": prec, "cuda": variant}
                try:
                    if ref.task == "denoise":
                        cpu = open_graph(ref.bundle, "denoise", prec, device="cpu", threads=threads)
                        gpu = open_graph(ref.bundle, "denoise", prec, device="cuda", provider_options=opts)
                        a = np.stack([cpu.run_frame(f)["denoised"] for f in noisy])
                        b = np.stack([gpu.run_frame(f)["denoised"] for f in noisy])
                        row["denoised"] = _diff(a, b)
                        row["goal"] = "max |diff| <= 1 grey level"
                        row["met"] = row["denoised"]["max_abs"] <= 1
                    elif ref.task == "anomaly":
                        cpu = open_graph(ref.bundle, "anomaly", prec, device="cpu", threads=threads)
                        gpu = open_graph(ref.bundle, "anomaly", prec, device="cuda", provider_options=opts)
                        sa = np.array([float(cpu.run_frame(f)["score"]) for f in clean])
                        sb = np.array([float(gpu.run_frame(f)["score"]) for f in clean])
                        rel = np.abs(sa - sb) / np.maximum(np.abs(sa), 1e-12)
                        row["score_rel"] = float(rel.max())
                        row["anomaly_map"] = _diff(
                            np.stack([cpu.run_frame(f)["anomaly_map"] for f in clean]),
                            np.stack([gpu.run_frame(f)["anomaly_map"] for f in clean]),
                        )
                        if opts is None:  # the scorer as `edgeae score` runs it (registration, normalisation)
                            sc_cpu = AnomalyScorer(ref.root, precision=prec, device="cpu", threads=threads)
                            sc_gpu = AnomalyScorer(ref.root, precision=prec, device="cuda")
                            fa = np.array([sc_cpu.score(f).raw for f in clean])
                            fb = np.array([sc_gpu.score(f).raw for f in clean])
                            row["scorer_rel"] = float((np.abs(fa - fb) / np.maximum(np.abs(fa), 1e-12)).max())
                        row["goal"] = "score |diff| <= 1e-3 relative"
                        row["met"] = row["score_rel"] <= 1e-3 and row.get("scorer_rel", 0.0) <= 1e-3
                    else:
                        enc_c = Encoder(ref.root, precision=prec, device="cpu", threads=threads)
                        enc_g = Encoder(ref.root, precision=prec, device="cuda")
                        if opts is not None:
                            enc_g.graph = open_graph(ref.bundle, "encoder", prec, device="cuda", provider_options=opts)
                        la = np.stack([enc_c.latent(f) for f in clean])
                        lb = np.stack([enc_g.latent(f) for f in clean])
                        row["latents"] = _diff(la, lb)
                        stream = pack_stream(enc_c.model_id, enc_c.quality, [enc_c.encode(f) for f in clean])
                        stream_g = pack_stream(enc_g.model_id, enc_g.quality, [enc_g.encode(f) for f in clean])
                        row["bitstreams_identical"] = stream == stream_g
                        dec_c = Decoder(ref.root, precision=prec, device="cpu", threads=threads)
                        dec_g = Decoder(ref.root, precision=prec, device="cuda")
                        if opts is not None:
                            dec_g.graph = open_graph(ref.bundle, "decoder", prec, device="cuda", provider_options=opts)
                        row["decoded"] = _diff(
                            np.stack(decode_stream(stream, dec_c)), np.stack(decode_stream(stream, dec_g))
                        )
                        row["goal"] = "images decoded from one bitstream identical"
                        row["met"] = row["decoded"]["max_abs"] == 0
                except Exception as exc:  # recorded, not hidden: the section's result says what broke
                    row["error"] = f"{type(exc).__name__}: {exc}"
                    row["met"] = False
                _log(f"parity {row}")
                rows.append(row)
    return {"size": f"{w}x{h}", "frames": len(clean), "rows": rows}


VARIANT_OPTIONS = (("fp32", "default"), ("fp32", "tf32"), ("fp16", "default"), ("fp16", "nhwc"))


def variants_section(
    models: Path, checkpoints: Path, names: list[str], repeat: int, rows: list[dict[str, Any]], save: Any
) -> dict[str, Any]:
    """The runtime's CUDA path under several provider options, with the I/O on the host or on the GPU, next to
    PyTorch FP32 and FP16 channels-last (model only). Rows are appended to ``rows`` and saved as they come."""
    import onnxruntime as ort
    import torch

    from benchmarks import latency as lat
    from benchmarks import torch_baseline as tb
    from benchmarks.timing import summarize
    from edge_runtime.model import open_graph
    from edge_runtime.session import cuda_options

    def p50(fn: Any, n: int = repeat) -> float:
        for _ in range(5):
            fn()
        ts = []
        for _ in range(n):
            t0 = time.perf_counter_ns()
            fn()
            ts.append((time.perf_counter_ns() - t0) / 1e6)
        return summarize(ts).p50_ms

    options = {"default": cuda_options(), "tf32": cuda_options(tf32=True), "nhwc": cuda_options(nhwc=True)}
    torch.backends.cudnn.allow_tf32 = False
    threads = os.cpu_count() or 1
    refs = {r.name: r for r in lat.find_bundles(models)}
    for name in names:
        ref = refs[name]
        bench = lat.GraphBench(ref, threads)
        ckpt, why = tb.find_checkpoint(name, str(ref.bundle.contract.get("run_id", "")), [checkpoints])
        for graph_name in ref.graphs:
            feeds = {(w, h): lat.graph_feed(bench, graph_name, w, h, 1) for w, h in VARIANT_SIZES}
            module16 = tb.load_graph_module(ckpt, graph_name) if ckpt is not None else None
            core32 = next(iter(tb.load_graph_module(ckpt, graph_name).children())).to("cuda").eval() if ckpt else None
            for (w, h), (in_name, feed) in feeds.items():
                base = {"model": name, "graph": graph_name, "resolution": f"{w}x{h}"}
                if ckpt is None:
                    rows.append({**base, "runtime": "pytorch", "error": why})
                    continue
                t16 = tb.gpu_fp16_channels_last(module16, feed, 5, repeat)[0]
                rows.append({**base, "runtime": "pytorch", "precision": "fp16-channels-last", "p50_ms": t16.p50_ms})
                x32 = torch.from_numpy(np.ascontiguousarray(feed)).to("cuda")
                x32 = x32.permute(0, 3, 1, 2).float() / 255.0 if in_name == "frame" else x32.float()

                def run32(core32=core32, x32=x32) -> None:
                    with torch.inference_mode():
                        core32(x32)
                    torch.cuda.synchronize()

                rows.append({**base, "runtime": "pytorch", "precision": "fp32", "p50_ms": p50(run32)})
                save()
            for prec, opt_name in VARIANT_OPTIONS:
                if prec not in ref.bundle.precisions(graph_name):
                    continue
                try:
                    g = open_graph(ref.bundle, graph_name, prec, device="cuda", provider_options=options[opt_name])
                except Exception as exc:  # an option this build rejects: recorded
                    rows.append({"model": name, "graph": graph_name, "precision": prec, "options": opt_name,
                                 "error": f"{type(exc).__name__}: {exc}"})  # fmt: skip
                    save()
                    continue
                for (w, h), (in_name, feed) in feeds.items():
                    row = {"model": name, "graph": graph_name, "resolution": f"{w}x{h}", "runtime": "onnxruntime-cuda",
                           "precision": prec, "options": opt_name, "providers": g.providers}  # fmt: skip
                    try:
                        row["edgeae_p50_ms"] = p50(lambda g=g, i=in_name, x=feed: g.run({i: x}))
                        out_names = [o.name for o in g.info.outputs]
                        binding = g.session.io_binding()
                        binding.bind_ortvalue_input(in_name, ort.OrtValue.ortvalue_from_numpy(feed, "cuda", 0))
                        for n in out_names:
                            binding.bind_output(n, "cuda")
                        row["device_io_p50_ms"] = p50(lambda g=g, b=binding: g.session.run_with_iobinding(b))
                        if opt_name == "default":
                            row["numpy_run_p50_ms"] = p50(
                                lambda g=g, n=out_names, i=in_name, x=feed: g.session.run(n, {i: x})
                            )
                            row["upload_p50_ms"] = p50(lambda x=feed: ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0))
                    except Exception as exc:
                        row["error"] = f"{type(exc).__name__}: {exc}"
                    _log(f"variant {row}")
                    rows.append(row)
                    save()
                del g
    return {"repeat": repeat, "rows": rows}


def bench_section(models: Path, checkpoints: Path, out: Path, quick: bool) -> dict[str, Any]:
    from benchmarks.cli import BenchConfig, Progress, run_bench, write_outputs

    kw: dict[str, Any] = dict(
        models=str(models),
        devices=("cuda",),
        precisions=("fp32", "fp16"),
        checkpoints=(str(checkpoints),),
        out=str(out / "bench-cuda"),
        openvino=False,
        threads=min(8, os.cpu_count() or 1),
    )
    if quick:
        cfg = BenchConfig.quick_defaults(**kw)
    else:
        cfg = BenchConfig(
            **kw,
            batches=(1, 4),
            repeat=20,
            warmup=3,
            max_seconds=3.0,
            max_batch_pixels=9_000_000,
            pipeline_frames=60,
        )
    results = run_bench(cfg, Progress(True))
    json_path, md_path = write_outputs(results, cfg.out)
    return {
        "results": str(json_path),
        "report": str(md_path),
        "goals": results["goals"],
        "seconds": results["elapsed_s"],
    }


# --------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="models", help="folder of bundles [models]")
    ap.add_argument("--checkpoints", default="models/checkpoints", help="training checkpoints for PyTorch")
    ap.add_argument("--out", default="gpu-out", help="output folder [gpu-out]")
    ap.add_argument("--sections", default="env,tests,parity,variants,bench", help="comma-separated sections")
    ap.add_argument(
        "--variant-models",
        default="denoise-color,denoise-gray,anomaly,compress-q1",
        help="bundles for the variants section",
    )
    ap.add_argument("--repeat", type=int, default=30, help="timed calls per variant [30]")
    ap.add_argument("--quick", action="store_true", help="the bench's quick subset")
    args = ap.parse_args(argv)

    try:
        import torch  # noqa: F401  (loads the CUDA libraries onnxruntime-gpu links against)
    except ImportError:
        pass
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls"):
        ort.preload_dlls()
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        print(f"gpu_check: onnxruntime has no CUDAExecutionProvider ({ort.get_available_providers()})", file=sys.stderr)
        return 4

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    models, checkpoints = Path(args.models), Path(args.checkpoints)
    results: dict[str, Any] = {"command": " ".join(sys.argv), "sections": {}, "errors": {}}
    ok = True
    for section in [s.strip() for s in args.sections.split(",") if s.strip()]:
        _log(f"section {section}")
        t0 = time.perf_counter()
        try:
            if section == "env":
                value = env_section()
            elif section == "tests":
                value = tests_section(out)
                ok &= value["returncode"] == 0
            elif section == "parity":
                value = parity_section(models)
                # the goals are the runtime's defaults (FP32, TF32 off); FP16 and TF32 rows are for information
                ok &= all(r.get("met") for r in value["rows"] if r["cuda"] == "default" and r["precision"] == "fp32")
            elif section == "variants":
                rows: list[dict[str, Any]] = []
                results["sections"]["variants"] = {"repeat": args.repeat, "rows": rows, "partial": True}
                value = variants_section(
                    models, checkpoints, args.variant_models.split(","), args.repeat, rows, lambda: _save(out, results)
                )
            elif section == "bench":
                value = bench_section(models, checkpoints, out, args.quick)
            else:
                raise ValueError(f"unknown section {section!r}")
            results["sections"][section] = value
        except Exception:  # one broken section must not cost the others' results
            ok = False
            results["errors"][section] = traceback.format_exc()
            _log(f"section {section} failed:\n{results['errors'][section]}")
        results.setdefault("seconds", {})[section] = time.perf_counter() - t0
        _save(out, results)
    results["ok"] = ok
    _save(out, results)
    _log(f"done, ok={ok}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
