"""Sessions: providers really used (case 8), feeds checked before onnxruntime (case 6), frames padded and
cropped, NaN/Inf outputs flagged (case 18)."""

from __future__ import annotations

import json
import os
import warnings

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from edge_runtime.errors import BAD_DATA, MODEL_REJECTED, USAGE, BadDataError, ModelRejectedError, UsageError
from edge_runtime.model import open_graph
from edge_runtime.session import (
    DEVICE_PROVIDERS,
    FallbackWarning,
    NonFiniteOutput,
    RuntimeGraph,
    available_providers,
    create_session,
    cuda_options,
    describe,
    make_session_options,
    openvino_options,
    resolve_device,
)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
HAS_CUDA = CUDA in ort.get_available_providers()


def frame_of(h: int, w: int, c: int = 3, seed: int = 0) -> np.ndarray:
    """(h, w, c) uint8 noise; squeezed to (h, w) for c == 0."""
    rng = np.random.default_rng(seed)
    if c == 0:
        return rng.integers(0, 256, (h, w), dtype=np.uint8)
    return rng.integers(0, 256, (h, w, c), dtype=np.uint8)


@pytest.fixture
def denoise(make_bundle) -> RuntimeGraph:
    return open_graph(make_bundle(["denoise"]), threads=1)


@pytest.fixture
def no_cuda(monkeypatch):
    """This onnxruntime as if it had no CUDA provider, whatever the machine has."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["AzureExecutionProvider", CPU])


# --------------------------------------------------------------------------------------------------------------
# Devices and options


def test_resolve_device():
    assert resolve_device("cpu") == [CPU]
    assert resolve_device("cuda") == [CUDA, CPU]
    assert resolve_device("tensorrt")[0] == "TensorrtExecutionProvider"
    assert resolve_device("cuda") is not DEVICE_PROVIDERS["cuda"]  # a copy: callers may edit it
    assert resolve_device("auto", [CUDA, "OpenVINOExecutionProvider", CPU]) == [CUDA, CPU]
    assert resolve_device("auto", ["OpenVINOExecutionProvider", CPU])[0] == "OpenVINOExecutionProvider"
    assert resolve_device("auto", ["CoreMLExecutionProvider", CPU])[0] == "CoreMLExecutionProvider"
    assert resolve_device("auto", ["TensorrtExecutionProvider", CPU]) == [CPU]  # TensorRT only when asked for
    assert resolve_device("auto", [CPU]) == [CPU]


def test_unknown_device_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown device 'gpu'.*cpu, cuda") as err:
        resolve_device("gpu")
    assert err.value.exit_code == USAGE


def test_session_options(monkeypatch):
    so = make_session_options(3)
    assert so.intra_op_num_threads == 3 and so.inter_op_num_threads == 1
    assert so.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert so.enable_cpu_mem_arena is False and so.enable_mem_pattern is False
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert make_session_options(None).intra_op_num_threads == 7  # one core left for decoding
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert make_session_options(None).intra_op_num_threads == 1
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert make_session_options(None).intra_op_num_threads == 1


@pytest.mark.parametrize("threads", [0, -2, 1.5, True])
def test_bad_thread_count(threads):
    with pytest.raises(UsageError, match="threads must be a positive integer"):
        make_session_options(threads)


def test_openvino_options():
    assert openvino_options() == {"device_type": "CPU", "precision": "FP32"}
    assert openvino_options("accuracy") == {"device_type": "CPU", "precision": "ACCURACY"}
    assert openvino_options("fp16", device_type="GPU") == {"device_type": "GPU", "precision": "FP16"}
    assert openvino_options(device_type="GPU") == {"device_type": "GPU", "precision": "FP32"}
    with pytest.raises(UsageError, match="unknown OpenVINO precision 'INT4'"):
        openvino_options("int4")


@pytest.mark.parametrize("device_type", ["CPU", "cpu"])
def test_openvino_fp16_on_the_cpu_is_a_usage_error(device_type):
    # onnxruntime-openvino 1.24.1 only logs "CPU only supports FP32, ACCURACY" and runs on the CPU provider.
    with pytest.raises(UsageError) as err:
        openvino_options("fp16", device_type=device_type)
    assert (
        str(err.value) == "OpenVINO precision FP16 is not supported on the CPU (the CPU supports FP32, BF16, ACCURACY)"
    )
    assert err.value.exit_code == USAGE


def test_openvino_bf16_goes_through_load_config():
    opts = openvino_options("bf16")
    assert set(opts) == {"device_type", "precision", "load_config"}
    assert opts["device_type"] == "CPU" and opts["precision"] == "FP32"
    assert json.loads(opts["load_config"]) == {"CPU": {"INFERENCE_PRECISION_HINT": "bf16"}}
    with pytest.raises(UsageError, match="BF16 is only offered for device_type CPU, got 'GPU'"):
        openvino_options("BF16", device_type="GPU")


def test_available_providers_lists_cpu():
    assert CPU in available_providers()


# --------------------------------------------------------------------------------------------------------------
# Case 8: a requested accelerator that is missing or silently dropped


def test_cuda_not_available_is_rejected(make_bundle, no_cuda):
    with pytest.raises(ModelRejectedError, match="requested cuda but CUDAExecutionProvider is not available") as err:
        open_graph(make_bundle(), device="cuda")
    assert err.value.exit_code == MODEL_REJECTED
    assert "--allow-fallback" in str(err.value) and "CPUExecutionProvider" in str(err.value)


@pytest.mark.parametrize("device", ["tensorrt", "openvino", "openvino-bf16", "coreml", "xnnpack"])
def test_other_accelerators_not_available_are_rejected(make_bundle, monkeypatch, device):
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CPU])
    with pytest.raises(ModelRejectedError, match=f"requested {device} but"):
        open_graph(make_bundle(), device=device)


def test_allow_fallback_runs_on_cpu_and_names_the_providers(make_bundle, no_cuda):
    with pytest.warns(FallbackWarning, match="requested cuda but onnxruntime runs CPUExecutionProvider"):
        graph = open_graph(make_bundle(), device="cuda", allow_fallback=True)
    assert graph.providers == [CPU]
    assert graph.use_io_binding is False  # nothing to bind to off the GPU
    frame = frame_of(8, 8)[None]
    np.testing.assert_array_equal(graph.run({"frame": frame})["denoised"], frame)


@pytest.mark.filterwarnings("ignore:Specified provider")  # onnxruntime's own warning about the missing provider
def test_silent_fallback_after_creation_is_rejected(make_bundle, monkeypatch):
    # onnxruntime lists CUDA as available but the session ends up on the CPU (missing CUDA libraries, a rejected
    # option): it only logs, so the providers must be compared after creation.
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    monkeypatch.setattr(ort.InferenceSession, "get_providers", lambda self: [CPU])
    with pytest.raises(ModelRejectedError, match="requested cuda but onnxruntime runs CPUExecutionProvider") as err:
        open_graph(make_bundle(), device="cuda")
    assert err.value.exit_code == MODEL_REJECTED


@pytest.mark.filterwarnings("ignore:Specified provider")
def test_silent_openvino_fallback_is_rejected(make_bundle, monkeypatch):
    # FINDINGS.md: onnxruntime-openvino given an option it rejected ran on the CPU provider without raising.
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["OpenVINOExecutionProvider", CPU])
    monkeypatch.setattr(ort.InferenceSession, "get_providers", lambda self: [CPU])
    with pytest.raises(ModelRejectedError, match="requested openvino but onnxruntime runs CPUExecutionProvider"):
        open_graph(make_bundle(), device="openvino", provider_options=openvino_options("BF16"))
    with pytest.warns(FallbackWarning, match="runs CPUExecutionProvider"):
        graph = open_graph(make_bundle(name="b2"), device="openvino", allow_fallback=True)
    assert graph.providers == [CPU]


def test_provider_options_go_to_the_requested_provider(tiny_model_bytes, monkeypatch):
    seen = {}
    real = ort.InferenceSession

    def spy(model, sess_options=None, providers=None, provider_options=None, **kw):
        seen.update(providers=providers, provider_options=provider_options)
        return real(model, sess_options=sess_options, providers=[CPU])

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["OpenVINOExecutionProvider", CPU])
    monkeypatch.setattr(ort, "InferenceSession", spy)
    monkeypatch.setattr(real, "get_providers", lambda self: ["OpenVINOExecutionProvider", CPU])
    create_session(
        tiny_model_bytes,
        "openvino",
        allow_fallback=False,
        threads=1,
        provider_options=openvino_options("FP16", device_type="GPU"),
        where="m",
    )
    assert seen["providers"] == ["OpenVINOExecutionProvider", CPU]
    assert seen["provider_options"] == [{"device_type": "GPU", "precision": "FP16", "num_of_threads": "1"}, {}]


OV_FP32 = {"device_type": "CPU", "precision": "FP32"}


@pytest.mark.parametrize(("device", "threads", "given", "expected"), [
    ("openvino", 2, None, {**OV_FP32, "num_of_threads": "2"}),  # the runtime's defaults plus the thread count
    ("openvino", None, None, OV_FP32),  # no thread count: OpenVINO keeps its own
    ("auto", 3, None, {**OV_FP32, "num_of_threads": "3"}),  # auto picks openvino here (no CUDA)
    ("openvino", 2, openvino_options("BF16"), {**openvino_options("BF16"), "num_of_threads": "2"}),
    ("openvino-bf16", 2, None, {**openvino_options("BF16"), "num_of_threads": "2"}),  # the BF16 device's defaults
    ("openvino-bf16", 2, {"num_of_threads": "1"}, {"num_of_threads": "1"}),
    ("openvino", 2, {"num_of_threads": "1"}, {"num_of_threads": "1"}),  # the caller's options win and replace
    ("openvino", 2, {"num_of_threads": 1, "precision": "ACCURACY"}, {"num_of_threads": "1", "precision": "ACCURACY"}),
])  # fmt: skip
def test_openvino_sessions_get_the_runtime_options(tiny_model_bytes, monkeypatch, device, threads, given, expected):
    """Without OpenVINO: what create_session hands onnxruntime when OpenVINO is listed (the session is CPU)."""
    seen = {}
    real = ort.InferenceSession

    def spy(model, sess_options=None, providers=None, provider_options=None, **kw):
        seen.update(providers=providers, provider_options=provider_options, threads=sess_options.intra_op_num_threads)
        return real(model, sess_options=sess_options, providers=[CPU])

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["OpenVINOExecutionProvider", CPU])
    monkeypatch.setattr(ort, "InferenceSession", spy)
    monkeypatch.setattr(real, "get_providers", lambda self: ["OpenVINOExecutionProvider", CPU])
    before = dict(given) if given is not None else None
    create_session(tiny_model_bytes, device, allow_fallback=False, threads=threads, provider_options=given, where="m")
    assert seen["providers"] == ["OpenVINOExecutionProvider", CPU]
    assert seen["provider_options"] == [expected, {}]
    if threads is not None:
        assert seen["threads"] == threads  # onnxruntime's own intra-op threads too
    assert given == before  # the caller's dict is not modified


@pytest.mark.parametrize("threads", [0, True])
def test_bad_thread_count_for_a_session_is_a_usage_error(tiny_model_bytes, monkeypatch, threads):
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["OpenVINOExecutionProvider", CPU])
    with pytest.raises(UsageError, match="threads must be a positive integer"):
        create_session(tiny_model_bytes, "openvino", allow_fallback=True, threads=threads, where="m")


def test_cuda_options_defaults_and_choices():
    assert cuda_options() == {"cudnn_conv_algo_search": "EXHAUSTIVE", "use_tf32": "0"}
    assert cuda_options("heuristic", tf32=True, nhwc=True) == {
        "cudnn_conv_algo_search": "HEURISTIC",
        "use_tf32": "1",
        "prefer_nhwc": "1",
    }
    with pytest.raises(UsageError, match="unknown cuDNN search 'FAST'"):
        cuda_options("fast")


@pytest.mark.parametrize(("device", "given", "expected"), [
    ("cuda", None, {"cudnn_conv_algo_search": "EXHAUSTIVE", "use_tf32": "0"}),  # the runtime's defaults
    ("cuda", {"use_tf32": "1"}, {"use_tf32": "1"}),  # the caller's options replace them
    ("auto", None, {"cudnn_conv_algo_search": "EXHAUSTIVE", "use_tf32": "0"}),  # auto picks cuda here
])  # fmt: skip
def test_cuda_sessions_get_the_runtime_options(tiny_model_bytes, monkeypatch, device, given, expected):
    """Without a GPU: what create_session hands onnxruntime when CUDA is listed (the session itself is CPU)."""
    seen = {}
    real = ort.InferenceSession

    def spy(model, sess_options=None, providers=None, provider_options=None, **kw):
        seen.update(providers=providers, provider_options=provider_options)
        return real(model, sess_options=sess_options, providers=[CPU])

    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    monkeypatch.setattr(ort, "InferenceSession", spy)
    monkeypatch.setattr(real, "get_providers", lambda self: [CUDA, CPU])
    create_session(tiny_model_bytes, device, allow_fallback=False, threads=1, provider_options=given, where="m")
    assert seen["providers"] == [CUDA, CPU]
    assert seen["provider_options"] == [expected, {}]


def test_cuda_graph_binds_io_and_copies_results_back(make_bundle, monkeypatch):
    """Without a GPU: a graph whose session reports CUDA runs through I/O binding (host input bound, outputs
    bound to host memory and copied back) and gives what session.run gives."""
    root = make_bundle(["anomaly"])
    assert open_graph(root, threads=1).use_io_binding is False  # a CPU graph does not bind
    real = ort.InferenceSession
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    monkeypatch.setattr(
        ort, "InferenceSession", lambda m, sess_options=None, **kw: real(m, sess_options, providers=[CPU])
    )
    monkeypatch.setattr(real, "get_providers", lambda self: [CUDA, CPU])
    calls = []
    real_binding = real.io_binding

    def io_binding(self):
        calls.append("bind")
        return real_binding(self)

    monkeypatch.setattr(real, "io_binding", io_binding)
    from onnxruntime.capi.onnxruntime_inference_collection import IOBinding

    real_bind_output = IOBinding.bind_output

    def bind_output(self, name, device_type="cpu", *args, **kw):
        calls.append(f"{name}@{device_type}")  # outputs stay on the device, copied once by OrtValue.numpy()
        return real_bind_output(self, name, "cpu")  # the stand-in session is on the CPU

    monkeypatch.setattr(IOBinding, "bind_output", bind_output)
    graph = open_graph(root, device="cuda", threads=1)
    assert graph.use_io_binding is True and graph.providers[0] == CUDA
    x = frame_of(37, 51)
    got = graph.run_frame(x)
    assert calls == ["bind", *[f"{o.name}@cuda" for o in graph.info.outputs]]
    calls[1:] = []
    graph.use_io_binding = False
    want = graph.run_frame(x)
    assert calls == ["bind"] and sorted(got) == sorted(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])


def test_auto_never_fails_for_a_missing_accelerator(tiny_model_bytes, no_cuda):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # auto picks what is available: no fallback, no warning
        session = create_session(tiny_model_bytes, "auto", allow_fallback=False, threads=1, where="m")
    assert session.get_providers() == [CPU]


def test_cpu_session_from_bytes(tiny_model_bytes):
    session = create_session(tiny_model_bytes, "cpu", allow_fallback=False, threads=2, where="m")
    assert session.get_providers() == [CPU]
    assert session.get_session_options().intra_op_num_threads == 2


# --------------------------------------------------------------------------------------------------------------
# Case 6 at run time: wrong feeds never reach onnxruntime


def test_wrong_dtype_shows_expected_and_actual(denoise, monkeypatch):
    monkeypatch.setattr(denoise.session, "run", lambda *a, **k: pytest.fail("onnxruntime was called"))
    with pytest.raises(ModelRejectedError) as err:
        denoise.run({"frame": np.zeros((1, 480, 640, 3), np.float32)})
    assert err.value.exit_code == MODEL_REJECTED
    assert "expected uint8 [N,H,W,3], got float32 [1,480,640,3]" in str(err.value)


@pytest.mark.parametrize(
    ("feeds", "match"),
    [
        ({"frame": np.zeros((480, 640, 3), np.uint8)}, r"expected uint8 \[N,H,W,3\], got uint8 \[480,640,3\]"),
        ({"frame": np.zeros((1, 16, 16, 4), np.uint8)}, r"got uint8 \[1,16,16,4\] \(axis 3\)"),
        ({"image": np.zeros((1, 16, 16, 3), np.uint8)}, r"expected inputs \[frame\], got \[image\]"),
        ({"frame": np.zeros((1, 12, 16, 3), np.uint8)}, r"expected H and W multiples of 8, got \[1,12,16,3\]"),
        ({"frame": np.zeros((1, 8200, 16, 3), np.uint8)}, r"expected H and W <= 8192, got \[1,8200,16,3\]"),
        ({"frame": np.zeros((0, 16, 16, 3), np.uint8)}, r"empty array"),
        ({"frame": [[1, 2]]}, r"expected uint8 \[N,H,W,3\], got <class 'list'>"),
    ],
)
def test_bad_feeds(denoise, feeds, match):
    with pytest.raises(ModelRejectedError, match=match):
        denoise.run(feeds)


def test_max_side_from_metadata(make_bundle):
    graph = open_graph(make_bundle(metadata={"edgeae.max_side": "64"}))
    graph.run({"frame": np.zeros((1, 64, 64, 3), np.uint8)})
    with pytest.raises(ModelRejectedError, match="<= 64"):
        graph.run({"frame": np.zeros((1, 72, 64, 3), np.uint8)})
    with pytest.raises(ModelRejectedError, match="<= 64"):
        graph.run_frame(frame_of(65, 10))


def upsampling_decoder(make_model, stride: int, **metadata: str):
    """A decoder that honours ``edgeae.latent.stride``: latent (N,C,h,w) -> frame (N, stride*h, stride*w, C)."""
    from onnx import TensorProto, helper, numpy_helper

    model = make_model("decoder", metadata={"edgeae.latent.stride": str(stride), **metadata})
    del model.graph.node[:]
    model.graph.initializer.append(numpy_helper.from_array(np.array([1, 1, stride, stride], np.float32), "scales"))
    model.graph.node.extend([
        helper.make_node("Cast", ["latent"], ["lf"], to=TensorProto.FLOAT),
        helper.make_node("Resize", ["lf", "", "scales"], ["up"], mode="nearest"),
        helper.make_node("Transpose", ["up"], ["t"], perm=[0, 2, 3, 1]),
        helper.make_node("Cast", ["t"], ["frame"], to=TensorProto.UINT8),
    ])  # fmt: skip
    return model


def test_decoder_latent_cap_uses_the_stride(make_bundle, make_model):
    decoder = upsampling_decoder(make_model, 16, **{"edgeae.max_side": "64"})
    graph = open_graph(
        make_bundle(["decoder"], models={("decoder", "fp32"): decoder}, metadata={"edgeae.max_side": "64"}),
        "decoder",
    )
    assert graph.run({"latent": np.zeros((1, 3, 4, 4), np.int32)})["frame"].shape == (1, 64, 64, 3)
    with pytest.raises(ModelRejectedError, match=r"<= 64, got \[1,3,5,4\]"):
        graph.run({"latent": np.zeros((1, 3, 5, 4), np.int32)})


def test_noncontiguous_feed_is_accepted(denoise):
    frame = frame_of(16, 32)[:, ::2][None]  # a strided view
    np.testing.assert_array_equal(denoise.run({"frame": frame})["denoised"], frame)


# --------------------------------------------------------------------------------------------------------------
# run_frame: channels, padding, cropping


@pytest.mark.parametrize(("h", "w"), [(37, 51), (1, 1), (8, 8), (3, 17), (64, 9)])
def test_run_frame_pads_and_crops_back(denoise, h, w):
    frame = frame_of(h, w)
    out = denoise.run_frame(frame)
    assert out["denoised"].shape == (h, w, 3)
    assert out["denoised"].flags.c_contiguous
    np.testing.assert_array_equal(out["denoised"], frame)


def test_padding_is_reflect_101(make_bundle):
    # features keep the padded grid, so they show what the graph was fed.
    graph = open_graph(make_bundle(["anomaly"]))
    frame = frame_of(13, 21)
    out = graph.run_frame(frame)
    assert out["anomaly_map"].shape == (13, 21)
    assert out["score"].shape == ()
    padded = cv2.copyMakeBorder(frame, 0, 3, 0, 3, cv2.BORDER_REFLECT_101)
    np.testing.assert_array_equal(out["features"], padded.transpose(2, 0, 1).astype(np.float32))
    np.testing.assert_allclose(out["anomaly_map"], frame.astype(np.float32).mean(axis=2), rtol=1e-6)
    assert out["score"] == pytest.approx(frame.astype(np.float32).mean(axis=2).max(), rel=1e-6)


@pytest.mark.parametrize(("h", "w", "pad"), [(37, 51, (3, 5)), (8, 16, (0, 0)), (1, 1, (7, 7))])
def test_run_frame_returns_its_padding(denoise, make_bundle, h, w, pad):
    out = denoise.run_frame(frame_of(h, w))
    assert out.pad == pad and out.padded == (h + pad[0], w + pad[1])
    assert list(out) == ["denoised"] and out == {"denoised": out["denoised"]}  # still the plain dict callers know
    features = open_graph(make_bundle(["anomaly"], name="a")).run_frame(frame_of(h, w))
    assert features.padded == features["features"].shape[1:] == (h + pad[0], w + pad[1])


# --------------------------------------------------------------------------------------------------------------
# Outputs checked against the shape the metadata promises (RELIABILITY 33)


def _collapsing_denoise(make_model, channels_out: int | None = None):
    """A denoise graph that returns one pixel per frame (ReduceMax over H and W), or other channels."""
    from onnx import TensorProto, helper, numpy_helper

    model = make_model("denoise")
    g = model.graph
    del g.node[:]
    if channels_out is None:
        g.initializer.append(numpy_helper.from_array(np.array([1, 2], np.int64), "hw"))
        g.node.append(helper.make_node("ReduceMax", ["frame"], ["denoised"], axes=[1, 2], keepdims=1))
    else:
        g.initializer.append(numpy_helper.from_array(np.array([0, 0, 0, 0], np.int64), "starts"))
        g.initializer.append(numpy_helper.from_array(np.array([2**31, 2**31, 2**31, channels_out], np.int64), "ends"))
        g.node.append(helper.make_node("Slice", ["frame", "starts", "ends"], ["denoised"]))
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("denoised", TensorProto.UINT8, ["N", "H", "W", "C"]))
    return model


@pytest.mark.parametrize(
    ("channels_out", "match"),
    [(None, r"denoise graph output denoised: expected \[1,64,48,3\], got \[1,1,1,3\]"),
     (1, r"denoise graph output denoised: expected \[1,64,48,3\], got \[1,64,48,1\]")],
)  # fmt: skip
def test_output_shape_not_promised_is_refused(make_bundle, make_model, channels_out, match):
    graph = open_graph(make_bundle(models={("denoise", "fp32"): _collapsing_denoise(make_model, channels_out)}))
    with pytest.raises(ModelRejectedError, match=match) as err:
        graph.run_frame(frame_of(64, 48))
    assert err.value.exit_code == MODEL_REJECTED and "\n" not in str(err.value)
    assert str(graph.info.path) in str(err.value)


def test_decoder_output_must_follow_the_latent_stride(make_bundle, make_model):
    decoder = upsampling_decoder(make_model, 8)  # really upsamples by 8, but the metadata will say 16
    decoder.metadata_props[[p.key for p in decoder.metadata_props].index("edgeae.latent.stride")].value = "16"
    graph = open_graph(make_bundle(["decoder"], models={("decoder", "fp32"): decoder}), "decoder")
    with pytest.raises(
        ModelRejectedError, match=r"decoder graph output frame: expected \[1,64,64,3\], got \[1,32,32,3\]"
    ):
        graph.run({"latent": np.zeros((1, 3, 4, 4), np.int32)})


def test_anomaly_features_must_share_one_stride(make_bundle, make_model):
    from onnx import helper

    model = make_model("anomaly")
    model.graph.node.append(helper.make_node("Transpose", ["g"], ["features_t"], perm=[0, 3, 2, 1]))
    for node in model.graph.node:  # features come out (N, C, W, H): the grid does not match the frame
        if node.output[0] == "features":
            node.output[0] = "unused"
        elif node.output[0] == "features_t":
            node.output[0] = "features"
    graph = open_graph(make_bundle(["anomaly"], models={("anomaly", "fp32"): model}))
    graph.run({"frame": np.zeros((1, 16, 16, 3), np.uint8)})  # square: W/H swapped still fits
    with pytest.raises(
        ModelRejectedError, match=r"anomaly graph output features: expected \[1,3,16/s,32/s\], got \[1,3,32,16\]"
    ):
        graph.run({"frame": np.zeros((1, 16, 32, 3), np.uint8)})


def test_run_frame_does_not_copy_an_aligned_frame(denoise, monkeypatch):
    frame = frame_of(16, 24)
    fed = {}
    real_run = denoise.session.run

    def spy(names, feeds):
        fed.update(feeds)
        return real_run(names, feeds)

    monkeypatch.setattr(denoise.session, "run", spy)
    denoise.run_frame(frame)
    assert np.shares_memory(fed["frame"], frame)  # the batch dimension is a view


def test_gray_model_converts_bgr_frames(make_bundle):
    graph = open_graph(make_bundle(channels=1))
    frame = frame_of(20, 30)
    out = graph.run_frame(frame)["denoised"]
    assert out.shape == (20, 30, 1)
    np.testing.assert_array_equal(out[:, :, 0], cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY))
    gray = frame_of(20, 30, c=0)
    np.testing.assert_array_equal(graph.run_frame(gray)["denoised"][:, :, 0], gray)
    bgra = frame_of(20, 30, c=4)
    np.testing.assert_array_equal(graph.run_frame(bgra)["denoised"][:, :, 0], cv2.cvtColor(bgra, cv2.COLOR_BGRA2GRAY))


def test_colour_model_converts_gray_frames(denoise):
    gray = frame_of(16, 16, c=0)
    out = denoise.run_frame(gray)["denoised"]
    np.testing.assert_array_equal(out, cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR))


def test_dynamic_channel_dim_uses_metadata(make_bundle):
    graph = open_graph(make_bundle(channels="C", metadata={"edgeae.channels": "1", "edgeae.channel_order": "GRAY"}))
    assert graph.frame_channels() == 1
    assert graph.run_frame(frame_of(8, 8))["denoised"].shape == (8, 8, 1)


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        (np.zeros((16, 16, 3), np.uint16), r"expected a uint8 \[H,W,3\] frame, got uint16 \[16,16,3\]"),
        (np.zeros((16, 16, 2), np.uint8), r"expected a uint8 \[H,W,3\] frame, got uint8 \[16,16,2\]"),
        (np.zeros((1, 16, 16, 3), np.uint8), r"got uint8 \[1,16,16,3\]"),
    ],
)
def test_run_frame_wrong_frames(denoise, frame, match):
    with pytest.raises(ModelRejectedError, match=match):
        denoise.run_frame(frame)


def test_run_frame_needs_a_frame_graph(make_bundle):
    graph = open_graph(make_bundle(["decoder"]), "decoder")
    with pytest.raises(UsageError, match="does not take a frame"):
        graph.run_frame(frame_of(8, 8))


# --------------------------------------------------------------------------------------------------------------
# Case 18: NaN / Inf outputs


@pytest.mark.parametrize("gain", [float("nan"), float("inf")])
def test_non_finite_output_is_flagged(make_bundle, gain):
    graph = open_graph(make_bundle(["anomaly"], gain=gain))
    with pytest.raises(NonFiniteOutput, match="holds NaN or Inf; frame not scored") as err:
        graph.run_frame(frame_of(8, 8))
    assert isinstance(err.value, BadDataError) and err.value.exit_code == BAD_DATA
    assert err.value.output in {"anomaly_map", "score", "features"}


def test_large_finite_outputs_are_not_flagged(make_bundle):
    # 255 * 1e35 is finite in float32, a float32 sum of 12,288 of them is not: the check sums in float64.
    graph = open_graph(make_bundle(["anomaly"], gain=1e35))
    out = graph.run_frame(np.full((64, 64, 3), 255, np.uint8))
    assert np.isfinite(out["features"]).all() and out["features"].max() > 1e37
    with np.errstate(over="ignore"):
        assert not np.isfinite(out["features"].sum(dtype=np.float32))  # the overflow the check avoids


def test_one_nan_pixel_is_flagged(make_bundle, monkeypatch):
    graph = open_graph(make_bundle(["anomaly"]))
    real_run = graph.session.run

    def poison(names, feeds):
        outs = real_run(names, feeds)
        outs[0][0, 3, 5] = np.nan
        return outs

    monkeypatch.setattr(graph.session, "run", poison)
    with pytest.raises(NonFiniteOutput) as err:
        graph.run_frame(frame_of(8, 8))
    assert err.value.output == "anomaly_map"


# --------------------------------------------------------------------------------------------------------------
# I/O binding and describe


def test_io_binding_path_matches_plain_run(make_bundle):
    # The CUDA path binds inputs from CPU memory and outputs where the session runs, then copies them out with
    # OrtValue.numpy(); the same calls work on the CPU provider, which lets this machine exercise the code.
    graph = open_graph(make_bundle(["anomaly"]))
    frame = frame_of(24, 40)
    plain = graph.run_frame(frame)
    graph.use_io_binding = True
    bound = graph.run_frame(frame)
    assert plain.keys() == bound.keys()
    for name in plain:
        np.testing.assert_array_equal(plain[name], bound[name])


def test_describe(make_bundle):
    graph = open_graph(make_bundle(["denoise"], ["int8"]), precision="int8", threads=2)
    info = describe(graph)
    assert info["providers"] == [CPU] and info["device"] == "cpu"
    assert info["threads"] == 2 and info["inter_op_threads"] == 1
    assert info["precision"] == "int8" and info["graph"] == "denoise"
    assert info["sha256"] == graph.info.sha256 and info["onnxruntime"] == ort.__version__


# --------------------------------------------------------------------------------------------------------------
# GPU: needs onnxruntime's CUDA provider (see tools/ort-gpu.md to bring one to the lent machine)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="onnxruntime has no CUDAExecutionProvider here")
def test_cuda_matches_cpu(make_bundle):
    root = make_bundle(["anomaly"])
    cpu = open_graph(root, device="cpu")
    gpu = open_graph(root, device="cuda")
    assert gpu.providers[0] == CUDA and gpu.use_io_binding
    for h, w in [(37, 51), (480, 640), (64, 64)]:  # resolution changes between frames
        frame = frame_of(h, w, seed=h)
        want, got = cpu.run_frame(frame), gpu.run_frame(frame)
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-4)
    denoise_root = make_bundle(["denoise"], name="d")
    frame = frame_of(37, 51)
    np.testing.assert_array_equal(open_graph(denoise_root, device="cuda").run_frame(frame)["denoised"], frame)
