"""AdaRound: learned rounding of weights (Nagel et al., 2020), as QDrop/BRECQ use it.

W_q = s * (clamp(floor(W / s) + h(V) + zp, qmin, qmax) - zp), with the rectified sigmoid
h(V) = clamp(sigmoid(V) * (zeta - gamma) + gamma, 0, 1), zeta = 1.1, gamma = -0.1. V starts where h(V)
equals the fractional part of W / s (the soft weight is the float weight). The regulariser
sum(1 - |2 h(V) - 1|^beta) pushes every h to 0 or 1; ``harden()`` then fixes the rounding (h >= 0.5,
i.e. V >= 0), after which the quantizer is an ordinary integer grid.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from qdrop_onnx.quant.weight import WeightQuantizer

ZETA, GAMMA = 1.1, -0.1


class AdaRoundQuantizer(WeightQuantizer):
    """A :class:`WeightQuantizer` whose rounding is learned; scale and zero point stay as initialised."""

    def __init__(self, base: WeightQuantizer, weight: Tensor) -> None:
        super().__init__(base.grid.bits, base.channel_axis, base.symmetric, base.p)
        self.scale, self.zero_point = base.scale.clone(), base.zero_point.clone()
        with torch.no_grad():
            scaled = weight / self.scale
            self.register_buffer("floor", torch.floor(scaled))
            frac = (scaled - self.floor).clamp(1e-6, 1 - 1e-6)
            # Invert h: sigmoid(V) = (frac - gamma) / (zeta - gamma).
            self.alpha = nn.Parameter(-torch.log((ZETA - GAMMA) / (frac - GAMMA) - 1))
        self.hard = False

    def h(self) -> Tensor:
        if self.hard:
            return (self.alpha >= 0).to(self.alpha.dtype)
        return torch.clamp(torch.sigmoid(self.alpha) * (ZETA - GAMMA) + GAMMA, 0, 1)

    def forward(self, weight: Tensor) -> Tensor:  # the float weight is baked into floor + alpha
        q = torch.clamp(self.floor + self.h() + self.zero_point, self.grid.qmin, self.grid.qmax)
        return (q - self.zero_point) * self.scale

    def regularizer(self, beta: float) -> Tensor:
        return (1 - (2 * self.h() - 1).abs().pow(beta)).sum()

    def undecided(self, margin: float = 0.01) -> float:
        """Fraction of soft rounding values not yet within ``margin`` of 0 or 1."""
        h = self.h().detach()
        return float(((h > margin) & (h < 1 - margin)).float().mean())

    @contextmanager
    def rounding_hard(self) -> Iterator[None]:
        """Hard rounding (alpha >= 0 rounds up) inside, soft again after: how the loss before learning is read."""
        before, self.hard = self.hard, True
        try:
            yield
        finally:
            self.hard = before

    def harden(self) -> None:
        self.hard = True
        self.alpha.requires_grad_(False)

    @torch.no_grad()
    def integers(self, weight: Tensor) -> Tensor:
        codes = torch.clamp(self.floor + self.h() + self.zero_point, self.grid.qmin, self.grid.qmax)
        return codes.to(torch.int64)
