"""Calibration and evaluation data: image folders (Pillow), .npy/.npz tensors, text; batches are dicts by input."""

from qdrop_onnx.data.images import PRESETS, ImageFolder, Preprocess, resolve_preprocess
from qdrop_onnx.data.source import open_dataset
from qdrop_onnx.data.spec import Batch, Dataset, InputSpec, batch_size_of, input_spec, input_specs
from qdrop_onnx.data.tensors import TensorDataset, dataset_from_reader
from qdrop_onnx.data.text import TextDataset

__all__ = ["PRESETS", "Batch", "Dataset", "ImageFolder", "InputSpec", "Preprocess", "TensorDataset", "TextDataset",
           "batch_size_of", "dataset_from_reader", "input_spec", "input_specs", "open_dataset", "resolve_preprocess"]
