"""The block-tensor cache past its memory budget: rows in unnamed temporary files, the same results."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from qdrop_onnx.api import quantize
from qdrop_onnx.data import TensorDataset, input_specs
from qdrop_onnx.quant.config import QuantConfig
from qdrop_onnx.recon.cache import TensorCache
from qdrop_onnx.recon.spill import CacheDiskFullError, DiskTensor
from tests.helpers import small_cnn, tiny_token_encoder

CLI = str(Path(sys.executable).parent / "qdrop-onnx")


def test_disk_tensor_reads_back_rows_exactly_and_channels_last(tmp_path: Path) -> None:
    t = torch.randn(10, 8, 5, 5).contiguous(memory_format=torch.channels_last)
    disk = DiskTensor(tuple(t.shape), torch.float32, tmp_path)
    disk[0:6] = t[0:6]
    disk[6:10] = t[6:10]
    idx = torch.tensor([3, 1, 3, 9])
    rows = disk[idx]
    assert torch.equal(rows, t[idx]) and rows.stride() == t[idx].stride()  # the in-memory layout
    assert torch.equal(disk[2:5], t[2:5]) and disk[4:4].shape == (0, 8, 5, 5)
    assert os.listdir(tmp_path) == []  # the file has no name: nothing to leave behind on any exit

    half = DiskTensor((4, 3), torch.float16, tmp_path, read_dtype=torch.float32)
    x = torch.randn(4, 3)
    half[0:4] = x
    assert half[0:4].dtype == torch.float32 and torch.equal(half[0:4], x.half().float())
    ids = DiskTensor((4, 3), torch.int64, tmp_path, read_dtype=torch.float32)  # integers keep their dtype
    ids[0:4] = torch.arange(12).view(4, 3)
    assert torch.equal(ids[torch.tensor([2])], torch.tensor([[6, 7, 8]]))


def test_a_tensor_larger_than_the_free_disk_is_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(CacheDiskFullError, match=rf"^no room for the block-tensor cache in {tmp_path}: a tensor "
                                                 r"needs 40000\.00 GB, [0-9.]+ GB are free \(--cache-dir"):
        DiskTensor((10**7, 10**6), torch.float32, tmp_path)


def test_cache_spills_past_its_budget_and_keeps_memory_within_it(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    x = torch.randn(100, 250)  # 100 kB in float32
    cache = TensorCache(max_bytes=250_000, spill_dir=tmp_path)
    cache.put("in", x, x)  # stored once: 100 kB
    with caplog.at_level("WARNING", logger="qdrop_onnx"):
        cache.put("a", x + 1, x + 2)  # +200 kB would pass 250 kB: the first fits, the second goes to a file
    assert cache.nbytes == 200_000 and cache.spilled_bytes == 100_000
    assert isinstance(cache.q["a"], DiskTensor) and torch.equal(cache.q["a"][0:100], x + 2)
    assert "block tensors pass the 0.00025 GB cache budget (--max-cache-gb) at a" in caplog.text
    out = cache.allocate("b", (100, 250), x)  # an output that would not fit is allocated on disk
    assert isinstance(out, DiskTensor) and cache.nbytes == 200_000
    cache.keep_only({"in"})
    assert cache.nbytes == 100_000 and cache.spilled_bytes == 0


def _quantized_bytes(model: onnx.ModelProto, calib: np.ndarray | dict[str, np.ndarray], config: QuantConfig) -> bytes:
    return quantize(model, TensorDataset(calib, input_specs(model)), config).model.SerializeToString()


@pytest.mark.parametrize("which", ["cnn", "text"])
def test_a_run_that_spills_writes_the_same_file_and_leaves_nothing(which: str, tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    if which == "cnn":  # 4-D (channels-last) block tensors
        model, _ = small_cnn()
        calib: np.ndarray | dict[str, np.ndarray] = np.random.RandomState(1).randn(64, 3, 8, 8).astype(np.float32)
    else:  # integer side inputs and batches cut to their longest sentence
        model, _ = tiny_token_encoder()
        rng = np.random.RandomState(1)
        mask = (np.arange(6)[None] < rng.randint(2, 7, size=(64, 1))).astype(np.int64)
        calib = {"input_ids": rng.randint(1, 20, size=(64, 6)).astype(np.int64) * mask, "attention_mask": mask}
    config = QuantConfig(w_bits=4, a_bits=4, iters=40, samples=64, calib_act_samples=64, batch_size=16)
    in_memory = _quantized_bytes(model, calib, config)
    with caplog.at_level("WARNING", logger="qdrop_onnx"):
        spilled = _quantized_bytes(model, calib, QuantConfig(**{**config.__dict__, "max_cache_gb": 1e-6,
                                                                "cache_dir": str(tmp_path),
                                                                "release_memory": True}))
    assert "the rest go to temporary files in" in caplog.text
    assert spilled == in_memory
    assert os.listdir(tmp_path) == []


def test_cli_cache_dir_must_be_a_folder(tmp_path: Path) -> None:
    model, x = small_cnn()
    onnx.save(model, tmp_path / "net.onnx")
    np.save(tmp_path / "calib.npy", x)
    proc = subprocess.run([CLI, "quantize", str(tmp_path / "net.onnx"), "--calib", str(tmp_path / "calib.npy"),
                           "--cache-dir", str(tmp_path / "missing")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert f"Invalid value for '--cache-dir': Directory '{tmp_path / 'missing'}' does not exist." in proc.stderr
