"""Rough compute peaks, to put a model's achieved GFLOP/s in proportion.

* :func:`matmul_peak_gflops`: numpy (its BLAS) square matmul.
* :func:`ort_fp32_peak_gflops`, :func:`int8_peak_gops`: the same matmul as a one-node ONNX graph run by
  onnxruntime with a given intra-op thread count; the fairer ceiling for ONNX models. Building the graph needs
  the ``onnx`` package, which the edge does not install: without it these return None.
* :func:`gpu_peaks`: FP32 and FP16 matmuls on the CUDA device through PyTorch (when both are present).

A square matmul of n=2048 is close to the best case for every library; real conv layers reach less.

Numpy's BLAS thread count: OpenBLAS/MKL read ``OPENBLAS_NUM_THREADS``/``OMP_NUM_THREADS``/``MKL_NUM_THREADS``
once, when numpy is first imported, which has already happened by the time this module runs. So
:func:`matmul_peak_gflops` uses ``threadpoolctl`` to limit the live BLAS pool when it is installed, and
otherwise runs the measurement in a fresh interpreter with those variables set before numpy is imported
(``blas_threads_via`` in the result of :func:`peaks` says which).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from typing import Any

import numpy as np

_BLAS_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")


def _best_seconds(fn: Any, repeat: int) -> float:
    fn()  # warm-up: page faults, thread pool start, kernel selection
    best = float("inf")
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter_ns()
        fn()
        best = min(best, (time.perf_counter_ns() - t0) / 1e9)
    return best


def _numpy_gflops(n: int, dtype: str, repeat: int) -> float:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    out = np.empty((n, n), dtype=dtype)
    secs = _best_seconds(lambda: np.matmul(a, b, out=out), repeat)
    return 2.0 * n**3 / secs / 1e9


def blas_threads_via() -> str:
    """How :func:`matmul_peak_gflops` sets numpy's BLAS threads here: ``"threadpoolctl"`` or ``"subprocess-env"``."""
    return "threadpoolctl" if importlib.util.find_spec("threadpoolctl") is not None else "subprocess-env"


def matmul_peak_gflops(threads: int, n: int = 2048, dtype: Any = np.float32, repeat: int = 5) -> float:
    """Best-of-``repeat`` GFLOP/s (2 n^3 per product) of numpy's ``(n, n) @ (n, n)`` with ``threads`` BLAS threads."""
    dtype_name = np.dtype(dtype).name
    if blas_threads_via() == "threadpoolctl":
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=threads, user_api="blas"):
            return _numpy_gflops(n, dtype_name, repeat)
    env = {**os.environ, **{k: str(threads) for k in _BLAS_ENV}}
    code = (
        "import sys; from benchmarks.peak import _numpy_gflops; "
        f"print(_numpy_gflops({int(n)}, {dtype_name!r}, {int(repeat)}))"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        raise RuntimeError(f"matmul peak subprocess failed: {res.stderr.strip()[-500:]}")
    return float(res.stdout.strip().splitlines()[-1])


def _matmul_model_bytes(n: int, int8: bool) -> bytes | None:
    """A one-node [n, n] x [n, n] ONNX model; B is an initializer (like a weight). None without ``onnx``."""
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return None
    rng = np.random.default_rng(0)
    if int8:
        # u8 activations x s8 weights: the combination onnxruntime's x86 VNNI/AMX kernels are built for.
        b = numpy_helper.from_array(rng.integers(-127, 128, (n, n), dtype=np.int8), "B")
        node = helper.make_node("MatMulInteger", ["A", "B"], ["Y"])
        a_type, y_type = TensorProto.UINT8, TensorProto.INT32
    else:
        b = numpy_helper.from_array(rng.standard_normal((n, n)).astype(np.float32), "B")
        node = helper.make_node("MatMul", ["A", "B"], ["Y"])
        a_type = y_type = TensorProto.FLOAT
    graph = helper.make_graph(
        [node],
        "matmul_peak",
        [helper.make_tensor_value_info("A", a_type, [n, n])],
        [helper.make_tensor_value_info("Y", y_type, [n, n])],
        initializer=[b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # opset 13 / IR 8: loads in every onnxruntime this project supports
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _ort_peak(threads: int, n: int, repeat: int, int8: bool) -> float | None:
    model = _matmul_model_bytes(n, int8)
    if model is None:
        return None
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (n, n), dtype=np.uint8) if int8 else rng.standard_normal((n, n)).astype(np.float32)
    secs = _best_seconds(lambda: sess.run(None, {"A": a}), repeat)
    return 2.0 * n**3 / secs / 1e9


def ort_fp32_peak_gflops(threads: int, n: int = 2048, repeat: int = 5) -> float | None:
    """GFLOP/s of an FP32 ONNX MatMul in onnxruntime (CPU provider); None if ``onnx`` is not installed."""
    return _ort_peak(threads, n, repeat, int8=False)


def int8_peak_gops(threads: int, n: int = 2048, repeat: int = 5) -> float | None:
    """GOP/s (2 n^3 multiply-adds count as ops) of a u8 x s8 ``MatMulInteger`` in onnxruntime (CPU provider);
    None if ``onnx`` is not installed."""
    return _ort_peak(threads, n, repeat, int8=True)


def peaks(threads: int, n: int = 2048, repeat: int = 5) -> dict[str, Any]:
    """All peaks at once: ``numpy_fp32_gflops``, ``ort_fp32_gflops``, ``ort_int8_gops`` (None without onnx),
    plus ``threads``, ``n`` and ``blas_threads_via``."""
    return {
        "threads": threads,
        "n": n,
        "numpy_fp32_gflops": matmul_peak_gflops(threads, n=n, repeat=repeat),
        "ort_fp32_gflops": ort_fp32_peak_gflops(threads, n=n, repeat=repeat),
        "ort_int8_gops": int8_peak_gops(threads, n=n, repeat=repeat),
        "blas_threads_via": blas_threads_via(),
    }


def gpu_peaks(n: int = 8192, repeat: int = 5) -> dict[str, Any] | None:
    """Matmul peaks of the CUDA device through PyTorch: ``cuda_fp32_gflops`` (TF32 off: true FP32, what an
    FP32 ONNX graph runs with the runtime's CUDA defaults) and ``cuda_fp16_gflops`` (tensor cores, FP32
    accumulation), plus ``gpu`` (the device name) and ``n``. None when torch or CUDA is not available."""
    if importlib.util.find_spec("torch") is None:
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    out: dict[str, Any] = {"gpu": torch.cuda.get_device_name(0), "n": n}
    prev = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        for key, dtype in (("cuda_fp32_gflops", torch.float32), ("cuda_fp16_gflops", torch.float16)):
            a = torch.randn(n, n, device="cuda", dtype=dtype)
            b = torch.randn(n, n, device="cuda", dtype=dtype)

            def mm(a=a, b=b) -> None:
                torch.mm(a, b)
                torch.cuda.synchronize()

            out[key] = 2.0 * n**3 / _best_seconds(mm, repeat) / 1e9
            del a, b
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev
        torch.cuda.empty_cache()
    return out


if __name__ == "__main__":
    import json

    json.dump(peaks(int(sys.argv[1]) if len(sys.argv) > 1 else 2), sys.stdout, indent=2)
    print()
