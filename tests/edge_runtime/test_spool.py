"""The durable queue behind the MQTT sink (edge_runtime/spool.py): order, restart, kill -9, bounds, damage."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from edge_runtime.errors import OutputError, UsageError
from edge_runtime.spool import Spool, SpoolWarning

ROOT = Path(__file__).resolve().parents[2]


def spool_warnings(record: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, SpoolWarning)]


def test_fifo_ack_and_reopen(tmp_path):
    path = tmp_path / "q" / "spool.db"  # the folder is made
    with Spool(path) as q:
        ids = [q.put(f"t/{i % 3}", b"payload %d" % i) for i in range(10)]
        assert ids == sorted(ids) and len(set(ids)) == 10
        assert q.depth() == 10
        first = q.peek(4)
        assert [p for _, _, p in first] == [b"payload %d" % i for i in range(4)]
        assert [t for _, t, _ in first] == ["t/0", "t/1", "t/2", "t/0"]
        assert [r[0] for r in q.peek(3, after=first[-1][0])] == ids[4:7]
        q.ack(*[r[0] for r in first])
        q.ack(ids[0])  # already gone: ignored
        assert q.depth() == 6
    with Spool(path) as q:  # a restart resumes the queue
        assert q.depth() == 6
        assert [p for _, _, p in q.peek(100)] == [b"payload %d" % i for i in range(4, 10)]
        assert q.size_bytes == sum(len(t) + len(p) for _, t, p in q.peek(100))


def test_ids_are_never_reused_after_the_queue_empties(tmp_path):
    path = tmp_path / "spool.db"
    with Spool(path) as q:
        last = [q.put("t", b"x") for _ in range(3)][-1]
        q.ack(*[r[0] for r in q.peek(10)])
    with Spool(path) as q:
        assert q.depth() == 0
        assert q.put("t", b"y") > last  # a publisher's cursor ("after id N") never skips a new message


def test_a_full_queue_drops_the_oldest_with_a_counted_warning(tmp_path):
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        with Spool(tmp_path / "spool.db", max_entries=50) as q:
            for i in range(200):
                q.put("t", b"%d" % i)
            assert q.depth() == 50
            assert q.dropped == 150
            assert [p for _, _, p in q.peek(100)] == [b"%d" % i for i in range(150, 200)]
    lines = spool_warnings(rec)
    assert len(lines) == 1, lines  # rate-limited: one line, not 150
    assert "dropped the oldest" in lines[0] and "\n" not in lines[0]


def test_max_bytes_bounds_the_queue_and_an_oversized_message_is_the_one_dropped(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SpoolWarning)
        with Spool(tmp_path / "spool.db", max_bytes=1000) as q:
            for i in range(100):
                q.put("topic", bytes([65 + i % 26]) * 95)  # 100 bytes each
            assert q.depth() == 10 and q.size_bytes == 1000
            assert q.dropped == 90
            kept = [p[:1] for _, _, p in q.peek(10)]
            assert kept == [bytes([65 + i % 26]) for i in range(90, 100)]
            assert q.put("topic", b"z" * 5000) == 0  # bigger than the whole queue: dropped, the rest stays
            assert q.depth() == 10 and q.dropped == 91


PUTTER = """
import sys
from edge_runtime.spool import Spool
q = Spool(sys.argv[1])
i = 0
while True:
    q.put("cam/frame", b"event %d" % i)
    print(i, flush=True)  # printed only after put returned
    i += 1
"""


def test_everything_put_before_a_kill_9_is_still_there_in_order(tmp_path):
    path = tmp_path / "spool.db"
    proc = subprocess.Popen([sys.executable, "-c", PUTTER, str(path)], stdout=subprocess.PIPE, text=True,
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    acknowledged = -1
    try:
        for line in proc.stdout:
            acknowledged = int(line)
            if acknowledged >= 1500:
                break
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.kill()
    assert acknowledged >= 1500
    with Spool(path) as q:
        payloads = [p for _, _, p in q.peek(10**6)]
    n = len(payloads)
    assert n >= acknowledged + 1  # every put that returned; maybe the one in progress too
    assert payloads == [b"event %d" % i for i in range(n)]  # in order, nothing missing, nothing doubled


def _filled(path: Path, n: int) -> None:
    with Spool(path) as q:
        for i in range(n):
            q.put("cam/frame", b"event %05d " % i + b"." * 200)


def test_a_truncated_file_is_recovered_with_one_line(tmp_path):
    path = tmp_path / "spool.db"
    _filled(path, 2000)
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.truncate(size * 6 // 10)  # the tail of the database is gone
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        q = Spool(path)
    lines = spool_warnings(rec)
    assert len(lines) == 1 and "\n" not in lines[0] and "damaged" in lines[0], lines
    assert q.recovered == q.depth()
    assert 0 < q.depth() < 2000
    payloads = [p for _, _, p in q.peek(10**6)]
    numbers = [int(p.split()[1]) for p in payloads]
    assert numbers == sorted(set(numbers))  # what was readable, in order, each once
    assert all(p == b"event %05d " % k + b"." * 200 for k, p in zip(numbers, payloads, strict=True))
    assert q.put("cam/frame", b"after") > 0 and q.depth() == len(payloads) + 1  # and it works again
    q.close()
    assert (tmp_path / "spool.db.damaged").exists()  # kept for a post-mortem
    with Spool(path) as again:  # the recovered file is healthy: no second warning
        assert again.recovered is None and again.depth() == len(payloads) + 1


def test_garbage_in_place_of_the_file_is_replaced_with_a_warning(tmp_path):
    path = tmp_path / "spool.db"
    path.write_bytes(os.urandom(10000))
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        with Spool(path) as q:
            assert q.depth() == 0 and q.recovered == 0
            q.put("t", b"x")
    assert len(spool_warnings(rec)) == 1


def test_a_torn_wal_tail_keeps_a_prefix_in_order(tmp_path):
    """What a kill -9 in the middle of a commit leaves: a WAL whose last frame is cut."""
    src = tmp_path / "live.db"
    q = Spool(src, sync_every=3600)  # no checkpoint: the messages live in the WAL
    for i in range(300):
        q.put("cam/frame", b"event %d" % i)
    copy = tmp_path / "copy.db"
    for suffix in ("", "-wal"):
        Path(str(copy) + suffix).write_bytes(Path(str(src) + suffix).read_bytes())
    q.close()
    wal = Path(str(copy) + "-wal")
    assert wal.stat().st_size > 4096
    with open(wal, "r+b") as fh:
        fh.truncate(wal.stat().st_size - 1000)
    with Spool(copy) as torn:
        payloads = [p for _, _, p in torn.peek(1000)]
    assert 250 < len(payloads) < 300
    assert payloads == [b"event %d" % i for i in range(len(payloads))]


def test_another_sqlite_file_is_refused_untouched(tmp_path):
    path = tmp_path / "app.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users(name TEXT)")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(UsageError, match="not an edgeae spool"):
        Spool(path)
    assert path.read_bytes() == before


def test_an_unwritable_spool_path_is_an_output_error(tmp_path):
    (tmp_path / "file").write_text("a file, not a folder")
    with pytest.raises(OutputError) as err:
        Spool(tmp_path / "file" / "spool.db")
    assert err.value.exit_code == 3 and "spool.db" in str(err.value) and "\n" not in str(err.value)


def test_one_spool_one_process(tmp_path):
    """Two publishers on one spool would send everything twice: the second open is refused until the first
    closes (or dies: the kernel drops the lock, as the kill -9 test shows by reopening)."""
    path = tmp_path / "spool.db"
    first = Spool(path)
    with pytest.raises(UsageError, match="in use by another edgeae process"):
        Spool(path)
    first.put("t", b"x")
    first.close()
    with Spool(path) as again:
        assert again.depth() == 1
