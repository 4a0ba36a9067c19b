"""RTN baseline table: resnet20/resnet56 on the 10k cifar10/test, calibrated on all of cifar10/calib.

For each bit width: top-1 in ONNX Runtime on the simulated path (ORT_ENABLE_BASIC) and with its fused
integer kernels (ORT_ENABLE_ALL), for symmetric (default) and asymmetric (--weight-asymmetric) weights.
Writes bench/results/rtn.json. Usage: python -m bench.rtn_table [resnet20_cifar10 ...]
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from qdrop_onnx.api import DataOptions, quantize
from qdrop_onnx.data import input_spec, open_dataset
from qdrop_onnx.graph.load import load_model
from qdrop_onnx.quant.config import QuantConfig
from qdrop_onnx.verify import evaluate_classification, make_session

ROOT = Path(__file__).resolve().parent
ASSETS = ROOT.parent.parent / "shared" / "assets"
BITS = [(8, 8), (4, 8), (4, 4), (3, 3), (2, 4), (2, 2)]


def run(models: list[str]) -> list[dict]:
    rows = []
    for name in models:
        path = ASSETS / "models" / f"{name}.onnx"
        spec = input_spec(load_model(path, simplify=False).model)
        test = open_dataset(ASSETS / "cifar10/test", spec, preset="cifar10")
        fp = evaluate_classification(make_session(path, device="cpu"), test, spec).top1
        rows.append({"model": name, "config": "FP32", "basic": fp, "all": fp, "seconds": 0.0})
        for w, a in BITS:
            for asym in (False, True):
                config = QuantConfig(w_bits=w, a_bits=a, weight_asymmetric=asym, method="rtn")
                with tempfile.TemporaryDirectory() as tmp:
                    out = Path(tmp) / "q.onnx"
                    start = time.perf_counter()
                    quantize(path, ASSETS / "cifar10/calib", config, out, data=DataOptions(preset="cifar10"))
                    seconds = time.perf_counter() - start
                    acc = {lvl: evaluate_classification(make_session(out, device="cpu", opt_level=lvl), test,
                                                        spec).top1 for lvl in ("basic", "all")}
                label = f"W{w}A{a}" + (" asym" if asym else "")
                rows.append({"model": name, "config": label, **acc, "seconds": round(seconds, 1)})
                print(f"{name:<18} {label:<10} basic {acc['basic']:6.2f}  all {acc['all']:6.2f}  {seconds:5.1f} s",
                      flush=True)
    return rows


def main() -> int:
    models = sys.argv[1:] or ["resnet20_cifar10", "resnet56_cifar10"]
    rows = run(models)
    (ROOT / "results").mkdir(exist_ok=True)
    (ROOT / "results" / "rtn.json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
