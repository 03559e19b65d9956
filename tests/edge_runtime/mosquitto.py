"""A real Mosquitto broker for the MQTT tests (Debian's ``mosquitto``; ``make test`` installs it).

- :class:`Broker`: a ``mosquitto`` process on free loopback ports with a generated config (a plain listener,
  optionally a password file and a TLS listener), persistence on (so a subscriber's session and its queued
  messages survive :meth:`Broker.restart`), stopped with SIGTERM and started again on the same ports;
- :func:`make_certs`: a CA, a server certificate for ``127.0.0.1``/``localhost``, a client certificate, and a
  second CA that signed nothing (the "bad CA"), made with the ``openssl`` command;
- :func:`make_password_file`: ``mosquitto_passwd -c -b``;
- :class:`Subscriber`: a paho client with a persistent session that counts what arrives.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path


def find_mosquitto() -> str | None:
    """The broker binary (Debian installs it in /usr/sbin, which a non-root PATH may lack)."""
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)), None
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


@dataclass(frozen=True)
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing here: verifying the server with it fails


def _openssl(*args: str | os.PathLike, cwd: Path) -> None:
    subprocess.run(["openssl", *map(str, args)], cwd=cwd, check=True, capture_output=True, timeout=60)


def _make_ca(folder: Path, name: str) -> tuple[Path, Path]:
    key, cert = folder / f"{name}.key", folder / f"{name}.pem"
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key, cwd=folder)
    _openssl("req", "-x509", "-new", "-key", key, "-out", cert, "-days", "2", "-subj", f"/CN=edgeae test {name}",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             cwd=folder)  # fmt: skip
    return key, cert


def _make_leaf(folder: Path, name: str, ca_key: Path, ca_cert: Path, ext: str) -> tuple[Path, Path]:
    key, csr, cert = folder / f"{name}.key", folder / f"{name}.csr", folder / f"{name}.pem"
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key, cwd=folder)
    _openssl("req", "-new", "-key", key, "-out", csr, "-subj", f"/CN={name}", cwd=folder)
    (folder / f"{name}.ext").write_text(ext)
    _openssl("x509", "-req", "-in", csr, "-CA", ca_cert, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
             "-days", "2", "-extfile", folder / f"{name}.ext", cwd=folder)  # fmt: skip
    return key, cert


def make_certs(folder: Path) -> Certs:
    """EC keys (fast to make); the server certificate names 127.0.0.1 and localhost."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca = _make_ca(folder, "ca")
    _, other_ca = _make_ca(folder, "other-ca")
    server_ext = "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
    server_key, server_cert = _make_leaf(folder, "server", ca_key, ca, server_ext)
    client_key, client_cert = _make_leaf(folder, "client", ca_key, ca, "extendedKeyUsage=clientAuth\n")
    return Certs(ca, server_cert, server_key, client_cert, client_key, other_ca)


def make_password_file(path: Path, user: str, password: str) -> Path:
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(path), user, password], check=True, capture_output=True,
                   timeout=30)  # fmt: skip
    return path


class Broker:
    """One ``mosquitto`` on 127.0.0.1. ``port``: the plain listener; ``tls_port`` when ``certs`` are given
    (``require_certificate``: clients must show a certificate signed by the CA)."""

    def __init__(self, folder: Path, *, password_file: Path | None = None, certs: Certs | None = None,
                 require_certificate: bool = False):  # fmt: skip
        exe = find_mosquitto()
        if exe is None:
            raise RuntimeError("mosquitto is not installed: run `make test` (it installs Debian's mosquitto)")
        self.exe = exe
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.tls_port = free_port() if certs else None
        self.conf = folder / "mosquitto.conf"
        self.log = folder / "mosquitto.log"
        lines = [
            "user root",  # as root, mosquitto would switch to its own user and lose access to the test's files
            "per_listener_settings false",
            f"persistence true\npersistence_location {folder}/\nautosave_interval 1",
            "max_queued_messages 0",  # a persistent subscriber's queue is unbounded: the test counts every event
            f"log_dest file {self.log}\nlog_type error\nlog_type warning\nlog_type notice",
            f"allow_anonymous {'false' if password_file else 'true'}",
        ]
        if password_file:
            lines.append(f"password_file {password_file}")
        lines.append(f"listener {self.port} 127.0.0.1")
        if certs:
            lines += [f"listener {self.tls_port} 127.0.0.1", f"cafile {certs.ca}", f"certfile {certs.server_cert}",
                      f"keyfile {certs.server_key}"]  # fmt: skip
            if require_certificate:
                lines.append("require_certificate true")
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def tls_url(self) -> str:
        return f"mqtts://127.0.0.1:{self.tls_port}"

    def start(self) -> Broker:
        assert self.proc is None, "already running"
        self.proc = subprocess.Popen([self.exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            wait_port(self.port)
            if self.tls_port:
                wait_port(self.tls_port)
        except OSError:
            self.stop()
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"mosquitto did not start: {log}") from None
        return self

    def stop(self) -> None:
        """SIGTERM: mosquitto saves its persistence file and closes every connection."""
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def freeze(self) -> None:
        """SIGSTOP: connections stay open, nothing is read or acknowledged."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def kill(self) -> None:
        """SIGKILL: what it had not processed (a frozen broker's socket buffers) is gone."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


class Subscriber:
    """Subscribes to ``topic`` with QoS 1 and a persistent session (``clean_session=False``): messages published
    while it is away (a broker restart) are queued by the broker and arrive when it is back."""

    def __init__(self, url: str, topic: str = "edgeae/#", client_id: str = "edgeae-test-subscriber",
                 auth: tuple[str, str] | None = None, **tls):  # fmt: skip
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, bytes, bool]] = []  # (topic, payload, retained)
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        host, port = url.split("://")[1].rsplit(":", 1)
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        self.client.reconnect_delay_set(0.05, 0.5)
        if auth:
            self.client.username_pw_set(*auth)
        if tls:
            self.client.tls_set(**tls)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(host, int(port), keepalive=5)
        self.client.loop_start()
        if not self.subscribed.wait(10):
            raise RuntimeError("the subscriber could not subscribe")

    def _on_message(self, client, userdata, msg) -> None:
        with self.lock:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def events(self, camera: str | None = None) -> list[dict]:
        """Event payloads (not the status topic), decoded, in arrival order."""
        with self.lock:
            got = list(self.messages)
        out = []
        for topic, payload, _ in got:
            parts = topic.split("/")
            if parts[-1] == "status" or (camera is not None and parts[-2] != camera):
                continue
            out.append(json.loads(payload))
        return out

    def statuses(self) -> list[tuple[str, str, bool]]:
        with self.lock:
            return [(t, p.decode(), r) for t, p, r in self.messages if t.endswith("/status")]

    def wait_for(self, predicate, timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.05)
        return predicate()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
