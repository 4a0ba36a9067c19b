"""``make bench`` (the speed table): reconstruction steps per second, time and memory to quantize, user against
system CPU time, and this tree against an earlier commit on the same machine in the same invocation.

python -m bench.speed [--sections steps,full,ab,auto,memory] [--models M,...] [--step-iters N]
                      [--full-iters N] [--auto-models M,...] [--auto-bits W4A4,W2A4] [--ab-model M]
                      [--ab-iters N] [--ab-bits W4A4] [--ab-samples N] [--baseline REV]
                      [--memory-model M] [--memory-samples N] [--memory-gb G] [--memory-iters N]
                      [--results DIR]

Sections (each measured whole in one invocation, one process at a time, so its ratios are honest on a
shared machine):
- ``steps``: qdrop W4A4 with ``--step-iters`` steps per block (default 50) on 256 calibration samples, on CPU
  with 1 thread and with every core, and on CUDA when torch sees one. Steps per second per block from the
  report's ``train_seconds`` (the optimisation loop alone): the median block and the slowest. "2000 steps"
  extrapolates the whole run to 2,000 steps per block: its time outside the loops plus the loops scaled.
- ``full``: the CLI's defaults (qdrop W4A4, 2,000 steps, 1,024 samples or all there are) on each model of
  ``--full-models``, with the wall time, peak RSS, user and system CPU seconds and top-1 on 1,000 test images.
- ``auto``: ``--iters auto`` against 2,000 fixed steps per block on each model of ``--auto-models`` at each
  width of ``--auto-bits`` (qdrop, the CLI's defaults otherwise): top-1 on 1,000 test images, the steps
  auto took (summed over blocks, and as a fraction of 2,000 per block) and the time.
- ``ab``: ``--ab-model`` at ``--ab-bits`` with ``--ab-iters`` steps, by the code of ``--baseline`` (a git
  revision, checked out in a temporary worktree) and by this tree: wall time, the speed-up, user and system
  seconds, peak RSS, top-1 on the model's test folder, and whether the two files are byte-identical.
- ``memory``: ``--memory-model`` (qdrop W4A4, ``--memory-iters`` steps) on ``--memory-samples`` calibration
  images (its calibration folder, then the same images mirrored left-right, then upside down, until there are
  enough; written as PNG into a scratch folder), once with the whole cache in memory, once with
  ``--max-cache-gb --memory-gb`` (the rest in temporary files), and that with ``--release-memory``, without
  and with glibc's huge pages (``GLIBC_TUNABLES=glibc.malloc.hugetlb=0``, then no ``GLIBC_TUNABLES``: the CLI
  restarts itself with ``hugetlb=1``): wall
  time, peak RSS, whether anything went to files (from the run's log), top-1, and whether each file is
  byte-identical to the in-memory one.

Rows land in ``<results>/speed.json`` by section (a section measured again replaces its rows); the table is
printed and written to ``<results>/speed.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ASSETS, MODELS, RESULTS, ROOT
from bench.run import ProcessUsage, last_line, machine, parse_bits, run_measured
from qdrop_onnx.fileio import write_atomic

SECTIONS = ("steps", "full", "ab", "auto", "memory")
STEP_SAMPLES = 256
EVAL_LIMIT = 1000
CLI = "import sys; from cli.main import main; sys.argv[0] = 'qdrop-onnx'; main()"


def quantize_command(model: str, out: Path, report: Path, w: int, a: int, iters: int | None,
                     samples: int | None, device: str, calib: Path | None = None) -> list[str]:
    spec = MODELS[model]
    command = [sys.executable, "-c", CLI, "quantize", str(spec.path), "--calib", str(calib or ASSETS / spec.calib),
               "--preset", spec.preset, "--w", str(w), "--a", str(a), "--device", device, "-o", str(out),
               "--report", str(report), "--eval", str(ASSETS / spec.test), "--eval-limit", str(EVAL_LIMIT),
               "--json", "--quiet"]
    if spec.classes:
        command += ["--classes", str(ASSETS / spec.classes)]
    if iters is not None:
        command += ["--iters", str(iters)]
    if samples is not None:
        command += ["--samples", str(samples)]
    return command


def run_quantize(command: list[str], code_root: Path, work: Path, threads: int | None = None,
                 extra_env: dict[str, str | None] | None = None) -> dict[str, object]:
    """One CLI run from ``code_root``'s sources in a process of its own: its usage, summary and report."""
    # A None in extra_env removes that variable.
    merged = {**os.environ, "PYTHONPATH": str(code_root), **(extra_env or {})}
    env = {k: v for k, v in merged.items() if v is not None}
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    log = work / "log.txt"
    usage = run_measured(command, log, work, env)
    row: dict[str, object] = usage_fields(usage)
    if usage.code != 0:
        return {**row, "status": "failed", "reason": f"exit {usage.code}: {last_line(log)}"}
    text = log.read_text()
    start = 0 if text.startswith("{") else text.index("\n{") + 1  # warnings (stderr) may come first
    summary = json.loads(text[start:text.rindex("}") + 1])
    report = json.loads(Path(summary["report"]["json"]).read_text())
    out = Path(summary["output"])
    return {**row, "status": "ok", "summary": summary, "report": report,
            "md5": hashlib.md5(out.read_bytes()).hexdigest(), "top1": summary["verification"]["quantized_top1"],
            "fp_top1": summary["verification"]["reference_top1"]}


def usage_fields(usage: ProcessUsage) -> dict[str, object]:
    return {"wall_s": round(usage.wall, 1), "peak_rss_mb": round(usage.rss_mb), "user_s": round(usage.user, 1),
            "system_s": round(usage.system, 1),
            "system_pct_of_user": round(100 * usage.system / max(usage.user, 1e-9), 1)}


def step_rates(report: dict[str, object]) -> dict[str, object]:
    blocks = [b for b in report["blocks"] if b.get("train_seconds")]  # type: ignore[union-attr]
    rates = [b["iters"] / b["train_seconds"] for b in blocks]
    train = sum(b["train_seconds"] for b in blocks)
    return {"blocks": len(blocks), "steps_per_s_median": round(statistics.median(rates), 1),
            "steps_per_s_slowest": round(min(rates), 1), "train_s": round(train, 1), "iters": blocks[0]["iters"]}


def measure_steps(models: list[str], iters: int, work: Path) -> list[dict[str, object]]:
    import torch

    settings = [("cpu", 1), ("cpu", os.cpu_count() or 1)] + ([("cuda", None)] if torch.cuda.is_available() else [])
    rows = []
    for model in models:
        for device, threads in settings:
            folder = Path(tempfile.mkdtemp(dir=work))
            command = quantize_command(model, folder / "q.onnx", folder / "report", 4, 4, iters, STEP_SAMPLES, device)
            row = {"model": model, "device": device, "threads": threads,
                   **run_quantize(command, ROOT.parent, folder, threads)}
            if row["status"] == "ok":
                rates = step_rates(row.pop("report"))  # type: ignore[arg-type]
                outside = float(row["summary"]["seconds"]) - rates["train_s"]  # type: ignore[index]
                row.update(rates, extrapolated_2000_s=round(outside + rates["train_s"] * 2000 / iters))
            rows.append(finish_row(row))
            print(f"  steps {model} {device} threads={threads}: {describe(row)}", flush=True)
            shutil.rmtree(folder, ignore_errors=True)
    return rows


def measure_full(models: list[str], iters: int, work: Path) -> list[dict[str, object]]:
    rows = []
    for model in models:
        folder = Path(tempfile.mkdtemp(dir=work))
        command = quantize_command(model, folder / "q.onnx", folder / "report", 4, 4, iters, None, "auto")
        row = finish_row({"model": model, "iters": iters, **run_quantize(command, ROOT.parent, folder)})
        rows.append(row)
        print(f"  full {model}: {describe(row)}", flush=True)
        shutil.rmtree(folder, ignore_errors=True)
    return rows


def measure_auto(models: list[str], bits: list[tuple[int, int]], work: Path) -> list[dict[str, object]]:
    rows = []
    for model in models:
        for w, a in bits:
            pair = []
            for iters in (2000, "auto"):
                folder = Path(tempfile.mkdtemp(dir=work))
                command = quantize_command(model, folder / "q.onnx", folder / "report", w, a, None, None, "auto")
                command += ["--iters", str(iters)]
                row = {"model": model, "w": w, "a": a, "iters": iters, **run_quantize(command, ROOT.parent, folder)}
                if row["status"] == "ok":
                    blocks = row["report"]["blocks"]  # type: ignore[index]
                    row["steps_taken"] = sum(b["iters"] for b in blocks)
                    row["steps_fraction"] = round(row["steps_taken"] / (2000 * len(blocks)), 3)
                pair.append(finish_row(row))
                print(f"  auto {model} W{w}A{a} iters={iters}: {describe(row)}", flush=True)
                shutil.rmtree(folder, ignore_errors=True)
            if all(r["status"] == "ok" for r in pair):
                pair[1]["top1_vs_fixed"] = round(float(pair[1]["top1"]) - float(pair[0]["top1"]), 2)
                pair[1]["time_vs_fixed"] = round(float(pair[1]["wall_s"]) / float(pair[0]["wall_s"]), 2)
            rows += pair
    return rows


def measure_ab(model: str, w: int, a: int, iters: int, samples: int | None, baseline: str,
               work: Path) -> list[dict[str, object]]:
    """The same run by ``baseline``'s code (a temporary git worktree) and by this tree, one after the other."""
    rev = subprocess.run(["git", "rev-parse", "--short", baseline], cwd=ROOT.parent, capture_output=True,
                         text=True, check=True).stdout.strip()
    tree = Path(tempfile.mkdtemp(dir=work)) / "baseline"
    subprocess.run(["git", "worktree", "add", "--detach", str(tree), rev], cwd=ROOT.parent, check=True,
                   capture_output=True)
    rows = []
    try:
        for label, code_root in ((f"baseline {rev}", tree), ("this tree", ROOT.parent)):
            folder = Path(tempfile.mkdtemp(dir=work))
            command = quantize_command(model, folder / "q.onnx", folder / "report", w, a, iters, samples, "cpu")
            row = finish_row({"model": model, "code": label, "w": w, "a": a, "iters": iters, "samples": samples,
                              **run_quantize(command, code_root, folder)})
            rows.append(row)
            print(f"  ab {label}: {describe(row)}", flush=True)
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT.parent, capture_output=True)
    if all(r["status"] == "ok" for r in rows):
        rows[1]["speedup"] = round(float(rows[0]["wall_s"]) / float(rows[1]["wall_s"]), 2)
        rows[1]["same_bytes"] = rows[0]["md5"] == rows[1]["md5"]
    return rows


def mirrored_calibration(model: str, count: int, folder: Path) -> Path:
    """``count`` images: ``model``'s calibration images, then each mirrored, then each upside down (PNG)."""
    from PIL import Image, ImageOps

    images = sorted(p for p in (ASSETS / MODELS[model].calib).rglob("*") if p.is_file())
    folder.mkdir(parents=True, exist_ok=True)
    variants = (lambda im: im, ImageOps.mirror, ImageOps.flip)
    for k in range(count):
        variant, source = divmod(k, len(images))
        if variant >= len(variants):
            break
        with Image.open(images[source]) as im:
            variants[variant](im.convert("RGB")).save(folder / f"{k:05d}.png")
    return folder


# glibc's transparent-huge-page advice for malloc's mappings (read at process start, glibc >= 2.35). The CLI
# restarts itself with it under --release-memory unless the variable names the tunable already: hugetlb=0 is
# how the row without it is measured; the row with it has no GLIBC_TUNABLES, so what it measures is the
# CLI's own restart, as a user runs it.
NO_TUNABLES: dict[str, str | None] = {"GLIBC_TUNABLES": None}
NO_THP_TUNABLE: dict[str, str | None] = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}


def measure_memory(model: str, count: int, budget_gb: float, iters: int, work: Path) -> list[dict[str, object]]:
    """The same run with the cache in memory, bounded by ``budget_gb`` (the rest in files), bounded with
    ``--release-memory`` (glibc's own malloc settings: no heap reuse, no fragmentation), and that with glibc's
    huge-page tunable (fewer page faults)."""
    calib = mirrored_calibration(model, count, Path(tempfile.mkdtemp(dir=work)) / "calib")
    rows = []
    bounded = f"--max-cache-gb {budget_gb:g}"
    variants = (("in memory", 1000.0, [], {}), (bounded, budget_gb, [], {}),
                (f"{bounded} --release-memory, {NO_THP_TUNABLE['GLIBC_TUNABLES']}", budget_gb, ["--release-memory"],
                 NO_THP_TUNABLE),
                (f"{bounded} --release-memory (restarts with glibc.malloc.hugetlb=1)", budget_gb,
                 ["--release-memory"], NO_TUNABLES))
    try:
        for label, gb, flags, env in variants:
            folder = Path(tempfile.mkdtemp(dir=work))
            command = quantize_command(model, folder / "q.onnx", folder / "report", 4, 4, iters, count, "cpu", calib)
            command += ["--max-cache-gb", str(gb), "--cache-dir", str(folder), *flags]
            row = {"model": model, "cache": label, "samples": count, "iters": iters,
                   **run_quantize(command, ROOT.parent, folder, extra_env=env)}
            row["spilled"] = "temporary files" in (folder / "log.txt").read_text()
            finish_row(row)
            rows.append(row)
            print(f"  memory {label}: {describe(row)}", flush=True)
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        shutil.rmtree(calib.parent, ignore_errors=True)
    if all(r["status"] == "ok" for r in rows):
        for row in rows[1:]:
            row["same_bytes"] = rows[0]["md5"] == row["md5"]
            row["time_vs_memory"] = round(float(row["wall_s"]) / float(rows[0]["wall_s"]), 2)
    return rows


def finish_row(row: dict[str, object]) -> dict[str, object]:
    """A row as it is kept: without the run's full summary and report."""
    row.pop("report", None)
    row.pop("summary", None)
    return row


def describe(row: dict[str, object]) -> str:
    if row["status"] != "ok":
        return f"{row['status']}: {row.get('reason')}"
    parts = [f"{row['wall_s']} s", f"user {row['user_s']} s", f"system {row['system_s']} s",
             f"RSS {row['peak_rss_mb']} MB", f"top-1 {row.get('top1')}"]
    if "steps_per_s_median" in row:
        parts.insert(0, f"{row['steps_per_s_median']} steps/s (slowest block {row['steps_per_s_slowest']})")
    return ", ".join(parts)


def table(results: dict[str, object]) -> str:
    lines = [f"# Speed (python -m bench.speed), {results['meta']}", ""]
    sections = results["sections"]  # type: ignore[index]
    if "steps" in sections:
        lines += ["## Steps per second (qdrop W4A4, 256 samples)", "",
                  "| model | device | threads | steps/s (median block) | slowest block "
                  "| run at 2,000 steps (extrapolated) | peak RSS MB | user s | system s |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in sections["steps"]["rows"]:
            lines.append(f"| {r['model']} | {r['device']} | {r['threads'] or ''} | "
                         f"{r.get('steps_per_s_median', '-')} | {r.get('steps_per_s_slowest', '-')} | "
                         f"{r.get('extrapolated_2000_s', '-')} s | "
                         f"{r['peak_rss_mb']} | {r['user_s']} | {r['system_s']} |")
        lines.append("")
    if "full" in sections:
        lines += ["## Time to quantize (the CLI's defaults)", "",
                  "| model | steps | wall s | peak RSS MB | user s | system s | system/user | top-1 (float) |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in sections["full"]["rows"]:
            lines.append(f"| {r['model']} | {r['iters']} | {r['wall_s']} | {r['peak_rss_mb']} | {r['user_s']} | "
                         f"{r['system_s']} | {r['system_pct_of_user']} % | {r.get('top1')} ({r.get('fp_top1')}) |")
        lines.append("")
    if "auto" in sections:
        lines += ["## --iters auto against 2,000 steps per block (qdrop)", "",
                  "| model | bits | iters | top-1 | vs 2,000 | steps taken | of 2,000/block | wall s | time vs 2,000 |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in sections["auto"]["rows"]:
            lines.append(f"| {r['model']} | W{r['w']}A{r['a']} | {r['iters']} | {r.get('top1')} | "
                         f"{r.get('top1_vs_fixed', '')} | {r.get('steps_taken', '-')} | "
                         f"{r.get('steps_fraction', '-')} | "
                         f"{r['wall_s']} | {r.get('time_vs_fixed', '')} |")
        lines.append("")
    if "ab" in sections:
        rows = sections["ab"]["rows"]
        first = rows[0]
        lines += [f"## {first['model']} W{first['w']}A{first['a']}, {first['iters']} steps per block: this tree "
                  "against an earlier commit", "",
                  "| code | wall s | speed-up | user s | system s | system/user | peak RSS MB | top-1 | same bytes |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['code']} | {r['wall_s']} | {r.get('speedup', '')} | {r['user_s']} | {r['system_s']} | "
                         f"{r['system_pct_of_user']} % | {r['peak_rss_mb']} | {r.get('top1')} | "
                         f"{r.get('same_bytes', '')} |")
        lines.append("")
    if "memory" in sections:
        rows = sections["memory"]["rows"]
        first = rows[0]
        lines += [f"## {first['model']} W4A4 on {first['samples']} samples, {first['iters']} steps per block: "
                  "the cache in memory and bounded", "",
                  "| cache | went to files | wall s | time vs in memory | peak RSS MB | user s | system s | top-1 "
                  "| same bytes |", "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['cache']} | {r.get('spilled', '')} | {r['wall_s']} | {r.get('time_vs_memory', '')} | "
                         f"{r['peak_rss_mb']} | {r['user_s']} | {r['system_s']} | {r.get('top1')} | "
                         f"{r.get('same_bytes', '')} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--sections", default="steps",
                        help=f"comma-separated, of {', '.join(SECTIONS)} (default steps)")
    parser.add_argument("--models", default=",".join(MODELS), help="models of the steps section")
    parser.add_argument("--step-iters", type=int, default=50)
    parser.add_argument("--full-models", default=",".join(MODELS))
    parser.add_argument("--full-iters", type=int, default=2000)
    parser.add_argument("--auto-models", default="resnet20_cifar10,resnet56_cifar10")
    parser.add_argument("--auto-bits", default="W4A4,W2A4")
    parser.add_argument("--ab-model", default="efficientnet_lite0_imagenet")
    parser.add_argument("--ab-bits", default="W4A4")
    parser.add_argument("--ab-iters", type=int, default=200)
    parser.add_argument("--ab-samples", type=int, help="calibration samples of the ab runs (default: the CLI's)")
    parser.add_argument("--baseline", default="HEAD~1", help="git revision the ab section compares with")
    parser.add_argument("--memory-model", default="efficientnet_lite0_imagenet")
    parser.add_argument("--memory-samples", type=int, default=1024)
    parser.add_argument("--memory-gb", type=float, default=2.0, help="the bounded run's --max-cache-gb")
    parser.add_argument("--memory-iters", type=int, default=20)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if not ASSETS.is_dir():
        print(f"bench.speed: real assets not found at {ASSETS}; nothing to measure", file=sys.stderr)
        return 1
    sections = [s.strip() for s in args.sections.split(",")]
    models = args.models.split(",")
    full_models = args.full_models.split(",")
    auto_models = args.auto_models.split(",")
    bad = [s for s in sections if s not in SECTIONS] + [m for m in (*models, *full_models, *auto_models,
                                                                      args.ab_model, args.memory_model)
                                                      if m not in MODELS]
    if bad:
        print(f"bench.speed: unknown section or model {bad[0]!r}", file=sys.stderr)
        return 2
    [(w, a)] = parse_bits(args.ab_bits)
    path = args.results / "speed.json"
    results = json.loads(path.read_text()) if path.exists() else {"sections": {}}
    results["meta"] = machine()
    work = ROOT / "work"
    work.mkdir(exist_ok=True)
    for section in sections:
        start = time.perf_counter()
        if section == "steps":
            rows = measure_steps(models, args.step_iters, work)
        elif section == "full":
            rows = measure_full(full_models, args.full_iters, work)
        elif section == "auto":
            rows = measure_auto(auto_models, parse_bits(args.auto_bits), work)
        elif section == "memory":
            rows = measure_memory(args.memory_model, args.memory_samples, args.memory_gb, args.memory_iters, work)
        else:
            rows = measure_ab(args.ab_model, w, a, args.ab_iters, args.ab_samples, args.baseline, work)
        results["sections"][section] = {"rows": rows, "measured": time.strftime("%Y-%m-%d %H:%M:%S"),
                                        "seconds": round(time.perf_counter() - start)}
        args.results.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda tmp: tmp.write_text(json.dumps(results, indent=1)))
    text = table(results)
    write_atomic(args.results / "speed.md", lambda tmp: tmp.write_text(text + "\n"))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
