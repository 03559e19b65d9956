"""edge_runtime runs with nothing but the standard library, numpy, OpenCV, onnxruntime (and click for the CLI)."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
ALLOWED = {"numpy", "cv2", "onnxruntime", "click", "edge_runtime"}


def test_no_module_imports_outside_the_edge_dependencies():
    bad = []
    for path in sorted((ROOT / "edge_runtime").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top not in ALLOWED and top not in sys.stdlib_module_names:
                    bad.append(f"{path.name}: import {name}")
    assert bad == []


def test_runtime_denoises_a_frame_with_torch_and_onnx_blocked(make_bundle, tmp_path):
    bundle = make_bundle(("denoise",))
    frame = (np.arange(48 * 64 * 3) % 251).astype(np.uint8).reshape(48, 64, 3)
    np.save(tmp_path / "frame.npy", frame)
    code = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None
        sys.modules["onnx"] = None
        import importlib, pkgutil
        import numpy as np
        import edge_runtime
        for m in pkgutil.iter_modules(edge_runtime.__path__):
            importlib.import_module("edge_runtime." + m.name)
        from edge_runtime.denoise import Denoiser
        frame = np.load({str(tmp_path / "frame.npy")!r})
        out = Denoiser({str(bundle)!r}).denoise(frame)
        assert out.shape == frame.shape and out.dtype == np.uint8
        assert np.array_equal(out, frame)  # the tiny bundle's graph is the identity
        assert sys.modules.get("torch") is None and sys.modules.get("onnx") is None
        print("ok", len(list(pkgutil.iter_modules(edge_runtime.__path__))))
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("ok")
    assert int(res.stdout.split()[1]) >= 10  # every runtime module was imported, not just a few


def test_cli_help_does_not_import_torch():
    code = (
        "import sys; from edge_runtime.cli import cli; "
        "cli(['--help'], standalone_mode=False); assert 'torch' not in sys.modules, 'torch imported'"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert res.returncode == 0, res.stderr
