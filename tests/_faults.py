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
