"""What a CI pipeline relies on: the --fail-below gate (exit 3), a diverged block restored to round-to-nearest,
and block cuts only where the cache can batch the tensors."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from qdrop_onnx.graph import load_model, lower, partition
from qdrop_onnx.graph.partition import batch_major_tensors
from tests.helpers import ASSETS, needs_assets, small_cnn_and_images

CLI = str(Path(sys.executable).parent / "qdrop-onnx")


def _quantize(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    model, images = small_cnn_and_images(tmp_path, 48, classes=3)
    return subprocess.run([CLI, "quantize", str(model), "--calib", str(images), "--method", "rtn", "--w", "8",
                           "--a", "8", "--samples", "48", "--calib-act-samples", "48", "--eval", str(images),
                           "-o", str(tmp_path / "q.onnx"), *args],
                          capture_output=True, text=True, timeout=300)


def test_fail_below_met_exits_0_and_missed_exits_3_with_one_line_and_the_file(tmp_path: Path) -> None:
    met = _quantize(tmp_path, "--fail-below", "sqnr=5", "--fail-below", "top1-drop=100", "--json")
    assert met.returncode == 0, met.stderr
    sqnr = json.loads(met.stdout)["verification"]["sqnr_db"]
    (tmp_path / "q.onnx").unlink()
    missed = _quantize(tmp_path, "--fail-below", "sqnr=5", "--fail-below", "sqnr=1000", "-q")
    assert missed.returncode == 3
    assert missed.stderr.strip().splitlines() == [
        f"qdrop-onnx: verification gate: output SQNR {sqnr:.4g} dB is below the bound 1000 dB "
        "(--fail-below sqnr=1000)"]
    assert (tmp_path / "q.onnx").exists() and (tmp_path / "q.report.json").exists()


@pytest.mark.parametrize(("bound", "message"), [
    ("cosine=0.99", "--fail-below cosine: mean cosine applies to sequence and tensor outputs; this model's output "
                    "is a classes output"),
    ("speed=3", "Invalid value for '--fail-below': takes METRIC=VALUE with METRIC one of top1, top1-drop, agreement, "
                "cosine, cosine-min, pixel-agreement, iou, sqnr; got 'speed=3'"),
    ("sqnr=loud", "Invalid value for '--fail-below': sqnr: 'loud' is not a number"),
])
def test_fail_below_refuses_what_cannot_apply_before_any_work(tmp_path: Path, bound: str, message: str) -> None:
    proc = _quantize(tmp_path, "--fail-below", bound)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"qdrop-onnx: error: {message}"]
    assert not (tmp_path / "q.onnx").exists()


def test_a_diverged_block_is_restored_to_round_to_nearest(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from qdrop_onnx.api import quantize
    from qdrop_onnx.quant.config import QuantConfig

    model, images = small_cnn_and_images(tmp_path, 32)
    rtn = quantize(model, images, QuantConfig(w_bits=4, a_bits=4, method="rtn", samples=32))
    # An infinite rounding learning rate sends AdaRound's variables to +-inf, then NaN (inf - inf).
    config = QuantConfig(w_bits=4, a_bits=4, method="brecq", samples=32, iters=20, batch_size=8,
                         round_lr=float("inf"))
    with caplog.at_level(logging.WARNING, logger="qdrop_onnx"):
        result = quantize(model, images, config, tmp_path / "q.onnx")
    warned = [r.getMessage() for r in caplog.records if "diverged" in r.getMessage()]
    assert warned and all("restored to round-to-nearest" in m for m in warned)
    assert all(b.kept_rtn for b in result.blocks) and all(np.isfinite(b.loss_after) for b in result.blocks)
    for name, w in result.params.weights.items():
        assert np.array_equal(w.values, rtn.params.weights[name].values), name  # the RTN codes
    for t in onnx.load(str(result.output)).graph.initializer:
        values = onnx.numpy_helper.to_array(t)
        assert values.dtype.kind != "f" or np.isfinite(values).all(), t.name


def test_cuts_only_where_every_crossing_tensor_is_batched() -> None:
    """BERT exports reshape to [batch x seq, features] around their Gemms: a layer-wise cut there hands the
    cache a tensor it cannot slice into sample batches (what AdaRound on MiniLM first failed on)."""
    graph = lower(load_model(Path(__file__).parent / "data/bert_tiny_legacy17.onnx"))
    ids = torch.randint(0, 100, (2, 9))
    batched = batch_major_tensors(graph, [ids, torch.ones_like(ids), torch.zeros_like(ids)])
    assert set(graph.input_names) <= batched

    def crossing(blocks: list) -> set[str]:
        return {t for b in blocks[1:] for t in b.inputs}

    assert not crossing(partition(graph, 1)) <= batched  # without the rule
    for max_weighted in (1, 8):
        assert crossing(partition(graph, max_weighted, batched)) <= batched


@needs_assets
def test_minilm_layerwise_blocks_cut_only_on_batched_tensors() -> None:
    graph = lower(load_model(ASSETS / "models/minilm_l6_v2.onnx"))
    ids = torch.randint(1000, 2000, (2, 20))
    samples = [ids, torch.ones_like(ids), torch.zeros_like(ids)]
    batched = batch_major_tensors(graph, samples)
    assert len(partition(graph, 1)) == 36  # without the rule: one block per weighted layer, some cut mid-reshape
    blocks = partition(graph, 1, batched)
    # Q, K and V read one [B*T, D] tensor; the FFN's two Gemms run on [B*T, D] too: 3 + 1 + 2 per layer.
    assert [len(b.weighted) for b in blocks] == [3, 1, 2] * 6
    assert [len(b.weighted) for b in partition(graph, 8, batched)] == [4, 2] * 6  # unchanged


def _map_model(channels: int) -> onnx.ModelProto:
    """Conv -> Relu -> Conv to ``channels`` maps (Sigmoid for one: a probability map), 16x16."""
    from onnx import helper

    from tests.helpers import make_model

    rng = np.random.RandomState(channels)
    consts = {"w1": (rng.randn(8, 3, 3, 3) * 0.3).astype(np.float32), "b1": np.zeros(8, np.float32),
              "w2": (rng.randn(channels, 8, 3, 3) * 0.3).astype(np.float32), "b2": np.zeros(channels, np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2" if channels == 1 else "y"], pads=[1, 1, 1, 1],
                              name="conv2")]
    if channels == 1:
        nodes.append(helper.make_node("Sigmoid", ["c2"], ["y"]))
    return make_model(nodes, {"x": np.zeros((1, 3, 16, 16), np.float32)}, ["y"], consts)


@pytest.mark.parametrize("channels", [1, 3])
def test_maps_are_verified_by_iou_or_pixel_agreement(tmp_path: Path, channels: int) -> None:
    from qdrop_onnx.api import quantize, verify
    from qdrop_onnx.quant.config import QuantConfig

    onnx.save(_map_model(channels), tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", np.random.RandomState(0).randn(64, 3, 16, 16).astype(np.float32))
    result = quantize(tmp_path / "m.onnx", tmp_path / "x.npy", QuantConfig(w_bits=8, a_bits=8, method="rtn",
                                                                          samples=32), tmp_path / "q.onnx")
    check = verify(result, tmp_path / "m.onnx").comparison
    shown = check.to_dict()
    assert check.kind == "map" and "agreement" not in shown and "cosine_mean" not in shown
    key = "iou" if channels == 1 else "pixel_agreement"
    assert set(shown) & {"iou", "pixel_agreement"} == {key}
    assert 90.0 <= shown[key] < 100.0  # 8-bit: close, not identical
    # Against itself the float model agrees everywhere: the metric measures agreement, not anything else.
    from qdrop_onnx.data import input_specs, open_dataset
    from qdrop_onnx.verify.compare import compare_models

    specs = input_specs(onnx.load(str(tmp_path / "m.onnx")))
    same = compare_models(tmp_path / "m.onnx", tmp_path / "m.onnx", open_dataset(tmp_path / "x.npy", specs), specs)
    assert getattr(same, key) == 100.0


def _attention_with_shape_reshapes() -> onnx.ModelProto:
    """x [N, 8, 16] -> Q, K, V (MatMul) -> heads by Reshape to Concat(Shape(x)[0:2], [2, 8]) -> softmax(QK^T) V ->
    back by Reshape to Concat(Shape(x)[0:2], [16]) -> output MatMul -> residual Add: reshape targets built from
    Shape, as exporters write attention."""
    from onnx import helper

    from tests.helpers import make_model

    rng = np.random.RandomState(0)
    N = helper.make_node
    consts = {**{f"w{k}": (rng.randn(16, 16) / 4).astype(np.float32) for k in "qkvo"},
              "s0": np.array([0], np.int64), "s2": np.array([2], np.int64), "heads": np.array([2, 8], np.int64),
              "width": np.array([16], np.int64)}
    nodes = [N("Shape", ["x"], ["shape"]), N("Slice", ["shape", "s0", "s2"], ["nt"]),
             N("Concat", ["nt", "heads"], ["split_to"], axis=0), N("Concat", ["nt", "width"], ["merge_to"], axis=0)]
    for k in "qkv":
        nodes += [N("MatMul", ["x", f"w{k}"], [f"{k}0"], name=f"proj_{k}"),
                  N("Reshape", [f"{k}0", "split_to"], [f"{k}1"]),
                  N("Transpose", [f"{k}1"], [f"{k}h"], perm=[0, 2, 1, 3])]
    nodes += [N("Transpose", ["kh"], ["kt"], perm=[0, 1, 3, 2]), N("MatMul", ["qh", "kt"], ["scores"]),
              N("Softmax", ["scores"], ["probs"], axis=-1), N("MatMul", ["probs", "vh"], ["ctx"]),
              N("Transpose", ["ctx"], ["ctx_t"], perm=[0, 2, 1, 3]), N("Reshape", ["ctx_t", "merge_to"], ["merged"]),
              N("MatMul", ["merged", "wo"], ["o"], name="proj_o"), N("Add", ["x", "o"], ["y"], name="residual")]
    model = make_model(nodes, {"x": np.zeros((1, 8, 16), np.float32)}, ["y"], consts)
    for value in (model.graph.input[0], model.graph.output[0]):
        dim = value.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_param = "N"
    return model


@pytest.mark.parametrize("batch_size", [1, 32, 64])
def test_shape_built_reshapes_reconstruct_at_any_batch_size(tmp_path: Path, batch_size: int) -> None:
    from qdrop_onnx.api import quantize, verify
    from qdrop_onnx.quant.config import QuantConfig

    onnx.save(_attention_with_shape_reshapes(), tmp_path / "attn.onnx")
    np.save(tmp_path / "x.npy", np.random.RandomState(1).randn(70, 8, 16).astype(np.float32))  # 70: short batches
    config = QuantConfig(w_bits=4, a_bits=8, method="qdrop", iters=10, samples=70, batch_size=batch_size)
    result = quantize(tmp_path / "attn.onnx", tmp_path / "x.npy", config, tmp_path / "q.onnx")
    assert result.blocks and all(np.isfinite(b.loss_after) for b in result.blocks)
    assert verify(result, tmp_path / "attn.onnx").comparison.cosine_mean >= 0.95


def dense_map_model(seed: int = 0) -> onnx.ModelProto:
    """An FCN/UNet-style probability map, [N, 3, H, W] -> [N, 1, H, W] with H and W symbolic: a stride-2 Conv,
    HardSigmoid squeeze-excite, Erf-GELU, then two ways up (ConvTranspose, linear Resize), Add, Sigmoid."""
    from onnx import helper

    from tests.helpers import make_model

    rng = np.random.RandomState(seed)

    def w(*shape: int) -> np.ndarray:
        return (rng.randn(*shape) * np.sqrt(2.0 / np.prod(shape[1:]))).astype(np.float32)

    consts = {"w1": w(8, 3, 3, 3), "b1": np.zeros(8, np.float32), "wr": w(4, 8, 1, 1), "we": w(8, 4, 1, 1),
              "wg": w(8, 8, 3, 3), "wt": w(8, 8, 2, 2), "wu": w(8, 8, 3, 3), "wo": w(1, 8, 1, 1),
              "half": np.array(0.5, np.float32), "one": np.array(1.0, np.float32),
              "rsqrt2": np.array(1 / np.sqrt(2), np.float32),
              "scales": np.array([1, 1, 2, 2], np.float32)}
    N = helper.make_node
    nodes = [N("Conv", ["x", "w1", "b1"], ["c1"], strides=[2, 2], pads=[1, 1, 1, 1], name="stem"),
             N("Relu", ["c1"], ["r1"]),
             N("GlobalAveragePool", ["r1"], ["gap"]), N("Conv", ["gap", "wr"], ["se1"], name="se_reduce"),
             N("Relu", ["se1"], ["se2"]), N("Conv", ["se2", "we"], ["se3"], name="se_expand"),
             N("HardSigmoid", ["se3"], ["gate"], alpha=1 / 6, beta=0.5), N("Mul", ["r1", "gate"], ["excited"]),
             N("Conv", ["excited", "wg"], ["g0"], pads=[1, 1, 1, 1], name="body"),
             N("Mul", ["g0", "rsqrt2"], ["g1"]), N("Erf", ["g1"], ["g2"]), N("Add", ["g2", "one"], ["g3"]),
             N("Mul", ["g0", "half"], ["g4"]), N("Mul", ["g4", "g3"], ["gelu"]),
             N("ConvTranspose", ["gelu", "wt"], ["up1"], strides=[2, 2], name="up_transpose"),
             N("Resize", ["gelu", "", "scales"], ["up2"], mode="linear"),
             N("Conv", ["up2", "wu"], ["up3"], pads=[1, 1, 1, 1], name="up_conv"),
             N("Add", ["up1", "up3"], ["merged"], name="merge"),
             N("Conv", ["merged", "wo"], ["logit"], name="head"), N("Sigmoid", ["logit"], ["y"])]
    model = make_model(nodes, {"x": np.zeros((1, 3, 16, 16), np.float32)}, ["y"], consts)
    for value in (model.graph.input[0], model.graph.output[0]):
        for d, name in zip(value.type.tensor_type.shape.dim, ("N", None, "H", "W"), strict=True):
            if name:
                d.Clear()
                d.dim_param = name
    return model


@pytest.mark.parametrize("bits", [(8, 8), (4, 8)])
def test_a_dense_map_model_quantizes_keeps_its_dynamic_axes_and_is_judged_by_iou(tmp_path: Path,
                                                                                 bits: tuple[int, int]) -> None:
    from qdrop_onnx.api import quantize, verify
    from qdrop_onnx.quant.config import QuantConfig

    onnx.save(dense_map_model(), tmp_path / "fcn.onnx")
    np.save(tmp_path / "x.npy", np.random.RandomState(2).rand(96, 3, 16, 16).astype(np.float32) * 2 - 1)
    w, a = bits
    result = quantize(tmp_path / "fcn.onnx", tmp_path / "x.npy",
                      QuantConfig(w_bits=w, a_bits=a, method="qdrop", iters=30, samples=64), tmp_path / "q.onnx")
    check = verify(result, tmp_path / "fcn.onnx").comparison  # on the 32 samples calibration did not use
    assert check.kind == "map" and check.iou is not None and check.pixel_agreement is None
    assert check.iou >= (97.0 if w == 8 else 90.0), check  # measured: 98.6 % and 93.5 %
    written = onnx.load(str(result.output))
    dims = [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in (written.graph.input[0], written.graph.output[0])]
    assert dims == [["N", 3, "H", "W"], ["N", 1, "H", "W"]]
    import onnxruntime as ort

    out = ort.InferenceSession(str(result.output), providers=["CPUExecutionProvider"]).run(
        None, {"x": np.zeros((2, 3, 24, 40), np.float32)})[0]
    assert out.shape == (2, 1, 24, 40)


def test_every_output_is_verified_by_its_own_kind(tmp_path: Path) -> None:
    """Class logits and a probability map from one trunk: the logits get agreement, the map IoU, each SQNR."""
    from onnx import helper

    from qdrop_onnx.api import quantize, verify
    from qdrop_onnx.quant.config import QuantConfig
    from qdrop_onnx.verify.report import verification_rows
    from tests.helpers import make_model

    rng = np.random.RandomState(3)
    consts = {"w1": (rng.randn(8, 3, 3, 3) * 0.3).astype(np.float32), "wm": (rng.randn(1, 8, 1, 1) * 0.3)
              .astype(np.float32), "wc": (rng.randn(5, 8) * 0.3).astype(np.float32)}
    N = helper.make_node
    nodes = [N("Conv", ["x", "w1"], ["c"], pads=[1, 1, 1, 1], name="trunk"), N("Relu", ["c"], ["r"]),
             N("Conv", ["r", "wm"], ["m"], name="map_head"), N("Sigmoid", ["m"], ["mask"]),
             N("GlobalAveragePool", ["r"], ["g"]), N("Flatten", ["g"], ["f"]),
             N("Gemm", ["f", "wc"], ["logits"], transB=1, name="class_head")]
    onnx.save(make_model(nodes, {"x": np.zeros((1, 3, 8, 8), np.float32)}, ["logits", "mask"], consts),
              tmp_path / "two.onnx")
    np.save(tmp_path / "x.npy", rng.randn(64, 3, 8, 8).astype(np.float32))
    result = quantize(tmp_path / "two.onnx", tmp_path / "x.npy", QuantConfig(w_bits=8, a_bits=8, method="rtn",
                                                                            samples=32), tmp_path / "q.onnx")
    shown = verify(result, tmp_path / "two.onnx").to_dict()
    assert shown["output"] == "logits" and shown["kind"] == "classes" and "agreement" in shown
    [mask] = shown["outputs"]
    assert mask["output"] == "mask" and mask["kind"] == "map" and "iou" in mask and "agreement" not in mask
    assert ("mask: map IoU (> 0.5)", "", f"{mask['iou']:.2f} %") in verification_rows(shown)
