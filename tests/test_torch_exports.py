"""BERT encoders as both torch exporters write them (tests/data/make_bert_tiny.py: random weights):
the dynamo exporter at opset 18 with external data, the TorchScript exporter at opset 17."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from qdrop_onnx.graph import load_model, lower, partition

FIXTURES = Path(__file__).parent / "data"
EXPORTS = ["bert_tiny_dynamo18.onnx", "bert_tiny_legacy17.onnx"]


def _feeds(batch: int, seq: int, rng: np.random.RandomState) -> dict[str, np.ndarray]:
    ids = rng.randint(0, 100, (batch, seq)).astype(np.int64)
    mask = np.ones((batch, seq), np.int64)
    for b in range(batch):
        mask[b, rng.randint(1, seq + 1):] = 0  # right padding of every length
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


@pytest.mark.parametrize("name", EXPORTS)
def test_rebuild_matches_onnxruntime_with_padding(name: str) -> None:
    path = FIXTURES / name
    graph = lower(load_model(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.RandomState(0)
    for batch, seq in ((1, 7), (4, 23), (16, 64)):
        feeds = _feeds(batch, seq, rng)
        with torch.no_grad():
            mine = graph(*[torch.from_numpy(feeds[n]) for n in graph.input_names]).numpy()
        assert np.abs(mine - session.run(None, feeds)[0]).max() <= 1e-5


@pytest.mark.parametrize("name", EXPORTS)
def test_w8a8_runs_every_matmul_on_integers_and_keeps_the_output(name: str, tmp_path: Path) -> None:
    from qdrop_onnx.api import quantize, verify
    from qdrop_onnx.quant.config import QuantConfig

    path = FIXTURES / name
    blocks = partition(lower(load_model(path)))
    assert [len(b.weighted) for b in blocks] == [4, 2, 4, 2]  # attention unit, FFN unit, per layer
    rng = np.random.RandomState(1)
    calib = tmp_path / "calib.npz"
    np.savez(calib, **_feeds(64, 20, rng))
    result = quantize(path, calib, QuantConfig(w_bits=8, a_bits=8, method="rtn"), tmp_path / "q.onnx")
    assert len(result.plan.tables) == 3 and len(result.plan.weights) == 12
    check = verify(result, path)
    assert (check.coverage.integer, check.coverage.total) == (16, 16)  # 12 weighted + 4 attention MatMuls
    assert check.comparison.cosine_mean >= 0.999
    session = ort.InferenceSession(str(result.output), providers=["CPUExecutionProvider"])
    out = session.run(None, _feeds(3, 41, rng))[0]  # a shape calibration never saw
    assert out.shape == (3, 41, 32) and np.isfinite(out).all()
