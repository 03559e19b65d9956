"""Model-independent benchmark infrastructure: timing, metrics, baselines, reports, machine stamp, data loading.

Everything runs on tiny synthetic images; nothing here reads ../shared/data.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from benchmarks import baselines as bl
from benchmarks import data, peak, report, timing
from edge_runtime.errors import BadDataError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gray_img() -> np.ndarray:
    """(96, 128) uint8: smooth gradient, a bright square, a disc and mild texture -- something codecs can grade."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:96, 0:128]
    img = 60 + 0.8 * xx + 0.5 * yy
    img[20:50, 30:70] = 220
    img[(yy - 65) ** 2 + (xx - 95) ** 2 < 15**2] = 30
    img = img + cv2.GaussianBlur(rng.normal(0, 12, img.shape), (0, 0), 1.5)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def color_img(gray_img: np.ndarray) -> np.ndarray:
    """(96, 128, 3) uint8 BGR built from the gray fixture with different per-channel content."""
    return np.dstack([gray_img, np.flipud(gray_img), 255 - gray_img]).copy()


# ---------------------------------------------------------------------------------------------------- timing


def test_summarize_known_percentiles() -> None:
    t = timing.summarize(list(range(100, 0, -1)))  # 1..100 ms, unsorted on purpose
    assert t.n == 100
    # numpy's linear interpolation: index q/100 * (n-1)
    assert t.p50_ms == pytest.approx(50.5)
    assert t.p95_ms == pytest.approx(95.05)
    assert t.p99_ms == pytest.approx(99.01)
    assert t.mean_ms == pytest.approx(50.5)
    assert t.min_ms == 1.0
    assert t.throughput_per_s == pytest.approx(1000 / 50.5)


def test_summarize_rejects_empty() -> None:
    with pytest.raises(ValueError):
        timing.summarize([])


def test_measure_counts_warmup_repeat_and_min_time() -> None:
    calls = []
    t = timing.measure(lambda: calls.append(1), warmup=2, repeat=5)
    assert (t.n, len(calls)) == (5, 7)

    t = timing.measure(lambda: time.sleep(0.002), warmup=0, repeat=3, min_time=0.05)
    assert t.n > 3  # kept going until 50 ms of timed calls
    assert t.n * t.mean_ms >= 50.0
    assert 2.0 <= t.min_ms <= t.p50_ms <= t.p95_ms <= t.p99_ms


def test_stage_timer_collects_per_stage() -> None:
    st = timing.StageTimer()
    for _ in range(4):
        with st.stage("pre"):
            pass
        with st.stage("infer"):
            time.sleep(0.003)
    with pytest.raises(RuntimeError), st.stage("post"):
        raise RuntimeError("boom")
    res = st.results()
    assert list(res) == ["pre", "infer", "post"]
    assert res["infer"].n == 4 and res["post"].n == 1
    assert res["infer"].p50_ms >= 3.0 > res["pre"].p50_ms
    st.reset()
    assert st.results() == {}


# ---------------------------------------------------------------------------------------------------- BD rate

_PSNR_A = np.array([28.0, 31.0, 34.0, 37.0, 40.0])


def _log_rate(p: np.ndarray) -> np.ndarray:
    # An exactly cubic log-rate curve, so any 4+ samples of it fit it exactly.
    return -3.0 + 0.12 * (p - 28) + 0.004 * (p - 28) ** 2 - 1e-4 * (p - 28) ** 3


@pytest.mark.parametrize("factor, expected", [(0.8, -20.0), (1.25, 25.0), (1.0, 0.0)])
def test_bd_rate_known_ratio(factor: float, expected: float) -> None:
    rates_a = np.exp(_log_rate(_PSNR_A))
    # Same PSNR points ...
    assert bl.bd_rate(rates_a, _PSNR_A, factor * rates_a, _PSNR_A) == pytest.approx(expected, abs=1e-9)
    # ... and B sampled at other PSNRs on the same-shaped curve.
    psnr_b = np.array([29.0, 32.5, 35.0, 38.5])
    got = bl.bd_rate(rates_a, _PSNR_A, factor * np.exp(_log_rate(psnr_b)), psnr_b)
    assert got == pytest.approx(expected, abs=1e-6)


def test_bd_rate_none_without_overlap() -> None:
    rates = np.exp(_log_rate(_PSNR_A))
    assert bl.bd_rate(rates, _PSNR_A, rates, _PSNR_A + 20.0) is None
    assert bl.bd_psnr(rates, _PSNR_A, rates * 1e6, _PSNR_A) is None


def test_bd_psnr_known_offset() -> None:
    rates = np.array([0.1, 0.2, 0.4, 0.8, 1.6])
    ps = np.array([27.0, 30.0, 32.5, 34.5, 36.0])
    assert bl.bd_psnr(rates, ps, rates, ps + 0.5) == pytest.approx(0.5, abs=1e-9)


def test_bd_rate_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        bl.bd_rate([0.1, 0.0, 0.3], [30, 31, 32], [0.1, 0.2, 0.3], [30, 31, 32])
    with pytest.raises(ValueError):
        bl.bd_rate([0.1, 0.2], [30, 31, 32], [0.1, 0.2, 0.3], [30, 31, 32])


# ---------------------------------------------------------------------------------------------------- metrics


def test_psnr_known_value() -> None:
    a = np.full((16, 16), 100, np.uint8)
    b = a + np.uint8(5)  # MSE 25
    assert bl.psnr(a, b) == pytest.approx(10 * np.log10(255**2 / 25))  # 34.151 dB
    assert bl.psnr(a, a) == float("inf")
    assert bl.psnr(a.astype(float) / 255, b.astype(float) / 255, peak=1.0) == pytest.approx(bl.psnr(a, b))
    with pytest.raises(ValueError):
        bl.psnr(a, a[:8])


def test_ssim_identity_and_monotone(gray_img: np.ndarray, color_img: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    for img in (gray_img, color_img):
        assert bl.ssim(img, img) == pytest.approx(1.0, abs=1e-12)
        assert bl.ms_ssim(img, img) == pytest.approx(1.0, abs=1e-12)
        s = [bl.ssim(img, bl.add_noise(img, sigma, rng)) for sigma in (3, 10, 25, 50)]
        m = [bl.ms_ssim(img, bl.add_noise(img, sigma, rng)) for sigma in (3, 10, 25, 50)]
        assert all(x > y for x, y in zip(s, s[1:], strict=False)), s
        assert all(x > y for x, y in zip(m, m[1:], strict=False)), m
        assert 0.0 < s[-1] < 0.9


def test_ssim_matches_scikit_image_reference(gray_img: np.ndarray) -> None:
    # skimage with these options is the Wang et al. 2004 definition; both crop the border half-window.
    from skimage.metrics import structural_similarity

    noisy = bl.add_noise(gray_img, 20, np.random.default_rng(3))
    ref = structural_similarity(
        gray_img, noisy, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
    )
    assert bl.ssim(gray_img, noisy) == pytest.approx(ref, abs=1e-6)


def test_ms_ssim_small_image_uses_fewer_scales() -> None:
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (40, 40), dtype=np.uint8)
    # 40 px: 2 scales fit (40 -> 20 < 22 for a third); still 1 for identity and < 1 with noise
    assert bl.ms_ssim(img, img) == pytest.approx(1.0)
    assert bl.ms_ssim(img, bl.add_noise(img, 30, rng)) < 0.95
    with pytest.raises(ValueError):
        bl.ms_ssim(img[:8, :8], img[:8, :8])


# ---------------------------------------------------------------------------------------------------- baselines


def test_add_noise_statistics() -> None:
    img = np.full((256, 256), 128, np.uint8)
    noisy = bl.add_noise(img, 10.0, np.random.default_rng(0))
    assert noisy.dtype == np.uint8 and noisy.shape == img.shape
    diff = noisy.astype(float) - 128
    assert abs(diff.std() - 10.0) < 0.15  # rounding adds only 1/12 to the variance
    assert abs(diff.mean()) < 0.15
    bright = bl.add_noise(np.full((64, 64), 250, np.uint8), 30.0, np.random.default_rng(0))
    assert bright.max() == 255  # clipped, not wrapped around


def test_jpeg_and_webp_rd_rate_grows_with_quality(color_img: np.ndarray, gray_img: np.ndarray) -> None:
    for fn in (bl.jpeg_rd, bl.webp_rd):
        for img in (color_img, gray_img):
            pts = fn(img, [10, 50, 90], repeat=1)
            bpp = [p.bpp for p in pts]
            ps = [p.psnr for p in pts]
            assert bpp == sorted(bpp) and len(set(bpp)) == 3, (fn.__name__, bpp)
            assert ps == sorted(ps), (fn.__name__, ps)
            bpp0, psnr0, enc_ms, dec_ms = pts[0]  # plain-tuple unpacking still works
            assert bpp0 > 0 and enc_ms > 0 and dec_ms > 0 and 15 < psnr0 < 60


def test_opencv_denoise_improves_psnr(gray_img: np.ndarray, color_img: np.ndarray) -> None:
    rng = np.random.default_rng(2)
    for img in (gray_img, color_img):
        noisy = bl.add_noise(img, 25, rng)
        den = bl.opencv_denoise(noisy, 25)
        assert den.shape == img.shape and den.dtype == np.uint8
        assert bl.psnr(img, den) > bl.psnr(img, noisy) + 3.0


def test_bm3d_denoise_improves_psnr(gray_img: np.ndarray) -> None:
    img = gray_img[:64, :64]
    noisy = bl.add_noise(img, 25, np.random.default_rng(4))
    den = bl.bm3d_denoise(noisy, 25)
    assert den.shape == img.shape and den.dtype == np.uint8
    assert bl.psnr(img, den) > bl.psnr(img, noisy) + 3.0


def test_nlm_h_rule_is_increasing() -> None:
    for color in (False, True):
        hs = [bl.nlm_h(s, color) for s in (5, 10, 25, 50)]
        assert hs == sorted(hs) and hs[0] >= 1.0


# ---------------------------------------------------------------------------------------------------- report


def _is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and cv2.imread(str(path)) is not None


def test_write_report_json_markdown_and_plots(tmp_path: Path) -> None:
    plots = tmp_path / "plots"
    lat = report.plot_latency(
        [
            {"resolution": "256x256", "precision": "fp32", "p50_ms": 7.9, "p95_ms": 9.1},
            {"resolution": "256x256", "precision": "int8", "p50_ms": 5.7, "p95_ms": 6.0},
            {"resolution": "480x640", "precision": "fp32", "p50_ms": 46.8, "p95_ms": 52.0},
        ],
        plots / "latency.png",
    )
    rd = report.plot_rd(
        {"jpeg": ([0.2, 0.5, 1.0], [26.0, 30.0, 34.0]), "webp": ([0.15, 0.4], [27.0, 31.0])}, plots / "rd.png"
    )
    sp = report.plot_psnr_vs_speed([("nlm", 200.0, 27.5), ("bm3d", 11000.0, 28.4)], plots / "speed.png")
    for p in (lat, rd, sp):
        assert _is_png(p), p

    results = {
        "title": "Infra test",
        "threads": 2,
        "tables": [
            {
                "title": "Denoising",
                "columns": ["method", "PSNR (dB)", "ms", "ok"],
                "rows": [["nlm", 27.4567, 201.23456, True], ["bm3d", 28.4, None, False]],
                "note": "sigma 25, clipped",
                "formats": [None, ".2f", None, None],
            },
        ],
        "plots": [{"title": "Latency", "path": str(lat)}, {"title": "RD", "path": "plots/rd.png"}],
        "timing": timing.summarize([1.0, 2.0, 3.0]),
        "psnr_identical": float("inf"),
    }
    json_path, md_path = report.write_report(results, tmp_path)

    loaded = json.loads(json_path.read_text())  # strict JSON: would fail on NaN/Infinity
    assert loaded["tables"][0]["rows"][0][1] == 27.4567
    assert loaded["timing"]["p50_ms"] == 2.0
    assert loaded["psnr_identical"] is None
    assert loaded["stamp"]["threads"]["requested"] == 2
    md = md_path.read_text()
    assert "| nlm | 27.46 | 201.2 | yes |" in md
    assert "| bm3d | 28.40 | — | no |" in md
    assert "*sigma 25, clipped*" in md
    assert "![Latency](plots/latency.png)" in md and "![RD](plots/rd.png)" in md
    for rel in ("plots/latency.png", "plots/rd.png"):
        assert _is_png(md_path.parent / rel)


def test_fmt_cell() -> None:
    assert [report.fmt_cell(v) for v in (3, 1234.5, 123.45, 1.2345, 0.01234, 0.0001234, None, "a|b")] == [
        "3",
        "1234",
        "123.5",
        "1.23",
        "0.012",
        "1.23e-04",
        "—",
        "a\\|b",
    ]


# ---------------------------------------------------------------------------------------------------- machine


def test_stamp_keys_without_importing_torch() -> None:
    code = (
        "import json, sys\n"
        "from benchmarks.machine import stamp\n"
        "s = stamp(3)\n"
        "assert 'torch' not in sys.modules, 'stamp imported torch'\n"
        "print(json.dumps(s))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    s = json.loads(res.stdout)
    for key in (
        "date_utc",
        "platform",
        "cpu",
        "memory_bytes",
        "gpu",
        "python",
        "packages",
        "ort_providers",
        "threads",
        "git_commit",
    ):
        assert key in s, key
    assert s["date_utc"].endswith("+00:00")
    assert s["threads"]["requested"] == 3
    assert s["cpu"]["logical_cores"] >= 1 and isinstance(s["cpu"]["flags"], list)
    assert set(s["packages"]) == {"numpy", "cv2", "onnxruntime", "torch", "openvino", "onnx"}
    assert s["packages"]["numpy"] == np.__version__
    assert "CPUExecutionProvider" in s["ort_providers"]
    assert s["memory_bytes"] > 0


def test_stamp_reports_the_imported_module_over_the_installed_distribution(monkeypatch) -> None:
    """onnxruntime-gpu unpacked on PYTHONPATH over a CPU onnxruntime: the version that runs is the module's."""
    import types

    import onnxruntime as ort

    from benchmarks.machine import stamp

    fake = types.SimpleNamespace(__version__="9.9.9", get_available_providers=ort.get_available_providers)
    monkeypatch.setitem(sys.modules, "onnxruntime", fake)
    assert stamp()["packages"]["onnxruntime"] == "9.9.9"
    monkeypatch.setitem(sys.modules, "onnxruntime", ort)
    assert stamp()["packages"]["onnxruntime"] == ort.__version__


def test_git_commit_none_outside_a_repo(tmp_path: Path) -> None:
    from benchmarks.machine import git_commit

    assert git_commit(tmp_path) is None


# ---------------------------------------------------------------------------------------------------- peak


def test_peaks_small() -> None:
    assert peak.matmul_peak_gflops(1, n=128, repeat=2) > 0.1
    fp32 = peak.ort_fp32_peak_gflops(1, n=128, repeat=2)
    int8 = peak.int8_peak_gops(1, n=128, repeat=2)
    # onnx is in the dev environment; without it these are None by design.
    assert fp32 is not None and fp32 > 0.1
    assert int8 is not None and int8 > 0.1


# ---------------------------------------------------------------------------------------------------- data


def test_find_data_dir_explicit(tmp_path: Path) -> None:
    assert data.find_data_dir(tmp_path) == tmp_path
    with pytest.raises(BadDataError):
        data.find_data_dir(tmp_path / "missing")


def test_load_set_reads_and_rejects(tmp_path: Path, gray_img: np.ndarray, color_img: np.ndarray) -> None:
    with pytest.raises(BadDataError):
        data.load_set("set12_gray", tmp_path)  # folder missing
    (tmp_path / "set12_gray").mkdir()
    with pytest.raises(BadDataError):
        data.load_set("set12_gray", tmp_path)  # folder empty
    cv2.imwrite(str(tmp_path / "set12_gray" / "b.png"), gray_img)
    cv2.imwrite(str(tmp_path / "set12_gray" / "a.png"), color_img)  # loaded as gray anyway
    imgs = data.load_set("set12_gray", tmp_path)
    assert [n for n, _ in imgs] == ["a", "b"]
    assert all(im.ndim == 2 and im.dtype == np.uint8 for _, im in imgs)
    np.testing.assert_array_equal(imgs[1][1], gray_img)

    (tmp_path / "set14").mkdir()
    cv2.imwrite(str(tmp_path / "set14" / "c.png"), color_img)
    ((name, img),) = data.load_set("set14", tmp_path)
    np.testing.assert_array_equal(img, color_img)  # BGR round trip

    (tmp_path / "live1_color").mkdir()
    (tmp_path / "live1_color" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(BadDataError, match="broken.png"):
        data.load_set("live1_color", tmp_path)
    with pytest.raises(BadDataError):
        data.load_set("bsd68_gray", None)


def test_skimage_photos_shapes() -> None:
    gray = data.skimage_photos(gray=True)
    color = data.skimage_photos(gray=False)
    assert dict(gray)["camera"].shape == (512, 512)
    assert all(im.ndim == 2 and im.dtype == np.uint8 for _, im in gray)
    assert all(im.ndim == 3 and im.shape[2] == 3 and im.dtype == np.uint8 for _, im in color)
    # astronaut's suit patch is mostly white; its red-ish flag sits left: check BGR, not RGB, order on a pixel
    # whose channels differ a lot.
    from skimage.data import astronaut

    np.testing.assert_array_equal(dict(color)["astronaut"][..., ::-1], astronaut())
