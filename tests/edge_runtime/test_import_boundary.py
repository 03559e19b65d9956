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
# Optional extras: imported only inside a function of the module named (when the feature is used), never at import.
OPTIONAL = {"paho": "mqtt.py"}


def _imports(tree: ast.AST) -> list[tuple[str, bool]]:
    """(module name, inside a function) of every import in ``tree``."""
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, ast.Import):
            found.extend((a.name, in_function) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, in_function))
        inner = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(tree, False)
    return found


def test_no_module_imports_outside_the_edge_dependencies():
    bad = []
    for path in sorted((ROOT / "edge_runtime").glob("*.py")):
        for name, in_function in _imports(ast.parse(path.read_text())):
            top = name.split(".")[0]
            if top in ALLOWED or top in sys.stdlib_module_names:
                continue
            if OPTIONAL.get(top) == path.name and in_function:
                continue
            bad.append(f"{path.name}: import {name}" + (" (at module level)" if not in_function else ""))
    assert bad == []


def test_importlib_is_not_used_to_hide_an_import():
    """importlib.import_module("x") would pass the check above unseen: only the CLI's lazy commands may use it."""
    users = sorted(p.name for p in (ROOT / "edge_runtime").glob("*.py") if "import_module(" in p.read_text())
    assert users == ["cli.py"]


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
