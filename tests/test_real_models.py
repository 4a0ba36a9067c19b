"""The rebuild and the CLI on the real models and data in ../shared/assets."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from qdrop_onnx.data import ImageFolder, input_spec, resolve_preprocess
from qdrop_onnx.graph import load_model, lower
from tests.helpers import ASSETS, needs_assets

CLI = [str(Path(sys.executable).parent / "qdrop-onnx")]

MODELS = {
    "resnet20_cifar10": ("cifar10", "cifar10/test", None),
    "resnet56_cifar10": ("cifar10", "cifar10/test", None),
    "efficientnet_lite0_imagenet": ("tf", "imagenet-sample/val", "imagenet-sample/classes.txt"),
}


def _spread_batch(model_path: Path, preset: str, data: str, classes: str | None, count: int) -> np.ndarray:
    """``count`` images spread over the whole folder (all classes), preprocessed for the model."""
    spec = input_spec(load_model(model_path, simplify=False).model)
    folder = ImageFolder(ASSETS / data, resolve_preprocess(spec, preset=preset),
                         classes=ASSETS / classes if classes else None)
    step = len(folder) // count
    folder.files = folder.files[::step][:count]
    return next(folder.batches(count))[0][spec.name]


@needs_assets
@pytest.mark.parametrize("name", list(MODELS))
def test_rebuild_matches_onnxruntime_on_64_real_images(name: str) -> None:
    preset, data, classes = MODELS[name]
    path = ASSETS / "models" / f"{name}.onnx"
    x = _spread_batch(path, preset, data, classes, 64)
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    graph = lower(load_model(path))
    with torch.no_grad():
        got = graph(torch.from_numpy(x)).numpy()
    assert got.shape == expected.shape == (64, expected.shape[1])
    assert np.abs(got - expected).max() <= 1e-4
    # Same predictions on every image: the rebuild is a faithful classifier, not just close on average.
    assert (got.argmax(1) == expected.argmax(1)).all()


def _eval(model: str, *args: str) -> str:
    proc = subprocess.run([*CLI, "eval", str(ASSETS / "models" / f"{model}.onnx"), *args],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _top1(stdout: str) -> float:
    return float(re.search(r"top-1:\s+([\d.]+) %", stdout).group(1))


@needs_assets
@pytest.mark.parametrize(("model", "expected"), [("resnet20_cifar10", 81.03), ("resnet56_cifar10", 83.20)])
def test_eval_reproduces_cifar10_fp32_top1(model: str, expected: float) -> None:
    out = _eval(model, "--data", str(ASSETS / "cifar10/test"), "--preset", "cifar10")
    assert "(10000 images)" in out
    assert abs(_top1(out) - expected) <= 0.01


@needs_assets
def test_eval_reproduces_efficientnet_lite0_top1_with_synset_classes() -> None:
    out = _eval("efficientnet_lite0_imagenet", "--data", str(ASSETS / "imagenet-sample/val"), "--preset", "tf",
                "--classes", str(ASSETS / "imagenet-sample/classes.txt"))
    assert "(500 images)" in out
    assert abs(_top1(out) - 86.60) <= 0.4


@needs_assets
def test_inspect_resnet20_lists_stem_nine_residual_blocks_and_gemm() -> None:
    proc = subprocess.run([*CLI, "inspect", str(ASSETS / "models/resnet20_cifar10.onnx")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = re.findall(r"^\s+#(\d+)\s+(layer|block)\s+(\d+) weighted.*nodes: (.*)$", proc.stdout, re.M)
    assert len(rows) == 11
    assert rows[0][1:] == ("layer", "1", "Conv, Relu")
    residual = rows[1:10]
    assert all(kind == "block" and n == "2" and ops.endswith("Add, Relu") for _, kind, n, ops in residual)
    assert rows[10][1] == "layer" and rows[10][3].endswith("Gemm")
    assert "weighted layers (20, 269,034 parameters)" in proc.stdout
    assert "19 BatchNormalization folded into Conv" in proc.stdout
    assert "  activations: 29 tensors (19 unsigned): 20 inputs of weighted layers, 9 around residual adds" \
        in proc.stdout.splitlines()
    assert "unsupported ops: none" in proc.stdout


@needs_assets
def test_no_preset_resizes_to_the_model_size_and_a_crop_meant_for_imagenet_is_flagged() -> None:
    # No preset: CIFAR's 32x32 images go in as they are (no 256 -> 32 crop), the float top-1 as published.
    assert abs(_top1(_eval("resnet20_cifar10", "--data", str(ASSETS / "cifar10/test"))) - 81.03) <= 0.01
    proc = subprocess.run([*CLI, "eval", str(ASSETS / "models/resnet20_cifar10.onnx"), "--data",
                           str(ASSETS / "cifar10/test"), "--resize", "256"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "twice chance" in line]
    assert len(warnings) == 1 and "below twice chance (10.0 %): the preprocessing is probably wrong" in warnings[0]
