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
  it costs ResNet-20 1.6 points of RTN W4A4 accuracy. Both residual rules are the target's
  (``quantized_residuals``): off for OpenVINO, which runs that conv in int8 without it and does not
  round to it when it is there (:mod:`qdrop_onnx.targets.openvino`).
- Where the target fuses a conv only with a quantizer on its output (ONNX Runtime: DQ -> Conv -> Q), the
  output of every quantized Conv/ConvTranspose (or of the Relu/Clip right after it) that nothing above
  quantizes, at the target's ``output_bits`` (8): before HardSwish, HardSigmoid, GELU, pooling or Concat,
  those convs ran in float (a MobileNetV3-style net: 3 of 9 on integers). A graph output too, unless
  ``float_outputs``: the model's output is then that quantizer's dequantized value.
- Activation x activation MatMuls (attention's Q.K^T and softmax.V): both inputs at ``a_bits``.
- Embedding tables (Gather from a constant float table by run-time ids) per row at ``embedding_bits``
  (default 8, the E8 of the QDrop paper's BERT setting), round to nearest: they are not learned (a
  calibration set touches a small part of a 30k-row vocabulary).
- Bias of Conv/Gemm/ConvTranspose becomes int32 (scale = input scale x weight scale) so runtimes can fuse
  integer kernels, where the target wants it (TensorRT keeps biases float).
- Activation grids as the target's profile says (qdrop_onnx.targets): for ONNX Runtime unsigned, with zero
  point 0 for tensors that are provably non-negative; for TensorRT signed and symmetric everywhere.
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qdrop_onnx.graph.lower import OnnxGraphModule
from qdrop_onnx.quant.config import ConfigError, LayerRule, QuantConfig
from qdrop_onnx.targets import get_target

log = logging.getLogger("qdrop_onnx")
# Ops whose bias becomes int32 at input scale x weight scale. ConvTranspose too (measured, ORT 1.32): with its
# float bias, ORT_ENABLE_BASIC computed a 4-bit-weight ConvTranspose 0.004 away from the exact result (0.35 %
# of its range; exact with optimisations disabled), with the int32 bias exactly.
INT32_BIAS_OPS = ("Conv", "Gemm", "ConvTranspose")


@dataclass(frozen=True)
class WeightSpec:
    node: str
    op_type: str
    bits: int
    symmetric: bool
    channel_axis: int
    input: str
    quantize_bias: bool
    rule: str | None = None  # the per-layer rule(s) that set this layer (LayerRule.source), if any
    # What set ``bits`` when not ``--w`` (a rule's source, or the first/last layer setting): mixed precision
    # allocates only the layers where this is None.
    width_from: str | None = None
    a_width_from: str | None = None  # the same for the width of its input activation (``--a``: None)


@dataclass(frozen=True)
class ActivationSpec:
    """One activation quantizer: ``signed`` grid (INT8 container) or unsigned; ``symmetric``: zero point 0
    whatever the range (else 0 only where ``nonnegative``)."""

    tensor: str
    bits: int
    nonnegative: bool
    reason: str
    signed: bool = False
    symmetric: bool = False


@dataclass(frozen=True)
class TableSpec:
    """An embedding table (Gather on a constant): quantized per row, symmetric, round to nearest."""

    node: str
    bits: int
    shape: tuple[int, ...]


@dataclass
class QuantPlan:
    weights: dict[str, WeightSpec] = field(default_factory=dict)
    tables: dict[str, TableSpec] = field(default_factory=dict)
    activations: dict[str, ActivationSpec] = field(default_factory=dict)
    first: str | None = None
    last: str | None = None
    excluded: list[str] = field(default_factory=list)


def _const_nonneg(value: np.ndarray | None) -> bool:
    return value is not None and bool(np.all(np.asarray(value) >= 0))


def nonnegative_tensors(graph: OnnxGraphModule) -> set[str]:
    """Tensors that cannot hold a negative value, by forward propagation of each op's ``nonneg`` trait."""
    nonneg: set[str] = set()
    for ln in graph.nodes:
        signs = [None if not t else (_const_nonneg(graph.constants[t]) if t in graph.constants else t in nonneg)
                 for t in ln.node.inputs]
        if ln.traits.nonneg(signs):
            nonneg.update(t for t in ln.node.outputs if t)
    return nonneg


def resolve_layer_rules(nodes: list[str], rules: list[LayerRule]) -> dict[str, dict[str, Any]]:
    """Node name -> the settings the per-layer ``rules`` give it (``source``: the rules that did;
    ``<setting>_source``: the one whose value stands), in
    order: where two rules set one setting of a node differently, the later wins, named in one warning per
    pair of rules. A rule that matches no weighted node is an error."""
    resolved: dict[str, dict[str, Any]] = {}
    setter: dict[tuple[str, str], LayerRule] = {}
    clashes: dict[tuple[str, str], list[str]] = {}
    for rule in rules:
        matched = [n for n in nodes if n == rule.pattern or fnmatch.fnmatchcase(n, rule.pattern)]
        if not matched:
            raise ConfigError(f"{rule.source or rule.pattern}: no weighted node matches {rule.pattern!r} "
                              "(see `qdrop-onnx inspect`)")
        for node in matched:
            settings = resolved.setdefault(node, {})
            for key in ("w_bits", "a_bits", "symmetric", "exclude"):
                value = getattr(rule, key)
                if value is None:
                    continue
                earlier = setter.get((node, key))
                if earlier is not None and settings[key] != value:
                    clashes.setdefault((earlier.source or earlier.pattern, rule.source or rule.pattern),
                                       []).append(node)
                settings[key] = value
                settings[f"{key}_source"] = rule.source or rule.pattern
                setter[(node, key)] = rule
            sources = settings.get("source")
            label = rule.source or rule.pattern
            if not sources or label not in sources.split("; "):
                settings["source"] = label if not sources else f"{sources}; {label}"
    for (first, later), where in clashes.items():
        shown = ", ".join(sorted(set(where))[:3]) + (", ..." if len(set(where)) > 3 else "")
        log.warning("%s and %s disagree on %d node(s) (%s): the later one, %s, wins", first, later,
                    len(set(where)), shown, later)
    return resolved


def default_weight_symmetric(config: QuantConfig, bits: int) -> bool:
    """Whether a ``bits``-wide weight grid is symmetric when no rule says: 8-bit layers that may fuse into
    integer kernels need symmetric weights (equal zero points), whatever ``--weight-asymmetric`` asks."""
    return (not config.weight_asymmetric) or bits == 8


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
    overrides = resolve_layer_rules([ln.name for ln in weighted], config.layers)
    excluded = list(config.exclude) + [ln.name for ln in weighted if ln.name not in config.exclude
                                       and overrides.get(ln.name, {}).get("exclude")]
    plan = QuantPlan(first=weighted[0].name, last=weighted[-1].name, excluded=excluded)
    target = get_target(config.target)
    nonneg = nonnegative_tensors(graph)

    act_bits: dict[str, int] = {}
    reasons: dict[str, str] = {}
    for ln in weighted:
        if ln.name in excluded:
            continue
        edge = ln.name in (plan.first, plan.last) and not config.quantize_first_last
        rule = overrides.get(ln.name, {})
        bits = rule.get("w_bits", config.first_last_bits if edge else config.w_bits)
        edge_label = f"{'first' if ln.name == plan.first else 'last'} layer (--first-last-bits)" if edge else None
        width_from = rule["w_bits_source"] if "w_bits" in rule else edge_label
        a_width_from = rule["a_bits_source"] if "a_bits" in rule else edge_label
        data_input = ln.inputs[0]
        a_bits = rule.get("a_bits", config.first_last_bits if edge else config.a_bits)
        act_bits[data_input] = max(act_bits.get(data_input, 0), a_bits)
        reasons.setdefault(data_input, f"input of {ln.name}")
        module = ln.module
        has_bias = getattr(module, "bias", None) is not None and module.bias.ndim == 1
        symmetric = rule.get("symmetric", default_weight_symmetric(config, bits))
        plan.weights[ln.name] = WeightSpec(
            node=ln.name, op_type=ln.node.op_type, bits=bits, symmetric=symmetric, channel_axis=module.channel_axis,
            input=data_input, quantize_bias=target.int32_bias and has_bias and ln.node.op_type in INT32_BIAS_OPS,
            rule=rule.get("source"), width_from=width_from, a_width_from=a_width_from)

    consumers: dict[str, list[str]] = {}
    for ln in graph.nodes:
        for t in ln.inputs:
            consumers.setdefault(t, []).append(ln)
    outputs = set(graph.output_names)
    quantized_ops = {name for name in plan.weights}
    producer = {t: ln for ln in graph.nodes for t in ln.node.outputs if t}
    side = graph.side_tensors()
    for ln in graph.nodes if target.quantized_residuals else ():
        # Adding a side tensor (an attention mask to the scores) is masking, not a residual connection.
        if ln.node.op_type != "Add" or len(ln.inputs) != 2 or any(t in side for t in ln.inputs):
            continue
        branch = False  # a residual Add adds a weighted branch to a skip path
        for t in ln.inputs:
            src = producer.get(t)
            # Look through one pointwise activation: ORT fuses DQ -> Conv -> Relu -> Q as well.
            if src is not None and src.traits.pointwise and src.inputs:
                src = producer.get(src.inputs[0])
            if src is not None and src.name in quantized_ops:
                branch = True
                if t not in act_bits and t not in outputs:
                    act_bits[t] = max(config.residual_bits, config.a_bits)
                    reasons[t] = f"output of {src.name} into residual add {ln.name}"
        out = ln.node.outputs[0]
        users = consumers.get(out, [])
        # Not a residual Add when no input comes from a weighted op (the sum of word and token-type embeddings).
        if not branch or out in outputs or out in act_bits or (users and all(u.traits.pointwise for u in users)):
            continue
        # A residual stream that feeds only LayerNormalization (post-LN transformers) stays float: the
        # runtime normalises in float anyway, and its outlier channels (ranges of +-170 in MiniLM) cost
        # 8-bit grids most of the accuracy (measured: mean pooled cosine 0.955 with them, see the note).
        if users and all(u.traits.normalizes for u in users):
            continue
        act_bits[out] = config.a_bits
        reasons[out] = f"residual add {ln.name}"

    if target.output_bits is not None:
        for ln in graph.nodes:
            if ln.name not in plan.weights or ln.node.op_type not in target.output_quantized_ops:
                continue
            out = ln.node.outputs[0]
            users = consumers.get(out, [])
            if len(users) == 1 and users[0].node.op_type in target.fused_before_q:
                out = users[0].node.outputs[0]
            # A graph output too (a detector's map): export writes its Q -> DQ into the output, so the conv
            # that writes it fuses like any other; --float-outputs keeps it float.
            if out in act_bits or out in side or (out in outputs and config.float_outputs):
                continue
            act_bits[out] = target.output_bits
            reasons[out] = f"output of {ln.name} (so the runtime fuses it into an integer kernel)"

    for ln in graph.nodes:
        # Activation x activation products (attention's Q.K^T and softmax.V): the runtime's integer MatMul
        # reads both operands quantized (the softmax side is non-negative, so it gets an unsigned grid).
        operands = [ln.node.input(i) for i in ln.traits.integer_inputs]
        if ln.weighted or not operands or not all(t in ln.inputs and t not in side for t in operands):
            continue
        for t in operands:
            act_bits[t] = max(act_bits.get(t, 0), config.a_bits)
            reasons.setdefault(t, f"input of {ln.name} (activation x activation)")

    for ln in graph.nodes:
        if ln.lookup:
            table = ln.module.table
            plan.tables[ln.name] = TableSpec(ln.name, config.embedding_bits, tuple(table.shape))

    for tensor, bits in act_bits.items():
        if tensor in side:  # masks and position ids keep their values (and dtype)
            continue
        plan.activations[tensor] = ActivationSpec(tensor, bits, tensor in nonneg, reasons[tensor],
                                                  signed=target.act_signed, symmetric=target.act_symmetric)
    return plan
