"""Reconstruction accuracy and time on resnet20/resnet56 (issue #5's table), one configuration per call.

python -m bench.recon_table --method qdrop --w 4 --a 4 [--iters 2000] [--model resnet20_cifar10]

Calibrates on all 1024 cifar10/calib images, weights asymmetric per channel (the paper's setting), first
and last layer 8-bit; evaluates the written file on the 10k cifar10/test in ONNX Runtime (simulated and
fused paths) and the torch simulation on the same images. Appends a row to bench/results/recon.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from qdrop_onnx.api import DataOptions, quantize
from qdrop_onnx.data import input_spec, open_dataset
from qdrop_onnx.graph.load import load_model
from qdrop_onnx.quant.config import QuantConfig
from qdrop_onnx.verify import evaluate_classification, make_session

ROOT = Path(__file__).resolve().parent
ASSETS = ROOT.parent.parent / "shared" / "assets"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20_cifar10")
    parser.add_argument("--method", default="qdrop", choices=["rtn", "adaround", "brecq", "qdrop"])
    parser.add_argument("--w", type=int, default=4)
    parser.add_argument("--a", type=int, default=4)
    parser.add_argument("--iters", type=int, default=2000)
    parser.add_argument("--drop-prob", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (reconstruction only; ORT runs on CPU)")
    parser.add_argument("--assets", type=Path, default=ASSETS, help="the shared assets folder")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch and ORT (0: all cores)")
    parser.add_argument("--results", type=Path, default=ROOT / "results" / "recon.json")
    args = parser.parse_args()
    assets: Path = args.assets
    if args.threads:
        torch.set_num_threads(args.threads)
    config = QuantConfig(w_bits=args.w, a_bits=args.a, method=args.method, iters=args.iters,
                         drop_prob=args.drop_prob, weight_asymmetric=True, seed=args.seed)
    path = assets / "models" / f"{args.model}.onnx"

    def done(record) -> None:  # noqa: ANN001 - BlockRecord
        print(f"block {record.index:3d} {record.kind:<5} loss {record.loss_before:9.4g} -> {record.loss_after:9.4g} "
              f"{record.seconds:6.1f} s", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "q.onnx"
        start = time.perf_counter()
        result = quantize(path, assets / "cifar10/calib", config, out, data=DataOptions(preset="cifar10"),
                          device=args.device, on_block=done)
        seconds = time.perf_counter() - start
        spec = input_spec(load_model(out, simplify=False).model)
        test = open_dataset(assets / "cifar10/test", spec, preset="cifar10")
        acc = {lvl: evaluate_classification(make_session(out, device="cpu", opt_level=lvl,
                                                                threads=args.threads), test, spec).top1
               for lvl in ("basic", "all")}
    correct = 0
    with torch.no_grad():
        for x, y in test.batches(250):
            correct += int((result.sim.graph(torch.from_numpy(x)).argmax(1).numpy() == y).sum())
    row = {"model": args.model, "device": result.device, "method": args.method, "w": args.w, "a": args.a,
           "iters": args.iters,
           "drop_prob": args.drop_prob, "seed": args.seed, "ort_simulated": acc["basic"], "ort_fused": acc["all"],
           "torch": 100.0 * correct / len(test), "seconds": round(seconds, 1),
           "reconstruct_seconds": round(result.timings.get("reconstruct", 0.0), 1),
           "blocks": [{"loss_before": b.loss_before, "loss_after": b.loss_after, "seconds": round(b.seconds, 1)}
                      for b in result.blocks]}
    print(json.dumps({k: v for k, v in row.items() if k != "blocks"}))
    results: Path = args.results
    results.parent.mkdir(exist_ok=True)
    rows = json.loads(results.read_text()) if results.exists() else []
    results.write_text(json.dumps(rows + [row], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
