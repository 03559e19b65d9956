"""The MJPEG view server through a real HTTP client: frames, tokens, the address check, paths, methods, caps."""

from __future__ import annotations

import http.client
import json
import time

import cv2
import numpy as np
import pytest

from edge_runtime.errors import USAGE, BadDataError, UsageError
from edge_runtime.serve import ViewServer, is_loopback, token_from_env

H, W = 48, 64
TOKEN = "s3cret-Token_42"


def make_frame(i: int) -> np.ndarray:
    """(48, 64, 3) uint8 BGR: a flat colour per i with a white square, easy to recognise after JPEG."""
    img = np.empty((H, W, 3), np.uint8)
    img[:] = ((30 + 50 * i) % 256, (200 - 40 * i) % 256, 90)
    img[8:24, 4 + 4 * i : 20 + 4 * i] = 255
    return img


def assert_jpeg_of(data: bytes, frame: np.ndarray) -> None:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None, "not a decodable JPEG"
    assert img.shape == frame.shape
    assert np.abs(img.astype(int) - frame).mean() < 4


def request(server: ViewServer, path: str, method: str = "GET", headers: dict | None = None, body: bytes | None = None):
    host, port = server.address
    conn = http.client.HTTPConnection(host, port, timeout=3)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


class StreamReader:
    """A viewer of /stream.mjpg that parses the multipart body part by part."""

    def __init__(self, server: ViewServer, path: str = "/stream.mjpg", headers: dict | None = None):
        host, port = server.address
        self.conn = http.client.HTTPConnection(host, port, timeout=3)
        self.conn.request("GET", path, headers=headers or {})
        self.resp = self.conn.getresponse()
        self.status = self.resp.status
        self.headers = {k.lower(): v for k, v in self.resp.getheaders()}
        ctype = self.headers.get("content-type", "")
        self.boundary = ctype.partition("boundary=")[2].encode()

    def next_part(self) -> bytes:
        while True:
            line = self.resp.readline()
            if not line:
                raise EOFError("stream ended")
            if line.strip() == b"--" + self.boundary:
                break
        length = None
        while True:
            line = self.resp.readline().strip()
            if not line:
                break
            key, _, value = line.partition(b":")
            if key.strip().lower() == b"content-type":
                assert value.strip() == b"image/jpeg"
            if key.strip().lower() == b"content-length":
                length = int(value)
        assert length is not None, "every part carries its Content-Length"
        data = self.resp.read(length)
        assert len(data) == length
        return data

    def close(self) -> None:
        self.resp.close()  # the response owns the socket once the server said the connection will close
        self.conn.close()


@pytest.fixture
def server():
    s = ViewServer("127.0.0.1", 0)
    s.start()
    yield s
    s.stop()


def test_stream_delivers_each_published_frame_as_decodable_jpeg(server):
    server.publish(make_frame(0))
    viewer = StreamReader(server)
    try:
        assert viewer.status == 200
        assert viewer.headers["content-type"].startswith("multipart/x-mixed-replace")
        assert viewer.boundary
        assert viewer.headers["cache-control"] == "no-store"
        assert viewer.headers["x-content-type-options"] == "nosniff"
        assert_jpeg_of(viewer.next_part(), make_frame(0))  # the current frame comes at once
        for i in (1, 2, 3):
            server.publish(make_frame(i))
            assert_jpeg_of(viewer.next_part(), make_frame(i))
    finally:
        viewer.close()


def test_snapshot_and_health(server):
    status, headers, body = request(server, "/snapshot.jpg")
    assert status == 503 and headers["cache-control"] == "no-store"
    status, _, body = request(server, "/health")
    health = json.loads(body)
    assert status == 200 and health["frames_published"] == 0 and health["has_frame"] is False

    server.publish(make_frame(1))
    server.publish(make_frame(2))
    status, headers, body = request(server, "/snapshot.jpg")
    assert status == 200 and headers["content-type"] == "image/jpeg"
    assert headers["x-content-type-options"] == "nosniff" and headers["cache-control"] == "no-store"
    assert int(headers["content-length"]) == len(body)
    assert_jpeg_of(body, make_frame(2))

    status, headers, empty = request(server, "/snapshot.jpg", method="HEAD")
    assert status == 200 and empty == b"" and int(headers["content-length"]) == len(body)

    status, headers, body = request(server, "/health")
    health = json.loads(body)
    assert headers["content-type"] == "application/json"
    assert health["frames_published"] == 2 and health["viewers"] == 0 and health["uptime_s"] >= 0
    assert health["has_frame"] is True


def test_token_is_required_and_checked():
    with ViewServer("127.0.0.1", 0, token=TOKEN) as server:
        server.publish(make_frame(1))
        for path, headers in [
            ("/snapshot.jpg", {}),
            ("/snapshot.jpg?token=wrong", {}),
            ("/snapshot.jpg?token=", {}),
            ("/snapshot.jpg", {"Authorization": "Bearer wrong"}),
            ("/snapshot.jpg", {"Authorization": f"Basic {TOKEN}"}),
            ("/stream.mjpg", {}),
            ("/health", {}),
            ("/nothing-here", {}),
        ]:
            status, got, body = request(server, path, headers=headers)
            assert status == 401, (path, headers)
            assert got["www-authenticate"].startswith("Bearer") and TOKEN.encode() not in body

        status, _, body = request(server, f"/snapshot.jpg?token={TOKEN}")
        assert status == 200
        assert_jpeg_of(body, make_frame(1))
        status, _, body = request(server, "/snapshot.jpg", headers={"Authorization": f"Bearer {TOKEN}"})
        assert status == 200
        assert_jpeg_of(body, make_frame(1))
        viewer = StreamReader(server, f"/stream.mjpg?token={TOKEN}")
        try:
            assert viewer.status == 200
            assert_jpeg_of(viewer.next_part(), make_frame(1))
        finally:
            viewer.close()


def test_non_loopback_needs_a_token_or_insecure():
    with pytest.raises(UsageError) as info:
        ViewServer("0.0.0.0", 0).start()
    msg = str(info.value)
    assert info.value.exit_code == USAGE and "0.0.0.0" in msg and "token" in msg and "\n" not in msg

    for kwargs in ({"insecure": True}, {"token": TOKEN}):
        server = ViewServer("0.0.0.0", 0, **kwargs)
        server.start()
        try:
            assert server.address[1] > 0
            status, _, _ = request(server, "/health", headers={"Authorization": f"Bearer {TOKEN}"})
            assert status == 200
        finally:
            server.stop()


@pytest.mark.parametrize(
    "host, expected",
    [
        ("127.0.0.1", True),
        ("127.4.5.6", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LocalHost", True),
        ("::ffff:127.0.0.1", True),
        ("0.0.0.0", False),
        ("", False),
        ("::", False),
        ("192.168.1.20", False),
        ("10.0.0.1", False),
        ("camera.example.com", False),
        ("localhost.evil.com", False),
    ],
)
def test_loopback_check(host, expected):
    assert is_loopback(host) is expected


def test_token_from_env(monkeypatch):
    monkeypatch.delenv("EDGEAE_TOKEN", raising=False)
    assert token_from_env() is None
    monkeypatch.setenv("EDGEAE_TOKEN", "   ")
    assert token_from_env() is None
    monkeypatch.setenv("EDGEAE_TOKEN", " abc ")
    assert token_from_env() == "abc"


def test_only_its_own_paths_never_a_file(server, tmp_path, monkeypatch):
    marker = "MARKER-7f3a-file-content"
    (tmp_path / "README.md").write_text(marker)
    (tmp_path / "stream.mjpg").mkdir()
    (tmp_path / "stream.mjpg" / "README.md").write_text(marker)
    monkeypatch.chdir(tmp_path)
    server.publish(make_frame(0))
    for path in [
        "/README.md",
        "/index.html",
        "/../etc/passwd",
        "/%2e%2e/%2e%2e/etc/passwd",
        "//etc/passwd",
        "/stream.mjpg/README.md",
        "/stream.mjpg/../README.md",
        "/snapshot.jpg.bak",
        "/health/",
        "/etc/passwd",
        "http://127.0.0.1/README.md",
        "/stream/",
        "/stream/default",
        "/stream/default.mjpg/README.md",
        "/stream/../README.md",
        "/stream/%64efault.mjpg",
        "/stream/nobody.mjpg",
        "/snapshot/nobody.jpg",
        "/snapshot/default.jpeg",
        "/snapshot/" + "a" * 65 + ".jpg",
        "/status.json/",
        "/metrics/README.md",
        "/favicon.ico",
    ]:
        status, headers, body = request(server, path)
        assert status == 404, path
        assert marker.encode() not in body and b"root:" not in body
        assert headers["x-content-type-options"] == "nosniff"
    status, _, body = request(server, "/")  # the page, from memory: never the folder's files
    assert status == 200 and marker.encode() not in body


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "FOO"])
def test_other_methods_are_405(server, method):
    for path in ("/snapshot.jpg", "/stream.mjpg", "/README.md", "/", "/status.json", "/metrics", "/stream/a.mjpg"):
        status, headers, _ = request(server, path, method=method, body=b"x=1")
        assert status == 405, (method, path)
        assert headers["allow"] == "GET, HEAD"


def test_viewer_cap_and_slot_release():
    with ViewServer("127.0.0.1", 0, max_viewers=2) as server:
        server.publish(make_frame(0))
        viewers = [StreamReader(server) for _ in range(2)]
        for v in viewers:
            assert v.status == 200
            v.next_part()
        status, headers, _ = request(server, "/stream.mjpg")
        assert status == 503 and "retry-after" in headers
        status, _, body = request(server, "/health")
        assert json.loads(body)["viewers"] == 2
        status, _, _ = request(server, "/snapshot.jpg")  # snapshots are not capped
        assert status == 200

        viewers.pop().close()
        deadline = time.monotonic() + 3.0
        while True:  # the server notices the closed viewer within its wait slice, without a new frame
            replacement = StreamReader(server)
            if replacement.status == 200 or time.monotonic() > deadline:
                break
            replacement.close()
            time.sleep(0.1)
        try:
            assert replacement.status == 200
            assert_jpeg_of(replacement.next_part(), make_frame(0))
        finally:
            replacement.close()
            viewers[0].close()


def test_stop_is_prompt_and_ends_viewers():
    server = ViewServer("127.0.0.1", 0)
    server.start()
    server.publish(make_frame(0))
    viewer = StreamReader(server)
    viewer.next_part()
    t0 = time.monotonic()
    server.stop()
    assert time.monotonic() - t0 < 1.5
    with pytest.raises((EOFError, OSError, http.client.HTTPException)):
        for _ in range(3):
            viewer.next_part()
    viewer.close()


def test_no_request_logging(server, capfd):
    server.publish(make_frame(0))
    request(server, "/snapshot.jpg")
    request(server, "/missing")
    request(server, "/snapshot.jpg", method="POST")
    time.sleep(0.1)
    out, err = capfd.readouterr()
    assert err == "" and out == ""


def test_bad_frames_and_bad_settings_are_rejected(server):
    with pytest.raises(BadDataError):
        server.publish(np.zeros((H, W, 2), np.uint8))  # one channel or three (test_serve_clients.py)
    with pytest.raises(BadDataError):
        server.publish(np.zeros((0, W), np.uint8))
    with pytest.raises(BadDataError):
        server.publish(np.zeros((H, W, 3), np.float32))
    with pytest.raises(UsageError):
        ViewServer(port=70000)
    with pytest.raises(UsageError):
        ViewServer(max_viewers=0)
    with pytest.raises(UsageError, match="cannot listen"):
        ViewServer("127.0.0.1", server.address[1]).start()


# --------------------------------------------------------------------------------------------- several cameras


def test_each_camera_has_its_own_stream_and_snapshot(server):
    server.publish(make_frame(1), camera="cam1")
    server.publish(make_frame(2), camera="cam-2")
    for path, frame in [
        ("/snapshot/cam1.jpg", make_frame(1)),
        ("/snapshot/cam-2.jpg", make_frame(2)),
        ("/snapshot.jpg", make_frame(1)),  # the single-camera path shows the first camera
    ]:
        status, headers, body = request(server, path)
        assert status == 200 and headers["content-type"] == "image/jpeg", path
        assert_jpeg_of(body, frame)
    viewer = StreamReader(server, "/stream/cam-2.mjpg")
    first = StreamReader(server, "/stream.mjpg")
    try:
        assert viewer.status == 200 and first.status == 200
        assert_jpeg_of(viewer.next_part(), make_frame(2))
        assert_jpeg_of(first.next_part(), make_frame(1))
        server.publish(make_frame(3), camera="cam1")  # another camera's frame is not this viewer's
        server.publish(make_frame(4), camera="cam-2")
        assert_jpeg_of(viewer.next_part(), make_frame(4))
        assert_jpeg_of(first.next_part(), make_frame(3))
    finally:
        viewer.close()
        first.close()
    health = server.health()
    assert health["cameras"] == ["cam1", "cam-2"] and health["frames_published"] == 4


def test_unknown_cameras_and_cameras_without_a_frame(server):
    server.set_status("later", score=1.0)  # known, no frame yet
    assert request(server, "/snapshot/later.jpg")[0] == 503
    assert request(server, "/snapshot/nobody.jpg")[0] == 404
    assert request(server, "/stream/nobody.mjpg")[0] == 404
    assert request(server, "/stream/later.mjpg", method="HEAD")[0] == 200
    viewer = StreamReader(server, "/stream/later.mjpg")
    try:
        assert viewer.status == 200
        server.publish(make_frame(2), camera="later")
        assert_jpeg_of(viewer.next_part(), make_frame(2))
    finally:
        viewer.close()
    for bad in ("", "a/b", "a b", "x" * 65, "caf\u00e9", None, "../x"):
        with pytest.raises(UsageError):
            server.publish(make_frame(0), camera=bad)
        with pytest.raises(UsageError):
            server.set_status(bad, score=1.0)


def test_the_default_stream_waits_for_the_first_camera():
    with ViewServer("127.0.0.1", 0) as server:
        viewer = StreamReader(server, "/stream.mjpg")  # nothing published yet: it waits
        try:
            assert viewer.status == 200
            deadline = time.monotonic() + 2
            while server.health()["viewers"] != 1 and time.monotonic() < deadline:
                time.sleep(0.02)
            server.publish(make_frame(3), camera="first")
            server.publish(make_frame(1), camera="second")
            assert_jpeg_of(viewer.next_part(), make_frame(3))
            assert server.status()["cameras"][0]["viewers"] == 1  # its slot moved to the camera it watches
        finally:
            viewer.close()
        deadline = time.monotonic() + 3
        while server.health()["viewers"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.health()["viewers"] == 0


def test_the_viewer_cap_is_per_camera():
    with ViewServer("127.0.0.1", 0, max_viewers=1) as server:
        server.publish(make_frame(0), camera="a")
        server.publish(make_frame(1), camera="b")
        held = StreamReader(server, "/stream/a.mjpg")
        other = StreamReader(server, "/stream/b.mjpg")
        try:
            assert held.status == 200 and other.status == 200
            held.next_part()
            assert_jpeg_of(other.next_part(), make_frame(1))
            assert request(server, "/stream/a.mjpg")[0] == 503
            assert request(server, "/stream.mjpg")[0] == 503  # the same camera by its old path
            assert server.health()["viewers"] == 2
        finally:
            held.close()
            other.close()


def test_new_paths_need_the_token_too():
    with ViewServer("127.0.0.1", 0, token=TOKEN) as server:
        server.publish(make_frame(1), camera="cam1")
        paths = ["/", "/status.json", "/metrics", "/snapshot/cam1.jpg", "/stream/cam1.mjpg", "/stream/nobody.mjpg"]
        for path in paths:
            for sep_query, headers in [("", {}), ("?token=wrong", {}), ("", {"Authorization": "Bearer x"})]:
                status, got, body = request(server, path + sep_query, headers=headers)
                assert status == 401, (path, sep_query, headers)
                assert got["www-authenticate"].startswith("Bearer") and TOKEN.encode() not in body
        for path in paths[:4]:
            assert request(server, f"{path}?token={TOKEN}")[0] == 200, path
            assert request(server, path, headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200, path
        viewer = StreamReader(server, "/stream/cam1.mjpg", headers={"Authorization": f"Bearer {TOKEN}"})
        try:
            assert viewer.status == 200
            assert_jpeg_of(viewer.next_part(), make_frame(1))
        finally:
            viewer.close()


def test_urls_to_print_never_hold_the_token():
    with ViewServer("127.0.0.1", 0) as server:
        assert server.urls() == [f"http://127.0.0.1:{server.address[1]}/"]
    with ViewServer("127.0.0.1", 0, token=TOKEN) as server:
        (url,) = server.urls()
        assert url == f"http://127.0.0.1:{server.address[1]}/?token=<token>" and TOKEN not in url
    with ViewServer("0.0.0.0", 0, token=TOKEN) as server:
        urls = server.urls()
        assert len(urls) == 2 and urls[1] == f"http://127.0.0.1:{server.address[1]}/?token=<token>"
        assert all(TOKEN not in u for u in urls)
    try:
        server = ViewServer("::1", 0)
        server.start()
    except UsageError:
        pytest.skip("no IPv6 loopback here")
    try:
        assert server.urls() == [f"http://[::1]:{server.address[1]}/"]
    finally:
        server.stop()
