"""Rebuild a clean ONNX graph as a torch module that computes what ONNX Runtime computes.

Every node becomes one small module from the op registry (:mod:`qdrop_onnx.graph.ops`). Nodes whose
inputs are all constant are evaluated once here (constant folding), so the module only runs what depends
on the model input. The forward pass is generated code (``torch.fx``): no per-call walk over the ONNX
graph. The same node modules serve the whole model and any sub-graph (a block), so parameters learned on
a block are the model's parameters.
"""

from __future__ import annotations

import operator
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import torch
import torch.fx as fx
from onnx import numpy_helper
from torch import Tensor, nn

from qdrop_onnx.data.spec import input_specs
from qdrop_onnx.errors import ModelLoadError, UnsupportedModelError, first_line
from qdrop_onnx.graph.load import LoadedModel, default_opset
from qdrop_onnx.graph.ops import (
    DEFAULT_DOMAINS,
    LoweringContext,
    OnnxNode,
    OpTraits,
    TableLookup,
    Unsupported,
    WeightedOp,
    lowering_for,
    traits_for,
)


@dataclass
class LoweredNode:
    """One ONNX node as it lives in the torch rebuild."""

    node: OnnxNode
    attr: str  # attribute name of its module under ``OnnxGraphModule.ops``
    module: nn.Module
    inputs: list[str]  # run-time tensor inputs (constants are inside the module)
    multi_output: bool

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def weighted(self) -> bool:
        return isinstance(self.module, WeightedOp)

    @property
    def lookup(self) -> bool:
        """An embedding lookup: rows of a constant table picked by run-time indices."""
        return isinstance(self.module, TableLookup)

    @property
    def traits(self) -> OpTraits:
        return traits_for(self.node.domain, self.node.op_type)


def _identifier(name: str, taken: set[str], prefix: str) -> str:
    base = prefix + re.sub(r"\W", "_", name).strip("_")
    candidate, i = base, 1
    while candidate in taken:
        candidate = f"{base}_{i}"
        i += 1
    taken.add(candidate)
    return candidate


class OnnxGraphModule(nn.Module):
    """The torch rebuild of an ONNX graph.

    ``forward(*inputs)`` takes the graph inputs in ONNX order and returns the single output, or a tuple
    when the graph has several. Weighted ops are reachable by ONNX node name through :meth:`op` and
    :meth:`weighted_ops`; :meth:`subgraph` builds a module for any part of the graph (a block).
    """

    def __init__(self, nodes: list[LoweredNode], input_names: list[str], output_names: list[str],
                 constants: dict[str, np.ndarray], side_inputs: Sequence[str] = ()) -> None:
        super().__init__()
        # Integer/boolean graph inputs (token ids, attention masks): they steer the data, they are not it.
        self.side_inputs = set(side_inputs)
        self.ops = nn.ModuleDict({ln.attr: ln.module for ln in nodes})
        # Modules applied to a tensor wherever it appears (activation quantizers): tensor name -> attr.
        self.tensor_ops = nn.ModuleDict()
        self._tensor_attr: dict[str, str] = {}
        self.nodes = nodes
        self.input_names = input_names
        self.output_names = output_names
        self.constants = constants
        self._by_name = {ln.name: ln for ln in nodes}
        # Not registered as a child: it shares ``self.ops`` and would duplicate every parameter.
        object.__setattr__(self, "_graph", self.subgraph([ln.name for ln in nodes], input_names, output_names))

    def set_tensor_modules(self, modules: dict[str, nn.Module], on_outputs: bool = True) -> None:
        """Apply ``modules[t]`` to tensor ``t`` right where it is produced (or enters a subgraph).

        Every consumer then sees the transformed tensor; this is how activation quantizers are inserted. With
        ``on_outputs`` the whole graph's outputs are the transformed tensors too (else as produced).
        Replaces any previous mapping and regenerates the forward code.
        """
        unknown = [t for t in modules if t not in self._known_tensors()]
        if unknown:
            raise KeyError(f"no such tensors in the graph: {unknown[:3]}")
        taken: set[str] = set()
        self._tensor_attr = {t: _identifier(t, taken, "t_") for t in modules}
        self.tensor_ops = nn.ModuleDict({self._tensor_attr[t]: m for t, m in modules.items()})
        names = [ln.name for ln in self.nodes]
        object.__setattr__(self, "_graph", self.subgraph(names, self.input_names, self.output_names,
                                                         transform_outputs=on_outputs))

    def side_tensors(self) -> set[str]:
        """Side inputs and every tensor computed only from them and constants (masks, position ids).

        They keep their dtype, are never quantized, do not count as live when the graph is cut into blocks,
        and are handed to every block that reads them.
        """
        side = set(self.side_inputs)
        for ln in self.nodes:
            # An embedding lookup (rows of a constant table by token ids) starts the data, not a side path;
            # a shape-only op reads its input's dims, which quantization never changes (mask builders use it).
            if ln.traits.shape_only or (ln.inputs and all(t in side for t in ln.inputs) and not ln.lookup):
                side.update(t for t in ln.node.outputs if t)
        return side

    def table_lookups(self) -> dict[str, TableLookup]:
        """ONNX node name → embedding lookup module (Gather from a constant float table)."""
        return {ln.name: ln.module for ln in self.nodes if isinstance(ln.module, TableLookup)}

    def _known_tensors(self) -> set[str]:
        return set(self.input_names) | {t for ln in self.nodes for t in ln.node.outputs if t}

    def forward(self, *inputs: Tensor) -> Tensor | tuple[Tensor, ...]:
        out = self._graph(*inputs)
        return out[0] if len(self.output_names) == 1 else out

    def op(self, node_name: str) -> nn.Module:
        """The module of the ONNX node called ``node_name`` (KeyError when it was folded or absent)."""
        return self._by_name[node_name].module

    def node(self, node_name: str) -> LoweredNode:
        return self._by_name[node_name]

    def weighted_ops(self) -> dict[str, WeightedOp]:
        """ONNX node name → weighted module (Conv, ConvTranspose, Gemm, MatMul with constant weight)."""
        return {ln.name: ln.module for ln in self.nodes if isinstance(ln.module, WeightedOp)}

    def subgraph(self, node_names: Sequence[str], inputs: Sequence[str], outputs: Sequence[str],
                 transform_inputs: bool = True, transform_outputs: bool = False) -> fx.GraphModule:
        """A module running ``node_names`` (in graph order): ``forward(*inputs) -> tuple(outputs)``.

        Tensor modules (see :meth:`set_tensor_modules`) are applied to produced tensors and, when
        ``transform_inputs``, to the subgraph's inputs; outputs are returned as produced (a tensor module
        on an output is applied by its consumer's subgraph instead, never twice), or transformed with
        ``transform_outputs`` (the whole graph: its outputs as the exported file computes them).
        """
        wanted = set(node_names)
        graph = fx.Graph()
        taken: set[str] = set()
        env: dict[str, fx.Node] = {}  # tensor as consumers see it (transformed)
        raw: dict[str, fx.Node] = {}  # tensor as produced

        def bind(name: str, node: fx.Node, transform: bool) -> None:
            raw[name] = node
            attr = self._tensor_attr.get(name)
            env[name] = graph.call_module(f"tensor_ops.{attr}", (node,)) if attr and transform else node

        for name in inputs:
            bind(name, graph.placeholder(_identifier(name, taken, "in_")), transform_inputs)
        for ln in self.nodes:
            if ln.name not in wanted:
                continue
            missing = [t for t in ln.inputs if t not in env]
            if missing:
                raise ValueError(f"subgraph: node {ln.name} needs {missing}, which are not inputs of the subgraph")
            result = graph.call_module(f"ops.{ln.attr}", tuple(env[t] for t in ln.inputs))
            if ln.multi_output:
                for i, out in enumerate(ln.node.outputs):
                    if out:
                        bind(out, graph.call_function(operator.getitem, (result, i)), True)
            else:
                bind(ln.node.outputs[0], result, True)
        missing = [t for t in outputs if t not in raw]
        if missing:
            raise ValueError(f"subgraph: outputs {missing} are not computed by its nodes")
        graph.output(tuple((env if transform_outputs else raw)[t] for t in outputs))
        return fx.GraphModule(self, graph)


def _graph_inputs(model: onnx.ModelProto) -> list[str]:
    initializers = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in initializers]


def _fold(lowered_module: nn.Module, inputs: list[str], constants: dict[str, np.ndarray],
          outputs: Sequence[str], multi: bool) -> None:
    with torch.no_grad():
        result = lowered_module(*[torch.from_numpy(np.array(constants[t])) for t in inputs])
    values = result if multi else (result,)
    for name, value in zip(outputs, values, strict=False):
        if name:
            constants[name] = value.detach().cpu().numpy()


def lower(model: LoadedModel | onnx.ModelProto) -> OnnxGraphModule:
    """Build the torch rebuild of a (clean) ONNX model.

    Raises:
        UnsupportedModelError: one error listing every unsupported op type with its count.
    """
    proto = model.model if isinstance(model, LoadedModel) else model
    constants: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    used = {name for node in proto.graph.node for name in node.input} | {o.name for o in proto.graph.output}
    ctx = LoweringContext(constants, default_opset(proto), used)
    input_names = _graph_inputs(proto)
    output_names = [o.name for o in proto.graph.output]

    unsupported: Counter[str] = Counter()
    nodes: list[LoweredNode] = []
    taken: set[str] = set()
    for proto_node in proto.graph.node:
        node = OnnxNode.from_proto(proto_node)
        lowering = lowering_for(node.domain, node.op_type)
        if lowering is None:
            unsupported[node.op_type if node.domain in DEFAULT_DOMAINS else f"{node.domain}.{node.op_type}"] += 1
            continue
        try:
            lowered = lowering(node, ctx)
        except Unsupported as exc:
            unsupported[exc.key] += 1
            continue
        except (ValueError, TypeError, KeyError, IndexError) as exc:  # malformed attributes (tests/test_fuzz.py)
            raise ModelLoadError(f"node {node.name or node.op_type} ({node.op_type}) has attributes or inputs that "
                                 f"do not fit the op: {type(exc).__name__}: {first_line(exc)}") from None
        if not isinstance(lowered.module, WeightedOp) and all(t in constants for t in lowered.inputs):
            _fold(lowered.module, lowered.inputs, constants, node.outputs, lowered.multi_output)
            continue
        attr = _identifier(node.name, taken, "n_")
        nodes.append(LoweredNode(node, attr, lowered.module, lowered.inputs, lowered.multi_output))
    if unsupported:
        raise UnsupportedModelError(describe_unsupported(unsupported), unsupported)
    for name in output_names:
        if name in constants:
            raise UnsupportedModelError(f"graph output {name!r} is a constant; nothing to quantize",
                                        Counter())
    side = [spec.name for spec in input_specs(proto) if not spec.is_float]
    return OnnxGraphModule(nodes, input_names, output_names, constants, side)


def describe_unsupported(counts: Counter[str]) -> str:
    listing = ", ".join(f"{op} x{n}" for op, n in sorted(counts.items()))
    return f"unsupported ops ({sum(counts.values())} nodes): {listing}"


def to_tensors(arrays: Iterable[np.ndarray], device: torch.device | str = "cpu") -> list[Tensor]:
    """NumPy model inputs → torch tensors on ``device`` (float arrays become float32)."""
    out = []
    for a in arrays:
        t = torch.from_numpy(np.ascontiguousarray(a))
        out.append((t.float() if t.is_floating_point() else t).to(device))
    return out
