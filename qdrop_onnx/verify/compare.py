"""Run a reference (float) and a quantized model side by side in ONNX Runtime on the same inputs.

What a user needs to trust a quantized file: its accuracy next to the float model's when the data has
labels, and in any case how often the two agree on the top-1 class and the output SQNR
(10 log10 of signal power over quantization-noise power, over all outputs of the first model output).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from qdrop_onnx.data.spec import Dataset, InputSpec, as_specs, batch_size_of, fixed_batch
from qdrop_onnx.errors import DataError
from qdrop_onnx.verify.evaluate import make_session, run_first_output


@dataclass
class Comparison:
    """FP vs quantized on ``count`` samples. Top-k are percentages (None without labels)."""

    count: int
    reference_top1: float | None
    reference_top5: float | None
    quantized_top1: float | None
    quantized_top5: float | None
    agreement: float
    sqnr_db: float
    reference_seconds: float
    quantized_seconds: float

    def to_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def _topk_hits(logits: np.ndarray, labels: np.ndarray) -> tuple[int, int]:
    k = min(5, logits.shape[1])
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return int((top[:, 0] == labels).sum()), int((top == labels[:, None]).any(axis=1).sum())


def sqnr_db(signal_power: float, noise_power: float) -> float:
    """10 log10(signal / noise); +inf for identical outputs."""
    if noise_power == 0:
        return math.inf
    return 10.0 * math.log10(max(signal_power, 1e-30) / noise_power)


def compare_models(reference: str | Path | ort.InferenceSession, quantized: str | Path | ort.InferenceSession,
                   dataset: Dataset, spec: InputSpec | Sequence[InputSpec], *, batch_size: int = 64,
                   limit: int | None = None,
                   device: str = "cpu") -> Comparison:
    """Evaluate both models on ``dataset`` (first output = logits/scores) and compare them."""
    ref = reference if isinstance(reference, ort.InferenceSession) else make_session(reference, device=device)
    qnt = quantized if isinstance(quantized, ort.InferenceSession) else make_session(quantized, device=device)
    labeled = dataset.labels is not None
    batch_size = fixed_batch(as_specs(spec)) or batch_size
    hits = {"ref": [0, 0], "q": [0, 0]}
    count = agree = 0
    signal = noise = 0.0
    seconds = {"ref": 0.0, "q": 0.0}
    for x, y in dataset.batches(batch_size, limit):
        outs = {}
        for key, session in (("ref", ref), ("q", qnt)):
            start = time.perf_counter()
            outs[key] = run_first_output(session, x, spec).reshape(batch_size_of(x), -1).astype(np.float64)
            seconds[key] += time.perf_counter() - start
            if labeled and y is not None:
                top1, top5 = _topk_hits(outs[key], y)
                hits[key][0] += top1
                hits[key][1] += top5
        agree += int((outs["ref"].argmax(1) == outs["q"].argmax(1)).sum())
        signal += float((outs["ref"] ** 2).sum())
        noise += float(((outs["ref"] - outs["q"]) ** 2).sum())
        count += batch_size_of(x)
    if count == 0:
        raise DataError("no samples to compare the models on")

    def pct(n: int) -> float | None:
        return 100.0 * n / count if labeled else None

    return Comparison(count, pct(hits["ref"][0]), pct(hits["ref"][1]), pct(hits["q"][0]), pct(hits["q"][1]),
                      100.0 * agree / count, sqnr_db(signal, noise), seconds["ref"], seconds["q"])
