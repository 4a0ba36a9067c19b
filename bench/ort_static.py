"""ONNX Runtime's own quantizer (quantize_static) on the same model and data: the baseline to beat.

python -m bench.ort_static [--model resnet20_cifar10] [--configs w8a8-minmax,w4a4-minmax,...]

QDQ format, per-channel weights, calibrated on every image of cifar10/calib (the same 1024 images this
tool uses), after ORT's recommended ``quant_pre_process``. Evaluated on the 10k cifar10/test in ONNX
Runtime (simulated = ORT_ENABLE_BASIC, fused = ORT_ENABLE_ALL). Writes bench/results/ort_static.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from qdrop_onnx.data import input_spec, open_dataset
from qdrop_onnx.graph.load import load_model
from qdrop_onnx.verify import evaluate_classification, make_session

ROOT = Path(__file__).resolve().parent
ASSETS = ROOT.parent.parent / "shared" / "assets"
CONFIGS = ("w8a8-minmax", "w8a8-entropy", "w8a8-percentile", "w4a8-minmax", "w4a4-minmax")


class _Reader:
    """A CalibrationDataReader over preprocessed arrays (batches of 32)."""

    def __init__(self, name: str, data: np.ndarray) -> None:
        self._batches = iter([{name: data[i:i + 32]} for i in range(0, len(data), 32)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def quantize_with_ort(model: Path, out: Path, config: str, name: str, calib: np.ndarray) -> float:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    bits, method = config.split("-")
    w, a = int(bits[1]), int(bits[3])
    types = {8: (QuantType.QInt8, QuantType.QUInt8), 4: (QuantType.QInt4, QuantType.QUInt4)}
    start = time.perf_counter()
    pre = out.with_name("pre.onnx")
    quant_pre_process(str(model), str(pre), skip_symbolic_shape=True)
    quantize_static(str(pre), str(out), _Reader(name, calib), quant_format=QuantFormat.QDQ, per_channel=True,
                    weight_type=types[w][0], activation_type=types[a][1],
                    calibrate_method={"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                                      "percentile": CalibrationMethod.Percentile}[method])
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20_cifar10")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--assets", type=Path, default=ASSETS)
    parser.add_argument("--results", type=Path, default=ROOT / "results" / "ort_static.json")
    args = parser.parse_args()
    model = args.assets / "models" / f"{args.model}.onnx"
    spec = input_spec(load_model(model, simplify=False).model)
    calib = np.concatenate([x for x, _ in open_dataset(args.assets / "cifar10/calib", spec,
                                                       preset="cifar10").batches(256)])
    test = open_dataset(args.assets / "cifar10/test", spec, preset="cifar10")
    rows = []
    print(f"{'config':<18} {'simulated':>9} {'fused':>7} {'seconds':>8}")
    for config in args.configs.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "q.onnx"
            try:
                seconds = quantize_with_ort(model, out, config, spec.name, calib)
                acc = {lvl: evaluate_classification(make_session(out, device="cpu", opt_level=lvl), test, spec).top1
                       for lvl in ("basic", "all")}
                size = out.stat().st_size
            except Exception as exc:  # a configuration ORT cannot do is a row that says so
                print(f"{config:<18} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:100]}")
                rows.append({"model": args.model, "config": config, "error": f"{type(exc).__name__}: {exc}"[:300]})
                continue
        row = {"model": args.model, "config": config, "ort_simulated": acc["basic"], "ort_fused": acc["all"],
               "seconds": round(seconds, 1), "bytes": size}
        rows.append(row)
        print(f"{config:<18} {acc['basic']:>8.2f}% {acc['all']:>6.2f}% {seconds:>8.1f}", flush=True)
    args.results.parent.mkdir(exist_ok=True)
    args.results.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
