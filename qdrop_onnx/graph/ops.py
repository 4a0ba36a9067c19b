"""ONNX operator → torch module registry: one small lowering function per op type.

Each lowering function receives the ONNX node and a :class:`LoweringContext` (constant values, opset) and
returns a :class:`Lowered`: a torch module plus the names of the tensors it takes at run time, in order.
Inputs that are constant at build time (shapes, axes, pads, clip bounds) are read once here and kept as
Python values or buffers, so the forward pass does no ONNX bookkeeping. Semantics follow the ONNX spec
for opsets 13–21 as ONNX Runtime implements them; anything outside what a function supports raises
:class:`Unsupported` with a short key (e.g. ``Resize(mode=cubic)``) that the builder collects and reports
once for the whole model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import helper
from torch import Tensor, nn

# --------------------------------------------------------------------------------------------- plumbing


@dataclass(frozen=True)
class OnnxNode:
    """The parts of an ONNX NodeProto the lowering needs, with attributes decoded to Python values."""

    name: str
    op_type: str
    domain: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_proto(cls, proto: onnx.NodeProto) -> OnnxNode:
        attrs = {a.name: helper.get_attribute_value(a) for a in proto.attribute}
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs.items()}
        return cls(proto.name, proto.op_type, proto.domain, tuple(proto.input), tuple(proto.output), attrs)

    def attr(self, name: str, default: Any = None) -> Any:
        return self.attrs.get(name, default)

    def input(self, index: int) -> str:
        """The name of input ``index``, or '' when it is absent (ONNX optional inputs)."""
        return self.inputs[index] if index < len(self.inputs) else ""


class Unsupported(Exception):
    """Raised by a lowering function; ``key`` names what is unsupported, e.g. ``Resize(mode=cubic)``."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


class LoweringContext:
    """Build-time facts about the graph: constant tensors (initializers and folded nodes) and the opset."""

    def __init__(self, constants: dict[str, np.ndarray], opset: int, used: set[str] | None = None) -> None:
        self.constants = constants
        self.opset = opset
        self.used = used if used is not None else set()

    def const(self, name: str) -> np.ndarray | None:
        return self.constants.get(name) if name else None

    def is_const(self, name: str) -> bool:
        return bool(name) and name in self.constants

    def const_ints(self, node: OnnxNode, index: int, what: str) -> list[int] | None:
        """Input ``index`` as a list of ints (None when absent); it must be a build-time constant."""
        name = node.input(index)
        if not name:
            return None
        value = self.const(name)
        if value is None:
            raise Unsupported(f"{node.op_type}(dynamic {what})")
        return [int(v) for v in np.asarray(value).reshape(-1)]


@dataclass
class Lowered:
    """A lowered node: ``module(*[tensors named by inputs])`` computes the node's outputs."""

    module: nn.Module
    inputs: list[str]
    multi_output: bool = False


# ------------------------------------------------------------------------------------------ traits

# Per input position: is that input provably non-negative (a constant >= 0, or a tensor shown to be)?
# None where the optional input is absent.
InputSigns = Sequence[bool | None]
NonnegRule = Callable[[InputSigns], bool]


def never(signs: InputSigns) -> bool:
    return False


def always(signs: InputSigns) -> bool:
    return True


def all_inputs(signs: InputSigns) -> bool:
    return all(s for s in signs if s is not None)


def any_input(signs: InputSigns) -> bool:
    return any(bool(s) for s in signs)


def inputs_at(*positions: int) -> NonnegRule:
    """Non-negative when the inputs at ``positions`` are (the data operands; shapes, axes, pads do not count)."""

    def rule(signs: InputSigns) -> bool:
        return all(i < len(signs) and bool(signs[i]) for i in positions)

    return rule


@dataclass(frozen=True)
class OpTraits:
    """What the stages after lowering (placement, partition, inspect) need to know about an op.

    ``pointwise``: an elementwise activation of one tensor. A weightless region made of them closes the block
    before it, and placement looks through one (ONNX Runtime fuses DQ -> Conv -> Relu -> Q as one kernel).
    ``nonneg``: whether the output is provably >= 0, given which inputs are (then it gets an unsigned grid).
    ``shape_only``: reads its input's dims, never its values (Shape): its output is a side tensor.
    ``normalizes``: re-normalises its input in float (LayerNormalization): a residual stream that feeds only
    such ops is left unquantized.
    ``integer_inputs``: run-time inputs that the runtime's integer kernel of this op reads quantized; each
    gets an activation quantizer (MatMul of two activations: Q.K^T and softmax.V in attention).
    ``keeps_grid``: every output value is one of input 0's values (a permutation or selection: layout ops,
    slicing), so values on a quantizer's grid stay on it and re-quantizing them on that grid is exact.
    """

    pointwise: bool = False
    nonneg: NonnegRule = never
    shape_only: bool = False
    normalizes: bool = False
    integer_inputs: tuple[int, ...] = ()
    keeps_grid: bool = False


PLAIN = OpTraits()
KEEPS_SIGN = OpTraits(nonneg=all_inputs)  # non-negative in, non-negative out (every operand)
MOVES_DATA = OpTraits(nonneg=inputs_at(0))  # moves or selects values of input 0 (layout, pooling, slicing)
PERMUTES = OpTraits(nonneg=inputs_at(0), keeps_grid=True)  # outputs only values of input 0 (none made anew)
NONNEG = OpTraits(nonneg=always)
ACTIVATION = OpTraits(pointwise=True)
NONNEG_ACTIVATION = OpTraits(pointwise=True, nonneg=always)

LowerFn = Callable[[OnnxNode, LoweringContext], Lowered]
# Keyed by (domain, op type); the default domain is "" (ONNX also spells it "ai.onnx"), so a contrib op such
# as ("com.microsoft", "FusedMatMul") can be registered beside the standard one of the same name.
REGISTRY: dict[tuple[str, str], LowerFn] = {}
TRAITS: dict[tuple[str, str], OpTraits] = {}
DEFAULT_DOMAINS = ("", "ai.onnx")


def register(*op_types: str, domain: str = "",
             traits: OpTraits | Mapping[str, OpTraits] = PLAIN) -> Callable[[LowerFn], LowerFn]:
    """Register a lowering function for one or more op types of ``domain`` (default: the ONNX domain), with
    the op's :class:`OpTraits` (one for all of them, or one per op type; unnamed ones get ``PLAIN``)."""

    def wrap(fn: LowerFn) -> LowerFn:
        for op_type in op_types:
            REGISTRY[(domain, op_type)] = fn
            TRAITS[(domain, op_type)] = traits if isinstance(traits, OpTraits) else traits.get(op_type, PLAIN)
        return fn

    return wrap


def _key(domain: str, op_type: str) -> tuple[str, str]:
    return ("" if domain in DEFAULT_DOMAINS else domain, op_type)


def lowering_for(domain: str, op_type: str) -> LowerFn | None:
    """The registered lowering of ``op_type`` in ``domain``, or None."""
    return REGISTRY.get(_key(domain, op_type))


def traits_for(domain: str, op_type: str) -> OpTraits:
    """The registered traits of ``op_type`` in ``domain`` (``PLAIN`` for an unknown op)."""
    return TRAITS.get(_key(domain, op_type), PLAIN)


def _tensor(value: np.ndarray) -> Tensor:
    return torch.from_numpy(np.array(value, copy=True))


class OnnxOp(nn.Module):
    """Base for ops whose tensor operands may each be a constant (kept as a buffer) or a run-time input."""

    def bind(self, node: OnnxNode, ctx: LoweringContext, positions: Sequence[int] | None = None) -> list[str]:
        """Record where each operand comes from; returns the run-time input names in call order."""
        positions = range(len(node.inputs)) if positions is None else positions
        self._slots: list[tuple[str, Any]] = []
        runtime: list[str] = []
        for i in positions:
            name = node.input(i)
            if not name:
                self._slots.append(("none", None))
            elif ctx.is_const(name):
                self.register_buffer(f"const{i}", _tensor(ctx.constants[name]))
                self._slots.append(("const", f"const{i}"))
            else:
                self._slots.append(("arg", len(runtime)))
                runtime.append(name)
        return runtime

    def operands(self, args: Sequence[Tensor]) -> list[Tensor | None]:
        out: list[Tensor | None] = []
        for kind, ref in self._slots:
            if kind == "arg":
                out.append(args[ref])
            elif kind == "const":
                out.append(getattr(self, ref))
            else:
                out.append(None)
        return out


class Apply(OnnxOp):
    """``fn(*operands)``: elementwise and other ops whose attributes are plain Python values."""

    def __init__(self, op_type: str, fn: Callable[..., Tensor]) -> None:
        super().__init__()
        self.op_type = op_type
        self.fn = fn

    def forward(self, *args: Tensor) -> Tensor:
        return self.fn(*self.operands(args))

    def extra_repr(self) -> str:
        return self.op_type


def _apply(node: OnnxNode, ctx: LoweringContext, fn: Callable[..., Tensor],
           positions: Sequence[int] | None = None) -> Lowered:
    module = Apply(node.op_type, fn)
    return Lowered(module, module.bind(node, ctx, positions))


# ------------------------------------------------------------------------------------ weighted layers


class WeightedOp(nn.Module):
    """An op with a learnable weight (Conv, ConvTranspose, Gemm, MatMul with a constant operand).

    ``weight`` and ``bias`` are nn.Parameters; ``channel_axis`` is the output-channel axis of ``weight``
    (the per-channel quantization axis). ``weight_quantizer``, when set, maps the float weight to the
    weight actually used (fake quantization); by default the float weight is used as is.
    """

    channel_axis: int

    def __init__(self, weight: np.ndarray, bias: np.ndarray | None) -> None:
        super().__init__()
        self.weight = nn.Parameter(_tensor(weight).float())
        self.bias = nn.Parameter(_tensor(bias).float()) if bias is not None else None
        self.weight_quantizer: nn.Module | None = None
        self.bias_quantizer: nn.Module | None = None

    def effective_weight(self) -> Tensor:
        if self.weight_quantizer is None:
            return self.weight
        return self.weight_quantizer(self.weight)

    def effective_bias(self) -> Tensor | None:
        if self.bias is None or self.bias_quantizer is None:
            return self.bias
        return self.bias_quantizer(self.bias)


def _conv_padding(pads: list[int], spatial: int) -> tuple[tuple[int, ...] | None, tuple[int, ...]]:
    """ONNX pads [b1..bn, e1..en] → (explicit F.pad list or None, symmetric padding for the conv)."""
    begins, ends = pads[:spatial], pads[spatial:]
    if begins == ends:
        return None, tuple(begins)
    torch_pads: list[int] = []
    for b, e in zip(reversed(begins), reversed(ends), strict=True):
        torch_pads += [b, e]
    return tuple(torch_pads), (0,) * spatial


def _same_pads(in_sizes: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
               dilations: Sequence[int], upper: bool) -> list[int]:
    begins, ends = [], []
    for size, k, s, d in zip(in_sizes, kernel, strides, dilations, strict=True):
        out = -(-size // s)
        total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
        small, big = total // 2, total - total // 2
        begins.append(small if upper else big)
        ends.append(big if upper else small)
    return begins + ends


class _ConvBase(WeightedOp):
    """Geometry shared by Conv and ConvTranspose (kernel from the weight, ONNX attribute defaults)."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray | None, node: OnnxNode) -> None:
        super().__init__(weight, bias)
        spatial = weight.ndim - 2
        self.kernel = list(weight.shape[2:])
        self.strides = tuple(node.attr("strides", [1] * spatial))
        self.dilations = tuple(node.attr("dilations", [1] * spatial))
        self.groups = int(node.attr("group", 1))
        self.auto_pad = node.attr("auto_pad", "NOTSET")


class Conv(_ConvBase):
    def __init__(self, weight: np.ndarray, bias: np.ndarray | None, node: OnnxNode) -> None:
        super().__init__(weight, bias, node)
        self.channel_axis = 0
        spatial = weight.ndim - 2
        self.pre_pad, self.padding = _conv_padding(list(node.attr("pads", [0] * 2 * spatial)), spatial)
        self.conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[spatial]

    def forward(self, x: Tensor) -> Tensor:
        padding = self.padding
        if self.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            pads = _same_pads(x.shape[2:], self.kernel, self.strides, self.dilations,
                              self.auto_pad == "SAME_UPPER")
            pre_pad, padding = _conv_padding(pads, len(self.kernel))
            if pre_pad is not None:
                x = F.pad(x, pre_pad)
        elif self.pre_pad is not None:
            x = F.pad(x, self.pre_pad)
        return self.conv(x, self.effective_weight(), self.effective_bias(), self.strides, padding,
                         self.dilations, self.groups)


class ConvTranspose(_ConvBase):
    def __init__(self, weight: np.ndarray, bias: np.ndarray | None, node: OnnxNode) -> None:
        super().__init__(weight, bias, node)
        self.channel_axis = 1
        spatial = weight.ndim - 2
        self.output_padding = list(node.attr("output_padding", [0] * spatial))
        self.output_shape = node.attr("output_shape")
        self.pads = list(node.attr("pads", [0] * 2 * spatial))
        self.conv = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[spatial]

    def _pads(self, in_sizes: Sequence[int]) -> list[int]:
        spatial = len(self.kernel)
        if self.output_shape is None and self.auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
            return self.pads
        targets = (list(self.output_shape)[-spatial:] if self.output_shape is not None
                   else [size * s for size, s in zip(in_sizes, self.strides, strict=True)])
        begins, ends = [], []
        for i in range(spatial):
            full = (self.strides[i] * (in_sizes[i] - 1) + self.output_padding[i]
                    + (self.kernel[i] - 1) * self.dilations[i] + 1)
            total = full - targets[i]
            # ONNX spec: SAME_UPPER (and NOTSET with output_shape) put the extra pixel at the start.
            if self.auto_pad == "SAME_LOWER":
                begins.append(total // 2)
                ends.append(total - total // 2)
            else:
                begins.append(total - total // 2)
                ends.append(total // 2)
        return begins + ends

    def forward(self, x: Tensor) -> Tensor:
        spatial = len(self.kernel)
        pads = self._pads(x.shape[2:])
        y = self.conv(x, self.effective_weight(), self.effective_bias(), self.strides, 0, self.output_padding,
                      self.groups, self.dilations)
        if any(pads):
            index = [slice(None), slice(None)]
            for i in range(spatial):
                index.append(slice(pads[i], y.shape[2 + i] - pads[spatial + i]))
            y = y[tuple(index)]
        return y


class Gemm(WeightedOp):
    """Y = alpha * A' @ B' + beta * C with a constant B (the weight)."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray | None, node: OnnxNode) -> None:
        super().__init__(weight, bias)
        self.trans_a = bool(node.attr("transA", 0))
        self.trans_b = bool(node.attr("transB", 0))
        self.alpha = float(node.attr("alpha", 1.0))
        self.beta = float(node.attr("beta", 1.0))
        self.channel_axis = 0 if self.trans_b else 1

    def forward(self, a: Tensor) -> Tensor:
        w = self.effective_weight()
        if self.trans_a:
            a = a.t()
        y = a @ (w.t() if self.trans_b else w)
        if self.alpha != 1.0:
            y = y * self.alpha
        bias = self.effective_bias()
        if bias is not None:
            y = y + (bias if self.beta == 1.0 else bias * self.beta)
        return y


class MatMulConst(WeightedOp):
    """Y = X @ W with a constant W (the weight); output channels are W's last axis."""

    def __init__(self, weight: np.ndarray) -> None:
        super().__init__(weight, None)
        self.channel_axis = weight.ndim - 1

    def forward(self, x: Tensor) -> Tensor:
        return torch.matmul(x, self.effective_weight())


@register("Conv")
def lower_conv(node: OnnxNode, ctx: LoweringContext) -> Lowered:
    weight = ctx.const(node.input(1))
    if weight is None:
        raise Unsupported("Conv(dynamic weight)")
    bias = ctx.const(node.input(2))
    if node.input(2) and bias is None:
        raise Unsupported("Conv(dynamic bias)")
    if weight.ndim not in (3, 4, 5):
        raise Unsupported(f"Conv({weight.ndim - 2}D)")
    return Lowered(Conv(weight, bias, node), [node.inputs[0]])


@register("ConvTranspose")
def lower_conv_transpose(node: OnnxNode, ctx: LoweringContext) -> Lowered:
    weight = ctx.const(node.input(1))
    bias = ctx.const(node.input(2))
    if weight is None or (node.input(2) and bias is None):
        raise Unsupported("ConvTranspose(dynamic weight)")
    if weight.ndim not in (3, 4, 5):
        raise Unsupported(f"ConvTranspose({weight.ndim - 2}D)")
    return Lowered(ConvTranspose(weight, bias, node), [node.inputs[0]])


def _gemm(a: Tensor, b: Tensor, c: Tensor | None, *, trans_a: bool, trans_b: bool, alpha: float,
          beta: float) -> Tensor:
    y = (a.t() if trans_a else a) @ (b.t() if trans_b else b)
    y = y * alpha if alpha != 1.0 else y
    return y if c is None else y + beta * c


@register("Gemm")
def lower_gemm(node: OnnxNode, ctx: LoweringContext) -> Lowered:
    weight = ctx.const(node.input(1))
    bias = ctx.const(node.input(2))
    if weight is not None and not ctx.is_const(node.input(0)) and (not node.input(2) or bias is not None):
        return Lowered(Gemm(weight, bias, node), [node.inputs[0]])

    def fn(a: Tensor, b: Tensor, c: Tensor | None = None) -> Tensor:
        return _gemm(a, b, c, trans_a=bool(node.attr("transA", 0)), trans_b=bool(node.attr("transB", 0)),
                     alpha=float(node.attr("alpha", 1.0)), beta=float(node.attr("beta", 1.0)))

    return _apply(node, ctx, fn)


@register("MatMul", traits=OpTraits(integer_inputs=(0, 1)))
def lower_matmul(node: OnnxNode, ctx: LoweringContext) -> Lowered:
    weight = ctx.const(node.input(1))
    if weight is not None and weight.ndim >= 2 and not ctx.is_const(node.input(0)) \
            and np.issubdtype(weight.dtype, np.floating):
        return Lowered(MatMulConst(weight), [node.inputs[0]])
    return _apply(node, ctx, torch.matmul)


WEIGHTED_OPS: tuple[type[WeightedOp], ...] = (Conv, ConvTranspose, Gemm, MatMulConst)

# ----------------------------------------------------------------------------------- elementwise ops


def _int_aware_div(a: Tensor, b: Tensor) -> Tensor:
    if a.is_floating_point() or b.is_floating_point():
        return torch.div(a, b)
    return torch.div(a, b, rounding_mode="trunc")  # C++ integer division truncates toward zero


def _pow(a: Tensor, b: Tensor) -> Tensor:
    return torch.pow(a, b).to(a.dtype)  # ONNX Pow keeps the base's type


_BINARY: dict[str, Callable[..., Tensor]] = {
    "Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": _int_aware_div, "Pow": _pow,
    "Equal": torch.eq, "Less": torch.lt, "Greater": torch.gt, "LessOrEqual": torch.le,
    "GreaterOrEqual": torch.ge, "And": torch.logical_and, "Or": torch.logical_or, "Where": torch.where,
}
_UNARY: dict[str, Callable[..., Tensor]] = {
    "Relu": torch.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Erf": torch.erf,
    "Sqrt": torch.sqrt, "Exp": torch.exp, "Log": torch.log, "Neg": torch.neg, "Abs": torch.abs,
    "Reciprocal": torch.reciprocal, "Floor": torch.floor, "Ceil": torch.ceil, "Not": torch.logical_not,
    "Identity": lambda x: x, "IsNaN": torch.isnan,
}


@register(*_BINARY, traits={"Add": KEEPS_SIGN, "Mul": OpTraits(pointwise=True, nonneg=all_inputs),
                         "Div": KEEPS_SIGN, "Where": OpTraits(nonneg=inputs_at(1, 2))})
def lower_binary(node: OnnxNode, ctx: LoweringContext) -> Lowered:
    return _apply(node, ctx, _BINARY[node.op_type])


@register(*_UNARY, traits={"Relu": NONNEG_ACTIVATION, "Sigmoid": NONNEG_ACTIVATION, "Tanh": ACTIVATION,
                        "Erf": ACTIVATION, "Sqrt": NONNEG, "Exp": NONNEG, "Abs": NONNEG, "Identity": MOVES_DATA})
def lower_unary(node: OnnxNode, ctx: LoweringContext) -> Lowered:
    return _apply(node, ctx, _UNARY[node.op_type], positions=[0])


def _variadic(fn: Callable[[Tensor, Tensor], Tensor]) -> Callable[..., Tensor]:
    def reduce(*xs: Tensor) -> Tensor:
        out = xs[0]
        for x in xs[1:]:
            out = fn(out, x)
        return out

    return reduce


@register("Max", "Min", "Sum", traits={"Max": OpTraits(nonneg=any_input), "Min": KEEPS_SIGN, "Sum": KEEPS_SIGN})
def lower_variadic(node: OnnxNode, ctx: LoweringContext) -> Lowered:
    fn = {"Max": torch.maximum, "Min": torch.minimum, "Sum": torch.add}[node.op_type]
    return _apply(node, ctx, _variadic(fn))


@register("Dropout", traits=MOVES_DATA)
def lower_dropout(node: OnnxNode, ctx: LoweringContext) -> Lowered:
    if len(node.outputs) > 1 and node.outputs[1] in ctx.used:
        raise Unsupported("Dropout(mask output)")
    return _apply(node, ctx, lambda x: x, positions=[0])


@register("LeakyRelu", traits=ACTIVATION)
def lower_leaky_relu(node: OnnxNode, ctx: LoweringContext) -> Lowered:
    alpha = float(node.attr("alpha", 0.01))
    return _apply(node, ctx, lambda x: torch.where(x >= 0, x, x * alpha), positions=[0])


@register("PRelu", traits=ACTIVATION)
def lower_prelu(node: OnnxNode, ctx: LoweringContext) -> Lowered:
    return _apply(node, ctx, lambda x, slope: torch.where(x < 0, x * slope, x))


@register("Clip", traits=OpTraits(pointwise=True, nonneg=inputs_at(1)))  # >= 0 when its min is
def lower_clip(node: OnnxNode, ctx: LoweringContext) -> Lowered:
    if ctx.opset < 11:
        lo, hi = node.attr("min"), node.attr("max")
        return _apply(node, ctx, lambda x: torch.clamp(x, lo, hi), positions=[0])
    # Constant bounds on a float tensor (ReLU6 and the like): hardtanh, one fused kernel forward and backward.
    # The maximum/minimum pair splits the gradient at ties, which on CPU costs eq, masked_fill, where and a
    # division per bound each step: ~20 % of an EfficientNet-Lite0 reconstruction step. Integer tensors keep
    # maximum/minimum, which keep their dtype (clamp by a float bound would make them float).
    bounds = clip_bounds(node.inputs, ctx.const)

    def clip(x: Tensor, lo: Tensor | None = None, hi: Tensor | None = None) -> Tensor:
        if bounds is not None and x.is_floating_point():
            return F.hardtanh(x, *bounds)
        if lo is not None:
            x = torch.maximum(x, lo.to(x.dtype))
        if hi is not None:
            x = torch.minimum(x, hi.to(x.dtype))
        return x

    return _apply(node, ctx, clip)


def clip_bounds(inputs: Sequence[str], constant: Callable[[str], np.ndarray | None]) -> tuple[float, float] | None:
    """A Clip's (min, max) when each is absent (-inf, inf) or a one-element constant and min <= max; else None.

    ``inputs``: the Clip's input names (opset >= 11); ``constant``: an input's value when it is known before
    run time, else None. min > max is None too: ONNX gives max everywhere, which only the generic path does.
    Lowering (hardtanh) and export (a Clip folded into its quantizer's grid) both ask this.
    """
    found: list[float] = []
    for index, absent in ((1, -math.inf), (2, math.inf)):
        name = inputs[index] if index < len(inputs) else ""
        if not name:
            found.append(absent)
            continue
        value = constant(name)
        if value is None or np.asarray(value).size != 1:
            return None
        found.append(float(np.asarray(value).reshape(-1)[0]))
    low, high = found
    return (low, high) if low <= high else None


@register("HardSigmoid", traits=NONNEG_ACTIVATION)
def lower_hard_sigmoid(node: OnnxNode, ctx: LoweringContext) -> Lowered:
    alpha, beta = float(node.attr("alpha", 0.2)), float(node.attr("beta", 0.5))
    return _apply(node, ctx, lambda x: torch.clamp(x * alpha + beta, 0.0, 1.0), positions=[0])


@register("HardSwish", traits=ACTIVATION)
def lower_hard_swish(node: OnnxNode, ctx: LoweringContext) -> Lowered:
    return _apply(node, ctx, lambda x: x * torch.clamp(x * (1.0 / 6.0) + 0.5, 0.0, 1.0), positions=[0])


@register("Gelu", traits=ACTIVATION)
def lower_gelu(node: OnnxNode, ctx: LoweringContext) -> Lowered:
    approximate = node.attr("approximate", "none")
    return _apply(node, ctx, lambda x: F.gelu(x, approximate=approximate), positions=[0])


@register("Softmax", "LogSoftmax", traits={"Softmax": NONNEG})
def lower_softmax(node: OnnxNode, ctx: LoweringContext) -> Lowered:
    fn = torch.softmax if node.op_type == "Softmax" else torch.log_softmax
    if ctx.opset >= 13:
        axis = int(node.attr("axis", -1))
        return _apply(node, ctx, lambda x: fn(x, dim=axis), positions=[0])
    axis = int(node.attr("axis", 1))  # opset < 13: coerce to 2D at `axis`

    def coerced(x: Tensor) -> Tensor:
        return fn(x.reshape(*x.shape[:axis], -1).flatten(0, axis - 1) if axis > 0 else x.reshape(1, -1),
                  dim=-1).reshape(x.shape)

    return _apply(node, ctx, coerced, positions=[0])


@register("Cast")
def lower_cast(node: OnnxNode, ctx: LoweringContext) -> Lowered:
    dtype = TORCH_DTYPES.get(int(node.attr("to")))
    if dtype is None:
        raise Unsupported(f"Cast(to={onnx.TensorProto.DataType.Name(int(node.attr('to')))})")
    return _apply(node, ctx, lambda x: x.to(dtype), positions=[0])


TORCH_DTYPES: dict[int, torch.dtype] = {
    onnx.TensorProto.FLOAT: torch.float32, onnx.TensorProto.DOUBLE: torch.float64,
    onnx.TensorProto.FLOAT16: torch.float16, onnx.TensorProto.BFLOAT16: torch.bfloat16,
    onnx.TensorProto.INT64: torch.int64, onnx.TensorProto.INT32: torch.int32,
    onnx.TensorProto.INT16: torch.int16, onnx.TensorProto.INT8: torch.int8,
    onnx.TensorProto.UINT8: torch.uint8, onnx.TensorProto.BOOL: torch.bool,
}

# -------------------------------------------------------------------------------- normalisation ops


@register("BatchNormalization")
def lower_batchnorm(node: OnnxNode, ctx: LoweringContext) -> Lowered:
    if node.attr("training_mode", 0):
        raise Unsupported("BatchNormalization(training_mode=1)")
    eps = float(node.attr("epsilon", 1e-5))

    def bn(x: Tensor, scale: Tensor, bias: Tensor, mean: Tensor, var: Tensor) -> Tensor:
        shape = (1, -1) + (1,) * (x.ndim - 2)
        inv = scale / torch.sqrt(var + eps)
        return (x - mean.reshape(shape)) * inv.reshape(shape) + bias.reshape(shape)

    return _apply(node, ctx, bn, positions=range(5))


@register("LayerNormalization", traits=OpTraits(normalizes=True))
def lower_layernorm(node: OnnxNode, ctx: LoweringContext) -> Lowered:
    if any(o in ctx.used for o in node.outputs[1:]):
        raise Unsupported("LayerNormalization(mean/inv_std outputs)")
    axis, eps = int(node.attr("axis", -1)), float(node.attr("epsilon", 1e-5))

    def layer_norm(x: Tensor, scale: Tensor, bias: Tensor | None = None) -> Tensor:
        start = axis % x.ndim
        shape = tuple(x.shape[start:])
        if tuple(scale.shape) == shape and (bias is None or tuple(bias.shape) == shape):
            return F.layer_norm(x, shape, scale, bias, eps)
        y = F.layer_norm(x, shape, None, None, eps) * scale
        return y if bias is None else y + bias

    return _apply(node, ctx, layer_norm, positions=range(3))


# ------------------------------------------------------------------------------------ reductions


_REDUCE: dict[str, Callable[..., Tensor]] = {
    "ReduceMean": lambda x, dims, keep: torch.mean(x, dim=dims, keepdim=keep),
    "ReduceSum": lambda x, dims, keep: torch.sum(x, dim=dims, keepdim=keep),
    "ReduceMax": lambda x, dims, keep: torch.amax(x, dim=dims, keepdim=keep),
    "ReduceMin": lambda x, dims, keep: torch.amin(x, dim=dims, keepdim=keep),
}
# Opset at which each reduction moved `axes` from an attribute to an input.
_AXES_AS_INPUT = {"ReduceMean": 18, "ReduceSum": 13, "ReduceMax": 18, "ReduceMin": 18}


@register(*_REDUCE, traits=MOVES_DATA)
def lower_reduce(node: OnnxNode, ctx: LoweringContext) -> Lowered:
    if ctx.opset >= _AXES_AS_INPUT[node.op_type]:
        axes = ctx.const_ints(node, 1, "axes")
    else:
        axes = node.attr("axes")
    keep = bool(node.attr("keepdims", 1))
    noop = bool(node.attr("noop_with_empty_axes", 0))
    reduce = _REDUCE[node.op_type]

    def fn(x: Tensor) -> Tensor:
        if not axes:
            return x if noop else reduce(x, tuple(range(x.ndim)), keep)
        return reduce(x, tuple(axes), keep)

    return _apply(node, ctx, fn, positions=[0])


# ----------------------------------------------------------------------------------------- pooling


def _pool_geometry(node: OnnxNode) -> tuple[list[int], list[int], list[int], list[int]]:
    kernel = list(node.attr("kernel_shape"))
    spatial = len(kernel)
    strides = list(node.attr("strides", [1] * spatial))
    pads = list(node.attr("pads", [0] * 2 * spatial))
    dilations = list(node.attr("dilations", [1] * spatial))
    return kernel, strides, pads, dilations


class Pool(nn.Module):
    """MaxPool / AveragePool with ONNX padding rules (asymmetric pads via an explicit pad)."""

    def __init__(self, node: OnnxNode) -> None:
        super().__init__()
        self.is_max = node.op_type == "MaxPool"
        self.kernel, self.strides, self.pads, self.dilations = _pool_geometry(node)
        self.ceil_mode = bool(node.attr("ceil_mode", 0))
        self.auto_pad = node.attr("auto_pad", "NOTSET")
        self.count_include_pad = bool(node.attr("count_include_pad", 0))
        spatial = len(self.kernel)
        self.max_pool = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[spatial]
        self.avg_pool = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[spatial]

    def forward(self, x: Tensor) -> Tensor:
        spatial = len(self.kernel)
        pads = self.pads
        if self.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            pads = _same_pads(x.shape[2:], self.kernel, self.strides, self.dilations,
                              self.auto_pad == "SAME_UPPER")
        begins, ends = pads[:spatial], pads[spatial:]
        native = begins == ends and all(2 * p <= k for p, k in zip(begins, self.kernel, strict=True))
        if self.is_max:
            if native:
                return self.max_pool(x, self.kernel, self.strides, begins, self.dilations, self.ceil_mode)
            pre_pad, _ = _conv_padding(pads, spatial)
            x = F.pad(x, pre_pad, value=-math.inf)
            return self.max_pool(x, self.kernel, self.strides, 0, self.dilations, self.ceil_mode)
        if native:
            return self.avg_pool(x, self.kernel, self.strides, begins, self.ceil_mode, self.count_include_pad)
        pre_pad, _ = _conv_padding(pads, spatial)
        total = self.avg_pool(F.pad(x, pre_pad), self.kernel, self.strides, 0, self.ceil_mode, True)
        if self.count_include_pad:
            return total
        ones = torch.ones((1, 1, *x.shape[2:]), dtype=x.dtype, device=x.device)
        count = self.avg_pool(F.pad(ones, pre_pad), self.kernel, self.strides, 0, self.ceil_mode, True)
        return total / count


@register("MaxPool", "AveragePool", traits=MOVES_DATA)
def lower_pool(node: OnnxNode, ctx: LoweringContext) -> Lowered:
    if node.op_type == "MaxPool":
        if len(node.outputs) > 1 and node.outputs[1] in ctx.used:
            raise Unsupported("MaxPool(indices output)")
    elif any(d != 1 for d in node.attr("dilations", [])):
        raise Unsupported("AveragePool(dilations)")
    if len(node.attr("kernel_shape")) not in (1, 2, 3):
        raise Unsupported(f"{node.op_type}({len(node.attr('kernel_shape'))}D)")
    return Lowered(Pool(node), [node.inputs[0]])


@register("GlobalAveragePool", "GlobalMaxPool", traits=MOVES_DATA)
def lower_global_pool(node: OnnxNode, ctx: LoweringContext) -> Lowered:
    if node.op_type == "GlobalAveragePool":
        return _apply(node, ctx, lambda x: x.mean(dim=tuple(range(2, x.ndim)), keepdim=True), positions=[0])
    return _apply(node, ctx, lambda x: x.amax(dim=tuple(range(2, x.ndim)), keepdim=True), positions=[0])


# --------------------------------------------------------------------------------- shape and layout


def _runtime_ints(value: Tensor) -> list[int]:
    return [int(v) for v in value.reshape(-1).tolist()]


def _reshape(x: Tensor, shape: Sequence[int], allowzero: bool) -> Tensor:
    target = [x.shape[i] if (s == 0 and not allowzero) else s for i, s in enumerate(shape)]
    return x.reshape(target)


@register("Reshape", traits=PERMUTES)
def lower_reshape(node: OnnxNode, ctx: LoweringContext) -> Lowered:
    allowzero = bool(node.attr("allowzero", 0))
    shape = ctx.const(node.input(1))
    if shape is not None:
        target = [int(v) for v in shape.reshape(-1)]
        return _apply(node, ctx, lambda x: _reshape(x, target, allowzero), positions=[0])
    return _apply(node, ctx, lambda x, s: _reshape(x, _runtime_ints(s), allowzero))


@register("Flatten", traits=PERMUTES)
def lower_flatten(node: OnnxNode, ctx: LoweringContext) -> Lowered:
    axis = int(node.attr("axis", 1))

    def flatten(x: Tensor) -> Tensor:
        a = axis % x.ndim if axis < 0 else axis
        outer = math.prod(x.shape[:a])
        return x.reshape(outer, math.prod(x.shape[a:]))

    return _apply(node, ctx, flatten, positions=[0])


@register("Transpose", traits=PERMUTES)
def lower_transpose(node: OnnxNode, ctx: LoweringContext) -> Lowered:
    perm = node.attr("perm")

    def transpose(x: Tensor) -> Tensor:
        return x.permute(*(perm if perm is not None else reversed(range(x.ndim))))

    return _apply(node, ctx, transpose, positions=[0])


@register("DepthToSpace", traits=PERMUTES)
def lower_depth_to_space(node: OnnxNode, ctx: LoweringContext) -> Lowered:
    block = int(node.attr("blocksize"))
    mode = node.attr("mode", "DCR")
    if mode not in ("DCR", "CRD"):
        raise Unsupported(f"DepthToSpace(mode={mode})")

    def depth_to_space(x: Tensor) -> Tensor:
        if mode == "CRD":  # channel c*b*b + i*b + j -> pixel (i, j) of channel c: torch's pixel shuffle
            return F.pixel_shuffle(x, block)
        n, c, h, w = x.shape  # DCR: channel (i*b + j)*C + c
        y = x.reshape(n, block, block, c // (block * block), h, w).permute(0, 3, 4, 1, 5, 2)
        return y.reshape(n, c // (block * block), h * block, w * block)

    return _apply(node, ctx, depth_to_space, positions=[0])


@register("SpaceToDepth", traits=PERMUTES)
def lower_space_to_depth(node: OnnxNode, ctx: LoweringContext) -> Lowered:
    block = int(node.attr("blocksize"))

    def space_to_depth(x: Tensor) -> Tensor:  # pixel (i, j) of channel c -> channel (i*b + j)*C + c
        n, c, h, w = x.shape
        y = x.reshape(n, c, h // block, block, w // block, block).permute(0, 3, 5, 1, 2, 4)
        return y.reshape(n, c * block * block, h // block, w // block)

    return _apply(node, ctx, space_to_depth, positions=[0])


@register("Concat", traits=KEEPS_SIGN)
def lower_concat(node: OnnxNode, ctx: LoweringContext) -> Lowered:
    axis = int(node.attr("axis"))
    return _apply(node, ctx, lambda *xs: torch.cat(xs, dim=axis))


@register("Split", traits=MOVES_DATA)
def lower_split(node: OnnxNode, ctx: LoweringContext) -> Lowered:
    axis = int(node.attr("axis", 0))
    count = len(node.outputs)
    sizes = ctx.const_ints(node, 1, "split") if ctx.opset >= 13 else node.attr("split")

    def split(x: Tensor) -> tuple[Tensor, ...]:
        if sizes:
            return tuple(torch.split(x, list(sizes), dim=axis))
        dim = x.shape[axis]
        chunk = -(-dim // count)
        return tuple(torch.split(x, [chunk] * (count - 1) + [dim - chunk * (count - 1)], dim=axis))

    module = Apply(node.op_type, split)
    return Lowered(module, module.bind(node, ctx, [0]), multi_output=True)


def _slice(x: Tensor, starts: list[int], ends: list[int], axes: list[int] | None, steps: list[int] | None) -> Tensor:
    """ONNX Slice; negative steps are gathered with an explicit index (torch slicing has no step < 0).

    Python's ``slice.indices`` clamps starts and ends exactly as ONNX does, for both signs of step.
    """
    axes = axes if axes is not None else list(range(len(starts)))
    steps = steps if steps is not None else [1] * len(starts)
    if 0 in steps:
        raise ValueError("Slice step 0")
    index: list[slice] = [slice(None)] * x.ndim
    gathers = []
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        axis = axis % x.ndim
        lo, hi, st = slice(start, end, step).indices(x.shape[axis])
        if st > 0:
            index[axis] = slice(lo, hi, st)
        else:
            gathers.append((axis, torch.arange(lo, hi, st, device=x.device)))
    x = x[tuple(index)]
    for axis, idx in gathers:
        x = x.index_select(axis, idx)
    return x


@register("Slice", traits=PERMUTES)
def lower_slice(node: OnnxNode, ctx: LoweringContext) -> Lowered:
    if len(node.inputs) < 3:
        raise Unsupported("Slice(opset<10)")
    if all(ctx.is_const(node.input(i)) or not node.input(i) for i in range(1, 5)):
        starts, ends, axes, steps = (ctx.const_ints(node, i, what) for i, what in
                                     enumerate(("starts", "ends", "axes", "steps"), start=1))
        if steps is not None and 0 in steps:
            raise Unsupported("Slice(step=0)")
        return _apply(node, ctx, lambda x: _slice(x, starts, ends, axes, steps), positions=[0])

    # Starts/ends computed at run time (e.g. from Shape: BERT exports slice position ids to the sequence).
    def dynamic_slice(x: Tensor, starts: Tensor, ends: Tensor, axes: Tensor | None = None,
                      steps: Tensor | None = None) -> Tensor:
        return _slice(x, _runtime_ints(starts), _runtime_ints(ends), None if axes is None else _runtime_ints(axes),
                      None if steps is None else _runtime_ints(steps))

    return _apply(node, ctx, dynamic_slice, positions=range(len(node.inputs)))


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}


def _pad_nonneg(signs: InputSigns) -> bool:
    """Data non-negative, and the pad value too (absent: 0)."""
    return bool(signs[0]) and (len(signs) < 3 or signs[2] is not False)


@register("Pad", traits=OpTraits(nonneg=_pad_nonneg))
def lower_pad(node: OnnxNode, ctx: LoweringContext) -> Lowered:
    mode = node.attr("mode", "constant")
    if mode not in _PAD_MODES:
        raise Unsupported(f"Pad(mode={mode})")
    pads = ctx.const_ints(node, 1, "pads")
    value = ctx.const(node.input(2))
    if node.input(2) and value is None:
        raise Unsupported("Pad(dynamic constant_value)")
    fill = float(np.asarray(value).reshape(-1)[0]) if value is not None and np.asarray(value).size else 0.0
    axes = ctx.const_ints(node, 3, "axes")
    torch_mode = _PAD_MODES[mode]

    def pad(x: Tensor) -> Tensor:
        rank = x.ndim
        ax = [a % rank for a in axes] if axes is not None else list(range(rank))
        begin, end = [0] * rank, [0] * rank
        for i, a in enumerate(ax):
            begin[a], end[a] = pads[i], pads[i + len(ax)]
        torch_pads: list[int] = []
        for a in reversed(range(rank)):
            torch_pads += [begin[a], end[a]]
        while torch_pads and torch_pads[-2:] == [0, 0]:
            torch_pads = torch_pads[:-2]
        if not torch_pads:
            return x
        if torch_mode == "constant":
            return F.pad(x, torch_pads, value=fill)
        return F.pad(x, torch_pads, mode=torch_mode)

    return _apply(node, ctx, pad, positions=[0])


def _axes_input(node: OnnxNode, ctx: LoweringContext) -> list[int] | None:
    return ctx.const_ints(node, 1, "axes") if ctx.opset >= 13 else node.attr("axes")


@register("Squeeze", traits=PERMUTES)
def lower_squeeze(node: OnnxNode, ctx: LoweringContext) -> Lowered:
    axes = _axes_input(node, ctx)

    def squeeze(x: Tensor) -> Tensor:
        if axes is None:
            return x.reshape([d for d in x.shape if d != 1])
        drop = {a % x.ndim for a in axes}
        return x.reshape([d for i, d in enumerate(x.shape) if i not in drop])

    return _apply(node, ctx, squeeze, positions=[0])


@register("Unsqueeze", traits=PERMUTES)
def lower_unsqueeze(node: OnnxNode, ctx: LoweringContext) -> Lowered:
    axes = _axes_input(node, ctx)
    if axes is None:
        raise Unsupported("Unsqueeze(no axes)")

    def unsqueeze(x: Tensor) -> Tensor:
        rank = x.ndim + len(axes)
        for a in sorted(a % rank for a in axes):
            x = x.unsqueeze(a)
        return x

    return _apply(node, ctx, unsqueeze, positions=[0])


def _gather(data: Tensor, indices: Tensor, axis: int) -> Tensor:
    a = axis % data.ndim
    idx = indices.long()
    idx = torch.where(idx < 0, idx + data.shape[a], idx)
    out = data.index_select(a, idx.reshape(-1))
    return out.reshape((*data.shape[:a], *idx.shape, *data.shape[a + 1:]))


class TableLookup(nn.Module):
    """Gather of rows from a constant float table by run-time indices: an embedding (word, position, token
    type). Its table is quantized like a weight, per row, and never learned: ``quantized``, when set, is the
    fake-quantized table used instead of ``table`` (computed once, not every step: a word table is 30k rows).
    """

    def __init__(self, table: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("table", _tensor(table).float())
        self.register_buffer("quantized", None, persistent=False)

    def effective_table(self) -> Tensor:
        return self.table if self.quantized is None else self.quantized

    def forward(self, indices: Tensor) -> Tensor:
        return _gather(self.effective_table(), indices, 0)


@register("Gather", traits=MOVES_DATA)
def lower_gather(node: OnnxNode, ctx: LoweringContext) -> Lowered:
    axis = int(node.attr("axis", 0))
    table = ctx.const(node.input(0))
    if (table is not None and table.ndim == 2 and axis % 2 == 0 and table.dtype == np.float32
            and not ctx.is_const(node.input(1))):
        return Lowered(TableLookup(table), [node.input(1)])
    return _apply(node, ctx, lambda data, indices: _gather(data, indices, axis))


@register("Shape", traits=OpTraits(nonneg=always, shape_only=True))
def lower_shape(node: OnnxNode, ctx: LoweringContext) -> Lowered:
    start, end = node.attr("start", 0), node.attr("end")

    def shape(x: Tensor) -> Tensor:
        return torch.tensor(x.shape[start:end], dtype=torch.int64, device=x.device)

    return _apply(node, ctx, shape, positions=[0])


@register("ConstantOfShape")
def lower_constant_of_shape(node: OnnxNode, ctx: LoweringContext) -> Lowered:
    value = node.attr("value")
    fill = onnx.numpy_helper.to_array(value) if value is not None else np.zeros(1, np.float32)
    fill_tensor = _tensor(fill.reshape(-1))

    def constant_of_shape(shape: Tensor) -> Tensor:
        return fill_tensor.to(shape.device).expand(_runtime_ints(shape)).clone()

    return _apply(node, ctx, constant_of_shape, positions=[0])


@register("Expand", traits=MOVES_DATA)
def lower_expand(node: OnnxNode, ctx: LoweringContext) -> Lowered:
    def expand(x: Tensor, shape: Tensor) -> Tensor:
        return x.expand(torch.broadcast_shapes(tuple(x.shape), tuple(_runtime_ints(shape))))

    return _apply(node, ctx, expand)


@register("Tile", traits=MOVES_DATA)
def lower_tile(node: OnnxNode, ctx: LoweringContext) -> Lowered:
    return _apply(node, ctx, lambda x, repeats: x.repeat(*_runtime_ints(repeats)))


@register("Range")
def lower_range(node: OnnxNode, ctx: LoweringContext) -> Lowered:
    def arange(start: Tensor, limit: Tensor, delta: Tensor) -> Tensor:
        # ONNX: ceil((limit - start) / delta) elements of start's type; torch.arange agrees for both signs.
        return torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype, device=start.device)

    return _apply(node, ctx, arange)


@register("GatherND")
def lower_gather_nd(node: OnnxNode, ctx: LoweringContext) -> Lowered:
    batch_dims = int(node.attr("batch_dims", 0))

    def gather_nd(data: Tensor, indices: Tensor) -> Tensor:
        idx = indices.long()
        depth = idx.shape[-1]
        batch = data.shape[:batch_dims]
        # Flatten the batch dims, index the next `depth` dims of data with the last axis of indices
        # (torch's advanced indexing counts negative indices from the end, as ONNX does).
        flat_data = data.reshape(math.prod(batch), *data.shape[batch_dims:])
        flat_idx = idx.reshape(math.prod(batch), -1, depth)
        rows = torch.arange(flat_data.shape[0], device=idx.device)[:, None]
        picked = flat_data[(rows, *flat_idx.unbind(-1))]
        return picked.reshape(*idx.shape[:-1], *data.shape[batch_dims + depth:])

    return _apply(node, ctx, gather_nd)


@register("CumSum")
def lower_cumsum(node: OnnxNode, ctx: LoweringContext) -> Lowered:
    exclusive, reverse = bool(node.attr("exclusive", 0)), bool(node.attr("reverse", 0))

    def cumsum(x: Tensor, axis: Tensor) -> Tensor:
        a = int(axis.reshape(-1)[0]) % x.ndim
        y = x.flip(a) if reverse else x
        out = torch.cumsum(y, dim=a, dtype=y.dtype)
        if exclusive:
            out = out - y
        return out.flip(a) if reverse else out

    return _apply(node, ctx, cumsum)


@register("Constant")
def lower_constant(node: OnnxNode, ctx: LoweringContext) -> Lowered:
    # load.py turns tensor Constants into initializers; what remains here is rare (sparse, string...).
    raise Unsupported("Constant(non-tensor value)")


# ------------------------------------------------------------------------------------------ resize


def _source_coords(out_len: int, in_len: int, scale: float, mode: str) -> Tensor:
    x = torch.arange(out_len, dtype=torch.float32)
    if mode == "half_pixel":
        return (x + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (x + 0.5) / scale - 0.5 if out_len > 1 else torch.zeros_like(x)
    if mode == "align_corners":
        return x * ((in_len - 1) / (out_len - 1)) if out_len > 1 else torch.zeros_like(x)
    if mode == "asymmetric":
        return x / scale
    if mode == "tf_half_pixel_for_nn":
        return (x + 0.5) / scale
    raise AssertionError(mode)


_NEAREST = {
    "round_prefer_floor": lambda c: torch.ceil(c - 0.5),
    "round_prefer_ceil": lambda c: torch.floor(c + 0.5),
    "floor": torch.floor,
    "ceil": torch.ceil,
}
_COORD_MODES = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric", "tf_half_pixel_for_nn")


class Resize(nn.Module):
    """ONNX Resize, nearest and (multi)linear, separable along each resized axis."""

    def __init__(self, node: OnnxNode, scales: list[float] | None, sizes: list[int] | None) -> None:
        super().__init__()
        self.mode = node.attr("mode", "nearest")
        self.coord_mode = node.attr("coordinate_transformation_mode", "half_pixel")
        self.round = _NEAREST[node.attr("nearest_mode", "round_prefer_floor")]
        self.axes = node.attr("axes")
        self.scales, self.sizes = scales, sizes

    def forward(self, x: Tensor) -> Tensor:
        axes = [a % x.ndim for a in self.axes] if self.axes is not None else list(range(x.ndim))
        for i, axis in enumerate(axes):
            in_len = x.shape[axis]
            if self.sizes is not None:
                out_len = self.sizes[i]
                scale = out_len / in_len
            else:
                scale = self.scales[i]
                out_len = int(math.floor(in_len * scale))
            if out_len == in_len and scale == 1.0:
                continue
            coords = _source_coords(out_len, in_len, scale, self.coord_mode).to(x.device)
            if self.mode == "nearest":
                idx = self.round(coords).long().clamp(0, in_len - 1)
                x = x.index_select(axis, idx)
                continue
            coords = coords.clamp(0, in_len - 1)
            lo = coords.floor().long()
            hi = (lo + 1).clamp(max=in_len - 1)
            shape = [1] * x.ndim
            shape[axis] = out_len
            w = (coords - lo.to(coords.dtype)).to(x.dtype).reshape(shape)
            x_lo, x_hi = x.index_select(axis, lo), x.index_select(axis, hi)
            x = x_lo + (x_hi - x_lo) * w
        return x


@register("Resize", traits=MOVES_DATA)
def lower_resize(node: OnnxNode, ctx: LoweringContext) -> Lowered:
    mode = node.attr("mode", "nearest")
    coord = node.attr("coordinate_transformation_mode", "half_pixel")
    if mode not in ("nearest", "linear"):
        raise Unsupported(f"Resize(mode={mode})")
    if coord not in _COORD_MODES or (mode == "linear" and coord == "tf_half_pixel_for_nn"):
        raise Unsupported(f"Resize(coordinate_transformation_mode={coord})")
    if node.attr("antialias", 0) or node.attr("keep_aspect_ratio_policy", "stretch") != "stretch":
        raise Unsupported("Resize(antialias/keep_aspect_ratio_policy)")
    scales_name = node.input(2) if ctx.opset >= 11 else node.input(1)
    scales = ctx.const(scales_name)
    if scales_name and scales is None:
        raise Unsupported("Resize(dynamic scales)")
    sizes = ctx.const_ints(node, 3, "sizes") if ctx.opset >= 11 else None
    scale_list = [float(s) for s in scales.reshape(-1)] if scales is not None and scales.size else None
    if scale_list is None and not sizes:
        raise Unsupported("Resize(no scales or sizes)")
    return Lowered(Resize(node, scale_list, sizes or None), [node.inputs[0]])
