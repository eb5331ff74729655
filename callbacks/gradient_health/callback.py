"""GradientHealth: stop, skip or roll back a run whose loss, gradients or weights go non-finite (or spike).

It only wires Lightning's hooks to the per-step pass (measure, decide, act; replay and report on a trip): docs/callback.md.
"""

from __future__ import annotations

import logging
import math
import weakref
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor
from torch.optim import Optimizer

from . import decide as dx
from . import preflight as pf
from . import report as rp
from .act import ACTIONS, Counters, Recovery, ScheduleHold, SkipList, abort, optimizer_by_id, spare_checkpoints
from .distributed import gather_views, own_view, rank_clause, sharding_of
from .measure import Measured, StepMeter, Trainable, named_norms, weights_nonfinite
from .preflight import NonFiniteTrainingError, TrainingSpikeError, check_arguments
from .provenance import Provenance
from .public_state import PublicState
from .replay import record, spike_samples, trace
from .report import log_interval
from .snapshot import StepStart, nonfinite_names, saved_tensors
from .spikes import MIN_HISTORY, THRESHOLD, WINDOW, SpikeGuard, is_spike_diagnosis

log = logging.getLogger(__package__)


class GradientHealth(PublicState, Callback):
    r"""Detect non-finite loss, gradients, weights and target-less batches; say where they started; act.

    Args:
        on_nonfinite: ``"abort"`` raises :class:`NonFiniteTrainingError`; ``"skip"`` drops the update; ``"rollback"``
            restores the last good in-memory snapshot and drops the batch; both abort once ``skip_budget`` is spent.
        max_consecutive_skipped: under a GradScaler, how many consecutive overflow steps the scaler may skip;
            the next consecutive overflow aborts (0: every overflow is fatal).
        min_loss_scale: under a GradScaler, a loss scale below this floor is fatal.
        skip_budget: number of trips that skip/rollback may absorb before aborting.
        log_per_module_topk: also log the ``k`` largest per-module gradient norms (0 disables).
        label_key: batch key/attribute holding the targets for the "no supervised tokens" check; ``None``
            disables the check, and so does a batch without it (quietly: debug log, ``label_check`` in reports).
        ignore_index: target value that is not supervised.
        report_dir: where to write the JSON report; default ``trainer.log_dir`` or ``trainer.default_root_dir``.
        snapshot_every_n_steps: rollback snapshot cadence in optimiser steps (a copy of the trainable parameters and
            their optimiser state: cheap for LoRA; for full fine-tuning raise it or use ``snapshot_device="cpu"``).
        snapshot_device: keep rollback snapshots on this device (e.g. ``"cpu"`` to spare accelerator memory, at
            the price of a blocking device-to-host copy per snapshot); ``None`` keeps them next to the parameters.
        warn_on_setup: at fit start, warn about set-ups known to go non-finite (fp16 trainable weights under AMP,
            fp16 without a loss scaler, clipping the precision plugin refuses, a first batch without targets).
        prog_bar: also show ``grad_health/grad_norm`` on the progress bar (the other keys go to the logger only).
        replay_on_trip: on a non-finite loss or gradient, replay the batch once with hooks and name the first module
            whose output (forward or backward) went non-finite; one forward and backward per trip, nothing otherwise.
        sample_id_key: batch key/attribute of per-row sample identities, listed in a trip's report (``None``: off);
            the module may define ``per_sample_loss(batch)`` and ``describe_samples(ids)`` (docs/callback.md).
        on_spike: a *finite* loss or pre-clip gradient norm far above its robust level: ``None`` (off), ``"warn"``,
            ``"skip"``, ``"rollback"`` (spending ``skip_budget``) or ``"abort"`` (:class:`TrainingSpikeError`).
        spike_threshold / spike_window / spike_min_history: robust sigmas (1.4826 * MAD of log values) above the
            median of the last ``spike_window`` healthy steps that make a spike; none before ``spike_min_history``.
        hold_scheduler_on_scaler_skip: on a step the GradScaler skipped, undo the step-interval LR schedulers'
            ``step()`` that Lightning still makes, so the schedule follows the updates made.

    Skip and rollback also abort when they cannot help: a persistent scaler back-off, ``skip`` on weights already
    non-finite, ``rollback`` without a snapshot. Logged: ``grad_health/grad_norm`` and the counters (docs/callback.md).
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
        on_spike: Literal["warn", "skip", "rollback", "abort"] | None = None,
        spike_threshold: float = THRESHOLD,
        spike_window: int = WINDOW,
        spike_min_history: int = MIN_HISTORY,
        hold_scheduler_on_scaler_skip: bool = False,
    ) -> None:
        super().__init__()
        device = check_arguments(
            on_nonfinite=on_nonfinite, actions=ACTIONS, max_consecutive_skipped=max_consecutive_skipped,
            min_loss_scale=min_loss_scale, skip_budget=skip_budget, log_per_module_topk=log_per_module_topk,
            label_key=label_key, ignore_index=ignore_index, report_dir=report_dir,
            snapshot_every_n_steps=snapshot_every_n_steps, snapshot_device=snapshot_device, sample_id_key=sample_id_key,
            flags={"warn_on_setup": warn_on_setup, "prog_bar": prog_bar, "replay_on_trip": replay_on_trip,
                   "hold_scheduler_on_scaler_skip": hold_scheduler_on_scaler_skip},
        )
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
        # not in state_key: checkpoints written before these existed must still load
        self.on_spike = on_spike
        self.spike_threshold = spike_threshold
        self.spike_window = spike_window
        self.spike_min_history = spike_min_history
        self.hold_scheduler_on_scaler_skip = hold_scheduler_on_scaler_skip

        # checkpointed
        self._counters = Counters()
        self._scaler = dx.ScalerTracker()
        self._spikes = SpikeGuard(on_spike, spike_threshold, spike_window, spike_min_history)  # history checkpointed
        self._hold = ScheduleHold()
        self._skip_list = SkipList()  # the samples trips named (act.py)
        # run state
        self._meter = StepMeter()
        self._start = StepStart()  # buffers and carried attributes as they were before the step's forward
        self._measured_in_batch = False
        self._recovery = Recovery(snapshot_every_n_steps, device)
        self._trips: list[dict[str, Any]] = []
        self._report_dir: str | None = None
        self._poisoned = False  # we aborted with non-finite weights in memory
        self._guard_handle: torch.utils.hooks.RemovableHandle | None = None
        self._trainer_ref: weakref.ReferenceType[pl.Trainer] | None = None
        self._targets = pf.TargetCheck(label_key, ignore_index)
        self._first_batch_checked = False

    @property
    def state_key(self) -> str:
        """Two instances with different settings keep separate checkpoint entries (as Lightning's callbacks do)."""
        return self._generate_state_key(
            on_nonfinite=self.on_nonfinite, label_key=self.label_key, report_dir=self.report_dir
        )

    # ------------------------------------------------------------------ lifecycle
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            pf.refuse_unsupported(trainer)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # trainer.log_dir broadcasts, so it must be resolved here, on every rank - never inside a trip
        self._report_dir = self.report_dir or trainer.log_dir or trainer.default_root_dir
        self._trainer_ref = weakref.ref(trainer)
        if self.warn_on_setup:
            for message in pf.preflight(pf.trainer_facts(trainer, pl_module)):
                rank_zero_warn(message)
        if self._guard_handle is None:
            self._guard_handle = pl_module.register_state_dict_pre_hook(self._checkpoint_guard)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._meter.start(trainer.accumulate_grad_batches)
        self._meter.shard(sharding_of(trainer), trainer.world_size)
        self._start.bind(pl_module)
        self._first_batch_checked = False

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._guard_handle is not None:
            self._guard_handle.remove()
            self._guard_handle = None
        self._recovery.clear()
        self._meter.clear()
        self._start.bind(torch.nn.Module())  # drop the references to the module's buffers

    def state_dict(self) -> dict[str, Any]:
        return {
            **self._counters.state_dict(),
            **self._scaler.state_dict(),
            "spike_history": self._spikes.state_dict(),
            "skip_list": self._skip_list.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._counters = Counters.from_state(state_dict)
        self._scaler.load_state_dict(state_dict)
        self._spikes.load_state_dict(state_dict.get("spike_history"))  # absent in older checkpoints: warm up again
        self._skip_list.load_state_dict(state_dict.get("skip_list"))

    # ------------------------------------------------------------------ per batch: cheap device-side flags
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self._meter.batch_idx = batch_idx
        if not self._start.open or not pl_module.automatic_optimization:
            self._start.capture(pl_module)  # the first micro-batch of a step: before its forward
        if (self.replay_on_trip or self._spikes.enabled) and pl_module.automatic_optimization:
            self._meter.window.append(record(batch, batch_idx))  # a reference and the RNG state: no copy, no sync
        empty = self._targets.flag(batch)
        if empty is None:
            return
        self._meter.add_empty(empty)
        if not self._first_batch_checked:
            self._first_batch_checked = True
            if self.warn_on_setup and bool(empty):  # one host read, on the first batch only
                rank_zero_warn(pf.empty_first_batch(str(self.label_key), self.ignore_index))

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor) -> None:
        accumulation = trainer.accumulate_grad_batches if pl_module.automatic_optimization else None
        self._meter.add_loss(loss, accumulation)

    # ------------------------------------------------------------------ per optimiser step: measure, decide, act
    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Optimizer) -> None:
        """After AMP unscaling, before clipping: the gradients the optimiser would use; the update can still be dropped."""
        step = trainer.global_step
        trainable = self._meter.trainable(optimizer, pl_module)
        buffers = self._start.changed_floating() if self._start.open else []
        measured = self._meter.measure(trainer, pl_module, optimizer, trainable, buffers)
        self._measured_in_batch = True
        decision = dx.decide(
            measured.flags,
            step=step,
            loss_scale=measured.loss_scale,
            tracker=self._scaler,
            max_consecutive_skipped=self.max_consecutive_skipped,
            min_loss_scale=self.min_loss_scale,
        )
        # a finite spike is judged only on a step the NaN rules found healthy (a spike step stays out of the history)
        spike = self._spikes.judge(measured.spike_values()) if decision.verdict is dx.Verdict.HEALTHY else None
        self._meter.account(step, measured, trainable, self.log_per_module_topk)
        if measured.loss_scale is not None:
            self._scaler.record(step, measured.loss_scale, skipped=decision.verdict is dx.Verdict.SCALER_SKIP)
        if "rollback" in (self.on_nonfinite, self.on_spike) and not decision.params_poisoned:
            # the weights were verified finite just now: the last good state, whatever happens to this update
            self._recovery.snapshot(optimizer, trainable, step, self._start.kept_buffers())
        applied = False
        if decision.verdict is dx.Verdict.TRIP:
            self._on_trip(trainer, pl_module, optimizer, trainable, decision, measured)
        elif spike is None or self._on_spike(trainer, pl_module, optimizer, trainable, spike, measured) == "warn":
            applied = decision.verdict is dx.Verdict.HEALTHY
            if not applied and self.hold_scheduler_on_scaler_skip and self._hold.capture(trainer):
                self._counters.scheduler_held_steps += 1  # the scaler skips this step: undone at on_train_batch_end
        if applied:
            self._meter.expect_update()  # the weights this update writes are checked at the end of the batch
        self._meter.window.clear()

    def _on_trip(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Optimizer, trainable: Trainable,
        decision: dx.Decision, measured: Measured,
    ) -> None:
        """Put back what the step's forward changed, say where it started, report, then abort or drop this update."""
        context = {**measured.context(), **self._put_back_step_start(pl_module)}
        provenance = self._provenance(trainer, pl_module, decision)  # replays from the state the step started from
        restore_all = decision.params_poisoned  # weights already broken: every optimiser's weights may be
        trainables = self._meter.trainables
        has_snapshot = self._recovery.can_roll_back(trainer, optimizer, trainables, restore_all)
        action = self._trip(trainer, optimizer, decision, context, "optimizer_step", has_snapshot, provenance)
        self._recovery.drop_update(trainer, optimizer, trainable, action, trainables, restore_all)
        self._after_recovery(pl_module)

    def _put_back_step_start(self, pl_module: pl.LightningModule) -> dict[str, Any]:
        """Buffers and carried attributes back to before the step's forward; the report names the non-finite ones."""
        attributes = self._start.restore(pl_module)
        return {"nonfinite_attributes": attributes} if attributes else {}

    def _after_recovery(self, pl_module: pl.LightningModule) -> None:
        """Skip or rollback done: the module's ``reset_state()``, if any, resets state it carries itself."""
        reset = getattr(pl_module, "reset_state", None)
        if callable(reset):
            reset()

    def _on_spike(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Optimizer, trainable: Trainable,
        decision: dx.Decision, measured: Measured,
    ) -> str:
        """Name the samples, report, then warn, abort (raises), or drop this update (skip / rollback)."""
        provenance = spike_samples(trainer, pl_module, self._meter.window, self.sample_id_key, self._spikes.loss_limit())
        context = {**measured.context(), "spike": self._spikes.context()}
        has_snapshot = id(optimizer) in self._recovery.snapshots
        assert self.on_spike is not None
        action = self._trip(trainer, optimizer, decision, context, "optimizer_step", has_snapshot, provenance, self.on_spike)
        if action in ("skip", "rollback"):
            self._start.restore(pl_module)
            self._recovery.drop_update(trainer, optimizer, trainable, action, self._meter.trainables, restore_all=False)
            self._after_recovery(pl_module)
        return action

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # before ModelCheckpoint's (checkpoint callbacks run last), after Lightning stepped the LR schedulers
        self._hold.release()
        self._recovery.restore_pending(pl_module)
        self._meter.check_updates()
        if self._measured_in_batch:  # every optimiser of this batch has stepped: log, and a new step begins
            self._measured_in_batch = False
            self._start.open = False
            self._log(trainer, pl_module)

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        held = self.hold_scheduler_on_scaler_skip and self._meter.loss_scale is not None
        log_interval(
            trainer, pl_module, self._meter.interval, skipped_steps=self._counters.skipped_steps,
            rolled_back_steps=self._counters.rolled_back_steps, loss_scale=self._meter.loss_scale,
            scaler_skipped_steps=self._scaler.total_skipped, topk=self.log_per_module_topk, prog_bar=self.prog_bar,
            extra=self._counters.metrics(spikes=self._spikes.enabled, held=held),
        )

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Judge the update of the last step, which no later step will look at."""
        if self._meter.last_update_broken(trainer):
            self._trip_outside_step(trainer, where="train_end")

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """Runs before ModelCheckpoint.on_exception: never let ``save_on_exception`` write poisoned weights."""
        if self._poisoned:
            spare_checkpoints(trainer)

    # ------------------------------------------------------------------ where it started, which samples
    def _provenance(self, trainer: pl.Trainer, pl_module: pl.LightningModule, decision: dx.Decision) -> Provenance | None:
        """The replay's answer with the samples that carried it; ``None`` when off or nothing to replay."""
        if not (self.replay_on_trip and dx.replayable(decision)):
            return None
        return trace(trainer, pl_module, self._meter.window, self.sample_id_key)

    # ------------------------------------------------------------------ a trip: decide the action, report, act
    def _trip(
        self, trainer: pl.Trainer, optimizer: Optimizer | None, decision: dx.Decision, context: dict[str, Any], where: str,
        has_snapshot: bool, provenance: Provenance | None = None, mode: str | None = None,
    ) -> str:
        """Pick the action (by ``mode``: ``on_nonfinite`` or ``on_spike``), count, report; raise on abort, else return it."""
        assert decision.diagnosis is not None
        mode = mode or self.on_nonfinite
        if self._targets.off_reason is not None:
            context = {**context, "label_check": self._targets.off_reason}
        spike = is_spike_diagnosis(decision.diagnosis)
        action, reason = dx.choose_action(
            decision,
            mode=mode,
            recovered_trips=self._counters.recovered_trips,
            skip_budget=self.skip_budget,
            has_snapshot=has_snapshot,
            at_checkpoint=where == "checkpoint",
        )
        if context.get("nonfinite_state"):
            reason = (reason + "; " if reason else "") + "non-finite: " + ", ".join(context["nonfinite_state"][:5])
        self._counters.count(action, spike=spike)
        path = rp.report_path(self._report_dir or trainer.default_root_dir, trainer.global_rank)
        # under accumulation the replay names the micro-batch that carried it, not the step's last one
        batch_idx = provenance.batch_idx if provenance is not None and provenance.batch_idx is not None else self._meter.batch_idx
        views = self._rank_views(trainer, context, provenance) if where == "optimizer_step" else None
        message = rp.message(
            trainer, batch_idx=batch_idx, diagnosis=decision.diagnosis, action=action, reason=reason,
            on_nonfinite=mode, provenance=provenance, path=path, ranks=rank_clause(views, trainer.global_rank, spike),
        )
        snap = self._recovery.snapshots.get(id(optimizer)) if optimizer is not None else None
        trip = rp.trip_record(
            trainer, batch_idx=batch_idx, where=where, diagnosis=decision.diagnosis, action=action,
            on_nonfinite=mode, reason=reason, message=message, context=context, optimizer=optimizer,
            loss_scale_history=self._scaler.history, grad_norm_history=self._meter.history,
            counters=self._counters.for_report(self._scaler.total_skipped, self.skip_budget),
            rollback_to_step=snap.step if (action == "rollback" and snap is not None) else None,
            provenance=provenance,
        )
        if views is not None:
            trip["ranks"] = views
        self._trips.append(trip)
        written = rp.write_trip(path, trip)
        # every rank trips at this step, so the list is gathered from all of them (add runs on every rank)
        named = where == "optimizer_step" and self._skip_list.add(provenance, trainer.global_step, decision.diagnosis, action)
        if named and trainer.is_global_zero:
            self._skip_list.write(self._report_dir or trainer.default_root_dir)
        if action == "warn":
            rank_zero_warn(message)
        elif trainer.is_global_zero:
            log.warning(message)
        if action == "abort":
            self._poisoned = decision.params_poisoned
            abort(message, diagnosis=decision.diagnosis, global_step=trainer.global_step, report_path=written,
                  error=TrainingSpikeError if spike else NonFiniteTrainingError)
        return action

    def _rank_views(self, trainer: pl.Trainer, context: dict[str, Any], provenance: Provenance | None) -> list | None:
        """Every rank's own view of this step (several ranks only; every rank trips here, so one gather)."""
        if trainer.world_size <= 1:
            return None
        local = self._meter.local_flags
        report = rp.report_file(trainer.global_rank)
        return gather_views(own_view(trainer.global_rank, local, provenance, context.get("loss"), context.get("grad_norm", math.nan), report))

    def _trip_outside_step(self, trainer: pl.Trainer, where: str, names: list[str] | None = None) -> None:
        """State found non-finite outside a step (train end, checkpoint): abort, or roll back every optimiser."""
        decision = dx.Decision(dx.Verdict.TRIP, dx.D_STATE if names else dx.D_PARAMS_AFTER, params_poisoned=True)
        trainables = self._meter.trainables
        restorable = self._recovery.restorable(trainer, list(trainables))
        if not trainables:
            # no optimiser step seen yet (e.g. non-finite weights loaded before the first step): nothing to restore
            self._trip(trainer, None, decision, {"flags": {"params_nonfinite_before": 1}}, where, has_snapshot=False)
            return
        first = next(iter(trainables.values()))
        optimizer = optimizer_by_id(trainer, next(iter(trainables)))
        context = {"flags": {"params_nonfinite_after_prev_step": 1}, "param_norms": named_norms(first)}
        if names:
            context["nonfinite_state"] = names
        self._trip(trainer, optimizer, decision, context, where, has_snapshot=self._recovery.have_snapshots(trainer, trainables))
        module = trainer.lightning_module
        self._recovery.restore(restorable, module)  # only reached on rollback: all of them, not only the first
        self._meter.forget_updates()  # repaired: the weights of the last updates were put back

    def _checkpoint_guard(self, module: torch.nn.Module, prefix: str, keep_vars: bool) -> None:
        """state_dict pre-hook: no non-finite state is serialised during fit (on rollback the last good snapshot is).

        A pre-hook because Lightning skips callback hooks for weights-only checkpoints; local only (state_dict may
        run on one rank); not under FSDP, whose hooks re-point parameters at gathered storage.
        """
        trainer = self._trainer_ref() if self._trainer_ref is not None else None
        if trainer is None or trainer.state.fn != TrainerFn.FITTING or self._meter.sharded:
            return
        if not bool(weights_nonfinite(saved_tensors(module, trainer.optimizers))):
            return
        names = nonfinite_names(module, trainer.optimizers)
        trained = {n for t in self._meter.trainables.values() for n, p in zip(t.names, t.params) if p.requires_grad}
        others = [n for n in names if n not in trained]
        self._trip_outside_step(trainer, where="checkpoint", names=others)  # aborts, or rolls every optimiser back
        left = nonfinite_names(module, trainer.optimizers)
        if left:
            self._poisoned = True
            message = (
                f"GradientHealth: {', '.join(left[:5])} still non-finite after the rollback (not trained by any"
                " optimiser, so no snapshot holds them): checkpoint not written. Fix: find what writes them (a"
                " buffer updated outside training_step, weights loaded non-finite), or resume from the last good"
                " checkpoint."
            )
            abort(message, diagnosis=dx.D_PARAMS_BEFORE, global_step=trainer.global_step, report_path=None)

