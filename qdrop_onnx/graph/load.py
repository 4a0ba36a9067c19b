"""Read an ONNX model and turn it into the clean graph every later stage works on.

Steps, in order: read (external data included), ``onnx.checker``, BatchNormalization folded into the Conv
before it, onnxsim simplification (on failure the unsimplified graph is kept and one warning is logged),
Constant nodes turned into initializers, the target's exact rewrites (``qdrop_onnx.graph.rewrite``), shape
inference, and every node given a unique name (weights are addressed by node name from here on). The
symbolic batch dimension is kept. The input file is never modified: all work happens on an in-memory copy.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from qdrop_onnx.errors import ModelLoadError, first_line
from qdrop_onnx.graph.proto import attr as _attr
from qdrop_onnx.graph.proto import default_opset, drop_unused_initializers
from qdrop_onnx.graph.rewrite import Rewrite

log = logging.getLogger(__name__)

# Protobuf cannot serialise a message above 2 GiB; such models must keep their weights as external data.
_PROTOBUF_LIMIT = 2**31 - 1


@dataclass
class LoadedModel:
    """A validated, simplified ONNX model plus what was done to it."""

    model: onnx.ModelProto
    source: str
    simplified: bool
    folded_batchnorms: int
    warnings: list[str] = field(default_factory=list)
    rewrites: list[str] = field(default_factory=list)  # one line per node a target's rewrite changed

    @property
    def opset(self) -> int:
        return default_opset(self.model)


def _read(path: Path) -> onnx.ModelProto:
    if not path.exists():
        raise ModelLoadError(f"model not found: {path}")
    if path.is_dir():
        raise ModelLoadError(f"model path is a directory, not an ONNX file: {path}")
    try:
        model = onnx.load(str(path), load_external_data=True)
    except DecodeError as exc:
        raise ModelLoadError(f"{path} is not an ONNX model (protobuf parse failed: {exc})") from None
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from None
    if not model.graph.node:
        raise ModelLoadError(f"{path} is not an ONNX model (no graph nodes found)")
    return model


def _check(model: onnx.ModelProto, path: Path | None, name: str) -> None:
    try:
        if path is not None and model.ByteSize() > _PROTOBUF_LIMIT:
            onnx.checker.check_model(str(path))
        else:
            onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError) as exc:
        first = first_line(exc)
        raise ModelLoadError(f"{name} fails onnx.checker: {first}") from None


Simplifier = Callable[[onnx.ModelProto], tuple[onnx.ModelProto, bool]]


def load_model(source: str | Path | onnx.ModelProto, *, simplify: bool = True,
               simplifier: Simplifier | None = None, rewrites: Sequence[Rewrite] = ()) -> LoadedModel:
    """Load, validate and clean an ONNX model.

    Args:
        source: path to a ``.onnx`` file (external data next to it is read too) or a ModelProto (copied).
        simplify: run the simplifier; a failure there is not fatal (warned once, unsimplified graph kept).
        simplifier: ``model -> (model, ok)``; default ``onnxsim.simplify(model, check_n=0)``.
        rewrites: exact rewrites a deployment target asks for (``TargetProfile.rewrites``), applied to the
            cleaned model.

    Raises:
        ModelLoadError: the file is missing, not ONNX, truncated, or fails ``onnx.checker``.
    """
    try:
        return _load_model(source, simplify, simplifier, rewrites)
    except UnicodeDecodeError:  # protobuf decodes string fields lazily: a corrupt name fails on first access
        raise ModelLoadError(f"{_display(source)} is not a valid ONNX model (a name or string field is not valid "
                             "UTF-8)") from None
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        # onnx.checker does not check everything (e.g. tensor data vs dims, unknown enum values); what it lets
        # through fails in onnx/numpy helpers with these types (found by tests/test_fuzz.py).
        raise ModelLoadError(f"{_display(source)} is not a valid ONNX model ({type(exc).__name__}: "
                             f"{first_line(exc)})") from None


def _display(source: str | Path | onnx.ModelProto) -> str:
    return "the model" if isinstance(source, onnx.ModelProto) else str(source)


def _load_model(source: str | Path | onnx.ModelProto, simplify: bool,
                simplifier: Simplifier | None, rewrites: Sequence[Rewrite]) -> LoadedModel:
    path: Path | None = None
    if isinstance(source, onnx.ModelProto):
        model = onnx.ModelProto()
        model.CopyFrom(source)
        name = model.graph.name or "model"
    else:
        path = Path(source)
        model = _read(path)
        name = str(path)
    _check(model, path, name)
    _check_finite(model)
    default_opset(model)

    warnings: list[str] = []
    _name_nodes(model)
    folded = fold_batchnorm_into_conv(model) + fold_batchnorm_into_consumers(model)
    simplified = False
    if simplify:
        model, simplified, warning = _simplify(model, simplifier)
        if warning:
            log.warning(warning)
            warnings.append(warning)
    _constants_to_initializers(model)
    if static_reshape_targets(model):
        remove_dead_nodes(model)
    rewritten = [line for rewrite in rewrites for line in rewrite(model)]
    for line in rewritten:
        log.info("rewritten for the target: %s", line)
    model = _infer_shapes(model)
    _name_nodes(model)
    return LoadedModel(model=model, source=name, simplified=simplified, folded_batchnorms=folded,
                       warnings=warnings, rewrites=rewritten)


def _check_finite(model: onnx.ModelProto) -> None:
    """NaN/Inf weights would give NaN scales and a file that computes garbage: refuse them up front.

    NaN is refused in any float initializer; +-Inf only where it is a weight (an operand of a weighted or
    normalisation op): a -inf fill value for masked attention scores (BERT exports) is legitimate.
    """
    weight_ops = {"Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization", "LayerNormalization"}
    consumers: dict[str, str] = {}
    weights: set[str] = set()
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, node.name or node.op_type)
            if node.op_type in weight_ops:
                weights.add(name)
    for init in model.graph.initializer:
        if init.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE):
            continue
        values = onnx.numpy_helper.to_array(init)
        bad = int(np.isnan(values).sum()) + (int(np.isinf(values).sum()) if init.name in weights else 0)
        if bad:
            where = f" (used by node {consumers[init.name]})" if init.name in consumers else ""
            raise ModelLoadError(f"initializer {init.name}{where} has {bad} NaN/Inf value{'s' if bad > 1 else ''}; "
                                 "the model's weights must be finite")


def _onnxsim(model: onnx.ModelProto) -> tuple[onnx.ModelProto, bool]:
    import onnxsim

    return onnxsim.simplify(model, check_n=0)


def _simplify(model: onnx.ModelProto, simplifier: Simplifier | None) -> tuple[onnx.ModelProto, bool, str | None]:
    try:
        simplified, ok = (simplifier or _onnxsim)(model)
    except Exception as exc:  # onnxsim raises many types (RuntimeError, onnx errors, ValueError...)
        reason = first_line(exc)
        return model, False, f"onnxsim failed ({reason}); using the unsimplified graph"
    if not ok:
        return model, False, "onnxsim could not validate its result; using the unsimplified graph"
    return simplified, True, None


def _infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    # Stale value_info (onnxsim leaves some with made-up dim names) would stop symbolic dims propagating.
    del model.graph.value_info[:]
    try:
        return onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
    except Exception as exc:  # shape inference is an aid, never a requirement
        log.warning("shape inference failed (%s); continuing without it", exc)
        return model


def _name_nodes(model: onnx.ModelProto) -> None:
    """Give every node a unique, non-empty name: weights are looked up by node name later."""
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        name = node.name or f"{node.op_type}_{i}"
        while name in seen:
            name = f"{name}_{i}"
        node.name = name
        seen.add(name)


def _constants_to_initializers(model: onnx.ModelProto) -> None:
    """Replace ``Constant`` nodes that carry a tensor by initializers (one place to look up constants)."""
    graph = model.graph
    keep = []
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(node.attribute) == 1:
            attr = node.attribute[0]
            value = None
            if attr.name == "value":
                value = numpy_helper.to_array(attr.t)
            elif attr.name in ("value_float", "value_int"):
                value = np.array(onnx.helper.get_attribute_value(attr),
                                 dtype=np.float32 if attr.name == "value_float" else np.int64)
            elif attr.name in ("value_floats", "value_ints"):
                value = np.array(onnx.helper.get_attribute_value(attr),
                                 dtype=np.float32 if attr.name == "value_floats" else np.int64)
            if value is not None:
                graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
                continue
        keep.append(node)
    if len(keep) != len(graph.node):
        del graph.node[:]
        graph.node.extend(keep)


def fold_batchnorm_into_conv(model: onnx.ModelProto) -> int:
    """Fold every inference BatchNormalization that directly follows a Conv into that Conv.

    Only folds when the Conv's weight and the BN's parameters are initializers and the Conv output feeds
    nothing but the BN. Returns how many BN nodes were removed. Works in place.
    """
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    graph_outputs = {o.name for o in graph.output}
    removed: set[str] = set()
    folded = 0
    for bn in list(graph.node):
        if bn.op_type != "BatchNormalization" or len(bn.output) != 1:
            continue
        if any(a.name == "training_mode" and a.i for a in bn.attribute):
            continue
        conv = producers.get(bn.input[0])
        if conv is None or conv.op_type != "Conv" or consumers.get(conv.output[0], 0) != 1:
            continue
        if conv.output[0] in graph_outputs or conv.input[1] not in inits:
            continue
        if not all(name in inits for name in bn.input[1:5]):
            continue
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        scale, beta, mean, var = (numpy_helper.to_array(inits[n]).astype(np.float64) for n in bn.input[1:5])
        weight = numpy_helper.to_array(inits[conv.input[1]]).astype(np.float64)
        has_bias = len(conv.input) > 2 and conv.input[2] != ""
        if has_bias and conv.input[2] not in inits:
            continue
        bias = (numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64) if has_bias
                else np.zeros(weight.shape[0]))
        factor = scale / np.sqrt(var + eps)
        new_w = (weight * factor.reshape(-1, *([1] * (weight.ndim - 1)))).astype(np.float32)
        new_b = ((bias - mean) * factor + beta).astype(np.float32)
        w_name, b_name = f"{conv.name}.weight_bnfold", f"{conv.name}.bias_bnfold"
        graph.initializer.extend([numpy_helper.from_array(new_w, w_name), numpy_helper.from_array(new_b, b_name)])
        data_input = conv.input[0]
        del conv.input[:]
        conv.input.extend([data_input, w_name, b_name])
        conv.output[0] = bn.output[0]
        removed.add(bn.name)
        folded += 1
    if removed:
        keep = [n for n in graph.node if n.name not in removed]
        del graph.node[:]
        graph.node.extend(keep)
        drop_unused_initializers(model)
    return folded


def _bn_affine(bn: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> tuple[np.ndarray, np.ndarray] | None:
    """An inference BatchNormalization as y = s * x + t per channel (float64), or None when it is not one."""
    if len(bn.output) != 1 or any(a.name == "training_mode" and a.i for a in bn.attribute):
        return None
    if not all(name in inits for name in bn.input[1:5]):
        return None
    eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
    scale, beta, mean, var = (numpy_helper.to_array(inits[n]).astype(np.float64) for n in bn.input[1:5])
    s = scale / np.sqrt(var + eps)
    return s, beta - mean * s


def _unpadded_conv(node: onnx.NodeProto, tensor: str, inits: dict[str, onnx.TensorProto]) -> bool:
    """A Conv reading ``tensor`` as its data input with a constant weight and no padding at all."""
    if node.op_type != "Conv" or node.input[0] != tensor or node.input[1] not in inits:
        return False
    if len(node.input) > 2 and node.input[2] and node.input[2] not in inits:
        return False
    pads = list(_attr(node, "pads", []))  # type: ignore[call-overload]
    auto_pad = _attr(node, "auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    return not any(pads) and auto_pad in ("NOTSET", "VALID")


def _pooled_gemm(tensor: str, inits: dict[str, onnx.TensorProto],
                 consumers: dict[str, list[onnx.NodeProto]]) -> tuple[list[onnx.NodeProto], onnx.NodeProto] | None:
    """``tensor`` -> GlobalAveragePool -> Flatten -> Gemm (constant B and C, alpha = beta = 1), each feeding
    only the next: the path a per-channel affine passes through unchanged into the Gemm's input columns."""
    path: list[onnx.NodeProto] = []
    current = tensor
    for op in ("GlobalAveragePool", "Flatten", "Gemm"):
        users = consumers.get(current, [])
        if len(users) != 1 or users[0].op_type != op or users[0].input[0] != current:
            return None
        path.append(users[0])
        current = users[0].output[0]
    gemm = path[-1]
    if _attr(path[1], "axis", 1) != 1 or _attr(gemm, "transA", 0) or gemm.input[1] not in inits:
        return None
    if _attr(gemm, "alpha", 1.0) != 1.0 or _attr(gemm, "beta", 1.0) != 1.0:
        return None
    if len(gemm.input) > 2 and gemm.input[2] and gemm.input[2] not in inits:
        return None
    return path[:-1], gemm


def fold_batchnorm_into_consumers(model: onnx.ModelProto) -> int:
    """Fold an inference BatchNormalization that no Conv precedes (Conv -> ReLU -> BN, Keras-style) into
    what reads it, where that is exact: Convs without padding (zero padding of BN(x) is not BN of zero
    padding), or GlobalAveragePool -> Flatten -> Gemm (the mean of s * x + t is s * mean(x) + t).

    Why: left in the graph, the BN sits between the ReLU and the next layer, so the ReLU's output is not
    what the next weighted op reads, carries no quantizer, and ONNX Runtime runs the conv before it in float
    (a Keras-style CNN ran 3 of 9 weighted ops on integers). Every reader must fold; the BN output must not be
    a graph output. Returns how many BN nodes were removed. Works in place.
    """
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    removed: set[str] = set()
    for bn in list(graph.node):
        if bn.op_type != "BatchNormalization" or bn.output[0] in outputs:
            continue
        affine = _bn_affine(bn, inits)
        users = consumers.get(bn.output[0], [])
        if affine is None or not users:
            continue
        s, t = affine
        convs = [u for u in users if _unpadded_conv(u, bn.output[0], inits)]
        pooled = _pooled_gemm(bn.output[0], inits, consumers) if len(users) == 1 else None
        if len(convs) != len(users) and pooled is None:
            continue
        for conv in convs:
            weight = numpy_helper.to_array(inits[conv.input[1]]).astype(np.float64)
            groups = int(_attr(conv, "group", 1))  # type: ignore[call-overload]
            per_group_in, per_group_out = weight.shape[1], weight.shape[0] // groups
            # input channel of weight[o, j]: group (o // per_group_out) times per_group_in, plus j
            channel = (np.arange(weight.shape[0])[:, None] // per_group_out) * per_group_in + np.arange(per_group_in)
            spatial = (1,) * (weight.ndim - 2)
            new_w = weight * s[channel].reshape(*channel.shape, *spatial)
            shift = (weight * t[channel].reshape(*channel.shape, *spatial)).reshape(weight.shape[0], -1).sum(1)
            has_bias = len(conv.input) > 2 and conv.input[2] != ""
            bias = numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64) if has_bias else 0.0
            _set_weights(graph, conv, 1, new_w, conv.name + ".weight_bnfold_in")
            _set_weights(graph, conv, 2, bias + shift, conv.name + ".bias_bnfold_in")
        if pooled is not None:
            gemm = pooled[1]
            b = numpy_helper.to_array(inits[gemm.input[1]]).astype(np.float64)
            trans_b = bool(_attr(gemm, "transB", 0))
            columns = b if trans_b else b.T  # [out, C]
            has_bias = len(gemm.input) > 2 and gemm.input[2] != ""
            bias = numpy_helper.to_array(inits[gemm.input[2]]).astype(np.float64) if has_bias else 0.0
            new_b = columns * s[None, :]
            _set_weights(graph, gemm, 1, new_b if trans_b else new_b.T, gemm.name + ".weight_bnfold_in")
            _set_weights(graph, gemm, 2, bias + columns @ t, gemm.name + ".bias_bnfold_in")
        for user in users:
            for i, name in enumerate(user.input):
                if name == bn.output[0]:
                    user.input[i] = bn.input[0]
        removed.add(bn.name)
    if removed:
        keep = [n for n in graph.node if n.name not in removed]
        del graph.node[:]
        graph.node.extend(keep)
        drop_unused_initializers(model)
    return len(removed)


def _set_weights(graph: onnx.GraphProto, node: onnx.NodeProto, index: int, values: np.ndarray, name: str) -> None:
    """Input ``index`` of ``node`` becomes a new float32 initializer ``name`` holding ``values``."""
    graph.initializer.append(numpy_helper.from_array(np.asarray(values, dtype=np.float32), name))
    while len(node.input) <= index:
        node.input.append("")
    node.input[index] = name


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str | None] | None:
    tensor_type = value_info.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor_type.shape.dim]


def static_reshape_targets(model: onnx.ModelProto) -> int:
    """Give Reshapes whose target shape is computed at run time a constant target, where provable.

    Exporters write ``x.view(x.size(0), -1)`` as Shape → Gather → Concat → Reshape. The batch size then
    flows from the model input to the end of the graph, which hides every block boundary. Shape
    inference (with symbolic data propagation) tells the Reshape's output shape; an output dim that is
    the same symbol as the input dim at that position becomes 0 ("copy"), known dims stay, and one
    unknown dim becomes -1. Returns how many Reshapes were rewritten.
    """
    graph = model.graph
    # Infer on a copy whose declared output shapes are cleared: a declared shape (often with made-up
    # symbols such as 'unk__0') would otherwise win over the inferred one.
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for out in probe.graph.output:
        out.type.tensor_type.ClearField("shape")
    probe = _infer_shapes(probe)
    pg = probe.graph
    shapes = {v.name: _dims(v) for v in list(pg.value_info) + list(pg.input) + list(pg.output)}
    initializers = {t.name for t in graph.initializer}
    rewritten = 0
    for node in graph.node:
        if node.op_type != "Reshape" or node.input[1] in initializers:
            continue
        if any(a.name == "allowzero" and a.i for a in node.attribute):
            continue
        in_dims, out_dims = shapes.get(node.input[0]), shapes.get(node.output[0])
        if not in_dims or not out_dims:
            continue
        target = []
        for j, dim in enumerate(out_dims):
            if isinstance(dim, int) and dim > 0:
                target.append(dim)
            elif isinstance(dim, str) and j < len(in_dims) and in_dims[j] == dim:
                target.append(0)
            else:
                target.append(-1)
        if target.count(-1) > 1:
            continue
        name = f"{node.name or node.output[0]}.static_shape"
        graph.initializer.append(numpy_helper.from_array(np.array(target, dtype=np.int64), name))
        node.input[1] = name
        rewritten += 1
    return rewritten


def remove_dead_nodes(model: onnx.ModelProto) -> None:
    """Drop nodes none of whose outputs are used (repeatedly), then unused initializers."""
    graph = model.graph
    while True:
        used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
        keep = [n for n in graph.node if any(o in used for o in n.output if o)]
        if len(keep) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(keep)
    drop_unused_initializers(model)
