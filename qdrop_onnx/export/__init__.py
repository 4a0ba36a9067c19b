"""QDQ out: write learned quantization parameters into the clean ONNX graph as Q/DQ nodes."""

from qdrop_onnx.export.qdq import build_qdq_model, save_model_atomic
from qdrop_onnx.params import ActivationParams, QuantParams, WeightParams

__all__ = ["ActivationParams", "QuantParams", "WeightParams", "build_qdq_model", "save_model_atomic"]
