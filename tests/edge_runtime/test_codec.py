"""Codec: frames to .eae and back through a tiny but real compression bundle (RELIABILITY.md cases 10-17, 19, 20).

The bundle's encoder averages 16x16 blocks and quantises them, ``latent = round((mean - 128) / 8)`` (values
-16..16), and its decoder paints each block back, ``clip(8 * latent + 128)``; the entropy tables cover -8..8, so
dark and bright blocks take the escape path.  Both are simple enough to compute here in numpy, so round trips are
checked exactly, not within a tolerance.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import tracemalloc
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_runtime import bitstream, codec
from edge_runtime.bitstream import FrameRecord, pack_stream, read_header, unpack_stream
from edge_runtime.codec import Decoder, Encoder, decode_stream, encode_stream
from edge_runtime.commands import compress, decompress
from edge_runtime.entropy import decode_latents, tables_from_pmf, tables_to_json
from edge_runtime.errors import BAD_DATA, MODEL_REJECTED, USAGE, BadDataError, ModelRejectedError, UsageError

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402 - onnx is optional for the edge runtime

TABLE_LO, TABLE_HI = -8, 8


# ----------------------------------------------------------------------------------------------- the tiny bundle


def _with_metadata(graph, ref) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edgeae-tests")
    model.ir_version = 10
    helper.set_model_props(model, {p.key: p.value for p in ref.metadata_props})
    return model


def encoder_graph(channels: int, ref) -> onnx.ModelProto:
    """frame uint8 [N,H,W,C] -> latent int32 [N,C,H/16,W/16] = round((blockmean - 128) / 8)."""
    vi = helper.make_tensor_value_info
    inits = [
        numpy_helper.from_array(np.array(128, np.float32), "c128"),
        numpy_helper.from_array(np.array(8, np.float32), "c8"),
    ]
    nodes = [
        helper.make_node("Cast", ["frame"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["f"], ["t"], perm=[0, 3, 1, 2]),
        helper.make_node("AveragePool", ["t"], ["p"], kernel_shape=[16, 16], strides=[16, 16]),
        helper.make_node("Sub", ["p", "c128"], ["s"]),
        helper.make_node("Div", ["s", "c8"], ["d"]),
        helper.make_node("Round", ["d"], ["r"]),
        helper.make_node("Cast", ["r"], ["latent"], to=TensorProto.INT32),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_encoder",
        [vi("frame", TensorProto.UINT8, ["N", "H", "W", channels])],
        [vi("latent", TensorProto.INT32, ["N", channels, "h", "w"])],
        inits,
    )
    return _with_metadata(graph, ref)


def decoder_graph(channels: int, ref) -> onnx.ModelProto:
    """latent int32 [N,C,h,w] -> frame uint8 [N,16h,16w,C] = clip(8 * latent + 128), nearest ×16."""
    vi = helper.make_tensor_value_info
    inits = [
        numpy_helper.from_array(np.array(128, np.float32), "c128"),
        numpy_helper.from_array(np.array(8, np.float32), "c8"),
        numpy_helper.from_array(np.array(0, np.float32), "lo"),
        numpy_helper.from_array(np.array(255, np.float32), "hi"),
        numpy_helper.from_array(np.array([1, 1, 16, 16], np.float32), "scales"),
    ]
    nodes = [
        helper.make_node("Cast", ["latent"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["f", "c8"], ["m"]),
        helper.make_node("Add", ["m", "c128"], ["a"]),
        helper.make_node("Resize", ["a", "", "scales"], ["u"], mode="nearest"),
        helper.make_node("Clip", ["u", "lo", "hi"], ["c"]),
        helper.make_node("Round", ["c"], ["r"]),
        helper.make_node("Cast", ["r"], ["b"], to=TensorProto.UINT8),
        helper.make_node("Transpose", ["b"], ["frame"], perm=[0, 2, 3, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_decoder",
        [vi("latent", TensorProto.INT32, ["N", channels, "h", "w"])],
        [vi("frame", TensorProto.UINT8, ["N", "H", "W", channels])],
        inits,
    )
    return _with_metadata(graph, ref)


def tables_bytes(channels: int) -> bytes:
    values = np.arange(TABLE_LO, TABLE_HI + 1)
    scales = np.linspace(1.5, 4.0, channels)[:, None]
    pmf = np.exp(-np.abs(values)[None, :] / scales)
    pmf = pmf / pmf.sum(axis=1, keepdims=True) * 0.97  # 3 % for the escape
    tables = tables_from_pmf(pmf, np.full(channels, TABLE_LO), precision=14)
    return json.dumps(tables_to_json(tables)).encode()


@pytest.fixture
def codec_bundle(make_bundle, make_model):
    """Factory: ``codec_bundle(name, quality=2, channels=3, multiple=16, precisions=("fp32",), run_id, tables)``."""

    def factory(
        name: str = "bundle",
        *,
        quality: int = 2,
        channels: int = 3,
        multiple: int = 16,
        precisions: tuple[str, ...] = ("fp32",),
        run_id: str = "tiny",
        tables: bytes | None = None,
        latent_channels: int | None = None,
    ) -> Path:
        meta = {
            "edgeae.latent.channels": str(latent_channels or channels),
            "edgeae.latent.stride": "16",
            "edgeae.latent.quantization": "round",
            "edgeae.quality": str(quality),
            "edgeae.run_id": run_id,
        }
        kw = dict(channels=channels, input_multiple=multiple, metadata=meta)
        models = {}
        for p in precisions:
            models[("encoder", p)] = encoder_graph(channels, make_model("encoder", precision=p, **kw))
            models[("decoder", p)] = decoder_graph(channels, make_model("decoder", precision=p, **kw))
        return make_bundle(
            graphs=("encoder", "decoder"),
            precisions=precisions,
            name=name,
            models=models,
            extra_files={"entropy.json": tables if tables is not None else tables_bytes(channels)},
            **kw,
        )

    return factory


@pytest.fixture
def bundle(codec_bundle) -> Path:
    return codec_bundle()


@pytest.fixture
def pair(bundle) -> tuple[Encoder, Decoder]:
    return Encoder(bundle, threads=1), Decoder(bundle, threads=1)


# ----------------------------------------------------------------------------------------------- expectations


def sample_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """(h, w, 3) uint8 BGR: smooth colour gradients, texture, and a black and a white patch (latents ±16)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack([128 + 90 * np.sin(x / 11 + seed), 128 + 90 * np.cos(y / 9), 60 + 150 * (x + y) / (h + w)], axis=-1)
    img += rng.normal(0, 12, img.shape)
    img[: h // 3, : w // 3] = 0
    img[-(h // 3) :, -(w // 3) :] = 255
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def expected_latent(image: np.ndarray, channels: int = 3, multiple: int = 16) -> np.ndarray:
    if image.ndim == 2:
        image = image[:, :, None]
    if channels == 1 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)[:, :, None]
    h, w = image.shape[:2]
    m = math.lcm(multiple, 16)
    padded = cv2.copyMakeBorder(image, 0, -h % m, 0, -w % m, cv2.BORDER_REFLECT_101).reshape(
        h + (-h % m), w + (-w % m), channels
    )
    ph, pw = padded.shape[:2]
    means = padded.reshape(ph // 16, 16, pw // 16, 16, channels).astype(np.float64).mean(axis=(1, 3))
    q = np.round((means - 128) / 8).astype(np.int32).transpose(2, 0, 1)
    return q[:, : -(-h // 16), : -(-w // 16)]


def expected_frame(latent: np.ndarray, h: int, w: int) -> np.ndarray:
    blocks = np.clip(8 * latent.astype(np.int64) + 128, 0, 255).astype(np.uint8).transpose(1, 2, 0)
    return blocks.repeat(16, axis=0).repeat(16, axis=1)[:h, :w]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * math.log10(255**2 / mse)


def write_png(path: Path, image: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", image)
    assert ok
    path.write_bytes(buf.tobytes())


def listing(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def write_video(path: Path, frames: list[np.ndarray], fourcc: str) -> list[np.ndarray]:
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10.0, (w, h))
    assert writer.isOpened(), f"this OpenCV cannot write {fourcc}"
    for f in frames:
        writer.write(f)
    writer.release()
    return read_video(path)


def read_video(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    out = []
    while True:
        ok, img = cap.read()
        if not ok:
            break
        out.append(img)
    cap.release()
    return out


# ----------------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("size", [(32, 32), (37, 53), (16, 16), (1, 20), (70, 9)])
def test_round_trip_is_exact(pair, size):
    enc, dec = pair
    h, w = size
    img = sample_image(h, w)
    want = expected_latent(img)
    latent = enc.latent(img)
    np.testing.assert_array_equal(latent, want)
    assert latent.dtype == np.int32 and latent.shape == (3, -(-h // 16), -(-w // 16))

    rec = enc.encode(img)
    assert (rec.height, rec.width, rec.channels, rec.latent_shape) == (h, w, 3, latent.shape)
    np.testing.assert_array_equal(decode_latents(rec.payload, enc.tables, rec.latent_shape), want)
    out = dec.decode(rec)
    assert out.dtype == np.uint8 and out.shape == (h, w, 3)
    np.testing.assert_array_equal(out, expected_frame(want, h, w))
    assert psnr(out, img) == pytest.approx(psnr(expected_frame(want, h, w), img))


def test_round_trip_uses_escapes_and_quality_psnr(pair):
    enc, dec = pair
    img = sample_image(96, 128, seed=3)
    latent = enc.latent(img)
    assert latent.min() < TABLE_LO and latent.max() > TABLE_HI  # escapes exercised
    out = dec.decode(enc.encode(img))
    # Block means at 8 levels: the tiny model's expected quality on this image, computed above exactly.
    assert 12 < psnr(out, img) < 40


@pytest.mark.parametrize("multiple", [8, 32, 48])
def test_other_input_multiples_pad_to_a_common_multiple(codec_bundle, multiple):
    path = codec_bundle(multiple=multiple)
    enc, dec = Encoder(path, threads=1), Decoder(path, threads=1)
    assert enc.multiple == math.lcm(multiple, 16) and dec.multiple == enc.multiple
    img = sample_image(40, 70)
    rec = enc.encode(img)
    assert rec.latent_shape == (3, 3, 5)  # the format's ceil(H/16), whatever the model pads to
    want = expected_latent(img, multiple=multiple)
    np.testing.assert_array_equal(decode_latents(rec.payload, enc.tables, rec.latent_shape), want)
    np.testing.assert_array_equal(dec.decode(rec), expected_frame(want, 40, 70))


def test_gray_model_takes_bgr_and_gray_frames(codec_bundle):
    path = codec_bundle(channels=1)
    enc, dec = Encoder(path, threads=1), Decoder(path, threads=1)
    img = sample_image(33, 47)
    gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    rec = enc.encode(img)
    assert rec.channels == 1 and rec.latent_shape == (1, 3, 3)
    assert enc.encode(gray) == rec and enc.encode(gray[:, :, None]) == rec
    want = expected_latent(img, channels=1)
    np.testing.assert_array_equal(dec.decode(rec), expected_frame(want, 33, 47))
    with pytest.raises(BadDataError, match="3 channels"):
        dec.decode(Encoder(codec_bundle("color"), threads=1).encode(img))

    tmp = path.parent
    write_png(tmp / "in.png", img)
    assert compress(path, tmp / "in.png", tmp / "g.eae", progress=False)["channels"] == 1
    decompress(tmp / "g.eae", tmp / "g.png", model=path, progress=False)
    decompress(tmp / "g.eae", tmp / "g", model=path, progress=False)
    for png in (tmp / "g.png", tmp / "g" / "frame_000000.png"):
        np.testing.assert_array_equal(cv2.imread(str(png), cv2.IMREAD_UNCHANGED), expected_frame(want, 33, 47)[..., 0])
    # Gray frames go into a BGR video; odd sides are padded to even (FFmpeg's 4:2:0 would drop a row and column).
    assert decompress(tmp / "g.eae", tmp / "g.mkv", model=path, progress=False)["video_size"] == (48, 34)
    (back,) = read_video(tmp / "g.mkv")
    np.testing.assert_array_equal(back[:33, :47, 1], expected_frame(want, 33, 47)[..., 0])  # FFV1: lossless
    np.testing.assert_array_equal(back[33], back[32])
    color = codec_bundle("color2")
    (tmp / "x.eae").write_bytes(pack_stream(Decoder(color).model_id, 2, [rec]))  # a gray frame, a colour model id
    with pytest.raises(BadDataError, match="frame 0: stream frame has 1 channels, the model decodes 3"):
        decompress(tmp / "x.eae", tmp / "c.png", model=color, progress=False)
    assert not (tmp / "c.png").exists()


def test_bad_frames_and_records(pair):
    enc, dec = pair
    for bad in (
        np.zeros((4, 4, 3), np.float32),
        np.zeros((4, 4, 2), np.uint8),
        np.zeros((2, 2, 2, 3), np.uint8),
        [[1]],
    ):
        with pytest.raises(BadDataError):
            enc.encode(bad)
    with pytest.raises(BadDataError, match="pixels per side"):
        enc.latent(np.zeros((8193, 4, 3), np.uint8))
    rec = enc.encode(sample_image(32, 32))
    with pytest.raises(BadDataError, match="latent channels"):
        dec.decode(FrameRecord(32, 32, 3, (4, 2, 2), rec.payload))
    with pytest.raises(BadDataError):
        dec.decode(FrameRecord(32, 32, 3, (3, 2, 2), rec.payload[:-1]))


# ----------------------------------------------------------------------------------------------- model identity


def test_model_id_names_the_fp32_decoder_for_every_precision(codec_bundle):
    path = codec_bundle(precisions=("fp32", "int8"))
    manifest = json.loads((path / "manifest.json").read_text())
    fp32_id = bytes.fromhex(manifest["files"]["decoder.fp32.onnx"]["sha256"])[:8]
    assert fp32_id == hashlib.sha256((path / "decoder.fp32.onnx").read_bytes()).digest()[:8]
    enc8 = Encoder(path, precision="int8", threads=1)
    dec32 = Decoder(path, precision="fp32", threads=1)
    assert enc8.model_id == dec32.model_id == fp32_id and enc8.quality == 2
    img = sample_image(32, 48)
    data = encode_stream(enc8, [img])
    assert read_header(data).model_id == fp32_id
    np.testing.assert_array_equal(decode_stream(data, dec32)[0], expected_frame(expected_latent(img), 32, 48))


def test_missing_precision_lists_those_present(bundle):
    for cls in (Encoder, Decoder):
        with pytest.raises(ModelRejectedError, match=r"precision int8 \(present: fp32\)") as err:
            cls(bundle, precision="int8")
        assert err.value.exit_code == MODEL_REJECTED


def test_bad_entropy_tables_are_model_rejections(codec_bundle):
    good = json.loads(tables_bytes(3))
    rising = json.loads(tables_bytes(3))
    rising["cdf"][0][2] = rising["cdf"][0][1]  # a zero frequency
    floats = json.loads(tables_bytes(3))
    floats["offset"][0] = -8.0
    cases = {
        "wrong_channels": (tables_bytes(2), "2 channels"),
        "zero_freq": (json.dumps(rising).encode(), "strictly increasing"),
        "float": (json.dumps(floats).encode(), "non-integer"),
        "not_json": (b"{'cdf': ", "not valid JSON"),
        "nan": (json.dumps(good).replace("16384", "NaN", 1).encode(), "not valid JSON"),
    }
    for name, (data, message) in cases.items():
        path = codec_bundle(name, tables=data)
        for cls in (Encoder, Decoder):
            with pytest.raises(ModelRejectedError, match=message) as err:
                cls(path)
            assert err.value.exit_code == MODEL_REJECTED


def test_tampered_tables_fail_the_manifest_check(bundle):
    (bundle / "entropy.json").write_bytes(tables_bytes(3).replace(b"16384", b"16385", 1))
    with pytest.raises(ModelRejectedError):
        Encoder(bundle)


def test_other_tasks_are_rejected(make_bundle, tmp_path):
    denoise = make_bundle(("denoise",), name="denoise")
    write_png(tmp_path / "a.png", sample_image(16, 16))
    for call in (
        lambda: Encoder(denoise),
        lambda: Decoder(denoise),
        lambda: compress(denoise, tmp_path / "a.png", tmp_path / "o.eae"),
    ):
        with pytest.raises(ModelRejectedError, match="denoise bundle"):
            call()
    assert not (tmp_path / "o.eae").exists()


# ----------------------------------------------------------------------------------------------- files


def test_compress_and_decompress_an_image(bundle, tmp_path):
    img = sample_image(50, 70)
    write_png(tmp_path / "in.png", img)
    stats = compress(bundle, tmp_path / "in.png", tmp_path / "out" / "x.eae", threads=1, progress=False)
    data = (tmp_path / "out" / "x.eae").read_bytes()
    assert stats["frames"] == 1 and stats["bytes"] == len(data) and stats["quality"] == 2
    assert stats["bpp"] == pytest.approx(8 * len(data) / (50 * 70), rel=1e-4)
    assert set(stats["ms"]) == {"capture", "inference", "entropy", "output"} and stats["frames_bad"] == 0
    want = expected_frame(expected_latent(img), 50, 70)

    d = decompress(tmp_path / "out" / "x.eae", tmp_path / "back.png", model=bundle, threads=1, progress=False)
    assert d["frames"] == 1 and d["kind"] == "image" and d["model_id"] == stats["model_id"]
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "back.png")), want)
    decompress(tmp_path / "out" / "x.eae", tmp_path / "frames", model=bundle, progress=False)
    assert listing(tmp_path / "frames") == ["frame_000000.png"]
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "frames" / "frame_000000.png")), want)
    assert listing(tmp_path / "out") == ["x.eae"]  # no temp files anywhere
    assert {p.name for p in tmp_path.iterdir()} == {"bundle", "in.png", "out", "back.png", "frames"}


def test_video_round_trip_and_single_frame(bundle, tmp_path, monkeypatch):
    source = [np.roll(sample_image(48, 64, seed=i), 7 * i, axis=1) for i in range(5)]
    frames = write_video(tmp_path / "clip.mkv", source, "FFV1")  # lossless: frames as OpenCV reads them
    assert len(frames) == 5
    stats = compress(bundle, tmp_path / "clip.mkv", tmp_path / "clip.eae", threads=1, progress=False)
    assert stats["frames"] == 5 and not stats["truncated"]
    data = (tmp_path / "clip.eae").read_bytes()
    dec = Decoder(bundle, threads=1)
    full = decode_stream(data, dec)
    for got, f in zip(full, frames, strict=True):
        np.testing.assert_array_equal(got, expected_frame(expected_latent(f), 48, 64))

    calls = []
    real = codec.decode_latents
    monkeypatch.setattr(codec, "decode_latents", lambda *a: calls.append(1) or real(*a))
    np.testing.assert_array_equal(decode_stream(data, dec, frame=2)[0], full[2])
    assert len(calls) == 1  # frame 2 alone was decoded
    d = decompress(tmp_path / "clip.eae", tmp_path / "f2.png", model=bundle, frame=2, progress=False)
    assert d["frames"] == 1 and len(calls) == 2
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "f2.png")), full[2])

    decompress(tmp_path / "clip.eae", tmp_path / "all", model=bundle, progress=False)
    assert listing(tmp_path / "all") == [f"frame_{i:06d}.png" for i in range(5)]
    for i in range(5):
        np.testing.assert_array_equal(cv2.imread(str(tmp_path / "all" / f"frame_{i:06d}.png")), full[i])
    for ext in (".avi", ".mkv", ".mp4"):
        d = decompress(tmp_path / "clip.eae", tmp_path / f"back{ext}", model=bundle, fps=10, progress=False)
        assert d["kind"] == "video" and d["frames"] == 5
        back = read_video(tmp_path / f"back{ext}")
        assert len(back) == 5 and back[0].shape == (48, 64, 3)
        if ext == ".mkv":  # FFV1 is lossless
            np.testing.assert_array_equal(np.stack(back), np.stack(full))


def test_folder_with_a_corrupt_image(bundle, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    images = {f"{i}.png": sample_image(32, 48, seed=i) for i in (1, 2, 4)}
    for name, img in images.items():
        write_png(folder / name, img)
    (folder / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    out = tmp_path / "imgs.eae"
    with pytest.raises(BadDataError, match=r"1 input\(s\) could not be read \(3\.png\); 3 frame\(s\) processed") as err:
        compress(bundle, folder, out, threads=1, progress=False)
    assert err.value.exit_code == BAD_DATA
    header, records = unpack_stream(out.read_bytes())  # complete, with the good frames in order
    assert header.frame_count == 3
    dec = Decoder(bundle)
    for rec, img in zip(records, images.values(), strict=True):
        np.testing.assert_array_equal(dec.decode(rec), expected_frame(expected_latent(img), 32, 48))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "imgs", "imgs.eae"]


def test_folder_where_nothing_reads_writes_nothing(bundle, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"not a png")
    with pytest.raises(BadDataError, match="nothing written"):
        compress(bundle, folder, tmp_path / "o.eae", progress=False)
    assert not (tmp_path / "o.eae").exists() and listing(tmp_path / "imgs") == ["a.png"]


def test_truncated_video_keeps_the_good_frames(bundle, tmp_path):
    frames = write_video(tmp_path / "full.avi", [sample_image(32, 48, seed=i) for i in range(20)], "MJPG")
    data = (tmp_path / "full.avi").read_bytes()
    (tmp_path / "cut.avi").write_bytes(data[: int(len(data) * 0.7)])
    with pytest.raises(BadDataError, match=r"video is truncated \(.*\); \d+ frame\(s\) processed and written") as err:
        compress(bundle, tmp_path / "cut.avi", tmp_path / "cut.eae", threads=1, progress=False)
    count = int(str(err.value).split("; ")[-1].split()[0])
    assert err.value.exit_code == BAD_DATA and err.value.stats["frames"] == count and err.value.stats["truncated"]
    assert 1 <= count < 20
    header, records = unpack_stream((tmp_path / "cut.eae").read_bytes())
    assert header.frame_count == count
    dec = Decoder(bundle)
    for rec, f in zip(records, frames, strict=False):
        np.testing.assert_array_equal(dec.decode(rec), expected_frame(expected_latent(f), 32, 48))


# ----------------------------------------------------------------------------------------------- damaged streams


@pytest.fixture
def small_stream(pair) -> bytes:
    enc, _ = pair
    return encode_stream(enc, [sample_image(32, 32, seed=1), sample_image(32, 32, seed=2)])


def test_every_truncation_and_every_bit_flip_is_refused(pair, small_stream):
    _, dec = pair
    data = small_stream
    assert len(decode_stream(data, dec)) == 2 and len(data) < 400
    for cut in range(len(data)):
        with pytest.raises(BadDataError):
            decode_stream(data[:cut], dec)
    buf = bytearray(data)
    for bit in range(8 * len(data)):
        buf[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(BadDataError):
            decode_stream(bytes(buf), dec)
        buf[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(BadDataError, match="trailing"):
        decode_stream(data + b"\0", dec)


@pytest.mark.parametrize("output", ["x.png", "frames", "x.mkv"])
def test_damaged_files_leave_no_output(bundle, tmp_path, small_stream, output):
    damaged = [small_stream[:0], small_stream[:31], small_stream[:100], small_stream[:-1]]
    for bit in (3, 8 * 9 + 1, 8 * 40, 8 * (len(small_stream) - 30), 8 * len(small_stream) - 1):
        flipped = bytearray(small_stream)
        flipped[bit // 8] ^= 1 << (bit % 8)
        damaged.append(bytes(flipped))
    stream = tmp_path / "s.eae"
    for data in damaged:
        stream.write_bytes(data)
        with pytest.raises(BadDataError) as err:
            decompress(stream, tmp_path / output, model=bundle, frame=0 if output == "x.png" else None, progress=False)
        assert err.value.exit_code == BAD_DATA
        assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "s.eae"]


@pytest.mark.parametrize("output", ["frames", "x.mkv"])
def test_payload_error_after_the_first_frame_leaves_no_output(pair, bundle, tmp_path, output):
    # CRCs are valid (pack_stream writes them), so the damage surfaces only when frame 1's payload is decoded,
    # after frame 0 has gone into the temp output.
    enc, _ = pair
    good = enc.encode(sample_image(32, 32))
    bad = FrameRecord(32, 32, 3, good.latent_shape, good.payload[:-2])
    (tmp_path / "s.eae").write_bytes(pack_stream(enc.model_id, 2, [good, bad]))
    with pytest.raises(BadDataError, match="entropy payload"):
        decompress(tmp_path / "s.eae", tmp_path / output, model=bundle, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "s.eae"]


def test_model_id_mismatch_names_both_ids(codec_bundle, tmp_path):
    a, b = codec_bundle("a", run_id="a"), codec_bundle("b", run_id="b")
    enc_a, dec_b = Encoder(a), Decoder(b)
    assert enc_a.model_id != dec_b.model_id
    (tmp_path / "s.eae").write_bytes(encode_stream(enc_a, [sample_image(32, 32)]))
    with pytest.raises(BadDataError) as err:
        decompress(tmp_path / "s.eae", tmp_path / "o.png", model=b, progress=False)
    assert enc_a.model_id.hex() in str(err.value) and dec_b.model_id.hex() in str(err.value)
    assert err.value.exit_code == BAD_DATA and not (tmp_path / "o.png").exists()
    with pytest.raises(BadDataError, match=enc_a.model_id.hex()):
        decode_stream((tmp_path / "s.eae").read_bytes(), dec_b)


def test_bundles_found_by_quality_and_by_model_id(codec_bundle, make_bundle, tmp_path):
    models = tmp_path / "models"
    paths = {q: codec_bundle(f"models/compress-q{q}", quality=q, run_id=f"q{q}") for q in (1, 2, 3)}
    make_bundle(("denoise",), name="models/denoise")  # other tasks are passed over
    (models / "broken").mkdir()
    (models / "broken" / "manifest.json").write_text("{not json")
    (models / "odd").mkdir()
    odd = {"task": "compress", "contract": [], "files": {"d": {"graph": "decoder", "precision": [], "sha256": "zz"}}}
    (models / "odd" / "manifest.json").write_text(json.dumps(odd))
    write_png(tmp_path / "in.png", sample_image(32, 32))

    s = compress(models, tmp_path / "in.png", tmp_path / "mid.eae", progress=False)  # default: the middle one
    assert s["quality"] == 2 and s["model"] == str(paths[2])
    s = compress(models, tmp_path / "in.png", tmp_path / "q3.eae", quality=3, progress=False)
    assert s["quality"] == 3 and read_header((tmp_path / "q3.eae").read_bytes()).quality == 3
    with pytest.raises(UsageError, match=r"quality 9 \(available: 1, 2, 3\)"):
        compress(models, tmp_path / "in.png", tmp_path / "q9.eae", quality=9, progress=False)
    with pytest.raises(UsageError, match="quality 2, not 3"):
        compress(paths[2], tmp_path / "in.png", tmp_path / "q9.eae", quality=3, progress=False)
    assert not (tmp_path / "q9.eae").exists()

    d = decompress(tmp_path / "q3.eae", tmp_path / "q3.png", models_dir=models, progress=False)
    assert d["model"] == str(paths[3]) and d["quality"] == 3
    d = decompress(tmp_path / "q3.eae", tmp_path / "q3b.png", model=models, progress=False)  # a folder: searched
    assert d["model"] == str(paths[3])

    lone = tmp_path / "lone"
    codec_bundle("lone/q1", quality=1, run_id="q1")
    with pytest.raises(ModelRejectedError, match=rf"no model for id {s['model_id']} under {lone}") as err:
        decompress(tmp_path / "q3.eae", tmp_path / "none.png", models_dir=lone, progress=False)
    assert err.value.exit_code == MODEL_REJECTED and not (tmp_path / "none.png").exists()
    with pytest.raises(ModelRejectedError, match="no such folder"):
        decompress(tmp_path / "q3.eae", tmp_path / "none.png", models_dir=tmp_path / "nope", progress=False)


def test_huge_dimensions_refused_before_allocation(pair, bundle, tmp_path):
    _, dec = pair
    body = struct.pack("<IIBBHHHI", 100000, 100000, 3, 0, 3, 6250, 6250, 16) + b"\0" * 16
    record = body + struct.pack("<I", zlib.crc32(body))
    index = struct.pack("<QI", 32, len(record))
    head = struct.pack("<4sBBBB8sIQ", b"\x89EAE", 1, 0, 2, 0, dec.model_id, 1, 32 + len(record))
    data = head + struct.pack("<I", zlib.crc32(index, zlib.crc32(head))) + record + index
    assert read_header(data).frame_count == 1
    tracemalloc.start()
    try:
        with pytest.raises(BadDataError, match="100000x100000"):
            decode_stream(data, dec)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    (tmp_path / "huge.eae").write_bytes(data)
    with pytest.raises(BadDataError, match="100000x100000"):
        decompress(tmp_path / "huge.eae", tmp_path / "o.png", model=bundle, progress=False)
    assert not (tmp_path / "o.png").exists()
    # Within the format's caps but over the model's max_side: refused before the payload is decoded.
    with pytest.raises(BadDataError, match="8192 pixels per side"):
        dec.decode(FrameRecord(9000, 16, 3, (3, 563, 1), b""))


def test_stream_over_the_cap_is_refused_without_reading(bundle, tmp_path, monkeypatch):
    def no_open(*a, **k):
        raise AssertionError("the stream was opened")

    big = tmp_path / "big.eae"
    with open(big, "wb") as fh:
        fh.truncate(codec.MAX_STREAM_BYTES + 1)  # sparse: nothing is written
    monkeypatch.setattr(codec, "open", no_open, raising=False)
    with pytest.raises(BadDataError, match="over the 2147483648-byte limit"):
        decompress(big, tmp_path / "o.png", model=bundle, progress=False)
    monkeypatch.setattr(codec, "MAX_STREAM_BYTES", 100)
    (tmp_path / "s.eae").write_bytes(b"\x89EAE" + b"\0" * 97)
    with pytest.raises(BadDataError, match="101 bytes, over the 100-byte limit"):
        decompress(tmp_path / "s.eae", tmp_path / "o.png", model=bundle, progress=False)
    with pytest.raises(BadDataError, match="not a regular file"):
        decompress(tmp_path, tmp_path / "o.png", model=bundle, progress=False)
    monkeypatch.undo()
    with pytest.raises(BadDataError, match="no such file"):
        decompress(tmp_path / "missing.eae", tmp_path / "o.png", model=bundle, progress=False)
    big.unlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "s.eae"]


def test_ctrl_c_leaves_nothing_behind(bundle, tmp_path, monkeypatch):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        write_png(folder / f"{i}.png", sample_image(32, 32, seed=i))
    compress(bundle, folder, tmp_path / "ok.eae", progress=False)
    before = listing(tmp_path)

    real_encode, real_decode = codec.encode_latents, codec.decode_latents
    calls = []

    def interrupt(real):
        def wrapper(*a):
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt
            return real(*a)

        return wrapper

    monkeypatch.setattr(codec, "encode_latents", interrupt(real_encode))
    with pytest.raises(KeyboardInterrupt):
        compress(bundle, folder, tmp_path / "out.eae", progress=False)
    with pytest.raises(KeyboardInterrupt):  # an existing output is left as it was
        calls.clear()
        compress(bundle, folder, tmp_path / "ok.eae", progress=False)
    assert listing(tmp_path) == before
    monkeypatch.setattr(codec, "decode_latents", interrupt(real_decode))
    for output in ("frames", "v.mkv"):
        calls.clear()
        with pytest.raises(KeyboardInterrupt):
            decompress(tmp_path / "ok.eae", tmp_path / output, model=bundle, progress=False)
        assert listing(tmp_path) == before
    assert read_header((tmp_path / "ok.eae").read_bytes()).frame_count == 3


def test_decompress_usage_errors(bundle, tmp_path, small_stream):
    (tmp_path / "s.eae").write_bytes(small_stream)
    cases = [
        (dict(output=tmp_path / "x.png"), "2 frames do not fit one image"),
        (dict(output=tmp_path / "x.png", frame=2), "frame 2 out of range"),
        (dict(output=tmp_path / "x.txt"), "unknown output extension"),
    ]
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    for kw, message in cases:
        with pytest.raises(UsageError, match=message) as err:
            decompress(tmp_path / "s.eae", model=bundle, progress=False, **kw)
        assert err.value.exit_code == USAGE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "full", "s.eae"]
    assert listing(tmp_path / "full") == ["keep.txt"]
    # An existing folder gets the frames beside what it holds, on success only.
    assert decompress(tmp_path / "s.eae", tmp_path / "full", model=bundle, progress=False)["frames"] == 2
    assert listing(tmp_path / "full") == ["frame_000000.png", "frame_000001.png", "keep.txt"]
    (tmp_path / "empty").mkdir()  # an existing empty folder is fine
    assert decompress(tmp_path / "s.eae", tmp_path / "empty", model=bundle, progress=False)["frames"] == 2
    assert listing(tmp_path / "empty") == ["frame_000000.png", "frame_000001.png"]


def test_decompress_refuses_to_write_over_its_stream(bundle, tmp_path, small_stream):
    (tmp_path / "s.eae").write_bytes(small_stream)
    os.link(tmp_path / "s.eae", tmp_path / "same.png")  # another name, the same file
    with pytest.raises(UsageError, match="is the input"):
        decompress(tmp_path / "s.eae", tmp_path / "same.png", model=bundle, frame=0, progress=False)
    assert (tmp_path / "s.eae").read_bytes() == small_stream


def test_mixed_sizes_cannot_form_a_video(pair, bundle, tmp_path):
    enc, _ = pair
    (tmp_path / "s.eae").write_bytes(encode_stream(enc, [sample_image(32, 32), sample_image(48, 16)]))
    with pytest.raises(UsageError, match="different sizes"):
        decompress(tmp_path / "s.eae", tmp_path / "v.avi", model=bundle, progress=False)
    decompress(tmp_path / "s.eae", tmp_path / "f", model=bundle, progress=False)
    assert cv2.imread(str(tmp_path / "f" / "frame_000001.png")).shape == (48, 16, 3)
    assert not (tmp_path / "v.avi").exists()


def test_empty_stream_has_nothing_to_write(pair, bundle, tmp_path):
    enc, _ = pair
    (tmp_path / "s.eae").write_bytes(pack_stream(enc.model_id, 2, []))
    with pytest.raises(BadDataError, match="no frames"):
        decompress(tmp_path / "s.eae", tmp_path / "f", model=bundle, progress=False)
    assert not (tmp_path / "f").exists()
    assert bitstream.read_header((tmp_path / "s.eae").read_bytes()).frame_count == 0


def test_frames_the_model_refuses_are_counted_and_skipped(bundle, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    write_png(folder / "1.png", sample_image(32, 32))
    write_png(folder / "2.png", np.zeros((1, 8200), np.uint8))  # over the model's max_side of 8192
    write_png(folder / "3.png", sample_image(16, 48))
    with pytest.raises(BadDataError, match=r"1 frame\(s\) skipped: 2\.png: .*8192") as err:
        compress(bundle, folder, tmp_path / "o.eae", progress=False)
    assert err.value.stats["frames"] == 2 and err.value.stats["frames_bad"] == 1
    assert read_header((tmp_path / "o.eae").read_bytes()).frame_count == 2


def test_full_disk_leaves_the_previous_output(bundle, tmp_path, monkeypatch, small_stream):
    write_png(tmp_path / "in.png", sample_image(32, 32))
    (tmp_path / "old.eae").write_bytes(b"previous")
    (tmp_path / "s.eae").write_bytes(small_stream)
    (tmp_path / "old.png").write_bytes(b"previous")

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(codec.os, "fsync", full)
    before = listing(tmp_path)
    with pytest.raises(BadDataError, match="No space left on device") as err:
        compress(bundle, tmp_path / "in.png", tmp_path / "old.eae", progress=False)
    assert err.value.exit_code == BAD_DATA
    for output in ("old.png", "frames", "v.mkv"):
        with pytest.raises(BadDataError, match="No space left on device"):
            decompress(tmp_path / "s.eae", tmp_path / output, model=bundle, frame=0, progress=False)
    assert listing(tmp_path) == before
    assert (tmp_path / "old.eae").read_bytes() == b"previous" and (tmp_path / "old.png").read_bytes() == b"previous"
    with pytest.raises(UsageError, match="is a folder"):
        compress(bundle, tmp_path / "in.png", tmp_path, progress=False)
