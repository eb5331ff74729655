"""A wall-clock budget for ``fit``: the run ends on time *with its learning-rate schedule complete*.

The plan (what it reserves, when its clocks start, how a resumed run continues): docs/design.md, "The time budget".
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from sft_lightning.errors import ConfigError, finite

PHASES = ("setup", "first_step", "training", "validation", "end")


class BudgetError(ConfigError):
    """The budget is invalid or leaves no time to train; the message says how the time was spent and the fix."""


class TimeBudget(Callback):
    """Train for ``minutes`` of wall time in all, with the learning-rate schedule tied to it.

    The CLI has it as ``--budget.minutes`` (``budget:`` in a config); elsewhere add it to the
    Trainer's callbacks.

    Args:
        minutes: the whole ``fit``, from this callback's creation to the end of the final validation
            and export. None: no budget (the callback does nothing; step- or epoch-based training).
        end_seconds: reserved after the final validation (adapter export, last checkpoint).
        validation_safety: factor on the estimated validation time (estimates are from one batch).
        validation_share: share of the budget reserved for the final validation when nothing can
            estimate it (a module without ``estimate_validation_seconds`` and no validation yet).
        validation_max_share: the most of the budget the final validation may take; a module whose
            ``estimate_validation_seconds`` takes ``max_seconds`` validates on fewer questions to fit.
        reestimate_at: share of the schedule at which the final validation is timed again, so the reserve follows
            the machine's speed near the end (shared machines drift); None: only before the first step.
        clock: a monotonic clock in seconds (tests pass a fake one).
    """

    def __init__(
        self,
        minutes: float | None = None,
        end_seconds: float = 10.0,
        validation_safety: float = 1.1,
        validation_share: float = 0.1,
        validation_max_share: float = 0.15,
        reestimate_at: float | None = 0.9,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        for ok, key, value, allowed in (
            (minutes is None or (finite(minutes) and minutes > 0), "minutes", minutes, "a positive number (or null: no budget)"),
            (finite(end_seconds) and end_seconds >= 0, "end_seconds", end_seconds, ">= 0"),
            (finite(validation_safety) and validation_safety >= 1, "validation_safety", validation_safety, ">= 1"),
            (finite(validation_share) and 0 <= validation_share < 1, "validation_share", validation_share, "in [0, 1)"),
            (finite(validation_max_share) and 0 < validation_max_share < 1, "validation_max_share", validation_max_share, "in (0, 1)"),
            (reestimate_at is None or (finite(reestimate_at) and 0 < reestimate_at < 1), "reestimate_at", reestimate_at,
             "in (0, 1) (or null)"),
        ):
            if not ok:
                raise BudgetError(f"budget.{key} must be {allowed}, got {value!r}. Fix: set budget.{key} to a value that is {allowed}.")
        self.active = minutes is not None
        self.budget_s = 60.0 * minutes if minutes is not None else math.inf
        self.end_s = end_seconds
        self.validation_safety = validation_safety
        self.validation_share = validation_share
        self.validation_max_share = validation_max_share
        self.reestimate_at = reestimate_at
        self._reestimated = False
        self._reestimate_next = False
        self.clock = clock
        self._created = clock()
        self._used_before = 0.0  # seconds used by earlier processes of this run (resume)
        self.phases: dict[str, float] = dict.fromkeys(PHASES, 0.0)
        self.steps = 0
        self.examples = 0
        self.validation_reserve_s: float | None = None
        self.progress = 0.0
        self.stopped_by_budget = False
        self._mark: float | None = None  # start of the phase being timed
        self._schedule_s = 0.0  # training time on the schedule's clock (after the first step)
        self._stepped = False  # a step done in this process (the first one compiles, again after a resume)
        self._last_validation_s: float | None = None
        self._timing_s = 0.0  # seconds the first timing of the final validation took
        self._restored_budget_s: float | None = None  # the budget of the checkpoint this run resumed from
        self.validation_pending = False  # resumed after training ended: the final validation is still owed

    # ------------------------------------------------------------------ the clock
    def used(self) -> float:
        """Seconds of the budget used so far (earlier processes of a resumed run included)."""
        return self._used_before + self.clock() - self._created

    def remaining_training(self) -> float:
        """Seconds of training left once the final validation and the end are reserved."""
        reserve = self.validation_reserve_s if self.validation_reserve_s is not None else 0.0
        return self.budget_s - self.used() - reserve - self.end_s

    def _lap(self) -> float:
        """Seconds since the last mark, and a new mark."""
        now = self.clock()
        elapsed = 0.0 if self._mark is None else now - self._mark
        self._mark = now
        return elapsed

    # ------------------------------------------------------------------ hooks
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.active:
            return
        started = self.clock()
        self.validation_reserve_s = self._estimate_validation(trainer, pl_module)
        self._timing_s = self.clock() - started  # what timing the validation costs: the re-estimate costs as much
        self.phases["setup"] += self.used() - sum(self.phases.values())  # timing validation included
        self._lap()
        if self._resumed_after_training_ended():
            self._end_without_training(trainer)
            return
        left = self.remaining_training()
        rank_zero_info(
            f"time budget {self.budget_s / 60:g} min: {self.used():.0f} s used before training, "
            f"~{self.validation_reserve_s:.0f} s reserved for the final validation and {self.end_s:.0f} s for the end; "
            f"{max(left, 0) / 60:.1f} min to train, the learning-rate schedule follows that time"
        )
        if left <= 0:
            raise BudgetError(
                f"the time budget of {self.budget_s / 60:g} min leaves no time to train: {self.used():.0f} s are used "
                f"before the first step and the final validation needs ~{self.validation_reserve_s:.0f} s. "
                "Fix: raise --budget.minutes, or validate on fewer questions (a smaller --data.val_size or --data.val_fraction)."
            )

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not self.active:
            return
        elapsed = self._lap()
        if not self._stepped:
            self._stepped = True
            self.phases["first_step"] += elapsed
        else:
            self.phases["training"] += elapsed
            self._schedule_s += elapsed
        self.steps += 1
        self.examples += _batch_size(batch)
        left = self.remaining_training()
        progress = 1.0 if left <= 0 else self._schedule_s / (self._schedule_s + left)
        stop = progress >= 1.0
        if trainer.world_size > 1:  # one clock for all ranks: the same learning rate and the same last step
            progress, stop = trainer.strategy.broadcast((progress, stop), src=0)
        self.progress = progress
        self._reestimate_next = self._due_for_reestimate(progress, stop, trainer)
        if stop and not trainer.should_stop:
            self.stopped_by_budget = True
            trainer.should_stop = True
        elif _last_step_of_trainer(trainer):
            # max_steps/max_epochs ends the run first: stop through should_stop too, so that the run
            # still ends with its validation (the configs validate only when the run stops)
            trainer.should_stop = True

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        # between two steps, not after one: a stop (SIGTERM) while timing drops nothing that was trained
        if self.active and self._reestimate_next:
            self._reestimate_next = False
            self._reestimate(trainer, pl_module)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.active:
            return
        if not trainer.sanity_checking and self._mark is not None:
            # since the last batch: checkpoint saving and loop overhead, part of training (or, for the
            # validation owed after a resume, the fit that ended without a step and its export)
            self.phases["end" if self.validation_pending else "training"] += self._lap()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.active:
            return
        if trainer.sanity_checking:
            return
        elapsed = self._lap()
        self.phases["validation"] += elapsed
        self._last_validation_s = elapsed
        self.validation_pending = False
        if self.validation_reserve_s is not None and not trainer.should_stop:
            # a measured validation is a better estimate of the final one than the probe
            self.validation_reserve_s = elapsed * self.validation_safety

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.active:
            return
        # after the last batch or the final validation: export and the last checkpoint
        self.phases["end"] += self.used() - sum(self.phases.values())

    def _due_for_reestimate(self, progress: float, stop: bool, trainer: L.Trainer) -> bool:
        return (
            self.reestimate_at is not None
            and not self._reestimated
            and not stop
            and progress >= self.reestimate_at
            and self.validation_reserve_s is not None
            and self._last_validation_s is None  # a measured validation is better than any estimate
            and trainer.world_size == 1  # the estimate runs on one rank's data
        )

    def _resumed_after_training_ended(self) -> bool:
        """A resumed run whose checkpoint was saved after its last step (stopped in the final validation or the
        export), with the same budget: its schedule is complete, so another step would only change the adapter."""
        return self._restored_budget_s is not None and self._restored_budget_s == self.budget_s and self.progress >= 1.0

    def _end_without_training(self, trainer: L.Trainer) -> None:
        """End the fit before any step; the CLI then runs the final validation that the interruption cut short."""
        self.stopped_by_budget = True
        self.validation_pending = self.validation_reserve_s is not None and self.validation_reserve_s > 0
        trainer.should_stop = True
        rank_zero_info(
            f"time budget: the run resumed had ended its training at step {trainer.global_step} before it was "
            "interrupted; no step is trained again"
            + ("; the final validation follows" if self.validation_pending else "")
        )

    def _reestimate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Time the final validation again near the end (its time counts as validation)."""
        self._reestimated = True
        before = self.validation_reserve_s
        self.phases["training"] += self._lap()
        # the share caps all of validation: this timing itself (and any validation so far) comes off the cap
        spent = self.phases["validation"] + self._timing_s
        again = self._estimate_validation(trainer, pl_module, spent_s=spent)
        # a slower machine raises the reserve; a lower second timing moves it halfway: both are samples of a noisy
        # machine (docs/learning.md), and running over the budget costs more than the training a larger reserve
        # gives up
        self.validation_reserve_s = again if before is None or again >= before else (again + before) / 2
        self.phases["validation"] += self._lap()
        rank_zero_info(
            f"time budget: the final validation timed again at {self.progress:.0%} of the schedule: "
            f"~{self.validation_reserve_s:.0f} s reserved (was {before:.0f} s)"
        )

    def _estimate_validation(self, trainer: L.Trainer, pl_module: L.LightningModule, spent_s: float = 0.0) -> float:
        """Seconds to reserve for the final validation; ``spent_s`` of the validation share is already used."""
        if not trainer.enable_validation or trainer.limit_val_batches == 0:
            return 0.0
        estimate = getattr(pl_module, "estimate_validation_seconds", None)
        seconds = None
        if callable(estimate):
            takes_limit = "max_seconds" in inspect.signature(estimate).parameters
            limit = max(self.validation_max_share * self.budget_s - spent_s, 0.0) / self.validation_safety
            seconds = estimate(max_seconds=limit) if takes_limit else estimate()
        if seconds is None and self._last_validation_s is not None:
            seconds = self._last_validation_s
        if seconds is None:
            return self.validation_share * self.budget_s
        return float(seconds) * self.validation_safety

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        if not self.active:
            return {}
        return {
            "used_s": self.used(),
            "phases": dict(self.phases),
            "steps": self.steps,
            "examples": self.examples,
            "schedule_s": self._schedule_s,
            "progress": self.progress,
            "budget_s": self.budget_s,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not self.active or not state_dict:
            return
        if abs(float(state_dict.get("budget_s", self.budget_s)) - self.budget_s) > 1e-6:
            rank_zero_warn(
                f"TimeBudget: the checkpoint's run had a budget of {state_dict['budget_s'] / 60:g} min, this one "
                f"{self.budget_s / 60:g} min; the time already used counts against the new budget."
            )
        # This process's own time (argument parsing, setup) is added on top of the saved total by used().
        self._used_before = float(state_dict["used_s"])
        self._restored_budget_s = float(state_dict.get("budget_s", self.budget_s))
        self.phases = {**dict.fromkeys(PHASES, 0.0), **state_dict.get("phases", {})}
        self.steps = int(state_dict.get("steps", 0))
        self.examples = int(state_dict.get("examples", 0))
        self._schedule_s = float(state_dict.get("schedule_s", 0.0))
        self.progress = float(state_dict.get("progress", 0.0))  # the learning rate of the first resumed step

    # ------------------------------------------------------------------ summary
    def summary_lines(self) -> list[str]:
        """What the summary prints: the plan's outcome, per phase."""
        used = self.used()
        parts = ", ".join(
            f"{name.replace('_', ' ')} {seconds:.0f} s ({seconds / self.budget_s:.0%})"
            for name, seconds in self.phases.items()
            if seconds > 0
        )
        if self.validation_reserve_s:
            parts += (
                f"; the final validation was planned at {self.validation_reserve_s / self.validation_safety:.0f} s "
                f"({self.validation_reserve_s:.0f} s reserved)"
            )
            if self._last_validation_s is not None:
                parts += f" and took {self._last_validation_s:.0f} s"
        ended = "the budget" if self.stopped_by_budget else "the trainer's max_steps/max_epochs"
        return [
            f"{'time budget':<16} {self.budget_s / 60:g} min; used {used / 60:.1f} min ({used / self.budget_s:.0%}), ended by {ended}",
            f"{'phases':<16} {parts}",
            f"{'steps':<16} {self.steps} ({self.examples} examples)",
        ]


def _last_step_of_trainer(trainer: L.Trainer) -> bool:
    """True when this step is the trainer's last by ``max_steps`` or ``max_epochs``."""
    max_steps = getattr(trainer, "max_steps", -1)
    if max_steps is not None and max_steps > 0 and trainer.global_step >= max_steps:
        return True
    max_epochs = getattr(trainer, "max_epochs", None)
    if max_epochs is None or max_epochs < 0:
        return False
    last_batch = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
    return bool(last_batch) and trainer.current_epoch + 1 >= max_epochs


def find_time_budget(trainer: L.Trainer | None) -> TimeBudget | None:
    """The trainer's active TimeBudget callback, if it has one."""
    if trainer is None:
        return None
    return next((cb for cb in trainer.callbacks if isinstance(cb, TimeBudget) and cb.active), None)


def _batch_size(batch: Any) -> int:
    """Examples in a batch: the first dimension of its first tensor (0 if there is none)."""
    values = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (list, tuple)) else [batch]
    for value in values:
        shape = getattr(value, "shape", None)
        if shape:
            return int(shape[0])
    return 0
