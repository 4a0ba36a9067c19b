"""Run a reference (float) and a quantized model side by side in one runtime on the same inputs.

What a user needs to trust a quantized file, by the kind of its first output: for class logits the
accuracy next to the float model's when the data has labels and how often the two agree on the top-1
class; for hidden states of a sequence model the cosine of the mean-pooled sentence embeddings (over the
tokens the attention mask marks); for maps the per-pixel class agreement, or the IoU of a 1-channel
probability map thresholded at 0.5; for anything else the cosine per sample; and in every case the output
SQNR (10 log10 of signal power over quantization-noise power, padded positions left out).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from qdrop_onnx.data.spec import POSITION_MASK, Dataset, InputSpec, as_specs, batch_size_of, fixed_batch
from qdrop_onnx.errors import DataError
from qdrop_onnx.verify.evaluate import run_outputs
from qdrop_onnx.verify.runtimes import open_session

# What the first model output is, which decides the metrics that mean something for it:
# "classes" [N, C] logits (top-1/top-5 with labels, top-1 agreement); "sequence" [N, T, D] hidden states with an
# attention mask (cosine of the mean-pooled embeddings, SQNR over real tokens); "map" [N, C, H, W] dense
# outputs (per-pixel argmax agreement for C > 1, IoU of the 0.5-thresholded map for C = 1: a sigmoid
# probability map, as text detectors and segmenters write); "tensor" anything else (SQNR, cosine per sample).
OUTPUT_KINDS = ("classes", "sequence", "map", "tensor")
MAP_THRESHOLD = 0.5


@dataclass
class Comparison:
    """FP vs quantized on ``count`` samples. Top-k are percentages (None without labels); ``agreement``
    only for class outputs, ``cosine_mean``/``cosine_min`` (per sample: of the mean-pooled embedding of
    sequence outputs, of the flattened output otherwise) only for the other kinds."""

    count: int
    reference_top1: float | None
    reference_top5: float | None
    quantized_top1: float | None
    quantized_top5: float | None
    agreement: float | None
    sqnr_db: float
    reference_seconds: float
    quantized_seconds: float
    kind: str = "classes"
    cosine_mean: float | None = None
    cosine_min: float | None = None
    pixel_agreement: float | None = None  # maps with C > 1: % of pixels whose argmax class agrees
    iou: float | None = None  # maps with C = 1: % IoU of the two maps thresholded at MAP_THRESHOLD
    output: str | None = None  # the output's name
    outputs: list[Comparison] = field(default_factory=list)  # the model's other outputs, each by its kind

    def to_dict(self) -> dict[str, Any]:
        """Every field, less the metrics that do not apply to this kind of output (and ``outputs`` for a model
        with one output)."""
        out = asdict(self)
        out["outputs"] = [o.to_dict() for o in self.outputs]
        for key in ("agreement", "cosine_mean", "cosine_min", "pixel_agreement", "iou"):
            if out[key] is None:
                del out[key]
        if not out["outputs"]:
            del out["outputs"]
        return out


def output_kind(output: np.ndarray, positions: np.ndarray | None) -> str:
    if output.ndim == 2 and output.shape[1] > 1:
        return "classes"
    if output.ndim == 3 and positions is not None and positions.shape == output.shape[:2]:
        return "sequence"
    return "map" if output.ndim == 4 else "tensor"


def model_output_kind(model: onnx.ModelProto) -> str:
    """The kind :func:`output_kind` will find, from the first output's rank and the inputs (before running)."""
    rank = len(model.graph.output[0].type.tensor_type.shape.dim)
    inputs = {i.name for i in model.graph.input}
    if rank == 2:
        return "classes"
    if rank == 3 and POSITION_MASK in inputs:
        return "sequence"
    return "map" if rank == 4 else "tensor"


def _positions(batch: dict[str, np.ndarray]) -> np.ndarray | None:
    """The attention mask of a batch (1 = real token), when the model takes one."""
    mask = batch.get(POSITION_MASK)
    return None if mask is None or mask.ndim != 2 else mask.astype(np.float64)


def _cosines(ref: np.ndarray, q: np.ndarray) -> np.ndarray:
    num = (ref * q).sum(1)
    den = np.linalg.norm(ref, axis=1) * np.linalg.norm(q, axis=1)
    return np.where(den > 0, num / np.maximum(den, 1e-300), 1.0)


def _topk_hits(logits: np.ndarray, labels: np.ndarray) -> tuple[int, int]:
    k = min(5, logits.shape[1])
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return int((top[:, 0] == labels).sum()), int((top == labels[:, None]).any(axis=1).sum())


def sqnr_db(signal_power: float, noise_power: float) -> float:
    """10 log10(signal / noise); +inf for identical outputs."""
    if noise_power == 0:
        return math.inf
    return 10.0 * math.log10(max(signal_power, 1e-30) / noise_power)


class _OutputComparison:
    """Running sums for one model output, over batches: what :class:`Comparison` reports for it."""

    def __init__(self) -> None:
        self.kind: str | None = None
        self.hits = {"ref": [0, 0], "q": [0, 0]}
        self.agree = self.pixels = self.pixels_agreeing = self.intersection = self.union = 0
        self.signal = self.noise = 0.0
        self.cosines: list[np.ndarray] = []

    def add(self, ref: np.ndarray, q: np.ndarray, positions: np.ndarray | None, labels: np.ndarray | None) -> None:
        raw = {"ref": ref.astype(np.float64), "q": q.astype(np.float64)}
        self.kind = self.kind or output_kind(raw["ref"], positions)
        n = len(ref)
        if self.kind == "sequence":
            weight = positions[..., None]  # padded positions carry no signal and no noise
            self.signal += float(((raw["ref"] * weight) ** 2).sum())
            self.noise += float((((raw["ref"] - raw["q"]) * weight) ** 2).sum())
            pooled = {k: (v * weight).sum(1) / np.maximum(weight.sum(1), 1.0) for k, v in raw.items()}
            self.cosines.append(_cosines(pooled["ref"], pooled["q"]))
            return
        if self.kind == "map" and raw["ref"].shape[1] > 1:
            self.pixels += raw["ref"][:, 0].size
            self.pixels_agreeing += int((raw["ref"].argmax(1) == raw["q"].argmax(1)).sum())
        elif self.kind == "map":
            a, b = raw["ref"] > MAP_THRESHOLD, raw["q"] > MAP_THRESHOLD
            self.intersection += int((a & b).sum())
            self.union += int((a | b).sum())
        outs = {k: v.reshape(n, -1) for k, v in raw.items()}
        if self.kind == "classes":
            for key in ("ref", "q"):
                if labels is not None:
                    top1, top5 = _topk_hits(outs[key], labels)
                    self.hits[key][0] += top1
                    self.hits[key][1] += top5
            self.agree += int((outs["ref"].argmax(1) == outs["q"].argmax(1)).sum())
        elif self.kind == "tensor":
            self.cosines.append(_cosines(outs["ref"], outs["q"]))
        self.signal += float((outs["ref"] ** 2).sum())
        self.noise += float(((outs["ref"] - outs["q"]) ** 2).sum())

    def result(self, count: int, labeled: bool, seconds: dict[str, float], name: str | None) -> Comparison:
        kind = self.kind or "classes"

        def pct(n: int) -> float | None:
            return 100.0 * n / count if labeled and kind == "classes" else None

        cos = np.concatenate(self.cosines) if self.cosines else None
        iou = None
        if kind == "map" and not self.pixels:
            iou = 100.0 * self.intersection / self.union if self.union else 100.0
        return Comparison(count, pct(self.hits["ref"][0]), pct(self.hits["ref"][1]), pct(self.hits["q"][0]),
                          pct(self.hits["q"][1]), 100.0 * self.agree / count if kind == "classes" else None,
                          sqnr_db(self.signal, self.noise), seconds["ref"], seconds["q"], kind,
                          None if cos is None else float(cos.mean()), None if cos is None else float(cos.min()),
                          100.0 * self.pixels_agreeing / self.pixels if self.pixels else None, iou, name)


def compare_models(reference: str | Path | Any, quantized: str | Path | Any,
                   dataset: Dataset, spec: InputSpec | Sequence[InputSpec], *, batch_size: int = 64,
                   limit: int | None = None, device: str = "cpu", runtime: str = "onnxruntime") -> Comparison:
    """Evaluate both models on ``dataset`` and compare them, every output by its kind: the first output's
    comparison, with the others' in ``outputs`` (labels score the first output only). Each model is a path
    (opened in ``runtime``, see :mod:`qdrop_onnx.verify.runtimes`) or an open session."""
    ref = open_session(reference, runtime, device=device) if isinstance(reference, str | Path) else reference
    qnt = open_session(quantized, runtime, device=device) if isinstance(quantized, str | Path) else quantized
    labeled = dataset.labels is not None
    batch_size = fixed_batch(as_specs(spec)) or batch_size
    names = [o.name for o in ref.get_outputs()]
    per_output = [_OutputComparison() for _ in names]
    count = 0
    seconds = {"ref": 0.0, "q": 0.0}
    for x, y in dataset.batches(batch_size, limit):
        results = {}
        for key, session in (("ref", ref), ("q", qnt)):
            start = time.perf_counter()
            results[key] = run_outputs(session, x, spec)
            seconds[key] += time.perf_counter() - start
        positions = _positions(x)
        for i, sums in enumerate(per_output):
            sums.add(results["ref"][i], results["q"][i], positions, y if labeled and i == 0 else None)
        count += batch_size_of(x)
    if count == 0:
        raise DataError("no samples to compare the models on")
    first, *others = [sums.result(count, labeled and i == 0, seconds, name)
                      for i, (sums, name) in enumerate(zip(per_output, names, strict=True))]
    first.outputs = others
    return first
