"""GradientHealth: stop, skip or roll back a run whose loss, gradients or weights go non-finite.

A run whose gradients go NaN should not grind on for hours logging ``grad_norm: nan``. This callback measures
every optimiser step (one norm pass over the gradients, one over the weights, one host sync, one all-reduce),
decides with the rules in ``_diagnosis.decide`` and then aborts, drops the update, or restores the last good
snapshot - identically on every rank - and writes a JSON report that says why.

Works with any ``LightningModule`` (automatic optimisation; manual optimisation is checked per
``optimizer.step()``) on single-device and DDP strategies; FSDP and DeepSpeed are refused at setup (their
gradients are sharded or owned by the engine). Imports only the standard library, torch and lightning.

Where each piece happens (and why there):

* ``on_train_batch_start`` / ``on_before_backward``: device-side flags only (no supervised tokens; loss
  NaN/inf, unscaled by the GradScaler's scale and the accumulation factor). Nothing is read back yet.
* ``on_before_optimizer_step``: Lightning's AMP plugin has already called ``scaler.unscale_`` and has not yet
  clipped, so gradients are unscaled and pre-clip. Three steps: *measure* (fused ``_foreach_norm`` over the
  grads and the weights, one all-reduce (SUM) of a 7-flag vector, one ``.tolist()``), *decide*
  (``_diagnosis.decide``, pure), *act* (on a trip: replay the batch for provenance, pick the action with
  ``_diagnosis.choose_action``, write the report, abort or drop the update). Without a scaler the update has not
  happened yet: skip/rollback set every ``.grad`` to ``None`` so torch optimisers leave weights and state alone.
* ``on_train_batch_end`` (before ModelCheckpoint's, which Lightning orders last): restore the rollback snapshot
  (or, for optimisers outside ``torch.optim``, the pre-step snapshot), else queue a device-side check of the
  freshly updated weights that the next step's sync reads.
* a ``state_dict`` pre-hook on the LightningModule: no checkpoint (full or weights-only) is serialised with
  non-finite trainable weights; ``on_exception`` turns off ``save_on_exception`` when the weights are poisoned.
"""

from __future__ import annotations

import logging
import math
import time
import weakref
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor
from torch.optim import Optimizer

from . import _diagnosis as dx
from . import _preflight
from . import _provenance as pv
from ._interval import IntervalMax
from ._norms import per_tensor_norms, total_norm
from ._precision import active_scaler, scale_tensor
from ._report import append_trip, report_path
from ._snapshot import Snapshot, restore, take
from ._trace import SAMPLES_DESCRIBED, find, trace

log = logging.getLogger(__name__)

_ACTIONS = ("abort", "skip", "rollback")
_NORM_HISTORY = 16  # grad norms of the steps just before a trip, kept for the report
_SCALE_HISTORY_IN_REPORT = 64
_NAMES_IN_REPORT = 10

KEY_GRAD_NORM = "grad_health/grad_norm"
KEY_LOSS_SCALE = "grad_health/loss_scale"
KEY_SKIPPED = "grad_health/skipped_steps"
KEY_ROLLED_BACK = "grad_health/rolled_back_steps"
KEY_SCALER_SKIPPED = "grad_health/scaler_skipped_steps"
KEY_MODULE_PREFIX = "grad_health/grad_norm/"


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


@dataclass
class _Measured:
    """One optimiser step, measured: flags reduced over ranks, this rank's norms, loss and loss scale."""

    flags: dx.StepFlags
    grad_norm: float
    loss: float | None
    loss_scale: float | None
    grad_norms: list[tuple[str, float]]
    param_norms: list[tuple[str, float]]
    grad_order: list[int]
    grad_values: list[float]


@dataclass
class _Trainable:
    """The trainable parameters of one optimiser, in optimiser order, with their qualified names."""

    params: list[Tensor]
    names: list[str]
    modules: list[str]
    n_in_groups: int


class GradientHealth(Callback):
    r"""Detect non-finite loss, gradients, weights and target-less batches; say where they started; abort, skip
    or roll back.

    Args:
        on_nonfinite: ``"abort"`` raises :class:`NonFiniteTrainingError`; ``"skip"`` drops the offending update
            so the optimiser never sees it; ``"rollback"`` restores the last good in-memory snapshot of trainable
            parameters and optimiser state and drops the offending batch. Skip and rollback abort once
            ``skip_budget`` is spent, and whenever they cannot help (see below).
        max_consecutive_skipped: under a GradScaler, how many consecutive overflow steps the scaler may skip;
            the next consecutive overflow aborts (0: every overflow is fatal).
        min_loss_scale: under a GradScaler, a loss scale below this floor is fatal.
        skip_budget: number of trips that skip/rollback may absorb before aborting.
        log_per_module_topk: also log the ``k`` largest per-module gradient norms (0 disables).
        label_key: batch key/attribute holding the targets for the "no supervised tokens" check; ``None``
            disables the check. The batch may be a mapping or have attribute access.
        ignore_index: target value that is not supervised.
        report_dir: where to write the JSON report; default ``trainer.log_dir`` or ``trainer.default_root_dir``.
        snapshot_every_n_steps: rollback snapshot cadence (in optimiser steps). A snapshot copies the trainable
            parameters and their optimiser state (cheap for LoRA; for full fine-tuning raise this or use
            ``snapshot_device="cpu"``). Only used with ``on_nonfinite="rollback"``.
        snapshot_device: keep rollback snapshots on this device (e.g. ``"cpu"`` to spare accelerator memory, at
            the price of a blocking device-to-host copy per snapshot); ``None`` keeps them next to the parameters.
        warn_on_setup: at fit start, warn about set-ups known to go non-finite (fp16 trainable weights under AMP,
            fp16 without a loss scaler, clipping the precision plugin refuses, a first batch without targets).
        prog_bar: also show ``grad_health/grad_norm`` on the progress bar (the other keys go to the logger only).
        replay_on_trip: on a trip caused by a non-finite loss or gradient, replay the offending batch once with
            temporary hooks on every submodule and name the first module (forward or backward) whose output went
            non-finite. Costs one forward and backward per trip, nothing on healthy steps.
        sample_id_key: batch key/attribute holding per-row sample identities (e.g. dataset indices), listed in
            the report of a trip; ``None`` disables. The module (or datamodule) may also define
            ``per_sample_loss(batch) -> Tensor[B]`` (to find the rows whose loss is non-finite) and
            ``describe_samples(ids) -> list[str]`` (to name the records).

    Skip/rollback cannot help, and abort, when: the scaler's back-off persisted (``max_consecutive_skipped`` /
    ``min_loss_scale``); ``skip`` meets weights that are already non-finite; ``rollback`` has no snapshot yet and
    the weights are non-finite.

    Logged at every step on which Lightning writes logs (``pl_module.log``, ``on_step=True``):
    ``grad_health/grad_norm`` (max over the logging interval of the pre-clip, unscaled total gradient norm),
    ``grad_health/skipped_steps``, ``grad_health/rolled_back_steps``, under a GradScaler also
    ``grad_health/loss_scale`` and ``grad_health/scaler_skipped_steps``, and with ``log_per_module_topk > 0``
    ``grad_health/grad_norm/<module>`` (max over the interval, largest ``k`` modules).
    """

    def __init__(
        self,
        on_nonfinite: Literal["abort", "skip", "rollback"] = "abort",
        max_consecutive_skipped: int = 20,
        min_loss_scale: float = 1e-4,
        skip_budget: int = 10,
        log_per_module_topk: int = 0,
        label_key: str | None = "labels",
        ignore_index: int = -100,
        report_dir: str | None = None,
        snapshot_every_n_steps: int = 1,
        snapshot_device: str | None = None,
        warn_on_setup: bool = True,
        prog_bar: bool = True,
        replay_on_trip: bool = True,
        sample_id_key: str | None = "sample_ids",
    ) -> None:
        super().__init__()
        if on_nonfinite not in _ACTIONS:
            raise GradientHealthConfigError(f"`on_nonfinite` must be one of {_ACTIONS}, got {on_nonfinite!r}.")
        _check_int("max_consecutive_skipped", max_consecutive_skipped, minimum=0)
        if isinstance(min_loss_scale, bool) or not isinstance(min_loss_scale, (int, float)):
            raise GradientHealthConfigError(f"`min_loss_scale` must be a number, got {min_loss_scale!r}.")
        if not (math.isfinite(min_loss_scale) and min_loss_scale >= 0):
            raise GradientHealthConfigError(f"`min_loss_scale` must be finite and >= 0, got {min_loss_scale!r}.")
        _check_int("skip_budget", skip_budget, minimum=0)
        _check_int("log_per_module_topk", log_per_module_topk, minimum=0)
        _check_key("label_key", label_key)
        _check_int("ignore_index", ignore_index, minimum=None)
        if report_dir is not None and (not isinstance(report_dir, str) or not report_dir):
            raise GradientHealthConfigError(f"`report_dir` must be a non-empty string or None, got {report_dir!r}.")
        _check_int("snapshot_every_n_steps", snapshot_every_n_steps, minimum=1)
        self._snapshot_device: torch.device | None = None
        if snapshot_device is not None:
            try:
                self._snapshot_device = torch.device(snapshot_device)
            except (RuntimeError, TypeError) as err:
                raise GradientHealthConfigError(f"`snapshot_device` is not a valid torch device: {snapshot_device!r}.") from err
        for name, flag in (("warn_on_setup", warn_on_setup), ("prog_bar", prog_bar), ("replay_on_trip", replay_on_trip)):
            if not isinstance(flag, bool):
                raise GradientHealthConfigError(f"`{name}` must be a bool, got {flag!r}.")
        _check_key("sample_id_key", sample_id_key)

        self.on_nonfinite = on_nonfinite
        self.max_consecutive_skipped = max_consecutive_skipped
        self.min_loss_scale = float(min_loss_scale)
        self.skip_budget = skip_budget
        self.log_per_module_topk = log_per_module_topk
        self.label_key = label_key
        self.ignore_index = ignore_index
        self.report_dir = report_dir
        self.snapshot_every_n_steps = snapshot_every_n_steps
        self.snapshot_device = snapshot_device
        self.warn_on_setup = warn_on_setup
        self.prog_bar = prog_bar
        self.replay_on_trip = replay_on_trip
        self.sample_id_key = sample_id_key

        # counters (checkpointed)
        self._skipped_steps = 0
        self._rolled_back_steps = 0
        self._recovered_trips = 0  # trips absorbed by skip/rollback: what the budget counts
        self._trip_count = 0
        self._scaler = dx.ScalerTracker()
        # run state (not checkpointed)
        self._trips: list[dict[str, Any]] = []
        self._report_dir: str | None = None
        self._trainables: dict[int, _Trainable] = {}
        self._snapshots: dict[int, Snapshot] = {}
        self._pending_restores: list[tuple[Optimizer, _Trainable, Snapshot]] = []
        self._post_checks: dict[int, _Trainable] = {}
        self._params_after: Tensor | None = None  # device flag: weights non-finite after the last update
        self._window: deque[pv.RecordedBatch] = deque(maxlen=1)  # the micro-batches of this optimiser step
        self._poisoned = False  # we aborted with non-finite weights in memory
        self._guard_handle: torch.utils.hooks.RemovableHandle | None = None
        self._trainer_ref: weakref.ReferenceType[pl.Trainer] | None = None
        self._label_warned = False
        self._first_batch_checked = False
        self._batch_idx = -1
        self._norm_history: deque[tuple[int, float]] = deque(maxlen=_NORM_HISTORY)
        self._interval = IntervalMax()
        self._reset_step()

    @property
    def state_key(self) -> str:
        """Two instances with different settings keep separate checkpoint entries (as Lightning's callbacks do)."""
        return self._generate_state_key(
            on_nonfinite=self.on_nonfinite, label_key=self.label_key, report_dir=self.report_dir
        )

    @property
    def _legacy_state_key(self) -> str:  # type: ignore[override]
        """Checkpoints written before ``state_key`` existed keep this callback's state under its class name."""
        return type(self).__qualname__

    # ------------------------------------------------------------------ public read-only state
    @property
    def skipped_steps(self) -> int:
        """Updates dropped by ``on_nonfinite="skip"``."""
        return self._skipped_steps

    @property
    def rolled_back_steps(self) -> int:
        """Updates dropped and replaced by a snapshot restore (``on_nonfinite="rollback"``)."""
        return self._rolled_back_steps

    @property
    def scaler_skipped_steps(self) -> int:
        """Steps the GradScaler skipped as normal fp16 back-off (not trips)."""
        return self._scaler.total_skipped

    @property
    def trips(self) -> list[dict[str, Any]]:
        """The trip records of this process (same content as the JSON report), oldest first."""
        return list(self._trips)

    # ------------------------------------------------------------------ lifecycle
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            _refuse_sharded(trainer)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # trainer.log_dir broadcasts, so it must be resolved here, on every rank - never inside a trip
        self._report_dir = self.report_dir or trainer.log_dir or trainer.default_root_dir
        self._trainer_ref = weakref.ref(trainer)
        if self.warn_on_setup:
            for message in _preflight.preflight(_preflight.trainer_facts(trainer, pl_module)):
                rank_zero_warn(message)
        if self._guard_handle is None:
            self._guard_handle = pl_module.register_state_dict_pre_hook(self._checkpoint_guard)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reset_step()
        self._interval.reset()
        self._window = deque(maxlen=max(1, int(trainer.accumulate_grad_batches)))
        self._first_batch_checked = False

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._guard_handle is not None:
            self._guard_handle.remove()
            self._guard_handle = None
        self._snapshots.clear()
        self._trainables.clear()
        self._pending_restores.clear()
        self._post_checks.clear()
        self._window.clear()
        self._params_after = None

    def state_dict(self) -> dict[str, Any]:
        return {
            "skipped_steps": self._skipped_steps,
            "rolled_back_steps": self._rolled_back_steps,
            "recovered_trips": self._recovered_trips,
            "trip_count": self._trip_count,
            "scaler_skipped_steps": self._scaler.total_skipped,
            "consecutive_scaler_skips": self._scaler.consecutive,
            "scaler_run_start_scale": self._scaler.run_start_scale,
            "loss_scale_history": [list(item) for item in self._scaler.history],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._skipped_steps = int(state_dict.get("skipped_steps", 0))
        self._rolled_back_steps = int(state_dict.get("rolled_back_steps", 0))
        self._recovered_trips = int(state_dict.get("recovered_trips", 0))
        self._trip_count = int(state_dict.get("trip_count", 0))
        self._scaler.total_skipped = int(state_dict.get("scaler_skipped_steps", 0))
        self._scaler.consecutive = int(state_dict.get("consecutive_scaler_skips", 0))
        self._scaler.run_start_scale = state_dict.get("scaler_run_start_scale")
        self._scaler.history.clear()
        for step, scale in state_dict.get("loss_scale_history", []):
            self._scaler.history.append((int(step), float(scale)))

    # ------------------------------------------------------------------ per batch: cheap device-side flags
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self._batch_idx = batch_idx
        if self.replay_on_trip and pl_module.automatic_optimization:
            self._window.append(pv.record(batch, batch_idx))  # a reference and the RNG state: no copy, no sync
        empty = self._empty_flag(batch)
        if empty is None:
            return
        self._empty = empty if self._empty is None else (self._empty | empty)
        if not self._first_batch_checked:
            self._first_batch_checked = True
            if self.warn_on_setup and bool(empty):  # one host read, on the first batch only
                rank_zero_warn(_preflight.empty_first_batch(str(self.label_key), self.ignore_index))

    def _empty_flag(self, batch: Any) -> Tensor | None:
        """Device flag: the batch has no supervised target (``None`` when there is nothing to check)."""
        if self.label_key is None:
            return None
        labels = find(batch, self.label_key)
        if labels is None:
            if not self._label_warned:
                self._label_warned = True
                rank_zero_warn(
                    f"GradientHealth: the batch has no {self.label_key!r} key or attribute; the 'no supervised"
                    " tokens' check is off. Pass `label_key=None` to silence this, or the right key."
                )
            return None
        if not isinstance(labels, Tensor):
            try:
                labels = torch.as_tensor(labels)
            except (TypeError, ValueError, RuntimeError):
                return None  # ragged python lists etc.: nothing cheap to check
        return torch.count_nonzero(labels != self.ignore_index) == 0  # stays on device: no sync

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor) -> None:
        value = loss.detach().float()
        scale = scale_tensor(active_scaler(trainer.precision_plugin))
        if scale is not None:
            value = value / scale.to(value.device)  # precision plugin scaled it before this hook
        if pl_module.automatic_optimization:
            value = value * trainer.accumulate_grad_batches  # Lightning divided it for accumulation
        nan, inf = torch.isnan(value), torch.isinf(value)
        self._loss_sum = value if self._loss_sum is None else self._loss_sum + value
        self._loss_count += 1
        self._loss_nan = nan if self._loss_nan is None else (self._loss_nan | nan)
        self._loss_inf = inf if self._loss_inf is None else (self._loss_inf | inf)

    # ------------------------------------------------------------------ per optimiser step: measure, decide, act
    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Optimizer) -> None:
        """Runs after AMP unscaling and before gradient clipping: gradients here are what the optimiser would use
        (pre-clip). Without a scaler the update has not happened yet, so it can still be dropped."""
        trainable = self._trainable(optimizer, pl_module)
        measured = self._measure(trainer, pl_module, optimizer, trainable)
        decision = self._decide(measured.flags, trainer.global_step, measured.loss_scale)
        self._account(trainer.global_step, measured, decision, trainable)
        if decision.verdict is dx.Verdict.TRIP:
            self._act_on_trip(trainer, pl_module, optimizer, trainable, decision, measured)
        else:
            if self.on_nonfinite == "rollback":
                self._maybe_snapshot(optimizer, trainable, trainer.global_step)  # weights verified finite just now
            if decision.verdict is dx.Verdict.HEALTHY:
                self._post_checks[id(optimizer)] = trainable  # the update will be applied: check the weights after
        self._window.clear()
        self._log(trainer, pl_module, measured.loss_scale)

    def _measure(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Optimizer, trainable: _Trainable
    ) -> _Measured:
        """Norms of gradients and weights, the step's flags reduced over ranks: one collective, one host sync."""
        device = trainable.params[0].device if trainable.params else pl_module.device
        scale_t = scale_tensor(active_scaler(trainer.precision_plugin))
        grad_norms, grad_order = per_tensor_norms([p.grad for p in trainable.params], device)
        if scale_t is not None and getattr(optimizer, "_step_supports_amp_scaling", False):
            grad_norms = grad_norms / scale_t.to(device)  # fused optimisers unscale inside step(): do it here
        gnorm = total_norm(grad_norms)
        param_norms, param_order = per_tensor_norms(trainable.params, device)
        flags = torch.stack(
            [
                _flag(self._loss_nan, device),
                _flag(self._loss_inf, device),
                _flag(self._empty, device),
                torch.isnan(gnorm),
                torch.isinf(gnorm),
                ~torch.isfinite(total_norm(param_norms)),
                _flag(self._params_after, device),
            ]
        ).float()
        flags = _all_reduce_sum(trainer, flags)  # the one collective: every rank gets the same verdict
        loss = (
            (self._loss_sum / self._loss_count).to(device).reshape(())
            if self._loss_sum is not None
            else torch.full((), math.nan, device=device)
        )
        scale = scale_t.to(device=device, dtype=torch.float32).reshape(()) if scale_t is not None else loss.new_full((), math.nan)
        values = torch.cat([flags, torch.stack([gnorm, loss, scale]), grad_norms, param_norms]).tolist()  # THE sync
        had_loss = self._loss_sum is not None
        self._reset_step()
        n, g = len(dx.FLAG_NAMES), len(grad_order)
        return _Measured(
            flags=dx.StepFlags.from_values(values[:n]),
            grad_norm=values[n],
            loss=values[n + 1] if had_loss else None,
            loss_scale=values[n + 2] if scale_t is not None else None,
            grad_norms=[(trainable.names[i], v) for i, v in zip(grad_order, values[n + 3 : n + 3 + g])],
            param_norms=[(trainable.names[i], v) for i, v in zip(param_order, values[n + 3 + g :])],
            grad_order=grad_order,
            grad_values=values[n + 3 : n + 3 + g],
        )

    def _account(self, step: int, measured: _Measured, decision: dx.Decision, trainable: _Trainable) -> None:
        """Host-side bookkeeping of a measured step: norm history, loss-scale tracker, the logging interval."""
        self._norm_history.append((step, measured.grad_norm))
        if measured.loss_scale is not None:
            self._scaler.record(step, measured.loss_scale, skipped=decision.verdict is dx.Verdict.SCALER_SKIP)
        self._interval.add(measured.grad_norm)
        if self.log_per_module_topk > 0:
            self._interval.add_modules((trainable.modules[i], v) for i, v in zip(measured.grad_order, measured.grad_values))

    def _act_on_trip(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        optimizer: Optimizer,
        trainable: _Trainable,
        decision: dx.Decision,
        measured: _Measured,
    ) -> None:
        """Say where it started, report, then abort (raises) or drop this update (skip / rollback)."""
        context = {
            "loss": measured.loss,
            "grad_norm": measured.grad_norm,
            "loss_scale": measured.loss_scale,
            "flags": measured.flags.as_dict(),
            "grad_norms": measured.grad_norms,
            "param_norms": measured.param_norms,
        }
        provenance = self._provenance(trainer, pl_module, decision)
        restore_all = decision.params_poisoned  # weights already broken: every optimiser's weights may be
        has_snapshot = self._have_snapshots(trainer) if restore_all else id(optimizer) in self._snapshots
        action = self._trip(trainer, optimizer, decision, context, "optimizer_step", has_snapshot, provenance)
        for p in trainable.params:
            # torch.optim optimisers skip parameters whose .grad is None: no weight decay, no momentum,
            # no state change. A GradScaler that found inf skips step() anyway.
            p.grad = None
        if action == "rollback":
            keys = list(self._trainables) if restore_all else [id(optimizer)]
            self._pending_restores.extend(self._restorable(trainer, keys))
        if not any(opt is optimizer for opt, _, _ in self._pending_restores) and not _is_torch_optimizer(optimizer):
            # an optimiser we cannot trust to honour grad=None: undo whatever its step does
            snap = take(trainable.params, optimizer, trainer.global_step, device=self._snapshot_device)
            self._pending_restores.append((optimizer, trainable, snap))

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # runs before ModelCheckpoint.on_train_batch_end (Lightning orders checkpoint callbacks last)
        for optimizer, trainable, snap in self._pending_restores:
            restore(snap, trainable.params, optimizer)
        self._pending_restores.clear()
        flags = [_nonfinite(t.params) for t in self._post_checks.values() if t.params]
        self._post_checks.clear()
        if flags:
            # no sync: judged with the next step's flags, at a checkpoint, or at train end
            self._params_after = torch.stack([f.to(flags[0].device) for f in flags]).any()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Judge the update of the last step, which no later step will look at."""
        if self._params_after is None:
            return
        flag = _all_reduce_sum(trainer, self._params_after.float().reshape(1))
        self._params_after = None
        if flag.item() > 0:
            self._trip_outside_step(trainer, where="train_end")

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """Runs before ModelCheckpoint.on_exception: never let ``save_on_exception`` write poisoned weights."""
        if not self._poisoned:
            return
        for cb in trainer.checkpoint_callbacks:
            if getattr(cb, "save_on_exception", False):
                cb.save_on_exception = False  # type: ignore[attr-defined]
                rank_zero_warn(
                    "GradientHealth: weights are non-finite; the save-on-exception checkpoint was not written."
                )

    # ------------------------------------------------------------------ where it started, which samples
    def _provenance(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, decision: dx.Decision
    ) -> pv.Provenance | None:
        """``None`` when this kind of trip has nothing to replay (broken weights, a batch without targets) or
        replay is off; otherwise the replay's answer, with the samples that carried the non-finite values."""
        if not (self.replay_on_trip and dx.replayable(decision)):
            return None
        return trace(trainer, pl_module, self._window, self.sample_id_key)

    # ------------------------------------------------------------------ acting on a trip
    def _trip(
        self,
        trainer: pl.Trainer,
        optimizer: Optimizer | None,
        decision: dx.Decision,
        context: dict[str, Any],
        where: str,
        has_snapshot: bool,
        provenance: pv.Provenance | None = None,
    ) -> str:
        """Pick the action, write the report, count, and raise on abort. Returns "skip" or "rollback"."""
        assert decision.diagnosis is not None
        action, reason = dx.choose_action(
            decision,
            mode=self.on_nonfinite,
            recovered_trips=self._recovered_trips,
            skip_budget=self.skip_budget,
            has_snapshot=has_snapshot,
            at_checkpoint=where == "checkpoint",
        )
        step = trainer.global_step
        self._trip_count += 1
        path = report_path(self._report_dir or trainer.default_root_dir, trainer.global_rank)
        message = self._message(trainer, decision, action, reason, provenance, path)
        if action != "abort":
            self._recovered_trips += 1
            if action == "skip":
                self._skipped_steps += 1
            else:
                self._rolled_back_steps += 1
        record = self._record(trainer, optimizer, decision, context, action, reason, message, where)
        record["provenance"] = provenance.as_dict() if provenance is not None else None
        self._trips.append(record)
        written: str | None = None
        try:
            written = str(append_trip(path, record))
        except OSError as err:  # a full disk must not hide the real problem
            log.error("GradientHealth: could not write the report to %s: %s", path, err)
        if trainer.is_global_zero:
            log.warning(message)
        if action == "abort":
            self._poisoned = decision.params_poisoned
            raise NonFiniteTrainingError(message, diagnosis=decision.diagnosis, global_step=step, report_path=written)
        return action

    def _message(
        self,
        trainer: pl.Trainer,
        decision: dx.Decision,
        action: str,
        reason: str | None,
        provenance: pv.Provenance | None,
        path: Any,
    ) -> str:
        """The one line a user reads: what, where it started, which samples, what was done, the report, the fix."""
        assert decision.diagnosis is not None
        parts = [
            f"GradientHealth: {decision.diagnosis} at global step {trainer.global_step} (epoch {trainer.current_epoch},"
            f" batch {self._batch_idx}"
            + (f", rank {trainer.global_rank}" if trainer.world_size > 1 else "")
            + f") -> {action}"
            + (f" ({reason})" if reason else "")
        ]
        fix = dx.advice(decision.diagnosis, self.on_nonfinite)
        if provenance is not None:
            parts.append(provenance.summary())
            samples = provenance.samples.get("nonfinite_ids")
            if samples:
                records = provenance.samples.get("records") or []
                parts.append(f"samples {samples[:SAMPLES_DESCRIBED]}" + (f" ({'; '.join(records)})" if records else ""))
            fix = provenance.advice() or fix
        return "; ".join(parts) + f". Report: {path}. Fix: {fix}"

    def _trip_outside_step(self, trainer: pl.Trainer, where: str) -> None:
        """Weights found non-finite after an update (train end, checkpoint): abort, or roll back every optimiser."""
        decision = dx.Decision(dx.Verdict.TRIP, dx.D_PARAMS_AFTER, params_poisoned=True)
        restorable = self._restorable(trainer, list(self._trainables))
        if not self._trainables:
            # no optimiser step seen yet (e.g. non-finite weights loaded before the first step): nothing to restore
            self._trip(trainer, None, decision, {"flags": {"params_nonfinite_before": 1}}, where, has_snapshot=False)
            return
        first = next(iter(self._trainables.values()))
        optimizer = self._optimizer_by_id(trainer, next(iter(self._trainables)))
        context = {"flags": {"params_nonfinite_after_prev_step": 1}, "param_norms": _names_norms(first)}
        self._trip(trainer, optimizer, decision, context, where, has_snapshot=self._have_snapshots(trainer))
        for opt, trainable, snap in restorable:  # only reached on rollback: restore all of them, not the first
            restore(snap, trainable.params, opt)
        self._params_after = None  # repaired: the pending post-update flag is stale

    def _restorable(self, trainer: pl.Trainer, keys: list[int]) -> list[tuple[Optimizer, _Trainable, Snapshot]]:
        out = []
        for key in keys:
            optimizer = self._optimizer_by_id(trainer, key)
            if optimizer is not None and key in self._snapshots:
                out.append((optimizer, self._trainables[key], self._snapshots[key]))
        return out

    def _have_snapshots(self, trainer: pl.Trainer) -> bool:
        """Every live optimiser seen so far has a finite snapshot to go back to."""
        live = [key for key in self._trainables if self._optimizer_by_id(trainer, key) is not None]
        return bool(live) and all(key in self._snapshots for key in live)

    def _checkpoint_guard(self, module: torch.nn.Module, prefix: str, keep_vars: bool) -> None:
        """state_dict pre-hook: refuse to serialise non-finite trainable weights during fit.

        A pre-hook (not ``on_save_checkpoint``) because Lightning skips callback hooks for weights-only
        checkpoints, and because it runs before the checkpoint dict is built, so a rollback here is what gets saved.
        Local check only (no collective): state_dict may legitimately be called on one rank.
        """
        trainer = self._trainer_ref() if self._trainer_ref is not None else None
        if trainer is None or trainer.state.fn != TrainerFn.FITTING:
            return
        params = [p for t in self._trainables.values() for p in t.params] or [
            p for p in module.parameters() if p.requires_grad
        ]
        if not params or not bool(_nonfinite(params)):
            return
        self._trip_outside_step(trainer, where="checkpoint")

    # ------------------------------------------------------------------ helpers
    def _record(
        self,
        trainer: pl.Trainer,
        optimizer: Optimizer | None,
        decision: dx.Decision,
        context: dict[str, Any],
        action: str,
        reason: str | None,
        message: str,
        where: str,
    ) -> dict[str, Any]:
        grad_norms: list[tuple[str, float]] = context.get("grad_norms", [])
        param_norms: list[tuple[str, float]] = context.get("param_norms", [])
        bad_grads = [name for name, v in grad_norms if not math.isfinite(v)]
        bad_params = [name for name, v in param_norms if not math.isfinite(v)]
        largest = sorted(((v, name) for name, v in grad_norms if math.isfinite(v)), reverse=True)[:_NAMES_IN_REPORT]
        snap = self._snapshots.get(id(optimizer)) if optimizer is not None else None
        return {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "detected_at": where,
            "global_step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "batch_idx": self._batch_idx,
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "diagnosis": decision.diagnosis,
            "action": action,
            "on_nonfinite": self.on_nonfinite,
            "abort_reason": reason,
            "message": message,
            "loss": context.get("loss"),
            "learning_rate": _learning_rates(optimizer),
            "grad_norm": context.get("grad_norm"),
            "loss_scale": context.get("loss_scale"),
            "loss_scale_history": [list(item) for item in self._scaler.history][-_SCALE_HISTORY_IN_REPORT:],
            "grad_norm_history": [list(item) for item in self._norm_history],
            "nonfinite_grad_params": bad_grads[:_NAMES_IN_REPORT],
            "nonfinite_grad_param_count": len(bad_grads),
            "nonfinite_params": bad_params[:_NAMES_IN_REPORT],
            "nonfinite_param_count": len(bad_params),
            "largest_grad_norms": {name: v for v, name in largest},
            "flags_rank_count": context.get("flags", {}),
            "rollback_to_step": snap.step if (action == "rollback" and snap is not None) else None,
            "counters": {
                "skipped_steps": self._skipped_steps,
                "rolled_back_steps": self._rolled_back_steps,
                "scaler_skipped_steps": self._scaler.total_skipped,
                "skip_budget_left": max(self.skip_budget - self._recovered_trips, 0),
            },
        }

    def _trainable(self, optimizer: Optimizer, pl_module: pl.LightningModule) -> _Trainable:
        n_in_groups = sum(len(group["params"]) for group in optimizer.param_groups)
        cached = self._trainables.get(id(optimizer))
        if cached is not None and cached.n_in_groups == n_in_groups:
            return cached
        names = {id(p): name for name, p in pl_module.named_parameters()}
        params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
        qualified = [names.get(id(p), f"param_{i}") for i, p in enumerate(params)]
        modules = [name.rsplit(".", 1)[0] if "." in name else name for name in qualified]
        trainable = _Trainable(params=params, names=qualified, modules=modules, n_in_groups=n_in_groups)
        self._trainables[id(optimizer)] = trainable
        return trainable

    def _decide(self, flags: dx.StepFlags, step: int, loss_scale: float | None) -> dx.Decision:
        return dx.decide(
            flags,
            step=step,
            loss_scale=loss_scale,
            tracker=self._scaler,
            max_consecutive_skipped=self.max_consecutive_skipped,
            min_loss_scale=self.min_loss_scale,
        )

    def _maybe_snapshot(self, optimizer: Optimizer, trainable: _Trainable, step: int) -> None:
        previous = self._snapshots.get(id(optimizer))
        if previous is None or step - previous.step >= self.snapshot_every_n_steps:
            self._snapshots[id(optimizer)] = take(
                trainable.params, optimizer, step, device=self._snapshot_device, reuse=previous
            )

    @staticmethod
    def _optimizer_by_id(trainer: pl.Trainer, key: int) -> Optimizer | None:
        for opt in trainer.optimizers:
            if id(opt) == key:
                return opt
        return None

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss_scale: float | None) -> None:
        if not _should_log(trainer):
            return
        metrics: dict[str, float] = {
            KEY_GRAD_NORM: self._interval.grad_norm(),
            KEY_SKIPPED: float(self._skipped_steps),
            KEY_ROLLED_BACK: float(self._rolled_back_steps),
        }
        if loss_scale is not None:
            metrics[KEY_LOSS_SCALE] = loss_scale
            metrics[KEY_SCALER_SKIPPED] = float(self._scaler.total_skipped)
        if self.log_per_module_topk > 0:
            for module, value in self._interval.top_modules(self.log_per_module_topk):
                metrics[KEY_MODULE_PREFIX + module] = value
        for key, value in metrics.items():
            # host values as CPU tensors: a Python float would be copied to the module's device (a blocking H2D
            # copy, i.e. a sync on CUDA), and Lightning keeps a logged metric on its value's device
            pl_module.log(
                key,
                torch.tensor(value, dtype=torch.float32),
                on_step=True,
                on_epoch=False,
                sync_dist=False,
                prog_bar=self.prog_bar and key == KEY_GRAD_NORM,
            )
        self._interval.reset()

    def _reset_step(self) -> None:
        self._loss_sum: Tensor | None = None
        self._loss_count = 0
        self._loss_nan: Tensor | None = None
        self._loss_inf: Tensor | None = None
        self._empty: Tensor | None = None
        self._params_after = None


# ---------------------------------------------------------------------- module-level helpers
def _check_int(name: str, value: Any, minimum: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise GradientHealthConfigError(f"`{name}` must be an int, got {value!r}.")
    if minimum is not None and value < minimum:
        raise GradientHealthConfigError(f"`{name}` must be >= {minimum}, got {value!r}.")


def _check_key(name: str, value: Any) -> None:
    if value is not None and (not isinstance(value, str) or not value):
        raise GradientHealthConfigError(f"`{name}` must be a non-empty string or None, got {value!r}.")


def _refuse_sharded(trainer: pl.Trainer) -> None:
    """FSDP/DeepSpeed shard or own the gradients: per-rank norms would be of shards, decisions per shard."""
    strategy = trainer.strategy
    if isinstance(strategy, (FSDPStrategy, DeepSpeedStrategy, ModelParallelStrategy)):
        raise GradientHealthConfigError(
            f"{type(strategy).__name__} is not supported: its gradients are sharded (or owned by the engine), so"
            " per-rank norms would miss most of the model and a rollback would restore shards. Fix: use"
            " strategy='ddp' (or a single device), or remove GradientHealth from the callbacks."
        )


def _flag(value: Tensor | None, device: torch.device) -> Tensor:
    if value is None:
        return torch.zeros((), dtype=torch.bool, device=device)
    return value.to(device).reshape(())


def _all_reduce_sum(trainer: pl.Trainer, tensor: Tensor) -> Tensor:
    """One all-reduce, no barrier (Lightning's strategy.reduce adds a barrier: a second collective)."""
    if trainer.world_size <= 1:
        return tensor
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
        return tensor
    return trainer.strategy.reduce(tensor, reduce_op="sum")


def _should_log(trainer: pl.Trainer) -> bool:
    try:
        return bool(trainer._logger_connector.should_update_logs)  # Lightning's own "flush now" rule
    except AttributeError:  # pragma: no cover - private API moved
        n = trainer.log_every_n_steps
        return n > 0 and (trainer.global_step + 1) % n == 0


def _is_torch_optimizer(optimizer: Optimizer) -> bool:
    return type(optimizer).__module__.startswith("torch.optim")


def _learning_rates(optimizer: Optimizer | None) -> list[float]:
    if optimizer is None:
        return []
    return [float(group["lr"]) for group in optimizer.param_groups if "lr" in group]


def _names_norms(trainable: _Trainable) -> list[tuple[str, float]]:
    if not trainable.params:
        return []
    norms, order = per_tensor_norms(trainable.params, trainable.params[0].device)
    return [(trainable.names[i], v) for i, v in zip(order, norms.tolist())]


def _nonfinite(params: list[Tensor]) -> Tensor:
    """Device flag: some weight is non-finite (one fused norm pass, no sync)."""
    norms, _ = per_tensor_norms(params, params[0].device)
    return ~torch.isfinite(total_norm(norms))
