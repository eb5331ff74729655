"""Decide: whether a step is healthy, a loss-scaler back-off or a trip, with its diagnosis and action, as plain Python.

Nothing here touches tensors (the numbers were already all-reduced), so the rules read, and test by table, in one place.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

# --- diagnosis lines (stable strings: tests and log scrapers match on them) -------------------------------
D_PARAMS_BEFORE = "parameters already non-finite before this step"
D_PARAMS_AFTER = "parameters became non-finite in the optimizer step although loss and gradients were finite"
D_EMPTY_BATCH = "batch has no supervised tokens"
D_LOSS_NAN = "non-finite loss (nan) in the forward pass"
D_LOSS_INF = "non-finite loss (inf) in the forward pass"
D_GRAD_OVERFLOW = "loss finite but gradients non-finite: overflow in backward"
D_GRAD_NAN = "loss finite but gradients non-finite: nan in backward"
D_STATE = "a buffer or optimiser state to be checkpointed is non-finite"
D_BUFFERS = "a buffer (e.g. BatchNorm running statistics) became non-finite in the forward pass"
SCALE_COLLAPSE_PREFIX = "fp16 overflow"


def scale_collapse(from_scale: float, to_scale: float, steps: int) -> str:
    """Diagnosis for a loss scale that kept backing off (or fell below the floor)."""
    return f"{SCALE_COLLAPSE_PREFIX}: scale collapsed from {from_scale:g} to {to_scale:g} in {steps} steps"


# --- the per-step flag vector -------------------------------------------------------------------------------
# Order of the flags in the one tensor that is all-reduced (SUM) every step: after the reduce each entry is the
# number of ranks that saw the condition, so "> 0" is the global decision and the count goes into the report.
FLAG_NAMES: tuple[str, ...] = (
    "loss_nan",
    "loss_inf",
    "empty_batch",
    "grad_nan",
    "grad_inf",
    "params_nonfinite_before",
    "params_nonfinite_after_prev_step",
    "buffers_nonfinite",
)


@dataclass(frozen=True)
class StepFlags:
    """Rank counts for each condition of one optimiser step (already reduced over ranks)."""

    loss_nan: int = 0
    loss_inf: int = 0
    empty_batch: int = 0
    grad_nan: int = 0
    grad_inf: int = 0
    params_nonfinite_before: int = 0
    params_nonfinite_after_prev_step: int = 0
    buffers_nonfinite: int = 0

    @classmethod
    def from_values(cls, values: list[float]) -> StepFlags:
        return cls(*(int(round(v)) for v in values[: len(FLAG_NAMES)]))

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in FLAG_NAMES}

    @property
    def grads_nonfinite(self) -> bool:
        return bool(self.grad_nan or self.grad_inf)


class Verdict(str, Enum):
    HEALTHY = "healthy"
    SCALER_SKIP = "scaler_skip"  # GradScaler found inf/nan and skips the step itself: counted, not fatal
    TRIP = "trip"


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    diagnosis: str | None = None
    # the weights in memory are already non-finite: dropping this update cannot repair them
    params_poisoned: bool = False
    # only aborting helps (the scaler has been skipping already; one more skip changes nothing)
    fatal: bool = False


HEALTHY = Decision(Verdict.HEALTHY)
SCALER_SKIP = Decision(Verdict.SCALER_SKIP)


@dataclass
class ScalerTracker:
    """Host-side loss-scale bookkeeping: history, consecutive back-offs, total back-offs."""

    history: deque[tuple[int, float]] = field(default_factory=lambda: deque(maxlen=256))
    consecutive: int = 0
    run_start_scale: float | None = None  # scale at the first step of the current back-off run
    total_skipped: int = 0

    def record(self, step: int, scale: float, skipped: bool) -> None:
        self.history.append((step, scale))
        if skipped:
            if self.consecutive == 0:
                self.run_start_scale = scale
            self.consecutive += 1
            self.total_skipped += 1
        else:
            self.consecutive = 0
            self.run_start_scale = None

    def state_dict(self) -> dict[str, Any]:
        return {
            "scaler_skipped_steps": self.total_skipped,
            "consecutive_scaler_skips": self.consecutive,
            "scaler_run_start_scale": self.run_start_scale,
            "loss_scale_history": [list(item) for item in self.history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.total_skipped = int(state.get("scaler_skipped_steps", 0))
        self.consecutive = int(state.get("consecutive_scaler_skips", 0))
        self.run_start_scale = state.get("scaler_run_start_scale")
        self.history.clear()
        for step, scale in state.get("loss_scale_history", []):
            self.history.append((int(step), float(scale)))

    def peak(self) -> tuple[int, float]:
        """(step, scale) of the largest scale still in the history."""
        best: tuple[int, float] = (0, float("nan"))
        for step, scale in self.history:
            if scale >= best[1] or math.isnan(best[1]):  # the latest step at the peak
                best = (step, scale)
        return best


def decide(
    flags: StepFlags,
    *,
    step: int,
    loss_scale: float | None,
    tracker: ScalerTracker,
    max_consecutive_skipped: int,
    min_loss_scale: float,
) -> Decision:
    """THE NaN DECISION for one optimiser step.

    ``loss_scale`` is ``None`` when no GradScaler is active. The order of the checks is the order of causes:
    poisoned weights explain a NaN loss, a batch without targets explains a NaN mean loss, a non-finite loss
    explains non-finite gradients. Only gradients that are non-finite *while the loss is finite* can be a
    loss-scaler overflow; under a scaler those are the scaler's business until they persist.
    """
    if flags.params_nonfinite_after_prev_step:
        return Decision(Verdict.TRIP, D_PARAMS_AFTER, params_poisoned=True)
    if flags.params_nonfinite_before:
        return Decision(Verdict.TRIP, D_PARAMS_BEFORE, params_poisoned=True)
    if flags.empty_batch:
        return Decision(Verdict.TRIP, D_EMPTY_BATCH)
    if flags.loss_nan:
        return Decision(Verdict.TRIP, D_LOSS_NAN)
    if flags.loss_inf:
        return Decision(Verdict.TRIP, D_LOSS_INF)
    if flags.buffers_nonfinite:  # a scaler back-off cannot repair state the forward wrote
        return Decision(Verdict.TRIP, D_BUFFERS)

    if loss_scale is None:
        # bf16 / fp32 / fp16 without a scaler: nothing will back off, so a non-finite gradient is fatal now
        if flags.grad_nan:
            return Decision(Verdict.TRIP, D_GRAD_NAN)
        if flags.grad_inf:
            return Decision(Verdict.TRIP, D_GRAD_OVERFLOW)
        return HEALTHY

    if flags.grads_nonfinite:
        run = tracker.consecutive + 1  # overflowing steps in a row, this one included
        if run > max_consecutive_skipped:
            start = tracker.run_start_scale if tracker.consecutive else loss_scale
            return Decision(Verdict.TRIP, scale_collapse(start or loss_scale, loss_scale, run), fatal=True)
    if loss_scale < min_loss_scale:
        peak_step, peak_scale = tracker.peak()
        if peak_scale != peak_scale or peak_scale < loss_scale:  # empty history / nan
            peak_step, peak_scale = step, loss_scale
        return Decision(Verdict.TRIP, scale_collapse(peak_scale, loss_scale, max(step - peak_step, 1)), fatal=True)
    return SCALER_SKIP if flags.grads_nonfinite else HEALTHY


# --- the action policy --------------------------------------------------------------------------------------
# Diagnoses for which replaying the batch can say where the non-finite value started (the weights were finite).
REPLAYABLE = frozenset({D_LOSS_NAN, D_LOSS_INF, D_GRAD_NAN, D_GRAD_OVERFLOW})


def replayable(decision: Decision) -> bool:
    """A trip on a non-finite loss or gradient (a scale collapse included), with weights that were finite."""
    assert decision.diagnosis is not None
    return not decision.params_poisoned and (
        decision.diagnosis in REPLAYABLE or decision.diagnosis.startswith(SCALE_COLLAPSE_PREFIX)
    )


def choose_action(
    decision: Decision,
    *,
    mode: str,
    recovered_trips: int,
    skip_budget: int,
    has_snapshot: bool,
    at_checkpoint: bool = False,
) -> tuple[str, str | None]:
    """What to do about a trip: ``(action, reason)``, where ``reason`` says why the action differs from ``mode``.

    ``mode`` is the callback's ``on_nonfinite`` (or ``on_spike`` for a spike); ``recovered_trips`` the trips already absorbed by skip/rollback;
    ``has_snapshot`` whether every affected optimiser has a finite snapshot to roll back to.
    """
    if mode == "warn":  # on_spike="warn": the update goes ahead, nothing is spent
        return "warn", None
    action, reason = mode, None
    if decision.fatal:
        action, reason = "abort", "the loss scaler has been backing off without recovering"
    elif mode != "abort" and recovered_trips >= skip_budget:
        action, reason = "abort", f"skip budget of {skip_budget} exhausted"
    elif mode == "skip" and decision.params_poisoned:
        action, reason = "abort", "skipping cannot repair non-finite weights (use on_nonfinite='rollback')"
    elif mode == "rollback" and decision.params_poisoned and not has_snapshot:
        action, reason = "abort", "no finite snapshot to roll back to"
    if at_checkpoint and action == "abort":
        reason = (reason + "; " if reason else "") + "checkpoint not written"
    return action, reason
