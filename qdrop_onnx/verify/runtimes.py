"""The runtimes a file is scored on: ONNX Runtime (always) and OpenVINO (when the ``openvino`` package is
installed: ``pip install qdrop-onnx[openvino]``).

Both are opened by :func:`open_session` and answer the same two calls the verification makes of an
``onnxruntime.InferenceSession``: ``run(None, feeds)`` and ``get_outputs()`` (objects with a ``.name``).
OpenVINO is a second, independent integer runtime: it reads the QDQ file through its ONNX frontend, turns
Q/DQ pairs into FakeQuantize, and its low-precision transformations decide which layers run in int8. Its
coverage (:func:`openvino_coverage`) counts what the compiled model *executes* in int8 (each layer's
``runtimePrecision``), not what the file declares.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qdrop_onnx.errors import ModelLoadError, first_line
from qdrop_onnx.targets import RUNTIMES  # noqa: F401 - the names open_session takes, re-exported
from qdrop_onnx.verify.coverage import KernelCoverage, integer_kernel_coverage
from qdrop_onnx.verify.evaluate import make_session

# Layer types of OpenVINO's CPU plugin that carry weights (after its own fusions: Gemm/MatMul on a constant
# become FullyConnected, a grouped Conv stays Convolution with groups, ConvTranspose is Deconvolution).
OPENVINO_WEIGHTED = frozenset({"Convolution", "GroupConvolution", "Deconvolution", "FullyConnected", "MatMul"})
OPENVINO_INTEGER = frozenset({"i8", "u8", "i4", "u4"})


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class _Output:
    name: str


class OpenVinoSession:
    """A model compiled by OpenVINO for its CPU plugin, run like an ``onnxruntime.InferenceSession``.

    Inference precision is pinned to f32: on CPUs with bf16 units OpenVINO otherwise runs the float parts
    (and the float reference model) in bf16, and the comparison would measure bf16 rounding, not quantization.
    """

    def __init__(self, model: str | Path | bytes, threads: int = 0) -> None:
        if not openvino_available():
            raise ModelLoadError("--runtime openvino needs the openvino package: pip install 'qdrop-onnx[openvino]'")
        import openvino as ov

        core = ov.Core()
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            if isinstance(model, bytes):  # its ONNX frontend reads files
                with tempfile.TemporaryDirectory() as tmp:
                    (Path(tmp) / "model.onnx").write_bytes(model)
                    read = core.read_model(str(Path(tmp) / "model.onnx"))
            else:
                read = core.read_model(str(model))
            self._compiled = core.compile_model(read, "CPU", config)
        except Exception as exc:  # OpenVINO raises RuntimeError/GeneralFailure with multi-line messages
            raise ModelLoadError(f"OpenVINO cannot load the model: {first_line(exc)}") from None
        self._outputs = [_Output(o.get_any_name()) for o in self._compiled.outputs]
        self._request = self._compiled.create_infer_request()

    def get_outputs(self) -> list[_Output]:
        return list(self._outputs)

    def run(self, names: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        results = self._request.infer(feeds)
        values = [np.array(results[out]) for out in self._compiled.outputs]
        if names is None:
            return values
        by_name = {o.name: v for o, v in zip(self._outputs, values, strict=True)}
        return [by_name[n] for n in names]

    def _layers(self) -> Iterator[tuple[str, str, str]]:
        """(layer type, precision it ran in, name) of each layer of the compiled model's executed graph."""
        for op in self._compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            kind = info["layerType"].astype(str) if "layerType" in info else op.get_type_name()
            precision = info["runtimePrecision"].astype(str) if "runtimePrecision" in info else "?"
            yield kind, precision, op.get_friendly_name()

    def float_weighted_layers(self) -> list[str]:
        """Names of the weighted layers the compiled model runs in a float precision."""
        return [name for kind, p, name in self._layers() if kind in OPENVINO_WEIGHTED and p not in OPENVINO_INTEGER]

    def executed_layers(self) -> Counter[tuple[str, str]]:
        """(layer type, precision it ran in) -> count, from the compiled model's executed graph."""
        return Counter((kind, p) for kind, p, _ in self._layers())


def open_session(model: str | Path | bytes, runtime: str = "onnxruntime", *, device: str = "cpu") -> Any:
    """A session of ``runtime`` (see :data:`qdrop_onnx.targets.RUNTIMES`) on ``model``; OpenVINO runs on the CPU."""
    if runtime == "openvino":
        return OpenVinoSession(model)
    return make_session(model, device=device)


def openvino_coverage(session: OpenVinoSession) -> KernelCoverage:
    """Weighted layers OpenVINO executed in an integer precision against those it ran in float."""
    counts = session.executed_layers()
    integer = sum(n for (kind, p), n in counts.items() if kind in OPENVINO_WEIGHTED and p in OPENVINO_INTEGER)
    floating = sum(n for (kind, p), n in counts.items() if kind in OPENVINO_WEIGHTED and p not in OPENVINO_INTEGER)
    return KernelCoverage(integer, floating, {f"{kind}:{p}": n for (kind, p), n in counts.items()},
                          session.float_weighted_layers())


def runtime_coverage(model: str | Path, runtime: str = "onnxruntime", session: Any = None) -> KernelCoverage:
    """Integer-kernel coverage of ``model`` as ``runtime`` executes it (ORT: after its graph optimizer)."""
    if runtime == "openvino":
        return openvino_coverage(session if isinstance(session, OpenVinoSession) else OpenVinoSession(model))
    return integer_kernel_coverage(model)
