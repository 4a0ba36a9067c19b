"""The loader: BN folding, onnxsim fallback, static reshapes, external data, input never modified."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from qdrop_onnx.errors import ModelLoadError
from qdrop_onnx.graph import load_model, lower
from qdrop_onnx.graph.load import fold_batchnorm_into_conv
from tests.helpers import make_model, max_abs_diff, run_ort, run_torch, small_cnn


def test_batchnorm_folded_into_conv_keeps_outputs() -> None:
    model, x = small_cnn()
    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    assert fold_batchnorm_into_conv(folded) == 1
    assert "BatchNormalization" not in {n.op_type for n in folded.graph.node}
    onnx.checker.check_model(folded)
    np.testing.assert_allclose(run_ort(folded, {"x": x})[0], run_ort(model, {"x": x})[0], atol=1e-5)


def test_load_without_onnxsim_still_folds_and_matches() -> None:
    model, x = small_cnn()
    loaded = load_model(model, simplify=False)
    assert loaded.folded_batchnorms == 1 and not loaded.simplified
    assert max_abs_diff(model, {"x": x}, simplify=False) <= 1e-4


def test_symbolic_batch_dimension_is_kept() -> None:
    model, x = small_cnn()
    loaded = load_model(model)
    dim = loaded.model.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_param == "N"
    for batch in (1, 5):
        xb = np.repeat(x[:1], batch, axis=0)
        np.testing.assert_allclose(run_torch(model, {"x": xb}, simplify=True)[0], run_ort(model, {"x": xb})[0],
                                   atol=1e-4)


def test_simplifier_failure_warns_once_and_keeps_graph(caplog: pytest.LogCaptureFixture) -> None:
    model, x = small_cnn()

    def broken_simplifier(m: onnx.ModelProto) -> tuple[onnx.ModelProto, bool]:
        raise RuntimeError("cannot fold node X\nsecond line of detail")

    with caplog.at_level(logging.WARNING, logger="qdrop_onnx"):
        loaded = load_model(model, simplifier=broken_simplifier)
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["onnxsim failed (cannot fold node X); using the unsimplified graph"]
    assert loaded.warnings == messages and not loaded.simplified
    # The unsimplified (but BN-folded) graph is what gets rebuilt, and it is still exact.
    assert [n.op_type for n in loaded.model.graph.node].count("Conv") == 2
    graph = lower(loaded)
    assert set(graph.weighted_ops()) == {"stem", "res_conv", "fc"}
    assert max_abs_diff(model, {"x": x}) <= 1e-4


def test_dynamic_flatten_reshape_becomes_static_and_dead_shape_nodes_go() -> None:
    N = helper.make_node
    x = np.random.RandomState(0).randn(2, 4, 3, 3).astype(np.float32)
    nodes = [N("Shape", ["x"], ["s"]), N("Gather", ["s", "i"], ["n"], axis=0), N("Unsqueeze", ["n", "ax"], ["n1"]),
             N("Concat", ["n1", "m"], ["t"], axis=0), N("Relu", ["x"], ["r"]), N("Reshape", ["r", "t"], ["out"])]
    model = make_model(nodes, {"x": x}, ["out"], {"i": np.array(0, np.int64), "ax": np.array([0], np.int64),
                                                  "m": np.array([-1], np.int64)})
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    loaded = load_model(model, simplify=False)
    assert [n.op_type for n in loaded.model.graph.node] == ["Relu", "Reshape"]
    target = {t.name: onnx.numpy_helper.to_array(t) for t in loaded.model.graph.initializer}
    assert target[loaded.model.graph.node[1].input[1]].tolist() == [0, -1]
    assert max_abs_diff(model, {"x": x}, simplify=False) == 0.0


def test_external_data_model_loads(tmp_path: Path) -> None:
    model, x = small_cnn()
    path = tmp_path / "ext.onnx"
    onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True, location="ext.data",
              size_threshold=0)
    assert (tmp_path / "ext.data").stat().st_size > 0
    graph = lower(load_model(path))
    assert set(graph.weighted_ops()) == {"stem", "res_conv", "fc"}


def test_input_file_is_never_modified(tmp_path: Path) -> None:
    model, _ = small_cnn()
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    load_model(path)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_weights_are_parameters_addressed_by_node_name() -> None:
    model, _ = small_cnn()
    graph = lower(load_model(model))
    weighted = graph.weighted_ops()
    assert set(weighted) == {"stem", "res_conv", "fc"}
    params = {id(p) for p in graph.parameters()}
    for module in weighted.values():
        assert id(module.weight) in params and module.weight.requires_grad
    assert graph.op("fc").channel_axis == 0 and tuple(graph.op("fc").weight.shape) == (10, 8)


def test_model_with_no_nodes_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    with pytest.raises(ModelLoadError, match="no graph nodes"):
        load_model(path)
