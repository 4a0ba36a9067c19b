"""Integer-kernel coverage and latency on hand-built graphs no one tuned for, per runtime present.

Nets: a Keras-style CNN (Conv -> ReLU -> BatchNorm, valid padding, 64 channels) and a MobileNetV3-style net
(HardSwish, squeeze-excite, Erf-GELU, Resize, ConvTranspose, Concat; 32 channels), both at 96x96. Widths:
W8A8 and W4A4 for ONNX Runtime, W8A8 and W4A8 for OpenVINO (its target's). RTN on random calibration data
(coverage and latency do not depend on what the weights learned); then in each runtime the weighted ops
run as integer kernels (ORT: after its optimizer at ORT_ENABLE_ALL; OpenVINO: executed precision) and the
latency of the float and the quantized files at batch 1 and 32, median of 50 runs, the files timed in turn
within each run (a slow spell of the shared machine slows them alike), all in one invocation.
Writes ``bench/results/coverage.json``, prints the table, and says which runtimes were absent.

    python -m bench.coverage [--repeats 50]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from bench.common import RESULTS, medians_ms_interleaved
from bench.run import machine
from qdrop_onnx.api import quantize
from qdrop_onnx.data import TensorDataset, input_spec
from qdrop_onnx.quant.config import QuantConfig
from qdrop_onnx.verify import make_session
from qdrop_onnx.verify.runtimes import OpenVinoSession, openvino_available, runtime_coverage
from tests.helpers import keras_style_cnn, mobile_detector_net

NETS: dict[str, Callable[[], tuple[onnx.ModelProto, np.ndarray]]] = {
    "keras_cnn_96": lambda: keras_style_cnn(seed=0, width=64, size=96, batch=32),
    "mobile_det_96": lambda: mobile_detector_net(seed=0, width=32, size=96, batch=32),
}
# runtime -> (target, widths)
RUNTIMES = {"onnxruntime": ("ort_cpu", [(8, 8), (4, 4)]), "openvino": ("openvino", [(8, 8), (4, 8)])}


def _session(path: Path, runtime: str) -> Any:
    return OpenVinoSession(path) if runtime == "openvino" else make_session(path, device="cpu", opt_level="all")


def _latencies(paths: dict[str, Path], runtime: str, x: np.ndarray, repeats: int) -> dict[str, dict[str, float]]:
    """{file key: {"b1": ms, "b32": ms}}, every file timed in turn within each repeat."""
    sessions = {key: _session(path, runtime) for key, path in paths.items()}
    names = {key: input_spec(onnx.load(str(path), load_external_data=False)).name for key, path in paths.items()}
    result: dict[str, dict[str, float]] = {key: {} for key in paths}
    for b in (1, 32):
        fns = {key: (lambda s=s, n=names[key], xb=x[:b]: s.run(None, {n: xb})) for key, s in sessions.items()}
        for key, ms in medians_ms_interleaved(fns, repeats).items():
            result[key][f"b{b}"] = round(ms, 3)
    return result


def run(repeats: int) -> tuple[list[dict[str, Any]], list[str]]:
    rows, absent = [], []
    runtimes = [r for r in RUNTIMES if r != "openvino" or openvino_available()]
    absent = [r for r in RUNTIMES if r not in runtimes]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for net, build in NETS.items():
            model, x = build()
            float_path = work / f"{net}.onnx"
            onnx.save(model, float_path)
            calib = np.random.RandomState(1).randn(64, *x.shape[1:]).astype(np.float32)
            for runtime in runtimes:
                target, widths = RUNTIMES[runtime]
                paths = {"float": float_path}
                for w, a in widths:
                    config = QuantConfig.from_dict({"target": target, "w_bits": w, "a_bits": a, "method": "rtn",
                                                    "samples": 64, "calib_act_samples": 64, "batch_size": 32})
                    paths[f"W{w}A{a}"] = work / f"{net}.{runtime}.w{w}a{a}.onnx"
                    quantize(model, TensorDataset(calib, input_spec(model)), config, paths[f"W{w}A{a}"])
                ms = _latencies(paths, runtime, x, repeats)
                fp = ms["float"]
                for w, a in widths:
                    bits = f"W{w}A{a}"
                    coverage, q = runtime_coverage(paths[bits], runtime), ms[bits]
                    rows.append({"net": net, "runtime": runtime, "bits": bits, "integer": coverage.integer,
                                 "weighted": coverage.total, "float_b1_ms": fp["b1"], "quant_b1_ms": q["b1"],
                                 "float_b32_ms": fp["b32"], "quant_b32_ms": q["b32"],
                                 "ratio_b1": round(q["b1"] / fp["b1"], 2), "ratio_b32": round(q["b32"] / fp["b32"], 2)})
    return rows, absent


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| net | runtime | bits | integer kernels | latency b1 (q / fp) | latency b32 (q / fp) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['net']} | {r['runtime']} | {r['bits']} | {r['integer']} of {r['weighted']} | "
                     f"{r['quant_b1_ms']:.2f} / {r['float_b1_ms']:.2f} ms ({r['ratio_b1']:.2f}x) | "
                     f"{r['quant_b32_ms']:.1f} / {r['float_b32_ms']:.1f} ms ({r['ratio_b32']:.2f}x) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50, help="Latency runs per measurement (median).")
    args = parser.parse_args(argv)
    rows, absent = run(args.repeats)
    print(table(rows))
    if absent:
        print(f"absent runtimes (not measured): {', '.join(absent)}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "coverage.json"
    out.write_text(json.dumps({"machine": machine(), "repeats": args.repeats, "absent": absent, "rows": rows},
                              indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
