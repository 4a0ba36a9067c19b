"""Write learned quantization into the clean ONNX graph as QuantizeLinear/DequantizeLinear nodes.

Weights become an integer initializer + DequantizeLinear (per output channel); embedding tables an int8
table whose looked-up rows are scaled by their own step (see ``_table_nodes``); Conv/Gemm biases an int32
initializer + DequantizeLinear where the plan quantized them; each quantized activation gets
QuantizeLinear → DequantizeLinear right after it is produced, and every consumer reads the dequantized
tensor. The result computes exactly what the torch fake-quant simulation computes. Files are written to a
temporary name and renamed, so an interrupted run never leaves half a file.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qdrop_onnx.errors import QdropError, first_line
from qdrop_onnx.export.encoding import Container, activation_container, int_tensor, weight_container
from qdrop_onnx.graph.ops import clip_bounds, traits_for
from qdrop_onnx.graph.proto import default_opset, drop_unused_initializers
from qdrop_onnx.params import ActivationParams, QuantParams, TableParams, WeightParams
from qdrop_onnx.targets.profile import TargetProfile

INT32 = Container(TensorProto.INT32, 32, 13)


@dataclass(frozen=True)
class ClipBounds:
    """A constant Clip (e.g. ReLU6) whose output is quantized: its node, its input and its range."""

    node: str
    source: str
    low: float
    high: float


class ExportError(QdropError):
    """The quantized model cannot be written (opset conversion failed, output not writable...)."""


def _float(name: str, value: np.ndarray | float) -> TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


def _weight_nodes(wp: WeightParams, fmt: str) -> tuple[list[TensorProto], list[onnx.NodeProto], str, str | None]:
    container = weight_container(wp.bits, fmt)
    prefix = wp.node
    inits = [int_tensor(f"{prefix}/weight_quantized", wp.values, container),
             _float(f"{prefix}/weight_scale", wp.scale),
             int_tensor(f"{prefix}/weight_zero_point", wp.zero_point, container)]
    nodes = [helper.make_node("DequantizeLinear", [t.name for t in inits], [f"{prefix}/weight_dequantized"],
                              name=f"{prefix}/weight_DequantizeLinear", axis=wp.axis)]
    bias_out = None
    if wp.bias_values is not None:
        bias_inits = [int_tensor(f"{prefix}/bias_quantized", wp.bias_values, INT32),
                      _float(f"{prefix}/bias_scale", wp.bias_scale),
                      int_tensor(f"{prefix}/bias_zero_point", np.zeros_like(wp.bias_values), INT32)]
        inits += bias_inits
        bias_out = f"{prefix}/bias_dequantized"
        nodes.append(helper.make_node("DequantizeLinear", [t.name for t in bias_inits], [bias_out],
                                      name=f"{prefix}/bias_DequantizeLinear", axis=0))
    return inits, nodes, f"{prefix}/weight_dequantized", bias_out


def _table_nodes(tp: TableParams, gather: onnx.NodeProto) -> tuple[list[TensorProto], list[onnx.NodeProto]]:
    """``gather`` on the int8 table, its rows times their per-row steps: Gather -> Cast, Gather(steps) -> Mul.

    The same values as DequantizeLinear(axis=0) -> Gather, but only the looked-up rows are dequantized:
    written as DequantizeLinear -> Gather, ONNX Runtime dequantizes the whole 30k-row word table on every
    run, which made MiniLM at batch 1 as slow as float (measured: 0.96x float latency).
    """
    prefix, ids, out = tp.node, gather.input[1], gather.output[0]
    inits = [int_tensor(f"{prefix}/table_quantized", tp.values, weight_container(8, "int8")),
             _float(f"{prefix}/row_scale", tp.scale.reshape(-1, 1))]
    nodes = [helper.make_node("Gather", [inits[0].name, ids], [f"{prefix}/rows_quantized"], name=f"{prefix}", axis=0),
             helper.make_node("Cast", [f"{prefix}/rows_quantized"], [f"{prefix}/rows_cast"], name=f"{prefix}/Cast",
                              to=TensorProto.FLOAT),
             helper.make_node("Gather", [inits[1].name, ids], [f"{prefix}/rows_scale"], name=f"{prefix}/scale_Gather",
                              axis=0),
             helper.make_node("Mul", [f"{prefix}/rows_cast", f"{prefix}/rows_scale"], [out], name=f"{prefix}/Mul")]
    return inits, nodes


def activation_output(ap: ActivationParams, fmt: str) -> str:
    """The name consumers of ``ap.tensor`` read after export (its dequantized value)."""
    return f"{ap.tensor}/dequantized"


def _grid_range(ap: ActivationParams) -> tuple[np.float32, np.float32]:
    """The smallest and largest value of ``ap``'s b-bit grid (both grid points)."""
    lo = np.float32(np.float32(ap.grid.qmin - ap.zero_point) * ap.scale)
    hi = np.float32(np.float32(ap.grid.qmax - ap.zero_point) * ap.scale)
    return lo, hi


def _code(value: float, ap: ActivationParams) -> int:
    """The grid code QuantizeLinear gives ``value`` (round half to even of value / scale, in float32)."""
    if np.isinf(value):
        return ap.grid.qmin if value < 0 else ap.grid.qmax
    code = np.rint(np.float32(value) / np.float32(ap.scale)) + ap.zero_point
    return int(np.clip(code, ap.grid.qmin, ap.grid.qmax))


def _activation_nodes(ap: ActivationParams, fmt: str, clip: ClipBounds | None = None, source: str | None = None,
                      ) -> tuple[list[TensorProto], list[onnx.NodeProto], str]:
    """Q → DQ (Q → Clip → DQ for a b-bit grid in a wider container) for ``ap``, reading ``source`` (default
    ``ap.tensor``; ``ap.tensor`` names the nodes).

    The grid's saturation is a Clip on the integer codes, between Q and DQ: exact (Q saturates at the
    container, the Clip at the grid), and ONNX Runtime keeps its fusions on each side (DQ → Conv → Q) where a
    float Clip between a DQ and a second Q cost two more float passes over the tensor (a MobileNetV3-style
    net at W4A4 ran 1.57x its float time at batch 32 with them, 1.02x without).
    With ``clip`` (the Clip that produced ``ap.tensor``, see ``_absorbable_clip``) the Q reads the Clip's
    input and the grid's own saturation applies the Clip's range: the same values, without a float Clip
    between the producer and its Q (Q is monotone, so Q(clip(x, a, b)) = clip(Q(x), Q(a), Q(b))).
    """
    container = activation_container(ap.bits, fmt, ap.signed)
    t = ap.tensor
    scale, zp = f"{t}/scale", f"{t}/zero_point"
    inits = [_float(scale, ap.scale), int_tensor(zp, np.asarray(ap.zero_point), container)]
    source = clip.source if clip is not None else (source or t)
    codes = f"{t}/quantized"
    nodes = [helper.make_node("QuantizeLinear", [source, scale, zp], [codes], name=f"{t}/QuantizeLinear")]
    if ap.bits < container.bits:
        low, high = ap.grid.qmin, ap.grid.qmax
        if clip is not None:
            low, high = max(low, _code(clip.low, ap)), min(high, _code(clip.high, ap))
        inits += [int_tensor(f"{t}/grid_min", np.asarray(low), container),
                  int_tensor(f"{t}/grid_max", np.asarray(high), container)]
        nodes.append(helper.make_node("Clip", [codes, f"{t}/grid_min", f"{t}/grid_max"], [f"{t}/grid_codes"],
                                      name=f"{t}/Clip"))
        codes = f"{t}/grid_codes"
    nodes.append(helper.make_node("DequantizeLinear", [codes, scale, zp], [f"{t}/dequantized"],
                                  name=f"{t}/DequantizeLinear"))
    return inits, nodes, activation_output(ap, fmt)


def _absorbable_clip(clip: onnx.NodeProto, ap: ActivationParams, fmt: str, constants: dict[str, TensorProto],
                     quantized: set[str], outputs: set[str]) -> ClipBounds | None:
    """``clip`` (the node producing ``ap.tensor``) if ``ap``'s quantizer can apply its range itself.

    Why: ORT drops a Clip before a QuantizeLinear only when the Q's *container* range (0..255 here) lies
    inside the Clip's, which a 4-bit grid in an 8-bit container never does; the Clip then sits between a
    Conv and its Q and the Conv runs in float (EfficientNet-Lite's ReLU6 at W4A4: 17 of 50 integer
    kernels). A grid Clip takes over any constant range; a native INT4/INT2 Q, which saturates at its
    grid, only a range that holds the whole grid. Not when the Clip's input is itself quantized or its
    output is a graph output.
    """
    if len(clip.input) < 2 or clip.input[0] in quantized or ap.tensor in outputs:
        return None
    bounds = clip_bounds(clip.input, lambda name: numpy_helper.to_array(constants[name]) if name in constants
                         else None)
    if bounds is None:
        return None
    low, high = bounds
    lo, hi = _grid_range(ap)
    grid_clip = ap.bits < activation_container(ap.bits, fmt, ap.signed).bits
    if grid_clip or (ap.bits < 8 and low <= lo and hi <= high):
        return ClipBounds(clip.name, clip.input[0], low, high)
    return None


def _min_max(clip: onnx.NodeProto) -> list[onnx.NodeProto]:
    """``clip`` as Max then Min: the same values, in ops ORT 1.32 does not fold into a following Q.

    ORT's Clip→QuantizeLinear fusion fails to load a model whose Q has an INT4/UINT4/INT2/UINT2 zero point
    ("Unexpected data type for QuantizeLinear input y_zero_point"), so a Clip must not feed such a Q.
    """
    x, nodes = clip.input[0], []
    for op, bound in (("Max", clip.input[1]), ("Min", clip.input[2] if len(clip.input) > 2 else "")):
        if bound:
            nodes.append(helper.make_node(op, [x, bound], [f"{clip.name}/{op}"], name=f"{clip.name}/{op}"))
            x = nodes[-1].output[0]
    if nodes:
        nodes[-1].output[0] = clip.output[0]
    else:
        nodes.append(helper.make_node("Identity", [x], [clip.output[0]], name=clip.name))
    return nodes


def _required_opset(params: QuantParams, fmt: str) -> int:
    needs = [weight_container(w.bits, fmt).min_opset for w in params.weights.values()]
    needs += [activation_container(a.bits, fmt, a.signed).min_opset for a in params.activations.values()]
    return max(needs, default=13)


def _upgrade(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    if default_opset(model) >= opset:
        return model
    try:
        from onnx import version_converter

        upgraded = version_converter.convert_version(model, opset)
    except Exception as exc:  # the converter raises a variety of errors for ops it cannot adapt
        first = first_line(exc)
        raise ExportError(f"this format needs opset {opset}, and converting the model failed: {first}") from None
    ir = {21: 10, 25: 11}.get(opset, upgraded.ir_version)
    upgraded.ir_version = max(upgraded.ir_version, ir)
    return upgraded


def _into_output(nodes: list[onnx.NodeProto], producer: onnx.NodeProto, tensor: str) -> None:
    """Make Q/DQ ``nodes`` of graph output ``tensor`` write the output itself: the producer writes
    ``tensor/float``, the Q reads it, the last DQ writes ``tensor``."""
    raw = f"{tensor}/float"
    for i, name in enumerate(producer.output):
        if name == tensor:
            producer.output[i] = raw
    for node in nodes:
        for i, name in enumerate(node.input):
            if name == tensor:
                node.input[i] = raw
    nodes[-1].output[0] = tensor


def _moved_grids(graph: onnx.GraphProto, grids: dict[str, ActivationParams], target: TargetProfile,
                 outputs: set[str]) -> list[ActivationParams]:
    """Quantizers the target needs after value-moving ops (``target.requantized_moves``): each such op that
    reads a quantized tensor gets that tensor's quantizer on its output. Exact: its output values are input
    values, on the grid already. ``grids`` gains them (a chain of such ops carries one grid through)."""
    extra = []
    for node in graph.node:
        if node.op_type not in target.requantized_moves or not traits_for(node.domain, node.op_type).keeps_grid:
            continue
        grid, out = grids.get(node.input[0]), node.output[0]
        if grid is not None and out not in grids and out not in outputs:
            grids[out] = replace(grid, tensor=out)
            extra.append(grids[out])
    return extra


def _inputs_on_output_grid(graph: onnx.GraphProto, grids: dict[str, ActivationParams], target: TargetProfile,
                           outputs: set[str]) -> Iterator[tuple[ActivationParams, onnx.NodeProto, int]]:
    """(quantizer, node, input index) for every unquantized input of an op in
    ``target.quantize_inputs_like_output`` whose output is quantized: the output's grid, for that input of
    that node only (the tensor's other consumers keep its float value). Exact: quantizing is elementwise."""
    for node in graph.node:
        if node.op_type not in target.quantize_inputs_like_output or node.output[0] in outputs:
            continue
        grid = grids.get(node.output[0])
        if grid is None:
            continue
        for i, name in enumerate(node.input):
            if name and name not in grids:
                yield replace(grid, tensor=f"{node.output[0]}/input{i}"), node, i


def build_qdq_model(model: onnx.ModelProto, params: QuantParams, fmt: str = "int8",
                    quantized_outputs: bool = True, target: TargetProfile | None = None) -> onnx.ModelProto:
    """The clean model with ``params`` written in as Q/DQ (``fmt``: ``int8`` or ``native``).

    A graph output with a quantizer is that quantizer's dequantized value (``quantized_outputs``, as the
    simulation computes it; ORT then fuses the conv that writes it), else the float value its producer
    computes (the quantizer then serves its other consumers only). ``target``'s export needs
    (``requantized_moves``, ``quantize_inputs_like_output``) add Q/DQ pairs that change no value.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out = _upgrade(out, _required_opset(params, fmt))
    graph = out.graph
    by_name = {n.name: n for n in graph.node}
    front: list[onnx.NodeProto] = []  # weight DQs and graph-input Q/DQs
    after: dict[str, list[onnx.NodeProto]] = {}  # producer node name -> Q/DQ nodes to follow it
    producer = {o: n.name for n in graph.node for o in n.output}

    for wp in params.weights.values():
        node = by_name[wp.node]
        inits, nodes, w_out, b_out = _weight_nodes(wp, fmt)
        graph.initializer.extend(inits)
        front += nodes
        node.input[1] = w_out
        if b_out is not None:
            node.input[2] = b_out

    tables: dict[str, list[onnx.NodeProto]] = {}  # Gather node name -> the nodes that replace it
    for tp in params.tables.values():
        inits, nodes = _table_nodes(tp, by_name[tp.node])
        graph.initializer.extend(inits)
        tables[tp.node] = nodes

    rename: dict[str, str] = {}
    absorbed: set[str] = set()  # Clip nodes whose range their quantizer now applies
    split: set[str] = set()  # Clip nodes written as Max/Min (they feed a sub-byte native Q)
    constants = {t.name: t for t in graph.initializer}  # Clip bounds are initializers of the clean model
    quantized, outputs = set(params.activations), {o.name for o in graph.output}
    grids = dict(params.activations)
    moved = _moved_grids(graph, grids, target, outputs) if target is not None else []
    quantized |= {ap.tensor for ap in moved}
    for ap in [*params.activations.values(), *moved]:
        node = by_name.get(producer.get(ap.tensor, ""))
        clip = None
        if node is not None and node.op_type == "Clip":
            clip = _absorbable_clip(node, ap, fmt, constants, quantized, outputs)
            if clip is not None:
                absorbed.add(clip.node)
            elif activation_container(ap.bits, fmt, ap.signed).bits < 8:
                split.add(node.name)
        inits, nodes, final = _activation_nodes(ap, fmt, clip)
        graph.initializer.extend(inits)
        if quantized_outputs and ap.tensor in outputs and node is not None:
            _into_output(nodes, node, ap.tensor)
            final = ap.tensor
        if ap.tensor in producer:
            after.setdefault(producer[ap.tensor], []).extend(nodes)
        else:
            front += nodes
        if final != ap.tensor:
            rename[ap.tensor] = final

    for ap, node, i in _inputs_on_output_grid(graph, grids, target, outputs) if target is not None else ():
        inits, nodes, final = _activation_nodes(ap, fmt, source=node.input[i])
        graph.initializer.extend(inits)
        if node.input[i] in producer:
            after.setdefault(producer[node.input[i]], []).extend(nodes)
        else:
            front += nodes
        node.input[i] = final
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    ordered = list(front)
    for node in graph.node:
        if node.name in tables:
            ordered += tables[node.name]
        elif node.name in split:
            ordered += _min_max(node)
        elif node.name not in absorbed:
            ordered.append(node)
        ordered += after.get(node.name, [])
    del graph.node[:]
    graph.node.extend(ordered)
    drop_unused_initializers(out)  # the float weights that nothing reads any more
    del graph.value_info[:]
    return out


PROTOBUF_LIMIT = 2**31 - 1  # protobuf cannot serialise a message of 2 GB or more


def save_model_atomic(model: onnx.ModelProto, path: str | Path, external_threshold: int = PROTOBUF_LIMIT) -> Path:
    """Write ``model`` to ``path`` via temporary files in the same folder and atomic renames.

    A model of ``external_threshold`` bytes or more (default: protobuf's 2 GB limit) is written with its
    tensors in ``<path>.data`` beside it (ONNX external data); the data file is renamed into place first,
    so ``path`` never refers to missing data.
    """
    path = Path(path)
    tmp_dir = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp_dir.mkdir()
        tmp = tmp_dir / path.name
        if model.ByteSize() >= external_threshold:
            data_name = f"{path.name}.data"
            external = onnx.ModelProto()
            external.CopyFrom(model)  # onnx.save rewrites tensors of the model it saves as external references
            onnx.save(external, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                      location=data_name, size_threshold=0)
            os.replace(tmp_dir / data_name, path.with_name(data_name))
        else:
            onnx.save(model, str(tmp))
        os.replace(tmp, path)
    except OSError as exc:
        raise ExportError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return path
