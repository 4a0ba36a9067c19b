"""SUMMARY.md and summary.png from a benchmark results file (no measuring here).

python -m bench.summary [FOLDER]     (default bench/results; reads FOLDER/results.json from bench/run.py)

Per model: top-1 at every bit width for every tool; how far this tool's qdrop is ahead of (or behind) the
best ONNX Runtime calibration method and AIMET's AdaRound at 4 bits and below; what each run cost (time,
also as a ratio to ORT's MinMax W8A8 measured in the same invocation; peak RSS; file size; latency at
batch 1 and 32, also as a ratio to the float model; integer kernels). Then the drop-probability ablation
(mean ± std over seeds) and a plot of accuracy vs bits, one line per method.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from qdrop_onnx.fileio import write_atomic

RESULTS = Path(__file__).resolve().parent / "results"
BITS = ("W8A8", "W4A8", "W4A4", "W3A3", "W2A4", "W2A2")
LOW_BITS = ("W4A8", "W4A4", "W3A3", "W2A4", "W2A2")  # weights at 4 bits or fewer
METHOD_ORDER = ("ORT quantize_static minmax", "ORT quantize_static entropy", "ORT quantize_static percentile",
                "AIMET AdaRound", "Quark AdaRound", "qdrop-onnx rtn", "qdrop-onnx adaround", "qdrop-onnx brecq",
                "qdrop-onnx qdrop")
DATA = {"cifar10": "cifar10/test (10,000 images), calibration on all 1,024 cifar10/calib images",
        "imagenet": "imagenet-sample/val (500 images), calibration on all 500 imagenet-sample/calib images"}


def method_name(row: dict) -> str:
    return {"ort": f"ORT quantize_static {row['method']}", "aimet": "AIMET AdaRound", "quark": "Quark AdaRound",
            "qdrop-onnx": f"qdrop-onnx {row['method']}", "fp32": "FP32"}[row["tool"]]


def bits_of(row: dict) -> str:
    return f"W{row['w']}A{row['a']}"


def main_rows(rows: list[dict]) -> list[dict]:
    """Rows of the main table: qdrop at the default drop probability and seed 0 (ablation rows elsewhere)."""
    return [r for r in rows if r["tool"] != "fp32" and r.get("seed", 0) == 0
            and not (r["method"] == "qdrop" and r.get("drop_prob") != 0.5)]


def cell(row: dict | None) -> str:
    if row is None:
        return "-"
    if row.get("status") == "absent":
        return "n/a"
    if row.get("status") != "ok":
        return "failed"
    text = f"{row['top1_simulated']:.2f}"
    if row.get("accuracy_source"):
        text += "†"
    fused = row.get("top1_fused")
    if fused is not None and abs(fused - row["top1_simulated"]) >= 0.5:
        text += f" (fused {fused:.2f})"
    return text


def accuracy_table(rows: list[dict]) -> tuple[list[str], dict[str, dict[str, dict]]]:
    by_method: dict[str, dict[str, dict]] = defaultdict(dict)
    for r in main_rows(rows):
        by_method[method_name(r)][bits_of(r)] = r
    columns = [b for b in BITS if any(b in cols for cols in by_method.values())]
    lines = ["| method | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    # Every method gets a line, so that one not run at all shows as '-' instead of silently missing.
    methods = set(by_method) | (set(METHOD_ORDER) if by_method else set())
    for method in sorted(methods, key=lambda m: METHOD_ORDER.index(m) if m in METHOD_ORDER else 99):
        name = f"**{method}**" if method == "qdrop-onnx qdrop" else method
        lines.append(f"| {name} | " + " | ".join(cell(by_method.get(method, {}).get(b)) for b in columns) + " |")
    return lines, by_method


def top1(row: dict | None) -> float | None:
    return row["top1_simulated"] if row and row.get("status") == "ok" else None


def lead_table(by_method: dict[str, dict[str, dict]]) -> list[str]:
    """qdrop vs the best ORT method and vs AIMET at each low-bit column where qdrop was measured."""
    ours = by_method.get("qdrop-onnx qdrop", {})
    lines = ["| bits | qdrop-onnx qdrop | best ORT quantize_static | lead | AIMET AdaRound | lead |",
             "|---|---|---|---|---|---|"]
    behind, not_run = [], []
    for bits in LOW_BITS:
        mine = top1(ours.get(bits))
        if mine is None:
            continue
        ort_rows = {m: cols.get(bits) for m, cols in by_method.items() if m.startswith("ORT")}
        ort = [(v, m.rsplit(" ", 1)[1]) for m, r in ort_rows.items() if (v := top1(r)) is not None]
        best_ort = max(ort) if ort else None
        aimet_row = by_method.get("AIMET AdaRound", {}).get(bits)
        aimet = top1(aimet_row)
        cells = [bits, f"{mine:.2f}"]
        for peer, name, peer_rows in ((best_ort, "ORT", list(ort_rows.values())),
                                      ((aimet, "") if aimet is not None else None, "AIMET", [aimet_row])):
            if peer is None:
                # n/a: the peer ran and cannot do these bits; '-': it was not run (or failed) here
                ran = [r for r in peer_rows if r is not None]
                cannot = bool(ran) and all(r.get("status") == "absent" for r in ran)
                cells += ["n/a" if cannot else "-", "-"]
                if not cannot:
                    not_run.append(f"{bits} vs {name}")
                continue
            value, how = peer
            cells += [f"{value:.2f}" + (f" ({how})" if how else ""), f"{mine - value:+.2f}"]
            if mine <= value:
                behind.append(f"{bits} vs {name}")
        lines.append("| " + " | ".join(cells) + " |")
    verdict = ("qdrop-onnx qdrop is ahead in every measured column." if not behind else
               "qdrop-onnx qdrop is NOT ahead at: " + ", ".join(behind) + ".")
    if not_run:
        verdict += " Not compared (the peer was not run or failed here): " + ", ".join(not_run) + "."
    return lines + ["", verdict]


def ratio(value: object, base: object) -> str:
    try:
        return f"{float(value) / float(base):.1f}x"  # type: ignore[arg-type]
    except (TypeError, ValueError, ZeroDivisionError):
        return "-"


def cost_table(rows: list[dict]) -> list[str]:
    lines = ["| method | bits | top-1 sim / fused | quantize s | x ORT W8A8 | peak RSS MB | size KB "
             "| latency b1 ms (x FP) | latency b32 ms (x FP) | int kernels |", "|---|" + "---|" * 9]
    order = {m: i for i, m in enumerate(("FP32", *METHOD_ORDER))}
    for r in sorted(rows, key=lambda r: (order.get(method_name(r), 99), BITS.index(bits_of(r))
                                         if bits_of(r) in BITS else -1, r.get("drop_prob", 0.5), r.get("seed", 0))):
        if r.get("status") != "ok" or r["tool"] == "qdrop-onnx" and r["method"] == "qdrop" and (
                r.get("drop_prob") != 0.5 or r.get("seed", 0) != 0):
            continue
        base = r.get("baseline", {})
        fused = r.get("top1_fused")
        acc = f"{r['top1_simulated']:.2f} / {fused:.2f}" if fused is not None else f"{r['top1_simulated']:.2f}†"
        latency = [f"{r[k]:.2f} ({ratio(r[k], base.get('fp32_' + k))})" if r.get(k) is not None else "-"
                   for k in ("latency_b1_ms", "latency_b32_ms")]
        kernels = f"{r['int_kernels']}/{r['weighted_kernels']}" if r.get("weighted_kernels") else "-"
        seconds = f"{r['seconds']:.1f}" if r.get("seconds") is not None else "-"
        size = f"{r['bytes'] / 1024:.0f}" if r.get("bytes") else "-"
        rss = f"{r['peak_rss_mb']:.0f}" if r.get("peak_rss_mb") else "-"
        lines.append(f"| {method_name(r)} | {'FP32' if r['tool'] == 'fp32' else bits_of(r)} | {acc} | {seconds} "
                     f"| {ratio(r.get('seconds'), base.get('ort_w8a8_seconds')) if r['tool'] != 'fp32' else '-'} "
                     f"| {rss} | {size} | {latency[0]} | {latency[1]} | {kernels} |")
    return lines


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {std:.2f} (n={len(values)})"


def ablation(rows: list[dict]) -> list[str]:
    runs: dict[tuple[float, str], list[float]] = defaultdict(list)
    for r in rows:
        if r["tool"] == "qdrop-onnx" and r["method"] == "qdrop" and r.get("status") == "ok":
            runs[(r["drop_prob"], bits_of(r))].append(r["top1_simulated"])
    bits = [b for b in ("W4A4", "W3A3", "W2A2") if len(runs.get((0.0, b), [])) > 1]
    if not bits:
        return []
    names = {0.0: "0 (always quantized: BRECQ + LSQ)", 0.5: "0.5 (QDrop)", 1.0: "1 (never quantized in recon)"}
    lines = ["| --drop-prob | " + " | ".join(bits) + " |", "|---|" + "---|" * len(bits)]
    for p, name in names.items():
        lines.append(f"| {name} | " + " | ".join(mean_std(runs.get((p, b), [])) for b in bits) + " |")
    lines.append("")
    for b in bits:
        drop, always = runs.get((0.5, b), []), runs.get((0.0, b), [])
        if len(drop) < 2 or len(always) < 2:
            continue
        diff = statistics.mean(drop) - statistics.mean(always)
        noise = statistics.stdev(drop) + statistics.stdev(always)
        if abs(diff) <= noise:
            verdict = "no clear difference (within the seeds' spread)"
        else:
            verdict = "dropping pays" if diff > 0 else "dropping does not pay: always quantizing is better"
        lines.append(f"- {b}: QDrop (0.5) minus always-quantized (0) = {diff:+.2f} points "
                     f"(spread {noise:.2f}): {verdict}.")
    return lines


def render(data: dict) -> str:
    rows: list[dict] = data["rows"]
    meta = data.get("meta", {})
    iters = sorted({r["iters"] for r in rows if r.get("iters")})
    seen = sorted({r["measured"] for r in rows if r.get("measured")})
    seeds = sorted({r.get("seed", 0) for r in rows if r["tool"] == "qdrop-onnx"}) or [0]
    out = [f"# Benchmark summary ({meta.get('profile', '?')} profile)", "",
           f"Measured {seen[0] if seen else '?'} to {seen[-1] if seen else '?'}: Python {meta.get('python')}, "
           f"torch {meta.get('torch')}, ONNX Runtime {meta.get('onnxruntime')}, {meta.get('cpu_cores')} CPU cores"
           f"{', GPU ' + str(meta['cuda']) if meta.get('cuda') else ', no GPU'}. "
           f"Reconstruction budget: {', '.join(map(str, iters)) or '-'} steps per block (qdrop-onnx brecq/qdrop) "
           "or per layer (qdrop-onnx adaround, AIMET, Quark), batch 32. Seeds: qdrop-onnx "
           f"{', '.join(map(str, seeds))}, AIMET 0 (numpy and torch), Quark its fixed default 1705472343.", "",
           "Every tool starts from the same cleaned float graph (BatchNorm folded), calibrates on every "
           "calibration image and quantizes the same tensors at the same bits: qdrop-onnx's placement (first and "
           "last layer and the residual path at 8 bits; AIMET's other quantizers are disabled; ONNX Runtime keeps "
           "those tensors at 8 bits by TensorQuantOverrides and places the rest itself). Weights per-channel "
           "symmetric everywhere. Top-1 is ONNX Runtime's simulated QDQ path (ORT_ENABLE_BASIC) on the written "
           "file; '(fused X)' is shown where ORT's fused integer kernels (ORT_ENABLE_ALL) differ by 0.5 points or "
           "more. † = AIMET's own simulation (it exports QDQ at 4, 8, 16 and 32 bits only, so at 2 and 3 bits "
           "there is no file to score). n/a = the tool cannot do that bit width; '-' = not run.", ""]
    for model in sorted({r["model"] for r in rows}):
        mrows = [r for r in rows if r["model"] == model]
        fp = next((r for r in mrows if r["tool"] == "fp32" and r.get("status") == "ok"), None)
        where = DATA["cifar10" if "cifar10" in model else "imagenet"]
        fp_text = f"FP32 {fp['top1_simulated']:.2f} %" if fp else "FP32 not measured"
        budget = sorted({r["iters"] for r in mrows if r.get("iters")})
        out += [f"## {model} ({fp_text}; top-1 on {where}; {'/'.join(map(str, budget)) or 'no'} "
                "reconstruction steps per block or layer)", ""]
        table, by_method = accuracy_table(mrows)
        out += ["### Top-1 (%)", "", *table, ""]
        missing: dict[tuple[str, str], list[str]] = defaultdict(list)
        for r in main_rows(mrows):
            if r.get("status") in ("absent", "failed"):
                missing[(method_name(r), str(r.get("reason")))].append(bits_of(r))
        reasons = [f"{method} {', '.join(bits)}: {reason}" for (method, reason), bits in sorted(missing.items())]
        if reasons:
            out += ["Not measured, and why:", *[f"- {text}" for text in reasons], ""]
        entropy, minmax = (by_method.get(f"ORT quantize_static {m}", {}) for m in ("entropy", "minmax"))
        shared = [b for b in entropy if top1(entropy[b]) is not None and top1(minmax.get(b)) is not None]
        if shared and all(top1(entropy[b]) == top1(minmax[b]) for b in shared):
            out += ["ORT's entropy rows equal its minmax rows: through quantize_static, Entropy calibration gets "
                    "128 histogram bins and 128 quantized bins (its extra_options cannot change them), which leaves "
                    "one candidate threshold, the full range.", ""]
        if "qdrop-onnx qdrop" in by_method:
            out += ["### qdrop-onnx qdrop against the best peer (weights at 4 bits or fewer)", "",
                    *lead_table(by_method), ""]
        out += ["### Cost of each run", "", *cost_table(mrows), ""]
        abl = ablation(mrows)
        if abl:
            out += [f"## Ablation on {model}: QDrop's drop probability (top-1 %, mean ± std over seeds)", "", *abl,
                    ""]
    return "\n".join(out) + "\n"


def plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = data["rows"]
    models = sorted({r["model"] for r in rows})
    fig, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 4.5), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        _, by_method = accuracy_table([r for r in rows if r["model"] == model])
        lines: dict[str, dict[str, float]] = defaultdict(dict)
        for method, cols in by_method.items():
            name = "ORT quantize_static (best calibration)" if method.startswith("ORT") else method
            for bits, row in cols.items():
                if top1(row) is not None:
                    lines[name][bits] = max(lines[name].get(bits, 0.0), top1(row))  # type: ignore[arg-type]
        for name, cols in sorted(lines.items()):
            xs = [i for i, b in enumerate(BITS) if b in cols]
            style = {"linewidth": 2.5, "color": "black"} if name == "qdrop-onnx qdrop" else {}
            ax.plot(xs, [cols[BITS[i]] for i in xs], "o-", label=name, **style)
        fp = next((r for r in rows if r["model"] == model and r["tool"] == "fp32" and r.get("status") == "ok"), None)
        if fp:
            ax.axhline(fp["top1_simulated"], color="gray", linestyle="--", label="FP32")
        ax.set_xticks(range(len(BITS)), BITS)
        ax.set_ylabel("top-1 (%)")
        ax.set_title(model)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    folder = Path(args[0]) if args else RESULTS
    source = folder / "results.json"
    if not source.exists():
        print(f"bench.summary: no results at {source}; run `make bench` or `make bench-quick` first",
              file=sys.stderr)
        return 1
    data = json.loads(source.read_text())
    text = render(data)
    write_atomic(folder / "SUMMARY.md", lambda tmp: tmp.write_text(text))
    plot(data, folder / "summary.png")
    print(text)
    print(f"wrote {folder / 'SUMMARY.md'} and {folder / 'summary.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
