"""The exceptions users catch, and the argument checks that raise the first one."""

from __future__ import annotations

import math
from typing import Any

import torch


class GradientHealthConfigError(ValueError):
    """An argument of :class:`GradientHealth` is invalid (raised by its constructor; names the argument)."""

    def __init__(self, message: str) -> None:
        super().__init__(f"GradientHealth: {message}")


class NonFiniteTrainingError(RuntimeError):
    """Raised by :class:`GradientHealth` - on every rank, at the same step - when it aborts a run."""

    def __init__(self, message: str, *, diagnosis: str, global_step: int, report_path: str | None) -> None:
        super().__init__(message)
        self.diagnosis = diagnosis
        self.global_step = global_step
        self.report_path = report_path


class TrainingSpikeError(NonFiniteTrainingError):
    """Raised by :class:`GradientHealth` with ``on_spike="abort"``: a finite loss or gradient norm far above its
    robust level. A subclass, so code that catches :class:`NonFiniteTrainingError` stops on spikes too."""


def check_int(name: str, value: Any, minimum: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise GradientHealthConfigError(f"`{name}` must be an int, got {value!r}.")
    if minimum is not None and value < minimum:
        raise GradientHealthConfigError(f"`{name}` must be >= {minimum}, got {value!r}.")


def check_key(name: str, value: Any) -> None:
    if value is not None and (not isinstance(value, str) or not value):
        raise GradientHealthConfigError(f"`{name}` must be a non-empty string or None, got {value!r}.")


def check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise GradientHealthConfigError(f"`{name}` must be a bool, got {value!r}.")


def check_arguments(
    *,
    on_nonfinite: Any,
    actions: tuple[str, ...],
    max_consecutive_skipped: Any,
    min_loss_scale: Any,
    skip_budget: Any,
    log_per_module_topk: Any,
    label_key: Any,
    ignore_index: Any,
    report_dir: Any,
    snapshot_every_n_steps: Any,
    snapshot_device: Any,
    flags: dict[str, Any],
    sample_id_key: Any,
) -> torch.device | None:
    """Every constructor argument, in signature order; returns ``snapshot_device`` as a torch device."""
    if on_nonfinite not in actions:
        raise GradientHealthConfigError(f"`on_nonfinite` must be one of {actions}, got {on_nonfinite!r}.")
    check_int("max_consecutive_skipped", max_consecutive_skipped, minimum=0)
    if isinstance(min_loss_scale, bool) or not isinstance(min_loss_scale, (int, float)):
        raise GradientHealthConfigError(f"`min_loss_scale` must be a number, got {min_loss_scale!r}.")
    if not (math.isfinite(min_loss_scale) and min_loss_scale >= 0):
        raise GradientHealthConfigError(f"`min_loss_scale` must be finite and >= 0, got {min_loss_scale!r}.")
    check_int("skip_budget", skip_budget, minimum=0)
    check_int("log_per_module_topk", log_per_module_topk, minimum=0)
    check_key("label_key", label_key)
    check_int("ignore_index", ignore_index, minimum=None)
    if report_dir is not None and (not isinstance(report_dir, str) or not report_dir):
        raise GradientHealthConfigError(f"`report_dir` must be a non-empty string or None, got {report_dir!r}.")
    check_int("snapshot_every_n_steps", snapshot_every_n_steps, minimum=1)
    device: torch.device | None = None
    if snapshot_device is not None:
        try:
            device = torch.device(snapshot_device)
        except (RuntimeError, TypeError) as err:
            raise GradientHealthConfigError(f"`snapshot_device` is not a valid torch device: {snapshot_device!r}.") from err
    for name, flag in flags.items():
        check_bool(name, flag)
    check_key("sample_id_key", sample_id_key)
    return device
