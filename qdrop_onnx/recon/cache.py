"""Block inputs and outputs on the calibration set, from the float model and from the quantized one.

Every tensor that crosses a block boundary is kept for all calibration samples in two versions: ``fp``
(float model) and ``q`` (model with all earlier blocks quantized and hardened; the raw tensor, before the
quantizer its consumers apply). A tensor is dropped as soon as no later block reads it, so only the live
boundary tensors are in memory. ``float16`` halves the memory at a small cost in fidelity.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from qdrop_onnx.errors import DataError

log = logging.getLogger("qdrop_onnx")


def default_cache_bytes() -> int:
    """Half of the machine's physical memory (the rest is for the model, activations and the OS)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):  # not on every platform
        return 8 * 2**30


class CacheTooLargeError(DataError):
    """The block tensors do not fit the memory budget even in float16."""


class TensorCache:
    """Boundary tensors by name, float and quantized-model versions, within ``max_bytes`` if given.

    When storing a tensor would pass ``max_bytes`` in float32, everything switches to float16 (one
    warning) instead of the process running out of memory; past the budget in float16 too, it raises
    :class:`CacheTooLargeError` naming the sizes, before allocating.
    """

    def __init__(self, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                 max_bytes: int | None = None) -> None:
        self.dtype = dtype
        self.device = torch.device(device)
        self.max_bytes = max_bytes
        self.fp: dict[str, Tensor] = {}
        self.q: dict[str, Tensor] = {}

    @property
    def nbytes(self) -> int:
        tensors = {id(t): t for table in (self.fp, self.q) for t in table.values()}
        return sum(t.numel() * t.element_size() for t in tensors.values())

    def put(self, name: str, fp: Tensor, q: Tensor) -> None:
        """Store both versions of ``name`` (pass the same tensor twice when they are identical)."""
        self._make_room(name, fp.numel() * (1 if q is fp else 2))
        stored = self._store(fp)
        self.fp[name] = stored
        self.q[name] = stored if q is fp else self._store(q)

    def _make_room(self, name: str, elements: int) -> None:
        if self.max_bytes is None:
            return
        size = self.nbytes + elements * torch.empty((), dtype=self.dtype).element_size()
        if size <= self.max_bytes:
            return
        if self.dtype == torch.float32:
            half = self.nbytes // 2 + elements * 2
            if half <= self.max_bytes:
                log.warning("block tensors need %.2f GB in float32, over the %.2f GB cache budget "
                            "(--max-cache-gb): keeping them in float16", size / 1e9, self.max_bytes / 1e9)
                self.dtype = torch.float16
                halves: dict[int, Tensor] = {}  # fp and q may be one tensor: keep them one
                for table in (self.fp, self.q):
                    for key, t in table.items():
                        if t.is_floating_point():
                            table[key] = halves.setdefault(id(t), t.half())
                return
            size = half
        raise CacheTooLargeError(f"block tensors at {name} need {size / 1e9:.2f} GB even in float16, over the "
                                 f"{self.max_bytes / 1e9:.2f} GB cache budget (--max-cache-gb); use fewer --samples "
                                 "or raise the budget")

    def _store(self, t: Tensor) -> Tensor:
        t = t.detach()
        return t.to(self.device, self.dtype) if t.is_floating_point() else t.to(self.device)

    def keep_only(self, names: set[str]) -> None:
        for table in (self.fp, self.q):
            for name in [n for n in table if n not in names]:
                del table[name]


@torch.no_grad()
def run_batched(module: Callable[..., Sequence[Tensor]], inputs: Sequence[Tensor], batch_size: int,
                device: torch.device) -> list[Tensor]:
    """``module(*inputs)`` over the sample axis in batches; outputs gathered on the inputs' device.

    Outputs are written into tensors allocated once (layout of the first batch's result) rather than
    concatenated at the end: ``torch.cat`` would hold every output twice at its peak, which for a wide
    EfficientNet boundary tensor (1024 x 96 x 112 x 112 floats) is 5 GB more.
    """
    count = inputs[0].shape[0]
    outs: list[Tensor] = []
    for start in range(0, count, batch_size):
        stop = min(start + batch_size, count)
        batch = [t[start:stop].to(device, torch.float32 if t.is_floating_point() else t.dtype) for t in inputs]
        result = module(*batch)
        if not outs:
            outs = [_empty_like_batch(r, count, inputs[0].device) for r in result]
        for out, r in zip(outs, result, strict=True):
            out[start:stop] = r
    return outs


def _empty_like_batch(r: Tensor, count: int, device: torch.device) -> Tensor:
    channels_last = r.ndim == 4 and r.is_contiguous(memory_format=torch.channels_last) and not r.is_contiguous()
    return torch.empty((count, *r.shape[1:]), dtype=r.dtype, device=device,
                       memory_format=torch.channels_last if channels_last else torch.contiguous_format)
