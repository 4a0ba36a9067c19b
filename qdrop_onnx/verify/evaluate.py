"""ONNX Runtime sessions and classification accuracy."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from qdrop_onnx.data.spec import Batch, Dataset, InputSpec, as_specs, batch_size_of, fixed_batch
from qdrop_onnx.errors import DataError, ModelLoadError, first_line

OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def providers_for(device: str = "auto") -> list[str]:
    """Execution providers: CUDA first when available (device auto/cuda), CPU always last."""
    available = ort.get_available_providers()
    if device == "cuda" and "CUDAExecutionProvider" not in available:
        raise ModelLoadError("--device cuda requested but this onnxruntime has no CUDAExecutionProvider")
    if device in ("auto", "cuda") and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


# ONNX Runtime 1.32's QDQ selector fuses sub-byte (INT4/UINT4/INT2/UINT2) Q/DQ pairs into kernels that
# reject those types ("Type 'tensor(uint2)' ... of operator (QLinearConv) is invalid"). Without it such
# models run as float DQ -> op, with results identical to ORT_ENABLE_BASIC. Its Clip -> QuantizeLinear
# rewrite fails to load any model with a Clip feeding a sub-byte Q ("Unexpected data type for
# QuantizeLinear input y_zero_point"): qdrop-onnx's own files avoid that pattern, other tools' (AIMET's
# W4A4 EfficientNet-Lite) have it.
SUB_BYTE_TYPES = frozenset({onnx.TensorProto.INT4, onnx.TensorProto.UINT4, onnx.TensorProto.INT2,
                            onnx.TensorProto.UINT2})
SUB_BYTE_WORKAROUND = ["QDQSelectorActionTransformer", "ClipQuantRewrite"]


def has_sub_byte_tensors(model: str | Path | bytes | onnx.ModelProto) -> bool:
    """Whether any initializer holds a 4- or 2-bit integer type."""
    if isinstance(model, bytes):
        model = onnx.load_from_string(model)
    elif not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    return any(t.data_type in SUB_BYTE_TYPES for t in model.graph.initializer)


log = logging.getLogger("qdrop_onnx")


def output_classes(model: onnx.ModelProto) -> int | None:
    """The class count of a [N, C] first output (None when it is not one, or C is symbolic)."""
    dims = model.graph.output[0].type.tensor_type.shape.dim
    return (dims[1].dim_value or None) if len(dims) == 2 else None


def warn_if_near_chance(top1: float | None, classes: int | None, data: str, who: str = "the float model") -> None:
    """One warning when a float model scores below twice chance on labeled data: the preprocessing is most
    likely wrong (ResNet-20 on cifar10/test cropped as for ImageNet: 12.9 % against its 81.03 %)."""
    if top1 is None or not classes or classes < 2:
        return
    chance = 100.0 / classes
    if top1 < 2 * chance:
        log.warning("%s scores %.1f %% top-1 on %s, below twice chance (%.1f %%): the preprocessing is probably "
                    "wrong (see --preset, --mean, --std, --size)", who, top1, data, chance)


def make_session(model: str | Path | bytes, *, device: str = "auto", opt_level: str = "all",
                 optimized_model_path: str | Path | None = None, threads: int = 0) -> ort.InferenceSession:
    """An InferenceSession with the given optimisation level (``disable|basic|extended|all``).

    ``threads`` caps ONNX Runtime's intra-op threads (0: its default, one per core).

    Models with 4-/2-bit tensors get ``QDQSelectorActionTransformer`` and ``ClipQuantRewrite`` disabled
    (see SUB_BYTE_WORKAROUND).
    """
    disabled = SUB_BYTE_WORKAROUND if opt_level in ("extended", "all") and has_sub_byte_tensors(model) else []
    options = ort.SessionOptions()
    options.graph_optimization_level = OPT_LEVELS[opt_level]
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    if optimized_model_path is not None:
        options.optimized_model_filepath = str(optimized_model_path)
    source = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(source, sess_options=options, providers=providers_for(device),
                                    disabled_optimizers=disabled)
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
        first = first_line(exc)
        raise ModelLoadError(f"ONNX Runtime cannot load the model: {first}") from None


@dataclass
class ClassificationResult:
    """Top-k accuracy (percent) over ``count`` samples; ``predictions`` holds the top-1 class per sample."""

    top1: float
    top5: float
    count: int
    seconds: float
    predictions: np.ndarray


def run_outputs(session: ort.InferenceSession, batch: Batch, spec: InputSpec | Sequence[InputSpec]) -> list[np.ndarray]:
    """Every output of ``session`` on ``batch``; a model with a fixed batch size gets a padded batch."""
    count, fixed = batch_size_of(batch), fixed_batch(as_specs(spec))
    if fixed is not None and count < fixed:
        padded = {n: np.concatenate([a, np.repeat(a[-1:], fixed - count, axis=0)]) for n, a in batch.items()}
        return [out[:count] for out in session.run(None, padded)]
    return session.run(None, batch)


def run_first_output(session: ort.InferenceSession, batch: Batch, spec: InputSpec | Sequence[InputSpec]) -> np.ndarray:
    """The first output of ``session`` on ``batch`` (see :func:`run_outputs`)."""
    return run_outputs(session, batch, spec)[0]


def evaluate_classification(session: ort.InferenceSession, dataset: Dataset, spec: InputSpec | Sequence[InputSpec], *,
                            batch_size: int = 64, limit: int | None = None) -> ClassificationResult:
    """Top-1/top-5 of ``session`` on a labeled dataset (the first model output is the logits)."""
    if dataset.labels is None:
        raise DataError("accuracy needs labels: put the images in one folder per class")
    batch_size = fixed_batch(as_specs(spec)) or batch_size
    start = time.perf_counter()
    top1 = top5 = count = 0
    predictions = []
    for x, y in dataset.batches(batch_size, limit):
        logits = run_first_output(session, x, spec)
        logits = logits.reshape(batch_size_of(x), -1)
        k = min(5, logits.shape[1])
        top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
        top1 += int((top[:, 0] == y).sum())
        top5 += int((top == y[:, None]).any(axis=1).sum())
        count += batch_size_of(x)
        predictions.append(top[:, 0])
    return ClassificationResult(100.0 * top1 / count, 100.0 * top5 / count, count,
                                time.perf_counter() - start, np.concatenate(predictions))
