"""Block reconstruction: AdaRound rounding, BRECQ blocks, LSQ step sizes and QDrop's random dropping."""

from qdrop_onnx.recon.block import BlockRecord, ReconConfig
from qdrop_onnx.recon.run import reconstruct

__all__ = ["BlockRecord", "ReconConfig", "reconstruct"]
