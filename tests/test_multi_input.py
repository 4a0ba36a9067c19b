"""Models with several inputs (token ids + attention mask): dict batches, side inputs, blocks, QDQ parity."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import torch

from qdrop_onnx.api import quantize
from qdrop_onnx.data import TensorDataset, input_specs
from qdrop_onnx.graph import load_model, lower, partition
from qdrop_onnx.quant.config import QuantConfig
from qdrop_onnx.verify import make_session
from tests.helpers import run_ort, tiny_token_encoder

CLI = str(Path(sys.executable).parent / "qdrop-onnx")


def _calibration(count: int = 64, seq: int = 6) -> dict[str, np.ndarray]:
    rng = np.random.RandomState(1)
    mask = (np.arange(seq)[None] < rng.randint(2, seq + 1, size=(count, 1))).astype(np.int64)
    ids = rng.randint(1, 20, size=(count, seq)).astype(np.int64) * mask
    return {"input_ids": ids, "attention_mask": mask}


def test_side_inputs_are_not_live_so_blocks_cut_on_the_residual_stream() -> None:
    model, _ = tiny_token_encoder()
    graph = lower(load_model(model))
    assert graph.side_inputs == {"input_ids", "attention_mask"}
    side = graph.side_tensors()
    assert {"input_ids", "attention_mask", "mf", "m3"} <= side  # (and the Shape outputs onnxsim adds)
    assert not {"e", "r1", "r2", "hidden"} & side  # not the embedding lookup, nor what follows it
    blocks = partition(graph)
    # The mask is read at the very end; counted as live, it would leave one block for the whole graph.
    assert [b.inputs for b in blocks] == [["input_ids", "attention_mask"], ["r1", "m3"]]
    assert [b.weighted[-1] for b in blocks] == ["ffn1_down", "ffn2_down"]


def test_qdrop_on_two_integer_inputs_exports_what_torch_computes() -> None:
    model, feeds = tiny_token_encoder()
    calib = _calibration()
    config = QuantConfig(w_bits=4, a_bits=8, iters=50, samples=64, calib_act_samples=64, batch_size=16)
    result = quantize(model, TensorDataset(calib, input_specs(model)), config)
    assert len(result.blocks) == 2
    assert all(b.loss_after < 0.9 * b.loss_before for b in result.blocks)  # measured: -15 %, -27 %
    assert "m3" not in result.plan.activations and "attention_mask" not in result.plan.activations
    for batch, seq in ((4, 6), (1, 3), (9, 11)):  # other batch and sequence sizes than the calibration's
        rng = np.random.RandomState(batch)
        x = {"input_ids": rng.randint(0, 20, size=(batch, seq)).astype(np.int64),
             "attention_mask": (rng.rand(batch, seq) > 0.3).astype(np.int64)}
        ort_out = make_session(result.model.SerializeToString(), device="cpu", opt_level="basic").run(None, x)[0]
        with torch.no_grad():
            sim = result.sim.graph(*[torch.from_numpy(x[n]) for n in result.sim.graph.input_names]).numpy()
        assert ort_out.shape == (batch, seq, 8)
        assert float(np.abs(ort_out - sim).max()) <= 1e-5
        assert float(np.abs(ort_out - run_ort(model, x)[0]).max()) > 1e-3  # it is quantized


def test_cli_quantizes_from_an_npz_with_one_array_per_input_and_names_a_missing_one(tmp_path: Path) -> None:
    model, _ = tiny_token_encoder()
    onnx.save(model, tmp_path / "enc.onnx")
    calib = _calibration()
    np.savez(tmp_path / "calib.npz", **calib)
    out = tmp_path / "enc.w4a8.onnx"
    proc = subprocess.run([CLI, "quantize", str(tmp_path / "enc.onnx"), "--calib", str(tmp_path / "calib.npz"),
                           "--w", "4", "--a", "8", "--iters", "20", "--samples", "48", "-q", "--no-report"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"wrote {out}\n") and out.exists()
    np.savez(tmp_path / "ids_only.npz", input_ids=calib["input_ids"])
    proc = subprocess.run([CLI, "quantize", str(tmp_path / "enc.onnx"), "--calib", str(tmp_path / "ids_only.npz"),
                           "-o", str(tmp_path / "x.onnx")], capture_output=True, text=True, timeout=300)
    assert (proc.returncode, proc.stderr) == (1, f"qdrop-onnx: error: {tmp_path / 'ids_only.npz'} has no array for "
                                                 "model input 'attention_mask' (it holds input_ids)\n")
    assert not (tmp_path / "x.onnx").exists()
