"""Qualcomm's QNN (HTP) through ONNX Runtime's QNN execution provider.

It takes UINT8 activations (any zero point) and weights symmetric per output channel in INT8 or INT4 types:
4-bit weights are written as INT4 (``native``, opset 21), which is how the QNN EP recognises its int4
kernels. UINT16 activations are not produced by this tool, so 8-bit activations only.
"""

from qdrop_onnx.targets.profile import TargetProfile

PROFILE = TargetProfile(
    name="qnn", runtime="Qualcomm QNN HTP",
    act_signed=False, act_symmetric=False, act_bits=(8,), w_bits=(4, 8),
    weight_symmetric=True, int32_bias=True, formats=("int8", "native"),
    default_w_bits=4, default_a_bits=8, default_format="native")
