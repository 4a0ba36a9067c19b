"""Deployment targets: one module per runtime, each a :class:`TargetProfile` (``--target NAME``)."""

from __future__ import annotations

from qdrop_onnx.targets import openvino, ort_cpu, qnn, tensorrt
from qdrop_onnx.targets.profile import TargetError, TargetProfile

TARGETS: dict[str, TargetProfile] = {m.PROFILE.name: m.PROFILE for m in (ort_cpu, tensorrt, openvino, qnn)}
DEFAULT_TARGET = ort_cpu.PROFILE.name
# The runtimes a file can be scored on (qdrop_onnx.verify.runtimes opens them): every target's verifier.
RUNTIMES: tuple[str, ...] = tuple(dict.fromkeys(p.verifier for p in TARGETS.values()))


def get_target(name: str) -> TargetProfile:
    """The profile called ``name`` (see :data:`TARGETS`)."""
    try:
        return TARGETS[name]
    except KeyError:
        raise TargetError(f"--target must be one of {', '.join(TARGETS)}, got {name!r}") from None


__all__ = ["DEFAULT_TARGET", "RUNTIMES", "TARGETS", "TargetError", "TargetProfile", "get_target"]
