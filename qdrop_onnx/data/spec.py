"""What a model expects as input (InputSpec) and what any data source offers (the Dataset protocol).

A batch is a dict input name -> array (batch axis first), exactly what ONNX Runtime's
``CalibrationDataReader.get_next()`` returns and ``InferenceSession.run`` takes.

The neutral module the readers (images, tensors) and the consumers (api, verify) all import, so none of
them imports another.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import onnx

from qdrop_onnx.errors import DataError

# Other float types (bfloat16) are read as float32; every integer type keeps its own, so is_float is exact.
_NUMPY_TYPES = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.FLOAT16: np.float16,
                onnx.TensorProto.DOUBLE: np.float64, onnx.TensorProto.INT64: np.int64,
                onnx.TensorProto.INT32: np.int32, onnx.TensorProto.INT16: np.int16, onnx.TensorProto.INT8: np.int8,
                onnx.TensorProto.UINT64: np.uint64, onnx.TensorProto.UINT32: np.uint32,
                onnx.TensorProto.UINT16: np.uint16, onnx.TensorProto.UINT8: np.uint8, onnx.TensorProto.BOOL: np.bool_}

Batch = dict[str, np.ndarray]
# The input that marks real tokens (1) against padding (0), by the name BERT-family exports give it: the
# reconstruction loss and the verification metrics of sequence outputs count only those positions.
POSITION_MASK = "attention_mask"


@dataclass(frozen=True)
class InputSpec:
    """One model input: name, dims (int, or None where symbolic) and numpy dtype."""

    name: str
    dims: tuple[int | None, ...]
    dtype: type

    @property
    def fixed_batch(self) -> int | None:
        return self.dims[0] if self.dims else None

    @property
    def is_float(self) -> bool:
        """Float inputs carry the data; integer/boolean ones (token ids, masks) are side inputs."""
        return bool(np.issubdtype(self.dtype, np.floating))

    @property
    def layout(self) -> str:
        """'NCHW' or 'NHWC' for 4-D image inputs, decided by where the 1- or 3-channel axis is."""
        if len(self.dims) == 4 and self.dims[1] not in (1, 3) and self.dims[3] in (1, 3):
            return "NHWC"
        return "NCHW"

    @property
    def spatial(self) -> tuple[int | None, int | None]:
        if len(self.dims) != 4:
            return (None, None)
        return (self.dims[2], self.dims[3]) if self.layout == "NCHW" else (self.dims[1], self.dims[2])


def _spec(value: onnx.ValueInfoProto) -> InputSpec:
    tensor_type = value.type.tensor_type
    dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                 for d in tensor_type.shape.dim)
    return InputSpec(value.name, dims, _NUMPY_TYPES.get(tensor_type.elem_type, np.float32))


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """Every non-initializer input of the model, in graph order."""
    initializers = {t.name for t in model.graph.initializer}
    return [_spec(i) for i in model.graph.input if i.name not in initializers]


def input_spec(model: onnx.ModelProto) -> InputSpec:
    """The spec of the model's only input (DataError when there are several: image data feeds one)."""
    specs = input_specs(model)
    if len(specs) != 1:
        names = ", ".join(s.name for s in specs)
        raise DataError(f"model has {len(specs)} inputs ({names}); image data feeds exactly one: give .npz files "
                        "with one array per input")
    return specs[0]


def as_specs(spec: InputSpec | Sequence[InputSpec]) -> list[InputSpec]:
    return [spec] if isinstance(spec, InputSpec) else list(spec)


def fixed_batch(specs: Sequence[InputSpec]) -> int | None:
    """The batch size every input fixes (None when the batch axis is symbolic)."""
    return next((s.fixed_batch for s in specs if s.fixed_batch is not None), None)


def batch_size_of(batch: Batch) -> int:
    return len(next(iter(batch.values())))


class Dataset(Protocol):
    """A finite sequence of model inputs, optionally with integer labels."""

    def __len__(self) -> int: ...

    @property
    def labels(self) -> np.ndarray | None: ...

    def batches(self, batch_size: int, limit: int | None = None) -> Iterator[tuple[Batch, np.ndarray | None]]:
        """Consecutive batches: a dict input name -> array, and the labels (or None)."""
        ...
