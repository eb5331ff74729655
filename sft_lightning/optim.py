"""The optimiser's edges Lightning leaves open: when AdamW may be the fused kernel, and clipping where Lightning
refuses to (a fused optimiser; FSDP by norm); the full weights of an FSDP model for an export."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import lightning as L
import torch
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, FSDPStrategy, SingleDeviceStrategy
from torch import Tensor
from torch.optim import Optimizer

from callbacks import active_scaler


def fused_adamw_ok(trainer: L.Trainer, params: list[Tensor]) -> bool:
    """Fused AdamW: one kernel per step instead of a per-tensor loop (measured in docs/performance.md).

    Not under a GradScaler: a fused optimiser unscales inside ``step()``, and Lightning then refuses gradient
    clipping (the default config clips at 1.0 under ``16-mixed``). Only on single-device and DDP strategies,
    whose gradients are whole and already reduced when ``clip_fused`` clips them; sharded strategies keep
    Lightning's own clipping.
    """
    if active_scaler(trainer.precision_plugin) is not None:  # the rule GradientHealth uses too
        return False
    strategy = trainer.strategy
    if not isinstance(strategy, (SingleDeviceStrategy, DDPStrategy)) or isinstance(strategy, DeepSpeedStrategy):
        return False  # DeepSpeedStrategy subclasses DDPStrategy but owns the optimiser and the clipping
    # fp32 (master) weights only, the layout configure_model builds. Under '16-true'/'bf16-true' the LoRA weights
    # are converted to 16 bits, and there torch's default AdamW keeps its documented failure (eps=1e-8
    # underflows to 0 in fp16: NaN weights after one step) for GradientHealth to report - the fused kernel
    # would hide it by computing in fp32, while the run still rounds every update to 16 bits.
    devices = {p.device.type for p in params}
    return bool(params) and devices <= {"cpu", "cuda"} and all(p.dtype == torch.float32 for p in params)


def clip_fused(optimizer: Optimizer, gradient_clip_val: int | float | None, gradient_clip_algorithm: str | None) -> bool:
    """Clip a fused optimiser's gradients (True), or leave clipping to Lightning (False).

    Lightning's mixed-precision plugin refuses to clip for any fused optimiser, because under a GradScaler such an
    optimiser unscales inside ``step()``. Fused is only chosen without a scaler (``fused_adamw_ok``), so the
    gradients here are already at their true scale.
    """
    if not gradient_clip_val or not getattr(optimizer, "_step_supports_amp_scaling", False):
        return False
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if gradient_clip_algorithm == "value":
        torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
    else:
        torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)
    return True


def clip_sharded(trainer: L.Trainer, gradient_clip_val: int | float | None, gradient_clip_algorithm: str | None) -> bool:
    """Clip by norm under FSDP (True), where Lightning raises (its precision plugin has no handle on the root): the
    root module's ``clip_grad_norm_`` computes the norm over every rank's shard, as torch documents it must."""
    if not gradient_clip_val or gradient_clip_algorithm == "value" or not isinstance(trainer.strategy, FSDPStrategy):
        return False
    trainer.strategy.model.clip_grad_norm_(gradient_clip_val)
    return True


@contextlib.contextmanager
def full_weights(trainer: L.Trainer) -> Iterator[None]:
    """Inside the block an FSDP-sharded model holds its full weights (every rank must enter: it is a collective);
    any other strategy's model already does."""
    if not isinstance(trainer.strategy, FSDPStrategy):
        yield
        return
    from torch.distributed.fsdp import FullyShardedDataParallel

    with FullyShardedDataParallel.summon_full_params(trainer.strategy.model, writeback=False):
        yield
