"""Shared test helpers: build small ONNX graphs and compare the torch rebuild with ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from qdrop_onnx.graph import load_model, lower

ASSETS = Path(__file__).resolve().parents[1].parent / "shared" / "assets"
needs_assets = pytest.mark.skipif(not ASSETS.is_dir(), reason=f"real assets not found at {ASSETS}")

_ELEM = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int64): TensorProto.INT64,
         np.dtype(np.int32): TensorProto.INT32, np.dtype(np.bool_): TensorProto.BOOL}


def make_model(nodes: list[onnx.NodeProto], inputs: dict[str, np.ndarray], outputs: list[str],
               consts: dict[str, np.ndarray] | None = None, opset: int = 17,
               out_types: dict[str, int] | None = None) -> onnx.ModelProto:
    """A model from nodes; graph inputs typed from example arrays, outputs float unless out_types says."""
    out_types = out_types or {}
    graph = helper.make_graph(
        nodes, "test",
        [helper.make_tensor_value_info(n, _ELEM[a.dtype], list(a.shape)) for n, a in inputs.items()],
        [helper.make_tensor_value_info(n, out_types.get(n, TensorProto.FLOAT), None) for n in outputs],
        [numpy_helper.from_array(np.asarray(v), n) for n, v in (consts or {}).items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset <= 17 else 9 if opset <= 20 else 10
    # Graph outputs need a shape for onnx.checker: take it from shape inference (rank-only when unknown).
    inferred = onnx.shape_inference.infer_shapes(model)
    known = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    for out in model.graph.output:
        source = known.get(out.name)
        if source is not None and source.type.tensor_type.HasField("shape"):
            out.type.tensor_type.shape.CopyFrom(source.type.tensor_type.shape)
        else:
            out.type.tensor_type.shape.SetInParent()
    return model


def run_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def run_torch(model: onnx.ModelProto, feeds: dict[str, np.ndarray], simplify: bool = False) -> list[np.ndarray]:
    graph = lower(load_model(model, simplify=simplify))
    with torch.no_grad():
        out = graph(*[torch.from_numpy(feeds[name]) for name in graph.input_names])
    outs = out if isinstance(out, tuple) else (out,)
    return [o.numpy() for o in outs]


def max_abs_diff(model: onnx.ModelProto, feeds: dict[str, np.ndarray], simplify: bool = False) -> float:
    """Largest |torch - ORT| over all outputs; shapes and dtypes must match exactly."""
    expected = run_ort(model, feeds)
    got = run_torch(model, feeds, simplify=simplify)
    assert len(got) == len(expected)
    worst = 0.0
    for g, e in zip(got, expected, strict=True):
        assert g.shape == e.shape, (g.shape, e.shape)
        assert g.dtype == e.dtype, (g.dtype, e.dtype)
        if g.size:
            worst = max(worst, float(np.max(np.abs(g.astype(np.float64) - e.astype(np.float64)))))
    return worst
