"""Integer grids and the fake-quantization formula ONNX Runtime uses.

QuantizeLinear in ONNX Runtime computes ``saturate(round_half_even(x / scale) + zero_point)`` in float32
(a division, not a multiplication by 1/scale), and DequantizeLinear ``(q - zero_point) * scale``. The torch
side uses the same operations in the same order so that the exported file computes the same numbers.
"""

from __future__ import annotations

import torch
from torch import Tensor

from qdrop_onnx.params import IntGrid

__all__ = ["IntGrid", "fake_quantize", "lp_error", "quantize", "round_ste"]


class _RoundSTE(torch.autograd.Function):
    """round-half-even forward, identity backward (straight-through estimator)."""

    @staticmethod
    def forward(ctx: object, x: Tensor) -> Tensor:
        return torch.round(x)

    @staticmethod
    def backward(ctx: object, grad: Tensor) -> Tensor:
        return grad


def round_ste(x: Tensor) -> Tensor:
    return _RoundSTE.apply(x)


def quantize(x: Tensor, scale: Tensor, zero_point: Tensor, grid: IntGrid) -> Tensor:
    """Integer codes (as float) exactly as QuantizeLinear computes them, with a straight-through round."""
    return torch.clamp(round_ste(x / scale) + zero_point, grid.qmin, grid.qmax)


def fake_quantize(x: Tensor, scale: Tensor, zero_point: Tensor, grid: IntGrid) -> Tensor:
    """QuantizeLinear followed by DequantizeLinear, differentiable w.r.t. x and scale (STE/LSQ)."""
    return (quantize(x, scale, zero_point, grid) - zero_point) * scale


def lp_error(x: Tensor, y: Tensor, p: float, dim: int | tuple[int, ...] | None = None) -> Tensor:
    """Sum of |x - y|^p (over ``dim``, or all)."""
    diff = (x - y).abs().pow(p)
    return diff.sum() if dim is None else diff.sum(dim=dim)
