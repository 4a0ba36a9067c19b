"""Block partition: cuts where one tensor is live, weightless regions attached, large regions split."""

from __future__ import annotations

import numpy as np
import torch
from onnx import helper

from qdrop_onnx.graph import load_model, lower, partition
from tests.helpers import make_model, small_cnn


def test_small_cnn_blocks() -> None:
    model, _ = small_cnn()
    blocks = partition(lower(load_model(model)))
    assert [(b.kind, b.weighted, b.op_types) for b in blocks] == [
        ("layer", ["stem"], ["Conv", "Relu"]),
        ("layer", ["res_conv"], ["Conv", "Relu", "Add", "Relu"]),
        ("layer", ["fc"], ["GlobalAveragePool", "Flatten", "Gemm"]),
    ]
    assert blocks[1].inputs == [blocks[0].outputs[0]] and blocks[2].outputs == ["logits"]


def _long_skip(convs: int) -> tuple:
    """x -> conv_1 .. conv_n -> Add(x, .): no single-live cut inside, so one region with n weighted nodes."""
    rng = np.random.RandomState(0)
    N = helper.make_node
    nodes, consts, prev = [], {}, "x"
    for i in range(convs):
        consts[f"w{i}"] = (rng.randn(4, 4, 3, 3) * 0.2).astype(np.float32)
        nodes += [N("Conv", [prev, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1], name=f"conv{i}"),
                  N("Relu", [f"c{i}"], [f"r{i}"])]
        prev = f"r{i}"
    nodes.append(N("Add", ["x", prev], ["out"]))
    x = rng.randn(2, 4, 6, 6).astype(np.float32)
    return make_model(nodes, {"x": x}, ["out"], consts), x


def test_large_region_is_split_at_weighted_nodes_and_blocks_chain_exactly() -> None:
    model, x = _long_skip(10)
    graph = lower(load_model(model))
    assert len(partition(graph)) == 2  # default max 8 weighted per block: 8 + 2
    blocks = partition(graph, max_weighted=4)
    assert [len(b.weighted) for b in blocks] == [4, 4, 2]
    assert blocks[0].weighted[0] == "conv0" and blocks[2].weighted == ["conv8", "conv9"]
    # The long skip makes the last block take two inputs: the graph input and the previous block's output.
    assert blocks[1].inputs == ["r3"] and set(blocks[2].inputs) == {"r7", "x"}
    assert blocks[0].outputs == ["r3"] or set(blocks[0].outputs) == {"r3"}
    # Running the blocks one after another reproduces the whole model exactly.
    env = {"x": torch.from_numpy(x)}
    with torch.no_grad():
        for b in blocks:
            outs = graph.subgraph(b.nodes, b.inputs, b.outputs)(*[env[t] for t in b.inputs])
            env.update(zip(b.outputs, outs, strict=True))
        full = graph(torch.from_numpy(x))
    assert torch.equal(env["out"], full)
