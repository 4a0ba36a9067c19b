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
    # --iters auto: ``iters`` is the most a block may take; each block's budget is set by its warm-up, which
    # ends when the loss stops improving (see :func:`reconstruct_block`).
    auto: bool = False
    plateau_window: int = 50  # steps per window of the plateau test
    plateau_tolerance: float = 1e-3  # a window must beat the best one so far by this fraction (0.1 %)


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
    return annealed_beta(step, config.warmup * config.iters, config.iters, config)


def annealed_beta(step: int, start: float, budget: int, config: ReconConfig) -> float:
    """The regulariser's beta: ``beta_start`` until ``start``, then linear to ``beta_end`` at ``budget``."""
    if step < start:
        return config.beta_start
    rel = (step - start) / max(budget - start, 1)
    return config.beta_end + (config.beta_start - config.beta_end) * max(0.0, 1.0 - rel)


class WarmupPlateau:
    """--iters auto: where the warm-up (rounding learned without the regulariser) stops paying.

    The mean loss of each window of ``plateau_window`` steps is compared with the best window so far; the
    first window that does not beat it by ``plateau_tolerance`` ends the warm-up, and so at the latest does
    the fixed budget's warm-up (``warmup`` x ``iters``). The block's budget is then the warm-up's length
    over ``warmup`` (the fixed schedule's shape, 20 % warm-up then beta annealed to the end), at most ``iters``:
    a block whose loss settles in 150 steps gets 750, one still improving at 400 the whole 2,000. The
    rounding decisions are made by the annealing, so it is scaled rather than cut short.
    """

    def __init__(self, config: ReconConfig) -> None:
        self.config = config
        self.limit = int(math.ceil(config.warmup * config.iters))
        self.best = math.inf
        self.window: list[Tensor] = []

    def ended(self, step: int, loss: Tensor) -> bool:
        """Record ``step``'s loss; True when the warm-up ends after it."""
        if step + 1 >= self.limit:
            return True
        self.window.append(loss.detach())
        if len(self.window) < self.config.plateau_window:
            return False
        mean = float(torch.stack(self.window).mean())  # one read per window, not a device sync per step
        self.window.clear()
        improved = mean < self.best * (1.0 - self.config.plateau_tolerance)
        self.best = min(self.best, mean)
        return not improved and math.isfinite(mean)

    def budget(self, warm: int) -> int:
        return min(self.config.iters, max(warm + 1, int(math.ceil(warm / self.config.warmup))))


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
                      names: tuple[Sequence[str], Sequence[str]] = ((), ())) -> tuple[list[float], float, int]:
    """Optimise ``rounding`` (and ``acts`` step sizes) so that ``forward(x_fp, x_q)`` matches ``y_fp``.

    ``forward`` receives a batch of the float and quantized-model inputs and returns the block outputs as
    the quantized model computes them (dropping happens inside). ``positions``: which sequence positions
    are real tokens, per sample (see :func:`reconstruction_loss`). With ``layout`` (text; ``names``: the
    block's input and output tensor names), batches come from buckets of similar length and are cut to
    their longest real sequence (see :mod:`qdrop_onnx.recon.sequence`). With ``config.auto`` the budget is
    the block's own (:class:`WarmupPlateau`). Returns the loss trace (every 50 steps), the seconds spent
    and the steps taken.
    """
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(config.seed)
    count = x_fp[0].shape[0]
    w_params = [q.alpha for q in rounding]
    a_params = [q.scale for q in acts]
    w_lr = config.weight_lr if config.weight_lr is not None else default_round_lr(config.iters)
    w_opt = torch.optim.Adam(w_params, lr=w_lr) if w_params else None
    a_opt = torch.optim.Adam(a_params, lr=config.act_lr) if a_params else None
    # The fixed budget keeps torch's scheduler (its recursive cosine: files stay byte-identical to earlier
    # versions); auto sets the same cosine in closed form over a budget known only after the warm-up.
    a_sched = torch.optim.lr_scheduler.CosineAnnealingLR(a_opt, T_max=config.iters, eta_min=0) \
        if a_opt and not config.auto else None
    plateau = WarmupPlateau(config) if config.auto else None
    warm = int(math.ceil(config.warmup * config.iters)) if plateau is None else config.iters
    budget = config.iters
    steps = 0
    trace: list[float] = []
    sampler = BatchSampler(count, config.batch_size, generator, None if layout is None else layout.lengths)
    tokens_per_batch = 1.0 if layout is None else float(layout.lengths.float().mean()) * config.batch_size
    for step in range(config.iters):
        if step >= budget:
            break
        steps = step + 1
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
            beta = beta_at(step, config) if plateau is None else annealed_beta(step, warm, budget, config)
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
            if a_sched is not None:
                a_sched.step()
            else:
                for group in a_opt.param_groups:
                    group["lr"] = config.act_lr * 0.5 * (1 + math.cos(math.pi * (step + 1) / budget))
        if plateau is not None and step < warm and plateau.ended(step, rec):
            warm, budget = step + 1, plateau.budget(step + 1)
            if w_opt and config.weight_lr is None:
                for group in w_opt.param_groups:
                    group["lr"] = default_round_lr(budget)
        if step % 50 == 0 or step == budget - 1:
            trace.append(float(rec.detach()))
            if progress is not None:
                progress(step + 1, trace[-1])
            if not math.isfinite(trace[-1]):
                break  # diverged: the caller restores round-to-nearest; more steps cannot bring it back
    return trace, time.perf_counter() - start, steps
