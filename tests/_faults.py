"""Test-only callbacks that put a real fault into a CLI run (imported by class path from the tests directory)."""

from __future__ import annotations

import lightning as L


class ForceLearningRate(L.Callback):
    """Sets the module's learning rate before its optimizer is built, past the range ``model.learning_rate``
    accepts: the way to make LoRA weights overflow for real, since the CLI refuses such a value."""

    def __init__(self, learning_rate: float) -> None:
        self.learning_rate = learning_rate

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        pl_module.hparams.learning_rate = self.learning_rate
