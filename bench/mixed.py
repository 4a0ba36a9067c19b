"""Mixed precision against uniform widths: the Pareto table (top-1, weight payload, allocation cost).

For each model and activation width: uniform W2/W3/W4 and mixed at average 2.5/3.0/3.5 weight bits
(``--avg-w-bits``, widths from 2,3,4,8), every run with the same method and steps per block, for each seed.
Top-1 on the model's test set in ONNX Runtime (simulated path), the weight payload at native widths (kB,
what ``--size-kb`` counts; int8-container files are the same size whatever the widths) and the seconds the
allocation took (sensitivity plus solver). Writes ``bench/results/mixed.json`` and prints the table.

    python -m bench.mixed --models resnet20_cifar10 --method rtn --a 4,3 --seeds 0
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ASSETS, MODELS, RESULTS, score_file
from bench.run import machine
from qdrop_onnx.api import DataOptions, quantize
from qdrop_onnx.quant.config import QuantConfig

UNIFORM = (2, 3, 4)
MIXED = (2.5, 3.0, 3.5)


def weight_kb(result: object) -> float:
    graph, plan = result.sim.graph, result.plan  # type: ignore[attr-defined]
    return sum(int(graph.op(n).weight.numel()) * s.bits for n, s in plan.weights.items()) / 8000


def run_cell(model: str, a: int, w: int | None, avg: float | None, method: str, iters: int, seed: int,
             work: Path) -> dict[str, object]:
    bench = MODELS[model]
    config = QuantConfig(w_bits=w or 4, a_bits=a, method=method, iters=iters, seed=seed, avg_w_bits=avg).validate()
    out = work / f"{model}.a{a}.{w or avg}.s{seed}.onnx"
    result = quantize(bench.path, ASSETS / bench.calib, config, out, data=DataOptions(preset=bench.preset))
    row: dict[str, object] = {"model": model, "a": a, "weights": f"W{w}" if w else f"avg {avg:g}", "seed": seed,
                              "top1": score_file(out, model, latency_repeats=1)["top1_simulated"],
                              "weight_kb": round(weight_kb(result), 1), "seconds": round(result.seconds, 1)}
    if result.allocation is not None:
        row["allocation_s"] = round(result.allocation.seconds, 1)
        row["average_bits"] = round(result.allocation.average_bits, 3)
    return row


def table(rows: list[dict[str, object]]) -> str:
    cells: dict[tuple[object, object, object], list[dict[str, object]]] = {}
    for r in rows:
        cells.setdefault((r["model"], r["a"], r["weights"]), []).append(r)
    lines = ["| model | act | weights | top-1 (mean ± sd over seeds) | seeds | weight kB | allocation s |",
             "|---|---|---|---|---|---|---|"]
    for (model, a, weights), group in cells.items():
        tops = [float(r["top1"]) for r in group]  # type: ignore[arg-type]
        spread = f" ± {statistics.stdev(tops):.2f}" if len(tops) > 1 else ""
        alloc = group[0].get("allocation_s", "")
        lines.append(f"| {model} | A{a} | {weights} | {statistics.mean(tops):.2f}{spread} | {len(tops)} | "
                     f"{group[0]['weight_kb']} | {alloc} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet20_cifar10,resnet56_cifar10")
    parser.add_argument("--a", default="4,3", help="activation widths, comma-separated")
    parser.add_argument("--method", default="qdrop")
    parser.add_argument("--iters", type=int, default=2000)
    parser.add_argument("--seeds", default="0", help="comma-separated seeds")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if not ASSETS.is_dir():
        print(f"bench.mixed: real assets not found at {ASSETS}; nothing to measure", file=sys.stderr)
        return 1
    models = args.models.split(",")
    if any(m not in MODELS for m in models):
        print(f"bench.mixed: unknown model in {args.models!r}", file=sys.stderr)
        return 2
    rows = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for model in models:
            for a in (int(v) for v in args.a.split(",")):
                for seed in (int(v) for v in args.seeds.split(",")):
                    for w in UNIFORM:
                        rows.append(run_cell(model, a, w, None, args.method, args.iters, seed, Path(tmp)))
                    for avg in MIXED:
                        rows.append(run_cell(model, a, None, avg, args.method, args.iters, seed, Path(tmp)))
    text = table(rows)
    print(f"mixed precision, --method {args.method} --iters {args.iters}, seeds {args.seeds}\n\n{text}")
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "mixed.json").write_text(json.dumps(
        {"meta": machine(), "method": args.method, "iters": args.iters, "seeds": args.seeds,
         "seconds": round(time.perf_counter() - start, 1), "rows": rows, "table": text}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
