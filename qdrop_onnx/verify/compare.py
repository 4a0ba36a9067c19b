"""Run a reference (float) and a quantized model side by side in ONNX Runtime on the same inputs.

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
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from qdrop_onnx.data.spec import POSITION_MASK, Dataset, InputSpec, as_specs, batch_size_of, fixed_batch
from qdrop_onnx.errors import DataError
from qdrop_onnx.verify.evaluate import make_session, run_first_output

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

    def to_dict(self) -> dict[str, float | int | str | None]:
        """Every field, less the metrics that do not apply to this kind of output."""
        out = asdict(self)
        for key in ("agreement", "cosine_mean", "cosine_min", "pixel_agreement", "iou"):
            if out[key] is None:
                del out[key]
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
    kind = None
    cosines: list[np.ndarray] = []
    pixels = pixels_agreeing = intersection = union = 0
    for x, y in dataset.batches(batch_size, limit):
        raw = {}
        for key, session in (("ref", ref), ("q", qnt)):
            start = time.perf_counter()
            raw[key] = run_first_output(session, x, spec).astype(np.float64)
            seconds[key] += time.perf_counter() - start
        positions = _positions(x)
        kind = kind or output_kind(raw["ref"], positions)
        n = batch_size_of(x)
        if kind == "sequence":
            weight = positions[..., None]  # padded positions carry no signal and no noise
            signal += float(((raw["ref"] * weight) ** 2).sum())
            noise += float((((raw["ref"] - raw["q"]) * weight) ** 2).sum())
            pooled = {k: (v * weight).sum(1) / np.maximum(weight.sum(1), 1.0) for k, v in raw.items()}
            cosines.append(_cosines(pooled["ref"], pooled["q"]))
        else:
            if kind == "map" and raw["ref"].shape[1] > 1:
                pixels += raw["ref"][:, 0].size
                pixels_agreeing += int((raw["ref"].argmax(1) == raw["q"].argmax(1)).sum())
            elif kind == "map":
                a, b = raw["ref"] > MAP_THRESHOLD, raw["q"] > MAP_THRESHOLD
                intersection += int((a & b).sum())
                union += int((a | b).sum())
            outs = {k: v.reshape(n, -1) for k, v in raw.items()}
            if kind == "classes":
                for key in ("ref", "q"):
                    if labeled and y is not None:
                        top1, top5 = _topk_hits(outs[key], y)
                        hits[key][0] += top1
                        hits[key][1] += top5
                agree += int((outs["ref"].argmax(1) == outs["q"].argmax(1)).sum())
            elif kind == "tensor":
                cosines.append(_cosines(outs["ref"], outs["q"]))
            signal += float((outs["ref"] ** 2).sum())
            noise += float(((outs["ref"] - outs["q"]) ** 2).sum())
        count += n
    if count == 0:
        raise DataError("no samples to compare the models on")

    def pct(n: int) -> float | None:
        return 100.0 * n / count if labeled and kind == "classes" else None

    cos = np.concatenate(cosines) if cosines else None
    return Comparison(count, pct(hits["ref"][0]), pct(hits["ref"][1]), pct(hits["q"][0]), pct(hits["q"][1]),
                      100.0 * agree / count if kind == "classes" else None, sqnr_db(signal, noise), seconds["ref"],
                      seconds["q"], kind or "classes", None if cos is None else float(cos.mean()),
                      None if cos is None else float(cos.min()),
                      100.0 * pixels_agreeing / pixels if pixels else None,
                      (100.0 * intersection / union if union else 100.0) if kind == "map" and not pixels else None)
