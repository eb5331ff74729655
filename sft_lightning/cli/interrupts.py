"""Stopping a run on SIGTERM or Ctrl+C: within seconds, never mid-update, with nothing already saved lost."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from types import FrameType
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException


class SigintAsSigterm:
    """While fitting, treat the first Ctrl+C as SIGTERM; a second one kills the process.

    SIGINT would raise ``KeyboardInterrupt`` anywhere, even halfway through ``optimizer.step()``, and the
    on-exception checkpoint would save that half-updated state (docs/design.md, "Interrupts").
    """

    def __init__(self) -> None:
        self.received = False
        self._previous: Any = signal.SIG_DFL

    def __enter__(self) -> SigintAsSigterm:
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.raise_signal(signal.SIGINT)
            return
        if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, signal.SIG_IGN, None):
            raise KeyboardInterrupt  # not in the training loop (still loading): nothing to save
        self.received = True
        # os.write, not print: the handler may interrupt a buffered write to stderr (progress bar).
        with contextlib.suppress(OSError):
            os.write(2, b"\nCtrl+C: stopping after the current step, then saving a checkpoint (again to kill)\n")
        signal.raise_signal(signal.SIGTERM)  # Lightning's handler is installed during fit


class PromptStop(Callback):
    """SIGTERM (and the first Ctrl+C, through ``SigintAsSigterm``) stop a single-process run within seconds,
    wherever it is, never mid-update.

    The signal raises ``SIGTERMException`` at once, except from ``on_before_optimizer_step`` until the next batch,
    validation or training end, where Lightning's own check stops the run once the step is complete. A step stopped
    before its update is trained again on resume. Under DDP Lightning's handling stays. Why: docs/design.md, "Interrupts".
    """

    def __init__(self) -> None:
        self._updating = False
        self._previous: Any = None
        self._installed = False
        self._marks: dict[int, tuple[Any, dict[str, int]]] = {}

    def _install(self, trainer: L.Trainer) -> None:
        """Take SIGTERM over from Lightning's handler (kept, and called first: it sets ``trainer.received_sigterm``).
        Installed once the model is built, so a stop never saves a half-built model; before that the signal's
        default action ends the process at once, with nothing to save."""
        if trainer.world_size > 1 or self._installed or threading.current_thread() is not threading.main_thread():
            return
        self._previous = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, self._handle)
        self._installed = True
        if trainer.received_sigterm:  # arrived while Lightning alone was listening
            raise SIGTERMException()

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install(trainer)

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install(trainer)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install(trainer)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._installed and signal.getsignal(signal.SIGTERM) == self._handle:
            signal.signal(signal.SIGTERM, self._previous if self._previous is not None else signal.SIG_DFL)
        self._installed = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if callable(self._previous):
            self._previous(signum, frame)
        if not self._updating:
            raise SIGTERMException()

    # --------------------------------------------------------------- where an update is in flight
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._mark_loaders(trainer)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self._resume_prompt_stops(trainer)

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        self._updating = True

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._mark_loaders(trainer)  # the step is complete: a checkpoint saved now would hold this position

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install(trainer)  # `validate`; during fit already installed
        self._resume_prompt_stops(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._resume_prompt_stops(trainer)

    def _resume_prompt_stops(self, trainer: L.Trainer) -> None:
        """Leave the update's deferral; a signal that arrived during it stops the run here."""
        deferred, self._updating = self._updating, False
        if deferred and self._installed and trainer.received_sigterm:
            raise SIGTERMException()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._updating = False
        if isinstance(exception, SIGTERMException):
            for loader, state in self._marks.values():
                loader.load_position(state)

    def _mark_loaders(self, trainer: L.Trainer) -> None:
        """Remember each resumable training loader's position as a checkpoint saved now would hold it."""
        self._marks = {id(loader): (loader, loader.position()) for loader in _resumable_train_loaders(trainer)}


def _resumable_train_loaders(trainer: L.Trainer) -> list[Any]:
    combined = getattr(trainer.fit_loop, "_combined_loader", None)
    loaders = getattr(combined, "flattened", None) or []
    return [loader for loader in loaders if hasattr(loader, "position") and hasattr(loader, "load_position")]
