"""MQTT events that lose nothing (edge_runtime/mqtt.py), against a real Mosquitto broker (mosquitto.py here).

A paho subscriber with a persistent session counts what arrives. "Order kept" means: the first arrival of each
event is in the order it was written; "duplicates only as QoS 1 allows": a second copy only of a message that was
in flight when a connection broke.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
from mosquitto import Broker, Subscriber, make_certs, make_password_file

from edge_runtime.errors import UsageError
from edge_runtime.mqtt import WINDOW, MqttSink, MqttWarning, parse_url
from edge_runtime.spool import Spool

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "Tr0ub4dor&3-edgeae-test"  # must never show in an error, a warning or a log line
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="session")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path / "broker").start()
    yield b
    b.stop()


@pytest.fixture
def subscriber(broker):
    s = Subscriber(broker.url)
    yield s
    s.close()


def event(kind: str, i: int) -> dict:
    return {"v": 1, "type": kind, "frame": i, "time": i / 15, "wall": 1764763200.0 + i, "score": 0.5}


def first_arrivals(events: list[dict]) -> tuple[list[int], int]:
    """(frame numbers in order of first arrival, number of duplicates)."""
    frames = [e["frame"] for e in events]
    first = list(dict.fromkeys(frames))
    return first, len(frames) - len(first)


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and text.strip() == text and text
    return text


# --- configuration -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "url, host, port, tls",
    [
        ("mqtt://broker.local", "broker.local", 1883, False),
        ("mqtts://10.0.0.5:8884", "10.0.0.5", 8884, True),
        ("mqtt://[::1]:1999/", "::1", 1999, False),
    ],  # fmt: skip
)
def test_broker_urls(url, host, port, tls):
    assert parse_url(url) == (b := parse_url(url)) and (b.host, b.port, b.tls) == (host, port, tls)


@pytest.mark.parametrize(
    "url", ["http://h:1", "h:1883", "mqtt://", "mqtt://h:99999", "mqtt://h:x", "mqtt://h/topic", "mqtt://u:p@h"]
)
def test_bad_broker_urls_are_one_line_usage_errors(url):
    with pytest.raises(UsageError) as err:
        parse_url(url)
    assert err.value.exit_code == 2
    assert "p@" not in one_line(err.value)  # a password typed into a URL is not echoed


def test_paho_is_optional(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        import edge_runtime.mqtt
        assert "paho" not in sys.modules, "paho imported at import"
        sys.modules["paho"] = None
        from edge_runtime.errors import UsageError
        try:
            edge_runtime.mqtt.MqttSink("mqtt://127.0.0.1:1", "cam", spool_path={str(tmp_path / "s.db")!r})
        except UsageError as exc:
            print(exc.exit_code, exc)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "2 MQTT needs paho-mqtt: pip install 'edgeae[mqtt]'"


def test_bad_names_and_files_are_usage_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("EDGEAE_TEST_UNSET", raising=False)
    cases = [
        (dict(camera="a/b"), "camera"),
        (dict(camera="c", prefix="x/+"), "prefix"),
        (dict(camera="c", username="u", password_env="EDGEAE_TEST_UNSET"), "EDGEAE_TEST_UNSET is not set"),
        (dict(camera="c", username="u", password_file=tmp_path / "missing"), "password_file"),
        (dict(camera="c", ca_file=tmp_path / "ca.pem"), "need an mqtts:// URL"),
    ]
    for kwargs, words in cases:
        with pytest.raises(UsageError) as err:
            MqttSink("mqtt://127.0.0.1:1", spool_path=tmp_path / "s.db", **kwargs)
        assert words in one_line(err.value) and err.value.exit_code == 2
    with pytest.raises(UsageError, match=r"camera c: ca_file .*missing.pem: cannot load"):
        MqttSink("mqtts://127.0.0.1:1", "c", spool_path=tmp_path / "s.db", ca_file=tmp_path / "missing.pem")


# --- delivery ----------------------------------------------------------------------------------------------------
def test_events_arrive_in_order_with_qos1_and_a_retained_online_status(broker, subscriber, tmp_path):
    sink = MqttSink(broker.url, "cam1", spool_path=tmp_path / "spool.db")
    kinds = ["frame"] * 9 + ["alarm"]
    for i in range(300):
        sink.write(event(kinds[i % 10], i))
    assert subscriber.wait_for(lambda: len(subscriber.events()) >= 300, 20)
    sink.close()
    frames, dups = first_arrivals(subscriber.events())
    assert frames == list(range(300)) and dups == 0
    with subscriber.lock:
        got = {t: p for t, p, _ in subscriber.messages if not t.endswith("/status")}
    assert set(got) == {"edgeae/cam1/frame", "edgeae/cam1/alarm"}
    assert json.loads(got["edgeae/cam1/alarm"])["type"] == "alarm"
    assert got["edgeae/cam1/alarm"] == json.dumps(event("alarm", 299), separators=(",", ":")).encode()
    m = sink.metrics()
    assert m["published"] == 300 and m["queue_depth"] == 0 and m["dropped"] == 0
    late = Subscriber(broker.url, "edgeae/+/status", client_id="late")  # a retained status greets a newcomer
    try:
        assert late.wait_for(lambda: late.statuses(), 5)
        assert late.statuses()[0] == ("edgeae/cam1/status", "offline", True)  # close() said goodbye
    finally:
        late.close()
    assert ("edgeae/cam1/status", "online", False) in subscriber.statuses()


def _write_through_outage(broker: Broker, sinks: list[MqttSink], outage_s: float) -> tuple[int, float, int]:
    """Write ~100 events/s per sink before, during and after a broker outage of ``outage_s``; returns (events per
    sink, slowest write in seconds, deepest queue seen)."""
    n, slowest, deepest = 0, 0.0, 0
    phases = [(1.0, None), (outage_s, broker.stop), (1.0, broker.start)]
    for duration, action in phases:
        if action:
            action()
        end = time.monotonic() + duration
        while time.monotonic() < end:
            for sink in sinks:
                t = time.perf_counter()
                sink.write(event("frame", n))
                slowest = max(slowest, time.perf_counter() - t)
            deepest = max(deepest, *(s.metrics()["queue_depth"] for s in sinks))
            n += 1
            time.sleep(0.01)
    return n, slowest, deepest


@pytest.mark.parametrize("outage_s", [5.0, pytest.param(60.0, marks=pytest.mark.slow)])
def test_a_broker_outage_during_writes_loses_nothing(broker, subscriber, tmp_path, outage_s):
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        sinks = [MqttSink(broker.url, cam, spool_path=tmp_path / f"{cam}.db") for cam in ("cam-a", "cam-b")]
        n, slowest, deepest = _write_through_outage(broker, sinks, outage_s)
        ok = subscriber.wait_for(lambda: all(len(subscriber.events(c)) >= n for c in ("cam-a", "cam-b")), 30)
        for sink in sinks:
            sink.close()
        metrics = [s.metrics() for s in sinks]
    assert ok, [len(subscriber.events(c)) for c in ("cam-a", "cam-b")]
    assert deepest >= 20 * outage_s  # the events really waited on disk (~100/s were written)
    assert slowest < 0.5  # the cameras never waited for the network (a reconnect takes seconds)
    for cam, m in zip(("cam-a", "cam-b"), metrics, strict=True):
        frames, dups = first_arrivals(subscriber.events(cam))
        assert frames == list(range(n)), cam  # 0 lost, order per camera kept
        assert dups <= WINDOW * m["reconnects"]
        assert m["reconnects"] >= 1 and m["queue_depth"] == 0 and m["published"] >= n
    lines = [str(w.message) for w in rec if issubclass(w.category, MqttWarning)]
    assert any("lost" in line for line in lines) and any("back after" in line for line in lines)


@pytest.mark.filterwarnings("ignore::edge_runtime.mqtt.MqttWarning")  # "lost"/"back": the outage test checks them
def test_what_the_broker_never_acknowledged_is_sent_again(broker, subscriber, tmp_path):
    """A broker that freezes (messages sit unread in its socket) and then dies: only a PUBACK may take a message
    out of the spool, so the ones it never acknowledged go out again after the restart."""
    sink = MqttSink(broker.url, "cam1", spool_path=tmp_path / "spool.db")
    for i in range(100):
        sink.write(event("frame", i))
    assert subscriber.wait_for(lambda: len(subscriber.events()) >= 100, 10)
    time.sleep(1.5)  # the broker autosaves its sessions every second: the subscriber's survives the kill
    broker.freeze()
    for i in range(100, 200):
        sink.write(event("frame", i))
    time.sleep(0.5)  # the publisher sends into the frozen broker's socket; no PUBACK comes
    assert sink.metrics()["published"] == 100
    broker.kill()
    broker.start()
    assert subscriber.wait_for(lambda: len({e["frame"] for e in subscriber.events()}) >= 200, 30)
    sink.close()
    frames, dups = first_arrivals(subscriber.events())
    assert frames == list(range(200)) and dups <= WINDOW


PUBLISHER = """
import json, sys, time
from edge_runtime.mqtt import MqttSink
url, spool, start, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
sink = MqttSink(url, "cam1", spool_path=spool)
print("ready", flush=True)
for i in range(start, start + count):
    sink.write({"v": 1, "type": "frame", "frame": i})
    print(i, flush=True)  # printed only once write() returned
    time.sleep(0.004)
sink.close()
print("closed", json.dumps(sink.metrics()), flush=True)
"""


def _publisher(broker: Broker, spool: Path, start: int, count: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", PUBLISHER, broker.url, str(spool), str(start), str(count)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)  # fmt: skip


def test_kill_9_during_an_outage_then_a_restart_loses_nothing(broker, subscriber, tmp_path):
    spool = tmp_path / "cam1.db"
    proc = _publisher(broker, spool, 0, 10**9)
    written: list[int] = []
    try:
        assert proc.stdout.readline().strip() == "ready"
        for line in proc.stdout:
            written.append(int(line))
            if len(written) == 100:
                broker.stop()  # the outage starts
            if len(written) == 400:
                proc.send_signal(signal.SIGKILL)  # edgeae dies with ~300 events only on disk
                break
        proc.wait(10)
    finally:
        proc.kill()
    broker.start()
    again = _publisher(broker, spool, 1_000_000, 50)
    out, err = again.communicate(timeout=60)
    assert again.returncode == 0, err
    closed = json.loads(out.splitlines()[-1].split(" ", 1)[1])
    assert closed["queue_depth"] == 0
    expected = written + list(range(1_000_000, 1_000_050))
    assert subscriber.wait_for(lambda: set(expected) <= {e["frame"] for e in subscriber.events()}, 20)
    frames, dups = first_arrivals(subscriber.events())
    in_progress = written[-1] + 1  # put when the kill came, maybe: may arrive, in its place
    assert [f for f in frames if f != in_progress] == expected  # 0 lost, in order across the kill
    assert dups <= 2 * WINDOW


def test_the_last_will_says_offline_when_edgeae_is_killed(broker, subscriber, tmp_path):
    proc = _publisher(broker, tmp_path / "cam1.db", 0, 10**9)
    try:
        assert proc.stdout.readline().strip() == "ready"
        assert subscriber.wait_for(lambda: ("edgeae/cam1/status", "online", False) in subscriber.statuses(), 10)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.kill()
    assert subscriber.wait_for(lambda: subscriber.statuses()[-1][1] == "offline", 10), subscriber.statuses()


def test_a_full_spool_drops_the_oldest_and_counts_them(tmp_path):
    broker = Broker(tmp_path / "broker")  # not started yet: unreachable
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        t = time.monotonic()
        sink = MqttSink(broker.url, "cam1", spool_path=tmp_path / "spool.db", max_queue=50)
        assert time.monotonic() - t < 2.0  # an unreachable broker does not hold up the start
        for i in range(200):
            sink.write(event("frame", i))
        m = sink.metrics()
        assert m["queue_depth"] == 50 and m["dropped"] == 150 and not m["connected"] and m["connect_errors"] >= 1
        broker.start()
        try:
            sub = Subscriber(broker.url)
            try:
                assert sub.wait_for(lambda: len(sub.events()) >= 50, 20)
                sink.close()
                frames, _ = first_arrivals(sub.events())
                assert frames == list(range(150, 200))  # the newest 50, in order
            finally:
                sub.close()
        finally:
            broker.stop()
    lines = [str(w.message) for w in rec]
    assert any("unreachable" in line for line in lines)
    assert sum("dropped the oldest" in line for line in lines) == 1


# --- credentials and TLS -----------------------------------------------------------------------------------------
@pytest.fixture
def password_broker(tmp_path):
    pw = make_password_file(tmp_path / "passwd", "edge", PASSWORD)
    b = Broker(tmp_path / "broker", password_file=pw).start()
    yield b
    b.stop()


def test_wrong_password_is_one_line_exit_2_and_keeps_the_queue(password_broker, tmp_path, monkeypatch):
    spool = tmp_path / "cam1.db"
    with Spool(spool) as q:  # left by an earlier run
        for i in range(5):
            q.put("edgeae/cam1/frame", json.dumps(event("frame", i)).encode())
    monkeypatch.setenv("EDGEAE_TEST_PW", "not-" + PASSWORD)
    with pytest.raises(UsageError) as err:
        MqttSink(password_broker.url, "cam1", spool_path=spool, username="edge", password_env="EDGEAE_TEST_PW")
    text = one_line(err.value)
    assert err.value.exit_code == 2
    assert text.startswith("camera cam1: username 'edge' / password_env EDGEAE_TEST_PW:")
    assert "refused the credentials" in text and "5 queued events kept" in text
    assert PASSWORD not in text
    (tmp_path / "pw").write_text(PASSWORD + "\n")
    sub = Subscriber(password_broker.url, auth=("edge", PASSWORD))  # anonymous is refused here
    try:
        sink = MqttSink(password_broker.url, "cam1", spool_path=spool, username="edge", password_file=tmp_path / "pw")
        assert sub.wait_for(lambda: len(sub.events()) >= 5, 10)
        sink.close()
        assert first_arrivals(sub.events()) == (list(range(5)), 0)  # the queue outlived the refusal
    finally:
        sub.close()


def test_the_password_never_shows_in_errors_warnings_or_logs(password_broker, tmp_path):
    pw_file = tmp_path / "pw"
    pw_file.write_text(PASSWORD + "\n")
    code = textwrap.dedent(f"""
        import logging, os, sys, time, warnings
        logging.basicConfig(level=logging.DEBUG)
        warnings.simplefilter("always")
        from edge_runtime.mqtt import MqttSink
        from edge_runtime.errors import UsageError
        url, spool = {password_broker.url!r}, {str(tmp_path / "cam1.db")!r}
        os.environ["EDGEAE_TEST_PW"] = "x" + open({str(pw_file)!r}).read().strip()
        try:
            MqttSink(url, "cam1", spool_path=spool, username="edge", password_env="EDGEAE_TEST_PW")
        except UsageError as exc:
            print("refused:", exc)
        sink = MqttSink(url, "cam1", spool_path=spool, username="edge", password_file={str(pw_file)!r})
        print(repr(sink), sink.metrics(), vars(sink))
        for i in range(20):
            sink.write({{"v": 1, "type": "frame", "frame": i}})
        sink.close()
        print("published", sink.metrics()["published"])
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "refused: camera cam1:" in res.stdout and "published 20" in res.stdout
    assert PASSWORD not in res.stdout + res.stderr
    assert PASSWORD.encode() not in b"".join(p.read_bytes() for p in tmp_path.glob("cam1.db*"))


@pytest.fixture
def tls_broker(tmp_path, certs):
    b = Broker(tmp_path / "broker", certs=certs, require_certificate=True).start()
    yield b
    b.stop()


def test_tls_with_a_ca_and_a_client_certificate_delivers(tls_broker, certs, tmp_path):
    sub = Subscriber(tls_broker.tls_url, ca_certs=str(certs.ca), certfile=str(certs.client_cert),
                     keyfile=str(certs.client_key))  # fmt: skip
    try:
        sink = MqttSink(tls_broker.tls_url, "cam1", spool_path=tmp_path / "s.db", ca_file=certs.ca,
                        cert_file=certs.client_cert, key_file=certs.client_key)  # fmt: skip
        for i in range(50):
            sink.write(event("frame", i))
        assert sub.wait_for(lambda: len(sub.events()) >= 50, 20)
        sink.close()
        assert first_arrivals(sub.events()) == (list(range(50)), 0)
    finally:
        sub.close()


def test_a_certificate_that_does_not_verify_is_one_line_exit_2(tls_broker, certs, tmp_path):
    with pytest.raises(UsageError) as err:
        MqttSink(tls_broker.tls_url, "cam1", spool_path=tmp_path / "s.db", ca_file=certs.other_ca,
                 cert_file=certs.client_cert, key_file=certs.client_key)  # fmt: skip
    text = one_line(err.value)
    assert err.value.exit_code == 2
    assert text.startswith("camera cam1: ca_file: mqtts://127.0.0.1:") and "does not verify" in text
    assert str(certs.other_ca) in text
