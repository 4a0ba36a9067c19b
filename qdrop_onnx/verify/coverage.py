"""How many weighted ops ONNX Runtime actually runs as integer kernels after its graph optimizer."""

from __future__ import annotations

import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from qdrop_onnx.verify.evaluate import make_session

INTEGER_OPS = frozenset({"QLinearConv", "QGemm", "QLinearMatMul", "MatMulInteger", "ConvInteger",
                         "QLinearConvTranspose", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"})
FLOAT_WEIGHTED_OPS = frozenset({"Conv", "FusedConv", "NhwcFusedConv", "ConvTranspose", "Gemm", "FusedGemm",
                                "MatMul", "FusedMatMul", "MatMulNBits"})


@dataclass
class KernelCoverage:
    """Weighted ops the runtime runs as integer kernels and as float ones; ``float_nodes``: the names of the
    float ones as the runtime reports them (ORT renames some: ``<output>_nchwc``; see :func:`source_node`)."""

    integer: int
    float: int
    op_counts: dict[str, int]
    float_nodes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.integer + self.float

    @property
    def fraction(self) -> float:
        return self.integer / self.total if self.total else 0.0


def integer_kernel_coverage(model: str | Path | bytes, opt_level: str = "all") -> KernelCoverage:
    """Optimise ``model`` with ORT (CPU) at ``opt_level`` and count integer vs float weighted ops."""
    with tempfile.TemporaryDirectory() as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        make_session(model, device="cpu", opt_level=opt_level, optimized_model_path=optimized)
        graph = onnx.load(str(optimized), load_external_data=False).graph
    counts = Counter(n.op_type for n in graph.node)
    integer = sum(n for op, n in counts.items() if op in INTEGER_OPS)
    floating = sum(n for op, n in counts.items() if op in FLOAT_WEIGHTED_OPS)
    names = [n.name for n in graph.node if n.op_type in FLOAT_WEIGHTED_OPS]
    return KernelCoverage(integer, floating, dict(counts), names)


def source_node(reported: str, model: onnx.ModelProto) -> str | None:
    """The node of ``model`` a runtime's node name stands for: the same name, or (ORT's NCHWc layout pass)
    ``<output>_nchwc`` for the node writing that output or the activation fused after it; None if unknown."""
    by_name = {n.name for n in model.graph.node}
    if reported in by_name:
        return reported
    producer = {o: n for n in model.graph.node for o in n.output}
    node = producer.get(reported.removesuffix("_nchwc"))
    while node is not None and node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul") and node.input:
        node = producer.get(node.input[0])  # a fused Relu/Clip/HardSwish: the weighted op before it
    return node.name if node is not None else None
