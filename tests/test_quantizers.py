"""Quantizer building blocks against ONNX Runtime's own QuantizeLinear/DequantizeLinear, and placement."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from onnx import helper

from qdrop_onnx.graph import load_model, lower
from qdrop_onnx.quant import ActivationQuantizer, IntGrid, QuantConfig, WeightQuantizer, plan_quantization
from qdrop_onnx.quant.config import ConfigError, read_config_file
from qdrop_onnx.quant.grid import fake_quantize, lp_error
from qdrop_onnx.targets import TARGETS
from tests.helpers import make_model, run_ort, small_cnn


def test_fake_quantize_equals_onnxruntime_qdq_bit_for_bit_including_ties() -> None:
    rng = np.random.RandomState(0)
    scale, zp = np.float32(0.0371), 7
    x = (rng.randn(4096) * 3).astype(np.float32)
    x[:64] = ((np.arange(64) - 32 + 0.5) * scale).astype(np.float32)  # exact ties
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["out"])]
    model = make_model(nodes, {"x": x}, ["out"], {"s": scale, "z": np.uint8(zp)})
    expected = run_ort(model, {"x": x})[0]
    got = fake_quantize(torch.from_numpy(x), torch.tensor(scale), torch.tensor(float(zp)), IntGrid(8, False)).numpy()
    assert np.array_equal(got, expected)


def test_grids() -> None:
    assert (IntGrid(4, True).qmin, IntGrid(4, True).qmax) == (-8, 7)
    assert (IntGrid(2, False).qmin, IntGrid(2, False).qmax) == (0, 3)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_weight_search_beats_minmax_and_stays_in_grid(bits: int, symmetric: bool) -> None:
    w = torch.from_numpy(np.random.RandomState(bits).standard_t(4, size=(16, 3, 3, 3)).astype(np.float32))
    q = WeightQuantizer(bits, channel_axis=0, symmetric=symmetric)
    q.init_from(w)
    codes = q.integers(w)
    assert codes.min() >= q.grid.qmin and codes.max() <= q.grid.qmax
    if symmetric:
        assert torch.all(q.zero_point == 0)
    # Plain min/max quantization of the same grid: what the search must beat.
    w2d = w.reshape(16, -1)
    lo, hi = w2d.min(1).values.clamp(max=0), w2d.max(1).values.clamp(min=0)
    if symmetric:
        scale, zp = torch.maximum(-lo, hi) / q.grid.qmax, torch.zeros(16)
    else:
        scale = (hi - lo) / (q.grid.qmax - q.grid.qmin)
        zp = torch.clamp(q.grid.qmin - torch.round(lo / scale), q.grid.qmin, q.grid.qmax)
    minmax = fake_quantize(w2d, scale[:, None], zp[:, None], q.grid).reshape(w.shape)
    searched, baseline = lp_error(q(w), w, 2.4), lp_error(minmax, w, 2.4)
    assert searched <= baseline
    if bits <= 4:
        assert searched < 0.96 * baseline


def test_activation_quantizer_unsigned_for_nonnegative_and_learnable_scale() -> None:
    x = torch.relu(torch.randn(8, 4, 5, 5))
    q = ActivationQuantizer(4, nonnegative=True, init="mse")
    q.start_observing()
    q(x)
    q.finish_observing()
    assert float(q.zero_point) == 0 and 0 < q.scale.item() < float(x.max()) / 15 * 1.0001
    y = q(x)
    codes = torch.round(y / q.scale)
    assert codes.min() >= 0 and codes.max() <= 15 and torch.allclose(codes, y / q.scale, atol=1e-4)
    y.sum().backward()
    assert q.scale.grad is not None and q.scale.grad != 0  # LSQ: the step size gets a gradient
    signed = ActivationQuantizer(4, nonnegative=False, init="minmax")
    signed.start_observing()
    signed(torch.linspace(-1, 3, 100))
    signed.finish_observing()
    assert float(signed.zero_point) == round(1 / (4 / 15)) and abs(signed.scale.item() - 4 / 15) < 1e-6


def test_placement_on_small_cnn() -> None:
    model, _ = small_cnn()
    graph = lower(load_model(model))
    plan = plan_quantization(graph, QuantConfig(w_bits=4, a_bits=3))
    assert {n: s.bits for n, s in plan.weights.items()} == {"stem": 8, "res_conv": 4, "fc": 8}
    assert plan.first == "stem" and plan.last == "fc"
    acts = {s.tensor: (s.bits, s.nonnegative) for s in plan.activations.values()}
    stem_out = graph.node("stem").node.outputs[0]
    relu_out = next(ln.node.outputs[0] for ln in graph.nodes if ln.node.inputs == (stem_out,))
    assert acts["x"] == (8, False)  # model input feeds the first layer: 8-bit, may be negative
    assert acts[relu_out] == (3, True)  # Relu output: unsigned
    assert acts["f"] == (8, True)  # pooled Relu output into the last layer: 8-bit, unsigned
    assert acts["r1"] == (8, True)  # conv -> Relu output into the residual add: residual_bits (8)
    assert "c1" not in acts and "s" not in acts  # pre-activation and add->Relu outputs stay float
    assert plan.weights["res_conv"].quantize_bias is False  # no bias on that conv
    assert plan.weights["fc"].quantize_bias and plan.weights["fc"].channel_axis == 0
    everything = plan_quantization(graph, QuantConfig(w_bits=4, a_bits=3, quantize_first_last=True,
                                                      exclude=["res_conv"]))
    assert {n: s.bits for n, s in everything.weights.items()} == {"stem": 4, "fc": 4}
    assert "r1" not in everything.activations and everything.activations["x"].bits == 3


def test_residual_quantizers_are_the_targets_rule(monkeypatch) -> None:
    graph = lower(load_model(small_cnn()[0]))
    ort_cpu = QuantConfig(w_bits=4, a_bits=8)
    assert plan_quantization(graph, ort_cpu).activations["r1"].reason == "output of res_conv into residual add Add_5"
    # OpenVINO does not round a conv output on its way into the Add (tests/test_openvino.py): no quantizer there.
    openvino = QuantConfig(w_bits=4, a_bits=8, target="openvino")
    assert "r1" not in plan_quantization(graph, openvino).activations
    monkeypatch.setitem(TARGETS, "openvino", replace(TARGETS["openvino"], quantized_residuals=True))
    assert "r1" in plan_quantization(graph, openvino).activations


def test_no_weighted_layer_and_unknown_exclude_are_clear_errors() -> None:
    x = np.zeros((1, 4), np.float32)
    graph = lower(load_model(make_model([helper.make_node("Relu", ["x"], ["out"])], {"x": x}, ["out"])))
    with pytest.raises(ConfigError, match="the model has no weighted layer"):
        plan_quantization(graph, QuantConfig())
    model, _ = small_cnn()
    with pytest.raises(ConfigError, match="--exclude: no weighted node named 'nope'"):
        plan_quantization(lower(load_model(model)), QuantConfig(exclude=["nope"]))


def test_config_files_and_validation(tmp_path) -> None:
    (tmp_path / "c.toml").write_text('w-bits = 3\nmethod = "rtn"\nexclude = ["a"]\n')
    (tmp_path / "c.yaml").write_text("a_bits: 2\nseed: 7\n")
    assert read_config_file(tmp_path / "c.toml") == {"w_bits": 3, "method": "rtn", "exclude": ["a"]}
    assert QuantConfig.from_dict(read_config_file(tmp_path / "c.yaml")).validate().a_bits == 2
    with pytest.raises(ConfigError, match="--w must be an integer bit width from 2 to 8, got 9"):
        QuantConfig(w_bits=9).validate()
    with pytest.raises(ConfigError, match="unknown setting\\(s\\) bogus"):
        QuantConfig.from_dict({"bogus": 1})
    (tmp_path / "bad.toml").write_text("w_bits = [")
    with pytest.raises(ConfigError, match="cannot parse config file"):
        read_config_file(tmp_path / "bad.toml")


def test_every_setting_is_a_flag_that_errors_name_correctly() -> None:
    """Config errors name a flag (`flag_name`): each QuantConfig field must have exactly that quantize flag."""
    import dataclasses

    from cli.main import quantize as quantize_command
    from qdrop_onnx.quant.config import flag_name

    flags = {opt for p in quantize_command.params for opt in p.opts}
    missing = [f.name for f in dataclasses.fields(QuantConfig) if flag_name(f.name) not in flags]
    assert missing == []
    for bad, message in ((QuantConfig(first_last_bits=1), "--first-last-bits must be an integer bit width"),
                         (QuantConfig(calib_act_samples=0), "--calib-act-samples must be a positive integer"),
                         (QuantConfig(lp_norm=0), "--lp-norm must be positive")):
        with pytest.raises(ConfigError, match=message):
            bad.validate()


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("dropped", [False, True])
def test_lsq_fake_quantize_matches_fake_quantize_and_pytorchs_lsq_gradients(dropped: bool,
                                                                             layout: torch.memory_format) -> None:
    """The hand-written reconstruction kernel: values of fake_quantize, gradients of PyTorch's LSQ kernel."""
    from qdrop_onnx.quant.activation import drop_mask, lsq_fake_quantize

    torch.manual_seed(0)
    grid = IntGrid(4, signed=False)
    x = (torch.randn(8, 16, 10, 10) * 3).contiguous(memory_format=layout).requires_grad_()
    scale, zp = torch.tensor(0.37, requires_grad=True), torch.tensor(5.0)
    keep = drop_mask(x, 0.5, torch.Generator().manual_seed(1)) if dropped else None
    out = lsq_fake_quantize(x, scale, zp, grid, keep)
    upstream = torch.randn_like(out)
    gx, gs = torch.autograd.grad(out, (x, scale), upstream)
    ref = torch._fake_quantize_learnable_per_tensor_affine(x, scale.reshape(1), zp.reshape(1), 0, 15, 1.0)
    exact = fake_quantize(x, scale, zp, grid)
    if keep is not None:
        ref, exact = torch.where(keep.bool(), x, ref), torch.where(keep.bool(), x, exact)
    rx, rs = torch.autograd.grad(ref, (x, scale), upstream)
    assert torch.equal(out, exact)  # bit-exact: the exported file computes these values
    assert torch.equal(gx, rx)
    assert gs.item() == pytest.approx(rs.item(), rel=1e-5)
    assert keep is None or 0.45 < float(keep.mean()) < 0.55


def test_bias_that_would_overflow_int32_raises_the_weight_scale() -> None:
    """A near-zero channel with a large bias (EfficientNet's depthwise convs have them) must stay exact."""
    from qdrop_onnx.quant.sim import QuantSim

    model, x = small_cnn()
    graph = lower(load_model(model))
    config = QuantConfig(w_bits=8, a_bits=8, quantize_first_last=True)
    name = next(iter(graph.weighted_ops()))
    op = graph.op(name)
    with torch.no_grad():
        op.weight[0].mul_(1e-9)
        op.bias[0] = 5.0
    sim = QuantSim(graph, plan_quantization(graph, config), config)
    sim.calibrate([[torch.from_numpy(x)]])
    params = sim.export_params().weights[name]
    assert params.bias_values is not None and abs(int(params.bias_values[0])) < 2**31 - 1
    assert float(params.bias_values[0]) * float(params.bias_scale[0]) == pytest.approx(5.0, rel=1e-6)
