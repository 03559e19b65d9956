"""Entropy coder benchmark: edgeae's numpy rANS vs the ideal code length (and constriction, if installed).

    python -m benchmarks.entropy_coder [--repeat 20] [--seed 0]

The latents imitate a factorized-prior codec: per-channel Laplace scales drawn log-uniformly, rounded to
integers, so a share of channels is almost always zero.  The integer tables come from the same Laplace pmf through
:func:`edge_runtime.entropy.tables_from_pmf`, i.e. the model is exact and the only losses are the coder's.

constriction is optional and never a dependency of edgeae (it has no aarch64 wheel); to include it, run the script
from a throwaway venv that has numpy and constriction, with this repository on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np

from edge_runtime import entropy as ent

PROFILES = {
    # name: (lo, hi) of the log-uniform per-channel Laplace scale
    "medium-rate": (0.05, 6.0),
    "low-rate": (0.02, 1.0),
}
SIZES = {"640x480": (30, 40), "1920x1080": (68, 120)}


def laplace_pmf(scales: np.ndarray, radius: int) -> np.ndarray:
    """(C, 2*radius+1) probabilities of -radius..radius under a rounded Laplace(0, scale); tails left out."""
    v = np.arange(-radius, radius + 1, dtype=np.float64)[None, :]
    b = scales[:, None]

    def cdf(x: np.ndarray) -> np.ndarray:
        return np.where(x < 0, 0.5 * np.exp(np.minimum(x, 0) / b), 1 - 0.5 * np.exp(-np.maximum(x, 0) / b))

    return cdf(v + 0.5) - cdf(v - 0.5)


def ideal_bits(latent: np.ndarray, tables: ent.EntropyTables) -> tuple[float, float, np.ndarray, int]:
    """-> (bits under the integer tables incl. escape bypass bits, escape bypass bits, symbols (C, hw), escapes)."""
    c = latent.shape[0]
    k = tables.symbols
    lat = latent.reshape(c, -1).astype(np.int64)
    lo = tables.offset.astype(np.int64)[:, None]
    hi = lo + k - 2
    esc = (lat < lo) | (lat > hi)
    sym = np.where(esc, k - 1, lat - lo)
    freq = tables.freqs()[np.arange(c)[:, None], sym]
    z = np.where(lat > hi, 2 * (lat - hi - 1), 2 * (lo - 1 - lat) + 1)[esc]
    bypass = float((ent.ESC_LEN_BITS + np.floor(np.log2(z + 1))).sum())
    return float(-np.log2(freq / float(1 << tables.precision)).sum()) + bypass, bypass, sym, int(esc.sum())


def model_bits(latent: np.ndarray, scales: np.ndarray) -> float:
    """Information content under the continuous model itself (no tables, no escape): the floor for any coder."""
    v = latent.reshape(latent.shape[0], -1).astype(np.float64)
    b = scales[:, None]

    def cdf(x: np.ndarray) -> np.ndarray:
        return np.where(x < 0, 0.5 * np.exp(np.minimum(x, 0) / b), 1 - 0.5 * np.exp(-np.maximum(x, 0) / b))

    return float(-np.log2(cdf(v + 0.5) - cdf(v - 0.5)).sum())


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    out = fn()  # warm-up: caches (slot table, models) are built once per model in real use too
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3, out


def bench_edgeae(latent: np.ndarray, tables: ent.EntropyTables, repeat: int) -> tuple[int, float, float]:
    enc_ms, payload = timed(lambda: ent.encode_latents(latent, tables), repeat)
    dec_ms, out = timed(lambda: ent.decode_latents(payload, tables, latent.shape), repeat)
    assert np.array_equal(out, latent)
    return len(payload), enc_ms, dec_ms


def bench_constriction(sym: np.ndarray, tables: ent.EntropyTables, bypass_bits: float, repeat: int):
    """constriction's stack AnsCoder (64-bit state, 32-bit words, 24-bit precision) on the same symbols and the same
    integer probabilities, one Categorical model per channel; escapes' bypass bits are added to its size."""
    try:
        import constriction
    except ImportError:
        return None
    probs = tables.freqs() / float(1 << tables.precision)
    models = [constriction.stream.model.Categorical(p, perfect=False) for p in probs]
    sym32 = sym.astype(np.int32)

    def encode():
        coder = constriction.stream.stack.AnsCoder()
        for c in range(len(models) - 1, -1, -1):
            coder.encode_reverse(sym32[c], models[c])
        return coder.get_compressed()

    def decode(compressed):
        coder = constriction.stream.stack.AnsCoder(compressed)
        return np.stack([coder.decode(m, sym32.shape[1]) for m in models])

    enc_ms, compressed = timed(encode, repeat)
    dec_ms, out = timed(lambda: decode(compressed), repeat)
    assert np.array_equal(out, sym32)
    version = getattr(constriction, "__version__", "")
    if not version:
        from importlib.metadata import version as dist_version

        version = dist_version("constriction")
    return int(compressed.nbytes + np.ceil(bypass_bits / 8)), enc_ms, dec_ms, version


def print_row(
    lead: str, name: str, nbytes: float, n: int, ideal: float, enc: float | None = None, dec: float | None = None
) -> None:
    timing = f"{enc:7.1f} {dec:7.1f}" if enc is not None and dec is not None else f"{'':>7} {'':>7}"
    print(f"{lead} {name:<28} {nbytes:8.0f} {8 * nbytes / n:8.4f} {100 * (8 * nbytes / ideal - 1):+7.2f}% {timing}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--channels", type=int, default=128)
    ap.add_argument("--radius", type=int, default=31, help="in-range values -radius..radius; the rest escape")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    print(f"# python {platform.python_version()}, numpy {np.__version__}, {platform.machine()}")
    print(f"# M={args.channels}, K={2 * args.radius + 2} (incl. escape), precision 16, median of {args.repeat}")
    cols = f"{'profile':<12} {'frame':<10} {'coder':<28} {'bytes':>8} {'bits/sym':>8} {'vs ideal':>8} "
    print(cols + f"{'enc ms':>7} {'dec ms':>7}")
    for prof, (lo_s, hi_s) in PROFILES.items():
        for size, (h, w) in SIZES.items():
            rng = np.random.default_rng(args.seed)
            scales = np.exp(rng.uniform(np.log(lo_s), np.log(hi_s), args.channels))
            latent = np.round(rng.laplace(0.0, scales[:, None, None], (args.channels, h, w))).astype(np.int32)
            tables = ent.tables_from_pmf(laplace_pmf(scales, args.radius), np.full(args.channels, -args.radius))
            ideal, bypass, sym, n_esc = ideal_bits(latent, tables)
            n = latent.size

            lead = f"{prof:<12} {size:<10}"
            print_row(lead, "ideal: continuous model", model_bits(latent, scales) / 8, n, ideal)
            print_row(lead, f"ideal: int tables, {n_esc} esc", ideal / 8, n, ideal)
            nbytes, enc, dec = bench_edgeae(latent, tables, args.repeat)
            print_row(lead, f"edgeae rANS, {ent.lane_count(n)} lanes", nbytes, n, ideal, enc, dec)
            res = bench_constriction(sym, tables, bypass, args.repeat)
            if res is None:
                print(f"{lead} constriction not installed (optional)")
            else:
                print_row(lead, f"constriction {res[3]} AnsCoder", res[0], n, ideal, res[1], res[2])


if __name__ == "__main__":
    main()
