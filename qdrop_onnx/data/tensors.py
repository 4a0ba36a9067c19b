"""``.npy`` / ``.npz`` tensors as model input (already preprocessed, batch axis first).

A model with one input takes a ``.npy`` file or an ``.npz`` holding one array (or one named after the input);
a model with several inputs takes ``.npz`` files with one array per input, named after it.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from qdrop_onnx.data.spec import Batch, InputSpec, as_specs
from qdrop_onnx.errors import DataError, first_line

TENSOR_SUFFIXES = (".npy", ".npz")


def is_tensor_source(path: Path) -> bool:
    """A .npy/.npz file, or a folder that holds such files and no images."""
    if path.is_file():
        return path.suffix.lower() in TENSOR_SUFFIXES
    return path.is_dir() and any(p.suffix.lower() in TENSOR_SUFFIXES for p in path.iterdir())


def _arrays_in(path: Path, specs: Sequence[InputSpec]) -> dict[str, np.ndarray]:
    """The arrays of one file by model input name."""
    names = [s.name for s in specs]
    try:
        loaded = np.load(path, allow_pickle=False)  # an ndarray, or an NpzFile for a zip (whatever the suffix)
        if isinstance(loaded, np.ndarray):
            if len(specs) != 1:
                raise DataError(f"{path} holds one array; the model has {len(specs)} inputs ({', '.join(names)}): "
                                "give an .npz with one array per input, named after it")
            return {names[0]: loaded}
        with loaded as archive:
            if len(specs) == 1 and names[0] not in archive.files:
                if len(archive.files) == 1:
                    return {names[0]: archive[archive.files[0]]}
                raise DataError(f"{path} holds {len(archive.files)} arrays and none is named {names[0]!r} "
                                "(the model input)")
            missing = [n for n in names if n not in archive.files]
            if missing:
                raise DataError(f"{path} has no array for model input {missing[0]!r} (it holds "
                                f"{', '.join(archive.files) or 'none'})")
            return {n: archive[n] for n in names}
    except DataError:
        raise
    except Exception as exc:  # np.load raises BadZipFile, EOFError, ValueError, OSError, ... on corrupt files
        raise DataError(f"cannot read tensors from {path}: {first_line(exc)}") from None


def _fit(array: np.ndarray, spec: InputSpec, where: str) -> np.ndarray:
    """``array`` checked against ``spec`` (dtype kind, rank, fixed dims) and cast to its dtype."""
    if array.dtype.kind not in "biuf":  # bool, int, uint, float: what a model input can take
        raise DataError(f"tensors in {where} have dtype {array.dtype}; the model input {spec.name} takes "
                        f"{np.dtype(spec.dtype)}")
    if not spec.is_float and array.dtype.kind == "f":
        raise DataError(f"tensors in {where} for input {spec.name} are {array.dtype}; it takes "
                        f"{np.dtype(spec.dtype)} (token ids and masks are integers)")
    rank = len(spec.dims)
    if array.ndim == rank - 1:
        array = array[None]
    if array.ndim != rank:
        raise DataError(f"tensors in {where} for input {spec.name} have rank {array.ndim}; it takes rank {rank}")
    for axis, dim in enumerate(spec.dims[1:], start=1):
        if dim is not None and array.shape[axis] != dim:
            raise DataError(f"tensors in {where} have shape {tuple(array.shape[1:])} per sample but the "
                            f"model input {spec.name} takes {tuple(spec.dims[1:])}")
    return array.astype(spec.dtype, copy=False)


class TensorDataset:
    """Arrays from one file or every .npy/.npz file of a folder (sorted), concatenated on axis 0.

    ``source`` may also be an in-memory array (one input) or a dict input name -> array (batch axis first),
    e.g. for the Python API. ``spec``: the model's input, or the list of all its inputs.
    """

    def __init__(self, source: str | Path | np.ndarray | Mapping[str, np.ndarray],
                 spec: InputSpec | Sequence[InputSpec]) -> None:
        specs = as_specs(spec)
        if isinstance(source, np.ndarray | Mapping):
            path = Path("<array>")
            given = dict(source) if isinstance(source, Mapping) else {specs[0].name: source} if len(specs) == 1 else {}
            missing = [s.name for s in specs if s.name not in given]
            if missing:
                raise DataError(f"no array given for model input {missing[0]!r}")
            parts = [given]
        else:
            path = Path(source)
            files = [path] if path.is_file() else sorted(p for p in path.iterdir()
                                                         if p.suffix.lower() in TENSOR_SUFFIXES)
            parts = [_arrays_in(f, specs) for f in files]
        if not parts:
            raise DataError(f"no tensors found in {path}")
        data = {s.name: np.concatenate([_fit(np.asarray(part[s.name]), s, str(path)) for part in parts], axis=0)
                for s in specs}
        counts = {name: len(a) for name, a in data.items()}
        if len(set(counts.values())) != 1:
            raise DataError(f"tensors in {path} hold different sample counts per input: "
                            + ", ".join(f"{n} {c}" for n, c in counts.items()))
        if next(iter(counts.values())) == 0:
            raise DataError(f"no tensors found in {path}")
        self.data: dict[str, np.ndarray] = data

    def __len__(self) -> int:
        return len(next(iter(self.data.values())))

    def subset(self, indices: Sequence[int]) -> TensorDataset:
        """The samples at ``indices`` (e.g. those calibration did not use, or an even sample for checks)."""
        rest = copy.copy(self)
        rest.data = {name: a[list(indices)] for name, a in self.data.items()}
        return rest

    @property
    def labels(self) -> np.ndarray | None:
        return None

    def batches(self, batch_size: int, limit: int | None = None) -> Iterator[tuple[Batch, np.ndarray | None]]:
        count = len(self) if limit is None else min(limit, len(self))
        for start in range(0, count, batch_size):
            stop = min(start + batch_size, count)
            yield {name: a[start:stop] for name, a in self.data.items()}, None


def dataset_from_reader(reader: object, spec: InputSpec | Sequence[InputSpec]) -> TensorDataset:
    """Drain an ONNX Runtime ``CalibrationDataReader`` (``get_next() -> {input name: array} | None``).

    Each dict is one batch holding every model input; the batches are concatenated. Lets pipelines that
    already feed ``onnxruntime.quantization.quantize_static`` reuse their reader unchanged.
    """
    specs = as_specs(spec)
    parts: list[dict[str, np.ndarray]] = []
    while (item := reader.get_next()) is not None:  # type: ignore[attr-defined]
        missing = [s.name for s in specs if s.name not in item]
        if missing:
            raise DataError(f"the calibration reader gave inputs {sorted(item)}; the model's inputs are "
                            f"{', '.join(s.name for s in specs)} ({missing[0]} is missing)")
        parts.append({s.name: _fit(np.asarray(item[s.name]), s, "the calibration reader") for s in specs})
    if not parts:
        raise DataError("the calibration reader gave no data")
    return TensorDataset({s.name: np.concatenate([p[s.name] for p in parts]) for s in specs}, specs)
