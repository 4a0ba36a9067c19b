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

The widths come back as per-layer rules (:class:`LayerRule`, source ``allocation (...)``) appended to the
configuration, so they resolve in the quantization plan like any other rule and the report names them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from qdrop_onnx.graph.lower import OnnxGraphModule
from qdrop_onnx.mixed.sensitivity import SensitivityProgress, SensitivityTable, measure_sensitivity
from qdrop_onnx.quant.config import ConfigError, LayerRule, QuantConfig
from qdrop_onnx.quant.placement import QuantPlan, plan_quantization

log = logging.getLogger("qdrop_onnx")


@dataclass
class Allocation:
    """The widths chosen for the allocated layers and what they cost."""

    budget: str  # e.g. "--avg-w-bits 3"
    widths: dict[str, int]  # allocated node -> weight bits
    average_bits: float  # parameter-weighted, over the allocated layers
    weight_kb: float  # every quantized layer's weights at their widths, kB of params x bits / 8
    error: float  # summed sensitivity of the chosen widths
    seconds: float  # sensitivity and solver together
    sensitivity: SensitivityTable | None = None

    def rules(self) -> list[LayerRule]:
        return [LayerRule(_exact_pattern(node), w_bits=bits, source=f"allocation ({self.budget})")
                for node, bits in self.widths.items()]

    def to_dict(self) -> dict[str, object]:
        return {"budget": self.budget, "widths": dict(self.widths), "average_bits": self.average_bits,
                "weight_kb": self.weight_kb, "error": self.error, "seconds": self.seconds,
                "sensitivity": self.sensitivity.to_dict() if self.sensitivity is not None else None}


def _exact_pattern(node: str) -> str:
    """A rule pattern matching ``node`` only (glob characters in a node name taken literally)."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in node)


def budget_label(config: QuantConfig) -> str:
    return f"--avg-w-bits {config.avg_w_bits:g}" if config.avg_w_bits is not None else f"--size-kb {config.size_kb:g}"


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


def solve(table: SensitivityTable, params: dict[str, int], nodes: Sequence[str], cap: float) -> dict[str, int]:
    """Widths for ``nodes`` minimising the summed error with sum(params x bits) <= ``cap`` (exact MILP)."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    widths = list(table.widths)
    by_node = {layer.node: layer for layer in table.layers}
    n, k = len(nodes), len(widths)
    cost = np.array([[by_node[node].error[b] for b in widths] for node in nodes]).reshape(-1)
    one_each = np.kron(np.eye(n), np.ones(k))  # row l: the binaries of layer l sum to 1
    size = np.array([[params[node] * b for b in widths] for node in nodes], dtype=float).reshape(-1)
    result = milp(cost, integrality=np.ones(n * k), bounds=Bounds(0, 1),
                  constraints=[LinearConstraint(one_each, 1, 1), LinearConstraint(size[None, :], -np.inf, cap)],
                  options={"mip_rel_gap": 0.0})
    if result.x is None:  # the caller refuses infeasible budgets first; a solver failure is a bug
        raise RuntimeError(f"the width allocation found no solution: {result.message}")
    chosen = np.asarray(result.x).reshape(n, k).argmax(axis=1)
    return {node: widths[j] for node, j in zip(nodes, chosen, strict=True)}


def allocate_widths(graph: OnnxGraphModule, config: QuantConfig, samples: Sequence[Tensor],
                    device: torch.device | None = None,
                    progress: SensitivityProgress | None = None) -> tuple[QuantConfig, Allocation | None]:
    """``config`` with the allocated widths appended as per-layer rules, and the :class:`Allocation`; the
    configuration unchanged (and None) when it sets no budget. ``graph`` is the plain lowered model."""
    if config.avg_w_bits is None and config.size_kb is None:
        return config, None
    start = time.perf_counter()
    plan = plan_quantization(graph, config)
    params = _params(graph, plan)
    free = [n for n, spec in plan.weights.items() if spec.width_from is None]
    label = budget_label(config)
    if not free:
        log.warning("%s: every quantized layer's width is already fixed (first/last layers, --layer-bits): "
                    "nothing to allocate", label)
        return config, None
    cap = _bits_cap(config, plan, params, free)
    count = min(config.sensitivity_samples, len(samples[0]))
    table = measure_sensitivity(graph, plan, config, [x[:count] for x in samples], config.alloc_widths, device,
                                progress)
    widths = solve(table, params, free, cap)
    chosen_bits = sum(params[n] * b for n, b in widths.items())
    fixed_bits = sum(params[n] * spec.bits for n, spec in plan.weights.items() if n not in widths)
    by_node = {layer.node: layer for layer in table.layers}
    allocation = Allocation(label, widths, chosen_bits / sum(params[n] for n in free),
                            (chosen_bits + fixed_bits) / 8000, sum(by_node[n].error[b] for n, b in widths.items()),
                            time.perf_counter() - start, table)
    return replace(config, layers=[*config.layers, *allocation.rules()]), allocation
