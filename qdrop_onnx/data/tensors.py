"""``.npy`` / ``.npz`` tensors as model input (already preprocessed, batch axis first)."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from qdrop_onnx.data.spec import InputSpec
from qdrop_onnx.errors import DataError, first_line

TENSOR_SUFFIXES = (".npy", ".npz")


def is_tensor_source(path: Path) -> bool:
    """A .npy/.npz file, or a folder that holds such files and no images."""
    if path.is_file():
        return path.suffix.lower() in TENSOR_SUFFIXES
    return path.is_dir() and any(p.suffix.lower() in TENSOR_SUFFIXES for p in path.iterdir())


def _arrays_in(path: Path, spec: InputSpec) -> list[np.ndarray]:
    try:
        loaded = np.load(path, allow_pickle=False)  # an ndarray, or an NpzFile for a zip (whatever the suffix)
        if isinstance(loaded, np.ndarray):
            return [loaded]
        with loaded as archive:
            if spec.name in archive.files:
                return [archive[spec.name]]
            if len(archive.files) == 1:
                return [archive[archive.files[0]]]
            raise DataError(f"{path} holds {len(archive.files)} arrays and none is named {spec.name!r} "
                            "(the model input)")
    except DataError:
        raise
    except Exception as exc:  # np.load raises BadZipFile, EOFError, ValueError, OSError, ... on corrupt files
        raise DataError(f"cannot read tensors from {path}: {first_line(exc)}") from None


class TensorDataset:
    """Arrays from one file or every .npy/.npz file of a folder (sorted), concatenated on axis 0.

    ``source`` may also be an in-memory array (batch axis first), e.g. for the Python API.
    """

    def __init__(self, source: str | Path | np.ndarray, spec: InputSpec) -> None:
        if isinstance(source, np.ndarray):
            path, arrays = Path("<array>"), [source]
        else:
            path = Path(source)
            files = [path] if path.is_file() else sorted(p for p in path.iterdir()
                                                         if p.suffix.lower() in TENSOR_SUFFIXES)
            arrays = [a for f in files for a in _arrays_in(f, spec)]
        for array in arrays:
            if array.dtype.kind not in "biuf":  # bool, int, uint, float: what a model input can take
                raise DataError(f"tensors in {path} have dtype {array.dtype}; the model input {spec.name} takes "
                                f"{np.dtype(spec.dtype)}")
        rank = len(spec.dims)
        fixed = [a if a.ndim == rank else a[None] if a.ndim == rank - 1 else None for a in arrays]
        if any(a is None for a in fixed):
            raise DataError(f"tensors in {path} do not have the model input's rank {rank}")
        data = np.concatenate(fixed, axis=0) if fixed else np.empty((0,))
        if len(data) == 0:
            raise DataError(f"no tensors found in {path}")
        for axis, dim in enumerate(spec.dims[1:], start=1):
            if dim is not None and data.shape[axis] != dim:
                raise DataError(f"tensors in {path} have shape {tuple(data.shape[1:])} per sample but the "
                                f"model input {spec.name} takes {tuple(spec.dims[1:])}")
        self.data = data.astype(spec.dtype, copy=False)

    def __len__(self) -> int:
        return len(self.data)

    def subset(self, indices: Sequence[int]) -> TensorDataset:
        """The samples at ``indices`` (e.g. those calibration did not use, or an even sample for checks)."""
        rest = copy.copy(self)
        rest.data = self.data[list(indices)]
        return rest

    @property
    def labels(self) -> np.ndarray | None:
        return None

    def batches(self, batch_size: int, limit: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        count = len(self.data) if limit is None else min(limit, len(self.data))
        for start in range(0, count, batch_size):
            yield self.data[start:min(start + batch_size, count)], None


def dataset_from_reader(reader: object, spec: InputSpec) -> TensorDataset:
    """Drain an ONNX Runtime ``CalibrationDataReader`` (``get_next() -> {input name: array} | None``).

    Each dict is one batch for the model's single input; the batches are concatenated. Lets pipelines
    that already feed ``onnxruntime.quantization.quantize_static`` reuse their reader unchanged.
    """
    arrays = []
    while (item := reader.get_next()) is not None:  # type: ignore[attr-defined]
        if spec.name not in item:
            raise DataError(f"the calibration reader gave inputs {sorted(item)}; the model's input is {spec.name}")
        arrays.append(np.asarray(item[spec.name]))
    if not arrays:
        raise DataError("the calibration reader gave no data")
    return TensorDataset(np.concatenate([a if a.ndim == len(spec.dims) else a[None] for a in arrays]), spec)
