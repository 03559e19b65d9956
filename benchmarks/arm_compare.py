"""Compare two outputs of benchmarks/arm_reference.py (x86 reference, arm64 run) and print a table.

Tolerances (docs/deploy-arm.md):

* input: the decoded video frames must be identical (otherwise nothing below compares like with like);
* compress: the ``.eae`` streams bit-identical; the decoded frames within ``--decoded-tol`` grey levels (default
  1; 0 demands equality, which float decoders do not give across architectures: docs/deploy-arm.md), each side
  decoding its own stream, and, when the streams differ and the run had
  ``--cross``, arm64 decoding the x86 stream; on a mismatch the table gives the number of differing latent
  values and the largest pixel difference;
* denoise: frames within ``--denoise-tol`` grey levels (default 1); the largest difference is shown;
* anomaly: raw scores within ``--anomaly-rtol`` relative (default 1e-3), ``|a - b| <= rtol * max(|a|, |b|)``
  plus an absolute floor of 1e-6 for scores near zero.

A pass that is not bit-identical reads "ok (within tolerance)", never plain "ok".

Exit status 0 when every check passes, 1 otherwise (also when a result is missing on one side or errored).
Usage: ``python -m benchmarks.arm_compare X86_OUT ARM_OUT [--json summary.json]``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ABS_FLOOR = 1e-6


def _load(out: Path) -> dict[str, Any]:
    path = out / "results.json"
    if not path.is_file():
        raise SystemExit(f"{path}: missing (run benchmarks/arm_reference.py run first)")
    return json.loads(path.read_text())


def _npy(out: Path, name: str) -> np.ndarray | None:
    path = out / name
    return np.load(path) if path.is_file() else None


def _max_diff(a: np.ndarray | None, b: np.ndarray | None) -> tuple[int | None, int]:
    """(largest absolute difference, number of differing elements); (None, -1) when shapes differ or absent."""
    if a is None or b is None or a.shape != b.shape:
        return None, -1
    diff = np.abs(a.astype(np.int64) - b.astype(np.int64))
    return int(diff.max()) if diff.size else 0, int(np.count_nonzero(diff))


class Table:
    def __init__(self) -> None:
        self.rows: list[dict[str, str]] = []

    def add(self, task: str, model: str, check: str, ok: bool, detail: str, exact: bool = True) -> None:
        """``exact=False`` marks a pass within a tolerance, shown as such so it is never read as identical."""
        result = ("ok" if exact else "ok (within tolerance)") if ok else "MISMATCH"
        self.rows.append({"task": task, "model": model, "check": check, "result": result, "detail": detail})

    @property
    def failed(self) -> int:
        return sum(r["result"] == "MISMATCH" for r in self.rows)

    def markdown(self) -> str:
        keys = ("task", "model", "check", "result", "detail")
        lines = ["| " + " | ".join(keys) + " |", "| " + " | ".join("---" for _ in keys) + " |"]
        lines += ["| " + " | ".join(r[k] for k in keys) + " |" for r in self.rows]
        return "\n".join(lines)


def _frames_detail(identical: bool, dmax: int | None, dn: int, total: int) -> str:
    if identical:
        return "bit-identical"
    if dmax is None:
        return "shapes differ or arrays missing"
    return f"max diff {dmax} grey level(s), {dn} of {total} values differ"


def compare_compress(t: Table, model: str, a: dict, b: dict, out_a: Path, out_b: Path, tol: int = 1) -> None:
    stem = f"{a['bundle']}.{a['precision']}"
    same_stream = a["stream_sha256"] == b["stream_sha256"]
    detail = f"{a['stream_bytes']} bytes, sha256 {a['stream_sha256'][:12]}"
    if not same_stream:
        lat_max, lat_n = _max_diff(_npy(out_a, f"{stem}.latent.npy"), _npy(out_b, f"{stem}.latent.npy"))
        detail = (
            f"x86 {a['stream_bytes']} B {a['stream_sha256'][:12]}, arm64 {b['stream_bytes']} B "
            f"{b['stream_sha256'][:12]}; {lat_n} latent values differ (max {lat_max})"
        )
    t.add("compress", model, "bitstream identical", same_stream, detail)

    dec_a, dec_b = _npy(out_a, f"{stem}.decoded.npy"), _npy(out_b, f"{stem}.decoded.npy")
    total = int(np.prod(a["decoded_shape"]))
    check = "decoded frames equal" if tol == 0 else f"decoded frames within {tol} grey level"
    same_dec = a["decoded_sha256"] == b["decoded_sha256"]
    dmax, dn = _max_diff(dec_a, dec_b)
    ok = same_dec or (dmax is not None and dmax <= tol)
    t.add("compress", model, check, ok, _frames_detail(same_dec, dmax, dn, total), exact=same_dec)
    if "cross_decoded_sha256" in b:
        same_cross = b["cross_decoded_sha256"] == a["decoded_sha256"]
        cmax, cn = _max_diff(dec_a, _npy(out_b, f"{stem}.cross.npy"))
        ok = same_cross or (cmax is not None and cmax <= tol)
        detail = _frames_detail(same_cross, cmax, cn, total)
        t.add("compress", model, check + " (x86 stream on arm64)", ok, detail, exact=same_cross)


def compare_denoise(t: Table, model: str, a: dict, b: dict, out_a: Path, out_b: Path, tol: int) -> None:
    stem = f"{a['bundle']}.{a['precision']}"
    dmax, dn = _max_diff(_npy(out_a, f"{stem}.npy"), _npy(out_b, f"{stem}.npy"))
    identical = a["sha256"] == b["sha256"]
    ok = identical or (dmax is not None and dmax <= tol)
    detail = _frames_detail(identical, dmax, dn, int(np.prod(a["shape"])))
    t.add("denoise", model, f"frames within {tol} grey level", ok, detail, exact=identical)


def compare_anomaly(t: Table, model: str, a: dict, b: dict, rtol: float) -> None:
    ra, rb = np.asarray(a["raw"], np.float64), np.asarray(b["raw"], np.float64)
    if ra.shape != rb.shape:
        t.add("anomaly", model, f"raw scores within {rtol:g} rel", False, f"{ra.size} vs {rb.size} frames")
        return
    diff = np.abs(ra - rb)
    scale = np.maximum(np.abs(ra), np.abs(rb))
    ok = bool(np.all(diff <= rtol * scale + ABS_FLOOR))
    rel = float(np.max(diff / np.maximum(scale, ABS_FLOOR))) if ra.size else 0.0
    detail = f"{ra.size} frames, raw {ra.min():.4g}..{ra.max():.4g}, max rel diff {rel:.2e}, max abs {diff.max():.2e}"
    t.add("anomaly", model, f"raw scores within {rtol:g} rel", ok, detail)


def compare(out_a: Path, out_b: Path, denoise_tol: int = 1, anomaly_rtol: float = 1e-3, decoded_tol: int = 1) -> Table:
    ra, rb = _load(out_a), _load(out_b)
    t = Table()
    same_input = ra["input"]["sha256"] == rb["input"]["sha256"]
    t.add(
        "input",
        ra["input"]["video"],
        "decoded video frames identical",
        same_input,
        f"{ra['input']['frames']} frames {ra['input']['shape']}",
    )
    index_a = {(r["task"], r["bundle"], r["precision"]): r for r in ra["results"]}
    index_b = {(r["task"], r["bundle"], r["precision"]): r for r in rb["results"]}
    for key in sorted(set(index_a) | set(index_b)):
        task, bundle, precision = key
        model = f"{bundle}.{precision}"
        a, b = index_a.get(key), index_b.get(key)
        graphs = (a or b or {}).get("graphs") or {}
        if any(p != precision for p in graphs.values()):
            model += " (" + ", ".join(f"{g} {p}" for g, p in graphs.items()) + ")"
        if a is None or b is None:
            t.add(task, model, "present on both sides", False, "missing on " + ("x86" if a is None else "arm64"))
            continue
        if "error" in a or "error" in b:
            t.add(task, model, "ran", False, f"x86: {a.get('error', 'ok')}; arm64: {b.get('error', 'ok')}")
            continue
        if task == "compress":
            compare_compress(t, model, a, b, out_a, out_b, decoded_tol)
        elif task == "denoise":
            compare_denoise(t, model, a, b, out_a, out_b, denoise_tol)
        else:
            compare_anomaly(t, model, a, b, anomaly_rtol)
    return t


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("x86_out")
    parser.add_argument("arm_out")
    parser.add_argument("--denoise-tol", type=int, default=1)
    parser.add_argument("--decoded-tol", type=int, default=1, help="grey levels decoded frames may differ by")
    parser.add_argument("--anomaly-rtol", type=float, default=1e-3)
    parser.add_argument("--json", default="", help="also write the table as JSON here")
    args = parser.parse_args(argv)
    out_a, out_b = Path(args.x86_out), Path(args.arm_out)
    t = compare(out_a, out_b, args.denoise_tol, args.anomaly_rtol, args.decoded_tol)
    ctx_a, ctx_b = _load(out_a)["context"], _load(out_b)["context"]
    for label, ctx in (("x86", ctx_a), ("arm64", ctx_b)):
        cpu = f", QEMU_CPU={ctx['qemu_cpu']}" if ctx.get("qemu_cpu") else ""
        print(
            f"{label}: {ctx['machine']}{cpu}, python {ctx['python']}, onnxruntime {ctx['onnxruntime']}, "
            f"numpy {ctx['numpy']}, opencv {ctx['opencv']}, {ctx['intra_op_threads']} intra-op thread(s)"
        )
    print()
    print(t.markdown())
    print()
    loose = sum(r["result"] == "ok (within tolerance)" for r in t.rows)
    summary = f"{len(t.rows) - t.failed} of {len(t.rows)} checks passed"
    summary += f" ({loose} within tolerance, not bit-identical)" if loose else ""
    print(summary + (f", {t.failed} FAILED" if t.failed else ""))
    if args.json:
        Path(args.json).write_text(json.dumps({"x86": ctx_a, "arm64": ctx_b, "rows": t.rows}, indent=2) + "\n")
    return 1 if t.failed else 0


if __name__ == "__main__":
    sys.exit(main())
