"""Bad input for `quantize`: one clear line, the documented exit code, no file written, or a warning and go on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper
from PIL import Image

from qdrop_onnx.export.qdq import save_model_atomic
from tests.helpers import make_model, run_ort, small_cnn

CLI = str(Path(sys.executable).parent / "qdrop-onnx")


def quantize(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, "quantize", *map(str, args)], capture_output=True, text=True, timeout=300)


def assert_error(proc: subprocess.CompletedProcess, code: int, message: str, folder: Path | None = None) -> None:
    assert proc.returncode == code, proc.stderr
    assert proc.stderr.splitlines() == [f"qdrop-onnx: error: {message}"]
    assert "Traceback" not in proc.stderr
    if folder is not None:
        assert not list(folder.glob("*.onnx")) and not list(folder.glob("*.report.*"))


def images(folder: Path, count: int, size: int = 8, mode: str = "RGB") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(count)
    for i in range(count):
        rgb = Image.fromarray(rng.randint(0, 256, (size, size, 3), dtype=np.uint8))
        rgb.convert(mode).save(folder / f"{mode}_{i}.{'jpg' if mode == 'CMYK' else 'png'}")
    return folder


@pytest.fixture
def model(tmp_path: Path) -> Path:
    proto, _ = small_cnn()
    onnx.save(proto, tmp_path / "net.onnx")
    return tmp_path / "net.onnx"


def test_model_without_weighted_layers(tmp_path: Path) -> None:
    proto = make_model([helper.make_node("Relu", ["x"], ["y"])], {"x": np.zeros((1, 3, 8, 8), np.float32)}, ["y"])
    onnx.save(proto, tmp_path / "relu.onnx")
    out = tmp_path / "out"
    out.mkdir()
    assert_error(quantize(tmp_path / "relu.onnx", "--calib", images(tmp_path / "imgs", 4), "-o", out / "q.onnx"), 1,
                 "the model has no weighted layer (Conv, ConvTranspose, Gemm, MatMul with a constant operand): "
                 "nothing to quantize", out)


def test_model_with_two_inputs(tmp_path: Path) -> None:
    w = np.ones((4, 4), np.float32)
    # Mul, not Add: onnxsim fuses MatMul + Add of a graph input into a Gemm whose C is not constant.
    proto = make_model([helper.make_node("MatMul", ["a", "w"], ["m"]), helper.make_node("Mul", ["m", "b"], ["y"])],
                       {"a": np.zeros((2, 4), np.float32), "b": np.zeros((2, 4), np.float32)}, ["y"], {"w": w})
    onnx.save(proto, tmp_path / "two.onnx")
    np.save(tmp_path / "a.npy", np.zeros((4, 4), np.float32))
    assert_error(quantize(tmp_path / "two.onnx", "--calib", tmp_path / "a.npy", "-o", tmp_path / "q.onnx"), 1,
                 f"{tmp_path / 'a.npy'} holds one array; the model has 2 inputs (a, b): give an .npz with one "
                 "array per input, named after it")
    # One array per input, by name: quantized (two float inputs, both data).
    np.savez(tmp_path / "ab.npz", a=np.random.RandomState(0).randn(16, 4).astype(np.float32),
             b=np.zeros((16, 4), np.float32))
    proc = quantize(tmp_path / "two.onnx", "--calib", tmp_path / "ab.npz", "-o", tmp_path / "q.onnx",
                    "--method", "rtn")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "q.onnx").exists()


def test_dynamic_spatial_dims_ask_for_input_shape(tmp_path: Path, model: Path) -> None:
    proto = onnx.load(str(model))
    for d in proto.graph.input[0].type.tensor_type.shape.dim[2:]:
        d.Clear()
        d.dim_param = "hw"
    onnx.save(proto, tmp_path / "dyn.onnx")
    imgs, out = images(tmp_path / "imgs", 4), tmp_path / "out"
    out.mkdir()
    assert_error(quantize(tmp_path / "dyn.onnx", "--calib", imgs, "-o", out / "q.onnx"), 1,
                 "model input x has dynamic height/width (?x3x?x?); pass --input-shape H W (or a --preset) to choose "
                 "the image size to calibrate at", out)
    ok = quantize(tmp_path / "dyn.onnx", "--calib", imgs, "--input-shape", 8, 8, "--method", "rtn",
                  "-o", out / "q.onnx")
    assert ok.returncode == 0, ok.stderr


def test_corrupt_images_are_skipped_and_odd_modes_converted(tmp_path: Path, model: Path) -> None:
    imgs = tmp_path / "imgs"
    for mode in ("RGB", "L", "RGBA", "CMYK", "P"):
        images(imgs, 3, mode=mode)
    (imgs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)  # a PNG header, then nothing
    (imgs / "text.jpg").write_text("this is not an image")
    proc = quantize(model, "--calib", imgs, "--method", "rtn", "--samples", 17, "-o", tmp_path / "q.onnx")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 2 and lines[0].startswith("qdrop-onnx: warning: skipped 2 unreadable images (first: cannot "
                                                   f"read image {imgs / 'broken.png'}")
    assert lines[1] == ("qdrop-onnx: warning: the calibration data has 15 readable samples, fewer than the 17 asked "
                        "for (--samples): using 15")
    assert "15 calibration samples" in proc.stdout  # 5 modes x 3 images, all converted to RGB


def test_fewer_images_than_samples_warns_and_uses_them(tmp_path: Path, model: Path) -> None:
    proc = quantize(model, "--calib", images(tmp_path / "imgs", 5), "--iters", 5, "--samples", 64,
                    "-o", tmp_path / "q.onnx")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == ["qdrop-onnx: warning: the calibration data has 5 readable samples, fewer "
                                        "than the 64 asked for (--samples): using 5"]
    assert "5 calibration samples" in proc.stdout


def test_nan_weights_are_refused(tmp_path: Path, model: Path) -> None:
    proto = onnx.load(str(model))
    w1 = next(t for t in proto.graph.initializer if t.name == "w1")
    values = onnx.numpy_helper.to_array(w1).copy()
    values[0, 0, 0, :2] = [np.nan, np.inf]
    w1.CopyFrom(onnx.numpy_helper.from_array(values, "w1"))
    onnx.save(proto, tmp_path / "nan.onnx")
    assert_error(quantize(tmp_path / "nan.onnx", "--calib", images(tmp_path / "imgs", 4), "-o", tmp_path / "q.onnx"),
                 1, "initializer w1 (used by node res_conv) has 2 NaN/Inf values; the model's weights must be finite",
                 tmp_path / "imgs")


def test_nan_calibration_tensors_are_refused(tmp_path: Path, model: Path) -> None:
    data = np.random.RandomState(0).randn(6, 3, 8, 8).astype(np.float32)
    data[2, 0, 0, 0] = np.nan
    data[4, 1, 2, 3] = -np.inf
    np.save(tmp_path / "calib.npy", data)
    out = tmp_path / "out"
    out.mkdir()
    assert_error(quantize(model, "--calib", tmp_path / "calib.npy", "-o", out / "q.onnx"), 1,
                 "2 calibration samples contain NaN or Inf values", out)


def test_unwritable_output_folder_fails_before_any_work(tmp_path: Path, model: Path) -> None:
    target = Path("/proc/qdrop-onnx-test.onnx")  # /proc refuses new files, even for root
    assert_error(quantize(model, "--calib", images(tmp_path / "imgs", 4), "-o", target), 1,
                 "cannot write to the output folder /proc: No such file or directory")


def test_models_over_the_protobuf_limit_are_written_with_external_data(tmp_path: Path) -> None:
    """The >2 GB path, exercised with a tiny threshold (a real 2 GB model does not fit a test)."""
    proto, x = small_cnn()
    path = save_model_atomic(proto, tmp_path / "big.onnx", external_threshold=100)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]
    assert (tmp_path / "big.onnx").stat().st_size < 2000 < (tmp_path / "big.onnx.data").stat().st_size
    assert proto.graph.initializer[0].data_location == onnx.TensorProto.DEFAULT  # the caller's model untouched
    np.testing.assert_array_equal(run_ort(onnx.load(str(path)), {"x": x})[0], run_ort(proto, {"x": x})[0])
