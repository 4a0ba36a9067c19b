"""One entry point that opens any supported data source (image folder, .npy/.npz, text) for a model's inputs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from qdrop_onnx.data.images import ImageFolder, resolve_preprocess
from qdrop_onnx.data.spec import Dataset, InputSpec, as_specs
from qdrop_onnx.data.tensors import TensorDataset, is_tensor_source
from qdrop_onnx.data.text import TextDataset, is_text_source
from qdrop_onnx.errors import DataError


def open_dataset(path: str | Path, spec: InputSpec | Sequence[InputSpec], *, preset: str | None = None,
                 mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None,
                 size: tuple[int, int] | None = None, resize: int | None = None,
                 classes: str | Path | None = None, tokenizer: str | Path | None = None,
                 max_length: int = 128) -> Dataset:
    """Open an image folder, a ``.npy``/``.npz`` file or folder of them, or a ``.txt`` file of sentences (with
    ``tokenizer``, a Hugging Face tokenizers JSON file) as input for the model's inputs.

    ``spec``: the model's input, or the list of all its inputs (``input_specs``). An image folder feeds a
    model with exactly one input.
    """
    path = Path(path)
    specs = as_specs(spec)
    if not path.exists():
        raise DataError(f"data path not found: {path}")
    if is_text_source(path):
        if tokenizer is None:
            raise DataError(f"text data ({path}) needs a tokenizer: pass --tokenizer tokenizer.json")
        return TextDataset(path, tokenizer, specs, max_length=max_length)
    if is_tensor_source(path):
        return TensorDataset(path, specs)
    if not path.is_dir():
        raise DataError(f"data must be a folder of images, a .npy/.npz file or a .txt file of sentences: {path}")
    if len(specs) != 1:
        raise DataError(f"model has {len(specs)} inputs ({', '.join(s.name for s in specs)}); an image folder "
                        "feeds exactly one: give .npz files with one array per input")
    preprocess = resolve_preprocess(specs[0], preset=preset, mean=mean, std=std, size=size, resize=resize)
    return ImageFolder(path, preprocess, classes=classes)
