"""Progress as plain lines, for runs whose output goes to a file or a CI log instead of a terminal.

A tqdm bar redrawn with carriage returns is one enormous line in a log file; the CLI uses these lines when stderr is not a terminal.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

import lightning as L
from lightning.pytorch.callbacks import Callback

from callbacks import KEY_GRAD_NORM
from sft_lightning.budget.time_budget import find_time_budget

_SHOWN = (("train/loss", "loss {:.4f}"), ("lr", "lr {:.2e}"), ("train/tokens_per_s", "{:.0f} tokens/s"), (KEY_GRAD_NORM, "grad norm {:.2f}"))


class ProgressLines(Callback):
    """One progress line every ``every_seconds`` of training, and one per validation."""

    def __init__(self, every_seconds: float = 30.0, stream: TextIO | None = None) -> None:
        self.every_seconds = every_seconds
        self.stream = stream
        self._last = 0.0
        self._validation_start = 0.0

    def _print(self, trainer: L.Trainer, text: str) -> None:
        if trainer.is_global_zero:
            print(text, file=self.stream or sys.stderr, flush=True)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last = time.monotonic()
        self._print(trainer, f"training started (progress every {self.every_seconds:.0f} s)")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        now = time.monotonic()
        if now - self._last < self.every_seconds:
            return
        self._last = now
        metrics = trainer.progress_bar_metrics
        parts = [f"step {trainer.global_step}", f"epoch {trainer.current_epoch}"]
        parts += [fmt.format(float(metrics[key])) for key, fmt in _SHOWN if key in metrics]
        budget = find_time_budget(trainer)
        if budget is not None:
            parts.append(f"budget {budget.used() / budget.budget_s:.0%} used")
        self._print(trainer, " | ".join(parts))

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._validation_start = time.monotonic()
            self._print(trainer, f"validating at step {trainer.global_step} ...")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        shown = ", ".join(
            f"{key} {float(value):.4f}" for key, value in trainer.callback_metrics.items() if key.endswith(("/accuracy", "/loss"))
        )
        self._print(trainer, f"validation done in {time.monotonic() - self._validation_start:.0f} s: {shown}")
        self._last = time.monotonic()
