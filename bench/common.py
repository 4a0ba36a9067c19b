"""What every benchmark shares: where the real assets are, how each model is fed, and how a file is scored.

Every quantized file, whichever tool wrote it, is scored here by the same code in the same ONNX Runtime:
top-1 on the simulated path (ORT_ENABLE_BASIC: Q/DQ run as written) and with ORT's fused integer kernels
(ORT_ENABLE_ALL), file size, integer-kernel coverage and latency at batch 1 and 32.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from qdrop_onnx.data import Batch, input_spec, open_dataset
from qdrop_onnx.graph.load import load_model
from qdrop_onnx.verify import evaluate_classification, make_session
from qdrop_onnx.verify.coverage import integer_kernel_coverage

ROOT = Path(__file__).resolve().parent
ASSETS = ROOT.parent.parent / "shared" / "assets"
RESULTS = ROOT / "results"
BITS = ((8, 8), (4, 8), (4, 4), (3, 3), (2, 4), (2, 2))


@dataclass(frozen=True)
class BenchModel:
    """A model of ../shared/assets with its data: calibration on every image of ``calib``, top-1 on ``test``.

    ``histogram_chunk``: calibration batches (bench/jobs.py's CalibReader: 25 images each for 500) per pass
    of ONNX Runtime's Entropy/Percentile calibration (its ``CalibStridedMinMax`` option: histograms merged
    pass by pass). None = one pass over every image, as quantize_static does by default; that holds every
    intermediate tensor of every image in memory, over 24 GiB for EfficientNet-Lite0 at 500 images.
    """

    name: str
    preset: str
    calib: str
    test: str
    classes: str | None = None
    histogram_chunk: int | None = None

    @property
    def path(self) -> Path:
        return ASSETS / "models" / f"{self.name}.onnx"

    def dataset(self, which: str) -> object:
        spec = input_spec(load_model(self.path, simplify=False).model)
        classes = ASSETS / self.classes if self.classes else None
        return open_dataset(ASSETS / getattr(self, which), spec, preset=self.preset, classes=classes)


MODELS = {m.name: m for m in (
    BenchModel("resnet20_cifar10", "cifar10", "cifar10/calib", "cifar10/test"),
    BenchModel("resnet56_cifar10", "cifar10", "cifar10/calib", "cifar10/test"),
    BenchModel("efficientnet_lite0_imagenet", "tf", "imagenet-sample/calib", "imagenet-sample/val",
               "imagenet-sample/classes.txt", histogram_chunk=5),
)}


def bits_label(w: int, a: int) -> str:
    return f"W{w}A{a}"


@cache
def arrays(model: str, which: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Every sample of the model's calib or test folder, preprocessed, with labels (decoded once per process)."""
    dataset = MODELS[model].dataset(which)
    xs, ys = zip(*dataset.batches(256), strict=True)
    labels = None if ys[0] is None else np.concatenate(ys)
    [name] = xs[0]  # the bench models are image classifiers with one input
    return np.concatenate([x[name] for x in xs]), labels


@dataclass
class LabeledArrays:
    """Preprocessed samples with labels, as a qdrop_onnx Dataset (decoded once, scored many times)."""

    x: np.ndarray
    y: np.ndarray | None
    name: str = "input"  # the model input the samples feed

    def __len__(self) -> int:
        return len(self.x)

    @property
    def labels(self) -> np.ndarray | None:
        return self.y

    def batches(self, batch_size: int, limit: int | None = None) -> Iterator[tuple[Batch, np.ndarray | None]]:
        count = len(self.x) if limit is None else min(limit, len(self.x))
        for i in range(0, count, batch_size):
            yield {self.name: self.x[i:i + batch_size]}, None if self.y is None else self.y[i:i + batch_size]


def prepare(model: str, workdir: Path) -> dict[str, str]:
    """The files every tool starts from, written once per model into ``workdir``.

    ``clean.onnx``: the float model after qdrop-onnx's loader (BN folded, simplified) — the same graph for
    every tool, so differences are the algorithms'; ``calib.npy``: every calibration image, preprocessed;
    ``test.npz``: the test images (x) and labels (y), for peers that score their own simulation.
    """
    import onnx

    workdir.mkdir(parents=True, exist_ok=True)
    files = {"model": workdir / "clean.onnx", "calib": workdir / "calib.npy", "test": workdir / "test.npz"}
    if not files["model"].exists():
        onnx.save(load_model(MODELS[model].path).model, files["model"])
    if not files["calib"].exists():
        np.save(files["calib"], arrays(model, "calib")[0])
    if not files["test"].exists():
        x, y = arrays(model, "test")
        np.savez(files["test"], x=x, y=y)
    return {k: str(v) for k, v in files.items()}


def bit_plan(clean_model: Path, w: int, a: int) -> dict[str, int]:
    """Tensor name -> bits for every weight and activation qdrop-onnx quantizes at W{w}A{a}.

    Peers get the same placement: AIMET quantizes exactly these tensors, ONNX Runtime keeps the ones at
    8 bits (first/last layer, residual path) at 8 bits while its own placement decides the rest.
    """
    from qdrop_onnx.graph import lower
    from qdrop_onnx.quant.config import QuantConfig
    from qdrop_onnx.quant.placement import plan_quantization

    loaded = load_model(clean_model, simplify=False)
    plan = plan_quantization(lower(loaded), QuantConfig(w_bits=w, a_bits=a))
    nodes = {n.name: n for n in loaded.model.graph.node}
    bits = {nodes[name].input[1]: spec.bits for name, spec in plan.weights.items()}
    bits.update({tensor: spec.bits for tensor, spec in plan.activations.items()})
    return bits


def median_ms(fn: object, repeats: int) -> float:
    fn()  # type: ignore[operator]  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def medians_ms_interleaved(fns: dict[str, object], repeats: int) -> dict[str, float]:
    """Median milliseconds of each of ``fns``, run in turn within every repeat: a slow spell of the shared
    machine then slows all of them alike, where timing one after the other put it into a single ratio (a
    MobileNetV3-style file measured 1.62x its float time at batch 1 that way, 0.77x interleaved)."""
    for fn in fns.values():
        fn()  # type: ignore[operator]  # warm-up
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()  # type: ignore[operator]
            times[name].append(time.perf_counter() - start)
    return {name: 1000.0 * statistics.median(t) for name, t in times.items()}


def score_file(path: Path, model: str, *, latency_repeats: int = 50, threads: int = 0) -> dict[str, object]:
    """Top-1 (simulated and fused), size, integer-kernel coverage and latency of one ONNX file."""
    x, y = arrays(model, "test")
    spec = input_spec(load_model(path, simplify=False).model)
    data = LabeledArrays(x, y, spec.name)
    row: dict[str, object] = {"bytes": path.stat().st_size}
    for level, key in (("basic", "top1_simulated"), ("all", "top1_fused")):
        session = make_session(path, device="cpu", opt_level=level, threads=threads)
        row[key] = round(evaluate_classification(session, data, spec, batch_size=250).top1, 2)
    session = make_session(path, device="cpu", opt_level="all", threads=threads)
    for batch in (1, 32):
        xb = x[:batch]
        row[f"latency_b{batch}_ms"] = round(median_ms(lambda xb=xb: session.run(None, {spec.name: xb}),
                                                      latency_repeats), 3)
    coverage = integer_kernel_coverage(path)
    row["int_kernels"] = coverage.integer
    row["weighted_kernels"] = coverage.total
    return row
