"""Test-only callbacks that put a real fault or signal into a CLI run, loaded by class path (``helpers.faults.X``:
``run_cli`` puts the tests directory on the run's PYTHONPATH)."""

from __future__ import annotations

import os
from typing import Any

import lightning as L


class ForceLearningRate(L.Callback):
    """Sets the module's learning rate before its optimizer is built, past the range ``model.learning_rate``
    accepts: the way to make LoRA weights overflow for real, since the CLI refuses such a value."""

    def __init__(self, learning_rate: float) -> None:
        self.learning_rate = learning_rate

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        pl_module.hparams.learning_rate = self.learning_rate


class PoisonMarkedRows(L.Callback):
    """Makes every row whose input holds ``marker`` (one character of the tiny model's character tokenizer) go
    NaN at the input embeddings, in every forward: a corrupt record that trips whenever it is trained on."""

    def __init__(self, marker: str = "€") -> None:
        self.marker = marker

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        marker_id = pl_module.tokenizer.convert_tokens_to_ids(self.marker)

        def poison(module, args, output):
            rows = (args[0] == marker_id).any(dim=-1)
            return output.masked_fill(rows[:, None, None], float("nan")) if bool(rows.any()) else output

        pl_module.model.get_input_embeddings().register_forward_hook(poison)


class SignalAt(L.Callback):
    """Sends ``signum`` to its own process in the middle of the optimizer step that follows ``step`` (gradients
    computed, update not yet applied): the worst moment to stop."""

    def __init__(self, signum: int, step: int) -> None:
        self.signum, self.step, self.sent = signum, step, False

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        if trainer.global_step == self.step and not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.signum)
