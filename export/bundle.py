"""``export_run``: a training run -> a model bundle (docs/bundle.md), written atomically.

The bundle is built in a temporary directory beside ``out_dir`` and renamed into place only when every file and
the manifest are complete and the runtime's own loader (``edge_runtime.model.load_bundle`` and ``open_graph`` of
every graph) accepts them; an existing bundle at ``out_dir`` is replaced only then (renamed aside, the new one
renamed in, the old one deleted). Any failure, Ctrl-C included, removes the temporary directory and leaves an
existing bundle as it was.

FP16 and INT8 files are written only when they pass the precision gate (:mod:`export.gate`); ``force=True``
writes an INT8 or FP16 file that fails it and marks it ``"gate": "forced"`` in the manifest. A refused file is
listed in the manifest's ``metrics`` with ``"written": false``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from edge_runtime.contract import (
    BUNDLE_FORMAT,
    DEFAULT_OPSET,
    ENTROPY_NAME,
    EXPORT_MAX_OPSET,
    EXPORT_THRESHOLD_FLOOR,
    MANIFEST_NAME,
    MIN_OPSET,
    SCHEMA_VERSION,
    graph_file_name,
)
from edge_runtime.errors import ModelRejectedError, UsageError
from edge_runtime.io import fsync_dir
from export import gate as gt
from export import metadata as md
from export import onnx_export as ox
from export import quantize as qz
from export.frames import FrameSets, frame_sets

ENTROPY_PRECISION = 16
CALIBRATION_RULE = (
    "norm_mean/norm_std: mean and sample std of the FP32 graph's raw scores on the run's validation images (whole, "
    "cut to input_multiple, plus their horizontal and vertical mirror images); threshold = "
    f"max({EXPORT_THRESHOLD_FLOOR}, 99th percentile of the normalised scores). The same values are in every file's "
    "metadata."
)


@dataclass(frozen=True)
class ExportOptions:
    """Sizes of the calibration, gate and timing work (tests shrink them)."""

    calib_frames: int = 32  # calibration crops
    calib_size: int = 256  # their side (cut to input_multiple)
    val_images: int = 16  # validation images for the gate
    val_size: int = 256  # side of their centre crops
    debug_frames: int = 4  # frames for the qdq_loss_debug ranking
    max_float_layers: int = 3  # most Conv layers kept in FP32 to bring INT8 within budget
    timing: bool = True
    timing_size: tuple[int, int] = gt.TIMING_SIZE
    timing_runs: int = 15  # per precision, in timing_rounds rounds (one session alive at a time)
    timing_rounds: int = 5
    activation: str = "u8"  # INT8 activation type: u8 (U8S8) or s8 (S8S8)
    seed: int = 0


def _log(progress: bool, msg: str = "") -> None:
    if progress:
        print(msg, file=sys.stderr, flush=True)


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch

    try:
        from importlib.metadata import version

        edgeae = version("edgeae")
    except Exception:
        edgeae = "0.1.0"
    return {
        "edgeae": edgeae,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
    }


def _check_out_dir(out: Path) -> None:
    if out.is_symlink():
        raise UsageError(f"{out}: is a symlink; pass the directory it points to")
    if out.exists():
        if not out.is_dir():
            raise UsageError(f"{out}: exists and is not a directory")
        if any(out.iterdir()) and not (out / MANIFEST_NAME).is_file():
            raise UsageError(f"{out}: exists, is not empty and holds no {MANIFEST_NAME}; refusing to replace it")


def _install(tmp: Path, out: Path) -> None:
    """Move the finished bundle ``tmp`` to ``out``, replacing an existing bundle there."""
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(out, old)
        try:
            os.rename(tmp, out)
        except BaseException:
            os.rename(old, out)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out)
    fsync_dir(out.parent)


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _budget(budget) -> gt.Budget:
    if budget is None:
        return gt.DEFAULT_BUDGET
    if isinstance(budget, gt.Budget):
        return budget
    if isinstance(budget, dict):
        return replace(gt.DEFAULT_BUDGET, **budget)
    raise UsageError(f"budget must be a gate.Budget or a dict, got {type(budget).__name__}")


class _Exporter:
    def __init__(self, run_dir: Path, tmp: Path, opts: ExportOptions, threads: int, budget: gt.Budget,
                 force: bool, progress: bool):  # fmt: skip
        from training.checkpoint import load_run

        self.run_dir, self.tmp, self.opts, self.threads = run_dir, tmp, opts, threads
        self.budget, self.force, self.progress = budget, force, progress
        self.model, self.cfg = load_run(run_dir)
        self.task = self.cfg["task"]
        self.mcfg = self.cfg["model"]
        self.run_id, self.weights_sha = md.run_identity(run_dir)
        self.specs = {s.graph: s for s in ox.graph_specs(self.model, self.cfg)}
        self.files: dict[str, dict] = {}
        self.rows: list[gt.GateRow] = []
        self.quant_info: dict[str, dict] = {}
        self.calibration: dict[str, float] | None = None
        self.fp32: dict[str, bytes] = {}
        self.fp32_models: dict = {}
        self.fp32_sha: dict[str, str] = {}
        self.ref: dict | None = None
        self.ev = None
        self.frames: FrameSets | None = None
        self.tables = None
        self.load_average: list[float] = []

    # -- pieces ---------------------------------------------------------------------------------------------

    def log(self, msg: str = "") -> None:
        _log(self.progress, msg)

    def meta(self, graph: str, precision: str, parent: str) -> dict[str, str]:
        spec = self.specs[graph]
        return md.graph_metadata(task=self.task, graph=graph, precision=precision, model_cfg=self.mcfg,
                                 run_id=self.run_id, parent_sha256=parent, macs_per_pixel=spec.macs_per_pixel,
                                 params=spec.params, calibration=self.calibration)  # fmt: skip

    def add_file(self, name: str, data: bytes, graph: str | None = None, precision: str | None = None,
                 **extra) -> str:  # fmt: skip
        import hashlib

        _write_file(self.tmp / name, data)
        sha = hashlib.sha256(data).hexdigest()
        entry: dict = {"sha256": sha, "bytes": len(data)}
        if graph is not None:
            entry.update(graph=graph, precision=precision)
        entry.update(extra)
        self.files[name] = entry
        return sha

    def write_graph(self, graph: str, precision: str, model, parent: str, **extra) -> str:
        md.set_metadata(model, self.meta(graph, precision, parent))
        name = graph_file_name(graph, precision)
        data = ox.write_model(model, self.tmp / name)  # checks, writes
        spec = self.specs[graph]
        return self.add_file(name, data, graph, precision, macs_per_pixel=spec.macs_per_pixel, params=spec.params,
                             **extra)  # fmt: skip

    def load_frames(self, calib: str | None) -> None:
        o = self.opts
        # The denoise gate also measures on images of the calibration source held out of calibration (issue 19).
        self.frames = frame_sets(self.run_dir, self.cfg, calib, calib_frames=o.calib_frames,
                                 calib_size=o.calib_size, val_images=o.val_images, seed=o.seed,
                                 hold_out_calib=self.task == "denoise")  # fmt: skip
        self.log(f"calibration: {len(self.frames.calib)} crops from {self.frames.calib_source}")
        self.log(f"validation:  {self.frames.val_source}")
        val, cfg, th, size = self.frames.val, self.cfg, self.threads, o.val_size
        if self.task == "denoise":
            evals = {"validation": gt.DenoiseEval(val, cfg, th, size)}
            if self.frames.held_out:
                self.log(f"held out:    {self.frames.held_out_source}")
                evals["calibration held-out"] = gt.DenoiseEval(self.frames.held_out, cfg, th, size)
            self.ev = gt.GateSets(evals)
        elif self.task == "anomaly":
            self.ev = gt.AnomalyEval(val, cfg, th, size)
        else:
            self.ev = gt.CompressEval(val, cfg, self.tables, th, size)

    def entropy_tables(self) -> None:
        from edge_runtime.entropy import tables_from_json, tables_from_pmf, tables_to_json

        pmf, offset = self.model.prior.integer_pmf()
        self.tables = tables_from_pmf(pmf, offset, precision=ENTROPY_PRECISION)
        text = json.dumps(tables_to_json(self.tables), separators=(",", ":")) + "\n"
        tables_from_json(json.loads(text))  # the runtime's own strict parser must accept what is written
        self.add_file(ENTROPY_NAME, text.encode("utf-8"))

    def with_graph(self, graph: str, data: bytes) -> dict[str, bytes]:
        models = dict(self.fp32)
        models[graph] = data
        return models

    def gate(self, graph: str, data: bytes) -> tuple[dict, float, bool]:
        m = self.ev.measure(self.with_graph(graph, data))
        delta, ok = self.ev.compare(self.ref, m, self.budget)
        return m, delta, ok

    def row(self, graph, precision, m, delta, status, notes=None) -> gt.GateRow:
        r = gt.GateRow(graph=graph, precision=precision, metric=self.ev.metric, value=self.ev.describe(m), values=m,
                       delta=delta, budget=None if delta is None else self.budget.limit(self.task), ms=None,
                       speedup=None, status=status, notes=notes or {})  # fmt: skip
        self.rows.append(r)
        return r

    def status(self, ok: bool) -> str:
        return "pass" if ok else ("forced" if self.force else "fail")

    # -- precisions -----------------------------------------------------------------------------------------

    def export_fp32(self, opset: int) -> None:
        for graph, spec in self.specs.items():
            t0 = time.perf_counter()
            model = ox.export_graph(spec, opset)
            self.fp32_models[graph] = model
            self.fp32[graph] = ox.model_bytes(model)
            self.log(f"{graph}: exported FP32 ({len(model.graph.node)} nodes, {time.perf_counter() - t0:.1f} s)")

    def anomaly_calibration(self) -> None:
        scores = self.ev.normal_scores(self.fp32["anomaly"])
        self.calibration = md.anomaly_calibration(scores)
        c = self.calibration
        self.log(f"anomaly calibration on {len(scores)} normal frames: norm_mean {c['norm_mean']:.6g}, "
                 f"norm_std {c['norm_std']:.6g}, threshold {c['threshold']:.3f}")  # fmt: skip

    def write_fp32(self) -> None:
        for graph, model in self.fp32_models.items():
            self.fp32_sha[graph] = self.write_graph(graph, "fp32", model, self.weights_sha)
            self.fp32[graph] = (self.tmp / graph_file_name(graph, "fp32")).read_bytes()

    def reference(self) -> None:
        self.ref = self.ev.measure(self.fp32)
        for graph in self.specs:
            self.row(graph, "fp32", self.ref, None, "reference")

    def fp16(self) -> dict[str, bytes]:
        out = {}
        for graph, spec in self.specs.items():
            model = ox.to_fp16(self.fp32_models[graph], ox.glue_nodes(self.fp32_models[graph], spec.core_prefixes))
            data = ox.model_bytes(model)
            m, delta, ok = self.gate(graph, data)
            status = self.status(ok)
            self.row(graph, "fp16", m, delta, status)
            self.log(f"{graph}: FP16 {self.ev.describe(m)}, delta {delta:+.4f} -> {status}")
            if ok or self.force:
                self.write_graph(graph, "fp16", model, self.fp32_sha[graph], gate=status)
                out[graph] = (self.tmp / graph_file_name(graph, "fp16")).read_bytes()
        return out

    def calib_inputs(self, graph: str) -> list[np.ndarray]:
        if graph != "decoder":
            return self.frames.calib
        enc = gt.make_session(self.fp32["encoder"], self.threads)
        return [enc.run(None, {"frame": f[None]})[0][0] for f in self.frames.calib]

    def int8(self, settings: qz.Int8Settings) -> dict[str, bytes]:
        out = {}
        for graph, spec in self.specs.items():
            work = Path(tempfile.mkdtemp(prefix=f"edgeae-int8-{graph}-"))
            try:
                data = self._int8_graph(graph, spec, settings, work)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            if data is not None:
                out[graph] = data
        return out

    def _int8_graph(self, graph: str, spec, settings: qz.Int8Settings, work: Path) -> bytes | None:
        import onnx

        t0 = time.perf_counter()
        pre = qz.preprocess(self.fp32[graph], work)
        plan = qz.make_plan(pre, spec.core_prefixes)
        calib = self.calib_inputs(graph)
        qpath = work / "int8.onnx"

        def attempt(keep_float: list[str]):
            model = qz.quantize(pre, qpath, calib, plan, settings, keep_float)
            ox.check_model(model, graph_file_name(graph, "int8"))
            data = ox.model_bytes(model)
            m, delta, ok = self.gate(graph, data)
            return model, data, m, delta, ok

        model, data, m, delta, ok = attempt([])
        self.log(f"{graph}: INT8 ({settings.method}, {len(calib)} frames, {time.perf_counter() - t0:.1f} s): "
                 f"{self.ev.describe(m)}, delta {delta:+.4f} (budget {self.budget.limit(self.task):g})")  # fmt: skip
        onnx.save(model, str(qpath))
        ranking = qz.rank_layers(pre, qpath, plan.input_name, calib[: self.opts.debug_frames], work)
        self.log(f"{graph}: qdq_loss_debug ranking, worst first ({len(ranking)} quantized Conv layers):")
        self.log("  " + qz.format_ranking(ranking).replace("\n", "\n  "))
        attempts = [{"float_layers": [], "delta": delta, "pass": ok}]
        best = (delta, model, data, m, ok, [])
        k = 0
        while not ok and k < min(self.opts.max_float_layers, len(ranking)):
            k += 1
            keep = [r.name for r in ranking[:k]]
            model, data, m, delta, ok = attempt(keep)
            attempts.append({"float_layers": keep, "delta": delta, "pass": ok})
            self.log(f"{graph}: INT8 with {k} worst layer(s) in FP32: delta {delta:+.4f} -> {'pass' if ok else 'over'}")
            if ok or delta < best[0]:
                best = (delta, model, data, m, ok, keep)
        delta, model, data, m, ok, keep = best
        n_conv, n_qdq = qz.qdq_conv_counts(model)
        status = self.status(ok)
        notes = {"float_layers": keep, "quantized_convs": n_qdq, "convs": n_conv}
        self.row(graph, "int8", m, delta, status, notes)
        self.quant_info[graph] = {
            "attempts": attempts,
            "float_layers": keep,
            "always_float": plan.always_float,
            "exact_inputs": plan.frame_tensors + plan.latent_tensors,
            "quantized_convs": n_qdq,
            "convs": n_conv,
            "ranking": [asdict(r) for r in ranking],
        }
        if not (ok or self.force):
            self.log(f"{graph}: INT8 refused by the gate (delta {delta:+.4f} over budget "
                     f"{self.budget.limit(self.task):g}); pass --force to write it anyway")  # fmt: skip
            return None
        self.write_graph(graph, "int8", model, self.fp32_sha[graph], gate=status)
        return (self.tmp / graph_file_name(graph, "int8")).read_bytes()

    def timing(self, variants: dict[str, dict[str, bytes]]) -> None:
        """Time every precision of each graph against FP32, interleaved; fill ms and speed-up in the rows."""
        o = self.opts
        self.load_average = [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else []
        for graph in self.specs:
            models = {"fp32": self.fp32[graph]}
            for prec, files in variants.items():
                if graph in files:
                    models[prec] = files[graph]
            feed = gt.timing_feed(graph, self.cfg, o.timing_size)
            ms = gt.time_ms(models, feed, self.threads, runs=o.timing_runs, rounds=o.timing_rounds)
            for r in self.rows:
                if r.graph == graph and r.precision in ms:
                    r.ms = ms[r.precision]
                    r.speedup = ms["fp32"] / ms[r.precision]


def export_run(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    fp16: bool = False,
    int8: bool = False,
    calib: str | None = None,
    calib_method: str = "minmax",
    opset: int = DEFAULT_OPSET,
    force: bool = False,
    budget: gt.Budget | dict | None = None,
    command: str = "",
    progress: bool = True,
    threads: int | None = None,
    options: ExportOptions | None = None,
) -> Path:
    """Export a training run (``config.json`` + ``best.safetensors``) to a bundle at ``out_dir``; returns its path.

    ``fp16``/``int8``: also write those precisions where they pass the gate (``force``: write them anyway,
    marked ``"gate": "forced"``). ``calib``: image folder, image or video for INT8 calibration (default: the
    run's training data). ``calib_method``: minmax, entropy or percentile. ``budget``: a :class:`gate.Budget` or
    a dict of its fields. ``threads``: onnxruntime threads for the gate and the timing (default: all cores).
    Raises UsageError (2), BadDataError (3) or ModelRejectedError (4); nothing is left at ``out_dir`` then.
    """
    opts = options or ExportOptions()
    run = Path(run_dir)
    out = Path(out_dir).absolute()
    if calib_method not in qz.CALIB_METHODS:
        raise UsageError(f"calibration method {calib_method!r} is not one of {', '.join(qz.CALIB_METHODS)}")
    if not MIN_OPSET <= opset <= EXPORT_MAX_OPSET:
        raise UsageError(f"opset {opset} outside {MIN_OPSET}..{EXPORT_MAX_OPSET}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise UsageError(f"threads must be a positive integer, got {threads!r}")
    if not run.is_dir():
        raise ModelRejectedError(f"{run}: not a training run directory")
    bud = _budget(budget)
    threads = threads or os.cpu_count() or 1
    settings = qz.Int8Settings(method=calib_method, activation=opts.activation)
    _check_out_dir(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o777 & ~mask)  # mkdtemp's 0700 would become the bundle's mode after the rename
    try:
        ex = _Exporter(run, tmp, opts, threads, bud, force, progress)
        ex.log(f"exporting {run} ({ex.task}, run id {ex.run_id}) to {out}")
        if ex.task == "compress":
            ex.entropy_tables()
        ex.export_fp32(opset)
        need_data = int8 or fp16 or ex.task == "anomaly"
        if need_data:
            ex.load_frames(calib)
        if ex.task == "anomaly":
            ex.anomaly_calibration()
        ex.write_fp32()
        variants: dict[str, dict[str, bytes]] = {}
        if int8 or fp16:
            ex.reference()
        if fp16:
            variants["fp16"] = ex.fp16()
        if int8:
            variants["int8"] = ex.int8(settings)
        if (int8 or fp16) and opts.timing:
            ex.timing(variants)
        if ex.rows:
            h, w = opts.timing_size
            ex.log("")
            ex.log(gt.format_table(ex.rows, f"{w}x{h}", threads))
        manifest = _manifest(ex, out, command, threads, settings, calib)
        text = json.dumps(manifest, indent=2, sort_keys=False, allow_nan=False) + "\n"
        _write_file(tmp / MANIFEST_NAME, text.encode("utf-8"))
        fsync_dir(tmp)
        _check_with_runtime(tmp, out)
        _install(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    ex.log(f"wrote {out} ({', '.join(ex.files)}; every graph opened by edge_runtime)")
    return out


def _check_with_runtime(tmp: Path, out: Path) -> None:
    """Open the bundle just written in ``tmp`` with the runtime's own loader, every graph at every precision
    (hashes, metadata ranges, opsets, I/O contract), before it is installed at ``out``: a bundle the runtime would
    refuse is an export error (ModelRejectedError, exit 4) and never lands at ``out``."""
    from edge_runtime.model import load_bundle, open_graph

    try:
        bundle = load_bundle(tmp)
        for graph in bundle.graphs():
            for precision in bundle.precisions(graph):
                open_graph(bundle, graph, precision, threads=1)
    except (ModelRejectedError, UsageError) as exc:
        reason = str(exc).replace(str(tmp), str(out))
        raise ModelRejectedError(f"{out}: not written: edge_runtime refuses the bundle ({reason})") from None


def _finite(obj):
    """JSON-safe copy: non-finite floats (an SQNR of a layer without error is inf) become strings."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else str(obj)
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, np.generic):
        return _finite(obj.item())
    return obj


def _gate_sets(ex: _Exporter) -> dict[str, str]:
    """The image sets the gate measured on, by name, with where they came from (every one must pass)."""
    if ex.frames is None:
        return {}
    sets = {"validation": ex.frames.val_source}
    if isinstance(ex.ev, gt.GateSets) and "calibration held-out" in ex.ev.evals:
        sets["calibration held-out"] = ex.frames.held_out_source
    return sets


def _manifest(ex: _Exporter, out: Path, command: str, threads: int, settings: qz.Int8Settings, calib) -> dict:
    first = next(iter(ex.specs))
    contract = md.contract(ex.meta(first, "fp32", ""))
    manifest: dict = {
        "format": BUNDLE_FORMAT,
        "schema_version": SCHEMA_VERSION,
        "task": ex.task,
        "name": out.name,
        "files": ex.files,
        "contract": contract,
    }
    if ex.calibration is not None:
        manifest["calibration"] = dict(ex.calibration)
        manifest["calibration_rule"] = CALIBRATION_RULE
    manifest["versions"] = _versions()
    manifest["command"] = command or " ".join(sys.argv)
    manifest["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    manifest["run"] = {"dir": str(ex.run_dir), "run_id": ex.run_id, "weights_sha256": ex.weights_sha}
    if ex.rows:
        h, w = ex.opts.timing_size
        manifest["metrics"] = _finite({
            "metric": ex.ev.metric,
            "budget": asdict(ex.budget),
            "validation": ex.frames.val_source if ex.frames else "",
            "gate_sets": _gate_sets(ex),
            # load_average: the machine's 1/5/15-minute load when timing began; other work inflates every number.
            "timing": {"frame": f"{w}x{h}", "threads": threads, "runs": ex.opts.timing_runs,
                       "rounds": ex.opts.timing_rounds, "provider": "CPUExecutionProvider", "statistic": "median",
                       "load_average": ex.load_average},
            "rows": [{**asdict(r), "written": r.precision == "fp32"
                      or graph_file_name(r.graph, r.precision) in ex.files} for r in ex.rows],
        })  # fmt: skip
    if ex.quant_info:
        manifest["quantization"] = _finite({
            "format": "QDQ",
            "activations": "uint8 asymmetric per tensor" if settings.activation == "u8" else "int8 per tensor",
            "weights": "int8 symmetric per channel" if settings.per_channel else "int8 symmetric per tensor",
            "op_types": list(settings.op_types),
            "calibration_method": settings.method,
            "calibration": ex.frames.calib_source if ex.frames else str(calib),
            "calibration_frames": len(ex.frames.calib) if ex.frames else 0,
            "graphs": ex.quant_info,
        })  # fmt: skip
    return manifest
