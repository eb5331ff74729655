"""Training throughput in tokens per second, measured without an extra device sync.

How, and why validation time never counts: docs/design.md, "Throughput".
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

import torch
from torch import Tensor


class TokenThroughput:
    """Non-padding tokens per second over the last ``window`` consecutive training batches."""

    def __init__(self, window: int = 10, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self._batches: deque[tuple[float, Tensor]] = deque(maxlen=_checked(window))  # (start time, tokens)

    @property
    def window(self) -> int:
        return self._batches.maxlen or 1

    def resize(self, window: int) -> None:
        """Use a new window length (e.g. the logging interval), forgetting the current window."""
        self._batches = deque(maxlen=_checked(window))

    def reset(self) -> None:
        """Forget the window: other work (validation) ran since the last training batch."""
        self._batches.clear()

    def batch_start(self, n_tokens: Tensor | int) -> None:
        """A batch of ``n_tokens`` non-padding tokens starts computing now."""
        self._batches.append((self.clock(), torch.as_tensor(n_tokens)))

    def batch_end(self) -> Tensor | None:
        """Tokens per second from the start of the window's first batch to now; None if empty."""
        if not self._batches:
            return None
        elapsed = self.clock() - self._batches[0][0]
        if elapsed <= 0:
            return None
        return torch.stack([tokens for _, tokens in self._batches]).sum() / elapsed


def _checked(window: int) -> int:
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    return window
