"""A quantization simulation: the torch rebuild with fake quantizers where the plan says.

``QuantSim`` attaches one :class:`WeightQuantizer` per weighted node, one :class:`ActivationQuantizer`
per planned tensor, one per-row quantizer per embedding table and an int32 bias simulation where the plan
asks for it; calibrates them (activation ranges observed with everything in float, as the reference QDrop
code does, then weights by the Lp search); and hands the learned values to the exporter as :class:`QuantParams`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from qdrop_onnx.graph.lower import OnnxGraphModule
from qdrop_onnx.params import ActivationParams, QuantParams, TableParams, WeightParams
from qdrop_onnx.quant.activation import ActivationQuantizer
from qdrop_onnx.quant.adaround import AdaRoundQuantizer
from qdrop_onnx.quant.config import QuantConfig
from qdrop_onnx.quant.grid import IntGrid, round_ste
from qdrop_onnx.quant.placement import QuantPlan
from qdrop_onnx.quant.weight import WeightQuantizer

INT32 = IntGrid(32, signed=True)
INT32_MAX_F32 = 2**31 - 128  # the largest float32 below 2^31: clamping at 2^31 - 1 would round up and overflow
BIAS_HEADROOM = 2.0**30


class BiasQuantizer(nn.Module):
    """int32 bias with scale = input activation scale x weight scale (per channel), as runtimes fuse it."""

    def __init__(self, act: ActivationQuantizer, weight: WeightQuantizer) -> None:
        super().__init__()
        # Plain references (not submodules): these quantizers are owned elsewhere in the graph.
        object.__setattr__(self, "act", act)
        object.__setattr__(self, "weight", weight)

    def scale(self) -> Tensor:
        return self.act.scale * self.weight.scale.reshape(-1)

    def forward(self, bias: Tensor) -> Tensor:
        scale = self.scale()
        return torch.clamp(round_ste(bias / scale), INT32.qmin, INT32_MAX_F32) * scale

    @torch.no_grad()
    def fit_int32(self, bias: Tensor) -> None:
        """Raise weight scales of channels whose bias would overflow int32 at act scale x weight scale.

        Happens with near-zero channels (common in depthwise convs: EfficientNet-Lite0 has them): the
        searched weight scale is tiny, bias / (s_a * s_w) exceeds 2^31 and the saturated bias is wrong.
        ONNX Runtime's quantizer adjusts the weight scale the same way. 2^30 leaves room for the
        activation step size to shrink during reconstruction.
        """
        weight = self.weight
        needed = bias.abs() / (self.act.scale * BIAS_HEADROOM)
        flat = weight.scale.reshape(-1)
        if bool((needed > flat).any()):
            weight.scale = torch.maximum(flat, needed).reshape(weight.scale.shape)


class QuantSim:
    """The quantized model: ``sim.graph(x)`` runs it with fake quantization."""

    def __init__(self, graph: OnnxGraphModule, plan: QuantPlan, config: QuantConfig) -> None:
        self.graph = graph
        self.plan = plan
        self.config = config
        self.acts: dict[str, ActivationQuantizer] = {
            spec.tensor: ActivationQuantizer(spec.bits, spec.nonnegative, config.act_init, config.lp_norm,
                                             seed=config.seed + i, signed=spec.signed, symmetric=spec.symmetric)
            for i, spec in enumerate(plan.activations.values())
        }
        graph.set_tensor_modules(dict(self.acts), on_outputs=not config.float_outputs)
        self.weights: dict[str, WeightQuantizer] = {}
        self.biases: dict[str, BiasQuantizer] = {}
        for name, spec in plan.weights.items():
            bits = spec.bits - 1 if (config.reduce_range and spec.bits == 8) else spec.bits
            self.weights[name] = WeightQuantizer(bits, spec.channel_axis, spec.symmetric, config.lp_norm)
            if spec.quantize_bias and spec.input in self.acts:
                self.biases[name] = BiasQuantizer(self.acts[spec.input], self.weights[name])
        # Embedding tables: per row, symmetric, round to nearest (never learned).
        self.tables: dict[str, WeightQuantizer] = {
            name: WeightQuantizer(spec.bits, 0, True, config.lp_norm) for name, spec in plan.tables.items()}
        self.set_quantization(weights=True, activations=True)

    # ------------------------------------------------------------------------------------------ state
    def set_quantization(self, weights: bool, activations: bool) -> None:
        """Switch weight and activation fake quantization on or off (float when both are off).

        The int32 bias simulation needs both scales, so it is on only when both are.
        """
        for name, quantizer in self.weights.items():
            self.graph.op(name).weight_quantizer = quantizer if weights else None
        with torch.no_grad():
            for name, quantizer in self.tables.items():
                lookup = self.graph.op(name)
                lookup.quantized = quantizer(lookup.table) if weights else None
        for q in self.acts.values():
            q.enabled = activations
        for name, bias in self.biases.items():
            self.graph.op(name).bias_quantizer = bias if (weights and activations) else None

    def use_adaround(self, name: str) -> AdaRoundQuantizer:
        """Replace the weight quantizer of ``name`` by AdaRound (starting from its scale and zero point)."""
        current = self.weights[name]
        if isinstance(current, AdaRoundQuantizer):
            return current
        ada = AdaRoundQuantizer(current, self.graph.op(name).weight.detach())
        self.weights[name] = ada
        self.graph.op(name).weight_quantizer = ada
        if name in self.biases:
            self.biases[name] = BiasQuantizer(self.biases[name].act, ada)
            if self.graph.op(name).bias_quantizer is not None:
                self.graph.op(name).bias_quantizer = self.biases[name]
        return ada

    # ------------------------------------------------------------------------------------ calibration
    @torch.no_grad()
    def calibrate(self, batches: Iterable[Sequence[Tensor]]) -> None:
        """Observe activation ranges in float on ``batches`` (each one tensor per graph input, in
        ``graph.input_names`` order), then initialise every weight quantizer."""
        self.set_quantization(weights=False, activations=False)
        for q in self.acts.values():
            q.start_observing()
        for xs in batches:
            self.graph(*xs)
        for q in self.acts.values():
            q.finish_observing()
        for name, quantizer in self.weights.items():
            quantizer.init_from(self.graph.op(name).weight)
        for name, quantizer in self.tables.items():
            quantizer.init_from(self.graph.op(name).table)
        for name, bias in self.biases.items():
            bias.fit_int32(self.graph.op(name).bias)
        self.set_quantization(weights=True, activations=True)

    # ----------------------------------------------------------------------------------------- export
    @torch.no_grad()
    def export_params(self) -> QuantParams:
        params = QuantParams()
        for tensor, q in self.acts.items():
            params.activations[tensor] = ActivationParams(tensor, q.grid.bits, np.float32(q.scale.detach().cpu()),
                                                          int(q.zero_point), signed=q.grid.signed)
        for name, quantizer in self.weights.items():
            op = self.graph.op(name)
            spec = self.plan.weights[name]
            values = quantizer.integers(op.weight).cpu().numpy()
            entry = WeightParams(name, quantizer.grid.bits, values,
                                 quantizer.scale.reshape(-1).cpu().numpy().astype(np.float32),
                                 quantizer.zero_point.reshape(-1).cpu().numpy().astype(np.int64), spec.channel_axis)
            bias = self.biases.get(name)
            if bias is not None:
                scale = bias.scale()
                entry.bias_scale = scale.cpu().numpy().astype(np.float32)
                codes = torch.clamp(torch.round(op.bias / scale), INT32.qmin, INT32_MAX_F32)
                entry.bias_values = codes.cpu().numpy().astype(np.int32)
            params.weights[name] = entry
        for name, quantizer in self.tables.items():
            table = self.graph.op(name).table
            params.tables[name] = TableParams(name, quantizer.grid.bits, quantizer.integers(table).cpu().numpy(),
                                              quantizer.scale.reshape(-1).cpu().numpy().astype(np.float32))
        return params
