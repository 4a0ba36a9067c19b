"""Small reads and edits of ONNX protos shared by the loader, the target rewrites and export."""

from __future__ import annotations

import onnx
from onnx import helper

from qdrop_onnx.errors import ModelLoadError


def default_opset(model: onnx.ModelProto) -> int:
    """The opset version of the default ('' / ai.onnx) domain."""
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    raise ModelLoadError("model imports no version of the default ONNX domain")


def attr(node: onnx.NodeProto, name: str, default: object) -> object:
    """The value of ``node``'s attribute ``name``, or ``default`` when it has none."""
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def drop_unused_initializers(model: onnx.ModelProto) -> None:
    """Remove the initializers no node reads and no graph output names (weights a fold or rewrite replaced)."""
    used = {name for node in model.graph.node for name in node.input}
    used |= {o.name for o in model.graph.output}
    keep = [t for t in model.graph.initializer if t.name in used]
    if len(keep) != len(model.graph.initializer):
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)
