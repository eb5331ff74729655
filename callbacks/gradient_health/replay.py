"""Replay: where a non-finite value started, found by running the failing batch once more with hooks (after a trip only).

What it puts back, and why it issues no collective: docs/design.md, "GradientHealth: replay"; what it names: docs/callback.md.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.signature_utils import is_param_in_hook_signature
from torch import Tensor, nn

from .distributed import sharding_of, training_step_through
from .preflight import active_scaler
from .provenance import FINITE, IN_BATCH, LOSS, SPIKE, UNAVAILABLE, Provenance, Tracer
from .tensors import batch_size_of, dtype_name, find, id_list, nonfinite_in_batch, rows_text

SAMPLES_IN_REPORT = 64
SAMPLES_DESCRIBED = 10


@dataclass
class RecordedBatch:
    """A micro-batch of the current accumulation window, kept (by reference) in case the step trips."""

    batch: Any
    batch_idx: int
    rng_cpu: Tensor
    rng_cuda: Tensor | None


def record(batch: Any, batch_idx: int) -> RecordedBatch:
    """Remember ``batch`` and the RNG state its ``training_step`` will start from (dropout masks replay too)."""
    cuda = torch.cuda.get_rng_state() if torch.cuda.is_initialized() else None
    return RecordedBatch(batch, batch_idx, torch.get_rng_state(), cuda)


# ------------------------------------------------------------------------------------------ the trainer side
def trace(
    trainer: pl.Trainer, pl_module: pl.LightningModule, window: Iterable[RecordedBatch], sample_id_key: str | None
) -> Provenance:
    """Replay the step's micro-batches (oldest first) until one goes non-finite again, then name its samples."""
    if not pl_module.automatic_optimization:
        return Provenance(UNAVAILABLE, detail="no replay under manual optimisation (training_step steps the optimiser)")
    scaler = active_scaler(trainer.precision_plugin)
    # what the trainer did to the loss before backward: scaled by the loss scale, divided for accumulation
    multiplier = (float(scaler.get_scale()) if scaler is not None else 1.0) / trainer.accumulate_grad_batches
    found: Provenance | None = None
    recorded: RecordedBatch | None = None
    sharded = sharding_of(trainer) is not None
    first: tuple[Provenance, RecordedBatch] | None = None
    step = training_step_of(pl_module)
    for recorded in window:
        batch_size = batch_size_of(recorded.batch, find(recorded.batch, sample_id_key))
        try:
            found = replay(
                pl_module,
                recorded,
                training_step=training_step_through(trainer, step) if sharded else step,
                precision_context=trainer.precision_plugin.train_step_context,
                loss_multiplier=multiplier,
                batch_size=batch_size,
                backward=not sharded,
            )
        except Exception as err:  # noqa: BLE001 - the trip must be reported even when the replay cannot run
            found = Provenance(UNAVAILABLE, detail=f"provenance unavailable: the replay raised {err!r}")
        if found.status != FINITE:
            if not sharded:
                break
            first = first or (found, recorded)  # sharded, every rank replays every micro-batch, so that the
    if first is not None:  # forward's all-gathers line up across ranks; the first finding is the answer
        found, recorded = first
    if found is None or recorded is None:
        return Provenance(UNAVAILABLE, detail="no replay: the step's batch was not seen by on_train_batch_start")
    found.samples = samples(trainer, pl_module, recorded, found, sample_id_key)
    return found


def training_step_of(pl_module: pl.LightningModule) -> Any:
    """``training_step`` called as Lightning calls it: ``batch_idx`` only when the signature takes one."""
    step = pl_module.training_step
    if is_param_in_hook_signature(step, "batch_idx", min_args=2):
        return step
    return lambda batch, batch_idx: step(batch)


# ------------------------------------------------------------------------------------------------ the replay
def replay(
    module: nn.Module,
    recorded: RecordedBatch,
    *,
    training_step: Callable[[Any, int], Any],
    precision_context: Callable[[], contextlib.AbstractContextManager[Any]],
    loss_multiplier: float,
    batch_size: int | None,
    backward: bool = True,
) -> Provenance:
    """Replay one micro-batch through ``training_step`` with hooks; name where the first non-finite value appeared.
    ``backward=False`` (FSDP) replays the forward only: a backward fault is then reported as not found.

    ``loss_multiplier`` reproduces what the trainer did to the loss before backward (loss-scaler scale divided by
    the accumulation factor), so a backward overflow under fp16 happens again at the same place.
    """
    bad_input = nonfinite_in_batch(recorded.batch, batch_size)
    if bad_input is not None:
        key, rows = bad_input
        return Provenance(IN_BATCH, rows=rows, batch_idx=recorded.batch_idx, detail=f"key {key!r}, rows {rows_text(rows)}")
    tracer = Tracer(module, batch_size)
    with preserved(module, recorded), tracer.installed():
        with precision_context():
            loss = loss_of(training_step(recorded.batch, recorded.batch_idx))
        found = tracer.forward_finding
        if found is None:
            found = _judge_loss(loss, tracer.max_output)
        if found is None and loss is not None and backward:
            params = [p for p in module.parameters() if p.requires_grad]
            if params and loss.requires_grad:
                torch.autograd.grad(loss * loss_multiplier, params, allow_unused=True)
            found = tracer.backward_finding
    if tracer.unhooked and found is not None:
        found.detail = (found.detail + "; " if found.detail else "") + f"not hooked (TorchScript): {', '.join(tracer.unhooked[:5])}"
    if found is None:
        found = Provenance(
            FINITE,
            detail="replay of this batch on the same weights was finite: a transient fault (hardware, a race, "
            "or code the replay does not run, e.g. hooks or another rank's batch)",
        )
    found.batch_idx = recorded.batch_idx
    return found


def per_sample_losses(
    module: nn.Module,
    recorded: RecordedBatch,
    compute: Callable[[Any], Tensor],
    precision_context: Callable[[], contextlib.AbstractContextManager[Any]],
) -> list[float]:
    """The module's own per-sample losses for a recorded batch, with the same state protection as the replay."""
    with preserved(module, recorded), precision_context(), torch.no_grad():
        values = compute(recorded.batch)
    return [float(v) for v in values.detach().float().reshape(-1).tolist()]


def _judge_loss(loss: Tensor | None, max_output: float) -> Provenance | None:
    if loss is None:
        return Provenance(UNAVAILABLE, detail="provenance unavailable: training_step returned no loss on replay")
    if bool(torch.isfinite(loss.detach()).all()):
        return None
    return Provenance(LOSS, dtype=dtype_name(loss), detail=f"every module output finite, max |output| {max_output:.2g}")


def loss_of(output: Any) -> Tensor | None:
    """The loss a ``training_step`` returned: a tensor, or a mapping's ``"loss"``."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping) and isinstance(output.get("loss"), Tensor):
        return output["loss"]
    return None


# ------------------------------------------------------------------------------------------- state protection
@contextlib.contextmanager
def preserved(module: nn.Module, recorded: RecordedBatch) -> Iterator[None]:
    """Run with the recorded RNG state and eager code, and put back RNG, buffers and rebound attributes after.

    ``self.log`` is silenced: a logged value with ``sync_dist=True`` would be a collective that other ranks do not
    issue, and the replay's values must not reach the logger. In-place changes to Python containers that
    ``training_step`` makes are not undone (only rebinding of the module's own attributes is).
    """
    attributes = dict(vars(module))
    buffers = [(b, b.detach().clone()) for b in module.buffers()]
    python_rng = random.getstate()
    devices = [torch.cuda.current_device()] if recorded.rng_cuda is not None else []
    with torch.random.fork_rng(devices=devices), _eager(), torch.enable_grad():
        torch.set_rng_state(recorded.rng_cpu)
        if recorded.rng_cuda is not None:
            torch.cuda.set_rng_state(recorded.rng_cuda)
        for name in ("log", "log_dict"):
            if hasattr(module, name):
                object.__setattr__(module, name, _silent)
        try:
            yield
        finally:
            random.setstate(python_rng)
            with torch.no_grad():
                for buffer, saved in buffers:
                    buffer.copy_(saved)
            state = vars(module)
            for key in [k for k in state if k not in attributes]:
                del state[key]
            for key, value in attributes.items():
                if state.get(key) is not value:
                    state[key] = value


def _silent(*args: Any, **kwargs: Any) -> None:
    return None


def _eager() -> contextlib.AbstractContextManager[Any]:
    """Compiled code would recompile for the hooks (or skip them): run the replay eagerly."""
    set_stance = getattr(torch.compiler, "set_stance", None)
    return set_stance("force_eager") if set_stance is not None else contextlib.nullcontext()


# ------------------------------------------------------------------------------------------------ the samples
def samples(
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    recorded: RecordedBatch,
    found: Provenance,
    sample_id_key: str | None,
) -> dict[str, Any]:
    """Which rows carried the non-finite values: from the module's ``per_sample_loss`` when it has one and some
    loss is non-finite, else from the replay's first non-finite tensor; mapped to sample identities and, through
    ``describe_samples``, to records."""
    ids = id_list(find(recorded.batch, sample_id_key))
    out: dict[str, Any] = {}
    if ids is not None:
        out["ids"] = ids[:SAMPLES_IN_REPORT]
    rows = found.rows
    if found.status != FINITE:
        rows = _loss_rows(trainer, pl_module, recorded, out) or rows
    if rows is not None:
        out["rows"] = rows[:SAMPLES_IN_REPORT]
    if ids is None or not rows:
        return out
    bad_ids = [ids[r] for r in rows if r < len(ids)]
    out["nonfinite_ids"] = bad_ids[:SAMPLES_IN_REPORT]
    describe_into(out, trainer, pl_module, bad_ids)
    return out


def describe_into(out: dict[str, Any], trainer: pl.Trainer, pl_module: pl.LightningModule, ids: list[Any]) -> None:
    """``out["records"]``: the first ids' records through ``describe_samples``, when the module or data module has
    one (an error there is noted in ``records_error``: an optional detail must not hide the trip)."""
    describe = describer(trainer, pl_module)
    if describe is None or not ids:
        return
    try:
        out["records"] = [str(line) for line in describe(ids[:SAMPLES_DESCRIBED])]
    except Exception as err:  # noqa: BLE001
        out["records_error"] = repr(err)


def _loss_rows(
    trainer: pl.Trainer, pl_module: pl.LightningModule, recorded: RecordedBatch, out: dict[str, Any]
) -> list[int] | None:
    """Rows whose per-sample loss is non-finite (``None`` when the module cannot say); details go into ``out``."""
    compute = getattr(pl_module, "per_sample_loss", None)
    if not callable(compute):
        return None
    try:
        losses = per_sample_losses(pl_module, recorded, compute, trainer.precision_plugin.train_step_context)
    except Exception as err:  # noqa: BLE001 - an optional detail must not hide the trip
        out["per_sample_loss_error"] = repr(err)
        return None
    out["per_sample_loss"] = losses[:SAMPLES_IN_REPORT]
    rows = [i for i, v in enumerate(losses) if not math.isfinite(v)]
    out["nonfinite_loss_rows"] = rows[:SAMPLES_IN_REPORT]
    return rows or None


def describer(trainer: pl.Trainer, pl_module: pl.LightningModule) -> Any:
    """``describe_samples`` of the module, else of the datamodule, else ``None``."""
    for owner in (pl_module, getattr(trainer, "datamodule", None)):
        describe = getattr(owner, "describe_samples", None)
        if callable(describe):
            return describe
    return None


# ------------------------------------------------------------------------------------------ the samples of a spike
SPIKE_ROWS_WITHOUT_OUTLIER = 3


def spike_samples(
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    window: Iterable[RecordedBatch],
    sample_id_key: str | None,
    loss_limit: float | None,
) -> Provenance:
    """Which samples carried a finite spike: the module's ``per_sample_loss`` over the step's micro-batches (no
    hooks, no backward); the rows whose own loss is above ``loss_limit`` (the step loss's spike threshold), else the
    ``SPIKE_ROWS_WITHOUT_OUTLIER`` largest, from the micro-batch with the largest one; then their identities and,
    through ``describe_samples``, their records. Same state protection as a replay: weights, RNG, buffers kept."""
    recorded_batches = list(window)
    if not recorded_batches:
        return Provenance(SPIKE, detail="samples unknown: the step's batch is not kept under manual optimisation")
    compute = getattr(pl_module, "per_sample_loss", None)
    out: dict[str, Any] = {}
    best: tuple[float, RecordedBatch, list[float]] | None = None
    if callable(compute):
        try:
            for recorded in recorded_batches:
                losses = per_sample_losses(pl_module, recorded, compute, trainer.precision_plugin.train_step_context)
                top = max((v for v in losses if math.isfinite(v)), default=-math.inf)
                if best is None or top > best[0]:
                    best = (top, recorded, losses)
        except Exception as err:  # noqa: BLE001 - an optional detail must not hide the spike
            out["per_sample_loss_error"] = repr(err)
    recorded = best[1] if best is not None else recorded_batches[-1]
    ids = id_list(find(recorded.batch, sample_id_key))
    if ids is not None:
        out["ids"] = ids[:SAMPLES_IN_REPORT]
    if best is None:
        detail = "no per_sample_loss(batch) on the module: the rows that carried it are unknown"
        return Provenance(SPIKE, batch_idx=recorded.batch_idx, detail=detail, samples=out)
    losses = best[2]
    order = sorted((i for i, v in enumerate(losses) if math.isfinite(v)), key=lambda i: losses[i], reverse=True)
    above = [i for i in order if loss_limit is not None and losses[i] > loss_limit]
    rows = above or order[:SPIKE_ROWS_WITHOUT_OUTLIER]
    out["per_sample_loss"] = losses[:SAMPLES_IN_REPORT]
    out["rows"] = rows[:SAMPLES_IN_REPORT]
    which = "rows whose own loss is above the threshold" if above else "rows with the largest loss"
    detail = f"{which}: {rows_text(rows)} (per-sample loss up to {losses[rows[0]]:.4g})" if rows else "no finite per-sample loss"
    if ids is not None and rows:
        spike_ids = [ids[r] for r in rows if r < len(ids)]
        out["spike_ids"] = spike_ids[:SAMPLES_IN_REPORT]
        describe_into(out, trainer, pl_module, spike_ids)
    return Provenance(SPIKE, rows=rows[:SAMPLES_IN_REPORT], batch_idx=recorded.batch_idx, detail=detail, samples=out)
