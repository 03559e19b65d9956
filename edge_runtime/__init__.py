"""edgeae's edge runtime: frames in, results out, on onnxruntime + OpenCV + numpy only.

Nothing in this package imports torch or onnx (tests/edge_runtime/test_import_boundary.py proves it).
"""

from edge_runtime.imagesize import limit_opencv_decoders

# Before any module here loads cv2: OpenCV then refuses to decode a picture over the pixel cap itself, a second
# line behind the header check of edge_runtime.images (a small file declaring 30000x30000 never allocates).
limit_opencv_decoders()

__version__ = "0.1.0"
