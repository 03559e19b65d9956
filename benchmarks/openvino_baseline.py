"""Native OpenVINO (PyPI ``openvino``, not the onnxruntime provider) on the same ONNX files: a peer runtime.

FP32: the FP32 file with ``INFERENCE_PRECISION_HINT=f32``; BF16: the same file with ``bf16`` where the CPU has
BF16 instructions (AVX512_BF16 or AMX); INT8: the bundle's INT8 (QDQ) file, which OpenVINO runs in integer
arithmetic. The model is reshaped to the static input shape first, as OpenVINO is meant to be used. Threads are
set with ``INFERENCE_NUM_THREADS``. ``openvino`` is optional and imported only here.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.timing import Timing, summarize

# OpenVINO run -> (bundle precision of the ONNX file, inference precision hint)
MODES = {"fp32": ("fp32", "f32"), "bf16": ("fp32", "bf16"), "int8": ("int8", "f32")}
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def openvino_available() -> tuple[bool, str]:
    if importlib.util.find_spec("openvino") is None:
        return False, "openvino is not installed (pip install openvino)"
    return True, ""


def bf16_supported(cpu_flags: list[str] | None) -> bool:
    """True when the CPU flags (benchmarks.machine.stamp()["cpu"]["flags"]) include BF16 instructions."""
    return any(f in (cpu_flags or []) for f in BF16_FLAGS)


def time_openvino(
    onnx_path: Path,
    input_name: str,
    feed: np.ndarray,
    hint: str,
    threads: int,
    warmup: int,
    repeat: int,
    budget_s: float,
) -> tuple[Timing, list[np.ndarray]]:
    """Latency of one synchronous inference of ``feed`` on OpenVINO's CPU plugin; also the last outputs."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(onnx_path))
    model.reshape({input_name: list(feed.shape)})
    config: dict[str, Any] = {
        "INFERENCE_NUM_THREADS": int(threads),
        "INFERENCE_PRECISION_HINT": hint,
        "PERFORMANCE_HINT": "LATENCY",
    }
    compiled = core.compile_model(model, "CPU", config)
    request = compiled.create_infer_request()
    x = np.ascontiguousarray(feed)
    t_last = 0.0
    for _ in range(max(1, warmup)):
        t0 = time.perf_counter()
        request.infer({input_name: x})
        t_last = time.perf_counter() - t0
    n = repeat
    if budget_s > 0 and t_last > 0:
        n = min(repeat, max(min(5, repeat), int(budget_s / t_last)))
    samples = []
    for _ in range(max(1, n)):
        t0 = time.perf_counter_ns()
        request.infer({input_name: x})
        samples.append((time.perf_counter_ns() - t0) / 1e6)
    outs = [np.array(request.get_output_tensor(i).data) for i in range(len(compiled.outputs))]
    return summarize(samples), outs
