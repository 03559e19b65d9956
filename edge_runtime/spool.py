"""A bounded durable queue of messages on disk: store and forward for the MQTT sink (docs/mqtt.md).

One SQLite file in WAL mode with ``synchronous=NORMAL`` (measured against an append-only log with fsync: the
numbers and the reasons are in docs/mqtt.md). What it promises:

- ``put`` returns once the message is in the operating system's hands: a ``kill -9`` right after loses nothing,
  and the order of ``put`` is the order of ``peek``. A timer thread checkpoints (fsyncs) at most
  ``sync_every`` seconds later, so a power cut loses at most about that much (like the events file);
- ``put`` never blocks on the network and never waits for space: a full queue (``max_entries`` or
  ``max_bytes``) drops the OLDEST messages, counts them in ``dropped`` and warns (one line, at most every
  :data:`WARN_EVERY_S` seconds);
- a damaged file (a truncated or overwritten database, garbage that is not SQLite) is recovered on open: every
  row still readable is kept in order, the damaged file is moved aside to ``<name>.damaged``, one warning line.

Messages are ``(topic, payload)``: ``topic`` a str, ``payload`` bytes. Ids grow and are never reused.
Standard library only.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
import warnings
import zlib
from pathlib import Path
from typing import Any

from edge_runtime.errors import OutputError, UsageError

SCHEMA_VERSION = 1  # PRAGMA user_version of a spool file
DEFAULT_MAX_ENTRIES = 100_000
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
SYNC_EVERY_S = 1.0  # a put is fsynced at most this long after it returned
WARN_EVERY_S = 10.0  # a full queue warns at most this often (each warning carries the running count)
BUSY_TIMEOUT_S = 5.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS queue (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    size INTEGER NOT NULL,
    crc INTEGER NOT NULL
)
"""


class SpoolWarning(UserWarning):
    """Messages dropped from a full spool, or a damaged spool file recovered."""


def _connect(path: Path, wal: bool = True) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
    if wal:
        _use_wal(conn)
    return conn


def _use_wal(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")


def _message_size(topic: str, payload: bytes) -> int:
    return len(topic.encode("utf-8")) + len(payload)


def _crc(topic: str, payload: bytes) -> int:
    """CRC-32 of a message: SQLite reads a page cut short as zeros, so a salvaged row is checked against it."""
    return zlib.crc32(payload, zlib.crc32(topic.encode("utf-8") + b"\0"))


class Spool:
    """A bounded FIFO of ``(topic, payload)`` in one SQLite file at ``path``; thread-safe.

    ``put`` from any thread (the frame loop), ``peek``/``ack`` from the publisher. Opening an existing file
    resumes its queue (after a restart or a ``kill -9``). An unwritable path is an :class:`OutputError`
    (exit 3); a SQLite file that is not a spool is a :class:`UsageError` (exit 2), left untouched.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_bytes: int = DEFAULT_MAX_BYTES,
        sync_every: float = SYNC_EVERY_S,
    ):
        if max_entries < 1 or max_bytes < 1:
            raise UsageError(
                f"{path}: spool limits must be positive (max_entries={max_entries}, max_bytes={max_bytes})"
            )
        self.path = Path(path)
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.dropped = 0  # messages dropped by this process because the queue was full
        self.recovered: int | None = None  # rows kept from a damaged file, when one was found on open
        self._lock = threading.Lock()
        self._last_warn = 0.0
        self._owner = _lock_file(self.path)
        try:
            self._conn = self._open()
        except BaseException:
            self._owner.close()
            raise
        count, size, last = self._conn.execute("SELECT COUNT(*), TOTAL(size), MAX(id) FROM queue").fetchone()
        self._count, self._bytes, self.last_id = int(count), int(size), int(last or 0)
        self._dirty = False
        self._sync_conn: sqlite3.Connection | None = None  # the timer thread's own connection
        self._stop = threading.Event()
        self._sync_every = sync_every
        self._timer = threading.Thread(target=self._sync_loop, name="edgeae-spool-sync", daemon=True)
        self._timer.start()

    # --- opening, and recovering a damaged file -------------------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "ab"):  # create it, or learn now that the folder is read-only
                pass
        except OSError as exc:
            raise _write_error(self.path, exc) from None
        try:
            conn = _connect(self.path, wal=False)  # WAL changes the header: look at the file first
            self._check(conn)
            return conn
        except sqlite3.DatabaseError as exc:
            with contextlib.suppress(NameError, sqlite3.Error):
                conn.close()
            if isinstance(exc, sqlite3.OperationalError) and not _looks_damaged(exc):
                raise _write_error(self.path, exc) from None
            return self._recover(exc)

    def _check(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if version not in (0, SCHEMA_VERSION) or (version == 0 and tables - {"sqlite_sequence"}):
            conn.close()
            raise UsageError(f"{self.path}: is an SQLite file but not an edgeae spool; choose another spool path")
        _use_wal(conn)
        conn.execute(_SCHEMA)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        problems = [r[0] for r in conn.execute("PRAGMA quick_check")]
        if problems != ["ok"]:
            raise sqlite3.DatabaseError(problems[0])

    def _recover(self, exc: sqlite3.DatabaseError) -> sqlite3.Connection:
        rows = _salvage(self.path)
        aside = self.path.with_name(self.path.name + ".damaged")
        try:
            for suffix in ("", "-wal", "-shm"):
                src = Path(str(self.path) + suffix)
                if src.exists():
                    os.replace(src, Path(str(aside) + suffix))
            conn = _connect(self.path)
            conn.execute(_SCHEMA)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT INTO queue(id, topic, payload, size, crc) VALUES (?, ?, ?, ?, ?)", rows)
            conn.execute("COMMIT")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except (OSError, sqlite3.Error) as err:
            raise _write_error(self.path, err) from None
        self.recovered = len(rows)
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        warnings.warn(
            f"{self.path}: spool was damaged ({reason}); recovered {len(rows)} queued messages, "
            f"the damaged file is kept as {aside.name}",
            SpoolWarning,
            stacklevel=4,
        )
        return conn

    # --- the queue ------------------------------------------------------------------------------------------
    def put(self, topic: str, payload: bytes) -> int:
        """Append one message; returns its id. Drops the oldest messages when the queue is full."""
        size = _message_size(topic, payload)
        with self._lock:
            try:
                if size > self.max_bytes:  # one message larger than the whole queue: it is the one dropped
                    self._note_dropped(1)
                    return 0
                with self._transaction():
                    cur = self._conn.execute(
                        "INSERT INTO queue(topic, payload, size, crc) VALUES (?, ?, ?, ?)",
                        (topic, payload, size, _crc(topic, payload)),
                    )
                    over = self._make_room(self._count + 1, self._bytes + size)
            except sqlite3.Error as exc:
                raise _write_error(self.path, exc) from None
            self._count += 1 - over[0]
            self._bytes += size - over[1]
            self.last_id = int(cur.lastrowid)
            self._dirty = True
            if over[0]:
                self._note_dropped(over[0])
            return self.last_id

    @contextlib.contextmanager
    def _transaction(self):
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception (Ctrl-C included)."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")
            raise

    def _make_room(self, count: int, size: int) -> tuple[int, int]:
        """Inside put's transaction: delete the oldest rows until ``count``/``size`` fit; (rows, bytes) deleted."""
        if count <= self.max_entries and size <= self.max_bytes:
            return 0, 0
        gone_rows = gone_bytes = 0
        batch = max(count - self.max_entries, 16)
        while count - gone_rows > self.max_entries or size - gone_bytes > self.max_bytes:
            rows = self._conn.execute("SELECT id, size FROM queue ORDER BY id LIMIT ?", (batch,)).fetchall()
            last = None
            for rid, rsize in rows:
                if count - gone_rows <= self.max_entries and size - gone_bytes <= self.max_bytes:
                    break
                gone_rows += 1
                gone_bytes += rsize
                last = rid
            if last is None:
                break
            self._conn.execute("DELETE FROM queue WHERE id <= ?", (last,))
        return gone_rows, gone_bytes

    def _note_dropped(self, n: int) -> None:
        self.dropped += n
        now = time.monotonic()
        if self._last_warn == 0.0 or now - self._last_warn >= WARN_EVERY_S:
            self._last_warn = now
            warnings.warn(
                f"{self.path}: spool full (max {self.max_entries} messages, {self.max_bytes} bytes); "
                f"dropped the oldest, {self.dropped} dropped so far",
                SpoolWarning,
                stacklevel=3,
            )

    def peek(self, n: int, after: int = 0) -> list[tuple[int, str, bytes]]:
        """Up to ``n`` oldest messages with an id above ``after``, in order: ``[(id, topic, payload)]``."""
        with self._lock:
            try:
                rows = self._conn.execute(
                    "SELECT id, topic, payload FROM queue WHERE id > ? ORDER BY id LIMIT ?", (after, n)
                ).fetchall()
            except sqlite3.Error as exc:
                raise _write_error(self.path, exc) from None
        return [(int(i), str(t), bytes(p)) for i, t, p in rows]

    def ack(self, *ids: int) -> None:
        """Remove delivered messages (ids already gone, e.g. dropped while in flight, are ignored)."""
        if not ids:
            return
        marks = ",".join("?" * len(ids))
        with self._lock:
            try:
                with self._transaction():
                    n, size = self._conn.execute(
                        f"SELECT COUNT(*), TOTAL(size) FROM queue WHERE id IN ({marks})", ids
                    ).fetchone()
                    self._conn.execute(f"DELETE FROM queue WHERE id IN ({marks})", ids)
            except sqlite3.Error as exc:
                raise _write_error(self.path, exc) from None
            self._count -= int(n)
            self._bytes -= int(size)
            self._dirty = True

    def depth(self) -> int:
        """Messages waiting (not yet acknowledged)."""
        return self._count

    @property
    def size_bytes(self) -> int:
        """Bytes of topics and payloads waiting."""
        return self._bytes

    # --- durability -----------------------------------------------------------------------------------------
    def sync(self) -> None:
        """Checkpoint the WAL into the database; both are fsynced (a power cut keeps what was put before).

        On a connection of its own (WAL lets a checkpoint run beside a writer), so ``put`` never waits for the
        fsync."""
        if not self._dirty:
            return
        self._dirty = False
        try:
            if self._sync_conn is None:
                self._sync_conn = _connect(self.path)
            self._sync_conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:
            self._dirty = True
            raise _write_error(self.path, exc) from None

    def _sync_loop(self) -> None:
        try:
            while not self._stop.wait(self._sync_every):
                with contextlib.suppress(OutputError):
                    self.sync()
        finally:
            if self._sync_conn is not None:
                self._sync_conn.close()
                self._sync_conn = None

    def close(self) -> None:
        """Stop the timer, checkpoint, close. What is still queued stays for the next open."""
        self._stop.set()
        if self._timer.is_alive() and self._timer is not threading.current_thread():
            self._timer.join(timeout=2.0)
        with self._lock:
            if self._conn is None:
                return
            try:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:
                raise _write_error(self.path, exc) from None
            finally:
                self._conn.close()
                self._conn = None  # type: ignore[assignment]
                self._owner.close()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _lock_file(path: Path) -> Any:
    """Hold ``<path>.lock`` exclusively for as long as the spool is open: two processes publishing from one spool
    would send every message twice. The kernel releases it when the process dies, ``kill -9`` included."""
    lock = path.with_name(path.name + ".lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(lock, "a+")  # noqa: SIM115 - held open for the spool's life
    except OSError as exc:
        raise _write_error(path, exc) from None
    try:
        import fcntl  # POSIX only: elsewhere the spool is simply not guarded
    except ImportError:
        return fh
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise UsageError(f"{path}: the spool is in use by another edgeae process; give each run its own") from None
    except OSError:
        pass  # a file system without locks: go on unguarded
    return fh


def _looks_damaged(exc: sqlite3.Error) -> bool:
    text = str(exc).lower()
    return any(k in text for k in ("malformed", "not a database", "corrupt", "disk image"))


def _write_error(path: Path, exc: BaseException) -> OutputError:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    reason = getattr(exc, "strerror", None) or text
    return OutputError(f"{path}: cannot write the spool ({reason})")


def _salvage(path: Path) -> list[tuple[int, str, bytes, int, int]]:
    """Every row of a damaged spool that can still be read and whose CRC matches: from the front until the first
    bad page, then from the back until the first bad page; in id order, each once."""
    found: dict[int, tuple[int, str, bytes, int, int]] = {}
    try:
        conn = sqlite3.connect(path, isolation_level=None)
        # Lets SQLite read a file shorter than its header says (a truncated tail) instead of refusing it whole.
        conn.execute("PRAGMA writable_schema=ON")
    except sqlite3.Error:
        return []
    try:
        for order in ("ASC", "DESC"):
            with contextlib.suppress(sqlite3.Error):
                for rid, topic, payload, crc in conn.execute(
                    f"SELECT id, topic, payload, crc FROM queue ORDER BY id {order}"
                ):
                    if isinstance(topic, str) and isinstance(payload, bytes) and crc == _crc(topic, payload):
                        found[rid] = (rid, topic, payload, _message_size(topic, payload), crc)
    finally:
        conn.close()
    return [found[k] for k in sorted(found)]
