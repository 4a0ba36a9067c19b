"""Checkpoints: what reconstruction learned, saved after every finished block, so a run can resume.

A checkpoint (``DIR/checkpoint.pt``, written to a temporary file and renamed) holds a fingerprint of the
run (model bytes, settings, calibration samples), the number of finished blocks, their records, and the
state of every quantizer: activation scale and zero point; weight scale and zero point and, for learned
rounding, the rounding variables and whether they are hardened. Resuming restores that state, replays the
finished blocks' forward passes to rebuild the block-input cache (no optimisation), and continues; the
per-block seeds make the result identical to an uninterrupted run's.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from qdrop_onnx.errors import QdropError
from qdrop_onnx.fileio import write_atomic
from qdrop_onnx.quant.adaround import AdaRoundQuantizer
from qdrop_onnx.quant.sim import QuantSim
from qdrop_onnx.recon.block import BlockRecord

CHECKPOINT_FILE = "checkpoint.pt"
FORMAT_VERSION = 1


class CheckpointError(QdropError):
    """A checkpoint that cannot be used for this run."""


def run_fingerprint(model_bytes: bytes, settings: dict[str, Any], samples: Sequence[torch.Tensor]) -> str:
    """sha256 over what decides the result: the model, every setting, the calibration samples (every input)."""
    digest = hashlib.sha256()
    digest.update(model_bytes)
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for x in samples:
        digest.update(x.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def sim_state(sim: QuantSim) -> dict[str, Any]:
    """Every quantizer's learned or initialised values (CPU tensors)."""
    acts = {t: {"scale": q.scale.detach().cpu().clone(), "zero_point": q.zero_point.detach().cpu().clone()}
            for t, q in sim.acts.items()}
    weights: dict[str, dict[str, Any]] = {}
    for name, q in sim.weights.items():
        entry: dict[str, Any] = {"scale": q.scale.detach().cpu().clone(),
                                 "zero_point": q.zero_point.detach().cpu().clone()}
        if isinstance(q, AdaRoundQuantizer):
            entry.update(alpha=q.alpha.detach().cpu().clone(), floor=q.floor.detach().cpu().clone(), hard=q.hard)
        weights[name] = entry
    return {"acts": acts, "weights": weights}


@torch.no_grad()
def load_sim_state(sim: QuantSim, state: dict[str, Any]) -> None:
    """Put ``state`` (from :func:`sim_state`) back into ``sim``, on the devices its tensors live on."""
    for tensor, values in state["acts"].items():
        q = sim.acts[tensor]
        q.scale.data = values["scale"].to(q.scale.device)
        q.zero_point = values["zero_point"].to(q.scale.device)
    for name, values in state["weights"].items():
        base = sim.weights[name]
        base.scale = values["scale"].to(base.scale.device)
        base.zero_point = values["zero_point"].to(base.scale.device)
        if "alpha" in values:
            ada = sim.use_adaround(name)
            ada.scale, ada.zero_point = base.scale, base.zero_point
            ada.floor = values["floor"].to(ada.alpha.device)
            ada.alpha.data = values["alpha"].to(ada.alpha.device)
            if values["hard"]:
                ada.harden()


@dataclass
class Checkpoint:
    fingerprint: str
    finished: int
    records: list[BlockRecord]
    state: dict[str, Any]


def save_checkpoint(directory: str | Path, checkpoint: Checkpoint) -> Path:
    """Write ``DIR/checkpoint.pt`` atomically (temporary file + rename)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CHECKPOINT_FILE
    payload = {"version": FORMAT_VERSION, "fingerprint": checkpoint.fingerprint, "finished": checkpoint.finished,
               "records": [asdict(r) for r in checkpoint.records], "state": checkpoint.state}
    try:
        write_atomic(path, lambda tmp: torch.save(payload, tmp))
    except OSError as exc:
        raise CheckpointError(f"cannot write checkpoint {path}: {exc.strerror or exc}") from None
    return path


def load_checkpoint(directory: str | Path, fingerprint: str) -> Checkpoint | None:
    """The checkpoint in ``directory`` if there is one; refuses one made by a different run."""
    path = Path(directory) / CHECKPOINT_FILE
    if not path.exists():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
        version = payload["version"]
    except Exception as exc:  # torch.load raises many types on damaged files
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(exc).__name__}); delete it to start over") \
            from None
    if version != FORMAT_VERSION or payload["fingerprint"] != fingerprint:
        raise CheckpointError(f"checkpoint {path} was made for a different model, settings or calibration data; "
                              "delete it or use another --checkpoint folder")
    return Checkpoint(payload["fingerprint"], payload["finished"],
                      [BlockRecord(**r) for r in payload["records"]], payload["state"])
