"""A small MJPEG view server for headless devices: watch results in a browser, nothing else.

Standard library only. It answers GET (and HEAD) on three paths and nothing more:

* ``/stream.mjpg``: ``multipart/x-mixed-replace`` JPEG frames, newest frame wins for every viewer;
* ``/snapshot.jpg``: the latest JPEG (503 before the first frame);
* ``/health``: JSON with frames published, viewers, uptime.

Any other path is 404 and never a file from disk; any other method is 405. On a non-loopback address it
refuses to start without an access token unless told ``insecure``; with a token every request needs it
(``?token=`` or ``Authorization: Bearer``).

Viewers are capped, and a viewer that does not take a frame within ``SEND_DEADLINE`` seconds is dropped: the
kernel buffer per viewer is kept small (``STREAM_SNDBUF``) so that a client that never reads is noticed after a
few frames, not after megabytes, and frees its slot within seconds. Clients that reset or vanish are routine:
nothing is printed for them; an unexpected error in a handler is one line on stderr, never a traceback.
"""

from __future__ import annotations

import contextlib
import hmac
import http.server
import ipaddress
import json
import os
import select
import socket
import sys
import threading
import time
import urllib.parse
from typing import Any

import cv2
import numpy as np

from edge_runtime.errors import BadDataError, UsageError

TOKEN_ENV = "EDGEAE_TOKEN"
BOUNDARY = "edgeaeframe"
PATHS = ("/stream.mjpg", "/snapshot.jpg", "/health")
# A client that sends no complete request line or header within this long is dropped.
SOCKET_TIMEOUT = 5.0
# A viewer that cannot take a whole frame within this long is dropped, so that clients that never read (or read
# a trickle) cannot hold the viewer slots: a cheap lock-out otherwise.
SEND_DEADLINE = 3.0
# Kernel send buffer asked for each stream (Linux doubles it): a few frames of slack for a viewer on a slow link,
# not the megabytes TCP autotuning would grant a client that never reads.
STREAM_SNDBUF = 256 * 1024
_WAIT_SLICE = 0.5


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


class ViewServer:
    """Serves published frames as MJPEG over HTTP until :meth:`stop`."""

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
        self.max_viewers = max_viewers
        self.jpeg_quality = jpeg_quality

        self._cond = threading.Condition()
        self._jpeg: bytes | None = None
        self._seq = 0
        self._viewers = 0
        self._dropped = 0  # viewers dropped for not taking a frame within SEND_DEADLINE
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

    def stop(self) -> None:
        """Stop serving and drop every viewer; returns within about a second."""
        httpd = self._httpd
        if httpd is None:
            return
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
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

    # ------------------------------------------------------------------------------------------- frames

    def publish(self, frame: np.ndarray) -> None:
        """Encode ``frame`` to JPEG once and wake every viewer; never blocks on viewers.

        frame: (H, W, 3) uint8 BGR, or one channel, (H, W) or (H, W, 1) uint8, shown as gray.
        """
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
            self._jpeg = jpeg
            self._seq += 1
            self._cond.notify_all()

    def health(self) -> dict[str, Any]:
        with self._cond:
            return {
                "frames_published": self._seq,
                "viewers": self._viewers,
                "max_viewers": self.max_viewers,
                "viewers_dropped": self._dropped,
                "uptime_s": round(time.monotonic() - self._started_at, 3) if self._started_at else 0.0,
                "has_frame": self._jpeg is not None,
            }

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

    def _add_viewer(self) -> bool:
        with self._cond:
            if self._stopping or self._viewers >= self.max_viewers:
                return False
            self._viewers += 1
            return True

    def _remove_viewer(self, dropped: bool = False) -> None:
        with self._cond:
            self._viewers -= 1
            self._dropped += dropped

    def _next_jpeg(self, last_seq: int, conn: socket.socket) -> tuple[bytes, int] | None:
        """Block until a frame newer than ``last_seq``; None when stopping or the viewer has gone."""
        with self._cond:
            while True:
                if self._stopping:
                    return None
                if self._jpeg is not None and self._seq != last_seq:
                    return self._jpeg, self._seq
                self._cond.wait(_WAIT_SLICE)
                if self._seq == last_seq and _peer_closed(conn):
                    return None  # frees the viewer slot without waiting for the next frame to fail to send


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
        if path == "/stream.mjpg":
            self._stream(head)
        elif path == "/snapshot.jpg":
            with view._cond:
                jpeg = view._jpeg
            if jpeg is None:
                self._send_text(503, "no frame yet\n", {"Retry-After": "1"}, head)
            else:
                self._send_body(200, "image/jpeg", jpeg, {}, head)
        elif path == "/health":
            body = (json.dumps(view.health()) + "\n").encode()
            self._send_body(200, "application/json", body, {}, head)
        else:
            self._send_text(404, "not found\n", {}, head)

    def _stream(self, head: bool) -> None:
        view = self.server.view
        if head:
            self._start(200, f"multipart/x-mixed-replace; boundary={BOUNDARY}", {})
            self.end_headers()
            return
        if not view._add_viewer():
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
                item = view._next_jpeg(seq, self.connection)
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
            view._remove_viewer(dropped)
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
