"""Native OpenVINO (PyPI ``openvino``, not the onnxruntime provider) on the same ONNX files: a peer runtime.

FP32: the FP32 file with ``INFERENCE_PRECISION_HINT=f32``; BF16: the same file with ``bf16`` where the CPU has
BF16 instructions (AVX512_BF16 or AMX); INT8: the bundle's INT8 (QDQ) file, which OpenVINO runs in integer
arithmetic. The model is reshaped to the static input shape first, as OpenVINO is meant to be used. Threads are
set with ``INFERENCE_NUM_THREADS``. ``openvino`` is optional (``pip install 'edgeae[openvino]'``) and imported
only here.

What OpenVINO really executed is read back from the compiled model, not assumed from the hint: the inference
precision it settled on and the runtime precision of every convolution (``kernel_precisions``). A CPU without
BF16 turns the ``bf16`` hint into f32 silently; a QDQ file whose pattern the CPU plugin does not fuse runs its
convolutions in f32. Both show up in the report.

Command line (self-contained; ``edgeae bench`` uses :func:`time_openvino` for its own OpenVINO rows)::

    python -m benchmarks.openvino_baseline --models models --resolution 640x480 --threads 2 --out DIR

measures, per bundle (bundles with the same architecture as an earlier one, e.g. compress-q2..q4 after q1, are
skipped) and graph, with the same input and threads and interleaved (:func:`benchmarks.latency.interleaved`):
onnxruntime CPU through :func:`edge_runtime.model.open_graph` (the runtime's real path) at FP32 and, where the
bundle has one, INT8; OpenVINO FP32, BF16 (where supported) and INT8 on the INT8 file. Outputs of OpenVINO are
compared with onnxruntime's for the same file (BF16 against FP32). Writes ``results.json`` (stamped with
:func:`benchmarks.machine.stamp`) and ``section.md`` to ``--out``.
"""

from __future__ import annotations

import collections
import importlib.util
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.timing import Timing, summarize
from edge_runtime.errors import EdgeAEError, ModelRejectedError, UsageError

# OpenVINO run -> (bundle precision of the ONNX file, inference precision hint)
MODES = {"fp32": ("fp32", "f32"), "bf16": ("fp32", "bf16"), "int8": ("int8", "f32")}
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# Layer types whose runtime precision tells what arithmetic the model really ran in.
_COMPUTE_LAYERS = ("Convolution", "Deconvolution", "GroupConvolution", "FullyConnected", "MatMul")
_OV_NUMPY = {"u8": np.uint8, "i8": np.int8, "i32": np.int32, "i64": np.int64, "f32": np.float32, "f16": np.float16}


def openvino_available() -> tuple[bool, str]:
    if importlib.util.find_spec("openvino") is None:
        return False, "openvino is not installed (pip install openvino)"
    return True, ""


def bf16_supported(cpu_flags: list[str] | None) -> bool:
    """True when the CPU flags (benchmarks.machine.stamp()["cpu"]["flags"]) include BF16 instructions."""
    return any(f in (cpu_flags or []) for f in BF16_FLAGS)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


class OpenVINOGraph:
    """One ONNX file compiled by OpenVINO's CPU plugin for one static input shape, with one infer request.

    ``run(x)`` returns ``{output name: array}`` in the ONNX file's output order (copies: the request reuses its
    buffers). ``infer(x)`` only runs (what is timed). ``x`` must have the input's element type: OpenVINO would
    otherwise convert it silently, and a float frame is not what the graph's contract takes.
    """

    def __init__(self, onnx_path: str | Path, input_name: str, shape: Sequence[int], hint: str, threads: int):
        import openvino as ov

        self.path = Path(onnx_path)
        self.input_name = input_name
        self.hint = hint
        core = ov.Core()
        try:
            model = core.read_model(str(self.path))
        except Exception as exc:  # OpenVINO raises RuntimeError and friends from its frontends
            raise ModelRejectedError(f"{self.path}: OpenVINO could not read the model: {_first_line(exc)}") from exc
        names = [i.get_any_name() for i in model.inputs]
        if names != [input_name]:
            raise ModelRejectedError(f"{self.path}: expected one input {input_name!r}, the model has {names}")
        self.input_type = model.inputs[0].get_element_type().get_type_name()
        try:
            model.reshape({input_name: ov.PartialShape([int(d) for d in shape])})
            config: dict[str, Any] = {
                "INFERENCE_NUM_THREADS": int(threads),
                "INFERENCE_PRECISION_HINT": hint,
                "PERFORMANCE_HINT": "LATENCY",
            }
            self.compiled = core.compile_model(model, "CPU", config)
        except Exception as exc:
            raise ModelRejectedError(
                f"{self.path}: OpenVINO refused the model for input shape {list(shape)}: {_first_line(exc)}"
            ) from exc
        self.output_names = [o.get_any_name() for o in self.compiled.outputs]
        self.request = self.compiled.create_infer_request()
        self._input_port = self.compiled.inputs[0]

    def _check(self, x: np.ndarray) -> np.ndarray:
        want = _OV_NUMPY.get(self.input_type)
        if want is not None and x.dtype != want:
            raise ModelRejectedError(f"{self.path}: input {self.input_name}: expected {self.input_type}, got {x.dtype}")
        return np.ascontiguousarray(x)

    def infer(self, x: np.ndarray) -> None:
        # share_inputs: the contiguous array is used in place, as onnxruntime does; no copy inside the timing.
        self.request.infer({self._input_port: x}, share_inputs=True)

    def outputs(self) -> dict[str, np.ndarray]:
        """Outputs of the last inference, copied, by name."""
        return {
            name: np.array(self.request.get_tensor(port).data, copy=True)
            for name, port in zip(self.output_names, self.compiled.outputs, strict=True)
        }

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        self.infer(self._check(x))
        return self.outputs()

    def inference_precision(self) -> str:
        """The precision OpenVINO settled on (``f32``, ``bf16``...), read back from the compiled model."""
        value = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        return value.get_type_name() if hasattr(value, "get_type_name") else str(value)

    def properties(self) -> dict[str, str]:
        out = {}
        for key in ("INFERENCE_NUM_THREADS", "NUM_STREAMS", "ENABLE_CPU_PINNING", "PERFORMANCE_HINT"):
            try:
                out[key] = str(self.compiled.get_property(key))
            except Exception:  # a property this OpenVINO version does not expose: leave it out
                continue
        out["INFERENCE_PRECISION_HINT"] = self.inference_precision()
        return out

    def kernel_precisions(self) -> dict[str, int]:
        """``{"Convolution u8": 11, "Convolution f32": 1}``: compute layers of the executed graph by precision."""
        counts: collections.Counter[str] = collections.Counter()
        for op in self.compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            kind = info["layerType"].astype(str) if "layerType" in info else ""
            if kind in _COMPUTE_LAYERS:
                prec = info["runtimePrecision"].astype(str) if "runtimePrecision" in info else "?"
                counts[f"{kind} {prec}"] += 1
        return dict(sorted(counts.items()))


def time_openvino(
    onnx_path: Path,
    input_name: str,
    feed: np.ndarray,
    hint: str,
    threads: int,
    warmup: int,
    repeat: int,
    budget_s: float,
) -> tuple[Timing, list[np.ndarray]]:
    """Latency of one synchronous inference of ``feed`` on OpenVINO's CPU plugin; also the last outputs
    (in the ONNX file's output order)."""
    graph = OpenVINOGraph(onnx_path, input_name, feed.shape, hint, threads)
    x = graph._check(feed)
    t_last = 0.0
    for _ in range(max(1, warmup)):
        t0 = time.perf_counter()
        graph.infer(x)
        t_last = time.perf_counter() - t0
    n = repeat
    if budget_s > 0 and t_last > 0:
        n = min(repeat, max(min(5, repeat), int(budget_s / t_last)))
    samples = []
    for _ in range(max(1, n)):
        t0 = time.perf_counter_ns()
        graph.infer(x)
        samples.append((time.perf_counter_ns() - t0) / 1e6)
    return summarize(samples), list(graph.outputs().values())


# --------------------------------------------------------------------------------------------------------------
# Side-by-side comparison with onnxruntime (the command line)


# An output whose max |difference| exceeds this fraction of the reference's value range is flagged as disagreeing
# (rounding and BF16/INT8 noise stay far below it; a wrong result does not).
DISAGREE_FRACTION = 0.1


def _diffs(
    a: dict[str, np.ndarray], b: dict[str, np.ndarray], noise: dict[str, dict[str, Any]] | None = None
) -> dict[str, dict[str, Any]]:
    """Per output: max and mean absolute difference (float64; integer outputs in their own units), the
    reference's value range, and ``disagrees``: max |difference| (or a non-finite one) above
    :data:`DISAGREE_FRACTION` of that range and, where ``noise`` (INT8: onnxruntime INT8 against FP32) gives
    the output, above twice that quantization noise as well."""
    out: dict[str, dict[str, Any]] = {}
    for name, x in a.items():
        y = b[name]
        if x.shape != y.shape:
            raise ModelRejectedError(f"output {name}: OpenVINO shape {x.shape} vs onnxruntime {y.shape}")
        d = np.abs(x.astype(np.float64) - y.astype(np.float64))
        mx, mean = (float(d.max()), float(d.mean())) if d.size else (0.0, 0.0)
        lo, hi = (float(np.min(y)), float(np.max(y))) if y.size else (0.0, 0.0)
        span = hi - lo if hi > lo else max(abs(hi), 1e-12)
        out[name] = {
            "max_abs": mx if math.isfinite(mx) else None,
            "mean_abs": mean if math.isfinite(mean) else None,
            "dtype": str(x.dtype),
            "ref_range": [lo, hi],
            "disagrees": (not math.isfinite(mx))
            or mx > max(DISAGREE_FRACTION * span, 2.0 * ((noise or {}).get(name) or {}).get("max_abs", 0.0)),
        }
    return out


def compare_graph(
    bench: Any,
    graph: str,
    resolution: str,
    *,
    threads: int,
    bf16: bool,
    warmup: int,
    repeat: int,
    budget_s: float,
) -> list[dict[str, Any]]:
    """Rows for one graph of one bundle at one resolution: onnxruntime FP32 (and INT8), OpenVINO FP32, BF16 (if
    ``bf16``), INT8 (where the bundle has the INT8 file), timed interleaved on the same input."""
    from benchmarks import latency as lat

    ref = bench.ref
    w, h = lat.parse_resolution(resolution)
    input_name, x = lat.graph_feed(bench, graph, w, h, 1)
    precisions = ref.bundle.precisions(graph)
    file_precs = [p for p in ("fp32", "int8") if p in precisions]

    ort = {p: bench.graph(graph, p, "cpu") for p in file_precs}
    ov: dict[str, OpenVINOGraph] = {}
    for mode, (file_prec, hint) in MODES.items():
        if file_prec in file_precs and (mode != "bf16" or bf16):
            ov[mode] = OpenVINOGraph(ref.bundle.graph_path(graph, file_prec), input_name, x.shape, hint, threads)

    def ort_fn(g: Any) -> Callable[[], object]:
        return lambda: g.run({input_name: x})

    def ov_fn(g: OpenVINOGraph) -> Callable[[], object]:
        xc = g._check(x)
        return lambda: g.infer(xc)

    fns: dict[tuple[str, str], Callable[[], object]] = {}
    for p, g in ort.items():
        fns[("onnxruntime", p)] = ort_fn(g)
    for mode, g in ov.items():
        fns[("openvino", mode)] = ov_fn(g)
    keyed = {f"{rt} {p}": fn for (rt, p), fn in fns.items()}
    timings = lat.interleaved(keyed, warmup, repeat, budget_s)

    ort_out = {p: g.run({input_name: x}) for p, g in ort.items()}
    base = timings["onnxruntime fp32"].p50_ms
    rows = []
    for rt, p in fns:
        t = timings[f"{rt} {p}"]
        file_prec = p if rt == "onnxruntime" else MODES[p][0]
        row: dict[str, Any] = {
            "model": ref.name,
            "graph": graph,
            "runtime": rt,
            "precision": p,
            "file": ref.bundle.graph_path(graph, file_prec).name,
            "resolution": resolution,
            "input": {"name": input_name, "shape": list(x.shape), "dtype": str(x.dtype)},
            "threads": threads,
            "timing": t.to_dict(),
            "speedup_vs_ort_fp32": base / t.p50_ms if t.p50_ms > 0 else None,
            "compared_with": None,
            "diff": None,
        }
        if rt == "onnxruntime":
            row["providers"] = list(ort[p].providers)
            if p == "int8":  # the quantization noise OpenVINO's INT8 is judged against
                row["compared_with"] = "onnxruntime fp32"
                row["diff"] = _diffs(ort_out["int8"], ort_out["fp32"])
        else:
            g = ov[p]
            row["compared_with"] = f"onnxruntime {file_prec}"
            noise = _diffs(ort_out["int8"], ort_out["fp32"]) if file_prec == "int8" and "fp32" in ort_out else None
            row["diff"] = _diffs(g.run(x), ort_out[file_prec], noise)
            row["openvino"] = {"properties": g.properties(), "kernels": g.kernel_precisions()}
        rows.append(row)
    return rows


def unique_architectures(refs: Sequence[Any]) -> tuple[list[Any], list[dict[str, str]]]:
    """Bundles to measure (the first of each architecture, by name) and what was skipped with the reason."""
    seen: dict[str, str] = {}
    keep, skipped = [], []
    for ref in refs:
        arch = ref.architecture()
        if arch in seen:
            skipped.append({"what": ref.name, "reason": f"same architecture as {seen[arch]} (only weights differ)"})
            continue
        seen[arch] = ref.name
        keep.append(ref)
    return keep, skipped


def run_comparison(
    models: str | Path,
    resolutions: Sequence[str],
    threads: int,
    *,
    only: Sequence[str] = (),
    warmup: int = 3,
    repeat: int = 30,
    budget_s: float = 15.0,
    bf16: str = "auto",
    cpu_flags: list[str] | None = None,
    progress: Callable[[str], None] = lambda _msg: None,
) -> dict[str, Any]:
    """Measure every (unique-architecture) bundle under ``models``; returns the results dict of results.json.

    ``bf16``: ``auto`` (when :func:`bf16_supported` says so for ``cpu_flags``, default the stamp's flags),
    ``on`` or ``off``. ``only``: bundle names to measure (then duplicates of an architecture are kept).
    """
    from benchmarks import latency as lat
    from benchmarks import machine

    ok, why = openvino_available()
    if not ok:
        raise UsageError(f"{why}; or install edgeae[openvino]")
    if bf16 not in ("auto", "on", "off"):
        raise UsageError(f"--bf16: expected auto, on or off, got {bf16!r}")
    if threads < 1 or repeat < 1 or warmup < 0:
        raise UsageError("--threads and --repeat must be >= 1, --warmup >= 0")
    for r in resolutions:
        lat.parse_resolution(r)
    import openvino as ov

    t_start = time.perf_counter()
    st = machine.stamp(threads)
    flags = (st.get("cpu") or {}).get("flags") if cpu_flags is None else cpu_flags
    use_bf16 = bf16 == "on" or (bf16 == "auto" and bf16_supported(flags))
    skipped: list[dict[str, str]] = []
    if not use_bf16:
        reason = "--bf16 off" if bf16 == "off" else "the CPU lists neither avx512_bf16 nor amx_bf16"
        skipped.append({"what": "OpenVINO BF16", "reason": reason})

    refs = lat.find_bundles(models, only or None)
    if not only:
        refs, dupes = unique_architectures(refs)
        skipped += dupes
    rows: list[dict[str, Any]] = []
    for ref in refs:
        bench = lat.GraphBench(ref, threads)
        try:
            for res in resolutions:
                for graph in ref.graphs:
                    progress(f"{ref.name} {graph} {res}")
                    rows += compare_graph(
                        bench,
                        graph,
                        res,
                        threads=threads,
                        bf16=use_bf16,
                        warmup=warmup,
                        repeat=repeat,
                        budget_s=budget_s,
                    )
        finally:
            bench.close()
    return {
        "stamp": st,
        "openvino_version": ov.get_version(),
        "config": {
            "models": str(models),
            "resolutions": list(resolutions),
            "threads": threads,
            "only": list(only),
            "warmup": warmup,
            "repeat": repeat,
            "budget_s": budget_s,
            "bf16": bf16,
            "bf16_used": use_bf16,
            "batch": 1,
        },
        "rows": rows,
        "skipped": skipped,
        "seconds": round(time.perf_counter() - t_start, 1),
        "complete": True,
    }


# --------------------------------------------------------------------------------------------------------------
# Report


def _num(v: float | None, digits: int = 3) -> str:
    if v is None:
        return "—"
    if v == 0:
        return "0"
    if float(v).is_integer() and abs(v) < 1e6:
        return str(int(v))
    return f"{v:.{digits}g}"


def _diff_cell(row: dict[str, Any]) -> str:
    if not row.get("diff"):
        return "—"

    flag = row.get("runtime") == "openvino"  # onnxruntime INT8's own noise is the yardstick, not a verdict

    def cell(d: dict[str, Any]) -> str:
        return _num(d["max_abs"]) + (" **(!)**" if flag and d.get("disagrees") else "")

    parts = [f"{name} {cell(d)}" for name, d in row["diff"].items()]
    return "; ".join(parts) if len(parts) > 1 else cell(next(iter(row["diff"].values())))


def _runtime_cell(row: dict[str, Any]) -> str:
    rt = "onnxruntime" if row["runtime"] == "onnxruntime" else "OpenVINO"
    return f"{rt} {row['precision'].upper()}"


def _kernels_cell(row: dict[str, Any]) -> str:
    ov = row.get("openvino")
    if not ov:
        return ", ".join(p.removesuffix("ExecutionProvider") for p in row.get("providers", [])) or "—"
    kernels = ", ".join(f"{n} {k}" for k, n in ov["kernels"].items()) or "no conv layers"
    return f"{ov['properties'].get('INFERENCE_PRECISION_HINT', '?')}: {kernels}"


def markdown_section(results: dict[str, Any]) -> str:
    """The Markdown section (title, run description, table, notes) of a :func:`run_comparison` result."""
    st = results["stamp"]
    cfg = results["config"]
    pk = st.get("packages") or {}
    cpu = st.get("cpu") or {}
    lines = [
        "## Native OpenVINO vs onnxruntime (CPU, same ONNX files, same input)",
        "",
        f"Generated by `python -m benchmarks.openvino_baseline --models {cfg['models']} "
        + " ".join(f"--resolution {r}" for r in cfg["resolutions"])
        + f" --threads {cfg['threads']}` on {st.get('date_utc')}; {results.get('seconds')} s.",
        "",
        f"- **CPU**: {cpu.get('model')} ({cpu.get('logical_cores')} logical, {cpu.get('affinity_cores')} usable); "
        f"flags: {', '.join(cpu.get('flags') or []) or 'none'}",
        f"- **packages**: openvino {results.get('openvino_version')}, onnxruntime {pk.get('onnxruntime')}, "
        f"numpy {pk.get('numpy')}; commit {st.get('git_commit')}",
        f"- **threads**: {cfg['threads']} for both runtimes (onnxruntime intra-op threads, OpenVINO "
        "INFERENCE_NUM_THREADS, PERFORMANCE_HINT=LATENCY); batch 1",
        "- **timing**: the runtimes of one graph alternate in blocks (benchmarks.latency.interleaved), so machine "
        "drifts hit them alike; compare ratios within a row group. onnxruntime runs through "
        "edge_runtime's RuntimeGraph.run (feed checks included), OpenVINO is a bare infer request on a model "
        "reshaped to the static input shape.",
        "- **max abs diff**: OpenVINO against onnxruntime on the same file (BF16 against FP32), onnxruntime INT8 "
        "against onnxruntime FP32 (the quantization noise), same input; uint8 images in grey levels, latents in "
        "quantisation steps, anomaly outputs in their float units.",
        f"  **(!)** marks an OpenVINO output whose max abs diff exceeds {DISAGREE_FRACTION:.0%} of onnxruntime's "
        "value range for it (for INT8, and twice onnxruntime's own INT8 noise): not rounding noise, a different "
        "result (its latency is not a fair comparison).",
        "- **executed as**: for OpenVINO the inference precision read back from the compiled model and the "
        "runtime precision of its convolution layers; for onnxruntime the providers in use.",
        "",
        "| model | graph | resolution | runtime / precision | p50 ms | p95 ms | speed-up vs ORT FP32 | max abs diff "
        "| executed as | n |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | --- | --- | ---: |",
    ]
    for r in results["rows"]:
        t = r["timing"]
        lines.append(
            "| "
            + " | ".join(
                [
                    r["model"],
                    r["graph"],
                    r["resolution"],
                    _runtime_cell(r),
                    f"{t['p50_ms']:.2f}",
                    f"{t['p95_ms']:.2f}",
                    f"{r['speedup_vs_ort_fp32']:.2f}x" if r["speedup_vs_ort_fp32"] else "—",
                    _diff_cell(r),
                    _kernels_cell(r),
                    str(t["n"]),
                ]
            )
            + " |"
        )
    if results.get("skipped"):
        lines += ["", "Not measured:", ""]
        lines += [f"- {s['what']}: {s['reason']}" for s in results["skipped"]]
    return "\n".join(lines) + "\n"


def write_outputs(results: dict[str, Any], out: str | Path) -> tuple[Path, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    js, md = out / "results.json", out / "section.md"
    js.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    md.write_text(markdown_section(results), encoding="utf-8")
    return js, md


# --------------------------------------------------------------------------------------------------------------
# Command line


def _make_command() -> Any:
    import click

    from edge_runtime.session import default_threads

    @click.command(
        "openvino_baseline",
        help="Native OpenVINO (FP32, BF16, INT8) against onnxruntime CPU on the model bundles; writes "
        "results.json and section.md to --out.",
    )
    @click.option("--models", default="models", show_default=True, help="Folder of bundles, or one bundle.")
    @click.option(
        "--resolution",
        "resolutions",
        multiple=True,
        default=("640x480",),
        show_default=True,
        help="WIDTHxHEIGHT; repeat or comma-separate for several.",
    )
    @click.option("--threads", type=int, default=default_threads, help="Threads for both runtimes.")
    @click.option("--only", multiple=True, help="Bundle folder names to measure (default: one per architecture).")
    @click.option("--warmup", type=int, default=3, show_default=True)
    @click.option("--repeat", type=int, default=30, show_default=True, help="Timed calls per runtime (at most).")
    @click.option(
        "--max-seconds",
        type=float,
        default=15.0,
        show_default=True,
        help="Time budget per graph and resolution (all runtimes together); fewer calls, never under 5.",
    )
    @click.option("--bf16", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True)
    @click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for results.")
    @click.option("--quiet", is_flag=True, help="No progress lines on stderr.")
    def command(models, resolutions, threads, only, warmup, repeat, max_seconds, bf16, out, quiet) -> None:
        res = [r.strip() for item in resolutions for r in item.split(",") if r.strip()]
        names = [n.strip() for item in only for n in item.split(",") if n.strip()]

        def progress(msg: str) -> None:
            if not quiet:
                click.echo(f"[openvino_baseline] {msg}", err=True)

        try:
            results = run_comparison(
                models,
                res,
                threads,
                only=names,
                warmup=warmup,
                repeat=repeat,
                budget_s=max_seconds,
                bf16=bf16,
                progress=progress,
            )
        except EdgeAEError as exc:
            click.echo(f"openvino_baseline: error: {' '.join(str(exc).split())}", err=True)
            sys.exit(exc.exit_code)
        js, md = write_outputs(results, out)
        click.echo(markdown_section(results))
        click.echo(f"wrote {js} and {md}", err=True)

    return command


def main(argv: Sequence[str] | None = None) -> None:
    _make_command()(args=list(argv) if argv is not None else None, prog_name="python -m benchmarks.openvino_baseline")


if __name__ == "__main__":
    main()
