"""`edgeae demo`: every task on a synthetic camera video, with the default models, in a couple of minutes.

The video is made from scikit-image's bundled photographs (no network, no camera): a camera panning and
zooming over a photograph, with sensor-like noise. The default bundles under models/ denoise it, compress and
decode it, and - after an on-device calibration on a fixed-camera clip - score pasted defects as anomalies.
Outputs go to demo-out/: videos, images, events and summary.json; the terminal gets a latency table.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import click
import cv2
import numpy as np

from edge_runtime.errors import BadDataError
from edge_runtime.io import atomic_write_text
from edge_runtime.outputs import VideoSink, write_image

SIZE = (640, 480)


def _photos() -> list[np.ndarray]:
    try:
        import skimage.data as skd
    except ImportError as exc:
        raise BadDataError("edgeae demo needs scikit-image for its photographs: install edgeae[bench]") from exc
    return [cv2.cvtColor(getattr(skd, n)(), cv2.COLOR_RGB2BGR) for n in ("astronaut", "coffee", "chelsea", "rocket")]


def camera_clip(photo: np.ndarray, frames: int, rng: np.random.Generator, size=SIZE, move: bool = True,
                noise_sigma: float = 0.0) -> list[np.ndarray]:  # fmt: skip
    """A camera over ``photo``: a slow pan and zoom (or a fixed view with small jitter), sensor noise, uint8 BGR."""
    w, h = size
    ph, pw = photo.shape[:2]
    out = []
    for i in range(frames):
        t = i / max(1, frames - 1)
        if move:
            zoom = 1.0 + 0.35 * np.sin(np.pi * t)
            cx, cy = pw * (0.35 + 0.3 * t), ph * (0.5 + 0.1 * np.sin(2 * np.pi * t))
        else:
            zoom, cx, cy = 1.0, pw / 2 + rng.normal(0, 1.0), ph / 2 + rng.normal(0, 1.0)
        scale = max(w / pw, h / ph) * zoom
        m = np.array([[scale, 0, w / 2 - scale * cx], [0, scale, h / 2 - scale * cy]], np.float32)
        frame = cv2.warpAffine(photo, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
        if noise_sigma > 0:
            frame = np.clip(np.round(frame + rng.normal(0, noise_sigma, frame.shape)), 0, 255).astype(np.uint8)
        out.append(frame)
    return out


def _write_video(path: Path, frames: list[np.ndarray], fps: float = 25.0) -> None:
    sink = VideoSink(path, fps)
    try:
        for f in frames:
            sink.write(f)
    except BaseException:
        sink.abort()
        raise
    sink.close()


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _read_video(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    cap.release()
    return frames


def run_demo(
    out: Path,
    models: Path,
    frames: int = 48,
    precision: str = "int8",
    threads: int | None = None,
    size: tuple[int, int] = SIZE,
) -> dict:
    from edge_runtime.model import load_bundle

    rng = np.random.default_rng(0)
    out.mkdir(parents=True, exist_ok=True)
    photos = _photos()
    clean = camera_clip(photos[0], frames, rng, size=size)
    noisy = [np.clip(np.round(f + rng.normal(0, 15, f.shape)), 0, 255).astype(np.uint8) for f in clean]
    src = out / "input.mkv"  # lossless, so the noise the model sees is the noise we added
    _write_video(src, noisy)
    summary: dict = {"frames": frames, "size": list(size), "precision": precision, "tasks": {}}
    rows = []

    def prec(bundle_dir: Path, graph: str) -> str:
        return precision if precision in load_bundle(bundle_dir).precisions(graph) else "fp32"

    # Denoising: the video through edge_runtime, then PSNR against the clean frames we made.
    den_model = models / "denoise-color"
    if (den_model / "manifest.json").is_file():
        from edge_runtime.commands import denoise_source

        p = prec(den_model, "denoise")
        st = denoise_source(den_model, src, out / "denoised.mkv", precision=p, threads=threads)
        den = _read_video(out / "denoised.mkv")
        gain = float(np.mean([_psnr(d, c) for d, c in zip(den, clean, strict=False)]) - np.mean(
            [_psnr(n, c) for n, c in zip(noisy, clean, strict=False)]))  # fmt: skip
        write_image(out / "denoise_compare.png", np.hstack([noisy[frames // 2], den[frames // 2]]))
        summary["tasks"]["denoise"] = {"model": str(den_model), "precision": p, "psnr_gain_db": round(gain, 2),
                                       "fps": st["fps"], "stages": st["stages"]}  # fmt: skip
        rows.append(("denoise", p, st["stages"]))
    # Compression: the clean clip to one .eae stream and back.
    comp = sorted(models.glob("compress-q*"))
    if comp:
        from edge_runtime.commands import compress, decompress

        model = comp[len(comp) // 2]
        p = prec(model, "encoder")
        _write_video(out / "clean.mkv", clean)
        st = compress(model, out / "clean.mkv", out / "video.eae", precision=p, threads=threads, progress=False)
        st2 = decompress(out / "video.eae", out / "decoded.mkv", model=model, precision=prec(model, "decoder"),
                         threads=threads, progress=False)  # fmt: skip
        dec = _read_video(out / "decoded.mkv")
        bpp = 8 * (out / "video.eae").stat().st_size / (frames * size[0] * size[1])
        psnr = float(np.mean([_psnr(d, c) for d, c in zip(dec, clean, strict=False)]))
        ok, jpg = cv2.imencode(".jpg", clean[0], [cv2.IMWRITE_JPEG_QUALITY, 50])
        jpeg_bpp = 8 * len(jpg) / (size[0] * size[1])
        summary["tasks"]["compress"] = {
            "model": str(model), "precision": p, "bpp": round(bpp, 4), "psnr_db": round(psnr, 2),
            "jpeg_q50_bpp_frame0": round(jpeg_bpp, 4), "encode": st.get("stages"), "decode": st2.get("stages"),
        }  # fmt: skip
        rows.append(("compress", p, st.get("stages") or {}))
        rows.append(("decompress", p, st2.get("stages") or {}))
    # Anomaly: calibrate a copy of the generic model on a fixed camera, then score frames with pasted defects.
    ano_model = models / "anomaly"
    if (ano_model / "manifest.json").is_file():
        from edge_runtime.calibration import calibrate
        from edge_runtime.commands import score_source
        from training.defects import paste_defect

        local = out / "anomaly-calibrated"
        if local.exists():
            shutil.rmtree(local)
        shutil.copytree(ano_model, local)
        scene = cv2.resize(photos[1], size)
        normal = camera_clip(scene, 40, rng, size=size, move=False, noise_sigma=3)
        p = prec(local, "anomaly")
        calibrate(local, iter(normal), n=len(normal), precision=p, threads=threads)
        test = camera_clip(scene, 24, rng, size=size, move=False, noise_sigma=3)
        labels = []
        for i in range(len(test)):
            if i % 2:
                test[i], _ = paste_defect(test[i], rng, ("scratch", "blob", "stain", "cutpaste")[i // 2 % 4],
                                          donor=photos[2])  # fmt: skip
            labels.append(i % 2)
        _write_video(out / "anomaly_input.mkv", test)
        (out / "events.jsonl").unlink(missing_ok=True)  # an events file is a log that runs append to
        st = score_source(local, out / "anomaly_input.mkv", out / "anomaly_overlay.mkv",
                          events_path=out / "events.jsonl", precision=p, threads=threads, progress=False)  # fmt: skip
        events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines() if line.strip()]
        per_frame = {e["frame"]: e for e in events if "score" in e}
        scores = np.array([per_frame[i]["score"] for i in range(len(test))])
        from training.metrics import auroc

        summary["tasks"]["anomaly"] = {"model": str(local), "precision": p,
                                       "image_auroc": round(auroc(scores, np.array(labels)), 3),
                                       "stages": st.get("stages")}  # fmt: skip
        rows.append(("anomaly", p, st.get("stages") or {}))
    if not summary["tasks"]:
        raise BadDataError(f"{models}: no default model bundles found (expected denoise-color, compress-q*, anomaly)")
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=float) + "\n")
    return {"summary": summary, "rows": rows}


@click.command("demo")
@click.option("--out", type=click.Path(), default="demo-out", show_default=True, help="Output folder.")
@click.option("--models", type=click.Path(), default="models", show_default=True, help="Default model bundles.")
@click.option("--frames", type=click.IntRange(8, 2000), default=48, show_default=True, help="Frames per clip.")
@click.option("--precision", type=click.Choice(["fp32", "int8"]), default="int8", show_default=True,
              help="Graph precision to run where the bundle has it.")  # fmt: skip
@click.option("--threads", type=click.IntRange(1, 256), default=None, help="onnxruntime threads.")
def demo(out, models, frames, precision, threads):
    """Run every task on a synthetic camera video made from scikit-image's photographs.

    No network and no camera needed. Writes videos, images, events.jsonl and summary.json to OUT and prints
    per-stage latency.
    """
    t0 = time.perf_counter()
    res = run_demo(Path(out), Path(models), frames, precision, threads)
    click.echo(f"{'task':<11} {'prec':<5} {'stage':<12} {'n':>5} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}")
    for task, p, stages in res["rows"]:
        for name, st in stages.items():
            click.echo(f"{task:<11} {p:<5} {name:<12} {st['n']:>5} {st['p50_ms']:>8.2f} {st['p95_ms']:>8.2f} "
                       f"{st['p99_ms']:>8.2f}")  # fmt: skip
    s = res["summary"]["tasks"]
    if "denoise" in s:
        click.echo(f"denoise: +{s['denoise']['psnr_gain_db']:.2f} dB over the noisy input")
    if "compress" in s:
        c = s["compress"]
        click.echo(f"compress: {c['bpp']:.3f} bpp at {c['psnr_db']:.2f} dB")
    if "anomaly" in s:
        click.echo(f"anomaly: image AUROC {s['anomaly']['image_auroc']:.3f} after calibration on 40 normal frames")
    click.echo(f"outputs in {out}/ ({time.perf_counter() - t0:.0f} s)")
