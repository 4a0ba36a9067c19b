"""Per-layer weight widths under a budget: the widths that minimise the summed sensitivity.

A 0/1 program, solved exactly by scipy's MILP (HiGHS): one binary per (layer, width), one width per layer,
the budget as one linear constraint, the summed :mod:`sensitivity <qdrop_onnx.mixed.sensitivity>` errors of
the chosen widths as the objective. Only the layers whose width nothing else fixes are allocated (the first
and last layers keep ``--first-last-bits`` unless ``--quantize-first-last``; a ``--layer-bits`` rule keeps
its width). Budgets:

- ``avg_w_bits``: the parameter-weighted mean width over the allocated layers (the fixed ones are left out,
  so average 4 is the size of a uniform ``--w 4`` run with the same first/last setting);
- ``size_kb``: every quantized layer's weights at their widths, ``sum(params x bits) / 8`` bytes in kB
  (1000 bytes): the payload at native widths (``--format int8`` stores each weight in a byte whatever its width).

- ``avg_a_bits``: the element-weighted mean width of the allocated activations (the inputs of the layers
  whose input width ``--a`` sets), elements per sample being what the hardware moves; the other tensors
  (residual sums, conv outputs, first/last inputs) keep their widths. Weights and activations are two
  constraints on one additive objective, so each is solved on its own, exactly.

The widths come back as per-layer rules (:class:`LayerRule`, source ``allocation (...)``) appended to the
configuration, so they resolve in the quantization plan like any other rule and the report names them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import Tensor

from qdrop_onnx.graph.lower import OnnxGraphModule
from qdrop_onnx.mixed.sensitivity import (
    FloatOutputs,
    SensitivityProgress,
    SensitivityTable,
    measure_activation_sensitivity,
    measure_sensitivity,
)
from qdrop_onnx.quant.config import ConfigError, LayerRule, QuantConfig
from qdrop_onnx.quant.placement import QuantPlan, plan_quantization

log = logging.getLogger("qdrop_onnx")


@dataclass
class Allocation:
    """The widths chosen for the allocated layers and activations, and what they cost."""

    budget: str  # e.g. "--avg-w-bits 3", "--avg-w-bits 3 --avg-a-bits 4"
    widths: dict[str, int]  # allocated node -> weight bits
    average_bits: float | None  # parameter-weighted, over the allocated layers (None: weights not allocated)
    weight_kb: float  # every quantized layer's weights at their widths, kB of params x bits / 8
    error: float  # summed sensitivity of the chosen widths (weights and activations)
    seconds: float  # sensitivity and solver together
    sensitivity: SensitivityTable | None = None
    a_widths: dict[str, int] = field(default_factory=dict)  # allocated activation tensor -> bits
    average_a_bits: float | None = None  # element-weighted, over the allocated activations

    def rules(self) -> list[LayerRule]:
        source = f"allocation ({self.budget})"
        rules = [LayerRule(_exact_pattern(node), w_bits=bits, source=source) for node, bits in self.widths.items()]
        table = self.sensitivity
        consumers = {a.tensor: a.consumers for a in table.activations} if table is not None else {}
        return rules + [LayerRule(_exact_pattern(node), a_bits=bits, source=source)
                        for tensor, bits in self.a_widths.items() for node in consumers[tensor]]

    def to_dict(self) -> dict[str, object]:
        return {"budget": self.budget, "widths": dict(self.widths), "average_bits": self.average_bits,
                "weight_kb": self.weight_kb, "a_widths": dict(self.a_widths), "average_a_bits": self.average_a_bits,
                "error": self.error, "seconds": self.seconds,
                "sensitivity": self.sensitivity.to_dict() if self.sensitivity is not None else None}


def _exact_pattern(node: str) -> str:
    """A rule pattern matching ``node`` only (glob characters in a node name taken literally)."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in node)


def budget_label(config: QuantConfig) -> str:
    parts = [f"--avg-w-bits {config.avg_w_bits:g}" if config.avg_w_bits is not None else "",
             f"--size-kb {config.size_kb:g}" if config.size_kb is not None else "",
             f"--avg-a-bits {config.avg_a_bits:g}" if config.avg_a_bits is not None else ""]
    return " ".join(p for p in parts if p)


def _params(graph: OnnxGraphModule, plan: QuantPlan) -> dict[str, int]:
    return {name: int(graph.op(name).weight.numel()) for name in plan.weights}


def _bits_cap(config: QuantConfig, plan: QuantPlan, params: dict[str, int], free: list[str]) -> float:
    """The budget as a bound on sum(params x bits) over the allocated layers (refused when nothing meets it)."""
    narrowest, total = min(config.alloc_widths), sum(params[n] for n in free)
    if config.avg_w_bits is not None:
        return config.avg_w_bits * total
    fixed_bits = sum(params[n] * spec.bits for n, spec in plan.weights.items() if n not in free)
    cap = float(config.size_kb) * 8000 - fixed_bits
    smallest = (fixed_bits + narrowest * total) / 8000
    if cap < narrowest * total:
        raise ConfigError(f"--size-kb {config.size_kb:g} is below the smallest this model can be: {smallest:.1f} kB "
                          f"(every allocated layer at {narrowest} bits, the fixed ones as they are)")
    return cap


def solve(errors: Mapping[str, Mapping[int, float]], sizes: Mapping[str, int], cap: float) -> dict[str, int]:
    """A width per item of ``errors`` (item -> width -> error) minimising the summed error with
    sum(sizes x bits) <= ``cap`` (exact MILP)."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    nodes = list(errors)
    widths = sorted(next(iter(errors.values())))
    n, k = len(nodes), len(widths)
    cost = np.array([[errors[node][b] for b in widths] for node in nodes]).reshape(-1)
    one_each = np.kron(np.eye(n), np.ones(k))  # row l: the binaries of item l sum to 1
    size = np.array([[sizes[node] * b for b in widths] for node in nodes], dtype=float).reshape(-1)
    result = milp(cost, integrality=np.ones(n * k), bounds=Bounds(0, 1),
                  constraints=[LinearConstraint(one_each, 1, 1), LinearConstraint(size[None, :], -np.inf, cap)],
                  options={"mip_rel_gap": 0.0})
    if result.x is None:  # the caller refuses infeasible budgets first; a solver failure is a bug
        raise RuntimeError(f"the width allocation found no solution: {result.message}")
    chosen = np.asarray(result.x).reshape(n, k).argmax(axis=1)
    return {node: widths[j] for node, j in zip(nodes, chosen, strict=True)}


def allocatable_activations(graph: OnnxGraphModule, plan: QuantPlan) -> list[str]:
    """The activation tensors ``--avg-a-bits`` may set: inputs of quantized layers whose input width ``--a``
    sets, read by no layer with a fixed width and by no activation x activation product (which reads it at
    ``--a`` whatever its producer's rule says)."""
    readers: dict[str, list[str | None]] = {}
    for spec in plan.weights.values():
        readers.setdefault(spec.input, []).append(spec.a_width_from)
    products = {ln.node.input(i) for ln in graph.nodes if not ln.weighted for i in ln.traits.integer_inputs}
    return [t for t, fixed in readers.items()
            if t in plan.activations and t not in products and all(f is None for f in fixed)]


def allocate_widths(graph: OnnxGraphModule, config: QuantConfig, samples: Sequence[Tensor],
                    device: torch.device | None = None,
                    progress: SensitivityProgress | None = None) -> tuple[QuantConfig, Allocation | None]:
    """``config`` with the allocated widths appended as per-layer rules, and the :class:`Allocation`; the
    configuration unchanged (and None) when it sets no budget. ``graph`` is the plain lowered model."""
    if not config.allocates:
        return config, None
    start = time.perf_counter()
    plan = plan_quantization(graph, config)
    params = _params(graph, plan)
    label = budget_label(config)
    count = min(config.sensitivity_samples, len(samples[0]))
    measured = [x[:count] for x in samples]
    weights_budget = config.avg_w_bits is not None or config.size_kb is not None
    free = [n for n, spec in plan.weights.items() if spec.width_from is None] if weights_budget else []
    tensors = allocatable_activations(graph, plan) if config.avg_a_bits is not None else []
    if weights_budget and not free:
        log.warning("%s: every quantized layer's width is already fixed (first/last layers, --layer-bits): "
                    "no weight width to allocate", label)
    if config.avg_a_bits is not None and not tensors:
        log.warning("%s: every quantized activation's width is already fixed (first/last layers, --layer-bits, "
                    "activation x activation products): no activation width to allocate", label)
    if not free and not tensors:
        return config, None
    table = SensitivityTable([], tuple(config.alloc_widths), count, 0.0)
    w_errors: dict[str, dict[int, float]] = {}
    widths: dict[str, int] = {}
    cap = _bits_cap(config, plan, params, free) if free else 0.0  # refuses an impossible budget before any work
    reference = FloatOutputs(graph, measured, config.batch_size, device)  # one float pass for both measurements
    if free:
        table = measure_sensitivity(graph, plan, config, reference, config.alloc_widths, progress)
        w_errors = {layer.node: layer.error for layer in table.layers if layer.node in free}
        widths = solve(w_errors, params, cap)
    a_errors: dict[str, dict[int, float]] = {}
    sizes: dict[str, int] = {}
    a_widths: dict[str, int] = {}
    if tensors:
        table.activations = measure_activation_sensitivity(graph, plan, config, reference, tensors,
                                                           config.alloc_widths, progress)
        a_errors = {a.tensor: a.error for a in table.activations}
        sizes = {a.tensor: a.elements for a in table.activations}
        a_widths = solve(a_errors, sizes, float(config.avg_a_bits) * sum(sizes.values()))  # type: ignore[arg-type]
    chosen_bits = sum(params[n] * b for n, b in widths.items())
    fixed_bits = sum(params[n] * spec.bits for n, spec in plan.weights.items() if n not in widths)
    error = sum(w_errors[n][b] for n, b in widths.items()) + sum(a_errors[t][b] for t, b in a_widths.items())
    allocation = Allocation(
        label, widths, chosen_bits / sum(params[n] for n in free) if free else None,
        (chosen_bits + fixed_bits) / 8000, error, time.perf_counter() - start, table, a_widths,
        sum(sizes[t] * b for t, b in a_widths.items()) / sum(sizes.values()) if a_widths else None)
    return replace(config, layers=[*config.layers, *allocation.rules()]), allocation
