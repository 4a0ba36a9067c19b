"""ONNX-to-ONNX rewrites a deployment target asks for. Each is exact in real arithmetic: the rewritten model
computes what the original does (up to float summation order), in ops the target has integer kernels for.

A rewrite takes a clean model (weights as initializers, see :func:`qdrop_onnx.graph.load.load_model`), edits it
in place and returns one line per node it rewrote.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from qdrop_onnx.graph.proto import attr, default_opset, drop_unused_initializers

Rewrite = Callable[[onnx.ModelProto], list[str]]


@dataclass(frozen=True)
class _Axis:
    """How one spatial axis of a stride-``s`` ConvTranspose becomes a Conv over the input's grid.

    Output position ``o = s*q + r`` (phase ``r``) sums ``x[q + a_r - m] * w[s*m + b_r]`` over its ``taps[r]``
    values of ``m`` (``r + pad_begin = s*a_r + b_r``). One Conv computes every phase as its own output
    channel: kernel offsets ``d = a_r - m`` span ``[low, low + length)``, so the Conv pads ``-low`` before
    and ``pad_end`` after; DepthToSpace interleaves the phases and the last ``crop`` positions are dropped.
    """

    stride: int
    phases: tuple[tuple[int, int, int], ...]  # (a_r, b_r, taps_r) per phase r
    low: int
    length: int
    pad_end: int
    crop: int

    def kernel_index(self, r: int, j: int) -> int | None:
        """The ConvTranspose kernel index that Conv kernel offset ``j`` of phase ``r`` reads (None: a zero)."""
        a, b, taps = self.phases[r]
        m = a - j - self.low
        return self.stride * m + b if 0 <= m < taps else None


def _axis(kernel: int, stride: int, pad_begin: int, pad_end: int, output_padding: int) -> _Axis | None:
    phases = []
    for r in range(stride):
        a, b = divmod(r + pad_begin, stride)
        phases.append((a, b, max(0, -(-(kernel - b) // stride))))
    live = [(a, taps) for a, _, taps in phases if taps]
    extent = kernel - pad_begin - pad_end + output_padding  # output length = stride * (input - 1) + extent
    if not live:
        return None
    low = min(0, min(a - taps + 1 for a, taps in live))
    length = max(a for a, _ in live) - low + 1
    per_phase = -(-extent // stride)  # output positions per phase = input + per_phase - 1
    pad = per_phase + length + low - 2
    extra = max(0, -pad)
    return _Axis(stride, tuple(phases), low, length, max(0, pad), stride * (per_phase + extra) - extent)


def conv_transpose_as_conv(model: onnx.ModelProto) -> list[str]:
    """Every 2-D ConvTranspose with constant weights and equal strides -> Conv (-> DepthToSpace -> Slice).

    Why: ONNX Runtime's CPU provider has no integer ConvTranspose, so DQ -> ConvTranspose -> Q runs in float,
    and so do the casts around it. A stride-s ConvTranspose is s*s phase convolutions over the input's own
    grid (the sub-pixel identity); one Conv with s*s times the output channels computes them all, and
    DepthToSpace (CRD) puts each phase's pixels in place. Kernel 2 stride 2 becomes a 1x1 Conv (no extra
    work); kernel 4 stride 2 pad 1 a 3x3 Conv with 4/9 of its taps zero. Left alone: dilations, output_shape,
    auto_pad, unequal strides, dynamic weights, opsets before 11 (DepthToSpace CRD).
    """
    if default_opset(model) < 11:
        return []
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    done: list[str] = []
    rewritten: list[onnx.NodeProto] = []
    for node in graph.node:
        replacement = _rewrite_one(node, inits) if node.op_type == "ConvTranspose" else None
        if replacement is None:
            rewritten.append(node)
            continue
        nodes, tensors, line = replacement
        rewritten += nodes
        graph.initializer.extend(tensors)
        done.append(line)
    if done:
        del graph.node[:]
        graph.node.extend(rewritten)
        drop_unused_initializers(model)
    return done


def _rewrite_one(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto],
                 ) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], str] | None:
    if len(node.input) < 2 or node.input[1] not in inits:
        return None
    weight = numpy_helper.to_array(inits[node.input[1]])
    if weight.ndim != 4 or attr(node, "output_shape", None) is not None:
        return None
    if attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return None
    bias_name = node.input[2] if len(node.input) > 2 else ""
    if bias_name and bias_name not in inits:
        return None
    strides = list(attr(node, "strides", [1, 1]))
    dilations = list(attr(node, "dilations", [1, 1]))
    pads = list(attr(node, "pads", [0, 0, 0, 0]))
    output_padding = list(attr(node, "output_padding", [0, 0]))
    groups = int(attr(node, "group", 1))
    if strides[0] != strides[1] or any(d != 1 for d in dilations):
        return None
    s = strides[0]
    axes = [_axis(weight.shape[2 + i], s, pads[i], pads[2 + i], output_padding[i]) for i in range(2)]
    if axes[0] is None or axes[1] is None:
        return None
    ah, aw = axes
    in_channels, out_per_group = weight.shape[0], weight.shape[1]
    in_per_group = in_channels // groups
    phases = s * s
    # Conv output channel ((g * out/g + co) * s + rh) * s + rw reads input channels of group g.
    kernel = np.zeros((groups, out_per_group, s, s, in_per_group, ah.length, aw.length), weight.dtype)
    by_group = weight.reshape(groups, in_per_group, out_per_group, *weight.shape[2:]).transpose(0, 2, 1, 3, 4)
    for rh, jh in np.ndindex(s, ah.length):
        kh = ah.kernel_index(rh, jh)
        for rw, jw in np.ndindex(s, aw.length):
            kw = aw.kernel_index(rw, jw)
            if kh is not None and kw is not None:
                kernel[:, :, rh, rw, :, jh, jw] = by_group[:, :, :, kh, kw]
    kernel = kernel.reshape(groups * out_per_group * phases, in_per_group, ah.length, aw.length)
    name = node.name or node.output[0]
    tensors = [numpy_helper.from_array(kernel, f"{name}/conv_weight")]
    conv_inputs = [node.input[0], tensors[0].name]
    if bias_name:
        bias = numpy_helper.to_array(inits[bias_name])
        tensors.append(numpy_helper.from_array(np.repeat(bias, phases).astype(bias.dtype), f"{name}/conv_bias"))
        conv_inputs.append(tensors[1].name)
    out = node.output[0]
    steps = ["Conv"] + (["DepthToSpace"] if s > 1 else []) + (["Slice"] if ah.crop or aw.crop else [])
    names = {"Conv": f"{name}/phases", "DepthToSpace": f"{name}/interleaved"}
    names[steps[-1]] = out
    nodes = [helper.make_node("Conv", conv_inputs, [names["Conv"]], name=name, group=groups,
                              kernel_shape=[ah.length, aw.length],
                              pads=[-ah.low, -aw.low, ah.pad_end, aw.pad_end])]
    if s > 1:
        nodes.append(helper.make_node("DepthToSpace", [names["Conv"]], [names["DepthToSpace"]],
                                      name=f"{name}/DepthToSpace", blocksize=s, mode="CRD"))
    if ah.crop or aw.crop:
        bounds = [(f"{name}/crop_{what}", np.asarray(v, np.int64)) for what, v in
                  (("starts", [0, 0]), ("ends", [-ah.crop if ah.crop else np.iinfo(np.int64).max,
                                                 -aw.crop if aw.crop else np.iinfo(np.int64).max]),
                   ("axes", [2, 3]))]
        tensors += [numpy_helper.from_array(v, n) for n, v in bounds]
        nodes.append(helper.make_node("Slice", [names[steps[-2]], *(n for n, _ in bounds)], [out],
                                      name=f"{name}/Slice"))
    line = (f"{name}: ConvTranspose (stride {s}, kernel {weight.shape[2]}x{weight.shape[3]}) -> "
            f"{' -> '.join(steps)} ({ah.length}x{aw.length} kernel, {groups * out_per_group * phases} channels)")
    return nodes, tensors, line
