"""The target rewrites compute what the original graph does (ONNX Runtime runs both)."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qdrop_onnx.graph.rewrite import conv_transpose_as_conv
from tests.helpers import run_ort

# (kernel, stride, pad begin, pad end, output padding, groups): the common upsamplers (2/2, 4/2 pad 1, 3/2 pad 1
# output padding 1), stride 1 (a flipped Conv), stride 3, pads cropping past a phase, depthwise.
SHAPES = [(2, 2, 0, 0, 0, 1), (4, 2, 1, 1, 0, 1), (3, 2, 1, 1, 1, 1), (3, 2, 1, 1, 0, 1), (3, 1, 1, 1, 0, 1),
          (5, 3, 2, 1, 2, 2), (1, 2, 0, 0, 1, 1), (2, 2, 2, 1, 0, 1), (4, 2, 1, 1, 0, 6)]


def _conv_transpose(k: int, s: int, pb: int, pe: int, op: int, groups: int, bias: bool,
                    ) -> tuple[onnx.ModelProto, np.ndarray]:
    rng = np.random.RandomState(k * 100 + s * 10 + pb)
    cin, cout = 6, 6
    inits = [numpy_helper.from_array(rng.randn(cin, cout // groups, k, k).astype(np.float32), "w")]
    if bias:
        inits.append(numpy_helper.from_array(rng.randn(cout).astype(np.float32), "b"))
    node = helper.make_node("ConvTranspose", ["x", "w"] + (["b"] if bias else []), ["y"], name="up",
                            strides=[s, s], pads=[pb, pb, pe, pe], output_padding=[op, op], group=groups)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", cin, 5, 7])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), rng.randn(2, cin, 5, 7).astype(
        np.float32)


@pytest.mark.parametrize(("shape", "bias"), list(itertools.product(SHAPES, [True, False])))
def test_conv_transpose_as_conv_is_exact(shape: tuple[int, ...], bias: bool) -> None:
    model, x = _conv_transpose(*shape, bias)
    expected = run_ort(model, {"x": x})[0]
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    lines = conv_transpose_as_conv(rewritten)
    assert len(lines) == 1 and lines[0].startswith("up: ConvTranspose")
    assert "ConvTranspose" not in {n.op_type for n in rewritten.graph.node}
    got = run_ort(rewritten, {"x": x})[0]
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * float(np.abs(expected).max()))


def test_what_it_cannot_rewrite_stays() -> None:
    """Dilated, or with output_shape: left as ConvTranspose (and said by no line)."""
    model, _ = _conv_transpose(3, 2, 1, 1, 1, 1, True)
    model.graph.node[0].attribute.append(helper.make_attribute("dilations", [2, 2]))
    assert conv_transpose_as_conv(model) == []
    assert [n.op_type for n in model.graph.node] == ["ConvTranspose"]
