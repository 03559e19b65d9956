"""Small files that declare huge things (RELIABILITY 32, 33): refused before anything is allocated.

Each case runs the real ``edgeae`` command in a subprocess that reports its own peak resident memory (VmHWM of
/proc/self/status, written at exit): under 300 MB, the documented exit code, one line on stderr naming the file
and the reason. (Not ru_maxrss from wait4: a child's ru_maxrss starts at its parent's peak, since fork and exec
carry the old address space's high-water mark over, so it measures pytest, not edgeae.) The child runs under an
address-space limit (RLIMIT_AS) so that a regression fails fast with a MemoryError instead of taking gigabytes
from a shared machine; a fixed runtime never comes near it.

* a 3.3 MB ``anomaly_stats.npz`` whose members inflate to 3.3 GB of zeros (a real deflate bomb, CRCs right);
* a ``.npy`` header declaring 36 TiB, given to ``edgeae similar``;
* a bundle declaring ``edgeae.input_multiple`` 60000 (10.8 GB of padding for one frame) and other numbers out of
  the contract's range;
* a graph that returns 1x1 for a frame.
"""

from __future__ import annotations

import io
import os
import re
import struct
import subprocess
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_runtime.anomaly import AnomalyScorer, LocationStats
from edge_runtime.errors import BAD_DATA, MODEL_REJECTED, ModelRejectedError
from edge_runtime.npcheck import NpyError, npz_headers, read_npy

onnx = pytest.importorskip("onnx")
from onnx import helper  # noqa: E402  (after the importorskip above)

ROOT = Path(__file__).resolve().parents[2]
PEAK_RSS_MB = 300
# The child's address space: an idle edgeae (Python, numpy, OpenCV, onnxruntime and its thread pools) maps well
# under 2 GiB here; a bomb that gets through asks for more and dies of a MemoryError instead of filling the RAM.
ADDRESS_SPACE = 4 * 1024**3
DRIVER = """
import atexit, resource, sys

def report_peak(path=sys.argv[1]):
    with open("/proc/self/status") as fh:
        kb = next(line.split()[1] for line in fh if line.startswith("VmHWM:"))
    with open(path, "w") as out:
        out.write(kb)

atexit.register(report_peak)
resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[2]), int(sys.argv[2])))
sys.argv = ["edgeae", *sys.argv[3:]]
from edge_runtime.cli import main
main()
"""


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str
    peak_mb: float


def edgeae(*args: object, tmp_path: Path, timeout: float = 120) -> Result:
    """Run ``edgeae ARGS`` in a child process: its exit code, output and peak RSS in MB (its own VmHWM)."""
    peak = tmp_path / "peak-kb.txt"
    peak.unlink(missing_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(peak), str(ADDRESS_SPACE), *map(str, args)],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=timeout)  # fmt: skip
    assert peak.exists(), f"the child did not report its peak (killed?): {proc.stderr[-2000:]}"
    return Result(proc.returncode, proc.stdout, proc.stderr, int(peak.read_text()) / 1024)


def one_line(result: Result) -> str:
    """The one error line on stderr (a progress summary line may come before it), and no traceback."""
    lines = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(lines) == 1 and lines[0].startswith("edgeae: error: "), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    return lines[0]


def write_png(path: Path, h: int = 24, w: int = 32) -> Path:
    frame = (np.arange(h * w * 3) % 251).astype(np.uint8).reshape(h, w, 3)
    assert cv2.imwrite(str(path), frame)
    return path


# --------------------------------------------------------------------------------------------------------------
# A real zip bomb, written by hand: zipfile cannot take already-compressed data


def _npy_header(dtype: str, shape: tuple[int, ...]) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def _deflate_zeros(head: bytes, zero_mib: int) -> tuple[bytes, int, int]:
    """Raw deflate of ``head`` + ``zero_mib`` MiB of zeros: (compressed, crc32, size). After a full flush the
    compressor starts afresh, so every MiB of zeros compresses to the same ~1 kB: computed once, repeated."""
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(1 << 20)
    first = comp.compress(head) + comp.flush(zlib.Z_FULL_FLUSH)
    piece = comp.compress(zeros) + comp.flush(zlib.Z_FULL_FLUSH)
    crc = zlib.crc32(head)
    for _ in range(zero_mib):
        crc = zlib.crc32(zeros, crc)
    return first + piece * zero_mib + comp.flush(), crc, len(head) + (zero_mib << 20)


def _zip(members: list[tuple[str, bytes, int, int]]) -> bytes:
    """A zip archive of already-deflated members ``(name, deflated, crc32, size)`` (no zip64: all under 4 GiB)."""
    out, central = io.BytesIO(), io.BytesIO()
    for name, data, crc, size in members:
        offset = out.tell()
        fields = struct.pack("<HHHHHIII", 20, 0, 8, 0, 0x21, crc, len(data), size)
        out.write(b"PK\x03\x04" + fields + struct.pack("<HH", len(name), 0) + name.encode() + data)
        central.write(b"PK\x01\x02" + struct.pack("<H", 20) + fields
                      + struct.pack("<HHHHHII", len(name), 0, 0, 0, 0, 0, offset) + name.encode())  # fmt: skip
    directory = central.getvalue()
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(members), len(members), len(directory), out.tell(), 0)
    return out.getvalue() + directory + end


def _member(name: str, dtype: str, shape: tuple[int, ...], zero_mib: int = 0, data: bytes = b"") -> tuple:
    if zero_mib:
        return (f"{name}.npy", *_deflate_zeros(_npy_header(dtype, shape), zero_mib))
    raw = _npy_header(dtype, shape) + data
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    return (f"{name}.npy", comp.compress(raw) + comp.flush(), zlib.crc32(raw), len(raw))


@pytest.fixture(scope="module")
def stats_bomb() -> bytes:
    """anomaly_stats.npz of 3.3 MB whose feat_mean and feat_std inflate to 1.5 GiB of zeros each (32 x 4096 x 3072
    float32), 3.3 GB in all."""
    f, h, w = 32, 4096, 3072
    assert f * h * w * 4 == 1536 << 20
    return _zip([
        _member("feat_mean", "<f4", (f, h, w), zero_mib=1536),  # first, so np.load meets it first
        _member("version", "<i8", (1,), data=np.array([1], "<i8").tobytes()),
        _member("frame_size", "<i8", (2,), data=np.array([h * 8, w * 8], "<i8").tobytes()),
        _member("ssim_mean", "<f4", (h, w), zero_mib=48),
        _member("ssim_std", "<f4", (h, w), zero_mib=48),
        _member("feat_std", "<f4", (f, h, w), zero_mib=1536),
        _member("term_norm", "<f8", (2, 2), data=np.array([[0, 1], [0, 1]], "<f8").tobytes()),
        _member("weights", "<f8", (2,), data=np.array([0, 1], "<f8").tobytes()),
    ])  # fmt: skip


# --------------------------------------------------------------------------------------------------------------
# RELIABILITY 32: statistics .npz


def test_stats_bomb_is_refused_before_it_inflates(make_bundle, stats_bomb, tmp_path):
    assert len(stats_bomb) < 4 * 1024 * 1024
    bundle = make_bundle(["anomaly"], extra_files={"anomaly_stats.npz": stats_bomb})
    result = edgeae("score", bundle, write_png(tmp_path / "f.png"), "--threads", "1", tmp_path=tmp_path)
    line = one_line(result)
    assert result.code == MODEL_REJECTED, result.stderr
    assert "anomaly_stats.npz: not a readable statistics file (members inflate to " in line
    assert "over the 268435456-byte cap" in line
    assert result.peak_mb < PEAK_RSS_MB, f"peak RSS {result.peak_mb:.0f} MB"
    print(f"stats bomb: exit {result.code}, peak RSS {result.peak_mb:.0f} MB: {line}")


def test_stats_headers_must_agree_with_the_archive():
    """A member whose .npy header declares 256 MiB over the 4 bytes the zip says it holds is refused on its header
    (np.load sizes the array from the header and allocates first)."""
    lying = _zip([_member("feat_mean", "<f4", (64, 1024, 1024), data=b"\0" * 4)])
    match = r"member feat_mean.npy declares float32 \[64,1024,1024\] \(268435456 bytes\) but holds 4"
    with pytest.raises(NpyError, match=match):
        npz_headers(lying, max_members=32, max_bytes=1 << 20)


def test_stats_member_count_is_capped_before_zipfile_parses():
    many = _zip([_member(f"m{i}", "<i8", (1,), data=b"\0" * 8) for i in range(100)])
    with pytest.raises(NpyError, match="more than 32 members"):
        npz_headers(many, max_members=32, max_bytes=1 << 20)


def test_stats_grid_and_channels_fix_every_size(tmp_path):
    """Arrays off the grid, or a small member that is not small, are refused on their headers alone."""
    good = LocationStats((16, 16), np.ones((2, 2), np.float32), np.ones((2, 2), np.float32),
                         np.ones((3, 2, 2), np.float32), np.ones((3, 2, 2), np.float32),
                         np.array([[0.0, 1.0], [0.0, 1.0]]), np.array([0.0, 1.0]), 10)  # fmt: skip
    assert LocationStats.from_bytes(good.to_bytes(), "s").grid == (2, 2)
    buf = io.BytesIO()
    np.savez(buf, **{k: v for k, v in np.load(io.BytesIO(good.to_bytes())).items()}, junk=np.zeros((2048, 2048)))
    with pytest.raises(ModelRejectedError, match=r"s: statistics file member junk \(float64 \[2048,2048\]\) is over"):
        LocationStats.from_bytes(buf.getvalue(), "s")


# --------------------------------------------------------------------------------------------------------------
# RELIABILITY 32: a .npy header declaring terabytes


def test_npy_header_declaring_terabytes(tmp_path):
    npy = tmp_path / "e.npy"
    npy.write_bytes(_npy_header("<f4", (10_000_000, 1_000_000)) + b"\0" * 16)
    result = edgeae("similar", npy, "--query", "0", tmp_path=tmp_path)
    line = one_line(result)
    assert result.code == BAD_DATA, result.stderr
    assert line.endswith(
        "e.npy: not a valid .npy file (header declares float32 [10000000,1000000] (40000000000000 bytes) but the "
        "file holds 16)"
    ), line
    assert result.peak_mb < PEAK_RSS_MB, f"peak RSS {result.peak_mb:.0f} MB"
    print(f"npy header 36 TiB: exit {result.code}, peak RSS {result.peak_mb:.0f} MB: {line}")


def test_read_npy_caps_an_honest_file(tmp_path):
    path = tmp_path / "m.npy"
    np.save(path, np.zeros((64, 64), np.float32))
    assert read_npy(path).shape == (64, 64)
    with pytest.raises(NpyError, match=r"float32 \[64,64\] is 16384 bytes, over the 1000-byte cap"):
        read_npy(path, max_bytes=1000)
    path.write_bytes(path.read_bytes() + b"x")
    with pytest.raises(NpyError, match="but the file holds 16385"):
        read_npy(path)


# --------------------------------------------------------------------------------------------------------------
# RELIABILITY 32: metadata numbers out of range


@pytest.mark.parametrize(
    ("graph", "metadata", "match"),
    [
        ("denoise", {"edgeae.input_multiple": "60000"}, r"input_multiple='60000' is out of range \(allowed 1..256\)"),
        ("denoise", {"edgeae.max_side": "1000000000"}, r"max_side='1000000000' is out of range \(allowed 1..16384\)"),
        ("anomaly", {"edgeae.anomaly.norm_std": "1e-300"}, r"norm_std='1e-300' is out of range \(allowed 1e-06"),
    ],
)
def test_bundle_numbers_out_of_range(make_bundle, tmp_path, graph, metadata, match):
    bundle = make_bundle([graph], metadata=metadata)
    command = "denoise" if graph == "denoise" else "score"
    out = tmp_path / "out.png"
    result = edgeae(command, bundle, write_png(tmp_path / "in.png", 8, 8), "-o", out, "--threads", "1",
                    tmp_path=tmp_path)  # fmt: skip
    line = one_line(result)
    assert result.code == MODEL_REJECTED, result.stderr
    assert str(bundle) in line and re.search(match, line), line
    assert not out.exists()
    assert result.peak_mb < PEAK_RSS_MB, f"peak RSS {result.peak_mb:.0f} MB"
    print(f"{metadata}: exit {result.code}, peak RSS {result.peak_mb:.0f} MB: {line}")


# --------------------------------------------------------------------------------------------------------------
# RELIABILITY 33: a graph whose output is not what its metadata promises


def test_graph_returning_one_pixel_for_a_frame(make_bundle, make_model, tmp_path):
    model = make_model("denoise")
    del model.graph.node[:], model.graph.initializer[:]
    model.graph.node.append(helper.make_node("ReduceMax", ["frame"], ["denoised"], axes=[1, 2], keepdims=1))
    bundle = make_bundle(models={("denoise", "fp32"): model})
    out = tmp_path / "out.png"
    result = edgeae("denoise", bundle, write_png(tmp_path / "in.png"), "-o", out, "--threads", "1", tmp_path=tmp_path)
    line = one_line(result)
    assert result.code == MODEL_REJECTED, result.stderr
    assert line.endswith("denoise.fp32.onnx: denoise graph output denoised: expected [1,24,32,3], got [1,1,1,3]")
    assert not out.exists()
    assert result.peak_mb < PEAK_RSS_MB, f"peak RSS {result.peak_mb:.0f} MB"
    print(f"1x1 graph: exit {result.code}, peak RSS {result.peak_mb:.0f} MB: {line}")


def test_scorer_in_process_refuses_the_bomb_too(make_bundle, stats_bomb):
    with pytest.raises(ModelRejectedError, match="members inflate to"):
        AnomalyScorer(make_bundle(["anomaly"], extra_files={"anomaly_stats.npz": stats_bomb}))
