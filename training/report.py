"""Training report: the curves of a run as PNG and a short Markdown summary, written into the run folder.

``write_report(run_dir)`` reads ``log.jsonl`` (train / val / rollback records), ``summary.json``,
``config.json`` and ``split.json`` and writes

* ``loss.png``   - training loss and gradient norm against the step (rollbacks marked);
* ``val.png``    - every validation metric against the step, one panel per metric (best step marked);
* ``health.png`` - latent health (total variance, active channels, effective rank) when the task logs it;
* ``report.md``  - task, steps, time, cost, best and final metrics, warnings and rollbacks, images embedded.

Every curve has exactly one point per logged step: when a resumed run logs a step again, the later record
wins. The number of points each curve got is kept in :data:`curve_points` (for tests and tooling).
matplotlib is imported lazily and used without pyplot (no global backend state); without it the Markdown
is still written, without images.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from edge_runtime.io import atomic_path, atomic_write_text

#: curve name ("loss", "grad_norm", "val:psnr", "health:latent_var_total", ...) -> points plotted, for the
#: most recent :func:`write_report` call.
curve_points: dict[str, int] = {}

HEALTH_KEYS = ("latent_var_total", "latent_active_channels", "latent_effective_rank")
_NOT_METRICS = {"step", "kind", "elapsed_s", "warning"}
_HEALTH_EXTRA = {"latent_var_max"}  # logged with the health numbers, not a validation metric


def read_log(path: Path) -> list[dict]:
    """The records of a JSONL log; a torn last line (a run killed mid-write) is ignored."""
    records = []
    if not path.is_file():
        return records
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), int):
            records.append(rec)
    return records


def by_step(records: list[dict], kind: str) -> list[dict]:
    """Records of one kind, one per step (the last one logged wins), sorted by step."""
    out: dict[int, dict] = {}
    for rec in records:
        if rec.get("kind") == kind:
            out[rec["step"]] = rec
    return [out[s] for s in sorted(out)]


def _num(v) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f if math.isfinite(f) else math.nan


def _load_json(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}


def val_metric_names(val: list[dict]) -> list[str]:
    names: list[str] = []
    for rec in val:
        for k, v in rec.items():
            if k in _NOT_METRICS or k in HEALTH_KEYS or k in _HEALTH_EXTRA or k in names:
                continue
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                names.append(k)
    return names


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(str(tmp), dpi=100, format="png")


def _figure(n_panels: int, title: str):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 2.4 * n_panels + 0.6), layout="constrained")
    axes = fig.subplots(n_panels, 1, sharex=True, squeeze=False)[:, 0]
    fig.suptitle(title)
    axes[-1].set_xlabel("step")
    for ax in axes:
        ax.grid(True, alpha=0.3)
    return fig, axes


def _plot(ax, name: str, steps: list[int], values: list[float], **kw) -> None:
    (line,) = ax.plot(steps, values, marker="." if len(steps) < 60 else None, **kw)
    curve_points[name] = len(line.get_xdata())


def _positive(values: list[float]) -> bool:
    finite = [v for v in values if not math.isnan(v)]
    return bool(finite) and min(finite) > 0 and max(finite) / min(finite) > 20


def plot_loss(train: list[dict], rollbacks: list[dict], path: Path, title: str) -> bool:
    if not train:
        return False
    fig, (ax_loss, ax_grad) = _figure(2, title)
    steps = [r["step"] for r in train]
    loss = [_num(r.get("loss")) for r in train]
    _plot(ax_loss, "loss", steps, loss, color="C0")
    ax_loss.set_ylabel("train loss")
    if _positive(loss):
        ax_loss.set_yscale("log")
    grad = [_num(r.get("grad_norm")) for r in train]
    _plot(ax_grad, "grad_norm", steps, grad, color="C1")
    ax_grad.set_ylabel("grad norm (before clip)")
    if _positive(grad):
        ax_grad.set_yscale("log")
    for i, rb in enumerate(rollbacks):
        for ax in (ax_loss, ax_grad):
            ax.axvline(rb["step"], color="red", ls="--", lw=1, label="rollback" if i == 0 and ax is ax_loss else None)
    if rollbacks:
        ax_loss.legend(loc="upper right")
    _save(fig, path)
    return True


def plot_val(val: list[dict], metric: str | None, best_step: int | None, path: Path, title: str) -> bool:
    names = val_metric_names(val)
    if not names:
        return False
    fig, axes = _figure(len(names), title)
    for ax, name in zip(axes, names, strict=True):
        pts = [(r["step"], _num(r.get(name))) for r in val if name in r]
        _plot(ax, f"val:{name}", [s for s, _ in pts], [v for _, v in pts], color="C2")
        ax.set_ylabel(name + (" (selection)" if name == metric else ""))
        if name == metric and best_step is not None:
            ax.axvline(best_step, color="gray", ls=":", lw=1, label=f"best (step {best_step})")
            ax.legend(loc="best")
    _save(fig, path)
    return True


def plot_health(val: list[dict], path: Path, title: str) -> bool:
    names = [k for k in HEALTH_KEYS if any(k in r for r in val)]
    if not names:
        return False
    fig, axes = _figure(len(names), title)
    warn_steps = [r["step"] for r in val if r.get("warning")]
    for ax, name in zip(axes, names, strict=True):
        pts = [(r["step"], _num(r.get(name))) for r in val if name in r]
        values = [v for _, v in pts]
        _plot(ax, f"health:{name}", [s for s, _ in pts], values, color="C4")
        ax.set_ylabel(name.replace("latent_", ""))
        if name == "latent_var_total" and _positive(values):
            ax.set_yscale("log")
        for i, s in enumerate(warn_steps):
            ax.axvline(s, color="red", ls="--", lw=1, label="collapse warning" if i == 0 else None)
        if warn_steps:
            ax.legend(loc="best")
    _save(fig, path)
    return True


def _fmt(v) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.4g}" if abs(v) < 1e5 else f"{v:,.0f}"
    return str(v)


def _duration(seconds) -> str:
    s = _num(seconds)
    if math.isnan(s):
        return "unknown"
    h, rem = divmod(int(round(s)), 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h {m:02d}m {sec:02d}s" if h else f"{m}m {sec:02d}s"


def _best_step(val: list[dict], metric: str | None, best) -> int | None:
    if metric is None or best is None:
        return None
    for rec in val:
        if metric in rec and _num(rec[metric]) == _num(best):
            return rec["step"]
    return None


def write_markdown(run: Path, images: list[Path], records: list[dict], plots_note: str | None) -> Path:
    summary = _load_json(run / "summary.json")
    config = _load_json(run / "config.json")
    split_info = _load_json(run / "split.json")
    train_cfg = config.get("train", {}) if isinstance(config.get("train"), dict) else {}
    train, val, rollbacks = by_step(records, "train"), by_step(records, "val"), by_step(records, "rollback")
    task = summary.get("task") or config.get("task") or "unknown"
    metric = summary.get("metric")
    finished = bool(summary)
    steps = summary.get("steps", max((r["step"] for r in records), default=0))
    elapsed = summary.get("elapsed_s", max((_num(r.get("elapsed_s")) for r in records), default=math.nan))
    best_step = _best_step(val, metric, summary.get("best"))

    lines = [f"# Training report: {run.name}", ""]
    if not finished:
        lines += ["**The run did not finish** (no summary.json): the numbers below come from log.jsonl.", ""]
    rows = [("task", task), ("steps", _fmt(steps)), ("time", _duration(elapsed))]
    if train_cfg.get("steps") is not None:
        note = ""
        if finished and train_cfg.get("minutes") and isinstance(steps, int) and steps < train_cfg["steps"]:
            note = f" (stopped by the {train_cfg['minutes']}-minute budget)"
        rows[1] = ("steps", f"{_fmt(steps)} of {_fmt(train_cfg['steps'])}{note}")
    rates = sorted(_num(r.get("img_per_s")) for r in train if not math.isnan(_num(r.get("img_per_s"))))
    if rates:
        rows.append(("throughput", f"{_fmt(rates[len(rates) // 2])} images/s (median of logged intervals)"))
    macs = summary.get("macs_per_pixel", config.get("macs_per_pixel"))
    params = summary.get("params", config.get("params"))
    if macs is not None:
        rows.append(("MAC/pixel", _fmt(macs)))
    if params is not None:
        rows.append(("parameters", _fmt(params)))
    if isinstance(config.get("model"), dict):
        model = ", ".join(f"{k}={v}" for k, v in sorted(config["model"].items()) if k != "task")
        rows.append(("model", model))
    if train_cfg:
        keys = ("data", "batch", "crop", "lr", "seed", "device", "minutes")
        rows.append(("training", ", ".join(f"{k}={train_cfg[k]}" for k in keys if train_cfg.get(k) is not None)))
    if split_info:
        n_skip = len(split_info.get("skipped", []))
        rows.append(("images", f"{len(split_info.get('train', []))} train, {len(split_info.get('val', []))} "
                               f"validation, {n_skip} skipped as unreadable"))  # fmt: skip
    if metric is not None:
        best = summary.get("best")
        at = f" at step {best_step}" if best_step is not None else ""
        rows.append(("best " + metric, (_fmt(best) + at) if best is not None else "none (no finite value)"))
    lines += ["| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows], ""]

    final = summary.get("final") or (val[-1] if val else {})
    final = {k: v for k, v in final.items() if k not in _NOT_METRICS}
    if final:
        lines += ["## Final validation", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in sorted(final.items())]
        lines.append("")

    warnings = list(summary.get("warnings", [])) if finished else [r["warning"] for r in val if r.get("warning")]
    lines += ["## Warnings", ""]
    lines += [f"- {w}" for w in warnings] if warnings else ["None."]
    lines.append("")
    lines += ["## Rollbacks", ""]
    if rollbacks:
        lines.append(f"{len(rollbacks)} non-finite loss(es) rolled back to the last good checkpoint, each halving "
                     f"the learning rate (final scale {_fmt(rollbacks[-1].get('lr_scale'))}), at step(s) "
                     + ", ".join(str(r["step"]) for r in rollbacks) + ".")  # fmt: skip
    else:
        lines.append("None.")
    lines.append("")

    lines += ["## Curves", ""]
    if plots_note:
        lines += [plots_note, ""]
    captions = {"loss.png": "training loss and gradient norm", "val.png": "validation metrics",
                "health.png": "latent health"}  # fmt: skip
    for img in images:
        lines += [f"![{captions.get(img.name, img.stem)}]({img.name})", ""]
    if not images and not plots_note:
        lines += ["Nothing was logged yet.", ""]
    path = run / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path


def write_report(run_dir: str | Path) -> list[Path]:
    """Write loss.png, val.png, health.png (each when there is data for it) and report.md into ``run_dir``.

    Returns the paths written, report.md last.
    """
    run = Path(run_dir)
    curve_points.clear()
    records = read_log(run / "log.jsonl")
    train, val, rollbacks = by_step(records, "train"), by_step(records, "val"), by_step(records, "rollback")
    summary = _load_json(run / "summary.json")
    task = summary.get("task") or _load_json(run / "config.json").get("task") or ""
    metric = summary.get("metric")
    images: list[Path] = []
    note = None
    try:
        import matplotlib  # noqa: F401  (only to fail early and clearly)
    except ImportError:
        note = "matplotlib is not installed: no plots (pip install matplotlib)."
    if note is None:
        title = f"{run.name} ({task})" if task else run.name
        if plot_loss(train, rollbacks, run / "loss.png", title):
            images.append(run / "loss.png")
        if plot_val(val, metric, _best_step(val, metric, summary.get("best")), run / "val.png", title):
            images.append(run / "val.png")
        if plot_health(val, run / "health.png", title):
            images.append(run / "health.png")
    return [*images, write_markdown(run, images, records, note)]
