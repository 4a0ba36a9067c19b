"""`qdrop-onnx quantize` end to end: accuracy, integer kernels, configuration, and user mistakes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from cli.main import cli
from qdrop_onnx.data import input_spec, open_dataset
from qdrop_onnx.graph.load import load_model
from qdrop_onnx.verify import evaluate_classification, make_session
from qdrop_onnx.verify.coverage import integer_kernel_coverage
from tests.helpers import ASSETS, needs_assets, small_cnn_and_images

CLI = str(Path(sys.executable).parent / "qdrop-onnx")
RESNET20 = ASSETS / "models/resnet20_cifar10.onnx"


def run_cli(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *map(str, args)], capture_output=True, text=True, timeout=600)


def quantize_resnet20(tmp_path: Path, *args: object) -> Path:
    out = tmp_path / "r20.onnx"
    proc = run_cli("quantize", RESNET20, "--calib", ASSETS / "cifar10/calib", "--preset", "cifar10", "-o", out,
                   "--method", "rtn", *args)
    assert proc.returncode == 0, proc.stderr
    return out


def cifar_top1(path: Path, opt_level: str) -> float:
    spec = input_spec(load_model(path, simplify=False).model)
    data = open_dataset(ASSETS / "cifar10/test", spec, preset="cifar10")
    return evaluate_classification(make_session(path, device="cpu", opt_level=opt_level), data, spec).top1


@needs_assets
def test_rtn_w8a8_keeps_resnet20_accuracy_on_10k_images(tmp_path: Path) -> None:
    out = quantize_resnet20(tmp_path, "--w", 8, "--a", 8)
    assert cifar_top1(out, "basic") >= 80.5  # FP32: 81.03
    # ORT's fused int8 kernels on CPUs without VNNI need 7-bit weights to be exact (--reduce-range).
    reduced = quantize_resnet20(tmp_path, "--w", 8, "--a", 8, "--reduce-range")
    assert cifar_top1(reduced, "all") >= 80.5


@needs_assets
@pytest.mark.parametrize("bits", [8, 4])
def test_resnet20_runs_every_weighted_op_as_an_integer_kernel(tmp_path: Path, bits: int) -> None:
    out = quantize_resnet20(tmp_path, "--w", bits, "--a", bits)
    coverage = integer_kernel_coverage(out)
    assert (coverage.op_counts.get("QLinearConv"), coverage.op_counts.get("QGemm")) == (19, 1)
    assert (coverage.integer, coverage.total) == (20, 20)  # what README and the summary claim


@needs_assets
def test_quantize_summary_and_files(tmp_path: Path) -> None:
    out = quantize_resnet20(tmp_path, "--w", 4, "--a", 4, "--samples", 64)
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r20.onnx", "r20.report.json", "r20.report.md",
                                                          "r20.report.png"]  # no temporary files left


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[Path, Path]:
    """The small CNN and a folder of 8x8 images for it."""
    return small_cnn_and_images(tmp_path, 6)


def test_default_output_name_and_summary(tiny: tuple[Path, Path]) -> None:
    model, imgs = tiny
    result = CliRunner().invoke(cli, ["quantize", str(model), "--calib", str(imgs), "--w", "3", "--a", "4",
                                      "--iters", "20"])
    assert result.exit_code == 0, result.output
    out = model.with_name("net.w3a4.onnx")
    assert out.exists()
    assert f"wrote {out}" in result.output
    assert re.search(r"weights:\s+1 layers at 3 bits, 2 layers at 8 bits", result.output)
    assert "method qdrop" in result.output  # the default
    assert len(re.findall(r"^  block +\d+ +(layer|block) .*: loss [\d.e+-]+ -> [\d.e+-]+ \(", result.output,
                          re.M)) == 3
    assert re.search(r"size:\s+[\d.]+ MB -> [\d.]+ MB", result.output)


def test_config_file_with_flags_overriding(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    model, imgs = tiny
    config = tmp_path / "q.json"
    config.write_text(json.dumps({"w-bits": 2, "a-bits": 2, "format": "native", "method": "rtn"}))
    out = tmp_path / "o.onnx"
    result = CliRunner().invoke(cli, ["quantize", str(model), "--calib", str(imgs), "--config", str(config),
                                      "--a", "4", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "1 layers at 2 bits" in result.output and "tensors at 4 bits" in result.output
    types = {t.data_type for t in onnx.load(str(out)).graph.initializer}
    assert onnx.TensorProto.INT2 in types  # the file's format came from the config file


def assert_one_line(proc: subprocess.CompletedProcess, code: int, message: str) -> None:
    assert proc.returncode == code, proc.stderr
    assert proc.stderr.strip().splitlines() == [f"qdrop-onnx: error: {message}"]


def test_bits_out_of_range_is_a_usage_error(tiny: tuple[Path, Path]) -> None:
    model, imgs = tiny
    assert_one_line(run_cli("quantize", model, "--calib", imgs, "--w", 9), 2,
                    "Invalid value for '--w': 9 is not in the range 2<=x<=8.")
    assert_one_line(run_cli("quantize", model, "--calib", imgs, "--a", 1), 2,
                    "Invalid value for '--a': 1 is not in the range 2<=x<=8.")
    assert not list(model.parent.glob("*.w*a*.onnx"))


def test_empty_calibration_folder(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    model, _ = tiny
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line(run_cli("quantize", model, "--calib", empty), 1, f"no images found in {empty}")


def test_calibration_folder_without_a_readable_image(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    model, _ = tiny
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_bytes(b"not a jpeg at all")
    proc = run_cli("quantize", model, "--calib", bad, "-o", tmp_path / "o.onnx")
    assert proc.returncode == 1
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith(f"qdrop-onnx: error: none of the 1 image files in {bad} could be read (cannot read "
                           f"image {bad / 'a.jpg'}: cannot identify image file")
    assert not (tmp_path / "o.onnx").exists()


@needs_assets
def test_images_that_cannot_match_the_model_input(tmp_path: Path) -> None:
    model = ASSETS / "models/efficientnet_lite0_imagenet.onnx"
    assert_one_line(run_cli("quantize", model, "--calib", ASSETS / "cifar10/calib", "--preset", "cifar10",
                            "-o", tmp_path / "o.onnx"), 1,
                    "preprocessing makes 32x32 images but the model input input takes 224x224; "
                    "pass --size or another preset")


def test_output_equal_to_input_is_refused(tiny: tuple[Path, Path]) -> None:
    model, imgs = tiny
    before = model.read_bytes()
    assert_one_line(run_cli("quantize", model, "--calib", imgs, "-o", model), 2,
                    "--output is the input model; choose another path (the input is never overwritten)")
    assert model.read_bytes() == before


def test_output_directory_is_refused(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    model, imgs = tiny
    assert_one_line(run_cli("quantize", model, "--calib", imgs, "-o", tmp_path), 2,
                    f"Invalid value for '-o' / '--output': File '{tmp_path}' is a directory.")
