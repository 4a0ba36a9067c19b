"""Mixed precision against uniform widths: the Pareto table (top-1, weight payload, allocation cost).

For each model and activation width: uniform W2/W3/W4 and mixed at average 2.5/3.0/3.5 weight bits
(``--avg-w-bits``, widths from 2,3,4,8), every run with the same method and steps per block, for each seed.
Top-1 on the model's test set in ONNX Runtime (simulated path), the weight payload at native widths (kB,
what ``--size-kb`` counts; int8-container files are the same size whatever the widths) and the seconds the
allocation took (sensitivity plus solver). Writes ``bench/results/mixed.json`` and prints the table.

    python -m bench.mixed --models resnet20_cifar10 --method rtn --a 4,3 --seeds 0

The JSON is rewritten after every cell, so a long run that is stopped keeps what it measured; ``--resume``
skips the cells already in it (same method and steps). ``--weights`` picks cells (e.g. ``W2,avg2.5``) and
``--name`` the file (``bench/results/<name>.json``), so the seeds that decide a claim can be run apart.
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
CELLS = (*(f"W{w}" for w in UNIFORM), *(f"avg{a:g}" for a in MIXED))


def parse_cell(cell: str) -> tuple[int | None, float | None]:
    """``W3`` -> (3, None), ``avg2.5`` -> (None, 2.5)."""
    if cell.startswith("W"):
        return int(cell[1:]), None
    if cell.startswith("avg"):
        return None, float(cell[3:])
    raise ValueError(f"a cell is W<bits> or avg<bits>, got {cell!r}")


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
    alloc = result.allocation
    if alloc is not None:
        row["allocation_s"] = round(alloc.seconds, 1)
        row["average_bits"] = round(alloc.average_bits, 3)
        # Which layers were kept wide and why: each allocated layer's width, parameters and sensitivity.
        table = {la.node: la for la in alloc.sensitivity.layers}
        row["widths"] = {n: {"bits": b, "params": table[n].params,
                             "error": {str(k): float(f"{v:.4g}") for k, v in table[n].error.items()}}
                         for n, b in alloc.widths.items()}
    return row


def table(rows: list[dict[str, object]]) -> str:
    cells: dict[tuple[object, object, object], list[dict[str, object]]] = {}
    for r in rows:
        cells.setdefault((r["model"], r["a"], r["weights"]), []).append(r)
    lines = ["| model | act | weights | top-1 (mean ± sd over seeds) | seeds | weight kB | allocation s |",
             "|---|---|---|---|---|---|---|"]
    models = list(dict.fromkeys(r["model"] for r in rows))

    def order(key: tuple[object, object, object]) -> tuple[int, int, float, bool]:
        model, a, weights = key
        w = str(weights)
        bits = float(w[1:]) if w.startswith("W") else float(w.split()[1])
        return models.index(model), -int(a), bits, not w.startswith("W")  # type: ignore[call-overload]

    for (model, a, weights), group in sorted(cells.items(), key=lambda kv: order(kv[0])):
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
    parser.add_argument("--weights", default=",".join(CELLS), help="cells, comma-separated (W2, avg2.5, ...)")
    parser.add_argument("--name", default="mixed", help="results file: bench/results/NAME.json")
    parser.add_argument("--resume", action="store_true", help="keep the rows of NAME.json, run only the rest")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    try:
        cells = [parse_cell(c) for c in args.weights.split(",")]
    except ValueError as e:
        print(f"bench.mixed: {e}", file=sys.stderr)
        return 2
    if not ASSETS.is_dir():
        print(f"bench.mixed: real assets not found at {ASSETS}; nothing to measure", file=sys.stderr)
        return 1
    models = args.models.split(",")
    if any(m not in MODELS for m in models):
        print(f"bench.mixed: unknown model in {args.models!r}", file=sys.stderr)
        return 2
    path = args.results / f"{args.name}.json"
    rows: list[dict[str, object]] = []
    if args.resume and path.is_file():
        old = json.loads(path.read_text())
        if (old["method"], old["iters"]) == (args.method, args.iters):
            rows = old["rows"]
    done = {(r["model"], r["a"], r["weights"], r["seed"]) for r in rows}
    start = time.perf_counter()
    args.results.mkdir(parents=True, exist_ok=True)

    def save() -> str:
        text = table(rows)
        path.write_text(json.dumps(
            {"meta": machine(), "method": args.method, "iters": args.iters, "seeds": args.seeds,
             "seconds": round(time.perf_counter() - start, 1), "rows": rows, "table": text}, indent=2))
        return text

    with tempfile.TemporaryDirectory() as tmp:
        for model in models:
            for a in (int(v) for v in args.a.split(",")):
                for seed in (int(v) for v in args.seeds.split(",")):
                    for w, avg in cells:
                        if (model, a, f"W{w}" if w else f"avg {avg:g}", seed) in done:
                            continue
                        rows.append(run_cell(model, a, w, avg, args.method, args.iters, seed, Path(tmp)))
                        print(json.dumps(rows[-1]), flush=True)
                        save()
    text = save()
    print(f"mixed precision, --method {args.method} --iters {args.iters}, seeds {args.seeds}\n\n{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
