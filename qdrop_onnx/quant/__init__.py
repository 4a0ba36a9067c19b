"""Quantizers (weights per channel, activations per tensor), their configuration and their placement."""

from qdrop_onnx.quant.activation import ActivationQuantizer
from qdrop_onnx.quant.config import QuantConfig
from qdrop_onnx.quant.grid import IntGrid
from qdrop_onnx.quant.placement import QuantPlan, plan_quantization
from qdrop_onnx.quant.weight import WeightQuantizer

__all__ = ["ActivationQuantizer", "IntGrid", "QuantConfig", "QuantPlan", "WeightQuantizer", "plan_quantization"]
