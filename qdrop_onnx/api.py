"""The Python API: ``quantize(model, calib, config) -> QuantResult``, mirroring ``qdrop-onnx quantize``."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import torch

from qdrop_onnx.data import Dataset, input_spec, open_dataset
from qdrop_onnx.errors import DataError
from qdrop_onnx.export.params import QuantParams
from qdrop_onnx.export.qdq import ExportError, build_qdq_model, save_model_atomic
from qdrop_onnx.graph import load_model, lower, partition
from qdrop_onnx.graph.lower import OnnxGraphModule
from qdrop_onnx.graph.ops import Conv
from qdrop_onnx.quant.config import ConfigError, QuantConfig
from qdrop_onnx.quant.placement import QuantPlan, plan_quantization
from qdrop_onnx.quant.sim import QuantSim
from qdrop_onnx.recon import BlockRecord, ReconConfig, reconstruct
from qdrop_onnx.recon.run import DoneCallback, StepCallback


@dataclass
class DataOptions:
    """How calibration images are preprocessed (see ``qdrop-onnx eval --help``)."""

    preset: str | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    size: tuple[int, int] | None = None
    resize: int | None = None


@dataclass
class QuantResult:
    """What :func:`quantize` produced. ``sim`` is the torch fake-quant model the file reproduces."""

    model: onnx.ModelProto
    params: QuantParams
    plan: QuantPlan
    config: QuantConfig
    sim: QuantSim
    output: Path | None = None
    seconds: float = 0.0
    calibration_samples: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    blocks: list[BlockRecord] = field(default_factory=list)


def pick_device(device: str = "auto") -> torch.device:
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda requested but torch sees no CUDA device")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def default_output(model_path: str | Path, config: QuantConfig) -> Path:
    """``<stem>.w{W}a{A}.onnx`` beside the input model."""
    path = Path(model_path)
    return path.with_name(f"{path.stem}.w{config.w_bits}a{config.a_bits}.onnx")


def _load_samples(dataset: Dataset, limit: int) -> torch.Tensor:
    """The first ``limit`` samples as one tensor (decoded once; calibration and reconstruction share it)."""
    return torch.cat([torch.from_numpy(x) for x, _ in dataset.batches(256, limit)])


def has_depthwise_conv(graph: OnnxGraphModule) -> bool:
    return any(isinstance(op, Conv) and op.groups > 1 and op.groups == op.weight.shape[0]
               for op in graph.weighted_ops().values())


def recon_config(config: QuantConfig, graph: OnnxGraphModule) -> ReconConfig:
    """The reconstruction settings a method implies (AdaRound/BRECQ: weights only; QDrop: with acts)."""
    reg = config.reg_weight if config.reg_weight is not None else (0.1 if has_depthwise_conv(graph) else 0.01)
    qdrop = config.method == "qdrop"
    return ReconConfig(iters=config.iters, batch_size=config.batch_size, reg_weight=reg,
                       drop_prob=config.drop_prob if qdrop else 0.0, quantize_activations=qdrop, seed=config.seed)


def _reconstruct(sim: QuantSim, graph: OnnxGraphModule, samples: torch.Tensor, config: QuantConfig,
                 device: torch.device, progress: StepCallback | None, on_block: DoneCallback | None,
                 ) -> list[BlockRecord]:
    blocks = partition(graph, max_weighted=1 if config.method == "adaround" else 8)
    cache_dtype = torch.float16 if config.cache_fp16 else torch.float32
    return reconstruct(sim, blocks, [samples], recon_config(config, graph), device, cache_dtype, progress, on_block)


def quantize(model: str | Path | onnx.ModelProto, calib: str | Path | Dataset, config: QuantConfig,
             output: str | Path | None = None, *, data: DataOptions | None = None,
             device: str = "auto", progress: StepCallback | None = None,
             on_block: DoneCallback | None = None) -> QuantResult:
    """Quantize ``model`` on calibration data ``calib`` (folder, .npy/.npz, or a Dataset) per ``config``.

    Writes the QDQ model to ``output`` when given (atomically; never over the input model) and returns
    the model, the learned parameters, the simulation that produced them and, for the reconstruction
    methods, one record per block. ``progress(block, step, loss)`` and ``on_block(record)`` report on
    the reconstruction as it runs.
    """
    start = time.perf_counter()
    config.validate()
    same_file = not isinstance(model, onnx.ModelProto) and output is not None \
        and Path(output).resolve() == Path(model).resolve()
    if same_file:
        raise ExportError("the output path is the input model; choose another path (the input is never overwritten)")
    timings: dict[str, float] = {}
    loaded = load_model(model)
    graph: OnnxGraphModule = lower(loaded)
    spec = input_spec(loaded.model)
    data = data or DataOptions()
    dataset = calib if not isinstance(calib, str | Path) else open_dataset(
        calib, spec, preset=data.preset, mean=data.mean, std=data.std, size=data.size, resize=data.resize)
    if len(dataset) == 0:
        raise DataError("the calibration data holds no samples")
    timings["load"] = time.perf_counter() - start

    torch.manual_seed(config.seed)
    dev = pick_device(device)
    plan = plan_quantization(graph, config)
    sim = QuantSim(graph, plan, config)
    graph.to(dev)
    t = time.perf_counter()
    reconstructing = config.method != "rtn"
    act_samples = min(config.calib_act_samples, config.samples)
    samples = _load_samples(dataset, config.samples if reconstructing else act_samples)
    sim.calibrate(x.to(dev) for x in samples[:act_samples].split(config.batch_size))
    timings["calibrate"] = time.perf_counter() - t
    records: list[BlockRecord] = []
    if reconstructing:
        t = time.perf_counter()
        records = _reconstruct(sim, graph, samples, config, dev, progress, on_block)
        timings["reconstruct"] = time.perf_counter() - t
    graph.cpu()
    params = sim.export_params()
    qdq = build_qdq_model(loaded.model, params, config.format)
    used = len(samples)
    result = QuantResult(qdq, params, plan, config, sim, calibration_samples=used,
                         timings=timings, blocks=records)
    if output is not None:
        result.output = save_model_atomic(qdq, output)
    result.seconds = time.perf_counter() - start
    return result
