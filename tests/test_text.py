"""Text calibration: sentences through a tokenizers file, padded per batch, bucketed by length; its errors."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from qdrop_onnx.data import InputSpec, TextDataset, open_dataset
from qdrop_onnx.errors import DataError
from tests.helpers import small_cnn, tiny_token_encoder

tokenizers = pytest.importorskip("tokenizers")
CLI = str(Path(sys.executable).parent / "qdrop-onnx")
WORDS = ["[PAD]", "[UNK]", "the", "cat", "sat", "on", "a", "mat", "dog", "ran", "far", "away", "and", "then",
         "slept", "all", "day", "long", "in", "sun"]
SPECS = [InputSpec("input_ids", (None, None), np.int64), InputSpec("attention_mask", (None, None), np.int64)]


@pytest.fixture
def tokenizer(tmp_path: Path) -> Path:
    """A word-level tokenizer over WORDS (ids 0..19, [PAD] = 0), saved as a tokenizers JSON file."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    return path


def _sentences(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_batches_are_padded_per_batch_and_bucketed_by_length(tmp_path: Path, tokenizer: Path) -> None:
    lines = ["the cat", "the dog ran far away and then slept", "a cat sat", "", "the sun", "dog ran",
             "the cat sat on a mat"]
    data = open_dataset(_sentences(tmp_path / "s.txt", lines), SPECS, tokenizer=tokenizer)
    assert isinstance(data, TextDataset) and len(data) == 6 and data.labels is None  # the blank line is skipped
    batches = [x for x, _ in data.batches(2)]
    # Sorted by length (2, 2 | 2, 3 | 6, 8), then given shortest, longest, middle: every length early on.
    assert [b["input_ids"].shape for b in batches] == [(2, 2), (2, 8), (2, 3)]
    assert all(b["input_ids"].dtype == np.int64 and sorted(b) == ["attention_mask", "input_ids"] for b in batches)
    longest = batches[1]
    np.testing.assert_array_equal(longest["input_ids"], [[2, 3, 4, 5, 6, 7, 0, 0], [2, 8, 9, 10, 11, 12, 13, 14]])
    np.testing.assert_array_equal(longest["attention_mask"], [[1] * 6 + [0, 0], [1] * 8])


def test_long_sentences_are_truncated_with_one_warning(tmp_path: Path, tokenizer: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    path = _sentences(tmp_path / "s.txt", ["the cat sat on a mat", "the dog", "a dog ran far away"])
    with caplog.at_level(logging.WARNING, logger="qdrop_onnx"):
        data = TextDataset(path, tokenizer, SPECS, max_length=4)
    assert [r.getMessage() for r in caplog.records] == [
        f"2 of 3 sentences in {path} are longer than --max-length 4 tokens: truncated"]
    assert max(b["input_ids"].shape[1] for b, _ in data.batches(8)) == 4


def test_tokenizer_errors(tmp_path: Path, tokenizer: Path) -> None:
    path = _sentences(tmp_path / "s.txt", ["the cat"])
    (tmp_path / "other.json").write_text(json.dumps({"not": "a tokenizer"}))
    with pytest.raises(DataError, match=f"^{tmp_path / 'other.json'} is not a tokenizers JSON file"):
        TextDataset(path, tmp_path / "other.json", SPECS)
    with pytest.raises(DataError, match=r"^the tokenizer gives input_ids, attention_mask, token_type_ids; the model "
                                        r"takes x \(none matches\): give .npz files with one array per input instead$"):
        TextDataset(path, tokenizer, [InputSpec("x", (None, 3, 8, 8), np.float32)])
    with pytest.raises(DataError, match="needs a tokenizer: pass --tokenizer tokenizer.json$"):
        open_dataset(path, SPECS)
    with pytest.raises(DataError, match=f"^no sentences in {tmp_path / 'blank.txt'}$"):
        TextDataset(_sentences(tmp_path / "blank.txt", ["", "  "]), tokenizer, SPECS)


def _run(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *map(str, args)], capture_output=True, text=True, timeout=300)


def test_cli_text_calibration_and_its_one_line_errors(tmp_path: Path, tokenizer: Path) -> None:
    model, _ = tiny_token_encoder()
    onnx.save(model, tmp_path / "enc.onnx")
    rng = np.random.RandomState(0)
    lines = [" ".join(rng.choice(WORDS[2:], size=rng.randint(2, 9))) for _ in range(80)]
    calib = _sentences(tmp_path / "calib.txt", lines)
    proc = _run("quantize", tmp_path / "enc.onnx", "--calib", calib, "--tokenizer", tokenizer, "--w", "4",
                "--a", "8", "--iters", "20", "--samples", "64", "-q", "--no-report")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "enc.w4a8.onnx").exists()

    out = tmp_path / "x.onnx"
    proc = _run("quantize", tmp_path / "enc.onnx", "--calib", calib, "-o", out)
    assert (proc.returncode, proc.stderr) == (2, f"qdrop-onnx: error: text data ({calib}) needs --tokenizer "
                                                 "tokenizer.json (a Hugging Face tokenizers file)\n")
    (tmp_path / "bad.json").write_text("[1, 2, 3]")
    proc = _run("quantize", tmp_path / "enc.onnx", "--calib", calib, "--tokenizer", tmp_path / "bad.json", "-o", out)
    assert proc.returncode == 1 and proc.stderr.startswith(
        f"qdrop-onnx: error: {tmp_path / 'bad.json'} is not a tokenizers JSON file (") and proc.stderr.count("\n") == 1
    onnx.save(small_cnn()[0], tmp_path / "cnn.onnx")
    proc = _run("quantize", tmp_path / "cnn.onnx", "--calib", calib, "--tokenizer", tokenizer, "-o", out)
    assert (proc.returncode, proc.stderr) == (1, "qdrop-onnx: error: the tokenizer gives input_ids, attention_mask, "
                                                 "token_type_ids; the model takes x (none matches): give .npz files "
                                                 "with one array per input instead\n")
    assert not out.exists()
