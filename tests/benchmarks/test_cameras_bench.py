"""benchmarks/cameras_bench.py on tiny settings (two 64x48 cameras, two-second windows, 150 frames per camera for
memory): every configuration runs the real CLI, and the numbers in its JSON are recomputed here from the events
files and the samples they came from."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from benchmarks import cameras_bench as cb

MODEL = str(Path(__file__).resolve().parents[2] / "models" / "anomaly")


@pytest.mark.slow
def test_the_bench_on_tiny_settings_computes_its_fields(tmp_path):
    out = tmp_path / "bench"
    cb.main(["--out", str(out), "--model", MODEL, "--cameras", "2", "--size", "64x48", "--seconds", "2",
             "--warmup", "0.5", "--rounds", "1", "--mem-frames", "150", "--mem-every", "0.1"])  # fmt: skip
    result = json.loads((out / "cameras_bench.json").read_text())
    rounds = result["rounds"]
    assert sorted(r["config"] for r in rounds) == sorted(cb.CONFIGS)
    for r in rounds:
        assert "error" not in r, r
        t_a, t_b = r["window_wall"]
        counted: dict[str, int] = dict.fromkeys(r["frames"], 0)
        for i, path in enumerate(r["events"]):
            for line in Path(path).read_text().splitlines():
                e = json.loads(line)
                cam = e.get("camera", f"cam{i}")
                if e["type"] == "frame" and t_a <= e["wall"] < t_b:
                    counted[cam] += 1
        assert counted == r["frames"], r["config"]  # the window's frames, recounted from the events
        assert all(n > 0 for n in counted.values()), r  # every camera processed frames in the window
        assert r["fps"] == {c: round(n / 2.0, 3) for c, n in counted.items()}
        assert r["aggregate_fps"] == round(sum(counted.values()) / 2.0, 3)
        assert 0 < r["cpu_s"] and r["frames_per_cpu_s"] == round(sum(counted.values()) / r["cpu_s"], 3)
    assert len(rounds[0]["frames"]) == 2 and [r for r in rounds if r["config"] == "one_flat_out"][0][
        "frames"
    ].keys() == {"cam0"}
    auto = [r for r in rounds if r["config"] == "batch_auto"][0]
    assert auto["auto_choice"].startswith("edgeae: batch auto for ")  # the run waited for it before measuring
    summary = result["summary"]
    for kind, s in summary["configs"].items():
        mine = [r["aggregate_fps"] for r in rounds if r["config"] == kind]
        assert s["aggregate_fps"] == round(statistics.median(mine), 3)
        cpu = [r["frames_per_cpu_s"] for r in rounds if r["config"] == kind]
        assert s["frames_per_cpu_s"] == round(statistics.median(cpu), 3)
    for name, goal in summary["goals"].items():
        kind, ref = name.split("_vs_")
        ratio = summary["configs"][kind]["aggregate_fps"] / summary["configs"][ref]["aggregate_fps"]
        assert goal["ratio"] == round(ratio, 3) and goal["met"] == (ratio >= goal["goal"])
    assert {"batch_on_vs_separate", "batch_auto_vs_one_flat_out"} <= set(summary["goals"])

    mem = result["memory"]
    assert mem["exit_code"] == 0 and mem["frames_processed"] == 2 * 150  # files: every frame of every camera
    samples = mem["samples"]
    frames = [s["frames"] for s in samples]
    assert frames == sorted(frames) and samples
    after = [s for s in samples if s["frames"] >= 0.05 * 300]
    assert mem["rss_at_5pct_mb"] == after[0]["rss_mb"]
    assert mem["rss_growth_mb"] == round(max(s["rss_mb"] for s in after) - after[0]["rss_mb"], 2)
    assert mem["rss_goal_met"] == (mem["rss_growth_mb"] <= cb.GOAL_RSS_MB)
    assert (out / "rss.png").stat().st_size > 1000
    md = (out / "cameras_bench.md").read_text()
    for kind in cb.CONFIGS:
        assert f"| {kind} | {summary['configs'][kind]['aggregate_fps']:.2f}" in md


def test_rss_growth_is_measured_from_the_first_sample_past_five_percent():
    samples = [{"frames": 0, "rss_mb": 50.0, "threads": 4}, {"frames": 4, "rss_mb": 90.0, "threads": 9},
               {"frames": 5, "rss_mb": 100.0, "threads": 9}, {"frames": 60, "rss_mb": 131.0, "threads": 9},
               {"frames": 100, "rss_mb": 120.0, "threads": 9}]  # fmt: skip
    got = cb.rss_growth(samples, 100)
    assert (got["rss_at_5pct_mb"], got["rss_max_after_mb"], got["rss_growth_mb"]) == (100.0, 131.0, 31.0)
    assert got["rss_goal_met"] is False and got["rss_final_mb"] == 120.0
