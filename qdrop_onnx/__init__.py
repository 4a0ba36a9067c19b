"""qdrop-onnx: low-bit post-training quantization of ONNX models (AdaRound, BRECQ, QDrop) to QDQ ONNX."""

from qdrop_onnx.errors import DataError, ModelLoadError, QdropError, UnsupportedModelError

__version__ = "0.1.0"

__all__ = ["DataError", "ModelLoadError", "QdropError", "UnsupportedModelError", "__version__"]
