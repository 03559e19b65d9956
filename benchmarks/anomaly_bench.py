"""Synthetic-defect benchmark for anomaly models on a fixed camera: image and pixel AUROC, with and without
per-location calibration.

For each scene (default: scikit-image's textures grass, brick, gravel and the photos coffee and chelsea) a
simulated fixed camera produces NORMAL frames: the scene shifted by up to 4 px, brightness and contrast within
15 %, a random gamma, a linear illumination gradient, mild blur and sensor noise (sigma 2-5), so the normal set
varies like a real camera's. The model is calibrated on ``n_calib`` normal frames (numpy only, exactly as
``edgeae calibrate`` does it, but in memory) and tested on ``n_test`` other frames, half normal and half with
one defect each of the four kinds of :func:`training.defects.paste_defect` (cut-paste donors come from another
scene). Defects are pasted into the scene before the camera's photometric changes and noise, as a real defect
would be. Image AUROC ranks the frame scores; pixel AUROC ranks every pixel of every test frame (normal frames
all negative) against the defect masks.

``python -m benchmarks.anomaly_bench --model models/anomaly``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from edge_runtime.anomaly import AnomalyScorer
from edge_runtime.calibration import fit_calibration
from edge_runtime.errors import UsageError
from training.defects import DEFECT_KINDS, paste_defect
from training.metrics import auroc

DEFAULT_SCENES = ("grass", "brick", "gravel", "coffee", "chelsea")
SHIFT_PX = 4.0
MARGIN = 8  # pixels of scene kept around the frame so shifts never show a border


def default_scenes() -> dict[str, np.ndarray]:
    """scikit-image's bundled textures and photos as (H, W, 3) uint8 BGR (gray ones with three equal channels)."""
    try:
        from skimage import data
    except ImportError as exc:  # pragma: no cover - skimage is in the bench and train extras
        raise UsageError("the anomaly benchmark needs scikit-image for its default scenes (pip install .[bench]), "
                         "or pass scenes=") from exc  # fmt: skip
    scenes = {}
    for name in DEFAULT_SCENES:
        img = getattr(data, name)()
        if img.ndim == 2:
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
        else:
            img = cv2.cvtColor(img[:, :, :3], cv2.COLOR_RGB2BGR)
        scenes[name] = np.ascontiguousarray(img)
    return scenes


def _as_bgr(img: np.ndarray) -> np.ndarray:
    if img.dtype != np.uint8:
        raise UsageError(f"scenes must be uint8 images, got {img.dtype}")
    if img.ndim == 2 or img.shape[2] == 1:
        return cv2.cvtColor(img.reshape(img.shape[:2]), cv2.COLOR_GRAY2BGR)
    return np.ascontiguousarray(img[:, :, :3])


def _cover(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize so the image covers (height, width) and centre-crop it."""
    h, w = img.shape[:2]
    scale = max(height / h, width / w)
    nh, nw = max(height, int(np.ceil(h * scale))), max(width, int(np.ceil(w * scale)))
    img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    y, x = (nh - height) // 2, (nw - width) // 2
    return np.ascontiguousarray(img[y : y + height, x : x + width])


class FixedCamera:
    """A camera watching one scene: ``frame(rng, kind=None, donor=None) -> (uint8 (H, W, 3) BGR, mask (H, W))``."""

    def __init__(self, scene: np.ndarray, size: tuple[int, int]):
        self.h, self.w = size
        self.base = _cover(_as_bgr(scene), self.h + 2 * MARGIN, self.w + 2 * MARGIN)

    def view(self, rng: np.random.Generator) -> np.ndarray:
        """The scene through the lens: a sub-pixel shift of up to SHIFT_PX in x and y."""
        dx, dy = rng.uniform(-SHIFT_PX, SHIFT_PX, 2)
        m = np.float32([[1, 0, -(MARGIN + dx)], [0, 1, -(MARGIN + dy)]])
        return cv2.warpAffine(self.base, m, (self.w, self.h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)

    def sensor(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Photometric changes of a real camera: gamma, contrast, brightness, illumination gradient, blur, noise."""
        f = img.astype(np.float32) / 255.0
        f = np.power(f, rng.uniform(0.85, 1.18))
        mean = float(f.mean())
        f = mean + (f - mean) * rng.uniform(0.85, 1.15)
        f = f * rng.uniform(0.85, 1.15)
        angle = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0 : self.h, 0 : self.w].astype(np.float32)
        ramp = ((xx / max(1, self.w - 1)) - 0.5) * np.cos(angle) + ((yy / max(1, self.h - 1)) - 0.5) * np.sin(angle)
        f = f * (1.0 + rng.uniform(0.0, 0.2) * ramp)[:, :, None]
        sigma = rng.uniform(0.0, 1.0)
        if sigma > 0.3:
            f = cv2.GaussianBlur(f, (0, 0), sigma)
        f = f * 255.0 + rng.normal(0.0, rng.uniform(2.0, 5.0), f.shape)
        return np.clip(np.round(f), 0, 255).astype(np.uint8)

    def frame(self, rng: np.random.Generator, kind: str | None = None,
              donor: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        img = self.view(rng)
        mask = np.zeros((self.h, self.w), np.uint8)
        if kind is not None:
            img, mask = paste_defect(img, rng, kind, donor)
        return self.sensor(img, rng), mask


def _iou(a: Sequence[int], b: Sequence[int]) -> float:
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / max(1, a[2] * a[3] + b[2] * b[3] - inter)


def _evaluate(scores: np.ndarray, labels: np.ndarray, maps: list[np.ndarray], masks: list[np.ndarray]) -> dict:
    return {
        "image_auroc": auroc(scores, labels),
        "pixel_auroc": auroc(np.concatenate([m.ravel() for m in maps]), np.concatenate([m.ravel() for m in masks])),
    }


def bench_scene(scorer: AnomalyScorer, scene: np.ndarray, donor: np.ndarray, *, n_calib: int, n_test: int,
                seed: int, size: tuple[int, int]) -> dict:  # fmt: skip
    """Calibrate on one scene and test it; returns AUROCs with and without per-location statistics."""
    rng = np.random.default_rng(seed)
    cam = FixedCamera(scene, size)
    donor_img = _cover(_as_bgr(donor), *size)
    t0 = time.perf_counter()
    calib_frames = [cam.frame(rng)[0] for _ in range(n_calib)]
    calibration, stats, summary = fit_calibration(scorer, calib_frames, n=n_calib, per_location=True)
    t_calib = time.perf_counter() - t0
    local = scorer.with_calibration(calibration, stats)
    generic = scorer.with_calibration({}, None)

    n_bad = n_test // 2
    kinds: list[str | None] = [None] * (n_test - n_bad) + [DEFECT_KINDS[i % len(DEFECT_KINDS)] for i in range(n_bad)]
    rows = {"local": ([], []), "generic": ([], [])}
    masks, labels, box_iou = [], [], []
    for kind in kinds:
        img, mask = cam.frame(rng, kind, donor_img)
        for name, sc in (("local", local), ("generic", generic)):
            res = sc.score(img)  # "local" registers the frame to the calibration reference first
            rows[name][0].append(res.score)
            rows[name][1].append(res.map)
            if name == "local" and kind is not None and res.bbox is not None:
                box_iou.append(_iou(res.bbox, cv2.boundingRect(mask)))
        masks.append(mask)
        labels.append(kind is not None)
    labels_arr = np.array(labels)
    out: dict = {"calibration": {k: summary[k] for k in ("threshold", "norm_mean", "norm_std")}}
    for name, (scores, maps) in rows.items():
        scores_arr = np.array(scores)
        res = _evaluate(scores_arr, labels_arr, maps, masks)
        per_kind = {}
        for k in DEFECT_KINDS:
            sel = np.array([kd in (None, k) for kd in kinds])
            per_kind[k] = auroc(scores_arr[sel], labels_arr[sel])
        res["per_kind_image_auroc"] = per_kind
        if name == "local":
            normal = scores_arr[~labels_arr]
            res["false_alarms"] = int((normal > calibration["threshold"]).sum())
            res["detected"] = int((scores_arr[labels_arr] > calibration["threshold"]).sum())
            # bbox vs the bounding box of the defect mask, over the detected defects (two scratches make one mask
            # box but two regions, of which the bbox shows the larger)
            res["bbox_iou_median"] = float(np.median(box_iou)) if box_iou else 0.0
        out[name] = res
    out["calibrate_s"] = round(t_calib, 2)
    return out


def anomaly_benchmark(model, *, scenes: Sequence[np.ndarray] | dict[str, np.ndarray] | None = None, n_calib: int = 40,
                      n_test: int = 40, seed: int = 0, size: tuple[int, int] = (256, 256), precision: str = "fp32",
                      device: str = "cpu", threads: int | None = None) -> dict:  # fmt: skip
    """Image and pixel AUROC per scene and their mean, with per-location calibration ("local") and with the
    graph's generic SSIM score alone ("generic"). ``scenes``: arrays (any size, uint8 BGR or gray) or a dict of
    them by name; default :func:`default_scenes`. ``size``: (H, W) of the camera frames.
    """
    if n_calib < 10 or n_test < 8:
        raise UsageError("the anomaly benchmark needs n_calib >= 10 and n_test >= 8")
    if scenes is None:
        named = default_scenes()
    elif isinstance(scenes, dict):
        named = dict(scenes)
    else:
        named = {f"scene{i}": s for i, s in enumerate(scenes)}
    if len(named) < 1:
        raise UsageError("the anomaly benchmark needs at least one scene")
    scorer = AnomalyScorer(model, precision=precision, device=device, threads=threads)
    names = list(named)
    t0 = time.perf_counter()
    results = {}
    for i, name in enumerate(names):
        donor = named[names[(i + 1) % len(names)]] if len(names) > 1 else np.flipud(named[name])
        results[name] = bench_scene(scorer, named[name], donor, n_calib=n_calib, n_test=n_test,
                                    seed=seed + 1000 * i, size=tuple(size))  # fmt: skip
    mean = {
        mode: {m: float(np.mean([results[s][mode][m] for s in names])) for m in ("image_auroc", "pixel_auroc")}
        for mode in ("local", "generic")
    }
    graph = scorer.graph
    return {
        "task": "anomaly",
        "scenes": results,
        "mean": mean,
        "config": {"n_calib": n_calib, "n_test": n_test, "seed": seed, "size": list(size), "precision": precision},
        "context": {
            "model": str(model),
            "model_sha256": scorer.model_sha256,
            "providers": list(graph.providers),
            "threads": graph.session.get_session_options().intra_op_num_threads,
            "python": platform.python_version(),
            "numpy": np.__version__,
            "opencv": cv2.__version__,
            "machine": platform.machine(),
            "seconds": round(time.perf_counter() - t0, 1),
        },
    }


def format_table(result: dict) -> str:
    lines = [
        f"{'scene':<10} {'image AUROC':>12} {'pixel AUROC':>12} {'image (generic)':>16} {'pixel (generic)':>16}"
        f"  {'FA':>3} {'det':>4} {'bbox':>5}  per-kind image AUROC (local)",
    ]
    for name, r in result["scenes"].items():
        kinds = " ".join(f"{k}={v:.2f}" for k, v in r["local"]["per_kind_image_auroc"].items())
        loc = r["local"]
        lines.append(
            f"{name:<10} {r['local']['image_auroc']:>12.3f} {r['local']['pixel_auroc']:>12.3f} "
            f"{r['generic']['image_auroc']:>16.3f} {r['generic']['pixel_auroc']:>16.3f}"
            f"  {loc['false_alarms']:>3} {loc['detected']:>4} {loc['bbox_iou_median']:>5.2f}  {kinds}"
        )
    m = result["mean"]
    lines.append(
        f"{'mean':<10} {m['local']['image_auroc']:>12.3f} {m['local']['pixel_auroc']:>12.3f} "
        f"{m['generic']['image_auroc']:>16.3f} {m['generic']['pixel_auroc']:>16.3f}"
    )
    cfg = result["config"]
    lines.append(
        f"(local = per-location calibration on {cfg['n_calib']} normal frames; generic = the graph's SSIM score; "
        f"{cfg['n_test']} test frames per scene, half defective; FA = normal test frames above the threshold, "
        f"det = defective ones above it, bbox = median IoU of the bbox with the defect's box)"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.anomaly_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/anomaly", help="anomaly bundle directory")
    parser.add_argument("--n-calib", type=int, default=40)
    parser.add_argument("--n-test", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, nargs=2, default=(256, 256), metavar=("H", "W"))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "int8"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None, help="also write the full result as JSON here")
    args = parser.parse_args(argv)
    if not os.path.exists(args.model):
        print(f"{args.model}: no such model bundle", file=sys.stderr)
        return 2
    result = anomaly_benchmark(args.model, n_calib=args.n_calib, n_test=args.n_test, seed=args.seed,
                               size=tuple(args.size), threads=args.threads, precision=args.precision,
                               device=args.device)  # fmt: skip
    print(format_table(result))
    print(json.dumps(result["context"]))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
