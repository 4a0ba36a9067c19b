"""``make bench`` / ``make bench-quick``: every tool on the real models, one results file, one SUMMARY.

python -m bench.run [--quick] [--models resnet20_cifar10,...] [--bits W4A4,W2A4] [--tools qdrop,aimet,...]
                    [--iters N] [--seeds 0,1,2] [--no-ablation] [--force] [--device auto|cpu|cuda]

Rows (``--tools``): ``fp32``; ONNX Runtime ``quantize_static`` with ``minmax``, ``entropy`` and
``percentile`` calibration (QDQ, per-channel; 4- and 8-bit only); ``aimet`` (AIMET AdaRound) and ``quark``
(AMD Quark AdaRound, W8A8 only), each from its own venv (bench/peer_envs.py); this tool's ``rtn``,
``adaround``, ``brecq`` and ``qdrop`` at their CLI defaults. Columns: W8A8 W4A8 W4A4 W3A3 W2A4 W2A2
(EfficientNet-Lite0: W8A8 and W4A4 unless ``--bits`` says otherwise). Every tool calibrates on every image
of the model's calib folder and quantizes the same tensors at the same bits (qdrop-onnx's placement:
first/last layer and the residual path at 8 bits); every file is scored by bench/common.py in the same
ONNX Runtime. ``--iters`` is the reconstruction budget per block (per layer for AdaRound), the same for
every tool that learns.

Each job runs in a process of its own (peak RSS is that process's, from wait4). Quantization time is also
reported as a ratio to ONNX Runtime's quantize_static MinMax W8A8 on the same model measured in the same
invocation, and latency as a ratio to the float model in the same invocation: the machine is shared.
Rows land in ``<results>/results.json`` as they finish; a rerun measures only what is missing (``--force``:
everything again), so an interrupted ``make bench`` continues where it stopped. ``--quick`` (resnet20,
100 iterations, W8A8/W4A4/W2A4, ORT MinMax and Percentile, no AIMET W8A8, no qdrop-onnx adaround/brecq, no
ablation) writes to bench/results/quick/. The ablation
(resnet20, ``--drop-prob`` 0 / 0.5 / 1 at W4A4, W3A3, W2A2, three seeds) runs after the main table.
Ends by writing SUMMARY.md and summary.png beside the results (bench/summary.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench import summary
from bench.common import ASSETS, BITS, MODELS, RESULTS, ROOT, bit_plan, bits_label, prepare, score_file
from bench.peer_envs import PEERS
from bench.peer_envs import status as peer_status
from qdrop_onnx.errors import first_line
from qdrop_onnx.fileio import write_atomic

ORT_METHODS = ("minmax", "entropy", "percentile")
OUR_METHODS = ("rtn", "adaround", "brecq", "qdrop")
ALL_TOOLS = ("fp32", *ORT_METHODS, "aimet", "quark", *OUR_METHODS)
QUICK_TOOLS = ("fp32", "minmax", "percentile", "aimet", "quark", "rtn", "qdrop")
QUICK_BITS = ((8, 8), (4, 4), (2, 4))
QUICK_SKIP = frozenset({("aimet", 8, 8)})  # AIMET's slowest row, and W8A8 is where every tool ties
ABLATION = {"model": "resnet20_cifar10", "bits": ((4, 4), (3, 3), (2, 2)), "drop_probs": (0.0, 0.5, 1.0)}


@dataclass(frozen=True)
class Job:
    """One row of the table: which tool, how, on what."""

    model: str
    tool: str  # fp32 | ort | aimet | quark | qdrop-onnx
    method: str  # fp32 | minmax | entropy | percentile | adaround | rtn | brecq | qdrop
    w: int = 32
    a: int = 32
    iters: int = 0
    seed: int = 0
    drop_prob: float = 0.5

    @property
    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @property
    def label(self) -> str:
        bits = "FP32" if self.tool == "fp32" else bits_label(self.w, self.a)
        extra = f" p={self.drop_prob:g} seed {self.seed}" if self.method == "qdrop" else ""
        return f"{self.model} {bits} {self.tool} {self.method}{extra}"


def job_for(model: str, tool: str, w: int, a: int, iters: int, seed: int = 0, drop_prob: float = 0.5) -> Job:
    if tool == "fp32":
        return Job(model, "fp32", "fp32")
    if tool in ORT_METHODS:
        return Job(model, "ort", tool, w, a)
    learns = tool in ("aimet", "quark", "adaround", "brecq", "qdrop")
    owner = tool if tool in PEERS else "qdrop-onnx"
    method = "adaround" if tool in PEERS else tool
    return Job(model, owner, method, w, a, iters if learns else 0, seed, drop_prob if tool == "qdrop" else 0.5)


@dataclass
class Context:
    """What one invocation shares: where files go and the baselines measured in this invocation."""

    results: Path
    work: Path
    device: str
    force: bool
    rows: dict[str, dict] = field(default_factory=dict)
    baselines: dict[str, dict[str, float | None]] = field(default_factory=dict)
    fresh: set[str] = field(default_factory=set)
    meta: dict[str, object] = field(default_factory=dict)


def machine() -> dict[str, object]:
    import onnxruntime
    import torch

    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"python": platform.python_version(), "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "cpu_cores": os.cpu_count(), "machine": platform.machine(), "cuda": cuda}


@dataclass
class ProcessUsage:
    """What one child process cost: exit code, wall seconds, peak RSS (MB), user and system CPU seconds."""

    code: int
    wall: float
    rss_mb: float
    user: float
    system: float


def run_measured(command: list[str], log: Path, cwd: Path, env: dict[str, str] | None = None,
                 limit_bytes: int | None = None) -> ProcessUsage:
    """Run ``command`` (output to ``log``) and measure that process alone: ``wait4``'s resource usage, taken
    by ``bench/launch.py`` so that this process's own size is not counted in the child's peak.
    ``limit_bytes`` caps its address space, so a job that wants more memory fails (a row saying so)
    instead of the machine swapping."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, log.open("w") as out:
        usage_file = Path(tmp) / "usage.json"
        launcher = [sys.executable, "-S", str(Path(__file__).with_name("launch.py")), str(usage_file),
                    str(limit_bytes or 0), "--"]
        # Its own session, so an interrupt here can stop the command too (the launcher's child).
        process = subprocess.Popen(launcher + command, stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                                   env=env if env is not None else {**os.environ, "PYTHONPATH": str(ROOT.parent)},
                                   start_new_session=True)
        try:
            process.wait()
        except BaseException:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise
        if process.returncode != 0 or not usage_file.exists():
            raise RuntimeError(f"bench/launch.py failed (exit {process.returncode}) running {command[0]}; see {log}")
        usage = json.loads(usage_file.read_text())
    return ProcessUsage(usage["code"], time.perf_counter() - start, usage["maxrss_kb"] / 1024.0, usage["user"],
                        usage["system"])


def run_process(command: list[str], job_file: Path, log: Path,
                limit_bytes: int | None = None) -> tuple[int, float, float]:
    """(exit code, wall seconds, peak RSS in MB) of ``command job_file``, run in the job file's folder."""
    usage = run_measured(command + [str(job_file)], log, job_file.parent, limit_bytes=limit_bytes)
    return usage.code, usage.wall, usage.rss_mb


def last_line(log: Path) -> str:
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "no output"


def quantize_job(job: Job, ctx: Context, tmp: Path) -> dict[str, object]:
    """Run the job's quantizer in its own process; the row's measurement fields (not yet scored)."""
    spec = MODELS[job.model]
    inputs = prepare(job.model, ctx.work / job.model)
    out = tmp / "q.onnx"
    payload: dict[str, object] = {**asdict(job), **inputs, "out": str(out), "result": str(tmp / "result.json"),
                                  "bits": bit_plan(Path(inputs["model"]), job.w, job.a)}
    if job.tool == "qdrop-onnx":
        payload.update(source=str(spec.path), calib_dir=str(ASSETS / spec.calib), preset=spec.preset,
                       device=ctx.device)
    if job.tool == "ort":
        payload["histogram_chunk"] = spec.histogram_chunk
    if job.tool in PEERS:
        peer = PEERS[job.tool]
        state = peer_status(peer)
        if not state["ok"]:
            return {"status": "absent", "reason": state["reason"]}
        command = [str(peer.python), str(ROOT / "peers" / f"{peer.script}.py")]
    else:
        command = [sys.executable, "-m", "bench.jobs"]
    job_file = tmp / "job.json"
    job_file.write_text(json.dumps(payload))
    code, wall, rss = run_process(command, job_file, tmp / "log.txt")
    if code != 0:
        return {"status": "failed", "reason": f"exit {code}: {last_line(tmp / 'log.txt')}"}
    reported = json.loads((tmp / "result.json").read_text())
    row: dict[str, object] = {"status": "ok", "seconds": reported.pop("seconds", round(wall, 2)),
                              "process_seconds": round(wall, 2), "peak_rss_mb": round(rss, 1), "tool_report": reported}
    if reported.get("exported", True):
        row["file"] = str(out)
    elif "sim_top1" in reported:  # AIMET below 4 bits: its own simulation, no QDQ file
        row.update(top1_simulated=reported["sim_top1"], accuracy_source="tool's own simulation",
                   reason=reported.get("export_error"))
    else:
        row.update(status="absent", reason=reported.get("export_error"))
    return row


def measure(job: Job, ctx: Context) -> dict[str, object]:
    with tempfile.TemporaryDirectory(dir=ctx.work) as tmp_name:
        tmp = Path(tmp_name)
        if job.tool == "fp32":
            row: dict[str, object] = {"status": "ok", "file": str(MODELS[job.model].path)}
        elif job.tool == "ort" and (job.w not in (4, 8) or job.a not in (4, 8)):
            row = {"status": "absent", "reason": "quantize_static has 4-, 8- and 16-bit integer types only"}
        else:
            row = quantize_job(job, ctx, tmp)
        row = scored(row, job.model)
    return {**asdict(job), **row, "measured": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": ctx.meta}


def scored(row: dict[str, object], model: str) -> dict[str, object]:
    """The row with its written file (row["file"]) replaced by that file's scores; a row without a file as is.

    A file ONNX Runtime cannot load or run makes a 'failed' row with the reason, so one bad file from a peer
    does not end the invocation and lose the rows still to run.
    """
    if "file" not in row:
        return row
    row = dict(row)
    path = Path(str(row.pop("file")))
    try:
        row.update(score_file(path, model))
    except Exception as exc:
        row.update(status="failed", reason=f"scoring the file: {first_line(exc)}")
    return row


def baseline(model: str, ctx: Context) -> dict[str, float | None]:
    """This invocation's yardsticks for one model, measured (and stored as rows) once per invocation:
    ORT's quantize_static MinMax W8A8 seconds and the float model's latency (None where that row failed:
    the ratios then show '-')."""
    if model not in ctx.baselines:
        jobs = (Job(model, "ort", "minmax", 8, 8), Job(model, "fp32", "fp32"))
        ort, fp = (measure(job, ctx) for job in jobs)
        ctx.baselines[model] = {"ort_w8a8_seconds": ort.get("seconds"),  # type: ignore[dict-item]
                                "fp32_latency_b1_ms": fp.get("latency_b1_ms"),  # type: ignore[dict-item]
                                "fp32_latency_b32_ms": fp.get("latency_b32_ms")}  # type: ignore[dict-item]
        for job, row in zip(jobs, (ort, fp), strict=True):
            store(job, {**row, "baseline": ctx.baselines[model]}, ctx)
            ctx.fresh.add(job.key)
            print(f"[baseline] {job.label:<56} {describe(row)}", flush=True)
    return ctx.baselines[model]


def store(job: Job, row: dict[str, object], ctx: Context) -> None:
    ctx.rows[job.key] = row
    data = {"meta": ctx.meta, "rows": list(ctx.rows.values())}
    write_atomic(ctx.results, lambda tmp: tmp.write_text(json.dumps(data, indent=1) + "\n"))


def describe(row: dict[str, object]) -> str:
    if row.get("status") != "ok":
        return f"{row.get('status')}: {row.get('reason')}"
    acc = f"{row['top1_simulated']:6.2f} %"
    if row.get("top1_fused") is not None:
        acc += f" (fused {row['top1_fused']:.2f})"
    seconds = f"{row['seconds']:7.1f} s" if row.get("seconds") is not None else ""
    rss = f"{row['peak_rss_mb']:6.0f} MB" if row.get("peak_rss_mb") is not None else ""
    return f"{acc}  {seconds}  {rss}"


def run_jobs(jobs: list[Job], ctx: Context) -> None:
    # A failed row (a crash, the kernel's OOM killer) is measured again; ok and absent rows are kept.
    todo = [j for j in jobs if ctx.force or ctx.rows.get(j.key, {}).get("status") not in ("ok", "absent")]
    print(f"bench: {len(jobs)} rows, {len(jobs) - len(todo)} already in {ctx.results}, measuring {len(todo)}",
          flush=True)
    for i, job in enumerate(todo, 1):
        base = baseline(job.model, ctx)
        if job.key in ctx.fresh:
            continue  # measured just now, as this invocation's baseline
        start = time.perf_counter()
        row = {**measure(job, ctx), "baseline": base}
        store(job, row, ctx)
        print(f"[{i}/{len(todo)}] {job.label:<58} {describe(row)}  ({time.perf_counter() - start:.0f} s)",
              flush=True)


def plan_jobs(models: list[str], bits: list[tuple[int, int]] | None, tools: list[str], iters: int,
              ablation: bool, seeds: list[int], skip: frozenset[tuple[str, int, int]] = frozenset()) -> list[Job]:
    jobs: list[Job] = []
    for model in models:
        widths = bits or (list(BITS) if "cifar10" in model else [(8, 8), (4, 4)])
        for tool in tools:
            if tool == "fp32":
                jobs.append(job_for(model, tool, 32, 32, iters))
                continue
            jobs.extend(job_for(model, tool, w, a, iters) for w, a in widths if (tool, w, a) not in skip)
    if ablation and ABLATION["model"] in models:
        jobs.extend(job_for(ABLATION["model"], "qdrop", w, a, iters, seed, p)
                    for w, a in ABLATION["bits"] for p in ABLATION["drop_probs"] for seed in seeds)
    unique: dict[str, Job] = {j.key: j for j in jobs}
    return list(unique.values())


def parse_bits(text: str) -> list[tuple[int, int]]:
    out = []
    for item in text.split(","):
        label = item.strip().upper()
        if not (label.startswith("W") and "A" in label):
            raise SystemExit(f"bench: --bits takes W<bits>A<bits>, e.g. W4A4; got {item!r}")
        w, a = label[1:].split("A")
        out.append((int(w), int(a)))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--quick", action="store_true", help="resnet20 only, 100 iterations, fewer rows")
    parser.add_argument("--models", help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--bits", help="comma-separated columns, e.g. W8A8,W4A4 (default: all six)")
    parser.add_argument("--tools", help=f"comma-separated rows, of {', '.join(ALL_TOOLS)}")
    parser.add_argument("--iters", type=int, help="reconstruction steps per block/layer (default 2000; quick 100)")
    parser.add_argument("--seeds", default="0,1,2", help="ablation seeds (default 0,1,2)")
    parser.add_argument("--no-ablation", action="store_true", help="skip the drop-probability ablation")
    parser.add_argument("--force", action="store_true", help="measure rows again even if the results hold them")
    parser.add_argument("--device", default="auto", help="reconstruction device for qdrop-onnx (auto, cpu, cuda)")
    parser.add_argument("--results", type=Path, help="results folder (default bench/results, quick: .../quick)")
    args = parser.parse_args(argv)
    if not ASSETS.is_dir():
        print(f"bench: real assets not found at {ASSETS}; nothing to measure", file=sys.stderr)
        return 1
    folder: Path = args.results or (RESULTS / "quick" if args.quick else RESULTS)
    models = args.models.split(",") if args.models else (["resnet20_cifar10"] if args.quick else list(MODELS))
    tools = args.tools.split(",") if args.tools else list(QUICK_TOOLS if args.quick else ALL_TOOLS)
    for name, known in (("model", MODELS), ("tool", ALL_TOOLS)):
        bad = [x for x in (models if name == "model" else tools) if x not in known]
        if bad:
            print(f"bench: unknown {name} {bad[0]!r}; choose from {', '.join(known)}", file=sys.stderr)
            return 2
    bits = parse_bits(args.bits) if args.bits else (list(QUICK_BITS) if args.quick else None)
    iters = args.iters or (100 if args.quick else 2000)
    seeds = [int(s) for s in args.seeds.split(",")]
    folder.mkdir(parents=True, exist_ok=True)
    ctx = Context(results=folder / "results.json", work=ROOT / "work", device=args.device, force=args.force)
    ctx.work.mkdir(exist_ok=True)
    ctx.meta = {**machine(), "profile": "quick" if args.quick else "full", "iters": iters}
    if ctx.results.exists():
        ctx.rows = {Job(**{k: r[k] for k in Job.__dataclass_fields__}).key: r
                    for r in json.loads(ctx.results.read_text())["rows"]}
    jobs = plan_jobs(models, bits, tools, iters, not args.no_ablation and not args.quick, seeds,
                     QUICK_SKIP if args.quick else frozenset())
    start = time.perf_counter()
    run_jobs(jobs, ctx)
    print(f"bench: done in {time.perf_counter() - start:.0f} s; results in {ctx.results}\n", flush=True)
    return summary.main([str(folder)])


if __name__ == "__main__":
    sys.exit(main())
