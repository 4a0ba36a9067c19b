"""Cut the rebuilt graph into reconstruction blocks.

A cut is a point in topological order where exactly one tensor is live: everything after it depends on
the model input only through that tensor. Regions between cuts become blocks (a region with one weighted
node is a *layer*). A region without weights is attached to its neighbour: pointwise activations (ops with
the ``pointwise`` trait: a Relu after a residual Add) to the block before them, anything else (pooling,
flattening) to the block after.
A region with more than ``max_weighted`` weighted nodes is split at weighted nodes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from qdrop_onnx.graph.lower import LoweredNode, OnnxGraphModule


@dataclass
class Block:
    """A unit of reconstruction: nodes run in graph order from ``inputs`` to ``outputs``."""

    index: int
    nodes: list[str]
    inputs: list[str]
    outputs: list[str]
    weighted: list[str]
    num_params: int
    op_types: list[str] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return "layer" if len(self.weighted) == 1 else "block"

    @property
    def name(self) -> str:
        return self.weighted[0] if self.weighted else self.nodes[0]


def _live_after(nodes: list[LoweredNode], inputs: list[str], outputs: list[str]) -> list[set[str]]:
    """For each node i, the non-constant tensors still needed after it (what a cut after i hands on)."""
    last_use: dict[str, int] = {}
    for i, ln in enumerate(nodes):
        for t in ln.inputs:
            last_use[t] = i
    end = len(nodes)
    for t in outputs:
        last_use[t] = end
    live: set[str] = set(inputs)  # graph inputs are live until their last consumer
    lives = []
    for i, ln in enumerate(nodes):
        live = {t for t in live if last_use.get(t, -1) > i}
        live |= {t for t in ln.node.outputs if t and last_use.get(t, -1) > i}
        lives.append(live)
    return lives


def _single_live_cuts(lives: list[set[str]], side: frozenset[str] | set[str] = frozenset()) -> list[int]:
    """Indices i such that after node i exactly one non-constant tensor is still needed.

    ``side`` tensors (masks, position ids: computed only from integer inputs) are not counted: every block
    that reads one gets it from the cache, so an attention mask live through the whole graph does not
    stop the graph from being cut on its residual stream.
    """
    return [i for i, live in enumerate(lives) if len(live - side) == 1]


def _regions(nodes: list[LoweredNode], cuts: list[int]) -> list[list[LoweredNode]]:
    regions, start = [], 0
    for c in cuts:
        if c + 1 > start:
            regions.append(nodes[start:c + 1])
            start = c + 1
    if start < len(nodes):
        regions.append(nodes[start:])
    return regions


def _attach_weightless(regions: list[list[LoweredNode]]) -> list[list[LoweredNode]]:
    merged: list[list[LoweredNode]] = []
    pending: list[LoweredNode] = []  # weightless nodes waiting for the next weighted region
    for region in regions:
        if any(ln.weighted for ln in region):
            merged.append(pending + region)
            pending = []
        elif merged and not pending and all(ln.traits.pointwise for ln in region):
            merged[-1] = merged[-1] + region
        else:
            pending += region
    if pending:
        if merged:
            merged[-1] = merged[-1] + pending
        else:
            merged.append(pending)
    return merged


def _split_large(region: list[LoweredNode], max_weighted: int,
                 can_cut_before: Callable[[LoweredNode], bool]) -> list[list[LoweredNode]]:
    parts: list[list[LoweredNode]] = [[]]
    count = 0
    for ln in region:
        if ln.weighted:
            # Past the limit, split at the next weighted node where a cut is possible.
            if count >= max_weighted and parts[-1] and can_cut_before(ln):
                parts.append([])
                count = 0
            count += 1
        parts[-1].append(ln)
    return parts


def partition(model: OnnxGraphModule, max_weighted: int = 8, batch_major: set[str] | None = None) -> list[Block]:
    """Cut ``model`` into blocks in topological order (see module docstring).

    ``batch_major`` (from :func:`batch_major_tensors`): the tensors whose axis 0 is the batch. When given, a
    cut is made only where every tensor crossing it is one of them: the cache stores and batches block
    tensors along axis 0, and a tensor reshaped to [batch x seq, features] (before a Gemm), or a shape
    vector built from Shape, cannot be sliced into sample batches.
    """
    nodes = model.nodes
    lives = _live_after(nodes, model.input_names, model.output_names)
    position = {ln.name: i for i, ln in enumerate(nodes)}

    def can_cut_after(i: int) -> bool:
        return batch_major is None or all(t in batch_major for t in lives[i])

    cuts = [i for i in _single_live_cuts(lives, model.side_tensors()) if can_cut_after(i)]
    regions = _attach_weightless(_regions(nodes, cuts))
    parts = [p for r in regions
             for p in _split_large(r, max_weighted, lambda ln: can_cut_after(position[ln.name] - 1))]

    consumers: dict[str, set[int]] = {}
    producer_part: dict[str, int] = {}
    for k, part in enumerate(parts):
        for ln in part:
            for t in ln.inputs:
                consumers.setdefault(t, set()).add(k)
            for t in ln.node.outputs:
                if t:
                    producer_part[t] = k
    graph_outputs = set(model.output_names)
    blocks = []
    for k, part in enumerate(parts):
        produced = {t for ln in part for t in ln.node.outputs if t}
        inputs: list[str] = []
        for ln in part:
            for t in ln.inputs:
                if t not in produced and t not in inputs:
                    inputs.append(t)
        outputs = [t for ln in part for t in ln.node.outputs
                   if t and (t in graph_outputs or consumers.get(t, set()) - {k})]
        weighted = [ln.name for ln in part if ln.weighted]
        params = sum(p.numel() for ln in part if ln.weighted for p in ln.module.parameters())
        blocks.append(Block(k, [ln.name for ln in part], inputs, outputs, weighted, params,
                            [ln.node.op_type for ln in part]))
    return blocks


@torch.no_grad()
def batch_major_tensors(model: OnnxGraphModule, samples: Sequence[Tensor]) -> set[str]:
    """The tensors whose axis 0 is the batch: size 1 for one sample and 2 for two (the model run twice)."""
    names = sorted(set(model.input_names) | {t for ln in model.nodes for t in ln.node.outputs if t})
    probe = model.subgraph([ln.name for ln in model.nodes], model.input_names, names)
    device = next(model.parameters()).device
    one, two = (probe(*[x[:n].to(device) for x in samples]) for n in (1, 2))
    return {name for name, a, b in zip(names, one, two, strict=True)
            if a.ndim > 0 and b.ndim > 0 and a.shape[0] == 1 and b.shape[0] == 2}
