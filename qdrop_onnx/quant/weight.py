"""Per-output-channel uniform weight quantizer with an Lp-optimal clipping search."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from qdrop_onnx.quant.grid import IntGrid, fake_quantize, lp_error, quantize

DEFAULT_P = 2.4
DEFAULT_CANDIDATES = 100


def _per_channel(w: Tensor, axis: int) -> Tensor:
    """``w`` as [channels, everything else]."""
    return w.detach().movedim(axis, 0).reshape(w.shape[axis], -1)


# Zero points tried per range width by the asymmetric search; all of them up to 5 bits (the reference
# code's 100 x 2^bits), evenly spaced beyond, where trying all 128 or 256 buys nothing measurable.
MAX_ZERO_POINTS = 32


def search_weight_range(w2d: Tensor, grid: IntGrid, symmetric: bool, p: float = DEFAULT_P,
                        candidates: int = DEFAULT_CANDIDATES) -> tuple[Tensor, Tensor]:
    """Per-row (scale, zero_point) minimising sum |w - Q(w)|^p.

    Symmetric: scale = r * max|w| / qmax for ``candidates`` ratios r in (0, 1], zero point 0.
    Asymmetric (2-D search, as the reference QDrop code): for each range width r * (max - min), every zero
    point of the grid, i.e. every placement of that range.
    """
    w2d = w2d.float()
    lo = w2d.min(dim=1).values.clamp(max=0)
    hi = w2d.max(dim=1).values.clamp(min=0)
    best_err = torch.full((w2d.shape[0],), float("inf"), device=w2d.device)
    best_scale = torch.ones(w2d.shape[0], device=w2d.device)
    best_zp = torch.zeros(w2d.shape[0], device=w2d.device)
    absmax = torch.maximum(-lo, hi)
    spread = torch.linspace(grid.qmin, grid.qmax, min(grid.levels, MAX_ZERO_POINTS)).round().tolist()
    for i in range(1, candidates + 1):
        r = i / candidates
        if symmetric:
            scale = torch.where(absmax > 0, r * absmax / grid.qmax, torch.ones_like(absmax))
            zero_points = [torch.zeros_like(scale)]
        else:
            # all-zero rows: any scale is exact
            scale = torch.where(hi > lo, r * (hi - lo) / (grid.qmax - grid.qmin), torch.ones_like(lo))
            natural = torch.clamp(grid.qmin - torch.round(r * lo / scale), grid.qmin, grid.qmax)  # [r*lo, r*hi]
            zero_points = [natural] + [torch.full_like(scale, v) for v in spread]
        for zp in zero_points:
            err = lp_error(fake_quantize(w2d, scale[:, None], zp[:, None], grid), w2d, p, dim=1)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_scale = torch.where(better, scale, best_scale)
            best_zp = torch.where(better, zp, best_zp)
    return best_scale, best_zp


class WeightQuantizer(nn.Module):
    """Fake-quantizes one weight tensor per output channel on a signed b-bit grid.

    ``scale`` and ``zero_point`` have the weight's rank with size 1 everywhere but ``channel_axis`` so they
    broadcast; :meth:`init_from` chooses them by the Lp clipping search.
    """

    def __init__(self, bits: int, channel_axis: int, symmetric: bool = True, p: float = DEFAULT_P) -> None:
        super().__init__()
        self.grid = IntGrid(bits, signed=True)
        self.channel_axis = channel_axis
        self.symmetric = symmetric
        self.p = p
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("zero_point", torch.zeros(()))

    def _shape(self, weight: Tensor) -> list[int]:
        shape = [1] * weight.ndim
        shape[self.channel_axis] = weight.shape[self.channel_axis]
        return shape

    @torch.no_grad()
    def init_from(self, weight: Tensor) -> None:
        scale, zp = search_weight_range(_per_channel(weight, self.channel_axis), self.grid, self.symmetric, self.p)
        self.scale = scale.reshape(self._shape(weight)).to(weight.device)
        self.zero_point = zp.reshape(self._shape(weight)).to(weight.device)

    def forward(self, weight: Tensor) -> Tensor:
        return fake_quantize(weight, self.scale, self.zero_point, self.grid)

    @torch.no_grad()
    def integers(self, weight: Tensor) -> Tensor:
        """The integer codes of ``weight`` (as int64), what the exported initializer holds."""
        return quantize(weight, self.scale, self.zero_point, self.grid).to(torch.int64)

    def extra_repr(self) -> str:
        kind = "symmetric" if self.symmetric else "asymmetric"
        return f"bits={self.grid.bits}, {kind}, axis={self.channel_axis}"
