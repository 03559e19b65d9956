"""Inspection anomaly benchmark (issue 15): the user's CLI flow on real inspection images, image AUROC honestly.

For each set, exactly what a user types, with the defaults of ``edgeae train --task anomaly`` (whatever model
that makes), through this checkout's CLI:

1. ``edgeae train --task anomaly --data NORMAL_DIR --out RUN --seed S [--minutes M] [--train-args ...]``
2. ``edgeae export RUN --out BUNDLE [--int8]``
3. ``edgeae score BUNDLE TEST_DIR --events EV.jsonl --precision P [--score-args ...]`` for each precision

and from the events (frame lines: ``name``, ``score``, ``threshold``, ``above_threshold``): image AUROC of
``score`` (test normals against defectives), the false-alarm rate (normals ``above_threshold``) and detection
rate (defectives above it) at the bundle's stored threshold, INT8 minus FP32 AUROC. A sanity check on the same
split: the AUROC of trivial image statistics (gray mean, standard deviation, size h*w), each as max(auc, 1-auc)
so a confound in either direction shows; ``beats_trivial`` when the model's AUROC exceeds the best of them by
more than 0.05. Also: training wall time and steps (RUN/summary.json, else RUN/log.jsonl), the model's MAC per
pixel (RUN/config.json), scoring throughput (the runtime's own summary line; and images over the whole score
command, start-up included).

Sets:

* ``mono``, ``poly`` (ELPV, ``pip install '.[bench]'``): 2,624 electroluminescence images of solar cells
  (300x300 gray). Per module type, the probability-0 cells are permuted with ``numpy.random.default_rng(0)``
  (fixed, whatever ``--seed``): the first 60 % train, the rest are the test normals; the defectives are the
  probability-1 cells. Cells of probability 1/3 and 2/3 are scored apart (``extra``: AUROC against the test
  normals, detection rate), never in the headline. Written as PNG folders under the work dir
  (``train/good``, ``test/good``, ``test/defect``, ``extra/p1of3``, ``extra/p2of3``).
* ``--folder ROOT`` (repeatable): an MVTec-style layout, ``ROOT/train/good``, ``ROOT/test/good`` and
  ``ROOT/test/<defect>/`` (any other folder is a defect type; images of any size), used in place.

``python -m benchmarks.inspect_bench --out inspect-out [--sets mono,poly] [--folder ROOT ...] [--minutes 20]
[--seed 0] [--precision fp32,int8] [--train-args "--steps 4000"] [--score-args "--threads 2"] [--work DIR]
[--keep]`` writes OUT/inspect.json (every number, the commands, the machine), OUT/inspect.md (the tables, also
printed), OUT/inspect.png (ROC curves per set), and OUT/logs/, OUT/events/ (each command's output, each score
run's events). The work dir (default OUT/work: data, runs, bundles) is removed at the end unless ``--keep``.

Exit status: 0 done, 2 bad usage (nothing written), 3 a step of the CLI flow failed for some set (the report
still says which and why).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from benchmarks.machine import stamp
from benchmarks.street_bench import _last_json, cli_help, has_option, read_events, run_cli, two_sided
from edge_runtime.errors import UsageError
from edge_runtime.sources import IMAGE_EXTENSIONS
from training.metrics import auroc

ELPV_TYPES = ("mono", "poly")
ELPV_SPLIT_SEED = 0
TRAIN_FRACTION = 0.6
ELPV_EXTRA = {"p1of3": 1 / 3, "p2of3": 2 / 3}  # folder -> defect probability, reported apart
TRIVIAL = ("mean", "std", "size")
BEATS_MARGIN = 0.05
INT8_GOAL = 0.01
PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class InspectSet:
    """One benchmark set: normal training images, a test folder (``good/`` + defect folders), and optionally a
    folder of extra groups scored against the test normals but kept out of the headline."""

    name: str
    source: str
    train: Path
    test: Path
    extra: Path | None = None


def image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive, hidden names skipped as the runtime skips them), sorted."""
    return sorted(
        p for p in Path(folder).rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )  # fmt: skip


def group_of(name: str) -> str:
    """The first folder of an events ``name`` (a path relative to the scored folder): ``good``, a defect type."""
    return Path(name).parts[0] if len(Path(name).parts) > 1 else ""


def folder_set(root: Path | str) -> InspectSet:
    """An MVTec-style folder as a set; one-line :class:`UsageError` when a part is missing or empty."""
    root = Path(root)
    train, test = root / "train" / "good", root / "test"
    if not image_files(train):
        raise UsageError(f"{train}: no normal training images (expected ROOT/train/good/*.png)")
    if not image_files(test / "good"):
        raise UsageError(f"{test / 'good'}: no test normal images (expected ROOT/test/good/*.png)")
    defects = [d for d in sorted(test.iterdir()) if d.is_dir() and d.name != "good" and not d.name.startswith(".")
               and image_files(d)]  # fmt: skip
    if not defects:
        raise UsageError(f"{test}: no test defects (expected ROOT/test/<defect type>/ folders with images)")
    strays = [p for p in image_files(test) if group_of(p.relative_to(test).as_posix()) == ""]
    if strays:
        raise UsageError(f"{strays[0]}: test images must sit in ROOT/test/good or ROOT/test/<defect type>/")
    return InspectSet(root.resolve().name or "folder", str(root.resolve()), train.resolve(), test.resolve())


# ------------------------------------------------------------------------------------------------------------
# ELPV


def elpv_split(probs: np.ndarray, types: np.ndarray, kind: str) -> dict[str, np.ndarray]:
    """Indices of one module type: ``train`` and ``good`` (probability 0, permuted with
    ``default_rng(ELPV_SPLIT_SEED)``, first TRAIN_FRACTION train), ``defect`` (probability 1) and the extras."""
    sel = np.asarray(types) == kind
    probs = np.asarray(probs, np.float64)
    normal = np.flatnonzero(sel & (probs == 0))
    normal = normal[np.random.default_rng(ELPV_SPLIT_SEED).permutation(normal.size)]
    n_train = int(round(TRAIN_FRACTION * normal.size))
    out = {"train": normal[:n_train], "good": normal[n_train:], "defect": np.flatnonzero(sel & (probs == 1))}
    for name, p in ELPV_EXTRA.items():
        out[name] = np.flatnonzero(sel & np.isclose(probs, p))
    return out


def load_elpv() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    try:
        from elpv_dataset.utils import load_dataset
    except ImportError as exc:
        raise UsageError("the ELPV sets need elpv-dataset (pip install '.[bench]'), or pass --folder") from exc
    images, probs, types = load_dataset()
    return np.asarray(images), np.asarray(probs), np.asarray(types)


def write_elpv_set(work: Path, kind: str, images: np.ndarray, probs: np.ndarray, types: np.ndarray) -> InspectSet:
    """Write one module type's split as PNG folders under ``work/kind/data``."""
    data = work / kind / "data"
    split = elpv_split(probs, types, kind)
    where = {"train": data / "train" / "good", "good": data / "test" / "good", "defect": data / "test" / "defect"}
    where.update({name: data / "extra" / name for name in ELPV_EXTRA})
    for part, idx in split.items():
        where[part].mkdir(parents=True, exist_ok=True)
        for i in idx:
            if not cv2.imwrite(str(where[part] / f"elpv_{i:04d}.png"), images[i]):
                raise OSError(f"{where[part]}: cannot write PNG files")
    return InspectSet(kind, f"elpv:{kind}", where["train"], data / "test", data / "extra")


# ------------------------------------------------------------------------------------------------------------
# Metrics


def gray_stats(path: Path) -> tuple[float, float, float] | None:
    """(mean, standard deviation, h*w) of an image file read as gray; None when OpenCV cannot read it."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        return None
    if img.ndim == 3:
        img = cv2.cvtColor(img[:, :, :3], cv2.COLOR_BGR2GRAY)
    g = img.astype(np.float64)
    return float(g.mean()), float(g.std()), float(g.shape[0] * g.shape[1])


def trivial_aurocs(stats: np.ndarray, labels: np.ndarray) -> dict:
    """AUROC of each trivial statistic (columns of ``stats``: TRIVIAL) against ``labels`` (True = defective):
    ``auroc`` (higher statistic = defective) and ``two_sided`` (max(auc, 1 - auc))."""
    out = {}
    for k, name in enumerate(TRIVIAL):
        a = auroc(stats[:, k], labels)
        out[name] = {"auroc": round(a, 4), "two_sided": round(two_sided(a), 4)}
    return out


def roc_points(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rate, true-positive rate) at every distinct threshold, from (0, 0) to (1, 1)."""
    scores = np.asarray(scores, np.float64)
    labels = np.asarray(labels, bool)
    order = np.argsort(-scores, kind="mergesort")
    s, lab = scores[order], labels[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # last index of each run of tied scores
    tp, fp = np.cumsum(lab)[last], np.cumsum(~lab)[last]
    return np.r_[0.0, fp / max(1, (~lab).sum())], np.r_[0.0, tp / max(1, lab.sum())]


def _rate(x: np.ndarray) -> float | None:
    return round(float(np.mean(x)), 4) if x.size else None


def score_metrics(frames: Sequence[dict], errors: Sequence[dict], n_listed: int) -> dict:
    """Metrics of one score run on a test folder from its events: ``good/`` frames are the normals, every other
    folder a defect type."""
    groups = np.array([group_of(e["name"]) for e in frames])
    score = np.array([float(e["score"]) for e in frames])
    above = np.array([bool(e["above_threshold"]) for e in frames])
    bad = groups != "good"
    thresholds = sorted({float(e["threshold"]) for e in frames})
    out = {
        "events_frames": len(frames),
        "test_images": n_listed,
        "skipped": n_listed - len(frames),  # unreadable files (no events line) and error events alike
        "error_events": len(errors),
        "normals": int((~bad).sum()),
        "defectives": int(bad.sum()),
        "image_auroc": round(auroc(score, bad), 4) if bad.any() and (~bad).any() else None,
        "threshold": thresholds[0] if len(thresholds) == 1 else thresholds,
        "false_alarms": int(above[~bad].sum()),
        "false_alarm_rate": _rate(above[~bad]),
        "detected": int(above[bad].sum()),
        "detection_rate": _rate(above[bad]),
        "score_normal_median": round(float(np.median(score[~bad])), 4) if (~bad).any() else None,
        "score_defect_median": round(float(np.median(score[bad])), 4) if bad.any() else None,
    }
    kinds = sorted(set(groups[bad]))
    if len(kinds) > 1:
        out["per_defect_type"] = {
            k: {"n": int((groups == k).sum()), "image_auroc": round(auroc(score[(groups == k) | ~bad],
                                                                          groups[(groups == k) | ~bad] == k), 4)}
            for k in kinds
        }  # fmt: skip
    return out


def extra_metrics(frames: Sequence[dict], normal_scores: np.ndarray) -> dict:
    """Each extra group (first folder of ``name``) against the test normals' scores: AUROC and detection rate."""
    out = {}
    for g in sorted({group_of(e["name"]) for e in frames}):
        s = np.array([float(e["score"]) for e in frames if group_of(e["name"]) == g])
        above = np.array([bool(e["above_threshold"]) for e in frames if group_of(e["name"]) == g])
        lab = np.r_[np.zeros(normal_scores.size, bool), np.ones(s.size, bool)]
        out[g] = {"n": int(s.size), "image_auroc": round(auroc(np.r_[normal_scores, s], lab), 4),
                  "detection_rate": _rate(above)}  # fmt: skip
    return out


def throughput(summary: dict | None, start: dict, frames: Sequence[dict], command_s: float) -> dict:
    """Images per second: the runtime's own (its summary line, else the events' wall clock from the start line
    to the last frame) and over the whole command (process start-up and model load included)."""
    n = len(frames)
    if summary and summary.get("elapsed_s"):
        loop_s = float(summary["elapsed_s"])
    elif frames and "wall" in start:
        loop_s = float(frames[-1]["wall"]) - float(start["wall"])
    else:
        loop_s = 0.0
    return {
        "images_per_s": round(n / loop_s, 1) if loop_s > 0 else None,
        "command_images_per_s": round(n / command_s, 1) if command_s > 0 else None,
        "command_s": round(command_s, 2),
    }


def _json_file(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def training_record(run: Path, command_s: float) -> dict:
    """Wall time, steps and the model's size from what ``edgeae train`` wrote in RUN."""
    summary, config = _json_file(run / "summary.json"), _json_file(run / "config.json")
    rec = {"command_s": round(command_s, 1), "elapsed_s": summary.get("elapsed_s"), "steps": summary.get("steps"),
           "best_val": summary.get("best"), "val_metric": summary.get("metric")}  # fmt: skip
    if rec["steps"] is None and (run / "log.jsonl").is_file():
        lines = [json.loads(ln) for ln in (run / "log.jsonl").read_text().splitlines() if ln.strip()]
        if lines:
            rec["steps"], rec["elapsed_s"] = lines[-1].get("step"), lines[-1].get("elapsed_s")
    rec["macs_per_pixel"] = config.get("macs_per_pixel", summary.get("macs_per_pixel"))
    rec["params"] = config.get("params", summary.get("params"))
    rec["model"] = config.get("model")
    rec["warnings"] = summary.get("warnings")
    return rec


def bundle_record(bundle: Path) -> dict:
    """Precisions present in the bundle, its stored calibration and the export gate's record."""
    m = _json_file(bundle / "manifest.json")
    files = m.get("files", {})
    rows = m.get("metrics", {}).get("rows", [])
    return {
        "precisions": sorted({f.get("precision") for f in files.values() if f.get("precision")}),
        "calibration": m.get("calibration"),
        "gate": [
            {k: row.get(k) for k in ("graph", "precision", "value", "delta", "status", "written")} for row in rows
        ],  # fmt: skip
    }


# ------------------------------------------------------------------------------------------------------------
# The flow


@dataclass
class Flow:
    """Options of the CLI flow, and where logs, events and commands go."""

    work: Path
    logs: Path
    events: Path
    seed: int
    minutes: float | None
    precisions: tuple[str, ...]
    train_args: tuple[str, ...]
    score_args: tuple[str, ...]
    commands: list
    no_progress: bool = True


def _step(flow: Flow, name: str, args: list[str]) -> tuple[int, str, float]:
    return run_cli(args, flow.logs / f"{name}.log", flow.commands)


def _failed(log: Path, what: str, code: int) -> str:
    tail = [ln for ln in log.read_text().splitlines() if ln.strip() and not ln.startswith(("---", "$", "#"))]
    return f"{what} exited {code}: {tail[-1] if tail else 'no output'}"


def _score(flow: Flow, s: InspectSet, bundle: Path, folder: Path, precision: str, tag: str) -> tuple:
    ev = flow.events / f"{s.name}.{tag}.{precision}.jsonl"
    ev.unlink(missing_ok=True)  # the events file is a log: start it fresh
    code, out, dt = _step(flow, f"{s.name}.score.{tag}.{precision}",
                          ["score", str(bundle), str(folder), "--events", str(ev), "--precision", precision,
                           *flow.score_args])  # fmt: skip
    if code not in (0, 3) or not ev.is_file():  # 3: some frames skipped, counted in the events
        return code, None
    start, frames, errors = read_events(ev)
    return code, (start, frames, errors, _last_json(out), dt)


def run_set(flow: Flow, s: InspectSet) -> tuple[dict, dict]:
    """Train, export and score one set; returns (its JSON record, curves for the plot)."""
    base = flow.work / s.name
    run, bundle = base / "run", base / "bundle"
    test_files = image_files(s.test)
    groups = [group_of(p.relative_to(s.test).as_posix()) for p in test_files]
    read = [(g, gray_stats(p)) for g, p in zip(groups, test_files, strict=True)]
    labels = np.array([g != "good" for g, st in read if st is not None])
    stats = np.array([st for _, st in read if st is not None])
    rec: dict = {
        "source": s.source,
        "counts": {
            "train": len(image_files(s.train)),
            "test_normal": int((~labels).sum()),
            "test_defect": int(labels.sum()),
            "defect_types": dict(sorted(Counter(g for g in groups if g != "good").items())),
            # OpenCV cannot read them: left out of the trivial statistics; the runtime skips them (error events)
            "unreadable": [str(p) for p, (_, st) in zip(test_files, read, strict=True) if st is None],
        },  # fmt: skip
        "trivial": trivial_aurocs(stats, labels),
        "error": None,
    }
    best = max(TRIVIAL, key=lambda k: rec["trivial"][k]["two_sided"])
    rec["best_trivial"] = {"stat": best, "auroc": rec["trivial"][best]["two_sided"]}
    k = TRIVIAL.index(best)
    oriented = stats[:, k] if rec["trivial"][best]["auroc"] >= 0.5 else -stats[:, k]
    curves: dict = {"trivial": (best, roc_points(oriented, labels))}

    args = ["train", "--task", "anomaly", "--data", str(s.train), "--out", str(run), "--seed", str(flow.seed)]
    if flow.minutes is not None:
        args += ["--minutes", f"{flow.minutes:g}"]
    if flow.no_progress:
        args.append("--no-progress")
    code, _, dt = _step(flow, f"{s.name}.train", args + list(flow.train_args))
    rec["training"] = training_record(run, dt)
    if code != 0:
        rec["error"] = _failed(flow.logs / f"{s.name}.train.log", "edgeae train", code)
        return rec, curves

    want_int8 = "int8" in flow.precisions
    args = ["export", str(run), "--out", str(bundle)] + (["--int8"] if want_int8 else [])
    args += ["--fp16"] if "fp16" in flow.precisions else []
    code, _, dt = _step(flow, f"{s.name}.export", args)
    rec["export"] = {"exit": code, "command_s": round(dt, 1)}
    if code != 0 and len(args) > 4:  # an INT8/FP16 export that fails must not hide the FP32 result: retry without
        rec["export"]["error"] = _failed(flow.logs / f"{s.name}.export.log", "edgeae export " + " ".join(args[4:]),
                                         code)  # fmt: skip
        log = f"{s.name}.export_fp32"
        code, _, dt = _step(flow, log, args[:4])
        rec["export"].update({"exit_fp32_only": code, "command_s_fp32_only": round(dt, 1)})
    else:
        log = f"{s.name}.export"
    if code != 0:
        rec["error"] = _failed(flow.logs / f"{log}.log", "edgeae export", code)
        return rec, curves
    rec["export"].update(bundle_record(bundle))

    rec["scores"] = {}
    for precision in flow.precisions:
        if precision not in rec["export"]["precisions"]:
            rec["scores"][precision] = {"missing": f"no {precision} graph in the bundle (the export gate refused it, "
                                                   f"or its export failed: see logs/{s.name}.export.log)"}  # fmt: skip
            continue
        code, got = _score(flow, s, bundle, s.test, precision, "test")
        if got is None:
            rec["scores"][precision] = {"error": _failed(flow.logs / f"{s.name}.score.test.{precision}.log",
                                                         "edgeae score", code)}  # fmt: skip
            continue
        start, frames, errors, summary, dt = got
        m = score_metrics(frames, errors, len(test_files))
        m.update(throughput(summary, start, frames, dt))
        m["start_threshold"] = start.get("threshold")
        score = np.array([float(e["score"]) for e in frames])
        lab = np.array([group_of(e["name"]) != "good" for e in frames])
        curves[precision] = roc_points(score, lab)
        if s.extra is not None:
            code, got_x = _score(flow, s, bundle, s.extra, precision, "extra")
            m["extra"] = extra_metrics(got_x[1], score[~lab]) if got_x else {"error": f"edgeae score exited {code}"}
        rec["scores"][precision] = m
    ok = [p for p in flow.precisions if rec["scores"].get(p, {}).get("image_auroc") is not None]
    head = ok[0] if ok else None
    rec["headline_precision"] = head
    rec["image_auroc"] = rec["scores"][head]["image_auroc"] if head else None
    rec["beats_trivial"] = (rec["image_auroc"] - rec["best_trivial"]["auroc"] > BEATS_MARGIN) if head else None
    if "fp32" in ok and "int8" in ok:
        d = rec["scores"]["int8"]["image_auroc"] - rec["scores"]["fp32"]["image_auroc"]
        rec["int8_minus_fp32"] = round(d, 4)
        rec["int8_within_goal"] = abs(d) <= INT8_GOAL
    if not ok:
        rec["error"] = "no precision was scored: " + "; ".join(
            f"{p}: {v.get('missing') or v.get('error')}" for p, v in rec["scores"].items()
        )
    return rec, curves


# ------------------------------------------------------------------------------------------------------------
# Report


def _f(x, nd: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "NO"
    return f"{x:.{nd}f}" if isinstance(x, float) else str(x)


def format_markdown(r: dict) -> str:
    cfg = r["config"]
    lines = [
        "# Inspection anomaly benchmark (issue 15)",
        "",
        f"`edgeae train --task anomaly` defaults{' + ' + ' '.join(cfg['train_args']) if cfg['train_args'] else ''}"
        f", {'--minutes ' + format(cfg['minutes'], 'g') if cfg['minutes'] is not None else 'no --minutes'}, "
        f"seed {cfg['seed']}; scored at {', '.join(cfg['precisions'])}. AUROC of `score` from the events (test "
        "normals vs defectives); FA / det: normals / defectives `above_threshold` at the bundle's stored threshold.",
        "",
        "| set | train | normal / defect | AUROC | INT8 - FP32 | FA rate | det rate | threshold | best trivial "
        "| beats trivial | train s (steps) | MAC/px | img/s (runtime / command) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in r["sets"].items():
        c, t = s["counts"], s.get("training", {})
        head = s["scores"].get(s.get("headline_precision") or "", {}) if "scores" in s else {}
        trivial = f"{s['best_trivial']['stat']} {s['best_trivial']['auroc']:.3f}"
        auc = f"{_f(s.get('image_auroc'))} ({s['headline_precision']})" if s.get("headline_precision") else "-"
        lines.append(
            f"| {name} | {c['train']} | {c['test_normal']} / {c['test_defect']} | {auc} | "
            f"{_f(s.get('int8_minus_fp32'), 4)} | {_f(head.get('false_alarm_rate'))} | "
            f"{_f(head.get('detection_rate'))} | {_f(head.get('threshold'))} | {trivial} | "
            f"{_f(s.get('beats_trivial'))} | {_f(t.get('elapsed_s'), 0)} ({_f(t.get('steps'))}) | "
            f"{_f(t.get('macs_per_pixel'))} | {_f(head.get('images_per_s'), 1)} / "
            f"{_f(head.get('command_images_per_s'), 1)} |"
        )
    lines += ["", "Trivial statistics on the same split (max(auc, 1 - auc); auc: higher statistic = defective):", "",
              "| set | mean | std | size (h*w) |", "|---|---|---|---|"]  # fmt: skip
    for name, s in r["sets"].items():
        tv = s["trivial"]
        lines.append(f"| {name} | " + " | ".join(f"{tv[k]['two_sided']:.3f} (auc {tv[k]['auroc']:.3f})"
                                                 for k in TRIVIAL) + " |")  # fmt: skip
    extra = []
    for name, s in r["sets"].items():
        for p, m in s.get("scores", {}).items():
            for g, v in {**m.get("per_defect_type", {}), **m.get("extra", {})}.items():
                if "n" in v:
                    extra.append(f"| {name} | {p} | {g} | {v['n']} | {v['image_auroc']:.3f} | "
                                 f"{_f(v.get('detection_rate'))} |")  # fmt: skip
    if extra:
        lines += ["", "Per defect type, and extra groups (ELPV probability 1/3, 2/3) against the test normals:", ""]
        lines += ["| set | precision | group | n | AUROC | det rate |", "|---|---|---|---|---|---|", *extra]
    notes = []
    for name, s in r["sets"].items():
        if s.get("error"):
            notes.append(f"- **{name}: {s['error']}**")
        if s.get("export", {}).get("error"):
            notes.append(f"- {name}: {s['export']['error']} (FP32 exported alone)")
        for p, m in s.get("scores", {}).items():
            if "missing" in m or "error" in m:
                notes.append(f"- {name} {p}: {m.get('missing') or m.get('error')}")
            elif m["events_frames"] != m["test_images"] or m["skipped"]:
                notes.append(f"- {name} {p}: {m['events_frames']} of {m['test_images']} test images scored "
                             f"({m['skipped']} skipped)")  # fmt: skip
    if notes:
        lines += ["", *notes]
    lines += ["", f"Commit {r['context'].get('git_commit')}, {r['context']['cpu'].get('logical_cores')} logical "
                  f"cores; benchmark run time {r['seconds']:.0f} s."]  # fmt: skip
    return "\n".join(lines) + "\n"


def plot(r: dict, curves: dict, path: Path) -> None:
    """ROC curves per set: each precision, the best trivial statistic (dotted) and chance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(r["sets"])
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 4.2), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        s, cv = r["sets"][name], curves.get(name, {})
        for p in PRECISIONS:
            if p in cv:
                fpr, tpr = cv[p]
                auc = s["scores"][p]["image_auroc"]
                ax.plot(fpr, tpr, "-" if p == "fp32" else "--", label=f"{p} AUROC {auc:.3f}")
        if "trivial" in cv:
            stat, (fpr, tpr) = cv["trivial"]
            ax.plot(fpr, tpr, ":", color="gray", label=f"trivial: {stat} {s['best_trivial']['auroc']:.3f}")
        ax.plot([0, 1], [0, 1], color="lightgray", lw=0.8)
        ax.set(title=f"{name} ({s['counts']['test_normal']} normal / {s['counts']['test_defect']} defect)",
               xlabel="false-alarm rate", ylabel="detection rate", xlim=(0, 1), ylim=(0, 1.01))  # fmt: skip
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _write(path: Path, data: str | bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data if isinstance(data, bytes) else data.encode())
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------------------
# CLI


def plan(args: argparse.Namespace) -> tuple[list[str], list[InspectSet], tuple[str, ...], Path, Path]:
    """Check every option and input before anything is written: (ELPV types, folder sets, precisions, out, work).
    Raises :class:`UsageError` (one line)."""
    kinds = [k for k in (args.sets if args.sets is not None else ("" if args.folder else "mono,poly")).split(",")
             if k.strip()]  # fmt: skip
    kinds = [k.strip() for k in kinds]
    bad = [k for k in kinds if k not in ELPV_TYPES]
    if bad:
        raise UsageError(f"--sets: unknown set {bad[0]!r} (ELPV sets: {', '.join(ELPV_TYPES)}; use --folder ROOT)")
    folders = [folder_set(f) for f in args.folder or []]
    names = kinds + [f.name for f in folders]
    if len(set(names)) != len(names):
        raise UsageError(f"two sets share a name ({', '.join(names)}): rename a --folder")
    if not names:
        raise UsageError("nothing to run: pass --sets and/or --folder")
    precisions = tuple(p.strip() for p in args.precision.split(",") if p.strip())
    if not precisions or any(p not in PRECISIONS for p in precisions) or len(set(precisions)) != len(precisions):
        raise UsageError(f"--precision: a comma-separated list of {', '.join(PRECISIONS)}, got {args.precision!r}")
    if args.minutes is not None and args.minutes <= 0:
        raise UsageError("--minutes must be > 0")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out}: --out must be a folder")
    work = Path(args.work) if args.work else out / "work"
    if work.exists() and (not work.is_dir() or any(work.iterdir())):
        raise UsageError(f"{work}: the work folder exists and is not empty (remove it, or pass another --work)")
    if kinds:
        try:
            import elpv_dataset.utils  # noqa: F401 - only checks it is installed, before anything is written
        except ImportError as exc:
            raise UsageError("the ELPV sets need elpv-dataset (pip install '.[bench]'), or pass --folder") from exc
    return kinds, folders, precisions, out.resolve(), work.resolve()


def run(args: argparse.Namespace) -> dict:
    t0 = time.perf_counter()
    kinds, folders, precisions, out, work = plan(args)
    for d in (out / "logs", out / "events", work):
        d.mkdir(parents=True, exist_ok=True)
    flow = Flow(work=work, logs=out / "logs", events=out / "events", seed=args.seed, minutes=args.minutes,
                precisions=precisions, train_args=tuple(shlex.split(args.train_args)),
                score_args=tuple(shlex.split(args.score_args)), commands=[],
                no_progress=has_option(cli_help("train"), "--no-progress"))  # fmt: skip
    sets = list(folders)
    if kinds:
        images, probs, types = load_elpv()
        sets = [write_elpv_set(work, k, images, probs, types) for k in kinds] + sets
        del images
    result: dict = {
        "benchmark": "inspect_bench (issue 15)",
        "config": {
            "sets": [s.name for s in sets],
            "minutes": args.minutes,
            "seed": args.seed,
            "precisions": list(precisions),
            "train_args": list(flow.train_args),
            "score_args": list(flow.score_args),
            "elpv_split_seed": ELPV_SPLIT_SEED,
            "train_fraction": TRAIN_FRACTION,
            "beats_margin": BEATS_MARGIN,
        },  # fmt: skip
        "context": stamp(),
        "sets": {},
        "commands": flow.commands,
    }
    curves = {}
    for s in sets:
        print(f"{s.name}: {s.source}", flush=True)
        result["sets"][s.name], curves[s.name] = run_set(flow, s)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    _write(out / "inspect.json", json.dumps(result, indent=2) + "\n")
    _write(out / "inspect.md", format_markdown(result))
    plot(result, curves, out / "inspect.png")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.inspect_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder (inspect.json, inspect.md, inspect.png)")
    parser.add_argument(
        "--sets",
        default=None,
        help="ELPV sets, comma-separated: mono, poly (default: mono,poly unless --folder is given)",
    )
    parser.add_argument(
        "--folder",
        action="append",
        metavar="ROOT",
        help="an MVTec-style set: ROOT/train/good, ROOT/test/good, ROOT/test/<defect>/ (repeatable)",
    )
    parser.add_argument("--minutes", type=float, default=None, help="edgeae train --minutes (default: none given)")
    parser.add_argument("--seed", type=int, default=0, help="edgeae train --seed (the ELPV split is fixed)")
    parser.add_argument(
        "--precision",
        default="fp32,int8",
        help="precisions to score, comma-separated, first = headline (default fp32,int8)",
    )
    parser.add_argument("--train-args", default="", help='extra edgeae train arguments, e.g. "--steps 4000"')
    parser.add_argument("--score-args", default="", help='extra edgeae score arguments, e.g. "--threads 2"')
    parser.add_argument("--work", default=None, help="work folder (data, runs, bundles; default OUT/work)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args(argv)
    try:
        result = run(args)
    except UsageError as exc:
        print(f"inspect_bench: error: {exc}", file=sys.stderr)
        return 2
    print(format_markdown(result))
    print(f"wrote {Path(args.out) / 'inspect.json'}, inspect.md, inspect.png")
    return 3 if any(s.get("error") for s in result["sets"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
