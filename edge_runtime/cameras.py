"""Several cameras in one process: `edgeae run --config cameras.toml` (docs/cameras.md).

One thread per camera runs the one frame loop (:func:`edge_runtime.pipeline.run_loop`) with its own source
(latest frame wins on live sources), task state (hysteresis, adaptation) and sinks; the onnxruntime session of a
model is shared by every camera that uses it (onnxruntime runs one session from several threads, and releases the
GIL while it computes, so the cameras' inferences overlap). With ``batch`` on, or ``"auto"`` where it measures
faster, frames of the same size from cameras of one model are run in one call (:mod:`edge_runtime.batching`); each
camera keeps its own post-processing, alarm state and outputs. One camera lost never stops the others; the run exits
5 only when every camera is lost. SIGTERM/SIGHUP/Ctrl-C stop every camera and finalise every output.

Events of all cameras go to one log (each line carries ``camera``) and, with ``[mqtt]``, to a broker through a
durable spool per camera (:mod:`edge_runtime.mqtt`).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from edge_runtime.errors import EdgeAEError, SourceLostError, UsageError
from edge_runtime.outputs import EventsSink, StatusSink, VideoSink, ViewSink, check_output, loop_metrics, write_json

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10 (Ubuntu 22.04, JetPack 6): JSON configs only
    tomllib = None  # type: ignore[assignment]

CAMERA_NAME = "[A-Za-z0-9_-]{1,64}"


@dataclass(frozen=True)
class CameraConfig:
    name: str
    source: str
    model: str
    precision: str = "auto"  # as `edgeae run`: --device auto picks the fastest verified provider and graph
    device: str = "auto"
    threads: int | None = None
    threshold: float | None = None  # overrides the bundle's calibrated threshold (anomaly models)
    adapt: bool = False
    record: str | None = None
    max_frames: int | None = None
    open_timeout: float = 5.0
    read_timeout: float = 5.0
    reconnects: int = 5


@dataclass(frozen=True)
class MqttConfig:
    url: str
    spool: str
    username: str | None = None
    password_env: str | None = None
    password_file: str | None = None
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    prefix: str = "edgeae"


@dataclass(frozen=True)
class RunConfig:
    cameras: tuple[CameraConfig, ...]
    events: str | None = None
    stats: str | None = None
    serve: str | None = None
    token_env: str = "EDGEAE_TOKEN"
    insecure: bool = False
    clips: str | None = None  # a folder; each camera's clips in its own subfolder
    pre_roll: float = 5.0
    post_roll: float = 5.0
    clips_max_mb: float = 500.0
    mqtt: MqttConfig | None = None
    batch: str = "auto"  # "auto", "on" or "off" (the file's "auto", true or false): edge_runtime.batching
    path: str = ""


def _check_keys(table: Any, cls: type, where: str, extra: frozenset[str] = frozenset()) -> dict:
    if not isinstance(table, dict):
        raise UsageError(f"{where}: expected a table")
    known = {f.name for f in fields(cls)} | extra
    unknown = sorted(set(table) - known)
    if unknown:
        raise UsageError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")
    return table


def _camera(table: Any, defaults: dict, where: str) -> CameraConfig:
    import re

    values = {**defaults, **_check_keys(table, CameraConfig, where)}
    for key in ("name", "source", "model"):
        if not isinstance(values.get(key), str) or not values[key]:
            raise UsageError(f"{where}: key {key!r} is missing or not a string")
    if not re.fullmatch(CAMERA_NAME, values["name"]):
        raise UsageError(f"{where}: name {values['name']!r} must match {CAMERA_NAME}")
    try:
        return CameraConfig(**values)
    except TypeError as exc:
        raise UsageError(f"{where}: {exc}") from None


def _read(path: Path) -> dict:
    import json

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read ({exc})") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise UsageError(f"{path}: not valid JSON ({exc})") from None
    elif tomllib is None:
        raise UsageError(f"{path}: TOML needs Python 3.11 or newer; write the same tables as a .json file")
    else:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise UsageError(f"{path}: not valid TOML ({exc})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a table at the top")
    return data


def load_config(path: str | Path) -> RunConfig:
    """The camera list of a TOML (or JSON) file; UsageError (exit 2) naming the camera and the key for anything
    wrong."""
    path = Path(path)
    data = _read(path)
    top = _check_keys(data, RunConfig, str(path), frozenset({"camera", "defaults"}))
    defaults = _check_keys(top.get("defaults", {}), CameraConfig, f"{path} [defaults]")
    tables = top.get("camera")
    if not isinstance(tables, list) or not tables:
        raise UsageError(f"{path}: no [[camera]] tables")
    cameras = []
    for i, table in enumerate(tables):
        name = table.get("name", f"#{i + 1}") if isinstance(table, dict) else f"#{i + 1}"
        cameras.append(_camera(table, defaults, f"{path} camera {name}"))
    names = [c.name for c in cameras]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UsageError(f"{path}: camera name {dupes[0]!r} is used twice")
    mqtt = None
    if "mqtt" in top:
        mqtt_table = _check_keys(top["mqtt"], MqttConfig, f"{path} [mqtt]")
        if "url" not in mqtt_table or "spool" not in mqtt_table:
            raise UsageError(f"{path} [mqtt]: keys 'url' and 'spool' are required")
        mqtt = MqttConfig(**mqtt_table)
    rest = {k: v for k, v in top.items() if k not in ("camera", "defaults", "mqtt")}
    if "batch" in rest:
        from edge_runtime.batching import batch_mode

        try:
            rest["batch"] = batch_mode(rest["batch"], str(path))
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    return RunConfig(cameras=tuple(cameras), mqtt=mqtt, path=str(path), **rest)


class _Tagged:
    """An events sink as one camera's sink: its lines carry ``camera``. ``owner``: this camera closes the sink
    (its own MQTT sink) or leaves it to the run (the shared log)."""

    def __init__(self, sink: Any, camera: str, owner: bool = False):
        self.sink, self.camera, self.owner = sink, camera, owner

    def write(self, line: dict, index: int = 0, name: str = "", timestamp: float = 0.0) -> None:
        self.sink.write({**line, "camera": self.camera})

    def close(self) -> None:
        if self.owner:
            self.sink.close()

    def abort(self) -> None:
        if self.owner:
            self.sink.abort()


class _Models:
    """One loaded model (and onnxruntime session) per distinct bundle, precision and device, and with ``batch``
    on or auto one :class:`~edge_runtime.batching.Batcher` per model that can batch (anomaly, denoise)."""

    def __init__(self, batch: str = "off") -> None:
        self._cache: dict[tuple, Any] = {}
        self._lock = threading.Lock()
        self.batch = batch
        self.batchers: dict[tuple, Any] = {}

    @staticmethod
    def _key(cam: CameraConfig) -> tuple:
        return (str(Path(cam.model).resolve()), cam.precision, cam.device)

    def task(self, cam: CameraConfig, shown: bool = True) -> Any:
        from edge_runtime.commands import RunOptions, build_task
        from edge_runtime.model import load_bundle

        key = self._key(cam)
        with self._lock:
            if key not in self._cache:
                bundle = load_bundle(cam.model, hash_graphs=False)  # hashed when the task opens it
                opts = RunOptions(model=cam.model, source=cam.source, precision=cam.precision, device=cam.device,
                                  threads=cam.threads)  # fmt: skip
                shared = build_task(bundle, opts)
                self._batch(key, shared, f"{cam.model} ({cam.precision})")
                self._cache[key] = (bundle, shared)
            bundle, shared = self._cache[key]
            if key in self.batchers:
                self.batchers[key].join()
        return bundle, _own_task(shared, cam, shown)

    def _batch(self, key: tuple, shared: Any, name: str) -> None:
        """Route the shared task's graph through a batcher (the cameras' own tasks copy the routed graph)."""
        holder = getattr(shared, {"anomaly": "scorer", "denoise": "den"}.get(shared.kind, ""), None)
        if self.batch == "off" or holder is None:
            return  # codec tasks run their own feeds: one call per frame
        from edge_runtime.batching import Batcher

        batcher = Batcher(holder.graph, self.batch, name=name)
        holder.graph = batcher.graph_proxy
        self.batchers[key] = batcher

    def batcher(self, cam: CameraConfig) -> Any:
        return self.batchers.get(self._key(cam))


def _own_task(shared: Any, cam: CameraConfig, shown: bool = True) -> Any:
    """A camera's own task over the shared session: its own hysteresis, adaptation and threshold."""
    if shared.kind != "anomaly":
        return shared  # denoise and codec tasks keep no per-camera state but their counters
    from edge_runtime.anomaly import ScoreTask

    scorer = shared.scorer
    if cam.threshold is not None:
        scorer = scorer.with_calibration({"threshold": float(cam.threshold)}, scorer.stats)
    adapter = None
    if cam.adapt:
        from edge_runtime.adapt import Adapter

        if scorer.stats is None:
            raise UsageError(f"camera {cam.name}: adapt needs a model calibrated on this camera ({cam.model})")
        adapter = Adapter(scorer.stats)
    return ScoreTask(scorer, smooth=True, annotate=shown, adapter=adapter)


@dataclass
class _Camera:
    cfg: CameraConfig
    task: Any = None
    bundle: Any = None
    source: Any = None
    thread: threading.Thread | None = None
    result: Any = None
    error: BaseException | None = None
    stats: dict = field(default_factory=dict)
    batcher: Any = None  # the model's Batcher, told when this camera's loop ends
    live: Any = None  # the LoopResult the camera's loop fills while it runs (for /metrics)


def _routes(cam: _Camera, shared: dict[str, Any], cfg: RunConfig) -> list[Any]:
    from edge_runtime.pipeline import Route

    routes = []
    if cam.cfg.record:
        check_output(cam.cfg.record, "file", [cam.cfg.source])
        routes.append(Route(VideoSink(cam.cfg.record, fps=cam.source.fps or 25.0), "view"))
    event_sinks = []
    if "events" in shared:
        event_sinks.append(_Tagged(shared["events"], cam.cfg.name))
    if cfg.mqtt is not None:
        event_sinks.append(_Tagged(_mqtt_sink(cfg.mqtt, cam.cfg.name), cam.cfg.name, owner=True))
    if cfg.clips:  # before the event sinks: a clip's last line comes before they close
        from edge_runtime.commands import clip_routes

        def emit(line: dict) -> None:
            for sink in event_sinks:
                sink.write(line)

        routes.extend(clip_routes(cfg.clips, cam.cfg.name, cfg, emit=emit))
    routes.extend(Route(sink, "event") for sink in event_sinks)
    if "server" in shared:
        routes.append(Route(ViewSink(shared["server"], camera=cam.cfg.name, owner=False), "view"))
        routes.append(Route(StatusSink(shared["server"], cam.cfg.name), "event"))
    return routes


def _mqtt_sink(m: MqttConfig, camera: str) -> Any:
    from edge_runtime.mqtt import MqttSink

    Path(m.spool).mkdir(parents=True, exist_ok=True)
    return MqttSink(m.url, camera, spool_path=Path(m.spool) / f"{camera}.sqlite", username=m.username,
                    password_env=m.password_env, password_file=m.password_file, ca_file=m.ca, cert_file=m.cert,
                    key_file=m.key, prefix=m.prefix)  # fmt: skip


def _run_camera(cam: _Camera, shared: dict[str, Any], cfg: RunConfig, stop: threading.Event) -> None:
    from edge_runtime.commands import _base_stats
    from edge_runtime.pipeline import run_loop

    try:
        routes = _routes(cam, shared, cfg)
        start = {"task": cam.bundle.task, "model": cam.cfg.model, "source": cam.source.description}
        cam.result = run_loop(cam.source, cam.task, routes, max_frames=cam.cfg.max_frames, start=start, stop=stop,
                              result=cam.live)  # fmt: skip
        cam.stats = {"camera": cam.cfg.name, "source": cam.source.description, **_base_stats(cam.result, cam.source),
                     **cam.task.summary(), "lost": cam.result.lost is not None}  # fmt: skip
    except BaseException as exc:  # noqa: BLE001 - reported by the main thread; one camera never stops the others
        cam.error = exc
        cam.stats = {"camera": cam.cfg.name, "error": str(exc)}
        if cam.source is not None:
            cam.source.close()
    finally:
        if cam.batcher is not None:
            cam.batcher.leave()  # the others' calls no longer wait for this camera's frames


def _open(cameras: list[_Camera], models: _Models, cfg: RunConfig) -> None:
    from edge_runtime.sources import open_source

    for cam in cameras:
        c = cam.cfg
        cam.bundle, cam.task = models.task(c, shown=bool(c.record or cfg.serve or cfg.clips))
        cam.batcher = models.batcher(c)
        try:
            with _signals_to_main_thread():
                cam.source = open_source(c.source, open_timeout=c.open_timeout, read_timeout=c.read_timeout,
                                         stale_after=max(c.read_timeout, 1.0), max_reconnects=c.reconnects,
                                         max_side=cam.task.max_side)  # fmt: skip
        except EdgeAEError as exc:
            raise type(exc)(f"camera {c.name}: {exc}", exc.exit_code) from None


@contextlib.contextmanager
def _signals_to_main_thread():
    """Threads started in the block (a source's capture threads) never receive SIGTERM/SIGHUP/SIGINT: the kernel
    delivers them to the main thread, whose handler stops every camera, instead of interrupting a capture's read
    (FFmpeg takes an interrupted network read for the end of the stream)."""
    stops = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, stops)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _shared_outputs(cfg: RunConfig) -> dict[str, Any]:
    import os

    shared: dict[str, Any] = {}
    if cfg.events:
        check_output(cfg.events, "file")
        shared["events"] = EventsSink(cfg.events)
    if cfg.serve:
        from edge_runtime.commands import parse_host_port
        from edge_runtime.serve import ViewServer

        host, port = parse_host_port(cfg.serve)
        server = ViewServer(host, port, token=os.environ.get(cfg.token_env) or None, insecure=cfg.insecure)
        server.start()
        for url in server.urls():
            print(f"edgeae: view page: {url}", file=sys.stderr, flush=True)
        shared["server"] = server
    return shared


def run_cameras(cfg: RunConfig, stop: threading.Event | None = None) -> dict[str, Any]:
    """Run every camera of ``cfg`` until each ends, is lost, or a stop signal (or ``stop``) ends them all.

    Returns ``{"cameras": {name: stats}, "exit_code": ...}``: 0 when every camera ended normally, 5 when all were
    lost, the signal's code when stopped; the first camera error (its own exit code) otherwise.
    """
    from edge_runtime.pipeline import LoopResult, stop_signals

    stop = stop or threading.Event()
    cameras = [_Camera(c, live=LoopResult()) for c in cfg.cameras]
    shared = _shared_outputs(cfg)
    if "server" in shared:
        shared["server"].set_metrics(
            lambda: {
                c.cfg.name: loop_metrics(c.live, c.source, c.task)
                for c in cameras
                if c.source is not None and c.task is not None
            }
        )
    t0 = time.perf_counter()
    models = _Models(cfg.batch)
    try:
        _open(cameras, models, cfg)
        with _signals_to_main_thread():
            for batcher in models.batchers.values():
                batcher.start()
        for cam in cameras:
            cam.thread = threading.Thread(target=_run_camera, args=(cam, shared, cfg, stop), daemon=True,
                                          name=f"edgeae-camera-{cam.cfg.name}")  # fmt: skip
            with _signals_to_main_thread():
                cam.thread.start()
        with stop_signals():
            try:
                while any(c.thread.is_alive() for c in cameras):
                    time.sleep(0.1)
            except KeyboardInterrupt as exc:
                stop.signum = getattr(exc, "signum", 2)  # type: ignore[attr-defined]
                stop.set()
                for cam in cameras:  # a camera waiting for a frame wakes up and ends
                    cam.source.close()
        for cam in cameras:
            cam.thread.join(timeout=30)
    finally:
        stop.set()
        for cam in cameras:
            if cam.source is not None:
                cam.source.close()
        for batcher in models.batchers.values():
            batcher.close()
        if "events" in shared:
            shared["events"].close()
        if "server" in shared:
            shared["server"].stop()
    return _summary(cfg, cameras, stop, time.perf_counter() - t0, models)


def _summary(cfg: RunConfig, cameras: list[_Camera], stop: threading.Event, elapsed: float,
             models: _Models) -> dict[str, Any]:  # fmt: skip
    lost = [c for c in cameras if isinstance(c.error, SourceLostError) or (c.result and c.result.lost)]
    errors = [c for c in cameras if c.error is not None and not isinstance(c.error, SourceLostError)]
    code = 0
    if getattr(stop, "signum", None):
        code = 128 + int(stop.signum)  # type: ignore[attr-defined]  # 130 / 143 / 129
    elif errors:
        code = getattr(errors[0].error, "exit_code", 1)
    elif lost and len(lost) == len(cameras):
        code = SourceLostError.exit_code
    out = {"config": cfg.path, "elapsed_s": round(elapsed, 3), "exit_code": code,
           "cameras": {c.cfg.name: c.stats for c in cameras},
           "cameras_lost": [c.cfg.name for c in lost],
           "batching": {b.name: b.summary() for b in models.batchers.values()}}  # fmt: skip
    if errors:
        out["error"] = f"camera {errors[0].cfg.name}: {errors[0].error}"
    if cfg.stats:
        write_json(cfg.stats, out)
    return out
