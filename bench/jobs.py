"""One quantization job in a process of its own (so its peak RSS is its own), run by bench/run.py.

python -m bench.jobs JOB.json

``tool`` "qdrop-onnx": qdrop_onnx.api.quantize with ``method``/``w``/``a``/``iters``/``drop_prob``/``seed``
(every other setting at the CLI's default) on the original model file.
``tool`` "ort": ONNX Runtime's quantize_static (QDQ, per-channel weights, ``method`` = MinMax, Entropy or
Percentile calibration) on the cleaned model, after ORT's quant_pre_process; tensors that qdrop-onnx keeps
at 8 bits (``bits``) are kept at 8 bits through TensorQuantOverrides.
``tool`` "ort-text": ONNX Runtime on a text encoder (bench/text.py), see :func:`run_ort_text`.
Writes the quantized model to ``out`` and ``{"seconds": ...}`` (plus what the tool reports) to ``result``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np


class CalibReader:
    """An ONNX Runtime CalibrationDataReader over a preprocessed array, in equal batches of at most 32 (also
    used by the Quark peer, which rewinds it between passes; this module imports only numpy at load time).

    Equal batches because ORT's histogram calibration stacks a pass's batches into one array: a short last
    batch (500 = 15 x 32 + 20) makes that fail. The batch is the largest size <= 32 that divides the count
    (1024 images: 32; 500: 25).
    """

    def __init__(self, name: str, data: np.ndarray) -> None:
        self.name, self.data, self.position, self.end = name, data, 0, len(data)
        self.batch = max(b for b in range(1, 33) if len(data) % b == 0)

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position >= self.end:
            return None
        self.position += self.batch
        return {self.name: self.data[self.position - self.batch:self.position]}  # end is a batch multiple

    def rewind(self) -> None:
        self.position, self.end = 0, len(self.data)

    def __len__(self) -> int:
        """Batches, the unit of ``set_range`` (quantize_static's CalibStridedMinMax counts in these)."""
        return len(self.data) // self.batch

    def set_range(self, start_index: int, end_index: int) -> None:
        self.position, self.end = start_index * self.batch, min(end_index * self.batch, len(self.data))


def run_qdrop_onnx(job: dict) -> dict[str, object]:
    import torch

    from qdrop_onnx.api import DataOptions, quantize
    from qdrop_onnx.quant.config import QuantConfig

    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    budget = {"iters": job["iters"]} if job["iters"] else {}  # rtn learns nothing: no budget
    config = QuantConfig(w_bits=job["w"], a_bits=job["a"], method=job["method"], drop_prob=job["drop_prob"],
                         seed=job["seed"], **budget)
    start = time.perf_counter()
    data = DataOptions(preset=job["preset"], tokenizer=job.get("tokenizer"), max_length=job.get("max_length", 128))
    result = quantize(job["source"], job["calib_dir"], config, job["out"], data=data, device=job.get("device", "cpu"))
    return {"seconds": round(time.perf_counter() - start, 2), "device": result.device,
            "reconstruct_seconds": round(result.timings.get("reconstruct", 0.0), 2), "blocks": len(result.blocks),
            "calibration_samples": result.calibration_samples}


def run_ort(job: dict) -> dict[str, object]:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    low = {8: (QuantType.QInt8, QuantType.QUInt8), 4: (QuantType.QInt4, QuantType.QUInt4)}
    if job["w"] not in low or job["a"] not in low:
        raise SystemExit("ONNX Runtime's quantize_static has integer types of 4, 8 and 16 bits only")
    model = onnx.load(job["model"])
    weights = {t.name for t in model.graph.initializer}
    # Keep at 8 bits what qdrop-onnx keeps at 8 bits (first/last layer, residual path), as for every tool.
    overrides = {name: [{"quant_type": QuantType.QInt8 if name in weights else QuantType.QUInt8}]
                 for name, bits in job["bits"].items()
                 if bits == 8 and (job["w"] if name in weights else job["a"]) != 8}
    calib = np.load(job["calib"])
    # Histogram calibration keeps every image's intermediate tensors at once unless told to go in chunks.
    chunk = job.get("histogram_chunk") if job["method"] != "minmax" else None
    chunked = {"CalibStridedMinMax": chunk} if chunk else {}
    start = time.perf_counter()
    pre = Path(job["out"]).with_name("pre.onnx")
    quant_pre_process(job["model"], str(pre), skip_optimization=True, skip_symbolic_shape=True)
    quantize_static(str(pre), job["out"], CalibReader(model.graph.input[0].name, calib),
                    quant_format=QuantFormat.QDQ, per_channel=True,
                    weight_type=low[job["w"]][0], activation_type=low[job["a"]][1],
                    calibrate_method={"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                                      "percentile": CalibrationMethod.Percentile}[job["method"]],
                    extra_options={"TensorQuantOverrides": overrides, **chunked})
    pre.unlink()
    import onnxruntime

    return {"seconds": round(time.perf_counter() - start, 2), "overrides_8bit": len(overrides),
            "onnxruntime_version": onnxruntime.__version__}


class TextReader:
    """A CalibrationDataReader over tokenized sentences (bench.text's batches: every input, by name)."""

    def __init__(self, batches: list[dict[str, np.ndarray]], names: set[str]) -> None:
        self.batches = [{k: v for k, v in b.items() if k in names} for b in batches]
        self.position = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position >= len(self.batches):
            return None
        self.position += 1
        return self.batches[self.position - 1]

    def rewind(self) -> None:
        self.position = 0


def run_ort_text(job: dict) -> dict[str, object]:
    """ONNX Runtime on a text encoder: ``dynamic`` (quantize_dynamic: int8 per-channel weights, activations
    quantized at run time, its transformer recipe) or quantize_static (QDQ, per-channel weights, W8A8) with
    ``minmax`` or ``percentile`` calibration on the same calibration sentences as qdrop-onnx."""
    import onnx
    import onnxruntime
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from bench.text import sentences, tokenized

    start = time.perf_counter()
    pre = Path(job["out"]).with_name("pre.onnx")
    quant_pre_process(job["source"], str(pre), skip_optimization=True, skip_symbolic_shape=True)
    if job["method"] == "dynamic":
        quantize_dynamic(str(pre), job["out"], per_channel=True, weight_type=QuantType.QInt8)
    else:
        names = {i.name for i in onnx.load(str(pre), load_external_data=False).graph.input}
        reader = TextReader(tokenized(sentences(Path(job["calib_dir"])), 32), names)
        method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}[job["method"]]
        quantize_static(str(pre), job["out"], reader, quant_format=QuantFormat.QDQ, per_channel=True,
                        weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8, calibrate_method=method)
    pre.unlink()
    return {"seconds": round(time.perf_counter() - start, 2), "onnxruntime_version": onnxruntime.__version__}


def main(job_path: str) -> int:
    job = json.loads(Path(job_path).read_text())
    run = {"qdrop-onnx": run_qdrop_onnx, "ort": run_ort, "ort-text": run_ort_text}[job["tool"]]
    Path(job["result"]).write_text(json.dumps(run(job), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
