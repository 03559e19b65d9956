"""Resident memory of `edgeae run` over a long file run: flat after warm-up?

    python -m benchmarks.memory --model models/denoise-gray --frames 10000 --size 320x240

Writes a short video, loops it as one long lossless file, runs the live loop on it and samples the process's
resident set size (from /proc/self/statm) after frame 500 and after the last frame. The goal (issue 5): within
20 MB. Every --switch frames the resolution changes, as when a camera is reconfigured.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import cv2
import numpy as np

from edge_runtime.commands import RunOptions, run_pipeline


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def make_video(path: Path, frames: int, size: tuple[int, int], switch: int) -> None:
    rng = np.random.default_rng(0)
    base = cv2.resize(rng.integers(0, 256, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8), size)
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, size)
    for i in range(frames):
        f = np.roll(base, i % size[0], axis=1)
        if switch and (i // switch) % 2:  # a reconfigured camera: other content and a smaller field, same file size
            f = cv2.resize(cv2.resize(f, (size[0] // 2, size[1] // 2)), size, interpolation=cv2.INTER_NEAREST)
        w.write(f)
    w.release()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--frames", type=int, default=10000)
    ap.add_argument("--size", default="320x240")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--switch", type=int, default=0, help="change content every N frames (0: never)")
    args = ap.parse_args(argv)
    size = tuple(int(v) for v in args.size.split("x"))
    samples: dict[int, float] = {}

    def on_frame(n: int) -> None:
        if n in (1, 500, args.frames) or n % 1000 == 0:
            samples[n] = rss_mb()

    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "long.avi"
        make_video(video, args.frames, size, args.switch)
        stats = run_pipeline(RunOptions(model=args.model, source=str(video), precision=args.precision,
                                        threads=args.threads, annotate=False), on_frame=on_frame)  # fmt: skip
    growth = samples[max(samples)] - samples[500]
    result = {"frames": stats["frames_processed"], "size": args.size, "rss_mb": samples,
              "growth_after_500_mb": round(growth, 2), "goal_mb": 20, "met": growth <= 20,
              "fps": stats["fps"]}  # fmt: skip
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
