"""PSNR against noise level: the blind denoisers, fastNlMeans and (C)BM3D given the true σ (issue 19).

For each image set and each σ (default 0, 5, 10, 15, 25, 35, 50), on the same noisy images
(:func:`benchmarks.quality.noisy_image`: white Gaussian, rounded and clipped to uint8, seeded per image and σ,
so the noise equals the noise ``edgeae bench --quality`` uses):

* ours: the denoising bundle for the set's channels (one model for every σ: it is never told σ), at every
  precision the bundle has;
* fastNlMeans with ``h`` from σ (:func:`benchmarks.baselines.nlm_h`, as the bench sets it);
* BM3D (gray) or CBM3D (colour, ``bm3d.bm3d_rgb``) given the true σ, on the first ``bm3d_images`` images of
  each set only (CBM3D takes about a minute per 768x512 image on 2 cores); ours and fastNlMeans are also
  averaged over exactly those images, so that comparison is paired.

Per-image PSNR and SSIM of every method are in the JSON; the PNG plots mean PSNR against σ, one panel per set.
The fast methods run first for every set and σ, (C)BM3D after, σ=25 first; the JSON is rewritten after each
step, so an interrupted run keeps what it measured. Usage::

    python -m benchmarks.denoise_sweep --data ../shared/data --out DIR [--bm3d-images 4]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import baselines as bl
from benchmarks.data import load_set, repo_root
from benchmarks.machine import stamp
from benchmarks.quality import noisy_image

SIGMAS = (0.0, 5.0, 10.0, 15.0, 25.0, 35.0, 50.0)
# set name -> bundle folder under models/. LIVE1 is last: the committed colour model trained on it (models/README).
SETS = {"bsd68_gray": "denoise-gray", "set14": "denoise-color", "live1_color": "denoise-color"}
HELD_OUT = {"bsd68_gray": True, "set14": True, "live1_color": False}


def _scores(clean: np.ndarray, out: np.ndarray) -> dict[str, float | None]:
    """PSNR (None where the output is exact: the noisy input at σ=0) and SSIM of one image."""
    p = bl.psnr(clean, out)
    return {"psnr": round(p, 4) if math.isfinite(p) else None, "ssim": round(bl.ssim(clean, out), 5)}


def _mean(per_image: list[dict[str, float | None]], k: int | None = None) -> dict[str, float | None]:
    sel = per_image if k is None else per_image[:k]
    vals = {m: [r[m] for r in sel] for m in ("psnr", "ssim")}
    return {m: None if None in v else float(np.mean(v)) for m, v in vals.items()}


def sweep(
    sets: dict[str, list[tuple[str, np.ndarray]]],
    methods: dict[str, dict[str, Callable[[np.ndarray, float], np.ndarray]]],
    reference: dict[str, Callable[[np.ndarray, float], np.ndarray]],
    *,
    sigmas: Sequence[float] = SIGMAS,
    ref_images: int = 4,
    seed: int = 0,
    save: Callable[[dict[str, Any]], None] = lambda _: None,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Per-image PSNR/SSIM of every method on every set at every σ.

    sets: ``{set: [(stem, uint8 image)]}``; methods: ``{set: {method: fn(noisy, sigma) -> denoised}}`` run on
    every image; reference: ``{set: fn}`` (the costly (C)BM3D) run on the first ``ref_images`` images only.
    Returns ``{"sets": {set: {"images": [stems], "sigma": {"25": {"noisy": [...], method: [...]}}}}}`` where
    each list holds ``{"psnr", "ssim"}`` per image in set order, plus ``"summary"`` rows (see :func:`summary`).
    """
    res: dict[str, Any] = {"sigmas": list(sigmas), "ref_images": ref_images, "sets": {}}
    for name, items in sets.items():
        res["sets"][name] = {"images": [s for s, _ in items], "sigma": {}}
        for sigma in sigmas:
            cell: dict[str, Any] = {}
            noisy = [noisy_image(im, sigma, i, seed) for i, (_, im) in enumerate(items)]
            cell["noisy"] = [_scores(im, nz) for (_, im), nz in zip(items, noisy, strict=True)]
            for method, fn in methods[name].items():
                progress(f"sweep: {method} on {name} sigma={sigma:g}")
                cell[method] = [_scores(im, fn(nz, sigma)) for (_, im), nz in zip(items, noisy, strict=True)]
            res["sets"][name]["sigma"][f"{sigma:g}"] = cell
        res["summary"] = summary(res)
        save(res)
    # The reference last, σ=25 first (the operating point), so a cut-short run still has it.
    order = sorted(sigmas, key=lambda s: (s != 25.0, s))
    for sigma in order:
        for name, items in sets.items():
            k = min(ref_images, len(items))
            if name not in reference or k == 0:
                continue
            progress(f"sweep: reference on {k} {name} images sigma={sigma:g}")
            fn = reference[name]
            got = []
            for i, (_, im) in enumerate(items[:k]):
                got.append(_scores(im, fn(noisy_image(im, sigma, i, seed), sigma)))
            res["sets"][name]["sigma"][f"{sigma:g}"]["reference"] = got
            res["summary"] = summary(res)
            save(res)
    return res


def summary(res: dict[str, Any]) -> list[dict[str, Any]]:
    """Mean rows ``{set, sigma, method, images, psnr, ssim}``: each method over all images, and (method
    ``"<name> (ref images)"``) over the reference's images, for the paired comparison."""
    rows = []
    for name, s in res["sets"].items():
        for sig, cell in s["sigma"].items():
            k = len(cell.get("reference", []))
            for method, per in cell.items():
                rows.append({"set": name, "sigma": float(sig), "method": method, "images": len(per), **_mean(per)})
                if k and method != "reference" and len(per) > k:
                    rows.append({"set": name, "sigma": float(sig), "method": f"{method} (ref images)", "images": k,
                                 **_mean(per, k)})  # fmt: skip
    return rows


def plot(res: dict[str, Any], path: Path, labels: dict[str, str]) -> None:
    """Mean PSNR against σ, one panel per set, one colour per method: over all images (solid) and, for our FP32
    model and fastNlMeans, over the reference's images (dashed, beside the reference). The noisy input is the
    thin gray line; its σ=0 point (infinite PSNR) and the reference's (exact) are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"ours fp32": "C0", "ours int8": "C2", "fastNlMeans": "C1", "reference": "C3", "noisy": "0.6"}
    subset = ("ours fp32 (ref images)", "fastNlMeans (ref images)")
    names = list(res["sets"])
    fig, axes = plt.subplots(1, len(names), figsize=(5.2 * len(names), 4.4), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        rows = [r for r in res["summary"] if r["set"] == name and r["psnr"] is not None]
        for m in [m for m in dict.fromkeys(r["method"] for r in rows) if "(" not in m or m in subset]:
            pts = sorted((r["sigma"], r["psnr"], r["images"]) for r in rows if r["method"] == m)
            base = m.replace(" (ref images)", "")
            dashed = m in subset or m == "reference"
            label = labels.get(base, base) + (f", first {pts[0][2]} images" if dashed else "")
            style = {"lw": 0.8} if m == "noisy" else {"marker": "o", "ms": 3}
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "--" if dashed else "-", color=colours.get(base),
                    label=label, **style)  # fmt: skip
        held = "held out" if HELD_OUT.get(name, True) else "NOT held out for the colour model"
        ax.set_title(f"{name} ({len(res['sets'][name]['images'])} images, {held})", fontsize=9)
        ax.set_xlabel("noise sigma (0..255, clipped uint8)")
        ax.set_ylabel("mean PSNR (dB)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _bundle_methods(
    bundle: Path, threads: int, precisions: Sequence[str]
) -> dict[str, Callable[[np.ndarray, float], np.ndarray]]:
    from edge_runtime.denoise import Denoiser
    from edge_runtime.model import load_bundle

    out = {}
    for p in [p for p in load_bundle(bundle).precisions("denoise") if p in precisions]:
        den = Denoiser(bundle, p, "cpu", threads)
        out[f"ours {p}"] = lambda nz, _s, den=den: den.denoise(nz).reshape(nz.shape)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, type=Path, help="the public test sets (../shared/data)")
    ap.add_argument("--out", required=True, type=Path, help="output folder: denoise_sweep.json and .png")
    ap.add_argument("--models", type=Path, default=repo_root() / "models")
    ap.add_argument("--sets", default=",".join(SETS), help=f"comma-separated, of {', '.join(SETS)}")
    ap.add_argument("--sigmas", default=",".join(f"{s:g}" for s in SIGMAS))
    ap.add_argument("--bm3d-images", type=int, default=4, help="(C)BM3D on the first N images of each set")
    ap.add_argument("--max-images", type=int, default=0, help="use only the first N images of each set (0: all)")
    ap.add_argument("--precisions", default="fp32,int8", help="our precisions, where the bundle has them")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime threads for our models")
    a = ap.parse_args(argv)
    names = [n for n in a.sets.split(",") if n]
    sets = {n: load_set(n, a.data) for n in names}
    if a.max_images:
        sets = {n: v[: a.max_images] for n, v in sets.items()}
    methods, labels = {}, {}
    bundles: dict[str, dict] = {}
    for n in names:
        bundle = a.models / SETS[n]
        methods[n] = {**_bundle_methods(bundle, a.threads, a.precisions.split(",")), "fastNlMeans": bl.opencv_denoise}
        bundles[n] = {"bundle": str(bundle), "sha256_manifest": _sha(bundle / "manifest.json")}
    for p in ("fp32", "fp16", "int8"):
        labels[f"ours {p}"] = f"edgeae {p} (blind)"
    labels["fastNlMeans"] = "fastNlMeans (h from sigma)"
    labels["reference"] = "(C)BM3D (true sigma)"
    reference = {n: bl.bm3d_denoise for n in names}
    a.out.mkdir(parents=True, exist_ok=True)
    head = {
        "context": stamp(a.threads),
        "command": "python -m benchmarks.denoise_sweep " + " ".join(argv if argv is not None else sys.argv[1:]),
        "noise": "white Gaussian, rounded and clipped to uint8; image i at sigma s seeded [0, 1000 s, i]",
        "methods": {
            "ours <precision>": "the set's denoising bundle, blind (one model for every sigma)",
            "fastNlMeans": "OpenCV fastNlMeansDenoising(Colored), h = benchmarks.baselines.nlm_h(sigma)",
            "reference": "BM3D (gray) / CBM3D bm3d.bm3d_rgb (colour) given the true sigma, first bm3d_images images",
        },
        "bundles": bundles,
        "held_out": {n: HELD_OUT[n] for n in names},
    }

    def save(res: dict[str, Any]) -> None:
        tmp = a.out / "denoise_sweep.json.tmp"
        tmp.write_text(json.dumps({**head, **res}, indent=1, allow_nan=False) + "\n")
        tmp.replace(a.out / "denoise_sweep.json")

    res = sweep(
        sets,
        methods,
        reference,
        sigmas=[float(s) for s in a.sigmas.split(",")],
        ref_images=a.bm3d_images,
        save=save,
        progress=lambda m: print(m, flush=True),
    )
    plot(res, a.out / "denoise_sweep.png", labels)
    print(format_summary(res))


def format_summary(res: dict[str, Any]) -> str:
    """A markdown table per set: mean PSNR / SSIM of each method (rows) at each σ (columns)."""
    out = []
    for name in res["sets"]:
        rows = [r for r in res["summary"] if r["set"] == name]
        sigmas = sorted({r["sigma"] for r in rows})
        methods = list(dict.fromkeys(r["method"] for r in rows))
        out.append(f"\n{name}: mean PSNR dB / SSIM (images)\n")
        out.append("| method | " + " | ".join(f"σ={s:g}" for s in sigmas) + " |")
        out.append("|---" * (len(sigmas) + 1) + "|")
        for m in methods:
            cells = []
            for s in sigmas:
                r = next((r for r in rows if r["method"] == m and r["sigma"] == s), None)
                if r is None:
                    cells.append("")
                else:  # PSNR None: the output is the clean image exactly (the noisy input at σ=0)
                    ps = "exact" if r["psnr"] is None else f"{r['psnr']:.2f}"
                    cells.append(f"{ps} / {r['ssim']:.3f} ({r['images']})")
            out.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def _sha(path: Path) -> str | None:
    import hashlib

    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


if __name__ == "__main__":
    main()
