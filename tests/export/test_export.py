"""export_run: FP32 parity with PyTorch, metadata, manifest, entropy tables, atomic writes, the CLI.

Tiny runs are built here (a few Adam steps on crops of a small image folder, saved the way training/train.py
saves them), so the tests need no trained model and take seconds.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from edge_runtime import entropy
from edge_runtime.errors import ModelRejectedError, UsageError
from edge_runtime.model import GRAPH_IO, load_bundle, open_graph, read_metadata
from export import onnx_export as ox
from export.bundle import ExportOptions, export_run

FAST = ExportOptions(calib_frames=4, calib_size=64, val_images=3, val_size=64, debug_frames=2, timing_size=(64, 64),
                     timing_runs=1, timing_rounds=1)  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------
# Tiny runs


def write_images(folder: Path, count: int = 24, size: tuple[int, int] = (96, 128)) -> Path:
    """Crops of scikit-image photographs as PNG files (BGR), enough for a training/validation split."""
    import skimage.data as skd

    folder.mkdir(parents=True, exist_ok=True)
    sources = [cv2.cvtColor(getattr(skd, n)()[:, :, :3], cv2.COLOR_RGB2BGR) for n in ("astronaut", "coffee", "chelsea")]
    rng = np.random.default_rng(0)
    h, w = size
    for i in range(count):
        src = sources[i % len(sources)]
        y, x = int(rng.integers(0, src.shape[0] - 2 * h)), int(rng.integers(0, src.shape[1] - 2 * w))
        crop = cv2.resize(src[y : y + 2 * h, x : x + 2 * w], (w, h), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(folder / f"img{i:02d}.png"), crop)
    return folder


def make_run(root: Path, task: str, channels: int, data: Path, steps: int = 40, seed: int = 0) -> Path:
    """Train a tiny model for a few steps and save it as a run (config.json + best.safetensors)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a few tiny steps: more threads only spin, badly so on a shared machine
    try:
        return _make_run(root, task, channels, data, steps, seed)
    finally:
        torch.set_num_threads(threads)


def _make_run(root: Path, task: str, channels: int, data: Path, steps: int, seed: int) -> Path:
    from training.anomaly_model import AnomalyConfig, anomaly_map
    from training.checkpoint import build_model, save_weights, write_json
    from training.compress_model import CompressConfig, rd_loss
    from training.data import PatchSampler, load_dataset
    from training.layers import count_macs, count_params

    torch.manual_seed(seed)
    if task == "denoise":
        mcfg = json.loads(_denoise_cfg(channels).to_json())
    elif task == "compress":
        mcfg = json.loads(CompressConfig(channels=channels, n=8, m=16, quality=2).to_json())
    else:
        mcfg = json.loads(AnomalyConfig(channels=channels, width=8, features=8).to_json())
    model = build_model(task, mcfg)
    images = load_dataset(str(data), channels).images
    sampler = PatchSampler(images, 32, seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        x = torch.from_numpy(sampler.sample(8)).permute(0, 3, 1, 2).float() / 255
        if task == "denoise":
            noisy = (x + torch.randn(x.shape, generator=gen) * 0.1).clamp(0, 1)
            loss = torch.nn.functional.mse_loss(model(noisy), x)
        elif task == "compress":
            x_hat, lik = model(x)
            loss = rd_loss(x, x_hat, lik, 0.0067)[0]
        else:
            recon, _ = model(x)
            loss = torch.nn.functional.l1_loss(recon, x) + anomaly_map(x, recon).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    run = root / f"{task}-{channels}"
    run.mkdir(parents=True)
    probe = torch.zeros(1, channels, 64, 64)
    write_json(run / "config.json", {"task": task, "model": mcfg, "train": {"data": str(data), "steps": steps},
                                     "macs_per_pixel": count_macs(model, probe) // 4096,
                                     "params": count_params(model)})  # fmt: skip
    save_weights(model, run / "best.safetensors")
    return run


def _denoise_cfg(channels: int):
    from training.denoise_model import DenoiseConfig

    return DenoiseConfig(channels=channels, width=8, depth=1)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_images(tmp_path_factory.mktemp("data") / "images")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {
        "denoise": make_run(root, "denoise", 1, data),
        "compress": make_run(root, "compress", 3, data),
        "anomaly": make_run(root, "anomaly", 3, data),
    }


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, runs) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("models")
    return {task: export_run(run, out / task, progress=False, options=FAST, threads=1) for task, run in runs.items()}


def _torch_run(task_run: Path):
    from training.checkpoint import load_run

    return load_run(task_run)


def _frame(rng, h, w, c) -> np.ndarray:
    low = rng.random((h // 8 + 1, w // 8 + 1, c))
    img = np.kron(low, np.ones((8, 8, 1)))[:h, :w] * 220 + rng.normal(0, 12, (h, w, c))
    return np.clip(img, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------------------------
# Parity with PyTorch


@pytest.mark.parametrize("task", ["denoise", "compress", "anomaly"])
def test_float_core_parity(runs, task, tmp_path):
    """The conv core exported with float I/O matches PyTorch within 1e-4 on [0, 1] data."""
    import onnxruntime as ort

    model, cfg = _torch_run(runs[task])
    c = cfg["model"]["channels"]
    torch.manual_seed(1)
    x = torch.rand(2, c, 48, 64)
    cores = {"denoise": [(model, x)], "anomaly": [(model, x)]}
    if task == "compress":
        y = torch.round(model.g_a(x)).detach()
        cores["compress"] = [(model.g_a, x), (model.g_s, y)]
    for module, inp in cores[task]:
        with torch.no_grad():
            ref = module(inp)
        ref = ref if isinstance(ref, tuple) else (ref,)
        names = [f"out{i}" for i in range(len(ref))]
        onnx_model = ox.torch_to_onnx(module, inp, ["x"], names, {"x": {0: "N", 2: "H", 3: "W"}})
        sess = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
        got = sess.run(None, {"x": inp.numpy()})
        for r, g in zip(ref, got, strict=True):
            assert g.shape == tuple(r.shape)
            assert np.abs(g - r.numpy()).max() <= 1e-4


@pytest.mark.parametrize("task", ["denoise", "compress", "anomaly"])
def test_uint8_graph_parity(runs, bundles, task):
    """The bundle's FP32 graphs against the PyTorch wrappers on uint8 frames of a size not used at export."""
    from training.anomaly_model import AnomalyFrameGraph
    from training.compress_model import DecoderGraph, EncoderGraph
    from training.denoise_model import DenoiseFrameGraph

    model, cfg = _torch_run(runs[task])
    c = cfg["model"]["channels"]
    rng = np.random.default_rng(3)
    frames = np.stack([_frame(rng, 96, 144, c) for _ in range(2)])
    with torch.no_grad():
        if task == "denoise":
            ref = DenoiseFrameGraph(model)(torch.from_numpy(frames)).numpy()
            got = open_graph(bundles[task], "denoise").run({"frame": frames})["denoised"]
            assert got.dtype == np.uint8 and got.shape == frames.shape
            assert np.abs(got.astype(int) - ref.astype(int)).max() <= 1
        elif task == "anomaly":
            ref = AnomalyFrameGraph(model)(torch.from_numpy(frames))
            got = open_graph(bundles[task], "anomaly").run({"frame": frames})
            for name, r in zip(("anomaly_map", "score", "features"), ref, strict=True):
                assert got[name].shape == tuple(r.shape)
                assert np.abs(got[name] - r.numpy()).max() <= 1e-4, name
        else:
            lat_ref = EncoderGraph(model)(torch.from_numpy(frames)).numpy()
            lat = open_graph(bundles[task], "encoder").run({"frame": frames})["latent"]
            assert lat.dtype == np.int32 and lat.shape == (2, cfg["model"]["m"], 6, 9)
            # Rounding may flip only where the float latent sits on a .5 boundary within float error.
            diff = np.abs(lat.astype(np.int64) - lat_ref)
            assert diff.max() <= 1 and diff.mean() < 1e-3
            dec_ref = DecoderGraph(model)(torch.from_numpy(lat)).numpy()
            dec = open_graph(bundles[task], "decoder").run({"latent": lat})["frame"]
            assert dec.shape == frames.shape and dec.dtype == np.uint8
            assert np.abs(dec.astype(int) - dec_ref.astype(int)).max() <= 1


def test_run_frame_any_size(bundles):
    """Sizes that are not a multiple of input_multiple go through the runtime's pad-and-crop."""
    out = open_graph(bundles["denoise"], "denoise").run_frame(np.full((50, 70), 128, np.uint8))
    assert out["denoised"].shape == (50, 70, 1)


# ----------------------------------------------------------------------------------------------------------------
# Metadata and manifest


def _expected_keys(graph: str) -> set[str]:
    keys = {"schema_version", "task", "graph", "channel_order", "channels", "input_multiple", "max_side", "precision",
            "quality", "parent_sha256", "run_id", "model_config", "macs_per_pixel", "params"}  # fmt: skip
    if graph in ("encoder", "decoder"):
        keys |= {"latent.channels", "latent.stride", "latent.quantization"}
    if graph == "anomaly":
        keys |= {"anomaly.threshold", "anomaly.norm_mean", "anomaly.norm_std"}
    return {f"edgeae.{k}" for k in keys}


@pytest.mark.parametrize("task", ["denoise", "compress", "anomaly"])
def test_metadata_round_trip(runs, bundles, task):
    import onnx

    from export.metadata import sha256_file

    bundle = load_bundle(bundles[task])
    weights_sha = sha256_file(runs[task] / "best.safetensors")
    _, cfg = _torch_run(runs[task])
    for name, entry in bundle.manifest["files"].items():
        if not name.endswith(".onnx"):
            continue
        path = bundle.root / name
        written = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
        meta = read_metadata(path.read_bytes())
        assert meta == written
        graph = entry["graph"]
        assert set(meta) == _expected_keys(graph)
        assert all(isinstance(v, str) for v in meta.values())
        assert meta["edgeae.schema_version"] == "1"
        assert meta["edgeae.graph"] == graph and meta["edgeae.precision"] == entry["precision"]
        assert meta["edgeae.input_multiple"] == str(cfg["model"]["multiple"])
        assert meta["edgeae.channel_order"] == ("GRAY" if cfg["model"]["channels"] == 1 else "BGR")
        assert json.loads(meta["edgeae.model_config"]) == cfg["model"]
        assert meta["edgeae.run_id"].startswith(f"{runs[task].name}@{weights_sha[:16]}")
        assert meta["edgeae.parent_sha256"] == weights_sha  # FP32: the weights it was exported from
        assert int(meta["edgeae.macs_per_pixel"]) > 0 and int(meta["edgeae.params"]) > 0
        # The contract in the manifest is the shared part of the metadata.
        for key, value in bundle.contract.items():
            assert meta[f"edgeae.{key}"] == value
        g = open_graph(bundle, graph)
        assert g.info.metadata == meta
        assert sorted(s.name for s in g.info.inputs) == sorted(GRAPH_IO[graph]["inputs"])
        if graph == "encoder":
            assert meta["edgeae.latent.stride"] == "16" and meta["edgeae.latent.quantization"] == "round"
            assert meta["edgeae.quality"] == "2"


def test_anomaly_calibration_in_manifest_and_metadata(bundles):
    bundle = load_bundle(bundles["anomaly"])
    cal = bundle.calibration
    assert set(cal) == {"threshold", "norm_mean", "norm_std"}
    assert cal["threshold"] >= 3.0 and cal["norm_std"] > 0
    meta = open_graph(bundle, "anomaly").info.metadata
    assert float(meta["edgeae.anomaly.threshold"]) == pytest.approx(cal["threshold"])
    assert float(meta["edgeae.anomaly.norm_mean"]) == pytest.approx(cal["norm_mean"])


def test_manifest_fields(bundles):
    for task, path in bundles.items():
        m = json.loads((path / "manifest.json").read_text())
        assert m["format"] == "edgeae-bundle" and m["schema_version"] == 1 and m["task"] == task
        assert m["name"] == path.name
        assert set(m["versions"]) >= {"edgeae", "torch", "onnx", "onnxruntime"}
        assert m["created"].endswith("Z") and m["command"]
        for name, entry in m["files"].items():
            data = (path / name).read_bytes()
            assert entry["bytes"] == len(data) and entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert "contract" in m and m["contract"]["task"] == task
        # Every file of the bundle is listed; nothing else is there (no temp files left behind).
        assert sorted(p.name for p in path.iterdir()) == sorted([*m["files"], "manifest.json"])
    assert not list(path.parent.glob(".*"))


def test_graph_checks_and_io_names(bundles):
    import onnx

    for path in bundles.values():
        for f in path.glob("*.onnx"):
            model = onnx.load(str(f))
            ox.check_model(model)  # full_check + strict shape inference
            assert all(o.domain in ("", "ai.onnx") for o in model.opset_import)
            assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
            frame = [i for i in model.graph.input if i.name == "frame"]
            for i in frame:
                dims = i.type.tensor_type.shape.dim
                assert [d.dim_param for d in dims[:3]] == ["N", "H", "W"] and dims[3].dim_value in (1, 3)
            assert not any(t.data_location == 1 for t in model.graph.initializer)


# ----------------------------------------------------------------------------------------------------------------
# Compression: entropy tables


def test_entropy_tables_round_trip_and_lossless(runs, bundles):
    bundle = load_bundle(bundles["compress"])
    raw = bundle.read_verified("entropy.json")
    tables = entropy.tables_from_json(json.loads(raw))
    model, cfg = _torch_run(runs["compress"])
    assert tables.channels == cfg["model"]["m"]
    again = entropy.tables_from_json(entropy.tables_to_json(tables))
    assert np.array_equal(again.cdf, tables.cdf) and np.array_equal(again.offset, tables.offset)

    rng = np.random.default_rng(5)
    frame = _frame(rng, 64, 96, cfg["model"]["channels"])
    lat = open_graph(bundle, "encoder").run_frame(frame)["latent"]
    lat = lat.copy()
    lat[0, 0, 0] = 10_000  # far outside the tables: goes through the escape code
    payload = entropy.encode_latents(lat, tables)
    back = entropy.decode_latents(payload, tables, lat.shape)
    assert np.array_equal(back, lat)
    # The ideal code length the gate uses is close to what the coder writes (flushed state aside).
    from export.gate import ideal_bits

    assert ideal_bits(lat, tables) <= 8 * len(payload)


# ----------------------------------------------------------------------------------------------------------------
# Atomic writes, failures, usage


def test_failure_mid_export_leaves_no_partial_bundle(runs, tmp_path, monkeypatch):
    from export import quantize

    out = tmp_path / "models" / "d"

    def boom(*a, **k):
        raise RuntimeError("quantization failed")

    monkeypatch.setattr(quantize, "quantize", boom)
    with pytest.raises(RuntimeError, match="quantization failed"):
        export_run(runs["denoise"], out, int8=True, progress=False, options=FAST, threads=1)
    assert not out.exists()
    assert list((tmp_path / "models").iterdir()) == []

    # An existing bundle stays as it was when a re-export fails.
    monkeypatch.undo()
    export_run(runs["denoise"], out, progress=False, options=FAST, threads=1)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(quantize, "quantize", boom)
    with pytest.raises(RuntimeError):
        export_run(runs["denoise"], out, int8=True, progress=False, options=FAST, threads=1)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["d"]


def test_a_bundle_the_runtime_refuses_is_not_installed(runs, tmp_path, monkeypatch):
    """Export opens what it wrote with edge_runtime's own loader before installing it (issue 14): a bundle the
    runtime refuses (here edgeae.max_side past the contract's range) is an error, nothing lands at ``out`` and an
    existing bundle there stays as it was."""
    from export import metadata as md

    out = tmp_path / "models" / "d"
    monkeypatch.setattr(md, "EXPORT_MAX_SIDE", 10**6)
    match = r"d: not written: edge_runtime refuses the bundle \(.*max_side='1000000' is out of range"
    with pytest.raises(ModelRejectedError, match=match) as err:
        export_run(runs["denoise"], out, progress=False, options=FAST, threads=1)
    assert ".tmp-" not in str(err.value)  # the message names the output, not the temporary folder
    assert list((tmp_path / "models").iterdir()) == []

    monkeypatch.undo()
    export_run(runs["denoise"], out, progress=False, options=FAST, threads=1)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(md, "EXPORT_MAX_SIDE", 10**6)
    with pytest.raises(ModelRejectedError, match=match):
        export_run(runs["denoise"], out, progress=False, options=FAST, threads=1)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["d"]


def test_reexport_replaces_bundle(runs, tmp_path):
    out = tmp_path / "b"
    export_run(runs["denoise"], out, progress=False, options=FAST, threads=1)
    (out / "stale.txt").write_text("left from an old export")
    export_run(runs["denoise"], out, progress=False, options=FAST, threads=1)
    assert not (out / "stale.txt").exists()
    load_bundle(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_refuses_to_replace_a_non_bundle(runs, tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("not a bundle")
    with pytest.raises(UsageError, match="refusing"):
        export_run(runs["denoise"], out, progress=False, options=FAST)
    assert (out / "notes.txt").read_text() == "not a bundle"


def test_not_a_run(tmp_path):
    (tmp_path / "run").mkdir()
    with pytest.raises(ModelRejectedError):
        export_run(tmp_path / "run", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_bad_arguments(runs, tmp_path):
    with pytest.raises(UsageError):
        export_run(runs["denoise"], tmp_path / "o", calib_method="median", progress=False)
    with pytest.raises(UsageError):
        export_run(runs["denoise"], tmp_path / "o", opset=13, progress=False)
    with pytest.raises(UsageError, match=r"opset 21 outside 17..20"):  # past what the TorchScript exporter supports
        export_run(runs["denoise"], tmp_path / "o", opset=21, progress=False)
    with pytest.raises(UsageError):
        export_run(runs["denoise"], tmp_path / "o", threads=0, progress=False)


def test_missing_training_data_needs_calib(runs, tmp_path):
    """A run whose training data is gone: FP32 still exports; INT8 asks for --calib (BadDataError, exit 3)."""
    import shutil

    from edge_runtime.errors import BadDataError

    run = tmp_path / "moved"
    shutil.copytree(runs["denoise"], run)
    cfg = json.loads((run / "config.json").read_text())
    cfg["train"]["data"] = str(tmp_path / "gone")
    (run / "config.json").write_text(json.dumps(cfg))
    export_run(run, tmp_path / "fp32", progress=False, options=FAST)
    with pytest.raises(BadDataError, match="--calib"):
        export_run(run, tmp_path / "int8", int8=True, progress=False, options=FAST)
    assert not (tmp_path / "int8").exists()


def test_cli(runs, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from export.cli import export

    runner = CliRunner()
    help_text = runner.invoke(export, ["--help"]).output
    for option in ("--out", "--int8", "--fp16", "--calib", "--calib-method", "--opset", "--force", "--threads"):
        assert option in help_text
    monkeypatch.setattr("sys.argv", ["edgeae", "export", str(runs["denoise"]), "--out", str(tmp_path / "m")])
    res = runner.invoke(export, [str(runs["denoise"]), "--out", str(tmp_path / "m"), "--quiet"])
    assert res.exit_code == 0, res.output
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert manifest["command"].startswith("edgeae export ") and "--out" in manifest["command"]

    res = runner.invoke(export, [str(runs["denoise"]), "--out", str(tmp_path / "n"), "--force"])
    assert isinstance(res.exception, UsageError)
    res = runner.invoke(export, [str(runs["denoise"]), "--out", str(tmp_path / "n"), "--calib-method", "mean"])
    assert res.exit_code == 2
    res = runner.invoke(export, [str(tmp_path), "--out", str(tmp_path / "n")])
    assert isinstance(res.exception, ModelRejectedError)
