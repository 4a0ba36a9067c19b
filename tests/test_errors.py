"""User mistakes get one line on stderr, a documented exit code, and no traceback."""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from tests.helpers import make_model, small_cnn, small_cnn_and_images

CLI = str(Path(sys.executable).parent / "qdrop-onnx")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *map(str, args)], capture_output=True, text=True, timeout=300)


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int, message: str) -> None:
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines == [f"qdrop-onnx: error: {message}"], proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    model, _ = small_cnn()
    path = tmp_path / "net.onnx"
    onnx.save(model, path)
    return path


def test_text_file_named_onnx(tmp_path: Path) -> None:
    path = tmp_path / "notes.onnx"
    path.write_text("this is a text file, not a model\n")
    assert_one_line_error(run_cli("inspect", path), 1, f"{path} is not an ONNX model (protobuf parse failed: "
                          "Error parsing message with type 'onnx.ModelProto': Wire format was corrupt)")


def test_truncated_onnx(tmp_path: Path, model_file: Path) -> None:
    path = tmp_path / "truncated.onnx"
    data = model_file.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert_one_line_error(run_cli("inspect", path), 1, f"{path} is not an ONNX model (protobuf parse failed: "
                          "Error parsing message with type 'onnx.ModelProto': Wire format was corrupt)")


def test_unknown_op_in_default_domain_fails_checker(tmp_path: Path) -> None:
    x = np.zeros((1, 4), np.float32)
    model = make_model([helper.make_node("Relu", ["x"], ["a"]), helper.make_node("FooBar", ["a"], ["out"])],
                       {"x": x}, ["out"], domains={"": 17})
    path = tmp_path / "foobar.onnx"
    onnx.save(model, path)
    assert_one_line_error(run_cli("inspect", path), 1,
                          f"{path} fails onnx.checker: No Op registered for FooBar with domain_version of 17")


def test_unsupported_ops_are_listed_once_with_counts(tmp_path: Path) -> None:
    x = np.zeros((1, 3, 4, 4), np.float32)
    nodes = [helper.make_node("Relu", ["x"], ["a"]),
             helper.make_node("FancyOp", ["a"], ["b"], domain="com.example"),
             helper.make_node("TopK", ["b", "k"], ["t1", "i1"], axis=-1),
             helper.make_node("TopK", ["t1", "k"], ["t2", "i2"], axis=-1),
             helper.make_node("Det", ["t2"], ["out"])]
    model = make_model(nodes, {"x": x}, ["out"], {"k": np.array([2], np.int64)},
                       domains={"com.example": 1})
    path = tmp_path / "custom.onnx"
    onnx.save(model, path)
    proc = run_cli("inspect", path)
    assert proc.returncode == 1
    err = proc.stderr.strip().splitlines()
    # onnxsim cannot handle the custom op: it warns once and the unsimplified graph is used.
    assert err[-1] == ("qdrop-onnx: error: unsupported ops (4 nodes): Det x1, TopK x2, com.example.FancyOp x1")
    assert all(line.startswith("qdrop-onnx: ") for line in err) and len(err) <= 2
    assert "Traceback" not in proc.stderr
    assert "unsupported ops: Det x1, TopK x2, com.example.FancyOp x1" in proc.stdout


def test_missing_model_path_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.onnx"
    assert_one_line_error(run_cli("inspect", path), 2, f"Invalid value for 'MODEL': File '{path}' does not exist.")


def test_model_path_that_is_a_directory(tmp_path: Path) -> None:
    assert_one_line_error(run_cli("inspect", tmp_path), 2,
                          f"Invalid value for 'MODEL': File '{tmp_path}' is a directory.")


def test_empty_data_folder(tmp_path: Path, model_file: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(run_cli("eval", model_file, "--data", empty, "--size", "8", "8"), 1,
                          f"no images found in {empty}")


def test_unknown_preset_is_a_usage_error(tmp_path: Path, model_file: Path) -> None:
    assert_one_line_error(run_cli("eval", model_file, "--data", tmp_path, "--preset", "coco"), 2,
                          "Invalid value for '--preset': 'coco' is not one of 'cifar10', 'imagenet', 'tf'.")


def test_unknown_flag_is_a_usage_error(model_file: Path) -> None:
    proc = run_cli("inspect", model_file, "--bogus")
    assert proc.returncode == 2
    # click words this message differently across versions; the shape and the flag name are ours to check.
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("qdrop-onnx: error: No such option") and "--bogus" in line


def test_help_lists_commands_and_exit_codes() -> None:
    proc = run_cli("--help")
    assert proc.returncode == 0
    for word in ("inspect", "eval", "Exit codes"):
        assert word in proc.stdout


def test_corrupt_npz_is_one_line(tmp_path: Path, model_file: Path) -> None:
    bad = tmp_path / "calib.npz"
    bad.write_bytes(b"PK\x03\x04 not really a zip archive")
    out = tmp_path / "q.onnx"
    assert_one_line_error(run_cli("quantize", model_file, "--calib", bad, "--method", "rtn", "-o", out), 1,
                          f"cannot read tensors from {bad}: File is not a zip file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib.npz", "net.onnx"]  # nothing written


def _file_size_limit(limit: int) -> None:
    """In the child: writes past ``limit`` bytes fail with EFBIG (a full disk, as far as the tool can tell)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_failed_write_is_one_line_and_leaves_no_file(tmp_path: Path) -> None:
    model, images = small_cnn_and_images(tmp_path, 12, classes=2)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "q.onnx"
    proc = subprocess.run([CLI, "quantize", str(model), "--calib", str(images), "--method", "rtn", "-o", str(out)],
                          capture_output=True, text=True, timeout=300, preexec_fn=lambda: _file_size_limit(1000))
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"qdrop-onnx: error: cannot write {out}: File too large"
    assert "Traceback" not in proc.stderr
    assert list(out_dir.iterdir()) == []  # no half-written model, no temporary file
    # A report that cannot be written: the same one line, and no half-written report file either.
    proc = subprocess.run([CLI, "quantize", str(model), "--calib", str(images), "--method", "rtn", "-o", str(out)],
                          capture_output=True, text=True, timeout=300, preexec_fn=lambda: _file_size_limit(6000))
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (f"qdrop-onnx: error: cannot write {out_dir / 'q.report.png'}: "
                                                    "File too large")
    assert sorted(p.name for p in out_dir.iterdir()) == ["q.onnx", "q.report.json", "q.report.md"]
