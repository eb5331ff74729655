"""The spike rule (:mod:`.spikes`, pure) wired to a run: its settings, its checkpointed history, the decision it
hands to the trip machinery, and the samples of a spike.

A spike is judged in the same measure -> decide -> act pass as a non-finite value, at ``on_before_optimizer_step``
(before the optimiser steps, so it can still be dropped), and only on a step the NaN rules found healthy. It reads
the loss and the pre-clip gradient norm that the step's one all-reduce and host read already carry (the ranks'
mean: the same verdict on every rank), so a healthy step costs no extra sync, only two medians over ``window``
host floats.
"""

from __future__ import annotations

import math
from typing import Any

from . import decide as dx
from .errors import GradientHealthConfigError, check_int
from .spikes import MIN_HISTORY, ON_SPIKE, THRESHOLD, WINDOW, Spike, SpikeHistory


class SpikeGuard:
    """``on_spike`` and its rule's settings, the history of healthy steps and the spikes of the step in progress."""

    def __init__(
        self,
        on_spike: str | None = None,
        threshold: float = THRESHOLD,
        window: int = WINDOW,
        min_history: int = MIN_HISTORY,
    ) -> None:
        check_spike_arguments(on_spike, threshold, window, min_history)
        self.on_spike = on_spike
        self.threshold = float(threshold)
        self.min_history = min_history
        self.history = SpikeHistory(window)
        self.last: list[Spike] = []

    @property
    def enabled(self) -> bool:
        return self.on_spike is not None

    def judge(self, values: dict[str, float | None]) -> dx.Decision | None:
        """A trip decision for a spike step, ``None`` for a step without one (which joins the history)."""
        if not self.enabled:
            return None
        self.last = self.history.check(values, threshold=self.threshold, min_history=self.min_history)
        if not self.last:
            return None
        return dx.Decision(dx.Verdict.TRIP, "; ".join(spike.diagnosis() for spike in self.last))

    def loss_limit(self) -> float | None:
        """The loss value above which the step was a spike (to pick the samples that carried it), if the loss was."""
        return next((s.limit for s in self.last if s.metric == "loss"), None)

    def context(self) -> dict[str, Any]:
        """What the trip report says about the spike: each metric's value, level, threshold value and sigma."""
        return {
            s.metric: {"value": s.value, "robust_level": s.level, "threshold_value": s.limit, "log_sigma": s.sigma,
                       "spike_threshold": s.threshold, "history": s.history}
            for s in self.last
        }

    def state_dict(self) -> dict[str, Any]:
        return self.history.state_dict()

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        self.history.load_state_dict(state)


def check_spike_arguments(on_spike: Any, threshold: Any, window: Any, min_history: Any) -> None:
    if on_spike not in ON_SPIKE:
        raise GradientHealthConfigError(f"`on_spike` must be one of {ON_SPIKE}, got {on_spike!r}.")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold) or threshold <= 0:
        raise GradientHealthConfigError(f"`spike_threshold` must be a finite number > 0, got {threshold!r}.")
    check_int("spike_window", window, minimum=2)
    check_int("spike_min_history", min_history, minimum=2)
    if min_history > window:
        raise GradientHealthConfigError(
            f"`spike_min_history` ({min_history}) must be <= `spike_window` ({window}): the history never gets that long."
        )
