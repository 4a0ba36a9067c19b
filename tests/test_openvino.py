"""OpenVINO as a second integer runtime: it runs qdrop-onnx's files in int8 and agrees with ONNX Runtime.

Skipped only where the ``openvino`` package is absent (``make test`` installs it with the dev extras).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qdrop_onnx.api import quantize
from qdrop_onnx.data import TensorDataset, input_spec, input_specs, open_dataset
from qdrop_onnx.graph import load_model
from qdrop_onnx.quant.config import QuantConfig
from qdrop_onnx.verify import evaluate_classification, make_session
from qdrop_onnx.verify.runtimes import OpenVinoSession, openvino_available, openvino_coverage
from tests.helpers import ASSETS, needs_assets, small_cnn, small_mobile_cnn

pytestmark = pytest.mark.skipif(not openvino_available(), reason="the openvino package is not installed")


@pytest.mark.parametrize("w_bits", [8, 4])
@pytest.mark.parametrize("net", [small_cnn, small_mobile_cnn])
def test_openvino_runs_every_weighted_layer_in_int8_and_agrees_with_ort(net, w_bits: int) -> None:
    model, x = net(seed=3)
    calib = np.random.RandomState(1).randn(32, 3, 8, 8).astype(np.float32) * 2
    config = QuantConfig.from_dict({"target": "openvino", "w_bits": w_bits, "method": "rtn", "samples": 32,
                                    "calib_act_samples": 32, "batch_size": 32})
    data = quantize(model, TensorDataset(calib, input_spec(model)), config).model.SerializeToString()
    session = OpenVinoSession(data)
    coverage = openvino_coverage(session)
    assert coverage.total == {small_cnn: 3, small_mobile_cnn: 4}[net] and coverage.integer == coverage.total
    ours, theirs = session.run(None, {"x": x})[0], make_session(data, device="cpu").run(None, {"x": x})[0]
    # Both runtimes compute the same integer arithmetic: equal to float32 rounding of the output range.
    assert np.abs(ours - theirs).max() <= 1e-5 * np.abs(theirs).max()


def test_float_model_is_counted_as_float() -> None:
    """Coverage is what OpenVINO executed: a float model's convs count as float, not as integer."""
    model, _ = small_cnn()
    coverage = openvino_coverage(OpenVinoSession(model.SerializeToString()))
    assert (coverage.integer, coverage.total) == (0, 3)


@needs_assets
@pytest.mark.parametrize("w_bits", [8, 4])
def test_resnet20_openvino_top1_matches_ort_and_runs_in_int8(tmp_path: Path, w_bits: int) -> None:
    """W8A8 and W4A8 (RTN on 64 calibration images, --target openvino) on 1000 CIFAR-10 test images:
    OpenVINO's top-1 within the issue's 0.3 points of ONNX Runtime's on the same file, >= 90 % of the weighted
    layers executed in int8 (20 of 20), and the two runtimes' logits as close as two exact integer
    implementations of one file are. With a quantizer on the residual branch's conv output (the ORT CPU rule)
    OpenVINO skips that rounding and the mean |logit difference| was 0.11 (10,000 images, W8A8); without it
    0.008 at W8A8 and 0.017 at W4A8, where ORT's own fused and unfused sessions differ by 0.008-0.014."""
    path = ASSETS / "models/resnet20_cifar10.onnx"
    spec = input_specs(load_model(path, simplify=False).model)
    calib = open_dataset(ASSETS / "cifar10/calib", spec, preset="cifar10")
    config = QuantConfig.from_dict({"target": "openvino", "w_bits": w_bits, "method": "rtn", "samples": 64})
    out = tmp_path / "q.onnx"
    quantize(str(path), calib, config, out)
    test = open_dataset(ASSETS / "cifar10/test", spec, preset="cifar10")
    test = test.subset(np.linspace(0, len(test) - 1, 1000).round().astype(int).tolist())
    session, reference = OpenVinoSession(out), make_session(out, device="cpu")
    ov = evaluate_classification(session, test, spec)
    ort = evaluate_classification(reference, test, spec)
    coverage = openvino_coverage(session)
    assert abs(ov.top1 - ort.top1) <= 0.3, (ov.top1, ort.top1)
    assert coverage.integer >= 0.9 * coverage.total and coverage.total == 20
    assert ort.top1 >= {8: 80.0, 4: 79.0}[w_bits]  # float 82.1 on these images
    gaps = [np.abs(session.run(None, x)[0] - reference.run(None, x)[0]).mean() for x, _ in test.batches(250)]
    assert float(np.mean(gaps)) <= 0.04, gaps


def test_eval_runtime_openvino_prints_what_it_executed(tmp_path: Path) -> None:
    from PIL import Image

    model, _ = small_cnn()
    float_path = tmp_path / "net.onnx"
    import onnx

    onnx.save(model, float_path)
    rng = np.random.RandomState(0)
    (tmp_path / "imgs").mkdir()
    for i in range(8):
        Image.fromarray(rng.randint(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / "imgs" / f"{i}.png")
    calib = np.random.RandomState(1).randn(32, 3, 8, 8).astype(np.float32) * 2
    config = QuantConfig.from_dict({"target": "openvino", "method": "rtn", "samples": 32, "batch_size": 32})
    quantize(model, TensorDataset(calib, input_spec(model)), config, tmp_path / "q.onnx")
    proc = subprocess.run([sys.executable, "-m", "cli.main", "eval", str(tmp_path / "q.onnx"), "--data",
                           str(tmp_path / "imgs"), "--reference", str(float_path), "--runtime", "openvino"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "  integer kernels: 3 of 3 weighted ops" in proc.stdout.splitlines()
    assert any(line.startswith("  OpenVINO time") for line in proc.stdout.splitlines())
