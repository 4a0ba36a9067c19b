"""MiniLM (all-MiniLM-L6-v2, a BERT-family encoder with three int64 inputs): the torch rebuild vs ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from qdrop_onnx.graph import load_model, lower
from tests.helpers import ASSETS, needs_assets

MODEL = ASSETS / "models/minilm_l6_v2.onnx"
TOKENIZER = ASSETS / "models/minilm_l6_v2.tokenizer.json"


def tokenized_batches(lines: list[str], batch_size: int) -> list[dict[str, np.ndarray]]:
    """As assets/README.md says (the bench's scoring does the same): pad id 0 to each batch's longest."""
    pytest.importorskip("tokenizers")
    from bench.text import tokenized

    return tokenized(lines, batch_size)


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


def _quantize(tmp_path: Path, name: str, **settings: object) -> object:
    from qdrop_onnx.api import DataOptions, quantize, verify
    from qdrop_onnx.quant.config import QuantConfig

    pytest.importorskip("tokenizers")
    data = DataOptions(tokenizer=TOKENIZER)
    result = quantize(MODEL, ASSETS / "text/calib.txt", QuantConfig(**settings), tmp_path / f"{name}.onnx", data=data)
    return result, verify(result, MODEL, ASSETS / "text/eval.txt", data=data, limit=200)


@needs_assets
def test_w8a8_from_text_keeps_the_embeddings_and_runs_at_other_shapes(tmp_path: Path) -> None:
    result, check = _quantize(tmp_path, "w8a8", w_bits=8, a_bits=8, method="rtn")
    cmp = check.comparison
    # Measured on all 1,000 eval sentences: mean 0.9929, min 0.9824 (ORT quantize_dynamic: 0.9928).
    assert cmp.kind == "sequence" and cmp.agreement is None
    assert cmp.cosine_mean >= 0.99 and cmp.cosine_min >= 0.97
    # Every MatMul on integers, the 12 activation x activation ones (Q.K^T, softmax.V) included.
    assert (check.coverage.integer, check.coverage.total) == (48, 48)
    _check_transformer_placement(onnx.load(str(result.output)))
    # The file computes what the torch fake-quant model computes, at shapes other than calibration's:
    # teacher-forced as in test_qdq_parity (free-running, one code flipped at a rounding tie in layer 1 moves
    # the output by up to 0.2 after six layers; forced, codes agree but for genuine ties).
    from tests.test_qdq_parity import forced_run

    for batch, seq in ((1, 7), (16, 128)):
        rng = np.random.RandomState(seq)
        feeds = {"input_ids": rng.randint(1000, 5000, size=(batch, seq)).astype(np.int64),
                 "attention_mask": np.ones((batch, seq), np.int64),
                 "token_type_ids": np.zeros((batch, seq), np.int64)}
        r = forced_run(result, feeds, "int8")
        assert r["rel"] <= 1e-5 and r["mismatch"] <= 1e-4 and r["step"] <= 1, r


def _check_transformer_placement(model: onnx.ModelProto) -> None:
    """E8 embeddings (an int8 table, looked-up rows times their own step), both operands of every activation
    MatMul dequantized, the softmax side on an unsigned grid (zero point 0)."""
    inits = {t.name: t for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    lookups = [n for n in model.graph.node if n.op_type == "Gather" and n.input[0] in inits
               and inits[n.input[0]].data_type == onnx.TensorProto.INT8]
    assert sorted(n.name for n in lookups) == [f"/b/embeddings/{kind}_embeddings/Gather"
                                               for kind in ("position", "token_type", "word")]
    for gather in lookups:
        rows = inits[gather.input[0]].dims[0]
        scale = [n for n in model.graph.node if n.name == f"{gather.name}/scale_Gather"][0]
        assert tuple(inits[scale.input[0]].dims) == (rows, 1)  # one step per row
    float_tables = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT
                    and len(t.dims) == 2 and t.dims[1] == 384 and t.dims[0] in (2, 512, 30522)]
    assert not float_tables
    attention = [n for n in model.graph.node if n.op_type == "MatMul" and "attention/self/MatMul" in n.name]
    assert len(attention) == 12
    for mm in attention:
        sources = [producer[t] for t in mm.input]
        assert all(s.op_type == "DequantizeLinear" and s.input[0] not in inits for s in sources), mm.name
        if mm.name.endswith("MatMul_1"):  # softmax . V: the probabilities are >= 0
            assert int(numpy_helper.to_array(inits[sources[0].input[2]])) == 0


@needs_assets
def test_qdrop_beats_round_to_nearest_at_w4a8(tmp_path: Path) -> None:
    common = {"w_bits": 4, "a_bits": 8, "samples": 256, "iters": 30}
    _, rtn = _quantize(tmp_path, "rtn", method="rtn", **common)
    result, qdrop = _quantize(tmp_path, "qdrop", method="qdrop", **common)
    # Block 0 hands the attention mask ([B, 1, T, T], -inf where masked) to the later blocks: a side output
    # that must stay out of the loss (-inf - -inf is NaN, and the divergence guard would reset the block).
    assert all(np.isfinite(b.loss_before) and np.isfinite(b.loss_after) for b in result.blocks)
    r, q = rtn.comparison, qdrop.comparison
    assert q.cosine_mean >= r.cosine_mean + 0.01 and q.cosine_min > r.cosine_min


@needs_assets
def test_inspect_marks_side_inputs_and_shows_two_blocks_per_layer() -> None:
    import subprocess
    import sys

    cli = str(Path(sys.executable).parent / "qdrop-onnx")
    proc = subprocess.run([cli, "inspect", str(MODEL)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [line for line in lines if line.startswith("input:")] == [
        f"input:  {name} [batch, seq]  int64, side input (keeps its dtype, never quantized)"
        for name in ("input_ids", "attention_mask", "token_type_ids")]
    assert "weighted layers (36, 10,635,264 parameters):" in lines
    assert "blocks (12):" in lines  # the attention unit and the FFN unit of each of the 6 layers
    weighted = [int(line.split()[2]) for line in lines if line.startswith("  #")]
    assert weighted == [4, 2] * 6
    plan = lines[lines.index("quantized at the defaults (--w 4 --a 4):") + 1:][:3]
    assert plan == ["  weights:     36 layers per output channel, first and last at 8 bits",
                    "  embeddings:  3 tables at 8 bits per row (30522x384, 2x384, 512x384)",
                    "  activations: 48 tensors (6 unsigned): 24 inputs of weighted layers, 24 operands of "
                    "activation x activation MatMuls"]


@needs_assets
def test_cutting_padding_from_a_batch_leaves_real_positions_unchanged() -> None:
    """Reconstruction cuts text batches to their longest sentence (recon/sequence.py): exact for every
    block's outputs, found axes included (ids [B, T], hidden states [B, T, D], the mask built from them)."""
    from qdrop_onnx.graph import partition
    from qdrop_onnx.recon.sequence import sequence_layout

    lines = (ASSETS / "text/eval.txt").read_text().splitlines()[:16]
    feeds = tokenized_batches(lines, 16)[0]
    graph = lower(load_model(MODEL))
    pad = 16  # more padding than any sentence needs, as when calibration pads to the longest of 1,024
    samples = [torch.from_numpy(np.pad(feeds[name], ((0, 0), (0, pad)))) for name in graph.input_names]
    positions = samples[graph.input_names.index("attention_mask")]
    blocks = partition(graph)
    names = sorted({t for b in blocks for t in (*b.inputs, *b.outputs)})
    layout = sequence_layout(graph, names, samples, positions)
    assert layout is not None and layout.axes["input_ids"] == (1,)
    width = int(layout.lengths.max())
    assert width == feeds["input_ids"].shape[1] < positions.shape[1]
    everything = graph.subgraph([ln.name for ln in graph.nodes], graph.input_names, names)
    with torch.no_grad():
        values = dict(zip(names, everything(*samples), strict=True))
        idx = torch.arange(len(lines))
        for block in blocks[:4]:
            module = graph.subgraph(block.nodes, block.inputs, block.outputs)
            full = module(*[values[t] for t in block.inputs])
            cut = module(*[layout.crop(t, values[t], idx, width) for t in block.inputs])
            for name, a, b in zip(block.outputs, full, cut, strict=True):
                # hidden states [B, T, D] along T; the attention mask expanded to [B, 1, T, T] along both
                assert layout.axes[name] == ((1,) if a.ndim == 3 else (2, 3)), (name, a.shape)
                assert torch.allclose(layout.crop(name, a, idx, width), b, atol=1e-5), name
