"""The Python API: ``quantize(model, calib, config) -> QuantResult``, mirroring ``qdrop-onnx quantize``."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
import torch

from qdrop_onnx.data import Dataset, InputSpec, dataset_from_reader, input_specs, open_dataset
from qdrop_onnx.data.spec import POSITION_MASK, as_specs
from qdrop_onnx.errors import DataError
from qdrop_onnx.export.qdq import ExportError, build_qdq_model, save_model_atomic
from qdrop_onnx.graph import load_model, lower, partition
from qdrop_onnx.graph.load import LoadedModel
from qdrop_onnx.graph.lower import OnnxGraphModule
from qdrop_onnx.graph.partition import batch_major_tensors
from qdrop_onnx.mixed.allocate import Allocation, allocatable_activations, allocate_widths
from qdrop_onnx.mixed.sensitivity import (
    FloatOutputs,
    SensitivityProgress,
    SensitivityTable,
    measure_activation_sensitivity,
    measure_sensitivity,
)
from qdrop_onnx.params import QuantParams
from qdrop_onnx.quant.config import ConfigError, QuantConfig
from qdrop_onnx.quant.placement import QuantPlan, plan_quantization
from qdrop_onnx.quant.sim import QuantSim
from qdrop_onnx.recon import BlockRecord, reconstruct
from qdrop_onnx.recon.allocator import reusing_freed_memory
from qdrop_onnx.recon.cache import default_cache_bytes
from qdrop_onnx.recon.checkpoint import (
    Checkpoint,
    load_checkpoint,
    load_sim_state,
    run_fingerprint,
    save_checkpoint,
    sim_state,
)
from qdrop_onnx.recon.policy import recon_config
from qdrop_onnx.recon.run import DoneCallback, StepCallback
from qdrop_onnx.targets import get_target
from qdrop_onnx.verify.compare import Comparison, compare_models, sqnr_db
from qdrop_onnx.verify.coverage import KernelCoverage, source_node
from qdrop_onnx.verify.evaluate import output_classes, warn_if_near_chance
from qdrop_onnx.verify.report import QuantReport
from qdrop_onnx.verify.runtimes import open_session, openvino_available, runtime_coverage

log = logging.getLogger("qdrop_onnx")


@dataclass
class DataOptions:
    """How calibration data is read: image preprocessing (see ``qdrop-onnx eval --help``), and for text
    (``.txt``, one sentence per line) the tokenizer file and the maximum token count."""

    preset: str | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    size: tuple[int, int] | None = None
    resize: int | None = None
    tokenizer: str | Path | None = None
    max_length: int = 128

    def open(self, path: str | Path, specs: Sequence[InputSpec], classes: str | Path | None = None) -> Dataset:
        return open_dataset(path, specs, preset=self.preset, mean=self.mean, std=self.std, size=self.size,
                            resize=self.resize, classes=classes, tokenizer=self.tokenizer,
                            max_length=self.max_length)


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
    device: str = "cpu"
    calibration_data: Dataset | None = None
    allocation: Allocation | None = None  # the mixed-precision widths, when config sets a budget


def pick_device(device: str = "auto") -> torch.device:
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda requested but torch sees no CUDA device")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def open_calibration(calib: str | Path | Dataset | object, spec: InputSpec | Sequence[InputSpec],
                     data: DataOptions | None = None) -> Dataset:
    """A path (image folder, .npy/.npz), a :class:`Dataset`, or an ORT ``CalibrationDataReader``."""
    data = data or DataOptions()
    if isinstance(calib, str | Path):
        return data.open(calib, as_specs(spec))
    if hasattr(calib, "get_next"):  # onnxruntime.quantization.CalibrationDataReader
        return dataset_from_reader(calib, spec)
    return calib  # type: ignore[return-value]


def default_checkpoint(output: str | Path) -> Path:
    """``.<output name>.checkpoint`` beside the output: where the CLI keeps finished blocks during a run."""
    path = Path(output)
    return path.with_name(f".{path.name}.checkpoint")


def default_output(model_path: str | Path, config: QuantConfig) -> Path:
    """``<stem>.w{W}a{A}.onnx`` beside the input model."""
    path = Path(model_path)
    return path.with_name(f"{path.stem}.w{config.w_bits}a{config.a_bits}.onnx")


def calibration_samples(dataset: Dataset, graph: OnnxGraphModule, specs: Sequence[InputSpec],
                        config: QuantConfig) -> list[torch.Tensor]:
    """The samples calibration and reconstruction share: one tensor per graph input (``graph.input_names``
    order), decoded once. RTN reads only the ``calib_act_samples`` that set the activation ranges."""
    wanted = config.samples if config.method != "rtn" else min(config.calib_act_samples, config.samples)
    by_name = {s.name: s for s in specs}
    samples = _load_samples(dataset, wanted, [by_name[name] for name in graph.input_names])
    _check_finite(samples)
    count = len(samples[0])
    if count < wanted:
        flag = "--samples" if wanted == config.samples else "--calib-act-samples"
        log.warning("the calibration data has %d readable samples, fewer than the %d asked for (%s): using %d",
                    count, wanted, flag, count)
    return samples


def _load_samples(dataset: Dataset, limit: int, specs: Sequence[InputSpec]) -> list[torch.Tensor]:
    """The first ``limit`` samples, one tensor per model input in ``specs`` order. Batches of different
    widths (text padded per batch) are padded to the widest with the dataset's ``pad_values`` (0 where it
    names none)."""
    batches = [x for x, _ in dataset.batches(256, limit)]
    missing = [s.name for s in specs if batches and s.name not in batches[0]]
    if missing:
        raise DataError(f"the calibration data has no values for model input {missing[0]!r}")
    pad_values: dict[str, int] = getattr(dataset, "pad_values", {})
    out = []
    for s in specs:
        arrays = [b[s.name] for b in batches]
        shape = np.max([a.shape[1:] for a in arrays], axis=0)
        padded = [np.pad(a, [(0, 0)] + [(0, int(m - d)) for m, d in zip(shape, a.shape[1:], strict=True)],
                         constant_values=pad_values.get(s.name, 0)) if tuple(a.shape[1:]) != tuple(shape) else a
                  for a in arrays]
        out.append(torch.cat([torch.from_numpy(np.ascontiguousarray(a)) for a in padded]))
    return out


def _check_finite(samples: Sequence[torch.Tensor]) -> None:
    bad = None
    for x in samples:
        if x.is_floating_point():
            rows = (~torch.isfinite(x)).reshape(len(x), -1).any(1)
            bad = rows if bad is None else bad | rows
    count = int(bad.sum()) if bad is not None else 0
    if count:
        raise DataError(f"{count} calibration sample{'s' if count > 1 else ''} contain NaN or Inf values")


def calibrate(sim: QuantSim, samples: Sequence[torch.Tensor], config: QuantConfig, device: torch.device) -> None:
    """Activation ranges from the first ``calib_act_samples`` samples (in float), then weight scales."""
    count = min(config.calib_act_samples, len(samples[0]))
    sim.calibrate([x[start:start + config.batch_size].to(device) for x in samples]
                  for start in range(0, count, config.batch_size))


@dataclass
class CheckpointOptions:
    """``directory``: save the learned state there after every block; ``resume``: continue from it."""

    directory: str | Path
    resume: bool = False


def reconstruct_blocks(sim: QuantSim, loaded: LoadedModel, samples: list[torch.Tensor], config: QuantConfig,
                       device: torch.device, progress: StepCallback | None = None,
                       on_block: DoneCallback | None = None,
                       checkpoint: CheckpointOptions | None = None) -> list[BlockRecord]:
    """BRECQ block by block (AdaRound: layer by layer), with QDrop's dropping for ``qdrop``; resumable."""
    graph = sim.graph
    batch_major = batch_major_tensors(graph, samples) if len(samples[0]) >= 2 else None
    blocks = partition(graph, max_weighted=1 if config.method == "adaround" else 8, batch_major=batch_major)
    cache_dtype = torch.float16 if config.cache_fp16 else torch.float32
    # Where the cache lives and how freed memory is kept do not change the result (spilled tensors are read
    # back exactly), so a run that stopped for lack of memory can resume with a smaller --max-cache-gb.
    settings = {k: v for k, v in asdict(config).items() if k not in ("max_cache_gb", "cache_dir", "release_memory")}
    fingerprint = run_fingerprint(loaded.model.SerializeToString(), settings, samples)
    finished: list[BlockRecord] = []
    after_block = None
    if checkpoint is not None:
        if checkpoint.resume:
            saved = load_checkpoint(checkpoint.directory, fingerprint)
            if saved is None:
                log.warning("no checkpoint in %s yet; starting from the first block", checkpoint.directory)
            else:
                load_sim_state(sim, saved.state)
                finished = saved.records[:saved.finished]

        def after_block(records: list[BlockRecord]) -> None:
            save_checkpoint(checkpoint.directory, Checkpoint(fingerprint, len(records), records, sim_state(sim)))

    budget = int(config.max_cache_gb * 1e9) if config.max_cache_gb is not None else default_cache_bytes()
    return reconstruct(sim, blocks, samples, recon_config(config, graph), device, cache_dtype, progress, on_block,
                       finished=finished, after_block=after_block, max_cache_bytes=budget,
                       positions=_position_mask(graph, samples), spill_dir=config.cache_dir)


def _position_mask(graph: OnnxGraphModule, samples: Sequence[torch.Tensor]) -> torch.Tensor | None:
    """Which sequence positions are real tokens: the model's ``attention_mask`` input ([N, T] of 0 and 1),
    or None (images, and models without one)."""
    mask = dict(zip(graph.input_names, samples, strict=True)).get(POSITION_MASK)
    return mask if mask is not None and mask.ndim == 2 and POSITION_MASK in graph.side_inputs else None


def _refuse_overwrite(model: str | Path | onnx.ModelProto, output: str | Path | None) -> None:
    if not isinstance(model, onnx.ModelProto) and output is not None \
            and Path(output).resolve() == Path(model).resolve():
        raise ExportError("the output path is the input model; choose another path (the input is never overwritten)")


@contextmanager
def _stage(timings: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    timings[name] = timings.get(name, 0.0) + time.perf_counter() - start


def _load(model: str | Path | onnx.ModelProto, calib: str | Path | Dataset | object,
          data: DataOptions | None, config: QuantConfig,
          ) -> tuple[LoadedModel, OnnxGraphModule, list[InputSpec], Dataset]:
    """The cleaned model (with the target's rewrites), its torch rebuild, its input specs and the calibration
    data (refused when empty)."""
    loaded = load_model(model, rewrites=get_target(config.target).rewrites)
    graph = lower(loaded)
    specs = input_specs(loaded.model)
    dataset = open_calibration(calib, specs, data)
    if len(dataset) == 0:
        raise DataError("the calibration data holds no samples")
    return loaded, graph, specs, dataset


def quantize(model: str | Path | onnx.ModelProto, calib: str | Path | Dataset | object, config: QuantConfig,
             output: str | Path | None = None, *, data: DataOptions | None = None,
             device: str = "auto", progress: StepCallback | None = None,
             on_block: DoneCallback | None = None, checkpoint: CheckpointOptions | None = None,
             allocation_progress: SensitivityProgress | None = None) -> QuantResult:
    """Quantize ``model`` on calibration data ``calib`` per ``config``.

    ``calib``: an image folder, a .npy/.npz file or folder, a :class:`~qdrop_onnx.data.Dataset`, or an
    ONNX Runtime ``CalibrationDataReader``.

    Writes the QDQ model to ``output`` when given (atomically; never over the input model) and returns
    the model, the learned parameters, the simulation that produced them and, for the reconstruction
    methods, one record per block. ``progress(block, step, loss)`` and ``on_block(record)`` report on
    the reconstruction as it runs. ``checkpoint`` saves the learned state after every block and, with
    ``resume``, continues from the blocks a previous identical run finished (same file as without).
    With a mixed-precision budget (``config.avg_w_bits``, ``size_kb`` or ``avg_a_bits``),
    ``allocation_progress(done, total, node)`` reports on the sensitivity measurement after each layer (or
    activation tensor).

    The stages, each owning its policy: load (clean and lower the graph, open the data) -> allocate (per-layer
    weight widths under a budget, when one is set) -> plan (which
    tensors get which quantizer) -> calibrate (ranges, then scales) -> reconstruct (all but ``rtn``) ->
    export (the QDQ file). :func:`verify` and :func:`build_report` are the stages after it.
    """
    start = time.perf_counter()
    config.validate()
    _refuse_overwrite(model, output)
    timings: dict[str, float] = {}
    with _stage(timings, "load"):
        loaded, graph, specs, dataset = _load(model, calib, data, config)
    dev = pick_device(device)
    graph.to(dev)
    records: list[BlockRecord] = []
    allocation = None
    plan = plan_quantization(graph, config)  # a model or rule it cannot plan fails before the data is read
    # The same large tensors are freed and allocated again at every step (recon.allocator); --release-memory
    # keeps glibc's defaults: a lower peak, twice the time where the step tensors are large.
    with reusing_freed_memory() if not config.release_memory else nullcontext():
        with _stage(timings, "calibrate"):
            samples = calibration_samples(dataset, graph, specs, config)
        if config.allocates:
            with _stage(timings, "allocate"):
                config, allocation = allocate_widths(graph, config, samples, dev, allocation_progress)
            plan = plan_quantization(graph, config)
        sim = QuantSim(graph, plan, config)
        with _stage(timings, "calibrate"):
            calibrate(sim, samples, config, dev)
        if config.method != "rtn":
            with _stage(timings, "reconstruct"):
                records = reconstruct_blocks(sim, loaded, samples, config, dev, progress, on_block, checkpoint)
    graph.cpu()
    with _stage(timings, "export"):
        params = sim.export_params()
        qdq = build_qdq_model(loaded.model, params, config.format, quantized_outputs=not config.float_outputs,
                              target=get_target(config.target))
        written = save_model_atomic(qdq, output) if output is not None else None
    return QuantResult(qdq, params, plan, config, sim, output=written, seconds=time.perf_counter() - start,
                       calibration_samples=len(samples[0]), timings=timings, blocks=records, device=str(dev),
                       calibration_data=dataset, allocation=allocation)


def sensitivity(model: str | Path | onnx.ModelProto, calib: str | Path | Dataset | object, config: QuantConfig,
                widths: Sequence[int] | None = None, *, data: DataOptions | None = None, device: str = "auto",
                activations: bool = False, progress: SensitivityProgress | None = None) -> SensitivityTable:
    """Each weighted layer's output error at each of ``widths`` (default ``config.alloc_widths``) with only that
    layer quantized, on ``config.sensitivity_samples`` calibration samples: what ``--avg-w-bits`` allocates
    by (:mod:`qdrop_onnx.mixed.sensitivity`). Layers ``config`` leaves in float are not measured. With
    ``activations``, the table's ``activations`` hold the same for each input activation ``--avg-a-bits``
    would allocate."""
    config.validate()
    loaded, graph, specs, dataset = _load(model, calib, data, config)
    by_name = {s.name: s for s in specs}
    samples = _load_samples(dataset, config.sensitivity_samples, [by_name[n] for n in graph.input_names])
    _check_finite(samples)
    dev = pick_device(device)
    graph.to(dev)
    plan = plan_quantization(graph, config)
    widths = widths or config.alloc_widths
    reference = FloatOutputs(graph, samples, config.batch_size, dev)
    table = measure_sensitivity(graph, plan, config, reference, widths, progress)
    if activations:
        table.activations = measure_activation_sensitivity(graph, plan, config, reference,
                                                           allocatable_activations(graph, plan), widths, progress)
    return table


@dataclass
class Verification:
    """FP vs quantized in ``runtime`` (:class:`Comparison`), where the samples came from, the integer
    kernels that runtime executed, and each weighted op it left in float with the reason (:func:`left_in_float`)."""

    comparison: Comparison
    data: str
    held_out: bool
    coverage: KernelCoverage | None = None
    runtime: str = "onnxruntime"
    left_in_float: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {**self.comparison.to_dict(), "data": self.data, "held_out": self.held_out, "runtime": self.runtime}


def verify(result: QuantResult, reference: str | Path, eval_data: str | Path | None = None, *,
           data: DataOptions | None = None, classes: str | Path | None = None, limit: int | None = 1000,
           device: str = "cpu", runtime: str | None = None) -> Verification:
    """Compare the written file with the float ``reference`` model in ``runtime`` (None: the one the
    target's profile names, ONNX Runtime or OpenVINO; ONNX Runtime, with a warning, where that is OpenVINO and
    the openvino package is not installed).

    On ``eval_data`` when given (accuracy when it has class folders); otherwise on calibration samples
    that quantization did not use, or, when it used them all, on those (``held_out`` False). Counts the
    integer kernels the runtime runs too. At most ``limit`` samples (None: all).
    """
    if runtime is None:
        runtime = get_target(result.config.target).verifier
        if runtime == "openvino" and not openvino_available():  # the file is written: score it where we can
            log.warning("--target %s verifies in OpenVINO, but the openvino package is not installed (pip install "
                        "'qdrop-onnx[openvino]'): verifying in ONNX Runtime instead", result.config.target)
            runtime = "onnxruntime"
    if result.output is None:
        raise ValueError("verify() needs a written model (quantize(..., output=...))")
    spec = input_specs(result.model)
    data = data or DataOptions()
    if eval_data is not None:
        dataset = data.open(eval_data, spec, classes=classes)
        source, held_out = str(eval_data), True
    else:
        dataset = result.calibration_data
        if dataset is None:
            raise ValueError("no data to verify on: pass eval_data")
        unused = range(result.calibration_samples, len(dataset))
        held_out = len(unused) > 0 and hasattr(dataset, "subset")
        if held_out:
            dataset = dataset.subset(unused)  # type: ignore[attr-defined]
        source = "calibration data" + (" (samples not used for calibration)" if held_out else "")
    if limit is not None and len(dataset) > limit and hasattr(dataset, "subset"):
        # Evenly spaced, not the first N: folders sorted by class would otherwise give one class only.
        dataset = dataset.subset(np.linspace(0, len(dataset) - 1, limit).round().astype(int).tolist())
    quantized = open_session(result.output, runtime, device=device)  # compiled once: compared, then counted
    try:
        comparison = compare_models(reference, quantized, dataset, spec, limit=limit, device=device,
                                    runtime=runtime)
    except DataError:
        if not held_out or result.calibration_data is None:
            raise
        # The unused samples were all unreadable: fall back to the calibration samples.
        dataset, source, held_out = result.calibration_data, "calibration data", False
        comparison = compare_models(reference, quantized, dataset, spec, limit=limit, device=device,
                                    runtime=runtime)
    warn_if_near_chance(comparison.reference_top1, output_classes(result.model), source)
    coverage = runtime_coverage(result.output, runtime, session=quantized)
    left = left_in_float(result, coverage, runtime) if coverage is not None else []
    return Verification(comparison, source, held_out, coverage, runtime, left)


def weight_sqnr(result: QuantResult) -> dict[str, float]:
    """Per weighted layer: 10 log10(|W|^2 / |W - Q(W)|^2) of the weights as exported."""
    out = {}
    with torch.no_grad():
        for name in result.plan.weights:
            op = result.sim.graph.op(name)
            w = op.weight.detach().double()
            noise = float(((w - op.effective_weight().detach().double()) ** 2).sum())
            out[name] = sqnr_db(float((w**2).sum()), noise)
    return out


def left_in_float(result: QuantResult, coverage: KernelCoverage, runtime: str) -> list[dict[str, str]]:
    """Each weighted op the runtime left in float, with the reason as far as the plan and the target tell."""
    target = get_target(result.config.target)
    outputs = {o.name for o in result.model.graph.output}
    writes = {n.name: set(n.output) for n in result.model.graph.node}
    rows = []
    for reported in coverage.float_nodes:
        node = source_node(reported, result.model)
        spec = result.plan.weights.get(node or "")
        if node is None:
            reason = "not traced back to a node of the model"
        elif node in result.plan.excluded:
            reason = "excluded (--exclude or a layers rule)"
        elif spec is None:
            reason = "not quantized (no weighted op the plan knows)"
        elif runtime == "onnxruntime" and spec.op_type == "ConvTranspose":
            reason = ("ONNX Runtime's CPU provider has no integer ConvTranspose kernel, and this one is not "
                      "rewritten as Conv + DepthToSpace (dilated, output_shape, auto_pad or unequal strides)")
        elif runtime == "onnxruntime" and not spec.quantize_bias and not target.int32_bias \
                and getattr(result.sim.graph.op(node), "bias", None) is not None:
            reason = (f"its bias stays float (--target {target.name}), and ONNX Runtime fuses it only with an int32 "
                      "bias")
        elif spec.op_type in target.output_quantized_ops and writes.get(node, set()) & outputs:
            reason = ("writes a graph output, which --float-outputs keeps float (the runtime fuses a conv only "
                      "with a quantized output)")
        else:
            reason = "the runtime did not fuse it (a quantizer it needs around it is missing or not fusable)"
        rows.append({"node": node or reported, "reason": reason})
    return rows


def build_report(result: QuantResult, model: str | Path, verification: Verification | None = None) -> QuantReport:
    """The report of one quantization run (write it with :func:`qdrop_onnx.verify.report.write_report`)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        tool_version = version("qdrop-onnx")
    except PackageNotFoundError:
        tool_version = "unknown"
    sqnr = weight_sqnr(result)
    plan = result.plan
    inputs = {t: spec.bits for t, spec in plan.activations.items()}
    layers = [{"node": name, "op_type": spec.op_type, "bits": spec.bits, "input_bits": inputs.get(spec.input),
               "symmetric": spec.symmetric, "weight_sqnr_db": sqnr[name], **({"rule": spec.rule} if spec.rule else {})}
              for name, spec in plan.weights.items()]
    activations = [{"tensor": t, "bits": spec.bits, "reason": spec.reason} for t, spec in plan.activations.items()]
    blocks = [{"index": b.index, "name": b.name, "kind": b.kind, "loss_before": b.loss_before,
               "loss_after": b.loss_after, "seconds": b.seconds, "train_seconds": b.train_seconds,
               "iters": b.iters, "undecided": b.undecided,
               "kept_rtn": b.kept_rtn} for b in result.blocks]
    out = result.output
    coverage = None
    if verification is not None and verification.coverage is not None:
        cov = verification.coverage
        coverage = {"integer": cov.integer, "float": cov.float, "fraction": cov.fraction,
                    "left_in_float": verification.left_in_float}
    return QuantReport(
        tool="qdrop-onnx", version=tool_version,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        input={"path": str(model), "bytes": Path(model).stat().st_size},
        output={"path": str(out), "bytes": out.stat().st_size if out is not None else 0},
        config={**asdict(result.config), "device": result.device},
        seconds=result.seconds, timings=dict(result.timings), calibration_samples=result.calibration_samples,
        layers=layers, activations=activations, blocks=blocks,
        verification=verification.to_dict() if verification is not None else None, coverage=coverage,
        allocation=result.allocation.to_dict() if result.allocation is not None else None)
