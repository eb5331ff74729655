"""Measure: the state of one optimiser step, gathered on the device and read back once.

One fused norm pass over the gradients and one over the weights, one stack, one ``.tolist()``; one all-reduce under several ranks.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.optim import Optimizer

from .decide import FLAG_NAMES, StepFlags
from .distributed import plain_copies_of, summed_squares
from .preflight import active_scaler, scale_tensor
from .report import IntervalMax
from .tensors import Groups, groups_of, is_dtensor, norm_parts, per_tensor_norms, total_norm, user_path

NORM_HISTORY = 16  # grad norms of the steps just before a trip, kept for the report


@dataclass
class Trainable:
    """Every parameter of one optimiser's groups, frozen ones included, with qualified names.

    Which of them train is read each step from their ``.grad`` (a parameter unfrozen mid-run has one from its first
    backward on), so unfreezing needs no rebuild; the list is rebuilt only when the groups change."""

    params: list[Tensor]
    names: list[str]
    modules: list[str]
    n_in_groups: int
    label: str = "optimizer"  # the optimiser's name in the logged keys (class name, "-1" for a second of a class)
    groups: Groups = field(default_factory=dict)  # positions by (device, dtype): one fused kernel each
    plain: bool = True  # no DTensor among them (FSDP2 shards take the slower path)

    def training(self) -> list[Tensor]:
        """The parameters that train now (``requires_grad``): what a snapshot keeps and a checkpoint check reads."""
        return [p for p in self.params if p.requires_grad]


@dataclass
class Measured:
    """One optimiser step, measured: flags reduced over ranks, this rank's norms, loss and loss scale."""

    flags: StepFlags
    grad_norm: float
    loss: float | None
    loss_scale: float | None
    names: list[str] = field(default_factory=list)
    grad_order: list[int] = field(default_factory=list)
    grad_values: list[float] = field(default_factory=list)
    param_order: list[int] = field(default_factory=list)
    param_values: list[float] = field(default_factory=list)
    ranks_grad_norm: float = math.nan  # the mean over ranks (identical on every rank): what the spike rule judges
    ranks_loss: float | None = None
    nonfinite_buffers: list[str] = field(default_factory=list)

    @property
    def grad_norms(self) -> list[tuple[str, float]]:
        """Per-tensor gradient norms with their parameter names (built on demand: a trip or the top-k)."""
        return [(self.names[i], v) for i, v in zip(self.grad_order, self.grad_values)]

    @property
    def param_norms(self) -> list[tuple[str, float]]:
        return [(self.names[i], v) for i, v in zip(self.param_order, self.param_values)]

    def spike_values(self) -> dict[str, float | None]:
        """The values the spike rule judges (means over ranks, the same on every rank)."""
        return {"loss": self.ranks_loss, "grad_norm": self.ranks_grad_norm}

    def context(self) -> dict[str, Any]:
        """What the trip report says about this step."""
        out = {
            "loss": self.loss,
            "grad_norm": self.grad_norm,
            "loss_scale": self.loss_scale,
            "flags": self.flags.as_dict(),
            "grad_norms": self.grad_norms,
            "param_norms": self.param_norms,
        }
        if self.nonfinite_buffers:
            out["nonfinite_buffers"] = self.nonfinite_buffers
        return out

    def module_norms(self, trainable: Trainable) -> Iterable[tuple[str, float]]:
        """The per-tensor gradient norms labelled with their module (for the per-module top-k)."""
        return ((trainable.modules[i], v) for i, v in zip(self.grad_order, self.grad_values))


@dataclass
class _Parts:
    """Where each quantity sits in the one vector read back per step."""

    n_grads: int
    n_params: int
    n_buffers: int
    n_losses: int
    n_post: int

    def bounds(self) -> list[int]:
        out = [0]
        for n in (self.n_grads, self.n_params, self.n_buffers, self.n_losses, self.n_post):
            out.append(out[-1] + n)
        return out

    def slices(self, values: Any) -> tuple[Any, ...]:
        """(grads, weights, buffers, losses, post-update weights, extras) of a vector in this layout."""
        b = self.bounds()
        return (*(values[b[i] : b[i + 1]] for i in range(5)), values[b[5] :])


class StepMeter:
    """The optimiser step in progress: what each micro-batch left for it, read back once per step.

    Also what later steps and the report need from earlier ones: the trainables of each optimiser seen, which
    optimisers applied their last update, the last grad norms, the logging interval's maxima and the micro-batches
    kept for a replay.
    """

    def __init__(self) -> None:
        self.trainables: dict[int, Trainable] = {}
        # the weights the updates of this batch write (checked at its end), aligned with their trainable's groups
        self._to_check: list[tuple[list[Tensor | None], Trainable]] = []
        self.post: list[Tensor] = []  # their norms after the update (device; read with the next step's values)
        self.history: deque[tuple[int, float]] = deque(maxlen=NORM_HISTORY)
        self.interval = IntervalMax()
        self.window: deque[Any] = deque(maxlen=1)  # the micro-batches of this optimiser step (RecordedBatch)
        self.batch_idx = -1
        self.local_flags: list[float] | list[int] | None = None  # this rank's own flags of the last step (read at a trip)
        self.sharded = False  # FSDP/FSDP2: each rank's gradients are shards; the norm is over all ranks' shards
        self.loss_scale: float | None = None  # of the last measured step (logged)
        self._weights: tuple[list[Tensor | None], Trainable] | None = None
        self._const: tuple[Tensor, Tensor] | None = None  # the weights of the step just measured that had a gradient
        self._plain_copies = 1  # on how many ranks a plain (non-DTensor) tensor lives, when sharded
        self.reset()

    def reset(self) -> None:
        """Forget what the micro-batches of the step in progress left."""
        self.losses: list[tuple[Tensor, float]] = []  # (loss as backward saw it, accumulation factor)
        self.empty: Tensor | None = None

    def shard(self, sharding: str | None, world: int) -> None:
        """How the strategy holds the gradients (see ``sharding``): whole on every rank, or in shards."""
        self.sharded = sharding is not None
        self._plain_copies = plain_copies_of(sharding, world)

    def start(self, accumulate_grad_batches: int) -> None:
        """A fresh fit: nothing carried over from an earlier one."""
        self.reset()
        self.interval.reset()
        self._to_check, self.post = [], []
        self.window = deque(maxlen=max(1, int(accumulate_grad_batches)))

    def clear(self) -> None:
        """Drop every reference to parameters and batches (teardown)."""
        self.trainables.clear()
        self._to_check, self.post = [], []
        self.window.clear()

    def trainable(self, optimizer: Optimizer, pl_module: pl.LightningModule) -> Trainable:
        """The optimiser's parameters with their names, rebuilt only when its param groups change."""
        n_in_groups = sum(len(group["params"]) for group in optimizer.param_groups)
        cached = self.trainables.get(id(optimizer))
        if cached is not None and cached.n_in_groups == n_in_groups:
            return cached
        names = {id(p): user_path(name) for name, p in pl_module.named_parameters()}
        params = [p for group in optimizer.param_groups for p in group["params"]]
        qualified = [names.get(id(p), f"param_{i}") for i, p in enumerate(params)]
        modules = [name.rsplit(".", 1)[0] if "." in name else name for name in qualified]
        label = cached.label if cached is not None else self._label(optimizer)
        trainable = Trainable(
            params=params, names=qualified, modules=modules, n_in_groups=n_in_groups, label=label,
            groups=groups_of(params), plain=not any(is_dtensor(p) for p in params),
        )
        self.trainables[id(optimizer)] = trainable
        return trainable

    def _label(self, optimizer: Optimizer) -> str:
        """``Adam``, then ``Adam-1`` for a second Adam (as Lightning's LearningRateMonitor names them)."""
        base = type(optimizer).__name__
        taken = {t.label for t in self.trainables.values()}
        label, n = base, 0
        while label in taken:
            n += 1
            label = f"{base}-{n}"
        return label

    # ------------------------------------------------------------------ per micro-batch: references only
    def add_empty(self, flag: Tensor) -> None:
        self.empty = flag if self.empty is None else (self.empty | flag)

    def add_loss(self, loss: Tensor, accumulate_grad_batches: int | None) -> None:
        """The loss as backward sees it (the plugin scaled it, Lightning divided it for accumulation)."""
        value = loss.detach()
        self.losses.append((value if value.dim() == 0 else value.reshape(()), float(accumulate_grad_batches or 1)))

    # ------------------------------------------------------------------ per optimiser step: the one read-back
    def measure(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        optimizer: Optimizer,
        trainable: Trainable,
        buffers: Sequence[tuple[str, Tensor]] = (),
    ) -> Measured:
        """Norms of gradients, of the weights that have one, of ``buffers`` (the floating buffers this step
        changed); the step's flags, reduced over ranks: at most one collective, one host sync."""
        params = trainable.params
        device = params[0].device if params else pl_module.device
        grads = [p.grad for p in params]
        weights = [p if g is not None else None for p, g in zip(params, grads)]
        gparts, gorder = norm_parts(grads, device, trainable.groups, trainable.plain)
        pparts, porder = norm_parts(weights, device, trainable.groups, trainable.plain)
        bparts = norm_parts([b for _, b in buffers], device)[0] if buffers else []
        scaler_scale = scale_tensor(active_scaler(trainer.precision_plugin))
        zero, one = self._constants(device)
        extras = [
            self.empty if self.empty is not None else zero,
            scaler_scale.reshape(()) if scaler_scale is not None else one,
        ]
        losses = [loss for loss, _ in self.losses]
        post, self.post = self.post, []
        layout = _Parts(len(gparts), len(pparts), len(bparts), len(losses), len(post))
        parts = [*gparts, *pparts, *bparts, *losses, *post, *extras]
        if any(t.device != device for t in (*losses, *post, *extras)):  # the norms are on ``device`` already
            parts = [t.to(device) for t in parts]
        stacked = torch.stack(parts)
        fused = scaler_scale is not None and getattr(optimizer, "_step_supports_amp_scaling", False)
        factors = [acc for _, acc in self.losses]
        if trainer.world_size > 1 or self.sharded:
            values, flags, ranks = self._reduce(trainer, stacked, layout, grads, gorder, factors, fused)
            g, p, b, raw_losses, _, (_, scale) = layout.slices(values)
        else:
            values = stacked.tolist()  # THE sync
            g, p, b, raw_losses, post_values, (empty, scale) = layout.slices(values)
            flags = _host_flags(g, p, b, raw_losses, post_values, empty, scale, factors, fused)
            ranks = None
        self.reset()
        self._weights = (weights, trainable)
        if fused:
            g = [v / scale for v in g]  # fused optimisers unscale inside step(): do it here
        unscaled = [v / scale * acc for v, acc in zip(raw_losses, factors)]
        grad_norm = math.sqrt(sum(v * v for v in g))
        loss = sum(unscaled) / len(unscaled) if unscaled else None
        self.local_flags = flags if ranks is None else self.local_flags
        self.loss_scale = scale if scaler_scale is not None else None
        measured = Measured(
            flags=StepFlags(*flags) if ranks is None else StepFlags.from_values(ranks[0]),
            grad_norm=grad_norm,
            loss=loss,
            loss_scale=self.loss_scale,
            names=trainable.names,
            grad_order=gorder,
            grad_values=g,
            param_order=porder,
            param_values=p,
            ranks_grad_norm=grad_norm if ranks is None else ranks[1],
            ranks_loss=loss if ranks is None else ranks[2],
            nonfinite_buffers=[name for (name, _), v in zip(buffers, b) if not math.isfinite(v)],
        )
        if ranks is not None and self.sharded:  # the true norm of the whole gradient: every rank's shard, once
            measured.grad_norm = ranks[1]
        return measured

    def _constants(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """0 and 1 on ``device``, made once: the stand-ins for "no empty-batch flag" and "no loss scale"."""
        if self._const is None or self._const[0].device != device:
            self._const = (torch.zeros((), device=device), torch.ones((), device=device))
        return self._const

    def _reduce(
        self, trainer: pl.Trainer, stacked: Tensor, layout: _Parts, grads: list[Tensor | None], gorder: list[int],
        factors: list[float], fused: bool,
    ) -> tuple[list[float], list[float], tuple[list[float], float, float | None]]:
        """Several ranks: the flags formed on the device and summed over ranks with the loss and the norm (one
        all-reduce), then everything read back at once. Returns (local values, local flags, (reduced flags, the
        ranks' grad norm, the ranks' mean loss))."""
        gvec, pvec, bvec, lvec, postvec, extras = layout.slices(stacked)
        empty, scale = extras[0], extras[1]
        if fused:
            gvec = gvec / scale
        gnorm = total_norm(gvec)
        factor_t = torch.tensor(factors, dtype=torch.float32, device=stacked.device) if factors else lvec
        unscaled = lvec / scale * factor_t
        after = ~torch.isfinite(total_norm(postvec))
        pbad = ~torch.isfinite(total_norm(pvec))
        flags = torch.stack([
            torch.isnan(unscaled).any(),
            torch.isinf(unscaled).any(),
            empty > 0,
            torch.isnan(gnorm),
            torch.isinf(gnorm),
            pbad & ~after,
            after,
            ~torch.isfinite(total_norm(bvec)),
        ]).float()
        world = max(trainer.world_size, 1)
        if self.sharded:
            ordered = [grads[i] for i in gorder]
            squares = summed_squares(gvec, ordered, world, self._plain_copies)  # type: ignore[arg-type]
        else:
            squares = gnorm * gnorm
        loss = unscaled.mean() if layout.n_losses else torch.full((), math.nan, device=stacked.device)
        reduced = all_reduce_sum(trainer, torch.cat([flags, torch.stack([gnorm, loss, squares])]))
        values = torch.cat([reduced, flags, stacked]).tolist()  # THE sync
        n = len(FLAG_NAMES)
        summed, local_flags, local = values[:n], values[n + 3 : 2 * n + 3], values[2 * n + 3 :]
        gsum, lsum, sqsum = values[n : n + 3]
        ranks_norm = (math.sqrt(sqsum) if sqsum >= 0 else math.nan) if self.sharded else gsum / world
        self.local_flags = local_flags
        return local, local_flags, (summed, ranks_norm, lsum / world if layout.n_losses else None)

    def account(self, step: int, measured: Measured, trainable: Trainable, topk: int) -> None:
        """Host-side bookkeeping of a measured step: norm history and the logging interval."""
        self.history.append((step, measured.grad_norm))
        self.interval.add(measured.grad_norm, trainable.label)
        if topk > 0:
            self.interval.add_modules(measured.module_norms(trainable))

    # ------------------------------------------------------------------ after the update
    def expect_update(self) -> None:
        """The update of the step just measured will be applied: its weights are checked once it has been."""
        if self._weights is not None:
            self._to_check.append(self._weights)

    def check_updates(self) -> None:
        """Norms of the freshly updated weights: one fused pass, no sync (read with the next step's values)."""
        for weights, trainable in self._to_check:
            device = trainable.params[0].device if trainable.params else torch.device("cpu")
            self.post.extend(norm_parts(weights, device, trainable.groups, trainable.plain)[0])
        self._to_check = []

    def forget_updates(self) -> None:
        """The weights were put back (a rollback): what the last updates wrote is no longer there."""
        self._to_check, self.post = [], []

    def last_update_broken(self, trainer: pl.Trainer) -> bool:
        """Whether the last applied update left non-finite weights, reduced over ranks: read once, at train end,
        for the last step, which no later step looks at."""
        local = ~torch.isfinite(total_norm(torch.stack(self.post))) if self.post else torch.zeros((), dtype=torch.bool)
        self.post = []
        flag = all_reduce_sum(trainer, local.float().reshape(1))
        return flag.item() > 0


def _host_flags(
    g: list[float], p: list[float], b: list[float], raw_losses: list[float], post: list[float], empty: float,
    scale: float, factors: list[float], fused: bool,
) -> list[int]:
    """The flag vector (``FLAG_NAMES`` order) of one process, from the values read back."""
    unscaled = [v / scale * acc for v, acc in zip(raw_losses, factors)]
    gsum = sum(g)  # a sum of norms is non-finite exactly when one of them is (norms are >= 0)
    gsum = gsum / scale if fused else gsum
    after = not math.isfinite(sum(post))
    params_bad = not math.isfinite(sum(p))
    return [
        int(any(map(math.isnan, unscaled))),
        int(any(map(math.isinf, unscaled))),
        int(empty > 0),
        int(math.isnan(gsum)),
        int(math.isinf(gsum)),
        int(params_bad and not after),
        int(after),
        int(not math.isfinite(sum(b))),
    ]


def weights_nonfinite(params: list[Tensor]) -> Tensor:
    """Device flag: some tensor is non-finite (one fused norm pass, no sync)."""
    floating = [p for p in params if p.is_floating_point()]
    if not floating:
        return torch.zeros((), dtype=torch.bool)
    norms, _ = per_tensor_norms(floating, floating[0].device)
    return ~torch.isfinite(total_norm(norms))


def named_norms(trainable: Trainable) -> list[tuple[str, float]]:
    """Per-tensor weight norms with their names (read back: for a trip outside a step only)."""
    indices = [i for i, p in enumerate(trainable.params) if p.requires_grad]
    if not indices:
        return []
    params = [trainable.params[i] for i in indices]
    norms, order = per_tensor_norms(params, params[0].device)
    return [(trainable.names[indices[i]], v) for i, v in zip(order, norms.tolist())]


def all_reduce_sum(trainer: pl.Trainer, tensor: Tensor) -> Tensor:
    """One all-reduce, no barrier (Lightning's strategy.reduce adds a barrier: a second collective)."""
    if trainer.world_size <= 1:
        return tensor
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
        return tensor
    return trainer.strategy.reduce(tensor, reduce_op="sum")
