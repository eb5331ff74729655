"""The Lightning side of provenance: which micro-batches to replay, in which precision context, with which loss
multiplier, and which samples (identities, per-sample losses, records) carried the non-finite values.

``_provenance`` knows modules and tensors; this module knows the Trainer and the batch conventions.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities.signature_utils import is_param_in_hook_signature

from . import _provenance as pv
from ._precision import active_scaler

SAMPLES_IN_REPORT = 64
SAMPLES_DESCRIBED = 10


def find(batch: Any, key: str | None) -> Any:
    """``batch[key]`` for a mapping, ``batch.key`` otherwise; ``None`` when absent (or no key)."""
    if key is None:
        return None
    if isinstance(batch, Mapping):
        return batch.get(key)
    return getattr(batch, key, None)


def trace(
    trainer: pl.Trainer, pl_module: pl.LightningModule, window: Iterable[pv.RecordedBatch], sample_id_key: str | None
) -> pv.Provenance:
    """Replay the step's micro-batches (oldest first) until one goes non-finite again, then name its samples."""
    if not pl_module.automatic_optimization:
        return pv.Provenance(pv.UNAVAILABLE, detail="no replay under manual optimisation (training_step steps the optimiser)")
    scaler = active_scaler(trainer.precision_plugin)
    # what the trainer did to the loss before backward: scaled by the loss scale, divided for accumulation
    multiplier = (float(scaler.get_scale()) if scaler is not None else 1.0) / trainer.accumulate_grad_batches
    found: pv.Provenance | None = None
    recorded: pv.RecordedBatch | None = None
    for recorded in window:
        batch_size = pv.batch_size_of(recorded.batch, find(recorded.batch, sample_id_key))
        try:
            found = pv.replay(
                pl_module,
                recorded,
                training_step=training_step_of(pl_module),
                precision_context=trainer.precision_plugin.train_step_context,
                loss_multiplier=multiplier,
                batch_size=batch_size,
            )
        except Exception as err:  # noqa: BLE001 - the trip must be reported even when the replay cannot run
            found = pv.Provenance(pv.UNAVAILABLE, detail=f"provenance unavailable: the replay raised {err!r}")
        if found.status != pv.FINITE:
            break
    if found is None or recorded is None:
        return pv.Provenance(pv.UNAVAILABLE, detail="no replay: the step's batch was not seen by on_train_batch_start")
    found.samples = samples(trainer, pl_module, recorded, found, sample_id_key)
    return found


def training_step_of(pl_module: pl.LightningModule) -> Any:
    """``training_step`` called as Lightning calls it: ``batch_idx`` only when the signature takes one."""
    step = pl_module.training_step
    if is_param_in_hook_signature(step, "batch_idx", min_args=2):
        return step
    return lambda batch, batch_idx: step(batch)


def samples(
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    recorded: pv.RecordedBatch,
    found: pv.Provenance,
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
    if found.status != pv.FINITE:
        rows = _loss_rows(trainer, pl_module, recorded, out) or rows
    if rows is not None:
        out["rows"] = rows[:SAMPLES_IN_REPORT]
    if ids is None or not rows:
        return out
    bad_ids = [ids[r] for r in rows if r < len(ids)]
    out["nonfinite_ids"] = bad_ids[:SAMPLES_IN_REPORT]
    describe = describer(trainer, pl_module)
    if describe is not None and bad_ids:
        try:
            out["records"] = [str(line) for line in describe(bad_ids[:SAMPLES_DESCRIBED])]
        except Exception as err:  # noqa: BLE001 - an optional detail must not hide the trip
            out["records_error"] = repr(err)
    return out


def _loss_rows(
    trainer: pl.Trainer, pl_module: pl.LightningModule, recorded: pv.RecordedBatch, out: dict[str, Any]
) -> list[int] | None:
    """Rows whose per-sample loss is non-finite (``None`` when the module cannot say); details go into ``out``."""
    compute = getattr(pl_module, "per_sample_loss", None)
    if not callable(compute):
        return None
    try:
        losses = pv.per_sample_losses(pl_module, recorded, compute, trainer.precision_plugin.train_step_context)
    except Exception as err:  # noqa: BLE001 - an optional detail must not hide the trip
        out["per_sample_loss_error"] = repr(err)
        return None
    out["per_sample_loss"] = losses[:SAMPLES_IN_REPORT]
    rows = [i for i, v in enumerate(losses) if not math.isfinite(v)]
    out["nonfinite_loss_rows"] = rows[:SAMPLES_IN_REPORT]
    return rows or None


def id_list(ids: Any) -> list[Any] | None:
    """Sample identities as a plain list (a 1-D tensor, a list or a tuple), else ``None``."""
    if hasattr(ids, "tolist") and getattr(ids, "dim", lambda: 2)() <= 1:
        return ids.reshape(-1).tolist()
    if isinstance(ids, (list, tuple)):
        return list(ids)
    return None


def describer(trainer: pl.Trainer, pl_module: pl.LightningModule) -> Any:
    """``describe_samples`` of the module, else of the datamodule, else ``None``."""
    for owner in (pl_module, getattr(trainer, "datamodule", None)):
        describe = getattr(owner, "describe_samples", None)
        if callable(describe):
            return describe
    return None
