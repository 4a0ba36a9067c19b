"""Run models in ONNX Runtime and measure them (accuracy now; agreement, SQNR, latency later)."""

from qdrop_onnx.verify.evaluate import ClassificationResult, evaluate_classification, make_session

__all__ = ["ClassificationResult", "evaluate_classification", "make_session"]
