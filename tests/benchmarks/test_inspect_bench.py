"""benchmarks/inspect_bench.py: the inspection CLI flow on a tiny synthetic MVTec-style folder, and its metrics.

No test needs ELPV, ../shared/data or models/: the folder is made here (textured normals, defectives with a
dark blob, so the defectives are darker: a confound the trivial statistics must show).
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from benchmarks import inspect_bench as ib
from benchmarks.street_bench import read_events

SIZES = ((128, 128), (128, 144), (144, 128))  # (h, w), cycled the same way in both classes
TRAIN_ARGS = "--steps 20 --crop 32 --batch 4 --val-every 10"


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    t = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 2.0)
    return np.clip(128 + 30 * t / t.std(), 0, 255).astype(np.uint8)


def make_folder(root, n_train: int = 24, n_good: int = 8, n_bad: int = 8, defects: bool = True):
    rng = np.random.default_rng(3)
    parts = {"train/good": n_train, "test/good": n_good, **({"test/blob": n_bad} if defects else {})}
    for part, n in parts.items():
        (root / part).mkdir(parents=True)
        for i in range(n):
            img = _texture(rng, *SIZES[i % len(SIZES)])
            if part == "test/blob":
                cv2.circle(img, (40 + 4 * i, 50), 14, 25, -1)
            assert cv2.imwrite(str(root / part / f"{i:03d}.png"), img)
    return root


@pytest.fixture(scope="module")
def flow(tmp_path_factory):
    """One run of the whole flow (train 20 steps, export with INT8, score both precisions) on a folder with one
    unreadable test image: (root, out, exit)."""
    base = tmp_path_factory.mktemp("inspect")
    root = make_folder(base / "syn")
    (root / "test" / "good" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    out = base / "out"
    rc = ib.main(["--folder", str(root), "--out", str(out), "--train-args", TRAIN_ARGS, "--precision", "fp32,int8",
                  "--keep"])  # fmt: skip
    return root, out, rc


def _pairwise_auc(neg, pos) -> float:
    """Mann-Whitney by hand: the fraction of (negative, positive) pairs ranked right, ties half."""
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for n in neg for p in pos)
    return wins / (len(neg) * len(pos))


def test_flow_writes_the_report_and_its_numbers_agree_with_the_events(flow):
    root, out, rc = flow
    assert rc == 0
    for name in ("inspect.json", "inspect.md", "inspect.png"):
        assert (out / name).stat().st_size > 0
    r = json.loads((out / "inspect.json").read_text())
    s = r["sets"]["syn"]
    assert s["error"] is None
    assert s["counts"] == {"train": 24, "test_normal": 8, "test_defect": 8, "defect_types": {"blob": 8},
                           "unreadable": [str(root / "test" / "good" / "broken.png")]}  # fmt: skip
    # train, export, score fp32, score int8 (3: the broken image, skipped; the others scored)
    assert [c["exit"] for c in r["commands"]] == [0, 0, 3, 3]
    assert r["commands"][0]["command"].startswith("edgeae train --task anomaly --data ")
    assert s["export"]["precisions"] == ["fp32", "int8"]
    for precision in ("fp32", "int8"):
        m = s["scores"][precision]
        _, frames, errors = read_events(out / "events" / f"syn.test.{precision}.jsonl")
        # the broken image: skipped by the runtime (an error event), counted, left out of every metric
        assert m["events_frames"] == len(frames) == 16 and m["test_images"] == 17 and m["skipped"] == 1
        assert m["error_events"] == len(errors)
        normal = [f for f in frames if f["name"].startswith("good/")]
        bad = [f for f in frames if f["name"].startswith("blob/")]
        assert len(normal) == m["normals"] == 8 and len(bad) == m["defectives"] == 8
        assert m["false_alarm_rate"] == pytest.approx(sum(f["above_threshold"] for f in normal) / len(normal))
        assert m["detection_rate"] == pytest.approx(sum(f["above_threshold"] for f in bad) / len(bad))
        auc = _pairwise_auc([f["score"] for f in normal], [f["score"] for f in bad])
        assert m["image_auroc"] == pytest.approx(auc, abs=1e-4)
        assert m["threshold"] == s["export"]["calibration"]["threshold"]
        assert m["images_per_s"] > 0 and m["command_images_per_s"] > 0
    assert s["headline_precision"] == "fp32" and s["image_auroc"] == s["scores"]["fp32"]["image_auroc"]
    assert s["int8_minus_fp32"] == pytest.approx(s["scores"]["int8"]["image_auroc"] - s["image_auroc"], abs=1e-4)
    assert s["beats_trivial"] == (s["image_auroc"] - s["best_trivial"]["auroc"] > ib.BEATS_MARGIN)
    run = out / "work" / "syn" / "run"
    assert s["training"]["steps"] == 20
    assert s["training"]["macs_per_pixel"] == json.loads((run / "config.json").read_text())["macs_per_pixel"]
    assert s["training"]["elapsed_s"] == json.loads((run / "summary.json").read_text())["elapsed_s"]
    md = (out / "inspect.md").read_text()
    assert "| syn | 24 | 8 / 8 |" in md and f"{s['image_auroc']:.3f} (fp32)" in md
    assert "syn fp32: 16 of 17 test images scored (1 skipped)" in md


def test_trivial_statistics_catch_the_darker_defects(flow):
    root, out, _ = flow
    s = json.loads((out / "inspect.json").read_text())["sets"]["syn"]
    means = {g: [float(cv2.imread(str(p), cv2.IMREAD_GRAYSCALE).mean()) for p in sorted((root / "test" / g).iterdir())
                 if p.name != "broken.png"]
             for g in ("good", "blob")}  # fmt: skip
    auc = _pairwise_auc(means["good"], means["blob"])
    assert auc < 0.1  # the defectives are darker...
    assert s["trivial"]["mean"]["auroc"] == pytest.approx(auc, abs=1e-4)
    assert s["trivial"]["mean"]["two_sided"] == pytest.approx(1 - auc, abs=1e-4) and 1 - auc > 0.9  # ...and caught
    assert s["trivial"]["size"] == {"auroc": 0.5, "two_sided": 0.5}  # same sizes in both classes
    best = max(v["two_sided"] for v in s["trivial"].values())
    assert s["best_trivial"]["auroc"] == best >= 0.9


def test_work_folder_is_removed_without_keep(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "syn", n_train=2, n_good=2, n_bad=2)
    out = tmp_path / "out"

    def fake_run_set(flow, s):  # the flow itself is covered above; here only what run() leaves behind
        (flow.work / s.name / "run").mkdir(parents=True)
        return {"counts": {}, "error": None}, {}

    monkeypatch.setattr(ib, "run_set", fake_run_set)
    monkeypatch.setattr(ib, "format_markdown", lambda r: "md\n")
    monkeypatch.setattr(ib, "plot", lambda r, c, p: p.write_bytes(b"png"))
    assert ib.main(["--folder", str(root), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["events", "inspect.json", "inspect.md", "inspect.png", "logs"]


def test_folder_without_defects_is_a_one_line_usage_error_and_writes_nothing(tmp_path, capsys):
    root = make_folder(tmp_path / "nodefects", n_train=4, n_good=2, defects=False)
    out = tmp_path / "out"
    assert ib.main(["--folder", str(root), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no test defects" in err and str(root / "test") in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--sets", "mono,glass"], "unknown set 'glass'"),
        (["--precision", "fp32,int4"], "--precision"),
        (["--sets", ""], "nothing to run"),
    ],
)
def test_bad_options_exit_2_before_writing(tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    assert ib.main([*argv, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_elpv_split_is_fixed_disjoint_and_per_type():
    rng = np.random.default_rng(1)
    probs = rng.choice([0.0, 1 / 3, 2 / 3, 1.0], size=400, p=[0.55, 0.15, 0.05, 0.25])
    types = rng.choice(["mono", "poly"], size=400)
    a, b = ib.elpv_split(probs, types, "mono"), ib.elpv_split(probs, types, "mono")
    assert all(np.array_equal(a[k], b[k]) for k in a)  # the same split every time
    normal = np.flatnonzero((types == "mono") & (probs == 0))
    assert sorted(np.r_[a["train"], a["good"]]) == list(normal)
    assert a["train"].size == round(0.6 * normal.size) and not set(a["train"]) & set(a["good"])
    assert list(a["train"]) != sorted(a["train"])  # permuted, not the first 60 % by index
    assert list(a["defect"]) == list(np.flatnonzero((types == "mono") & (probs == 1)))
    assert list(a["p1of3"]) == list(np.flatnonzero((types == "mono") & np.isclose(probs, 1 / 3)))
    assert not set(ib.elpv_split(probs, types, "poly")["train"]) & set(normal)


def test_roc_points_integrate_to_the_auroc():
    rng = np.random.default_rng(0)
    labels = rng.random(60) < 0.4
    scores = np.round(rng.normal(labels * 0.8, 1.0), 1)  # rounded: ties across classes
    fpr, tpr = ib.roc_points(scores, labels)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))  # trapezoids count ties half, as AUROC does
    assert area == pytest.approx(ib.auroc(scores, labels), abs=1e-12)
