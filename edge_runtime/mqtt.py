"""Events to an MQTT broker that lose nothing: :class:`MqttSink` (docs/mqtt.md).

Store and forward. ``write()`` only appends the event line to a durable spool on disk
(:class:`edge_runtime.spool.Spool`) and returns: a camera never waits for the network. One background thread
connects, publishes from the spool in order with QoS 1, and deletes a message only when the broker's PUBACK for it
has arrived. While the broker is unreachable the events wait on disk; they go out in order when it answers again,
also after a restart of edgeae (the spool is reopened). Duplicates happen only as QoS 1 allows: the messages in
flight when a connection breaks are sent again.

Every connection is a new paho client that publishes from the spool's oldest unacknowledged message, so a
reconnect and a restart take the same path (paho's own resend of in-flight messages never adds a second copy).

Topics: ``{prefix}/{camera}/{type}`` with the event line (docs/events.md) as compact JSON, and a retained
``{prefix}/{camera}/status``: ``online`` on connect, ``offline`` on close and as the Last Will.

paho-mqtt is an optional extra (``pip install edgeae[mqtt]``), imported when a sink is made, never at import.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import ssl
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

from edge_runtime.errors import OutputError, UsageError
from edge_runtime.spool import DEFAULT_MAX_BYTES, DEFAULT_MAX_ENTRIES, Spool

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
DEFAULT_PREFIX = "edgeae"
WINDOW = 20  # messages in flight (published, PUBACK not yet seen): the most a broken connection sends twice
IDLE_S = 0.05  # the publisher looks at the spool at least this often
BACKOFF_MIN_S = 0.25
BACKOFF_MAX_S = 15.0
FLUSH_S = 3.0  # close() tries this long to deliver what is queued; the rest stays in the spool
CONNECT_TIMEOUT_S = 5.0
KEEPALIVE_S = 15
# CONNACK refusals that no retry can fix (MQTT 3.1.1 codes and the MQTT 5 reason codes paho maps them to)
REFUSED_IDENTITY = {2, 133}
REFUSED_CREDENTIALS = {4, 5, 134, 135}
_LEVEL = re.compile(r"^[^/+#\x00]+$")  # one topic level: no separator, no wildcard, no NUL
_KIND = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class MqttWarning(UserWarning):
    """The broker went away or came back; counted in :meth:`MqttSink.metrics`."""


@dataclass(frozen=True)
class BrokerUrl:
    host: str
    port: int
    tls: bool

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}"


def parse_url(url: str) -> BrokerUrl:
    """``mqtt://host[:port]`` (plain, 1883) or ``mqtts://host[:port]`` (TLS, 8883); anything else is a
    UsageError. A user or password in the URL is refused: a password never goes on a command line."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise UsageError(f"mqtt url {url!r}: {exc}") from None
    if parts.scheme not in DEFAULT_PORTS:
        raise UsageError(f"mqtt url {url!r}: use mqtt://HOST:PORT or mqtts://HOST:PORT (TLS)")
    if parts.username is not None or parts.password is not None:
        raise UsageError("mqtt url: no user or password in the URL; give the username and a password_env or "
                         "password_file")  # fmt: skip
    if not parts.hostname:
        raise UsageError(f"mqtt url {url!r}: no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise UsageError(f"mqtt url {url!r}: a broker URL has no path or query")
    if port == 0:
        raise UsageError(f"mqtt url {url!r}: port 0")
    return BrokerUrl(parts.hostname, port or DEFAULT_PORTS[parts.scheme], parts.scheme == "mqtts")


def load_paho() -> ModuleType:
    """``paho.mqtt.client``, or a UsageError (exit 2) saying how to install it. Imported here, when a sink is made,
    so the device's base install never needs it (tests/edge_runtime/test_import_boundary.py allows it only inside a
    function of this module)."""
    try:
        import paho.mqtt.client as module
    except ImportError:
        raise UsageError("MQTT needs paho-mqtt: pip install 'edgeae[mqtt]'") from None
    if not hasattr(module, "CallbackAPIVersion"):
        raise UsageError("MQTT needs paho-mqtt 2 or newer: pip install -U 'edgeae[mqtt]'")
    return module


class _Secret:
    """A password that never shows in a repr, a log line or an exception."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<password hidden>"

    __str__ = __repr__


def _read_password(camera: str, password_env: str | None, password_file: str | os.PathLike | None) -> _Secret | None:
    if password_env and password_file:
        raise UsageError(f"camera {camera}: give password_env or password_file, not both")
    if password_env:
        value = os.environ.get(password_env)
        if not value:
            raise UsageError(f"camera {camera}: password_env: the environment variable {password_env} is not set")
        return _Secret(value)
    if password_file:
        try:
            value = Path(password_file).read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            raise UsageError(f"camera {camera}: password_file {password_file}: cannot read ({reason})") from None
        if not value:
            raise UsageError(f"camera {camera}: password_file {password_file}: is empty")
        return _Secret(value)
    return None


def _tls_context(camera: str, ca_file: Any, cert_file: Any, key_file: Any) -> ssl.SSLContext:
    """A client context that verifies the broker (the system's CAs, or ``ca_file``) and its host name; a client
    certificate when ``cert_file`` is given. Every file is loaded now: a bad one is a UsageError naming it."""
    if key_file and not cert_file:
        raise UsageError(f"camera {camera}: key_file needs cert_file")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname
    key, path = "ca_file", ca_file
    try:
        _load_ca(context, ca_file)
        if cert_file:
            key, path = "cert_file", f"{cert_file}" + (f" (key_file {key_file})" if key_file else "")
            context.load_cert_chain(os.fspath(cert_file), os.fspath(key_file) if key_file else None)
    except (OSError, ssl.SSLError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc) or type(exc).__name__
        raise UsageError(f"camera {camera}: {key} {path}: cannot load ({reason})") from None
    return context


def _load_ca(context: ssl.SSLContext, ca_file: Any) -> None:
    if ca_file:
        context.load_verify_locations(cafile=os.fspath(ca_file))
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)


class _Refused(Exception):
    """The broker will not take this configuration (credentials, certificate): a retry cannot fix it."""

    def __init__(self, key: str, reason: str):
        super().__init__(reason)
        self.key = key


class _Unreachable(Exception):
    """No connection this time (refused, timed out, closed): try again later."""


def _json_default(value: Any) -> Any:
    # numpy scalars and arrays without importing numpy
    for method in ("item", "tolist"):
        if callable(getattr(value, method, None)):
            return getattr(value, method)()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _check_level(camera: str, key: str, value: str, *, slashes: bool = False) -> str:
    parts = value.split("/") if slashes else [value]
    if not value or not all(_LEVEL.match(p) for p in parts):
        raise UsageError(f"camera {camera}: {key} {value!r} is not a valid MQTT topic level (no '+', '#', empty "
                         f"level{'' if slashes else ' or /'})")  # fmt: skip
    return value


class MqttSink:
    """Event lines (dicts, docs/events.md) to ``{prefix}/{camera}/{type}`` on the broker at ``url``, through the
    durable spool at ``spool_path``. The sink interface: ``write(event, index, name)``, ``close()``, ``abort()``.

    Raises at construction (nothing queued is lost: the spool file stays for the next run):

    - UsageError (exit 2): a bad URL, camera or prefix; a password without a username, an unset password
      variable, an unreadable password file or certificate; the broker refusing the credentials, or its TLS
      certificate not verifying, on the first connection attempt;
    - OutputError (exit 3): a spool path that cannot be written.

    A broker that cannot be reached is not an error: events wait in the spool, the sink retries with backoff
    (0.25 s doubling to 15 s) and warns once per outage.
    """

    def __init__(
        self,
        url: str,
        camera: str | None = None,
        *,
        spool_path: str | os.PathLike,
        username: str | None = None,
        password_env: str | None = None,
        password_file: str | os.PathLike | None = None,
        ca_file: str | os.PathLike | None = None,
        cert_file: str | os.PathLike | None = None,
        key_file: str | os.PathLike | None = None,
        prefix: str = DEFAULT_PREFIX,
        client_id: str | None = None,
        max_queue: int = DEFAULT_MAX_ENTRIES,
        max_queue_bytes: int = DEFAULT_MAX_BYTES,
        flush_s: float = FLUSH_S,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
    ):
        name = camera or socket.gethostname()
        self.camera = _check_level(name, "camera", name)
        self.broker = parse_url(url)
        self.prefix = _check_level(self.camera, "prefix", prefix.strip("/"), slashes=True)
        self.username = username
        self._password = _read_password(self.camera, password_env, password_file)
        if self._password is not None and not username:
            raise UsageError(f"camera {self.camera}: a password needs a username")
        self._credentials_key = f"username {username!r}" + (
            f" / password_env {password_env}"
            if password_env
            else f" / password_file {password_file}"
            if password_file
            else ""
        )
        if not self.broker.tls and (ca_file or cert_file or key_file):
            raise UsageError(f"camera {self.camera}: ca_file/cert_file/key_file need an mqtts:// URL")
        self._tls = _tls_context(self.camera, ca_file, cert_file, key_file) if self.broker.tls else None
        self.ca_file = ca_file
        self.client_id = client_id or f"edgeae-{self.camera}"
        self.flush_s = flush_s
        self.connect_timeout_s = connect_timeout_s
        self.status_topic = f"{self.prefix}/{self.camera}/status"
        self._paho = load_paho()
        self.spool = Spool(spool_path, max_entries=max_queue, max_bytes=max_queue_bytes)
        self.frames = 0
        self.published = 0
        self.reconnects = 0  # connections re-established after the first
        self.connect_errors = 0  # failed attempts (unreachable, refused, TLS)
        self.connected = False
        self.last_error = ""
        self._connections = 0
        self._closing = threading.Event()
        self._deadline = 0.0
        self._first = threading.Event()
        self._fatal: _Refused | None = None
        self._thread = threading.Thread(target=self._run, name=f"edgeae-mqtt-{self.camera}", daemon=True)
        self._thread.start()
        self._first.wait(connect_timeout_s + 2.0)
        if self._fatal is not None:
            self._stop_thread(flush=False)
            self.spool.close()
            raise UsageError(self._refusal_line(self._fatal))

    # --- the sink interface ---------------------------------------------------------------------------------
    def write(self, event: dict, index: int = 0, name: str = "") -> None:
        """Queue one event line on disk (OutputError, exit 3, when the spool cannot be written)."""
        if self._closing.is_set():
            raise UsageError(f"camera {self.camera}: the MQTT sink is closed")
        kind = str(event.get("type", "event"))
        topic = f"{self.prefix}/{self.camera}/{kind if _KIND.match(kind) else 'event'}"
        payload = json.dumps(event, separators=(",", ":"), default=_json_default).encode("utf-8")
        self.spool.put(topic, payload)
        self.frames += 1

    def close(self) -> None:
        """Deliver what is queued for up to ``flush_s`` seconds, say ``offline``, disconnect; what is left stays
        in the spool and goes out on the next run."""
        if self._thread.is_alive():
            self._stop_thread(flush=True)
        with contextlib.suppress(OutputError):
            self.spool.close()

    def abort(self) -> None:
        # Events already queued describe frames that were processed: deliver them like close().
        self.close()

    def metrics(self) -> dict[str, Any]:
        """Counters for ``--stats`` and ``/metrics``: queue depth and bytes, dropped (queue full), published
        (PUBACK seen), reconnects, connect_errors, connected."""
        return {
            "queue_depth": self.spool.depth(),
            "queue_bytes": self.spool.size_bytes,
            "dropped": self.spool.dropped,
            "published": self.published,
            "reconnects": self.reconnects,
            "connect_errors": self.connect_errors,
            "connected": self.connected,
        }

    def __repr__(self) -> str:
        return f"MqttSink({str(self.broker)!r}, camera={self.camera!r}, spool={str(self.spool.path)!r})"

    # --- the publisher thread -------------------------------------------------------------------------------
    def _stop_thread(self, flush: bool) -> None:
        self._deadline = time.monotonic() + (self.flush_s if flush else 0.0)
        self._closing.set()
        self._thread.join(self.flush_s + self.connect_timeout_s + 2.0)

    def _run(self) -> None:
        backoff = BACKOFF_MIN_S
        down_since: float | None = None
        while not self._closing.is_set():
            try:
                client = self._connect()
                self._first.set()
                backoff = BACKOFF_MIN_S
                if down_since is not None:
                    warnings.warn(f"camera {self.camera}: MQTT broker {self.broker} back after "
                                  f"{time.monotonic() - down_since:.1f} s; sending {self.spool.depth()} queued "
                                  "events", MqttWarning, stacklevel=1)  # fmt: skip
                self._serve(client)
                if not self._closing.is_set():
                    down_since = self._note_down(None, f"camera {self.camera}: MQTT connection to {self.broker} "
                                                 f"lost; events wait in {self.spool.path}")  # fmt: skip
                continue
            except _Refused as exc:
                self._failed(exc)
                if not self._first.is_set():
                    self._fatal = exc
                    self._first.set()
                    return
                down_since = self._note_down(down_since, self._refusal_line(exc))
            except _Unreachable as exc:
                self._failed(exc)
                down_since = self._note_down(down_since, f"camera {self.camera}: MQTT broker {self.broker} "
                                             f"unreachable ({exc}); events wait in {self.spool.path}")  # fmt: skip
            except Exception as exc:  # noqa: BLE001 - the publisher outlives any surprise: counted, retried
                self._failed(exc)
                self.connected = False
                down_since = self._note_down(down_since, f"camera {self.camera}: MQTT: {type(exc).__name__}: {exc}")
            self._first.set()
            self._closing.wait(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    def _failed(self, exc: BaseException) -> None:
        self.connect_errors += 1
        self.connected = False
        self.last_error = str(exc)

    def _note_down(self, since: float | None, line: str) -> float:
        if since is None:  # one warning per outage
            warnings.warn(line, MqttWarning, stacklevel=1)
            return time.monotonic()
        return since

    def _refusal_line(self, exc: _Refused) -> str:
        queued = f"{self.spool.depth()} queued events kept in {self.spool.path}"
        return f"camera {self.camera}: {exc.key}: {self.broker}: {exc}; {queued}"

    def _new_client(self) -> Any:
        mqtt = self._paho
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=True,
                             protocol=mqtt.MQTTv311, reconnect_on_failure=False)  # fmt: skip
        client.connect_timeout = self.connect_timeout_s
        client.max_inflight_messages_set(WINDOW)
        if self.username:
            client.username_pw_set(self.username, self._password.reveal() if self._password else None)
        if self._tls is not None:
            client.tls_set_context(self._tls)
        client.will_set(self.status_topic, "offline", qos=1, retain=True)
        return client

    def _connect(self) -> Any:
        """A connected client (CONNACK accepted, ``online`` sent), or _Refused / _Unreachable."""
        client = self._new_client()
        answer: list[Any] = []
        client.on_connect = lambda c, u, flags, rc, props: answer.append(rc)
        try:
            client.connect(self.broker.host, self.broker.port, keepalive=KEEPALIVE_S)
        except ssl.SSLCertVerificationError as exc:
            detail = exc.verify_message or exc.reason or "certificate verify failed"
            raise _Refused("ca_file", f"the broker's TLS certificate does not verify ({detail}; CA: "
                           f"{self.ca_file or 'the system store'})") from None  # fmt: skip
        except ssl.SSLError as exc:
            raise _Refused("cert_file", f"TLS handshake refused ({exc.reason or exc})") from None
        except OSError as exc:
            raise _Unreachable(exc.strerror or str(exc) or type(exc).__name__) from None
        deadline = time.monotonic() + self.connect_timeout_s
        while not answer and time.monotonic() < deadline and not self._closing.is_set():
            if client.loop(timeout=0.1) != self._paho.MQTT_ERR_SUCCESS:
                break
        if not answer:
            _drop(client)
            raise _Unreachable("no CONNACK: the connection closed or timed out")
        code = int(getattr(answer[0], "value", answer[0]))
        if code != 0:
            _drop(client)
            if code in REFUSED_CREDENTIALS:
                raise _Refused(self._credentials_key, f"the broker refused the credentials ({answer[0]})")
            if code in REFUSED_IDENTITY:
                raise _Refused("client_id", f"the broker refused client id {self.client_id!r} ({answer[0]})")
            raise _Unreachable(f"the broker refused the connection ({answer[0]})")
        client.publish(self.status_topic, "online", qos=1, retain=True)
        self._connections += 1
        self.reconnects = max(0, self._connections - 1)
        self.connected = True
        return client

    def _serve(self, client: Any) -> None:
        """Publish from the spool in order until the connection breaks, or close() and the queue is empty or
        its deadline passed. ``inflight``: paho mid -> spool id."""
        try:
            self._publish_until_done(client)
        finally:
            self.connected = False
            _drop(client)

    def _publish_until_done(self, client: Any) -> None:
        ok = self._paho.MQTT_ERR_SUCCESS
        inflight: dict[int, int] = {}
        acked: list[int] = []
        client.on_publish = lambda c, u, mid, rc, props: acked.append(mid)
        cursor = 0
        while True:
            if self._closing.is_set() and (time.monotonic() >= self._deadline or not (inflight or self.spool.depth())):
                self._goodbye(client)
                return
            if len(inflight) < WINDOW and self.spool.last_id > cursor:
                for sid, topic, payload in self.spool.peek(WINDOW - len(inflight), after=cursor):
                    info = client.publish(topic, payload, qos=1)
                    if info.rc != ok:
                        break
                    inflight[info.mid] = sid
                    cursor = sid
            rc = client.loop(timeout=IDLE_S)
            if acked:
                done = [inflight.pop(mid) for mid in acked if mid in inflight]
                acked.clear()
                self.spool.ack(*done)
                self.published += len(done)
            if rc != ok:
                return

    def _goodbye(self, client: Any) -> None:
        """A clean disconnect sends no Last Will: say ``offline`` ourselves first (retained)."""
        info = client.publish(self.status_topic, "offline", qos=1, retain=True)
        deadline = time.monotonic() + 1.0
        while not info.is_published() and time.monotonic() < deadline:
            if client.loop(timeout=0.05) != self._paho.MQTT_ERR_SUCCESS:
                break
        with contextlib.suppress(Exception):
            client.disconnect()
            client.loop(timeout=0.05)
        self.connected = False
        _drop(client)


def _drop(client: Any) -> None:
    """Close a client's sockets now (paho would leave it to the garbage collector)."""
    with contextlib.suppress(Exception):
        client._reset_sockets()  # noqa: SLF001 - paho has no public way to release its socket pair
