"""A standard-library MJPEG camera on loopback (shared/FINDINGS.md, "Network sources"): what edgeae's live sources
and several-camera runs are tested against. No camera exists here; this is read by cv2.VideoCapture like one."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Callable

import cv2
import numpy as np


class MjpegServer:
    """A standard-library HTTP server streaming multipart/x-mixed-replace JPEG frames of ``make_frame(k)``.

    ``per_connection``: None streams until stopped; a list gives the number of frames each successive connection
    gets, after which the connection is held open silently (a stalled stream); later connections get none.
    """

    def __init__(self, make_frame: Callable[[int], np.ndarray], first_id: int = 0, port: int = 0,
                 per_connection: list[int] | None = None, interval: float = 0.02):  # fmt: skip
        self.next_id = first_id
        self.per_connection = per_connection
        self.connections = 0
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):  # noqa: N802
                with outer.lock:
                    conn = outer.connections
                    outer.connections += 1
                limit = None
                if outer.per_connection is not None:
                    limit = outer.per_connection[conn] if conn < len(outer.per_connection) else 0
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                sent = 0
                while not outer.stopping.is_set():
                    if limit is not None and sent >= limit:
                        outer.stopping.wait(0.05)
                        continue
                    with outer.lock:
                        k = outer.next_id
                        outer.next_id += 1
                    jpeg = cv2.imencode(".jpg", make_frame(k), [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
                    try:
                        self.wfile.write(
                            b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpeg)
                            + jpeg
                            + b"\r\n"
                        )
                    except OSError:
                        return
                    sent += 1
                    time.sleep(interval)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/stream.mjpg"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()
