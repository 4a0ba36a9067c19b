"""A small pre-LN transformer encoder layer built with onnx.helper: rebuild parity and its blocks."""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper

from qdrop_onnx.graph import load_model, lower, partition
from tests.helpers import make_model, max_abs_diff

D, HEADS, FFN, T = 16, 2, 32, 6


def encoder_layer(seed: int = 0, opset: int = 17) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """x -> x + Attn(LN(x)) -> y + FFN(LN(y)); FFN uses an Erf-based Gelu."""
    rng = np.random.RandomState(seed)

    def w(*shape: int) -> np.ndarray:
        return (rng.randn(*shape) / math.sqrt(shape[0])).astype(np.float32)

    N = helper.make_node
    consts = {
        "ln1_s": 1 + 0.1 * rng.randn(D).astype(np.float32), "ln1_b": 0.1 * rng.randn(D).astype(np.float32),
        "ln2_s": 1 + 0.1 * rng.randn(D).astype(np.float32), "ln2_b": 0.1 * rng.randn(D).astype(np.float32),
        "wq": w(D, D), "wk": w(D, D), "wv": w(D, D), "wo": w(D, D), "w1": w(D, FFN), "w2": w(FFN, D),
        "bq": 0.1 * rng.randn(D).astype(np.float32), "bo": 0.1 * rng.randn(D).astype(np.float32),
        "b1": 0.1 * rng.randn(FFN).astype(np.float32), "b2": 0.1 * rng.randn(D).astype(np.float32),
        "heads_shape": np.array([0, 0, HEADS, D // HEADS], np.int64), "merge_shape": np.array([0, 0, D], np.int64),
        "scale": np.array(math.sqrt(D // HEADS), np.float32), "half": np.array(0.5, np.float32),
        "one": np.array(1.0, np.float32), "sqrt2": np.array(math.sqrt(2.0), np.float32),
    }
    nodes = [
        N("LayerNormalization", ["x", "ln1_s", "ln1_b"], ["h"], axis=-1, epsilon=1e-5),
        N("MatMul", ["h", "wq"], ["q0"]), N("Add", ["q0", "bq"], ["q1"]),
        N("MatMul", ["h", "wk"], ["k0"]), N("MatMul", ["h", "wv"], ["v0"]),
        N("Reshape", ["q1", "heads_shape"], ["q2"]), N("Transpose", ["q2"], ["q"], perm=[0, 2, 1, 3]),
        N("Reshape", ["k0", "heads_shape"], ["k2"]), N("Transpose", ["k2"], ["kt"], perm=[0, 2, 3, 1]),
        N("Reshape", ["v0", "heads_shape"], ["v2"]), N("Transpose", ["v2"], ["v"], perm=[0, 2, 1, 3]),
        N("MatMul", ["q", "kt"], ["s0"]), N("Div", ["s0", "scale"], ["s1"]), N("Softmax", ["s1"], ["p"], axis=-1),
        N("MatMul", ["p", "v"], ["a0"]), N("Transpose", ["a0"], ["a1"], perm=[0, 2, 1, 3]),
        N("Reshape", ["a1", "merge_shape"], ["a2"]), N("MatMul", ["a2", "wo"], ["o0"]), N("Add", ["o0", "bo"], ["o1"]),
        N("Add", ["x", "o1"], ["r1"]),
        N("LayerNormalization", ["r1", "ln2_s", "ln2_b"], ["h2"], axis=-1, epsilon=1e-5),
        N("MatMul", ["h2", "w1"], ["f0"]), N("Add", ["f0", "b1"], ["f1"]),
        N("Div", ["f1", "sqrt2"], ["g0"]), N("Erf", ["g0"], ["g1"]), N("Add", ["g1", "one"], ["g2"]),
        N("Mul", ["f1", "g2"], ["g3"]), N("Mul", ["g3", "half"], ["g4"]),
        N("MatMul", ["g4", "w2"], ["f2"]), N("Add", ["f2", "b2"], ["f3"]),
        N("Add", ["r1", "f3"], ["y"]),
    ]
    feeds = {"x": rng.randn(3, T, D).astype(np.float32)}
    model = make_model(nodes, feeds, ["y"], consts, opset=opset)
    for value in (model.graph.input[0], model.graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    return model, feeds


def test_transformer_layer_matches_onnxruntime_unsimplified() -> None:
    model, feeds = encoder_layer()
    assert max_abs_diff(model, feeds, simplify=False) <= 1e-4


def test_transformer_layer_matches_onnxruntime_through_onnxsim() -> None:
    model, feeds = encoder_layer(seed=1, opset=21)
    assert max_abs_diff(model, feeds, simplify=True) <= 1e-4


def test_transformer_layer_weights_by_node_name_and_blocks() -> None:
    model, _ = encoder_layer()
    graph = lower(load_model(model, simplify=False))
    weighted = graph.weighted_ops()
    names = {n.name: list(n.input) for n in load_model(model, simplify=False).model.graph.node}
    # Q, K, V, O projections and the two FFN matrices: six MatMuls with constant weights.
    assert len(weighted) == 6
    for name, module in weighted.items():
        assert names[name][1] in ("wq", "wk", "wv", "wo", "w1", "w2")
        assert module.weight.requires_grad and module.channel_axis == 1
    blocks = partition(graph)
    # The attention residual unit and the FFN residual unit.
    assert [len(b.weighted) for b in blocks] == [4, 2]
    assert blocks[0].inputs == ["x"] and blocks[0].outputs == ["r1"]
    assert blocks[1].inputs == ["r1"] and blocks[1].outputs == ["y"]
