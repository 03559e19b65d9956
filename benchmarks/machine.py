"""The context a benchmark ran in: time, CPU, memory, GPU, versions, threads, commit.

Hostname-free on purpose (results get shared). Package versions come from ``importlib.metadata``, which reads
installed metadata without importing: importing torch alone takes seconds and pulls in its own thread pools.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata as md
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

# CPU features that decide which kernels onnxruntime / OpenVINO / numpy can use.
_X86_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)
_ARM_FLAGS = ("neon", "asimd", "asimddp", "asimdhp", "i8mm", "bf16", "sve", "sve2")

# Import name -> distribution names to try, first found wins (several wheels provide cv2 and onnxruntime).
_PACKAGES: dict[str, tuple[str, ...]] = {
    "numpy": ("numpy",),
    "cv2": ("opencv-python-headless", "opencv-python", "opencv-contrib-python-headless", "opencv-contrib-python"),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml"),
    "torch": ("torch",),
    "openvino": ("openvino",),
    "onnx": ("onnx",),
}

_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "ORT_NUM_THREADS")


def stamp(threads: int | None = None) -> dict[str, Any]:
    """A JSON-ready description of this machine and run; ``threads`` is the thread count the benchmark used.

    Keys: ``date_utc``, ``platform``, ``cpu`` (model, flags, logical_cores, affinity_cores), ``memory_bytes``,
    ``gpu``, ``python``, ``packages`` (import name -> version or None), ``ort_providers``, ``threads``
    (requested and the thread environment variables), ``git_commit``. Values that cannot be found are None.
    """
    return {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": {"system": platform.system(), "machine": platform.machine(), "release": platform.release()},
        "cpu": _cpu_info(),
        "memory_bytes": _total_memory(),
        "gpu": _gpu_names(),
        "python": platform.python_version(),
        "packages": {name: _version(dists, name) for name, dists in _PACKAGES.items()},
        "ort_providers": _ort_providers(),
        "threads": {"requested": threads, **{k: os.environ.get(k) for k in _THREAD_ENV}},
        "git_commit": git_commit(),
    }


def _cpu_info() -> dict[str, Any]:
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            # First value of each key wins: the first processor block describes them all on the machines we
            # target, and ARM boards put "Model"/"Hardware" in a block of their own at the end.
            for line in fh:
                key, sep, value = line.partition(":")
                if sep:
                    fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    model = fields.get("model name") or fields.get("Model") or fields.get("Hardware") or platform.processor()
    if not model and "CPU part" in fields:  # ARM cores often name only implementer and part numbers
        model = f"implementer {fields.get('CPU implementer')} part {fields['CPU part']}"
    present = set((fields.get("flags") or fields.get("Features") or "").split())
    wanted = _ARM_FLAGS if platform.machine().lower() in ("aarch64", "arm64", "armv7l") else _X86_FLAGS
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "model": model or platform.machine() or None,
        "flags": [f for f in wanted if f in present],
        "logical_cores": os.cpu_count(),
        "affinity_cores": affinity,
    }


def _total_memory() -> int | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def _gpu_names() -> list[str] | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return [line.strip() for line in out.splitlines() if line.strip()] or None


def _version(dists: tuple[str, ...], module: str | None = None) -> str | None:
    """The version of what runs: an imported module's ``__version__`` first (on PYTHONPATH a module can shadow
    an installed distribution, e.g. onnxruntime-gpu unpacked over a CPU onnxruntime), else the first installed
    distribution of ``dists``."""
    loaded = sys.modules.get(module) if module else None
    if loaded is not None and isinstance(getattr(loaded, "__version__", None), str):
        return loaded.__version__
    for dist in dists:
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            continue
    return None


def _ort_providers() -> list[str] | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    return list(ort.get_available_providers())


def git_commit(path: str | os.PathLike | None = None) -> str | None:
    """HEAD's commit of the checkout holding ``path`` (default: this project), with ``-dirty`` if tracked files
    have uncommitted changes (untracked files do not count, as in ``git describe --dirty``).
    None when git is missing, the folder is not a repository or it has no commit yet.
    """
    cwd = Path(path) if path is not None else Path(__file__).resolve().parents[1]
    git = shutil.which("git")
    if git is None:
        return None
    try:
        head = subprocess.run(
            [git, "rev-parse", "--verify", "-q", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            [git, "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = head.stdout.strip()
    return f"{commit}-dirty" if dirty.returncode == 0 and dirty.stdout.strip() else commit


if __name__ == "__main__":
    import json

    json.dump(stamp(), sys.stdout, indent=2)
    print()
