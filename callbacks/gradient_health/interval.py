"""What is logged between two log points: the largest gradient norm of the interval (total and per module).

Lightning writes logs every ``log_every_n_steps``; a spike on a step in between would never be seen if only the
step that happens to be logged were reported, so the maximum over the interval is kept here and reset on logging.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import lightning.pytorch as pl
import torch

from .keys import KEY_GRAD_NORM, KEY_LOSS_SCALE, KEY_MODULE_PREFIX, KEY_ROLLED_BACK, KEY_SCALER_SKIPPED, KEY_SKIPPED


class IntervalMax:
    """Running maxima since the last log point."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._max: float | None = None
        self._nonfinite = False
        self._modules: dict[str, float] = {}
        self._optimizers: dict[str, float] = {}
        self.steps = 0  # optimiser steps measured since the last log point

    def add(self, grad_norm: float, optimizer: str = "optimizer") -> None:
        """One optimiser's step: the total is the maximum over every optimiser's steps of the interval."""
        self.steps += 1
        if math.isfinite(grad_norm):
            self._max = grad_norm if self._max is None else max(self._max, grad_norm)
            previous = self._optimizers.get(optimizer, -math.inf)
            self._optimizers[optimizer] = grad_norm if not math.isfinite(previous) else max(previous, grad_norm)
        else:
            self._nonfinite = True
            self._optimizers.setdefault(optimizer, math.inf)  # replaced by the first finite norm

    def add_modules(self, tensor_norms: Iterable[tuple[str, float]]) -> None:
        """Per-tensor norms labelled with their module: folded into per-module norms, then into the maxima."""
        squares: dict[str, float] = {}
        for module, v in tensor_norms:
            squares[module] = squares.get(module, 0.0) + v * v
        for module, sq in squares.items():
            value = math.sqrt(sq)
            if math.isfinite(value) and value > self._modules.get(module, -1.0):
                self._modules[module] = value

    def grad_norm(self) -> float:
        """The interval's largest finite norm; ``inf`` if every step was non-finite; 0 if there was no step."""
        if self._max is not None:
            return self._max
        return math.inf if self._nonfinite else 0.0

    def per_optimizer(self) -> dict[str, float]:
        """Each optimiser's largest norm of the interval (``inf`` when all of its steps were non-finite)."""
        return dict(self._optimizers)

    def top_modules(self, k: int) -> list[tuple[str, float]]:
        return sorted(self._modules.items(), key=lambda item: item[1], reverse=True)[:k]


def log_interval(
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    interval: IntervalMax,
    *,
    skipped_steps: int,
    rolled_back_steps: int,
    loss_scale: float | None,
    scaler_skipped_steps: int,
    topk: int,
    prog_bar: bool,
    extra: dict[str, float] | None = None,
) -> None:
    """Log the interval's maxima and the counters on the steps Lightning writes logs, then start a new interval.

    Called once per batch, after every optimiser of the batch stepped: with several optimisers the total is the
    maximum over all of them, and each has its own ``grad_health/grad_norm/<optimizer>``."""
    if interval.steps == 0 or not should_log(trainer):
        return
    metrics: dict[str, float] = {
        KEY_GRAD_NORM: interval.grad_norm(),
        KEY_SKIPPED: float(skipped_steps),
        KEY_ROLLED_BACK: float(rolled_back_steps),
    }
    if loss_scale is not None:
        metrics[KEY_LOSS_SCALE] = loss_scale
        metrics[KEY_SCALER_SKIPPED] = float(scaler_skipped_steps)
    metrics.update(extra or {})
    optimizers = interval.per_optimizer()
    if len(optimizers) > 1:
        for label, value in optimizers.items():
            metrics[KEY_MODULE_PREFIX + label] = value
    if topk > 0:
        for module, value in interval.top_modules(topk):
            metrics[KEY_MODULE_PREFIX + module] = value
    for key, value in metrics.items():
        # host values as CPU tensors: a Python float would be copied to the module's device (a blocking H2D
        # copy, i.e. a sync on CUDA), and Lightning keeps a logged metric on its value's device
        pl_module.log(
            key,
            torch.tensor(value, dtype=torch.float32),
            on_step=True,
            on_epoch=False,
            sync_dist=False,
            prog_bar=prog_bar and key == KEY_GRAD_NORM,
        )
    interval.reset()


def should_log(trainer: pl.Trainer) -> bool:
    try:
        return bool(trainer._logger_connector.should_update_logs)  # Lightning's own "flush now" rule
    except AttributeError:  # pragma: no cover - private API moved
        n = trainer.log_every_n_steps
        return n > 0 and (trainer.global_step + 1) % n == 0
