"""ONNX in, torch out: load and clean a model, rebuild it as a torch module, cut it into blocks."""

from qdrop_onnx.graph.load import LoadedModel, load_model
from qdrop_onnx.graph.lower import OnnxGraphModule, lower
from qdrop_onnx.graph.partition import Block, partition

__all__ = ["Block", "LoadedModel", "OnnxGraphModule", "load_model", "lower", "partition"]
