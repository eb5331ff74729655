"""Act: abort, skip or roll back - the same action at the same step on every rank; the scheduler hold; the skip list.

How a step is undone, and why there: docs/design.md, "GradientHealth: undoing a step".
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor, nn
from torch.optim import Optimizer

from .measure import Trainable
from .preflight import NonFiniteTrainingError
from .provenance import Provenance
from .report import KEY_SCHEDULER_HELD, KEY_SPIKE_ROLLED_BACK, KEY_SPIKE_SKIPPED, KEY_SPIKES, atomic_file
from .snapshot import Snapshot, restore, take

ACTIONS = ("abort", "skip", "rollback")

Restore = tuple[Optimizer, Snapshot]


@dataclass
class Counters:
    """The trips of this run so far (checkpointed); the skip budget counts ``recovered_trips``."""

    skipped_steps: int = 0  # non-finite steps dropped by on_nonfinite="skip"
    rolled_back_steps: int = 0  # non-finite steps dropped and rolled back
    recovered_trips: int = 0  # trips absorbed by skip/rollback (non-finite and spikes: one skip_budget)
    trip_count: int = 0
    spikes: int = 0  # spikes detected, whatever was done about them
    spike_skipped_steps: int = 0
    spike_rolled_back_steps: int = 0
    scheduler_held_steps: int = 0  # scaler-skipped steps on which the LR schedule was held

    def count(self, action: str, spike: bool = False) -> None:
        self.trip_count += 1
        self.spikes += int(spike)
        if action in ("skip", "rollback"):
            self.recovered_trips += 1
            if action == "skip":
                if spike:
                    self.spike_skipped_steps += 1
                else:
                    self.skipped_steps += 1
            elif spike:
                self.spike_rolled_back_steps += 1
            else:
                self.rolled_back_steps += 1

    def for_report(self, scaler_skipped_steps: int, skip_budget: int) -> dict[str, int]:
        return {
            "skipped_steps": self.skipped_steps,
            "rolled_back_steps": self.rolled_back_steps,
            "scaler_skipped_steps": scaler_skipped_steps,
            "spikes": self.spikes,
            "spike_skipped_steps": self.spike_skipped_steps,
            "spike_rolled_back_steps": self.spike_rolled_back_steps,
            "scheduler_held_steps": self.scheduler_held_steps,
            "skip_budget_left": max(skip_budget - self.recovered_trips, 0),
        }

    def metrics(self, *, spikes: bool, held: bool) -> dict[str, float]:
        """The logged counters beyond the non-finite ones: spikes (when ``on_spike`` is set), held schedules."""
        out: dict[str, float] = {}
        if spikes:
            out[KEY_SPIKES] = float(self.spikes)
            out[KEY_SPIKE_SKIPPED] = float(self.spike_skipped_steps)
            out[KEY_SPIKE_ROLLED_BACK] = float(self.spike_rolled_back_steps)
        if held:
            out[KEY_SCHEDULER_HELD] = float(self.scheduler_held_steps)
        return out

    def state_dict(self) -> dict[str, int]:
        return {
            "skipped_steps": self.skipped_steps,
            "rolled_back_steps": self.rolled_back_steps,
            "recovered_trips": self.recovered_trips,
            "trip_count": self.trip_count,
            "spikes": self.spikes,
            "spike_skipped_steps": self.spike_skipped_steps,
            "spike_rolled_back_steps": self.spike_rolled_back_steps,
            "scheduler_held_steps": self.scheduler_held_steps,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Counters:
        """Missing keys (checkpoints written before a counter existed) read as 0."""
        return cls(**{name: int(state.get(name, 0)) for name in cls().state_dict()})


class Recovery:
    """Rollback snapshots per optimiser, and the restores queued for the end of the batch."""

    def __init__(self, snapshot_every_n_steps: int, snapshot_device: torch.device | None) -> None:
        self.snapshot_every_n_steps = snapshot_every_n_steps
        self.snapshot_device = snapshot_device
        self.snapshots: dict[int, Snapshot] = {}
        self.pending: list[Restore] = []

    def snapshot(
        self, optimizer: Optimizer, trainable: Trainable, step: int, buffers: dict[str, Tensor], force: bool = False
    ) -> None:
        """Keep the weights (verified finite just now), their optimiser state and the buffers as they were before
        this step's forward, every ``snapshot_every_n_steps`` (``force``: now, e.g. when what trains changed)."""
        previous = self.snapshots.get(id(optimizer))
        params = trainable.training()
        changed = previous is not None and (
            len(previous.targets) != len(params) or any(a is not b for a, b in zip(previous.targets, params))
        )
        if force or changed or previous is None or step - previous.step >= self.snapshot_every_n_steps:
            self.snapshots[id(optimizer)] = take(
                params, optimizer, step, device=self.snapshot_device, reuse=previous, buffers=buffers
            )

    def restorable(self, trainer: pl.Trainer, keys: list[int]) -> list[Restore]:
        out = []
        for key in keys:
            optimizer = optimizer_by_id(trainer, key)
            if optimizer is not None and key in self.snapshots:
                out.append((optimizer, self.snapshots[key]))
        return out

    def have_snapshots(self, trainer: pl.Trainer, trainables: dict[int, Trainable]) -> bool:
        """Every live optimiser seen so far has a finite snapshot to go back to."""
        live = [key for key in trainables if optimizer_by_id(trainer, key) is not None]
        return bool(live) and all(key in self.snapshots for key in live)

    def can_roll_back(
        self, trainer: pl.Trainer, optimizer: Optimizer, trainables: dict[int, Trainable], restore_all: bool
    ) -> bool:
        """Broken weights may be anyone's: then every optimiser needs a snapshot, else only this one."""
        return self.have_snapshots(trainer, trainables) if restore_all else id(optimizer) in self.snapshots

    def drop_update(
        self,
        trainer: pl.Trainer,
        optimizer: Optimizer,
        trainable: Trainable,
        action: str,
        trainables: dict[int, Trainable],
        restore_all: bool,
    ) -> None:
        """Skip or roll back the update about to happen (``action`` is "skip" or "rollback")."""
        for p in trainable.params:
            # torch.optim optimisers skip parameters whose .grad is None: no weight decay, no momentum,
            # no state change. A GradScaler that found inf skips step() anyway.
            p.grad = None
        if action == "rollback":
            keys = list(trainables) if restore_all else [id(optimizer)]
            self.pending.extend(self.restorable(trainer, keys))
        if not any(opt is optimizer for opt, _ in self.pending) and not is_torch_optimizer(optimizer):
            # an optimiser we cannot trust to honour grad=None: undo whatever its step does
            snap = take(trainable.training(), optimizer, trainer.global_step, device=self.snapshot_device)
            self.pending.append((optimizer, snap))

    def restore(self, restores: list[Restore], module: nn.Module) -> None:
        for optimizer, snap in restores:
            restore(snap, optimizer, module)

    def restore_pending(self, module: nn.Module) -> None:
        self.restore(self.pending, module)
        self.pending.clear()

    def clear(self) -> None:
        self.snapshots.clear()
        self.pending.clear()


def abort(
    message: str,
    *,
    diagnosis: str,
    global_step: int,
    report_path: str | None,
    error: type[NonFiniteTrainingError] = NonFiniteTrainingError,
) -> NoReturn:
    raise error(message, diagnosis=diagnosis, global_step=global_step, report_path=report_path)


def spare_checkpoints(trainer: pl.Trainer) -> None:
    """Turn off ``save_on_exception``: the weights in memory are non-finite and must not be written."""
    for cb in trainer.checkpoint_callbacks:
        if getattr(cb, "save_on_exception", False):
            cb.save_on_exception = False  # type: ignore[attr-defined]
            rank_zero_warn("GradientHealth: weights are non-finite; the save-on-exception checkpoint was not written.")


def optimizer_by_id(trainer: pl.Trainer, key: int) -> Optimizer | None:
    for opt in trainer.optimizers:
        if id(opt) == key:
            return opt
    return None


def is_torch_optimizer(optimizer: Optimizer) -> bool:
    return type(optimizer).__module__.startswith("torch.optim")


class ScheduleHold:
    """Scheduler and learning-rate state taken before a scaler-skipped step, restored at the end of its batch."""

    def __init__(self) -> None:
        self.pending: list[tuple[Any, dict[str, Any], list[Any]]] = []

    def capture(self, trainer: pl.Trainer) -> bool:
        """Before the optimiser step the scaler will skip: keep what Lightning's ``scheduler.step()`` will change.
        ``True`` when there is a schedule to hold."""
        self.pending.clear()
        if not trainer.lightning_module.automatic_optimization:
            return False  # under manual optimisation the module steps its schedulers itself
        for config in trainer.lr_scheduler_configs:
            if config.interval != "step" or config.reduce_on_plateau:
                continue
            scheduler = config.scheduler
            groups = getattr(scheduler, "optimizer", None)
            lrs = [_copy(group.get("lr")) for group in groups.param_groups] if groups is not None else []
            self.pending.append((scheduler, copy.deepcopy(scheduler.state_dict()), lrs))
        return bool(self.pending)

    def release(self) -> None:
        """Put every captured scheduler and learning rate back (after Lightning stepped them)."""
        for scheduler, state, lrs in self.pending:
            scheduler.load_state_dict(state)
            optimizer = getattr(scheduler, "optimizer", None)
            if optimizer is None:
                continue
            for group, lr in zip(optimizer.param_groups, lrs):
                if isinstance(group.get("lr"), Tensor) and isinstance(lr, Tensor):
                    group["lr"].copy_(lr)  # a tensor lr (capturable/fused optimisers) is updated in place
                else:
                    group["lr"] = lr
        self.pending.clear()


def _copy(value: Any) -> Any:
    return value.detach().clone() if isinstance(value, Tensor) else value


FILE_NAME = "skip_list.json"


class SkipList:
    """Samples named by trips, in the order they were named; one entry per sample id."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []

    @property
    def ids(self) -> list[int]:
        return [int(entry["id"]) for entry in self.entries]

    def add(self, provenance: Provenance | None, step: int, cause: str, action: str) -> list[dict[str, Any]]:
        """Add the samples ``provenance`` names (all ranks' under DDP); returns the entries that were new."""
        named = _named(provenance)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, named)
            named = [item for rank_items in gathered for item in rank_items]
        known = set(self.ids)
        new = []
        for sample_id, record in named:
            if sample_id not in known:
                known.add(sample_id)
                new.append({"id": sample_id, "step": step, "cause": cause, "action": action, "record": record})
        self.entries += new
        return new

    def write(self, directory: str | os.PathLike[str]) -> Path:
        """``skip_list.json`` in ``directory`` (written whole, then renamed: a reader never sees half a file)."""
        path = Path(directory) / FILE_NAME
        with atomic_file(path) as fh:
            fh.write(json.dumps({"sample_ids": self.ids, "samples": self.entries}, indent=2) + "\n")
        return path

    def state_dict(self) -> list[dict[str, Any]]:
        return [dict(entry) for entry in self.entries]

    def load_state_dict(self, entries: list[dict[str, Any]] | None) -> None:
        self.entries = [dict(entry) for entry in entries or []]  # absent in older checkpoints: empty


def read_skip_list(path: str | os.PathLike[str]) -> list[int]:
    """The sample ids of a ``skip_list.json`` (or of a plain JSON list of ids)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    ids = data.get("sample_ids") if isinstance(data, dict) else data
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise ValueError(f"{path}: expected {FILE_NAME} ({{'sample_ids': [int, ...], ...}}) or a JSON list of ints")
    return ids


def _named(provenance: Provenance | None) -> list[tuple[int, str | None]]:
    """``(sample id, record)`` pairs a trip's provenance names (non-finite rows, else spike rows)."""
    if provenance is None:
        return []
    samples = provenance.samples or {}
    ids = samples.get("nonfinite_ids") or samples.get("spike_ids") or []
    records = samples.get("records") or []
    out = []
    for k, sample_id in enumerate(ids):
        if isinstance(sample_id, int) and not isinstance(sample_id, bool):
            out.append((sample_id, records[k] if k < len(records) else None))
    return out
