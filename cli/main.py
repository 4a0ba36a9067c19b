"""``qdrop-onnx`` command line. Thin: parse flags, call the library, print.

Exit codes: 0 success; 1 the input could not be processed (bad model, unsupported ops, bad data, out of
memory, a failed write — one line on stderr starting with ``qdrop-onnx: error:``, never a traceback);
2 usage error (bad flag, missing path).
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import click

from qdrop_onnx.errors import QdropError, UnsupportedModelError, first_line
from qdrop_onnx.targets import RUNTIMES, TARGETS

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_GATE = 3  # --fail-below: the file was written, its verification missed a bound
EXIT_SIGINT = 130  # 128 + signal number, as shells report it
EXIT_SIGTERM = 143


class Interrupted(BaseException):
    """Raised by our SIGINT/SIGTERM handlers; cleanup (temporary files) runs on the way out.

    A BaseException, like KeyboardInterrupt, so that no `except Exception` on the way swallows it; our
    own type rather than KeyboardInterrupt, which click reports with an extra blank line.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted(signum)


def _fail(message: str, code: int) -> None:
    click.echo(f"qdrop-onnx: error: {message}", err=True)
    sys.exit(code)


class OneLineErrors(click.Group):
    """A click group whose errors are one line on stderr (exit 2 for usage, 1 for failures)."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        try:
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGINT, _raise_interrupted)
                signal.signal(signal.SIGTERM, _raise_interrupted)
            rv = super().main(args, prog_name or "qdrop-onnx", complete_var, standalone_mode=False, **extra)
        except click.UsageError as exc:
            _fail(exc.format_message(), EXIT_USAGE)
        except click.ClickException as exc:
            _fail(exc.format_message(), EXIT_FAILURE)
        except Interrupted as exc:
            what, code = ("terminated (SIGTERM)", EXIT_SIGTERM) if exc.signum == signal.SIGTERM else (
                "interrupted (SIGINT)", EXIT_SIGINT)
            _fail(f"{what}: no output file was written{_notes(exc)}", code)
        except click.Abort:
            _fail("aborted", EXIT_SIGINT)
        except QdropError as exc:
            _fail(f"{exc}{_notes(exc)}", EXIT_FAILURE)
        except MemoryError:
            _fail(f"out of memory; {_LESS_MEMORY}", EXIT_FAILURE)
        except OSError as exc:  # our own writes raise OutputError; this is a read or write we did not foresee
            where = f" ({exc.filename})" if exc.filename else ""
            _fail(f"{exc.strerror or first_line(exc)}{where}", EXIT_FAILURE)
        except Exception as exc:
            if type(exc).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError (CUDA), without importing torch
                _fail(f"out of GPU memory; {_LESS_MEMORY}, or --device cpu", EXIT_FAILURE)
            _fail(f"internal error, {type(exc).__name__}: {first_line(exc)} (traceback in {_save_traceback()}; "
                  f"please report it with the command that caused it){_notes(exc)}", EXIT_FAILURE)
        if standalone_mode:
            sys.exit(rv if isinstance(rv, int) else 0)
        return rv


def _notes(exc: BaseException) -> str:
    """What a command added to an error on its way out (where the finished work is kept), as "; note"."""
    return "".join(f"; {note}" for note in getattr(exc, "__notes__", ()))


_LESS_MEMORY = "try --cache-fp16, a smaller --max-cache-gb, --batch-size or --samples"


def _save_traceback() -> str:
    """Write the current exception's traceback to a file and return its path (the user sees one line)."""
    import tempfile
    import traceback

    with tempfile.NamedTemporaryFile("w", prefix="qdrop-onnx-traceback-", suffix=".txt", delete=False) as f:
        f.write(f"qdrop-onnx {' '.join(sys.argv[1:])}\n\n{traceback.format_exc()}")
    return f.name


class _WarningFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"qdrop-onnx: {record.levelname.lower()}: {record.getMessage()}"


def _setup_logging() -> None:
    logger = logging.getLogger("qdrop_onnx")
    if not any(getattr(h, "_qdrop", False) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler._qdrop = True  # type: ignore[attr-defined]
        handler.setFormatter(_WarningFormatter())
        logger.addHandler(handler)
    logger.setLevel(logging.WARNING)


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"],
                                                   "show_default": True})
@click.version_option(package_name="qdrop-onnx", prog_name="qdrop-onnx")
def cli() -> None:
    """Low-bit post-training quantization of ONNX models (AdaRound, BRECQ, QDrop) to QDQ ONNX.

    \b
    Exit codes: 0 success, 1 failure (bad model or data; one line on stderr), 2 usage error, 3 a
    `quantize --fail-below` bound missed (the file is written).
    """
    _setup_logging()


_model_arg = click.argument("model", type=click.Path(exists=True, dir_okay=False))


def _text_options(command: Any) -> Any:
    """--tokenizer and --max-length: text data (.txt, one sentence per line) for BERT-family models."""
    command = click.option("--max-length", type=click.IntRange(min=1), default=128, show_default=True,
                           help="Text: truncate sentences to this many tokens (one warning counts them).")(command)
    return click.option("--tokenizer", type=click.Path(exists=True, dir_okay=False), default=None,
                        help="Text data (.txt, one sentence per line): a Hugging Face tokenizers JSON file; fills "
                             "input_ids, attention_mask, token_type_ids (needs qdrop-onnx[text]).")(command)


def _image_options(command: Any) -> Any:
    """--preset, --mean, --std, --size, --resize: how images are read (quantize and sensitivity)."""
    for option in reversed([
        click.option("--preset", type=click.Choice(["cifar10", "imagenet", "tf"]), default=None,
                     help="Image preprocessing preset (see `eval --help`)."),
        click.option("--mean", type=float, nargs=3, default=None, help="Per-channel mean, 0-255 pixel units."),
        click.option("--std", type=float, nargs=3, default=None, help="Per-channel std, 0-255 pixel units."),
        click.option("--size", "--input-shape", "size", type=int, nargs=2, default=None,
                     help="Final image height and width (the input shape for models with dynamic spatial dims)."),
        click.option("--resize", type=int, default=None, help="Resize the short side to this before center crop."),
    ]):
        command = option(command)
    return command


@cli.command(name="targets")
def targets_cmd() -> None:
    """The deployment targets `quantize --target` takes: the grids and widths each one's file uses."""
    rows = [("target", "runtime", "activations", "weights", "bias", "formats", "default", "verified in")]
    for name, p in TARGETS.items():
        def widths(bits: tuple[int, ...]) -> str:
            return f"{min(bits)}-{max(bits)}" if len(bits) > 2 else "/".join(map(str, bits))

        acts = f"{'INT8 symmetric' if p.act_signed else 'UINT8'}, {widths(p.act_bits)} bits"
        weights = f"INT8{'/INT4' if p.default_format == 'native' else ''} {'symmetric' if p.weight_symmetric else ''}"
        rows.append((name, p.runtime, acts, f"{weights.strip()} per channel, {widths(p.w_bits)} bits",
                     "int32" if p.int32_bias else "float", "/".join(p.formats),
                     f"W{p.default_w_bits}A{p.default_a_bits} {p.default_format}", p.verifier))
    sizes = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(size) for cell, size in zip(row, sizes, strict=True)).rstrip())


@cli.command()
@_model_arg
@click.option("--max-block-weights", default=8, show_default=True,
              help="Split a region with more weighted layers than this into several blocks.")
def inspect(model: str, max_block_weights: int) -> None:
    """Show a model's ops, weighted layers, reconstruction blocks and unsupported ops."""
    import numpy as np

    from qdrop_onnx.data import input_specs
    from qdrop_onnx.graph import load_model, lower, partition

    loaded = load_model(model)
    proto = loaded.model
    ops = Counter(n.op_type for n in proto.graph.node)
    click.echo(f"model: {model}  (opset {loaded.opset}, {len(proto.graph.node)} nodes after cleaning)")
    steps = [f"{loaded.folded_batchnorms} BatchNormalization folded into Conv"]
    steps.append("simplified with onnxsim" if loaded.simplified else "not simplified")
    click.echo("cleaning: " + ", ".join(steps))
    specs = input_specs(proto)
    values = {v.name: v for v in proto.graph.input}
    for spec in specs:
        dims = [d.dim_param or str(d.dim_value) for d in values[spec.name].type.tensor_type.shape.dim]
        # Only models with several inputs say which are side inputs: ResNet-20's output stays as it was.
        side = "" if len(specs) == 1 else f"  {np.dtype(spec.dtype).name}" + (
            "" if spec.is_float else ", side input (keeps its dtype, never quantized)")
        click.echo(f"input:  {spec.name} [{', '.join(dims)}]{side}")
    click.echo("ops: " + ", ".join(f"{op} {n}" for op, n in ops.most_common()))
    try:
        graph = lower(loaded)
    except UnsupportedModelError as exc:
        click.echo("unsupported ops: " + ", ".join(f"{op} x{n}" for op, n in sorted(exc.ops.items())))
        raise
    weighted = graph.weighted_ops()
    total = sum(p.numel() for m in weighted.values() for p in m.parameters())
    click.echo(f"\nweighted layers ({len(weighted)}, {total:,} parameters):")
    for name, module in weighted.items():
        shape = "x".join(str(d) for d in module.weight.shape)
        op_type = graph.node(name).node.op_type
        click.echo(f"  {name:<48} {op_type:<14} weight {shape:<16} "
                   f"{sum(p.numel() for p in module.parameters()):>10,}")
    blocks = partition(graph, max_weighted=max_block_weights)
    click.echo(f"\nblocks ({len(blocks)}):")
    for block in blocks:
        click.echo(f"  #{block.index:<3} {block.kind:<5} {len(block.weighted)} weighted, "
                   f"{block.num_params:>9,} params, {len(block.nodes)} nodes: {', '.join(block.op_types)}")
        click.echo(f"       first weighted: {block.name}")
    _echo_plan(graph)
    click.echo("\nunsupported ops: none")


@cli.command(name="sensitivity")
@_model_arg
@click.option("--calib", required=True, type=click.Path(exists=True),
              help="Calibration data, as for `quantize` (labels not needed).")
@click.option("--bits", "widths", callback=lambda ctx, param, v: _parse_widths(param, v), default="2,3,4,8",
              show_default=True, metavar="B,B,...", help="Weight widths to measure each layer at.")
@click.option("--samples", type=click.IntRange(min=1), default=128, show_default=True,
              help="Calibration samples each measurement runs on.")
@click.option("--steps", type=click.IntRange(min=0), default=200, show_default=True,
              help="Steps of learned rounding (AdaRound on the layer's own output) per layer and width below 8 "
                   "bits, as `quantize --method adaround/brecq/qdrop` allocates by; 0: round to nearest "
                   "(what --method rtn allocates by).")
@click.option("--weight-asymmetric", is_flag=True, help="Asymmetric per-channel weights below 8 bits.")
@click.option("--activations", is_flag=True,
              help="Measure the input activations of the layers too (one tensor quantized at a time, at the same "
                   "widths): what `quantize --avg-a-bits` allocates by.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Base path: writes PATH.json and PATH.png. [default: <model stem>.sensitivity beside the model]")
@_image_options
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--json", "json_out", is_flag=True, help="Print the table as JSON on stdout instead.")
@_text_options
def sensitivity_cmd(model: str, calib: str, widths: list[int], samples: int, steps: int, weight_asymmetric: bool,
                    activations: bool, batch_size: int, output: str | None, preset: str | None,
                    mean: tuple[float, float, float] | None,
                    std: tuple[float, float, float] | None, size: tuple[int, int] | None, resize: int | None,
                    device: str, json_out: bool, tokenizer: str | None, max_length: int) -> None:
    """Measure how much each weighted layer's narrower weights hurt: per layer and width, the relative
    squared error of the model's outputs against the float model with only that layer quantized (the range
    search, then the rounding learned for that layer alone, or round to nearest with --steps 0). What
    `quantize --avg-w-bits/--size-kb` allocates by; with
    --activations, the same for each layer's input activation (`--avg-a-bits`). Prints a table, writes it as
    JSON and a PNG."""
    import json

    from qdrop_onnx.api import sensitivity
    from qdrop_onnx.fileio import write_atomic
    from qdrop_onnx.quant.config import QuantConfig
    from qdrop_onnx.verify.report import json_safe

    base = Path(output) if output else Path(model).with_name(Path(model).stem + ".sensitivity")
    paths = {"json": base.with_name(base.name + ".json"), "png": base.with_name(base.name + ".png")}
    if Path(model).resolve() in {p.resolve() for p in paths.values()}:
        raise click.UsageError("--output would overwrite the input model")
    if not base.parent.is_dir():
        raise click.UsageError(f"--output folder {base.parent} does not exist")
    _check_writable(base.parent)
    config = QuantConfig(weight_asymmetric=weight_asymmetric, batch_size=batch_size, sensitivity_samples=samples,
                         sensitivity_steps=steps, alloc_widths=widths)
    data = _data_options(preset, mean, std, size, resize, tokenizer, max_length, calib, None)
    table = sensitivity(model, calib, config, data=data, device=device, activations=activations,
                        progress=_sensitivity_progress(not json_out))
    document = json_safe(table.to_dict())
    write_atomic(paths["json"], lambda tmp: tmp.write_text(json.dumps(document, indent=2)))
    _plot_sensitivity(table, paths["png"])
    if json_out:
        click.echo(json.dumps(document, indent=2))
        return
    click.echo(f"{table.metric}, {table.samples} samples, {table.seconds:.1f} s")
    header = f"  {'layer':<44} {'params':>9} " + " ".join(f"{f'W{b}':>10}" for b in table.widths)
    click.echo(header)
    for layer in table.layers:
        fixed = f"  fixed: {layer.fixed}" if layer.fixed else ""
        click.echo(f"  {layer.node[-44:]:<44} {layer.params:>9,} "
                   + " ".join(f"{layer.error[b]:>10.3g}" for b in table.widths) + fixed)
    if table.activations:
        click.echo(f"  {'input activation':<44} {'elements':>9} " + " ".join(f"{f'A{b}':>10}" for b in table.widths))
        for act in table.activations:
            click.echo(f"  {act.tensor[-44:]:<44} {act.elements:>9,} "
                       + " ".join(f"{act.error[b]:>10.3g}" for b in table.widths))
    click.echo("wrote " + ", ".join(str(p) for p in paths.values()))


def _plot_sensitivity(table: Any, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from qdrop_onnx.fileio import write_atomic

    fig, ax = plt.subplots(figsize=(10, 4))
    for b in table.widths:
        ax.semilogy(range(len(table.layers)), [max(la.error[b], 1e-12) for la in table.layers], "o-", label=f"W{b}")
    ax.set_xlabel("weighted layer (graph order)")
    ax.set_ylabel("relative output error")
    ax.set_title("Sensitivity: one layer quantized at a time")
    ax.legend()
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    try:
        write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    finally:
        plt.close(fig)


def _echo_plan(graph: Any) -> None:
    """What `quantize` at its defaults puts quantizers on (placement's reasons, counted by kind)."""
    from qdrop_onnx.quant.config import QuantConfig
    from qdrop_onnx.quant.placement import plan_quantization

    config = QuantConfig()
    plan = plan_quantization(graph, config)
    edge = [n for n in (plan.first, plan.last) if plan.weights[n].bits != config.w_bits]
    click.echo(f"\nquantized at the defaults (--w {config.w_bits} --a {config.a_bits}):")
    click.echo(f"  weights:     {len(plan.weights)} layers per output channel"
               + (f", first and last at {config.first_last_bits} bits" if edge else ""))
    if plan.tables:
        shapes = ", ".join("x".join(map(str, t.shape)) for t in plan.tables.values())
        click.echo(f"  embeddings:  {len(plan.tables)} tables at {config.embedding_bits} bits per row ({shapes})")
    kinds: Counter[str] = Counter()
    for spec in plan.activations.values():
        if spec.reason.endswith("(activation x activation)"):
            kinds["operands of activation x activation MatMuls"] += 1
        elif spec.reason.startswith("input of"):
            kinds["inputs of weighted layers"] += 1
        elif spec.reason.endswith("(so the runtime fuses it into an integer kernel)"):
            kinds["conv outputs the runtime needs quantized"] += 1
        else:
            kinds["around residual adds"] += 1
    unsigned = sum(spec.nonnegative for spec in plan.activations.values())
    click.echo(f"  activations: {len(plan.activations)} tensors ({unsigned} unsigned): "
               + ", ".join(f"{n} {kind}" for kind, n in kinds.items()))


@cli.command(name="eval")
@_model_arg
@click.option("--data", required=True, type=click.Path(exists=True),
              help="Image folder (one sub-folder per class for accuracy) or .npy/.npz file/folder.")
@click.option("--preset", type=click.Choice(["cifar10", "imagenet", "tf"]), default=None,
              help="Preprocessing preset. [default: none: resized straight to the model's input size (no crop), "
                   "ImageNet mean/std]")
@click.option("--classes", type=click.Path(exists=True, dir_okay=False), default=None,
              help="File with one class (folder) name per line in model output order, e.g. ImageNet synsets.")
@click.option("--mean", type=float, nargs=3, default=None, help="Per-channel mean, 0-255 pixel units.")
@click.option("--std", type=float, nargs=3, default=None, help="Per-channel std, 0-255 pixel units.")
@click.option("--size", "--input-shape", "size", type=int, nargs=2, default=None,
              help="Final image height and width (the input shape for models with dynamic spatial dims).")
@click.option("--resize", type=int, default=None, help="Resize the short side to this before center crop.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Evaluate only the first N samples.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--reference", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A float model to compare MODEL with (MODEL may come from any quantizer): prints float vs "
                   "quantized accuracy (with labels), top-1 agreement, output SQNR and integer-kernel coverage.")
@click.option("--runtime", type=click.Choice(RUNTIMES), default="onnxruntime", show_default=True,
              help="Where MODEL runs: onnxruntime, or OpenVINO's CPU plugin (needs the openvino package; its "
                   "integer kernels are the layers it executed in int8).")
@_text_options
def eval_cmd(model: str, data: str, preset: str | None, classes: str | None,
             mean: tuple[float, float, float] | None, std: tuple[float, float, float] | None,
             size: tuple[int, int] | None, resize: int | None, batch_size: int, limit: int | None,
             device: str, reference: str | None, runtime: str, tokenizer: str | None, max_length: int) -> None:
    """Top-1 / top-5 accuracy of MODEL in ONNX Runtime (or --runtime openvino) on a labeled image folder.

    With --reference FP.onnx: the verification table of MODEL against FP.onnx (any data; accuracy rows
    need class folders).
    """
    from qdrop_onnx.data import input_specs
    from qdrop_onnx.graph.load import load_model
    from qdrop_onnx.verify import evaluate_classification
    from qdrop_onnx.verify.evaluate import output_classes, warn_if_near_chance
    from qdrop_onnx.verify.runtimes import open_session

    options = _data_options(preset, mean, std, size, resize, tokenizer, max_length, data)
    # Validate with the same checks as quantize (checker, readable protobuf), but run the user's file.
    spec = input_specs(load_model(model, simplify=False).model)
    dataset = options.open(data, spec, classes=classes)
    if reference is not None:
        _compare(reference, model, dataset, spec, data, batch_size, limit, device, runtime)
        return
    session = open_session(model, runtime, device=device)
    result = evaluate_classification(session, dataset, spec, batch_size=batch_size, limit=limit)
    warn_if_near_chance(result.top1, output_classes(load_model(model, simplify=False).model), data, who=model)
    click.echo(f"model:  {model}")
    click.echo(f"data:   {data} ({result.count} images)")
    click.echo(f"top-1:  {result.top1:.2f} %")
    click.echo(f"top-5:  {result.top5:.2f} %")
    where = session.get_providers()[0] if runtime == "onnxruntime" else "OpenVINO CPU"
    click.echo(f"time:   {result.seconds:.1f} s ({where})")


def _echo_verification_table(verification: dict[str, Any], coverage: Any,
                             left_in_float: list[dict[str, str]] | None = None) -> None:
    """The float-vs-quantized table that `quantize` and `eval --reference` both print (with `quantize`, the
    weighted ops left in float and why, the first five; the report has them all)."""
    from qdrop_onnx.verify.report import verification_rows

    click.echo(f"  {'':<22} {'float':>10} {'quantized':>10}")
    for metric, ref, q in verification_rows(verification):
        click.echo(f"  {metric:<22} {ref:>10} {q:>10}")
    if coverage is not None:
        click.echo(f"  integer kernels: {coverage.integer} of {coverage.total} weighted ops")
    for row in (left_in_float or [])[:5]:
        click.echo(f"    in float: {row['node']}: {row['reason']}")
    if left_in_float and len(left_in_float) > 5:
        click.echo(f"    ... {len(left_in_float) - 5} more in the report")


def _compare(reference: str, model: str, dataset: Any, spec: Any, data: str, batch_size: int,
             limit: int | None, device: str, runtime: str) -> None:
    from qdrop_onnx.data import input_specs
    from qdrop_onnx.graph.load import load_model
    from qdrop_onnx.verify.compare import compare_models
    from qdrop_onnx.verify.evaluate import output_classes, warn_if_near_chance
    from qdrop_onnx.verify.runtimes import runtime_coverage

    def described(specs: Any) -> str:
        return ", ".join(f"{s.name} {s.dims}" for s in specs)

    ref_spec = input_specs(load_model(reference, simplify=False).model)
    if [(s.name, s.dims[1:]) for s in ref_spec] != [(s.name, s.dims[1:]) for s in spec]:
        raise click.UsageError(f"--reference takes input {described(ref_spec)}, MODEL takes {described(spec)}: "
                               "not the same model")
    result = compare_models(reference, model, dataset, spec, batch_size=batch_size, limit=limit, device=device,
                            runtime=runtime)
    warn_if_near_chance(result.reference_top1, output_classes(load_model(reference, simplify=False).model), data)
    coverage = runtime_coverage(model, runtime)
    click.echo(f"model:      {model} ({_size_mb(model):.2f} MB)")
    click.echo(f"reference:  {reference} ({_size_mb(reference):.2f} MB)")
    click.echo(f"data:       {data} ({result.count} samples)")
    _echo_verification_table({**result.to_dict(), "runtime": runtime}, coverage)


def _data_options(preset: str | None, mean: tuple[float, ...] | None, std: tuple[float, ...] | None,
                  size: tuple[int, int] | None, resize: int | None, tokenizer: str | None, max_length: int,
                  *paths: str | None) -> Any:
    """The DataOptions of the flags; text data among ``paths`` without --tokenizer is a usage error."""
    from qdrop_onnx.api import DataOptions

    text = [p for p in paths if p is not None and Path(p).suffix.lower() == ".txt"]
    if text and tokenizer is None:
        raise click.UsageError(f"text data ({text[0]}) needs --tokenizer tokenizer.json (a Hugging Face tokenizers "
                               "file)")
    return DataOptions(preset=preset, mean=mean, std=std, size=size, resize=resize, tokenizer=tokenizer,
                       max_length=max_length)


def _size_mb(path: str | Path) -> float:
    return Path(path).stat().st_size / 2**20


def _check_writable(folder: Path) -> None:
    """Fail before hours of reconstruction, not after, when the output folder cannot be written."""
    import tempfile

    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".qdrop-onnx-probe-"):
            pass
    except OSError as exc:
        raise click.ClickException(f"cannot write to the output folder {folder}: {exc.strerror or exc}") from None


class GroupedOptionsCommand(click.Command):
    """A command whose ``--help`` lists its options in titled sections (``SECTIONS``), defaults shown."""

    SECTIONS: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        help_option = self.get_help_option(ctx)
        records = {"help" if p is help_option else p.name: p.get_help_record(ctx)
                   for p in self.get_params(ctx) if isinstance(p, click.Option)}
        placed: set[str] = set()
        for title, names in self.SECTIONS:
            rows = [records[n] for n in names if records.get(n)]
            placed.update(names)
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)  # type: ignore[arg-type]
        rest = [r for n, r in records.items() if r and n not in placed]
        if rest:
            with formatter.section("Other options"):
                formatter.write_dl(rest)  # type: ignore[arg-type]


def _parse_layer_rules(param: click.Parameter, values: tuple[str, ...]) -> list[Any]:
    from qdrop_onnx.quant.config import ConfigError, LayerRule

    try:
        return [LayerRule.parse(v) for v in values]
    except ConfigError as exc:
        raise click.BadParameter(str(exc).removeprefix("--layer-bits "), param=param) from None


def _parse_widths(param: click.Parameter, value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        widths = [int(v) for v in value.split(",") if v.strip()]
        if not widths or any(not 2 <= b <= 8 for b in widths):
            raise ValueError
    except ValueError:
        raise click.BadParameter(f"bit widths from 2 to 8 separated by commas (e.g. 2,3,4,8), got {value!r}",
                                 param=param) from None
    return sorted(set(widths))


def _parse_bounds(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[Any, ...]:
    from qdrop_onnx.verify.gate import Bound, GateError

    try:
        return tuple(Bound.parse(v) for v in values)
    except GateError as exc:
        raise click.BadParameter(str(exc).removeprefix("--fail-below "), param=param) from None


class QuantizeCommand(GroupedOptionsCommand):
    SECTIONS = (
        ("Input and output", ("calib", "output", "config_file", "report", "no_report")),
        ("Quantization", ("w_bits", "a_bits", "method", "target", "format", "weight_asymmetric", "quantize_first_last",
                          "float_outputs", "first_last_bits", "residual_bits", "embedding_bits", "exclude", "layers",
                          "act_init", "lp_norm", "reduce_range")),
        ("Mixed precision", ("avg_w_bits", "size_kb", "avg_a_bits", "alloc_widths", "sensitivity_samples",
                             "sensitivity_steps")),
        ("Reconstruction", ("iters", "samples", "calib_act_samples", "batch_size", "drop_prob", "reg_weight",
                            "round_lr", "cache_fp16", "max_cache_gb", "cache_dir", "release_memory", "seed", "device",
                            "checkpoint_dir", "resume")),
        ("Calibration data", ("preset", "mean", "std", "size", "resize", "tokenizer", "max_length")),
        ("Verification", ("eval_data", "classes", "eval_limit", "fail_below")),
        ("Output on the terminal", ("quiet", "json_out", "help")),
    )


class StepsType(click.ParamType):
    """--iters: a positive step count or ``auto``."""

    name = "INTEGER|auto"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int | str:
        if isinstance(value, int) or str(value).strip().lower() != "auto":
            try:
                steps = int(value)
            except ValueError:
                self.fail(f"{value!r} is neither a positive integer nor 'auto'", param, ctx)
            if steps < 1:
                self.fail(f"{steps} is not a positive number of steps", param, ctx)
            return steps
        return "auto"


class BlockProgress:
    """Per-block progress: a tqdm bar (iterations, loss, ETA) on a terminal, a line per finished block.

    Bars only when stderr is a terminal (CI logs stay readable); ``lines=False`` silences the per-block
    lines too (``--quiet``/``--json``). Lines go to stdout, bars to stderr.
    """

    def __init__(self, iters: int, lines: bool, bars: bool) -> None:
        self.iters, self.lines, self.bars = iters, lines, bars
        self._bar: Any = None
        self._block = -1

    def step(self, block: int, step: int, loss: float) -> None:
        if not self.bars:
            return
        if block != self._block:
            self._close()
            from tqdm import tqdm

            self._bar = tqdm(total=self.iters, desc=f"block {block + 1}", unit="it", leave=False,
                             dynamic_ncols=True, file=sys.stderr)
            self._block = block
        self._bar.set_postfix_str(f"loss {loss:.4g}", refresh=False)
        self._bar.update(step - self._bar.n)

    def done(self, record: Any) -> None:
        self._close()
        if self.lines:
            kept = " (learned rounding was worse: kept round-to-nearest)" if record.kept_rtn else ""
            steps = f", {record.iters} steps" if record.iters != self.iters else ""  # --iters auto
            click.echo(f"  block {record.index + 1:>3} {record.kind:<5} {record.name}: loss {record.loss_before:.4g}"
                       f" -> {record.loss_after:.4g} ({record.seconds:.1f} s{steps}){kept}")

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
            self._block = -1


def _sensitivity_progress(lines: bool) -> Any:
    """A line every tenth of the layers while sensitivity is measured (``lines=False``: silent)."""
    def report(done: int, total: int, node: str) -> None:
        if lines and (done == total or done % max(1, total // 10) == 0):
            click.echo(f"  sensitivity: {done}/{total} layers measured")
    return report


def _allocation_summary(allocation: Any) -> dict[str, Any] | None:
    if allocation is None:
        return None
    return {k: v for k, v in allocation.to_dict().items() if k != "sensitivity"}


def _print_summary(result: Any, model: str, verification: Any, report_files: dict[str, Path] | None) -> None:

    config, plan, out = result.config, result.plan, result.output
    w_hist = Counter(spec.bits for spec in plan.weights.values())
    a_hist = Counter(spec.bits for spec in plan.activations.values())
    click.echo(f"wrote {out}")
    click.echo(f"  method {config.method}, target {config.target}, format {config.format}, device {result.device}, "
               f"{result.seconds:.1f} s, "
               f"{result.calibration_samples} calibration samples")
    click.echo("  weights:     " + ", ".join(f"{n} layers at {b} bits" for b, n in sorted(w_hist.items()))
               + (f", {len(plan.excluded)} kept in float" if plan.excluded else ""))
    if plan.tables:
        t_hist = Counter(spec.bits for spec in plan.tables.values())
        click.echo("  embeddings:  " + ", ".join(f"{n} tables at {b} bits" for b, n in sorted(t_hist.items())))
    click.echo("  activations: " + ", ".join(f"{n} tensors at {b} bits" for b, n in sorted(a_hist.items())))
    click.echo(f"  size:        {_size_mb(model):.2f} MB -> {_size_mb(out):.2f} MB")
    alloc = result.allocation
    if alloc is not None:
        parts = []
        if alloc.widths:
            hist = Counter(alloc.widths.values())
            parts.append("weights " + ", ".join(f"{n} at {b}" for b, n in sorted(hist.items()))
                         + f" bits, mean {alloc.average_bits:.2f} bits, {alloc.weight_kb:.1f} kB at their widths")
        if alloc.a_widths:
            hist = Counter(alloc.a_widths.values())
            parts.append("activations " + ", ".join(f"{n} at {b}" for b, n in sorted(hist.items()))
                         + f" bits, mean {alloc.average_a_bits:.2f} bits by elements")
        click.echo(f"  allocation:  {alloc.budget}: " + "; ".join(parts) + f" ({alloc.seconds:.1f} s)")
    if verification is not None:
        cmp = verification.comparison
        where = "ONNX Runtime" if verification.runtime == "onnxruntime" else "OpenVINO"
        click.echo(f"verification in {where} on {cmp.count} samples of {verification.data}:")
        _echo_verification_table(verification.to_dict(), verification.coverage, verification.left_in_float)
    if report_files:
        click.echo("report: " + ", ".join(str(p) for p in report_files.values()))


@cli.command(cls=QuantizeCommand)
@_model_arg
@click.option("--calib", required=True, type=click.Path(exists=True),
              help="Calibration data: image folder (labels not needed), .npy/.npz file/folder (one array per "
                   "model input), or .txt sentences with --tokenizer.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Output file. [default: <model stem>.w{W}a{A}.onnx beside the model]")
@click.option("--w", "w_bits", type=click.IntRange(2, 8), default=None,
              help="Weight bits (2-8). [default: 4, or the --target's: 8 for tensorrt]")
@click.option("--a", "a_bits", type=click.IntRange(2, 8), default=None,
              help="Activation bits (2-8). [default: 4, or the --target's: 8 for tensorrt, openvino, qnn]")
@click.option("--method", type=click.Choice(["rtn", "adaround", "brecq", "qdrop"]), default=None,
              help="rtn: round-to-nearest after the range search; adaround: learned rounding layer by layer; "
                   "brecq: block reconstruction of weights; qdrop: block reconstruction with activations "
                   "quantized and randomly dropped. [default: qdrop]")
@click.option("--iters", type=StepsType(), default=None,
              help="Reconstruction steps per block (20000 is the paper's budget), or 'auto': each block stops "
                   "its warm-up when the loss has not improved by 0.1 % over 50 steps and anneals over four times "
                   "that, at most 2000 steps. [default: 2000]")
@click.option("--drop-prob", type=click.FloatRange(0, 1), default=None,
              help="QDrop: probability an activation element stays float during reconstruction; 0 = always "
                   "quantized. [default: 0.5]")
@click.option("--reg-weight", type=click.FloatRange(min=0), default=None,
              help="Rounding regulariser weight. [default: 0.01, or 0.1 for models with depthwise convs]")
@click.option("--round-lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Adam learning rate of the rounding variables. [default: 20 / --iters, within 0.001-0.1]")
@click.option("--cache-fp16", is_flag=True, default=None,
              help="Keep cached block inputs/outputs in float16 (half the memory).")
@click.option("--max-cache-gb", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Memory budget for cached block tensors: past it they go to temporary files (read a batch "
                   "at a time, removed on exit; same result). [default: half the machine's memory]")
@click.option("--release-memory", is_flag=True, default=None,
              help="Hand freed memory back to the system at once (glibc's defaults) instead of keeping it for the "
                   "next step: a lower peak RSS (EfficientNet-Lite0, 1024 samples, --max-cache-gb 2: 3.8 GB, not "
                   "6.3), 1.5x slower on CPU, the same file. On Linux glibc the command restarts itself once "
                   "with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (huge pages; 2.4x slower without).")
@click.option("--cache-dir", type=click.Path(exists=True, file_okay=False, writable=True), default=None,
              help="Folder for the cache files past --max-cache-gb. [default: the system's temporary folder, "
                   "TMPDIR]")
@click.option("--target", type=click.Choice(list(TARGETS)), default=None,
              help="The runtime the file is for; it decides the grids: "
                   + "; ".join(f"{name}: {p.runtime}, {'signed symmetric' if p.act_signed else 'unsigned'} A"
                               f"{'/'.join(map(str, p.act_bits)) if len(p.act_bits) < 3 else '2-8'}, W"
                               f"{'/'.join(map(str, p.w_bits)) if len(p.w_bits) < 3 else '2-8'}"
                               f"{'' if p.int32_bias else ', float bias'}"
                               for name, p in TARGETS.items())
                   + ". A setting it cannot run is refused (exit 2). [default: ort_cpu]")
@click.option("--format", "format", type=click.Choice(["int8", "native"]), default=None,
              help="int8: b-bit grids in 8-bit containers (integer kernels in ORT); native: INT4/INT2 types. "
                   "[default: the target's: int8; native for qnn]")
@click.option("--weight-asymmetric", is_flag=True, default=None, help="Asymmetric per-channel weights (the paper's).")
@click.option("--quantize-first-last", is_flag=True, default=None,
              help="Quantize the first and last weighted layers at --w/--a too (default: 8-bit).")
@click.option("--float-outputs", is_flag=True, default=None,
              help="Keep the model's outputs off any quantizer: a conv that writes one (a detector's or segmenter's "
                   "map) then runs in float. Default: where the target fuses a conv only with a quantizer on its "
                   "output (ort_cpu), an output conv gets an 8-bit one, as every other conv does.")
@click.option("--first-last-bits", type=click.IntRange(2, 8), default=None,
              help="Bits of the first and last weighted layers (weights and input) unless --quantize-first-last. "
                   "[default: 8]")
@click.option("--residual-bits", type=click.IntRange(2, 8), default=None,
              help="Bits of a conv output that feeds a residual Add (lets runtimes fuse integer convs/adds). "
                   "[default: 8]")
@click.option("--embedding-bits", type=click.IntRange(2, 8), default=None,
              help="Bits of embedding tables (Gather from a constant table: word, position, token type), per row, "
                   "round to nearest. [default: 8]")
@click.option("--exclude", multiple=True, help="Keep this weighted node in float (repeatable; see `inspect`).")
@click.option("--layer-bits", "layers", multiple=True, callback=lambda ctx, param, v: _parse_layer_rules(param, v),
              metavar="PATTERN=W[:A]",
              help="Bits of the weighted layers whose node name matches PATTERN (a name or a glob such as "
                   "'*conv*'): weights W, input activations A; repeatable, after the config file's `layers` "
                   "rules; the later of two disagreeing rules wins (a warning names them).")
@click.option("--avg-w-bits", type=float, default=None,
              help="Mixed precision: pick each layer's weight width (from --alloc-widths) to minimise the summed "
                   "sensitivity (see `sensitivity`) with this parameter-weighted mean width over the layers --w "
                   "would set (not first/last or --layer-bits ones); e.g. 3.0.")
@click.option("--size-kb", type=float, default=None,
              help="Mixed precision under a size budget instead: every quantized layer's weights at their widths, "
                   "params x bits / 8000.")
@click.option("--avg-a-bits", type=float, default=None,
              help="Mixed activations: pick the width of each quantized layer's input (from --alloc-widths) to "
                   "minimise the summed sensitivity with this mean width, weighted by elements per sample (the "
                   "bytes moved), over the inputs --a would set; alone or with --avg-w-bits/--size-kb; e.g. 4.0.")
@click.option("--alloc-widths", callback=lambda ctx, param, v: _parse_widths(param, v), default=None,
              metavar="B,B,...", help="Widths mixed precision picks from (weights and activations). "
                                      "[default: 2,3,4,8]")
@click.option("--sensitivity-samples", type=click.IntRange(min=1), default=None,
              help="Calibration samples the sensitivity of each layer is measured on. [default: 128]")
@click.option("--sensitivity-steps", type=click.IntRange(min=0), default=None,
              help="Steps of learned rounding per layer and width in the sensitivity (0: round to nearest). "
                   "[default: 0 for --method rtn, else 200: the run's own rounding]")
@click.option("--act-init", type=click.Choice(["minmax", "percentile", "mse"]), default=None,
              help="Activation range initialisation. [default: mse]")
@click.option("--lp-norm", type=click.FloatRange(min=0, min_open=True), default=None,
              help="p of the ||W - Q(W)||_p clipping search for weight scales. [default: 2.4]")
@click.option("--reduce-range/--no-reduce-range", default=None,
              help="7-bit weights for 8-bit layers: exact in ORT's int8 kernels on CPUs without VNNI. "
                   "[default: the target's; off for every target here]")
@click.option("--samples", type=click.IntRange(min=1), default=None, help="Calibration samples to use. [default: 1024]")
@click.option("--calib-act-samples", type=click.IntRange(min=1), default=None,
              help="Calibration samples that initialise the activation ranges (at most --samples). [default: 256]")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="[default: 32]")
@click.option("--seed", type=int, default=None, help="[default: 0]")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="TOML/YAML/JSON file with quantization and reconstruction settings: keys are the long flag "
                   "names of the Quantization and Reconstruction sections with underscores (w_bits for --w, "
                   "a_bits for --a, drop_prob); not --device, --checkpoint or --resume. Flags given override it.")
@_image_options
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Where reconstruction runs (auto: CUDA when torch sees a GPU).")
@click.option("--eval", "eval_data", type=click.Path(exists=True), default=None,
              help="Verify on this data (class folders give FP vs quantized accuracy). [default: calibration "
                   "samples not used for calibration]")
@click.option("--classes", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Class names file for --eval (see `eval --help`).")
@click.option("--fail-below", multiple=True, callback=_parse_bounds, metavar="METRIC=VALUE",
              help="Exit 3 (file and report still written) when the verification misses this bound; repeatable. "
                   "METRIC: top1, top1-drop (at most VALUE points), agreement (%), cosine, cosine-min, "
                   "pixel-agreement (%), iou (%), sqnr (dB); "
                   "e.g. --fail-below top1-drop=1.0 --fail-below agreement=99.")
@click.option("--eval-limit", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Verify on at most this many samples.")
@click.option("--checkpoint", "checkpoint_dir", type=click.Path(file_okay=False), default=None,
              help="Save what reconstruction learned to this folder after every block, and keep it. "
                   "[default: .<output name>.checkpoint beside the output, removed once the file is written]")
@click.option("--resume", is_flag=True,
              help="Continue from the blocks the checkpoint folder holds (the same run, interrupted or failed); "
                   "the file is the same as an uninterrupted run's.")
@click.option("--report", type=click.Path(dir_okay=False), default=None,
              help="Report base path: writes PATH.json, PATH.md and PATH.png. [default: <output stem>.report]")
@click.option("--no-report", is_flag=True, help="Write no report files (the summary still prints).")
@click.option("-q", "--quiet", is_flag=True, help="Print only the final summary.")
@click.option("--json", "json_out", is_flag=True,
              help="Print one JSON summary on stdout (nothing else there), for CI pipelines.")
@_text_options
def quantize(model: str, calib: str, output: str | None, config_file: str | None, preset: str | None,
             mean: tuple[float, float, float] | None, std: tuple[float, float, float] | None,
             size: tuple[int, int] | None, resize: int | None, device: str, eval_data: str | None,
             classes: str | None, eval_limit: int, checkpoint_dir: str | None, resume: bool, report: str | None,
             no_report: bool, quiet: bool, json_out: bool, tokenizer: str | None, max_length: int,
             fail_below: tuple[Any, ...], **flags: Any) -> int:
    """Quantize MODEL to a QDQ ONNX file using unlabeled calibration data, verify it, write a report.

    \b
    Prints a line per reconstructed block (a progress bar too on a terminal), then a summary with the
    float-vs-quantized verification table. Writes OUTPUT, OUTPUT's report (.json, .md, .png) and never
    touches MODEL. Exit codes: 0 done, 1 failure (one line on stderr), 2 usage error, 3 a --fail-below
    bound missed (file and report written).
    """
    import json
    import shutil

    from qdrop_onnx.api import (
        CheckpointOptions,
        build_report,
        default_checkpoint,
        default_output,
        verify,
    )
    from qdrop_onnx.api import quantize as run_quantize
    from qdrop_onnx.quant.config import QuantConfig, read_config_file
    from qdrop_onnx.recon.allocator import restart_with_huge_pages
    from qdrop_onnx.recon.checkpoint import CHECKPOINT_FILE, CheckpointError
    from qdrop_onnx.recon.policy import AUTO_MAX_ITERS
    from qdrop_onnx.targets import TargetError
    from qdrop_onnx.verify.gate import GateError
    from qdrop_onnx.verify.report import json_safe, report_paths, write_report

    settings = read_config_file(config_file) if config_file else {}
    flags["exclude"] = list(flags["exclude"]) or None
    # Per-layer rules add up: the config file's first, then --layer-bits (later rules win).
    flags["layers"] = [*settings.get("layers", []), *flags["layers"]] or None
    settings.update({k: v for k, v in flags.items() if v is not None})
    try:
        config = QuantConfig.from_dict(settings, source=config_file or "flags").validate()
    except TargetError as exc:
        raise click.UsageError(str(exc)) from None
    if config.release_memory:
        restart_with_huge_pages()  # returns at once in the restarted process (or off glibc)
    out = Path(output) if output else default_output(model, config)
    if out.resolve() == Path(model).resolve():
        raise click.UsageError("--output is the input model; choose another path (the input is never overwritten)")
    if not out.parent.is_dir():
        raise click.UsageError(f"--output folder {out.parent} does not exist")
    _check_writable(out.parent)
    # Reconstruction always checkpoints after every block: by default into a folder beside the output,
    # removed once the file is written, so a crash or an interrupt never loses the finished blocks.
    checkpoint = CheckpointOptions(Path(checkpoint_dir) if checkpoint_dir else default_checkpoint(out), resume)
    if checkpoint_dir is None and not resume:
        shutil.rmtree(checkpoint.directory, ignore_errors=True)  # an earlier failed run's, not this one's
    report_base = None if no_report else Path(report) if report else out.with_name(out.stem + ".report")
    if report_base is not None and Path(model).resolve() in {p.resolve() for p in report_paths(report_base).values()}:
        raise click.UsageError("--report would overwrite the input model")
    if report_base is not None and not report_base.parent.is_dir():
        raise click.UsageError(f"--report folder {report_base.parent} does not exist")
    if report_base is not None and report_base.parent.resolve() != out.parent.resolve():
        _check_writable(report_base.parent)

    if fail_below:
        import onnx

        from qdrop_onnx.verify.compare import model_output_kind

        kind = model_output_kind(onnx.load(model, load_external_data=False))
        try:
            for bound in fail_below:
                bound.check_kind(kind)
        except GateError as exc:
            raise click.UsageError(str(exc)) from None
    data = _data_options(preset, mean, std, size, resize, tokenizer, max_length, calib, eval_data)
    steps = AUTO_MAX_ITERS if config.iters == "auto" else int(config.iters)
    progress = BlockProgress(steps, lines=not (quiet or json_out),
                             bars=not (quiet or json_out) and sys.stderr.isatty() and sys.stdout.isatty())
    saved = Path(checkpoint.directory) / CHECKPOINT_FILE
    before = saved.stat().st_mtime_ns if saved.exists() else None
    try:
        result = run_quantize(model, calib, config, out, data=data, device=device, progress=progress.step,
                              on_block=progress.done, checkpoint=checkpoint,
                              allocation_progress=_sensitivity_progress(not (quiet or json_out)))
    except BaseException as exc:
        # Only a checkpoint this run wrote (or resumed from) holds its blocks, not another run's.
        ours = saved.exists() and (saved.stat().st_mtime_ns != before
                                   or (resume and not isinstance(exc, CheckpointError)))
        if ours:
            exc.add_note(f"the blocks finished so far are kept in {checkpoint.directory}: run the same command "
                         "with --resume to continue")
        raise
    if checkpoint_dir is None:
        shutil.rmtree(checkpoint.directory, ignore_errors=True)
    verification = verify(result, model, eval_data, data=data, classes=classes, limit=eval_limit)
    try:
        misses = [line for bound in fail_below if (line := bound.missed(verification.comparison))]
    except GateError as exc:
        raise click.UsageError(str(exc)) from None
    files = None
    if report_base is not None:
        files = write_report(build_report(result, model, verification), report_base)
    if json_out:
        cov = verification.coverage
        summary = {"output": str(out), "report": {k: str(v) for k, v in files.items()} if files else None,
                   "method": config.method, "target": config.target, "w_bits": config.w_bits, "a_bits": config.a_bits,
                   "format": config.format, "device": result.device, "seconds": round(result.seconds, 3),
                   "calibration_samples": result.calibration_samples, "blocks": len(result.blocks),
                   "input_bytes": Path(model).stat().st_size, "output_bytes": out.stat().st_size,
                   "verification": verification.to_dict(),
                   "coverage": {"integer": cov.integer, "float": cov.float,
                                "left_in_float": verification.left_in_float} if cov else None,
                   "gate_missed": misses,
                   "allocation": _allocation_summary(result.allocation)}
        click.echo(json.dumps(json_safe(summary), indent=2))
    else:
        _print_summary(result, model, verification, files)
    for line in misses:
        click.echo(f"qdrop-onnx: {line}", err=True)
    return EXIT_GATE if misses else 0



def main() -> None:
    """Console-script entry point."""
    cli.main(prog_name="qdrop-onnx")


if __name__ == "__main__":
    main()
