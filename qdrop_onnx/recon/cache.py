"""Block inputs and outputs on the calibration set, from the float model and from the quantized one.

Every tensor that crosses a block boundary is kept for all calibration samples in two versions: ``fp``
(float model) and ``q`` (model with all earlier blocks quantized and hardened; the raw tensor, before the
quantizer its consumers apply). A tensor is dropped as soon as no later block reads it, so only the live
boundary tensors are in memory. ``float16`` halves the memory at a small cost in fidelity.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor


class TensorCache:
    def __init__(self, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        self.dtype = dtype
        self.device = torch.device(device)
        self.fp: dict[str, Tensor] = {}
        self.q: dict[str, Tensor] = {}

    def put(self, name: str, fp: Tensor, q: Tensor) -> None:
        """Store both versions of ``name`` (pass the same tensor twice when they are identical)."""
        stored = self._store(fp)
        self.fp[name] = stored
        self.q[name] = stored if q is fp else self._store(q)

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
    """``module(*inputs)`` over the sample axis in batches; outputs concatenated on the inputs' device."""
    count = inputs[0].shape[0]
    outs: list[list[Tensor]] = []
    for start in range(0, count, batch_size):
        batch = [t[start:start + batch_size].to(device, torch.float32 if t.is_floating_point() else t.dtype)
                 for t in inputs]
        result = module(*batch)
        outs.append([r.to(inputs[0].device) for r in result])
    return [torch.cat(parts) for parts in zip(*outs, strict=True)]
