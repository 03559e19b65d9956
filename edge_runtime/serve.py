"""A small view server for headless devices: every camera live in a browser, its status, and Prometheus metrics.

Standard library only (plus OpenCV for the JPEG encoding). It answers GET (and HEAD) on these paths and nothing
more (``docs/view.md``):

* ``/``: an HTML page with every camera's live view, its score, threshold and alarm state;
* ``/stream/<camera>.mjpg``: ``multipart/x-mixed-replace`` JPEG frames, newest frame wins for every viewer;
* ``/snapshot/<camera>.jpg``: the camera's latest JPEG (503 before its first frame);
* ``/stream.mjpg``, ``/snapshot.jpg``: the same for the first camera (the paths of the single-camera server);
* ``/status.json``: every camera's status (what :meth:`ViewServer.set_status` was told, frames, viewers);
* ``/metrics``: Prometheus text format 0.0.4 (``edge_runtime/metrics.py``);
* ``/health``: JSON with frames published, viewers, uptime.

Any other path is 404 and never a file from disk; any other method is 405. On a non-loopback address it
refuses to start without an access token unless told ``insecure``; with a token every request needs it
(``?token=`` or ``Authorization: Bearer``), and the page passes the token it was opened with to its images.

Viewers are capped per camera, and a viewer that does not take a frame within ``SEND_DEADLINE`` seconds is
dropped: the kernel buffer per viewer is kept small (``STREAM_SNDBUF``) so that a client that never reads is
noticed after a few frames, not after megabytes, and frees its slot within seconds. Clients that reset or vanish
are routine: nothing is printed for them; an unexpected error in a handler is one line on stderr, never a
traceback.
"""

from __future__ import annotations

import contextlib
import hmac
import html
import http.server
import ipaddress
import json
import math
import numbers
import os
import re
import secrets
import select
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

import cv2
import numpy as np

from edge_runtime import metrics as prom
from edge_runtime.errors import BadDataError, UsageError

TOKEN_ENV = "EDGEAE_TOKEN"
BOUNDARY = "edgeaeframe"
DEFAULT_CAMERA = "default"
CAMERA_PATTERN = r"[A-Za-z0-9_-]{1,64}"
PATHS = ("/", "/stream.mjpg", "/snapshot.jpg", "/status.json", "/metrics", "/health")
# The page shows this many cameras as MJPEG streams; the rest as snapshots it reloads every second. A browser
# keeps at most 6 HTTP/1.x connections per host, and every stream holds one for good: more streams would starve
# the page's own status requests (and each other).
PAGE_STREAMS = 4
# A client that sends no complete request line or header within this long is dropped.
SOCKET_TIMEOUT = 5.0
# A viewer that cannot take a whole frame within this long is dropped, so that clients that never read (or read
# a trickle) cannot hold the viewer slots: a cheap lock-out otherwise.
SEND_DEADLINE = 3.0
# Kernel send buffer asked for each stream (Linux doubles it): a few frames of slack for a viewer on a slow link,
# not the megabytes TCP autotuning would grant a client that never reads.
STREAM_SNDBUF = 256 * 1024
_WAIT_SLICE = 0.5
_CAMERA_RE = re.compile(CAMERA_PATTERN)
_STREAM_RE = re.compile(rf"/stream/({CAMERA_PATTERN})\.mjpg")
_SNAPSHOT_RE = re.compile(rf"/snapshot/({CAMERA_PATTERN})\.jpg")
_FIELD_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
# Status fields the server fills in itself.
_RESERVED_FIELDS = frozenset({"name", "frames", "has_frame", "frame_age_s", "viewers"})
_MAX_TEXT = 200
_PAGE_CSP = (
    "default-src 'none'; img-src 'self' data:; connect-src 'self'; style-src 'nonce-{n}'; script-src 'nonce-{n}'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def token_from_env() -> str | None:
    """The access token from ``EDGEAE_TOKEN``; None when unset or blank."""
    token = os.environ.get(TOKEN_ENV, "").strip()
    return token or None


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 (also IPv4-mapped) and "localhost"; False for everything else, "" included."""
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False  # another name could resolve anywhere
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def check_camera(name: Any) -> str:
    """``name`` when it is a valid camera name (``[A-Za-z0-9_-]{1,64}``: it goes into paths), else UsageError."""
    if not isinstance(name, str) or not _CAMERA_RE.fullmatch(name):
        raise UsageError(f"view server: a camera name is 1-64 of A-Z a-z 0-9 _ -, got {name!r}")
    return name


def _status_value(camera: str, key: str, value: Any) -> Any:
    """A JSON-safe status value: None, bool, int, finite float (else None) or short text."""
    if value is None:
        return None
    if isinstance(value, str):
        return value[:_MAX_TEXT]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        return value if math.isfinite(value) else None
    raise BadDataError(f"view server: camera {camera} status {key}: expected a number, text or None, got {value!r}")


class _Camera:
    """One camera's latest JPEG, its status fields and its viewers; guarded by the server's lock."""

    def __init__(self, name: str, lock: threading.Lock) -> None:
        self.name = name
        self.cond = threading.Condition(lock)  # shares the server's lock; wakes this camera's viewers only
        self.jpeg: bytes | None = None
        self.seq = 0
        self.published_at = 0.0
        self.viewers = 0
        self.status: dict[str, Any] = {}

    def public(self, now: float) -> dict[str, Any]:
        age = round(now - self.published_at, 3) if self.jpeg is not None else None
        return {"name": self.name, **self.status, "frames": self.seq, "has_frame": self.jpeg is not None,
                "frame_age_s": age, "viewers": self.viewers}  # fmt: skip


class ViewServer:
    """Serves published frames, status and metrics over HTTP until :meth:`stop`.

    The frame loop calls :meth:`publish` with each camera's annotated frame, :meth:`set_status` with its score,
    threshold and alarm state, and once :meth:`set_metrics` with a function that returns every camera's counters
    and latencies (the keys in ``edge_runtime.metrics.CAMERA_METRICS``)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8080,
        *,
        token: str | None = None,
        insecure: bool = False,
        max_viewers: int = 4,
        jpeg_quality: int = 80,
    ) -> None:
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise UsageError(f"view server {host}:{port}: the port must be 0-65535")
        if max_viewers < 1:
            raise UsageError(f"max_viewers must be >= 1, got {max_viewers}")
        if not 1 <= jpeg_quality <= 100:
            raise UsageError(f"jpeg_quality must be 1-100, got {jpeg_quality}")
        self.host = host
        self.port = port
        self.token = token or None
        self.insecure = insecure
        self.max_viewers = max_viewers  # per camera: the page holds one stream of each
        self.jpeg_quality = jpeg_quality

        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)  # wakes viewers waiting for a first camera; guards the rest
        self._cameras: dict[str, _Camera] = {}  # in the order they appeared; the first is the default stream's
        self._waiting_viewers = 0  # viewers of /stream.mjpg before any camera exists
        self._dropped = 0  # viewers dropped for not taking a frame within SEND_DEADLINE
        self._metrics_fn: Callable[[], Mapping[str, Mapping[str, Any]]] | None = None
        self._metrics_errors = 0
        self._connections: set[socket.socket] = set()
        self._stopping = False
        self._started_at = 0.0
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Bind and serve in a background thread. UsageError (exit 2) for an unsafe or unusable address."""
        if self._httpd is not None:
            raise UsageError(f"view server {self.host}:{self.port}: already started")
        if not is_loopback(self.host) and self.token is None and not self.insecure:
            raise UsageError(
                f"view server {self.host}:{self.port}: refusing to serve on a non-loopback address without an access "
                f"token (set {TOKEN_ENV}, or pass --insecure to allow anyone on the network to watch)"
            )
        family = socket.AF_INET6 if ":" in self.host.strip("[]") else socket.AF_INET
        server_class = _Server6 if family == socket.AF_INET6 else _Server
        try:
            httpd = server_class((self.host.strip("[]"), self.port), _Handler)
        except OSError as exc:
            raise UsageError(f"view server {self.host}:{self.port}: cannot listen ({exc.strerror or exc})") from None
        httpd.view = self
        with self._cond:
            self._stopping = False
        self._httpd = httpd
        self._started_at = time.monotonic()
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, name="edgeae-view-server", daemon=True
        )
        self._thread.start()

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) actually bound; the port is the real one when 0 was asked for."""
        if self._httpd is None:
            raise UsageError("the view server is not started")
        host, port = self._httpd.server_address[:2]
        return str(host), int(port)

    def urls(self) -> list[str]:
        """The page's URL(s) to print at start. The token itself is never in them: with a token the URL ends in
        ``?token=<token>``, a placeholder for the reader to fill in (a printed secret ends up in logs and
        journals). A wildcard address gives the host's name and the loopback URL."""
        host, port = self.address
        suffix = "?token=<token>" if self.token else ""
        if host in ("0.0.0.0", "::"):
            hosts = [socket.gethostname(), "127.0.0.1" if host == "0.0.0.0" else "[::1]"]
        else:
            hosts = [f"[{host}]" if ":" in host else host]
        return [f"http://{h}:{port}/{suffix}" for h in hosts]

    def stop(self) -> None:
        """Stop serving and drop every viewer; returns within about a second."""
        httpd = self._httpd
        if httpd is None:
            return
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            for cam in self._cameras.values():
                cam.cond.notify_all()
            conns = list(self._connections)
        # A viewer blocked in send() wakes only when its socket goes away.
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        httpd.shutdown()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(1.0)
        self._httpd = None

    def __enter__(self) -> ViewServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------------- frames, status

    def publish(self, frame: np.ndarray, camera: str = DEFAULT_CAMERA) -> None:
        """Encode ``frame`` to JPEG once and wake the camera's viewers; never blocks on viewers.

        frame: (H, W, 3) uint8 BGR, or one channel, (H, W) or (H, W, 1) uint8, shown as gray. A camera is added
        on its first frame (or status); the first camera added is the one ``/stream.mjpg`` shows."""
        check_camera(camera)
        ok_shape = isinstance(frame, np.ndarray) and (frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] in (1, 3)))
        if not ok_shape or frame.dtype != np.uint8 or frame.size == 0:
            shape = getattr(frame, "shape", None)
            dtype = getattr(frame, "dtype", type(frame).__name__)
            raise BadDataError(f"view server: a frame must be (H, W, 3) BGR or (H, W) gray uint8, got {shape} {dtype}")
        if frame.ndim == 3 and frame.shape[2] == 1:
            frame = frame[:, :, 0]
        if frame.ndim == 2:
            frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
        ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        if not ok:
            raise BadDataError(f"view server: JPEG encoding failed for a {frame.shape} frame")
        jpeg = buf.tobytes()
        with self._cond:
            cam = self._camera(camera)
            cam.jpeg = jpeg
            cam.seq += 1
            cam.published_at = time.monotonic()
            cam.cond.notify_all()

    def set_status(self, camera: str, **fields: Any) -> None:
        """Merge ``fields`` into the camera's status (``/status.json``, the page, ``/metrics``).

        The page shows ``score``, ``threshold``, ``alarm`` (True: red) and ``fps``; any other field is passed on
        in ``/status.json``. Values: None, bool, int, float (NaN/inf become None) or text (cut to 200
        characters). Called with no fields it only adds the camera, so the page lists it before its first frame."""
        check_camera(camera)
        clean = {}
        for key, value in fields.items():
            if not _FIELD_RE.fullmatch(key) or key in _RESERVED_FIELDS:
                raise UsageError(f"view server: camera {camera}: {key!r} is not a status field one may set")
            clean[key] = _status_value(camera, key, value)
        with self._cond:
            self._camera(camera).status.update(clean)

    def set_metrics(self, fn: Callable[[], Mapping[str, Mapping[str, Any]]] | None) -> None:
        """The function ``/metrics`` calls for the frame loop's numbers: ``fn() -> {camera: {key: value}}``.

        Keys (``edge_runtime.metrics.CAMERA_METRICS``): ``fps``, ``frames_processed``, ``frames_dropped``,
        ``reconnects``, ``queue_depth``, ``alarms``; ``inference`` and ``pipeline`` as dicts with ``p50_ms``,
        ``p95_ms``, ``p99_ms`` (the stage clock's summary). It runs on a server thread, once per scrape, so it
        must be quick and thread-safe; when it raises, ``/metrics`` still answers and counts the failure."""
        if fn is not None and not callable(fn):
            raise UsageError("view server: set_metrics takes a function or None")
        with self._cond:
            self._metrics_fn = fn

    def cameras(self) -> list[str]:
        with self._cond:
            return list(self._cameras)

    def _camera(self, name: str) -> _Camera:
        # with self._cond held
        cam = self._cameras.get(name)
        if cam is None:
            cam = self._cameras[name] = _Camera(name, self._lock)
            self._cond.notify_all()  # viewers of /stream.mjpg waiting for a first camera
        return cam

    # ------------------------------------------------------------------------------------------- reports

    def health(self) -> dict[str, Any]:
        with self._cond:
            cams = list(self._cameras.values())
            return {
                "frames_published": sum(c.seq for c in cams),
                "viewers": sum(c.viewers for c in cams) + self._waiting_viewers,
                "max_viewers": self.max_viewers,
                "viewers_dropped": self._dropped,
                "uptime_s": self._uptime(),
                "has_frame": any(c.jpeg is not None for c in cams),
                "cameras": [c.name for c in cams],
            }

    def status(self) -> dict[str, Any]:
        """``/status.json``: every camera in order, with its status fields, frames, frame age and viewers."""
        now = time.monotonic()
        with self._cond:
            return {"uptime_s": self._uptime(), "cameras": [c.public(now) for c in self._cameras.values()]}

    def metrics_text(self) -> str:
        """``/metrics``: the provider's per-camera numbers, the cameras' status, and the server's own counters."""
        with self._cond:
            fn = self._metrics_fn
            statuses = {c.name: dict(c.status) for c in self._cameras.values()}
        families = prom.camera_families({}, statuses)
        if fn is not None:
            try:  # outside the lock: the provider takes its own
                got = fn()
                if not isinstance(got, Mapping):
                    raise TypeError(f"the metrics function returned {type(got).__name__}, not a dict")
                families = prom.camera_families(got, statuses)
            except Exception:
                with self._cond:
                    self._metrics_errors += 1
        with self._cond:
            cams = [(c.name, c.seq, c.viewers) for c in self._cameras.values()]
            own = prom.view_families(cams, self._dropped, self._uptime(), self._metrics_errors)
        return prom.render([*families, *own])

    def _uptime(self) -> float:
        return round(time.monotonic() - self._started_at, 3) if self._started_at else 0.0

    # ------------------------------------------------------------------------------------------- for _Handler

    def _authorized(self, query: str, headers: Any) -> bool:
        if self.token is None:
            return True
        expected = self.token.encode("utf-8")
        candidates = urllib.parse.parse_qs(query, keep_blank_values=True).get("token", [])
        auth = headers.get("Authorization", "")
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer":
            candidates.append(value.strip())
        # Compare against every candidate so timing does not depend on which one was given.
        ok = False
        for candidate in candidates:
            ok |= hmac.compare_digest(candidate.encode("utf-8", "surrogateescape"), expected)
        return ok

    def _add_viewer(self, camera: str | None) -> list[_Camera | None] | None:
        """Take a viewer slot of ``camera`` (None: the first camera, or the wait for one): ``[the camera, or None
        while waiting for a first one]``, which the stream keeps up to date; None when full or stopping."""
        with self._cond:
            if self._stopping:
                return None
            cam = self._cameras.get(camera) if camera else next(iter(self._cameras.values()), None)
            count = cam.viewers if cam is not None else self._waiting_viewers
            if count >= self.max_viewers:
                return None
            if cam is not None:
                cam.viewers += 1
            else:
                self._waiting_viewers += 1
            return [cam]

    def _remove_viewer(self, slot: _Camera | None, dropped: bool = False) -> None:
        with self._cond:
            if slot is not None:
                slot.viewers -= 1
            else:
                self._waiting_viewers -= 1
            self._dropped += dropped

    def _move_slot(self, cam: _Camera) -> None:
        # with self._cond held: a viewer that waited for a first camera now watches it
        self._waiting_viewers -= 1
        cam.viewers += 1

    def _next_jpeg(
        self, camera: str | None, last_seq: int, conn: socket.socket, slot: list[_Camera | None]
    ) -> tuple[bytes, int] | None:
        """Block until ``camera`` (None: the first one) has a frame newer than ``last_seq``; None when stopping or
        the viewer has gone. ``slot[0]`` is the camera whose viewer slot this viewer holds (None while waiting)."""
        with self._cond:
            while True:
                if self._stopping:
                    return None
                cam = self._cameras.get(camera) if camera else next(iter(self._cameras.values()), None)
                if cam is not None and slot[0] is None:
                    self._move_slot(cam)
                    slot[0] = cam
                if cam is not None and cam.jpeg is not None and cam.seq != last_seq:
                    return cam.jpeg, cam.seq
                (cam.cond if cam is not None else self._cond).wait(_WAIT_SLICE)
                unchanged = cam is None or cam.seq == last_seq
                if unchanged and _peer_closed(conn):
                    return None  # frees the viewer slot without waiting for the next frame to fail to send

    def _snapshot(self, camera: str | None) -> tuple[bool, bytes | None]:
        """(the camera exists, its latest JPEG); None names the first camera."""
        with self._cond:
            cam = self._cameras.get(camera) if camera else next(iter(self._cameras.values()), None)
            return cam is not None or camera is None, cam.jpeg if cam is not None else None

    def _has_camera(self, camera: str) -> bool:
        with self._cond:
            return camera in self._cameras

    def page(self) -> tuple[str, str]:
        """The HTML of ``/`` and the nonce its Content-Security-Policy allows for its style and script."""
        nonce = secrets.token_urlsafe(12)
        query = "?token=" + urllib.parse.quote(self.token, safe="") if self.token else ""
        status = self.status()
        tiles = (
            "\n".join(_tile_html(c, query, snapshot=i >= PAGE_STREAMS) for i, c in enumerate(status["cameras"]))
            or '<p class="none">No camera yet.</p>'
        )
        text = (
            _PAGE.replace("{nonce}", nonce)
            .replace("{token}", html.escape(self.token or "", quote=True))
            .replace("{streams}", str(PAGE_STREAMS))
            .replace("{tiles}", tiles)
        )
        return text, nonce


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "–"
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _tile_html(cam: dict[str, Any], query: str, snapshot: bool) -> str:
    """One camera's tile; the page's script keeps its text and class up to date."""
    name = cam["name"]  # [A-Za-z0-9_-]: safe in HTML, a URL and a selector as it is
    alarm = cam.get("alarm")
    state = "ALARM" if alarm is True else ("ok" if alarm is False else "–")
    fps = f" · {cam['fps']:.1f} fps" if isinstance(cam.get("fps"), (int, float)) else ""
    src = f"/snapshot/{name}.jpg{query}" if snapshot else f"/stream/{name}.mjpg{query}"
    kind = "snap" if snapshot else "live"
    return (
        f'<section class="cam{" alarm" if alarm is True else ""}" data-camera="{name}">'
        f'<div class="bar"><b>{name}</b><span class="score">score {_fmt(cam.get("score"))} / '
        f'{_fmt(cam.get("threshold"))}{fps}</span><span class="state">{state}</span></div>'
        f'<img class="{kind}" alt="{name}" src="{html.escape(src, quote=True)}"></section>'
    )


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>edgeae view</title><link rel="icon" href="data:,">
<style nonce="{nonce}">
body{margin:0;font:14px system-ui,sans-serif;background:#111;color:#eee}
header{padding:6px 12px;background:#222;display:flex;gap:12px}
main{display:grid;grid-template-columns:repeat(auto-fill,minmax(360px,1fr));gap:8px;padding:8px}
.cam{background:#000;border:3px solid #333}
.cam.alarm{border-color:#e00}
.cam img{display:block;width:100%;height:auto;min-height:60px}
.bar{display:flex;justify-content:space-between;gap:8px;padding:4px 8px;background:#222}
.state{padding:0 6px;border-radius:3px;background:#444}
.alarm .state{background:#e00;color:#fff;font-weight:bold}
#conn{color:#f80}
</style></head>
<body data-token="{token}" data-streams="{streams}">
<header><b>edgeae</b><span id="conn"></span></header>
<main id="grid">
{tiles}
</main>
<script nonce="{nonce}">
(function () {
  var b = document.body, q = b.dataset.token ? "?token=" + encodeURIComponent(b.dataset.token) : "";
  var grid = document.getElementById("grid"), tiles = {}, streams = +b.dataset.streams;
  grid.querySelectorAll("section.cam").forEach(function (s) { tiles[s.dataset.camera] = s; });
  function fmt(v) {
    return typeof v !== "number" ? "\\u2013" : Math.abs(v) >= 100 ? v.toFixed(0) : String(+v.toPrecision(3));
  }
  function tile(name) {
    if (tiles[name]) return tiles[name];
    var none = grid.querySelector("p.none"); if (none) none.remove();
    var s = document.createElement("section"), bar = document.createElement("div"), img = new Image();
    var live = Object.keys(tiles).length < streams;
    s.className = "cam"; s.dataset.camera = name; bar.className = "bar";
    ["b", "span.score", "span.state"].forEach(function (t) {
      var p = t.split("."), e = document.createElement(p[0]); if (p[1]) e.className = p[1];
      bar.appendChild(e);
    });
    bar.firstChild.textContent = name; img.alt = name; img.className = live ? "live" : "snap";
    img.src = (live ? "/stream/" + name + ".mjpg" : "/snapshot/" + name + ".jpg") + q;
    s.appendChild(bar); s.appendChild(img); grid.appendChild(s);
    return (tiles[name] = s);
  }
  grid.addEventListener("error", function (e) {  // a stream that broke (server restarted): try again
    var img = e.target;
    if (img.className !== "live") return;
    var base = img.src.split(/[?&]r=/)[0];
    setTimeout(function () { img.src = base + (base.indexOf("?") < 0 ? "?" : "&") + "r=" + Date.now(); }, 2000);
  }, true);
  function show(c) {
    var s = tile(c.name), fps = typeof c.fps === "number" ? " \\u00b7 " + c.fps.toFixed(1) + " fps" : "";
    s.classList.toggle("alarm", c.alarm === true);
    s.querySelector(".score").textContent = "score " + fmt(c.score) + " / " + fmt(c.threshold) + fps;
    s.querySelector(".state").textContent = c.alarm === true ? "ALARM" : c.alarm === false ? "ok" : "\\u2013";
    var img = s.querySelector("img.snap");
    if (img && c.has_frame) img.src = "/snapshot/" + c.name + ".jpg" + q + (q ? "&" : "?") + "t=" + Date.now();
  }
  function poll() {
    fetch("/status.json" + q, {cache: "no-store"})
      .then(function (r) { if (!r.ok) throw new Error(r.status); return r.json(); })
      .then(function (d) { d.cameras.forEach(show); document.getElementById("conn").textContent = ""; })
      .catch(function () { document.getElementById("conn").textContent = "no answer from edgeae"; })
      .finally(function () { setTimeout(poll, 1000); });
  }
  poll();
})();
</script>
</body></html>
"""


def _peer_closed(conn: socket.socket) -> bool:
    # A viewer sends nothing after its request, so a readable socket means EOF (or a reset).
    try:
        readable, _, _ = select.select([conn], [], [], 0)
        if not readable:
            return False
        return conn.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    view: ViewServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # The base class prints a traceback for any exception a handler lets out. Clients that reset, vanish
        # or stall are routine on a network and print nothing; anything else is one line.
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            return
        text = " ".join(str(exc).split())[:200]
        print(f"edgeae: view server: {type(exc).__name__} serving {client_address[0]}: {text}", file=sys.stderr)


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(http.server.BaseHTTPRequestHandler):
    # Not SimpleHTTPRequestHandler: nothing here may ever map a path onto the file system.
    server: _Server
    server_version = "edgeae"
    sys_version = ""
    protocol_version = "HTTP/1.0"  # one response per connection; the stream simply ends when the socket closes
    timeout = SOCKET_TIMEOUT

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's signature
        pass  # no per-request lines on stderr; a token in a query string must not end up in logs either

    def setup(self) -> None:
        with contextlib.suppress(OSError):  # before the first byte is sent: it bounds what a stalled viewer buffers
            self.request.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, STREAM_SNDBUF)
        super().setup()
        with self.server.view._cond:
            self.server.view._connections.add(self.connection)

    def finish(self) -> None:
        with self.server.view._cond:
            self.server.view._connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def __getattr__(self, name: str) -> Any:
        # BaseHTTPRequestHandler answers 501 to methods without a do_* method; everything but GET/HEAD is 405.
        if name.startswith("do_"):
            return self._method_not_allowed
        raise AttributeError(name)

    def do_GET(self) -> None:  # noqa: N802 - name fixed by BaseHTTPRequestHandler
        self._route(head=False)

    def do_HEAD(self) -> None:  # noqa: N802
        self._route(head=True)

    def _method_not_allowed(self) -> None:
        self._send_text(405, "method not allowed\n", {"Allow": "GET, HEAD"})

    def _route(self, head: bool) -> None:
        view = self.server.view
        path, _, query = self.path.partition("?")
        if not view._authorized(query, self.headers):
            self._send_text(401, "access token required\n", {"WWW-Authenticate": 'Bearer realm="edgeae"'}, head)
            return
        stream, snapshot = _STREAM_RE.fullmatch(path), _SNAPSHOT_RE.fullmatch(path)
        if path == "/stream.mjpg" or stream:
            self._stream(stream.group(1) if stream else None, head)
        elif path == "/snapshot.jpg" or snapshot:
            self._send_snapshot(snapshot.group(1) if snapshot else None, head)
        elif path == "/":
            text, nonce = view.page()
            extra = {"Content-Security-Policy": _PAGE_CSP.format(n=nonce), "Referrer-Policy": "no-referrer",
                     "X-Frame-Options": "DENY"}  # fmt: skip
            self._send_body(200, "text/html; charset=utf-8", text.encode(), extra, head)
        elif path == "/status.json":
            self._send_body(200, "application/json", (json.dumps(view.status()) + "\n").encode(), {}, head)
        elif path == "/metrics":
            self._send_body(200, prom.CONTENT_TYPE, view.metrics_text().encode(), {}, head)
        elif path == "/health":
            self._send_body(200, "application/json", (json.dumps(view.health()) + "\n").encode(), {}, head)
        else:
            self._send_text(404, "not found\n", {}, head)

    def _send_snapshot(self, camera: str | None, head: bool) -> None:
        known, jpeg = self.server.view._snapshot(camera)
        if not known:
            self._send_text(404, "no such camera\n", {}, head)
        elif jpeg is None:
            self._send_text(503, "no frame yet\n", {"Retry-After": "1"}, head)
        else:
            self._send_body(200, "image/jpeg", jpeg, {}, head)

    def _stream(self, camera: str | None, head: bool) -> None:
        view = self.server.view
        if camera is not None and not view._has_camera(camera):
            self._send_text(404, "no such camera\n", {}, head)
            return
        if head:
            self._start(200, f"multipart/x-mixed-replace; boundary={BOUNDARY}", {})
            self.end_headers()
            return
        slot = view._add_viewer(camera)
        if slot is None:
            self._send_text(503, "too many viewers\n", {"Retry-After": "5"})
            return
        dropped = False
        try:
            self._start(200, f"multipart/x-mixed-replace; boundary={BOUNDARY}", {"Connection": "close"})
            self.end_headers()
            # sendall's timeout bounds the whole call (not each partial send), so this is a per-frame deadline.
            self.connection.settimeout(SEND_DEADLINE)
            seq = 0
            while True:
                item = view._next_jpeg(camera, seq, self.connection, slot)
                if item is None:
                    return
                jpeg, seq = item
                head_bytes = (
                    f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
                ).encode("ascii")
                self.wfile.write(head_bytes + jpeg + b"\r\n")
        except TimeoutError:
            dropped = True  # stalled or too slow for the frames: the slot goes to someone who watches
        except OSError:
            pass  # the viewer went away
        finally:
            view._remove_viewer(slot[0], dropped)
            self.close_connection = True

    def _start(self, status: int, content_type: str, extra: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Cache-Control", "no-store")
        self.send_header("Pragma", "no-cache")
        self.send_header("X-Content-Type-Options", "nosniff")
        for key, value in extra.items():
            self.send_header(key, value)

    def _send_body(self, status: int, content_type: str, body: bytes, extra: dict[str, str], head: bool) -> None:
        self._start(status, content_type, extra)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            with contextlib.suppress(OSError):
                self.wfile.write(body)

    def _send_text(self, status: int, text: str, extra: dict[str, str], head: bool = False) -> None:
        self._send_body(status, "text/plain; charset=utf-8", text.encode(), extra, head)
