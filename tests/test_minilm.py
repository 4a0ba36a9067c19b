"""MiniLM (all-MiniLM-L6-v2, a BERT-family encoder with three int64 inputs): the torch rebuild vs ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from qdrop_onnx.graph import load_model, lower
from tests.helpers import ASSETS, needs_assets

MODEL = ASSETS / "models/minilm_l6_v2.onnx"
TOKENIZER = ASSETS / "models/minilm_l6_v2.tokenizer.json"


def tokenized_batches(lines: list[str], batch_size: int) -> list[dict[str, np.ndarray]]:
    """As assets/README.md says: pad id 0 to the longest sentence of each batch, truncate at 128, types 0."""
    tokenizers = pytest.importorskip("tokenizers")
    tokenizer = tokenizers.Tokenizer.from_file(str(TOKENIZER))
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    tokenizer.enable_truncation(128)
    batches = []
    for start in range(0, len(lines), batch_size):
        encoded = tokenizer.encode_batch(lines[start:start + batch_size])
        ids = np.array([e.ids for e in encoded], np.int64)
        mask = np.array([e.attention_mask for e in encoded], np.int64)
        batches.append({"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})
    return batches


@needs_assets
def test_torch_rebuild_matches_onnxruntime_on_padded_sentences() -> None:
    lines = (ASSETS / "text/eval.txt").read_text().splitlines()[:64]
    batches = tokenized_batches(lines, 16)
    lengths = {int(b["attention_mask"].sum(1).min()) for b in batches} | {b["input_ids"].shape[1] for b in batches}
    assert len(lengths) > 4  # mixed lengths: padding inside every batch, a different width per batch

    graph = lower(load_model(MODEL))
    assert graph.input_names == ["input_ids", "attention_mask", "token_type_ids"]
    session = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    worst = 0.0
    with torch.no_grad():
        for feeds in batches:
            reference = session.run(None, feeds)[0]
            mine = graph(*[torch.from_numpy(feeds[name]) for name in graph.input_names]).numpy()
            assert mine.shape == reference.shape == (*feeds["input_ids"].shape, 384)
            worst = max(worst, float(np.abs(mine - reference).max()))
    assert worst <= 1e-4
