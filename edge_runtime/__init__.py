"""edgeae's edge runtime: frames in, results out, on onnxruntime + OpenCV + numpy only.

Nothing in this package imports torch or onnx (tests/edge_runtime/test_import_boundary.py proves it).
"""

__version__ = "0.1.0"
