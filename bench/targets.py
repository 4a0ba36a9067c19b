"""Per-target accuracy, coverage and latency on each runtime present: ``--target openvino`` files scored in
ONNX Runtime and in OpenVINO.

For each model and weight width (activations 8 bits, the OpenVINO target's): quantize with ``--target
openvino`` (``--method``, RTN by default: minutes, not hours), then score the float and the quantized file
in both runtimes on the model's test set (all of it, or ``--test-images`` evenly spaced images), count the
images whose top-1 class the two runtimes disagree on for the same quantized file, count the weighted layers
OpenVINO executed in int8, and time both files at batch 1 and 32 (median of
``--repeats``) in both runtimes, all in one invocation. Writes ``bench/results/targets.json`` and prints the
table; without the openvino package it says so and measures ONNX Runtime only.

    python -m bench.targets --models resnet20_cifar10,resnet56_cifar10 --w 8,4 [--method qdrop --iters N]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import ASSETS, MODELS, RESULTS, median_ms
from bench.run import machine
from qdrop_onnx.api import DataOptions, quantize
from qdrop_onnx.data import input_specs
from qdrop_onnx.graph import load_model
from qdrop_onnx.quant.config import QuantConfig
from qdrop_onnx.verify import evaluate_classification, make_session
from qdrop_onnx.verify.runtimes import OpenVinoSession, openvino_available, openvino_coverage


def _sessions(path: Path, runtimes: list[str]) -> dict[str, Any]:
    return {r: OpenVinoSession(path) if r == "openvino" else make_session(path, device="cpu") for r in runtimes}


def disagreements(predictions: list[np.ndarray]) -> int:
    """Images whose top-1 class differs between the first runtime's predictions and any other's."""
    return int(np.any([p != predictions[0] for p in predictions[1:]], axis=0).sum()) if len(predictions) > 1 else 0


def run_model(model: str, widths: list[int], method: str, samples: int, repeats: int, work: Path,
              runtimes: list[str], iters: int = 2000, test_images: int = 0) -> list[dict[str, Any]]:
    bench = MODELS[model]
    options = DataOptions(preset=bench.preset)
    spec = input_specs(load_model(bench.path, simplify=False).model)
    test = options.open(ASSETS / bench.test, spec, classes=ASSETS / bench.classes if bench.classes else None)
    if 0 < test_images < len(test):
        test = test.subset(np.linspace(0, len(test) - 1, test_images).round().astype(int).tolist())
    x = next(test.batches(32))[0]

    def latency(session: Any, batch: int) -> float:
        xb = {k: v[:batch] for k, v in x.items()}
        return round(median_ms(lambda: session.run(None, xb), repeats), 3)

    floats = _sessions(Path(bench.path), runtimes)
    float_scores = {r: evaluate_classification(s, test, spec).top1 for r, s in floats.items()}
    float_latency = {r: (latency(s, 1), latency(s, 32)) for r, s in floats.items()}
    rows = []
    for w in widths:
        config = QuantConfig.from_dict({"target": "openvino", "w_bits": w, "method": method, "samples": samples,
                                        "iters": iters})
        out = work / f"{model}.w{w}a8.onnx"
        start = time.perf_counter()
        quantize(bench.path, ASSETS / bench.calib, config, out, data=options)
        seconds = time.perf_counter() - start
        row: dict[str, Any] = {"model": model, "bits": f"W{w}A8", "method": method, "images": len(test),
                               "quantize_s": round(seconds, 1)}
        sessions = _sessions(out, runtimes)
        scores = {r: evaluate_classification(s, test, spec) for r, s in sessions.items()}
        row["runtimes_disagree"] = disagreements([score.predictions for score in scores.values()])
        for runtime, session in sessions.items():
            b1, b32 = latency(session, 1), latency(session, 32)
            row[runtime] = {"float_top1": round(float_scores[runtime], 2),
                            "top1": round(scores[runtime].top1, 2),
                            "float_b1_ms": float_latency[runtime][0], "b1_ms": b1,
                            "float_b32_ms": float_latency[runtime][1], "b32_ms": b32}
            if runtime == "openvino":
                coverage = openvino_coverage(session)
                row[runtime]["int8_layers"] = f"{coverage.integer} of {coverage.total}"
        rows.append(row)
    return rows


def table(rows: list[dict[str, Any]], runtimes: list[str]) -> str:
    head = "| model | bits | " + " | ".join(f"{r} top-1 (float / q) | {r} b1, b32 ms (float -> q)"
                                          for r in runtimes) + " | top-1 differs | OpenVINO int8 layers |"
    lines = [head, "|" + "---|" * (4 + 2 * len(runtimes))]
    for row in rows:
        cells = []
        for r in runtimes:
            c = row[r]
            cells += [f"{c['float_top1']:.2f} / {c['top1']:.2f}",
                      f"{c['float_b1_ms']:.2f} -> {c['b1_ms']:.2f}, {c['float_b32_ms']:.1f} -> {c['b32_ms']:.1f}"]
        int8_layers = row.get("openvino", {}).get("int8_layers", "-")
        lines.append(f"| {row['model']} | {row['bits']} | " + " | ".join(cells)
                     + f" | {row['runtimes_disagree']} of {row['images']} | {int8_layers} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet20_cifar10,resnet56_cifar10,efficientnet_lite0_imagenet")
    parser.add_argument("--w", default="8,4", help="Weight widths (activations are 8 bits).")
    parser.add_argument("--method", default="rtn", choices=["rtn", "adaround", "brecq", "qdrop"])
    parser.add_argument("--samples", type=int, default=256, help="Calibration samples.")
    parser.add_argument("--repeats", type=int, default=50, help="Latency runs per measurement (median).")
    parser.add_argument("--iters", type=int, default=2000, help="Reconstruction steps per block (not rtn).")
    parser.add_argument("--test-images", type=int, default=0,
                        help="Score on this many evenly spaced test images (0: the whole test set).")
    args = parser.parse_args(argv)
    runtimes = ["onnxruntime"] + (["openvino"] if openvino_available() else [])
    absent = [] if "openvino" in runtimes else ["openvino"]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            rows += run_model(model, [int(w) for w in args.w.split(",")], args.method, args.samples, args.repeats,
                              Path(tmp), runtimes, args.iters, args.test_images)
    print(table(rows, runtimes))
    if absent:
        print(f"absent runtimes (not measured): {', '.join(absent)}; TensorRT needs a GPU (not measured here)")
    else:
        print("absent runtimes (not measured): TensorRT (needs a GPU and onnxruntime-gpu)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "targets.json"
    out.write_text(json.dumps({"machine": machine(), "args": vars(args), "absent": absent, "rows": rows},
                              indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
