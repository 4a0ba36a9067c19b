"""``make demo``: the embedded default, end to end, from package-registry artifacts only.

Builds EfficientNet-Lite0 and its 20 sample images (``models/build_efficientnet_lite0.py``), shows how
qdrop-onnx sees the model, and prints the accuracy table measured in ONNX Runtime.
"""

from __future__ import annotations

import time

from models.build_efficientnet_lite0 import build
from qdrop_onnx.data import input_spec, open_dataset
from qdrop_onnx.graph import load_model, lower, partition
from qdrop_onnx.verify import evaluate_classification, make_session


def main() -> None:
    start = time.perf_counter()
    model_path, images, classes = build()
    loaded = load_model(model_path)
    graph = lower(loaded)
    blocks = partition(graph)
    weighted = graph.weighted_ops()
    print(f"model: {model_path.name}: {len(weighted)} weighted layers, {len(blocks)} reconstruction blocks, "
          f"{loaded.folded_batchnorms} BatchNorms folded")
    spec = input_spec(loaded.model)
    dataset = open_dataset(images, spec, preset="tf", classes=classes)
    rows = []
    fp = evaluate_classification(make_session(model_path), dataset, spec, batch_size=20)
    rows.append(("FP32", fp.top1, fp.top5, model_path.stat().st_size))
    print(f"\n{'model':<10} {'top-1':>8} {'top-5':>8} {'size':>10}   ({len(dataset)} ImageNet samples)")
    for name, top1, top5, size in rows:
        print(f"{name:<10} {top1:>7.1f}% {top5:>7.1f}% {size / 2**20:>8.1f} MB")
    print("\n(quantized rows arrive with `qdrop-onnx quantize`: see the open issues)")
    print(f"demo took {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
