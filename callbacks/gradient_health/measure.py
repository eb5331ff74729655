"""Measure: the state of one optimiser step, gathered on the device and read back once.

Per micro-batch only device-side flags are kept (no supervised tokens; loss NaN/inf, unscaled by the GradScaler's
scale and the accumulation factor), so nothing is read back yet. At the optimiser step one fused norm pass over
the gradients, one over the weights, one all-reduce (SUM) of the flag vector (with the loss and
the norm, so every rank judges spikes on the same numbers) and one ``.tolist()`` turn them into
a :class:`Measured`. After each update the weights are checked again on the device; that flag travels with the
next step's all-reduce (or is read at a checkpoint or at train end).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.optim import Optimizer

from .decide import FLAG_NAMES, StepFlags
from .interval import IntervalMax
from .norms import per_tensor_norms, total_norm
from .precision import active_scaler, scale_tensor
from .sharding import plain_copies_of, summed_squares
from .tensors import user_path

NORM_HISTORY = 16  # grad norms of the steps just before a trip, kept for the report


@dataclass
class Trainable:
    """The trainable parameters of one optimiser, in optimiser order, with their qualified names."""

    params: list[Tensor]
    names: list[str]
    modules: list[str]
    n_in_groups: int


@dataclass
class Measured:
    """One optimiser step, measured: flags reduced over ranks, this rank's norms, loss and loss scale."""

    flags: StepFlags
    grad_norm: float
    loss: float | None
    loss_scale: float | None
    grad_norms: list[tuple[str, float]]
    param_norms: list[tuple[str, float]]
    grad_order: list[int]
    grad_values: list[float]
    ranks_grad_norm: float = math.nan  # the mean over ranks (identical on every rank): what the spike rule judges
    ranks_loss: float | None = None

    def spike_values(self) -> dict[str, float | None]:
        """The values the spike rule judges (means over ranks, the same on every rank)."""
        return {"loss": self.ranks_loss, "grad_norm": self.ranks_grad_norm}

    def context(self) -> dict[str, Any]:
        """What the trip report says about this step."""
        return {
            "loss": self.loss,
            "grad_norm": self.grad_norm,
            "loss_scale": self.loss_scale,
            "flags": self.flags.as_dict(),
            "grad_norms": self.grad_norms,
            "param_norms": self.param_norms,
        }

    def module_norms(self, trainable: Trainable) -> Iterable[tuple[str, float]]:
        """The per-tensor gradient norms labelled with their module (for the per-module top-k)."""
        return ((trainable.modules[i], v) for i, v in zip(self.grad_order, self.grad_values))


class StepMeter:
    """The optimiser step in progress: device flags from each micro-batch, read back once per step.

    Also what later steps and the report need from earlier ones: the trainables of each optimiser seen, the
    last grad norms, the logging interval's maxima and the micro-batches kept for a replay.
    """

    def __init__(self) -> None:
        self.trainables: dict[int, Trainable] = {}
        self.history: deque[tuple[int, float]] = deque(maxlen=NORM_HISTORY)
        self.interval = IntervalMax()
        self.window: deque[Any] = deque(maxlen=1)  # the micro-batches of this optimiser step (RecordedBatch)
        self.batch_idx = -1
        self.local_flags: Tensor | None = None  # this rank's own flags of the last step (device; read at a trip)
        self.sharded = False  # FSDP/FSDP2: each rank's gradients are shards; the norm is over all ranks' shards
        self._plain_copies = 1  # on how many ranks a plain (non-DTensor) tensor lives, when sharded
        self._post_checks: dict[int, Trainable] = {}
        self.reset()

    def reset(self) -> None:
        """Forget the flags of the step in progress, the pending post-update flag included."""
        self.loss_sum: Tensor | None = None
        self.loss_count = 0
        self.loss_nan: Tensor | None = None
        self.loss_inf: Tensor | None = None
        self.empty: Tensor | None = None
        self.params_after: Tensor | None = None  # device flag: weights non-finite after the last update

    def shard(self, sharding: str | None, world: int) -> None:
        """How the strategy holds the gradients (see ``sharding``): whole on every rank, or in shards."""
        self.sharded = sharding is not None
        self._plain_copies = plain_copies_of(sharding, world)

    def start(self, accumulate_grad_batches: int) -> None:
        """A fresh fit: nothing carried over from an earlier one."""
        self.reset()
        self.interval.reset()
        self.window = deque(maxlen=max(1, int(accumulate_grad_batches)))

    def clear(self) -> None:
        """Drop every reference to parameters and batches (teardown)."""
        self.trainables.clear()
        self._post_checks.clear()
        self.window.clear()
        self.params_after = None

    def trainable(self, optimizer: Optimizer, pl_module: pl.LightningModule) -> Trainable:
        """The optimiser's trainable parameters with their names, rebuilt only when its param groups change."""
        n_in_groups = sum(len(group["params"]) for group in optimizer.param_groups)
        cached = self.trainables.get(id(optimizer))
        if cached is not None and cached.n_in_groups == n_in_groups:
            return cached
        names = {id(p): user_path(name) for name, p in pl_module.named_parameters()}
        params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
        qualified = [names.get(id(p), f"param_{i}") for i, p in enumerate(params)]
        modules = [name.rsplit(".", 1)[0] if "." in name else name for name in qualified]
        trainable = Trainable(params=params, names=qualified, modules=modules, n_in_groups=n_in_groups)
        self.trainables[id(optimizer)] = trainable
        return trainable

    # ------------------------------------------------------------------ per micro-batch: device flags only
    def add_empty(self, flag: Tensor) -> None:
        self.empty = flag if self.empty is None else (self.empty | flag)

    def add_loss(self, loss: Tensor, scale: Tensor | None, accumulate_grad_batches: int | None) -> None:
        """The loss as ``training_step`` returned it: the plugin scaled it and Lightning divided it before backward."""
        value = loss.detach().float()
        if scale is not None:
            value = value / scale.to(value.device)
        if accumulate_grad_batches is not None:
            value = value * accumulate_grad_batches
        nan, inf = torch.isnan(value), torch.isinf(value)
        self.loss_sum = value if self.loss_sum is None else self.loss_sum + value
        self.loss_count += 1
        self.loss_nan = nan if self.loss_nan is None else (self.loss_nan | nan)
        self.loss_inf = inf if self.loss_inf is None else (self.loss_inf | inf)

    # ------------------------------------------------------------------ per optimiser step: the one read-back
    def measure(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Optimizer, trainable: Trainable
    ) -> Measured:
        """Norms of gradients and weights, the step's flags reduced over ranks: one collective, one host sync."""
        device = trainable.params[0].device if trainable.params else pl_module.device
        scale_t = scale_tensor(active_scaler(trainer.precision_plugin))
        grads = [p.grad for p in trainable.params]
        grad_norms, grad_order = per_tensor_norms(grads, device)
        if scale_t is not None and getattr(optimizer, "_step_supports_amp_scaling", False):
            grad_norms = grad_norms / scale_t.to(device)  # fused optimisers unscale inside step(): do it here
        gnorm = total_norm(grad_norms)
        param_norms, param_order = per_tensor_norms(trainable.params, device)
        flags = torch.stack(
            [
                _flag(self.loss_nan, device),
                _flag(self.loss_inf, device),
                _flag(self.empty, device),
                torch.isnan(gnorm),
                torch.isinf(gnorm),
                ~torch.isfinite(total_norm(param_norms)),
                _flag(self.params_after, device),
            ]
        ).float()
        loss = (
            (self.loss_sum / self.loss_count).to(device).reshape(())
            if self.loss_sum is not None
            else torch.full((), math.nan, device=device)
        )
        self.local_flags = flags  # the all-reduce below works on a new tensor: these stay this rank's own
        # the loss and the norm travel in the same collective (summed: the ranks' mean), so the spike rule, like
        # the NaN rules, sees the same numbers on every rank
        world = max(trainer.world_size, 1)
        squares = (
            summed_squares(grad_norms, [grads[i] for i in grad_order], world, self._plain_copies)  # type: ignore[misc]
            if self.sharded
            else gnorm.float() * gnorm.float()
        )
        local = torch.stack([gnorm, loss.float(), squares])
        reduced = all_reduce_sum(trainer, torch.cat([flags, local]))  # the one collective
        scale = scale_t.to(device=device, dtype=torch.float32).reshape(()) if scale_t is not None else loss.new_full((), math.nan)
        values = torch.cat([reduced, torch.stack([gnorm, loss, scale]), grad_norms, param_norms]).tolist()  # THE sync
        had_loss = self.loss_sum is not None
        self.reset()
        n, g = len(FLAG_NAMES), len(grad_order)
        m = n + 3  # after the reduced vector
        if self.sharded:  # the true norm of the whole gradient: every rank's shard, squared and summed once
            values[m] = math.sqrt(values[n + 2]) if values[n + 2] >= 0 else math.nan
        return Measured(
            flags=StepFlags.from_values(values[:n]),
            grad_norm=values[m],
            loss=values[m + 1] if had_loss else None,
            loss_scale=values[m + 2] if scale_t is not None else None,
            grad_norms=[(trainable.names[i], v) for i, v in zip(grad_order, values[m + 3 : m + 3 + g])],
            param_norms=[(trainable.names[i], v) for i, v in zip(param_order, values[m + 3 + g :])],
            grad_order=grad_order,
            grad_values=values[m + 3 : m + 3 + g],
            ranks_grad_norm=values[m] if self.sharded else values[n] / world,
            ranks_loss=values[n + 1] / world if had_loss else None,
        )

    def account(self, step: int, measured: Measured, trainable: Trainable, topk: int) -> None:
        """Host-side bookkeeping of a measured step: norm history and the logging interval."""
        self.history.append((step, measured.grad_norm))
        self.interval.add(measured.grad_norm)
        if topk > 0:
            self.interval.add_modules(measured.module_norms(trainable))

    # ------------------------------------------------------------------ after the update
    def expect_update(self, optimizer: Optimizer, trainable: Trainable) -> None:
        """The update will be applied: check these weights once it has been."""
        self._post_checks[id(optimizer)] = trainable

    def check_updates(self) -> None:
        """Device flag over the freshly updated weights; no sync (read with the next step's flags)."""
        flags = [weights_nonfinite(t.params) for t in self._post_checks.values() if t.params]
        self._post_checks.clear()
        if flags:
            self.params_after = torch.stack([f.to(flags[0].device) for f in flags]).any()

    def last_update_broken(self, trainer: pl.Trainer) -> bool:
        """Read the pending post-update flag, reduced over ranks: for the last step, which no later step reads."""
        if self.params_after is None:
            return False
        flag = all_reduce_sum(trainer, self.params_after.float().reshape(1))
        self.params_after = None
        return flag.item() > 0


def no_targets(labels: Any, ignore_index: int) -> Tensor | None:
    """Device flag: no target differs from ``ignore_index`` (``None`` when there is nothing cheap to check)."""
    if not isinstance(labels, Tensor):
        try:
            labels = torch.as_tensor(labels)
        except (TypeError, ValueError, RuntimeError):
            return None  # ragged python lists etc.
    return torch.count_nonzero(labels != ignore_index) == 0  # stays on device: no sync


def weights_nonfinite(params: list[Tensor]) -> Tensor:
    """Device flag: some weight is non-finite (one fused norm pass, no sync)."""
    norms, _ = per_tensor_norms(params, params[0].device)
    return ~torch.isfinite(total_norm(norms))


def named_norms(trainable: Trainable) -> list[tuple[str, float]]:
    """Per-tensor weight norms with their names (read back: for a trip outside a step only)."""
    if not trainable.params:
        return []
    norms, order = per_tensor_norms(trainable.params, trainable.params[0].device)
    return [(trainable.names[i], v) for i, v in zip(order, norms.tolist())]


def all_reduce_sum(trainer: pl.Trainer, tensor: Tensor) -> Tensor:
    """One all-reduce, no barrier (Lightning's strategy.reduce adds a barrier: a second collective)."""
    if trainer.world_size <= 1:
        return tensor
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
        return tensor
    return trainer.strategy.reduce(tensor, reduce_op="sum")


def _flag(value: Tensor | None, device: torch.device) -> Tensor:
    if value is None:
        return torch.zeros((), dtype=torch.bool, device=device)
    return value.to(device).reshape(())
