"""SIGTERM stops a run within seconds wherever it is, and a step it cuts short is trained again on resume."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from helpers.runs import MAX_STEPS, adapter_weights, smoke_fit
from lightning.pytorch.callbacks import Callback

LONG = 60.0  # what a phase that ignored the signal would still take, in seconds


class SignalIn(Callback):
    """Test-only: sends SIGTERM to its own process from inside a phase, then keeps that phase busy for ``LONG``
    seconds in Python (as a long generation or a long step's forward would): a run that only stops between
    steps would take that long to exit. The moment of the signal is written to ``stamp``."""

    def __init__(self, phase: str, step: int, stamp: str) -> None:
        self.phase, self.step, self.stamp, self.sent = phase, step, stamp, False

    def _fire(self, trainer: L.Trainer) -> None:
        if self.sent or trainer.global_step != self.step:
            return
        self.sent = True
        Path(self.stamp).write_text(str(time.time()))
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + LONG
        while time.monotonic() < deadline:
            time.sleep(0.01)

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        if self.phase == "forward":
            self._fire(trainer)

    def on_validation_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.phase == "validation":
            self._fire(trainer)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.phase == "train_start":
            self._fire(trainer)


def signal_in(phase: str, step: int, stamp: Path) -> str:
    callback = {"class_path": "test_prompt_stop.SignalIn", "init_args": {"phase": phase, "step": step, "stamp": str(stamp)}}
    return f"--trainer.callbacks+={json.dumps(callback)}"


@pytest.mark.parametrize(("phase", "step"), [("train_start", 0), ("validation", 4)])
def test_sigterm_stops_within_seconds_outside_a_step(tmp_path: Path, phase: str, step: int) -> None:
    stamp = tmp_path / "signalled"
    result = smoke_fit(tmp_path, signal_in(phase, step, stamp))
    stopped = time.time() - float(stamp.read_text())
    assert result.returncode == 128 + signal.SIGTERM, result.stderr[-3000:]
    assert stopped < 5 + 3, f"exited {stopped:.1f} s after SIGTERM"  # + process teardown on a loaded machine
    assert f"interrupted by SIGTERM at step {step}" in result.stderr


def test_a_step_stopped_before_its_update_is_trained_again_on_resume(tmp_path: Path) -> None:
    (tmp_path / "straight").mkdir()
    reference = smoke_fit(tmp_path / "straight")
    assert reference.returncode == 0, reference.stderr[-3000:]
    expected = adapter_weights(tmp_path / "straight" / "runs" / "smoke" / "version_0")

    stamp = tmp_path / "signalled"
    cut = smoke_fit(tmp_path, signal_in("forward", 5, stamp))
    assert cut.returncode == 128 + signal.SIGTERM, cut.stderr[-3000:]
    assert time.time() - float(stamp.read_text()) < LONG / 2
    runs = tmp_path / "runs" / "smoke"
    ckpt = torch.load(runs / "version_0" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 5  # the step in flight was dropped, not half-applied

    final = smoke_fit(tmp_path, "--ckpt_path", "last")
    assert final.returncode == 0, final.stderr[-3000:]
    state = torch.load(runs / "version_1" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["global_step"] == MAX_STEPS
    weights = adapter_weights(runs / "version_1")
    for name, tensor in expected.items():
        torch.testing.assert_close(weights[name], tensor, rtol=0, atol=1e-6, msg=name)
