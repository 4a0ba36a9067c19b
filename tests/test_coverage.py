"""Integer-kernel coverage on graphs no one tuned for, in ONNX Runtime (CPU, ORT_ENABLE_ALL).

A Keras-style CNN (BatchNormalization after the ReLU, valid padding) runs every weighted op as an integer
kernel (it ran 1 of 5 before the BN folds and the conv-output quantizers), and the folds that get it there
are exact. A MobileNetV3-style net (HardSwish, squeeze-excite, Erf-GELU, Resize, ConvTranspose, Concat, a 1x1
head writing the output map) runs all 9 (3 of 9 before the conv-output quantizers, 7 of 9 before the
ConvTranspose rewrite and the quantized output map)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from qdrop_onnx.api import left_in_float, quantize
from qdrop_onnx.data import TensorDataset, input_spec
from qdrop_onnx.export.qdq import build_qdq_model
from qdrop_onnx.graph import load_model
from qdrop_onnx.quant.config import QuantConfig
from qdrop_onnx.targets import get_target
from qdrop_onnx.verify import make_session
from qdrop_onnx.verify.coverage import integer_kernel_coverage
from tests.helpers import keras_style_cnn, mobile_detector_net, run_ort
from tests.test_qdq_parity import forced_run


@pytest.mark.parametrize("groups", [1, 2, 8])
def test_batchnorm_after_relu_folds_into_the_next_layer_exactly(groups: int) -> None:
    model, x = keras_style_cnn(seed=1, groups=groups)
    loaded = load_model(model)
    assert loaded.folded_batchnorms == 4
    assert [n.op_type for n in loaded.model.graph.node].count("BatchNormalization") == 0
    before, after = run_ort(model, {"x": x})[0], run_ort(loaded.model, {"x": x})[0]
    np.testing.assert_allclose(after, before, rtol=0, atol=1e-6 * float(np.abs(before).max()))


def test_batchnorm_before_a_padded_conv_stays() -> None:
    """Padding BN(x) with zeros is not BN of x padded with zeros: that BN is not folded."""
    model, x = keras_style_cnn(seed=1)
    conv1 = next(n for n in model.graph.node if n.name == "conv1")
    conv1.attribute.append(helper.make_attribute("pads", [1, 1, 1, 1]))
    loaded = load_model(model)
    assert [n.name for n in loaded.model.graph.node if n.op_type == "BatchNormalization"] == ["bn0"]
    np.testing.assert_allclose(run_ort(loaded.model, {"x": x})[0], run_ort(model, {"x": x})[0], rtol=0,
                               atol=1e-5 * float(np.abs(run_ort(model, {"x": x})[0]).max()))


def _rtn(model, bits: int):
    """RTN WbAb on 32 random 16x16 images, and the ORT coverage of the file."""
    calib = np.random.RandomState(1).randn(32, 3, 16, 16).astype(np.float32)
    config = QuantConfig(w_bits=bits, a_bits=bits, method="rtn", samples=32, calib_act_samples=32, batch_size=32)
    result = quantize(model, TensorDataset(calib, input_spec(model)), config)
    return result, integer_kernel_coverage(result.model.SerializeToString())


@pytest.mark.parametrize("bits", [8, 4])
def test_keras_style_cnn_runs_every_weighted_op_on_integers(bits: int) -> None:
    result, coverage = _rtn(keras_style_cnn()[0], bits)
    assert (coverage.integer, coverage.total) == (5, 5)
    # The last conv feeds GlobalAveragePool: its ReLU output carries an 8-bit quantizer so ORT fuses it.
    fused = [s for s in result.plan.activations.values() if "so the runtime fuses it" in s.reason]
    assert [(s.tensor, s.bits) for s in fused] == [("r3", 8)]


@pytest.mark.parametrize("bits", [8, 4])
def test_mobile_detector_convs_run_on_integers_and_the_file_is_exact(bits: int) -> None:
    model, x = mobile_detector_net()
    result, coverage = _rtn(model, bits)
    assert (coverage.integer, coverage.total) == (9, 9)
    # ORT's CPU provider has no integer ConvTranspose: the target rewrote it as Conv -> DepthToSpace.
    assert [n.op_type for n in result.model.graph.node if n.name.startswith("up") and "_Dequantize" not in n.name] \
        == ["Conv", "QuantizeLinear", "DequantizeLinear", "DepthToSpace"]
    fused = {s.tensor for s in result.plan.activations.values() if "so the runtime fuses it" in s.reason}
    # before HardSwish, SE, HardSigmoid, GELU, DepthToSpace, and the output map
    assert fused == {"s0", "d1", "e2", "p0", "up/phases", "map"}
    r = forced_run(result, x, "int8")
    assert r["rel"] <= 1e-5 and r["mismatch"] <= 1e-3 and r["step"] <= 1
    assert left_in_float(result, coverage, "onnxruntime") == []


def test_float_outputs_keeps_the_map_float_and_says_why() -> None:
    model, x = mobile_detector_net()
    calib = np.random.RandomState(1).randn(32, 3, 16, 16).astype(np.float32)
    config = QuantConfig(w_bits=8, a_bits=8, method="rtn", samples=32, calib_act_samples=32, float_outputs=True)
    result = quantize(model, TensorDataset(calib, input_spec(model)), config)
    coverage = integer_kernel_coverage(result.model.SerializeToString())
    assert (coverage.integer, coverage.total) == (8, 9)
    assert "map" not in result.plan.activations
    assert left_in_float(result, coverage, "onnxruntime") == [
        {"node": "head", "reason": "writes a graph output, which --float-outputs keeps float (the runtime fuses a "
                                   "conv only with a quantized output)"}]
    assert forced_run(result, x, "int8")["rel"] <= 1e-5


def test_other_targets_keep_the_conv_transpose() -> None:
    """OpenVINO runs ConvTranspose on integers itself: its file keeps the op (the rewrite is ORT CPU's)."""
    model, _ = mobile_detector_net()
    calib = np.random.RandomState(1).randn(32, 3, 16, 16).astype(np.float32)
    config = QuantConfig(w_bits=8, a_bits=8, method="rtn", samples=32, calib_act_samples=32, target="openvino")
    result = quantize(model, TensorDataset(calib, input_spec(model)), config)
    assert [n.op_type for n in result.model.graph.node if n.name == "up"] == ["ConvTranspose"]



def _optimized(model_bytes: bytes, tmp_path: Path) -> list[onnx.NodeProto]:
    """The nodes ONNX Runtime's CPU provider runs (ORT_ENABLE_ALL, as its optimizer saves them)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    return list(onnx.load(str(tmp_path / "optimized.onnx")).graph.node)


@pytest.mark.parametrize("bits", [8, 4])
def test_ort_runs_the_upsampling_and_the_concat_on_integers(bits: int, tmp_path: Path) -> None:
    """The target's extra Q/DQ pairs (a Q of the phases' grid after DepthToSpace, the Concat's grid on its
    float input) let ORT run DepthToSpace on uint8 and Concat as QLinearConcat, and a 4-bit activation's grid
    Clip runs on the uint8 codes. None of them changes a value: the file computes exactly what the same
    parameters compute written without them."""
    model, x = mobile_detector_net()
    result, _ = _rtn(model, bits)
    nodes = _optimized(result.model.SerializeToString(), tmp_path)
    producer = {o: n.op_type for n in nodes for o in n.output}
    ops = [n.op_type for n in nodes]
    assert "QLinearConcat" in ops and "Concat" not in ops
    assert [producer[n.input[0]] for n in nodes if n.op_type == "DepthToSpace"] == ["Transpose"]  # NHWC uint8
    clips = {producer[n.input[0]] for n in nodes if n.op_type == "Clip"}
    integer_producers = {"QLinearConv", "QLinearConcat", "QLinearGlobalAveragePool", "QuantizeLinear"}
    assert (clips == set()) if bits == 8 else (clips and clips <= integer_producers)
    plain = build_qdq_model(load_model(model, rewrites=get_target("ort_cpu").rewrites).model, result.params)
    assert ops_count(result.model, "QuantizeLinear") == ops_count(plain, "QuantizeLinear") + 2
    run = {name: make_session(m.SerializeToString(), device="cpu", opt_level="disable").run(None, {"x": x})[0]
           for name, m in (("target", result.model), ("plain", plain))}
    assert np.array_equal(run["target"], run["plain"])


def ops_count(model: onnx.ModelProto, op_type: str) -> int:
    return [n.op_type for n in model.graph.node].count(op_type)
