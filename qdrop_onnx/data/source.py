"""One entry point that opens any supported data source (image folder, .npy/.npz) for a model input."""

from __future__ import annotations

from pathlib import Path

from qdrop_onnx.data.images import ImageFolder, resolve_preprocess
from qdrop_onnx.data.spec import Dataset, InputSpec
from qdrop_onnx.data.tensors import TensorDataset, is_tensor_source
from qdrop_onnx.errors import DataError


def open_dataset(path: str | Path, spec: InputSpec, *, preset: str | None = None,
                 mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None,
                 size: tuple[int, int] | None = None, resize: int | None = None,
                 classes: str | Path | None = None) -> Dataset:
    """Open an image folder, or a ``.npy``/``.npz`` file or folder of them, as input for ``spec``."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"data path not found: {path}")
    if is_tensor_source(path):
        return TensorDataset(path, spec)
    if not path.is_dir():
        raise DataError(f"data must be a folder of images or a .npy/.npz file: {path}")
    preprocess = resolve_preprocess(spec, preset=preset, mean=mean, std=std, size=size, resize=resize)
    return ImageFolder(path, preprocess, classes=classes)
