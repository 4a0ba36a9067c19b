"""How long loading + lowering takes, and the torch rebuild's forward time next to ONNX Runtime's.

python -m bench.rebuild

Same batch, same machine, same run (median of repeats), per model; reported as a ratio to ORT because the
machine is shared and noisy. Writes bench/results/rebuild.json. Part of ``make bench``.
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import onnxruntime as ort
import torch

from bench.common import ASSETS, RESULTS
from qdrop_onnx.graph import load_model, lower, partition

MODELS = {"resnet20_cifar10": (32, 32), "resnet56_cifar10": (32, 32), "efficientnet_lite0_imagenet": (224, 224)}


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_model(name: str, size: tuple[int, int], batch: int = 32, repeats: int = 10) -> dict:
    path = ASSETS / "models" / f"{name}.onnx"
    start = time.perf_counter()
    graph = lower(load_model(path))
    load_s = time.perf_counter() - start
    blocks = partition(graph)
    x = np.random.RandomState(0).randn(batch, 3, *size).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    xt = torch.from_numpy(x)
    with torch.no_grad():
        torch_s = _median_seconds(lambda: graph(xt), repeats)
    ort_s = _median_seconds(lambda: session.run(None, {"input": x}), repeats)
    return {"model": name, "batch": batch, "load_lower_s": round(load_s, 3), "blocks": len(blocks),
            "torch_forward_ms": round(1000 * torch_s, 2), "ort_forward_ms": round(1000 * ort_s, 2),
            "torch_over_ort": round(torch_s / ort_s, 2)}


def main() -> int:
    if not ASSETS.is_dir():
        print(f"bench: real assets not found at {ASSETS}; nothing to measure", file=sys.stderr)
        return 1
    RESULTS.mkdir(parents=True, exist_ok=True)
    rows = [bench_model(name, size) for name, size in MODELS.items()]
    print(f"{'model':<30} {'load+lower s':>12} {'blocks':>7} {'torch ms':>9} {'ORT ms':>8} {'torch/ORT':>10}")
    for r in rows:
        print(f"{r['model']:<30} {r['load_lower_s']:>12.2f} {r['blocks']:>7} {r['torch_forward_ms']:>9.1f} "
              f"{r['ort_forward_ms']:>8.1f} {r['torch_over_ort']:>10.2f}")
    meta = {"python": platform.python_version(), "torch": torch.__version__, "onnxruntime": ort.__version__,
            "threads": torch.get_num_threads(), "machine": platform.machine()}
    (RESULTS / "rebuild.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"\nwrote {RESULTS / 'rebuild.json'}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
