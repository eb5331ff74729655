"""Preflight: what is refused at setup and warned at fit start, each naming the fix.

Each warning rule is a small function over plain facts (precision string, dtypes, clip value, optimiser flags), so
the rules can be read and tested without a Trainer; :func:`trainer_facts` gathers the facts from a real one.
DeepSpeed is refused: it owns the gradients and the step. :class:`TargetCheck` is the per-batch
"no supervised tokens" flag.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.plugins.precision import MixedPrecision
from lightning.pytorch.strategies import DeepSpeedStrategy
from torch import Tensor

from .errors import GradientHealthConfigError
from .measure import no_targets
from .precision import active_scaler
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
