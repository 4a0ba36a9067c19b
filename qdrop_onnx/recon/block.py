"""The optimisation of one block: AdaRound rounding + LSQ step sizes + QDrop dropping.

Objective (per the QDrop paper and its reference code): ||block(X) - Y_fp||^2 (squared error summed
over channels, averaged over batch and positions) + lambda * sum(1 - |2 h(V) - 1|^beta) over the block's
rounding variables, beta annealed 20 -> 2 after a 20 % warm-up without the regulariser. Rounding
variables use Adam (lr scaled to the budget, see :func:`default_round_lr`); activation step sizes Adam
(lr 4e-5) with cosine annealing to 0. Batches are drawn with replacement from the cached calibration
tensors. At the end the rounding is hardened.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from qdrop_onnx.quant.activation import ActivationQuantizer
from qdrop_onnx.quant.adaround import AdaRoundQuantizer
from qdrop_onnx.recon.sequence import BatchSampler, SequenceLayout


def default_round_lr(iters: int) -> float:
    """Adam's learning rate for the rounding variables: 20 / iters, kept within [1e-3, 0.1].

    The reference code's 1e-3 is tuned for 20000 steps. Adam moves a variable by about lr per step, and
    flipping a rounding decision takes a change of ~1-2 in V, so with fewer steps most decisions cannot
    move: ResNet-20 W2A4 (symmetric weights) gave 14.4 % at 100 steps and 76.2 % at 2000 with 1e-3, and
    76.3 % / 78.3 % with this rule (0.1 / 0.01), with undecided roundings at 2000 steps 0.1 % instead of 30 %.
    """
    return min(0.1, max(1e-3, 20.0 / iters))


@dataclass
class ReconConfig:
    """Knobs of the reconstruction (``QuantConfig`` fills them from the CLI)."""

    iters: int = 2000
    batch_size: int = 32
    reg_weight: float = 0.01
    drop_prob: float = 0.5
    quantize_activations: bool = True  # False: AdaRound/BRECQ (weights only during reconstruction)
    weight_lr: float | None = None  # None: default_round_lr(iters)
    act_lr: float = 4e-5
    warmup: float = 0.2
    beta_start: float = 20.0
    beta_end: float = 2.0
    seed: int = 0


@dataclass
class BlockRecord:
    """What happened to one block: reconstruction loss before (RTN) and after, time, rounding decided."""

    index: int
    name: str
    kind: str
    loss_before: float
    loss_after: float
    seconds: float
    iters: int
    undecided: float = 0.0
    losses: list[float] = field(default_factory=list)
    kept_rtn: bool = False  # the learned state did worse than round-to-nearest: reverted to it
    train_seconds: float = 0.0  # the optimisation steps alone (``seconds`` adds caching and the loss checks)


def beta_at(step: int, config: ReconConfig) -> float:
    start = config.warmup * config.iters
    if step < start:
        return config.beta_start
    rel = (step - start) / max(config.iters - start, 1)
    return config.beta_end + (config.beta_start - config.beta_end) * max(0.0, 1.0 - rel)


def reconstruction_loss(outputs: Sequence[Tensor], targets: Sequence[Tensor],
                        positions: Tensor | None = None) -> Tensor:
    """Squared error summed over the feature axis, averaged over batch and positions, as the reference.

    Feature axis: dim 1 for images [B, C, H, W] (and [B, D]); the last one for sequences [B, T, D], whose
    padded positions (``positions`` [B, T], 1 = real token: the attention mask) do not count. The
    normalisation sets the balance against the rounding regulariser (lambda = 0.01 assumes it).
    """
    loss = outputs[0].new_zeros((), dtype=torch.float32)
    for out, tgt in zip(outputs, targets, strict=True):
        if not out.is_floating_point():  # an integer side output (a mask, position ids) is the same in both
            continue
        if positions is not None and out.ndim == 3 and tuple(out.shape[:2]) == tuple(positions.shape):
            per_position = (out - tgt).pow(2).sum(-1)
            weight = positions.to(per_position.dtype)
            loss = loss + (per_position * weight).sum() / weight.sum().clamp_min(1.0)
            continue
        diff = (out - tgt).pow(2)
        loss = loss + (diff.sum(1).mean() if diff.ndim > 1 else diff.mean())
    return loss


BlockForward = Callable[[Sequence[Tensor], Sequence[Tensor]], list[Tensor]]


def reconstruct_block(forward: BlockForward, x_fp: Sequence[Tensor], x_q: Sequence[Tensor],
                      y_fp: Sequence[Tensor], rounding: Sequence[AdaRoundQuantizer],
                      acts: Sequence[ActivationQuantizer], config: ReconConfig,
                      progress: Callable[[int, float], None] | None = None,
                      positions: Tensor | None = None, layout: SequenceLayout | None = None,
                      names: tuple[Sequence[str], Sequence[str]] = ((), ())) -> tuple[list[float], float]:
    """Optimise ``rounding`` (and ``acts`` step sizes) so that ``forward(x_fp, x_q)`` matches ``y_fp``.

    ``forward`` receives a batch of the float and quantized-model inputs and returns the block outputs as
    the quantized model computes them (dropping happens inside). ``positions``: which sequence positions
    are real tokens, per sample (see :func:`reconstruction_loss`). With ``layout`` (text; ``names``: the
    block's input and output tensor names), batches come from buckets of similar length and are cut to
    their longest real sequence (see :mod:`qdrop_onnx.recon.sequence`). Returns the loss trace (every 50
    steps) and the seconds spent.
    """
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(config.seed)
    count = x_fp[0].shape[0]
    w_params = [q.alpha for q in rounding]
    a_params = [q.scale for q in acts]
    w_lr = config.weight_lr if config.weight_lr is not None else default_round_lr(config.iters)
    w_opt = torch.optim.Adam(w_params, lr=w_lr) if w_params else None
    a_opt = torch.optim.Adam(a_params, lr=config.act_lr) if a_params else None
    a_sched = torch.optim.lr_scheduler.CosineAnnealingLR(a_opt, T_max=config.iters, eta_min=0) if a_opt else None
    warm = int(math.ceil(config.warmup * config.iters))
    trace: list[float] = []
    sampler = BatchSampler(count, config.batch_size, generator, None if layout is None else layout.lengths)
    tokens_per_batch = 1.0 if layout is None else float(layout.lengths.float().mean()) * config.batch_size
    for step in range(config.iters):
        drawn = sampler.draw()
        idx = drawn.to(x_fp[0].device)
        batch_positions = None if positions is None else positions[idx]
        if layout is None:
            batch_fp = [t[idx] for t in x_fp]
            batch_q = [t[idx] for t in x_q]
            target = [t[idx] for t in y_fp]
        else:
            width = int(layout.lengths[drawn].max())
            inputs, outputs = names
            batch_fp = [layout.crop(n, t, idx, width) for n, t in zip(inputs, x_fp, strict=True)]
            batch_q = [layout.crop(n, t, idx, width) for n, t in zip(inputs, x_q, strict=True)]
            target = [layout.crop(n, t, idx, width) for n, t in zip(outputs, y_fp, strict=True)]
            batch_positions = None if batch_positions is None else batch_positions[:, :width]
        out = forward(batch_fp, batch_q)
        rec = reconstruction_loss(out, target, batch_positions)
        loss = rec
        if layout is not None and batch_positions is not None:
            # The loss averages over a batch's real tokens; a batch of short sentences would weigh each of
            # its tokens more than a random batch does. Weighting by the batch's token count keeps every
            # token's expected weight what it is without buckets (a long sentence counts by its length).
            loss = rec * (batch_positions.sum() / tokens_per_batch)
        if step >= warm and rounding:
            beta = beta_at(step, config)
            loss = loss + config.reg_weight * sum(q.regularizer(beta) for q in rounding)
        if w_opt:
            w_opt.zero_grad(set_to_none=True)
        if a_opt:
            a_opt.zero_grad(set_to_none=True)
        loss.backward()
        if w_opt:
            w_opt.step()
        if a_opt:
            a_opt.step()
            a_sched.step()
        if step % 50 == 0 or step == config.iters - 1:
            trace.append(float(rec.detach()))
            if progress is not None:
                progress(step + 1, trace[-1])
            if not math.isfinite(trace[-1]):
                break  # diverged: the caller restores round-to-nearest; more steps cannot bring it back
    return trace, time.perf_counter() - start
