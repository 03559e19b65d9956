"""Many cameras on one box (issue 18): one `edgeae run --config` process for N cameras against N separate
`edgeae run` processes (one camera each) and against one process running one camera flat out, measured side by
side in the same run (the configurations interleaved, round after round); and resident memory over 10,000 frames
per camera with N cameras.

    python -m benchmarks.cameras_bench --out runs/cameras-bench

Cameras: MJPEG over HTTP on loopback (the standard-library pattern of tests/mjpeg_server.py), each paced at
``--fps`` by the clock and serving pre-encoded JPEGs of a textured scene with a moving square, so that the cameras
cost the measured processes almost nothing. Every configuration runs the real CLI in a subprocess; a camera's
processed frames/s are its ``frame`` event lines whose wall time falls in the measurement window (after
``--warmup`` seconds from the moment every camera has delivered a frame, and after ``batch = "auto"`` has made its
choice), divided by ``--seconds``.

Configurations: ``batch_on`` / ``batch_off`` / ``batch_auto`` (one process, ``batch = true / false / "auto"``),
``separate`` (N processes, one camera each, side by side), ``one_flat_out`` (one process, one camera: a video file
of the same scene read as fast as the model runs). Goals (issue 18): the one-process aggregate >= 1.3x the N
separate processes and >= 1.0x one camera flat out; resident memory within 30 MB of its value after the first 5 %
of ``--mem-frames`` frames per camera (N video files read flat out).

Writes ``cameras_bench.json``, ``cameras_bench.md`` and ``rss.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
CONFIGS = ("batch_on", "batch_off", "batch_auto", "separate", "one_flat_out")
BATCH = {"batch_on": "true", "batch_off": "false", "batch_auto": '"auto"'}
GOAL_VS_SEPARATE = 1.3
GOAL_VS_FLAT_OUT = 1.0
GOAL_RSS_MB = 30.0
AUTO_LINE = "edgeae: batch auto for "


# ------------------------------------------------------------------------------------------------------------
# The scene and the cameras


def scene_frames(n: int, size: tuple[int, int], seed: int) -> list[np.ndarray]:
    """``n`` frames (H, W, 3) uint8 BGR of a smooth textured background with a bright square moving across."""
    width, height = size
    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.integers(0, 256, (max(2, height // 16), max(2, width // 16), 3), dtype=np.uint8),
                      (width, height), interpolation=cv2.INTER_CUBIC)  # fmt: skip
    side = max(2, min(width, height) // 8)
    frames = []
    for k in range(n):
        f = base.copy()
        x = (k * max(1, width // 50)) % max(1, width - side)
        y = (height - side) // 2
        f[y : y + side, x : x + side] = (230, 230, 230)
        frames.append(f)
    return frames


def encode_jpegs(frames: list[np.ndarray], quality: int = 90) -> list[bytes]:
    return [cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes() for f in frames]


class PacedMjpeg:
    """A multipart/x-mixed-replace MJPEG camera on 127.0.0.1 sending ``jpegs`` in a loop at ``fps`` by the clock."""

    def __init__(self, jpegs: list[bytes], fps: float):
        stopping = self.stopping = threading.Event()

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                t0, k = time.monotonic(), 0
                while not stopping.is_set():
                    jpeg = jpegs[k % len(jpegs)]
                    head = b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpeg)
                    try:
                        self.wfile.write(head + jpeg + b"\r\n")
                    except OSError:
                        return
                    k += 1
                    stopping.wait(max(0.0, t0 + k / fps - time.monotonic()))

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/stream.mjpg"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def stop(self) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def write_video(path: Path, frames: list[np.ndarray], total: int, fps: float = 15.0) -> Path:
    """An MJPEG .avi of ``total`` frames cycling through ``frames`` (decodes fast; no codec needed)."""
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"{path}: cannot write an MJPG video")
    for k in range(total):
        writer.write(frames[k % len(frames)])
    writer.release()
    return path


# ------------------------------------------------------------------------------------------------------------
# Running the CLI


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def write_config(path: Path, model: str, precision: str, sources: list[str], events: Path, batch: str,
                 max_frames: int | None = None) -> Path:  # fmt: skip
    lines = [f"events = {json.dumps(str(events))}", f"batch = {batch}", "[defaults]", f"model = {json.dumps(model)}",
             f"precision = {json.dumps(precision)}", 'device = "cpu"',  # as the separate processes get
             "read_timeout = 10.0", "open_timeout = 10.0"]  # fmt: skip
    if max_frames:
        lines.append(f"max_frames = {max_frames}")
    for i, src in enumerate(sources):
        lines += ["[[camera]]", f'name = "cam{i}"', f"source = {json.dumps(src)}"]
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class Proc:
    popen: subprocess.Popen
    events: Path
    log: Path
    camera: str | None  # the camera of a one-camera process; None: the lines carry "camera"
    log_file: Any = None  # the open log (stdout and stderr), closed by _stop


@dataclass
class EventCounter:
    """Frame lines of an events log, read incrementally: ``(camera, wall)`` pairs."""

    path: Path
    camera: str | None
    offset: int = 0
    frames: list[tuple[str, float]] = field(default_factory=list)
    _rest: bytes = b""

    def poll(self) -> list[tuple[str, float]]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except FileNotFoundError:
            return self.frames
        self.offset += len(data)
        data, lines = self._rest + data, []
        *lines, self._rest = data.split(b"\n")
        for raw in lines:
            if b'"type":"frame"' not in raw and b'"type": "frame"' not in raw:
                continue
            line = json.loads(raw)
            self.frames.append((line.get("camera", self.camera), float(line["wall"])))
        return self.frames


def _launch(argv: list[str], events: Path, log: Path, camera: str | None) -> Proc:
    fh = open(log, "w")  # noqa: SIM115 - closed with the process in _stop
    popen = subprocess.Popen([sys.executable, "-m", "edge_runtime.cli", *argv], stdout=fh, stderr=subprocess.STDOUT,
                             env=_env(), cwd=REPO)  # fmt: skip
    return Proc(popen, events, log, camera, fh)


def _stop(procs: list[Proc], timeout: float = 60.0) -> list[int]:
    for p in procs:
        if p.popen.poll() is None:
            p.popen.send_signal(signal.SIGTERM)
    codes = []
    for p in procs:
        try:
            codes.append(p.popen.wait(timeout=timeout))
        except subprocess.TimeoutExpired:
            p.popen.kill()
            codes.append(p.popen.wait())
        p.log_file.close()
    return codes


def measure(procs: list[Proc], cameras: list[str], warmup: float, seconds: float, wait_auto: bool,
            ready_timeout: float = 300.0) -> dict[str, Any]:  # fmt: skip
    """Wait until every camera has a frame (and ``auto`` its choice), then count each camera's frames in the
    window [ready + warmup, ready + warmup + seconds); stop the processes with SIGTERM."""
    counters = [EventCounter(p.events, p.camera) for p in procs]
    t_launch = time.time()
    ready = None
    while time.time() - t_launch < ready_timeout:
        seen = {cam for c in counters for cam, _ in c.poll()}
        auto_done = not wait_auto or any(AUTO_LINE in p.log.read_text(errors="replace") for p in procs)
        if seen >= set(cameras) and auto_done:
            ready = time.time()
            break
        if all(p.popen.poll() is not None for p in procs):
            break
        time.sleep(0.2)
    out: dict[str, Any] = {"startup_s": round((ready or time.time()) - t_launch, 2)}
    if ready is None:
        out["exit_codes"] = _stop(procs)
        out["error"] = "not every camera delivered a frame" + (" (or auto made no choice)" if wait_auto else "")
        out["log_tail"] = procs[0].log.read_text(errors="replace")[-2000:]
        return out
    t_a = ready + warmup
    t_b = t_a + seconds
    cpu = []
    for t in (t_a, t_b, t_b + 0.5):
        while time.time() < t and any(p.popen.poll() is None for p in procs):
            time.sleep(min(0.2, max(0.0, t - time.time())))
        cpu.append(sum(cpu_seconds(p.popen.pid) or 0.0 for p in procs))
    exit_codes = _stop(procs)
    per_camera = dict.fromkeys(cameras, 0)
    for c in counters:
        for cam, wall in c.poll():
            if t_a <= wall < t_b and cam in per_camera:
                per_camera[cam] += 1
    out.update({"window_s": seconds, "window_wall": [t_a, t_b],
                "events": [str(p.events) for p in procs], "frames": per_camera,
                "fps": {cam: round(n / seconds, 3) for cam, n in per_camera.items()},
                "aggregate_fps": round(sum(per_camera.values()) / seconds, 3), "exit_codes": exit_codes,
                "cpu_s": round(cpu[1] - cpu[0], 3)})  # fmt: skip
    if out["cpu_s"] > 0:  # frames per CPU second of the measured processes: what contention on the box leaves out
        out["frames_per_cpu_s"] = round(sum(per_camera.values()) / out["cpu_s"], 3)
    if wait_auto:
        for p in procs:
            lines = [x for x in p.log.read_text(errors="replace").splitlines() if AUTO_LINE in x]
            out["auto_choice"] = lines[0] if lines else None
    return out


def run_config(kind: str, work: Path, tag: str, args: argparse.Namespace, urls: list[str], video: Path,
               ) -> dict[str, Any]:  # fmt: skip
    """One configuration for one round; returns :func:`measure`'s dict plus ``config``."""
    folder = work / f"{tag}-{kind}"
    folder.mkdir(parents=True)
    if kind in BATCH:
        events = folder / "events.jsonl"
        cfg = write_config(folder / "cameras.toml", args.model, args.precision, urls, events, BATCH[kind])
        procs = [_launch(["run", "--config", str(cfg)], events, folder / "log.txt", None)]
        cameras = [f"cam{i}" for i in range(len(urls))]
    elif kind == "separate":
        procs = [_launch(["run", args.model, "--source", url, "--device", "cpu", "--precision", args.precision,
                          "--events",
                          str(folder / f"events{i}.jsonl"), "--read-timeout", "10", "--open-timeout", "10"],
                         folder / f"events{i}.jsonl", folder / f"log{i}.txt", f"cam{i}")
                 for i, url in enumerate(urls)]  # fmt: skip
        cameras = [f"cam{i}" for i in range(len(urls))]
    else:
        events = folder / "events.jsonl"
        argv = [
            "run",
            args.model,
            "--source",
            str(video),
            "--device",
            "cpu",
            "--precision",
            args.precision,
            "--events",
            str(events),
        ]
        procs = [_launch(argv, events, folder / "log.txt", "cam0")]
        cameras = ["cam0"]
    res = measure(procs, cameras, args.warmup, args.seconds, wait_auto=kind == "batch_auto")
    return {"config": kind, **res}


# ------------------------------------------------------------------------------------------------------------
# Memory


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process (all its threads) from /proc, None once it has gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> tuple[float, int] | None:
    """(VmRSS in MB, threads) of a process from /proc, None once it has gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    try:
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["Threads"])
    except (KeyError, ValueError):
        return None


def memory_run(work: Path, args: argparse.Namespace, size: tuple[int, int]) -> dict[str, Any]:
    """N cameras reading N video files of ``--mem-frames`` frames flat out; RSS sampled every ``--mem-every`` s."""
    folder = work / "memory"
    folder.mkdir(parents=True)
    videos = [str(write_video(folder / f"cam{i}.avi", scene_frames(24, size, seed=i), args.mem_frames))
              for i in range(args.cameras)]  # fmt: skip
    events = folder / "events.jsonl"
    cfg = write_config(folder / "cameras.toml", args.model, args.precision, videos, events, '"auto"',
                       max_frames=args.mem_frames)  # fmt: skip
    proc = _launch(["run", "--config", str(cfg)], events, folder / "log.txt", None)
    counter = EventCounter(events, None)
    samples = []
    t0 = time.time()
    while proc.popen.poll() is None:
        got = rss_mb(proc.popen.pid)
        frames = len(counter.poll())
        if got is not None and proc.popen.poll() is None:
            samples.append({"t": round(time.time() - t0, 2), "frames": frames, "rss_mb": round(got[0], 2),
                            "threads": got[1]})  # fmt: skip
        time.sleep(args.mem_every)
    code = _stop([proc])[0]
    total = len(counter.poll())
    return {"size": f"{size[0]}x{size[1]}", "cameras": args.cameras, "frames_per_camera": args.mem_frames,
            "frames_processed": total, "exit_code": code, "elapsed_s": round(time.time() - t0, 1),
            **rss_growth(samples, args.cameras * args.mem_frames), "samples": samples}  # fmt: skip


def rss_growth(samples: list[dict[str, Any]], total_frames: int) -> dict[str, Any]:
    """RSS at the first sample past 5 % of the frames, the largest after it, and the difference (the goal)."""
    after = [s for s in samples if s["frames"] >= 0.05 * total_frames]
    if not after:
        return {"rss_at_5pct_mb": None, "rss_max_after_mb": None, "rss_growth_mb": None, "rss_goal_met": None}
    base, peak = after[0]["rss_mb"], max(s["rss_mb"] for s in after)
    threads = [s["threads"] for s in after]
    return {"rss_at_5pct_mb": base, "rss_max_after_mb": peak, "rss_growth_mb": round(peak - base, 2),
            "rss_final_mb": after[-1]["rss_mb"], "threads_min_max_after_5pct": [min(threads), max(threads)],
            "rss_goal_mb": GOAL_RSS_MB, "rss_goal_met": peak - base <= GOAL_RSS_MB}  # fmt: skip


def plot_rss(mem: dict[str, Any], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the bench extra installs it
        return None
    xs = [s["frames"] / max(1, mem["cameras"]) for s in mem["samples"]]
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=110)
    ax.plot(xs, [s["rss_mb"] for s in mem["samples"]], lw=1.2)
    if mem.get("rss_at_5pct_mb") is not None:
        ax.axhline(mem["rss_at_5pct_mb"] + GOAL_RSS_MB, color="r", ls="--", lw=0.8, label="5 % value + 30 MB")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel("frames per camera")
    ax.set_ylabel("resident memory (MB)")
    ax.set_title(f"edgeae run --config, {mem['cameras']} cameras, {mem['size']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------------------
# Summary and report


def _median(values: list[float | None]) -> float | None:
    got = [v for v in values if v is not None]
    return round(statistics.median(got), 3) if got else None


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per configuration: the median over rounds of the aggregate and of each camera's frames/s; the ratios and
    goals from those medians."""
    out: dict[str, Any] = {}
    for kind in CONFIGS:
        runs = [r for r in rounds if r["config"] == kind and "aggregate_fps" in r]
        if not runs:
            continue
        cams = sorted(runs[0]["fps"])
        out[kind] = {"aggregate_fps": round(statistics.median(r["aggregate_fps"] for r in runs), 3),
                     "aggregate_fps_rounds": [r["aggregate_fps"] for r in runs],
                     "per_camera_fps": {c: round(statistics.median(r["fps"][c] for r in runs), 3) for c in cams},
                     "frames_per_cpu_s": _median([r.get("frames_per_cpu_s") for r in runs]),
                     "cpu_share": _median([r["cpu_s"] / r["window_s"] for r in runs]),
                     "rounds": len(runs)}  # fmt: skip
    goals = {}
    for kind in BATCH:
        if kind not in out:
            continue
        for ref, goal in (("separate", GOAL_VS_SEPARATE), ("one_flat_out", GOAL_VS_FLAT_OUT)):
            if ref in out and out[ref]["aggregate_fps"] > 0:
                ratio = out[kind]["aggregate_fps"] / out[ref]["aggregate_fps"]
                goals[f"{kind}_vs_{ref}"] = {"ratio": round(ratio, 3), "goal": goal, "met": ratio >= goal}
    return {"configs": out, "goals": goals}


def markdown(result: dict[str, Any]) -> str:
    a = result["args"]
    lines = [f"# Many cameras: {a['cameras']} cameras at {a['size']}, {a['fps']} frames/s each, {a['model']} "
             f"({a['precision']})", "",
             f"Commit {result['context'].get('git_commit')}, {result['context']['cpu'].get('logical_cores')} cores, "
             f"load average before {result['loadavg_before']}, after {result['loadavg_after']}.", "",
             "| configuration | aggregate frames/s (median; rounds) | per camera frames/s | CPU cores used "
             "| frames per CPU second |", "|---|---|---|---|---|"]  # fmt: skip
    for kind, s in result["summary"]["configs"].items():
        per = ", ".join(f"{v:.2f}" for v in s["per_camera_fps"].values())
        lines.append(f"| {kind} | {s['aggregate_fps']:.2f} ({', '.join(map(str, s['aggregate_fps_rounds']))}) "
                     f"| {per} | {s['cpu_share']} | {s['frames_per_cpu_s']} |")  # fmt: skip
    lines += ["", "| ratio | value | goal | met |", "|---|---|---|---|"]
    for name, g in result["summary"]["goals"].items():
        lines.append(f"| {name} | {g['ratio']:.2f}x | >= {g['goal']}x | {'yes' if g['met'] else 'no'} |")
    choices = [r.get("auto_choice") for r in result["rounds"] if r["config"] == "batch_auto"]
    lines += ["", "batch auto chose: " + "; ".join(str(c) for c in choices)]
    mem = result.get("memory")
    if mem:
        lines += ["", f"Memory: {mem['cameras']} cameras x {mem['frames_per_camera']} frames at {mem['size']} "
                  f"({mem['frames_processed']} processed, {mem['elapsed_s']} s): RSS {mem['rss_at_5pct_mb']} MB after "
                  f"5 %, max after {mem['rss_max_after_mb']} MB, growth {mem['rss_growth_mb']} MB "
                  f"(goal <= {GOAL_RSS_MB} MB: {'met' if mem['rss_goal_met'] else 'not met'}); threads after 5 %: "
                  f"{mem.get('threads_min_max_after_5pct')}."]  # fmt: skip
    return "\n".join(lines) + "\n"


def _size(text: str) -> tuple[int, int]:
    w, h = (int(v) for v in text.lower().split("x"))
    return w, h


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--model", default="models/anomaly")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--cameras", type=int, default=4)
    ap.add_argument("--size", default="640x480", help="camera frames WxH")
    ap.add_argument("--fps", type=float, default=15.0, help="each camera's frame rate")
    ap.add_argument("--seconds", type=float, default=20.0, help="measurement window per configuration and round")
    ap.add_argument("--warmup", type=float, default=5.0, help="seconds after every camera's first frame")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of all configurations, order rotated each round")
    ap.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset of " + ",".join(CONFIGS))
    ap.add_argument("--mem-frames", type=int, default=10000, help="frames per camera of the memory run (0: none)")
    ap.add_argument("--mem-size", default=None, help="frame size of the memory run (default: --size)")
    ap.add_argument("--mem-every", type=float, default=0.5, help="seconds between RSS samples")
    args = ap.parse_args(argv)
    configs = [c for c in args.configs.split(",") if c]
    unknown = sorted(set(configs) - set(CONFIGS))
    if unknown:
        ap.error(f"unknown configuration {unknown[0]!r}")
    from benchmarks.machine import stamp

    size = _size(args.size)
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.out / "work"
    work.mkdir(exist_ok=True)
    load_before = os.getloadavg()
    jpegs = [encode_jpegs(scene_frames(24, size, seed=i)) for i in range(args.cameras)]
    cams = [PacedMjpeg(j, args.fps) for j in jpegs]
    # one camera flat out: the same scene as a file long enough for any window at up to 60 frames/s
    video = work / "flat.avi"
    if args.rounds > 0 and "one_flat_out" in configs:
        write_video(video, scene_frames(24, size, seed=0), int(60 * (args.warmup + args.seconds + 30)))
    rounds = []
    try:
        for r in range(args.rounds):
            order = configs[r % len(configs) :] + configs[: r % len(configs)]
            for kind in order:
                res = run_config(kind, work, f"r{r}", args, [c.url for c in cams], video)
                print(f"round {r} {kind}: {res.get('aggregate_fps', res.get('error'))} frames/s "
                      f"{res.get('fps', '')}", flush=True)  # fmt: skip
                rounds.append({"round": r, **res})
    finally:
        for c in cams:
            c.stop()
    result: dict[str, Any] = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                              "command": "python -m benchmarks.cameras_bench " + " ".join(argv or sys.argv[1:]),
                              "context": stamp(), "loadavg_before": [round(x, 2) for x in load_before],
                              "rounds": rounds, "summary": summarise(rounds)}  # fmt: skip
    if args.mem_frames > 0:
        mem = memory_run(work, args, _size(args.mem_size or args.size))
        result["memory"] = mem
        png = plot_rss(mem, args.out / "rss.png")
        mem["plot"] = str(png) if png else None
        print(f"memory: growth {mem['rss_growth_mb']} MB after 5 % ({mem['frames_processed']} frames)", flush=True)
    result["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    (args.out / "cameras_bench.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "cameras_bench.md").write_text(markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
