"""How much each weighted layer's output error grows when that layer alone has narrower weights.

The measure is task-agnostic (no labels): the model's outputs with one layer's weights on a ``b``-bit
grid (the same per-channel Lp range search the run starts from) against the float model's outputs,
everything else in float. Per output tensor the error is the squared error relative to the float output's
energy, ``|y_q - y|^2 / |y|^2``, averaged over the model's outputs; the float model scores 0, so each
figure is that layer's increase. Q-Limit and HAWQ use the same one-layer-at-a-time view; it treats the
layers as independent (their errors add), which the allocation relies on.

The rounding is the run's: round to nearest for ``--method rtn``; for the methods that learn it, each
layer's rounding is first learned alone for ``steps`` steps (AdaRound on that layer's output, its float
inputs, the reconstruction's own loss and schedule), so the table predicts what reconstruction leaves, not
what round-to-nearest does. The two disagree most where it matters: on ResNet-20 a layer's 2-bit error
falls 4.6-30x after learning (200 steps) and the order of the layers changes (``layer2.0.conv1``: 0.65 -> 0.027,
``layer1.0.conv1``: 0.079 -> 0.013), so a round-to-nearest table spends the budget on layers that learned
rounding mends anyway.

Cost: one forward pass of ``samples`` inputs per layer and width (plus the range search), so a few seconds
for ResNet-20 and minutes for EfficientNet-Lite0 on 2 CPU cores, and with learned rounding ``steps``
optimisation steps of one layer per layer and width below 8 bits. Measured at four widths, 128 samples, 200
steps: ResNet-20 43 s (7 s round to nearest), ResNet-56 167 s (45 s): about a fifth of a 2000-step
reconstruction.

Activations (``--avg-a-bits``) are measured the same way: one tensor at a time on a ``b``-bit grid (its range
from the same observer and initialisation as the run's calibration, on these samples), weights and every
other tensor in float.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn

from qdrop_onnx.graph.lower import OnnxGraphModule
from qdrop_onnx.quant.activation import ActivationQuantizer, RangeObserver
from qdrop_onnx.quant.adaround import AdaRoundQuantizer
from qdrop_onnx.quant.config import QuantConfig
from qdrop_onnx.quant.placement import QuantPlan, default_weight_symmetric
from qdrop_onnx.quant.weight import WeightQuantizer
from qdrop_onnx.recon.block import ReconConfig, reconstruct_block
from qdrop_onnx.recon.policy import recon_config

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
class ActivationSensitivity:
    """One activation tensor (the input of ``consumers``): elements per sample and, per width, the output
    error increase with only this tensor quantized."""

    tensor: str
    consumers: list[str]
    elements: int
    error: dict[int, float]


@dataclass
class SensitivityTable:
    """Every quantized weighted layer of a plan (graph order), measured at ``widths``."""

    layers: list[LayerSensitivity]
    widths: tuple[int, ...]
    samples: int
    seconds: float
    metric: str = "relative output squared error |y_q - y|^2 / |y|^2, one layer quantized at a time"
    rounding_steps: int = 0  # 0: round to nearest; else each layer's rounding learned alone for this many steps
    extra: dict[str, Any] = field(default_factory=dict)
    activations: list[ActivationSensitivity] = field(default_factory=list)  # measured for --avg-a-bits only

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for row in [*out["layers"], *out["activations"]]:
            row["error"] = {str(b): e for b, e in row["error"].items()}  # JSON keys are strings
        return out


def _squared_errors(ref: Sequence[Tensor], out: Sequence[Tensor]) -> tuple[float, ...]:
    return tuple(float(((o.double() - r.double()) ** 2).sum()) for r, o in zip(ref, out, strict=True))


def _outputs(graph: OnnxGraphModule, batch: Sequence[Tensor]) -> tuple[Tensor, ...]:
    out = graph(*batch)
    return tuple(t.float() for t in (out if isinstance(out, tuple) else (out,)))


class FloatOutputs:
    """The float model's outputs on ``samples`` (one tensor per graph input, in batches on ``device``), and each
    later run's relative error to them. Computed once and shared by the weight and activation measurements."""

    @torch.no_grad()
    def __init__(self, graph: OnnxGraphModule, samples: Sequence[Tensor], batch_size: int,
                 device: torch.device | None = None) -> None:
        device = device or torch.device("cpu")
        count = len(samples[0])
        self.count = count
        self.graph = graph
        self.batches = [[x[i:i + batch_size].to(device) for x in samples] for i in range(0, count, batch_size)]
        self.reference = [_outputs(graph, b) for b in self.batches]
        # Per output tensor, over all samples: |y|^2.
        self.scale = [sum(float((ref[k].double() ** 2).sum()) for ref in self.reference)
                      for k in range(len(self.reference[0]))]

    @torch.no_grad()
    def error(self) -> float:
        """The mean over outputs of |y_q - y|^2 / |y|^2 for the graph as it is now set up."""
        sums = [_squared_errors(ref, _outputs(self.graph, b))
                for ref, b in zip(self.reference, self.batches, strict=True)]
        per_output = [sum(s[k] for s in sums) / max(self.scale[k], 1e-30) for k in range(len(self.scale))]
        return sum(per_output) / len(per_output)


def _layer_io(graph: OnnxGraphModule, op: nn.Module, batches: Sequence[Sequence[Tensor]]) -> tuple[Tensor, Tensor]:
    """The float input and output of ``op`` on every batch (one float pass of the model)."""
    seen: list[tuple[Tensor, Tensor]] = []
    handle = op.register_forward_hook(lambda _m, args, out: seen.append((args[0].detach(), out.detach())))
    try:
        for batch in batches:
            graph(*batch)
    finally:
        handle.remove()
    return torch.cat([x for x, _ in seen]), torch.cat([y for _, y in seen])


def learn_rounding_alone(op: nn.Module, quantizer: WeightQuantizer, x: Tensor, y: Tensor, steps: int,
                         recon: ReconConfig) -> AdaRoundQuantizer:
    """``quantizer``'s grid with its rounding learned for ``op`` alone: AdaRound on ``op(x)`` against its float
    output ``y``, weights only, the reconstruction's loss and schedule over ``steps`` steps; hardened."""
    learned = AdaRoundQuantizer(quantizer, op.weight.detach())
    op.weight_quantizer = learned
    frozen = [p for p in op.parameters() if p.requires_grad and p is not learned.alpha]
    for p in frozen:
        p.requires_grad_(False)
    try:
        with torch.enable_grad():
            reconstruct_block(lambda xf, _xq: [op(xf[0])], [x], [x], [y], [learned], [],
                              replace(recon, iters=steps, drop_prob=0.0, quantize_activations=False, auto=False))
    finally:
        for p in frozen:
            p.requires_grad_(True)
    learned.harden()
    return learned


@torch.no_grad()
def measure_sensitivity(graph: OnnxGraphModule, plan: QuantPlan, config: QuantConfig, errors_of: FloatOutputs,
                        widths: Sequence[int] = DEFAULT_WIDTHS,
                        progress: SensitivityProgress | None = None) -> SensitivityTable:
    """The :class:`SensitivityTable` of ``plan``'s quantized weighted layers on the samples of ``errors_of``
    (every one of them used), each layer at each of ``widths``: round to nearest, or with
    ``config.sensitivity_steps`` the rounding learned alone per layer and width (:func:`learn_rounding_alone`,
    with the run's reconstruction settings: batch size, regulariser weight, seed; 8-bit weights stay round to
    nearest, where learning buys nothing).

    ``graph`` must be the plain lowered model (no quantizers attached); it is left as it was found.
    """
    start = time.perf_counter()
    rounding_steps = int(config.sensitivity_steps or 0)
    recon = recon_config(config, graph)
    layers = []
    names = list(plan.weights)
    for done, name in enumerate(names, 1):
        spec = plan.weights[name]
        op = graph.op(name)
        io = _layer_io(graph, op, errors_of.batches) if rounding_steps and min(widths) < 8 else None
        errors = {}
        for bits in widths:
            quantizer = WeightQuantizer(bits, spec.channel_axis, default_weight_symmetric(config, bits),
                                        config.lp_norm)
            quantizer.init_from(op.weight)
            op.weight_quantizer = quantizer
            try:
                if io is not None and bits < 8:
                    learn_rounding_alone(op, quantizer, *io, rounding_steps, recon)
                errors[bits] = errors_of.error()
            finally:
                op.weight_quantizer = None
        layers.append(LayerSensitivity(name, spec.op_type, int(op.weight.numel()), errors, spec.width_from))
        if progress is not None:
            progress(done, len(names), name)
    metric = SensitivityTable.metric + (f", rounding learned alone per layer ({rounding_steps} steps)"
                                        if rounding_steps else ", round to nearest")
    return SensitivityTable(layers, tuple(widths), errors_of.count, time.perf_counter() - start, metric,
                            rounding_steps=rounding_steps)


class _Probe(nn.Module):
    """Identity on one tensor, except while it observes the tensor's range or quantizes it."""

    def __init__(self) -> None:
        super().__init__()
        self.observer: RangeObserver | None = None
        self.quantizer: ActivationQuantizer | None = None
        self.elements = 0  # per sample (axis 0 is the batch), as last observed

    def forward(self, x: Tensor) -> Tensor:
        if self.observer is not None:
            self.observer.observe(x)
            self.elements = x[0].numel() if x.ndim else 1
        return x if self.quantizer is None else self.quantizer(x)


@torch.no_grad()
def measure_activation_sensitivity(graph: OnnxGraphModule, plan: QuantPlan, config: QuantConfig,
                                   errors_of: FloatOutputs, tensors: Sequence[str],
                                   widths: Sequence[int] = DEFAULT_WIDTHS,
                                   progress: SensitivityProgress | None = None) -> list[ActivationSensitivity]:
    """Per activation tensor of ``tensors`` (keys of ``plan.activations``) and width: the output error with
    only that tensor quantized, against ``errors_of``. ``graph`` must be the plain lowered model; it is left
    as it was found."""
    probes = {t: _Probe() for t in tensors}
    graph.set_tensor_modules(dict(probes))
    rows = []
    try:
        for i, probe in enumerate(probes.values()):
            probe.observer = RangeObserver(config.seed + i)
        for batch in errors_of.batches:  # one float pass observes every tensor's range
            graph(*batch)
        for done, (tensor, probe) in enumerate(probes.items(), 1):
            observer, probe.observer = probe.observer, None
            spec = plan.activations[tensor]
            errors = {}
            for bits in widths:
                quantizer = ActivationQuantizer(bits, spec.nonnegative, config.act_init, config.lp_norm,
                                                seed=config.seed, signed=spec.signed, symmetric=spec.symmetric)
                quantizer.observer = observer  # read, not consumed: every width starts from the same range
                quantizer.finish_observing()
                probe.quantizer = quantizer.to(errors_of.batches[0][0].device)
                try:
                    errors[bits] = errors_of.error()
                finally:
                    probe.quantizer = None
            consumers = [w.node for w in plan.weights.values() if w.input == tensor]
            rows.append(ActivationSensitivity(tensor, consumers, probe.elements, errors))
            if progress is not None:
                progress(done, len(probes), tensor)
    finally:
        graph.set_tensor_modules({})
    return rows
