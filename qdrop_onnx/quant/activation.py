"""Per-tensor activation quantizer with a learnable step size, and the observer that initialises it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from qdrop_onnx.quant.grid import IntGrid, fake_quantize, lp_error

INIT_METHODS = ("minmax", "percentile", "mse")
PERCENTILE = 99.99
SAMPLES_PER_BATCH = 4096
MAX_SAMPLES = 2**18


def drop_mask(like: Tensor, p: float, generator: torch.Generator) -> Tensor:
    """A 0/1 mask of ``like``'s shape and dtype, 1 with probability ``p`` (rounded to a multiple of 1/256).

    QDrop needs a fresh mask for every quantized tensor at every step. Each element gets as few random bits
    as ``p`` needs (1 for 0.5, 2 for 0.25 or 0.75, at most 8), drawn as int64 words: drawing is single-threaded
    on CPU, and one byte per element was 8 % of an EfficientNet-Lite0 step at p = 0.5 (``rand_like``, one
    float each, made the reference implementation ~1.7x slower still). The mask is float, not bool, on
    purpose: on CPU, ``where``/``masked_fill``/multiplying by a bool tensor cost 10-40x a float multiply
    (measured: where 1.1 ms, float lerp 77 us on a 32x16x32x32 tensor), and the mask is used three times
    per step.
    """
    threshold = round(p * 256)
    if threshold <= 0 or threshold >= 256:  # values are < 256: no draw is needed
        return torch.full(like.shape, float(threshold >= 256), dtype=like.dtype, device=like.device)
    width = next(b for b in (1, 2, 4, 8) if threshold % (256 >> b) == 0)  # bits per element
    cut = threshold >> (8 - width)  # 1 where the element's value (uniform over 2**width) is < cut
    n = like.numel()
    per_byte = 8 // width
    words = torch.randint(-(2**63), 2**63 - 1, ((n + 8 * per_byte - 1) // (8 * per_byte),), dtype=torch.int64,
                          device=like.device, generator=generator)
    if width < 8:  # unpack on the words (8x fewer elements than on bytes): each field into a byte of its own
        field = int.from_bytes(bytes([(1 << width) - 1] * 8), "little", signed=True)
        words = torch.stack([(words >> shift) & field for shift in range(0, 8, width)])
    raw = words.view(torch.uint8).view(-1)
    value = raw[:n].to(like.dtype)
    # Same strides as `like` (e.g. channels-last): mixing layouts makes every elementwise op copy.
    channels_last = like.ndim == 4 and like.is_contiguous(memory_format=torch.channels_last)
    value = value.as_strided(like.shape, like.stride()) if channels_last else value.view(like.shape)
    if width == 1:
        return value  # one fair bit: already 1 with probability 1/2
    return value.neg_().add_(cut).clamp_(0, 1)  # integers: cut - value >= 1 exactly when value < cut


class _LsqFakeQuantize(torch.autograd.Function):
    """fake_quantize with the LSQ step-size gradient and QDrop's dropping in one autograd node.

    Values are exactly :func:`fake_quantize`'s (same division, round-half-even, clamp). Gradients: x gets
    the straight-through gradient where the code is not clamped (and everywhere it was dropped to float);
    scale gets LSQ's d(fake_quantize)/d(scale) = q - zp - x/s in range, q - zp when clamped, 0 where
    dropped. Written by hand because autograd over the elementwise formula plus ``torch.where`` saved
    ~10 full-size tensors per quantizer and step, and PyTorch's fused learnable kernel is slow on CPU
    (3.4 ms backward for 0.5 M elements): they were 60 % of a ResNet block's reconstruction step. Masks
    stay float (see :func:`drop_mask`).
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor, scale: Tensor, zero_point: Tensor,
                qmin: int, qmax: int, keep_float: Tensor | None) -> Tensor:
        scaled = x / scale
        codes = torch.round(scaled).add_(zero_point)
        centered = codes.clamp(qmin, qmax)
        # Codes are integers, so |codes - clamped| >= 1 exactly where clamping happened: 1/0 in-range mask.
        in_range = codes.sub_(centered).abs_().clamp_(max=1).neg_().add_(1)
        centered.sub_(zero_point)
        out = centered * scale
        grad_scale = centered.sub_(scaled.mul_(in_range))  # in place: `centered` and `scaled` are done
        grad_mask = in_range
        if keep_float is not None:
            out.lerp_(x, keep_float)  # weight 0 or 1: exactly out or x
            grad_scale.addcmul_(grad_scale, keep_float, value=-1)  # times (1 - keep), exact for 0/1, no temporary
            grad_mask = torch.maximum(in_range, keep_float, out=in_range)
        ctx.save_for_backward(grad_mask, grad_scale)
        ctx.scale_shape = scale.shape
        return out

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor
                 ) -> tuple[Tensor | None, Tensor | None, None, None, None, None]:
        grad_mask, grad_scale = ctx.saved_tensors
        grad_x = grad * grad_mask if ctx.needs_input_grad[0] else None
        grad_s = _dot(grad, grad_scale).reshape(ctx.scale_shape) if ctx.needs_input_grad[1] else None
        return grad_x, grad_s, None, None, None, None


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """sum(a * b) without the full-size product: BLAS dot over memory order where both share a dense layout.

    The LSQ step-size gradient is one such sum per quantizer and step; on CPU the product and its sum took
    ~7x the dot's time (23 ms against 3 ms for 32x32x112x112). Summation order differs: ~1e-5 relative.
    """
    if a.shape == b.shape and a.dtype == b.dtype:
        if a.is_contiguous() and b.is_contiguous():
            return torch.dot(a.view(-1), b.view(-1))
        if a.ndim == 4 and all(t.is_contiguous(memory_format=torch.channels_last) for t in (a, b)):
            return torch.dot(a.permute(0, 2, 3, 1).reshape(-1), b.permute(0, 2, 3, 1).reshape(-1))
    return (a * b).sum()


def lsq_fake_quantize(x: Tensor, scale: Tensor, zero_point: Tensor, grid: IntGrid,
                      keep_float: Tensor | None = None) -> Tensor:
    """:func:`fake_quantize` with LSQ gradients; where the 0/1 ``keep_float`` mask is 1 the float ``x`` passes."""
    return _LsqFakeQuantize.apply(x, scale, zero_point, grid.qmin, grid.qmax, keep_float)


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
    """Fake-quantizes a tensor on a b-bit grid with one learnable scale (LSQ-ready).

    Unsigned by default: the zero point is 0 for tensors known to be non-negative (after Relu, Clip >= 0,
    ...), otherwise it is chosen at initialisation and then fixed. ``signed`` and ``symmetric`` (TensorRT's
    int8): the grid is [-2^(b-1), 2^(b-1)-1] with zero point 0 for every tensor, the scale max|x| / qmax.
    ``enabled`` switches quantization off (identity), which calibration uses; QDrop's element-wise random
    dropping is on only inside ``with q.dropping(p, masks):``, while a block is reconstructed.
    """

    def __init__(self, bits: int, nonnegative: bool, init: str = "mse", p: float = 2.4, seed: int = 0,
                 signed: bool = False, symmetric: bool = False) -> None:
        super().__init__()
        if init not in INIT_METHODS:
            raise ValueError(f"activation init must be one of {INIT_METHODS}, got {init!r}")
        if signed != symmetric:
            raise ValueError("activation grids are unsigned (zero point from the range) or signed symmetric")
        self.grid = IntGrid(bits, signed=signed)
        self.symmetric = symmetric
        self.nonnegative = nonnegative
        self.init = init
        self.p = p
        self.seed = seed
        self.scale = nn.Parameter(torch.tensor(1.0))
        self.register_buffer("zero_point", torch.tensor(0.0))
        self.enabled = True
        self._drop_prob = 0.0
        self._masks: torch.Generator | None = None  # set only inside dropping()
        self.observer: RangeObserver | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.observer is not None:
            self.observer.observe(x)
        if not self.enabled:
            return x
        keep_float = drop_mask(x, self._drop_prob, self._masks) if self._masks is not None else None
        if torch.is_grad_enabled() and (self.scale.requires_grad or x.requires_grad):
            return lsq_fake_quantize(x, self.scale, self.zero_point, self.grid, keep_float)
        q = fake_quantize(x, self.scale, self.zero_point, self.grid)
        # QDrop: each element keeps its float value with probability drop_prob (reconstruction only).
        return q if keep_float is None else torch.lerp(q, x, keep_float)

    @contextmanager
    def dropping(self, p: float, masks: torch.Generator) -> Iterator[None]:
        """QDrop inside the block: each element keeps its float value with probability ``p``, the masks drawn
        from ``masks`` (a generator on the tensors' device, seeded per block by the reconstruction)."""
        before = self._drop_prob, self._masks
        self._drop_prob, self._masks = p, (masks if p > 0 else None)
        try:
            yield
        finally:
            self._drop_prob, self._masks = before

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
        if self.symmetric:
            absmax = max(-lo, hi)
            scale = float(torch.tensor(absmax / self.grid.qmax if absmax > 0 else 1.0, dtype=torch.float32))
            return scale, 0.0
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
        kind = "signed symmetric" if self.symmetric else "unsigned" if self.nonnegative else "asymmetric"
        return f"bits={self.grid.bits}, {kind}, scale={float(self.scale):.6g}, zero_point={int(self.zero_point)}"
