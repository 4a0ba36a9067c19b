"""ONNX Runtime's CPU execution provider (the default target).

Its QDQ fusions (DQ -> Conv -> Q into QLinearConv, DQ -> MatMul -> Q into QLinearMatMul, ...) run UINT8
activations with any zero point against INT8 weights with equal per-channel zero points (symmetric here
below 8 bits only on request: ``--weight-asymmetric``; placement keeps 8-bit weights symmetric). Grids below
8 bits live in 8-bit containers (``int8``) or in INT4/INT2 types (``native``, which ORT 1.32 runs in float).
"""

from qdrop_onnx.graph.rewrite import conv_transpose_as_conv
from qdrop_onnx.targets.profile import TargetProfile

PROFILE = TargetProfile(
    name="ort_cpu", runtime="ONNX Runtime, CPU execution provider",
    act_signed=False, act_symmetric=False, act_bits=(2, 3, 4, 5, 6, 7, 8), w_bits=(2, 3, 4, 5, 6, 7, 8),
    weight_symmetric=False, int32_bias=True, formats=("int8", "native"), default_format="int8",
    # Its QDQ selectors fuse DQ -> Conv -> Q (Relu and a contained Clip are dropped first); Gemm and MatMul fuse
    # with a float output too. 8 bits, as the residual-output quantizers: it is there for the fusion, not to save
    # bits (a Keras-style CNN's last conv, before GlobalAveragePool, ran in float without it; a MobileNetV3-style
    # net's convs before HardSwish, HardSigmoid, GELU, Concat and the output map did too: 3 of 9 on integers).
    output_quantized_ops=("Conv", "ConvTranspose"), fused_before_q=("Relu", "Clip"), output_bits=8,
    # It has no integer ConvTranspose (DQ -> ConvTranspose -> Q runs in float, a MobileNetV3-style net's
    # upsampling among it): the same values as a Conv and a DepthToSpace, which it runs on integers.
    rewrites=(conv_transpose_as_conv,),
    # Its QDQ propagation does not cross DepthToSpace, so the ConvTranspose rewrite's DepthToSpace ran in float on
    # the dequantized phases (23 ms of a MobileNetV3-style net's 131 at batch 32, W8A8); with a Q of the same grid
    # after it, it runs on uint8. Concat becomes QLinearConcat only when every input is a DQ output (a float
    # Resize beside the quantized branches kept it in float: 11 ms).
    requantized_moves=("DepthToSpace",), quantize_inputs_like_output=("Concat",),
    # Its int8 kernels on x86 without VNNI saturate full-range int8 weights (ResNet-20 W8A8 fused loses accuracy
    # there, README); exact on VNNI and ARM CPUs. The file's deployment CPU is not known here: off, by flag on.
    reduce_range=False)
