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
    # No quantizer on a conv's output into a residual Add: OpenVINO fuses that Conv -> FakeQuantize -> Add
    # -> Relu -> FakeQuantize chain into one int8 convolution and does not round the conv output to the
    # first FakeQuantize's grid (only its clamp is applied, measured on ResNet-20's first block: OpenVINO's
    # output equals the file without that rounding to 1e-4 of the elements, and differs from it by one step
    # in 21 %). With the quantizer the file declares arithmetic OpenVINO does not run, so ONNX Runtime's
    # score of it, and the reconstruction that learned it, are of another model (RTN W8A8 ResNet-20, 10,000
    # cifar10/test images: the runtimes disagree on 106 top-1 classes, mean |logit difference| 0.11;
    # without it 0.012, as ORT's fused and unfused sessions of one file, 0.014). Every conv still runs in
    # int8 without it (20 of 20, 56 of 56; latency within 1.5 %).
    quantized_residuals=False)
