"""Reference outputs of the three tasks, to compare an arm64 run with an x86 run (benchmarks/arm_check.sh).

Runs on both sides with the same video and the same model bundles, one intra-op thread (under qemu-user the
default thread pool crashes, and one thread also removes any doubt about reduction order between runs):

* ``video PATH``: write the small synthetic test video (lossless FFV1 in .mkv, so both sides decode the same
  pixels; the input frames' SHA-256 are recorded and compared all the same).
* ``run --video V --models DIR --out OUT``: for every bundle under ``DIR`` (a folder holding ``manifest.json``)
  and every precision in ``--precisions`` some graph of it has (a compression bundle with an INT8 decoder but
  no INT8 encoder runs its ``int8`` entry as FP32 encoder + INT8 decoder; ``graphs`` in the result says so):

  - compress: ``edge_runtime.commands.compress`` writes ``OUT/NAME.PREC.eae``; its SHA-256, the entropy-decoded
    latents (``.latent.npy``) and the decoded frames (``.decoded.npy`` and per-frame SHA-256) are recorded.
    With ``--cross OTHER_OUT`` the other side's stream, when it differs from this side's, is decoded too
    (``.cross.npy``): that tests the decoder on identical input even when the two encoders disagree.
  - denoise: ``Denoiser.denoise`` of every frame, saved as ``NAME.PREC.npy`` with per-frame SHA-256;
  - anomaly: ``AnomalyScorer.score``: raw and normalised score and the map's maximum per frame.

  ``OUT/results.json`` holds it all with the context (machine, versions, QEMU_CPU).
* ``efficiency --models DIR``: best and median time of every graph at 640x480 with ``--threads`` intra-op
  threads, its MACs (``edgeae.macs_per_pixel``), achieved GFLOP/s (2 x MACs) and the ratio to the peaks of
  ``benchmarks.peak`` (the onnxruntime matmul peaks need the ``onnx`` package; without it only numpy's is
  measured and no ratio is given). ``--clock cpu`` times by CPU time with spin-waiting off, for a shared machine.

Only edge_runtime, numpy and cv2 are imported for ``video`` and ``run`` (they run inside the emulated Pi);
``efficiency`` also imports benchmarks.peak. Emulated times are not speeds: ``run`` records none.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

# W x H: multiples of 8 (the denoisers' input_multiple) but not of 16, so the anomaly and compression models pad
# and crop. Small and few, because emulated inference is slow (minutes per model and precision at this size).
DEFAULT_SIZE = (184, 120)
DEFAULT_FRAMES = 6
PRECISIONS = ("fp32", "int8")
TASK_GRAPHS = {"denoise": ("denoise",), "anomaly": ("anomaly",), "compress": ("encoder", "decoder")}


def sha256(data: bytes | np.ndarray) -> str:
    """SHA-256 of bytes, or of an array's C-order bytes (shape and dtype are recorded beside it)."""
    if isinstance(data, np.ndarray):
        data = np.ascontiguousarray(data).tobytes()
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# The test video


def synthetic_frames(count: int, width: int, height: int, seed: int = 0) -> list[np.ndarray]:
    """``count`` frames (H, W, 3) uint8 BGR of a moving scene: gradients, shapes, text, texture, sensor noise.

    Natural-looking enough that the models work on real structure (edges, flat areas, fine texture), with
    Gaussian noise of sigma 12 for the denoisers and a small bright "defect" in the last frames for the scorer.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    texture = cv2.GaussianBlur(rng.normal(0, 40, (height * 2, width * 2)).astype(np.float32), (0, 0), 1.5)
    frames = []
    for i in range(count):
        base = np.stack(
            [
                60 + 120 * xx / width + 10 * np.sin((yy + 3 * i) / 9),
                90 + 80 * yy / height,
                160 - 100 * xx / width + 20 * np.cos((xx - 2 * i) / 13),
            ],
            axis=-1,
        )
        img = np.clip(base, 0, 255).astype(np.uint8)
        dx = 4 * i
        patch = texture[20 : 20 + height // 3, dx : dx + width // 3]
        roi = img[height // 2 : height // 2 + patch.shape[0], 10 : 10 + patch.shape[1]]
        roi[:] = np.clip(roi.astype(np.float32) + patch[: roi.shape[0], : roi.shape[1], None], 0, 255).astype(np.uint8)
        cv2.rectangle(img, (20 + dx, 12), (70 + dx, 50), (30, 200, 240), -1)
        cv2.circle(img, (width - 50, height // 2 - i * 2), 22, (220, 60, 40), 3, cv2.LINE_AA)
        cv2.line(img, (0, height - 10 - i), (width, height - 40 + i), (250, 250, 250), 1, cv2.LINE_AA)
        cv2.putText(img, f"edgeae {i}", (width // 2 - 20, 28), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (10, 10, 10), 1)
        if i >= count - 2:
            cv2.circle(img, (width // 3, height - 30), 5, (255, 255, 255), -1)
        noisy = img.astype(np.float32) + rng.normal(0, 12, img.shape).astype(np.float32)
        frames.append(np.clip(np.round(noisy), 0, 255).astype(np.uint8))
    return frames


def write_video(path: Path, count: int = DEFAULT_FRAMES, size: tuple[int, int] = DEFAULT_SIZE) -> list[str]:
    """Write the synthetic frames as lossless FFV1 ``.mkv``; check it reads back exactly; return frame SHA-256s."""
    frames = synthetic_frames(count, *size)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"FFV1"), 10.0, size)
    if not writer.isOpened():
        raise SystemExit(f"{tmp}: this OpenCV cannot write FFV1 video")
    for frame in frames:
        writer.write(frame)
    writer.release()
    back = read_frames(tmp)
    if len(back) != len(frames) or any(not np.array_equal(a, b) for a, b in zip(back, frames, strict=False)):
        raise SystemExit(f"{tmp}: the video does not read back losslessly")
    os.replace(tmp, path)
    return [sha256(f) for f in frames]


def read_frames(path: Path) -> list[np.ndarray]:
    """Every frame of the video through the runtime's own source (the code a Pi runs)."""
    from edge_runtime.sources import open_source

    with open_source(str(path)) as src:
        return [np.ascontiguousarray(f.image) for f in src]


# ---------------------------------------------------------------------------------------------------------------
# Bundles


def find_bundles(models: Path, names: list[str] | None) -> list[tuple[str, str, Path]]:
    """(task, name, folder) of the bundles directly under ``models``, sorted by name; ``names`` filters."""
    found = []
    for manifest in sorted(models.glob("*/manifest.json")):
        task = json.loads(manifest.read_text()).get("task")
        name = manifest.parent.name
        if task in TASK_GRAPHS and (not names or name in names):
            found.append((task, name, manifest.parent))
    if names:
        missing = sorted(set(names) - {n for _, n, _ in found})
        if missing:
            raise SystemExit(f"{models}: no bundle named {', '.join(missing)}")
    return found


def graph_precisions(folder: Path, task: str, wanted: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """``{precision: {graph: precision used}}`` for every precision in ``wanted`` that some graph of the task has.

    A compression bundle may hold an INT8 decoder but no INT8 encoder (the export's gate judges each graph): its
    ``int8`` entry then encodes with the FP32 encoder and decodes with the INT8 decoder, which is what a stream
    made at FP32 and decoded with ``--precision int8`` on the device does.
    """
    from edge_runtime.model import load_bundle

    bundle = load_bundle(folder)
    found: dict[str, dict[str, str]] = {}
    for precision in wanted:
        graphs = {g: precision if precision in bundle.precisions(g) else "fp32" for g in TASK_GRAPHS[task]}
        if precision in graphs.values():
            found[precision] = graphs
    return found


def model_hashes(folder: Path, graphs: dict[str, str]) -> dict[str, str]:
    """SHA-256 of the graph files used, from the manifest (which load_bundle has checked against the files)."""
    from edge_runtime.model import load_bundle

    bundle = load_bundle(folder)
    return {f"{g}.{p}": bundle.entry(g, p)["sha256"] for g, p in graphs.items()}


# ---------------------------------------------------------------------------------------------------------------
# The three tasks


def run_compress(
    folder: Path,
    graphs: dict[str, str],
    video: Path,
    out: Path,
    stem: str,
    threads: int,
    cross: Path | None,
    streams: dict[tuple[str, str], Path],
) -> dict[str, Any]:
    """``streams`` caches the stream of each (bundle folder, encoder precision) already encoded in this run."""
    from edge_runtime import bitstream
    from edge_runtime.codec import Decoder
    from edge_runtime.commands import compress

    stream_path = out / f"{stem}.eae"
    key = (str(folder), graphs["encoder"])
    if key in streams:
        shutil.copyfile(streams[key], stream_path)
    else:
        compress(folder, video, stream_path, precision=graphs["encoder"], threads=threads, progress=False)
        streams[key] = stream_path
    data = stream_path.read_bytes()
    decoder = Decoder(folder, precision=graphs["decoder"], threads=threads)

    def decode(blob: bytes) -> tuple[np.ndarray, np.ndarray]:
        latents, frames = [], []
        for record in bitstream.iter_frames(blob):
            latent = decoder.latent(record)
            latents.append(latent)
            frames.append(decoder.reconstruct(latent, int(record.height), int(record.width)))
        return np.stack(latents), np.stack(frames)

    latents, decoded = decode(data)
    np.save(out / f"{stem}.latent.npy", latents)
    np.save(out / f"{stem}.decoded.npy", decoded)
    result = {
        "stream": stream_path.name,
        "stream_sha256": sha256(data),
        "stream_bytes": len(data),
        "latent_shape": list(latents.shape),
        "decoded_shape": list(decoded.shape),
        "decoded_sha256": [sha256(f) for f in decoded],
    }
    other = cross / f"{stem}.eae" if cross is not None else None
    # Identical streams decode identically by construction; only a differing one is worth the emulated time.
    if other is not None and other.is_file() and sha256(other.read_bytes()) != result["stream_sha256"]:
        _, cross_decoded = decode(other.read_bytes())
        np.save(out / f"{stem}.cross.npy", cross_decoded)
        result["cross_decoded_sha256"] = [sha256(f) for f in cross_decoded]
    return result


def run_denoise(
    folder: Path, precision: str, frames: list[np.ndarray], out: Path, stem: str, threads: int
) -> dict[str, Any]:
    from edge_runtime.denoise import Denoiser

    den = Denoiser(folder, precision, threads=threads)
    outs = np.stack([den.denoise(f) for f in frames])
    np.save(out / f"{stem}.npy", outs)
    return {"shape": list(outs.shape), "sha256": [sha256(f) for f in outs]}


def run_anomaly(
    folder: Path, precision: str, frames: list[np.ndarray], out: Path, stem: str, threads: int
) -> dict[str, Any]:
    from edge_runtime.anomaly import AnomalyScorer

    scorer = AnomalyScorer(folder, precision, threads=threads)
    scores = [scorer.score(f) for f in frames]
    maps = np.stack([s.map for s in scores]).astype(np.float32)
    np.save(out / f"{stem}.map.npy", maps)
    return {
        "raw": [s.raw for s in scores],
        "score": [s.score for s in scores],
        "map_max": [float(m.max()) for m in maps],
        "calibrated": scorer.stats is not None,
    }


def context(threads: int) -> dict[str, Any]:
    import onnxruntime as ort

    return {
        "machine": platform.machine(),
        "system": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "onnxruntime": ort.__version__,
        "providers": ort.get_available_providers(),
        # Only meaningful where qemu runs this interpreter; the x86 side may inherit the variable from the script.
        "qemu_cpu": os.environ.get("QEMU_CPU", "") if platform.machine() in ("aarch64", "arm64") else "",
        "intra_op_threads": threads,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    frames = read_frames(Path(args.video))
    if not frames:
        raise SystemExit(f"{args.video}: no frame could be read")
    wanted = tuple(p.strip() for p in args.precisions.split(",") if p.strip())
    names = [n.strip() for n in args.bundles.split(",") if n.strip()] if args.bundles else None
    cross = Path(args.cross) if args.cross else None
    results: list[dict[str, Any]] = []
    streams: dict[tuple[str, str], Path] = {}
    for task, name, folder in find_bundles(Path(args.models), names):
        for precision, graphs in graph_precisions(folder, task, wanted).items():
            stem = f"{name}.{precision}"
            print(f"[{platform.machine()}] {task} {stem} {graphs}", flush=True)
            entry: dict[str, Any] = {"task": task, "bundle": name, "precision": precision, "graphs": graphs}
            try:
                entry["model_sha256"] = model_hashes(folder, graphs)
                if task == "compress":
                    video = Path(args.video)
                    entry.update(run_compress(folder, graphs, video, out, stem, args.threads, cross, streams))
                elif task == "denoise":
                    entry.update(run_denoise(folder, precision, frames, out, stem, args.threads))
                else:
                    entry.update(run_anomaly(folder, precision, frames, out, stem, args.threads))
            except Exception as exc:  # recorded, and a failure in arm_compare: one broken model must not hide the rest
                entry["error"] = f"{type(exc).__name__}: {exc}"
                print(f"  ERROR {entry['error']}", file=sys.stderr, flush=True)
            results.append(entry)
    report = {
        "context": context(args.threads),
        "input": {
            "video": Path(args.video).name,
            "frames": len(frames),
            "shape": list(frames[0].shape),
            "sha256": [sha256(f) for f in frames],
        },
        "results": results,
    }
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out / 'results.json'} ({len(results)} results)")
    return 1 if any("error" in r for r in results) else 0


# ---------------------------------------------------------------------------------------------------------------
# Efficiency on this machine


def _clock_ns(clock: str) -> int:
    # "cpu": CPU time of every thread of this process. With onnxruntime's spin-waiting switched off it counts
    # only the work, so a busy machine (other processes taking turns on the cores) does not inflate it.
    return time.process_time_ns() if clock == "cpu" else time.perf_counter_ns()


def _times_ms(fn: Any, repeat: int, clock: str = "wall", threads: int = 1) -> tuple[float, float]:
    """(best, median) milliseconds of ``repeat`` calls after two warm-up calls (thread pool, kernel selection,
    first-touch page faults). The best is what the efficiency uses: the peaks of benchmarks.peak are best-of
    too, and on a shared machine the best is the run least disturbed by other processes. With ``clock="cpu"``
    the CPU time is divided by ``threads``: the wall time the same work takes on otherwise idle cores."""
    fn()
    fn()
    times = []
    for _ in range(repeat):
        t0 = _clock_ns(clock)
        fn()
        times.append((_clock_ns(clock) - t0) / 1e6 / (threads if clock == "cpu" else 1))
    return float(np.min(times)), float(np.median(times))


def _no_spin_session(model: bytes, threads: int) -> Any:
    import onnxruntime as ort

    from edge_runtime.session import make_session_options

    so = make_session_options(threads)
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def _peaks(threads: int, clock: str) -> dict[str, Any]:
    """benchmarks.peak.peaks, or with ``clock="cpu"`` the same onnxruntime matmuls timed by CPU time without
    spin-waiting (numpy's BLAS peak is left out there: its threads spin on their own terms)."""
    if clock == "wall":
        from benchmarks.peak import peaks

        return peaks(threads)
    from benchmarks.peak import _matmul_model_bytes

    n, rng = 2048, np.random.default_rng(1)
    out: dict[str, Any] = {"threads": threads, "n": n, "clock": "cpu"}
    for key, int8 in (("ort_fp32_gflops", False), ("ort_int8_gops", True)):
        model = _matmul_model_bytes(n, int8)
        if model is None:
            out[key] = None
            continue
        sess = _no_spin_session(model, threads)
        a = rng.integers(0, 256, (n, n), dtype=np.uint8) if int8 else rng.standard_normal((n, n)).astype(np.float32)
        best, _ = _times_ms(lambda s=sess, x=a: s.run(None, {"A": x}), 5, clock, threads)
        out[key] = 2.0 * n**3 / (best / 1e3) / 1e9
    return out


def efficiency(args: argparse.Namespace) -> int:
    """Time every graph at ``--size`` and relate its achieved GFLOP/s (2 x MACs) to the machine's peaks.

    The peaks are measured before and after the models and the higher of the two is kept (a busy moment can
    only lower a measurement). FP32 graphs are compared with onnxruntime's FP32 MatMul, INT8 graphs with its
    u8 x s8 MatMulInteger, both with the same thread count. ``--clock cpu`` (for a machine others are using)
    times models and peaks by CPU time with spin-waiting off; the efficiency is a ratio of two such times.
    """
    from edge_runtime.model import load_bundle, open_graph

    width, height = (int(v) for v in args.size.lower().split("x"))
    rng = np.random.default_rng(0)
    rows = []
    wanted = tuple(p.strip() for p in args.precisions.split(",") if p.strip())
    load = [round(v, 2) for v in os.getloadavg()]
    before = _peaks(args.threads, args.clock)
    print(json.dumps({"peaks_before": before}), flush=True)
    for task, name, folder in find_bundles(Path(args.models), None):
        present = graph_precisions(folder, task, wanted)
        for graph_name in TASK_GRAPHS[task]:
            for precision in [p for p, graphs in present.items() if graphs[graph_name] == p]:
                graph = open_graph(folder, graph_name, precision, threads=args.threads)
                if args.clock == "cpu":
                    bundle = load_bundle(folder)
                    model = bundle.read_verified(bundle.entry(graph_name, precision)["name"])
                    graph.session = _no_spin_session(model, args.threads)
                macs = int(graph.info.metadata.get("edgeae.macs_per_pixel") or 0)
                if graph_name == "decoder":
                    m = graph.info.meta_int("edgeae.latent.channels", 1)
                    stride = graph.info.meta_int("edgeae.latent.stride", 16)
                    feed = {"latent": rng.integers(-3, 4, (1, m, height // stride, width // stride)).astype(np.int32)}
                else:
                    c = graph.frame_channels()
                    feed = {"frame": rng.integers(0, 256, (1, height, width, c), dtype=np.uint8)}
                best, median = _times_ms(lambda g=graph, f=feed: g.run(f), args.repeat, args.clock, args.threads)
                gflops = 2.0 * macs * width * height / (best / 1e3) / 1e9 if macs else None
                rows.append(
                    {
                        "bundle": name,
                        "graph": graph_name,
                        "precision": precision,
                        "macs_per_pixel": macs,
                        "best_ms": round(best, 2),
                        "median_ms": round(median, 2),
                        "gflops": round(gflops, 1) if gflops else None,
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    after = _peaks(args.threads, args.clock)
    peak = {
        k: max(v, after[k]) if isinstance(v, float) and isinstance(after.get(k), float) else v
        for k, v in before.items()
    }
    for row in rows:
        ref = peak["ort_int8_gops"] if row["precision"] == "int8" else peak["ort_fp32_gflops"]
        row["efficiency"] = round(row["gflops"] / ref, 3) if ref and row["gflops"] else None
    report = {
        "context": context(args.threads),
        "size": [width, height],
        "clock": args.clock,
        "load_average_at_start": load,
        "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
        "peaks": peak,
        "peaks_before": before,
        "peaks_after": after,
        "rows": rows,
    }
    text = json.dumps(report, indent=2) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_video = sub.add_parser("video", help="write the synthetic test video (lossless FFV1 .mkv)")
    p_video.add_argument("path")
    p_video.add_argument("--frames", type=int, default=DEFAULT_FRAMES)
    p_video.add_argument("--size", default=f"{DEFAULT_SIZE[0]}x{DEFAULT_SIZE[1]}", help="WxH")
    p_run = sub.add_parser("run", help="run every bundle on the video and write OUT/results.json")
    p_run.add_argument("--video", required=True)
    p_run.add_argument("--models", default="models")
    p_run.add_argument("--out", required=True)
    p_run.add_argument("--precisions", default=",".join(PRECISIONS))
    p_run.add_argument("--bundles", default="", help="comma-separated bundle names (default: all)")
    p_run.add_argument("--threads", type=int, default=1)
    p_run.add_argument("--cross", default="", help="the other side's OUT: decode its differing .eae streams")
    p_eff = sub.add_parser("efficiency", help="time every graph at --size and compare with the machine's peak")
    p_eff.add_argument("--models", default="models")
    p_eff.add_argument("--size", default="640x480", help="WxH")
    p_eff.add_argument("--threads", type=int, default=2)
    p_eff.add_argument("--repeat", type=int, default=20)
    p_eff.add_argument("--precisions", default=",".join(PRECISIONS))
    p_eff.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                       help="cpu: CPU time without spin-waiting, for a machine other processes are using")  # fmt: skip
    p_eff.add_argument("--out", default="")
    args = parser.parse_args(argv)
    if args.command == "video":
        width, height = (int(v) for v in args.size.lower().split("x"))
        hashes = write_video(Path(args.path), args.frames, (width, height))
        print(f"wrote {args.path}: {len(hashes)} frames {width}x{height}")
        return 0
    if args.command == "run":
        return run(args)
    return efficiency(args)


if __name__ == "__main__":
    sys.exit(main())
