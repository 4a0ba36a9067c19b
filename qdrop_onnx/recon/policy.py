"""What reconstruction settings a quantization method implies for a given model (the reconstruct stage's
policy, in one place)."""

from __future__ import annotations

from qdrop_onnx.graph.lower import OnnxGraphModule
from qdrop_onnx.graph.ops import Conv
from qdrop_onnx.quant.config import QuantConfig
from qdrop_onnx.recon.block import ReconConfig

# --iters auto: the most steps a block may take (the fixed default budget).
AUTO_MAX_ITERS = 2000


def has_depthwise_conv(graph: OnnxGraphModule) -> bool:
    return any(isinstance(op, Conv) and op.groups > 1 and op.groups == op.weight.shape[0]
               for op in graph.weighted_ops().values())


def recon_config(config: QuantConfig, graph: OnnxGraphModule) -> ReconConfig:
    """AdaRound/BRECQ: weights only during reconstruction; QDrop: with activations, dropped at
    ``drop_prob``. The rounding-loss weight is 0.01, or 0.1 for models with depthwise convs, unless set.
    ``iters`` "auto": every block finds its own budget, at most :data:`AUTO_MAX_ITERS` steps."""
    reg = config.reg_weight if config.reg_weight is not None else (0.1 if has_depthwise_conv(graph) else 0.01)
    qdrop = config.method == "qdrop"
    auto = config.iters == "auto"
    return ReconConfig(iters=AUTO_MAX_ITERS if auto else int(config.iters), auto=auto,
                       batch_size=config.batch_size, reg_weight=reg,
                       drop_prob=config.drop_prob if qdrop else 0.0, quantize_activations=qdrop, seed=config.seed,
                       weight_lr=config.round_lr)
