"""``qdrop-onnx`` command line. Thin: parse flags, call the library, print.

Exit codes: 0 success; 1 the input could not be processed (bad model, unsupported ops, bad data — one
line on stderr starting with ``qdrop-onnx: error:``); 2 usage error (bad flag, missing path).
"""

from __future__ import annotations

import logging
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import click

from qdrop_onnx.errors import QdropError, UnsupportedModelError

EXIT_FAILURE = 1
EXIT_USAGE = 2


def _fail(message: str, code: int) -> None:
    click.echo(f"qdrop-onnx: error: {message}", err=True)
    sys.exit(code)


class OneLineErrors(click.Group):
    """A click group whose errors are one line on stderr (exit 2 for usage, 1 for failures)."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        try:
            rv = super().main(args, prog_name or "qdrop-onnx", complete_var, standalone_mode=False, **extra)
        except click.UsageError as exc:
            _fail(exc.format_message(), EXIT_USAGE)
        except click.ClickException as exc:
            _fail(exc.format_message(), EXIT_FAILURE)
        except click.Abort:
            _fail("aborted", 130)
        except QdropError as exc:
            _fail(str(exc), EXIT_FAILURE)
        if standalone_mode:
            sys.exit(rv if isinstance(rv, int) else 0)
        return rv


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
    Exit codes: 0 success, 1 failure (bad model or data; one line on stderr), 2 usage error.
    """
    _setup_logging()


_model_arg = click.argument("model", type=click.Path(exists=True, dir_okay=False))


@cli.command()
@_model_arg
@click.option("--max-block-weights", default=8, show_default=True,
              help="Split a region with more weighted layers than this into several blocks.")
def inspect(model: str, max_block_weights: int) -> None:
    """Show a model's ops, weighted layers, reconstruction blocks and unsupported ops."""
    from qdrop_onnx.graph import load_model, lower, partition

    loaded = load_model(model)
    proto = loaded.model
    ops = Counter(n.op_type for n in proto.graph.node)
    click.echo(f"model: {model}  (opset {loaded.opset}, {len(proto.graph.node)} nodes after cleaning)")
    steps = [f"{loaded.folded_batchnorms} BatchNormalization folded into Conv"]
    steps.append("simplified with onnxsim" if loaded.simplified else "not simplified")
    click.echo("cleaning: " + ", ".join(steps))
    for value in proto.graph.input:
        dims = [d.dim_param or str(d.dim_value) for d in value.type.tensor_type.shape.dim]
        click.echo(f"input:  {value.name} [{', '.join(dims)}]")
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
    click.echo("\nunsupported ops: none")


@cli.command(name="eval")
@_model_arg
@click.option("--data", required=True, type=click.Path(exists=True),
              help="Image folder (one sub-folder per class for accuracy) or .npy/.npz file/folder.")
@click.option("--preset", type=click.Choice(["cifar10", "imagenet", "tf"]), default=None,
              help="Preprocessing preset. [default: imagenet geometry at the model's input size]")
@click.option("--classes", type=click.Path(exists=True, dir_okay=False), default=None,
              help="File with one class (folder) name per line in model output order, e.g. ImageNet synsets.")
@click.option("--mean", type=float, nargs=3, default=None, help="Per-channel mean, 0-255 pixel units.")
@click.option("--std", type=float, nargs=3, default=None, help="Per-channel std, 0-255 pixel units.")
@click.option("--size", type=int, nargs=2, default=None, help="Final image height and width.")
@click.option("--resize", type=int, default=None, help="Resize the short side to this before center crop.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Evaluate only the first N samples.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
def eval_cmd(model: str, data: str, preset: str | None, classes: str | None,
             mean: tuple[float, float, float] | None, std: tuple[float, float, float] | None,
             size: tuple[int, int] | None, resize: int | None, batch_size: int, limit: int | None,
             device: str) -> None:
    """Top-1 / top-5 accuracy of MODEL in ONNX Runtime on a labeled image folder."""
    from qdrop_onnx.data import input_spec, open_dataset
    from qdrop_onnx.graph.load import load_model
    from qdrop_onnx.verify import evaluate_classification, make_session

    # Validate with the same checks as quantize (checker, readable protobuf), but run the user's file.
    spec = input_spec(load_model(model, simplify=False).model)
    dataset = open_dataset(data, spec, preset=preset, mean=mean, std=std, size=size, resize=resize,
                           classes=classes)
    session = make_session(model, device=device)
    result = evaluate_classification(session, dataset, spec, batch_size=batch_size, limit=limit)
    click.echo(f"model:  {model}")
    click.echo(f"data:   {data} ({result.count} images)")
    click.echo(f"top-1:  {result.top1:.2f} %")
    click.echo(f"top-5:  {result.top5:.2f} %")
    click.echo(f"time:   {result.seconds:.1f} s ({session.get_providers()[0]})")


def _data_options(preset: str | None, mean: tuple[float, ...] | None, std: tuple[float, ...] | None,
                  size: tuple[int, int] | None, resize: int | None) -> Any:
    from qdrop_onnx.api import DataOptions

    return DataOptions(preset=preset, mean=mean, std=std, size=size, resize=resize)


def _size_mb(path: str | Path) -> float:
    return Path(path).stat().st_size / 2**20


@cli.command()
@_model_arg
@click.option("--calib", required=True, type=click.Path(exists=True),
              help="Calibration data: image folder (labels not needed) or .npy/.npz file/folder.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Output file. [default: <model stem>.w{W}a{A}.onnx beside the model]")
@click.option("--w", "w_bits", type=click.IntRange(2, 8), default=None, help="Weight bits (2-8). [default: 4]")
@click.option("--a", "a_bits", type=click.IntRange(2, 8), default=None, help="Activation bits (2-8). [default: 4]")
@click.option("--method", type=click.Choice(["rtn", "adaround", "brecq", "qdrop"]), default=None,
              help="rtn: round-to-nearest after the range search; adaround: learned rounding layer by layer; "
                   "brecq: block reconstruction of weights; qdrop: block reconstruction with activations "
                   "quantized and randomly dropped. [default: qdrop]")
@click.option("--iters", type=click.IntRange(min=1), default=None,
              help="Reconstruction steps per block (20000 is the paper's budget). [default: 2000]")
@click.option("--drop-prob", type=click.FloatRange(0, 1), default=None,
              help="QDrop: probability an activation element stays float during reconstruction; 0 = always "
                   "quantized. [default: 0.5]")
@click.option("--reg-weight", type=click.FloatRange(min=0), default=None,
              help="Rounding regulariser weight. [default: 0.01, or 0.1 for models with depthwise convs]")
@click.option("--cache-fp16", is_flag=True, default=None,
              help="Keep cached block inputs/outputs in float16 (half the memory).")
@click.option("--format", "format", type=click.Choice(["int8", "native"]), default=None,
              help="int8: b-bit grids in 8-bit containers (integer kernels in ORT); native: INT4/INT2 types. "
                   "[default: int8]")
@click.option("--weight-asymmetric", is_flag=True, default=None, help="Asymmetric per-channel weights (the paper's).")
@click.option("--quantize-first-last", is_flag=True, default=None,
              help="Quantize the first and last weighted layers at --w/--a too (default: 8-bit).")
@click.option("--residual-bits", type=click.IntRange(2, 8), default=None,
              help="Bits of a conv output that feeds a residual Add (lets runtimes fuse integer convs/adds). "
                   "[default: 8]")
@click.option("--exclude", multiple=True, help="Keep this weighted node in float (repeatable; see `inspect`).")
@click.option("--act-init", type=click.Choice(["minmax", "percentile", "mse"]), default=None,
              help="Activation range initialisation. [default: mse]")
@click.option("--reduce-range", is_flag=True, default=None,
              help="7-bit weights for 8-bit layers: exact in ORT's int8 kernels on CPUs without VNNI.")
@click.option("--samples", type=click.IntRange(min=1), default=None, help="Calibration samples to use. [default: 1024]")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="[default: 32]")
@click.option("--seed", type=int, default=None, help="[default: 0]")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="TOML/YAML/JSON file with any of the settings above; flags override it.")
@click.option("--preset", type=click.Choice(["cifar10", "imagenet", "tf"]), default=None,
              help="Image preprocessing preset (see `eval --help`).")
@click.option("--mean", type=float, nargs=3, default=None, help="Per-channel mean, 0-255 pixel units.")
@click.option("--std", type=float, nargs=3, default=None, help="Per-channel std, 0-255 pixel units.")
@click.option("--size", type=int, nargs=2, default=None, help="Final image height and width.")
@click.option("--resize", type=int, default=None, help="Resize the short side to this before center crop.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
def quantize(model: str, calib: str, output: str | None, config_file: str | None, preset: str | None,
             mean: tuple[float, float, float] | None, std: tuple[float, float, float] | None,
             size: tuple[int, int] | None, resize: int | None, device: str, **flags: Any) -> None:
    """Quantize MODEL to a QDQ ONNX file using unlabeled calibration data.

    Every setting can also come from --config FILE (keys as the flag names); flags given override it.
    """
    from qdrop_onnx.api import default_output
    from qdrop_onnx.api import quantize as run_quantize
    from qdrop_onnx.quant.config import QuantConfig, read_config_file

    settings = read_config_file(config_file) if config_file else {}
    flags["exclude"] = list(flags["exclude"]) or None
    settings.update({k: v for k, v in flags.items() if v is not None})
    config = QuantConfig.from_dict(settings, source=config_file or "flags").validate()
    out = Path(output) if output else default_output(model, config)
    if out.resolve() == Path(model).resolve():
        raise click.UsageError("--output is the input model; choose another path (the input is never overwritten)")
    if not out.parent.is_dir():
        raise click.UsageError(f"--output folder {out.parent} does not exist")
    def block_done(record: Any) -> None:
        click.echo(f"  block {record.index + 1:>3} {record.kind:<5} {record.name}: loss {record.loss_before:.4g} -> "
                   f"{record.loss_after:.4g} ({record.seconds:.1f} s)")

    result = run_quantize(model, calib, config, out, data=_data_options(preset, mean, std, size, resize),
                          device=device, on_block=block_done)
    plan = result.plan
    w_hist = Counter(spec.bits for spec in plan.weights.values())
    a_hist = Counter(spec.bits for spec in plan.activations.values())
    click.echo(f"wrote {out}")
    click.echo(f"  method {config.method}, format {config.format}, {result.seconds:.1f} s, "
               f"{result.calibration_samples} calibration samples")
    click.echo("  weights:     " + ", ".join(f"{n} layers at {b} bits" for b, n in sorted(w_hist.items()))
               + (f", {len(plan.excluded)} kept in float" if plan.excluded else ""))
    click.echo("  activations: " + ", ".join(f"{n} tensors at {b} bits" for b, n in sorted(a_hist.items())))
    click.echo(f"  size:        {_size_mb(model):.2f} MB -> {_size_mb(out):.2f} MB")


def main() -> None:
    """Console-script entry point."""
    cli.main(prog_name="qdrop-onnx")


if __name__ == "__main__":
    main()
