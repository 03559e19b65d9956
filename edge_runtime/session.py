"""onnxruntime sessions: which providers, which options, and running frames through a checked graph.

A requested accelerator that onnxruntime does not really use is an error (exit 4) unless the caller allows a
fallback: onnxruntime itself only logs when a provider fails to load or rejects an option and then runs on the
CPU provider (FINDINGS.md: onnxruntime-openvino did exactly that), so the providers are compared after creation.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import onnxruntime as ort

from .errors import FrameError, ModelRejectedError, UsageError

if TYPE_CHECKING:
    from .model import GraphInfo, IOSpec

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
OPENVINO = "OpenVINOExecutionProvider"

# Device name -> providers in priority order. The CPU provider comes last: onnxruntime assigns it the operators
# the accelerator does not implement (it would add it anyway), it is not a fallback for the whole graph.
DEVICE_PROVIDERS: dict[str, list[str]] = {
    "cpu": [CPU],
    "cuda": [CUDA, CPU],
    "tensorrt": ["TensorrtExecutionProvider", CUDA, CPU],
    "openvino": [OPENVINO, CPU],
    # OpenVINO with BF16 inference on CPUs that have it (AVX512_BF16, AMX): openvino_options("BF16") by default.
    # Measured on a Xeon with AMX at 640x480: 5-9x faster than onnxruntime's CPU provider at FP32 (BENCHMARKS.md).
    "openvino-bf16": [OPENVINO, CPU],
    "coreml": ["CoreMLExecutionProvider", CPU],
    "xnnpack": ["XnnpackExecutionProvider", CPU],
}
# "auto" picks the first available of these. TensorRT is left out: its engine build takes minutes on first
# use and needs a cache directory, which is a deliberate choice, not a default.
AUTO_ORDER = ("cuda", "openvino", "coreml", "cpu")
# Devices whose outputs come back through I/O binding (one copy up, one copy down per run).
_GPU_DEVICES = frozenset({"cuda", "tensorrt"})
OPENVINO_PRECISIONS = ("FP32", "FP16", "BF16", "ACCURACY")
# What onnxruntime-openvino 1.24.1 accepts as ``precision`` for the CPU device ("CPU only supports FP32, ACCURACY";
# FP16 makes the provider fail to create), plus BF16, which goes through ``load_config`` (openvino_options).
OPENVINO_CPU_PRECISIONS = ("FP32", "BF16", "ACCURACY")
CUDA_CONV_SEARCH = ("EXHAUSTIVE", "HEURISTIC", "DEFAULT")


class FallbackWarning(RuntimeWarning):
    """The session runs on other providers than requested (only with ``allow_fallback``)."""


class NonFiniteOutput(FrameError):
    """A float output holds NaN or Inf (e.g. FP16 overflow): flag the frame, do not score it (case 18)."""

    def __init__(self, message: str, output: str):
        super().__init__(message)
        self.output = output


def available_providers() -> list[str]:
    """Providers this onnxruntime build can create, e.g. ``["CUDAExecutionProvider", "CPUExecutionProvider"]``."""
    return list(ort.get_available_providers())


def auto_device(available: list[str] | None = None) -> str:
    """The device ``auto`` means here: cuda > openvino > coreml > cpu, by what onnxruntime lists as available."""
    available = available_providers() if available is None else available
    for device in AUTO_ORDER:
        if DEVICE_PROVIDERS[device][0] in available:
            return device
    return "cpu"


def resolve_device(device: str, available: list[str] | None = None) -> list[str]:
    """Provider names for a device name (a copy of :data:`DEVICE_PROVIDERS` ``[device]``); UsageError if unknown.

    Availability is checked by :func:`create_session`, where ``allow_fallback`` decides what a missing provider
    means; ``available`` is only consulted for ``"auto"``.
    """
    if device == "auto":
        device = auto_device(available)
    if device not in DEVICE_PROVIDERS:
        known = ", ".join([*DEVICE_PROVIDERS, "auto"])
        raise UsageError(f"unknown device {device!r} (expected one of {known})")
    return list(DEVICE_PROVIDERS[device])


def default_threads() -> int:
    """All cores but one: video decoding and the capture thread need a core of their own."""
    return max(1, (os.cpu_count() or 1) - 1)


def make_session_options(threads: int | None) -> ort.SessionOptions:
    """Session options for frame-by-frame inference with resolutions that may change between frames.

    Threads are explicit (onnxruntime's default takes every core and spins). The CPU memory arena and memory
    patterns are off. Measured here (small conv autoencoder, 2 threads, 17 resolutions from 96x160 to 1120x1696,
    four rounds): with the defaults resident memory stayed at its peak, 317 MB (541 MB on a 480p-1440p mix); arena
    off alone still grew to 278 MB because patterns are cached per shape; both off returned to ~115 MB (~210 MB on
    the mix) after each round. Cost: 480p frame 13.6 → 14.3 ms median, about 5 %.
    """
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise UsageError(f"threads must be a positive integer, got {threads!r}")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads if threads is not None else default_threads()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.enable_cpu_mem_arena = False
    so.enable_mem_pattern = False
    return so


def openvino_options(precision: str = "FP32", device_type: str = "CPU") -> dict[str, str]:
    """Minimal OpenVINO provider options: ``device_type`` (CPU, GPU, NPU) and inference ``precision``.

    ``precision``: FP32, FP16, BF16 or ACCURACY (the model's own precision). FP16 on the CPU is a UsageError:
    onnxruntime-openvino 1.24.1 refuses it ("CPU only supports FP32, ACCURACY"), fails to create the provider
    and runs on the CPU provider. BF16 is CPU only: ``precision`` FP32 plus ``load_config`` with the CPU's
    ``INFERENCE_PRECISION_HINT`` bf16, which overrides it (measured on a Xeon with AMX, denoise-gray 640x480:
    about 4x faster than FP32, at most 2 grey levels off; with ``precision`` left out it behaved the same).
    It needs a CPU with BF16 instructions (AVX512_BF16 or AMX); elsewhere it was not tried. Nothing else is
    passed: an option the provider rejects makes onnxruntime fall back to the CPU provider silently, which
    create_session catches. create_session adds ``num_of_threads`` when given a thread count.
    """
    precision = precision.upper()
    if precision not in OPENVINO_PRECISIONS:
        raise UsageError(f"unknown OpenVINO precision {precision!r} (expected one of {', '.join(OPENVINO_PRECISIONS)})")
    on_cpu = device_type.upper() == "CPU"
    if on_cpu and precision not in OPENVINO_CPU_PRECISIONS:
        raise UsageError(
            f"OpenVINO precision {precision} is not supported on the CPU "
            f"(the CPU supports {', '.join(OPENVINO_CPU_PRECISIONS)})"
        )
    if precision == "BF16":
        if not on_cpu:
            raise UsageError(f"OpenVINO precision BF16 is only offered for device_type CPU, got {device_type!r}")
        return {
            "device_type": device_type,
            "precision": "FP32",
            "load_config": json.dumps({"CPU": {"INFERENCE_PRECISION_HINT": "bf16"}}),
        }
    return {"device_type": device_type, "precision": precision}


def cuda_options(conv_search: str = "EXHAUSTIVE", tf32: bool = False, nhwc: bool = False) -> dict[str, str]:
    """CUDA provider options the runtime uses unless the caller passes its own.

    ``conv_search``: how cuDNN picks convolution kernels, once per input shape (EXHAUSTIVE times them all on
    the first call of a shape; the frames of a stream share one shape). ``tf32``: onnxruntime enables TF32
    tensor-core math for FP32 by default; it is off here so that an "fp32" graph computes in FP32 and matches
    the CPU: on an H200 TF32 was 1.3-1.8x faster but changed codec latents and moved anomaly scores by 1.2e-3
    (BENCHMARKS.md, GPU). ``nhwc``: ``prefer_nhwc``, cuDNN's channels-last kernels (what PyTorch's channels-last
    uses); it did not help there.
    """
    conv_search = conv_search.upper()
    if conv_search not in CUDA_CONV_SEARCH:
        raise UsageError(f"unknown cuDNN search {conv_search!r} (expected one of {', '.join(CUDA_CONV_SEARCH)})")
    opts = {"cudnn_conv_algo_search": conv_search, "use_tf32": "1" if tf32 else "0"}
    if nhwc:
        opts["prefer_nhwc"] = "1"
    return opts


def _device_name(device: str) -> str:
    return auto_device() if device == "auto" else device


def create_session(
    model_bytes: bytes,
    device: str,
    *,
    allow_fallback: bool,
    threads: int | None,
    provider_options: dict | None = None,
    where: str,
) -> ort.InferenceSession:
    """An InferenceSession made from ``model_bytes`` (already checked), verified to run where it was asked to.

    ``provider_options`` are passed to the requested (first) provider only; for CUDA, None means
    :func:`cuda_options` (its defaults); for OpenVINO, None means :func:`openvino_options` (FP32 on the CPU).
    ``threads`` sets onnxruntime's intra-op threads; the OpenVINO provider runs its own, so for OpenVINO a
    thread count also goes in as ``num_of_threads`` unless ``provider_options`` sets it (None leaves
    OpenVINO's default). A requested provider that is not
    available, or not active after creation, is a ModelRejectedError (4) unless ``allow_fallback``; then a
    :class:`FallbackWarning` names the providers really used. ``"auto"`` never fails for that reason: it asks
    for whatever is best, so it only warns. A bad ``threads`` is a UsageError (2).
    """
    sess_options = make_session_options(threads)  # checks threads before they go into provider options
    providers = resolve_device(device)
    requested = providers[0]
    name = _device_name(device)
    fallback_ok = allow_fallback or device == "auto"
    available = available_providers()

    if requested not in available:
        message = (
            f"{where}: requested {name} but {requested} is not available in this onnxruntime "
            f"(available: {', '.join(available)})"
        )
        if not fallback_ok:
            raise ModelRejectedError(f"{message}; pass --allow-fallback to run on the CPU")
        providers = [p for p in providers if p in available] or [CPU]
        provider_options = None

    options: list[dict[str, Any]] = [{} for _ in providers]
    if provider_options is None and providers[0] == CUDA:
        provider_options = cuda_options()
    if providers[0] == OPENVINO:
        if provider_options is None:
            provider_options = openvino_options("BF16" if name == "openvino-bf16" else "FP32")
        if threads is not None and "num_of_threads" not in provider_options:
            provider_options = {**provider_options, "num_of_threads": str(threads)}
    if provider_options and providers[0] == requested:
        options[0] = {str(k): str(v) for k, v in provider_options.items()}

    try:
        session = ort.InferenceSession(
            model_bytes,
            sess_options=sess_options,
            providers=providers,
            provider_options=options,
        )
    except Exception as exc:  # onnxruntime raises several unrelated types (Fail, InvalidGraph, RuntimeError...)
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelRejectedError(f"{where}: onnxruntime refused the model: {first_line}") from exc

    active = list(session.get_providers())
    if requested not in active:
        message = (
            f"{where}: requested {name} but onnxruntime runs {', '.join(active)} (available: {', '.join(available)})"
        )
        if not fallback_ok:
            raise ModelRejectedError(f"{message}; pass --allow-fallback to accept that")
        # A warning, not a log line: the CLI shows it on stderr once; logging.captureWarnings routes it to logs.
        warnings.warn(message, FallbackWarning, stacklevel=2)
    return session


def _all_finite(array: np.ndarray) -> bool:
    """True when a float array holds no NaN or Inf.

    ``isfinite(...).all()``: its boolean temporary is a quarter of a float32 output, and it was the fastest of
    the three ways measured here on a 1088x1920 float32 map (0.44 ms, against 0.82 ms for one float64 sum and
    0.59 ms for min and max).
    """
    return bool(np.isfinite(array).all())


def _fmt_shape(shape: tuple) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def _fmt_dim(dim: Any) -> str:
    if dim is None:
        return "?"
    return "|".join(str(d) for d in dim) if isinstance(dim, tuple) else str(dim)


def _dim_ok(want: Any, got: int) -> bool:
    if want is None:
        return got >= 1
    return got in want if isinstance(want, tuple) else got == want


class FrameOutputs(dict):
    """What :meth:`RuntimeGraph.run_frame` returns: ``{output name: array}`` of one frame, a plain dict to every
    caller, plus the padding it applied so that callers need not recompute it.

    ``pad``: ``(bottom, right)`` rows and columns added by reflection to reach a multiple of
    ``edgeae.input_multiple``; ``padded``: ``(H, W)`` of the frame the graph really ran on, the grid that
    outputs such as ``features`` and ``latent`` are relative to (they are not cropped).
    """

    __slots__ = ("pad", "padded")

    def __init__(self, outputs: dict[str, np.ndarray], pad: tuple[int, int], padded: tuple[int, int]):
        super().__init__(outputs)
        self.pad = pad
        self.padded = padded


class RuntimeGraph:
    """A checked graph with its session. Create with :func:`edge_runtime.model.open_graph`.

    ``info``: what was checked (metadata, inputs, outputs); ``providers``: what onnxruntime really runs;
    ``device``: the device name asked for (``auto`` resolved).
    """

    def __init__(self, info: GraphInfo, session: ort.InferenceSession, device: str = "cpu"):
        self.info = info
        self.session = session
        self.providers: list[str] = list(session.get_providers())
        self.device = _device_name(device)
        self._output_names = [o.name for o in info.outputs]
        self._inputs = {i.name: i for i in info.inputs}
        # I/O binding only pays where the model runs off the CPU; tests may force it to exercise the path.
        self.use_io_binding = self.providers[0] != CPU and self.device in _GPU_DEVICES
        self._output_device = "cuda" if self.use_io_binding else "cpu"
        self._stride = info.meta_int("edgeae.latent.stride", 16)

    # -- feeds -------------------------------------------------------------------------------------------------

    def _expected(self, spec: IOSpec) -> str:
        dims = [d if isinstance(d, int) else str(d) for d in spec.shape]
        if spec.name == "frame" and len(dims) == 4:
            dims = [dims[0], "H", "W", dims[3] if isinstance(dims[3], int) else self.info.channels]
        return f"{spec.dtype} {_fmt_shape(tuple(dims))}"

    def _check_feed(self, spec: IOSpec, array: Any) -> np.ndarray:
        where = str(self.info.path)
        if not isinstance(array, np.ndarray):
            raise ModelRejectedError(f"{where}: input {spec.name}: expected {self._expected(spec)}, got {type(array)}")
        if array.dtype != spec.dtype or array.ndim != len(spec.shape):
            raise ModelRejectedError(
                f"{where}: input {spec.name}: expected {self._expected(spec)}, "
                f"got {array.dtype} {_fmt_shape(array.shape)}"
            )
        for axis, (want, got) in enumerate(zip(spec.shape, array.shape, strict=True)):
            if isinstance(want, int) and want != got:
                raise ModelRejectedError(
                    f"{where}: input {spec.name}: expected {self._expected(spec)}, "
                    f"got {array.dtype} {_fmt_shape(array.shape)} (axis {axis})"
                )
        if 0 in array.shape:
            raise ModelRejectedError(f"{where}: input {spec.name}: empty array {_fmt_shape(array.shape)}")
        self._check_spatial(spec, array.shape)
        return np.ascontiguousarray(array)

    def _check_spatial(self, spec: IOSpec, shape: tuple) -> None:
        """H and W within ``edgeae.max_side`` and multiples of ``edgeae.input_multiple`` (before onnxruntime)."""
        if spec.name == "frame" and len(shape) == 4:
            height, width, scale = shape[1], shape[2], 1
        elif spec.name == "latent" and len(shape) == 4:
            height, width, scale = shape[2], shape[3], self._stride
        else:
            return
        side_h, side_w = height * scale, width * scale
        max_side, multiple = self.info.max_side, self.info.input_multiple
        where = str(self.info.path)
        if side_h > max_side or side_w > max_side:
            raise ModelRejectedError(
                f"{where}: input {spec.name}: expected H and W <= {max_side}, got {_fmt_shape(shape)}"
            )
        if spec.name == "frame" and (height % multiple or width % multiple):
            raise ModelRejectedError(
                f"{where}: input {spec.name}: expected H and W multiples of {multiple}, got {_fmt_shape(shape)}"
            )

    # -- running -----------------------------------------------------------------------------------------------

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph on batched feeds, e.g. ``{"frame": (N, H, W, C) uint8}``; returns ``{name: array}``.

        Every feed is checked (names, dtype, rank, fixed dims, H/W caps) before onnxruntime sees it, and every
        output against the shape the graph's contract and metadata promise for those feeds (e.g. ``denoised``
        (N, H, W, C) for a frame (N, H, W, C); RELIABILITY 33): ModelRejectedError (4) with expected vs actual.
        Float outputs holding NaN or Inf raise
        :class:`NonFiniteOutput` (a BadDataError) naming the output.
        """
        where = str(self.info.path)
        if sorted(feeds) != sorted(self._inputs):
            raise ModelRejectedError(
                f"{where}: expected inputs [{', '.join(sorted(self._inputs))}], got [{', '.join(sorted(feeds))}]"
            )
        checked = {name: self._check_feed(self._inputs[name], array) for name, array in feeds.items()}
        if self.use_io_binding:
            # Host arrays in (one copy up each), outputs left where the graph made them and copied into fresh
            # numpy arrays once. Measured on an H200 (BENCHMARKS.md, GPU): binding the outputs to host memory
            # and calling copy_outputs_to_cpu() copies them twice and was slower than plain session.run.
            binding = self.session.io_binding()
            for name, array in checked.items():
                binding.bind_cpu_input(name, array)
            for name in self._output_names:
                binding.bind_output(name, self._output_device)
            self.session.run_with_iobinding(binding)
            results = [value.numpy() for value in binding.get_outputs()]
        else:
            results = self.session.run(self._output_names, checked)
        outputs = dict(zip(self._output_names, results, strict=True))
        self._check_outputs(checked, outputs)
        for name, array in outputs.items():
            if array.dtype.kind == "f" and array.size and not _all_finite(array):
                raise NonFiniteOutput(f"{where}: output {name} holds NaN or Inf; frame not scored", name)
        return outputs

    def _expected_outputs(self, feeds: dict[str, np.ndarray]) -> dict[str, tuple]:
        """Output shapes the contract promises for these feeds; a dim is an int, a tuple of ints or None (any)."""
        graph, s = self.info.graph, self._stride
        if graph == "decoder" and "latent" in feeds:
            n, _, h, w = feeds["latent"].shape
            return {"frame": (n, h * s, w * s, self.info.channels)}
        if graph not in ("denoise", "anomaly", "encoder") or "frame" not in feeds:
            return {}  # a graph opened with its own I/O contract: its fixed dims only
        n, hp, wp, c = feeds["frame"].shape
        if graph == "denoise":
            return {"denoised": (n, hp, wp, c)}
        if graph == "anomaly":
            return {"anomaly_map": (n, hp, wp), "score": (n,), "features": (n, None, None, None)}
        latent_c = self.info.meta_int("edgeae.latent.channels", 0) or None
        return {"latent": (n, latent_c, (hp // s, -(-hp // s)), (wp // s, -(-wp // s)))}

    def _check_outputs(self, feeds: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> None:
        """Every output has the rank, fixed dims and frame-derived shape it promises (RELIABILITY 33): a graph
        that returns 1x1 for a frame, or the wrong channel count, is a ModelRejectedError naming both shapes."""
        expected = self._expected_outputs(feeds)
        for spec in self.info.outputs:
            got = outputs[spec.name].shape
            declared = tuple(d if isinstance(d, int) else None for d in spec.shape)
            want = expected.get(spec.name, declared)
            ok = len(got) == len(want) == len(declared)
            ok = ok and all(_dim_ok(w, g) and _dim_ok(d, g) for w, d, g in zip(want, declared, got, strict=False))
            if len(want) == len(declared):
                want = tuple(d if w is None else w for w, d in zip(want, declared, strict=True))
            if ok and spec.name == "features" and self.info.graph == "anomaly":
                (hp, wp), (h, w) = feeds["frame"].shape[1:3], got[2:]
                ok = hp % h == 0 and wp % w == 0 and hp // h == wp // w  # one integer stride s on both axes
                want = (*want[:2], f"{hp}/s", f"{wp}/s")
            if not ok:
                raise ModelRejectedError(
                    f"{self.info.path}: {self.info.graph} graph output {spec.name}: expected "
                    f"[{','.join(_fmt_dim(d) for d in want)}], got {_fmt_shape(got)}"
                )

    def frame_channels(self) -> int:
        """Channels the ``frame`` input takes: its fixed last dimension, else ``edgeae.channels``."""
        spec = self._inputs.get("frame")
        if spec is not None and isinstance(spec.shape[-1], int):
            return spec.shape[-1]
        return self.info.channels

    def run_frame(self, frame: np.ndarray) -> FrameOutputs:
        """Run one frame as OpenCV delivers it: ``(H, W, 3)`` uint8 BGR, ``(H, W, 4)`` BGRA or ``(H, W)`` gray.

        The frame is converted to the channels the graph takes (BGR→GRAY with cv2 and back), padded on the
        bottom and right to a multiple of ``edgeae.input_multiple`` with BORDER_REFLECT_101, run with a batch
        dimension added as a view, and outputs whose dims 1 and 2 are the padded H and W (``denoised``
        (N,H,W,C), ``anomaly_map`` (N,H,W)) are cropped back to H×W. Returns the outputs of this one frame, the
        batch dimension removed: ``denoised`` (H, W, C) uint8, ``anomaly_map`` (H, W) float32, ``score`` ()
        float32; outputs on another grid (``features``, ``latent``) keep the padded grid.

        The result is a :class:`FrameOutputs`: a dict as above that also carries ``pad`` (bottom, right) and
        ``padded`` (H, W), the padding applied and the size the graph ran at, so callers need not recompute them.
        """
        feed, pad = self.prepare_frame(frame)
        return self.finish_frame(self.run({"frame": feed[None]}), frame.shape[:2], pad)

    def prepare_frame(self, frame: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        """The preprocessing of :meth:`run_frame`: ``(feed (H', W', C) uint8 C-contiguous, (pad_bottom, pad_right))``.

        Converted to the graph's channels and padded by reflection to a multiple of ``edgeae.input_multiple``.
        Benchmarks time this (and :meth:`finish_frame`) as the runtime's own pre- and post-processing.
        """
        if "frame" not in self._inputs:
            raise UsageError(f"{self.info.path}: the {self.info.graph} graph does not take a frame")
        where = str(self.info.path)
        channels = self.frame_channels()
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim not in (2, 3):
            got = f"{frame.dtype} {_fmt_shape(frame.shape)}" if isinstance(frame, np.ndarray) else str(type(frame))
            raise ModelRejectedError(f"{where}: expected a uint8 [H,W,{channels}] frame, got {got}")
        if frame.ndim == 2:
            frame = frame[:, :, None]
        frame = self._convert_channels(frame, channels, where)
        height, width = frame.shape[:2]
        max_side = self.info.max_side
        if height > max_side or width > max_side:
            raise ModelRejectedError(
                f"{where}: expected a frame with H and W <= {max_side}, got {_fmt_shape(frame.shape)}"
            )
        multiple = self.info.input_multiple
        pad_h, pad_w = -height % multiple, -width % multiple
        if pad_h or pad_w:
            frame = cv2.copyMakeBorder(frame, 0, pad_h, 0, pad_w, cv2.BORDER_REFLECT_101)
            if frame.ndim == 2:  # OpenCV drops a trailing channel axis of 1
                frame = frame[:, :, None]
        return np.ascontiguousarray(frame), (pad_h, pad_w)

    @staticmethod
    def finish_frame(outputs: dict[str, np.ndarray], size: tuple[int, int], pad: tuple[int, int]) -> FrameOutputs:
        """The post-processing of :meth:`run_frame`: batch-of-one outputs cropped back to ``size`` (H, W)."""
        height, width = int(size[0]), int(size[1])
        pad_h, pad_w = pad
        padded_h, padded_w = height + pad_h, width + pad_w
        result = {}
        for name, array in outputs.items():
            if (pad_h or pad_w) and array.ndim >= 3 and array.shape[1:3] == (padded_h, padded_w):
                # A copy, not a view: callers hand these to cv2 and numpy code that expects contiguous arrays.
                array = np.ascontiguousarray(array[:, :height, :width])
            result[name] = array[0]
        return FrameOutputs(result, (pad_h, pad_w), (padded_h, padded_w))

    @staticmethod
    def _convert_channels(frame: np.ndarray, channels: int, where: str) -> np.ndarray:
        have = frame.shape[2]
        if have == channels:
            return frame
        codes = {
            (3, 1): cv2.COLOR_BGR2GRAY,
            (4, 1): cv2.COLOR_BGRA2GRAY,
            (1, 3): cv2.COLOR_GRAY2BGR,
            (4, 3): cv2.COLOR_BGRA2BGR,
        }
        code = codes.get((have, channels))
        if code is None:
            raise ModelRejectedError(
                f"{where}: expected a uint8 [H,W,{channels}] frame, got uint8 {_fmt_shape(frame.shape)}"
            )
        out = cv2.cvtColor(frame, code)
        return out[:, :, None] if out.ndim == 2 else out


def describe(graph: RuntimeGraph) -> dict[str, Any]:
    """Context to stamp on stats and benchmarks: device, providers really used, threads, precision, model hash."""
    so = graph.session.get_session_options()
    return {
        "device": graph.device,
        "providers": list(graph.providers),
        "threads": so.intra_op_num_threads,
        "inter_op_threads": so.inter_op_num_threads,
        "precision": graph.info.precision,
        "graph": graph.info.graph,
        "sha256": graph.info.sha256,
        "onnxruntime": ort.__version__,
        "io_binding": graph.use_io_binding,
    }
