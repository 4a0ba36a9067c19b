"""Text as model input for BERT-family encoders: one sentence per line, through a Hugging Face ``tokenizers`` file.

The tokenizer (the ``tokenizers`` library: the optional extra ``qdrop-onnx[text]``) fills ``input_ids``,
``attention_mask`` and ``token_type_ids`` by name, for whichever of them the model takes. Batches are padded to
their longest sentence and bucketed by length (sentences sorted by token count within the first ``limit``), so
little compute goes to padding; sentences longer than ``max_length`` tokens are truncated, with one warning.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from qdrop_onnx.data.spec import Batch, InputSpec, as_specs
from qdrop_onnx.errors import DataError, first_line

log = logging.getLogger("qdrop_onnx")

TEXT_SUFFIXES = (".txt",)
# What a tokenizer gives per sentence, by the model input name BERT-family exports use.
TOKENIZER_OUTPUTS = ("input_ids", "attention_mask", "token_type_ids")


def is_text_source(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in TEXT_SUFFIXES


def _load_tokenizer(path: Path) -> object:
    try:
        import tokenizers
    except ImportError:
        raise DataError("text data needs the tokenizers package: pip install 'qdrop-onnx[text]'") from None
    try:
        return tokenizers.Tokenizer.from_file(str(path))
    except Exception as exc:  # the library raises a bare Exception for JSON that is not a tokenizer
        raise DataError(f"{path} is not a tokenizers JSON file ({first_line(exc)})") from None


class TextDataset:
    """Sentences of ``path`` (one per line, blank lines skipped) tokenized for the model inputs ``spec``."""

    def __init__(self, path: str | Path, tokenizer: str | Path, spec: InputSpec | Sequence[InputSpec],
                 max_length: int = 128) -> None:
        self.path, specs = Path(path), as_specs(spec)
        try:
            lines = [line.strip() for line in self.path.read_text(encoding="utf-8").splitlines()]
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"cannot read sentences from {self.path}: {first_line(exc)}") from None
        sentences = [line for line in lines if line]
        if not sentences:
            raise DataError(f"no sentences in {self.path}")
        names = [s.name for s in specs]
        unknown = [n for n in names if n not in TOKENIZER_OUTPUTS]
        if unknown:
            matched = [n for n in names if n in TOKENIZER_OUTPUTS]
            what = f"only {', '.join(matched)} match" if matched else "none matches"
            raise DataError(f"the tokenizer gives {', '.join(TOKENIZER_OUTPUTS)}; the model takes {', '.join(names)} "
                            f"({what}): give .npz files with one array per input instead")
        for s in specs:
            if s.is_float:
                raise DataError(f"model input {s.name} is {np.dtype(s.dtype)}; token ids and masks are integers")
        self.names, self.dtypes = names, {s.name: s.dtype for s in specs}
        tok = _load_tokenizer(Path(tokenizer))
        tok.no_padding()  # type: ignore[attr-defined]  # padding is ours: per batch
        tok.enable_truncation(max_length)  # type: ignore[attr-defined]
        encodings = tok.encode_batch(sentences)  # type: ignore[attr-defined]
        truncated = sum(1 for e in encodings if e.overflowing)
        if truncated:
            log.warning("%d of %d sentences in %s are longer than --max-length %d tokens: truncated", truncated,
                        len(sentences), self.path, max_length)
        pad = tok.token_to_id("[PAD]")  # type: ignore[attr-defined]
        self.pad_values = {"input_ids": pad if pad is not None else 0, "attention_mask": 0, "token_type_ids": 0}
        self.samples = [{"input_ids": e.ids, "attention_mask": e.attention_mask, "token_type_ids": e.type_ids}
                        for e in encodings]

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> np.ndarray | None:
        return None

    def subset(self, indices: Sequence[int]) -> TextDataset:
        rest = copy.copy(self)
        rest.samples = [self.samples[i] for i in indices]
        return rest

    def batches(self, batch_size: int, limit: int | None = None) -> Iterator[tuple[Batch, np.ndarray | None]]:
        """The first ``limit`` sentences in batches of similar length, each padded to its longest sentence.

        Batches are formed shortest first, then given shortest, longest, second shortest, ... so that any
        leading part of the stream (the samples that initialise activation ranges) spans every length.
        """
        count = len(self.samples) if limit is None else min(limit, len(self.samples))
        order = sorted(range(count), key=lambda i: len(self.samples[i]["input_ids"]))
        starts = list(range(0, count, batch_size))
        interleaved = [starts[i // 2] if i % 2 == 0 else starts[-1 - i // 2] for i in range(len(starts))]
        for start in interleaved:
            chosen = [self.samples[i] for i in order[start:start + batch_size]]
            width = max(len(s["input_ids"]) for s in chosen)
            batch = {}
            for name in self.names:
                rows = np.full((len(chosen), width), self.pad_values[name], dtype=self.dtypes[name])
                for r, sample in enumerate(chosen):
                    rows[r, :len(sample[name])] = sample[name]
                batch[name] = rows
            yield batch, None
