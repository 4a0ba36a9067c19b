"""Qualcomm AIMET (aimet-onnx) AdaRound on one model, run by bench/venvs/aimet's Python, not the project's.

python bench/peers/aimet_adaround.py JOB.json

JOB.json (written by bench/peer.py): ``model`` (the cleaned float ONNX, BN folded), ``calib`` (.npy,
preprocessed), ``test`` (.npz with x, y) or null, ``w``/``a`` (bits), ``iters`` (AdaRound steps per layer),
``bits`` (tensor name -> bit width for every quantizer qdrop-onnx places: weights and activations; all
other AIMET quantizers are disabled so both tools quantize the same tensors), ``out`` (QDQ file to write),
``result`` (JSON to write). AIMET's flow as documented: QuantizationSimModel (per-channel symmetric
weights, tf_enhanced activation ranges), apply_adaround, compute_encodings, to_onnx_qdq. AIMET exports
only 4/8/16/32-bit integers to QDQ; for 2- and 3-bit it still reports its own simulated accuracy
(``sim_top1``) and says why no file was written. Imports nothing from qdrop_onnx.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

CONFIG = {  # AIMET's default config with per-channel weights (what AdaRound users run)
    "defaults": {"ops": {"is_output_quantized": "True"}, "params": {"is_quantized": "True", "is_symmetric": "True"},
                 "strict_symmetric": "False", "per_channel_quantization": "True"},
    "params": {"bias": {"is_quantized": "False"}},
    "op_type": {}, "supergroups": [], "model_input": {"is_input_quantized": "True"}, "model_output": {},
}


def top1(session: object, name: str, x: np.ndarray, y: np.ndarray) -> float:
    correct = 0
    for i in range(0, len(x), 250):
        logits = session.run(None, {name: x[i:i + 250]})[0]  # type: ignore[attr-defined]
        correct += int((logits.argmax(1) == y[i:i + 250]).sum())
    return 100.0 * correct / len(x)


DATA_MOVEMENT = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity"}


def placed_on_aimet_tensors(model: onnx.ModelProto, bits: dict[str, int], quantized: set[str]) -> dict[str, int]:
    """``bits`` with each tensor AIMET has no quantizer for moved up through data-movement ops (AIMET
    quantizes the input of a Reshape/Flatten, not its output, e.g. the pooled features before the Gemm)."""
    producer = {out: node for node in model.graph.node for out in node.output}
    moved: dict[str, int] = {}
    for tensor, b in bits.items():
        while tensor not in quantized and tensor in producer and producer[tensor].op_type in DATA_MOVEMENT:
            tensor = producer[tensor].input[0]
        moved[tensor] = max(moved.get(tensor, 0), b)
    return moved


def main(job_path: str) -> int:
    job = json.loads(Path(job_path).read_text())
    import aimet_onnx
    import torch
    from aimet_onnx import QuantizationSimModel, apply_adaround
    from aimet_onnx.common.defs import QuantScheme

    np.random.seed(job.get("seed", 0))  # AIMET draws its AdaRound batches from numpy's and torch's generators
    torch.manual_seed(job.get("seed", 0))
    model = onnx.load(job["model"])
    name = model.graph.input[0].name
    calib = np.load(job["calib"])
    batches = [{name: calib[i:i + 32]} for i in range(0, len(calib), 32)]
    bits: dict[str, int] = job["bits"]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.json"
        config.write_text(json.dumps(CONFIG))
        sim = QuantizationSimModel(model, param_type=aimet_onnx.int8, activation_type=aimet_onnx.int8,
                                   quant_scheme=QuantScheme.post_training_tf_enhanced, config_file=str(config))
    bits = placed_on_aimet_tensors(model, bits, set(sim.qc_quantize_op_dict))
    # Tensors can share one quantizer object (a conv output and the Relu after it): enable what is planned.
    for tensor, quantizer in sim.qc_quantize_op_dict.items():
        quantizer.enabled = tensor in bits
    for tensor, quantizer in sim.qc_quantize_op_dict.items():
        if tensor in bits:
            quantizer.enabled = True
            quantizer.set_bitwidth(bits[tensor])
    missing = sorted(set(bits) - set(sim.qc_quantize_op_dict))
    sim._rebuild_session()  # the enabled flags are read when the session is built (private, no public API)
    apply_adaround(sim, batches, num_iterations=job["iters"])
    sim.compute_encodings(batches)
    seconds = time.perf_counter() - start
    result: dict[str, object] = {"seconds": round(seconds, 1), "aimet_version": aimet_onnx.__version__,
                                 "quantizers_placed": len(bits) - len(missing), "quantizers_missing": missing}
    if job.get("test"):
        test = np.load(job["test"])
        result["sim_top1"] = top1(sim.session, name, test["x"], test["y"])
    try:
        qdq = sim.to_onnx_qdq(prequantize_constants=True, export_int32_bias=True)
        onnx.save(qdq, job["out"])
        result["exported"] = True
    except RuntimeError as exc:  # 2- and 3-bit: AIMET has no QDQ export for them
        result["exported"] = False
        result["export_error"] = str(exc).splitlines()[0]
    Path(job["result"]).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
