"""Report: what a user reads about a trip - the one-line message with its fix and ``grad_health_report.json`` (strict JSON,
one per rank, rewritten atomically on every trip) - plus the logged keys and each log interval's largest norms.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import lightning.pytorch as pl
import torch
from torch.optim import Optimizer

from .decide import (
    D_BUFFERS,
    D_EMPTY_BATCH,
    D_GRAD_NAN,
    D_GRAD_OVERFLOW,
    D_LOSS_INF,
    D_LOSS_NAN,
    D_PARAMS_AFTER,
    D_PARAMS_BEFORE,
    D_STATE,
    SCALE_COLLAPSE_PREFIX,
)
from .provenance import Provenance
from .replay import SAMPLES_DESCRIBED
from .spikes import is_spike_diagnosis

# The names other code reads (the app's report, progress lines and run-file readers import these).
KEY_GRAD_NORM = "grad_health/grad_norm"
KEY_LOSS_SCALE = "grad_health/loss_scale"
KEY_SKIPPED = "grad_health/skipped_steps"
KEY_ROLLED_BACK = "grad_health/rolled_back_steps"
KEY_SCALER_SKIPPED = "grad_health/scaler_skipped_steps"
KEY_MODULE_PREFIX = "grad_health/grad_norm/"
KEY_SPIKES = "grad_health/spikes"
KEY_SPIKE_SKIPPED = "grad_health/spike_skipped_steps"
KEY_SPIKE_ROLLED_BACK = "grad_health/spike_rolled_back_steps"
KEY_SCHEDULER_HELD = "grad_health/scheduler_held_steps"

REPORT_FILE = "grad_health_report.json"


def report_file(rank: int) -> str:
    """``grad_health_report.json`` on rank 0, ``grad_health_report.rank<N>.json`` on the others."""
    return REPORT_FILE if rank == 0 else f"grad_health_report.rank{rank}.json"


log = logging.getLogger(__package__)

REPORT_VERSION = 1
SCALE_HISTORY_IN_REPORT = 64
NAMES_IN_REPORT = 10

# --- the fix for each diagnosis --------------------------------------------------------------------------------
_ADVICE = {
    D_PARAMS_BEFORE: "the weights were already broken: resume from the last good checkpoint",
    D_PARAMS_AFTER: "keep trainable weights in fp32 (not precision='16-true'), lower the learning rate",
    D_EMPTY_BATCH: "every batch needs at least one label != ignore_index; check prompt masking and truncation",
    D_LOSS_NAN: "inspect this batch's inputs and the loss computation; lower the learning rate",
    D_LOSS_INF: "inspect this batch's inputs and the loss computation; lower the learning rate",
    D_GRAD_OVERFLOW: "use bf16-mixed or 32-true (or 16-mixed with a GradScaler), lower the learning rate, "
    "keep gradient clipping on",
    D_GRAD_NAN: "look for 0/0, log(0) or sqrt of negatives in the model/loss; lower the learning rate",
    D_STATE: "find what writes it outside the optimiser step (a buffer updated in a hook or a callback, state "
    "loaded non-finite)",
    D_BUFFERS: "inspect this batch's inputs (a batch of one row gives BatchNorm a 0/0 variance); the report names "
    "the buffers",
}
# Diagnoses that a rollback can recover from: suggested only to runs not already rolling back.
_ROLLBACK_HELPS = frozenset({D_PARAMS_BEFORE, D_PARAMS_AFTER, D_STATE})
SPIKE_ADVICE = (
    "if jumps like this are expected in this run, raise spike_threshold or set on_spike=None; otherwise inspect "
    "the samples named (a corrupt or out-of-distribution record), lower the learning rate, keep gradient clipping on"
)
_SCALE_ADVICE = (
    "gradients overflow fp16 at every loss scale: use bf16-mixed or 32-true, keep trainable weights fp32, "
    "lower the learning rate"
)


def advice(diagnosis: str, on_nonfinite: str = "abort") -> str:
    """What to try next for a diagnosis line: every abort message names a fix, not only a cause.

    ``on_nonfinite`` is the run's mode, so a run that already rolls back is not told to roll back.
    """
    if is_spike_diagnosis(diagnosis):
        return SPIKE_ADVICE
    text = _ADVICE.get(diagnosis, _SCALE_ADVICE if diagnosis.startswith(SCALE_COLLAPSE_PREFIX) else "see the report")
    if diagnosis in _ROLLBACK_HELPS and on_nonfinite != "rollback":
        text += ", or use on_nonfinite='rollback'"
    return text


# --- the one line ------------------------------------------------------------------------------------------------
def message(
    trainer: pl.Trainer,
    *,
    batch_idx: int,
    diagnosis: str,
    action: str,
    reason: str | None,
    on_nonfinite: str,
    provenance: Provenance | None,
    path: Any,
    ranks: str | None = None,
) -> str:
    """The one line a user reads: what, where it started (``ranks``: which rank carried it), which samples, what
    was done, the report, the fix."""
    parts = [
        f"GradientHealth: {diagnosis} at global step {trainer.global_step} (epoch {trainer.current_epoch},"
        f" batch {batch_idx}"
        + (f", rank {trainer.global_rank}" if trainer.world_size > 1 else "")
        + f") -> {action}"
        + (f" ({reason})" if reason else "")
    ]
    fix = advice(diagnosis, on_nonfinite)
    if ranks:
        parts.append(ranks)
    if provenance is not None:
        parts.append(provenance.summary())
        samples = provenance.samples.get("nonfinite_ids") or provenance.samples.get("spike_ids")
        if samples:
            records = provenance.samples.get("records") or []
            parts.append(f"samples {samples[:SAMPLES_DESCRIBED]}" + (f" ({'; '.join(records)})" if records else ""))
        fix = provenance.advice() or fix
    return "; ".join(parts) + f". Report: {path}. Fix: {fix}"


# --- the trip record -----------------------------------------------------------------------------------------
def trip_record(
    trainer: pl.Trainer,
    *,
    batch_idx: int,
    where: str,
    diagnosis: str,
    action: str,
    on_nonfinite: str,
    reason: str | None,
    message: str,
    context: dict[str, Any],
    optimizer: Optimizer | None,
    loss_scale_history: Iterable[tuple[int, float]],
    grad_norm_history: Iterable[tuple[int, float]],
    counters: dict[str, int],
    rollback_to_step: int | None,
    provenance: Provenance | None,
) -> dict[str, Any]:
    """One trip as the report (and ``GradientHealth.trips``) holds it; keys in a stable order."""
    grad_norms: list[tuple[str, float]] = context.get("grad_norms", [])
    param_norms: list[tuple[str, float]] = context.get("param_norms", [])
    bad_grads = [name for name, v in grad_norms if not math.isfinite(v)]
    bad_params = [name for name, v in param_norms if not math.isfinite(v)]
    largest = sorted(((v, name) for name, v in grad_norms if math.isfinite(v)), reverse=True)[:NAMES_IN_REPORT]
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "detected_at": where,
        "global_step": trainer.global_step,
        "epoch": trainer.current_epoch,
        "batch_idx": batch_idx,
        "rank": trainer.global_rank,
        "world_size": trainer.world_size,
        "diagnosis": diagnosis,
        "action": action,
        "on_nonfinite": on_nonfinite,
        "abort_reason": reason,
        "message": message,
        "loss": context.get("loss"),
        "learning_rate": learning_rates(optimizer),
        "grad_norm": context.get("grad_norm"),
        "loss_scale": context.get("loss_scale"),
        "spike": context.get("spike"),  # per metric: value, robust level, threshold value (spike trips only)
        "loss_scale_history": [list(item) for item in loss_scale_history][-SCALE_HISTORY_IN_REPORT:],
        "grad_norm_history": [list(item) for item in grad_norm_history],
        "nonfinite_grad_params": bad_grads[:NAMES_IN_REPORT],
        "nonfinite_grad_param_count": len(bad_grads),
        "nonfinite_params": bad_params[:NAMES_IN_REPORT],
        "nonfinite_param_count": len(bad_params),
        "largest_grad_norms": {name: v for v, name in largest},
        "flags_rank_count": context.get("flags", {}),
        "nonfinite_buffers": context.get("nonfinite_buffers", []),
        "nonfinite_attributes": context.get("nonfinite_attributes", []),
        "nonfinite_state": context.get("nonfinite_state", []),
        "label_check": context.get("label_check"),
        "rollback_to_step": rollback_to_step,
        "counters": counters,
        "provenance": provenance.as_dict() if provenance is not None else None,
    }


def learning_rates(optimizer: Optimizer | None) -> list[float]:
    if optimizer is None:
        return []
    return [float(group["lr"]) for group in optimizer.param_groups if "lr" in group]


# --- the file --------------------------------------------------------------------------------------------------
def report_path(directory: str | os.PathLike[str], rank: int) -> Path:
    """``grad_health_report.json`` on rank 0, ``grad_health_report.rank<N>.json`` on the others."""
    return Path(directory) / report_file(rank)


def write_trip(path: Path, trip: dict[str, Any]) -> str | None:
    """Append ``trip`` to the report; the path written, or ``None`` when the disk refused (logged, not raised)."""
    try:
        return str(append_trip(path, trip))
    except OSError as err:  # a full disk must not hide the real problem
        log.error("GradientHealth: could not write the report to %s: %s", path, err)
        return None


def json_safe(value: Any) -> Any:
    """Make ``value`` strict-JSON: non-finite floats become the strings "nan", "inf", "-inf"."""
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def append_trip(path: Path, trip: dict[str, Any]) -> Path:
    """Add ``trip`` to the report at ``path`` (keeping earlier trips of this run directory) and write it atomically.

    Layout: ``{"version": 1, "trips": [trip, ...]}`` - the last element is the most recent trip.
    """
    trips: list[Any] = []
    if path.is_file():
        try:
            previous = json.loads(path.read_text())
            if isinstance(previous, dict) and isinstance(previous.get("trips"), list):
                trips = previous["trips"]
        except (OSError, ValueError):
            trips = []  # unreadable: start over rather than fail the run a second time
    trips.append(json_safe(trip))
    write_json_atomic(path, {"version": REPORT_VERSION, "trips": trips})
    return path


def write_json_atomic(path: Path, payload: Any) -> None:
    with atomic_file(path) as fh:
        json.dump(payload, fh, indent=2, allow_nan=False)
        fh.write("\n")


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str], mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path`` for writing; on a clean exit it replaces ``path``, fsynced, so a reader
    (or a crash) sees the old file or the whole new one. The one atomic writer of the package and the app."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # KeyboardInterrupt/SystemExit too: never leave the temporary file behind
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """Make a rename in ``directory`` durable (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class IntervalMax:
    """Running maxima since the last log point."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._max: float | None = None
        self._nonfinite = False
        self._modules: dict[str, float] = {}
        self._optimizers: dict[str, float] = {}
        self.steps = 0  # optimiser steps measured since the last log point

    def add(self, grad_norm: float, optimizer: str = "optimizer") -> None:
        """One optimiser's step: the total is the maximum over every optimiser's steps of the interval."""
        self.steps += 1
        if math.isfinite(grad_norm):
            self._max = grad_norm if self._max is None else max(self._max, grad_norm)
            previous = self._optimizers.get(optimizer, -math.inf)
            self._optimizers[optimizer] = grad_norm if not math.isfinite(previous) else max(previous, grad_norm)
        else:
            self._nonfinite = True
            self._optimizers.setdefault(optimizer, math.inf)  # replaced by the first finite norm

    def add_modules(self, tensor_norms: Iterable[tuple[str, float]]) -> None:
        """Per-tensor norms labelled with their module: folded into per-module norms, then into the maxima."""
        squares: dict[str, float] = {}
        for module, v in tensor_norms:
            squares[module] = squares.get(module, 0.0) + v * v
        for module, sq in squares.items():
            value = math.sqrt(sq)
            if math.isfinite(value) and value > self._modules.get(module, -1.0):
                self._modules[module] = value

    def grad_norm(self) -> float:
        """The interval's largest finite norm; ``inf`` if every step was non-finite; 0 if there was no step."""
        if self._max is not None:
            return self._max
        return math.inf if self._nonfinite else 0.0

    def per_optimizer(self) -> dict[str, float]:
        """Each optimiser's largest norm of the interval (``inf`` when all of its steps were non-finite)."""
        return dict(self._optimizers)

    def top_modules(self, k: int) -> list[tuple[str, float]]:
        return sorted(self._modules.items(), key=lambda item: item[1], reverse=True)[:k]


def log_interval(
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    interval: IntervalMax,
    *,
    skipped_steps: int,
    rolled_back_steps: int,
    loss_scale: float | None,
    scaler_skipped_steps: int,
    topk: int,
    prog_bar: bool,
    extra: dict[str, float] | None = None,
) -> None:
    """Log the interval's maxima and the counters on the steps Lightning writes logs, then start a new interval.

    Called once per batch, after every optimiser of the batch stepped: with several optimisers the total is the
    maximum over all of them, and each has its own ``grad_health/grad_norm/<optimizer>``."""
    if interval.steps == 0 or not should_log(trainer):
        return
    metrics: dict[str, float] = {
        KEY_GRAD_NORM: interval.grad_norm(),
        KEY_SKIPPED: float(skipped_steps),
        KEY_ROLLED_BACK: float(rolled_back_steps),
    }
    if loss_scale is not None:
        metrics[KEY_LOSS_SCALE] = loss_scale
        metrics[KEY_SCALER_SKIPPED] = float(scaler_skipped_steps)
    metrics.update(extra or {})
    optimizers = interval.per_optimizer()
    if len(optimizers) > 1:
        for label, value in optimizers.items():
            metrics[KEY_MODULE_PREFIX + label] = value
    if topk > 0:
        for module, value in interval.top_modules(topk):
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
            prog_bar=prog_bar and key == KEY_GRAD_NORM,
        )
    interval.reset()


def should_log(trainer: pl.Trainer) -> bool:
    try:
        return bool(trainer._logger_connector.should_update_logs)  # Lightning's own "flush now" rule
    except AttributeError:  # pragma: no cover - private API moved
        n = trainer.log_every_n_steps
        return n > 0 and (trainer.global_step + 1) % n == 0
