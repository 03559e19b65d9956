"""Bit-exact entropy coding of integer latents: interleaved rANS, vectorised with numpy across lanes.

The coder is integer-only: the state lives in int64 arrays (values < 2**32), frequencies are integers summing to
``1 << precision``, and every byte written is explicit little-endian, so a payload is identical on every machine
and decodes identically everywhere.  Floating point appears only in :func:`tables_from_pmf`, which runs at export
time; the integer tables it returns are what a bundle stores.

Symbols are taken in C order over the latent ``(C, h, w)``: symbol ``i`` belongs to channel ``i // (h*w)``, lane
``i % L`` and step ``i // L`` where ``L = lane_count(C*h*w)``.  All lanes advance together one step at a time, so a
step costs a handful of numpy calls whatever ``L`` is.

Payload layout (see docs/bitstream.md for the full description)::

    u32      n_words          number of 16-bit rANS words that follow the states
    u32 * L  final states     one per lane, each in [2**16, 2**32)
    u16 * n  rANS words       in the order the decoder consumes them
    bytes    escape lengths   6 bits per escaped value, MSB first, zero-padded to a byte
    bytes    escape bits      the mantissas, MSB first, zero-padded to a byte

Symbol ``K-1`` of every channel is the escape: a value outside ``[offset, offset+K-2]`` is coded as the escape
symbol plus a bypass code in the two escape sections, so any int32 round-trips.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import BadDataError

PRECISION_MIN = 8
PRECISION_MAX = 16
MAX_CHANNELS = 4096  # C
MAX_SYMBOLS = 4096  # K, escape included
# 1 GiB of int32 output: the most a single frame's latent may claim (a 16384x16384 frame with M=256 fits).
MAX_LATENT_SYMBOLS = 1 << 28

# rANS with a 32-bit state and 16-bit renormalisation: the state stays in [RANS_L, RANS_L << 16).
RANS_L = 1 << 16
WORD_BITS = 16
WORD_MASK = (1 << WORD_BITS) - 1

# Lane policy: enough lanes that a frame takes about STEP_TARGET numpy steps, but each lane costs ~3 bytes of
# flushed state, so no more than needed.  Changing these changes the format (the decoder derives L from the shape).
STEP_TARGET = 1024
MAX_LANES = 4096

ESC_LEN_BITS = 6  # holds bit_length(n) - 1 <= 33 for n = zigzag overflow + 1 of any int32
ESC_MAX_MANTISSA = 33

# Steps processed per block: bounds the per-symbol scratch arrays to BLOCK_STEPS * L elements.
_BLOCK_STEPS = 256
_ESC_CHUNK = 1 << 16
_I32_MIN = -(1 << 31)
_I32_MAX = (1 << 31) - 1

JSON_FORMAT = "edgeae-entropy-tables"
JSON_VERSION = 1


def lane_count(n_symbols: int) -> int:
    """Number of interleaved rANS lanes for a latent of ``n_symbols`` symbols (part of the format)."""
    return max(1, min(MAX_LANES, -(-n_symbols // STEP_TARGET)))


def _tables_problem(cdf: np.ndarray, offset: np.ndarray, precision: Any) -> str | None:
    if isinstance(precision, bool) or not isinstance(precision, (int, np.integer)):
        return f"precision must be an int, got {type(precision).__name__}"
    if not PRECISION_MIN <= int(precision) <= PRECISION_MAX:
        return f"precision {precision} outside {PRECISION_MIN}..{PRECISION_MAX}"
    if cdf.ndim != 2:
        return f"cdf must be 2-D (C, K+1), got shape {cdf.shape}"
    c, k1 = cdf.shape
    k = k1 - 1
    if not 1 <= c <= MAX_CHANNELS:
        return f"{c} channels outside 1..{MAX_CHANNELS}"
    if not 2 <= k <= MAX_SYMBOLS:
        return f"{k} symbols per channel outside 2..{MAX_SYMBOLS}"
    if k > (1 << int(precision)):
        return f"{k} symbols cannot each have frequency >= 1 at precision {precision}"
    if offset.shape != (c,):
        return f"offset shape {offset.shape} does not match {c} channels"
    if np.any(cdf[:, 0] != 0) or np.any(cdf[:, -1] != (1 << int(precision))):
        return f"every cdf row must run from 0 to {1 << int(precision)}"
    if np.any(np.diff(cdf, axis=1) < 1):
        return "cdf rows must be strictly increasing (every symbol needs frequency >= 1)"
    if np.any(offset.astype(np.int64) + (k - 1) > _I32_MAX):
        return "offset + K - 1 overflows int32"
    return None


def _as_int_array(a: Any, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{name} must be an integer array, got dtype {arr.dtype}")
    return arr


@dataclass(frozen=True)
class EntropyTables:
    """Integer coding tables, one per latent channel.

    cdf: (C, K+1) int32, ``cdf[c, 0] == 0``, ``cdf[c, K] == 1 << precision``, strictly increasing.
    offset: (C,) int32, the latent value coded as symbol 0 of channel c; symbol K-1 is the escape.
    precision: bits of the frequency total, 8..16.
    """

    cdf: np.ndarray
    offset: np.ndarray
    precision: int

    def __post_init__(self) -> None:
        cdf = _as_int_array(self.cdf, "cdf")
        offset = _as_int_array(self.offset, "offset")
        if cdf.size and (cdf.min() < 0 or cdf.max() > (1 << PRECISION_MAX)):
            raise ValueError("cdf values outside 0..65536")
        if offset.size and (offset.min() < _I32_MIN or offset.max() > _I32_MAX):
            raise ValueError("offset values outside int32")
        problem = _tables_problem(cdf, offset, self.precision)
        if problem:
            raise ValueError(f"invalid entropy tables: {problem}")
        # Private read-only copies: the tables are shared by every frame and must not change under the coder.
        cdf = np.array(cdf, dtype=np.int32, copy=True)
        offset = np.array(offset, dtype=np.int32, copy=True)
        cdf.flags.writeable = False
        offset.flags.writeable = False
        object.__setattr__(self, "cdf", cdf)
        object.__setattr__(self, "offset", offset)
        object.__setattr__(self, "precision", int(self.precision))

    @property
    def channels(self) -> int:
        return int(self.cdf.shape[0])

    @property
    def symbols(self) -> int:
        """K, the escape symbol included."""
        return int(self.cdf.shape[1] - 1)

    def freqs(self) -> np.ndarray:
        """(C, K) int64 frequencies."""
        return np.diff(self.cdf.astype(np.int64), axis=1)


def tables_from_pmf(pmf: np.ndarray, offset: np.ndarray, precision: int = 16) -> EntropyTables:
    """Quantise per-channel probabilities into integer tables (export time only).

    pmf: (C, K-1) non-negative floats, the probability of values ``offset[c] .. offset[c]+K-2``.  Whatever mass a
    row leaves below 1 (the tails) goes to the escape symbol K-1; a row that sums to 1 or more still gives the
    escape the minimum frequency 1.  Every symbol gets frequency >= 1 and each row totals ``1 << precision``.
    offset: (C,) integers.
    """
    p = np.asarray(pmf, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] < 1 or p.shape[1] < 1:
        raise ValueError(f"pmf must be (C, K-1) with C, K-1 >= 1, got shape {p.shape}")
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ValueError("pmf must be finite and non-negative")
    row = p.sum(axis=1)
    if np.any(row <= 0):
        raise ValueError("every pmf row needs positive mass")
    precision = int(precision)
    if not PRECISION_MIN <= precision <= PRECISION_MAX:
        raise ValueError(f"precision {precision} outside {PRECISION_MIN}..{PRECISION_MAX}")
    c, k = p.shape[0], p.shape[1] + 1
    total = 1 << precision
    if k > total:
        raise ValueError(f"{k} symbols do not fit precision {precision}")
    probs = np.concatenate([p, np.clip(1.0 - row, 0.0, None)[:, None]], axis=1)
    probs /= probs.sum(axis=1, keepdims=True)
    # Each symbol gets 1 for free; the rest of the total is shared in proportion, largest remainders first.
    spare = total - k
    raw = probs * spare
    freq = np.floor(raw).astype(np.int64)
    left = spare - freq.sum(axis=1)
    order = np.argsort(-(raw - freq), axis=1, kind="stable")
    bump = np.arange(k)[None, :] < left[:, None]
    np.add.at(freq, (np.repeat(np.arange(c), k), order.ravel()), bump.ravel().astype(np.int64))
    freq += 1
    cdf = np.zeros((c, k + 1), dtype=np.int64)
    np.cumsum(freq, axis=1, out=cdf[:, 1:])
    return EntropyTables(cdf=cdf.astype(np.int32), offset=_as_int_array(offset, "offset"), precision=precision)


def tables_to_json(t: EntropyTables) -> dict:
    """JSON-ready dict: ``{"format", "version", "precision", "offset": [C], "cdf": [[K+1] * C]}``."""
    return {
        "format": JSON_FORMAT,
        "version": JSON_VERSION,
        "precision": t.precision,
        "offset": [int(v) for v in t.offset],
        "cdf": [[int(v) for v in r] for r in t.cdf],
    }


def _json_ints(values: Any, what: str, lo: int, hi: int, max_len: int) -> list[int]:
    if not isinstance(values, list):
        raise BadDataError(f"entropy tables: {what} must be a list")
    if not 1 <= len(values) <= max_len:
        raise BadDataError(f"entropy tables: {what} has {len(values)} entries, allowed 1..{max_len}")
    for v in values:
        if type(v) is not int:  # bool and float are refused: the tables are exact integers
            raise BadDataError(f"entropy tables: {what} holds a non-integer ({v!r})")
        if not lo <= v <= hi:
            raise BadDataError(f"entropy tables: {what} value {v} outside {lo}..{hi}")
    return values


def tables_from_json(d: dict) -> EntropyTables:
    """Parse and strictly validate :func:`tables_to_json` output; any problem raises BadDataError."""
    if not isinstance(d, dict):
        raise BadDataError("entropy tables: expected a JSON object")
    expected = {"format", "version", "precision", "offset", "cdf"}
    if set(d) != expected:
        raise BadDataError(f"entropy tables: keys must be {sorted(expected)}, got {sorted(map(str, d))}")
    if d["format"] != JSON_FORMAT:
        raise BadDataError(f"entropy tables: format {d['format']!r} is not {JSON_FORMAT!r}")
    if type(d["version"]) is not int or d["version"] != JSON_VERSION:
        raise BadDataError(f"entropy tables: unsupported version {d['version']!r}")
    precision = d["precision"]
    if type(precision) is not int or not PRECISION_MIN <= precision <= PRECISION_MAX:
        raise BadDataError(f"entropy tables: precision {precision!r} outside {PRECISION_MIN}..{PRECISION_MAX}")
    offset = _json_ints(d["offset"], "offset", _I32_MIN, _I32_MAX, MAX_CHANNELS)
    rows = d["cdf"]
    if not isinstance(rows, list) or len(rows) != len(offset):
        raise BadDataError(f"entropy tables: cdf must be a list of {len(offset)} rows, one per channel")
    width = None
    for i, r in enumerate(rows):
        _json_ints(r, f"cdf row {i}", 0, 1 << precision, MAX_SYMBOLS + 1)
        if width is None:
            width = len(r)
        elif len(r) != width:
            raise BadDataError(f"entropy tables: cdf row {i} has {len(r)} entries, row 0 has {width}")
    cdf = np.array(rows, dtype=np.int64)
    off = np.array(offset, dtype=np.int64)
    problem = _tables_problem(cdf, off, precision)
    if problem:
        raise BadDataError(f"entropy tables: {problem}")
    return EntropyTables(cdf=cdf.astype(np.int32), offset=off.astype(np.int32), precision=precision)


# ---------------------------------------------------------------------------------------------------------------
# Escape bypass code.  For an escaped value v of a channel with in-range values [lo, hi]:
#   z = 2*(v - hi - 1) if v > hi else 2*(lo - 1 - v) + 1      (zig-zag of the overflow, z >= 0)
#   n = z + 1 >= 1, b = n.bit_length() - 1 <= 33
# b goes in 6 bits in the lengths section; the b bits of n below its leading one go in the mantissa section.
# Both sections are fixed-width or prefix-summed, so they pack and unpack without a per-value Python loop.


def _escape_encode(values: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> bytes:
    """values, lo, hi: (E,) int64, values outside [lo, hi] -> the two escape sections, concatenated."""
    e = values.size
    if e == 0:
        return b""
    z = np.where(values > hi, 2 * (values - hi - 1), 2 * (lo - 1 - values) + 1)
    n = (z + 1).astype(np.uint64)
    b = np.zeros(e, dtype=np.int64)
    for shift in (32, 16, 8, 4, 2, 1):  # integer bit_length - 1, branch-free
        b += np.where((n >> (b + shift).astype(np.uint64)) > 0, shift, 0)
    len_bits = np.unpackbits(b.astype(np.uint8)[:, None], axis=1)[:, 8 - ESC_LEN_BITS :]
    mant_parts = []
    for s in range(0, e, _ESC_CHUNK):
        nn, bb = n[s : s + _ESC_CHUNK], b[s : s + _ESC_CHUNK]
        bits = np.unpackbits(nn.astype(">u8").view(np.uint8).reshape(-1, 8), axis=1)
        mant_parts.append(bits[np.arange(64)[None, :] >= (64 - bb)[:, None]])
    return np.packbits(len_bits.ravel()).tobytes() + np.packbits(np.concatenate(mant_parts)).tobytes()


def _read_fields(buf: np.ndarray, bit_off: np.ndarray, width: np.ndarray) -> np.ndarray:
    """Read MSB-first fields of ``width`` (<= 57) bits at ``bit_off`` from the uint8 buffer ``buf`` (padded with
    at least 8 zero bytes) -> uint64."""
    start = (bit_off >> 3).astype(np.intp)
    win = np.lib.stride_tricks.sliding_window_view(buf, 8)[start]
    v = win.copy().view(">u8").ravel().astype(np.uint64)
    v = v << (bit_off & 7).astype(np.uint64)
    w = width.astype(np.uint64)
    out = v >> (np.uint64(64) - np.maximum(w, np.uint64(1)))
    return np.where(w == 0, np.uint64(0), out)


def _escape_decode(section: memoryview, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_escape_encode`; ``section`` must be exactly the escape bytes.  -> (E,) int64."""
    e = lo.size
    len_bytes = -(-e * ESC_LEN_BITS // 8)
    if len(section) < len_bytes:
        raise BadDataError(f"entropy payload: escape lengths need {len_bytes} bytes, {len(section)} left")
    buf = np.zeros(len(section) + 8, dtype=np.uint8)
    buf[: len(section)] = np.frombuffer(section, dtype=np.uint8)
    b = _read_fields(buf, np.arange(e, dtype=np.int64) * ESC_LEN_BITS, np.full(e, ESC_LEN_BITS)).astype(np.int64)
    if np.any(b > ESC_MAX_MANTISSA):
        raise BadDataError("entropy payload: escape length field out of range")
    if _pad_bits_nonzero(buf, len_bytes, e * ESC_LEN_BITS):
        raise BadDataError("entropy payload: nonzero padding after escape lengths")
    mant_bits = int(b.sum())
    mant_bytes = -(-mant_bits // 8)
    if len(section) != len_bytes + mant_bytes:
        raise BadDataError(
            f"entropy payload: escape section is {len(section)} bytes, expected {len_bytes + mant_bytes}"
        )
    base = len_bytes * 8
    offs = base + np.cumsum(b) - b
    mant = _read_fields(buf, offs, b)
    if _pad_bits_nonzero(buf, len_bytes + mant_bytes, base + mant_bits):
        raise BadDataError("entropy payload: nonzero padding after escape bits")
    n = (np.uint64(1) << b.astype(np.uint64)) | mant
    z = n.astype(np.int64) - 1
    d = z >> 1
    v = np.where(z & 1, lo - 1 - d, hi + 1 + d)
    if v.size and (v.min() < _I32_MIN or v.max() > _I32_MAX):
        raise BadDataError("entropy payload: escaped value outside int32")
    return v


def _pad_bits_nonzero(buf: np.ndarray, nbytes: int, nbits: int) -> bool:
    used = nbits - 8 * (nbytes - 1)
    if nbytes == 0 or used == 8:
        return False
    return bool(buf[nbytes - 1] & ((1 << (8 - used)) - 1))


# ---------------------------------------------------------------------------------------------------------------


def _check_shape(shape: Any, tables: EntropyTables) -> tuple[int, int, int]:
    try:
        dims = tuple(operator.index(v) for v in shape)
    except TypeError:
        raise BadDataError(f"latent shape {shape!r} is not three integers") from None
    if len(dims) != 3 or min(dims) < 1:
        raise BadDataError(f"latent shape {dims} must be three positive integers (C, h, w)")
    if dims[0] != tables.channels:
        raise BadDataError(f"latent has {dims[0]} channels, the entropy tables have {tables.channels}")
    if dims[0] * dims[1] * dims[2] > MAX_LATENT_SYMBOLS:
        raise BadDataError(f"latent shape {dims} exceeds {MAX_LATENT_SYMBOLS} symbols")
    return dims  # type: ignore[return-value]


def _flat_tables(tables: EntropyTables) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> (start, freq, key) each (C*K,) int64; key = c * 2**p + start is strictly increasing over all channels,
    so one searchsorted maps (channel, slot) to the flat symbol index c*K + k."""
    cdf = tables.cdf.astype(np.int64)
    start = cdf[:, :-1]
    freq = np.diff(cdf, axis=1)
    key = start + (np.arange(tables.channels, dtype=np.int64) << tables.precision)[:, None]
    return start.ravel(), freq.ravel(), key.ravel()


_LUT_MAX_ENTRIES = 1 << 24  # 32 MiB of uint16; bigger tables fall back to a binary search per step


def _slot_lut(tables: EntropyTables) -> np.ndarray | None:
    """(C * 2**p,) uint16 map from (channel, slot) to symbol, built once per tables object; None if too large."""
    cached = tables.__dict__.get("_lut")
    if cached is None and (tables.channels << tables.precision) <= _LUT_MAX_ENTRIES:
        freq = tables.freqs().ravel()
        cached = np.repeat(np.tile(np.arange(tables.symbols, dtype=np.uint16), tables.channels), freq)
        cached.flags.writeable = False
        # Frozen dataclass: cache through __dict__ (the tables are immutable, so the cache never goes stale).
        tables.__dict__["_lut"] = cached
    return cached


def encode_latents(latent: np.ndarray, tables: EntropyTables) -> bytes:
    """Entropy-code integer latents.

    latent: (C, h, w) integer array with values in int32 range, C == tables.channels.  -> payload bytes.
    """
    lat = np.asarray(latent)
    if lat.ndim != 3 or lat.dtype.kind not in "iu":
        raise ValueError(f"latent must be a 3-D integer array (C, h, w), got {lat.dtype} {lat.shape}")
    if lat.shape[0] != tables.channels or min(lat.shape) < 1:
        raise ValueError(f"latent shape {lat.shape} does not match {tables.channels} table channels")
    c, h, w = (int(v) for v in lat.shape)
    hw, n = h * w, c * h * w
    if n > MAX_LATENT_SYMBOLS:
        raise ValueError(f"latent of {n} symbols exceeds {MAX_LATENT_SYMBOLS}")
    if lat.size and (lat.min() < _I32_MIN or lat.max() > _I32_MAX):
        raise ValueError("latent values must fit int32")
    lat = np.ascontiguousarray(lat, dtype=np.int64).reshape(c, hw)
    p, k = tables.precision, tables.symbols
    lo = tables.offset.astype(np.int64)[:, None]
    hi = lo + (k - 2)

    esc_mask = (lat < lo) | (lat > hi)
    esc_c = np.nonzero(esc_mask)[0]
    esc_section = _escape_encode(lat[esc_mask], lo[esc_c, 0], hi[esc_c, 0])

    sym = np.where(esc_mask, k - 1, lat - lo).ravel()
    del esc_mask
    start_f, freq_f, _ = _flat_tables(tables)
    lanes = lane_count(n)
    steps = -(-n // lanes)
    x = np.full(lanes, RANS_L, dtype=np.int64)
    q = np.empty(lanes, dtype=np.int64)
    r = np.empty(lanes, dtype=np.int64)
    sh = np.empty(lanes, dtype=np.int64)
    chunks: list[np.ndarray] = []
    # numpy scalars: a Python int operand costs a conversion on every call of the hot loop.
    p64, wb = np.int64(p), np.int64(WORD_BITS)
    # Blocks of steps, last block first: the encoder runs backwards so the decoder can run forwards.
    for b0 in range(((steps - 1) // _BLOCK_STEPS) * _BLOCK_STEPS, -1, -_BLOCK_STEPS):
        b1 = min(b0 + _BLOCK_STEPS, steps)
        i0, i1 = b0 * lanes, min(b1 * lanes, n)
        g = sym[i0:i1] + (np.arange(i0, i1, dtype=np.int64) // hw) * k
        f_blk, s_blk = freq_f[g], start_f[g]
        xmax_blk = f_blk << (32 - p)
        for t in range(b1 - 1, b0 - 1, -1):
            a = (t - b0) * lanes
            e = min(a + lanes, i1 - i0)
            u = e - a
            xv, qv, rv, shv = x[:u], q[:u], r[:u], sh[:u]
            m = xv >= xmax_blk[a:e]
            # Renormalise before coding: lanes whose state would overflow emit their low 16 bits, in lane order.
            chunks.append(xv[m])
            np.multiply(m, wb, out=shv)
            np.right_shift(xv, shv, out=xv)
            np.divmod(xv, f_blk[a:e], out=(qv, rv))
            np.left_shift(qv, p64, out=xv)
            xv += rv
            xv += s_blk[a:e]
    words = np.concatenate(chunks[::-1]) if chunks else np.zeros(0, dtype=np.int64)
    header = np.array([words.size], dtype="<u4").tobytes()
    return header + x.astype("<u4").tobytes() + (words & WORD_MASK).astype("<u2").tobytes() + esc_section


def decode_latents(payload: bytes, tables: EntropyTables, shape: tuple[int, int, int]) -> np.ndarray:
    """Decode a payload from :func:`encode_latents`.

    payload: bytes-like.  shape: (C, h, w) with C == tables.channels.  -> (C, h, w) int32.
    Any malformed payload raises BadDataError.
    """
    c, h, w = _check_shape(shape, tables)
    try:
        buf = memoryview(payload).cast("B")
    except TypeError:
        raise BadDataError("entropy payload is not a byte buffer") from None
    hw, n = h * w, c * h * w
    lanes = lane_count(n)
    steps = -(-n // lanes)
    head = 4 + 4 * lanes
    if len(buf) < head:
        raise BadDataError(f"entropy payload of {len(buf)} bytes is shorter than its {head}-byte state header")
    n_words = int(np.frombuffer(buf, dtype="<u4", count=1)[0])
    if n_words > (len(buf) - head) // 2:
        raise BadDataError(f"entropy payload claims {n_words} words, only {(len(buf) - head) // 2} fit")
    if n_words > n:  # a symbol renormalises at most once
        raise BadDataError(f"entropy payload claims {n_words} words for {n} symbols")
    x = np.frombuffer(buf, dtype="<u4", count=lanes, offset=4).astype(np.int64)
    if np.any(x < RANS_L):
        raise BadDataError("entropy payload: initial rANS state below the renormalisation bound")
    words = np.frombuffer(buf, dtype="<u2", count=n_words, offset=head).astype(np.int64)

    p, k = tables.precision, tables.symbols
    start_f, freq_f, key_f = _flat_tables(tables)
    lut = _slot_lut(tables)
    out = np.empty(n, dtype=np.int32)
    idx = np.empty(lanes, dtype=np.int64)
    g = np.empty(lanes, dtype=np.int64)
    tmp = np.empty(lanes, dtype=np.int64)
    pmask, p64, wb, rl = np.int64((1 << p) - 1), np.int64(p), np.int64(WORD_BITS), np.int64(RANS_L)
    pos = 0
    for b0 in range(0, steps, _BLOCK_STEPS):
        b1 = min(b0 + _BLOCK_STEPS, steps)
        i0, i1 = b0 * lanes, min(b1 * lanes, n)
        ch = np.arange(i0, i1, dtype=np.int64) // hw
        cbase = ch << p  # key of (channel, slot) = c * 2**p + slot
        ck = ch * k  # flat symbol index of (channel, 0)
        for t in range(b0, b1):
            a = (t - b0) * lanes
            e = min(a + lanes, i1 - i0)
            u = e - a
            xv, iv, gv, tv = x[:u], idx[:u], g[:u], tmp[:u]
            np.bitwise_and(xv, pmask, out=iv)
            iv += cbase[a:e]
            if lut is None:
                gv[:] = np.searchsorted(key_f, iv, side="right") - 1
            else:
                np.add(lut.take(iv), ck[a:e], out=gv)
            out[i0 + a : i0 + e] = gv - ck[a:e]
            # x = f * (x >> p) + slot - start, with slot - start == key - key_f[g]
            np.right_shift(xv, p64, out=xv)
            xv *= freq_f.take(gv)
            np.subtract(iv, key_f.take(gv), out=tv)
            xv += tv
            m = xv < rl
            cnt = int(np.count_nonzero(m))
            if cnt:
                if pos + cnt > n_words:
                    raise BadDataError("entropy payload: rANS words exhausted before the last symbol")
                xv[m] = (xv[m] << wb) | words[pos : pos + cnt]
                pos += cnt
    if pos != n_words:
        raise BadDataError(f"entropy payload: {n_words - pos} rANS words left over")
    if np.any(x != RANS_L):
        raise BadDataError("entropy payload: final rANS state mismatch (corrupt data)")

    out2 = out.reshape(c, hw)
    esc_mask = out2 == k - 1
    esc_c = np.nonzero(esc_mask)[0]
    lo = tables.offset.astype(np.int64)
    esc_vals = _escape_decode(buf[head + 2 * n_words :], lo[esc_c], lo[esc_c] + (k - 2))
    # symbol + offset fits int32 because the tables guarantee offset + K - 1 <= int32 max.
    out2 += tables.offset[:, None]
    out2[esc_mask] = esc_vals.astype(np.int32)
    return out2.reshape(c, h, w)
