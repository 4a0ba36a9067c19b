"""Per-layer settings (--layer-bits, a config file's `layers` table): resolved in the plan only."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from qdrop_onnx.graph import load_model, lower
from qdrop_onnx.quant.config import ConfigError, LayerRule, QuantConfig
from qdrop_onnx.quant.placement import plan_quantization
from tests.helpers import small_cnn, small_cnn_and_images

CLI = str(Path(sys.executable).parent / "qdrop-onnx")


def _plan(*rules: LayerRule, **settings: object) -> object:
    model, _ = small_cnn()
    return plan_quantization(lower(load_model(model)), QuantConfig(layers=list(rules), **settings).validate())


def test_a_rule_sets_its_layers_and_says_so() -> None:
    plan = _plan(LayerRule.parse("res_conv=2:3"), w_bits=4, a_bits=4)
    spec = plan.weights["res_conv"]
    assert (spec.bits, spec.rule) == (2, "--layer-bits res_conv=2:3")
    assert plan.activations[spec.input].bits == 3
    assert (plan.weights["stem"].bits, plan.weights["stem"].rule) == (8, None)  # first layer: its 8-bit default
    everything = _plan(LayerRule.parse("*=3"))  # a glob reaches the first and last layers too
    assert {s.bits for s in everything.weights.values()} == {3}


def test_later_rule_wins_and_the_disagreement_is_named(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="qdrop_onnx"):
        plan = _plan(LayerRule.parse("*conv=4"), LayerRule.parse("res_conv=2"))
    assert plan.weights["res_conv"].bits == 2 and plan.weights["stem"].bits == 8  # '*conv' is not 'stem'
    assert [r.getMessage() for r in caplog.records] == [
        "--layer-bits *conv=4 and --layer-bits res_conv=2 disagree on 1 node(s) (res_conv): the later one, "
        "--layer-bits res_conv=2, wins"]


@pytest.mark.parametrize(("rule", "message"), [
    (LayerRule.parse("nothing*=4"), "--layer-bits nothing*=4: no weighted node matches 'nothing*' (see "
                                    "`qdrop-onnx inspect`)"),
    (LayerRule("fc", w_bits=9, source="layers[0] (fc)"), "layers[0] (fc): bit widths are integers from 2 to 8, "
                                                           "got 9"),
])
def test_bad_rules_are_one_clear_error(rule: LayerRule, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        _plan(rule)
    assert str(err.value) == message


def test_config_file_rules_then_flags_reach_the_file_and_report_in_both_formats(tmp_path: Path) -> None:
    model, images = small_cnn_and_images(tmp_path, 32)
    config = tmp_path / "mixed.toml"
    config.write_text('[[layers]]\npattern = "res_conv"\nw_bits = 2\n\n[[layers]]\nnode = "fc"\nexclude = true\n')
    for fmt, types in (("int8", {onnx.TensorProto.INT8}), ("native", {onnx.TensorProto.INT2, onnx.TensorProto.INT4})):
        out = tmp_path / f"{fmt}.onnx"
        proc = subprocess.run([CLI, "quantize", str(model), "--calib", str(images), "--method", "rtn", "--w", "4",
                               "--a", "8", "--config", str(config), "--layer-bits", "stem=4", "--format", fmt,
                               "-o", str(out), "--json"], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        report = json.loads(Path(json.loads(proc.stdout)["report"]["json"]).read_text())
        layers = {la["node"]: (la["bits"], la.get("rule")) for la in report["layers"]}
        assert layers == {"stem": (4, "--layer-bits stem=4"), "res_conv": (2, "layers[0] (res_conv)")}  # fc: float
        weights = {t.data_type for t in onnx.load(str(out)).graph.initializer if t.name.endswith("/weight_quantized")}
        assert weights == types
    bad = subprocess.run([CLI, "quantize", str(model), "--calib", str(images), "--layer-bits", "stem:4"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "qdrop-onnx: error: Invalid value for '--layer-bits': takes PATTERN=W or PATTERN=W:A (e.g. 'conv1=8' or "
        "'*dw*=4:8'), got 'stem:4'"]
