"""Latent embeddings (edge_runtime.embed): pooling, determinism, FP32 vs INT8, clusters, neighbours, the map, errors.

The real-model tests export a tiny untrained compression encoder (training.compress_model.Codec, n=8, m=8) with
torch and quantize it with onnxruntime.quantization; they skip where torch/onnx are not installed. The last
convolution is scaled up (x100): an untrained encoder's outputs are far below 1 and would all round to the
integer latent 0, while a trained codec's latents span tens of quantization steps; scaled, they do here too.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import click
import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from edge_runtime import errors
from edge_runtime.cli import EdgeAEGroup, embed, similar
from edge_runtime.commands import embed_source, similar_frames
from edge_runtime.embed import Embedder, l2_normalize, pool_latent
from edge_runtime.embed_index import ThumbnailKeeper, cosine_knn, index_path, load_embeddings, pca_2d, plot_map

H, W = 64, 96  # frames of the scene video: multiples of the encoder's 16
SCENE_PERIOD = 3  # the video alternates scenes every 3 frames
N_FRAMES = 24


def make_cli() -> click.Group:
    """A group like `edgeae` (EdgeAEError -> exit code) holding just the two commands under test."""
    group = EdgeAEGroup(name="edgeae", commands={"embed": embed, "similar": similar})
    group.params.append(click.Option(["--debug"], is_flag=True))
    return group


def invoke(*args: str):
    return CliRunner().invoke(make_cli(), [str(a) for a in args])


# --------------------------------------------------------------------------------------------------------------
# A tiny real encoder, FP32 and INT8


def _encoder_metadata(precision: str, parent: str) -> dict[str, str]:
    return {
        "edgeae.schema_version": "1",
        "edgeae.task": "compress",
        "edgeae.graph": "encoder",
        "edgeae.channel_order": "BGR",
        "edgeae.channels": "3",
        "edgeae.input_multiple": "16",
        "edgeae.max_side": "8192",
        "edgeae.precision": precision,
        "edgeae.quality": "2",
        "edgeae.latent.channels": "8",
        "edgeae.latent.stride": "16",
        "edgeae.latent.quantization": "round",
        "edgeae.parent_sha256": parent,
        "edgeae.run_id": "test-embed",
        "edgeae.model_config": json.dumps({"task": "compress", "channels": 3, "n": 8, "m": 8}),
    }


def _set_metadata(model, meta: dict[str, str]) -> bytes:
    from onnx import helper

    del model.metadata_props[:]
    helper.set_model_props(model, meta)
    return model.SerializeToString()


def _write_bundle(root: Path, files: dict[str, bytes], contract: dict[str, str]) -> Path:
    root.mkdir(parents=True)
    listed = {}
    for name, data in files.items():
        (root / name).write_bytes(data)
        graph, precision, _ = name.split(".")
        listed[name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "graph": graph,
                        "precision": precision}  # fmt: skip
    manifest = {
        "format": "edgeae-bundle",
        "schema_version": 1,
        "task": "compress",
        "name": root.name,
        "files": listed,
        "contract": {k.removeprefix("edgeae."): v for k, v in contract.items() if k != "edgeae.precision"},
        "calibration": {},
        "versions": {"edgeae": "0.1.0"},
        "command": "tests",
        "created": "2026-01-01T00:00:00Z",
    }
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return root


def _scene(kind: int, rng: np.random.Generator) -> np.ndarray:
    """Scene 0: blue horizontal stripes; scene 1: orange checks. Small noise and a shift of up to 3 px."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    if kind == 0:
        wave = 0.5 + 0.5 * np.sin(2 * np.pi * yy / 8.0)
        img = np.stack([60 + 170 * wave, 50 + 60 * wave, 30 + 20 * wave], axis=-1)
    else:
        checks = (((yy // 6) + (xx // 6)) % 2).astype(np.float32)
        img = np.stack([20 + 40 * checks, 90 + 90 * checks, 160 + 90 * checks], axis=-1)
    img = np.roll(img, (int(rng.integers(0, 4)), int(rng.integers(0, 4))), axis=(0, 1))
    img = img + rng.normal(0, 4.0, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def scene_of(row: int) -> int:
    return (row // SCENE_PERIOD) % 2


@pytest.fixture(scope="module")
def encoder_bundles(tmp_path_factory):
    """``{"both": fp32+int8 bundle, "int8": int8-only bundle}`` of one tiny real encoder."""
    torch = pytest.importorskip("torch")
    onnx = pytest.importorskip("onnx")
    quantization = pytest.importorskip("onnxruntime.quantization")
    from training.compress_model import Codec, CompressConfig, EncoderGraph

    tmp = tmp_path_factory.mktemp("encoder")
    torch.manual_seed(0)
    codec = Codec(CompressConfig(n=8, m=8)).eval()
    with torch.no_grad():
        last = codec.g_a.net[-1]
        last.weight.mul_(100.0)
        last.bias.mul_(100.0)
    fp32_path = tmp / "encoder.fp32.raw.onnx"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notices
        axes = {"frame": {0: "N", 1: "H", 2: "W"}, "latent": {0: "N", 2: "h", 3: "w"}}
        torch.onnx.export(EncoderGraph(codec), (torch.zeros(1, H, W, 3, dtype=torch.uint8),), str(fp32_path),
                          input_names=["frame"], output_names=["latent"], opset_version=17, dynamo=False,
                          dynamic_axes=axes)  # fmt: skip
    fp32_meta = _encoder_metadata("fp32", "")
    fp32_bytes = _set_metadata(onnx.load(str(fp32_path)), fp32_meta)
    fp32_sha = hashlib.sha256(fp32_bytes).hexdigest()

    # INT8 as export does it: QDQ, per-channel weights, only Conv, the last Conv (its output is rounded) float.
    model = onnx.load(str(fp32_path))
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    rng = np.random.default_rng(1)
    calib = [_scene(i % 2, rng)[None] for i in range(8)] + [rng.integers(0, 256, (1, H, W, 3), dtype=np.uint8)]

    class Reader(quantization.CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"frame": f} for f in calib])

        def get_next(self):
            return next(self.items, None)

    int8_path = tmp / "encoder.int8.raw.onnx"
    quantization.quantize_static(str(fp32_path), str(int8_path), Reader(), quant_format=quantization.QuantFormat.QDQ,
                                 op_types_to_quantize=["Conv"], per_channel=True, nodes_to_exclude=convs[-1:],
                                 activation_type=quantization.QuantType.QUInt8,
                                 weight_type=quantization.QuantType.QInt8)  # fmt: skip
    int8_model = onnx.load(str(int8_path))
    assert sum(n.op_type == "QuantizeLinear" for n in int8_model.graph.node) >= 3  # really quantized
    int8_bytes = _set_metadata(int8_model, _encoder_metadata("int8", fp32_sha))
    both = _write_bundle(tmp / "codec", {"encoder.fp32.onnx": fp32_bytes, "encoder.int8.onnx": int8_bytes},
                         fp32_meta)  # fmt: skip
    int8_only = _write_bundle(tmp / "codec-int8", {"encoder.int8.onnx": int8_bytes}, fp32_meta)
    return {"both": both, "int8": int8_only, "fp32_sha": fp32_sha}


@pytest.fixture(scope="module")
def scene_video(tmp_path_factory) -> Path:
    """An MJPG .avi of two scenes alternating every 3 frames."""
    path = tmp_path_factory.mktemp("video") / "scenes.avi"
    rng = np.random.default_rng(7)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (W, H))
    assert writer.isOpened()
    for row in range(N_FRAMES):
        writer.write(_scene(scene_of(row), rng))
    writer.release()
    return path


@pytest.fixture(scope="module")
def video_embeddings(encoder_bundles, scene_video, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("emb") / "scenes.npy"
    stats = embed_source(encoder_bundles["both"], scene_video, out)
    assert stats["frames"] == N_FRAMES and stats["dim"] == 8 and "error" not in stats
    return out


# --------------------------------------------------------------------------------------------------------------
# Pure functions


def test_pool_latent_global_mean_and_grid_cells():
    rng = np.random.default_rng(0)
    latent = rng.integers(-20, 20, (5, 8, 12)).astype(np.int32)
    v1 = pool_latent(latent)
    assert v1.dtype == np.float32 and v1.shape == (5,)
    np.testing.assert_allclose(v1, latent.mean(axis=(1, 2)), rtol=1e-6)
    v2 = pool_latent(latent, grid=2)
    assert v2.shape == (5 * 4,)
    cells = v2.reshape(2, 2, 5)  # cells row by row, each its channel means
    np.testing.assert_allclose(cells[0, 1], latent[:, :4, 6:].mean(axis=(1, 2)), rtol=1e-6)
    np.testing.assert_allclose(cells[1, 0], latent[:, 4:, :6].mean(axis=(1, 2)), rtol=1e-6)
    # Not divisible and smaller than the grid: adaptive pooling (cells overlap or repeat), still C*G*G values.
    odd = rng.normal(size=(3, 5, 2)).astype(np.float32)
    v3 = pool_latent(odd, grid=3)
    assert v3.shape == (27,) and np.isfinite(v3).all()
    np.testing.assert_allclose(v3.reshape(3, 3, 3)[0, 0], odd[:, 0:2, 0:1].mean(axis=(1, 2)), rtol=1e-5)
    # Global average is the mean of an even grid's cells.
    np.testing.assert_allclose(pool_latent(latent, 4).reshape(16, 5).mean(axis=0), v1, rtol=1e-5)


@pytest.mark.parametrize("bad", [np.zeros((3, 4)), np.zeros((0, 4, 4)), np.array([[["a"]]]),
                                 np.full((1, 2, 2), np.nan)])  # fmt: skip
def test_pool_latent_refuses_bad_latents(bad):
    with pytest.raises(errors.BadDataError):
        pool_latent(bad)


def test_pool_latent_refuses_bad_grid():
    for grid in (0, -1, 33, 1.5, True):
        with pytest.raises(errors.UsageError):
            pool_latent(np.zeros((1, 2, 2)), grid=grid)


def test_cosine_knn_orders_by_similarity_with_ties_in_row_order():
    m = np.array([[1, 0], [0, 1], [1, 1], [2, 0], [0, 0], [-1, 0]], np.float32)
    hits = cosine_knn(m, np.array([1.0, 0.0]), 3)
    assert [r for r, _ in hits] == [0, 3, 2]  # 0 and 3 tie at 1.0: row order
    assert hits[0][1] == pytest.approx(1.0) and hits[2][1] == pytest.approx(np.sqrt(0.5))
    assert [r for r, _ in cosine_knn(m, m[0], 2, exclude=0)] == [3, 2]
    assert len(cosine_knn(m, m[0], 100)) == 6
    assert dict(cosine_knn(m, m[0], 6))[4] == 0.0  # a zero row is similar to nothing
    assert all(s == 0.0 for _, s in cosine_knn(m, np.zeros(2), 6))
    with pytest.raises(errors.UsageError):
        cosine_knn(m, m[0], 0)
    with pytest.raises(errors.BadDataError):
        cosine_knn(m, np.ones(3), 1)


def test_l2_normalize_keeps_zero_rows():
    out = l2_normalize(np.array([[3, 4], [0, 0]], np.float32))
    np.testing.assert_allclose(out, [[0.6, 0.8], [0, 0]])


def test_pca_2d_finds_the_main_axis_and_is_deterministic():
    rng = np.random.default_rng(3)
    t = rng.normal(size=200)
    direction = np.array([3.0, -1.0, 2.0, 0.5]) / np.linalg.norm([3.0, -1.0, 2.0, 0.5])
    x = t[:, None] * direction * 10 + rng.normal(scale=0.1, size=(200, 4))
    p = pca_2d(x.astype(np.float32))
    assert p.shape == (200, 2)
    assert abs(np.corrcoef(p[:, 0], t)[0, 1]) > 0.999
    assert np.std(p[:, 1]) < 0.2
    np.testing.assert_array_equal(p, pca_2d(x.astype(np.float32)))
    np.testing.assert_array_equal(pca_2d(np.ones((1, 5), np.float32)), np.zeros((1, 2)))
    np.testing.assert_array_equal(pca_2d(np.ones((4, 1), np.float32)), np.zeros((4, 2)))


def test_thumbnail_keeper_caps_and_spreads():
    keeper = ThumbnailKeeper(cap=10)
    img = np.zeros((20, 30, 3), np.uint8)
    for row in range(100):
        keeper.add(row, img)
    kept = sorted(keeper.kept)
    assert 5 <= len(kept) <= 10 and kept[0] == 0 and kept[-1] >= 80
    assert len(set(np.diff(kept))) == 1  # evenly spaced
    assert max(t.shape[1] for t in keeper.kept.values()) == 48


def test_plot_map_writes_a_decodable_image(tmp_path):
    rng = np.random.default_rng(0)
    points = rng.normal(size=(30, 2))
    thumbs = [np.full((40, 60, 3), (i * 8) % 256, np.uint8) if i % 3 == 0 else None for i in range(30)]
    path = plot_map(points, thumbs, tmp_path / "map.png", size=512, title="test")
    image = cv2.imread(str(path))
    assert image is not None and image.shape == (512, 512, 3)
    with pytest.raises(errors.UsageError):
        plot_map(points, thumbs, tmp_path / "map.txt")
    with pytest.raises(errors.UsageError):
        plot_map(points, thumbs[:3], tmp_path / "map.png")


# --------------------------------------------------------------------------------------------------------------
# With the tiny onnx.helper bundles of conftest


def test_anomaly_features_and_padding_crop(make_bundle):
    # The conftest anomaly graph's features are the frame itself (NCHW float): the embedding is the channel
    # means. 30x45 is padded to 32x48 by reflection; the crop must leave the mirrored rows and columns out.
    bundle = make_bundle(("anomaly",))
    frame = np.random.default_rng(0).integers(0, 256, (30, 45, 3), dtype=np.uint8)
    emb = Embedder(bundle)
    np.testing.assert_allclose(emb.embed(frame), frame.reshape(-1, 3).mean(axis=0), rtol=1e-6)
    assert emb.output == "features" and len(emb.model_id) == 16


def test_denoise_bundle_is_refused(make_bundle, tmp_path):
    bundle = make_bundle(("denoise",))
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((16, 16, 3), np.uint8))
    with pytest.raises(errors.ModelRejectedError, match="no encoder"):
        Embedder(bundle)
    result = invoke("embed", bundle, tmp_path / "a.png", "-o", tmp_path / "e.npy")
    assert result.exit_code == 4, result.output


def test_image_folder_index_names_files(make_bundle, tmp_path):
    bundle = make_bundle(("encoder",))  # latent = the frame itself (stride 1)
    folder = tmp_path / "imgs"
    folder.mkdir()
    colors = {"b.png": (255, 0, 0), "a.png": (0, 0, 255), "c.png": (250, 10, 0)}
    for name, color in colors.items():
        cv2.imwrite(str(folder / name), np.full((16, 24, 3), color, np.uint8))
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    out = tmp_path / "e.npy"
    result = invoke("embed", bundle, folder, "-o", out, "--normalize", "--grid", "2")
    assert result.exit_code == 3, result.output  # the corrupt file is counted; the others are written
    matrix, header, entries = load_embeddings(out)
    assert [e["name"] for e in entries] == ["a.png", "b.png", "c.png"]
    assert matrix.shape == (3, 3 * 4) and header["grid"] == 2 and header["normalize"] is True
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, rtol=1e-6)
    hits = similar_frames(out, 1, k=1)["neighbours"]  # b (blue) -> c (almost blue)
    assert hits[0]["row"] == 2 and hits[0]["name"] == "c.png"


# --------------------------------------------------------------------------------------------------------------
# The tiny real encoder


def test_same_input_gives_identical_vectors_and_files(encoder_bundles, scene_video, video_embeddings, tmp_path):
    again = tmp_path / "again.npy"
    embed_source(encoder_bundles["both"], scene_video, again)
    assert again.read_bytes() == video_embeddings.read_bytes()
    assert index_path(again).read_text() == index_path(video_embeddings).read_text()
    emb = Embedder(encoder_bundles["both"])
    frame = _scene(1, np.random.default_rng(5))
    np.testing.assert_array_equal(emb.embed(frame), emb.embed(frame.copy()))


def test_index_maps_rows_to_frames_and_names_the_model(encoder_bundles, video_embeddings):
    matrix, header, entries = load_embeddings(video_embeddings)
    assert matrix.dtype == np.float32 and matrix.shape == (N_FRAMES, 8)
    assert header["model_id"] == encoder_bundles["fp32_sha"][:16]
    assert header["graph"] == "encoder" and header["output"] == "latent" and header["precision"] == "fp32"
    assert [e["index"] for e in entries] == list(range(N_FRAMES))
    assert entries[5]["time"] == pytest.approx(0.5, abs=0.01)  # 10 fps


def test_fp32_and_int8_give_the_same_vectors(encoder_bundles):
    """Cosine FP32 vs INT8 > 0.995 and relative L2 error < 5 % on every frame.

    Measured on the development CPU: cosine >= 0.9999, relative error about 1 %. The latents are rounded in
    the graph, so INT8 error shows as a few latents moving by one step; averaged over the 4x6 grid that is a
    small change to vector entries that span several steps. Cosine alone would be lenient (the vectors share a
    large common component), hence the L2 check too. The bounds leave room for other CPUs' INT8 kernels.
    """
    fp32, int8 = Embedder(encoder_bundles["both"]), Embedder(encoder_bundles["both"], "int8")
    int8_only = Embedder(encoder_bundles["int8"], "int8")
    assert fp32.model_id == int8.model_id == int8_only.model_id  # one model, one embedding space
    assert int8.precision == "int8"
    rng = np.random.default_rng(11)
    cosines, errors_l2 = [], []
    for i in range(8):
        frame = _scene(i % 2, rng)
        a, b = fp32.embed(frame), int8.embed(frame)
        np.testing.assert_array_equal(b, int8_only.embed(frame))
        cosines.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
        errors_l2.append(float(np.linalg.norm(a - b) / np.linalg.norm(a)))
    assert min(cosines) > 0.995, cosines
    assert 0 < max(errors_l2) < 0.05, errors_l2  # > 0: the INT8 graph really is another computation


def test_two_scenes_separate_into_two_clusters(video_embeddings):
    matrix, _, _ = load_embeddings(video_embeddings)
    truth = np.array([scene_of(r) for r in range(N_FRAMES)])
    pc1 = pca_2d(matrix)[:, 0]
    predicted = (pc1 > 0).astype(int)
    accuracy = max((predicted == truth).mean(), (predicted != truth).mean())
    assert accuracy >= 0.95, (pc1, truth)
    for row in range(N_FRAMES):
        hits = cosine_knn(matrix, matrix[row], 3, exclude=row)
        assert all(scene_of(r) == scene_of(row) for r, _ in hits), (row, hits)


def test_similar_by_row_prints_neighbours_of_the_same_scene(video_embeddings):
    result = invoke("similar", video_embeddings, "--query", "4", "--k", "3", "--json")
    assert result.exit_code == 0, result.output
    hits = [json.loads(line) for line in result.output.splitlines()]
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert all(scene_of(h["row"]) == scene_of(4) and h["row"] != 4 for h in hits)
    assert all("time" in h and "index" in h for h in hits)
    text = invoke("similar", video_embeddings, "--query", "0", "--k", "2")
    assert text.exit_code == 0 and text.output.startswith("query: row 0 (frame 0 at 0.000 s)")
    assert len(text.output.splitlines()) == 3 and "cos +" in text.output


def test_similar_by_image_embeds_it_with_the_model(encoder_bundles, video_embeddings, tmp_path):
    query = tmp_path / "query.png"
    cv2.imwrite(str(query), _scene(1, np.random.default_rng(99)))
    hits = similar_frames(video_embeddings, str(query), 5, model=encoder_bundles["both"])["neighbours"]
    assert all(scene_of(h["row"]) == 1 for h in hits)
    # The INT8 build of the same model embeds into the same space and is accepted.
    result = invoke("similar", video_embeddings, "--query", query, "--k", "5", "--model", encoder_bundles["int8"],
                    "--precision", "int8", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert all(scene_of(json.loads(line)["row"]) == 1 for line in result.stdout.splitlines())


def test_similar_refuses_another_model_and_a_missing_model(make_bundle, video_embeddings, tmp_path):
    query = tmp_path / "query.png"
    cv2.imwrite(str(query), _scene(0, np.random.default_rng(1)))
    other = make_bundle(("encoder",))
    result = invoke("similar", video_embeddings, "--query", query, "--model", other)
    assert result.exit_code == 4 and "model id" in result.output
    result = invoke("similar", video_embeddings, "--query", query)
    assert result.exit_code == 2 and "--model" in result.output


def test_embed_plot_draws_the_map(encoder_bundles, scene_video, tmp_path):
    out, plot = tmp_path / "e.npy", tmp_path / "map.png"
    result = invoke("embed", encoder_bundles["both"], scene_video, "-o", out, "--plot", plot, "--grid", "2",
                    "--thumbnails", "10")  # fmt: skip
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)  # stderr holds the progress summary
    assert stats["frames"] == N_FRAMES and stats["dim"] == 8 * 4 and stats["plot"] == str(plot)
    image = cv2.imread(str(plot))
    assert image is not None and image.shape == (1024, 1024, 3)
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 50  # thumbnails and dots, not a blank canvas


# --------------------------------------------------------------------------------------------------------------
# Bad input and exit codes


def test_embed_bad_inputs(make_bundle, tmp_path):
    bundle = make_bundle(("encoder",))
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), np.zeros((16, 16, 3), np.uint8))
    assert invoke("embed", bundle, tmp_path / "missing.mp4", "-o", tmp_path / "e.npy").exit_code == 3
    assert invoke("embed", bundle, image, "-o", tmp_path / "e.txt").exit_code == 2
    assert invoke("embed", bundle, image, "-o", tmp_path / "e.npy", "--plot", tmp_path / "m.gif").exit_code == 2
    assert invoke("embed", tmp_path / "no-model", image, "-o", tmp_path / "e.npy").exit_code == 4
    assert not (tmp_path / "e.npy").exists() and not (tmp_path / "e.index.jsonl").exists()
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    result = invoke("embed", bundle, broken, "-o", tmp_path / "e.npy")
    assert result.exit_code == 3 and "broken.png" in result.stderr and "nothing written" in result.stderr
    assert not (tmp_path / "e.npy").exists()


@pytest.fixture
def small_embeddings(make_bundle, tmp_path) -> Path:
    bundle = make_bundle(("encoder",))
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(4):
        cv2.imwrite(str(folder / f"{i}.png"), np.full((8, 8, 3), i * 60, np.uint8))
    out = tmp_path / "small.npy"
    embed_source(bundle, folder, out)
    return out


def test_similar_bad_inputs(small_embeddings, tmp_path):
    assert invoke("similar", small_embeddings, "--query", "0", "--k", "2").exit_code == 0
    assert invoke("similar", tmp_path / "missing.npy", "--query", "0").exit_code == 3
    assert invoke("similar", small_embeddings, "--query", "4").exit_code == 2  # rows 0..3
    assert invoke("similar", small_embeddings, "--query", "-1").exit_code == 2
    assert invoke("similar", small_embeddings, "--query", "0", "--k", "0").exit_code == 2
    assert invoke("similar", small_embeddings, "--query", tmp_path / "nope.png", "--model", "x").exit_code == 3

    def write(name: str, data) -> Path:
        path = tmp_path / name
        if isinstance(data, bytes):
            path.write_bytes(data)
        else:
            np.save(path, data)
        index_path(small_embeddings).with_name(index_path(path).name).write_bytes(
            index_path(small_embeddings).read_bytes()
        )
        return path

    matrix = np.load(small_embeddings)
    cases = {
        "garbage.npy": b"\x00\x01 not numpy at all",
        "truncated.npy": small_embeddings.read_bytes()[:-5],
        "f64.npy": matrix.astype(np.float64),
        "oned.npy": matrix[0],
        "other.npy": matrix + 1,  # a valid array, but not the one the index describes
        "pickled.npy": np.array([{"a": 1}], dtype=object),
    }
    for name, data in cases.items():
        if name == "pickled.npy":
            np.save(tmp_path / name, data, allow_pickle=True)
            index_path(tmp_path / name).write_bytes(index_path(small_embeddings).read_bytes())
            path = tmp_path / name
        else:
            path = write(name, data)
        result = invoke("similar", path, "--query", "0")
        assert result.exit_code == 3, (name, result.output)
    no_index = tmp_path / "no-index.npy"
    no_index.write_bytes(small_embeddings.read_bytes())
    assert invoke("similar", no_index, "--query", "0").exit_code == 3


def test_similar_refuses_a_tampered_index_header(small_embeddings):
    idx = index_path(small_embeddings)
    lines = idx.read_text().splitlines()
    header = json.loads(lines[0])
    header["grid"] = "2; rm -rf /"
    idx.write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n")
    result = invoke("similar", small_embeddings, "--query", "0")
    assert result.exit_code == 3 and "header" in result.output


def test_commands_run_through_the_edgeae_group(monkeypatch, small_embeddings):
    """Registered on the edgeae group itself (edge_runtime.cli)."""
    from edge_runtime import cli as cli_module

    runner = CliRunner()
    assert "embed" in runner.invoke(cli_module.cli, ["--help"]).output
    result = runner.invoke(cli_module.cli, ["similar", str(small_embeddings), "--query", "1", "--k", "1"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli_module.cli, ["similar", str(small_embeddings), "--query", "9"])
    assert result.exit_code == 2 and "out of range" in result.output
    for name in ("embed", "similar"):
        help_text = runner.invoke(cli_module.cli, [name, "--help"]).output
        assert "--precision" in help_text and "--allow-fallback" in help_text and "--threads" in help_text
