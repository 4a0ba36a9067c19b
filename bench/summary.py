"""bench/results/SUMMARY.md and summary.png from the benchmark JSON files (no measuring here).

python -m bench.summary

Reads recon.json (this tool: rtn/adaround/brecq/qdrop rows) and ort_static.json (ONNX Runtime's
quantize_static); one table per model: top-1 on the 10k cifar10/test per method and bit width, plus the
machine each row was measured on, and a plot of accuracy vs bits with one line per method.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
BITS = ("W8A8", "W4A8", "W4A4", "W3A3", "W2A4", "W2A2")
FP32 = {"resnet20_cifar10": 81.03, "resnet56_cifar10": 83.20}


def _load(name: str) -> list[dict]:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else []


def collect() -> dict[str, dict[str, dict[str, float]]]:
    """model -> method -> bits -> ORT top-1 (simulated), default settings only (seed 0, drop 0.5)."""
    table: dict[str, dict[str, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    for row in _load("recon.json"):
        if row.get("seed", 0) != 0 or (row["method"] == "qdrop" and row.get("drop_prob") != 0.5):
            continue
        table[row["model"]][f"qdrop-onnx {row['method']}"][f"W{row['w']}A{row['a']}"] = row["ort_simulated"]
    for row in _load("ort_static.json"):
        if "error" in row:
            continue
        bits, method = row["config"].split("-")
        table[row["model"]][f"ORT quantize_static {method}"][bits.upper()] = row["ort_simulated"]
    return table


def render(table: dict[str, dict[str, dict[str, float]]]) -> str:
    out = ["# Benchmark summary\n",
           "Top-1 (%) on the 10k cifar10/test in ONNX Runtime (simulated QDQ path), calibration on all 1024 "
           "cifar10/calib images. qdrop-onnx rows: 2000 iterations per block, batch 32, asymmetric per-channel "
           "weights, first/last layer 8-bit, seed 0 (bench/recon_table.py; measured on the machine named in "
           "recon.json). ORT rows: quantize_static, QDQ, per-channel (bench/ort_static.py). '-' = not run.\n"]
    for model, methods in sorted(table.items()):
        out.append(f"\n## {model} (FP32 {FP32.get(model, float('nan')):.2f} %)\n")
        out.append("| method | " + " | ".join(BITS) + " |")
        out.append("|---|" + "---|" * len(BITS))
        for method, row in sorted(methods.items()):
            out.append(f"| {method} | " + " | ".join(f"{row[b]:.2f}" if b in row else "-" for b in BITS) + " |")
    return "\n".join(out) + "\n"


def plot(table: dict[str, dict[str, dict[str, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted(table)
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        for method, row in sorted(table[model].items()):
            xs = [i for i, b in enumerate(BITS) if b in row]
            ax.plot(xs, [row[BITS[i]] for i in xs], "o-", label=method)
        if model in FP32:
            ax.axhline(FP32[model], color="gray", linestyle="--", label="FP32")
        ax.set_xticks(range(len(BITS)), BITS)
        ax.set_ylabel("top-1 (%)")
        ax.set_title(model)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> int:
    table = collect()
    (RESULTS / "SUMMARY.md").write_text(render(table))
    plot(table, RESULTS / "summary.png")
    print(render(table))
    print(f"wrote {RESULTS / 'SUMMARY.md'} and {RESULTS / 'summary.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
