"""Bit widths → ONNX element types, for the two export formats.

- ``int8``: every grid lives in an 8-bit container (INT8 weights, UINT8 activations, or INT8 for a target's
  signed activations). A b-bit activation
  grid (b < 8) is enforced with Q → Clip → DQ, the Clip on the integer codes (bounds: the grid's codes), so
  the result equals b-bit fake quantization, and runtimes still fuse the convs into integer kernels.
- ``native``: 4-bit grids as INT4/UINT4 (opset 21), 2-bit as INT2/UINT2 (opset 25); other widths as int8.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto

NATIVE_TYPES = {4: (TensorProto.INT4, TensorProto.UINT4, 21), 2: (TensorProto.INT2, TensorProto.UINT2, 25)}


@dataclass(frozen=True)
class Container:
    """The element type that stores a grid, its bit width, and the opset it needs."""

    elem_type: int
    bits: int
    min_opset: int

    @property
    def signed(self) -> bool:
        return self.elem_type in (TensorProto.INT8, TensorProto.INT4, TensorProto.INT2, TensorProto.INT32)


def weight_container(bits: int, fmt: str) -> Container:
    if fmt == "native" and bits in NATIVE_TYPES:
        return Container(NATIVE_TYPES[bits][0], bits, NATIVE_TYPES[bits][2])
    return Container(TensorProto.INT8, 8, 13)


def activation_container(bits: int, fmt: str, signed: bool = False) -> Container:
    if fmt == "native" and bits in NATIVE_TYPES:
        return Container(NATIVE_TYPES[bits][0 if signed else 1], bits, NATIVE_TYPES[bits][2])
    return Container(TensorProto.INT8 if signed else TensorProto.UINT8, 8, 13)


def int_tensor(name: str, values: np.ndarray, container: Container) -> TensorProto:
    """An initializer of integer ``values`` (already inside the grid) in ``container``'s element type."""
    values = np.asarray(values)
    if container.elem_type == TensorProto.INT8:
        return onnx.numpy_helper.from_array(values.astype(np.int8), name)
    if container.elem_type == TensorProto.UINT8:
        return onnx.numpy_helper.from_array(values.astype(np.uint8), name)
    if container.elem_type == TensorProto.INT32:
        return onnx.numpy_helper.from_array(values.astype(np.int32), name)
    # 4- and 2-bit types: make_tensor packs the values.
    return onnx.helper.make_tensor(name, container.elem_type, list(values.shape),
                                   values.astype(np.int64).reshape(-1).tolist())
