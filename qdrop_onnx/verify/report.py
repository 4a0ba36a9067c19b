"""The quantization report: one JSON document (for machines), its Markdown rendering and a PNG plot.

Files, for a base path ``B`` (default ``<output stem>.report``): ``B.json``, ``B.md``, ``B.png``. Each is
written to a temporary file and renamed, so a reader never sees half a report.

JSON fields (all present; ``null`` where not measured):
  tool, version, created            who wrote it and when (UTC, ISO 8601)
  input, output                     {path, bytes} of the float model and the written QDQ file
  config                            every setting of the run (QuantConfig) plus device
  seconds, timings                  wall time in total and per phase (load, calibrate, reconstruct, ...)
  calibration_samples               samples used
  layers                            per weighted layer: node, op_type, bits, input_bits (its input activation's
                                    width; null: float), symmetric, weight_sqnr_db, and rule (the --layer-bits /
                                    config layers / allocation rule that set it, if any)
  activations                       per quantized tensor: tensor, bits, reason
  blocks                            per reconstructed block: index, name, kind, loss_before (RTN),
                                    loss_after, seconds, undecided (fraction of soft roundings),
                                    kept_rtn (true: learning ended above the RTN loss, RTN was kept)
  verification                      FP vs quantized (verify.compare.Comparison fields) plus data (path),
                                    held_out (false: the calibration samples themselves) and runtime
                                    (onnxruntime, or openvino for --target openvino)
  coverage                          integer vs float weighted kernels: after ORT's optimizer, or as
                                    OpenVINO executed them (each layer's runtime precision); left_in_float:
                                    [{node, reason}] for each weighted op the runtime ran in float
  allocation                        mixed precision (a budget set): budget, widths {node: bits}, average_bits,
                                    weight_kb, a_widths {tensor: bits}, average_a_bits (--avg-a-bits; null
                                    otherwise), error (summed sensitivity), seconds, and the sensitivity table
                                    (per layer: node, op_type, params, error {bits: value}, fixed; per allocated
                                    activation: tensor, consumers, elements per sample, error {bits: value})
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from qdrop_onnx.fileio import write_atomic

REPORT_SUFFIXES = (".json", ".md", ".png")


@dataclass
class QuantReport:
    """Everything the report files hold; see the module docstring for the field meanings."""

    tool: str
    version: str
    created: str
    input: dict[str, Any]
    output: dict[str, Any]
    config: dict[str, Any]
    seconds: float
    timings: dict[str, float]
    calibration_samples: int
    layers: list[dict[str, Any]] = field(default_factory=list)
    activations: list[dict[str, Any]] = field(default_factory=list)
    blocks: list[dict[str, Any]] = field(default_factory=list)
    verification: dict[str, Any] | None = None
    coverage: dict[str, Any] | None = None
    allocation: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return json_safe(asdict(self))


def json_safe(value: Any) -> Any:
    """JSON has no Infinity/NaN: SQNR of identical outputs (inf) is written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def report_paths(base: str | Path) -> dict[str, Path]:
    """``{"json": B.json, "md": B.md, "png": B.png}`` for base ``B`` (a given .json/.md/.png suffix is dropped)."""
    base = Path(base)
    if base.suffix in REPORT_SUFFIXES:
        base = base.with_suffix("")
    return {suffix[1:]: base.with_name(base.name + suffix) for suffix in REPORT_SUFFIXES}


def write_report(report: QuantReport, base: str | Path) -> dict[str, Path]:
    """Write the JSON, Markdown and PNG files of ``report``; returns their paths."""
    paths = report_paths(base)
    data = report.to_dict()
    write_atomic(paths["json"], lambda p: p.write_text(json.dumps(data, indent=2) + "\n"))
    write_atomic(paths["md"], lambda p: p.write_text(render_markdown(data)))
    write_atomic(paths["png"], lambda p: plot_report(data, p))
    return paths


def _fmt(value: Any, spec: str = ".2f", unit: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{unit}"


def verification_rows(verification: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(metric, reference, quantized) rows of the verification table (shared by the CLI and Markdown); a
    model's further outputs follow, each metric prefixed by the output's name."""
    rows = _output_rows(verification)
    where = "OpenVINO" if verification.get("runtime") == "openvino" else "ORT"
    rows.append((f"{where} time", _fmt(verification["reference_seconds"], ".2f", " s"),
                 _fmt(verification["quantized_seconds"], ".2f", " s")))
    for other in verification.get("outputs", []):
        rows += [(f"{other['output']}: {metric}", ref, q) for metric, ref, q in _output_rows(other)]
    return rows


def _output_rows(verification: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows = []
    if verification.get("reference_top1") is not None:
        rows.append(("top-1", _fmt(verification["reference_top1"], unit=" %"),
                     _fmt(verification["quantized_top1"], unit=" %")))
        rows.append(("top-5", _fmt(verification["reference_top5"], unit=" %"),
                     _fmt(verification["quantized_top5"], unit=" %")))
    if verification.get("agreement") is not None:
        rows.append(("top-1 agreement", "", _fmt(verification["agreement"], unit=" %")))
    if verification.get("pixel_agreement") is not None:
        rows.append(("pixel agreement", "", _fmt(verification["pixel_agreement"], unit=" %")))
    if verification.get("iou") is not None:
        rows.append(("map IoU (> 0.5)", "", _fmt(verification["iou"], unit=" %")))
    if verification.get("cosine_mean") is not None:
        what = "embedding cosine" if verification.get("kind") == "sequence" else "output cosine"
        rows.append((f"{what} mean", "", _fmt(verification["cosine_mean"], ".4f")))
        rows.append((f"{what} min", "", _fmt(verification["cosine_min"], ".4f")))
    rows.append(("output SQNR", "", _fmt(verification["sqnr_db"], ".1f", " dB")))
    return rows


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def render_markdown(data: dict[str, Any]) -> str:
    """The report as Markdown: settings, verification, blocks, layers."""
    cfg = data["config"]
    out = [f"# qdrop-onnx report: {Path(data['output']['path']).name}\n",
           f"Written {data['created']} by {data['tool']} {data['version']}.\n"]
    settings = [["input", f"`{data['input']['path']}` ({data['input']['bytes'] / 2**20:.2f} MB)"],
                ["output", f"`{data['output']['path']}` ({data['output']['bytes'] / 2**20:.2f} MB)"],
                ["method", cfg["method"]], ["bits", f"W{cfg['w_bits']}A{cfg['a_bits']}"],
                ["target", cfg.get("target", "ort_cpu")], ["format", cfg["format"]],
                ["device", cfg.get("device", "cpu")],
                ["calibration samples", str(data["calibration_samples"])],
                ["iterations per block", str(cfg["iters"]) if cfg["method"] != "rtn" else "-"],
                ["wall time", f"{data['seconds']:.1f} s"]]
    out += ["## Settings\n", _table(["setting", "value"], settings)]
    if data["verification"]:
        ver = data["verification"]
        held = "held-out data" if ver.get("held_out") else "the calibration samples (no held-out data given)"
        where = "OpenVINO" if ver.get("runtime") == "openvino" else "ONNX Runtime"
        out += [f"## Verification in {where}\n\n{ver['count']} samples from `{ver.get('data')}` ({held}).\n",
                _table(["metric", "float model", "quantized"], [list(r) for r in verification_rows(ver)])]
    if data["coverage"]:
        cov = data["coverage"]
        where = "as OpenVINO executed them" if (data["verification"] or {}).get("runtime") == "openvino" \
            else "after ORT's optimizer"
        out.append(f"Integer kernels {where}: {cov['integer']} of {cov['integer'] + cov['float']} "
                   f"weighted ops ({100 * cov['fraction']:.0f} %).\n")
        left = cov.get("left_in_float") or []
        if left:
            out += ["Left in float:\n", _table(["layer", "why"], [[f"`{r['node']}`", r["reason"]] for r in left])]
    if data["blocks"]:
        rows = [[b["index"], b["kind"], f"`{b['name']}`", f"{b['loss_before']:.4g}", f"{b['loss_after']:.4g}",
                 f"{b['seconds']:.1f}"] for b in data["blocks"]]
        out += ["\n## Reconstruction (per block)\n\nLoss = squared error of the block output vs the float model; "
                "*before* is round-to-nearest.\n",
                _table(["#", "kind", "block", "loss before", "loss after", "seconds"], rows)]
    if data["layers"]:
        rows = [[f"`{la['node']}`", la["op_type"], la["bits"], la.get("input_bits") or "float",
                 "sym" if la["symmetric"] else "asym", _fmt(la["weight_sqnr_db"], ".1f"), la.get("rule", "")]
                for la in data["layers"]]
        out += ["\n## Weighted layers\n", _table(["layer", "op", "bits", "input bits", "grid", "weight SQNR dB",
                                                   "set by"], rows)]
    alloc = data.get("allocation")
    if alloc:
        parts = []
        if alloc["widths"]:
            parts.append(f"{len(alloc['widths'])} layers' weights allocated, mean {alloc['average_bits']:.2f} bits")
        if alloc.get("a_widths"):
            parts.append(f"{len(alloc['a_widths'])} input activations allocated, mean "
                         f"{alloc['average_a_bits']:.2f} bits by elements")
        out.append(f"\nMixed precision, {alloc['budget']}: " + "; ".join(parts) + f"; weights "
                   f"{alloc['weight_kb']:.1f} kB at their widths, summed sensitivity {alloc['error']:.4g}, "
                   f"{alloc['seconds']:.1f} s (the layers table says which rule set each).\n")
    counts: dict[int, int] = {}
    for act in data["activations"]:
        counts[act["bits"]] = counts.get(act["bits"], 0) + 1
    out.append("\nActivation quantizers: " + ", ".join(f"{n} at {b} bits" for b, n in sorted(counts.items())) + ".\n")
    return "\n".join(out)


def plot_report(data: dict[str, Any], path: Path) -> None:
    """PNG: per-block reconstruction loss before/after (when reconstructed) and per-layer weight SQNR."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks = data["blocks"]
    panels = 2 if blocks else 1
    fig, axes = plt.subplots(panels, 1, figsize=(10, 3.6 * panels), squeeze=False)
    if blocks:
        ax = axes[0][0]
        idx = [b["index"] for b in blocks]
        ax.semilogy(idx, [max(b["loss_before"], 1e-12) for b in blocks], "o-", label="round-to-nearest")
        ax.semilogy(idx, [max(b["loss_after"], 1e-12) for b in blocks], "s-", label=f"{data['config']['method']}")
        ax.set_xlabel("block")
        ax.set_ylabel("reconstruction loss")
        ax.set_title("Block output error vs the float model")
        ax.legend()
        ax.grid(True, alpha=0.3)
    ax = axes[-1][0]
    layers = data["layers"]
    sqnr = [la["weight_sqnr_db"] if la["weight_sqnr_db"] is not None else 0.0 for la in layers]
    colors = [plt.cm.viridis((la["bits"] - 2) / 6) for la in layers]
    ax.bar(range(len(layers)), sqnr, color=colors)
    ax.set_xlabel("weighted layer (graph order)")
    ax.set_ylabel("weight SQNR (dB)")
    bits = sorted({la["bits"] for la in layers})
    ax.set_title("Weight quantization SQNR per layer (" + ", ".join(f"{b}-bit" for b in bits) + ")")
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
