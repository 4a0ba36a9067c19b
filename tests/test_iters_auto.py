"""--iters auto: each block's budget from where its warm-up stops improving (recon.block.WarmupPlateau)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cli.main import cli
from qdrop_onnx.api import quantize
from qdrop_onnx.data import TensorDataset, input_spec
from qdrop_onnx.graph import load_model
from qdrop_onnx.quant import QuantConfig
from qdrop_onnx.quant.config import ConfigError
from qdrop_onnx.recon.block import ReconConfig, WarmupPlateau
from qdrop_onnx.recon.policy import AUTO_MAX_ITERS
from tests.helpers import small_cnn


def _ending_step(losses: list[float], config: ReconConfig) -> int:
    plateau = WarmupPlateau(config)
    for step, loss in enumerate(losses):
        if plateau.ended(step, torch.tensor(loss)):
            return step + 1
    raise AssertionError("the warm-up never ended")


def test_a_flat_loss_ends_the_warm_up_after_two_windows_and_scales_the_schedule() -> None:
    config = ReconConfig(iters=2000, auto=True)
    warm = _ending_step([1.0] * 2000, config)
    assert warm == 100  # the second window of 50 does not beat the first
    assert WarmupPlateau(config).budget(warm) == 500  # warm-up is 20 % of the schedule, as with a fixed budget


def test_a_loss_still_falling_keeps_the_whole_budget() -> None:
    config = ReconConfig(iters=2000, auto=True)
    warm = _ending_step([0.999 ** step for step in range(2000)], config)  # 5 % better per window
    assert warm == 400 and WarmupPlateau(config).budget(warm) == 2000


def test_an_improvement_under_the_tolerance_counts_as_a_plateau() -> None:
    config = ReconConfig(iters=2000, auto=True)
    # 0.05 % better per window (under 0.1 %) ends it at the second window; 0.2 % per window does not.
    assert _ending_step([0.99999 ** step for step in range(2000)], config) == 100
    assert _ending_step([0.99996 ** step for step in range(2000)], config) == 400


def _small_run(iters: int | str) -> list:
    model, _ = small_cnn()
    spec = input_spec(load_model(model, simplify=False).model)
    calib = np.random.RandomState(1).randn(128, 3, 8, 8).astype(np.float32)
    config = QuantConfig(w_bits=2, a_bits=4, quantize_first_last=True, iters=iters, samples=128,
                         calib_act_samples=128)
    return quantize(model, TensorDataset(calib, spec), config).blocks


def test_auto_takes_fewer_steps_and_still_beats_round_to_nearest() -> None:
    blocks = _small_run("auto")
    steps = [b.iters for b in blocks]
    # Measured: the three blocks settle and take a fraction of the 2,000 steps.
    assert all(100 <= s <= AUTO_MAX_ITERS for s in steps) and sum(steps) < 3 * AUTO_MAX_ITERS
    assert all(b.loss_after < b.loss_before for b in blocks)


def test_iters_accepts_auto_and_refuses_other_words(tmp_path) -> None:
    assert QuantConfig(iters="auto").validate().iters == "auto"
    with pytest.raises(ConfigError, match=r"--iters must be a positive integer or auto, got 'fast'"):
        QuantConfig(iters="fast").validate()
    model, _ = small_cnn()
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    result = CliRunner().invoke(cli, ["quantize", str(path), "--calib", str(tmp_path), "--iters", "fast"])
    assert result.exit_code == 2
    assert "'fast' is neither a positive integer nor 'auto'" in result.output
    assert not (tmp_path / "m.w4a4.onnx").exists()
