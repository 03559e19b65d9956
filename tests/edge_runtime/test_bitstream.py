"""Tests for the .eae container (edge_runtime.bitstream)."""

from __future__ import annotations

import os
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_runtime import bitstream as bs
from edge_runtime.bitstream import (
    FrameRecord,
    StreamHeader,
    StreamWriter,
    check_model_id,
    iter_frames,
    model_id_from_sha256,
    pack_stream,
    read_frame,
    read_header,
    unpack_stream,
)
from edge_runtime.entropy import decode_latents, encode_latents, tables_from_pmf
from edge_runtime.errors import BadDataError

MODEL_ID = bytes.fromhex("0123456789abcdef")


def rec(h: int = 32, w: int = 48, c: int = 3, m: int = 4, payload: bytes = b"payload") -> FrameRecord:
    return FrameRecord(height=h, width=w, channels=c, latent_shape=(m, -(-h // 16), -(-w // 16)), payload=payload)


FRAMES = [rec(payload=b"abc"), rec(17, 1, 1, 2, b""), rec(480, 640, 3, 128, bytes(range(40)))]


@pytest.fixture(scope="module")
def stream() -> bytes:
    return pack_stream(MODEL_ID, 3, FRAMES)


@pytest.fixture(scope="module")
def small_stream() -> bytes:
    return pack_stream(MODEL_ID, 1, [rec(16, 16, 1, 1, b"\x01\x02"), rec(20, 9, 3, 2, b"xyz")])


def expect_bad(fn, *args) -> None:
    with pytest.raises(BadDataError):
        fn(*args)


def crafted(records: list[bytes], *, count: int | None = None, version: int = 1, flags: int = 0) -> bytes:
    """A stream assembled by hand from raw record bytes, with correct CRCs, for cases pack_stream refuses."""
    index = b""
    off = 32
    for r in records:
        index += struct.pack("<QI", off, len(r))
        off += len(r)
    n = len(records) if count is None else count
    head = struct.pack("<4sBBBB8sIQ", b"\x89EAE", version, flags, 3, 0, MODEL_ID, n, off)
    return head + struct.pack("<I", zlib.crc32(index, zlib.crc32(head))) + b"".join(records) + index


def raw_record(h: int, w: int, c: int, m: int, lh: int, lw: int, payload: bytes = b"", flags: int = 0) -> bytes:
    body = struct.pack("<IIBBHHHI", h, w, c, flags, m, lh, lw, len(payload)) + payload
    return body + struct.pack("<I", zlib.crc32(body))


# --- round trips -------------------------------------------------------------------------------------------------


def test_pack_unpack_roundtrip(stream):
    header, frames = unpack_stream(stream)
    assert header == StreamHeader(MODEL_ID, quality=3, frame_count=3, version=1, index_offset=header.index_offset)
    assert frames == FRAMES
    assert read_header(stream) == header
    assert list(iter_frames(stream)) == FRAMES
    for i, f in enumerate(FRAMES):
        assert read_frame(stream, i) == f
    assert read_frame(stream, np.int64(2)) == FRAMES[2]
    assert unpack_stream(bytearray(stream)) == (header, FRAMES)
    assert unpack_stream(memoryview(stream)) == (header, FRAMES)


def test_layout_is_as_documented(stream):
    assert stream[:4] == b"\x89EAE" and stream[4] == 1 and stream[5] == 0 and stream[6] == 3 and stream[7] == 0
    assert stream[8:16] == MODEL_ID
    count, index_offset = struct.unpack_from("<IQ", stream, 16)
    assert count == 3 and index_offset + 12 * count == len(stream)
    off, length = struct.unpack_from("<QI", stream, index_offset)
    assert off == 32 and length == 24 + 3
    assert struct.unpack_from("<IIBBHHHI", stream, 32) == (32, 48, 3, 0, 4, 2, 3, 3)


def test_empty_stream():
    data = pack_stream(MODEL_ID, 0, [])
    assert len(data) == 32
    header, frames = unpack_stream(data)
    assert header.frame_count == 0 and frames == []
    expect_bad(read_frame, data, 0)


def test_end_to_end_with_entropy_coder():
    rng = np.random.default_rng(3)
    m = 8
    pmf = np.exp(-np.abs(np.arange(-8, 9))[None, :] / rng.uniform(0.2, 3, (m, 1)))
    tables = tables_from_pmf(pmf / pmf.sum(axis=1, keepdims=True) * 0.999, np.full(m, -8))
    frames, latents = [], []
    for h, w in [(100, 70), (16, 16), (33, 250)]:
        lat = np.round(rng.laplace(0, 2, (m, -(-h // 16), -(-w // 16)))).astype(np.int32)
        latents.append(lat)
        frames.append(FrameRecord(h, w, 3, lat.shape, encode_latents(lat, tables)))
    data = pack_stream(MODEL_ID, 2, frames)
    for i, lat in enumerate(latents):
        f = read_frame(data, i)
        np.testing.assert_array_equal(decode_latents(f.payload, tables, f.latent_shape), lat)


# --- writer ------------------------------------------------------------------------------------------------------


def test_stream_writer_matches_pack_stream(tmp_path, stream):
    path = tmp_path / "out.eae"
    with StreamWriter(path, MODEL_ID, 3) as w:
        for f in FRAMES:
            w.add(f)
        assert w.frame_count == 3
        assert not path.exists()  # nothing visible until close
    assert path.read_bytes() == stream
    assert os.listdir(tmp_path) == ["out.eae"]


def test_stream_writer_leaves_nothing_on_exception(tmp_path):
    path = tmp_path / "out.eae"
    with pytest.raises(KeyboardInterrupt):
        with StreamWriter(path, MODEL_ID, 3) as w:
            w.add(FRAMES[0])
            w.add(FRAMES[1])
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []


def test_stream_writer_bad_frame_keeps_previous_file(tmp_path):
    path = tmp_path / "out.eae"
    path.write_bytes(b"previous")
    with pytest.raises(BadDataError, match="16384"):
        with StreamWriter(path, MODEL_ID, 3) as w:
            w.add(FRAMES[0])
            w.add(rec(20000, 20000))
    assert path.read_bytes() == b"previous"
    assert os.listdir(tmp_path) == ["out.eae"]


def test_stream_writer_abort_and_drop(tmp_path):
    w = StreamWriter(tmp_path / "a.eae", MODEL_ID, 1)
    w.add(FRAMES[0])
    w.abort()
    w.abort()  # idempotent
    w2 = StreamWriter(tmp_path / "b.eae", MODEL_ID, 1)
    w2.add(FRAMES[0])
    del w2  # dropped without close: the temp file goes with it
    assert os.listdir(tmp_path) == []
    w3 = StreamWriter(tmp_path / "c.eae", MODEL_ID, 1)
    w3.close()
    with pytest.raises(ValueError):
        w3.add(FRAMES[0])
    assert read_header((tmp_path / "c.eae").read_bytes()).frame_count == 0


@pytest.mark.parametrize("model_id, quality", [(b"short", 1), (MODEL_ID, -1), (MODEL_ID, 256), (MODEL_ID, True)])
def test_writer_rejects_bad_arguments(tmp_path, model_id, quality):
    with pytest.raises(ValueError):
        pack_stream(model_id, quality, [])
    with pytest.raises(ValueError):
        StreamWriter(tmp_path / "x.eae", model_id, quality)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "frame",
    [
        rec(0, 16),
        rec(16385, 16),
        rec(16, 16, 2),
        rec(16, 16, 3, 0),
        rec(16, 16, 3, 1025),
        FrameRecord(32, 32, 3, (4, 3, 2), b""),
        FrameRecord(32, 32, 3, (4, 2), b""),  # type: ignore[arg-type]
    ],
)
def test_pack_rejects_bad_frames(frame):
    with pytest.raises(BadDataError):
        pack_stream(MODEL_ID, 1, [frame])


# --- model id ----------------------------------------------------------------------------------------------------


def test_model_id_mismatch_names_both(stream):
    header = read_header(stream)
    check_model_id(header, MODEL_ID, "a.eae")
    check_model_id(header, MODEL_ID + bytes(24), "a.eae")  # a full SHA-256 is truncated
    other = bytes.fromhex("fedcba9876543210")
    with pytest.raises(BadDataError) as err:
        check_model_id(header, other, "clip.eae")
    msg = str(err.value)
    assert "clip.eae" in msg and MODEL_ID.hex() in msg and other.hex() in msg and "\n" not in msg
    with pytest.raises(ValueError):
        check_model_id(header, b"abc", "x")


def test_model_id_from_sha256():
    digest = bytes(range(32))
    assert model_id_from_sha256(digest) == bytes(range(8))
    assert model_id_from_sha256(digest.hex()) == bytes(range(8))
    with pytest.raises(ValueError):
        model_id_from_sha256(b"short")


# --- malformed streams -------------------------------------------------------------------------------------------


def test_truncation_at_every_byte(small_stream):
    for cut in range(len(small_stream)):
        data = small_stream[:cut]
        expect_bad(unpack_stream, data)
        expect_bad(read_header, data)
        expect_bad(read_frame, data, 0)


def test_bit_flip_at_every_bit(small_stream):
    for bit in range(len(small_stream) * 8):
        buf = bytearray(small_stream)
        buf[bit // 8] ^= 1 << (bit % 8)
        expect_bad(unpack_stream, bytes(buf))


def test_trailing_and_leading_bytes_rejected(stream):
    with pytest.raises(BadDataError, match="trailing"):
        unpack_stream(stream + b"\0")
    expect_bad(unpack_stream, stream + stream)
    expect_bad(unpack_stream, b"\0" + stream)


def test_bad_magic_and_version(stream):
    expect_bad(read_header, b"GIF89a" + stream[6:])
    expect_bad(read_header, b"")
    for data in (crafted([], version=2), crafted([], flags=1), crafted([], flags=0x80)):
        with pytest.raises(BadDataError, match="unsupported version"):
            read_header(data)
    with pytest.raises(BadDataError, match="unsupported version"):
        unpack_stream(crafted([raw_record(16, 16, 3, 1, 1, 1, flags=4)]))


def test_not_bytes():
    expect_bad(read_header, 12345)
    expect_bad(read_header, "text")


def test_frame_index_out_of_range(stream):
    for i in (-1, 3, 10**20, "0", 1.0, True):
        expect_bad(read_frame, stream, i)


def test_huge_image_refused_before_allocation():
    # Valid CRCs and a consistent 6250x6250 latent: only the size caps stand in the way.
    data = crafted([raw_record(100000, 100000, 3, 192, 6250, 6250, b"\0" * 16)])
    tracemalloc.start()
    try:
        with pytest.raises(BadDataError, match="100000x100000"):
            read_frame(data, 0)
        with pytest.raises(BadDataError, match="100000x100000"):
            unpack_stream(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_huge_counts_refused_before_allocation():
    too_many = crafted([], count=bs.MAX_FRAMES + 1)
    at_cap = crafted([], count=bs.MAX_FRAMES)  # claims 12 MB of index that is not there
    huge_payload = crafted([raw_record(16, 16, 3, 1, 1, 1)])[: 32 + 16] + struct.pack("<I", 2**31 - 1)
    tracemalloc.start()
    try:
        expect_bad(read_header, too_many)
        expect_bad(read_header, at_cap)
        expect_bad(unpack_stream, huge_payload)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


@pytest.mark.parametrize(
    "record",
    [
        raw_record(16, 16, 2, 1, 1, 1),  # channels
        raw_record(16, 16, 3, 0, 1, 1),  # no latent channels
        raw_record(16, 16, 3, 1025, 1, 1),  # too many latent channels
        raw_record(17, 16, 3, 1, 1, 1),  # latent does not match ceil(17/16) = 2
        raw_record(16, 16, 3, 1, 1, 2),
        raw_record(0, 16, 3, 1, 0, 1),
        raw_record(16384 + 16, 16, 3, 1, 1025, 1),
    ],
)
def test_inconsistent_records_rejected(record):
    expect_bad(unpack_stream, crafted([record]))
    expect_bad(read_frame, crafted([record]), 0)


def test_payload_length_must_fill_record():
    good = raw_record(16, 16, 3, 1, 1, 1, b"abcd")
    body = bytearray(good[:-4])
    struct.pack_into("<I", body, 16, 3)  # claims 3 payload bytes in a record that holds 4
    bad = bytes(body) + struct.pack("<I", zlib.crc32(bytes(body)))
    expect_bad(unpack_stream, crafted([bad]))


def test_index_must_tile_the_file():
    r1, r2 = raw_record(16, 16, 3, 1, 1, 1, b"a"), raw_record(16, 16, 3, 1, 1, 1, b"bb")
    good = crafted([r1, r2])
    assert len(unpack_stream(good)[1]) == 2
    # Swap the two index entries (and fix the CRC): same set of records, wrong order.
    index_at = len(good) - 24
    entries = [good[index_at : index_at + 12], good[index_at + 12 :]]
    head = good[:28]
    index = entries[1] + entries[0]
    swapped = head + struct.pack("<I", zlib.crc32(index, zlib.crc32(head))) + good[32:index_at] + index
    with pytest.raises(BadDataError, match="tile"):
        unpack_stream(swapped)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_random_bytes_rejected(data):
    expect_bad(unpack_stream, data)
    expect_bad(unpack_stream, b"\x89EAE\x01" + data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_single_mutation_always_rejected(small_stream, data):
    # One changed, inserted or deleted byte is always caught: CRC32 detects every burst up to 32 bits, and an
    # insertion or deletion breaks the index arithmetic.
    buf = bytearray(small_stream)
    pos = data.draw(st.integers(0, len(buf) - 1))
    op = data.draw(st.sampled_from(["set", "insert", "delete"]))
    if op == "set":
        buf[pos] ^= data.draw(st.integers(1, 255))
    elif op == "insert":
        buf.insert(pos, data.draw(st.integers(0, 255)))
    else:
        del buf[pos]
    expect_bad(unpack_stream, bytes(buf))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_streams_never_crash(stream, data):
    buf = bytearray(stream)
    for _ in range(data.draw(st.integers(1, 6))):
        pos = data.draw(st.integers(0, max(0, len(buf) - 1)))
        op = data.draw(st.sampled_from(["set", "insert", "delete", "truncate", "splice"]))
        if op == "set" and buf:
            buf[pos] = data.draw(st.integers(0, 255))
        elif op == "insert":
            buf[pos:pos] = data.draw(st.binary(min_size=1, max_size=16))
        elif op == "delete" and buf:
            del buf[pos : pos + data.draw(st.integers(1, 16))]
        elif op == "splice":
            buf[pos : pos + 4] = data.draw(st.binary(min_size=4, max_size=4))
        else:
            del buf[pos:]
    blob = bytes(buf)
    for fn, args, kind in (
        (unpack_stream, (), tuple),
        (read_header, (), StreamHeader),
        (read_frame, (0,), FrameRecord),
        (read_frame, (2,), FrameRecord),
    ):
        try:
            result = fn(blob, *args)
        except BadDataError:
            continue  # the expected outcome; any other exception type fails the test
        assert isinstance(result, kind)
