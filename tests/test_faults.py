"""Interruption, resume and determinism: a run killed half-way leaves nothing half-written, resumes to the
same file, and the same inputs and seed give the same bytes."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from qdrop_onnx.api import quantize
from qdrop_onnx.data import TensorDataset, input_spec
from qdrop_onnx.quant.config import QuantConfig
from tests.helpers import small_cnn, small_cnn_and_images

CLI = str(Path(sys.executable).parent / "qdrop-onnx")


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[Path, Path]:
    return small_cnn_and_images(tmp_path, 16)


def test_same_seed_gives_identical_bytes() -> None:
    model, _ = small_cnn()
    data = TensorDataset(np.random.RandomState(3).randn(40, 3, 8, 8).astype(np.float32), input_spec(model))
    config = QuantConfig(w_bits=3, a_bits=3, method="qdrop", iters=40, seed=7)
    first = quantize(model, data, config).model.SerializeToString()
    second = quantize(model, data, config).model.SerializeToString()
    assert first == second
    other_seed = quantize(model, data, QuantConfig(w_bits=3, a_bits=3, method="qdrop", iters=40, seed=8))
    assert other_seed.model.SerializeToString() != first  # the seed matters: the test can fail


def run_quantize(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, "quantize", *map(str, args)], capture_output=True, text=True, timeout=300)


def _start(model: Path, imgs: Path, out: Path, *extra: object) -> subprocess.Popen:
    args = [CLI, "quantize", model, "--calib", imgs, "--samples", 16, "--iters", 1500, "--no-report", "-o", out, *extra]
    return subprocess.Popen(list(map(str, args)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 600.0) -> None:
    # A safety net, not a speed check: on a loaded 2-core machine the first block took over 120 s.
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint written in time"
        time.sleep(0.05)


def _interrupt(model: Path, imgs: Path, out: Path, ckpt: Path, sig: signal.Signals) -> tuple[int, str, str]:
    proc = _start(model, imgs, out, "--checkpoint", ckpt)
    _wait_for(ckpt / "checkpoint.pt", proc)  # the first of 3 blocks is done: mid-reconstruction
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    return proc.returncode, stdout, stderr


def test_sigint_writes_nothing_and_resume_gives_the_uninterrupted_file(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    model, imgs = tiny
    out, ckpt = tmp_path / "out" / "q.onnx", tmp_path / "ckpt"
    out.parent.mkdir()
    code, stdout, stderr = _interrupt(model, imgs, out, ckpt, signal.SIGINT)
    assert code == 130, stderr
    assert stderr.splitlines() == ["qdrop-onnx: error: interrupted (SIGINT): no output file was written; the "
                                   f"blocks finished so far are kept in {ckpt}: run the same command with --resume "
                                   "to continue"]
    assert "block   1" in stdout and "block   3" not in stdout
    assert list(out.parent.iterdir()) == []  # no output, no temporary file
    assert [p.name for p in ckpt.iterdir()] == ["checkpoint.pt"]

    resumed = run_quantize(model, "--calib", imgs, "--samples", 16, "--iters", 1500, "--no-report", "-o", out,
                           "--checkpoint", ckpt, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "block   1" not in resumed.stdout and "block   3" in resumed.stdout  # block 1 came from the checkpoint
    reference = tmp_path / "ref.onnx"
    plain = run_quantize(model, "--calib", imgs, "--samples", 16, "--iters", 1500, "--no-report", "-o", reference)
    assert plain.returncode == 0, plain.stderr
    assert out.read_bytes() == reference.read_bytes()


def test_sigterm_exits_143_and_writes_nothing(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    model, imgs = tiny
    out = tmp_path / "out" / "q.onnx"
    out.parent.mkdir()
    code, _, stderr = _interrupt(model, imgs, out, tmp_path / "ckpt", signal.SIGTERM)
    assert code == 143, stderr
    assert stderr.splitlines() == ["qdrop-onnx: error: terminated (SIGTERM): no output file was written; the "
                                   f"blocks finished so far are kept in {tmp_path / 'ckpt'}: run the same command "
                                   "with --resume to continue"]
    assert list(out.parent.iterdir()) == []


def test_resume_refuses_a_checkpoint_of_another_run(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    model, imgs = tiny
    ckpt = tmp_path / "ckpt"
    first = run_quantize(model, "--calib", imgs, "--samples", 16, "--iters", 20, "--no-report",
                         "-o", tmp_path / "a.onnx", "--checkpoint", ckpt)
    assert first.returncode == 0, first.stderr
    other = run_quantize(model, "--calib", imgs, "--samples", 16, "--iters", 30, "--no-report",
                         "-o", tmp_path / "b.onnx", "--checkpoint", ckpt, "--resume")
    assert other.returncode == 1
    assert other.stderr.splitlines() == [
        f"qdrop-onnx: error: checkpoint {ckpt / 'checkpoint.pt'} was made for a different model, settings or "
        "calibration data; delete it or use another --checkpoint folder"]
    assert not (tmp_path / "b.onnx").exists()


def test_without_checkpoint_an_interrupt_keeps_the_blocks_beside_the_output_and_resume_finishes(
        tiny: tuple[Path, Path], tmp_path: Path) -> None:
    model, imgs = tiny
    out = tmp_path / "out" / "q.onnx"
    out.parent.mkdir()
    kept = out.parent / ".q.onnx.checkpoint"
    proc = _start(model, imgs, out)
    _wait_for(kept / "checkpoint.pt", proc)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert stderr.splitlines() == ["qdrop-onnx: error: interrupted (SIGINT): no output file was written; the "
                                   f"blocks finished so far are kept in {kept}: run the same command with --resume "
                                   "to continue"]
    resumed = run_quantize(model, "--calib", imgs, "--samples", 16, "--iters", 1500, "--no-report", "-o", out,
                           "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "block   1" not in resumed.stdout and "block   3" in resumed.stdout
    assert [p.name for p in out.parent.iterdir()] == ["q.onnx"]  # the checkpoint is gone once the file is written


def test_an_error_in_a_later_block_keeps_the_finished_ones_for_resume(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    from qdrop_onnx.api import CheckpointOptions

    model, imgs = tiny
    config = QuantConfig(samples=16, iters=40)

    def fail_in_block_2(block: int, step: int, loss: float) -> None:
        if block == 1:
            raise RuntimeError("a fault in block 2")

    with pytest.raises(RuntimeError, match="a fault in block 2"):
        quantize(model, imgs, config, tmp_path / "a.onnx", checkpoint=CheckpointOptions(tmp_path / "ckpt"),
                 progress=fail_in_block_2)
    assert not (tmp_path / "a.onnx").exists() and (tmp_path / "ckpt" / "checkpoint.pt").exists()
    resumed = quantize(model, imgs, config, tmp_path / "a.onnx", checkpoint=CheckpointOptions(tmp_path / "ckpt", True))
    assert [r.index for r in resumed.blocks] == [0, 1, 2]
    quantize(model, imgs, config, tmp_path / "b.onnx")
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_a_block_that_raises_ends_in_one_line_and_resume_finishes(tiny: tuple[Path, Path], tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A fault injected into our own reconstruction of block 2 (not a mock of torch or onnxruntime)."""
    from cli.main import cli
    from qdrop_onnx.recon import run

    model, imgs = tiny
    out = tmp_path / "out" / "q.onnx"
    out.parent.mkdir()
    args = [str(model), "--calib", str(imgs), "--samples", "16", "--iters", "30", "--no-report", "-o", str(out)]
    real = run._reconstruct_one

    def failing(sim: object, block: object, *rest: object, **kw: object) -> object:
        if block.index == 1:  # type: ignore[attr-defined]
            raise ValueError("injected fault in block 2")
        return real(sim, block, *rest, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(run, "_reconstruct_one", failing)
    with pytest.raises(SystemExit) as stopped:
        cli.main(["quantize", *args], prog_name="qdrop-onnx")
    assert stopped.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    kept = out.parent / ".q.onnx.checkpoint"
    assert len(lines) == 1 and lines[0].startswith("qdrop-onnx: error: internal error, ValueError: injected fault")
    assert lines[0].endswith(f"; the blocks finished so far are kept in {kept}: run the same command with "
                             "--resume to continue")
    assert not out.exists() and (kept / "checkpoint.pt").exists()
    monkeypatch.setattr(run, "_reconstruct_one", real)
    resumed = run_quantize(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "block   1" not in resumed.stdout and "block   3" in resumed.stdout
    plain = run_quantize(*args[:-1], str(tmp_path / "plain.onnx"))
    assert plain.returncode == 0, plain.stderr
    assert out.read_bytes() == (tmp_path / "plain.onnx").read_bytes()
