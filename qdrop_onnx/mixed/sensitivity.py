"""How much each weighted layer's output error grows when that layer alone has narrower weights.

The measure is task-agnostic (no labels): the model's outputs with one layer's weights on a ``b``-bit
grid (the same per-channel Lp range search the run starts from, round to nearest) against the float
model's outputs, everything else in float. Per output tensor the error is the squared error relative to
the float output's energy, ``|y_q - y|^2 / |y|^2``, averaged over the model's outputs; the float model
scores 0, so each figure is that layer's increase. Q-Limit and HAWQ use the same one-layer-at-a-time
view; it treats the layers as independent (their errors add), which the allocation relies on.

Cost: one forward pass of ``samples`` inputs per layer and width (plus the range search), so a few seconds
for ResNet-20 and minutes for EfficientNet-Lite0 on 2 CPU cores; reconstruction takes hours there.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from qdrop_onnx.graph.lower import OnnxGraphModule
from qdrop_onnx.quant.config import QuantConfig
from qdrop_onnx.quant.placement import QuantPlan, default_weight_symmetric
from qdrop_onnx.quant.weight import WeightQuantizer

DEFAULT_WIDTHS = (2, 3, 4, 8)
DEFAULT_SAMPLES = 128

# (layers done, layers in all, node name) after each layer.
SensitivityProgress = Callable[[int, int, str], None]


@dataclass
class LayerSensitivity:
    """One weighted layer: its parameter count and, per weight width, the output error increase."""

    node: str
    op_type: str
    params: int
    error: dict[int, float]
    fixed: str | None = None  # what fixes this layer's width in the run (WeightSpec.width_from), if anything


@dataclass
class SensitivityTable:
    """Every quantized weighted layer of a plan (graph order), measured at ``widths``."""

    layers: list[LayerSensitivity]
    widths: tuple[int, ...]
    samples: int
    seconds: float
    metric: str = "relative output squared error |y_q - y|^2 / |y|^2, one layer quantized at a time"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for layer in out["layers"]:
            layer["error"] = {str(b): e for b, e in layer["error"].items()}  # JSON keys are strings
        return out


def _squared_errors(ref: Sequence[Tensor], out: Sequence[Tensor]) -> tuple[float, ...]:
    return tuple(float(((o.double() - r.double()) ** 2).sum()) for r, o in zip(ref, out, strict=True))


def _outputs(graph: OnnxGraphModule, batch: Sequence[Tensor]) -> tuple[Tensor, ...]:
    out = graph(*batch)
    return tuple(t.float() for t in (out if isinstance(out, tuple) else (out,)))


@torch.no_grad()
def measure_sensitivity(graph: OnnxGraphModule, plan: QuantPlan, config: QuantConfig, samples: Sequence[Tensor],
                        widths: Sequence[int] = DEFAULT_WIDTHS, device: torch.device | None = None,
                        progress: SensitivityProgress | None = None) -> SensitivityTable:
    """The :class:`SensitivityTable` of ``plan``'s quantized weighted layers on ``samples`` (one tensor per
    graph input, every one of them used), each layer at each of ``widths``.

    ``graph`` must be the plain lowered model (no quantizers attached); it is left as it was found.
    """
    start = time.perf_counter()
    device = device or torch.device("cpu")
    count = len(samples[0])
    batches = [[x[i:i + config.batch_size].to(device) for x in samples] for i in range(0, count, config.batch_size)]
    reference = [_outputs(graph, b) for b in batches]
    # Per output tensor, over all samples: |y|^2.
    scale = [sum(float((ref[k].double() ** 2).sum()) for ref in reference) for k in range(len(reference[0]))]
    layers = []
    names = list(plan.weights)
    for done, name in enumerate(names, 1):
        spec = plan.weights[name]
        op = graph.op(name)
        errors = {}
        for bits in widths:
            quantizer = WeightQuantizer(bits, spec.channel_axis, default_weight_symmetric(config, bits),
                                        config.lp_norm)
            quantizer.init_from(op.weight)
            op.weight_quantizer = quantizer
            try:
                sums = [_squared_errors(ref, _outputs(graph, b)) for ref, b in zip(reference, batches, strict=True)]
            finally:
                op.weight_quantizer = None
            per_output = [sum(s[k] for s in sums) / max(scale[k], 1e-30) for k in range(len(scale))]
            errors[bits] = sum(per_output) / len(per_output)
        layers.append(LayerSensitivity(name, spec.op_type, int(op.weight.numel()), errors, spec.width_from))
        if progress is not None:
            progress(done, len(names), name)
    return SensitivityTable(layers, tuple(widths), count, time.perf_counter() - start)
