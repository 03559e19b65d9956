"""Classical baselines and image-quality metrics, on numpy images.

Images are ``uint8``: gray ``(H, W)`` or colour ``(H, W, 3)`` in OpenCV's BGR order unless a function says
otherwise. Compute functions take and return arrays; loading files lives in :mod:`benchmarks.data`.

``bm3d`` and ``scikit-image`` are optional (``pip install 'edgeae[bench]'``) and imported only when used.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Iterable, Sequence
from types import ModuleType
from typing import NamedTuple

import cv2
import numpy as np

from edge_runtime.errors import UsageError

# --------------------------------------------------------------------------------------------------------------
# Denoising


def add_noise(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Add white Gaussian noise of standard deviation ``sigma`` (in 0..255 units), as a camera delivers it.

    img: uint8 of any shape (gray or BGR). Returns the same shape, uint8: the noisy values are rounded and
    clipped to [0, 255]. Papers often report on unclipped float noise, which is easier to denoise; clipped uint8
    is what a real pipeline sees, so every benchmark here uses it.
    """
    if img.dtype != np.uint8:
        raise ValueError(f"add_noise expects uint8, got {img.dtype}")
    noisy = img.astype(np.float64) + rng.normal(0.0, float(sigma), size=img.shape)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


# fastNlMeans strength as a function of the noise level, fitted with (about 90 s on 2 cores)
#   .venv/bin/python -m benchmarks.baselines nlm-sweep
# on images NOT from BSD68/Set12/Set14/LIVE1: gray = the first 16 Train400 images (180x180, needs
# ../shared/data) + scikit-image's camera (centre 256x256); colour = astronaut, coffee, chelsea, rocket (centre
# 256x256). sigma in {10, 15, 25, 35, 50}, clipped uint8 noise, seed 0, default 7x7 template / 21x21 search,
# h swept from 0.45 to 1.10 x sigma in steps of 0.05; a line through the best h per sigma.
# Mean PSNR (dB) with the rule | best h on the grid | naive h = sigma:
#   gray   (best h 10, 14.25, 22.5, 29.75, 40):  32.11|32.17|32.17  30.13|30.13|30.05  27.91|27.91|27.70
#                                                26.62|26.63|26.25  25.03|25.03|24.49
#   colour (best h 5.5, 9, 16.25, 21, 27.5):     32.15|32.33|30.56  29.84|29.85|28.51  27.27|27.35|26.04
#                                                25.83|25.88|24.45  24.21|24.21|22.76
# Colour uses hColor = h: with the rule's h, hColor = 0.5, 0.75, 1.5 or 2 x h was never better
# and up to 7 dB worse. The scikit-image photos took part in the fit, so baselines measured on
# benchmarks.data.skimage_photos are slightly in-sample; the public test sets are not.
NLM_GRAY_SLOPE, NLM_GRAY_INTERCEPT = 0.75, 3.0
NLM_COLOR_SLOPE, NLM_COLOR_INTERCEPT = 0.55, 1.0


def nlm_h(sigma: float, color: bool) -> float:
    """The fastNlMeans ``h`` used by :func:`opencv_denoise` for noise level ``sigma`` (0..255 units)."""
    slope, intercept = (NLM_COLOR_SLOPE, NLM_COLOR_INTERCEPT) if color else (NLM_GRAY_SLOPE, NLM_GRAY_INTERCEPT)
    return max(1.0, slope * float(sigma) + intercept)


def _nlm(noisy: np.ndarray, h: float, h_color: float | None = None) -> np.ndarray:
    if _is_color(noisy):
        hc = h if h_color is None else h_color
        return cv2.fastNlMeansDenoisingColored(noisy, None, float(h), float(hc), 7, 21)
    return cv2.fastNlMeansDenoising(_as_gray2d(noisy), None, float(h), 7, 21)


def opencv_denoise(noisy: np.ndarray, sigma: float) -> np.ndarray:
    """Denoise with OpenCV's non-local means, strength from :func:`nlm_h`.

    noisy: uint8 ``(H, W)`` gray or ``(H, W, 3)`` BGR. Returns the same shape and dtype.
    """
    _check_uint8(noisy)
    out = _nlm(noisy, nlm_h(sigma, _is_color(noisy)))
    return out.reshape(noisy.shape)


def bm3d_denoise(noisy: np.ndarray, sigma: float) -> np.ndarray:
    """Denoise with BM3D (PyPI ``bm3d``; about 11 s per 481x321 gray image on 2 cores).

    noisy: uint8 ``(H, W)`` gray or ``(H, W, 3)`` BGR. Returns the same shape, uint8 (rounded, clipped).
    Colour goes through ``bm3d.bm3d_rgb``, which expects RGB, hence the swaps.
    Raises :class:`edge_runtime.errors.UsageError` if ``bm3d`` is not installed.
    """
    _check_uint8(noisy)
    bm3d = _import_extra("bm3d")
    if _is_color(noisy):
        rgb = cv2.cvtColor(noisy, cv2.COLOR_BGR2RGB).astype(np.float64) / 255.0
        den = cv2.cvtColor(np.asarray(bm3d.bm3d_rgb(rgb, sigma / 255.0), np.float32), cv2.COLOR_RGB2BGR)
    else:
        den = np.asarray(bm3d.bm3d(_as_gray2d(noisy).astype(np.float64) / 255.0, sigma / 255.0))
    return np.clip(np.rint(den * 255.0), 0, 255).astype(np.uint8).reshape(noisy.shape)


def nlm_h_sweep(
    images: Sequence[np.ndarray],
    sigmas: Iterable[float],
    h_factors: Iterable[float],
    seed: int = 0,
    h_color_ratio: float = 1.0,
) -> dict[float, dict[float, float]]:
    """Mean PSNR of fastNlMeans over ``images`` for each sigma and each ``h = factor * sigma``.

    images: uint8, all gray or all BGR; for BGR, ``hColor = h_color_ratio * h``. The noise depends only on
    ``seed`` and sigma (not on the other sigmas asked for), so comparisons between h values, and between calls,
    are paired. Returns ``{sigma: {h: mean_psnr_db}}``.
    """
    out: dict[float, dict[float, float]] = {}
    factors = list(h_factors)
    for sigma in sigmas:
        rng = np.random.default_rng([seed, round(float(sigma) * 1000)])
        noisy = [add_noise(im, sigma, rng) for im in images]
        row: dict[float, float] = {}
        for f in factors:
            h = round(f * sigma, 2)
            den = [_nlm(nz, h, h * h_color_ratio).reshape(im.shape) for im, nz in zip(images, noisy, strict=True)]
            row[h] = float(np.mean([psnr(im, d) for im, d in zip(images, den, strict=True)]))
        out[float(sigma)] = row
    return out


# --------------------------------------------------------------------------------------------------------------
# Codecs


class RDPoint(NamedTuple):
    """One rate-distortion point; a plain tuple ``(bpp, psnr, ms_encode, ms_decode)`` to callers that unpack it."""

    bpp: float
    psnr: float
    ms_encode: float
    ms_decode: float


def jpeg_rd(img: np.ndarray, qualities: Iterable[int], repeat: int = 3) -> list[RDPoint]:
    """JPEG rate-distortion through ``cv2.imencode``: one :class:`RDPoint` per quality (1..100).

    img: uint8 ``(H, W)`` gray or ``(H, W, 3)`` BGR. bpp = 8 * bytes / (H * W); PSNR over all channels in BGR;
    times are the median of ``repeat`` encodes / decodes in milliseconds (OpenCV's default 4:2:0 chroma).
    """
    return _codec_rd(img, ".jpg", cv2.IMWRITE_JPEG_QUALITY, qualities, repeat)


def webp_rd(img: np.ndarray, qualities: Iterable[int], repeat: int = 3) -> list[RDPoint]:
    """WebP (lossy, quality 1..100) rate-distortion through ``cv2.imencode``; same conventions as :func:`jpeg_rd`.

    Gray input is stored by WebP as colour; the decoded image is converted back to gray for the PSNR.
    """
    return _codec_rd(img, ".webp", cv2.IMWRITE_WEBP_QUALITY, qualities, repeat)


def _codec_rd(img: np.ndarray, ext: str, flag: int, qualities: Iterable[int], repeat: int) -> list[RDPoint]:
    _check_uint8(img)
    h, w = img.shape[:2]
    points = []
    for q in qualities:
        enc_ms, dec_ms = [], []
        for _ in range(max(1, repeat)):
            t0 = time.perf_counter_ns()
            ok, buf = cv2.imencode(ext, img, [int(flag), int(q)])
            t1 = time.perf_counter_ns()
            if not ok:
                raise RuntimeError(f"cv2.imencode({ext!r}, quality={q}) failed")
            dec = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
            t2 = time.perf_counter_ns()
            if dec is None:
                raise RuntimeError(f"cv2.imdecode failed on {ext} quality {q}")
            enc_ms.append((t1 - t0) / 1e6)
            dec_ms.append((t2 - t1) / 1e6)
        if img.ndim == 2 and dec.ndim == 3:
            # WebP has no gray mode: it stores gray as colour and decodes three equal-ish channels.
            dec = cv2.cvtColor(dec, cv2.COLOR_BGR2GRAY)
        points.append(
            RDPoint(
                8.0 * buf.size / (h * w),
                psnr(img, dec.reshape(img.shape)),
                float(np.median(enc_ms)),
                float(np.median(dec_ms)),
            )
        )
    return points


# --------------------------------------------------------------------------------------------------------------
# Metrics


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB over all pixels and channels; ``inf`` for identical inputs."""
    a, b = _pair(a, b)
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0.0 else 10.0 * float(np.log10(peak * peak / mse))


_SSIM_WIN, _SSIM_SIGMA, _SSIM_K1, _SSIM_K2 = 11, 1.5, 0.01, 0.03
# Wang et al. 2003 (MS-SSIM), weights for scales 1 (finest) to 5.
_MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def _ssim_maps(x: np.ndarray, y: np.ndarray, peak: float) -> tuple[np.ndarray, np.ndarray]:
    """Luminance and contrast-structure maps of one 2-D channel, valid region only (no border effects)."""
    c1, c2 = (_SSIM_K1 * peak) ** 2, (_SSIM_K2 * peak) ** 2

    def blur(z: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(z, (_SSIM_WIN, _SSIM_WIN), _SSIM_SIGMA, borderType=cv2.BORDER_REFLECT)

    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    lum = (2 * mx * my + c1) / (mx * mx + my * my + c1)
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    # Cropping half a window from each side gives exactly the 'valid' filtering of Wang's reference code:
    # the border mode above then never matters.
    r = _SSIM_WIN // 2
    return lum[r:-r, r:-r], cs[r:-r, r:-r]


def ssim(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    """Mean SSIM (Wang et al. 2004): 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03, valid region.

    a, b: same shape, ``(H, W)`` or ``(H, W, C)``, any numeric dtype on a 0..``peak`` scale; H, W >= 11.
    Colour: the mean of the per-channel SSIMs (in whatever channel order the inputs share). No automatic
    downsampling of large images (the 2009 ``ssim.m`` does that; most papers' tables do not).
    """
    chans = _channels(*_pair(a, b))
    vals = []
    for x, y in chans:
        lum, cs = _ssim_maps(x, y, peak)
        vals.append(float(np.mean(lum * cs)))
    return float(np.mean(vals))


def ms_ssim(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    """Multi-scale SSIM (Wang, Simoncelli, Bovik 2003) with the standard 5 scales and weights.

    a, b: same shape, ``(H, W)`` or ``(H, W, C)`` on a 0..``peak`` scale; colour = mean over channels.
    Between scales the image is 2x2-averaged and subsampled. The coarsest scale must still hold an 11x11
    window, so 5 scales need min(H, W) >= 176. Smaller images use as many scales as fit (4 from 88 px, 3 from
    44, 2 from 22, 1 from 11) with the leading weights renormalised to sum to 1; the value is then not
    comparable with 5-scale numbers. Negative contrast-structure means are clipped to 0 before the weighted
    product (as TensorFlow does), since a fractional power of a negative number is undefined.
    """
    x0, y0 = _pair(a, b)
    side = min(x0.shape[:2])
    scales = 0
    while scales < len(_MS_SSIM_WEIGHTS) and side // (2**scales) >= _SSIM_WIN:
        scales += 1
    if scales == 0:
        raise ValueError(f"ms_ssim needs images of at least {_SSIM_WIN}x{_SSIM_WIN}, got {x0.shape[:2]}")
    w = np.asarray(_MS_SSIM_WEIGHTS[:scales])
    w = w / w.sum()
    vals = []
    for x, y in _channels(x0, y0):
        prod = 1.0
        for s in range(scales):
            lum, cs = _ssim_maps(x, y, peak)
            term = np.mean(lum * cs) if s == scales - 1 else np.mean(cs)
            prod *= max(float(term), 0.0) ** w[s]
            if s < scales - 1:
                x, y = _down2(x), _down2(y)
        vals.append(prod)
    return float(np.mean(vals))


def _down2(z: np.ndarray) -> np.ndarray:
    h, w = (z.shape[0] // 2) * 2, (z.shape[1] // 2) * 2
    z = z[:h, :w]
    return 0.25 * (z[0::2, 0::2] + z[1::2, 0::2] + z[0::2, 1::2] + z[1::2, 1::2])


# --------------------------------------------------------------------------------------------------------------
# Bjøntegaard deltas


def bd_rate(
    rates_a: Sequence[float], psnr_a: Sequence[float], rates_b: Sequence[float], psnr_b: Sequence[float]
) -> float | None:
    """Bjøntegaard delta rate of codec B relative to A, in percent (negative: B needs fewer bits).

    Classic VCEG-M33 method: log-rate as a cubic polynomial of PSNR for each curve (degree n-1 when a curve has
    fewer than 4 points), both integrated over the PSNR interval the curves share; the mean log-rate difference
    is turned back into a ratio. Rates in any positive unit (bpp, kbit/s), the same for both curves.
    Returns None when the PSNR intervals do not overlap.
    """
    ra, pa, rb, pb = _bd_inputs(rates_a, psnr_a, rates_b, psnr_b)
    mean_diff = _bd_mean_difference(pa, np.log(ra), pb, np.log(rb))
    return None if mean_diff is None else float((np.exp(mean_diff) - 1.0) * 100.0)


def bd_psnr(
    rates_a: Sequence[float], psnr_a: Sequence[float], rates_b: Sequence[float], psnr_b: Sequence[float]
) -> float | None:
    """Bjøntegaard delta PSNR of B relative to A in dB (positive: B is better at equal rate), or None.

    PSNR as a cubic polynomial of log-rate, integrated over the shared log-rate interval.
    """
    ra, pa, rb, pb = _bd_inputs(rates_a, psnr_a, rates_b, psnr_b)
    mean_diff = _bd_mean_difference(np.log(ra), pa, np.log(rb), pb)
    return None if mean_diff is None else float(mean_diff)


def _bd_inputs(*arrays: Sequence[float]) -> tuple[np.ndarray, ...]:
    ra, pa, rb, pb = (np.asarray(x, dtype=np.float64).ravel() for x in arrays)
    for r, p, name in ((ra, pa, "A"), (rb, pb, "B")):
        if r.size != p.size or r.size < 2:
            raise ValueError(f"curve {name}: need as many rates as PSNRs and at least 2 points")
        if np.any(r <= 0) or not np.all(np.isfinite(r)) or not np.all(np.isfinite(p)):
            raise ValueError(f"curve {name}: rates must be positive and all values finite")
    return ra, pa, rb, pb


def _bd_mean_difference(xa: np.ndarray, ya: np.ndarray, xb: np.ndarray, yb: np.ndarray) -> float | None:
    """Mean of fit_b(x) - fit_a(x) over the shared x interval, each fit a polynomial of degree <= 3."""
    lo, hi = max(xa.min(), xb.min()), min(xa.max(), xb.max())
    if hi <= lo:
        return None
    pa = np.polyint(np.polyfit(xa, ya, min(3, xa.size - 1)))
    pb = np.polyint(np.polyfit(xb, yb, min(3, xb.size - 1)))
    area_a = np.polyval(pa, hi) - np.polyval(pa, lo)
    area_b = np.polyval(pb, hi) - np.polyval(pb, lo)
    return float((area_b - area_a) / (hi - lo))


# --------------------------------------------------------------------------------------------------------------
# Helpers


def _check_uint8(img: np.ndarray) -> None:
    if img.dtype != np.uint8 or img.ndim not in (2, 3):
        raise ValueError(f"expected a uint8 (H, W) or (H, W, C) image, got {img.dtype} {img.shape}")


def _is_color(img: np.ndarray) -> bool:
    return img.ndim == 3 and img.shape[2] == 3


def _as_gray2d(img: np.ndarray) -> np.ndarray:
    if img.ndim == 3 and img.shape[2] == 1:
        return img[:, :, 0]
    if img.ndim != 2:
        raise ValueError(f"expected a gray (H, W) or BGR (H, W, 3) image, got shape {img.shape}")
    return img


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    return a.astype(np.float64), b.astype(np.float64)


def _channels(a: np.ndarray, b: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    if a.ndim == 2:
        return [(a, b)]
    if a.ndim == 3:
        return [(a[:, :, c], b[:, :, c]) for c in range(a.shape[2])]
    raise ValueError(f"expected (H, W) or (H, W, C), got shape {a.shape}")


def _import_extra(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise UsageError(f"{name} is not installed; install the benchmark extras: pip install 'edgeae[bench]'") from err


# --------------------------------------------------------------------------------------------------------------
# The sweep that fitted NLM_* above.


def _nlm_sweep_main() -> None:
    from benchmarks.data import find_data_dir, load_set, skimage_photos

    sigmas = (10, 15, 25, 35, 50)
    factors = np.round(np.arange(0.45, 1.101, 0.05), 2)
    data_dir = find_data_dir(None)
    gray = [im for _, im in load_set("train400_gray", data_dir)[:16]] if data_dir else []
    gray.append(_center_crop(dict(skimage_photos(gray=True))["camera"], 256))
    photos = dict(skimage_photos(gray=False))
    color = [_center_crop(photos[n], 256) for n in ("astronaut", "coffee", "chelsea", "rocket")]
    for label, imgs, is_color in (("gray", gray, False), ("colour", color, True)):
        t0 = time.perf_counter()
        table = nlm_h_sweep(imgs, sigmas, factors)
        print(f"\n{label}: {len(imgs)} images, {time.perf_counter() - t0:.0f} s")
        best = []
        for sigma, row in table.items():
            h_best = max(row, key=row.get)
            best.append((sigma, h_best))
            cells = "  ".join(f"{h:g}:{p:.2f}" for h, p in row.items())
            print(f"sigma {sigma:g}: best h={h_best:g} ({row[h_best]:.2f} dB)  {cells}")
        s, h = np.array(best).T
        slope, intercept = np.polyfit(s, h, 1)
        print(f"fit: h = {slope:.3f} * sigma + {intercept:.2f}")
        for sigma in sigmas:  # same noise as above: it depends only on seed and sigma
            h_rule = nlm_h(sigma, is_color)
            rule_psnr = next(iter(nlm_h_sweep(imgs, [sigma], [h_rule / sigma])[float(sigma)].values()))
            line = f"sigma {sigma}: rule h={h_rule:.1f}: {rule_psnr:.2f} dB; h=sigma: {table[sigma][sigma]:.2f} dB"
            if is_color:
                for ratio in (0.5, 0.75, 1.5, 2.0):
                    alt = nlm_h_sweep(imgs, [sigma], [h_rule / sigma], h_color_ratio=ratio)[float(sigma)]
                    line += f"; hColor={ratio:g}h: {next(iter(alt.values())):.2f}"
            print(line)


def _center_crop(img: np.ndarray, size: int) -> np.ndarray:
    h, w = img.shape[:2]
    top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return img[top : top + size, left : left + size]


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["nlm-sweep"]:
        raise SystemExit("usage: python -m benchmarks.baselines nlm-sweep")
    _nlm_sweep_main()
