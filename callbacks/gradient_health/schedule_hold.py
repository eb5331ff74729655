"""Hold the LR schedule on a step the GradScaler skipped (opt-in: ``hold_scheduler_on_scaler_skip=True``).

Under ``16-mixed`` a step whose gradients overflow is skipped by ``scaler.step`` - the weights do not move - but
Lightning's training epoch loop still calls ``update_lr_schedulers("step")`` after the batch (Lightning issue
#18828), so every back-off moves the warm-up/decay schedule one step ahead of the updates actually made.

How it is held: Lightning steps the step-interval schedulers after the optimiser step and before the callbacks'
``on_train_batch_end``. The callback knows at ``on_before_optimizer_step`` - from the flags it already read, no
extra host sync - that the scaler will skip (non-finite unscaled gradients under an active scaler). Only then the
state of every step-interval, non-plateau scheduler (``last_epoch``, ``_step_count``, ``_last_lr``, ...) and the
learning rates of its optimiser's param groups are copied; at ``on_train_batch_end`` they are put back. So the
scheduler's ``step()`` still runs (Lightning's own scheduler progress counters are untouched) but it is undone
before anything else - a checkpoint, the next step, a logger - sees it. Healthy steps pay nothing.
Plateau schedulers are left alone (they follow a monitored metric, not the step count), and so are
epoch-interval ones (an epoch is an epoch whatever the scaler did).
"""

from __future__ import annotations

import copy
from typing import Any

import lightning.pytorch as pl
from torch import Tensor


class ScheduleHold:
    """Scheduler and learning-rate state taken before a scaler-skipped step, restored at the end of its batch."""

    def __init__(self) -> None:
        self.pending: list[tuple[Any, dict[str, Any], list[Any]]] = []

    def capture(self, trainer: pl.Trainer) -> bool:
        """Before the optimiser step the scaler will skip: keep what Lightning's ``scheduler.step()`` will change.
        ``True`` when there is a schedule to hold."""
        self.pending.clear()
        if not trainer.lightning_module.automatic_optimization:
            return False  # under manual optimisation the module steps its schedulers itself
        for config in trainer.lr_scheduler_configs:
            if config.interval != "step" or config.reduce_on_plateau:
                continue
            scheduler = config.scheduler
            groups = getattr(scheduler, "optimizer", None)
            lrs = [_copy(group.get("lr")) for group in groups.param_groups] if groups is not None else []
            self.pending.append((scheduler, copy.deepcopy(scheduler.state_dict()), lrs))
        return bool(self.pending)

    def release(self) -> None:
        """Put every captured scheduler and learning rate back (after Lightning stepped them)."""
        for scheduler, state, lrs in self.pending:
            scheduler.load_state_dict(state)
            optimizer = getattr(scheduler, "optimizer", None)
            if optimizer is None:
                continue
            for group, lr in zip(optimizer.param_groups, lrs):
                if isinstance(group.get("lr"), Tensor) and isinstance(lr, Tensor):
                    group["lr"].copy_(lr)  # a tensor lr (capturable/fused optimisers) is updated in place
                else:
                    group["lr"] = lr
        self.pending.clear()


def _copy(value: Any) -> Any:
    return value.detach().clone() if isinstance(value, Tensor) else value
