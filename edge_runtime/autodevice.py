"""``--device auto``: the fastest provider and precision of a graph that reproduces the FP32 CPU reference,
measured at load, cached per bundle and machine, announced in one line on stderr.

**Candidates.** Every edgeae device (:data:`~edge_runtime.session.DEVICE_PROVIDERS`) whose provider onnxruntime
lists as available, times every precision of the graph in the bundle that may run: fp32 always; fp16 and int8
when the manifest says the export gate passed them (``"gate": "pass"``; a file without a ``gate`` key counts as
passed, because ``edgeae export`` writes a reduced precision only when it passes unless ``--force`` marks it
``"forced"``). ``openvino-bf16`` runs the fp32 graph only: BF16 is its inference precision. An explicit
precision keeps only the candidates of that precision (a forced file too: the user named it). An available
provider edgeae has no device for (onnxruntime's ``AzureExecutionProvider``) is listed, not tried.

**The check.** The fp32 graph on the CPU provider is the reference. Every candidate runs one deterministic frame
(:data:`CHECK_SIZE`, a smooth random image with noise, seed 0, like export.gate's timing frame) and every output
must lie within its tolerance of the reference's, by largest absolute difference::

    tolerance = max(floor, MARGIN x the largest difference of the bundle's gate-passed fp16/int8 graphs
                    from the reference, on the CPU provider, on the same frame)

The gate judged those graphs by the task's own metric (PSNR drop, rate at equal PSNR, AUROC drop, within
``export.gate.Budget``) and let them ship, so their deviation on this frame is one the bundle's gate accepted; a
provider may deviate as much, with :data:`MARGIN` for kernel differences. ``floor``: one level for integer
outputs (:data:`INT_FLOOR`: uint8 images, int32 latents; kernels round values near .5 differently) and
:data:`FLOAT_FLOOR` of the reference's largest magnitude for float outputs. A bundle whose gate passed no
reduced precision gets the floors only: every candidate must reproduce FP32. An explicitly requested precision
adds its own CPU deviation. The largest difference is strict on purpose: one pixel off by a lot fails.

**Timing.** Candidates that pass are timed on the same frame: the median of :data:`RUNS` runs after
:data:`WARMUP`, one session alive at a time (spinning onnxruntime threads of an idle session slow the next one;
export/gate.py measured 75 vs 248 ms). The fastest wins. A candidate that cannot be created, fails to run or
fails the check is skipped with its reason in the table (``edgeae doctor``); nothing falls back silently.

**Cache.** ``$EDGEAE_CACHE_DIR``, else ``$XDG_CACHE_HOME/edgeae``, else ``~/.cache/edgeae``: one small JSON per
bundle path (``device-<hash of the path>.json``) holding the bundle's hash (its graph files' SHA-256s), the
machine (CPU model, cores, onnxruntime and provider packages with versions, the provider list) and one choice
per graph, precision and thread count. A different bundle hash or machine is re-measured and said so; a corrupt,
unreadable or unwritable cache is said in one line and ignored. Writes are atomic (temp file + rename).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from .contract import PRECISIONS
from .errors import EdgeAEError, ModelRejectedError, UsageError
from .model import Bundle, bundle_of, open_graph, read_model_bytes
from .session import DEVICE_PROVIDERS, RuntimeGraph, available_providers, default_threads

CHECK_SIZE = (256, 256)  # (H, W) of the check and timing frame, rounded to the graph's input multiple
WARMUP = 2
RUNS = 5
MARGIN = 1.5  # a provider may deviate 1.5x as much as the gate-passed graphs do on the CPU provider
INT_FLOOR = 1.0  # integer outputs (uint8 images, int32 latents): one level, kernels round values near .5 apart
FLOAT_FLOOR = 1e-3  # of the reference output's largest magnitude; FP32 kernels agree to about 1e-5
BF16_ONLY_FP32 = frozenset({"openvino-bf16"})  # devices with an inference precision of their own
CACHE_FORMAT = "edgeae-device-cache"
CACHE_VERSION = 1
# Packages whose version changes what a provider does (the machine's part of the cache key).
PROVIDER_PACKAGES = (
    "onnxruntime",
    "onnxruntime-gpu",
    "onnxruntime-openvino",
    "onnxruntime-directml",
    "onnxruntime-qnn",
    "openvino",
)


def _say(line: str) -> None:
    """One line on stderr: the choice, or why the cache was not used (never a silent change of path)."""
    print(line, file=sys.stderr, flush=True)


def _one_line(exc: BaseException) -> str:
    return " ".join((str(exc).strip() or type(exc).__name__).split())


@dataclass
class Row:
    """One candidate of the table. ``status``: chosen, passed, failed (output check) or skipped (not created,
    not run, or not a candidate); ``diff``/``tol``: the output nearest to its tolerance (``output``)."""

    device: str
    precision: str
    status: str = "skipped"
    ms: float | None = None
    diff: float | None = None
    tol: float | None = None
    output: str = ""
    reason: str = ""
    tried: bool = True

    @classmethod
    def from_json(cls, data: Any) -> Row:
        if not isinstance(data, dict) or set(data) != set(cls.__dataclass_fields__):
            raise ValueError("a table row has unexpected fields")
        row = cls(**data)
        if not all(isinstance(v, str) for v in (row.device, row.precision, row.status, row.output, row.reason)):
            raise ValueError("a table row has non-text names")
        for value in (row.ms, row.diff, row.tol):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ValueError("a table row has a non-numeric measurement")
        return row


@dataclass
class Choice:
    """What ``--device auto`` picked for one graph, with the table it was picked from."""

    graph: str
    device: str
    precision: str
    ms: float
    size: tuple[int, int]
    threads: int
    rows: list[Row] = field(default_factory=list)
    cached: bool = False
    note: str = ""  # set when nothing was measured (never cached)

    def to_json(self) -> dict:
        data = asdict(self)
        data.pop("cached")
        data.pop("note")
        data["size"] = list(self.size)
        for row in data["rows"]:  # a shape that differed is an infinite difference: JSON has no inf
            row.update({k: None for k in ("ms", "diff", "tol") if row[k] is not None and not math.isfinite(row[k])})
        return data

    @classmethod
    def from_json(cls, data: Any) -> Choice:
        if not isinstance(data, dict):
            raise ValueError("a choice is not an object")
        try:
            choice = cls(
                graph=str(data["graph"]),
                device=data["device"],
                precision=data["precision"],
                ms=float(data["ms"]),
                size=(int(data["size"][0]), int(data["size"][1])),
                threads=int(data["threads"]),
                rows=[Row.from_json(r) for r in data["rows"]],
                cached=True,
            )
        except (KeyError, TypeError, IndexError) as exc:
            raise ValueError(f"a choice lacks {exc}") from None
        if choice.device not in DEVICE_PROVIDERS or choice.precision not in PRECISIONS:
            raise ValueError(f"unknown device or precision {choice.device!r} {choice.precision!r}")
        if not math.isfinite(choice.ms) or choice.ms < 0:
            raise ValueError(f"ms/frame {choice.ms!r} is not a time")
        return choice

    def line(self, model: str, show_graph: bool) -> str:
        """``edgeae: device auto -> cpu int8 (3.1 ms/frame at 256x256; 4 candidates, table: edgeae doctor M)``"""
        graph = f" for {self.graph}" if show_graph else ""
        if self.note:
            return f"edgeae: device auto -> {self.device} {self.precision}{graph} ({self.note})"
        cached = "cached: " if self.cached else ""
        tried = sum(r.tried for r in self.rows)
        return (
            f"edgeae: device auto -> {self.device} {self.precision}{graph} ({cached}{self.ms:.3g} ms/frame at "
            f"{self.size[1]}x{self.size[0]}; {tried} candidates, table: edgeae doctor {model})"
        )


# --------------------------------------------------------------------------------------------------------------
# Candidates


def devices_for(available: list[str]) -> tuple[list[str], list[str]]:
    """``(edgeae devices whose provider is available, in DEVICE_PROVIDERS order (cpu first); available providers
    edgeae has no device for)``."""
    known = {providers[0] for providers in DEVICE_PROVIDERS.values()}
    devices = [d for d, providers in DEVICE_PROVIDERS.items() if providers[0] in available]
    return devices, [p for p in available if p not in known]


def gate_status(bundle: Bundle | None, graph: str, precision: str) -> str:
    """``pass`` when the export gate let this file ship (fp32 and files without a ``gate`` key count as passed)."""
    if bundle is None or precision == "fp32":
        return "pass"
    gate = bundle.entry(graph, precision).get("gate")
    return "pass" if gate is None else str(gate)


def _plan(bundle: Bundle | None, graph: str, precision: str) -> tuple[list[str], list[str], list[Row]]:
    """``(candidate precisions, precisions whose CPU deviation sets the tolerance, rows of excluded ones)``.

    A single .onnx file is its own only precision (``"file"``); its reference is itself on the CPU.
    """
    if bundle is None:
        return ["file"], [], []
    present = bundle.precisions(graph)
    if precision != "auto" and precision not in present:
        bundle.entry(graph, precision)  # ModelRejectedError naming the precisions present, as an explicit run says
    excluded, basis, candidates = [], [], []
    for p in present:
        status = gate_status(bundle, graph, p)
        passed = status == "pass"
        if p != "fp32" and (passed or p == precision):
            basis.append(p)
        if precision == "auto" and not passed:
            excluded.append(Row("*", p, reason=f'export gate: "{status}" (run it with --precision {p})', tried=False))
        elif precision in ("auto", p):
            candidates.append(p)
    return candidates, basis, excluded


def check_feeds(graph: RuntimeGraph, size: tuple[int, int] = CHECK_SIZE) -> dict[str, np.ndarray]:
    """The deterministic check and timing input: ``{"frame": (1, H, W, C) uint8}`` (a smooth random image with
    noise, BGR or gray as the graph takes) or ``{"latent": (1, C, H/s, W/s) int32}`` in -3..3 for a decoder."""
    info = graph.info
    multiple = info.input_multiple
    side = [max(multiple, min(info.max_side // multiple * multiple, -(-s // multiple) * multiple)) for s in size]
    h, w = side
    rng = np.random.default_rng(0)
    names = [spec.name for spec in info.inputs]
    fixed = info.inputs[0].shape[1:3] if names == ["frame"] and len(info.inputs[0].shape) == 4 else ()
    if len(fixed) == 2 and all(isinstance(d, int) for d in fixed):  # a graph exported for one frame size
        h, w = fixed
    if names == ["latent"]:
        stride = info.meta_int("edgeae.latent.stride", 16)
        dim = info.inputs[0].shape[1]
        c = dim if isinstance(dim, int) else info.meta_int("edgeae.latent.channels", 1)
        return {"latent": rng.integers(-3, 4, (1, c, max(1, h // stride), max(1, w // stride))).astype(np.int32)}
    if names != ["frame"]:
        raise UsageError(f"{info.path}: device auto needs a graph with a frame or a latent input, got {names}")
    c = graph.frame_channels()
    low = rng.random((1, h // 16 + 1, w // 16 + 1, c))
    img = np.kron(low, np.ones((1, 16, 16, 1)))[:, :h, :w] * 200 + rng.normal(0, 10, (1, h, w, c))
    return {"frame": np.clip(img, 0, 255).astype(np.uint8)}


def _deviation(ref: dict[str, np.ndarray], out: dict[str, np.ndarray]) -> dict[str, float]:
    """Largest absolute difference per output (inf when a shape differs)."""
    dev = {}
    for name, a in ref.items():
        b = out.get(name)
        if b is None or b.shape != a.shape:
            dev[name] = math.inf
        else:
            dev[name] = float(np.max(np.abs(b.astype(np.float64) - a.astype(np.float64)))) if a.size else 0.0
    return dev


def tolerances(ref: dict[str, np.ndarray], gate_devs: list[dict[str, float]]) -> dict[str, float]:
    """Per output: max(floor, MARGIN x the largest deviation of the gate-passed graphs); see the module text."""
    tol = {}
    for name, a in ref.items():
        if a.dtype.kind in "iu":
            floor = INT_FLOOR
        else:
            floor = FLOAT_FLOOR * max(float(np.max(np.abs(a))) if a.size else 0.0, 1e-6)
        seen = [d[name] for d in gate_devs if math.isfinite(d.get(name, math.inf))]
        tol[name] = max([floor, *(MARGIN * s for s in seen)])
    return tol


def _judge(row: Row, dev: dict[str, float], tol: dict[str, float]) -> bool:
    """Fill the row's diff/tol from the output nearest to (or furthest over) its tolerance; True if all pass."""
    worst = max(dev, key=lambda n: dev[n] / tol[n] if tol[n] else math.inf)
    row.diff, row.tol, row.output = dev[worst], tol[worst], worst if len(dev) > 1 else ""
    ok = all(dev[n] <= tol[n] for n in dev)
    if not ok:
        row.status = "failed"
        row.reason = f"output check: {worst} differs by {dev[worst]:.4g} from fp32 cpu, tolerance {tol[worst]:.4g}"
    return ok


def _time_ms(graph: RuntimeGraph, feeds: dict[str, np.ndarray]) -> float:
    for _ in range(WARMUP):
        graph.run(feeds)
    times = []
    for _ in range(RUNS):
        t0 = time.perf_counter()
        graph.run(feeds)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


# --------------------------------------------------------------------------------------------------------------
# Measuring


@dataclass
class _Context:
    source: Any  # a Bundle or the path of a single .onnx file
    graph: str | None
    threads: int
    expected: dict | None
    feeds: dict[str, np.ndarray] | None = None
    ref: dict[str, np.ndarray] | None = None
    size: tuple[int, int] = CHECK_SIZE


def _trial(ctx: _Context, device: str, precision: str, tol: dict[str, float] | None, timed: bool):
    """Open, run once, check against ``tol`` (None: not yet) and time one candidate; ``(row, outputs or None)``.

    The session is closed before returning: one alive at a time.
    """
    row = Row(device, precision)
    try:
        rg = open_graph(ctx.source, ctx.graph, "fp32" if precision == "file" else precision, device=device,
                        threads=ctx.threads, expected=ctx.expected)  # fmt: skip
    except EdgeAEError as exc:
        row.reason = f"not created: {_one_line(exc)}"
        return row, None
    try:
        row.precision = rg.info.precision
        ctx.graph = rg.info.graph  # a single file's graph, from its metadata
        if ctx.feeds is None:
            ctx.feeds = check_feeds(rg, ctx.size)
            ctx.size = tuple(next(iter(ctx.feeds.values())).shape[1:3]) if "frame" in ctx.feeds else ctx.size
        outputs = rg.run(ctx.feeds)
        row.status = "passed"
        if tol is not None and ctx.ref is not None and not _judge(row, _deviation(ctx.ref, outputs), tol):
            return row, outputs
        if timed:
            row.ms = _time_ms(rg, ctx.feeds)
        return row, outputs
    except Exception as exc:  # onnxruntime raises unrelated types (Fail, RuntimeException...) from a broken provider
        row.status, row.reason = "skipped", f"run failed: {_one_line(exc)}"
        return row, None
    finally:
        del rg


def measure(model: Any, graph: str | None = None, precision: str = "auto", *, threads: int | None = None,
            available: list[str] | None = None, expected: dict | None = None) -> Choice:  # fmt: skip
    """Try every candidate for one graph of ``model`` (a bundle, its path, or a single .onnx file) and pick the
    fastest that passes the check (module text). ``available``: the provider list to plan with (default:
    onnxruntime's); a provider it names that onnxruntime cannot create is skipped with the reason.
    ModelRejectedError (4) when every candidate fails. When the reference itself fails, nothing is measured:
    the choice is cpu fp32, what an explicit ``--device cpu`` runs (its own error then names the real frames),
    with a ``note`` saying why."""
    bundle = bundle_of(model)
    graph = _graph_name(bundle, graph)
    ctx = _Context(bundle if bundle is not None else Path(model), graph, threads or default_threads(), expected)
    available = available_providers() if available is None else list(available)
    devices, unknown = devices_for(available)
    candidates, basis, rows = _plan(bundle, graph or "", precision)
    rows += [Row(p, "-", reason="edgeae has no device for this provider", tried=False) for p in unknown]
    # The reference and the tolerance's basis run on the CPU provider whatever the list says; the CPU rows are
    # candidates only when the list names the CPU provider.
    on_cpu = [p for p in candidates if "cpu" in devices]
    if bundle is not None and graph == "decoder" and "encoder" in bundle.graphs():
        with contextlib.suppress(EdgeAEError):  # a broken encoder: random latents (check_feeds) will do
            ctx.feeds, ctx.size = _encoder_latent(bundle, ctx.threads)
    ref_precision = _reference_precision(bundle, graph or "", precision)
    basis = [p for p in basis if p != ref_precision]
    ref_row, ctx.ref = _trial(ctx, "cpu", ref_precision, None, ref_precision in on_cpu)
    if ctx.ref is None:  # nothing to measure against: run what an explicit --device cpu runs, and say why
        size = f"{ctx.size[1]}x{ctx.size[0]}"
        note = f"not measured: the reference ({ref_precision}, CPU provider, {size} check frame) {ref_row.reason}"
        explicit = "fp32" if precision == "auto" else precision
        return Choice(str(ctx.graph), "cpu", explicit, math.nan, ctx.size, ctx.threads, [ref_row], note=note)
    cpu_rows = [(ref_row, ctx.ref)] if ref_precision in on_cpu else []
    gate_devs = []
    for p in basis:
        row, out = _trial(ctx, "cpu", p, None, p in on_cpu)
        if out is not None:
            gate_devs.append(_deviation(ctx.ref, out))
        if p in on_cpu:
            cpu_rows.append((row, out))
    tol = tolerances(ctx.ref, gate_devs)
    for row, out in cpu_rows:
        if out is not None and not _judge(row, _deviation(ctx.ref, out), tol):
            row.ms = None
        rows.append(row)
    for device in devices:
        for p in candidates:
            if device == "cpu" or (device in BF16_ONLY_FP32 and p not in ("fp32", "file")):
                continue
            rows.append(_trial(ctx, device, p, tol, True)[0])
    return _pick(ctx, rows)


def _reference_precision(bundle: Bundle | None, graph: str, precision: str) -> str:
    """fp32; in a bundle without an fp32 graph, the precision asked for or the first present (its own reference:
    the floors are its tolerance)."""
    if bundle is None:
        return "file"
    present = bundle.precisions(graph)
    if "fp32" in present or not present:
        return "fp32"
    return precision if precision in present else present[0]


def _encoder_latent(bundle: Bundle, threads: int) -> tuple[dict[str, np.ndarray], tuple[int, int]]:
    """A decoder's check input: the fp32 encoder's latent of the check frame on the CPU. Random integers are
    no latent the decoder was trained on: its int8 graph differed from fp32 by up to 243 grey levels on them."""
    encoder = open_graph(bundle, "encoder", "fp32", device="cpu", threads=threads)
    try:
        frame = check_feeds(encoder)
        return {"latent": encoder.run(frame)["latent"]}, tuple(frame["frame"].shape[1:3])
    finally:
        del encoder


def _graph_name(bundle: Bundle | None, graph: str | None) -> str | None:
    if bundle is None or graph is not None:
        return graph
    present = bundle.graphs()
    if len(present) != 1:
        raise UsageError(f"{bundle.root}: bundle holds graphs {', '.join(present)}; name one")
    return present[0]


def _where(ctx: _Context) -> str:
    return str(ctx.source.root if isinstance(ctx.source, Bundle) else ctx.source)


def _pick(ctx: _Context, rows: list[Row]) -> Choice:
    passed = [r for r in rows if r.status == "passed" and r.ms is not None]
    if not passed:
        reasons = "; ".join(f"{r.device} {r.precision}: {r.reason}" for r in rows if r.tried)
        raise ModelRejectedError(f"{_where(ctx)}: device auto: no candidate passed ({reasons})")
    best = min(passed, key=lambda r: r.ms)
    best.status = "chosen"
    rows.sort(key=lambda r: (not r.tried, r.ms is None, r.ms or 0.0))
    return Choice(str(ctx.graph), best.device, best.precision, float(best.ms), ctx.size, ctx.threads, rows)


# --------------------------------------------------------------------------------------------------------------
# The cache


def cache_dir() -> Path:
    """``$EDGEAE_CACHE_DIR``, else ``$XDG_CACHE_HOME/edgeae``, else ``~/.cache/edgeae``."""
    override = os.environ.get("EDGEAE_CACHE_DIR")
    if override:
        return Path(override)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "edgeae"


def cache_path(model_path: Path) -> Path:
    """The cache file of one bundle (or .onnx file), named by a hash of its resolved path."""
    key = hashlib.sha256(str(Path(model_path).resolve()).encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return cache_dir() / f"device-{key}.json"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(available: list[str] | None = None) -> dict[str, Any]:
    """What the choice depends on besides the bundle: CPU model and cores, provider packages, provider list."""
    packages = {}
    for name in PROVIDER_PACKAGES:
        try:
            packages[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count() or 1,
        "onnxruntime": ort.__version__,
        "packages": packages,
        "providers": available_providers() if available is None else list(available),
    }


def model_hash(bundle: Bundle | None, path: Path) -> str:
    """A bundle's hash: SHA-256 of its graph files' names and SHA-256s as the manifest lists them (each graph is
    checked against it when opened); the statistics ``edgeae calibrate`` rewrites do not count. A single file's:
    SHA-256 of its bytes."""
    if bundle is not None:
        graphs = {name: e.get("sha256") for name, e in bundle.manifest["files"].items() if e.get("graph")}
        return hashlib.sha256(json.dumps(graphs, sort_keys=True).encode()).hexdigest()
    return hashlib.sha256(read_model_bytes(path, None)).hexdigest()


def _changed(old: dict, new: dict) -> str:
    keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in keys[:2]) or "the machine"


def _load(path: Path) -> dict | None:
    """The cache file as a checked dict; None when absent. ValueError (corrupt) or OSError (unreadable)."""
    try:
        raw = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):  # no cache yet (the second: a parent is a file)
        return None
    if len(raw) > 1 << 20:
        raise ValueError(f"{len(raw)} bytes, more than a cache file holds")
    data = json.loads(raw.decode("utf-8"))
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT or data.get("version") != CACHE_VERSION:
        raise ValueError(f"not an {CACHE_FORMAT} version {CACHE_VERSION} file")
    if not isinstance(data.get("bundle_sha256"), str) or not isinstance(data.get("machine"), dict):
        raise ValueError("no bundle hash or machine")
    if not isinstance(data.get("choices"), dict):
        raise ValueError("no choices")
    for entry in data["choices"].values():
        Choice.from_json(entry)
    return data


def read_cached(path: Path, digest: str, here: dict, key: str) -> Choice | None:
    """The cached choice for ``key``, or None (absent, stale or corrupt: the last two said in one line)."""
    try:
        data = _load(path)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        _say(f"edgeae: device auto: ignoring the corrupt cache {path} ({_one_line(exc)}); measuring again")
        return None
    except OSError as exc:
        _say(f"edgeae: device auto: cannot read the cache {path} ({exc.strerror or exc}); measuring again")
        return None
    if data is None or key not in data["choices"]:
        return None
    if data["bundle_sha256"] != digest:
        _say(f"edgeae: device auto: the cached choice in {path} is stale (the bundle changed); measuring again")
        return None
    if data["machine"] != here:
        _say(f"edgeae: device auto: the cached choice in {path} is stale ({_changed(data['machine'], here)}); "
             "measuring again")  # fmt: skip
        return None
    return Choice.from_json(data["choices"][key])


def write_cached(path: Path, digest: str, here: dict, key: str, choice: Choice, model: str) -> bool:
    """Add ``choice`` under ``key`` (keeping the file's other choices when they are for this bundle and machine),
    atomically. An unwritable cache is said in one line; returns whether it was written."""
    try:
        old = _load(path)
    except (ValueError, UnicodeDecodeError, RecursionError, OSError):
        old = None
    keep = old is not None and old["bundle_sha256"] == digest and old["machine"] == here
    choices = dict(old["choices"]) if keep and old is not None else {}
    choices[key] = choice.to_json()
    data = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "model": model, "bundle_sha256": digest,
            "machine": here, "choices": choices}  # fmt: skip
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".device-", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1, allow_nan=False)
        os.replace(tmp, path)
        return True
    except (OSError, ValueError) as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else _one_line(exc)
        _say(f"edgeae: device auto: cannot write the cache {path} ({reason}); the choice is measured again next run")
        return False


# --------------------------------------------------------------------------------------------------------------
# Entry points: open_graph(device="auto") and `edgeae doctor`


def _model_path(model: Any, bundle: Bundle | None) -> Path:
    return bundle.root if bundle is not None else Path(model)


def _key(graph: str | None, precision: str, threads: int) -> str:
    """One choice of a cache file: the graph (``file`` for a single .onnx), the precision asked for, threads."""
    return f"{graph or 'file'}/{precision}/threads={threads}"


def choose(model: Any, graph: str | None = None, precision: str = "auto", *, threads: int | None = None,
           expected: dict | None = None, refresh: bool = False) -> Choice:  # fmt: skip
    """The cached choice for this graph, bundle and machine, or a fresh measurement (then cached); the choice
    is announced in one line on stderr."""
    if precision != "auto" and precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r} (expected auto or one of {', '.join(PRECISIONS)})")
    bundle = bundle_of(model)
    graph = _graph_name(bundle, graph)
    path = _model_path(model, bundle)
    threads = threads or default_threads()
    here, digest = machine(), model_hash(bundle, path)
    key = _key(graph, precision, threads)
    where = cache_path(path)
    choice = None if refresh else read_cached(where, digest, here, key)
    if choice is None:
        choice = measure(bundle if bundle is not None else path, graph, precision, threads=threads,
                         expected=expected)  # fmt: skip
        if not choice.note:
            write_cached(where, digest, here, key, choice, str(path))
    _say(choice.line(str(path), bundle is not None and len(bundle.graphs()) > 1))
    return choice


def open_auto(model: Any, graph: str | None = None, precision: str = "auto", *, threads: int | None = None,
              expected: dict | None = None, provider_options: dict | None = None) -> RuntimeGraph:  # fmt: skip
    """:func:`edge_runtime.model.open_graph` with ``device="auto"``: open the graph :func:`choose` picks. A cached
    choice that no longer opens is said in one line and measured again."""
    if provider_options:
        raise UsageError("provider options need an explicit device, not auto")
    bundle = bundle_of(model)
    source = bundle if bundle is not None else model
    choice = choose(source, graph, precision, threads=threads, expected=expected)
    try:
        return open_graph(source, choice.graph, choice.precision, device=choice.device, threads=threads,
                          expected=expected)  # fmt: skip
    except ModelRejectedError as exc:
        if not choice.cached:
            raise
        _say(f"edgeae: device auto: the cached {choice.device} {choice.precision} failed ({_one_line(exc)}); "
             "measuring again")  # fmt: skip
    choice = choose(source, graph, precision, threads=threads, expected=expected, refresh=True)
    return open_graph(source, choice.graph, choice.precision, device=choice.device, threads=threads,
                      expected=expected)  # fmt: skip


def format_table(rows: list[Row]) -> str:
    """The candidates as a text table: device, precision, ms/frame, max |diff| vs fp32 cpu, tolerance, result."""
    lines = [["device", "precision", "ms/frame", "max|diff|", "tolerance", "result"]]
    for r in rows:
        diff = "" if r.diff is None else f"{r.diff:.4g}" + (f" ({r.output})" if r.output else "")
        result = r.status + (f": {r.reason}" if r.reason else "")
        lines.append([r.device, r.precision, "" if r.ms is None else f"{r.ms:.2f}", diff,
                      "" if r.tol is None else f"{r.tol:.4g}", result])  # fmt: skip
    widths = [max(len(row[i]) for row in lines) for i in range(len(lines[0]) - 1)]
    out = ["  ".join([*(v.ljust(w) for v, w in zip(row[:-1], widths, strict=True)), row[-1]]) for row in lines]
    out.insert(1, "  ".join(["-" * w for w in widths] + ["------"]))
    return "\n".join(out)


def providers_report(available: list[str] | None = None) -> str:
    """The providers onnxruntime offers here and the edgeae devices that use them."""
    here = machine(available)
    devices, _ = devices_for(here["providers"])
    packages = ", ".join(f"{k} {v}" for k, v in here["packages"].items()) or f"onnxruntime {here['onnxruntime']}"
    lines = [f"machine: {here['cpu']}, {here['cores']} cores; {packages}", "providers:"]
    for provider in here["providers"]:
        names = [d for d in devices if DEVICE_PROVIDERS[d][0] == provider]
        lines.append(f"  {provider}: " + (f"--device {', '.join(names)}" if names else "no edgeae device"))
    return "\n".join(lines)


def doctor(model: Any = None, precision: str = "auto", threads: int | None = None) -> str:
    """``edgeae doctor``: the providers, and for a model each graph's freshly measured table, the choice and its
    cache file (the fresh measurement replaces what was cached)."""
    parts = [providers_report()]
    if model is None:
        return "\n".join(parts)
    bundle = bundle_of(model)
    path = _model_path(model, bundle)
    graphs: list[str | None] = list(bundle.graphs()) if bundle is not None else [None]
    digest, here = model_hash(bundle, path), machine()
    for graph in graphs:
        key = _key(graph, precision, threads or default_threads())
        before = _peek(cache_path(path), digest, here, key)
        choice = choose(bundle if bundle is not None else path, graph, precision, threads=threads, refresh=True)
        parts += [
            "",
            f"{path}: {choice.graph} graph, {choice.size[1]}x{choice.size[0]} frame, {choice.threads} threads, "
            f"precision {precision}",
            format_table(choice.rows),
            f"choice: {choice.device} {choice.precision} ({choice.note or f'{choice.ms:.2f} ms/frame'}); "
            f"cache {cache_path(path)} (before: {before})",
        ]
    return "\n".join(parts)


def _peek(path: Path, digest: str, here: dict, key: str) -> str:
    """What the cache held for ``key``, in words, without announcing anything."""
    try:
        data = _load(path)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return "corrupt"
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    if data is None or key not in data["choices"]:
        return "none"
    if data["bundle_sha256"] != digest or data["machine"] != here:
        return "stale"
    old = Choice.from_json(data["choices"][key])
    return f"{old.device} {old.precision}, {old.ms:.2f} ms/frame"
