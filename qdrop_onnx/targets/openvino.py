"""Intel OpenVINO (CPU plugin): it reads QDQ as FakeQuantize and runs int8 where data and weights are quantized.

Its low-precision transformations take UINT8 activations (zero point where the range needs one) and weights
symmetric per output channel; narrower weight grids in int8 containers are int8 weights with fewer levels to
it. Activations below 8 bits are not an int8 pattern it fuses, so 8-bit activations only. Verified with the
``openvino`` package (``qdrop-onnx eval --runtime openvino``).
"""

from qdrop_onnx.targets.profile import TargetProfile

PROFILE = TargetProfile(
    name="openvino", runtime="OpenVINO CPU plugin, int8",
    act_signed=False, act_symmetric=False, act_bits=(8,), w_bits=(2, 3, 4, 5, 6, 7, 8),
    weight_symmetric=True, int32_bias=True, formats=("int8",),
    default_w_bits=4, default_a_bits=8, default_format="int8", verifier="openvino",
    # It runs the convs in int8 without the residual quantizers too (RTN, OpenVINO top-1 on cifar10/test,
    # with / without: ResNet-20 W8A8 80.81 / 80.83, W4A8 79.04 / 79.09, 20 of 20 int8 either way; ResNet-56
    # 83.16 / 83.04, 80.79 / 80.70, 56 of 56; latency within 1.5 %): no gain without them, kept.
    quantized_residuals=True)
