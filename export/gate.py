"""The precision gate: the task metric of an FP16 or INT8 graph against FP32 on validation frames, and CPU timing.

Metrics, each on the run's validation images (never used for calibration), through onnxruntime on the CPU:

* denoise: mean PSNR of the output on σ=25 Gaussian noise (clipped and rounded to uint8, fixed seed) over
  centre crops of up to 256×256, on two image sets (:class:`GateSets`): the run's validation split and the images
  of the calibration source held out of calibration (:func:`export.frames.hold_out`). Budget: PSNR drop ≤
  ``Budget.psnr_db`` (0.3 dB) on *each* set; the reported delta is the worst set's. One set had let through an INT8
  graph that lost 0.5 dB on other photographs.
* compress: mean PSNR of the decoded frame and mean bits per pixel, where the bits are the ideal code length of
  the latents under the bundle's integer tables (Σ −log2(freq / 2^precision), escapes counted with their
  bypass bits; the rANS coder's few bytes of flushed state per frame are left out, the same for every precision).
  The two are combined into the rate increase *at equal PSNR*::

      Δrate % = 100 · (Δbpp + s · ΔPSNR_drop) / bpp_fp32,    s = λ · 255² · MSE_fp32 · ln(10) / 10  [bpp per dB]

  ``s`` is the local slope of the rate-distortion curve at the model's operating point: training minimises
  R + λ·255²·D, so at its optimum dR/dD = −λ·255² and, with D = 10^(−PSNR/10), dR/dPSNR = λ·255²·D·ln10/10.
  Budget: Δrate ≤ ``Budget.rate_pct`` (3 %). The encoder and the decoder are gated separately (the other graph
  in FP32), so each file stands on its own.
* anomaly: image AUROC, clean tiles (128×128, non-overlapping, up to 16 per validation image) against the same
  tiles with a synthetic defect, one of each of the four kinds of :func:`training.defects.paste_defect` (fixed
  seed), so a few validation images still give hundreds of pairs. Budget: drop ≤ ``Budget.auroc`` (0.01).

Timing: median milliseconds per 640×480 frame over a few runs after warm-up, onnxruntime CPU provider with the
session options edge_runtime uses and an explicit thread count; the decoder is timed on the 30×40 latent of
such a frame.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field

import numpy as np

from edge_runtime.errors import BadDataError

VAL_SIZE = 256
DENOISE_SIGMA = 25.0
TIMING_SIZE = (480, 640)
TILES_PER_IMAGE = 16


@dataclass(frozen=True)
class Budget:
    psnr_db: float = 0.3  # denoise: largest PSNR drop
    rate_pct: float = 3.0  # compress: largest rate increase at equal PSNR, percent
    auroc: float = 0.01  # anomaly: largest image-AUROC drop
    # anomaly: largest mean shift of the held-out normal images' scores, in standard deviations of the FP32 scores.
    # The AUROC on synthetic defects alone let an INT8 inspection graph through that lost 0.016-0.025 AUROC on
    # real solar-cell defects (its scores moved 0.3 sd on average): subtle real defects need the scores themselves
    # to hold, not only the easy synthetic ranking.
    score_shift: float = 0.15

    def limit(self, task: str) -> float:
        return {"denoise": self.psnr_db, "compress": self.rate_pct, "anomaly": self.auroc}[task]


DEFAULT_BUDGET = Budget()


def make_session(model: bytes, threads: int):
    import onnxruntime as ort

    from edge_runtime.session import make_session_options

    return ort.InferenceSession(model, sess_options=make_session_options(threads), providers=["CPUExecutionProvider"])


def _run(session, feed) -> list[np.ndarray]:
    name = session.get_inputs()[0].name
    return session.run(None, {name: feed})


# --------------------------------------------------------------------------------------------------------------
# Ideal code length of latents under integer tables


def ideal_bits(latent: np.ndarray, tables) -> float:
    """Bits to code ``latent`` (C, h, w) with :class:`edge_runtime.entropy.EntropyTables`, ideally (no flush)."""
    lat = np.asarray(latent, dtype=np.int64).reshape(tables.channels, -1)
    freq = np.diff(tables.cdf.astype(np.int64), axis=1)
    k = tables.symbols
    lo = tables.offset.astype(np.int64)[:, None]
    idx = lat - lo
    esc = (idx < 0) | (idx > k - 2)
    sym = np.where(esc, k - 1, idx)
    f = np.take_along_axis(freq, sym, axis=1)
    bits = float(np.sum(tables.precision - np.log2(f)))
    if esc.any():
        hi = lo + (k - 2)
        v = lat[esc]
        lo_e = np.broadcast_to(lo, lat.shape)[esc]
        hi_e = np.broadcast_to(hi, lat.shape)[esc]
        z = np.where(v > hi_e, 2 * (v - hi_e - 1), 2 * (lo_e - 1 - v) + 1)
        mantissa = np.floor(np.log2((z + 1).astype(np.float64)))
        from edge_runtime.entropy import ESC_LEN_BITS

        bits += float(np.sum(ESC_LEN_BITS + mantissa))
    return bits


# --------------------------------------------------------------------------------------------------------------
# Evaluators: measure(models) -> metrics dict; compare(ref, cand, budget) -> (delta, within budget)


class DenoiseEval:
    metric = "psnr_db"
    graphs = ("denoise",)

    def __init__(self, val: list[np.ndarray], cfg: dict, threads: int, size: int = VAL_SIZE):
        from training.data import center_crops

        self.threads = threads
        self.clean = center_crops(val, size, int(cfg["model"]["multiple"]))
        rng = np.random.default_rng(1234)  # the validation noise of training.train.DenoiseTask
        self.noisy = [
            np.clip(np.round(c + rng.normal(0, DENOISE_SIGMA, c.shape)), 0, 255).astype(np.uint8) for c in self.clean
        ]

    def measure(self, models: dict[str, bytes]) -> dict[str, float]:
        from training.metrics import psnr

        s = make_session(models["denoise"], self.threads)
        vals = [psnr(_run(s, n[None])[0][0], c) for c, n in zip(self.clean, self.noisy, strict=True)]
        return {"psnr_db": float(np.mean(vals))}

    def compare(self, ref: dict, cand: dict, budget: Budget) -> tuple[float, bool]:
        drop = ref["psnr_db"] - cand["psnr_db"]
        return drop, bool(drop <= budget.psnr_db)

    @staticmethod
    def describe(m: dict) -> str:
        return f"{m['psnr_db']:.3f} dB"


class CompressEval:
    metric = "rate_at_equal_psnr_pct"
    graphs = ("encoder", "decoder")

    def __init__(self, val: list[np.ndarray], cfg: dict, tables, threads: int, size: int = VAL_SIZE):
        from training.compress_model import LAMBDAS
        from training.data import center_crops

        self.threads = threads
        self.tables = tables
        self.lmbda = LAMBDAS[int(cfg["model"]["quality"])]
        self.frames = center_crops(val, size, int(cfg["model"]["multiple"]))

    def measure(self, models: dict[str, bytes]) -> dict[str, float]:
        from training.metrics import psnr

        enc = make_session(models["encoder"], self.threads)
        dec = make_session(models["decoder"], self.threads)
        psnrs, bpps = [], []
        for f in self.frames:
            latent = _run(enc, f[None])[0]
            rec = _run(dec, latent)[0][0]
            psnrs.append(psnr(rec, f))
            bpps.append(ideal_bits(latent[0], self.tables) / (f.shape[0] * f.shape[1]))
        p = float(np.mean(psnrs))
        return {"psnr_db": p, "bpp": float(np.mean(bpps)), "mse": 10 ** (-p / 10)}

    def slope(self, ref: dict) -> float:
        """Local R-D slope at the model's operating point, bpp per dB."""
        return self.lmbda * 255.0**2 * ref["mse"] * math.log(10) / 10

    def compare(self, ref: dict, cand: dict, budget: Budget) -> tuple[float, bool]:
        rate = 100 * ((cand["bpp"] - ref["bpp"]) + self.slope(ref) * (ref["psnr_db"] - cand["psnr_db"])) / ref["bpp"]
        return rate, bool(rate <= budget.rate_pct)

    @staticmethod
    def describe(m: dict) -> str:
        return f"{m['psnr_db']:.3f} dB @ {m['bpp']:.4f} bpp"


class AnomalyEval:
    metric = "image_auroc"
    graphs = ("anomaly",)

    def __init__(self, val: list[np.ndarray], cfg: dict, threads: int, size: int = VAL_SIZE):
        from training.data import center_crops
        from training.defects import DEFECT_KINDS, paste_defect

        self.threads = threads
        self._normal: dict[bytes, np.ndarray] = {}
        multiple = int(cfg["model"]["multiple"])
        # The inspection model is scored like the runtime scores it (edge_runtime.anomaly.window_max, on the
        # frame's own pixels), so the threshold set here is in the runtime's units.
        self.window = None
        if cfg["model"].get("arch") == "inspect":
            from edge_runtime.anomaly import INSPECT_MAP_STRIDE

            self.window = int(cfg["model"]["score_window"]) * INSPECT_MAP_STRIDE
        self.full = center_crops(val, 1 << 30, multiple)
        # Tiles of size/2, or of the smallest validation image when the images are smaller (never none).
        smallest = min((min(im.shape[:2]) for im in self.full), default=0) // multiple * multiple
        side = max(multiple, min(size // 2 // multiple * multiple, smallest))
        tiles = []
        for im in self.full:
            grid = [
                (y, x) for y in range(0, im.shape[0] - side + 1, side) for x in range(0, im.shape[1] - side + 1, side)
            ]
            if not grid:
                continue
            pick = np.unique(np.linspace(0, len(grid) - 1, min(len(grid), TILES_PER_IMAGE)).round().astype(int))
            tiles += [np.ascontiguousarray(im[grid[k][0] : grid[k][0] + side, grid[k][1] : grid[k][1] + side])
                      for k in pick]  # fmt: skip
        if not tiles:
            raise BadDataError(f"no validation image of at least {multiple}x{multiple} pixels for the anomaly gate")
        rng = np.random.default_rng(4321)
        self.frames, self.labels = [], []
        for i, t in enumerate(tiles):
            self.frames.append(t)
            self.labels.append(0)
            for j, kind in enumerate(DEFECT_KINDS):
                bad, _ = paste_defect(t, rng, kind, tiles[(i + 1 + j) % len(tiles)])
                self.frames.append(bad)
                self.labels.append(1)

    def scores(self, model: bytes, frames: list[np.ndarray]) -> np.ndarray:
        s = make_session(model, self.threads)
        names = [o.name for o in s.get_outputs()]
        if self.window is not None:
            from edge_runtime.anomaly import window_max

            at = names.index("anomaly_map")
            return np.array([window_max(_run(s, f[None])[at][0], self.window) for f in frames])
        at = names.index("score")
        return np.array([float(_run(s, f[None])[at][0]) for f in frames])

    def measure(self, models: dict[str, bytes]) -> dict[str, float]:
        from training.metrics import auroc

        normal = self.normal_scores(models["anomaly"])
        return {"image_auroc": auroc(self.scores(models["anomaly"], self.frames), np.array(self.labels)),
                "normal_scores": [round(float(v), 6) for v in normal]}  # fmt: skip

    def normal_scores(self, model: bytes) -> np.ndarray:
        """Raw scores of the whole validation images (cut to the multiple) and their mirror images. Kept per graph
        (SHA-256 of its bytes): the export's calibration and the gate's FP32 reference ask for the same ones."""
        key = hashlib.sha256(model).digest()
        if key not in self._normal:
            frames = []
            for im in self.full:
                frames += [im, np.ascontiguousarray(im[:, ::-1]), np.ascontiguousarray(im[::-1])]
            self._normal[key] = self.scores(model, frames)
        return self._normal[key].copy()

    def compare(self, ref: dict, cand: dict, budget: Budget) -> tuple[float, bool]:
        """AUROC drop (the reported delta) within budget, and the normal images' scores within ``score_shift``
        (recorded in ``cand["score_shift_sd"]``)."""
        drop = ref["image_auroc"] - cand["image_auroc"]
        a, b = np.asarray(ref["normal_scores"], np.float64), np.asarray(cand["normal_scores"], np.float64)
        spread = max(float(a.std()), 1e-6)
        shift = float(np.abs(b - a).mean() / spread) if a.shape == b.shape and a.size else float("inf")
        cand["score_shift_sd"] = round(shift, 4)
        return drop, bool(drop <= budget.auroc and shift <= budget.score_shift)

    @staticmethod
    def describe(m: dict) -> str:
        shift = f", normal scores moved {m['score_shift_sd']:.3f} sd" if "score_shift_sd" in m else ""
        return f"AUROC {m['image_auroc']:.4f}{shift}"


class GateSets:
    """One evaluator per image set, one verdict: a graph passes only when it is within budget on every set.

    Same interface as the evaluators (``metric``, ``graphs``, ``measure``, ``compare``, ``describe``). ``measure``
    returns the first set's metrics plus ``"sets": {name: metrics}``; ``compare`` returns the worst set's delta and
    records every set's in ``cand["set_deltas"]`` and the worst one's name in ``cand["worst_set"]``.
    """

    def __init__(self, evals: dict):
        if not evals:
            raise ValueError("GateSets needs at least one evaluator")
        self.evals = dict(evals)
        self.first = next(iter(self.evals.values()))
        self.metric, self.graphs = self.first.metric, self.first.graphs

    def measure(self, models: dict[str, bytes]) -> dict:
        per = {name: ev.measure(models) for name, ev in self.evals.items()}
        return {**next(iter(per.values())), "sets": per}

    def compare(self, ref: dict, cand: dict, budget: Budget) -> tuple[float, bool]:
        deltas, oks = {}, []
        for name, ev in self.evals.items():
            delta, ok = ev.compare(ref["sets"][name], cand["sets"][name], budget)
            deltas[name] = float(delta)
            oks.append(ok)
        worst = max(deltas, key=deltas.__getitem__)
        cand["set_deltas"] = {n: round(d, 4) for n, d in deltas.items()}
        cand["worst_set"] = worst
        return deltas[worst], all(oks)

    def describe(self, m: dict) -> str:
        text = self.first.describe(m)
        if "set_deltas" in m:
            text += " (deltas: " + ", ".join(f"{n} {d:+.3f}" for n, d in m["set_deltas"].items()) + ")"
        return text


# --------------------------------------------------------------------------------------------------------------
# Timing


def timing_feed(graph: str, cfg: dict, size: tuple[int, int] = TIMING_SIZE) -> np.ndarray:
    h, w = size
    rng = np.random.default_rng(0)
    if graph == "decoder":
        m = int(cfg["model"]["m"])
        return rng.integers(-3, 4, (1, m, h // 16, w // 16)).astype(np.int32)
    # A smooth random image, not white noise: closer to the value statistics of a real frame.
    c = int(cfg["model"]["channels"])
    low = rng.random((1, h // 16 + 1, w // 16 + 1, c))
    img = np.kron(low, np.ones((1, 16, 16, 1)))[:, :h, :w] * 200 + rng.normal(0, 10, (1, h, w, c))
    return np.clip(img, 0, 255).astype(np.uint8)


def time_ms(
    models: dict[str, bytes], feed: np.ndarray, threads: int, runs: int = 7, warmup: int = 2, rounds: int = 3
) -> dict:
    """Median wall milliseconds of one run on ``feed`` for each model (onnxruntime CPU, ``threads`` intra-op
    threads, the session options edge_runtime uses).

    The models take turns in ``rounds`` rounds, so a load change on a shared machine hits all of them alike, but
    only one session exists at a time: onnxruntime's worker threads keep spinning after a run, and with several
    live sessions taking turns run by run, those spinning threads slowed the others down (measured on 2 cores:
    the anomaly graph 75 ms alone, 248 ms interleaved with two other live sessions).
    """
    per_round = max(1, -(-runs // rounds))
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(rounds):
        for k, m in models.items():
            s = make_session(m, threads)
            for _ in range(warmup):
                _run(s, feed)
            for _ in range(per_round):
                t0 = time.perf_counter()
                _run(s, feed)
                times[k].append(time.perf_counter() - t0)
            del s
    return {k: float(np.median(v) * 1e3) for k, v in times.items()}


# --------------------------------------------------------------------------------------------------------------
# The table


@dataclass
class GateRow:
    graph: str
    precision: str
    metric: str
    value: str  # human-readable metric value
    values: dict  # the numbers behind it
    delta: float | None  # the gated quantity (None for the FP32 reference)
    budget: float | None
    ms: float | None
    speedup: float | None
    status: str  # reference | pass | fail | forced
    notes: dict = field(default_factory=dict)


def format_table(rows: list[GateRow], frame: str = "640x480", threads: int | None = None) -> str:
    head = ["graph", "precision", "metric", "delta", "budget", f"ms/{frame}", "speed-up", "gate"]
    lines = [head]
    for r in rows:
        lines.append([
            r.graph,
            r.precision,
            r.value,
            "" if r.delta is None else f"{r.delta:+.4f}",
            "" if r.budget is None else f"{r.budget:g}",
            "" if r.ms is None else f"{r.ms:.1f}",
            "" if r.speedup is None else f"{r.speedup:.2f}x",
            r.status,
        ])  # fmt: skip
    widths = [max(len(str(row[i])) for row in lines) for i in range(len(head))]
    out = ["  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    if threads is not None:
        out.append(f"(onnxruntime {_ort_version()} CPU, {threads} threads, median of runs after warm-up)")
    return "\n".join(out)


def _ort_version() -> str:
    import onnxruntime as ort

    return ort.__version__
