"""Spikes: a finite loss or gradient norm far above its recent robust level, decided before the step by ``judge`` (pure),
and ``SpikeGuard``, which wires it to a run. The statistic and why: docs/callback.md, "Spikes".
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from . import decide as dx
from .preflight import GradientHealthConfigError, check_int

METRICS: tuple[str, ...] = ("loss", "grad_norm")
WINDOW = 128
MIN_HISTORY = 20
THRESHOLD = 7.0
LEVEL_STEPS = 16  # the level is the median of this many most recent healthy values
MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution * 1.4826 = its standard deviation
SIGMA_FLOOR = 0.05  # in log units: below ~5% relative noise, deviations are measured against 5%
SPIKE_PREFIX = "spike"  # every spike diagnosis contains "<metric> spike:"

ON_SPIKE = (None, "warn", "skip", "rollback", "abort")


@dataclass(frozen=True)
class Spike:
    """One metric of one step judged a spike: its value, the robust level and the value it had to stay under."""

    metric: str
    value: float
    level: float  # exp(median of the last LEVEL_STEPS log values)
    limit: float  # exp(level + threshold * sigma): the spike threshold in the metric's own units
    sigma: float  # robust sigma of the log values (floored)
    threshold: float
    history: int  # number of healthy steps the level was taken over

    @property
    def ratio(self) -> float:
        return self.value / self.level if self.level > 0 else math.inf

    def diagnosis(self) -> str:
        """The diagnosis line: what, the value, the robust level and the threshold (stable prefix ``<metric> spike``)."""
        return (
            f"{self.metric} {SPIKE_PREFIX}: {self.value:.4g} is {self.ratio:.3g}x its robust level {self.level:.4g}"
            f" (median of the last {min(self.history, LEVEL_STEPS)} healthy steps), above the threshold {self.limit:.4g}"
            f" (spike_threshold={self.threshold:g} robust sigmas of log {self.metric}, sigma {self.sigma:.3g})"
        )


def is_spike_diagnosis(diagnosis: str) -> bool:
    return any(diagnosis.startswith(f"{metric} {SPIKE_PREFIX}:") for metric in METRICS)


def robust_level(logs: Sequence[float]) -> tuple[float, float]:
    """``(level, sigma)`` of log values in step order: the median of the last ``LEVEL_STEPS``, and the robust
    step-to-step noise ``1.4826 * MAD(differences) / sqrt(2)`` (floored at ``SIGMA_FLOOR``)."""
    values = list(logs)
    level = _median(values[-LEVEL_STEPS:])
    diffs = [b - a for a, b in zip(values, values[1:])]
    if not diffs:
        return level, SIGMA_FLOOR
    center = _median(diffs)
    mad = _median([abs(d - center) for d in diffs])
    return level, max(MAD_TO_SIGMA * mad / math.sqrt(2.0), SIGMA_FLOOR)


def judge(
    metric: str, value: float | None, history: Sequence[float], *, threshold: float, min_history: int
) -> Spike | None:
    """THE SPIKE RULE for one metric: ``value`` is a spike when ``log(value)`` is more than ``threshold`` robust
    sigmas above the robust level of ``history`` (log values of earlier healthy steps, oldest first). No decision before
    ``min_history`` values, nor for a value that is missing, non-finite (the NaN rules own those) or <= 0 (no log).
    """
    if value is None or not math.isfinite(value) or value <= 0 or len(history) < max(min_history, 1):
        return None
    level, sigma = robust_level(history)
    if math.log(value) - level <= threshold * sigma:
        return None
    return Spike(
        metric=metric, value=value, level=math.exp(level), limit=math.exp(level + threshold * sigma),
        sigma=sigma, threshold=threshold, history=len(history),
    )


class SpikeHistory:
    """The log values of the last ``window`` healthy steps, per metric (checkpointed with the callback)."""

    def __init__(self, window: int = WINDOW) -> None:
        self.window = window
        self.logs: dict[str, deque[float]] = {metric: deque(maxlen=window) for metric in METRICS}

    def check(self, values: dict[str, float | None], *, threshold: float, min_history: int) -> list[Spike]:
        """Judge a step's values; a step without a spike joins the history, a spike step does not."""
        spikes = [
            spike
            for metric in METRICS
            if (spike := judge(metric, values.get(metric), self.logs[metric], threshold=threshold, min_history=min_history))
        ]
        if not spikes:
            self.add(values)
        return spikes

    def add(self, values: dict[str, float | None]) -> None:
        for metric in METRICS:
            value = values.get(metric)
            if value is not None and math.isfinite(value) and value > 0:
                self.logs[metric].append(math.log(value))

    def state_dict(self) -> dict[str, list[float]]:
        return {metric: list(logs) for metric, logs in self.logs.items()}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Old checkpoints have no spike history: start empty (warm-up again) rather than fail."""
        for metric in METRICS:
            self.logs[metric].clear()
            self.logs[metric].extend(float(v) for v in (state or {}).get(metric, []))


def false_alarms(
    series: Iterable[float], *, threshold: float = THRESHOLD, window: int = WINDOW, min_history: int = MIN_HISTORY
) -> tuple[int, int, float]:
    """``(alarms, judged steps, largest deviation in robust sigmas)`` of the rule over one metric's series, steps in
    order (for offline measurements of healthy runs: every alarm there is a false one)."""
    logs: deque[float] = deque(maxlen=window)
    alarms = judged = 0
    largest = -math.inf
    for value in series:
        if value is None or not math.isfinite(value) or value <= 0:
            continue
        if len(logs) >= min_history:
            judged += 1
            level, sigma = robust_level(logs)
            largest = max(largest, (math.log(value) - level) / sigma)
        if judge("value", value, logs, threshold=threshold, min_history=min_history) is not None:
            alarms += 1
            continue
        logs.append(math.log(value))
    return alarms, judged, largest


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    mid = n // 2
    return ordered[mid] if n % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])


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
