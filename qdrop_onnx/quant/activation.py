"""Per-tensor activation quantizer with a learnable step size, and the observer that initialises it."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from qdrop_onnx.quant.grid import IntGrid, fake_quantize, lp_error

INIT_METHODS = ("minmax", "percentile", "mse")
PERCENTILE = 99.99
SAMPLES_PER_BATCH = 4096
MAX_SAMPLES = 2**18


def drop_mask(like: Tensor, p: float) -> Tensor:
    """A boolean mask, True with probability ``p`` (rounded to a multiple of 1/256) per element.

    QDrop needs a fresh mask for every quantized tensor at every step; drawing one float per element
    (``rand_like``) is what makes the reference implementation ~1.7x slower. Here each element gets one
    random byte, eight to a draw of int64 random bits: 8x fewer draws for the same independent
    per-element Bernoulli(p) (exact for p = 0.5).
    """
    threshold = round(p * 256)
    if threshold <= 0 or threshold >= 256:  # bytes are < 256: compare would wrap, and no draw is needed
        return torch.full(like.shape, threshold >= 256, dtype=torch.bool, device=like.device)
    n = like.numel()
    bits = torch.randint(-(2**63), 2**63 - 1, ((n + 7) // 8,), dtype=torch.int64, device=like.device)
    return (bits.view(torch.uint8)[:n] < threshold).view(like.shape)


class RangeObserver:
    """Running min/max of a tensor plus a seeded random sample of its values (for percentile/MSE)."""

    def __init__(self, seed: int) -> None:
        self.min = float("inf")
        self.max = float("-inf")
        self._samples: list[Tensor] = []
        self._count = 0
        self._generator = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def observe(self, x: Tensor) -> None:
        flat = x.detach().reshape(-1).float()
        self.min = min(self.min, float(flat.min()))
        self.max = max(self.max, float(flat.max()))
        if self._count < MAX_SAMPLES:
            index = torch.randint(flat.numel(), (min(SAMPLES_PER_BATCH, flat.numel()),), generator=self._generator)
            self._samples.append(flat.cpu()[index])
            self._count += len(index)

    @property
    def samples(self) -> Tensor:
        return torch.cat(self._samples) if self._samples else torch.zeros(1)


class ActivationQuantizer(nn.Module):
    """Fake-quantizes a tensor on an unsigned b-bit grid with one learnable scale (LSQ-ready).

    The zero point is 0 for tensors known to be non-negative (after Relu, Clip >= 0, ...), otherwise it
    is chosen at initialisation and then fixed. ``enabled`` switches quantization off (identity), which
    calibration uses; ``drop_prob`` > 0 is QDrop's element-wise random dropping, on only while a block is
    reconstructed.
    """

    def __init__(self, bits: int, nonnegative: bool, init: str = "mse", p: float = 2.4, seed: int = 0) -> None:
        super().__init__()
        if init not in INIT_METHODS:
            raise ValueError(f"activation init must be one of {INIT_METHODS}, got {init!r}")
        self.grid = IntGrid(bits, signed=False)
        self.nonnegative = nonnegative
        self.init = init
        self.p = p
        self.seed = seed
        self.scale = nn.Parameter(torch.tensor(1.0))
        self.register_buffer("zero_point", torch.tensor(0.0))
        self.enabled = True
        self.drop_prob = 0.0
        self.observer: RangeObserver | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.observer is not None:
            self.observer.observe(x)
        if not self.enabled:
            return x
        if self.scale.requires_grad and torch.is_grad_enabled():
            # Reconstruction: PyTorch's fused kernel computes the same values and the LSQ gradients in one
            # pass (measured identical to fake_quantize here); export and evaluation use fake_quantize.
            q = torch._fake_quantize_learnable_per_tensor_affine(
                x, self.scale.reshape(1), self.zero_point.reshape(1), self.grid.qmin, self.grid.qmax, 1.0)
        else:
            q = fake_quantize(x, self.scale, self.zero_point, self.grid)
        if self.drop_prob > 0:
            # QDrop: each element keeps its float value with probability drop_prob (reconstruction only).
            return torch.where(drop_mask(x, self.drop_prob), x, q)
        return q

    def start_observing(self) -> None:
        self.observer = RangeObserver(self.seed)

    @torch.no_grad()
    def finish_observing(self) -> None:
        """Set scale and zero point from what the observer saw, then drop the observer."""
        if self.observer is None or self.observer.min == float("inf"):
            raise RuntimeError("activation quantizer saw no data during calibration")
        obs, self.observer = self.observer, None
        lo, hi = (0.0 if self.nonnegative else min(obs.min, 0.0)), max(obs.max, 0.0)
        if self.init == "percentile":
            samples = obs.samples
            hi = min(hi, float(torch.quantile(samples, PERCENTILE / 100)))
            if not self.nonnegative:
                lo = max(lo, float(torch.quantile(samples, 1 - PERCENTILE / 100)))
        elif self.init == "mse":
            lo, hi = self._mse_range(obs.samples, lo, hi)
        self._set_range(lo, hi)

    def _scale_zp(self, lo: float, hi: float) -> tuple[float, float]:
        span = hi - lo
        scale = span / (self.grid.qmax - self.grid.qmin) if span > 0 else 1.0
        scale = float(torch.tensor(scale, dtype=torch.float32))
        zp = 0.0 if self.nonnegative else float(min(max(round(-lo / scale), self.grid.qmin), self.grid.qmax))
        return scale, zp

    def _mse_range(self, samples: Tensor, lo: float, hi: float, candidates: int = 100) -> tuple[float, float]:
        best, best_err = (lo, hi), float("inf")
        for i in range(1, candidates + 1):
            r = i / candidates
            scale, zp = self._scale_zp(r * lo, r * hi)
            err = float(lp_error(fake_quantize(samples, torch.tensor(scale), torch.tensor(zp), self.grid),
                                 samples, self.p))
            if err < best_err:
                best, best_err = (r * lo, r * hi), err
        return best

    def _set_range(self, lo: float, hi: float) -> None:
        scale, zp = self._scale_zp(lo, hi)
        self.scale.data = torch.tensor(scale, dtype=torch.float32, device=self.scale.device)
        self.zero_point = torch.tensor(zp, dtype=torch.float32, device=self.scale.device)

    def extra_repr(self) -> str:
        kind = "unsigned" if self.nonnegative else "asymmetric"
        return f"bits={self.grid.bits}, {kind}, scale={float(self.scale):.6g}, zero_point={int(self.zero_point)}"
