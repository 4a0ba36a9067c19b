"""Where quantizers go (the deployment view: what integer hardware needs).

- Weights of every weighted op (Conv, ConvTranspose, Gemm, MatMul with a constant) per output channel,
  ``w_bits``; the first and last weighted layers keep ``first_last_bits`` unless ``quantize_first_last``.
- Activations: every tensor that feeds a quantized weighted op gets one quantizer shared by all its
  consumers (8-bit when it feeds the first or last layer); plus the outputs of residual Adds, except where
  the Add only feeds a pointwise activation (then the activation's output is what gets quantized); plus
  the output of a weighted op (or of the activation right after it) that feeds a residual Add. The
  reference QDrop code leaves that last one in float, but then no runtime can run that conv (or the Add)
  on integers: ONNX Runtime only fuses DQ -> Conv -> Q, so without it ResNet-20 runs 9 of its 19 convs in
  float. It uses ``residual_bits`` (default 8, as integer accelerators keep the residual path): at 4 bits
  it costs ResNet-20 1.6 points of RTN W4A4 accuracy.
- Bias of Conv/Gemm becomes int32 (scale = input scale x weight scale) so runtimes can fuse integer kernels.
- Unsigned grids (zero point 0) for tensors that are provably non-negative.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from qdrop_onnx.graph.lower import OnnxGraphModule
from qdrop_onnx.graph.partition import POINTWISE_ACTIVATIONS
from qdrop_onnx.quant.config import ConfigError, QuantConfig


@dataclass(frozen=True)
class WeightSpec:
    node: str
    op_type: str
    bits: int
    symmetric: bool
    channel_axis: int
    input: str
    quantize_bias: bool


@dataclass(frozen=True)
class ActivationSpec:
    tensor: str
    bits: int
    nonnegative: bool
    reason: str


@dataclass
class QuantPlan:
    weights: dict[str, WeightSpec] = field(default_factory=dict)
    activations: dict[str, ActivationSpec] = field(default_factory=dict)
    first: str | None = None
    last: str | None = None
    excluded: list[str] = field(default_factory=list)


# Ops whose output is non-negative whatever their input, and ops that keep non-negativity of their inputs.
_NONNEG_OUT = {"Relu", "Sigmoid", "Softmax", "Abs", "Exp", "Sqrt", "HardSigmoid", "Shape"}
_NONNEG_KEEP = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Reshape", "Flatten", "Transpose",
                "Squeeze", "Unsqueeze", "Slice", "Gather", "Concat", "Resize", "Identity", "Dropout", "Split",
                "Mul", "Add", "Div", "Tile", "Expand", "Min", "Sum", "ReduceMean", "ReduceMax", "ReduceMin",
                "ReduceSum"}


def _const_nonneg(value: np.ndarray | None) -> bool:
    return value is not None and bool(np.all(np.asarray(value) >= 0))


def nonnegative_tensors(graph: OnnxGraphModule) -> set[str]:
    """Tensors that cannot hold a negative value, by forward propagation over the graph."""
    nonneg: set[str] = set()
    for ln in graph.nodes:
        op, node = ln.node.op_type, ln.node
        consts_ok = all(_const_nonneg(graph.constants.get(t)) for t in node.inputs if t and t in graph.constants)
        inputs_ok = all(t in nonneg for t in ln.inputs)
        if op == "Clip":
            ok = len(node.inputs) > 1 and _const_nonneg(graph.constants.get(node.inputs[1]))
        elif op == "Max":
            ok = any(t in nonneg for t in ln.inputs) or any(
                _const_nonneg(graph.constants.get(t)) for t in node.inputs if t in graph.constants)
        elif op == "Pad":
            value = graph.constants.get(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
            ok = inputs_ok and (value is None or _const_nonneg(value))
        elif op == "Gather":
            ok = node.inputs[0] in nonneg or _const_nonneg(graph.constants.get(node.inputs[0]))
        else:
            ok = op in _NONNEG_OUT or (op in _NONNEG_KEEP and inputs_ok and consts_ok)
        if ok:
            nonneg.update(t for t in node.outputs if t)
    return nonneg


def plan_quantization(graph: OnnxGraphModule, config: QuantConfig) -> QuantPlan:
    """Decide every weight and activation quantizer for ``graph`` under ``config``."""
    weighted = [ln for ln in graph.nodes if ln.weighted]
    if not weighted:
        raise ConfigError("the model has no weighted layer (Conv, ConvTranspose, Gemm, MatMul with a constant "
                          "operand): nothing to quantize")
    names = {ln.name for ln in weighted}
    unknown = [n for n in config.exclude if n not in names]
    if unknown:
        raise ConfigError(f"--exclude: no weighted node named {unknown[0]!r} (see `qdrop-onnx inspect`)")
    plan = QuantPlan(first=weighted[0].name, last=weighted[-1].name, excluded=list(config.exclude))
    nonneg = nonnegative_tensors(graph)

    act_bits: dict[str, int] = {}
    reasons: dict[str, str] = {}
    for ln in weighted:
        if ln.name in config.exclude:
            continue
        edge = ln.name in (plan.first, plan.last) and not config.quantize_first_last
        bits = config.first_last_bits if edge else config.w_bits
        data_input = ln.inputs[0]
        a_bits = config.first_last_bits if edge else config.a_bits
        act_bits[data_input] = max(act_bits.get(data_input, 0), a_bits)
        reasons.setdefault(data_input, f"input of {ln.name}")
        module = ln.module
        has_bias = getattr(module, "bias", None) is not None and module.bias.ndim == 1
        plan.weights[ln.name] = WeightSpec(
            node=ln.name, op_type=ln.node.op_type, bits=bits,
            # 8-bit layers that may fuse into integer kernels need symmetric weights (equal zero points).
            symmetric=(not config.weight_asymmetric) or bits == 8, channel_axis=module.channel_axis,
            input=data_input, quantize_bias=has_bias and ln.node.op_type in ("Conv", "Gemm"))

    consumers: dict[str, list[str]] = {}
    for ln in graph.nodes:
        for t in ln.inputs:
            consumers.setdefault(t, []).append(ln.node.op_type)
    outputs = set(graph.output_names)
    quantized_ops = {name for name in plan.weights}
    producer = {t: ln for ln in graph.nodes for t in ln.node.outputs if t}
    side = graph.side_tensors()
    for ln in graph.nodes:
        # Adding a side tensor (an attention mask to the scores) is masking, not a residual connection.
        if ln.node.op_type != "Add" or len(ln.inputs) != 2 or any(t in side for t in ln.inputs):
            continue
        for t in ln.inputs:
            src = producer.get(t)
            # Look through one pointwise activation: ORT fuses DQ -> Conv -> Relu -> Q as well.
            if src is not None and src.node.op_type in POINTWISE_ACTIVATIONS and src.inputs:
                src = producer.get(src.inputs[0])
            if src is not None and src.name in quantized_ops and t not in act_bits and t not in outputs:
                act_bits[t] = max(config.residual_bits, config.a_bits)
                reasons[t] = f"output of {src.name} into residual add {ln.name}"
        out = ln.node.outputs[0]
        users = consumers.get(out, [])
        if out in outputs or out in act_bits or (users and all(u in POINTWISE_ACTIVATIONS for u in users)):
            continue
        # A residual stream that feeds only LayerNormalization (post-LN transformers) stays float: the
        # runtime normalises in float anyway, and its outlier channels (ranges of +-170 in MiniLM) cost
        # 8-bit grids most of the accuracy (measured: mean pooled cosine 0.955 with them, see the note).
        if users and all(u == "LayerNormalization" for u in users):
            continue
        act_bits[out] = config.a_bits
        reasons[out] = f"residual add {ln.name}"

    for tensor, bits in act_bits.items():
        if tensor in side:  # masks and position ids keep their values (and dtype)
            continue
        plan.activations[tensor] = ActivationSpec(tensor, bits, tensor in nonneg, reasons[tensor])
    return plan
