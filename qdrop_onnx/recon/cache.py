"""Block inputs and outputs on the calibration set, from the float model and from the quantized one.

Every tensor that crosses a block boundary is kept for all calibration samples in two versions: ``fp``
(float model) and ``q`` (model with all earlier blocks quantized and hardened; the raw tensor, before the
quantizer its consumers apply). A tensor is dropped as soon as no later block reads it, so only the live
boundary tensors are kept. Past the memory budget they go to temporary files (:mod:`qdrop_onnx.recon.spill`)
and are read a batch at a time, so a run never stops for lack of memory; ``float16`` halves either.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from qdrop_onnx.recon.spill import DiskTensor

log = logging.getLogger("qdrop_onnx")

# A cached tensor: in memory, or on disk with its rows read per batch.
Stored = Tensor | DiskTensor


def default_cache_bytes() -> int:
    """Half of the machine's physical memory (the rest is for the model, activations and the OS)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):  # not on every platform
        return 8 * 2**30


class TensorCache:
    """Boundary tensors by name, float and quantized-model versions, in memory within ``max_bytes``.

    What would pass ``max_bytes`` (the tensors held, plus those :meth:`allocate` handed out and not yet
    stored) goes to an unnamed file in ``spill_dir`` (the system's temporary folder by default) instead,
    with one warning, in the cache's dtype: float32 by default, so the results are the in-memory ones.
    """

    def __init__(self, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                 max_bytes: int | None = None, spill_dir: str | Path | None = None) -> None:
        self.dtype = dtype
        self.device = torch.device(device)
        self.max_bytes = max_bytes
        self.spill_dir = spill_dir
        self.fp: dict[str, Stored] = {}
        self.q: dict[str, Stored] = {}
        self._pending: dict[int, Tensor] = {}  # allocated for a block's outputs, not stored yet
        self._warned = False

    @property
    def nbytes(self) -> int:
        """Bytes held in memory (stored and allocated); spilled tensors do not count."""
        tensors = {id(t): t for table in (self.fp, self.q) for t in table.values() if isinstance(t, Tensor)}
        tensors.update(self._pending)
        return sum(t.numel() * t.element_size() for t in tensors.values())

    @property
    def spilled_bytes(self) -> int:
        files = {id(t): t for table in (self.fp, self.q) for t in table.values() if isinstance(t, DiskTensor)}
        return sum(t.nbytes for t in files.values())

    def _fits(self, nbytes: int) -> bool:
        return self.max_bytes is None or self.nbytes + nbytes <= self.max_bytes

    def _spill(self, name: str, shape: tuple[int, ...], dtype: torch.dtype,
               device: torch.device | None = None) -> DiskTensor:
        storage = DiskTensor(shape, self.dtype if dtype.is_floating_point else dtype, self.spill_dir,
                             device=device or self.device, read_dtype=torch.float32)
        if not self._warned:
            self._warned = True
            log.warning("block tensors pass the %.3g GB cache budget (--max-cache-gb) at %s: the rest go to "
                        "temporary files in %s, read a batch at a time (removed on exit)",
                        (self.max_bytes or 0) / 1e9, name, storage.folder)
        return storage

    def allocate(self, name: str, shape: tuple[int, ...], like: Tensor) -> Stored:
        """Room for a block output ``name`` of ``shape`` (``like``: a batch of it, for dtype, layout and the
        device the block runs on, where it is used as a target), to be filled batch by batch and then
        :meth:`put`: in memory if it fits the budget, else on disk (its rows read onto that device)."""
        size = int(torch.Size(shape).numel()) * like.element_size()
        if not self._fits(size):
            return self._spill(name, shape, like.dtype, like.device)
        out = _empty_like_batch(like, shape[0], like.device)
        self._pending[id(out)] = out
        return out

    def put(self, name: str, fp: Stored, q: Stored) -> None:
        """Store both versions of ``name`` (pass the same tensor twice when they are identical)."""
        stored = self._store(name, fp)
        self.fp[name] = stored
        self.q[name] = stored if q is fp else self._store(name, q)

    def _store(self, name: str, t: Stored) -> Stored:
        if isinstance(t, DiskTensor):
            return t
        self._pending.pop(id(t), None)  # counted again below, as what is kept
        t = t.detach()
        dtype = self.dtype if t.is_floating_point() else t.dtype
        if self._fits(t.numel() * torch.empty((), dtype=dtype).element_size()):
            return t.to(self.device, dtype)
        disk = self._spill(name, tuple(t.shape), t.dtype)
        for start in range(0, t.shape[0], 64):
            disk[start:start + 64] = t[start:start + 64]
        return disk

    def keep_only(self, names: set[str]) -> None:
        for table in (self.fp, self.q):
            for name in [n for n in table if n not in names]:
                del table[name]


@torch.no_grad()
def run_batched(module: Callable[..., Sequence[Tensor]], inputs: Sequence[Stored], batch_size: int,
                device: torch.device, allocate: Callable[[int, tuple[int, ...], Tensor], Stored] | None = None,
                ) -> list[Stored]:
    """``module(*inputs)`` over the sample axis in batches; outputs gathered on the inputs' device, or
    into what ``allocate(output_index, shape, first_batch_result)`` returns (a cache's memory or file).

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
            outs = [allocate(k, (count, *r.shape[1:]), r) if allocate is not None
                    else _empty_like_batch(r, count, inputs[0].device) for k, r in enumerate(result)]
        for out, r in zip(outs, result, strict=True):
            out[start:stop] = r
    return outs


def _empty_like_batch(r: Tensor, count: int, device: torch.device) -> Tensor:
    channels_last = r.ndim == 4 and r.is_contiguous(memory_format=torch.channels_last) and not r.is_contiguous()
    return torch.empty((count, *r.shape[1:]), dtype=r.dtype, device=device,
                       memory_format=torch.channels_last if channels_last else torch.contiguous_format)
