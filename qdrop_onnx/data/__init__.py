"""Calibration and evaluation data: image folders (Pillow) and .npy/.npz tensors."""

from qdrop_onnx.data.images import PRESETS, ImageFolder, Preprocess, resolve_preprocess
from qdrop_onnx.data.source import open_dataset
from qdrop_onnx.data.spec import Dataset, InputSpec, input_spec
from qdrop_onnx.data.tensors import TensorDataset, dataset_from_reader

__all__ = ["PRESETS", "Dataset", "ImageFolder", "InputSpec", "Preprocess", "TensorDataset", "dataset_from_reader",
           "input_spec", "open_dataset", "resolve_preprocess"]
