"""GradientHealth: stop, skip or roll back a run whose loss, gradients or weights go non-finite.

A run whose gradients go NaN should not grind on for hours logging ``grad_norm: nan``. This callback measures
every optimiser step (one norm pass over the gradients, one over the weights, one host sync, one all-reduce),
decides with the rules in ``_diagnosis.decide`` and then aborts, drops the update, or restores the last good
snapshot - identically on every rank - and writes a JSON report that says why.

Works with any ``LightningModule`` (automatic optimisation; manual optimisation is checked per
``optimizer.step()``). Imports only the standard library, torch and lightning.

Where each piece happens (and why there):

* ``on_train_batch_start`` / ``on_before_backward``: device-side flags only (no supervised tokens; loss
  NaN/inf, unscaled by the GradScaler's scale and the accumulation factor). Nothing is read back yet.
* ``on_before_optimizer_step``: Lightning's AMP plugin has already called ``scaler.unscale_`` and has not yet
  clipped, so gradients are unscaled and pre-clip. Fused ``_foreach_norm`` over the grads (and over the weights
  unless the last post-update check already measured them and their version counters show no write since), one
  all-reduce (SUM) of a 7-flag vector (plus the count of ranks that skipped the weight pass), one ``.tolist()``,
  then the decision. Without a scaler the update has not
  happened yet: skip/rollback set every ``.grad`` to ``None`` so torch optimisers leave weights and state alone.
* ``on_train_batch_end`` (before ModelCheckpoint's, which Lightning orders last): restore the rollback snapshot
  (or, for optimisers outside ``torch.optim``, the pre-step snapshot), else queue a device-side check of the
  freshly updated weights that the next step's sync reads.
* a ``state_dict`` pre-hook on the LightningModule: no checkpoint (full or weights-only) is serialised with
  non-finite trainable weights; ``on_exception`` turns off ``save_on_exception`` when the weights are poisoned.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
import weakref
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor
from torch.optim import Optimizer

from . import _diagnosis as dx
from ._norms import per_tensor_norms, total_norm, versions
from ._report import append_trip, report_path
from ._snapshot import Snapshot, restore, take

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
class _Trainable:
    """The trainable parameters of one optimiser, in optimiser order, with their qualified names."""

    params: list[Tensor]
    names: list[str]
    modules: list[str]
    n_in_groups: int


class GradientHealth(Callback):
    r"""Detect non-finite loss, gradients, weights and target-less batches; abort, skip or roll back.

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
        warn_on_setup: at fit start, warn about fp16 without a loss scaler and non-fp32 trainable parameters.
        prog_bar: also show ``grad_health/grad_norm`` on the progress bar (the other keys go to the logger only).

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
        if label_key is not None and (not isinstance(label_key, str) or not label_key):
            raise GradientHealthConfigError(f"`label_key` must be a non-empty string or None, got {label_key!r}.")
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
        if not isinstance(warn_on_setup, bool):
            raise GradientHealthConfigError(f"`warn_on_setup` must be a bool, got {warn_on_setup!r}.")
        if not isinstance(prog_bar, bool):
            raise GradientHealthConfigError(f"`prog_bar` must be a bool, got {prog_bar!r}.")

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
        self._pending_restore: tuple[Optimizer, _Trainable, Snapshot] | None = None
        self._post_check: _Trainable | None = None
        self._params_after: Tensor | None = None  # device flag: weights non-finite after the last update
        # (id of the _Trainable, version counters) of the weights that flag covers: while they are unchanged, the
        # pre-step weight pass would re-measure the very same tensors, so it is skipped
        self._checked_versions: tuple[int, list[int]] | None = None
        self._poisoned = False  # we aborted with non-finite weights in memory
        self._guard_handle: torch.utils.hooks.RemovableHandle | None = None
        self._trainer_ref: weakref.ReferenceType[pl.Trainer] | None = None
        self._label_warned = False
        self._batch_idx = -1
        self._norm_history: deque[tuple[int, float]] = deque(maxlen=_NORM_HISTORY)
        self._reset_interval()
        self._reset_step()

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
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # trainer.log_dir broadcasts, so it must be resolved here, on every rank - never inside a trip
        self._report_dir = self.report_dir or trainer.log_dir or trainer.default_root_dir
        self._trainer_ref = weakref.ref(trainer)
        if self.warn_on_setup:
            self._warn_setup(trainer, pl_module)
        if self._guard_handle is None:
            self._guard_handle = pl_module.register_state_dict_pre_hook(self._checkpoint_guard)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reset_step()
        self._reset_interval()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._guard_handle is not None:
            self._guard_handle.remove()
            self._guard_handle = None
        self._snapshots.clear()
        self._trainables.clear()
        self._pending_restore = None
        self._post_check = None
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
        if self.label_key is None:
            return
        labels = _find(batch, self.label_key)
        if labels is None:
            if not self._label_warned:
                self._label_warned = True
                rank_zero_warn(
                    f"GradientHealth: the batch has no {self.label_key!r} key or attribute; the 'no supervised"
                    " tokens' check is off. Pass `label_key=None` to silence this, or the right key."
                )
            return
        if not isinstance(labels, Tensor):
            try:
                labels = torch.as_tensor(labels)
            except (TypeError, ValueError, RuntimeError):
                return  # ragged python lists etc.: nothing cheap to check
        empty = torch.count_nonzero(labels != self.ignore_index) == 0  # stays on device: no sync
        self._empty = empty if self._empty is None else (self._empty | empty)

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor) -> None:
        value = loss.detach().float()
        scaler = _active_scaler(trainer)
        if scaler is not None and getattr(scaler, "_scale", None) is not None:
            value = value / scaler._scale.to(value.device)  # precision plugin scaled it before this hook
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
        step = trainer.global_step
        trainable = self._trainable(optimizer, pl_module)
        device = trainable.params[0].device if trainable.params else pl_module.device
        scaler = _active_scaler(trainer)
        scale_t: Tensor | None = getattr(scaler, "_scale", None) if scaler is not None else None

        grad_norms, grad_order = per_tensor_norms([p.grad for p in trainable.params], device)
        if scale_t is not None and getattr(optimizer, "_step_supports_amp_scaling", False):
            grad_norms = grad_norms / scale_t.to(device)  # fused optimisers unscale inside step(): do it here
        gnorm = total_norm(grad_norms)
        # the last update's post-check already measured these weights, and nothing has written them since: the
        # flag it left (_params_after) answers "are the weights finite?" and a second pass would cost a full
        # read of every trainable tensor per step. Writes that bypass the version counter (``p.data[...] = x``)
        # are caught by the re-check on the trip path below, or by the post-check after this update.
        covered = self._params_after is not None and self._weights_unchanged(trainable)
        if covered:
            param_norms, param_order = torch.zeros(0, device=device), []
            pnorm = torch.zeros((), device=device)
        else:
            param_norms, param_order = per_tensor_norms(trainable.params, device)
            pnorm = total_norm(param_norms)

        flags = torch.stack(
            [
                _flag(self._loss_nan, device),
                _flag(self._loss_inf, device),
                _flag(self._empty, device),
                torch.isnan(gnorm),
                torch.isinf(gnorm),
                ~torch.isfinite(pnorm),
                _flag(self._params_after, device),
                # not a condition: how many ranks skipped the weight pass. Reduced with the flags so that every
                # rank agrees on whether the trip path re-measures (a collective) - the counters can differ
                # between ranks, e.g. after a write on one rank only
                torch.full((), float(covered), device=device),
            ]
        ).float()
        flags = _all_reduce_sum(trainer, flags)  # the one collective: every rank gets the same verdict
        loss = (
            (self._loss_sum / self._loss_count).to(device).reshape(())
            if self._loss_sum is not None
            else torch.full((), math.nan, device=device)
        )
        scale = (
            scale_t.to(device=device, dtype=torch.float32).reshape(())
            if scale_t is not None
            else torch.full((), math.nan, device=device)
        )
        payload = torch.cat([flags, torch.stack([gnorm, loss, scale]), grad_norms, param_norms])
        values = payload.tolist()  # THE host sync of this step
        had_loss = self._loss_sum is not None
        self._reset_step()

        n = len(dx.FLAG_NAMES)
        flag_values = dx.StepFlags.from_values(values[:n])
        covered_ranks = round(values[n])
        local_gnorm, local_loss, scale_value = values[n + 1 : n + 4]
        g = values[n + 4 : n + 4 + len(grad_order)]
        pn = values[n + 4 + len(grad_order) :]
        loss_scale = scale_value if scale_t is not None else None

        decision = self._decide(flag_values, step, loss_scale)
        if covered_ranks and decision.verdict is dx.Verdict.TRIP:
            # rare path, so a second sync is fine: measure the weights after all (on every rank, since it is a
            # collective), for the diagnosis and the report
            pn, param_order, poisoned_ranks = self._measure_weights(trainer, trainable, device)
            if poisoned_ranks:
                flag_values = dataclasses.replace(flag_values, params_nonfinite_before=poisoned_ranks)
                decision = self._decide(flag_values, step, loss_scale)
        self._norm_history.append((step, local_gnorm))
        if loss_scale is not None:
            self._scaler.record(step, loss_scale, skipped=decision.verdict is dx.Verdict.SCALER_SKIP)
        self._update_interval(local_gnorm, trainable, grad_order, g)

        if decision.verdict is dx.Verdict.TRIP:
            context = {  # named per-tensor norms for the report: built only when there is one to write
                "loss": local_loss if had_loss else None,
                "grad_norm": local_gnorm,
                "loss_scale": loss_scale,
                "flags": flag_values.as_dict(),
                "grad_norms": [(trainable.names[i], v) for i, v in zip(grad_order, g)],
                "param_norms": [(trainable.names[i], v) for i, v in zip(param_order, pn)],
            }
            # raises on abort (after the report is written); otherwise drops this update
            action = self._trip(trainer, optimizer, decision, context, where="optimizer_step")
            for p in trainable.params:
                # torch.optim optimisers skip parameters whose .grad is None: no weight decay, no momentum,
                # no state change. A GradScaler that found inf skips step() anyway.
                p.grad = None
            snap = self._snapshots.get(id(optimizer)) if action == "rollback" else None
            if snap is None and not _is_torch_optimizer(optimizer):
                # an optimiser we cannot trust to honour grad=None: undo whatever its step does
                snap = take(trainable.params, optimizer, step, device=self._snapshot_device)
            if snap is not None:
                self._pending_restore = (optimizer, trainable, snap)
        else:
            if self.on_nonfinite == "rollback":
                self._maybe_snapshot(optimizer, trainable, step)  # weights verified finite just now
            if decision.verdict is dx.Verdict.HEALTHY:
                self._post_check = trainable  # the update will be applied: check the weights after it
        self._checked_versions = None  # the pre-step weights are consumed; only a new post-check re-arms the skip
        self._log(trainer, pl_module, loss_scale)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # runs before ModelCheckpoint.on_train_batch_end (Lightning orders checkpoint callbacks last)
        if self._pending_restore is not None:
            optimizer, trainable, snap = self._pending_restore
            self._pending_restore = None
            restore(snap, trainable.params, optimizer)
        elif self._post_check is not None:
            trainable, self._post_check = self._post_check, None
            if trainable.params:
                norms, _ = per_tensor_norms(trainable.params, trainable.params[0].device)
                # no sync: judged with the next step's flags, at a checkpoint, or at train end
                self._params_after = ~torch.isfinite(total_norm(norms))
                counters = versions(trainable.params)
                self._checked_versions = (id(trainable), counters) if counters is not None else None

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

    # ------------------------------------------------------------------ acting on a trip
    def _trip(
        self,
        trainer: pl.Trainer,
        optimizer: Optimizer | None,
        decision: dx.Decision,
        context: dict[str, Any],
        where: str,
    ) -> str:
        """Pick the action, write the report, count, and raise on abort. Returns "skip" or "rollback"."""
        assert decision.diagnosis is not None
        mode = self.on_nonfinite
        action, reason = mode, None
        has_snapshot = optimizer is not None and id(optimizer) in self._snapshots
        if decision.fatal:
            action, reason = "abort", "the loss scaler has been backing off without recovering"
        elif mode != "abort" and self._recovered_trips >= self.skip_budget:
            action, reason = "abort", f"skip budget of {self.skip_budget} exhausted"
        elif mode == "skip" and decision.params_poisoned:
            action, reason = "abort", "skipping cannot repair non-finite weights (use on_nonfinite='rollback')"
        elif mode == "rollback" and decision.params_poisoned and not has_snapshot:
            action, reason = "abort", "no finite snapshot to roll back to"
        if where == "checkpoint" and action == "abort":
            reason = (reason + "; " if reason else "") + "checkpoint not written"

        step = trainer.global_step
        self._trip_count += 1
        path = report_path(self._report_dir or trainer.default_root_dir, trainer.global_rank)
        message = (
            f"GradientHealth: {decision.diagnosis} at global step {step} (epoch {trainer.current_epoch}, batch"
            f" {self._batch_idx}) -> {action}" + (f" ({reason})" if reason else "") + f". Report: {path}"
            f". Fix: {dx.advice(decision.diagnosis, mode)}"
        )
        if action != "abort":
            self._recovered_trips += 1
            if action == "skip":
                self._skipped_steps += 1
            else:
                self._rolled_back_steps += 1
        record = self._record(trainer, optimizer, decision, context, action, reason, message, where)
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

    def _trip_outside_step(self, trainer: pl.Trainer, where: str) -> None:
        """Weights found non-finite after an update (train end, checkpoint): abort, or roll back right now."""
        decision = dx.Decision(dx.Verdict.TRIP, dx.D_PARAMS_AFTER, params_poisoned=True)
        for key, trainable in list(self._trainables.items()):
            optimizer = self._optimizer_by_id(trainer, key)
            if optimizer is None:
                continue
            context = {"flags": {"params_nonfinite_after_prev_step": 1}, "param_norms": _names_norms(trainable)}
            self._trip(trainer, optimizer, decision, context, where=where)  # raises unless rollback
            restore(self._snapshots[key], trainable.params, optimizer)
            self._params_after = None  # repaired: the pending post-update flag is stale
            return
        # no optimiser step seen yet (e.g. non-finite weights loaded before the first step): nothing to restore
        self._trip(trainer, None, decision, {"flags": {"params_nonfinite_before": 1}}, where=where)

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
        if not params:
            return
        norms, _ = per_tensor_norms(params, params[0].device)
        if bool(torch.isfinite(total_norm(norms))):
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

    def _weights_unchanged(self, trainable: _Trainable) -> bool:
        """True when the post-update check saw exactly these tensors and none was written in place since."""
        if self._checked_versions is None:
            return False
        key, counters = self._checked_versions
        return key == id(trainable) and versions(trainable.params) == counters

    def _measure_weights(
        self, trainer: pl.Trainer, trainable: _Trainable, device: torch.device
    ) -> tuple[list[float], list[int], int]:
        """Per-tensor weight norms (local) and the number of ranks whose weights are non-finite (one collective)."""
        norms, order = per_tensor_norms(trainable.params, device)
        bad = (~torch.isfinite(total_norm(norms))).float().reshape(1)
        ranks = _all_reduce_sum(trainer, bad)
        return norms.tolist(), order, int(round(ranks.item()))

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

    def _update_interval(self, gnorm: float, trainable: _Trainable, order: list[int], norms: list[float]) -> None:
        if math.isfinite(gnorm):
            self._interval_max = gnorm if self._interval_max is None else max(self._interval_max, gnorm)
        else:
            self._interval_nonfinite = True
        if self.log_per_module_topk > 0:
            squares: dict[str, float] = {}
            for i, v in zip(order, norms):
                module = trainable.modules[i]
                squares[module] = squares.get(module, 0.0) + v * v
            for module, sq in squares.items():
                value = math.sqrt(sq)
                if math.isfinite(value) and value > self._interval_modules.get(module, -1.0):
                    self._interval_modules[module] = value

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss_scale: float | None) -> None:
        if not _should_log(trainer):
            return
        if self._interval_max is not None:
            grad_norm = self._interval_max  # spikes between two log points are kept: max over the interval
        else:
            grad_norm = math.inf if self._interval_nonfinite else 0.0
        metrics: dict[str, float] = {
            KEY_GRAD_NORM: grad_norm,
            KEY_SKIPPED: float(self._skipped_steps),
            KEY_ROLLED_BACK: float(self._rolled_back_steps),
        }
        if loss_scale is not None:
            metrics[KEY_LOSS_SCALE] = loss_scale
            metrics[KEY_SCALER_SKIPPED] = float(self._scaler.total_skipped)
        if self.log_per_module_topk > 0:
            top = sorted(self._interval_modules.items(), key=lambda item: item[1], reverse=True)
            for module, value in top[: self.log_per_module_topk]:
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
        self._reset_interval()

    def _reset_interval(self) -> None:
        self._interval_max: float | None = None
        self._interval_nonfinite = False
        self._interval_modules: dict[str, float] = {}

    def _reset_step(self) -> None:
        self._loss_sum: Tensor | None = None
        self._loss_count = 0
        self._loss_nan: Tensor | None = None
        self._loss_inf: Tensor | None = None
        self._empty: Tensor | None = None
        self._params_after = None

    def _warn_setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        precision = str(trainer.precision)
        if precision.startswith("16") and _active_scaler(trainer) is None:
            rank_zero_warn(
                f"GradientHealth: precision={precision!r} runs without a GradScaler (Lightning creates none on CPU"
                " and none for '16-true'): overflowing fp16 gradients are not backed off, so every non-finite"
                " gradient is fatal."
            )
        dtypes = Counter(str(p.dtype) for p in pl_module.parameters() if p.requires_grad and p.dtype != torch.float32)
        if dtypes:
            listing = ", ".join(f"{n} x {dt}" for dt, n in dtypes.items())
            rank_zero_warn(
                f"GradientHealth: trainable parameters are not fp32 ({listing}): small updates are rounded away"
                " and overflow is likelier. Keep trainable (master) weights in fp32."
            )


# ---------------------------------------------------------------------- module-level helpers
def _check_int(name: str, value: Any, minimum: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise GradientHealthConfigError(f"`{name}` must be an int, got {value!r}.")
    if minimum is not None and value < minimum:
        raise GradientHealthConfigError(f"`{name}` must be >= {minimum}, got {value!r}.")


def _find(batch: Any, key: str) -> Any:
    if isinstance(batch, Mapping):
        return batch.get(key)
    return getattr(batch, key, None)


def _flag(value: Tensor | None, device: torch.device) -> Tensor:
    if value is None:
        return torch.zeros((), dtype=torch.bool, device=device)
    return value.to(device).reshape(())


def _active_scaler(trainer: pl.Trainer) -> Any:
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    if scaler is None or not getattr(scaler, "is_enabled", lambda: True)():
        return None
    return scaler


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
