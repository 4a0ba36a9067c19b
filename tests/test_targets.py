"""Deployment targets: each written file obeys its target's profile, ONNX Runtime's CPU provider still runs it
and computes what the torch simulation computes, and a request the target cannot run is refused up front."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from qdrop_onnx.api import quantize
from qdrop_onnx.data import TensorDataset, input_spec
from qdrop_onnx.quant.config import QuantConfig
from qdrop_onnx.targets import TARGETS, TargetError, get_target
from qdrop_onnx.verify import make_session
from tests.helpers import small_cnn, small_mobile_cnn
from tests.test_qdq_parity import forced_run

UINT8, INT8, INT4 = TensorProto.UINT8, TensorProto.INT8, TensorProto.INT4


def _quantize(model: onnx.ModelProto, target: str, **settings: object):
    calib = np.random.RandomState(1).randn(32, 3, 8, 8).astype(np.float32) * 2
    config = QuantConfig.from_dict({"target": target, "method": "rtn", "samples": 32, "calib_act_samples": 32,
                                    "batch_size": 32, **settings})
    return quantize(model, TensorDataset(calib, input_spec(model)), config)


def _file_grids(model: onnx.ModelProto) -> dict[str, list]:
    """What the file declares: per Q/DQ role, (zero point element type, zero point values, scale size, axis)."""
    inits = {t.name: t for t in model.graph.initializer}
    found: dict[str, list] = {"activation": [], "weight": [], "bias": []}
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear":
            continue
        zp = inits.get(node.input[2]) if len(node.input) > 2 else None
        role = "weight" if node.name.endswith("weight_DequantizeLinear") else \
            "bias" if node.name.endswith("bias_DequantizeLinear") else "activation"
        axis = next((a.i for a in node.attribute if a.name == "axis"), None)
        scale = numpy_helper.to_array(inits[node.input[1]])
        found[role].append((zp.data_type, numpy_helper.to_array(zp).reshape(-1), scale.size, axis))
    return found


@pytest.mark.parametrize("target", list(TARGETS))
@pytest.mark.parametrize("net", [small_cnn, small_mobile_cnn])
def test_file_obeys_the_target_and_ort_cpu_runs_it_exactly(target: str, net) -> None:
    model, x = net(seed=3)
    profile = get_target(target)
    result = _quantize(model, target)
    assert (result.config.w_bits, result.config.a_bits) == (profile.default_w_bits, profile.default_a_bits)
    grids = _file_grids(result.model)
    acts, weights = grids["activation"], grids["weight"]
    assert acts and weights
    assert {a[0] for a in acts} == {INT8 if profile.act_signed else UINT8}
    if profile.act_symmetric:
        assert all(not a[1].any() for a in acts)  # every activation zero point 0
    assert all(a[2] == 1 for a in acts)  # per tensor
    # Weights per output channel, symmetric (zero point 0) where the target needs it (here, by default, everywhere).
    assert all(w[2] > 1 and w[3] is not None and not w[1].any() for w in weights), weights
    narrow = {w[0] for w, spec in zip(weights, result.plan.weights.values(), strict=True) if spec.bits == 4}
    if target == "qnn":  # 4-bit weights in INT4 (opset 21), what the QNN EP takes as int4 kernels
        assert narrow == {INT4} and result.model.opset_import[0].version >= 21
    else:
        assert narrow <= {INT8}
    assert bool(grids["bias"]) == profile.int32_bias
    # ORT's CPU provider loads and runs every target's file, and computes what torch simulated.
    make_session(result.model.SerializeToString(), device="cpu", opt_level="all")
    r = forced_run(result, x, result.config.format)
    # Codes agree except at rounding ties: by one code, for a value within 2e-3 of .5 quanta (test_qdq_parity's
    # 1e-4 was measured on ResNet-20; here a float Clip and bias sit between ORT's conv and its Q, measured 1e-3).
    assert r["rel"] <= 1e-5 and r["mismatch"] <= 1e-3 and r["step"] <= 1 and (r["step"] == 0 or r["tie"] < 2e-3), r


def test_signed_symmetric_activations_use_the_negative_half() -> None:
    """TensorRT's grid on a tensor with negative values: codes on both sides of 0, none past -128..127."""
    model, x = small_cnn(seed=3)
    result = _quantize(model, "tensorrt")
    q = result.sim.acts["x"]  # the model input: negative and positive values
    assert (q.grid.qmin, q.grid.qmax, float(q.zero_point)) == (-128, 127, 0.0)
    codes = np.round(x / float(q.scale.detach()))
    assert codes.min() < -32 and codes.max() > 32


@pytest.mark.parametrize("settings, message", [
    ({"target": "tensorrt", "a_bits": 4},
     "--target tensorrt runs 8-bit activations only (TensorRT int8, symmetric), got --a 4"),
    ({"target": "tensorrt", "w_bits": 4},
     "--target tensorrt runs 8-bit weights only (TensorRT int8, symmetric), got --w 4"),
    ({"target": "qnn", "w_bits": 2}, "--target qnn runs 4/8-bit weights only (Qualcomm QNN HTP), got --w 2"),
    ({"target": "openvino", "a_bits": 8, "first_last_bits": 6},
     "--target openvino runs 8-bit activations only (OpenVINO CPU plugin, int8), got --first-last-bits 6"),
    ({"target": "tensorrt", "format": "native"}, "--target tensorrt reads --format int8 only, got --format native"),
    ({"target": "qnn", "weight_asymmetric": True},
     "--target qnn needs symmetric weights (zero point 0): drop --weight-asymmetric"),
    ({"target": "qnn", "avg_w_bits": 5.0},
     "--target qnn runs 4/8-bit weights only (Qualcomm QNN HTP), got --alloc-widths 2"),
    ({"target": "gpu"}, "--target must be one of ort_cpu, tensorrt, openvino, qnn, got 'gpu'"),
])
def test_requests_the_target_cannot_run_are_refused(settings: dict, message: str) -> None:
    with pytest.raises(TargetError) as info:
        QuantConfig.from_dict(settings).validate()
    assert str(info.value) == message


def test_cli_refuses_before_reading_anything(tmp_path: Path) -> None:
    """Exit 2, one line, and the (empty) calibration folder is never opened: the refusal comes first."""
    model, _ = small_cnn()
    onnx.save(model, tmp_path / "net.onnx")
    (tmp_path / "empty").mkdir()
    proc = subprocess.run([sys.executable, "-m", "cli.main", "quantize", str(tmp_path / "net.onnx"), "--calib",
                           str(tmp_path / "empty"), "--target", "tensorrt", "--a", "4"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == ["qdrop-onnx: error: --target tensorrt runs 8-bit activations only "
                                        "(TensorRT int8, symmetric), got --a 4"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "net.onnx"]


def test_flags_still_override_the_targets_defaults() -> None:
    config = QuantConfig.from_dict({"target": "openvino", "w_bits": 8, "format": "int8"}).validate()
    assert (config.w_bits, config.a_bits, config.format) == (8, 8, "int8")
    assert QuantConfig.from_dict({"target": "qnn"}).validate().format == "native"
    assert QuantConfig().validate().format == "int8" and QuantConfig().target == "ort_cpu"


def test_reduce_range_is_the_targets_unless_a_flag_says_otherwise(monkeypatch) -> None:
    assert QuantConfig().validate().reduce_range is False  # every shipped target: off
    monkeypatch.setitem(TARGETS, "saturating", replace(TARGETS["ort_cpu"], name="saturating", reduce_range=True))
    assert QuantConfig.from_dict({"target": "saturating"}).validate().reduce_range is True
    assert QuantConfig.from_dict({"target": "saturating", "reduce_range": False}).validate().reduce_range is False
    assert QuantConfig.from_dict({"reduce_range": True}).validate().reduce_range is True


def test_readme_targets_table_is_what_the_command_prints() -> None:
    proc = subprocess.run([sys.executable, "-m", "cli.main", "targets"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("target ")
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert "```\n" + proc.stdout + "```" in readme


def test_openvino_target_without_openvino_verifies_in_ort_with_a_warning(tmp_path: Path, monkeypatch, caplog) -> None:
    """The file is written by then: a missing verifier must not turn a finished run into a failure."""
    import qdrop_onnx.api as api

    model, _ = small_cnn()
    onnx.save(model, tmp_path / "net.onnx")
    calib = np.random.RandomState(1).randn(32, 3, 8, 8).astype(np.float32) * 2
    config = QuantConfig.from_dict({"target": "openvino", "method": "rtn", "samples": 16, "batch_size": 16})
    result = quantize(model, TensorDataset(calib, input_spec(model)), config, tmp_path / "q.onnx")
    monkeypatch.setattr(api, "openvino_available", lambda: False)
    check = api.verify(result, tmp_path / "net.onnx")
    assert check.runtime == "onnxruntime" and check.coverage is not None
    assert "verifies in OpenVINO, but the openvino package is not installed" in caplog.text


def test_tensorrt_file_in_ort_names_the_float_bias_as_the_reason() -> None:
    """TensorRT keeps biases float; ORT's CPU fusion wants int32 ones: the report says so per layer."""
    from qdrop_onnx.api import left_in_float
    from qdrop_onnx.verify.coverage import integer_kernel_coverage

    model, _ = small_cnn(seed=3)
    result = _quantize(model, "tensorrt")
    coverage = integer_kernel_coverage(result.model.SerializeToString())
    rows = left_in_float(result, coverage, "onnxruntime")
    reasons = {r["node"]: r["reason"] for r in rows}
    bias = "its bias stays float (--target tensorrt), and ONNX Runtime fuses it only with an int32 bias"
    assert reasons["stem"] == reasons["fc"] == bias  # the two with a bias
    assert reasons.get("res_conv", "") != bias  # no bias: whatever keeps it float, not that
