"""The benchmark harness itself (bench/): job planning, per-process RSS, ORT's placement, the summary's arithmetic.

The benchmarks' numbers are not asserted here (they are measurements, in bench/results/); what is asserted
is that the harness measures what it says: the same placement for every tool, the child's own peak RSS, the
lead and ablation verdicts computed from the rows.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from bench import summary
from bench.common import MODELS, bit_plan, prepare
from bench.jobs import CalibReader, run_ort
from bench.run import Job, job_for, plan_jobs, run_process, scored
from tests.helpers import needs_assets


def test_plan_jobs_full_profile_counts_and_shares_the_default_qdrop_rows() -> None:
    jobs = plan_jobs(["resnet20_cifar10"], None, ["fp32", "minmax", "aimet", "qdrop"], 500, True, [0, 1, 2])
    keys = [j.key for j in jobs]
    assert len(keys) == len(set(keys))
    main = [j for j in jobs if j.tool != "fp32"]
    # 3 tools x 6 widths, + ablation 3 probabilities x 3 widths x 3 seeds minus the 3 rows the table already has.
    assert len(main) == 3 * 6 + 27 - 3
    assert job_for("resnet20_cifar10", "aimet", 4, 4, 500) == Job("resnet20_cifar10", "aimet", "adaround", 4, 4, 500)
    assert job_for("resnet20_cifar10", "rtn", 4, 4, 500).iters == 0  # rtn learns nothing: one row per width
    effnet = plan_jobs(["efficientnet_lite0_imagenet"], None, ["qdrop"], 500, True, [0])
    assert [(j.w, j.a) for j in effnet] == [(8, 8), (4, 4)]  # no ablation off resnet20


def test_run_process_reports_the_childs_own_peak_rss(tmp_path: Path) -> None:
    script = tmp_path / "alloc.py"
    script.write_text("import sys\nimport numpy as np\nx = np.ones(300 * 2**20 // 8)\nsys.exit(3)\n")
    job = tmp_path / "job.json"
    job.write_text("{}")
    code, seconds, rss_mb = run_process([sys.executable, str(script)], job, tmp_path / "log.txt")
    assert code == 3
    assert 300 <= rss_mb < 600  # the 300 MB array plus the interpreter, not this (pytest) process
    assert seconds > 0


@needs_assets
def test_a_file_onnx_runtime_cannot_load_is_a_failed_row_with_the_reason(tmp_path: Path) -> None:
    # A peer's file ORT refuses (as AIMET's EfficientNet W4A4 file once was) must not end the whole invocation.
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("NoSuchOp", ["x"], ["y"], domain="com.example")], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 32, 32])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 10])])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17),
                                                         onnx.helper.make_opsetid("com.example", 1)])
    path = tmp_path / "peer.onnx"
    onnx.save(model, path)
    row = scored({"status": "ok", "seconds": 12.5, "file": str(path)}, "resnet20_cifar10")
    assert row["status"] == "failed" and row["seconds"] == 12.5 and "file" not in row
    assert str(row["reason"]).startswith("scoring the file: ONNX Runtime cannot load the model: ")
    assert "com.example:NoSuchOp" in str(row["reason"])
    assert scored({"status": "absent", "reason": "no 3-bit type"}, "resnet20_cifar10") == {
        "status": "absent", "reason": "no 3-bit type"}  # no file: nothing to score


def _row(tool: str, method: str, w: int, a: int, top1: float, **extra: object) -> dict:
    return {"model": "m_cifar10", "tool": tool, "method": method, "w": w, "a": a, "iters": 10, "seed": 0,
            "drop_prob": 0.5, "status": "ok", "top1_simulated": top1, "top1_fused": top1, **extra}


def test_summary_lead_table_and_verdict() -> None:
    rows = [_row("fp32", "fp32", 32, 32, 81.0),
            _row("ort", "minmax", 4, 4, 60.0), _row("ort", "percentile", 4, 4, 65.5),
            _row("aimet", "adaround", 4, 4, 74.0), _row("qdrop-onnx", "qdrop", 4, 4, 79.25),
            _row("aimet", "adaround", 2, 2, 50.0, accuracy_source="tool's own simulation", top1_fused=None),
            _row("qdrop-onnx", "qdrop", 2, 2, 49.0),
            _row("ort", "minmax", 2, 2, 0.0, status="absent", reason="4/8/16-bit only")]
    text = summary.render({"meta": {"profile": "test"}, "rows": rows})
    assert "| W4A4 | 79.25 | 65.50 (percentile) | +13.75 | 74.00 | +5.25 |" in text
    assert "| W2A2 | 49.00 | n/a | - | 50.00 | -1.00 |" in text
    assert "qdrop-onnx qdrop is NOT ahead at: W2A2 vs AIMET." in text
    assert "| AIMET AdaRound | 74.00 | 50.00† |" in text
    assert "- ORT quantize_static minmax W2A2: 4/8/16-bit only" in text
    assert "| qdrop-onnx brecq | - | - |" in text  # not run at all: still a line, '-' not 'n/a'

    # AIMET not run at W3A3 and ORT not run at all: '-' (not compared), not 'n/a' (cannot), and said so
    text = summary.render({"meta": {"profile": "test"}, "rows": [_row("qdrop-onnx", "qdrop", 3, 3, 70.0)]})
    assert "| W3A3 | 70.00 | - | - | - | - |" in text
    assert "Not compared (the peer was not run or failed here): W3A3 vs ORT, W3A3 vs AIMET." in text


def test_summary_ablation_says_where_dropping_pays() -> None:
    rows = []
    for seed, (always, dropped) in enumerate([(80.1, 79.5), (80.3, 79.6), (80.2, 79.7)]):
        rows += [_row("qdrop-onnx", "qdrop", 4, 4, always, drop_prob=0.0, seed=seed),
                 _row("qdrop-onnx", "qdrop", 4, 4, dropped, seed=seed)]
    for seed, (always, dropped) in enumerate([(60.0, 66.0), (61.0, 65.0), (62.0, 67.0)]):
        rows += [_row("qdrop-onnx", "qdrop", 2, 2, always, drop_prob=0.0, seed=seed),
                 _row("qdrop-onnx", "qdrop", 2, 2, dropped, seed=seed)]
    text = "\n".join(summary.ablation(rows))
    assert "| 0 (always quantized: BRECQ + LSQ) | 80.20 ± 0.10 (n=3) | 61.00 ± 1.00 (n=3) |" in text
    assert "- W4A4: QDrop (0.5) minus always-quantized (0) = -0.60 points (spread 0.20): dropping does not pay" in text
    assert "- W2A2: QDrop (0.5) minus always-quantized (0) = +5.00 points (spread 2.00): dropping pays." in text


@needs_assets
def test_every_tool_gets_qdrop_onnx_placement_and_ort_keeps_those_tensors_at_8_bits(tmp_path: Path) -> None:
    files = prepare("resnet20_cifar10", tmp_path / "work")
    model = onnx.load(files["model"])
    bits = bit_plan(Path(files["model"]), 4, 4)
    tensors = {t.name for t in model.graph.initializer} | {o for n in model.graph.node for o in n.output}
    tensors |= {i.name for i in model.graph.input}
    assert set(bits) <= tensors  # every planned name exists in the graph peers receive
    assert bits["/conv1/Conv.weight_bnfold"] == 8 and bits["linear.weight"] == 8 and bits["input"] == 8
    assert sum(1 for b in bits.values() if b == 4) == 18 + 18  # 18 inner convs: weights and inputs

    out = tmp_path / "ort.onnx"
    report = run_ort({"model": files["model"], "calib": files["calib"], "w": 4, "a": 4, "method": "minmax",
                      "bits": bits, "out": str(out)})
    assert report["overrides_8bit"] == 13  # first/last weights, input, pooled features, 9 residual tensors
    q = onnx.load(str(out))
    dtype = {t.name: t.data_type for t in q.graph.initializer}
    # The zero-point type of each activation QuantizeLinear says at how many bits ORT quantized that tensor.
    act_type = {n.input[0]: dtype[n.input[2]] for n in q.graph.node if n.op_type == "QuantizeLinear"}
    first = next(n for n in q.graph.node if n.op_type == "DequantizeLinear"
                 and n.input[0].startswith("/conv1/Conv.weight"))
    inner = next(n for n in q.graph.node if n.op_type == "DequantizeLinear"
                 and n.input[0].startswith("/layer2/layer2.1/conv1/Conv.weight"))
    assert dtype[first.input[0]] == onnx.TensorProto.INT8
    assert dtype[inner.input[0]] == onnx.TensorProto.INT4
    weights = {t.name for t in model.graph.initializer}
    planned4 = [t for t, b in bits.items() if b == 4 and t not in weights]
    planned8 = [t for t, b in bits.items() if b == 8 and t not in weights]
    assert len(planned4) == 18 and all(act_type[t] == onnx.TensorProto.UINT4 for t in planned4)
    assert {t for t in planned8 if act_type[t] == onnx.TensorProto.UINT8} == set(planned8) - {"/Reshape_output_0"}
    # Measured gap: ORT gives a Reshape output its input's parameters, so the pooled features that the
    # override asks at 8 bits come out at 4 (the AveragePool before it is not in the plan).
    assert act_type["/Reshape_output_0"] == onnx.TensorProto.UINT4
    calib = np.load(files["calib"])
    assert calib.shape == (1024, 3, 32, 32)
    assert MODELS["resnet20_cifar10"].preset == "cifar10"


def test_summary_without_results_says_what_to_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert summary.main([str(tmp_path)]) == 1
    assert capsys.readouterr().err.strip() == (f"bench.summary: no results at {tmp_path / 'results.json'}; "
                                               "run `make bench` or `make bench-quick` first")
    (tmp_path / "results.json").write_text(json.dumps({"meta": {}, "rows": [_row("fp32", "fp32", 32, 32, 81.0)]}))
    assert summary.main([str(tmp_path)]) == 0
    assert (tmp_path / "SUMMARY.md").read_text().startswith("# Benchmark summary")
    assert (tmp_path / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_calib_reader_ranges_cover_every_image_once() -> None:
    data = np.arange(70, dtype=np.float32).reshape(70, 1)
    reader = CalibReader("x", data)
    assert reader.batch == 14 and len(reader) == 5  # equal batches: ORT's histograms stack them
    assert CalibReader("x", np.zeros((500, 1))).batch == 25 and CalibReader("x", np.zeros((1024, 1))).batch == 32
    seen = []
    for start in range(0, len(reader), 1):
        reader.set_range(start_index=start, end_index=start + 1)
        while (batch := reader.get_next()) is not None:
            seen.extend(batch["x"][:, 0].tolist())
    assert seen == list(range(70))
    reader.set_range(start_index=3, end_index=5)
    assert [b["x"][0, 0] for b in iter(reader.get_next, None)] == [42, 56]
    reader.rewind()
    assert sum(len(b["x"]) for b in iter(reader.get_next, None)) == 70


@needs_assets
def test_percentile_in_chunks_matches_one_pass(tmp_path: Path) -> None:
    """EfficientNet's histogram calibration runs in chunks (one pass over 500 images runs out of memory);
    merging the chunks' histograms must give nearly the ranges of one pass."""
    files = prepare("resnet20_cifar10", tmp_path / "work")
    bits = bit_plan(Path(files["model"]), 8, 8)
    scales = []
    for name, chunk in (("one.onnx", None), ("chunks.onnx", 8)):
        job = {"model": files["model"], "calib": files["calib"], "w": 8, "a": 8, "method": "percentile",
               "bits": bits, "out": str(tmp_path / name), "histogram_chunk": chunk}
        run_ort(job)
        q = onnx.load(job["out"])
        init = {t.name: onnx.numpy_helper.to_array(t) for t in q.graph.initializer}
        scales.append({n.input[0]: float(init[n.input[1]]) for n in q.graph.node
                       if n.op_type == "QuantizeLinear" and init[n.input[1]].size == 1})
    assert scales[0].keys() == scales[1].keys() and len(scales[0]) > 20
    ratios = np.array([scales[1][k] / scales[0][k] for k in scales[0]])
    assert np.all(np.abs(ratios - 1) < 0.01), ratios  # measured: within 0.04 %
    assert np.any(ratios != 1)  # the chunked path really ran (merged histograms differ in the last digits)


def test_run_measured_reports_the_childs_own_user_and_system_time(tmp_path: Path) -> None:
    from bench.run import run_measured

    # A child that burns ~0.3 s of user time and writes a 64 MiB file (system time): both land in its usage.
    script = ("import os\nt = os.times().user\nwhile os.times().user - t < 0.3: pass\n"
              f"open({str(tmp_path / 'f')!r}, 'wb').write(os.urandom(64 << 20))\n")
    usage = run_measured([sys.executable, "-c", script], tmp_path / "log", tmp_path)
    assert usage.code == 0
    assert usage.user >= 0.25 and usage.system > 0.0 and usage.rss_mb > 64


def test_speed_table_reads_the_rows_it_writes() -> None:
    from bench.speed import step_rates, table

    report = {"blocks": [{"iters": 50, "train_seconds": 2.0}, {"iters": 50, "train_seconds": 5.0},
                         {"iters": 50, "train_seconds": 1.0}]}
    rates = step_rates(report)
    assert rates == {"blocks": 3, "steps_per_s_median": 25.0, "steps_per_s_slowest": 10.0, "train_s": 8.0,
                     "iters": 50}
    usage = {"status": "ok", "wall_s": 10.0, "peak_rss_mb": 100, "user_s": 9.0, "system_s": 1.0,
             "system_pct_of_user": 11.1, "top1": 80.0, "fp_top1": 81.0}
    results = {"meta": {}, "sections": {
        "steps": {"rows": [{"model": "m", "device": "cpu", "threads": 1, **usage, **rates,
                            "extrapolated_2000_s": 330}]},
        "ab": {"rows": [{"model": "m", "code": "baseline abc", "w": 4, "a": 4, "iters": 200, **usage},
                        {"model": "m", "code": "this tree", "w": 4, "a": 4, "iters": 200, **usage, "speedup": 2.1,
                         "same_bytes": True}]},
        "memory": {"rows": [{"model": "m", "cache": "in memory", "samples": 1024, "iters": 20, "spilled": False,
                             **usage},
                            {"model": "m", "cache": "--max-cache-gb 2", "samples": 1024, "iters": 20, "spilled": True,
                             **usage, "time_vs_memory": 1.1, "same_bytes": True}]}}}
    text = table(results)
    assert "| m | cpu | 1 | 25.0 | 10.0 | 330 s | 100 | 9.0 | 1.0 |" in text
    assert "| this tree | 10.0 | 2.1 | 9.0 | 1.0 | 11.1 % | 100 | 80.0 | True |" in text
    assert "## m W4A4 on 1024 samples, 20 steps per block: the cache in memory and bounded" in text
    assert "| --max-cache-gb 2 | True | 10.0 | 1.1 | 100 | 9.0 | 1.0 | 80.0 | True |" in text


@needs_assets
def test_mirrored_calibration_goes_on_with_mirrored_images(tmp_path: Path) -> None:
    from PIL import Image, ImageOps

    from bench.common import ASSETS
    from bench.speed import mirrored_calibration

    images = sorted(p for p in (ASSETS / MODELS["resnet20_cifar10"].calib).rglob("*") if p.is_file())
    folder = mirrored_calibration("resnet20_cifar10", len(images) + 1, tmp_path / "calib")
    written = sorted(folder.iterdir())
    assert len(written) == len(images) + 1 and written[-1].name == f"{len(images):05d}.png"
    with Image.open(images[0]) as im, Image.open(written[0]) as same, Image.open(written[-1]) as mirrored:
        assert same.tobytes() == im.convert("RGB").tobytes()
        assert mirrored.tobytes() == ImageOps.mirror(im.convert("RGB")).tobytes() != same.tobytes()
