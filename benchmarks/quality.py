"""Task quality of the bundles against classical methods, in the same run: denoising, compression, anomalies.

* Denoising: PSNR/SSIM at each noise level on BSD68 and Set12 (gray models) and Set14 (colour models), the
  noisy input clipped and rounded to uint8 (:func:`benchmarks.baselines.add_noise`); OpenCV fastNlMeans on the
  same noisy images, BM3D on the first ``bm3d_images`` BSD68 images and CBM3D (``bm3d.bm3d_rgb``, about 54 s
  per 768x512 image on 2 cores) on the first ``cbm3d_images`` Set14 images (the model and fastNlMeans are also
  scored on exactly those images, so the comparison is paired). Per-image PSNR and SSIM of every row are in
  the results. Without a data folder: scikit-image's photographs (no (C)BM3D).
* Compression: rate-distortion on Set14 (colour) with the real payload size of each frame record
  (:meth:`edge_runtime.codec.Encoder.encode`), PSNR and MS-SSIM over the three channels, against OpenCV JPEG and
  WebP quality sweeps; Bjøntegaard rate against both; encode/decode time at 640x480 against JPEG at the quality
  whose PSNR on that frame first reaches the codec's.
* Anomaly: :func:`benchmarks.anomaly_bench.anomaly_benchmark` (synthetic defects on a simulated fixed camera).

Every method sees the same noisy images: the noise of image ``i`` at ``sigma`` comes from seed
``[seed, sigma * 1000, i]``, whatever else runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from benchmarks import baselines as bl
from benchmarks.data import load_set, skimage_photos
from benchmarks.latency import BundleRef, test_frames

SIGMAS = (15, 25, 50)
GRAY_SETS = ("bsd68_gray", "set12_gray")
COLOR_SETS = ("set14",)
BM3D_SET = "bsd68_gray"
CBM3D_SET = "set14"  # colour photographs the committed colour model never trained on (models/README.md)
JPEG_QUALITIES = (2, 3, 5, 10, 15, 20, 30, 40, 50, 60, 70, 80, 90, 95)
WEBP_QUALITIES = (1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95)
CODEC_SET = "set14"

Progress = Callable[[str], None]


def _noop(_: str) -> None:
    pass


def noisy_image(img: np.ndarray, sigma: float, index: int, seed: int = 0) -> np.ndarray:
    """The noisy version of image ``index`` of a set at ``sigma``: identical for every method and every run."""
    return bl.add_noise(img, sigma, np.random.default_rng([seed, round(float(sigma) * 1000), index]))


def image_sets(data_dir: Path | None, color: bool, quick: bool) -> tuple[dict[str, list[tuple[str, np.ndarray]]], str]:
    """Evaluation sets for gray or colour denoisers: ``({set name: [(stem, image)]}, source note)``.

    With a data folder every set must be there (BadDataError otherwise: no silent fallback). Without one,
    scikit-image's photographs (quick mode: 128x128 centre crops of three of them).
    """
    if data_dir is not None:
        sets = {name: load_set(name, data_dir) for name in (COLOR_SETS if color else GRAY_SETS)}
        if quick:
            sets = {k: v[:2] for k, v in sets.items()}
        return sets, f"public test sets from {data_dir}"
    photos = skimage_photos(gray=not color)
    if quick:
        photos = [(n, _crop(im, 128)) for n, im in photos[:3]]
    return {"skimage_color" if color else "skimage_gray": photos}, "scikit-image photographs (no data folder)"


def _crop(img: np.ndarray, size: int) -> np.ndarray:
    h, w = img.shape[:2]
    y, x = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return np.ascontiguousarray(img[y : y + size, x : x + size])


# --------------------------------------------------------------------------------------------------------------
# Denoising


def per_image_scores(stems: Sequence[str], clean: list[np.ndarray], out: list[np.ndarray]) -> list[dict[str, Any]]:
    """``[{image, psnr, ssim}]`` in set order (PSNR ``None`` where the output equals the clean image)."""
    rows = []
    for stem, c, o in zip(stems, clean, out, strict=False):
        p = bl.psnr(c, o)
        rows.append({"image": stem, "psnr": round(p, 4) if np.isfinite(p) else None, "ssim": round(bl.ssim(c, o), 5)})
    return rows


def _mean_of(per: list[dict[str, Any]]) -> tuple[float, float]:
    psnrs = [r["psnr"] for r in per]
    ps = float("inf") if None in psnrs else float(np.mean(psnrs))
    return ps, float(np.mean([r["ssim"] for r in per]))


def _run_method(fn: Callable[[np.ndarray], np.ndarray], noisy: list[np.ndarray]) -> tuple[list[np.ndarray], float]:
    outs, secs = [], 0.0
    for nz in noisy:
        t0 = time.perf_counter()
        outs.append(np.asarray(fn(nz)).reshape(nz.shape))
        secs += time.perf_counter() - t0
    return outs, 1000.0 * secs / max(1, len(noisy))


def _rows(at: dict[str, Any], method: str, model: str | None, precision: str | None, per: list[dict[str, Any]],
          ms: float | None, **extra: Any) -> list[dict[str, Any]]:  # fmt: skip
    """The row of one method on one set and sigma, and for ``model``/``fastNlMeans`` where the reference ran on
    the first k images (``at["paired"] = (k, reference name)``), its row over those k images."""
    k, ref_name = at["paired"]
    ps, ss = _mean_of(per)
    row = {"model": model, "set": at["set"], "sigma": at["sigma"], "method": method, "precision": precision,
           "images": len(per), "psnr": ps, "ssim": ss, "ms_per_image": ms, **extra, "per_image": per}  # fmt: skip
    out = [row]
    if k and method in ("model", "fastNlMeans"):
        ps, ss = _mean_of(per[:k])
        out.append({**row, "method": f"{method} ({ref_name} images)", "images": k, "psnr": ps, "ssim": ss,
                    "per_image": per[:k]})  # fmt: skip
    return out


def reference_method(color: bool) -> str:
    """The classical reference given the true sigma: BM3D for gray, CBM3D (``bm3d.bm3d_rgb``) for colour."""
    return "CBM3D" if color else "BM3D"


def denoise_quality(
    refs: Sequence[BundleRef],
    data_dir: Path | None,
    *,
    threads: int,
    sigmas: Sequence[float] = SIGMAS,
    precisions: Sequence[str] | None = None,
    bm3d_images: int = 68,
    bm3d_sigmas: Sequence[float] = (25,),
    cbm3d_images: int = 14,
    seed: int = 0,
    quick: bool = False,
    progress: Progress = _noop,
) -> dict[str, Any]:
    """PSNR/SSIM and time per image of every denoising bundle, fastNlMeans and (C)BM3D (see the module docstring).

    Returns ``{"rows": [{model, set, sigma, method, precision, images, psnr, ssim, ms_per_image, per_image}],
    "sources": {}, "bm3d": {...}, "cbm3d": {...}}``; ``per_image`` lists ``{image, psnr, ssim}`` in set order.
    method is ``model``, ``fastNlMeans``, ``noisy`` (the input itself), ``BM3D`` (gray, first ``bm3d_images``
    BSD68 images) or ``CBM3D`` (colour, first ``cbm3d_images`` Set14 images), each at ``bm3d_sigmas``, and
    ``model (BM3D images)`` / ``fastNlMeans (BM3D images)`` (or ``CBM3D images``): the same outputs averaged over
    the reference's images only, for the paired comparison.
    """
    from edge_runtime.denoise import Denoiser

    rows: list[dict[str, Any]] = []
    sources: dict[str, str] = {}
    info = {
        "BM3D": {"set": BM3D_SET, "images": 0, "sigmas": list(bm3d_sigmas)},
        "CBM3D": {"set": CBM3D_SET, "images": 0, "sigmas": list(bm3d_sigmas)},
    }
    limit = {"BM3D": bm3d_images, "CBM3D": cbm3d_images}
    done_baselines: set[tuple[str, float]] = set()
    for ref in refs:
        color = ref.channels == 3
        ref_name = reference_method(color)
        sets, note = image_sets(data_dir, color, quick)
        sources[ref.name] = note
        precs = [p for p in ref.precisions() if precisions is None or p in precisions]
        denoisers = {p: Denoiser(ref.bundle, p, "cpu", threads) for p in precs}
        for set_name, items in sets.items():
            stems = [n for n, _ in items]
            clean = [im for _, im in items]
            for sigma in sigmas:
                noisy = [noisy_image(im, sigma, i, seed) for i, im in enumerate(clean)]
                with_ref = set_name == info[ref_name]["set"] and sigma in bm3d_sigmas and limit[ref_name] > 0
                k = min(limit[ref_name], len(clean)) if with_ref else 0
                at = {"set": set_name, "sigma": sigma, "paired": (k, ref_name)}

                for p, den in denoisers.items():
                    progress(f"quality: {ref.name} {p} on {set_name} sigma={sigma:g}")
                    outs, ms = _run_method(den.denoise, noisy)
                    rows += _rows(at, "model", ref.name, p, per_image_scores(stems, clean, outs), ms)
                key = (set_name, float(sigma))
                if key in done_baselines:
                    continue
                done_baselines.add(key)
                rows += _rows(at, "noisy", None, None, per_image_scores(stems, clean, noisy), None)
                progress(f"quality: fastNlMeans on {set_name} sigma={sigma:g}")
                outs, ms = _run_method(lambda nz, s=sigma: bl.opencv_denoise(nz, s), noisy)
                rows += _rows(
                    at, "fastNlMeans", None, None, per_image_scores(stems, clean, outs), ms, h=bl.nlm_h(sigma, color)
                )
                if k:
                    per_s = "about 11 s per 481x321 image" if not color else "about 54 s per 768x512 image"
                    progress(f"quality: {ref_name} on {k} {set_name} images sigma={sigma:g} ({per_s} on 2 cores)")
                    outs, ms = _run_method(lambda nz, s=sigma: bl.bm3d_denoise(nz, s), noisy[:k])
                    rows += _rows(at, ref_name, None, None, per_image_scores(stems, clean[:k], outs), ms)
                    info[ref_name]["images"] = k
    return {
        "rows": rows,
        "sources": sources,
        "bm3d": info["BM3D"],
        "cbm3d": info["CBM3D"],
        "sigmas": list(sigmas),
        "noise": "white Gaussian, rounded and clipped to uint8",
    }


# --------------------------------------------------------------------------------------------------------------
# Compression


def msssim_db(value: float) -> float:
    """MS-SSIM as decibels, ``-10 log10(1 - v)``: the usual axis for comparing codecs by MS-SSIM."""
    return float(-10.0 * np.log10(max(1e-10, 1.0 - value)))


def _codec_point(img: np.ndarray, ext: str, flag: int, q: int) -> tuple[float, float, float]:
    ok, buf = cv2.imencode(ext, img, [int(flag), int(q)])
    if not ok:
        raise RuntimeError(f"cv2.imencode({ext}, {q}) failed")
    dec = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    h, w = img.shape[:2]
    return 8.0 * buf.size / (h * w), bl.psnr(img, dec), bl.ms_ssim(img, dec)


def classical_rd(images: Sequence[np.ndarray], codec: str) -> dict[str, list[float]]:
    """Mean bpp, PSNR and MS-SSIM over ``images`` (BGR uint8) for each quality of the JPEG or WebP sweep."""
    ext, flag, qualities = {
        "JPEG": (".jpg", cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITIES),
        "WebP": (".webp", cv2.IMWRITE_WEBP_QUALITY, WEBP_QUALITIES),
    }[codec]
    out: dict[str, list[float]] = {"quality": [], "bpp": [], "psnr": [], "ms_ssim": []}
    for q in qualities:
        pts = np.array([_codec_point(im, ext, flag, q) for im in images])
        out["quality"].append(q)
        out["bpp"].append(float(pts[:, 0].mean()))
        out["psnr"].append(float(pts[:, 1].mean()))
        out["ms_ssim"].append(float(pts[:, 2].mean()))
    return out


def _bd(ref: dict[str, list[float]], test: dict[str, list[float]]) -> dict[str, float | None]:
    def safe(fn: Callable[..., float | None], *args: Any) -> float | None:
        try:
            return fn(*args)
        except ValueError:
            return None

    return {
        "bd_rate_psnr_pct": safe(bl.bd_rate, ref["bpp"], ref["psnr"], test["bpp"], test["psnr"]),
        "bd_rate_msssim_pct": safe(
            bl.bd_rate,
            ref["bpp"],
            [msssim_db(v) for v in ref["ms_ssim"]],
            test["bpp"],
            [msssim_db(v) for v in test["ms_ssim"]],
        ),
        "bd_psnr_db": safe(bl.bd_psnr, ref["bpp"], ref["psnr"], test["bpp"], test["psnr"]),
    }


def _median_ms(fn: Callable[[], object], repeat: int) -> float:
    fn()
    samples = []
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - t0) / 1e6)
    return float(np.median(samples))


def compress_quality(
    refs: Sequence[BundleRef],
    data_dir: Path | None,
    *,
    threads: int,
    precisions: Sequence[str] | None = None,
    quick: bool = False,
    speed_repeat: int = 7,
    progress: Progress = _noop,
) -> dict[str, Any]:
    """RD curves of the compression bundles (one point per bundle, ordered by quality) per precision, JPEG and
    WebP on the same images, Bjøntegaard deltas, and codec speed at 640x480 against JPEG at matching PSNR."""
    from edge_runtime.codec import Decoder, Encoder, bundle_quality

    refs = sorted(refs, key=lambda r: bundle_quality(r.bundle))
    if data_dir is not None:
        items = load_set(CODEC_SET, data_dir)
        source = f"{CODEC_SET} from {data_dir}"
    else:
        items = skimage_photos(gray=False)
        source = "scikit-image colour photographs (no data folder)"
    if quick:
        items = [(n, _crop(im, 128)) for n, im in items[:2]]
    images = [im for _, im in items]
    common = [p for p in ("fp32", "fp16", "int8") if all(p in r.precisions() for r in refs)]
    precs = [p for p in common if precisions is None or p in precisions]
    curves: dict[str, dict[str, list[float]]] = {}
    per_model: list[dict[str, Any]] = []
    for p in precs:
        curve: dict[str, list[float]] = {"quality": [], "bpp": [], "psnr": [], "ms_ssim": []}
        for ref in refs:
            progress(f"quality: codec {ref.name} {p} on {len(images)} images")
            enc, dec = Encoder(ref.bundle, p, "cpu", threads), Decoder(ref.bundle, p, "cpu", threads)
            bpp, ps, ms = [], [], []
            for im in images:
                rec = enc.encode(im)
                out = dec.decode(rec).reshape(im.shape)
                bpp.append(8.0 * len(rec.payload) / (im.shape[0] * im.shape[1]))
                ps.append(bl.psnr(im, out))
                ms.append(bl.ms_ssim(im, out))
            row = {
                "model": ref.name,
                "precision": p,
                "quality": bundle_quality(ref.bundle),
                "bpp": float(np.mean(bpp)),
                "psnr": float(np.mean(ps)),
                "ms_ssim": float(np.mean(ms)),
            }
            per_model.append(row)
            for k in ("quality", "bpp", "psnr", "ms_ssim"):
                curve[k].append(row[k])
        curves[f"edgeae {p}"] = curve
    progress("quality: JPEG and WebP sweeps")
    jpeg, webp = classical_rd(images, "JPEG"), classical_rd(images, "WebP")
    bd = {}
    for name, curve in curves.items():
        if len(curve["bpp"]) >= 2:
            bd[name] = {"vs JPEG": _bd(jpeg, curve), "vs WebP": _bd(webp, curve)}
    bd["WebP"] = {"vs JPEG": _bd(jpeg, webp)}
    speed = codec_speed(refs, precs, threads, speed_repeat, progress)
    return {
        "source": source,
        "images": len(images),
        "curves": curves,
        "jpeg": jpeg,
        "webp": webp,
        "per_model": per_model,
        "bd": bd,
        "speed_640x480": speed,
        "bpp_from": "len(Encoder.encode(frame).payload): the entropy-coded payload of each frame record",
    }


def codec_speed(
    refs: Sequence[BundleRef], precisions: Sequence[str], threads: int, repeat: int, progress: Progress = _noop
) -> list[dict[str, Any]]:
    """Median encode and decode ms of each bundle at 640x480 (frame to record, record to frame, one thread
    setting) against cv2.imencode/imdecode JPEG at the lowest quality whose PSNR reaches the codec's."""
    from edge_runtime.codec import Decoder, Encoder

    frame = test_frames(640, 480, 1)[0]
    jpeg_by_q = {}
    for q in range(1, 101):
        ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, q])
        jpeg_by_q[q] = (buf, bl.psnr(frame, cv2.imdecode(buf, cv2.IMREAD_COLOR)))
    rows = []
    for ref in refs:
        for p in precisions:
            progress(f"codec speed: {ref.name} {p} at 640x480")
            enc, dec = Encoder(ref.bundle, p, "cpu", threads), Decoder(ref.bundle, p, "cpu", threads)
            rec = enc.encode(frame)
            out = dec.decode(rec).reshape(frame.shape)
            ps = bl.psnr(frame, out)
            enc_ms = _median_ms(lambda enc=enc: enc.encode(frame), repeat)
            dec_ms = _median_ms(lambda dec=dec, rec=rec: dec.decode(rec), repeat)
            q = next((q for q in range(1, 101) if jpeg_by_q[q][1] >= ps), 100)
            buf = jpeg_by_q[q][0]
            j_enc = _median_ms(lambda q=q: cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, q]), repeat * 3)
            j_dec = _median_ms(lambda buf=buf: cv2.imdecode(buf, cv2.IMREAD_COLOR), repeat * 3)
            rows.append(
                {
                    "model": ref.name,
                    "precision": p,
                    "psnr": ps,
                    "bpp": 8.0 * len(rec.payload) / (640 * 480),
                    "encode_ms": enc_ms,
                    "decode_ms": dec_ms,
                    "jpeg_quality": q,
                    "jpeg_psnr": jpeg_by_q[q][1],
                    "jpeg_bpp": 8.0 * buf.size / (640 * 480),
                    "jpeg_encode_ms": j_enc,
                    "jpeg_decode_ms": j_dec,
                    "ratio": (enc_ms + dec_ms) / (j_enc + j_dec),
                }
            )
    return rows


# --------------------------------------------------------------------------------------------------------------
# Anomaly


def anomaly_quality(
    refs: Sequence[BundleRef],
    *,
    threads: int,
    precisions: Sequence[str] | None = None,
    quick: bool = False,
    progress: Progress = _noop,
) -> dict[str, Any]:
    """Image and pixel AUROC of each anomaly bundle and precision on the synthetic-defect benchmark."""
    from benchmarks.anomaly_bench import anomaly_benchmark

    rows = []
    for ref in refs:
        for p in ref.precisions():
            if precisions is not None and p not in precisions:
                continue
            progress(f"quality: anomaly benchmark {ref.name} {p}")
            kw: dict[str, Any] = {"precision": p, "threads": threads}
            if quick:
                kw.update(n_calib=10, n_test=8, size=(64, 64))
                from benchmarks.anomaly_bench import default_scenes

                kw["scenes"] = dict(list(default_scenes().items())[:1])
            res = anomaly_benchmark(ref.bundle.root, **kw)
            rows.append(
                {
                    "model": ref.name,
                    "precision": p,
                    "mean": res["mean"],
                    "config": res["config"],
                    "seconds": res["context"].get("seconds"),
                }
            )
    return {"rows": rows}
