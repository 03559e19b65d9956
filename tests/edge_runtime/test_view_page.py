"""The view server's page, ``/status.json`` and ``/metrics``; the page for real in headless Chromium (slow)."""

from __future__ import annotations

import html
import http.client
import json
import math
import re
import shutil
import subprocess
import threading
import time
import urllib.parse
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_runtime import metrics as prom
from edge_runtime.errors import BadDataError, UsageError
from edge_runtime.serve import PAGE_STREAMS, ViewServer

ROOT = Path(__file__).resolve().parents[2]
TOKEN = 'p&q"<s>/=+ t'  # needs escaping in HTML and encoding in a URL


def request(server: ViewServer, path: str, method: str = "GET", headers: dict | None = None):
    conn = http.client.HTTPConnection(*server.address, timeout=3)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


@pytest.fixture
def server():
    s = ViewServer("127.0.0.1", 0)
    s.start()
    yield s
    s.stop()


def frame(bgr: tuple[int, int, int], h: int = 48, w: int = 64) -> np.ndarray:
    img = np.empty((h, w, 3), np.uint8)
    img[:] = bgr
    return img


# --------------------------------------------------------------------------------------------- a strict parser

_NUMBER = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?")
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def _value(text: str) -> float:
    if text in ("NaN", "+Inf", "-Inf"):
        return float(text.replace("Inf", "inf").replace("NaN", "nan"))
    assert _NUMBER.fullmatch(text), f"not a number: {text!r}"
    return float(text)


def _labels(text: str) -> dict[str, str]:
    """``a="x",b="y\\"z"``: names as the format allows, values with only the escapes \\\\, \\" and \\n."""
    out: dict[str, str] = {}
    i = 0
    while i < len(text):
        m = _LABEL.match(text, i)
        assert m, f"bad label name at {text[i:]!r}"
        name = m.group()
        i = m.end()
        assert text[i : i + 2] == '="', f'expected =" after {name!r}'
        i += 2
        value = []
        while True:
            assert i < len(text), "unterminated label value"
            ch = text[i]
            if ch == "\\":
                nxt = text[i + 1 : i + 2]
                assert nxt in ("\\", '"', "n"), f"bad escape \\{nxt}"
                value.append("\n" if nxt == "n" else nxt)
                i += 2
            elif ch == '"':
                i += 1
                break
            else:
                assert ch != "\n"
                value.append(ch)
                i += 1
        assert name not in out, f"label {name!r} twice"
        out[name] = "".join(value)
        if i < len(text):
            assert text[i] == ",", f"expected , at {text[i:]!r}"
            i += 1
            assert i < len(text), "trailing comma"
    return out


def parse_exposition(text: str) -> dict[str, dict]:
    """Prometheus text format 0.0.4, strictly: every line a HELP, a TYPE or a sample; HELP then TYPE once per
    family, before its samples, which are contiguous; no duplicate series; counters end in _total and are finite
    and non-negative. Returns {name: {"type", "help", "samples": [(labels, value)]}}."""
    assert text.endswith("\n") and "\n\n" not in text and "\r" not in text
    families: dict[str, dict] = {}
    current = None
    seen: set[tuple] = set()
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP "):
            name, _, help_ = line[7:].partition(" ")
            assert _NAME.fullmatch(name) and name not in families, line
            assert help_ and not re.search(r"\\[^\\n]", help_.replace("\\\\", "")), line
            families[name] = {"help": help_, "type": None, "samples": []}
            current = name
        elif line.startswith("# TYPE "):
            name, _, type_ = line[7:].partition(" ")
            assert name == current and families[name]["type"] is None, f"TYPE without its HELP: {line}"
            assert type_ in ("counter", "gauge", "summary", "histogram", "untyped"), line
            assert type_ != "counter" or name.endswith("_total"), f"a counter not ending in _total: {line}"
            families[name]["type"] = type_
        else:
            assert not line.startswith("#"), f"unexpected comment: {line}"
            m = re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)", line)
            assert m, f"not a sample line: {line!r}"
            name, labels, value = m.group(1), _labels(m.group(2) or ""), _value(m.group(3))
            assert name == current and families[name]["type"], f"sample outside its family: {line}"
            key = (name, tuple(sorted(labels.items())))
            assert key not in seen, f"series twice: {line}"
            seen.add(key)
            if families[name]["type"] == "counter":
                assert math.isfinite(value) and value >= 0, line
            families[name]["samples"].append((labels, value))
    for name, fam in families.items():
        assert fam["type"] and fam["samples"], f"{name}: no TYPE or no samples"
    return families


@pytest.mark.parametrize(
    "bad",
    [
        '# HELP x_total a\n# TYPE x_total counter\nx_total{camera="a} 1\n',
        "# HELP x a\n# TYPE x gauge\nx 1.2.3\n",
        "x 1\n",
        "# HELP x a\n# TYPE x counter\nx 1\n",
        '# HELP x a\n# TYPE x gauge\nx{a="1"} 1\nx{a="1"} 2\n',
        '# HELP x a\n# TYPE x gauge\nx{a="\\t"} 1\n',
        "# HELP x a\n# TYPE x gauge\nx inf\n",
        "# HELP x a\n# TYPE x gauge\nx 1",
        "# HELP x a\n# TYPE x gauge\n\nx 1\n",
        "# HELP x_total a\n# TYPE x_total counter\nx_total -1\n",
        '# HELP x a\n# TYPE x gauge\nx{1a="1"} 1\n',
    ],
)
def test_the_parser_rejects_what_is_not_the_format(bad):
    with pytest.raises(AssertionError):
        parse_exposition(bad)


# --------------------------------------------------------------------------------------------- /metrics


def provider() -> dict:
    lat = {"n": 100, "p50_ms": 12.5, "p95_ms": 20.0, "p99_ms": 31.25, "mean_ms": 13.0}
    return {
        "cam1": {"fps": 14.9, "frames_processed": 1200, "frames_dropped": 3, "reconnects": 1, "queue_depth": 2,
                 "alarms": 4, "inference": lat, "pipeline": {"p50_ms": 40.0, "p95_ms": 55.0, "p99_ms": 70.0}},
        "cam2": {"fps": 7.5, "frames_processed": 600, "frames_dropped": 0, "reconnects": 0, "queue_depth": 0,
                 "alarms": 0, "inference": lat, "pipeline": lat},
    }  # fmt: skip


def sample(fams: dict, name: str, **labels: str) -> float:
    (value,) = [v for got, v in fams[name]["samples"] if got == labels]
    return value


def test_metrics_are_the_documented_families_with_their_values(server):
    server.publish(frame((0, 0, 255)), camera="cam1")
    server.publish(frame((0, 255, 0)), camera="cam2")
    server.publish(frame((0, 255, 0)), camera="cam2")
    server.set_status("cam1", score=4.5, threshold=3.0, alarm=True)
    server.set_status("cam2", score=1.25, threshold=3.0, alarm=False)
    server.set_metrics(provider)
    status, headers, body = request(server, "/metrics")
    assert status == 200 and headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    fams = parse_exposition(body.decode("utf-8"))

    expected_types = {spec.name: spec.type for spec in (*prom.CAMERA_METRICS, *prom.STATUS_METRICS)}
    for name, type_ in expected_types.items():
        assert fams[name]["type"] == type_, name
    assert sample(fams, "edgeae_frames_per_second", camera="cam1") == 14.9
    assert sample(fams, "edgeae_frames_processed_total", camera="cam2") == 600
    assert sample(fams, "edgeae_frames_dropped_total", camera="cam1") == 3
    assert sample(fams, "edgeae_reconnects_total", camera="cam1") == 1
    assert sample(fams, "edgeae_queue_depth", camera="cam1") == 2
    assert sample(fams, "edgeae_alarms_total", camera="cam1") == 4
    assert sample(fams, "edgeae_inference_latency_seconds", camera="cam1", quantile="0.5") == 0.0125
    assert sample(fams, "edgeae_inference_latency_seconds", camera="cam1", quantile="0.99") == 0.03125
    assert sample(fams, "edgeae_pipeline_latency_seconds", camera="cam1", quantile="0.95") == 0.055
    assert len(fams["edgeae_pipeline_latency_seconds"]["samples"]) == 6  # 2 cameras x 3 quantiles
    assert sample(fams, "edgeae_score", camera="cam1") == 4.5
    assert sample(fams, "edgeae_threshold", camera="cam2") == 3.0
    assert sample(fams, "edgeae_alarm_active", camera="cam1") == 1
    assert sample(fams, "edgeae_alarm_active", camera="cam2") == 0
    assert sample(fams, "edgeae_view_frames_published_total", camera="cam2") == 2
    assert sample(fams, "edgeae_view_viewers", camera="cam1") == 0
    assert sample(fams, "edgeae_view_viewers_dropped_total") == 0
    assert sample(fams, "edgeae_view_metrics_errors_total") == 0
    assert sample(fams, "edgeae_view_uptime_seconds") >= 0
    for name, fam in fams.items():
        assert name.startswith("edgeae_")
        for labels, _ in fam["samples"]:
            assert set(labels) <= {"camera", "quantile"}
            assert ("quantile" in labels) == name.endswith("_latency_seconds")

    status, headers, empty = request(server, "/metrics", method="HEAD")
    assert status == 200 and empty == b"" and int(headers["content-length"]) == len(body)


def test_metrics_escape_label_values_and_leave_out_bad_values(server):
    odd = 'we"ird\\cam\nname'
    server.set_metrics(
        lambda: {
            odd: {"fps": 1.5, "frames_dropped": 2},
            "cam2": {"fps": float("nan"), "frames_dropped": -1, "reconnects": float("inf"), "queue_depth": "x",
                     "alarms": None, "inference": 5, "pipeline": {"p50_ms": "slow", "p99_ms": 9.0}, "unknown": 1},
            "cam3": None,
        }
    )  # fmt: skip
    text = request(server, "/metrics")[2].decode()
    assert 'camera="we\\"ird\\\\cam\\nname"' in text
    fams = parse_exposition(text)
    assert sample(fams, "edgeae_frames_per_second", camera=odd) == 1.5
    assert math.isnan(sample(fams, "edgeae_frames_per_second", camera="cam2"))  # a gauge may be NaN
    assert [lab["camera"] for lab, _ in fams["edgeae_frames_dropped_total"]["samples"]] == [odd]  # -1 left out
    assert "edgeae_reconnects_total" not in fams and "edgeae_queue_depth" not in fams
    assert "edgeae_inference_latency_seconds" not in fams
    assert fams["edgeae_pipeline_latency_seconds"]["samples"] == [({"camera": "cam2", "quantile": "0.99"}, 0.009)]


def test_a_failing_metrics_function_is_counted_and_the_rest_still_served(server):
    server.publish(frame((1, 2, 3)), camera="cam1")
    calls = []

    def broken():
        calls.append(1)
        raise RuntimeError("boom")

    server.set_metrics(broken)
    for expected in (1, 2):
        status, _, body = request(server, "/metrics")
        fams = parse_exposition(body.decode())
        assert status == 200 and sample(fams, "edgeae_view_metrics_errors_total") == expected
        assert sample(fams, "edgeae_view_frames_published_total", camera="cam1") == 1
    server.set_metrics(lambda: [1, 2])  # not a dict
    fams = parse_exposition(request(server, "/metrics")[2].decode())
    assert sample(fams, "edgeae_view_metrics_errors_total") == 3
    server.set_metrics(None)
    fams = parse_exposition(request(server, "/metrics")[2].decode())
    assert sample(fams, "edgeae_view_metrics_errors_total") == 3 and len(calls) == 2
    with pytest.raises(UsageError):
        server.set_metrics(42)


def test_metrics_module_formats_values_and_refuses_bad_names():
    assert [prom.format_value(v) for v in (1.0, 0.25, float("nan"), float("inf"), -float("inf"), 1e300)] == [
        "1", "0.25", "NaN", "+Inf", "-Inf", "1e+300"]  # fmt: skip
    with pytest.raises(ValueError):
        prom.Family("edgeae_frames", "counter", "a counter without _total")
    with pytest.raises(ValueError):
        prom.Family("edgeae-frames", "gauge", "a dash")
    fam = prom.Family("x", "gauge", "h")
    with pytest.raises(ValueError):
        fam.add(1, **{"__name__": "y"})
    assert prom.escape_help("a\\b\nc") == "a\\\\b\\nc"
    assert prom.render([prom.Family("empty", "gauge", "no samples")]) == ""


def test_the_docs_name_every_metric():
    doc = (ROOT / "docs" / "view.md").read_text(encoding="utf-8")
    own = prom.view_families([("c", 1, 0)], 0, 1.0, 0)
    for name in [s.name for s in (*prom.CAMERA_METRICS, *prom.STATUS_METRICS)] + [f.name for f in own]:
        assert f"`{name}`" in doc, name
    for spec in prom.CAMERA_METRICS:
        assert f"`{spec.key}`" in doc, spec.key


# --------------------------------------------------------------------------------------------- /status.json


def test_status_json_lists_cameras_in_order_with_their_fields(server):
    assert json.loads(request(server, "/status.json")[2])["cameras"] == []
    server.set_status("b", score=np.float32(2.5), threshold=3, alarm=np.bool_(False), fps=9.5, note="x" * 500)
    server.publish(frame((9, 9, 9)), camera="a")
    server.set_status("b", score=float("nan"), alarm=True)  # merged; NaN is null in JSON
    status, headers, body = request(server, "/status.json")
    assert status == 200 and headers["content-type"] == "application/json"
    data = json.loads(body)
    assert data["uptime_s"] >= 0
    b, a = data["cameras"]
    assert b == {"name": "b", "score": None, "threshold": 3, "alarm": True, "fps": 9.5, "note": "x" * 200,
                 "frames": 0, "has_frame": False, "frame_age_s": None, "viewers": 0}  # fmt: skip
    assert a["name"] == "a" and a["frames"] == 1 and a["has_frame"] is True and 0 <= a["frame_age_s"] < 5
    with pytest.raises(UsageError):
        server.set_status("a", frames=3)  # the server's own field
    with pytest.raises(BadDataError):
        server.set_status("a", score=[1, 2])


# --------------------------------------------------------------------------------------------- the page


def _srcs(page: str) -> list[str]:
    return [html.unescape(s) for s in re.findall(r'\s(?:src|href)="([^"]*)"', page)]


def test_page_shows_every_camera_with_its_state(server):
    for i, cam in enumerate(("front", "back", "side")):
        server.publish(frame((i, i, i)), camera=cam)
    server.set_status("front", score=4.25, threshold=3.0, alarm=True, fps=14.9)
    server.set_status("back", score=1.5, threshold=3.0, alarm=False)
    status, headers, body = request(server, "/")
    page = body.decode("utf-8")
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
    assert headers["cache-control"] == "no-store" and headers["referrer-policy"] == "no-referrer"
    for cam in ("front", "back", "side"):
        assert f'src="/stream/{cam}.mjpg"' in page and f"<b>{cam}</b>" in page
    front = re.search(r'<section class="([^"]*)" data-camera="front">(.*?)</section>', page).groups()
    back = re.search(r'<section class="([^"]*)" data-camera="back">(.*?)</section>', page).groups()
    assert front[0] == "cam alarm" and "ALARM" in front[1] and "4.25 / 3" in front[1] and "14.9 fps" in front[1]
    assert back[0] == "cam" and ">ok<" in back[1] and "1.5 / 3" in back[1]
    # Self-contained: only its own paths and data: URLs; the script and style allowed by a per-response nonce.
    assert all(s.startswith("/") and not s.startswith("//") or s.startswith("data:") for s in _srcs(page))
    assert "http://" not in page and "https://" not in page
    nonce = re.search(r"'nonce-([^']+)'", headers["content-security-policy"]).group(1)
    assert f'<script nonce="{nonce}">' in page and f'<style nonce="{nonce}">' in page
    assert "default-src 'none'" in headers["content-security-policy"]
    assert 'fetch("/status.json"' in page
    other = request(server, "/")[1]["content-security-policy"]
    assert nonce not in other
    status, _, empty = request(server, "/", method="HEAD")
    assert status == 200 and empty == b""


def test_page_passes_the_token_it_was_opened_with():
    with ViewServer("127.0.0.1", 0, token=TOKEN) as server:
        server.publish(frame((1, 1, 1)), camera="cam1")
        quoted = urllib.parse.quote(TOKEN, safe="")
        status, _, body = request(server, f"/?token={quoted}")
        page = body.decode()
        assert status == 200
        assert "<s>" not in page  # the token is escaped
        assert f"/stream/cam1.mjpg?token={quoted}" in _srcs(page)
        # and that URL is one the server takes
        assert request(server, f"/snapshot/cam1.jpg?token={quoted}")[0] == 200
        assert request(server, "/", headers={"Authorization": "Bearer " + "wrong"})[0] == 401


def test_page_before_any_camera_and_beyond_the_streams_it_holds(server):
    page = request(server, "/")[2].decode()
    assert "No camera yet." in page
    names = [f"c{i}" for i in range(PAGE_STREAMS + 2)]
    for name in names:
        server.set_status(name)
    srcs = _srcs(request(server, "/")[2].decode())
    assert [s for s in srcs if ".mjpg" in s] == [f"/stream/{n}.mjpg" for n in names[:PAGE_STREAMS]]
    assert [s for s in srcs if "/snapshot/" in s] == [f"/snapshot/{n}.jpg" for n in names[PAGE_STREAMS:]]


# --------------------------------------------------------------------------------------------- in Chromium

CHROMIUM = shutil.which("chromium")
COLOURS = {"red": (0, 0, 255), "green": (0, 255, 0), "blue": (255, 0, 0), "yellow": (0, 255, 255),
           "magenta": (255, 0, 255), "cyan": (255, 255, 0)}  # fmt: skip


class Cameras:
    """Publishes a flat-colour frame with its name on it for each camera, 10 times a second, like a live run."""

    def __init__(self, server: ViewServer, names: list[str]):
        self.server, self.names = server, names
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        k = 0
        while not self.stop_event.is_set():
            for name in self.names:
                img = frame(COLOURS[name], 240, 320)
                cv2.putText(img, f"{name} {k}", (16, 40), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (255, 255, 255), 2)
                self.server.publish(img, camera=name)
            k += 1
            self.stop_event.wait(0.1)

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(2)


def screenshot(url: str, out: Path, tmp: Path) -> np.ndarray:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp / 'profile'}", f"--screenshot={out}", "--window-size=1280,800",
           "--hide-scrollbars", url]  # fmt: skip
    try:  # the screenshot comes once the page has loaded: every <img> has its first frame
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=40)
    except subprocess.TimeoutExpired:
        pytest.fail("Chromium did not finish loading the page in 40 s: a stream that never sent a frame?")
    assert res.returncode == 0 and out.exists(), res.stderr[-2000:]
    img = cv2.imread(str(out), cv2.IMREAD_COLOR)
    assert img is not None and img.shape == (800, 1280, 3)
    return img


def colour_region(img: np.ndarray, bgr: tuple[int, int, int], tol: int = 40) -> tuple[int, tuple[int, ...]]:
    """The largest connected region of pixels within ``tol`` of ``bgr``: (area, (x, y, w, h))."""
    mask = (np.abs(img.astype(int) - np.array(bgr)).max(axis=2) <= tol).astype(np.uint8)
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=4)
    if n < 2:
        return 0, (0, 0, 0, 0)
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, w, h, area = stats[best]
    return int(area), (int(x), int(y), int(w), int(h))


def check_camera_regions(img: np.ndarray, names: list[str]) -> dict[str, tuple[int, ...]]:
    boxes = {}
    for name in names:
        area, box = colour_region(img, COLOURS[name])
        x, y, w, h = box
        # A camera's view: a large solid block (its frame less the white label), not a border or a badge.
        assert area >= 40_000 and w >= 250 and h >= 180 and area >= 0.8 * w * h, (name, area, box)
        boxes[name] = box
    centres = [(x + w // 2, y + h // 2) for x, y, w, h in boxes.values()]
    for i, (cx, cy) in enumerate(centres):  # every camera in its own place
        for x, y, w, h in list(boxes.values())[:i] + list(boxes.values())[i + 1 :]:
            assert not (x <= cx < x + w and y <= cy < y + h)
    return boxes


def ring(img: np.ndarray, box: tuple[int, ...], pad: int = 6) -> np.ndarray:
    """The pixels in a band ``pad`` wide just outside ``box``: where the tile's border is."""
    x, y, w, h = box
    mask = np.zeros(img.shape[:2], bool)
    mask[max(0, y - pad) : y + h + pad, max(0, x - pad) : x + w + pad] = True
    mask[y : y + h, x : x + w] = False
    return img[mask]


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (make deps-system installs it)")
def test_page_in_headless_chromium_shows_every_camera(tmp_path):
    names = ["red", "green", "blue"]
    with ViewServer("127.0.0.1", 0, token="tok-42") as server:
        cams = Cameras(server, names)
        server.set_status("blue", score=5.0, threshold=3.0, alarm=True)
        server.set_status("green", score=1.0, threshold=3.0, alarm=False)
        try:
            time.sleep(0.3)
            url = f"http://127.0.0.1:{server.address[1]}/?token=tok-42"
            img = screenshot(url, tmp_path / "page.png", tmp_path)
        finally:
            cams.stop()
    boxes = check_camera_regions(img, names)
    # The alarming camera's tile has a red border (#e00); the calm one's is grey.
    alarm_red = (np.abs(ring(img, boxes["blue"]).astype(int) - (0, 0, 0xEE)).max(axis=1) <= 40).mean()
    calm_red = (np.abs(ring(img, boxes["green"]).astype(int) - (0, 0, 0xEE)).max(axis=1) <= 40).mean()
    assert alarm_red > 0.3 and calm_red < 0.05, (alarm_red, calm_red)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (make deps-system installs it)")
def test_page_in_headless_chromium_with_more_cameras_than_streams(tmp_path):
    names = list(COLOURS)  # six: four streams and two snapshots
    assert len(names) > PAGE_STREAMS
    with ViewServer("127.0.0.1", 0) as server:
        cams = Cameras(server, names)
        try:
            time.sleep(0.3)
            img = screenshot(f"http://127.0.0.1:{server.address[1]}/", tmp_path / "page.png", tmp_path)
        finally:
            cams.stop()
    check_camera_regions(img, names)
