"""``--fail-below METRIC=VALUE``: bounds a CI pipeline puts on the verification of a quantized file.

A missed bound ends ``quantize`` with exit code 3 and one line naming the metric, its value and the bound (the
file and the report are still written). Each metric applies to some output kinds only (see
:mod:`qdrop_onnx.verify.compare`); a bound on one that does not apply is a usage error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from qdrop_onnx.verify.compare import OUTPUT_KINDS, Comparison


@dataclass(frozen=True)
class GateMetric:
    """How to read one metric from a :class:`Comparison`; ``lower_is_better`` for drops."""

    label: str
    unit: str
    read: Callable[[Comparison], float | None]
    kinds: frozenset[str]  # the output kinds (verify.compare.OUTPUT_KINDS) it exists for
    applies_to: str
    lower_is_better: bool = False


def _top1_drop(c: Comparison) -> float | None:
    if c.reference_top1 is None or c.quantized_top1 is None:
        return None
    return c.reference_top1 - c.quantized_top1


CLASSES = frozenset({"classes"})
SIMILARITY = frozenset({"sequence", "tensor"})
METRICS: dict[str, GateMetric] = {
    "top1": GateMetric("quantized top-1", " %", lambda c: c.quantized_top1, CLASSES,
                       "class outputs with labeled data"),
    "top1-drop": GateMetric("top-1 drop", " points", _top1_drop, CLASSES, "class outputs with labeled data",
                            lower_is_better=True),
    "agreement": GateMetric("top-1 agreement", " %", lambda c: c.agreement, CLASSES, "class outputs"),
    "cosine": GateMetric("mean cosine", "", lambda c: c.cosine_mean, SIMILARITY, "sequence and tensor outputs"),
    "cosine-min": GateMetric("min cosine", "", lambda c: c.cosine_min, SIMILARITY, "sequence and tensor outputs"),
    "pixel-agreement": GateMetric("pixel agreement", " %", lambda c: c.pixel_agreement, frozenset({"map"}),
                                  "map outputs with C > 1 channels"),
    "iou": GateMetric("map IoU", " %", lambda c: c.iou, frozenset({"map"}), "1-channel map outputs"),
    "sqnr": GateMetric("output SQNR", " dB", lambda c: c.sqnr_db, frozenset(OUTPUT_KINDS), "every output"),
}


class GateError(ValueError):
    """A bound that cannot be parsed, or one on a metric that does not apply to the model's output."""


@dataclass(frozen=True)
class Bound:
    """One ``METRIC=VALUE``: the metric must be at least VALUE (at most, for ``top1-drop``)."""

    metric: str
    value: float

    @classmethod
    def parse(cls, text: str) -> Bound:
        name, sep, value = text.partition("=")
        name = name.strip().lower()
        if not sep or name not in METRICS:
            raise GateError(f"--fail-below takes METRIC=VALUE with METRIC one of {', '.join(METRICS)}; got {text!r}")
        try:
            number = float(value)
        except ValueError:
            raise GateError(f"--fail-below {name}: {value!r} is not a number") from None
        return cls(name, number)

    def check_kind(self, kind: str) -> None:
        """Refuse a bound on a metric that the model's kind of output does not have (before any work)."""
        metric = METRICS[self.metric]
        if kind not in metric.kinds:
            raise GateError(f"--fail-below {self.metric}: {metric.label} applies to {metric.applies_to}; this "
                            f"model's output is a {kind} output")

    def missed(self, comparison: Comparison) -> str | None:
        """The line saying how this bound is missed, or None when it is met."""
        metric = METRICS[self.metric]
        value = metric.read(comparison)
        if value is None:
            raise GateError(f"--fail-below {self.metric}: {metric.label} applies to {metric.applies_to}; this "
                            f"verification ({comparison.kind} output) has none")
        ok = value <= self.value if metric.lower_is_better else value >= self.value
        if ok:
            return None
        side = "above" if metric.lower_is_better else "below"
        return (f"verification gate: {metric.label} {value:.4g}{metric.unit} is {side} the bound "
                f"{self.value:g}{metric.unit} (--fail-below {self.metric}={self.value:g})")
