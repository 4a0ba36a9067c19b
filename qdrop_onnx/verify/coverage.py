"""How many weighted ops ONNX Runtime actually runs as integer kernels after its graph optimizer."""

from __future__ import annotations

import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import onnx

from qdrop_onnx.verify.evaluate import make_session

INTEGER_OPS = frozenset({"QLinearConv", "QGemm", "QLinearMatMul", "MatMulInteger", "ConvInteger",
                         "QLinearConvTranspose", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"})
FLOAT_WEIGHTED_OPS = frozenset({"Conv", "FusedConv", "NhwcFusedConv", "ConvTranspose", "Gemm", "FusedGemm",
                                "MatMul", "FusedMatMul", "MatMulNBits"})


@dataclass
class KernelCoverage:
    integer: int
    float: int
    op_counts: dict[str, int]

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
    return KernelCoverage(integer, floating, dict(counts))
