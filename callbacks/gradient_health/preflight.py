"""Preflight: what is refused at setup and warned at fit start, each naming the fix; the argument checks and the exceptions.

Each warning rule is a small function over plain facts (``trainer_facts`` gathers them), so it reads and tests without a Trainer.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.plugins.precision import MixedPrecision
from lightning.pytorch.strategies import DeepSpeedStrategy
from torch import Tensor

from .tensors import find

log = logging.getLogger(__package__)


@dataclass(frozen=True)
class Facts:
    precision: str
    scaler_active: bool
    trainable_dtypes: dict[str, int]  # dtype name -> number of trainable tensors of that dtype (non-fp32 only)
    clip_val: float
    mixed_precision_plugin: bool  # Lightning's MixedPrecision, whose clip_gradients refuses fused optimisers
    fused_optimizers: tuple[str, ...]  # optimisers that unscale inside step() (``_step_supports_amp_scaling``)
    own_clipping: bool  # the module overrides configure_gradient_clipping


def trainer_facts(trainer: pl.Trainer, pl_module: pl.LightningModule) -> Facts:
    dtypes = Counter(str(p.dtype).replace("torch.", "") for p in pl_module.parameters() if p.requires_grad)
    dtypes.pop("float32", None)
    own = type(pl_module).configure_gradient_clipping is not pl.LightningModule.configure_gradient_clipping
    return Facts(
        precision=str(trainer.precision),
        scaler_active=active_scaler(trainer.precision_plugin) is not None,
        trainable_dtypes=dict(dtypes),
        clip_val=float(trainer.gradient_clip_val or 0.0),
        mixed_precision_plugin=isinstance(trainer.precision_plugin, MixedPrecision),
        fused_optimizers=tuple(
            type(opt).__name__ for opt in trainer.optimizers if getattr(opt, "_step_supports_amp_scaling", False)
        ),
        own_clipping=own,
    )


def fp16_trainable_under_amp(f: Facts) -> str | None:
    """The original failure: fp16 trainable weights under 16-mixed (the scaler refuses them, AdamW's eps is 0)."""
    if f.precision == "16-mixed" and f.trainable_dtypes.get("float16"):
        return (
            f"GradientHealth: {f.trainable_dtypes['float16']} trainable parameters are float16 under precision='16-mixed'."
            " A GradScaler cannot unscale float16 gradients, and AdamW's eps (1e-8) is 0 in float16: the classic"
            " 'grad_norm: nan' run. Fix: keep trainable (master) weights in float32 - load the model in float32, or"
            " let peft upcast the adapter (autocast_adapter_dtype=True) - and let autocast run the math in float16."
        )
    return None


def low_precision_trainable(f: Facts) -> str | None:
    """Trainable weights in 16 bits outside the case above: updates round away and overflow is likelier."""
    others = {dt: n for dt, n in f.trainable_dtypes.items() if not (dt == "float16" and f.precision == "16-mixed")}
    if not others:
        return None
    listing = ", ".join(f"{n} x {dt}" for dt, n in others.items())
    return (
        f"GradientHealth: trainable parameters are not fp32 ({listing}): small updates are rounded away and"
        " overflow is likelier. Keep trainable (master) weights in fp32."
    )


def fp16_without_scaler(f: Facts) -> str | None:
    if f.precision.startswith("16") and not f.scaler_active:
        return (
            f"GradientHealth: precision={f.precision!r} runs without a GradScaler (Lightning creates none on CPU and"
            " none for '16-true'): overflowing fp16 gradients are not backed off, so every non-finite gradient is"
            " fatal. Fix: use bf16-mixed, or 16-mixed on a GPU (which adds a GradScaler)."
        )
    return None


def clipping_refused(f: Facts) -> str | None:
    """Lightning's MixedPrecision raises at the first step when it must clip for a fused optimiser."""
    if f.clip_val > 0 and f.mixed_precision_plugin and f.fused_optimizers and not f.own_clipping:
        names = ", ".join(sorted(set(f.fused_optimizers)))
        return (
            f"GradientHealth: gradient_clip_val={f.clip_val:g} with precision={f.precision!r} and a fused optimiser"
            f" ({names}): Lightning's mixed-precision plugin refuses to clip for an optimiser that unscales inside"
            " step(), and the run will stop at its first step. Fix: build the optimiser without fused=True, or clip"
            " in the module's configure_gradient_clipping."
        )
    return None


RULES = (fp16_trainable_under_amp, low_precision_trainable, fp16_without_scaler, clipping_refused)


def preflight(f: Facts) -> list[str]:
    """Every warning that applies, in a stable order."""
    return [message for rule in RULES if (message := rule(f)) is not None]


def empty_first_batch(label_key: str, ignore_index: int) -> str:
    return (
        f"GradientHealth: the first training batch has no supervised tokens (every {label_key!r} value is"
        f" {ignore_index}), so its loss is 0/0. Fix: check the prompt masking and truncation of the data (answers cut"
        " off by max_length), or pass the right `label_key`."
    )


def missing_label_key(label_key: str) -> str:
    return (
        f"GradientHealth: the batch has no {label_key!r} key or attribute; the 'no supervised"
        " tokens' check is off. Pass `label_key=None` to silence this, or the right key."
    )


def refuse_unsupported(trainer: pl.Trainer) -> None:
    """DeepSpeed owns the gradients, the clipping and the step (and keeps fp16 master weights of its own), so a
    callback cannot read the pre-clip norm or drop an update. FSDP and FSDP2 are supported: see ``sharding``."""
    strategy = trainer.strategy
    if isinstance(strategy, DeepSpeedStrategy):
        raise GradientHealthConfigError(
            f"{type(strategy).__name__} is not supported: the DeepSpeed engine owns the gradients, the clipping and"
            " the optimiser step, so the norms, a skip and a rollback would not see what it does. Fix: use"
            " strategy='fsdp' (or ModelParallelStrategy with fully_shard, or 'ddp'), or remove GradientHealth from"
            " the callbacks."
        )


class TargetCheck:
    """The per-batch "no supervised tokens" device flag (no sync). A batch without ``label_key`` turns the check
    off for the run, said once at debug level and in any trip report (``off_reason``): many projects have no labels."""

    def __init__(self, label_key: str | None, ignore_index: int) -> None:
        self.label_key, self.ignore_index = label_key, ignore_index
        self.off_reason: str | None = None if label_key is not None else "off (label_key=None)"

    def flag(self, batch: Any) -> Tensor | None:
        """``None`` when there is nothing to check (no ``label_key``, or the batch has none)."""
        if self.label_key is None:
            return None
        labels = find(batch, self.label_key)
        if labels is None:
            if self.off_reason is None:
                self.off_reason = f"off: the batch has no {self.label_key!r} key or attribute"
                log.debug(missing_label_key(self.label_key))
            return None
        return no_targets(labels, self.ignore_index)


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


def active_scaler(precision_plugin: Any) -> Any:
    """The precision plugin's GradScaler when it exists and is enabled, else ``None``."""
    scaler = getattr(precision_plugin, "scaler", None)
    if scaler is None or not getattr(scaler, "is_enabled", lambda: True)():
        return None
    return scaler


def scale_tensor(scaler: Any) -> Tensor | None:
    """The scaler's current scale as a device tensor (no host sync), or ``None`` before its first use."""
    scale = getattr(scaler, "_scale", None) if scaler is not None else None
    return scale if isinstance(scale, Tensor) else None


def no_targets(labels: Any, ignore_index: int) -> Tensor | None:
    """Device flag: no target differs from ``ignore_index`` (``None`` when there is nothing cheap to check)."""
    if not isinstance(labels, Tensor):
        try:
            labels = torch.as_tensor(labels)
        except (TypeError, ValueError, RuntimeError):
            return None  # ragged python lists etc.
    return torch.count_nonzero(labels != ignore_index) == 0  # stays on device: no sync
