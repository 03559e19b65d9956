"""INT8 and FP16 export: QDQ structure, the precision gate, forcing, the layer ranking, calibration sources."""

from __future__ import annotations

import importlib.util
import json
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_runtime.model import load_bundle, open_graph
from export import quantize as qz
from export.bundle import export_run

# The tiny-run builders live in test_export.py; loaded by path so this works in any pytest import mode.
_spec = importlib.util.spec_from_file_location(
    "_edgeae_export_test_helpers", Path(__file__).with_name("test_export.py")
)
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)
FAST = helpers.FAST


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return helpers.write_images(tmp_path_factory.mktemp("qdata") / "images")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("qruns")
    return {
        "denoise": helpers.make_run(root, "denoise", 1, data, steps=60),
        "compress": helpers.make_run(root, "compress", 3, data),
        "anomaly": helpers.make_run(root, "anomaly", 3, data),
    }


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, runs) -> dict[str, Path]:
    """INT8 + FP16 bundles. Denoise is gated normally; the 40-step codec and anomaly models are forced, so the
    structure of their INT8 graphs can be checked whatever the gate says about an untrained model."""
    out = tmp_path_factory.mktemp("qmodels")
    return {
        task: export_run(
            run, out / task, int8=True, fp16=True, force=task != "denoise", progress=False, options=FAST, threads=1
        )  # fmt: skip
        for task, run in runs.items()
    }


def _onnx(path: Path):
    import onnx

    return onnx.load(str(path))


def _rows(bundle: Path) -> list[dict]:
    return json.loads((bundle / "manifest.json").read_text())["metrics"]["rows"]


# ----------------------------------------------------------------------------------------------------------------
# Structure of the INT8 graphs


@pytest.mark.parametrize("name", ["denoise/denoise", "anomaly/anomaly", "compress/decoder", "compress/encoder"])
def test_int8_graph_has_qdq_around_convs(bundles, name):
    task, graph = name.split("/")
    model = _onnx(bundles[task] / f"{graph}.int8.onnx")
    nodes = model.graph.node
    producer = {o: n for n in nodes for o in n.output}
    convs = [n for n in nodes if n.op_type == "Conv"]
    dq_into_conv = sum(1 for n in convs for i in n.input if i in producer and producer[i].op_type == "DequantizeLinear")
    counts = Counter(n.op_type for n in nodes)
    assert counts["QuantizeLinear"] > 0
    # Every quantized Conv reads its data, weight (and bias) through DequantizeLinear; the encoder keeps its last
    # Conv float (its output is rounded into the latents) but still reads a dequantized input.
    assert dq_into_conv >= len(convs)
    n_conv, n_qdq = qz.qdq_conv_counts(model)
    # Only the layers the manifest names as kept float (by the gate's search or by rule) are not quantized.
    info = json.loads((bundles[task] / "manifest.json").read_text())["quantization"]["graphs"][graph]
    assert n_qdq == n_conv - len(info["float_layers"]) - len(info["always_float"])
    assert len(info["always_float"]) == (1 if graph in ("encoder", "anomaly") else 0)
    # Weights are stored as int8 initializers.
    int8_inits = [i for i in model.graph.initializer if i.data_type == 3]  # TensorProto.INT8
    assert len(int8_inits) >= n_qdq


def test_encoder_round_sees_float(bundles):
    model = _onnx(bundles["compress"] / "encoder.int8.onnx")
    producer = {o: n for n in model.graph.node for o in n.output}
    (rnd,) = [n for n in model.graph.node if n.op_type == "Round"]
    conv = producer[rnd.input[0]]
    assert conv.op_type == "Conv"  # float output, no Q/DQ grid between the conv and the rounding
    assert producer[conv.input[1]].op_type != "DequantizeLinear" if conv.input[1] in producer else True


CORE = ("/net/", "/g_a/", "/g_s/")
QDQ = ("QuantizeLinear", "DequantizeLinear")
OUTPUT_GLUE = ("Transpose", "Cast", "Round", "Mul", "Clip")


@pytest.mark.parametrize("name", ["denoise/denoise", "compress/encoder", "compress/decoder", "anomaly/anomaly"])
def test_uint8_io_glue_stays_float(bundles, name):
    """Cast, Div, Transpose, Clip, Mul, Round at the I/O and the anomaly map/score are not quantized: the glue
    nodes of the FP32 graph are all there, unchanged in type, and every Q/DQ pair sits on a tensor of the conv core
    or on the normalised frame (k/255, quantized exactly)."""
    task, graph = name.split("/")
    fp32 = _onnx(bundles[task] / f"{graph}.fp32.onnx")
    glue32 = Counter(n.op_type for n in fp32.graph.node if not n.name.startswith(CORE))
    for precision in ("int8", "fp16"):
        model = _onnx(bundles[task] / f"{graph}.{precision}.onnx")
        producer = {o: n for n in model.graph.node for o in n.output}
        glue = Counter(
            n.op_type
            for n in model.graph.node
            if not n.name.startswith(CORE)
            and n.op_type not in QDQ
            and not n.name.endswith(("_glue", "_glue_int32"))  # the SSIM branch's own normalisation (INT8)
        )
        if precision == "fp16":  # the converter adds Casts at the float16 boundaries; nothing else changes
            assert _no_casts(glue) == _no_casts(glue32)
        else:
            assert glue == glue32
        inp = model.graph.input[0].name
        for n in model.graph.node:
            if n.op_type == "QuantizeLinear":
                src = producer.get(n.input[0])
                chain = src
                while (
                    chain is not None
                    and not chain.name.startswith(CORE)
                    and chain.op_type in ("Transpose", "Div", "Cast")
                ):
                    chain = producer.get(chain.input[0])
                assert src is not None and (src.name.startswith(CORE) or chain is None), n.name
                if chain is None:  # the frame normalisation: it must come from the graph input
                    assert inp in {i for x in model.graph.node for i in x.input}
        # Walking back from each uint8/int32 output, the post-processing is float all the way.
        for out in model.graph.output:
            if out.type.tensor_type.elem_type == 1:  # float outputs of the anomaly graph: checked by the glue count
                continue
            node = producer[out.name]
            seen = []
            while node is not None and not node.name.startswith(CORE) and node.op_type in OUTPUT_GLUE:
                seen.append(node.op_type)
                node = producer.get(node.input[0])
            assert "Round" in seen and "Cast" in seen, seen
        io = {i.name: i.type.tensor_type.elem_type for i in [*model.graph.input, *model.graph.output]}
        ref = {i.name: i.type.tensor_type.elem_type for i in [*fp32.graph.input, *fp32.graph.output]}
        assert io == ref


@pytest.mark.parametrize("name", ["denoise/denoise", "compress/encoder", "compress/decoder", "anomaly/anomaly"])
def test_glue_reads_the_normalised_frame_as_float(bundles, name):
    """Glue outside the conv core (the anomaly graph's SSIM branch) never reads the frame through its Q/DQ pair
    but a float normalisation of its own, cast uint8 -> int32 -> float: OpenVINO takes uint8 -> Cast -> Div for a
    dequantization and pools in u8 steps otherwise. (Glue after the core may read the core's dequantized
    output: that is the core's result.)"""
    task, graph = name.split("/")
    model = _onnx(bundles[task] / f"{graph}.int8.onnx")
    producer = {o: n for n in model.graph.node for o in n.output}
    inp = model.graph.input[0].name
    own = 0
    for n in model.graph.node:
        if n.name.startswith(CORE) or n.op_type in QDQ or n.name.endswith(("_glue", "_glue_int32")):
            continue
        for i in n.input:
            src = producer.get(i)
            if src is not None and src.op_type == "DequantizeLinear":
                origin = producer.get(producer[src.input[0]].input[0])
                assert origin is not None and origin.name.startswith(CORE), (n.op_type, n.name, i)
            if src is not None and src.name.endswith("_glue"):
                own += 1
                chain, t = [], i
                while t != inp:
                    chain.append(producer[t])
                    t = producer[t].input[0]
                casts = [c for c in chain if c.op_type == "Cast"]
                assert [c.attribute[0].i for c in casts] == [1, 6], chain  # int32 (6), then float (1)
    assert own > 0 if task == "anomaly" else own == 0


def test_anomaly_int8_on_openvino_matches_onnxruntime(bundles):
    """The exported anomaly INT8 graph gives OpenVINO's CPU plugin the same map as onnxruntime (it gave maps
    of -3659..4951 before the SSIM branch got its own normalisation)."""
    ov = pytest.importorskip("openvino")
    import onnxruntime as ort

    path = bundles["anomaly"] / "anomaly.int8.onnx"
    frame = cv2.GaussianBlur(np.random.default_rng(3).integers(0, 256, (64, 96, 3), np.uint8), (0, 0), 2)[None]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    want = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"frame": frame}), strict=True))
    core = ov.Core()
    model = core.read_model(str(path))
    model.reshape({"frame": list(frame.shape)})
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    res = compiled({"frame": frame})
    got = {o.get_any_name(): res[o] for o in compiled.outputs}
    # INT8 convolutions round differently in the two runtimes: within 2 % of the map's range (it was 10,000x off)
    span = float(want["anomaly_map"].max() - want["anomaly_map"].min())
    assert np.abs(got["anomaly_map"] - want["anomaly_map"]).max() < 0.02 * span
    score = float(want["score"].ravel()[0])
    assert abs(float(got["score"].ravel()[0]) - score) < 0.02 * abs(score)


def _no_casts(c: Counter) -> Counter:
    """Glue op counts without the Casts (and Identities at float32 outputs) the FP16 conversion adds."""
    return Counter({k: v for k, v in c.items() if k not in ("Cast", "Identity")})


def _cast_to(node) -> int:
    return next(a.i for a in node.attribute if a.name == "to")


def test_fp16_has_float16_core(bundles):
    model = _onnx(bundles["denoise"] / "denoise.fp16.onnx")
    types = Counter(i.data_type for i in model.graph.initializer)
    assert types[10] > 0  # TensorProto.FLOAT16 weights
    meta = open_graph(bundles["denoise"], "denoise", "fp16").info.metadata
    assert meta["edgeae.precision"] == "fp16"


@pytest.mark.parametrize("name", ["denoise/denoise", "compress/encoder", "compress/decoder", "anomaly/anomaly"])
def test_fp16_glue_not_rounded_through_float16(bundles, name):
    """No float32 -> float16 -> float32 Cast pair is left between glue nodes (it wrecked the SSIM map once)."""
    task, graph = name.split("/")
    model = _onnx(bundles[task] / f"{graph}.fp16.onnx")
    producer = {o: n for n in model.graph.node for o in n.output}
    for n in model.graph.node:
        if n.op_type == "Cast" and _cast_to(n) == 1:
            up = producer.get(n.input[0])
            assert not (up is not None and up.op_type == "Cast" and _cast_to(up) == 10), n.name


def test_fp16_anomaly_outputs_match_fp32(bundles):
    rng = np.random.default_rng(4)
    frame = helpers._frame(rng, 64, 96, 3)
    b = load_bundle(bundles["anomaly"])
    a32 = open_graph(b, "anomaly", "fp32").run_frame(frame)
    a16 = open_graph(b, "anomaly", "fp16").run_frame(frame)
    assert np.abs(a32["anomaly_map"] - a16["anomaly_map"]).max() <= 5e-3
    assert np.abs(a32["score"] - a16["score"]).max() <= 1e-3
    assert np.abs(a32["features"] - a16["features"]).max() <= 1e-2 * (1 + np.abs(a32["features"]).max())


def test_onnxruntime_fuses_qdq_into_qlinearconv(bundles, tmp_path):
    """The point of QDQ: onnxruntime's CPU provider turns the Q/DQ pairs into integer kernels."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(bundles["denoise"] / "denoise.int8.onnx"), so, providers=["CPUExecutionProvider"])
    ops = Counter(n.op_type for n in _onnx(tmp_path / "opt.onnx").graph.node)
    n_conv = qz.qdq_conv_counts(_onnx(bundles["denoise"] / "denoise.int8.onnx"))[0]
    assert ops["QLinearConv"] == n_conv and ops["Conv"] == 0


# ----------------------------------------------------------------------------------------------------------------
# The gate


def test_denoise_int8_fp16_within_gate(runs, bundles):
    bundle = load_bundle(bundles["denoise"])
    assert bundle.precisions("denoise") == ["fp32", "fp16", "int8"]
    rows = {r["precision"]: r for r in _rows(bundles["denoise"])}
    assert rows["fp32"]["status"] == "reference"
    for p in ("fp16", "int8"):
        assert rows[p]["status"] == "pass" and rows[p]["written"]
        assert rows[p]["delta"] <= 0.3 and rows[p]["budget"] == 0.3
        assert rows[p]["ms"] > 0 and rows[p]["speedup"] > 0
        assert bundle.entry("denoise", p)["gate"] == "pass"
    # An independent check on other frames than the gate's: PSNR on σ=25 noise, INT8 and FP16 against FP32.
    from training.data import load_dataset
    from training.metrics import psnr

    images = load_dataset(str(json.loads((runs["denoise"] / "config.json").read_text())["train"]["data"]), 1).images
    rng = np.random.default_rng(11)
    clean = [im[8:72, 8:104] for im in images[:6]]
    noisy = [np.clip(np.round(c + rng.normal(0, 25, c.shape)), 0, 255).astype(np.uint8) for c in clean]
    score = {}
    for p in ("fp32", "fp16", "int8"):
        g = open_graph(bundle, "denoise", p)
        score[p] = np.mean([psnr(g.run_frame(n)["denoised"], c) for n, c in zip(noisy, clean, strict=True)])
    assert score["fp32"] > np.mean([psnr(n, c) for n, c in zip(noisy, clean, strict=True)])  # it does denoise
    assert abs(score["fp32"] - score["int8"]) <= 0.3
    assert abs(score["fp32"] - score["fp16"]) <= 0.05


def test_compress_and_anomaly_int8_close_to_fp32(bundles):
    """Forced INT8 graphs of barely trained models: outputs compared with FP32 directly, at their own scale."""
    rng = np.random.default_rng(2)
    frame = helpers._frame(rng, 64, 96, 3)
    cb = load_bundle(bundles["compress"])
    lat32 = open_graph(cb, "encoder", "fp32").run_frame(frame)["latent"]
    lat8 = open_graph(cb, "encoder", "int8").run_frame(frame)["latent"]
    assert np.mean(np.abs(lat32.astype(int) - lat8)) <= 0.1 * max(1.0, np.abs(lat32).mean()) + 0.05
    rec32 = open_graph(cb, "decoder", "fp32").run({"latent": lat32[None]})["frame"].astype(int)
    rec8 = open_graph(cb, "decoder", "int8").run({"latent": lat32[None]})["frame"].astype(int)
    assert np.mean(np.abs(rec32 - rec8)) <= 2.0
    ab = load_bundle(bundles["anomaly"])
    a32 = open_graph(ab, "anomaly", "fp32").run_frame(frame)
    a8 = open_graph(ab, "anomaly", "int8").run_frame(frame)
    scale = float(np.abs(a32["anomaly_map"]).mean()) + 1e-3
    assert float(np.abs(a32["anomaly_map"] - a8["anomaly_map"]).mean()) <= 0.25 * scale
    rows = {(r["graph"], r["precision"]): r for r in _rows(bundles["compress"])}
    assert {("encoder", "int8"), ("decoder", "int8"), ("encoder", "fp16"), ("decoder", "fp16")} <= set(rows)
    assert rows[("encoder", "fp32")]["values"]["bpp"] > 0


def test_gate_refuses_over_budget_and_force_writes(runs, tmp_path):
    run = runs["denoise"]
    refused = export_run(run, tmp_path / "refused", int8=True, fp16=True, budget={"psnr_db": -1.0},
                         progress=False, options=FAST, threads=1)  # fmt: skip
    bundle = load_bundle(refused)
    assert bundle.precisions("denoise") == ["fp32"]
    assert not (refused / "denoise.int8.onnx").exists() and not (refused / "denoise.fp16.onnx").exists()
    m = json.loads((refused / "manifest.json").read_text())
    rows = {r["precision"]: r for r in m["metrics"]["rows"]}
    assert rows["int8"]["status"] == "fail" and not rows["int8"]["written"]
    assert rows["fp16"]["status"] == "fail" and not rows["fp16"]["written"]
    assert m["metrics"]["budget"]["psnr_db"] == -1.0
    # The gate tried keeping the worst-ranked layers in FP32, one more each time, in ranking order.
    q = m["quantization"]["graphs"]["denoise"]
    ranked = [r["name"] for r in q["ranking"]]
    assert [a["float_layers"] for a in q["attempts"]] == [ranked[:k] for k in range(4)]

    forced = export_run(run, tmp_path / "forced", int8=True, budget={"psnr_db": -1.0}, force=True,
                        progress=False, options=FAST, threads=1)  # fmt: skip
    bundle = load_bundle(forced)
    assert bundle.precisions("denoise") == ["fp32", "int8"]
    assert bundle.entry("denoise", "int8")["gate"] == "forced"
    rows = {r["precision"]: r for r in _rows(forced)}
    assert rows["int8"]["status"] == "forced" and rows["int8"]["written"]
    meta = open_graph(bundle, "denoise", "int8").info.metadata
    assert meta["edgeae.parent_sha256"] == bundle.entry("denoise", "fp32")["sha256"]
    assert meta["edgeae.precision"] == "int8"


def test_gate_budget_module_default(runs, tmp_path, monkeypatch):
    """The default budget is read at export time, so a patched module default applies too."""
    from export import gate

    monkeypatch.setattr(gate, "DEFAULT_BUDGET", gate.Budget(psnr_db=-1.0))
    out = export_run(runs["denoise"], tmp_path / "b", fp16=True, progress=False, options=FAST, threads=1)
    assert load_bundle(out).precisions("denoise") == ["fp32"]


def test_ranking_in_manifest(bundles):
    m = json.loads((bundles["denoise"] / "manifest.json").read_text())
    q = m["quantization"]
    assert q["format"] == "QDQ" and q["calibration_method"] == "minmax"
    info = q["graphs"]["denoise"]
    ranking = info["ranking"]
    assert len(ranking) == info["quantized_convs"] + len(info["float_layers"])
    keys = [r["sqnr_db"] for r in ranking]
    assert keys == sorted(keys)
    assert all(np.isfinite(r["weight_sqnr_db"]) and r["weight_sqnr_db"] > 20 for r in ranking)
    # The normalised frame is quantized with its exact grid (k/255), not a calibrated one.
    assert info["exact_inputs"]
    enc = json.loads((bundles["compress"] / "manifest.json").read_text())["quantization"]["graphs"]
    assert enc["encoder"]["always_float"] and enc["decoder"]["exact_inputs"]


@pytest.mark.parametrize("method", ["percentile", "entropy"])
def test_calib_folder_and_methods(runs, data, tmp_path, method):
    out = export_run(runs["denoise"], tmp_path / method, int8=True, calib=str(data), calib_method=method, force=True,
                     progress=False, options=FAST, threads=1)  # fmt: skip
    m = json.loads((out / "manifest.json").read_text())
    assert m["quantization"]["calibration_method"] == method
    assert str(data) in m["quantization"]["calibration"]
    assert (out / "denoise.int8.onnx").exists()


def test_calib_video(runs, data, tmp_path):
    import cv2

    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (128, 96))
    images = sorted(data.glob("*.png"))
    for k in range(40):
        writer.write(cv2.imread(str(images[k % len(images)])))
    writer.release()
    out = export_run(runs["denoise"], tmp_path / "v", int8=True, calib=str(video), force=True, progress=False,
                     options=FAST, threads=1)  # fmt: skip
    assert "clip.avi" in json.loads((out / "manifest.json").read_text())["quantization"]["calibration"]


# ----------------------------------------------------------------------------------------------------------------
# Units


def test_settings_and_reader():
    with pytest.raises(ValueError):
        qz.Int8Settings(method="median")
    with pytest.raises(ValueError):
        qz.Int8Settings(activation="u16")
    frames = [np.zeros((16, 16, 1), np.uint8), np.ones((16, 16, 1), np.uint8)]
    reader = qz.FrameReader("frame", frames)
    got = [reader.get_next(), reader.get_next(), reader.get_next()]
    assert got[0]["frame"].shape == (1, 16, 16, 1) and got[2] is None
    reader.rewind()
    assert len(list(reader)) == 2


def test_ideal_bits_matches_table_probabilities():
    from edge_runtime.entropy import tables_from_pmf
    from export.gate import ideal_bits

    pmf = np.array([[0.25, 0.5, 0.25]])
    tables = tables_from_pmf(pmf, np.array([-1]), precision=12)
    lat = np.array([[[0, 0, -1, 1]]])
    bits = ideal_bits(lat, tables)
    assert bits == pytest.approx(1 + 1 + 2 + 2, abs=0.05)
    # An escaped value costs the escape symbol plus its 6-bit length and mantissa.
    assert ideal_bits(np.array([[[7]]]), tables) > 6


def test_anomaly_calibration_rule():
    from export.metadata import anomaly_calibration

    scores = np.linspace(1.0, 2.0, 101)
    cal = anomaly_calibration(scores)
    assert cal["norm_mean"] == pytest.approx(1.5)
    assert cal["norm_std"] == pytest.approx(np.std(scores, ddof=1))
    assert cal["threshold"] == 3.0  # the 99th percentile of a uniform spread is under 3 sigma
    heavy = np.concatenate([np.zeros(200), [50.0, 60.0, 70.0]])
    assert anomaly_calibration(heavy)["threshold"] > 3.0
    with pytest.raises(ValueError):
        anomaly_calibration([1.0])
