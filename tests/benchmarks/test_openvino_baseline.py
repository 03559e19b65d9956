"""benchmarks.openvino_baseline: native OpenVINO against onnxruntime on tiny conv bundles built with onnx.helper.

The bundles (denoise-gray with an INT8 QDQ file, an anomaly graph, compress-q1 with FP32 and INT8 encoder and
decoder, compress-q2 of the same architecture) are built once per module in well under a second; every run uses
tiny frames. Needs the optional ``openvino`` package (``pip install 'edgeae[openvino]'``) and onnx.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from bundle_files import qdq_int8, write_bundle
from click.testing import CliRunner

ov = pytest.importorskip("openvino")
onnx = pytest.importorskip("onnx")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from benchmarks import latency as lat  # noqa: E402
from benchmarks import machine  # noqa: E402
from benchmarks import openvino_baseline as ovb  # noqa: E402
from edge_runtime.entropy import tables_from_pmf, tables_to_json  # noqa: E402
from edge_runtime.errors import ModelRejectedError, UsageError  # noqa: E402
from edge_runtime.model import open_graph  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
LATENT_C = 4
# uint8 images: one grey level of rounding difference between runtimes (values that land on .5).
FP32_TOL_U8 = 1
FP32_TOL_FLOAT = 1e-4


# ---------------------------------------------------------------------------------------------------- tiny bundles


class _Net:
    """Accumulates onnx.helper nodes and initializers with deterministic random conv weights."""

    def __init__(self, seed: int) -> None:
        self.nodes: list = []
        self.inits: list = []
        self.rng = np.random.default_rng(seed)
        self.i = 0

    def const(self, value, dtype=np.float32) -> str:
        self.i += 1
        name = f"c{self.i}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, kind: str, inputs: list[str], out: str | None = None, **attrs) -> str:
        self.i += 1
        out = out or f"t{self.i}"
        self.nodes.append(helper.make_node(kind, inputs, [out], **attrs))
        return out

    def conv(self, x: str, cin: int, cout: int, k: int = 3, stride: int = 1, relu: bool = True) -> str:
        w = self.const(self.rng.normal(0, 1 / np.sqrt(cin * k * k), (cout, cin, k, k)))
        b = self.const(self.rng.normal(0, 0.05, cout))
        pad = (k - stride) // 2 if stride > 1 else k // 2
        y = self.op("Conv", [x, w, b], kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4)
        return self.op("Relu", [y]) if relu else y

    def deconv(self, x: str, cin: int, cout: int, relu: bool = True) -> str:
        w = self.const(self.rng.normal(0, 1 / np.sqrt(cin * 4), (cin, cout, 4, 4)))
        b = self.const(self.rng.normal(0, 0.05, cout))
        y = self.op("ConvTranspose", [x, w, b], kernel_shape=[4, 4], strides=[2, 2], pads=[1, 1, 1, 1])
        return self.op("Relu", [y]) if relu else y

    def frame_in(self) -> str:
        f = self.op("Cast", ["frame"], to=TensorProto.FLOAT)
        t = self.op("Transpose", [f], perm=[0, 3, 1, 2])
        return self.op("Mul", [t, self.const(1 / 255)])

    def image_out(self, x: str, name: str) -> str:
        y = self.op("Round", [self.op("Mul", [x, self.const(255.0)])])
        y = self.op("Clip", [y, self.const(0.0), self.const(255.0)])
        t = self.op("Transpose", [y], perm=[0, 2, 3, 1])
        return self.op("Cast", [t], name, to=TensorProto.UINT8)


def _meta(task: str, graph: str, channels: int, quality: int | None = None) -> dict[str, str]:
    meta = {
        "schema_version": "1",
        "task": task,
        "graph": graph,
        "channel_order": "BGR" if channels == 3 else "GRAY",
        "channels": str(channels),
        "input_multiple": "8",
        "max_side": "8192",
        "precision": "fp32",
        "quality": str(quality or ""),
        "run_id": "tiny-ov",
        "model_config": json.dumps({"kind": "tiny-ov-conv", "channels": channels, "quality": quality}),
    }
    if graph == "anomaly":
        meta.update({"anomaly.threshold": "3.0", "anomaly.norm_mean": "0", "anomaly.norm_std": "1"})
    if task == "compress":
        meta.update({"latent.channels": str(LATENT_C), "latent.stride": "4"})
    return {f"edgeae.{k}": v for k, v in meta.items()}


def _build(graph: str, channels: int, quality: int | None = None) -> onnx.ModelProto:
    vi = helper.make_tensor_value_info
    net = _Net(seed={"denoise": 1, "anomaly": 2, "encoder": 3, "decoder": 4}[graph])
    task = {"denoise": "denoise", "anomaly": "anomaly"}.get(graph, "compress")
    if graph == "denoise":
        x = net.frame_in()
        r = net.conv(net.conv(x, channels, 8), 8, channels, relu=False)
        net.image_out(net.op("Add", [x, r]), "denoised")
        inputs = [vi("frame", TensorProto.UINT8, ["N", "H", "W", channels])]
        outputs = [vi("denoised", TensorProto.UINT8, ["N", "H", "W", channels])]
    elif graph == "anomaly":
        x = net.frame_in()
        h = net.conv(x, 3, 8)
        rec = net.conv(h, 8, 3, relu=False)
        d = net.op("Sub", [rec, x])
        amap = net.op("ReduceMean", [net.op("Mul", [d, d])], "anomaly_map", axes=[1], keepdims=0)
        net.op("ReduceMax", [amap], "score", axes=[1, 2], keepdims=0)
        net.op("Identity", [h], "features")
        inputs = [vi("frame", TensorProto.UINT8, ["N", "H", "W", 3])]
        outputs = [
            vi("anomaly_map", TensorProto.FLOAT, ["N", "H", "W"]),
            vi("score", TensorProto.FLOAT, ["N"]),
            vi("features", TensorProto.FLOAT, ["N", 8, "H", "W"]),
        ]
    elif graph == "encoder":
        x = net.frame_in()
        z = net.conv(net.conv(x, 3, 8, k=4, stride=2), 8, LATENT_C, k=4, stride=2, relu=False)
        q = net.op("Round", [net.op("Mul", [z, net.const(4.0)])])
        net.op("Cast", [q], "latent", to=TensorProto.INT32)
        inputs = [vi("frame", TensorProto.UINT8, ["N", "H", "W", 3])]
        outputs = [vi("latent", TensorProto.INT32, ["N", LATENT_C, "h", "w"])]
    else:
        y = net.op("Mul", [net.op("Cast", ["latent"], to=TensorProto.FLOAT), net.const(0.25)])
        y = net.deconv(net.deconv(y, LATENT_C, 8), 8, 3, relu=False)
        net.image_out(net.op("Sigmoid", [y]), "frame")
        inputs = [vi("latent", TensorProto.INT32, ["N", LATENT_C, "h", "w"])]
        outputs = [vi("frame", TensorProto.UINT8, ["N", "H", "W", 3])]
    g = helper.make_graph(net.nodes, f"tiny_ov_{graph}", inputs, outputs, net.inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], producer_name="edgeae-tests")
    model.ir_version = 10
    helper.set_model_props(model, _meta(task, graph, channels, quality))
    onnx.checker.check_model(model)
    return model


def _calibration(graph: str, channels: int) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    if graph == "decoder":
        return [rng.integers(-8, 9, (1, LATENT_C, 6, 8), dtype=np.int32) for _ in range(4)]
    return [rng.integers(0, 256, (1, 24, 32, channels), dtype=np.uint8) for _ in range(4)]


def _int8(model: onnx.ModelProto, graph: str, channels: int, tmp: Path) -> bytes:
    """Static QDQ INT8 of the Conv/ConvTranspose layers (bundle_files.qdq_int8), calibrated on _calibration."""
    name = model.graph.input[0].name
    return qdq_int8(model.SerializeToString(), name, _calibration(graph, channels), tmp, tag=graph)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """denoise-gray (fp32, int8), anomaly (fp32), compress-q1 (fp32, int8), compress-q2 (fp32; q1's architecture)."""
    root = tmp_path_factory.mktemp("ov-models")
    tmp = tmp_path_factory.mktemp("ov-quant")
    m = root / "models"
    den = _build("denoise", 1)
    write_bundle(
        m / "denoise-gray",
        "denoise",
        {("denoise", "fp32"): den.SerializeToString(), ("denoise", "int8"): _int8(den, "denoise", 1, tmp)},
        _meta("denoise", "denoise", 1),
    )
    write_bundle(
        m / "anomaly",
        "anomaly",
        {("anomaly", "fp32"): _build("anomaly", 3).SerializeToString()},
        _meta("anomaly", "anomaly", 3),
    )
    tables = json.dumps(tables_to_json(tables_from_pmf(np.full((LATENT_C, 17), 1 / 18), np.full(LATENT_C, -8))))
    for q in (1, 2):
        enc, dec = _build("encoder", 3, q), _build("decoder", 3, q)
        files = {("encoder", "fp32"): enc.SerializeToString(), ("decoder", "fp32"): dec.SerializeToString()}
        if q == 1:
            files[("encoder", "int8")] = _int8(enc, "encoder", 3, tmp)
            files[("decoder", "int8")] = _int8(dec, "decoder", 3, tmp)
        contract = {k: v for k, v in _meta("compress", "encoder", 3, q).items() if k != "edgeae.graph"}
        write_bundle(m / f"compress-q{q}", "compress", files, contract, extra={"entropy.json": tables.encode()})
    return m


def _frame(graph, w: int = 64, h: int = 48) -> np.ndarray:
    """A (1, h, w, C) feed of a test photograph, through the runtime's own preprocessing for ``graph``."""
    return lat.stack_feed(graph, lat.test_frames(w, h, 1, seed=3))[0]


def _maxdiff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape and a.dtype == b.dtype
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


# ---------------------------------------------------------------------------------------------------- OpenVINOGraph


@pytest.mark.parametrize(
    "name,graph", [("denoise-gray", "denoise"), ("anomaly", "anomaly"), ("compress-q1", "encoder")]
)
def test_openvino_fp32_equals_onnxruntime(models: Path, name: str, graph: str) -> None:
    ort = open_graph(models / name, graph, "fp32", threads=1)
    x = _frame(ort)
    want = ort.run({"frame": x})
    g = ovb.OpenVINOGraph(models / name / f"{graph}.fp32.onnx", "frame", x.shape, "f32", 1)
    got = g.run(x)
    assert list(got) == [o.name for o in ort.info.outputs]  # names and order of the ONNX outputs
    assert g.inference_precision() == "f32"
    for out, arr in got.items():
        tol = FP32_TOL_U8 if arr.dtype == np.uint8 else FP32_TOL_FLOAT
        if arr.dtype == np.int32:  # latents: Round of a float; a value on .5 may land one step apart
            tol = 1
        assert _maxdiff(arr, want[out]) <= tol, out
        assert want[out].size == 1 or np.ptp(want[out]) > 0, f"{out}: a constant output tests nothing"


def test_decoder_on_encoder_latents_equals_onnxruntime(models: Path) -> None:
    enc = open_graph(models / "compress-q1", "encoder", "fp32", threads=1)
    dec = open_graph(models / "compress-q1", "decoder", "fp32", threads=1)
    latent = enc.run({"frame": _frame(enc)})["latent"]
    assert latent.dtype == np.int32 and latent.shape == (1, LATENT_C, 12, 16)
    want = dec.run({"latent": latent})["frame"]
    got = ovb.OpenVINOGraph(models / "compress-q1" / "decoder.fp32.onnx", "latent", latent.shape, "f32", 1).run(latent)
    assert got["frame"].shape == want.shape == (1, 48, 64, 3)
    assert _maxdiff(got["frame"], want) <= FP32_TOL_U8


def test_openvino_int8_runs_integer_convolutions_close_to_onnxruntime_int8(models: Path) -> None:
    fp32_graph = open_graph(models / "denoise-gray", "denoise", "fp32", threads=1)
    x = _frame(fp32_graph)
    want = open_graph(models / "denoise-gray", "denoise", "int8", threads=1).run({"frame": x})["denoised"]
    fp32 = fp32_graph.run({"frame": x})["denoised"]
    g = ovb.OpenVINOGraph(models / "denoise-gray" / "denoise.int8.onnx", "frame", x.shape, "f32", 1)
    got = g.run(x)["denoised"]
    kernels = g.kernel_precisions()
    assert sum(kernels.values()) == 2  # the two Conv layers of the tiny denoiser
    if platform.machine().lower() in ("x86_64", "amd64"):
        assert any(k.endswith((" u8", " i8")) for k in kernels), kernels
    # Both runtimes run the same QDQ arithmetic: a few grey levels of requantisation rounding at most, and
    # both stay near the FP32 result.
    assert _maxdiff(got, want) <= 3
    assert _maxdiff(got, fp32) <= 12


def test_input_of_the_wrong_type_is_rejected_not_converted(models: Path) -> None:
    g = ovb.OpenVINOGraph(models / "denoise-gray" / "denoise.fp32.onnx", "frame", (1, 48, 64, 1), "f32", 1)
    with pytest.raises(ModelRejectedError, match="expected u8, got float32"):
        g.run(np.zeros((1, 48, 64, 1), np.float32))
    with pytest.raises(ModelRejectedError, match="expected one input 'latent'"):
        ovb.OpenVINOGraph(models / "denoise-gray" / "denoise.fp32.onnx", "latent", (1, 4, 6, 8), "f32", 1)


def test_unreadable_model_is_model_rejected(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(ModelRejectedError, match="OpenVINO could not read the model"):
        ovb.OpenVINOGraph(bad, "frame", (1, 8, 8, 1), "f32", 1)


def test_time_openvino_returns_timing_and_ordered_outputs(models: Path) -> None:
    ort = open_graph(models / "anomaly", "anomaly", "fp32", threads=1)
    x = _frame(ort)
    timing, outs = ovb.time_openvino(models / "anomaly" / "anomaly.fp32.onnx", "frame", x, "f32", 1, 1, 4, 0)
    assert timing.n == 4 and 0 < timing.min_ms <= timing.p50_ms <= timing.p95_ms
    want = ort.run({"frame": x})
    assert [o.shape for o in outs] == [want[k].shape for k in ("anomaly_map", "score", "features")]
    assert _maxdiff(outs[1], want["score"]) <= FP32_TOL_FLOAT


def test_bf16_flags() -> None:
    assert ovb.bf16_supported(["avx2", "amx_bf16"]) and ovb.bf16_supported(["avx512_bf16"])
    assert not ovb.bf16_supported(["avx2", "avx512f"]) and not ovb.bf16_supported(None)


# ---------------------------------------------------------------------------------------------------- comparison


def _rows(results: dict) -> dict[tuple[str, str, str, str], dict]:
    return {(r["model"], r["graph"], r["runtime"], r["precision"]): r for r in results["rows"]}


def test_int8_disagreement_is_judged_against_the_quantization_noise() -> None:
    ref = {"m": np.array([0.0, 0.5], np.float32)}
    off = {"m": np.array([0.0, 0.5 + 0.08], np.float32)}  # 16 % of the range: flagged on its own
    assert ovb._diffs(off, ref)["m"]["disagrees"] is True
    noise = ovb._diffs({"m": np.array([0.0, 0.45], np.float32)}, ref)  # INT8 itself moves it by 0.05
    assert ovb._diffs(off, ref, noise)["m"]["disagrees"] is False  # within twice the noise
    far = {"m": np.array([0.0, 0.5 + 0.2], np.float32)}
    assert ovb._diffs(far, ref, noise)["m"]["disagrees"] is True


def test_comparison_rows_without_bf16_when_the_cpu_lacks_it(models: Path) -> None:
    res = ovb.run_comparison(models, ["64x48"], 1, warmup=1, repeat=5, budget_s=0, cpu_flags=["avx2"])
    rows = _rows(res)
    expected = set()
    for model, graph, int8 in [
        ("denoise-gray", "denoise", True),
        ("anomaly", "anomaly", False),
        ("compress-q1", "encoder", True),
        ("compress-q1", "decoder", True),
    ]:
        expected |= {(model, graph, "onnxruntime", "fp32"), (model, graph, "openvino", "fp32")}
        if int8:
            expected |= {(model, graph, "onnxruntime", "int8"), (model, graph, "openvino", "int8")}
    assert set(rows) == expected  # no bf16 rows, no compress-q2 (same architecture as q1)
    assert {"what": "OpenVINO BF16", "reason": "the CPU lists neither avx512_bf16 nor amx_bf16"} in res["skipped"]
    assert any(s["what"] == "compress-q2" and "compress-q1" in s["reason"] for s in res["skipped"])
    assert res["config"]["bf16_used"] is False and res["complete"] is True

    for key, r in rows.items():
        assert r["timing"]["n"] == 5 and r["threads"] == 1 and r["resolution"] == "64x48"
        base = rows[(key[0], key[1], "onnxruntime", "fp32")]["timing"]["p50_ms"]
        assert r["speedup_vs_ort_fp32"] == pytest.approx(base / r["timing"]["p50_ms"])
        if r["runtime"] == "onnxruntime":
            assert r["providers"] == ["CPUExecutionProvider"]
            if r["precision"] == "fp32":
                assert r["diff"] is None
            else:  # INT8 against FP32: the quantization noise OpenVINO's INT8 is judged against
                assert r["compared_with"] == "onnxruntime fp32" and set(r["diff"]) == set(
                    rows[(key[0], key[1], "openvino", "int8")]["diff"]
                )
            continue
        assert r["compared_with"] == f"onnxruntime {r['precision']}"
        assert r["file"] == f"{key[1]}.{r['precision']}.onnx"
        for out, d in r["diff"].items():
            limit = 3 if r["precision"] == "int8" else (FP32_TOL_FLOAT if d["dtype"] == "float32" else 1)
            assert d["max_abs"] is not None and d["max_abs"] <= limit, (key, out, d)
            assert d["disagrees"] is False
    assert rows[("compress-q1", "encoder", "openvino", "fp32")]["input"]["dtype"] == "uint8"
    dec = rows[("compress-q1", "decoder", "openvino", "fp32")]["input"]
    assert dec == {"name": "latent", "shape": [1, LATENT_C, 12, 16], "dtype": "int32"}


def test_bf16_row_reports_the_precision_openvino_really_used(models: Path) -> None:
    res = ovb.run_comparison(
        models, ["64x48"], 1, only=["denoise-gray"], warmup=1, repeat=5, budget_s=0, cpu_flags=["amx_bf16"]
    )
    rows = _rows(res)
    bf16 = rows[("denoise-gray", "denoise", "openvino", "bf16")]
    assert bf16["compared_with"] == "onnxruntime fp32" and bf16["file"] == "denoise.fp32.onnx"
    real = ovb.bf16_supported(machine.stamp()["cpu"]["flags"])
    # The hint is only a wish: without BF16 instructions OpenVINO runs f32, and the row says so.
    assert bf16["openvino"]["properties"]["INFERENCE_PRECISION_HINT"] == ("bf16" if real else "f32")
    assert set(bf16["openvino"]["kernels"]) == ({"Convolution bf16"} if real else {"Convolution f32"})
    assert bf16["diff"]["denoised"]["max_abs"] <= 8  # bf16 keeps 8 significant bits: a few grey levels
    assert rows[("denoise-gray", "denoise", "openvino", "fp32")]["openvino"]["kernels"] == {"Convolution f32": 2}


def test_a_different_result_is_flagged_in_json_and_markdown(models: Path) -> None:
    ref = {"map": np.linspace(0, 0.5, 100, dtype=np.float32).reshape(1, 10, 10), "score": np.array([0.2], np.float32)}
    close = {"map": ref["map"] + 0.01, "score": ref["score"] + 0.001}
    wrong = {"map": ref["map"] - 100, "score": np.array([np.nan], np.float32)}
    d_close, d_wrong = ovb._diffs(close, ref), ovb._diffs(wrong, ref)
    assert d_close["map"]["max_abs"] == pytest.approx(0.01, rel=1e-4) and not d_close["map"]["disagrees"]
    assert not d_close["score"]["disagrees"]  # one value: judged against its magnitude
    assert d_wrong["map"]["disagrees"] and d_wrong["map"]["ref_range"] == [0.0, 0.5]
    assert d_wrong["score"]["disagrees"] and d_wrong["score"]["max_abs"] is None  # NaN: not valid JSON, None

    res = ovb.run_comparison(models, ["32x32"], 1, only=["anomaly"], warmup=1, repeat=5, budget_s=0, bf16="off")
    row = _rows(res)[("anomaly", "anomaly", "openvino", "fp32")]
    assert "(!)**;" not in ovb.markdown_section(res) and "(!)** |" not in ovb.markdown_section(res)
    row["diff"] = d_wrong
    md = ovb.markdown_section(res)
    assert "| anomaly | anomaly | 32x32 | OpenVINO FP32 |" in md and "map 100 **(!)**; score — **(!)**" in md
    json.dumps(res, allow_nan=False)  # results.json stays strict JSON


def test_bad_arguments_are_usage_errors(models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UsageError, match="resolution"):
        ovb.run_comparison(models, ["64by48"], 1)
    with pytest.raises(UsageError, match="--bf16"):
        ovb.run_comparison(models, ["64x48"], 1, bf16="maybe")
    monkeypatch.setattr(ovb, "openvino_available", lambda: (False, "openvino is not installed (pip install openvino)"))
    with pytest.raises(UsageError, match="openvino is not installed"):
        ovb.run_comparison(models, ["64x48"], 1)


# ---------------------------------------------------------------------------------------------------- command line


def _cli(*args: str):
    return CliRunner().invoke(ovb._make_command(), list(args))


def test_cli_writes_results_json_and_markdown_section(models: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = _cli(
        "--models",
        str(models),
        "--only",
        "denoise-gray,compress-q1",
        "--resolution",
        "64x48,32x32",
        "--threads",
        "1",
        "--warmup",
        "1",
        "--repeat",
        "5",
        "--bf16",
        "off",
        "--quiet",
        "--out",
        str(out),
    )
    assert res.exit_code == 0, res.output + repr(res.exception)
    results = json.loads((out / "results.json").read_text())
    assert results["stamp"]["threads"]["requested"] == 1 and "cpu" in results["stamp"]
    assert results["openvino_version"] == ov.get_version()
    assert results["config"]["resolutions"] == ["64x48", "32x32"] and results["config"]["bf16"] == "off"
    assert {"what": "OpenVINO BF16", "reason": "--bf16 off"} in results["skipped"]
    keys = [(r["model"], r["graph"], r["resolution"], r["runtime"], r["precision"]) for r in results["rows"]]
    assert len(keys) == len(set(keys)) == 3 * 2 * 4  # 3 graphs x 2 resolutions x (ORT, OV) x (fp32, int8)
    assert not any(k[4] == "bf16" for k in keys)
    md = (out / "section.md").read_text()
    assert md.startswith("## Native OpenVINO vs onnxruntime")
    assert "| model | graph | resolution | runtime / precision | p50 ms | p95 ms | speed-up vs ORT FP32 |" in md
    table = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith(("| model", "| ---"))]
    assert len(table) == len(keys)
    assert "| compress-q1 | decoder | 32x32 | OpenVINO INT8 |" in md
    assert md in res.output  # also printed


def test_cli_exit_codes(models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    res = _cli("--models", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"), "--quiet")
    assert res.exit_code == 4 and "models folder does not exist" in res.output
    res = _cli("--models", str(models), "--only", "nope", "--out", str(tmp_path / "o"), "--quiet")
    assert res.exit_code == 2 and "no bundle named nope" in res.output
    monkeypatch.setattr(ovb, "openvino_available", lambda: (False, "openvino is not installed (pip install openvino)"))
    res = _cli("--models", str(models), "--out", str(tmp_path / "o"), "--quiet")
    assert res.exit_code == 2 and "openvino is not installed" in res.output
    assert not (tmp_path / "o").exists()


def test_python_dash_m_entry_point() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.openvino_baseline", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    for option in ("--models", "--resolution", "--threads", "--out", "--bf16"):
        assert option in proc.stdout
