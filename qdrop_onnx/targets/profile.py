"""What a deployment runtime needs of a QDQ file, as one plain dataclass per target.

A profile is knowledge about a runtime and nothing else: the integer grids it executes (activations signed or
not, symmetric or not; weights symmetric per channel), the bit widths it has kernels for, the containers it
reads, whether it wants int32 biases, and which runtime verifies a file for it. Placement, the quantizers and
export ask the profile; no other module names a runtime.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from qdrop_onnx.errors import QdropError
from qdrop_onnx.graph.rewrite import Rewrite

if TYPE_CHECKING:
    from qdrop_onnx.quant.config import QuantConfig


class TargetError(QdropError):
    """A request the chosen target cannot run (TensorRT with 4-bit activations, say): a usage error."""


@dataclass(frozen=True)
class TargetProfile:
    """One deployment runtime's QDQ dialect.

    ``act_signed``/``act_symmetric``: activations in INT8 (else UINT8) containers, zero point 0 on every
    activation (else 0 only on non-negative tensors, chosen from the range elsewhere). ``act_bits``/``w_bits``:
    the widths the runtime has integer kernels for. ``weight_symmetric``: weights need zero point 0 at every
    width (per channel, always). ``int32_bias``: Conv/Gemm biases as int32 at input scale x weight scale (the
    runtime fuses them into its integer kernel); else they stay float and the runtime quantizes them itself.
    ``formats``: the export formats it reads, ``default_format`` the one used when ``--format`` is not given.
    ``verifier``: the runtime that scores and counts integer kernels for this target (``onnxruntime`` or
    ``openvino``). ``output_quantized_ops``: weighted ops the runtime fuses into an integer kernel only with a
    quantizer on their output (ONNX Runtime: DQ -> Conv -> Q); ``fused_before_q``: activations it drops
    between such an op and that quantizer (Relu, a constant Clip); ``output_bits``: the width placement gives
    such an output where nothing else quantizes it (a conv before HardSwish, pooling, Concat; not a graph
    output), None where the runtime needs none.
    ``default_w_bits``/``default_a_bits``: the widths a configuration that names this target
    but no width gets (:meth:`QuantConfig.from_dict <qdrop_onnx.quant.config.QuantConfig.from_dict>`).
    ``rewrites``: exact graph rewrites (:mod:`qdrop_onnx.graph.rewrite`) applied when the model is loaded, into
    ops the runtime has integer kernels for (ONNX Runtime's CPU provider: ConvTranspose as Conv + DepthToSpace).
    ``requantized_moves``: ops that only move values (:attr:`OpTraits.keeps_grid
    <qdrop_onnx.graph.ops.OpTraits.keeps_grid>`) which the runtime runs on integers only between a DQ and a Q
    of one grid: export gives their output their input's quantizer (exact, the values are on it already).
    ``quantize_inputs_like_output``: ops the runtime fuses into an integer kernel only when every input is
    dequantized: export gives each unquantized input the output's quantizer (exact: quantizing is elementwise,
    so quantizing the parts before the op equals quantizing its output).
    ``quantized_residuals``: the output of a weighted op (or of the activation after it) that feeds a residual
    Add gets a ``--residual-bits`` quantizer, and the Add's output one at ``--a`` (see
    :mod:`qdrop_onnx.quant.placement`): the runtime runs the Add, and the conv before it, on integers only so.
    ``reduce_range``: 7-bit weights for 8-bit layers by default (``--reduce-range``/``--no-reduce-range``
    override it), for runtimes whose int8 kernels saturate full-range weights.
    """

    name: str
    runtime: str
    act_signed: bool
    act_symmetric: bool
    act_bits: tuple[int, ...]
    w_bits: tuple[int, ...]
    weight_symmetric: bool
    int32_bias: bool
    formats: tuple[str, ...]
    default_format: str
    default_w_bits: int = 4
    default_a_bits: int = 4
    output_quantized_ops: tuple[str, ...] = ()
    fused_before_q: tuple[str, ...] = ()
    output_bits: int | None = None
    verifier: str = "onnxruntime"
    rewrites: tuple[Rewrite, ...] = ()
    requantized_moves: tuple[str, ...] = ()
    quantize_inputs_like_output: tuple[str, ...] = ()
    quantized_residuals: bool = True
    reduce_range: bool = False

    def refusal(self, config: QuantConfig) -> str | None:
        """The first setting of ``config`` this target cannot run, as one line; None when it can run all."""
        def widths(allowed: tuple[int, ...]) -> str:
            return "/".join(str(b) for b in allowed)

        act = [("--a", config.a_bits), ("--first-last-bits", config.first_last_bits),
               ("--residual-bits", config.residual_bits)]
        weight = [("--w", config.w_bits), ("--first-last-bits", config.first_last_bits)]
        weight += [("--alloc-widths", b) for b in config.alloc_widths
                   if config.avg_w_bits is not None or config.size_kb is not None]
        act += [("--alloc-widths (with --avg-a-bits)", b) for b in config.alloc_widths if config.avg_a_bits is not None]
        for rule in config.layers:
            if rule.a_bits is not None:
                act.append((rule.source or rule.pattern, rule.a_bits))
            if rule.w_bits is not None:
                weight.append((rule.source or rule.pattern, rule.w_bits))
        for what, allowed, settings in (("activations", self.act_bits, act), ("weights", self.w_bits, weight)):
            for flag, bits in settings:
                if bits not in allowed:
                    return (f"--target {self.name} runs {widths(allowed)}-bit {what} only ({self.runtime}), "
                            f"got {flag} {bits}")
        if config.format is not None and config.format not in self.formats:
            return f"--target {self.name} reads --format {'/'.join(self.formats)} only, got --format {config.format}"
        if self.weight_symmetric:
            if config.weight_asymmetric:
                return f"--target {self.name} needs symmetric weights (zero point 0): drop --weight-asymmetric"
            for rule in config.layers:
                if rule.symmetric is False:
                    return f"--target {self.name} needs symmetric weights (zero point 0), got {rule.source}"
        return None

    def check(self, config: QuantConfig) -> None:
        """Raise :class:`TargetError` for the first setting the target cannot run."""
        message = self.refusal(config)
        if message:
            raise TargetError(message)
