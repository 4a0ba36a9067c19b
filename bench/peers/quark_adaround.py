"""AMD Quark (amd-quark, quark.onnx) AdaRound at W8A8, run by bench/venvs/quark's Python, not the project's.

python bench/peers/quark_adaround.py JOB.json

JOB.json (written by bench/peer.py): ``model`` (cleaned float ONNX), ``calib`` (.npy, preprocessed),
``w``/``a``, ``iters`` (AdaRound steps), ``out``, ``result``. Quark's ONNX quantizer has no 4-bit (or lower)
integer types, so only W8A8 is accepted; other widths write a result that says so. The recipe is Quark's
own A8W8 AdaRound configuration with per-channel weights; it writes QDQ ONNX. Imports nothing from qdrop_onnx.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from bench.jobs import CalibReader  # bench/ is on PYTHONPATH (bench/run.py sets it); numpy-only at import


def main(job_path: str) -> int:
    job = json.loads(Path(job_path).read_text())
    result: dict[str, object] = {}
    if (job["w"], job["a"]) != (8, 8):
        result.update(exported=False, export_error="Quark's ONNX quantizer has no integer type below 8 bits")
        Path(job["result"]).write_text(json.dumps(result, indent=2) + "\n")
        return 0
    import onnx
    import quark
    from quark.onnx import AdaRoundConfig, ModelQuantizer, QConfig
    from quark.onnx.quantization.config.spec import Int8Spec, QLayerConfig, QuantGranularity, UInt8Spec

    model = onnx.load(job["model"])
    calib = np.load(job["calib"])
    config = QConfig(
        global_config=QLayerConfig(activation=UInt8Spec(),
                                   weight=Int8Spec(quant_granularity=QuantGranularity.Channel)),
        algo_config=[AdaRoundConfig(num_iterations=job["iters"], learning_rate=0.1, batch_size=32,
                                    data_size=len(calib), early_stop=False)],
        ForceQuantizeNoInputCheck=True, AlignSlice=False, FoldRelu=True, AlignConcat=True)
    start = time.perf_counter()
    ModelQuantizer(config).quantize_model(job["model"], job["out"], CalibReader(model.graph.input[0].name, calib))
    result.update(seconds=round(time.perf_counter() - start, 1), exported=True,
                  quark_version=getattr(quark, "__version__", "?"))
    Path(job["result"]).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
