"""Padding is not computed: text batches are cut to their longest real sequence during reconstruction.

Calibration text is padded to the longest sentence of the whole set (84 tokens for MiniLM's calib.txt,
against a mean of 23), and every step of a block would run on that width. With right padding and an
attention mask, the outputs at real positions do not depend on the padded ones, so a batch can be cut to
its own longest sentence and the (masked) loss is the same. Which axes of a cached tensor follow the padded
width is found by running the float model once on one sample at two widths: the axes whose size changes.
Batches are drawn from buckets of similar length, so a batch's longest sentence is near its typical one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from qdrop_onnx.graph.lower import OnnxGraphModule
from qdrop_onnx.recon.spill import DiskTensor

# A bucket holds this many batches' worth of samples (by length): enough variety within a bucket that its
# batches differ, few enough buckets that a batch's longest sentence is close to its typical one.
BUCKET_BATCHES = 4


@dataclass
class SequenceLayout:
    """Real length of each sample, and the axes of each named tensor that follow the padded width."""

    lengths: Tensor  # [N], int64
    axes: dict[str, tuple[int, ...]]

    def crop(self, name: str, t: Tensor | DiskTensor, idx: Tensor, width: int) -> Tensor:
        """``t[idx]`` cut to ``width`` along ``name``'s sequence axes."""
        if isinstance(t, DiskTensor):  # rows first, then cut: the same values, laid out as below
            rows = t[idx]
            for axis in self.axes.get(name, ()):
                rows = rows.narrow(axis, 0, width)
            return rows.contiguous()
        for axis in self.axes.get(name, ()):
            t = t.narrow(axis, 0, width)
        return t[idx]


def right_padded(positions: Tensor) -> bool:
    """Every row is ones then zeros (real tokens first), with at least one real token."""
    p = positions.bool()
    return bool(p[:, 0].all()) and bool((p[:, :-1] | ~p[:, 1:]).all())


@torch.no_grad()
def sequence_layout(graph: OnnxGraphModule, names: Sequence[str], samples: Sequence[Tensor],
                    positions: Tensor | None) -> SequenceLayout | None:
    """The layout of ``names`` (block boundary tensors), or None where cutting is not exact or not found:
    no position mask, left padding, width 1, or a tensor whose size depends on the width in another way."""
    if positions is None or positions.shape[1] < 2 or not right_padded(positions):
        return None
    width = positions.shape[1]
    probe = graph.subgraph([ln.name for ln in graph.nodes], graph.input_names, list(names))

    device = next(graph.parameters()).device
    shortest = int(positions.sum(1).argmin())  # narrowing it by one drops padding only, never a real token

    def narrowed(x: Tensor, w: int) -> Tensor:
        x = x[shortest:shortest + 1]
        for axis in range(1, x.ndim):
            if x.shape[axis] == width:
                x = x.narrow(axis, 0, w)
        return x.to(device)

    def run(w: int) -> list[Tensor]:
        return list(probe(*[narrowed(x, w) for x in samples]))

    try:
        full_values, short_values = run(width), run(width - 1)
    except (RuntimeError, ValueError, IndexError):  # a graph that cannot run narrower: do not cut
        return None
    full = [tuple(t.shape) for t in full_values]
    short = [tuple(t.shape) for t in short_values]
    axes: dict[str, tuple[int, ...]] = {}
    for name, a, b, va, vb in zip(names, full, short, full_values, short_values, strict=True):
        if len(a) != len(b):
            return None
        # A cached shape vector (a Reshape target built from Shape) that holds the width cannot be cut.
        if a == b and not va.is_floating_point() and not torch.equal(va, vb):
            return None
        changed = tuple(i for i, (m, n) in enumerate(zip(a, b, strict=True)) if m != n)
        if any(i == 0 or a[i] != width or b[i] != width - 1 for i in changed):
            return None
        if changed:
            axes[name] = changed
    return SequenceLayout(positions.sum(1).long(), axes)


class BatchSampler:
    """Indices of each step's batch, drawn with replacement: uniformly over all samples, or, with
    ``lengths``, uniformly within a bucket of similar lengths picked with probability by its size."""

    def __init__(self, count: int, batch_size: int, generator: torch.Generator,
                 lengths: Tensor | None = None) -> None:
        self.count, self.batch_size, self.generator = count, batch_size, generator
        self.buckets: list[Tensor] = []
        if lengths is not None:
            order = torch.argsort(lengths.cpu(), stable=True)
            self.buckets = list(order.split(batch_size * BUCKET_BATCHES))
            self.sizes = torch.tensor([len(b) for b in self.buckets], dtype=torch.float32)

    def draw(self) -> Tensor:
        if not self.buckets:
            return torch.randint(self.count, (self.batch_size,), generator=self.generator)
        bucket = self.buckets[int(torch.multinomial(self.sizes, 1, generator=self.generator))]
        return bucket[torch.randint(len(bucket), (self.batch_size,), generator=self.generator)]
