"""Every op in the registry, rebuilt in torch, against ONNX Runtime on small hand-built graphs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest
from onnx import TensorProto, helper

from qdrop_onnx.graph.ops import REGISTRY
from tests.helpers import make_model, max_abs_diff

TOL = 1e-4
rng = np.random.RandomState(0)


def f32(*shape: int, positive: bool = False) -> np.ndarray:
    x = rng.randn(*shape).astype(np.float32)
    return np.abs(x) + 0.1 if positive else x


def i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


@dataclass
class Case:
    id: str
    nodes: list
    inputs: dict
    outputs: list
    consts: dict = field(default_factory=dict)
    opset: int = 17
    out_types: dict = field(default_factory=dict)

    @property
    def op_types(self) -> set[str]:
        return {n.op_type for n in self.nodes}


N = helper.make_node
X4 = f32(2, 4, 9, 9)


def single(op: str, ins: list[str], inputs: dict, consts: dict | None = None, opset: int = 17,
           nout: int = 1, case_id: str | None = None, **attrs: object) -> Case:
    outputs = ["out"] if nout == 1 else [f"out{i}" for i in range(nout)]
    return Case(case_id or op, [N(op, ins, outputs, **attrs)], inputs, outputs, consts or {}, opset)


def unary(op: str, **attrs: object) -> Case:
    return single(op, ["x"], {"x": f32(2, 3, 5)}, **attrs)


def compare(op: str, case_id: str) -> Case:
    """A comparison/logical op, made float by Where so the output is checked numerically."""
    x, y = f32(3, 4), f32(3, 4)
    nodes = [N("Less", ["x", "y"], ["lt"]), N(op, ["lt", "gt"] if op in ("And", "Or") else ["x", "y"], ["c"]),
             N("Greater", ["x", "y"], ["gt"])]
    if op == "Not":
        nodes[1] = N("Not", ["lt"], ["c"])
    nodes = [nodes[0], nodes[2], nodes[1], N("Where", ["c", "x", "y"], ["out"])]
    return Case(case_id, nodes, {"x": x, "y": y}, ["out"])


CASES: list[Case] = [
    # weighted layers
    single("Conv", ["x", "w", "b"], {"x": X4}, {"w": f32(6, 4, 3, 3), "b": f32(6)}, case_id="Conv-asym-pads",
           pads=[1, 0, 2, 1], strides=[2, 1], dilations=[1, 2]),
    single("Conv", ["x", "w"], {"x": X4}, {"w": f32(8, 2, 3, 3)}, case_id="Conv-group", group=2, pads=[1, 1, 1, 1]),
    single("Conv", ["x", "w"], {"x": X4}, {"w": f32(4, 1, 3, 3)}, case_id="Conv-depthwise-same",
           group=4, auto_pad="SAME_UPPER", strides=[2, 2]),
    single("Conv", ["x", "w", "b"], {"x": f32(2, 3, 11)}, {"w": f32(5, 3, 3), "b": f32(5)}, case_id="Conv-1d",
           pads=[1, 1]),
    single("Conv", ["x", "w"], {"x": f32(1, 2, 4, 5, 5)}, {"w": f32(3, 2, 2, 2, 2)}, case_id="Conv-3d"),
    single("ConvTranspose", ["x", "w", "b"], {"x": X4}, {"w": f32(4, 3, 3, 3), "b": f32(3)},
           case_id="ConvTranspose-stride", strides=[2, 2], pads=[1, 0, 1, 1], output_padding=[1, 0]),
    single("ConvTranspose", ["x", "w"], {"x": X4}, {"w": f32(4, 2, 4, 4)}, case_id="ConvTranspose-group",
           group=2, strides=[2, 2], pads=[1, 1, 1, 1]),
    single("ConvTranspose", ["x", "w"], {"x": X4}, {"w": f32(4, 2, 3, 3)}, case_id="ConvTranspose-output-shape",
           strides=[2, 2], output_shape=[18, 18]),
    single("Gemm", ["x", "w", "b"], {"x": f32(5, 7)}, {"w": f32(3, 7), "b": f32(3)}, case_id="Gemm-transB",
           transB=1),
    single("Gemm", ["x", "w", "b"], {"x": f32(7, 5)}, {"w": f32(7, 3), "b": f32(1, 3)}, case_id="Gemm-transA",
           transA=1, alpha=0.5, beta=2.0),
    single("Gemm", ["x", "y"], {"x": f32(5, 7), "y": f32(7, 3)}, case_id="Gemm-dynamic"),
    single("MatMul", ["x", "w"], {"x": f32(2, 5, 7)}, {"w": f32(7, 3)}, case_id="MatMul-const"),
    single("MatMul", ["x", "y"], {"x": f32(2, 5, 7), "y": f32(2, 7, 3)}, case_id="MatMul-dynamic"),
    # normalisation
    single("BatchNormalization", ["x", "s", "b", "m", "v"], {"x": X4},
           {"s": f32(4), "b": f32(4), "m": f32(4), "v": f32(4, positive=True)}, epsilon=1e-3),
    single("LayerNormalization", ["x", "s", "b"], {"x": f32(2, 5, 8)}, {"s": f32(8), "b": f32(8)}, axis=-1),
    single("LayerNormalization", ["x", "s"], {"x": f32(2, 5, 8)}, {"s": f32(5, 8)}, case_id="LayerNorm-axis1",
           axis=1, epsilon=1e-3),
    # activations
    unary("Relu"), unary("Sigmoid"), unary("Tanh"), unary("Erf"), unary("Exp"), unary("Neg"), unary("Abs"),
    unary("Floor"), unary("Ceil"), unary("Identity"),
    single("Sqrt", ["x"], {"x": f32(3, 4, positive=True)}),
    single("Log", ["x"], {"x": f32(3, 4, positive=True)}),
    single("Reciprocal", ["x"], {"x": f32(3, 4, positive=True)}),
    unary("LeakyRelu", alpha=0.1),
    single("PRelu", ["x", "s"], {"x": X4}, {"s": f32(4, 1, 1)}),
    single("Clip", ["x", "lo", "hi"], {"x": X4}, {"lo": np.float32(0), "hi": np.float32(0.5)}),
    single("Clip", ["x", "lo"], {"x": X4}, {"lo": np.float32(-0.2)}, case_id="Clip-min-only"),
    single("Clip", ["x", "", "hi"], {"x": X4}, {"hi": np.float32(0.3)}, case_id="Clip-max-only"),
    # min > max: every value is max (the constant-bounds fast path must not take it)
    single("Clip", ["x", "lo", "hi"], {"x": X4}, {"lo": np.float32(0.5), "hi": np.float32(-0.5)},
           case_id="Clip-min-above-max"),
    single("Clip", ["x", "lo", "hi"], {"x": X4, "lo": np.array(-0.1, np.float32), "hi": np.array(0.2, np.float32)},
           case_id="Clip-runtime-bounds"),
    Case("Clip-int64", [N("Clip", ["x", "lo", "hi"], ["out"])], {"x": np.array([[1, 5, -3, 9]], np.int64)},
         ["out"], {"lo": np.array(0, np.int64), "hi": np.array(6, np.int64)}, out_types={"out": TensorProto.INT64}),
    unary("HardSigmoid", alpha=0.25, beta=0.4),
    single("HardSwish", ["x"], {"x": f32(2, 3, 5) * 4}),
    single("Gelu", ["x"], {"x": f32(2, 3, 5)}, opset=20),
    single("Gelu", ["x"], {"x": f32(2, 3, 5)}, opset=20, case_id="Gelu-tanh", approximate="tanh"),
    single("Softmax", ["x"], {"x": X4}, axis=1),
    single("LogSoftmax", ["x"], {"x": X4}),
    single("Dropout", ["x"], {"x": X4}),
    # elementwise, broadcasting
    single("Add", ["x", "c"], {"x": X4}, {"c": f32(4, 1, 1)}),
    single("Sub", ["c", "x"], {"x": X4}, {"c": f32(9)}),
    single("Mul", ["x", "y"], {"x": X4, "y": f32(1, 4, 1, 9)}),
    single("Div", ["x", "y"], {"x": X4, "y": f32(9, positive=True)}),
    single("Pow", ["x", "e"], {"x": f32(3, 4, positive=True)}, {"e": np.float32(2.5)}),
    single("Max", ["x", "y", "c"], {"x": f32(3, 4), "y": f32(3, 4)}, {"c": f32(4)}),
    single("Min", ["x", "y"], {"x": f32(3, 4), "y": f32(1, 4)}),
    single("Sum", ["x", "y", "z"], {"x": f32(3, 4), "y": f32(3, 4), "z": f32(3, 1)}),
    compare("Equal", "Equal"), compare("LessOrEqual", "LessOrEqual"), compare("GreaterOrEqual", "GreaterOrEqual"),
    compare("And", "And"), compare("Or", "Or"), compare("Not", "Not"),
    # reductions and pooling
    single("ReduceMean", ["x"], {"x": X4}, axes=[2, 3], keepdims=1, opset=13, case_id="ReduceMean-13"),
    single("ReduceMean", ["x", "a"], {"x": X4}, {"a": i64(1)}, keepdims=0, opset=18, case_id="ReduceMean-18"),
    single("ReduceSum", ["x", "a"], {"x": X4}, {"a": i64(-1)}, opset=13),
    single("ReduceMax", ["x"], {"x": X4}, axes=[1], opset=17),
    single("ReduceMin", ["x", "a"], {"x": X4}, {"a": i64(0, 2)}, opset=18),
    single("MaxPool", ["x"], {"x": X4}, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    single("MaxPool", ["x"], {"x": X4}, kernel_shape=[2, 3], pads=[0, 1, 1, 0], case_id="MaxPool-asym"),
    single("MaxPool", ["x"], {"x": X4}, kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1, case_id="MaxPool-ceil"),
    single("AveragePool", ["x"], {"x": X4}, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    single("AveragePool", ["x"], {"x": X4}, kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1,
           case_id="AveragePool-count-pad"),
    single("AveragePool", ["x"], {"x": X4}, kernel_shape=[2, 2], pads=[0, 1, 1, 0], case_id="AveragePool-asym"),
    single("AveragePool", ["x"], {"x": X4}, kernel_shape=[2, 2], strides=[2, 2], case_id="AveragePool-plain"),
    single("GlobalAveragePool", ["x"], {"x": X4}),
    single("GlobalMaxPool", ["x"], {"x": X4}),
    # shape and layout
    single("Flatten", ["x"], {"x": X4}, axis=2),
    single("Reshape", ["x", "s"], {"x": X4}, {"s": i64(0, -1, 9)}),
    Case("Reshape-dynamic", [N("Shape", ["x"], ["s"]), N("Gather", ["s", "i"], ["n"], axis=0),
                             N("Unsqueeze", ["n", "ax"], ["n1"]), N("Concat", ["n1", "m"], ["t"], axis=0),
                             N("Reshape", ["x", "t"], ["y"])],
         {"x": X4}, ["y"], {"i": np.array(0, np.int64), "ax": i64(0), "m": i64(-1)}),
    Case("Shape-ConstantOfShape-Cast-Expand", [N("Shape", ["x"], ["s"], start=1, end=3),
                                               N("ConstantOfShape", ["s"], ["z"],
                                                 value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.5])),
                                               N("Cast", ["s"], ["sf"], to=TensorProto.FLOAT),
                                               N("Expand", ["e", "s"], ["ex"]),
                                               N("Add", ["z", "ex"], ["y0"]), N("ReduceSum", ["sf"], ["y1"])],
         {"x": X4}, ["y0", "y1"], {"e": f32(1, 9)}),
    single("Transpose", ["x"], {"x": X4}, perm=[0, 2, 3, 1]),
    single("Transpose", ["x"], {"x": X4}, case_id="Transpose-default"),
    single("DepthToSpace", ["x"], {"x": f32(2, 8, 3, 5)}, blocksize=2, mode="CRD", case_id="DepthToSpace-CRD"),
    single("DepthToSpace", ["x"], {"x": f32(2, 8, 3, 5)}, blocksize=2, case_id="DepthToSpace-DCR"),
    single("SpaceToDepth", ["x"], {"x": f32(2, 3, 4, 6)}, blocksize=2),
    single("Concat", ["x", "c", "y"], {"x": X4, "y": f32(2, 1, 9, 9)}, {"c": f32(2, 2, 9, 9)}, axis=1),
    single("Split", ["x", "s"], {"x": X4}, {"s": i64(1, 3)}, nout=2, axis=1, opset=13),
    single("Split", ["x"], {"x": X4}, nout=2, axis=2, opset=18, num_outputs=2, case_id="Split-18-uneven"),
    single("Slice", ["x", "s", "e", "a", "st"], {"x": X4}, {"s": i64(1, -2), "e": i64(100, 0), "a": i64(2, 3),
                                                           "st": i64(2, -3)}),
    single("Slice", ["x", "s", "e"], {"x": X4}, {"s": i64(0, 1), "e": i64(1, 3)}, case_id="Slice-default-axes"),
    single("Pad", ["x", "p", "v"], {"x": X4}, {"p": i64(0, 1, 2, 0, 0, 2, 0, 1), "v": np.float32(0.5)}),
    single("Pad", ["x", "p"], {"x": X4}, {"p": i64(0, 0, 2, 1, 0, 0, 1, 2)}, mode="reflect", case_id="Pad-reflect"),
    single("Pad", ["x", "p"], {"x": X4}, {"p": i64(0, 0, 1, 0, 0, 0, 0, 3)}, mode="edge", case_id="Pad-edge"),
    single("Pad", ["x", "p", "", "a"], {"x": X4}, {"p": i64(1, -1, 2, 0), "a": i64(1, 3)}, opset=18,
           case_id="Pad-axes-negative"),
    single("Squeeze", ["x", "a"], {"x": f32(2, 1, 5, 1)}, {"a": i64(-1)}),
    single("Squeeze", ["x"], {"x": f32(2, 1, 5, 1)}, case_id="Squeeze-all"),
    single("Unsqueeze", ["x", "a"], {"x": f32(2, 5)}, {"a": i64(0, -1)}),
    single("Gather", ["x", "i"], {"x": X4}, {"i": i64(3, -1, 0)}, axis=1),
    single("Gather", ["c", "i"], {"i": np.array([[1, 0], [2, 2]], np.int64)}, {"c": f32(3, 6)},
           case_id="Gather-embedding"),
    single("Tile", ["x", "r"], {"x": f32(2, 3)}, {"r": i64(2, 3)}),
    single("Resize", ["x", "", "sc"], {"x": X4}, {"sc": np.array([1, 1, 2, 2], np.float32)}, mode="nearest",
           coordinate_transformation_mode="asymmetric", nearest_mode="floor", case_id="Resize-nearest-x2"),
    single("Resize", ["x", "", "sc"], {"x": X4}, {"sc": np.array([1, 1, 1.5, 0.5], np.float32)},
           mode="nearest", case_id="Resize-nearest-half-pixel"),
    single("Resize", ["x", "", "", "sz"], {"x": X4}, {"sz": i64(2, 4, 13, 6)}, mode="linear",
           case_id="Resize-linear-sizes"),
    single("Resize", ["x", "", "sc"], {"x": X4}, {"sc": np.array([1, 1, 2, 2], np.float32)}, mode="linear",
           coordinate_transformation_mode="align_corners", case_id="Resize-linear-align"),
    single("Resize", ["x", "", "sc"], {"x": X4}, {"sc": np.array([1, 1, 2, 3], np.float32)}, mode="linear",
           coordinate_transformation_mode="asymmetric", case_id="Resize-linear-asym"),
    # what BERT-family exports add (torch.onnx at opset 14-17, the dynamo exporter at 18)
    Case("IsNaN-Where", [N("Div", ["x", "y"], ["d"]), N("IsNaN", ["d"], ["n"]), N("Where", ["n", "z", "d"], ["out"])],
         {"x": np.array([[0.0, 1.0, -2.0], [0.0, 3.0, 4.0]], np.float32),
          "y": np.array([[0.0, 2.0, 0.5], [1.0, 4.0, 2.0]], np.float32)}, ["out"], {"z": np.float32(0.0)}),
    Case("Range-from-Shape", [N("Shape", ["x"], ["s"]), N("Gather", ["s", "one"], ["n"], axis=0),
                              N("Range", ["zero", "n", "one"], ["r"]), N("Cast", ["r"], ["rf"], to=TensorProto.FLOAT),
                              N("Add", ["x", "rf"], ["out"])],
         {"x": f32(2, 7)}, ["out"], {"zero": np.array(0, np.int64), "one": np.array(1, np.int64)}),
    Case("Range-float-negative-delta", [N("Range", ["a", "b", "d"], ["out"])],
         {"a": np.array(5.0, np.float32), "b": np.array(-1.5, np.float32), "d": np.array(-1.25, np.float32)}, ["out"]),
    Case("Slice-dynamic-ends", [N("Shape", ["x"], ["s"]), N("Gather", ["s", "ax"], ["n"], axis=0),
                                N("Unsqueeze", ["n", "ax0"], ["e"]),
                                N("Slice", ["pos", "st", "e", "ax1"], ["out"])],
         {"x": f32(2, 5, 3)}, ["out"], {"pos": np.arange(12, dtype=np.float32).reshape(1, 12) * 0.5,
                                         "ax": np.array(1, np.int64), "ax0": i64(0), "st": i64(0), "ax1": i64(1)}),
    Case("Slice-dynamic-starts-steps", [N("Shape", ["x"], ["s"]), N("Slice", ["s", "b", "c"], ["half"]),
                                        N("Slice", ["x", "b", "half", "ax", "step"], ["out"])],
         {"x": f32(4, 9)}, ["out"], {"b": i64(1), "c": i64(2), "ax": i64(1), "step": i64(2)}),
    single("GatherND", ["x", "i"], {"x": f32(3, 4, 5)}, {"i": np.array([[0, 1], [2, -1], [1, 3]], np.int64)}),
    single("GatherND", ["x", "i"], {"x": f32(2, 4, 5)}, {"i": np.array([[[1], [3]], [[0], [0]]], np.int64)},
           batch_dims=1, case_id="GatherND-batch-dims"),
    single("CumSum", ["x", "a"], {"x": f32(3, 6)}, {"a": np.array(1, np.int64)}),
    single("CumSum", ["x", "a"], {"x": f32(3, 6)}, {"a": np.array(-2, np.int64)}, exclusive=1, reverse=1,
           case_id="CumSum-exclusive-reverse"),
    Case("CumSum-int-mask", [N("CumSum", ["m", "a"], ["c"]), N("Mul", ["c", "m"], ["out"])],
         {"m": np.array([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]], np.int64)}, ["out"], {"a": np.array(1, np.int64)},
         out_types={"out": TensorProto.INT64}),
    Case("Where", [N("Greater", ["x", "c"], ["m"]), N("Where", ["m", "x", "y"], ["out"])],
         {"x": f32(3, 4), "y": f32(3, 4)}, ["out"], {"c": np.float32(0.1)}),
    Case("Constant", [N("Constant", [], ["c"], value=helper.make_tensor("c", TensorProto.FLOAT, [4], [1, 2, 3, 4])),
                      N("Mul", ["x", "c"], ["y"])], {"x": f32(3, 4)}, ["y"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_op_matches_onnxruntime(case: Case) -> None:
    model = make_model(case.nodes, case.inputs, case.outputs, case.consts, case.opset, case.out_types)
    assert max_abs_diff(model, case.inputs) <= TOL


def test_every_registered_op_has_a_parity_case() -> None:
    covered = set().union(*(c.op_types for c in CASES))
    assert {op for domain, op in REGISTRY if domain == ""} - covered == set()
    assert {domain for domain, _ in REGISTRY} == {""}  # a contrib-domain op needs cases keyed by domain


def _ops_of(cases: list[Case], pred: Callable[[Case], bool]) -> set[str]:
    return set().union(*(c.op_types for c in cases if pred(c)))


def test_opset_range_13_to_21_is_exercised() -> None:
    opsets = {c.opset for c in CASES}
    assert min(opsets) <= 13 and max(opsets) >= 18
    # The same graph at every opset from 13 to 21 (ops whose signature is stable across them).
    for opset in range(13, 22):
        x = f32(2, 4, 6, 6)
        nodes = [N("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), N("Relu", ["c"], ["r"]),
                 N("GlobalAveragePool", ["r"], ["g"]), N("Flatten", ["g"], ["f"]),
                 N("Gemm", ["f", "fc"], ["y"], transB=1)]
        model = make_model(nodes, {"x": x}, ["y"], {"w": f32(5, 4, 3, 3), "fc": f32(3, 5)}, opset=opset)
        assert max_abs_diff(model, {"x": x}) <= TOL, opset
