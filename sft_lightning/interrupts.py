"""Ctrl+C during ``fit``: stop after the current step and save, like SIGTERM, not mid-update."""

from __future__ import annotations

import contextlib
import os
import signal
from types import FrameType
from typing import Any


class SigintAsSigterm:
    """While fitting, treat the first Ctrl+C as SIGTERM; a second one kills the process.

    Lightning 2.6.6 handles the two differently. SIGTERM only sets a flag; the loops check it
    after a whole training step (or between validation batches) and raise ``SIGTERMException``,
    so the on-exception checkpoint holds the last completed optimizer step. SIGINT raises
    ``KeyboardInterrupt`` wherever the program is, e.g. halfway through ``optimizer.step()``,
    and that half-updated state is what the on-exception checkpoint would save. A second
    Ctrl+C gets the default action (immediate exit, nothing saved: the previous checkpoint is
    intact because checkpoints are written atomically).
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
