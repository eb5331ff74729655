"""What is logged between two log points: the largest gradient norm of the interval (total and per module).

Lightning writes logs every ``log_every_n_steps``; a spike on a step in between would never be seen if only the
step that happens to be logged were reported, so the maximum over the interval is kept here and reset on logging.
"""

from __future__ import annotations

import math
from collections.abc import Iterable


class IntervalMax:
    """Running maxima since the last log point."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._max: float | None = None
        self._nonfinite = False
        self._modules: dict[str, float] = {}

    def add(self, grad_norm: float) -> None:
        if math.isfinite(grad_norm):
            self._max = grad_norm if self._max is None else max(self._max, grad_norm)
        else:
            self._nonfinite = True

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

    def top_modules(self, k: int) -> list[tuple[str, float]]:
        return sorted(self._modules.items(), key=lambda item: item[1], reverse=True)[:k]
