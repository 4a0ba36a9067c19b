"""What the exporter needs from quantization: plain NumPy values, no torch.

This is the one contract between the learning side (quant/, recon/) and the writing side (export/). It lives
beside both, not in either, so data flows one way: quant/ produces these, export/ consumes them, and
neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class IntGrid:
    """A b-bit integer grid: signed [-2^(b-1), 2^(b-1)-1] or unsigned [0, 2^b-1] (both sides use it)."""

    bits: int
    signed: bool

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.signed else 2**self.bits - 1

    @property
    def levels(self) -> int:
        return 2**self.bits


@dataclass
class ActivationParams:
    """Per-tensor quantization of an activation on the grid [0, 2^bits - 1], or [-2^(bits-1), 2^(bits-1) - 1]
    when ``signed``."""

    tensor: str
    bits: int
    scale: np.float32
    zero_point: int
    signed: bool = False

    @property
    def grid(self) -> IntGrid:
        return IntGrid(self.bits, self.signed)


@dataclass
class WeightParams:
    """Per-channel quantization of one weighted node's weight (signed grid) and, optionally, its bias."""

    node: str
    bits: int
    values: np.ndarray  # int64 codes in [-2^(bits-1), 2^(bits-1) - 1], the weight's shape
    scale: np.ndarray  # float32, one per channel
    zero_point: np.ndarray  # int64, one per channel
    axis: int
    bias_values: np.ndarray | None = None  # int32 codes, one per channel
    bias_scale: np.ndarray | None = None  # float32 = input scale * weight scale, one per channel


@dataclass
class TableParams:
    """An embedding table (the data of a Gather by run-time ids), symmetric per row on a signed grid."""

    node: str
    bits: int
    values: np.ndarray  # int64 codes, the table's shape [rows, width]
    scale: np.ndarray  # float32, one per row


@dataclass
class QuantParams:
    activations: dict[str, ActivationParams] = field(default_factory=dict)
    weights: dict[str, WeightParams] = field(default_factory=dict)
    tables: dict[str, TableParams] = field(default_factory=dict)
