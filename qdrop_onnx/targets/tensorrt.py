"""NVIDIA TensorRT (explicit quantization: it reads the Q/DQ nodes and fuses them into int8 kernels).

TensorRT's int8 is symmetric: INT8 activations and weights, every zero point 0, activations per tensor and
weights per output channel. Biases stay float (TensorRT folds them into the fused kernel itself; a DQ on an
int32 bias is not a pattern it fuses). It has no int8 kernels below 8 bits for convolutions, so 8-bit
activations and weights only.
"""

from qdrop_onnx.targets.profile import TargetProfile

PROFILE = TargetProfile(
    name="tensorrt", runtime="TensorRT int8, symmetric",
    act_signed=True, act_symmetric=True, act_bits=(8,), w_bits=(8,),
    weight_symmetric=True, int32_bias=False, formats=("int8",),
    default_w_bits=8, default_a_bits=8, default_format="int8")
