"""PyTorch eager on the same model, threads and input as onnxruntime: the training-side baseline.

The network comes from the training checkpoint the bundle was exported from, wrapped in the same uint8-in
uint8-out graph modules the exporter traced (``training.*_model``), so both runtimes do exactly the same work.
The checkpoint is matched to the bundle by ``edgeae.run_id`` (``NAME@<16 hex digits of the weights' SHA-256>``):
a checkpoint whose weights hash differently is not the model that was exported and is not used.

torch is imported only inside these functions.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.timing import Timing, summarize


def torch_available() -> tuple[bool, str]:
    """(True, "") when torch and the training package import here, else (False, why)."""
    if importlib.util.find_spec("torch") is None:
        return False, "torch is not installed (pip install 'edgeae[train]')"
    if importlib.util.find_spec("safetensors") is None:
        return False, "safetensors is not installed (pip install 'edgeae[train]')"
    return True, ""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def find_checkpoint(name: str, run_id: str, search: list[Path]) -> tuple[Path | None, str]:
    """The training run of bundle ``name`` whose weights match ``run_id``: the first of ``DIR/name`` for DIR in
    ``search`` holding config.json and best.safetensors. Returns (path, "") or (None, reason)."""
    want = run_id.rpartition("@")[2].lower() if "@" in run_id else ""
    seen = []
    for d in search:
        cand = Path(d) / name
        if not ((cand / "config.json").is_file() and (cand / "best.safetensors").is_file()):
            continue
        seen.append(str(cand))
        if not want or _sha256(cand / "best.safetensors").startswith(want):
            return cand, ""
    if seen:
        return None, f"checkpoint(s) {', '.join(seen)} do not match the bundle's run_id {run_id}"
    return None, f"no checkpoint for {name} in {', '.join(str(d) for d in search)}"


def load_graph_module(run_dir: Path, graph: str) -> Any:
    """The torch module equivalent to ONNX graph ``graph`` (denoise, anomaly, encoder, decoder), eval mode, CPU."""
    from training.checkpoint import load_run

    model, _cfg = load_run(run_dir)
    if graph == "denoise":
        from training.denoise_model import DenoiseFrameGraph

        return DenoiseFrameGraph(model).eval()
    if graph == "anomaly":
        from training.inspect_model import anomaly_graph

        return anomaly_graph(model).eval()
    from training.compress_model import DecoderGraph, EncoderGraph

    return (EncoderGraph(model) if graph == "encoder" else DecoderGraph(model)).eval()


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch's intra-op threads set to ``threads`` and inference mode on, for the duration."""
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        with torch.inference_mode():
            yield
    finally:
        torch.set_num_threads(prev)


def module_call(module: Any, feed: np.ndarray) -> tuple[Callable[[], Any], Callable[[], list[np.ndarray]]]:
    """``(call, outputs)``: ``call()`` runs ``module`` eagerly on ``feed`` (uint8 NHWC frames or int32 latents,
    the same array onnxruntime gets); ``outputs()`` runs it once more and returns numpy outputs. Use inside
    :func:`torch_threads`."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(feed))

    def outputs() -> list[np.ndarray]:
        out = module(x)
        return [o.numpy() for o in (out if isinstance(out, (tuple, list)) else [out])]

    return (lambda: module(x)), outputs


def max_abs_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    """Largest absolute difference between corresponding outputs (as float64)."""
    return float(max(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64))) for x, y in zip(a, b, strict=True)))


def gpu_fp16_call(module: Any, feed: np.ndarray) -> tuple[Callable[[], None] | None, str]:
    """``(call, "")``: ``call()`` runs PyTorch FP16 channels-last on CUDA, the trained core (``module.net``/
    ``g_a``/``g_s``) on a float16 NCHW tensor already on the GPU, and synchronises. (None, reason) when CUDA is
    not available to torch. The module's core is moved to the GPU in place."""
    import torch

    if not torch.cuda.is_available():
        return None, "torch.cuda is not available"
    core = next(iter(module.children())).to("cuda").half().to(memory_format=torch.channels_last).eval()
    x = torch.from_numpy(np.ascontiguousarray(feed)).to("cuda")
    x = (x.permute(0, 3, 1, 2).half() / 255.0) if x.dtype == torch.uint8 else x.half()
    x = x.contiguous(memory_format=torch.channels_last)

    def call() -> None:
        with torch.inference_mode():
            core(x)
        torch.cuda.synchronize()

    torch.cuda.synchronize()
    return call, ""


def gpu_fp16_channels_last(module: Any, feed: np.ndarray, warmup: int, repeat: int) -> tuple[Timing | None, str]:
    """Timing of :func:`gpu_fp16_call` alone: ``warmup`` calls, then ``repeat`` timed ones. (None, reason)
    when CUDA is not available to torch."""
    call, why = gpu_fp16_call(module, feed)
    if call is None:
        return None, why
    samples = []
    for i in range(max(1, warmup) + repeat):
        t0 = time.perf_counter_ns()
        call()
        if i >= max(1, warmup):
            samples.append((time.perf_counter_ns() - t0) / 1e6)
    return summarize(samples), ""
