"""Reconstruct every block in topological order (BRECQ), with QDrop's dropping when asked.

Block k sees two inputs per sample: from the float model (X_fp) and from the model whose blocks 1..k-1
are already quantized and hardened (X_q). Its target is the float output (computed once). With
activation quantization on (QDrop), the block input is an element-wise random mix of X_fp and the
quantized X_q, and every activation quantizer inside the block (including those on its outputs) drops
to float with probability ``drop_prob``; their step sizes are learned with the rounding.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from qdrop_onnx.graph.partition import Block
from qdrop_onnx.quant.activation import drop_mask
from qdrop_onnx.quant.sim import QuantSim
from qdrop_onnx.recon.allocator import release_free_memory
from qdrop_onnx.recon.block import BlockRecord, ReconConfig, reconstruct_block, reconstruction_loss
from qdrop_onnx.recon.cache import Stored, TensorCache, run_batched
from qdrop_onnx.recon.sequence import SequenceLayout, sequence_layout
from qdrop_onnx.recon.spill import DiskTensor

log = logging.getLogger("qdrop_onnx")

EVAL_SAMPLES = 256
EVAL_BATCH = 64

# Called as progress(block_index, step, loss) during a block and done(record) after it.
StepCallback = Callable[[int, int, float], None]
DoneCallback = Callable[[BlockRecord], None]


def _block_forward(sim: QuantSim, block: Block, quantize_activations: bool,
                   outputs: Sequence[str]) -> Callable[..., list[Tensor]]:
    """The forward of ``block`` as reconstruction sees it: ``forward(batch_fp, batch_q, drop_prob, masks)``,
    returning ``outputs`` (the block outputs the loss compares).

    Input mixing (X_fp vs quantized X_q) with ``drop_prob``, its masks drawn from the generator ``masks``;
    quantized internals, quantized outputs; the dropping inside the block is each learned quantizer's own
    (``with q.dropping(p, masks)``).
    """
    train = sim.graph.subgraph(block.nodes, block.inputs, list(outputs), transform_inputs=False)
    in_quant = [sim.acts.get(t) for t in block.inputs]
    out_quant = [sim.acts.get(t) for t in outputs]

    def forward(batch_fp: Sequence[Tensor], batch_q: Sequence[Tensor], drop_prob: float = 0.0,
                masks: torch.Generator | None = None) -> list[Tensor]:
        inputs = []
        for x_fp, x_q, quantizer in zip(batch_fp, batch_q, in_quant, strict=True):
            if quantizer is not None and quantize_activations:
                x_q = quantizer(x_q)
                if drop_prob > 0:
                    if masks is None:  # never fall back to torch's global generator
                        raise ValueError("dropping (drop_prob > 0) needs the block's masks generator")
                    x_q = torch.lerp(x_q, x_fp, drop_mask(x_q, drop_prob, masks))
            inputs.append(x_q)
        outs = train(*inputs)
        return [q(o) if q is not None else o for o, q in zip(outs, out_quant, strict=True)]

    return forward


def _channels_last(t: Tensor) -> Tensor:
    """NHWC for image tensors: oneDNN's convolutions (and their weight gradients) run up to 2x faster on
    it for narrow (16-channel) layers; elementwise ops keep the layout, so the whole block runs NHWC.
    Measured on resnet20, 200 iterations per block, 2 cores: 38.2 s NCHW -> 36.0 s NHWC over all blocks."""
    return t.contiguous(memory_format=torch.channels_last) if t.ndim == 4 else t


@torch.no_grad()
def _eval_loss(forward: Callable[..., list[Tensor]], x_fp: Sequence[Tensor], x_q: Sequence[Tensor],
               y_fp: Sequence[Tensor], device: torch.device, positions: Tensor | None = None) -> float:
    count = min(EVAL_SAMPLES, x_fp[0].shape[0])
    total = 0.0
    for start in range(0, count, EVAL_BATCH):
        sl = slice(start, min(start + EVAL_BATCH, count))
        out = forward([t[sl].to(device) for t in x_fp], [t[sl].to(device) for t in x_q])
        mask = None if positions is None else positions[sl].to(device)
        total += float(reconstruction_loss(out, [t[sl].to(device) for t in y_fp], mask)) * (sl.stop - sl.start)
    return total / count


def _block_inputs(cache: TensorCache, block: Block, device: torch.device) -> tuple[list[Stored], list[Stored]]:
    # Block tensors go to the compute device once, not once per step; float ones in float32 (the cache may
    # hold float16), integer/boolean side tensors (token ids, masks) in their own dtype. Spilled ones stay on
    # disk and are read a batch at a time, in that same form.
    # A tensor held once for both versions (the model's inputs, side tensors) is loaded once: a copy per
    # version would hold EfficientNet's 1024 input images (616 MB) twice more.
    loaded: dict[int, Stored] = {}

    def load(t: Stored) -> Stored:
        if id(t) not in loaded:
            if isinstance(t, DiskTensor):
                loaded[id(t)] = t.on(device)
            else:
                loaded[id(t)] = _channels_last(t.to(device, torch.float32) if t.is_floating_point()
                                               else t.to(device))
        return loaded[id(t)]

    return [load(cache.fp[t]) for t in block.inputs], [load(cache.q[t]) for t in block.inputs]


def _output_storage(cache: TensorCache, block: Block) -> Callable[[int, tuple[int, ...], Tensor], Stored]:
    """Where :func:`run_batched` writes ``block``'s outputs: the cache's memory within its budget, else a file."""
    return lambda k, shape, like: cache.allocate(block.outputs[k], shape, like)


def _replay_one(sim: QuantSim, block: Block, cache: TensorCache, config: ReconConfig, device: torch.device) -> None:
    """A finished block's outputs (float and quantized), computed exactly as after its reconstruction."""
    plain = sim.graph.subgraph(block.nodes, block.inputs, block.outputs, transform_inputs=True)
    x_fp, x_q = _block_inputs(cache, block, device)
    into = _output_storage(cache, block)
    sim.set_quantization(weights=False, activations=False)
    y_fp = run_batched(plain, x_fp, EVAL_BATCH, device, into)
    sim.set_quantization(weights=True, activations=config.quantize_activations)
    y_q = run_batched(plain, x_q, EVAL_BATCH, device, into)
    for name, fp, q in zip(block.outputs, y_fp, y_q, strict=True):
        cache.put(name, fp, q)


def _reconstruct_one(sim: QuantSim, block: Block, cache: TensorCache, config: ReconConfig,
                     device: torch.device, progress: StepCallback | None, positions: Tensor | None,
                     layout: SequenceLayout | None, masks: torch.Generator) -> BlockRecord:
    """Reconstruct one block; QDrop's masks (input mixing and inside the block) come from ``masks``."""
    graph = sim.graph
    qa = config.quantize_activations
    plain = graph.subgraph(block.nodes, block.inputs, block.outputs, transform_inputs=True)
    x_fp, x_q = _block_inputs(cache, block, device)

    into = _output_storage(cache, block)
    sim.set_quantization(weights=False, activations=False)
    y_fp = run_batched(plain, x_fp, EVAL_BATCH, device, into)
    # Side outputs (an attention mask a later block reads) are the same in both models and carry no error to
    # learn from; a float one holding -inf (masked scores) would make the loss -inf - -inf = NaN.
    side = graph.side_tensors()
    targets = [t for t in block.outputs if t not in side]
    y_target = [y for t, y in zip(block.outputs, y_fp, strict=True) if t not in side]

    rounding = [sim.use_adaround(name) for name in block.weighted if name in sim.weights]
    produced = [t for name in block.nodes for t in graph.node(name).node.outputs if t in sim.acts]
    learned_acts = [sim.acts[t] for t in produced] if qa else []
    for q in learned_acts:
        q.scale.requires_grad_(True)
    sim.set_quantization(weights=True, activations=qa)
    eval_forward = _block_forward(sim, block, qa, targets)  # drop_prob 0: what the finished model computes
    forward = functools.partial(eval_forward, drop_prob=config.drop_prob if qa else 0.0, masks=masks)

    with contextlib.ExitStack() as hard:
        for q in rounding:
            hard.enter_context(q.rounding_hard())
        loss_before = _eval_loss(eval_forward, x_fp, x_q, y_target, device, positions)
    start_state = [q.alpha.detach().clone() for q in rounding] + [q.scale.detach().clone() for q in learned_acts]

    try:
        with contextlib.ExitStack() as dropping:
            for q in learned_acts:
                dropping.enter_context(q.dropping(config.drop_prob, masks))
            step_progress = (lambda step, loss: progress(block.index, step, loss)) if progress else None
            trace, seconds, steps = reconstruct_block(forward, x_fp, x_q, y_target, rounding, learned_acts, config,
                                                      step_progress, positions, layout, (block.inputs, targets))
    finally:
        for q in learned_acts:
            q.scale.requires_grad_(False)
    undecided = sum(q.undecided() * q.alpha.numel() for q in rounding) / max(sum(q.alpha.numel()
                                                                                  for q in rounding), 1)
    for q in rounding:
        q.harden()
    loss_after = _eval_loss(eval_forward, x_fp, x_q, y_target, device, positions)
    learned = [q.alpha for q in rounding] + [q.scale for q in learned_acts]
    finite = math.isfinite(loss_after) and all(bool(torch.isfinite(p).all()) for p in learned)
    if not finite:
        log.warning("block %d (%s): reconstruction diverged (loss %.4g -> %s); restored to round-to-nearest",
                    block.index, block.name, loss_before, loss_after)
    kept_rtn = not finite or loss_after > loss_before
    if kept_rtn:
        # Never worse than where it started: a very short budget (or a bad step) can end above the
        # round-to-nearest loss; then the start (hard h(V) at its initial V is round-to-nearest, and the
        # activation steps as initialised) is restored, and the block's loss is its RTN loss again.
        with torch.no_grad():
            for param, value in zip([q.alpha for q in rounding] + [q.scale for q in learned_acts], start_state,
                                    strict=True):
                param.copy_(value)
        loss_after = _eval_loss(eval_forward, x_fp, x_q, y_target, device, positions)

    y_q = run_batched(plain, x_q, EVAL_BATCH, device, into)
    for name, fp, q in zip(block.outputs, y_fp, y_q, strict=True):
        cache.put(name, fp, q)
    return BlockRecord(block.index, block.name, block.kind, loss_before, loss_after, seconds, steps,
                       undecided, trace, kept_rtn, train_seconds=seconds)


def reconstruct(sim: QuantSim, blocks: list[Block], calibration: Sequence[Tensor], config: ReconConfig,
                device: torch.device | str = "cpu", cache_dtype: torch.dtype = torch.float32,
                progress: StepCallback | None = None, done: DoneCallback | None = None,
                finished: Sequence[BlockRecord] = (), max_cache_bytes: int | None = None,
                after_block: Callable[[list[BlockRecord]], None] | None = None,
                positions: Tensor | None = None, spill_dir: str | None = None) -> list[BlockRecord]:
    """Reconstruct ``blocks`` in order on ``calibration`` (one tensor per graph input, samples first).

    Activation ranges and weight scales must already be initialised (``QuantSim.calibrate``). Leaves the
    simulation with every quantizer on and the learned rounding hardened. ``finished``: records of blocks
    already reconstructed in an earlier run whose learned state is loaded into ``sim`` (resume): they are
    only replayed to rebuild the cache. ``after_block(records)`` runs after each block (checkpointing).
    ``max_cache_bytes`` bounds the cached block tensors in memory; past it they go to temporary files in
    ``spill_dir`` (the system's temporary folder by default). ``positions``
    [samples, T] marks real sequence positions (1) against padding (0): padded positions of [B, T, D] block
    outputs do not count in the loss.
    """
    device = torch.device(device)
    graph = sim.graph
    cache = TensorCache(cache_dtype, max_bytes=max_cache_bytes, spill_dir=spill_dir)
    for name, x in zip(graph.input_names, calibration, strict=True):
        cache.put(name, x, x)
    for acts in sim.acts.values():
        acts.scale.requires_grad_(False)
    for op in graph.weighted_ops().values():
        for param in op.parameters():
            param.requires_grad_(False)
    # Text: which cached tensors follow the padded width, so batches can be cut to their longest sentence.
    sim.set_quantization(weights=False, activations=False)
    layout = sequence_layout(graph, sorted({t for b in blocks for t in (*b.inputs, *b.outputs)}), calibration,
                             positions)
    sim.set_quantization(weights=True, activations=True)
    records = list(finished)
    try:
        for k, block in enumerate(blocks):
            if k < len(finished):
                _replay_one(sim, block, cache, config, device)
                cache.keep_only({t for later in blocks[k + 1:] for t in later.inputs})
                continue
            # QDrop's masks: one generator per block on the block's device, so a block's masks depend only on
            # the seed and its index (a resumed run draws the same ones), never on torch's global state.
            masks = torch.Generator(device=device).manual_seed(config.seed + k)
            start = time.perf_counter()
            record = _reconstruct_one(sim, block, cache, config, device, progress,
                                      None if positions is None else positions.to(device), layout, masks)
            record.seconds = time.perf_counter() - start
            records.append(record)
            if after_block is not None:
                after_block(records)
            if done is not None:
                done(record)
            cache.keep_only({t for later in blocks[k + 1:] for t in later.inputs})
            release_free_memory()  # the block's step tensors (see recon.allocator)
    finally:
        sim.set_quantization(weights=True, activations=True)
    return records
