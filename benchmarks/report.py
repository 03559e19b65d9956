"""Benchmark reports: ``results.json`` plus a Markdown page with tables and plots.

Schema of ``results`` (everything else is kept in the JSON as is):

* ``title``: str, optional page title;
* ``stamp``: from :func:`benchmarks.machine.stamp`; made here if absent (``threads`` key used if present);
* ``tables``: list of ``{"title": str, "columns": [str], "rows": [[cell]], "note": str,
  "formats": [format spec or None] (optional, one per column, e.g. ".2f")}``;
* ``plots``: list of ``{"title": str, "path": str}``; a relative path is taken relative to ``out_dir``.

matplotlib is imported only inside the plot functions, with the Agg backend (no display needed).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.io import atomic_path, atomic_write_text


def write_report(results: Mapping[str, Any], out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``out_dir/results.json`` and ``out_dir/README.md``; returns ``(json_path, md_path)``.

    Non-finite floats become ``null`` in the JSON (strict JSON has no NaN/Infinity); the Markdown shows them
    as ``inf``/``nan``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = dict(results)
    if "stamp" not in data:
        from benchmarks.machine import stamp

        data["stamp"] = stamp(data.get("threads"))
    json_path, md_path = out / "results.json", out / "README.md"
    atomic_write_text(json_path, json.dumps(_jsonable(data), indent=2, allow_nan=False) + "\n")
    atomic_write_text(md_path, render_markdown(data, out))
    return json_path, md_path


def render_markdown(results: Mapping[str, Any], out_dir: str | os.PathLike) -> str:
    """The Markdown page for ``results`` (see the module docstring); plot paths made relative to ``out_dir``."""
    lines = [f"# {results.get('title', 'Benchmark report')}", ""]
    st = results.get("stamp") or {}
    if st:
        lines += _stamp_lines(st) + [""]
    for table in results.get("tables", []):
        lines += _table_lines(table) + [""]
    for plot in results.get("plots", []):
        path = Path(plot["path"])
        rel = os.path.relpath(path if path.is_absolute() else Path(out_dir) / path, out_dir)
        title = plot.get("title", path.stem)
        lines += [f"## {title}", "", f"![{title}]({Path(rel).as_posix()})", ""]
    return "\n".join(lines).rstrip() + "\n"


def _stamp_lines(st: Mapping[str, Any]) -> list[str]:
    cpu = st.get("cpu") or {}
    pk = st.get("packages") or {}
    threads = (st.get("threads") or {}).get("requested")
    items = [
        ("date (UTC)", st.get("date_utc")),
        ("commit", st.get("git_commit") or "not a git checkout / no commit"),
        (
            "CPU",
            f"{cpu.get('model')} ({cpu.get('logical_cores')} logical, {cpu.get('affinity_cores')} usable); "
            f"flags: {', '.join(cpu.get('flags') or []) or 'none listed'}",
        ),
        ("GPU", ", ".join(st.get("gpu") or []) or "none"),
        ("threads", threads),
        ("Python", st.get("python")),
        ("packages", ", ".join(f"{k} {v}" for k, v in pk.items() if v)),
        ("onnxruntime providers", ", ".join(st.get("ort_providers") or [])),
    ]
    return [f"- **{k}**: {_md_escape(str(v))}" for k, v in items if v not in (None, "")]


def _table_lines(table: Mapping[str, Any]) -> list[str]:
    cols = list(table["columns"])
    fmts = list(table.get("formats") or [None] * len(cols))
    lines = []
    if table.get("title"):
        lines += [f"## {table['title']}", ""]
    lines.append("| " + " | ".join(_md_escape(str(c)) for c in cols) + " |")
    lines.append(
        "| " + " | ".join("---:" if _numeric_column(table["rows"], i) else "---" for i in range(len(cols))) + " |"
    )
    for row in table["rows"]:
        if len(row) != len(cols):
            raise ValueError(f"table {table.get('title')!r}: row {row!r} has {len(row)} cells, expected {len(cols)}")
        cells = [fmt_cell(v, fmts[i] if i < len(fmts) else None) for i, v in enumerate(row)]
        lines.append("| " + " | ".join(cells) + " |")
    if table.get("note"):
        lines += ["", f"*{_md_escape(str(table['note']))}*"]
    return lines


def _numeric_column(rows: Sequence[Sequence[Any]], i: int) -> bool:
    vals = [r[i] for r in rows if i < len(r) and r[i] is not None]
    return bool(vals) and all(_is_number(v) for v in vals)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def fmt_cell(v: Any, spec: str | None = None) -> str:
    """One table cell: ``spec`` (a format spec like ``".2f"``) if given, else about 3-4 significant digits."""
    if v is None:
        return "—"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if _is_number(v):
        x = float(v)
        if math.isnan(x):
            return "nan"
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        if spec:
            return format(v, spec)
        if isinstance(v, (int, np.integer)):
            return str(int(v))
        ax = abs(x)
        if ax == 0:
            return "0"
        if ax >= 1000:
            return f"{x:.0f}"
        if ax >= 100:
            return f"{x:.1f}"
        if ax >= 1:
            return f"{x:.2f}"
        if ax >= 0.01:
            return f"{x:.3f}"
        return f"{x:.2e}"
    return _md_escape(str(v))


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def _jsonable(v: Any) -> Any:
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return _jsonable(dataclasses.asdict(v))
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, tuple) and hasattr(v, "_asdict"):  # NamedTuple, e.g. baselines.RDPoint
        return _jsonable(v._asdict())
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return _jsonable(v.tolist())
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v) if math.isfinite(v) else None
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    if v is None or isinstance(v, str):
        return v
    return str(v)


# --------------------------------------------------------------------------------------------------------------
# Plots


def _figure(figsize: tuple[float, float] = (7.0, 4.5)) -> Any:
    # Figure + the Agg canvas directly, without pyplot: no global state, no display, safe in threads.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: str | os.PathLike) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format=path.suffix.lstrip(".") or "png")
    return path


def plot_latency(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, title: str = "Latency") -> Path:
    """Grouped bars: one group per resolution, one bar per precision; bar = p50, whisker up to p95.

    rows: ``[{"resolution": str, "precision": str, "p50_ms": float, "p95_ms": float}, ...]``; groups and bars
    keep the order in which they first appear.
    """
    resolutions = list(dict.fromkeys(str(r["resolution"]) for r in rows))
    precisions = list(dict.fromkeys(str(r["precision"]) for r in rows))
    lookup = {(str(r["resolution"]), str(r["precision"])): r for r in rows}
    fig = _figure()
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(precisions))
    x = np.arange(len(resolutions))
    for j, prec in enumerate(precisions):
        p50 = np.array([lookup[(res, prec)]["p50_ms"] if (res, prec) in lookup else np.nan for res in resolutions])
        p95 = np.array([lookup[(res, prec)]["p95_ms"] if (res, prec) in lookup else np.nan for res in resolutions])
        err = np.vstack([np.zeros_like(p50), np.maximum(p95 - p50, 0)])
        ax.bar(x + (j - (len(precisions) - 1) / 2) * width, p50, width, yerr=err, capsize=3, label=prec)
    ax.set_xticks(x, resolutions)
    ax.set_xlabel("resolution")
    ax.set_ylabel("latency (ms): bar p50, whisker p95")
    ax.set_title(title)
    ax.legend(title="precision")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_rd(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str | os.PathLike,
    title: str = "Rate-distortion",
    ylabel: str = "PSNR (dB)",
) -> Path:
    """Rate-distortion curves: ``{name: (bpp list, quality list)}``, quality (PSNR in dB unless ``ylabel`` names
    another metric) against bits per pixel."""
    fig = _figure()
    ax = fig.add_subplot()
    for name, (bpp, ps) in curves.items():
        order = np.argsort(np.asarray(bpp, dtype=float))
        ax.plot(np.asarray(bpp, float)[order], np.asarray(ps, float)[order], marker="o", ms=3, label=name)
    ax.set_xlabel("bits per pixel")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_psnr_vs_speed(
    points: Sequence[tuple[str, float, float]], path: str | os.PathLike, title: str = "Quality vs. speed"
) -> Path:
    """Scatter of ``(name, ms per image, PSNR dB)``; time on a log axis because methods differ by decades."""
    fig = _figure()
    ax = fig.add_subplot()
    for name, ms, ps in points:
        ax.scatter([ms], [ps])
        ax.annotate(name, (ms, ps), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if points and all(p[1] > 0 for p in points):
        ax.set_xscale("log")
    ax.set_xlabel("time per image (ms)")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    return _save(fig, path)
